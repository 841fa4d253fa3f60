//! Rule specifications: what a rule says, before it is compiled.
//!
//! A [`RuleSpec`] is the validated-by-type form of one `[[allow]]` entry or one generated SCM rule.
//! The config layer builds them (user rules first, then SCM rules, in order) and hands the whole
//! list to [`super::Allowlist::compile`]; the compiled rule keeps the spec for the proxy (headers to
//! set, headers to remove, logging flags) and for `explain`/`dump`.

use crate::secret::Secret;

/// Where a rule came from; `explain`, logs and metrics name rules by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOrigin {
    /// The `index`-th `[[allow]]` entry of the merged configuration (0-based).
    User { index: usize },
    /// Generated from the `index`-th `[[scm]]` entry; `template` is the path template of the
    /// built-in table the rule was generated from.
    Scm {
        index: usize,
        kind: super::scm::ScmKind,
        template: &'static str,
    },
}

/// A constraint on a query parameter or request header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueConstraint {
    /// The value equals this string exactly.
    Equals(String),
    /// The value starts with this string.
    Prefix(String),
    /// The value is one of these strings.
    OneOf(Vec<String>),
}

/// Per-rule logging switches (`log_request_headers` and friends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogFlags {
    pub request_headers: bool,
    pub response_headers: bool,
    pub request_body: bool,
    pub response_body: bool,
}

/// One rule as configured or generated, not yet compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// URL pattern (DESIGN.md section 5), e.g. `https://ghe.example.com/api/v3/repos/:owner/:repo`.
    pub url: String,
    /// Allowed methods, matched exactly (case-sensitive): the standard ones (`GET`, `POST`, ...,
    /// `OPTIONS`) or any other RFC 9110 token (`PROPFIND`, `MKCOL`); never `CONNECT`, never empty.
    pub methods: Vec<String>,
    /// Headers set on the upstream request, overriding whatever the vendor sent.
    pub set_request_headers: Vec<(String, Secret)>,
    /// Headers removed from the upstream response before it goes back through the tunnel.
    pub remove_response_headers: Vec<String>,
    /// Logging switches.
    pub log: LogFlags,
    /// Globs the captured path remainder must match (Snyk-style "manifest files only"); empty =
    /// no constraint.
    pub path_files: Vec<String>,
    /// Query parameter constraints (all must hold); empty = query unconstrained.
    pub query: Vec<(String, ValueConstraint)>,
    /// Request header constraints (all must hold); header names are case-insensitive.
    pub headers: Vec<(String, ValueConstraint)>,
    /// Where the rule came from.
    pub origin: RuleOrigin,
}

impl std::fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleOrigin::User { index } => write!(f, "[[allow]] entry {index} (allow[{index}])"),
            RuleOrigin::Scm {
                index,
                kind,
                template,
            } => write!(f, "built-in {kind:?} rule `{template}` of scm[{index}]"),
        }
    }
}
