//! `wgbroker demo`: the whole product in one process, on loopback only.
//!
//! It starts a broker with a fresh keypair, a small SCM-like upstream ([`MockScm`]) and a
//! vendor-side gateway from the test kit, sends a realistic mix of requests through the real
//! WireGuard tunnel, and prints what was allowed, denied or rejected, and why, with latencies.
//! It checks its own expectations (statuses, the injected token reaching the upstream, nothing
//! denied reaching it, the token never reaching the vendor) and exits non-zero if one fails.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::allowlist::{CanonUrl, Decision};
use crate::config::{self, LoadMode};
use crate::keys::PrivateKey;
use crate::output::{errln, outln};
use crate::testkit::client::{self, Request, RunOptions};
use crate::testkit::gateway::{Gateway, GatewayConfig};
use crate::testkit::scm::MockScm;
use crate::testkit::toml::{PeerToml, WireguardToml};

const TOKEN: &str = "ghp_demoTOKENdemoTOKENdemoTOKEN0123456789";

struct Case {
    method: &'static str,
    /// Path on the mock upstream, or a full URL when it starts with `http`.
    url: String,
    expect: u16,
    what: &'static str,
}

const WEBHOOK_SECRET: &str = "demo-webhook-secret";

fn config_text(
    broker: &PrivateKey,
    vendor: &PrivateKey,
    gateway: std::net::SocketAddr,
    scm: std::net::SocketAddr,
    hooks: &WebhookDemo,
) -> String {
    let wireguard = WireguardToml::new(broker, "10.77.0.2")
        .peer(PeerToml::new(vendor.public_key(), gateway, "10.77.0.1/32").persistent_keepalive(0))
        .render();
    format!(
        r#"
{wireguard}
[[scm]]
type = "github"
base_url = "http://{scm}/api/v3"
token = "{TOKEN}"
allow_code_access = true

[[allow]]
url = "http://{scm}/download/:size"
methods = ["GET"]
remove_response_headers = ["Set-Cookie"]

[admin]
listen = "127.0.0.1:0"

[log]
level = "error"

[outbound]
listen = "127.0.0.1:0"
spool_dir = {spool:?}

[[outbound.relay]]
name = "github"
destination_url = "{vendor_url}"
scm = "github"
secret = "{WEBHOOK_SECRET}"
events = ["push", "pull_request"]
touches = ["**/package.json", "**/pom.xml", "**/.snyk"]
"#,
        spool = hooks.spool,
        vendor_url = hooks.vendor.url("/hooks/github"),
    )
}

/// The webhook half of the demo: the vendor's endpoint and a spool that goes away afterwards.
struct WebhookDemo {
    vendor: crate::testkit::webhooks::MockVendor,
    spool: PathBuf,
}

impl Drop for WebhookDemo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// Posts a push touching a manifest (relayed) and one touching only a README (filtered out) as
/// GitHub would; prints what happened and returns whether it matched the expectations.
fn webhooks(hooks: &WebhookDemo, port: u16) -> bool {
    use crate::testkit::webhooks::{github_headers, post};
    let broker = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    outln!(
        "  webhooks: the SCM posts to http://{broker}/relay/github; the vendor listens on {}",
        hooks.vendor.addr()
    );
    let cases = [
        (
            "web/package.json",
            "d-1",
            202u16,
            "relayed (touches a manifest)",
        ),
        (
            "README.md",
            "d-2",
            200,
            "filtered out (touches no manifest)",
        ),
    ];
    let mut ok = true;
    for (file, id, expect, what) in cases {
        let body = format!(
            r#"{{"ref":"refs/heads/main","commits":[{{"id":"1","added":[],"removed":[],"modified":["{file}"]}}]}}"#
        );
        let h = github_headers("push", id, body.as_bytes(), WEBHOOK_SECRET);
        let started = Instant::now();
        let answer = post(broker, "github", &h, body.as_bytes());
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let status = answer.as_ref().map_or(0, |a| a.status);
        let detail = answer.map(|a| a.body).unwrap_or_else(|e| e.to_string());
        let mark = if status == expect { "ok" } else { "!!" };
        ok &= status == expect;
        outln!("  {mark} push {id} modifying {file:<18} -> {status} {what}  {ms:.1} ms  {detail}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hooks.vendor.received().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got: Vec<String> = hooks
        .vendor
        .received()
        .iter()
        .map(|r| r.header("X-GitHub-Delivery").unwrap_or("?").to_owned())
        .collect();
    let delivered = got == ["d-1"];
    ok &= delivered;
    outln!(
        "  {} the vendor received {got:?} (signature and delivery id kept, X-Wgbroker-Relay: github)\n",
        if delivered { "ok" } else { "!!" }
    );
    ok
}

/// Runs the demo; returns the process exit code.
pub fn run() -> u8 {
    match run_inner() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            errln!("wgbroker demo: {e}");
            71
        }
    }
}

