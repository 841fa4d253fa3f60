//! Built-in SCM rule sets: one `[[scm]]` entry (kind, base URL, token, `allow_code_access`)
//! turned into [`RuleSpec`]s from the data tables in `scm_table.rs`.
//!
//! Mechanics (shared/reference/scm-allowlists.md): templates are joined to the base URL like Go's
//! `JoinPath` (the base path is kept, slashes normalised); git smart-HTTP templates are joined to
//! the entry's **web root**, the base without its API suffix (`https://h/gitlab` for
//! `https://h/gitlab/api/v4`; see [`Instance`]); Azure DevOps' group-entitlements rule uses the
//! base with `dev.azure.com` replaced by `vsaex.dev.azure.com`; GitHub rules on
//! `/repos/:owner/:repo` (or `:org`) are also generated on `/repositories/:id(\d+)`. Every rule
//! gets the SCM's token header.
//!
//! Deviation from the reference: it joins git smart-HTTP templates to `scheme://host`. With two
//! instances on one host (`https://h/gitlab-a/api/v4`, `https://h/gitlab-b/api/v4`) the first
//! one's `/{:namespace/}+:project/info/refs` then matched the second one's clone URLs, and the
//! first one's token was sent to the second. Joined to the web root, each instance's rules stay
//! under its own path; entries whose places overlap anyway are refused by the configuration
//! ([`Instance::conflict`]).
//!
//! Invariants: rules come out in table order (the duplicate right after its original), every
//! generated pattern compiles, every rule lies under one of its entry's roots, and the base path
//! is escaped so that it can never be read as pattern syntax. A token only ever travels inside a
//! [`Secret`].

use std::fmt;

use base64::Engine as _;

use super::canon::CanonUrl;
use super::scm_table::{self, Base, Gate, Row};
use super::{LogFlags, RuleOrigin, RuleSpec};
use crate::secret::Secret;

/// The SCM systems with a built-in rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScmKind {
    /// GitHub Enterprise Server or github.com.
    Github,
    /// GitLab (self-managed or gitlab.com).
    Gitlab,
    /// Bitbucket Data Center / Server.
    Bitbucket,
    /// Azure DevOps Services or Server.
    Azuredevops,
}

impl ScmKind {
    /// The built-in table of this SCM.
    fn table(self) -> &'static [Row] {
        match self {
            ScmKind::Github => scm_table::GITHUB,
            ScmKind::Gitlab => scm_table::GITLAB,
            ScmKind::Bitbucket => scm_table::BITBUCKET,
            ScmKind::Azuredevops => scm_table::AZUREDEVOPS,
        }
    }

    /// The header carrying a token, with its value.
    ///
    /// The value is a new inline [`Secret`] for every kind, also GitLab's (the token itself): the
    /// generated rules are shown with `"<redacted>"`, and the token's source once, at
    /// `scm[N].token`.
    fn token_header(self, token: &Secret) -> (String, Secret) {
        match self {
            ScmKind::Github | ScmKind::Bitbucket => (
                "Authorization".to_owned(),
                Secret::new(format!("Bearer {}", token.expose())),
            ),
            ScmKind::Gitlab => ("PRIVATE-TOKEN".to_owned(), Secret::new(token.expose())),
            ScmKind::Azuredevops => (
                "Authorization".to_owned(),
                Secret::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(token.expose())
                )),
            ),
        }
    }
}

/// The GitHub repository prefixes that are also reachable by numeric id.
const GITHUB_REPO_PREFIXES: [&str; 2] = ["/repos/:owner/:repo", "/repos/:org/:repo"];
const GITHUB_REPO_BY_ID: &str = r"/repositories/:id(\d+)";

/// Generates the rules of the `index`-th `[[scm]]` entry (see [`Instance::rules`]).
pub fn rules(
    kind: ScmKind,
    index: usize,
    base_url: &str,
    token: Option<&Secret>,
    allow_code_access: bool,
) -> Result<Vec<RuleSpec>, String> {
    Ok(Instance::new(kind, base_url)?.rules(index, token, allow_code_access))
}

