//! What the driver sends: each scenario becomes a small table of pre-encoded request templates
//! (a head, a body length to stream, the status that counts as success, a weight).

use std::fmt;

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// A small allowed GET, proxied to the upstream (an SCM API call).
    Small,
    /// A request the allowlist rejects: 403 from the broker, nothing upstream.
    Denied,
    /// A large response body (`--size`).
    Download,
    /// A large request body (`--size`), POSTed.
    Upload,
    /// The small GET on a new TCP connection per request.
    Connect,
    /// A realistic SCM mix: API GETs, git info/refs and upload-pack, an archive download,
    /// denied probes, by weight (`--mix`).
    Mix,
    /// `GET /healthcheck`, answered by the broker itself.
    Healthcheck,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Small => "small",
            Self::Denied => "denied",
            Self::Download => "download",
            Self::Upload => "upload",
            Self::Connect => "connect",
            Self::Mix => "mix",
            Self::Healthcheck => "healthcheck",
        };
        f.write_str(s)
    }
}

/// One kind of request, encoded once.
#[derive(Debug, Clone)]
pub struct Template {
    /// Short name (`small`, `api.repo`, `git.info_refs`, ...), for the per-kind figures.
    pub name: &'static str,
    /// Method and target as sent, for the report.
    pub line: String,
    /// The request head on the wire (with `Content-Length` when there is a body).
    pub head: Vec<u8>,
    /// Body bytes streamed after the head.
    pub body_len: u64,
    /// The status that counts as success; any other is an "unexpected status" error.
    pub expect: u16,
    /// Relative weight (mix).
    pub weight: u32,
}

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `Host` header value: the broker's tunnel address and port.
    pub host: String,
    /// Base URL of an upstream with the load-test routes (`/api/v3/...`, `/download/N`,
    /// `/upload`, `/:owner/:repo/info/refs`, ...).
    pub upstream: String,
    /// Overrides the single target of `small`, `denied`, `download`, `upload`, `connect`.
    pub url: Option<String>,
    /// `download`/`upload` body size.
    pub size: u64,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Every response counts as success if it is 200 (the calibration responder answers
    /// 200 to anything).
    pub any_200: bool,
}

/// The mix's kinds and default weights (percent).
pub const MIX: &[(&str, u32)] = &[
    ("api.repo", 20),
    ("api.pulls", 15),
    ("api.contents", 15),
    ("api.commits", 10),
    ("git.info_refs", 15),
    ("git.upload_pack", 3),
    ("archive", 2),
    ("denied.admin", 15),
    ("denied.metadata", 5),
];

/// Archive size in the mix.
pub const MIX_ARCHIVE: u64 = 1 << 20;

/// The request plan of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub templates: Vec<Template>,
    /// A new connection for every request (`connect`).
    pub connection_per_request: bool,
    /// Running sums of the weights, for picking.
    cumulative: Vec<u32>,
}

impl Plan {
    /// Builds the templates of `scenario` for `t`; `mix` overrides mix weights by name.
    pub fn new(scenario: Scenario, t: &Targets, mix: &[(String, u32)]) -> Result<Self, String> {
        let base = t.upstream.trim_end_matches('/');
        let url = |default: String| t.url.clone().unwrap_or(default);
        let mut templates = Vec::new();
        let mut add = |name: &'static str, method: &str, target: String, body: u64, expect: u16| {
            templates.push(template(t, name, method, &target, body, expect, 1));
        };
        match scenario {
            Scenario::Small | Scenario::Connect => add(
                "small",
                "GET",
                proxied(&url(format!("{base}/api/v3/repos/acme/app"))),
                0,
                200,
            ),
            Scenario::Denied => add(
                "denied",
                "GET",
                proxied(&url(format!("{base}/wgbroker-loadtest/denied"))),
                0,
                403,
            ),
            Scenario::Download => add(
                "download",
                "GET",
                proxied(&url(format!("{base}/download/{}", t.size))),
                0,
                200,
            ),
            Scenario::Upload => add(
                "upload",
                "POST",
                proxied(&url(format!("{base}/upload"))),
                t.size,
                200,
            ),
            Scenario::Healthcheck => add("healthcheck", "GET", "/healthcheck".into(), 0, 200),
            Scenario::Mix => {
                if t.url.is_some() {
                    return Err("--url does not apply to the mix (use --upstream)".into());
                }
                let api = format!("{base}/api/v3/repos/acme/app");
                for (name, _) in MIX {
                    let (method, target, body, expect) = match *name {
                        "api.repo" => ("GET", api.clone(), 0, 200),
                        "api.pulls" => ("GET", format!("{api}/pulls?state=open"), 0, 200),
                        "api.contents" => ("GET", format!("{api}/contents/src/main.rs"), 0, 200),
                        "api.commits" => ("GET", format!("{api}/commits?per_page=30"), 0, 200),
                        "git.info_refs" => (
                            "GET",
                            format!("{base}/acme/app.git/info/refs?service=git-upload-pack"),
                            0,
                            200,
                        ),
                        "git.upload_pack" => (
                            "POST",
                            format!("{base}/acme/app.git/git-upload-pack"),
                            200,
                            200,
                        ),
                        "archive" => ("GET", format!("{base}/download/{MIX_ARCHIVE}"), 0, 200),
                        "denied.admin" => ("GET", format!("{base}/api/v3/admin/users"), 0, 403),
                        _ => (
                            "GET",
                            "http://169.254.169.254/latest/meta-data/".to_owned(),
                            0,
                            403,
                        ),
                    };
                    add(name, method, proxied(&target), body, expect);
                }
                weigh(&mut templates, mix)?;
            }
        }
        let mut sum = 0u32;
        let cumulative = templates
            .iter()
            .map(|x| {
                sum = sum.saturating_add(x.weight);
                sum
            })
            .collect();
        Ok(Self {
            scenario,
            templates,
            connection_per_request: scenario == Scenario::Connect,
            cumulative,
        })
    }

    /// The template for a uniform random `r`.
    pub fn pick(&self, r: u64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1).max(1);
        let x = (r % u64::from(total)) as u32;
        self.cumulative
            .iter()
            .position(|&c| x < c)
            .unwrap_or(0)
            .min(self.templates.len().saturating_sub(1))
    }
}