fn run_inner() -> Result<bool, String> {
    let scm = MockScm::start(TOKEN).map_err(|e| format!("mock upstream: {e}"))?;
    let broker_key = PrivateKey::generate().map_err(|e| e.to_string())?;
    let vendor_key = PrivateKey::generate().map_err(|e| e.to_string())?;
    let vendor_ip: IpAddr = [10, 77, 0, 1].into();
    let broker_ip: IpAddr = [10, 77, 0, 2].into();
    let mut gateway = Gateway::bind(&GatewayConfig::new(
        vendor_key.clone(),
        broker_key.public_key(),
        vendor_ip,
        broker_ip,
    ))
    .map_err(|e| format!("gateway: {e}"))?;
    let hooks = WebhookDemo {
        vendor: crate::testkit::webhooks::MockVendor::start(crate::testkit::webhooks::Mode::Up)
            .map_err(|e| format!("mock vendor: {e}"))?,
        spool: std::env::temp_dir().join(format!("wgbroker-demo-{}", std::process::id())),
    };
    let text = config_text(
        &broker_key,
        &vendor_key,
        gateway.local_addr().map_err(|e| e.to_string())?,
        scm.addr(),
        &hooks,
    );
    let loaded = config::load_str(
        &[(PathBuf::from("demo.toml"), text)],
        LoadMode::Full,
        &|_: &str| None,
    )
    .map_err(|e| e.to_string())?;
    crate::telemetry::init(&loaded.config.log);

    outln!("wgbroker demo — everything on loopback, in this process");
    outln!("  upstream (SCM-like API)  http://{}", scm.addr());
    outln!(
        "  vendor gateway (UDP)     {}  tunnel address {vendor_ip}",
        gateway.local_addr().map_err(|e| e.to_string())?
    );
    outln!(
        "  broker                   public key {}  tunnel address {broker_ip}:80",
        broker_key.public_key()
    );
    outln!(
        "  rules                    {} (GitHub built-ins with code access + 1 user rule)",
        loaded.allowlist.rules().len()
    );

    let started = Instant::now();
    let broker = crate::service::start(&loaded).map_err(|e| format!("broker: {e}"))?;
    if !gateway.wait_handshake(Duration::from_secs(30)) {
        let _ = broker.shutdown();
        return Err("the broker did not complete a WireGuard handshake".into());
    }
    outln!(
        "  WireGuard handshake      completed {:.1} ms after start\n",
        started.elapsed().as_secs_f64() * 1e3
    );

    let base = format!("http://{}", scm.addr());
    let cases = cases();
    let results = send(&mut gateway, &cases, &base);
    let table = decision_table(&cases, &results, &loaded, &base);
    outln!("{}", table.text);
    let upstream_ok = upstream_saw_only_the_allowed(&scm, table.allowed_upstream);
    let port = broker
        .status()
        .outbound_port
        .load(std::sync::atomic::Ordering::Relaxed);
    let hooks_ok = webhooks(&hooks, port);
    let all_ok = table.all_ok && upstream_ok && hooks_ok;
    let _ = broker.shutdown();
    outln!(
        "  {}",
        if all_ok {
            "all expectations held"
        } else {
            "SOME EXPECTATIONS FAILED"
        }
    );
    Ok(all_ok)
}

/// The requests the demo sends, and what each should get.
fn cases() -> Vec<Case> {
    vec![
        Case {
            method: "GET",
            url: "/api/v3/repos/acme/app".into(),
            expect: 200,
            what: "repository metadata",
        },
        Case {
            method: "GET",
            url: "/api/v3/repos/acme/app/pulls".into(),
            expect: 200,
            what: "list pull requests",
        },
        Case {
            method: "GET",
            url: "/api/v3/repos/acme/app/contents/src/main.rs".into(),
            expect: 200,
            what: "read a file (code access)",
        },
        Case {
            method: "GET",
            url: "/download/1048576".into(),
            expect: 200,
            what: "1 MiB download (user rule)",
        },
        Case {
            method: "DELETE",
            url: "/api/v3/repos/acme/app".into(),
            expect: 403,
            what: "delete the repository",
        },
        Case {
            method: "PUT",
            url: "/api/v3/repos/acme/app/collaborators/mallory".into(),
            expect: 403,
            what: "add a collaborator",
        },
        Case {
            method: "GET",
            url: "/api/v3/admin/users".into(),
            expect: 403,
            what: "site admin API",
        },
        Case {
            method: "GET",
            url: "/api/v3/repos/acme/app/../../admin/users".into(),
            expect: 400,
            what: "path traversal",
        },
        Case {
            method: "GET",
            url: "/api/v3/repos/acme/app/contents/%2e%2e/%2e%2e/etc".into(),
            expect: 400,
            what: "encoded traversal",
        },
        Case {
            method: "GET",
            url: "http://169.254.169.254/latest/meta-data/".into(),
            expect: 403,
            what: "cloud metadata endpoint",
        },
        Case {
            method: "GET",
            url: "/healthcheck".into(),
            expect: 200,
            what: "broker health check",
        },
    ]
}