/// One `[[scm]]` entry's places: its API base, its web root and (Azure DevOps on
/// `dev.azure.com`) its entitlements base.
///
/// Every rule [`Instance::rules`] generates is one of its roots (the web root, or the
/// entitlements base) followed by `/` and a template, and the roots are literal segments only
/// (escaped so that none reads as pattern syntax). Two entries whose roots are
/// *disjoint* (another scheme, host or port, or neither path a segment-wise prefix of the other)
/// can therefore never match the same request, whatever their templates: a request that one
/// entry's rule allows carries that entry's token and no other. [`Instance::conflict`] finds the
/// pairs that are not disjoint; the configuration refuses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    kind: ScmKind,
    api: Prefix,
    web: Prefix,
    vsaex: Option<Prefix>,
}

/// A base URL that does not parse, echoed without the credentials it may (wrongly) carry.
fn invalid_base(base_url: &str, why: &str) -> String {
    format!(
        "base_url {:?}: {why}",
        crate::secret::redact_userinfo(base_url)
    )
}

/// A URL prefix: a canonical `scheme://authority` and the path segments under it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix {
    origin: String,
    segments: Vec<String>,
}

impl Prefix {
    /// The prefix of a base URL (its path kept, empty segments dropped, canonicalised).
    fn parse(base_url: &str) -> Result<Prefix, String> {
        let base = CanonUrl::parse(base_url).map_err(|e| invalid_base(base_url, e.0))?;
        if base.userinfo.is_some() {
            return Err("base_url must not contain credentials (use `token`)".to_owned());
        }
        if base.query.is_some() {
            return Err("base_url must not contain a query".to_owned());
        }
        // An upstream may decode `%2F` and route `/a%2Fb` to another instance's `/a/b`: the
        // segment-wise disjointness `Instance::conflict` relies on would not hold.
        if base.path.contains("%2F") {
            return Err("base_url must not contain an encoded '/' (%2F)".to_owned());
        }
        Ok(Prefix {
            origin: format!("{}://{}", base.scheme, base.authority()),
            segments: base
                .path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// The first `n` segments.
    fn truncated(&self, n: usize) -> Prefix {
        Prefix {
            origin: self.origin.clone(),
            segments: self.segments.iter().take(n).cloned().collect(),
        }
    }

    /// As a pattern prefix without a trailing `/`: segments escaped so that none can be read as
    /// pattern syntax.
    fn pattern(&self) -> String {
        let mut out = self.origin.clone();
        for seg in &self.segments {
            out.push('/');
            if seg.starts_with(':') {
                out.push('\\');
            }
            for c in seg.chars() {
                if c == '*' {
                    out.push('\\');
                }
                out.push(c);
            }
        }
        out
    }

    /// Whether every URL under `other` is also under `self` (`self` equal to or above it).
    fn contains(&self, other: &Prefix) -> bool {
        self.origin == other.origin && other.segments.starts_with(&self.segments)
    }
}

/// `scheme://authority/seg/...`, as a person would write it.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        for seg in &self.segments {
            write!(f, "/{seg}")?;
        }
        Ok(())
    }
}

impl ScmKind {
    /// How many trailing segments of an API base path are the API itself (the web root is what
    /// comes before): GitHub Enterprise `/api/v3`, GitLab `/api/v4`, Bitbucket Data Center
    /// `/rest/api/<version>`. A base not shaped like that (github.com's `https://api.github.com`,
    /// Azure DevOps, which has no git smart-HTTP rules outside its base, or an unusual
    /// installation) is its own web root: the narrowest choice, so rules never leave the base.
    fn api_suffix_len(self, segments: &[String]) -> usize {
        let ends_with = |suffix: &[&str]| {
            segments.len() >= suffix.len()
                && segments[segments.len() - suffix.len()..]
                    .iter()
                    .zip(suffix)
                    .all(|(s, want)| s == want)
        };
        match self {
            ScmKind::Github if ends_with(&["api", "v3"]) => 2,
            ScmKind::Gitlab if ends_with(&["api", "v4"]) => 2,
            ScmKind::Bitbucket
                if segments.len() >= 3
                    && segments[segments.len() - 3] == "rest"
                    && segments[segments.len() - 2] == "api" =>
            {
                3
            }
            _ => 0,
        }
    }
}