/// `/proxy/<url>` for an absolute URL; an origin-form target stays as it is.
fn proxied(url: &str) -> String {
    if url.starts_with('/') {
        url.to_owned()
    } else {
        format!("/proxy/{url}")
    }
}

/// Gives the mix's templates (made in [`MIX`]'s order) their weights: [`MIX`]'s, then those of
/// `--mix`; drops those weighted 0.
fn weigh(templates: &mut Vec<Template>, mix: &[(String, u32)]) -> Result<(), String> {
    for (tpl, (_, w)) in templates.iter_mut().zip(MIX) {
        tpl.weight = *w;
    }
    for (name, w) in mix {
        match templates.iter_mut().find(|x| x.name == name) {
            Some(x) => x.weight = *w,
            None => {
                let names: Vec<&str> = MIX.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "--mix: unknown kind {name:?} (kinds: {})",
                    names.join(", ")
                ));
            }
        }
    }
    templates.retain(|x| x.weight > 0);
    if templates.is_empty() {
        return Err("--mix: every weight is 0".into());
    }
    Ok(())
}

fn template(
    t: &Targets,
    name: &'static str,
    method: &str,
    target: &str,
    body: u64,
    expect: u16,
    weight: u32,
) -> Template {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", t.host);
    head.push_str("User-Agent: wgbroker-loadtest\r\n");
    for (n, v) in &t.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if body > 0 || method == "POST" || method == "PUT" {
        head.push_str(&format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {body}\r\n"
        ));
    }
    head.push_str("\r\n");
    Template {
        name,
        line: format!("{method} {target}"),
        head: head.into_bytes(),
        body_len: body,
        expect: if t.any_200 { 200 } else { expect },
        weight,
    }
}

/// Parses `name=weight,name=weight`.
pub fn parse_mix(s: &str) -> Result<Vec<(String, u32)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (n, w) = p
                .split_once('=')
                .ok_or_else(|| format!("--mix: expected NAME=WEIGHT, got {p:?}"))?;
            let w = w
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("--mix: weight of {n:?} is not a whole number"))?;
            Ok((n.trim().to_owned(), w.min(1_000_000)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets {
            host: "10.77.0.2:80".into(),
            upstream: "http://127.0.0.1:9/".into(),
            url: None,
            size: 1000,
            headers: vec![("X-A".into(), "b".into())],
            any_200: false,
        }
    }

    #[test]
    fn templates_are_complete_requests() {
        let p = Plan::new(Scenario::Upload, &targets(), &[]).expect("plan");
        let h = String::from_utf8(p.templates[0].head.clone()).expect("utf8");
        assert!(h.starts_with(
            "POST /proxy/http://127.0.0.1:9/upload HTTP/1.1\r\nHost: 10.77.0.2:80\r\n"
        ));
        assert!(h.contains("Content-Length: 1000\r\n") && h.contains("X-A: b\r\n"));
        assert!(h.ends_with("\r\n\r\n"));
        let p = Plan::new(Scenario::Healthcheck, &targets(), &[]).expect("plan");
        assert!(
            p.templates[0]
                .head
                .starts_with(b"GET /healthcheck HTTP/1.1\r\n")
        );
    }

    #[test]
    fn mix_weights_pick_every_kind_in_proportion() {
        let mix = parse_mix("archive=0,denied.metadata=10").expect("mix");
        let p = Plan::new(Scenario::Mix, &targets(), &mix).expect("plan");
        assert!(p.templates.iter().all(|t| t.name != "archive"));
        let mut counts = vec![0u32; p.templates.len()];
        let total: u32 = p.templates.iter().map(|t| t.weight).sum();
        // Uniform inputs over whole multiples of the total pick each kind exactly by weight.
        for r in 0..u64::from(total) * 100 {
            counts[p.pick(r)] += 1;
        }
        for (t, c) in p.templates.iter().zip(&counts) {
            assert_eq!(*c, 100 * t.weight, "{}", t.name);
        }
        assert!(Plan::new(Scenario::Mix, &targets(), &[("nope".into(), 1)]).is_err());
        assert!(parse_mix("api.repo").is_err());
    }
}