/// Sends each case through the tunnel, one at a time, each on a fresh tunnel connection, so
/// that latencies read cleanly.
fn send(gateway: &mut Gateway, cases: &[Case], base: &str) -> Vec<Vec<client::Exchange>> {
    let requests: Vec<Request> = cases
        .iter()
        .map(|c| {
            let target = if c.url == "/healthcheck" {
                c.url.clone()
            } else if c.url.starts_with("http") {
                format!("/proxy/{}", c.url)
            } else {
                format!("/proxy/{base}{}", c.url)
            };
            Request::new(c.method, &target)
        })
        .collect();
    requests
        .into_iter()
        .map(|r| {
            client::run(
                gateway,
                vec![vec![r]],
                RunOptions {
                    port: 80,
                    timeout: Duration::from_secs(20),
                    keep_bodies: true,
                },
            )
            .remove(0)
        })
        .collect()
}

/// The decision table the demo prints, and what it found.
struct Table {
    text: String,
    /// Every status was the expected one, and the token never reached the vendor.
    all_ok: bool,
    /// Requests the upstream answered (allowed, not the broker's own health check).
    allowed_upstream: usize,
}

/// One line per case: status, latency, size, and why (the rule that allowed it, or the reason
/// it was denied or rejected).
fn decision_table(
    cases: &[Case],
    results: &[Vec<client::Exchange>],
    loaded: &config::Loaded,
    base: &str,
) -> Table {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "  {:<3} {:<6} {:<52} {:>6} {:>9} {:>9}  decision",
        "#", "method", "request", "status", "ms", "bytes"
    );
    let mut all_ok = true;
    let mut allowed_upstream = 0usize;
    for (i, (case, res)) in cases.iter().zip(results.iter()).enumerate() {
        let ex = &res[0];
        let shown = if case.url.starts_with('/') && case.url != "/healthcheck" {
            format!("{{upstream}}{}", case.url)
        } else {
            case.url.clone()
        };
        let (status, bytes, why) = match &ex.response {
            Ok(r) => {
                let why = match r.status {
                    403 => "DENIED   url is not in allowlist".to_owned(),
                    400 => format!("REJECTED {}", json_error(&r.text())),
                    s if s < 300 && case.url == "/healthcheck" => "served by the broker".to_owned(),
                    s if s < 300 => {
                        allowed_upstream += 1;
                        format!(
                            "ALLOWED  {}",
                            rule_for(loaded, case.method, &format!("{base}{}", case.url))
                        )
                    }
                    _ => format!("upstream answered {}", r.status),
                };
                if r.text().contains(TOKEN) {
                    all_ok = false;
                    outln!("  !! the token reached the vendor side in response {i}");
                }
                (r.status, r.body.len(), why)
            }
            Err(e) => (0, 0, format!("ERROR {e}")),
        };
        let mark = if status == case.expect {
            ""
        } else {
            "  <-- unexpected"
        };
        if status != case.expect {
            all_ok = false;
        }
        let _ = writeln!(
            text,
            "  {:<3} {:<6} {:<52} {:>6} {:>9.2} {:>9}  {} ({}){mark}",
            i + 1,
            case.method,
            truncate(&shown, 52),
            status,
            ex.latency.as_secs_f64() * 1e3,
            bytes,
            why,
            case.what
        );
    }
    Table {
        text,
        all_ok,
        allowed_upstream,
    }
}

/// Prints what the upstream received; whether that was exactly the allowed requests, each with
/// the injected token (but the user rule's downloads), and nothing denied or rejected.
fn upstream_saw_only_the_allowed(scm: &MockScm, allowed_upstream: usize) -> bool {
    let seen = scm.seen();
    let with_token = seen
        .iter()
        .filter(|s| s.header("authorization") == Some(&format!("Bearer {TOKEN}")))
        .count();
    let leaked = seen
        .iter()
        .any(|s| s.target.contains("..") || s.method == "DELETE" || s.method == "PUT");
    outln!(
        "  upstream received {} request(s), {} with the injected token; denied and rejected requests reached it: {}",
        seen.len(),
        with_token,
        if leaked { "YES" } else { "none" }
    );
    let downloads = seen
        .iter()
        .filter(|s| s.target.starts_with("/download"))
        .count();
    seen.len() == allowed_upstream && with_token == seen.len() - downloads && !leaked
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The `error` field of a broker error body (`server::ErrorBody`), else the body as it is.
fn json_error(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

fn rule_for(loaded: &config::Loaded, method: &str, url: &str) -> String {
    match CanonUrl::parse(url) {
        Ok(u) => match loaded.allowlist.decide(method, &u, &[]) {
            Decision::Allowed { rule_id, rule } => format!("rule #{rule_id} {}", rule.spec.origin),
            Decision::Denied(r) => format!("(explain says denied: {r})"),
        },
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_reads_the_error_field_of_a_broker_body() {
        let body = r#"{"error":"upstream said \"no\"","request_id":"r-1"}"#;
        assert_eq!(json_error(body), r#"upstream said "no""#);
        assert_eq!(json_error("plain text"), "plain text");
        assert_eq!(
            json_error(r#"{"request_id":"r-1"}"#),
            r#"{"request_id":"r-1"}"#
        );
    }
}