impl Instance {
    /// Parses an entry's base URL and derives its web root (and vsaex base).
    pub fn new(kind: ScmKind, base_url: &str) -> Result<Instance, String> {
        let api = Prefix::parse(base_url)?;
        let web = api.truncated(api.segments.len() - kind.api_suffix_len(&api.segments));
        let vsaex = match kind {
            ScmKind::Azuredevops => Some(vsaex_prefix(base_url)?).filter(|v| *v != api),
            _ => None,
        };
        Ok(Instance {
            kind,
            api,
            web,
            vsaex,
        })
    }

    /// The web root: the base URL without its API suffix (`https://h/gitlab` for
    /// `https://h/gitlab/api/v4`). Git smart-HTTP rules are relative to it.
    pub fn web_root(&self) -> String {
        self.web.to_string()
    }

    /// The prefixes every generated rule lies under: the web root (the API base is inside it)
    /// and, for Azure DevOps Services, the vsaex base.
    fn roots(&self) -> impl Iterator<Item = (&'static str, &Prefix)> {
        std::iter::once(("web root", &self.web))
            .chain(self.vsaex.iter().map(|v| ("entitlements base", v)))
    }

    /// Why this entry cannot be configured together with the `earlier`-th entry `other`, if it
    /// cannot: the same type and base (only one of the two could ever match), or roots that are
    /// equal or nested (one entry's rules could match the other's URLs, and send its token
    /// there). The message names URLs, never a token.
    pub fn conflict(&self, other: &Instance, earlier: usize) -> Option<String> {
        if self.kind == other.kind && self.api == other.api {
            return Some(format!(
                "same type and base_url as scm[{earlier}]: its rules would match every request \
                 first, so this entry's could never be used; keep one entry per instance"
            ));
        }
        for (what, mine) in self.roots() {
            for (theirs_what, theirs) in other.roots() {
                let problem = if mine == theirs {
                    format!("is also the {theirs_what} of scm[{earlier}]")
                } else if theirs.contains(mine) {
                    format!(
                        "is inside the {theirs_what} {theirs} of scm[{earlier}]: its rules could \
                         match this entry's URLs and send its token here"
                    )
                } else if mine.contains(theirs) {
                    format!(
                        "contains the {theirs_what} {theirs} of scm[{earlier}]: this entry's rules \
                         could match its URLs and send this entry's token there"
                    )
                } else {
                    continue;
                };
                return Some(format!(
                    "{what} {mine} {problem}; instances on one host need disjoint paths \
                     (use [[allow]] rules for the other one)"
                ));
            }
        }
        None
    }

    /// [`Instance::rules`] with a pool of `tokens` (two or more): every generated rule shares one
    /// [`TokenPool`](super::pool::TokenPool) of the token header, round-robin per request.
    pub fn rules_with_pool(
        &self,
        index: usize,
        tokens: &[Secret],
        allow_code_access: bool,
    ) -> Vec<RuleSpec> {
        let headers: Vec<(String, Secret)> =
            tokens.iter().map(|t| self.kind.token_header(t)).collect();
        let Some(name) = headers.first().map(|(n, _)| n.clone()) else {
            return self.rules(index, None, allow_code_access);
        };
        let pool = std::sync::Arc::new(super::pool::TokenPool::new(
            name,
            headers.into_iter().map(|(_, v)| v).collect(),
            super::pool::SET_ASIDE,
        ));
        let mut rules = self.rules(index, None, allow_code_access);
        for r in &mut rules {
            r.token_pool = Some(pool.clone());
        }
        rules
    }

