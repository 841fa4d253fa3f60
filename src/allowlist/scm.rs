//! Built-in SCM rule sets: one `[[scm]]` entry (kind, base URL, token, `allow_code_access`)
//! turned into [`RuleSpec`]s from the data tables in `scm_table.rs`.
//!
//! Mechanics (shared/reference/scm-allowlists.md): templates are joined to the base URL like Go's
//! `JoinPath` (the base path is kept, slashes normalised); git smart-HTTP ("root") templates are
//! joined to `scheme://host[:port]`; Azure DevOps' group-entitlements rule uses the base with
//! `dev.azure.com` replaced by `vsaex.dev.azure.com`; GitHub rules on `/repos/:owner/:repo` (or
//! `:org`) are also generated on `/repositories/:id(\d+)`. Every rule gets the SCM's token header.
//!
//! Invariants: rules come out in table order (the duplicate right after its original), every
//! generated pattern compiles, and the base path is escaped so that it can never be read as
//! pattern syntax. A token only ever travels inside a [`Secret`].

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
    fn token_header(self, token: &Secret) -> (String, Secret) {
        match self {
            ScmKind::Github | ScmKind::Bitbucket => (
                "Authorization".to_owned(),
                Secret::new(format!("Bearer {}", token.expose())),
            ),
            ScmKind::Gitlab => ("PRIVATE-TOKEN".to_owned(), token.clone()),
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

/// Generates the rules of the `index`-th `[[scm]]` entry.
pub fn rules(
    kind: ScmKind,
    index: usize,
    base_url: &str,
    token: Option<&Secret>,
    allow_code_access: bool,
) -> Result<Vec<RuleSpec>, String> {
    let api = prefix(base_url, false)?;
    let root = prefix(base_url, true)?;
    let vsaex = match kind {
        ScmKind::Azuredevops => Some(vsaex_prefix(base_url)?),
        _ => None,
    };
    let headers: Vec<(String, Secret)> = token.map(|t| kind.token_header(t)).into_iter().collect();
    let mut out = Vec::new();
    for &(methods, template, base, gate) in kind.table() {
        if gate == Gate::Code && !allow_code_access {
            continue;
        }
        let prefix = match base {
            Base::Api => &api,
            Base::Root => &root,
            Base::Vsaex => vsaex.as_ref().unwrap_or(&api),
        };
        let spec = |path: &str| RuleSpec {
            url: format!("{prefix}{path}"),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            set_request_headers: headers.clone(),
            remove_response_headers: Vec::new(),
            log: LogFlags::default(),
            path_files: Vec::new(),
            query: Vec::new(),
            headers: Vec::new(),
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
    Ok(out)
}

/// `template` with its `/repos/:owner/:repo` (or `:org`) prefix replaced by the by-id form.
fn github_by_id(template: &str) -> Option<String> {
    GITHUB_REPO_PREFIXES.iter().find_map(|p| {
        let rest = template.strip_prefix(p)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{GITHUB_REPO_BY_ID}{rest}"))
    })
}

/// A base URL that does not parse, echoed without the credentials it may (wrongly) carry.
fn invalid_base(base_url: &str, why: &str) -> String {
    format!(
        "base_url {:?}: {why}",
        crate::secret::redact_userinfo(base_url)
    )
}

/// `scheme://authority` plus (unless `root`) the base path, escaped, without a trailing `/`.
fn prefix(base_url: &str, root: bool) -> Result<String, String> {
    let base = CanonUrl::parse(base_url).map_err(|e| invalid_base(base_url, e.0))?;
    if base.userinfo.is_some() {
        return Err("base_url must not contain credentials (use `token`)".to_owned());
    }
    if base.query.is_some() {
        return Err("base_url must not contain a query".to_owned());
    }
    let mut out = format!("{}://{}", base.scheme, base.authority());
    if !root {
        for seg in base.path.split('/').filter(|s| !s.is_empty()) {
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
    }
    Ok(out)
}

/// The Azure DevOps "vsaex" base: `dev.azure.com` replaced by `vsaex.dev.azure.com`.
fn vsaex_prefix(base_url: &str) -> Result<String, String> {
    let canonical = CanonUrl::parse(base_url)
        .map_err(|e| invalid_base(base_url, e.0))?
        .to_string();
    let replaced = if canonical.contains("://vsaex.dev.azure.com") {
        canonical
    } else {
        canonical.replacen("dev.azure.com", "vsaex.dev.azure.com", 1)
    };
    prefix(&replaced, false)
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
            prefix("https://h/a/:b/c*", false).as_deref(),
            Ok("https://h/a/\\:b/c\\*")
        );
        assert!(rules(ScmKind::Github, 0, "https://u:p@h/", None, false).is_err());
        assert!(rules(ScmKind::Github, 0, "ftp://h/", None, false).is_err());
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

    #[test]
    fn vsaex_base() {
        assert_eq!(
            vsaex_prefix("https://dev.azure.com").as_deref(),
            Ok("https://vsaex.dev.azure.com")
        );
        assert_eq!(
            vsaex_prefix("https://ado.corp/tfs").as_deref(),
            Ok("https://ado.corp/tfs")
        );
    }
}
