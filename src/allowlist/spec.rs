//! Rule specifications: what a rule says, before it is compiled.
//!
//! A [`RuleSpec`] is the validated-by-type form of one `[[allow]]` entry or one generated SCM rule.
//! The config layer builds them (user rules first, then SCM rules, in order) and hands the whole
//! list to [`super::Allowlist::compile`]; the compiled rule keeps the spec for the proxy (headers to
//! set, headers to remove, logging flags) and for `explain`/`dump`.
//!
//! `Serialize` gives a rule in the keys of `[[allow]]` (what `dump` lists as `[[rules]]`): empty
//! lists and unset flags are left out, header values show their source, never their value (see
//! [`Secret`]), and `origin` names where the rule came from.

use serde::Serialize;
use serde::ser::Serializer;

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

/// A constraint on a query parameter or request header value; serialized as configured
/// (`{ equals = "v" }`, `{ prefix = "v" }`, `{ one_of = ["a", "b"] }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueConstraint {
    /// The value equals this string exactly.
    Equals(String),
    /// The value starts with this string.
    Prefix(String),
    /// The value is one of these strings.
    OneOf(Vec<String>),
}

/// Per-rule logging switches (`log_request_headers` and friends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogFlags {
    #[serde(rename = "log_request_headers", skip_serializing_if = "is_off")]
    pub request_headers: bool,
    #[serde(rename = "log_response_headers", skip_serializing_if = "is_off")]
    pub response_headers: bool,
    #[serde(rename = "log_request_body", skip_serializing_if = "is_off")]
    pub request_body: bool,
    #[serde(rename = "log_response_body", skip_serializing_if = "is_off")]
    pub response_body: bool,
}

fn is_off(b: &bool) -> bool {
    !b
}

/// One rule as configured or generated, not yet compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSpec {
    /// URL pattern (DESIGN.md section 5), e.g. `https://ghe.example.com/api/v3/repos/:owner/:repo`.
    pub url: String,
    /// Allowed methods, matched exactly (case-sensitive): the standard ones (`GET`, `POST`, ...,
    /// `OPTIONS`) or any other RFC 9110 token (`PROPFIND`, `MKCOL`); never `CONNECT`, never empty.
    pub methods: Vec<String>,
    /// Headers set on the upstream request, overriding whatever the vendor sent.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_table")]
    pub set_request_headers: Vec<(String, Secret)>,
    /// A header whose value is one of several tokens, round-robin per request (see
    /// [`super::pool`]); `None`: no pool.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "pool_sources"
    )]
    pub token_pool: Option<std::sync::Arc<super::pool::TokenPool>>,
    /// Headers removed from the upstream response before it goes back through the tunnel.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_response_headers: Vec<String>,
    /// Logging switches.
    #[serde(flatten)]
    pub log: LogFlags,
    /// Globs the captured path remainder must match (Snyk-style "manifest files only"); empty =
    /// no constraint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path_files: Vec<String>,
    /// Query parameter constraints (all must hold); empty = query unconstrained.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_table")]
    pub query: Vec<(String, ValueConstraint)>,
    /// Request header constraints (all must hold); header names are case-insensitive.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_table")]
    pub headers: Vec<(String, ValueConstraint)>,
    /// Request body constraints (`[[allow.body]]`, all must hold): JSON Pointer selections of
    /// which **every** value must satisfy the condition (see [`super::filter`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<WhenSpec>,
    /// Where the rule came from; serialized as `allow[N]` or `scm[N] Kind /template`.
    #[serde(serialize_with = "origin_label")]
    pub origin: RuleOrigin,
}

/// A token pool as `{ Header = [source, ...] }`.
fn pool_sources<S: Serializer>(
    p: &Option<std::sync::Arc<super::pool::TokenPool>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => p.as_ref().serialize(s),
        None => s.serialize_none(),
    }
}

/// `(name, value)` pairs as the table they were configured as.
fn as_table<V: Serialize, S: Serializer>(pairs: &[(String, V)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

fn origin_label<S: Serializer>(origin: &RuleOrigin, s: S) -> Result<S::Ok, S::Error> {
    match origin {
        RuleOrigin::User { index } => s.collect_str(&format_args!("allow[{index}]")),
        RuleOrigin::Scm {
            index,
            kind,
            template,
        } => s.collect_str(&format_args!("scm[{index}] {kind:?} {template}")),
    }
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

/// A selector and exactly one condition: `[[outbound.relay.when]]` and `[[allow.body]]` (see
/// [`super::filter`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WhenSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glob: Option<Vec<String>>,
}