    /// The rules of this entry as the `index`-th `[[scm]]`, in table order.
    pub fn rules(
        &self,
        index: usize,
        token: Option<&Secret>,
        allow_code_access: bool,
    ) -> Vec<RuleSpec> {
        let kind = self.kind;
        let api = self.api.pattern();
        let web = self.web.pattern();
        let vsaex = self.vsaex.as_ref().map(Prefix::pattern);
        let headers: Vec<(String, Secret)> =
            token.map(|t| kind.token_header(t)).into_iter().collect();
        let mut out = Vec::new();
        for &(methods, template, base, gate) in kind.table() {
            if gate == Gate::Code && !allow_code_access {
                continue;
            }
            let prefix = match base {
                Base::Api => &api,
                Base::Web => &web,
                Base::Vsaex => vsaex.as_ref().unwrap_or(&api),
            };
            let spec = |path: &str| RuleSpec {
                url: format!("{prefix}{path}"),
                methods: methods.iter().map(|m| (*m).to_owned()).collect(),
                set_request_headers: headers.clone(),
                token_pool: None,
                remove_response_headers: Vec::new(),
                log: LogFlags::default(),
                path_files: Vec::new(),
                query: Vec::new(),
                headers: Vec::new(),
                body: Vec::new(),
                origin: RuleOrigin::Scm {
                    index,
                    kind,
                    template,
                },
            };
            out.push(spec(template));
            if kind == ScmKind::Github {
                if let Some(by_id) = github_by_id(template) {
                    out.push(spec(&by_id));
                }
            }
        }
        out
    }
}

/// `template` with its `/repos/:owner/:repo` (or `:org`) prefix replaced by the by-id form.
fn github_by_id(template: &str) -> Option<String> {
    GITHUB_REPO_PREFIXES.iter().find_map(|p| {
        let rest = template.strip_prefix(p)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{GITHUB_REPO_BY_ID}{rest}"))
    })
}

/// The Azure DevOps "vsaex" base: `dev.azure.com` replaced by `vsaex.dev.azure.com`.
fn vsaex_prefix(base_url: &str) -> Result<Prefix, String> {
    let canonical = CanonUrl::parse(base_url)
        .map_err(|e| invalid_base(base_url, e.0))?
        .to_string();
    let replaced = if canonical.contains("://vsaex.dev.azure.com") {
        canonical
    } else {
        canonical.replacen("dev.azure.com", "vsaex.dev.azure.com", 1)
    };
    Prefix::parse(&replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::Allowlist;

    const KINDS: [ScmKind; 4] = [
        ScmKind::Github,
        ScmKind::Gitlab,
        ScmKind::Bitbucket,
        ScmKind::Azuredevops,
    ];

    #[test]
    fn every_table_compiles() {
        for kind in KINDS {
            for code in [false, true] {
                let specs = rules(kind, 0, "https://scm.example.com/api/x", None, code)
                    .expect("valid base");
                assert!(!specs.is_empty());
                if let Err(e) = Allowlist::compile(specs) {
                    panic!("{kind:?}: {e:?}");
                }
            }
        }
    }

    #[test]
    fn joins_like_go_join_path() {
        for base in [
            "https://H.example.com/api/v3",
            "https://h.example.com/api/v3/",
        ] {
            let specs = rules(ScmKind::Github, 0, base, None, false).expect("valid");
            assert_eq!(
                specs[0].url,
                "https://h.example.com/api/v3/repos/:owner/:repo"
            );
        }
        let specs = rules(ScmKind::Github, 0, "https://h:8443/", None, false).expect("valid");
        assert_eq!(specs[0].url, "https://h:8443/repos/:owner/:repo");
        assert_eq!(
            Prefix::parse("https://h/a/:b/c*")
                .map(|p| p.pattern())
                .as_deref(),
            Ok("https://h/a/\\:b/c\\*")
        );
        assert!(rules(ScmKind::Github, 0, "https://u:p@h/", None, false).is_err());
        assert!(rules(ScmKind::Github, 0, "ftp://h/", None, false).is_err());
        assert!(rules(ScmKind::Gitlab, 0, "https://h/a%2fb/api/v4", None, false).is_err());
    }

    #[test]
    fn github_duplicates_follow_their_original() {
        let specs = rules(ScmKind::Github, 0, "https://h/api/v3", None, true).expect("valid");
        let by_id: Vec<_> = specs
            .iter()
            .filter(|s| s.url.contains("/repositories/:id("))
            .collect();
        let originals = scm_table::GITHUB
            .iter()
            .filter(|r| GITHUB_REPO_PREFIXES.iter().any(|p| r.1.starts_with(p)))
            .count();
        assert_eq!(by_id.len(), originals);
        assert_eq!(specs.len(), scm_table::GITHUB.len() + originals);
        assert_eq!(github_by_id("/repos/:owner/:repository"), None);
    }

    /// Every generated rule lives under its instance's web root (the git smart-HTTP rules
    /// included) or, for Azure DevOps' entitlements rule, under the vsaex variant of the base.
    #[test]
    fn every_rule_stays_under_its_web_root() {
        let cases: &[(ScmKind, &str, &[&str])] = &[
            (
                ScmKind::Github,
                "https://h.example/api/v3",
                &["https://h.example"],
            ),
            (
                ScmKind::Github,
                "https://h.example/ghe/api/v3/",
                &["https://h.example/ghe"],
            ),
            (
                ScmKind::Github,
                "https://api.github.com",
                &["https://api.github.com"],
            ),
            (
                ScmKind::Gitlab,
                "https://scm.corp/gitlab-b/api/v4",
                &["https://scm.corp/gitlab-b"],
            ),
            (
                ScmKind::Gitlab,
                "https://scm.corp/api/v4",
                &["https://scm.corp"],
            ),
            (
                ScmKind::Gitlab,
                "https://scm.corp/odd",
                &["https://scm.corp/odd"],
            ),
            (
                ScmKind::Bitbucket,
                "https://h.example/bitbucket/rest/api/1.0",
                &["https://h.example/bitbucket"],
            ),
            (
                ScmKind::Bitbucket,
                "https://h.example/rest/api/latest",
                &["https://h.example"],
            ),
            (
                ScmKind::Azuredevops,
                "https://ado.corp/tfs/Collection",
                &["https://ado.corp/tfs/Collection"],
            ),
            (
                ScmKind::Azuredevops,
                "https://dev.azure.com/org",
                &[
                    "https://dev.azure.com/org",
                    "https://vsaex.dev.azure.com/org",
                ],
            ),
        ];
        for &(kind, base, roots) in cases {
            let specs = rules(kind, 0, base, None, true).expect("valid base");
            for s in &specs {
                assert!(
                    roots.iter().any(|r| s.url.starts_with(&format!("{r}/"))),
                    "{kind:?} {base}: {} is outside {roots:?}",
                    s.url
                );
            }
        }
    }

    /// Two GitLab instances under one host, each with its own token: a request for one is never
    /// allowed by a rule of the other, so it never carries the other's token.
    #[test]
    fn two_instances_on_one_host_keep_their_own_tokens() {
        let (a, b) = (Secret::new("token-a"), Secret::new("token-b"));
        let mut specs = rules(
            ScmKind::Gitlab,
            0,
            "https://scm.corp/gitlab-a/api/v4",
            Some(&a),
            true,
        )
        .expect("valid");
        specs.extend(
            rules(
                ScmKind::Gitlab,
                1,
                "https://scm.corp/gitlab-b/api/v4",
                Some(&b),
                true,
            )
            .expect("valid"),
        );
        let al = Allowlist::compile(specs).expect("compiles");
        for (method, url, want) in [
            (
                "GET",
                "https://scm.corp/gitlab-b/group/proj.git/info/refs?service=git-upload-pack",
                Some((1, "token-b")),
            ),
            (
                "POST",
                "https://scm.corp/gitlab-b/group/sub/proj/git-upload-pack",
                Some((1, "token-b")),
            ),
            (
                "GET",
                "https://scm.corp/gitlab-b/api/v4/projects/7",
                Some((1, "token-b")),
            ),
            (
                "GET",
                "https://scm.corp/gitlab-a/group/proj.git/info/refs",
                Some((0, "token-a")),
            ),
            (
                "POST",
                "https://scm.corp/gitlab-a/group/proj/git-receive-pack",
                Some((0, "token-a")),
            ),
            (
                "GET",
                "https://scm.corp/gitlab-a/api/v4/projects/7",
                Some((0, "token-a")),
            ),
            // Outside both web roots: nobody's token.
            ("GET", "https://scm.corp/group/proj.git/info/refs", None),
            (
                "GET",
                "https://scm.corp/gitlab-c/group/proj/info/refs",
                None,
            ),
        ] {
            let canon = CanonUrl::parse(url).expect("canonical");
            let got = al.decide(method, &canon, &[]).rule().map(|r| {
                let RuleOrigin::Scm { index, .. } = r.spec.origin else {
                    panic!("only SCM rules here");
                };
                (index, r.spec.set_request_headers[0].1.expose().to_owned())
            });
            assert_eq!(got, want.map(|(i, t)| (i, t.to_owned())), "{method} {url}");
        }
    }

    #[test]
    fn conflicts_are_same_bases_and_overlapping_roots() {
        let inst = |kind, base| Instance::new(kind, base).expect("valid base");
        let gl = |base| inst(ScmKind::Gitlab, base);
        // Same type and base, however spelt.
        let dup = gl("https://SCM.corp:443/gitlab/api/v4/")
            .conflict(&gl("https://scm.corp/gitlab/api/v4"), 3);
        assert!(dup.is_some_and(|m| m.contains("same type and base_url as scm[3]")));
        // Nested web roots, either way round, also across types.
        let inner =
            gl("https://scm.corp/gitlab-b/api/v4").conflict(&gl("https://scm.corp/api/v4"), 0);
        assert!(
            inner.is_some_and(|m| m.contains("inside the web root https://scm.corp of scm[0]"))
        );
        let outer = inst(ScmKind::Github, "https://scm.corp/api/v3").conflict(
            &inst(ScmKind::Bitbucket, "https://scm.corp/bb/rest/api/1.0"),
            1,
        );
        assert!(
            outer
                .is_some_and(|m| m.contains("contains the web root https://scm.corp/bb of scm[1]"))
        );
        // Equal web roots of different types (GitHub and GitLab both at the host root).
        let same_root = inst(ScmKind::Github, "https://scm.corp/api/v3")
            .conflict(&gl("https://scm.corp/api/v4"), 0);
        assert!(same_root.is_some_and(|m| m.contains("is also the web root of scm[0]")));
        // Azure DevOps: the entitlements base counts too.
        let ado = |base| inst(ScmKind::Azuredevops, base);
        assert!(
            ado("https://dev.azure.com")
                .conflict(&ado("https://dev.azure.com/org"), 0)
                .is_some()
        );
        assert!(
            ado("https://vsaex.dev.azure.com/org")
                .conflict(&ado("https://dev.azure.com/org"), 0)
                .is_some_and(|m| m.contains("entitlements base"))
        );
        // Disjoint: sibling paths (segment-wise, not by characters), other hosts, schemes, ports.
        for (a, b) in [
            (
                "https://scm.corp/gitlab/api/v4",
                "https://scm.corp/gitlab-b/api/v4",
            ),
            ("https://scm.corp/api/v4", "https://other.corp/api/v4"),
            ("https://scm.corp/api/v4", "http://scm.corp/api/v4"),
            ("https://scm.corp/api/v4", "https://scm.corp:8443/api/v4"),
        ] {
            assert_eq!(gl(a).conflict(&gl(b), 0), None, "{a} {b}");
            assert_eq!(gl(b).conflict(&gl(a), 0), None, "{b} {a}");
        }
        assert_eq!(
            ado("https://dev.azure.com/a").conflict(&ado("https://dev.azure.com/b"), 0),
            None
        );
    }

    #[test]
    fn vsaex_base() {
        assert_eq!(
            vsaex_prefix("https://dev.azure.com")
                .map(|p| p.to_string())
                .as_deref(),
            Ok("https://vsaex.dev.azure.com")
        );
        assert_eq!(
            vsaex_prefix("https://ado.corp/tfs")
                .map(|p| p.to_string())
                .as_deref(),
            Ok("https://ado.corp/tfs")
        );
    }
}
