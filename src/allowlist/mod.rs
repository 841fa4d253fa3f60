//! The allowlist: URL canonicalisation, pattern compilation and the per-request decision.
//!
//! Data flow: the config layer builds [`RuleSpec`]s (user rules first, then the SCM rules from
//! [`scm::rules`]); [`Allowlist::compile`] validates all of them at once and compiles them into one
//! `trie` (scheme+host+port → path segment trie → method bitmask → rule id) plus per-rule
//! `constraint`s. A rule may list any RFC 9110 method token: the eight standard methods have
//! fixed bits, extension methods (`PROPFIND`, `MKCOL`, ...) get bits as the rules name them
//! (`constraint::MethodTable`). Per request the proxy canonicalises the upstream URL once
//! ([`CanonUrl::parse`]), asks [`Allowlist::decide`], and forwards exactly the URL it matched.
//!
//! Invariants:
//! * first match in rule order wins: the allowed rule is the lowest-indexed rule whose pattern,
//!   method and constraints all hold (a rule whose constraint fails does not stop the search);
//!   a pattern that can match a path in several ways (several `*`) holds if its constraints
//!   hold for one of them;
//! * `decide` never panics, never allocates when it allows or denies for a missing origin, path
//!   or method (describing a failed constraint is the one allocation), and does a bounded amount
//!   of work (a walk that exceeds the budget denies);
//! * methods match exactly (case-sensitive, as HTTP says): a request is allowed only by a rule
//!   that lists its method verbatim. `CONNECT` is never allowed: a rule cannot list it (nor a
//!   non-token, nor a case variant of a standard method such as `get`), and a request with it,
//!   or with a method no rule lists, is denied as [`DenyReason::MethodNotAllowed`] (or
//!   [`DenyReason::NoPathMatch`] if no rule even matches the path). The HTTP layer refuses
//!   `CONNECT` and non-tokens with a 400 before asking ([`crate::http::parse_method`]).

pub mod canon;
mod constraint;
pub mod filter;
mod pattern;
pub mod pointer;
pub mod pool;
pub mod scm;
mod scm_table;
mod spec;
mod trie;

use std::fmt;

pub use canon::{Authority, CanonUrl, Malformed, RequestTarget, Scheme};
pub use spec::{LogFlags, RuleOrigin, RuleSpec, ValueConstraint, WhenSpec};

use crate::http::is_token;
pub(crate) use constraint::FileSet;
use constraint::{ANY_SLOT, Constraints, Failed, MethodMask, MethodTable, Value};
use trie::{Trie, TrieBuilder};

/// A problem with one rule, found at compile time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {field}: {message}")]
pub struct RuleError {
    /// Index of the rule in the list given to [`Allowlist::compile`].
    pub rule: usize,
    /// The rule field at fault (`url`, `methods`, `path_files`, ...).
    pub field: &'static str,
    /// What is wrong, for a human.
    pub message: String,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule as configured or generated.
    pub spec: RuleSpec,
    /// Index in the compiled list (= the `rule_id` of decisions).
    pub id: usize,
    /// The bitmask of `spec.methods` over the allowlist's method slots.
    methods: MethodMask,
    constraints: Constraints,
    /// The compiled `[[allow.body]]` constraints (checked by [`Rule::check_body`]).
    body: Vec<filter::Filter>,
}

impl Rule {
    /// Whether requests this rule allows must have their body read and checked first.
    pub fn checks_body(&self) -> bool {
        !self.body.is_empty()
    }

    /// Checks the `[[allow.body]]` constraints on a request body: it must be JSON, and every
    /// value each pointer selects must satisfy its condition (a pointer that selects nothing
    /// fails). The error is the denial's reason; it never quotes the body.
    pub fn check_body(&self, body: &[u8]) -> Result<(), String> {
        if self.body.is_empty() {
            return Ok(());
        }
        let json: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| "body: the request body is not JSON".to_owned())?;
        for (i, f) in self.body.iter().enumerate() {
            let subject = filter::Subject {
                headers: &[],
                json: Some(&json),
            };
            f.check(subject, filter::Quantifier::All)
                .map_err(|reason| format!("body[{i}] {reason}"))?;
        }
        Ok(())
    }

    /// Whether the rule lists `method` (exactly, case-sensitive): the list its method mask was
    /// compiled from, which never holds `CONNECT` or a non-token.
    pub fn allows_method(&self, method: &str) -> bool {
        self.spec.methods.iter().any(|m| m == method)
    }
}

/// `#3 allow[2] GET,POST https://...` — what `explain` and logs show for a rule.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} ", self.id)?;
        match &self.spec.origin {
            RuleOrigin::User { index } => write!(f, "allow[{index}]")?,
            RuleOrigin::Scm {
                index,
                kind,
                template,
            } => write!(f, "scm[{index}] {kind:?} {template}")?,
        }
        write!(f, " {} {}", self.spec.methods.join(","), self.spec.url)
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule names this scheme, host and port.
    NoRuleForOrigin,
    /// Rules exist for the origin, but no pattern matches the path (also: the path was too
    /// complex to match within the walk budget — fail closed).
    NoPathMatch,
    /// Some pattern matches the path, but none of those rules allows the method (`CONNECT` and
    /// methods no rule lists always end here or in `NoPathMatch`).
    MethodNotAllowed,
    /// A rule matched path and method but one of its constraints failed; the message names the
    /// lowest such rule and the constraint (never a header or query *value*).
    ConstraintFailed(String),
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRuleForOrigin => f.write_str("no rule for this scheme, host and port"),
            DenyReason::NoPathMatch => f.write_str("no rule pattern matches the path"),
            DenyReason::MethodNotAllowed => {
                f.write_str("rules match the path but none allows the method")
            }
            DenyReason::ConstraintFailed(m) => write!(f, "constraint failed: {m}"),
        }
    }
}

/// The outcome of [`Allowlist::decide`].
#[derive(Debug)]
pub enum Decision<'a> {
    /// Allowed by the lowest-indexed rule that holds.
    Allowed { rule_id: usize, rule: &'a Rule },
    /// Denied, with the reason.
    Denied(DenyReason),
}

impl<'a> Decision<'a> {
    /// Whether the request may go upstream.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    /// The allowing rule, if any.
    pub fn rule(&self) -> Option<&'a Rule> {
        match self {
            Decision::Allowed { rule, .. } => Some(rule),
            Decision::Denied(_) => None,
        }
    }
}

/// The compiled allowlist.
#[derive(Debug, Default)]
pub struct Allowlist {
    rules: Vec<Rule>,
    trie: Trie,
    methods: MethodTable,
}

/// The most rules one allowlist may hold.
pub const MAX_RULES: usize = 1 << 24;

impl Allowlist {
    /// Validates and compiles the rules (in order: user rules, then SCM rules), reporting every
    /// bad rule at once.
    pub fn compile(specs: Vec<RuleSpec>) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        if specs.len() > MAX_RULES {
            errors.push(RuleError {
                rule: MAX_RULES,
                field: "url",
                message: format!("more than {MAX_RULES} rules"),
            });
            return Err(errors);
        }
        let mut builder = TrieBuilder::default();
        let mut table = MethodTable::default();
        let mut rules = Vec::with_capacity(specs.len());
        let mut masks = Vec::with_capacity(specs.len());
        for (id, spec) in specs.into_iter().enumerate() {
            let before = errors.len();
            let mut err = |field: &'static str, message: String| {
                errors.push(RuleError {
                    rule: id,
                    field,
                    message,
                });
            };
            let methods = table.mask(&spec.methods).unwrap_or_else(|list| {
                list.into_iter().for_each(|m| err("methods", m));
                0
            });
            let compiled = pattern::parse(&spec.url)
                .and_then(|p| builder.prepare(&p).map(|edges| (p, edges)))
                .map_err(|m| err("url", m))
                .ok();
            let capture = compiled.as_ref().and_then(|(p, _)| p.capture());
            let constraints = compile_constraints(&spec, capture, compiled.is_some(), &mut err);
            check_headers(&spec, &mut err);
            let body = compile_body(&spec, &mut err);
            if errors.len() == before {
                if let Some((p, edges)) = compiled {
                    builder.insert(&p, edges, id as u32);
                }
            }
            masks.push(methods);
            rules.push(Rule {
                spec,
                id,
                methods,
                constraints,
                body,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Allowlist {
            trie: builder.finish(&masks, table.slots()),
            rules,
            methods: table,
        })
    }

    /// The compiled rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides a request: the lowest-indexed rule whose pattern, method and constraints hold.
    pub fn decide<'a>(
        &'a self,
        method: &str,
        url: &CanonUrl,
        headers: &[httparse::Header<'_>],
    ) -> Decision<'a> {
        let Some(root) = self.trie.origin(url.scheme, url.port, &url.host) else {
            return Decision::Denied(DenyReason::NoRuleForOrigin);
        };
        if let Some(slot) = self.methods.slot(method) {
            let (res, failed) = self.walk_method(root, slot, url, headers);
            if res.exhausted {
                return Decision::Denied(DenyReason::NoPathMatch);
            }
            if let Some(rule) = res.best.and_then(|id| self.rules.get(id as usize)) {
                return Decision::Allowed {
                    rule_id: rule.id,
                    rule,
                };
            }
            if let Some((id, f)) = failed {
                return Decision::Denied(DenyReason::ConstraintFailed(self.describe(id, f)));
            }
        }
        let any = self.trie.walk(root, &url.path, ANY_SLOT, |_, _| true);
        if any.best.is_some() && !any.exhausted {
            Decision::Denied(DenyReason::MethodNotAllowed)
        } else {
            Decision::Denied(DenyReason::NoPathMatch)
        }
    }

    /// Explains a decision for `wgbroker explain`: the decision plus every rule whose pattern
    /// matches the URL, with whether its method and constraints hold. Allocates; not for the
    /// data path.
    pub fn explain<'a>(
        &'a self,
        method: &str,
        url: &CanonUrl,
        headers: &[httparse::Header<'_>],
    ) -> Explanation<'a> {
        let decision = self.decide(method, url, headers);
        let mut path_matches = Vec::new();
        if let Some(root) = self.trie.origin(url.scheme, url.port, &url.host) {
            self.trie.walk(root, &url.path, ANY_SLOT, |id, capture| {
                if let Some(rule) = self.rules.get(id as usize) {
                    let check =
                        rule.constraints
                            .check(&url.path, capture, url.query.as_deref(), headers);
                    path_matches.push(PathMatch {
                        rule,
                        method_allowed: rule.allows_method(method),
                        constraint_failure: check.err().map(|f| self.describe(id, f)),
                    });
                }
                false
            });
        }
        // A pattern that can match in several ways holds if its constraints hold for one of
        // them: keep that one.
        path_matches.sort_by_key(|m| (m.rule.id, m.constraint_failure.is_some()));
        path_matches.dedup_by_key(|m| m.rule.id);
        Explanation {
            decision,
            path_matches,
            visits: self.visits(method, url, headers),
        }
    }

    /// The decision's walk for a method some rule names: the best rule whose method and
    /// constraints hold,
    /// and the lowest rule that matched path and method but failed a constraint.
    fn walk_method(
        &self,
        root: u32,
        slot: usize,
        url: &CanonUrl,
        headers: &[httparse::Header<'_>],
    ) -> (trie::WalkResult, Option<(u32, Failed)>) {
        // A slot from the method table is below 64; a bad one matches nothing (never panics).
        let bit: MethodMask = MethodMask::from(1u8).checked_shl(slot as u32).unwrap_or(0);
        let mut failed: Option<(u32, Failed)> = None;
        let query = url.query.as_deref();
        let res = self.trie.walk(root, &url.path, slot, |id, capture| {
            let Some(rule) = self.rules.get(id as usize) else {
                return false;
            };
            if rule.methods & bit == 0 {
                return false;
            }
            if rule.constraints.is_empty() {
                return true;
            }
            match rule.constraints.check(&url.path, capture, query, headers) {
                Ok(()) => true,
                Err(f) => {
                    if failed.is_none_or(|(fid, _)| id < fid) {
                        failed = Some((id, f));
                    }
                    false
                }
            }
        });
        (res, failed)
    }

    /// Trie nodes entered by the method-specific walk of a decision.
    fn visits(&self, method: &str, url: &CanonUrl, headers: &[httparse::Header<'_>]) -> u32 {
        let (Some(root), Some(slot)) = (
            self.trie.origin(url.scheme, url.port, &url.host),
            self.methods.slot(method),
        ) else {
            return 0;
        };
        self.walk_method(root, slot, url, headers).0.visits
    }

    fn describe(&self, id: u32, failed: Failed) -> String {
        let Some(rule) = self.rules.get(id as usize) else {
            return format!("rule #{id}");
        };
        let what = match failed {
            Failed::PathFiles => format!(
                "path_files: the captured path is not one of {:?}",
                rule.spec.path_files
            ),
            Failed::Query(i) => match rule.spec.query.get(i) {
                Some((name, c)) => format!("query parameter {name:?} must be {}", describe(c)),
                None => "query".to_owned(),
            },
            Failed::Header(i) => match rule.spec.headers.get(i) {
                Some((name, c)) => format!("header {name:?} must be {}", describe(c)),
                None => "headers".to_owned(),
            },
        };
        format!("rule {rule}: {what}")
    }
}

fn describe(c: &ValueConstraint) -> String {
    match c {
        ValueConstraint::Equals(v) => format!("present and equal to {v:?}"),
        ValueConstraint::Prefix(v) => format!("present and start with {v:?}"),
        ValueConstraint::OneOf(v) => format!("present and one of {v:?}"),
    }
}

fn compile_constraints(
    spec: &RuleSpec,
    capture: Option<usize>,
    url_ok: bool,
    err: &mut impl FnMut(&'static str, String),
) -> Constraints {
    let mut c = Constraints::default();
    if !spec.path_files.is_empty() {
        match (FileSet::compile(&spec.path_files), capture) {
            (Err(list), _) => list.into_iter().for_each(|m| err("path_files", m)),
            (Ok(_), None) if url_ok => err(
                "path_files",
                "the pattern has no `*` or `:name` whose match could be constrained".to_owned(),
            ),
            (Ok(set), Some(_)) => c.files = Some(set),
            (Ok(_), None) => {}
        }
    }
    let mut query = Vec::new();
    for (name, v) in &spec.query {
        if name.is_empty() {
            err("query", "empty parameter name".to_owned());
        }
        match Value::compile(v) {
            Ok(v) => query.push((Box::<[u8]>::from(name.as_bytes()), v)),
            Err(m) => err("query", format!("{name:?}: {m}")),
        }
    }
    let mut headers = Vec::new();
    for (name, v) in &spec.headers {
        if !is_token(name) {
            err("headers", format!("{name:?} is not a header name"));
        }
        match Value::compile(v) {
            Ok(v) => headers.push((Box::<str>::from(name.as_str()), v)),
            Err(m) => err("headers", format!("{name:?}: {m}")),
        }
    }
    c.query = query.into_boxed_slice();
    c.headers = headers.into_boxed_slice();
    c
}

/// The `[[allow.body]]` constraints: a pointer (never a header: `headers` constrains those)
/// and one condition each.
fn compile_body(
    spec: &RuleSpec,
    err: &mut impl FnMut(&'static str, String),
) -> Vec<filter::Filter> {
    let mut out = Vec::new();
    for (i, w) in spec.body.iter().enumerate() {
        if w.header.is_some() {
            err(
                "body",
                format!(
                    "body[{i}]: a body constraint selects with `pointer` (headers are constrained by `headers`)"
                ),
            );
            continue;
        }
        match filter::Filter::compile(w) {
            Ok(f) => out.push(f),
            Err(list) => list
                .into_iter()
                .for_each(|(k, m)| err("body", format!("body[{i}] {k}: {m}"))),
        }
    }
    out
}

/// Header names must be tokens and set values must not smuggle a line break.
fn check_headers(spec: &RuleSpec, err: &mut impl FnMut(&'static str, String)) {
    for (name, value) in &spec.set_request_headers {
        if !is_token(name) {
            err(
                "set_request_headers",
                format!("{name:?} is not a header name"),
            );
        }
        if value
            .expose()
            .bytes()
            .any(|b| matches!(b, b'\r' | b'\n' | 0))
        {
            // Never echo the value: it is usually a credential.
            err(
                "set_request_headers",
                format!("the value of {name:?} contains CR, LF or NUL"),
            );
        }
    }
    for name in &spec.remove_response_headers {
        if !is_token(name) {
            err(
                "remove_response_headers",
                format!("{name:?} is not a header name"),
            );
        }
    }
}

/// The result of [`Allowlist::explain`].
#[derive(Debug)]
pub struct Explanation<'a> {
    /// What [`Allowlist::decide`] says.
    pub decision: Decision<'a>,
    /// Every rule whose URL pattern matches, in rule order.
    pub path_matches: Vec<PathMatch<'a>>,
    /// Trie nodes the decision's walk entered (about one per path segment for ordinary rule
    /// sets; `*` and `{:name/}+` add the splits they try). A cost measure for tuning and tests.
    pub visits: u32,
}

/// One rule whose URL pattern matches the explained request.
#[derive(Debug)]
pub struct PathMatch<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Whether it lists the request's method.
    pub method_allowed: bool,
    /// Which constraint fails, if one does.
    pub constraint_failure: Option<String>,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decision {
            Decision::Allowed { rule, .. } => writeln!(f, "allowed by rule {rule}")?,
            Decision::Denied(r) => writeln!(f, "denied: {r}")?,
        }
        if self.path_matches.is_empty() {
            return writeln!(f, "no rule pattern matches this url");
        }
        writeln!(f, "rules whose pattern matches this url:")?;
        for m in &self.path_matches {
            let verdict = match (&m.constraint_failure, m.method_allowed) {
                (_, false) => "method not listed".to_owned(),
                (Some(c), true) => c.clone(),
                (None, true) => "holds".to_owned(),
            };
            writeln!(f, "  {}: {verdict}", m.rule)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn body_rule(body: Vec<WhenSpec>) -> Result<Allowlist, Vec<RuleError>> {
        Allowlist::compile(vec![RuleSpec {
            url: "https://h.example/trees".to_owned(),
            methods: vec!["POST".to_owned()],
            set_request_headers: Vec::new(),
            remove_response_headers: Vec::new(),
            log: LogFlags::default(),
            path_files: Vec::new(),
            query: Vec::new(),
            headers: Vec::new(),
            body,
            token_pool: None,
            origin: RuleOrigin::User { index: 0 },
        }])
    }

    #[test]
    fn body_constraints_hold_for_every_selected_value() {
        let a = body_rule(vec![WhenSpec {
            pointer: Some("/tree/*/path".into()),
            glob: Some(vec!["**/package.json".into()]),
            ..WhenSpec::default()
        }])
        .expect("compiles");
        let rule = &a.rules()[0];
        assert!(rule.checks_body());
        assert_eq!(
            rule.check_body(br#"{"tree":[{"path":"a/package.json"}]}"#),
            Ok(())
        );
        let e = rule
            .check_body(br#"{"tree":[{"path":"a/package.json"},{"path":"x.sh"}]}"#)
            .expect_err("one file is not a manifest");
        assert!(
            e.starts_with("body[0] pointer \"/tree/*/path\" glob: 1 of 2"),
            "{e}"
        );
        assert!(!e.contains("x.sh"));
        assert!(
            rule.check_body(b"{}")
                .expect_err("nothing")
                .contains("selects nothing")
        );
        assert!(
            rule.check_body(b"<xml/>")
                .expect_err("not json")
                .contains("not JSON")
        );
    }

    #[test]
    fn body_constraints_select_with_a_pointer_and_one_condition() {
        let errs = body_rule(vec![
            WhenSpec {
                header: Some("X-A".into()),
                equals: Some("a".into()),
                ..WhenSpec::default()
            },
            WhenSpec {
                pointer: Some("/a".into()),
                ..WhenSpec::default()
            },
        ])
        .expect_err("refused");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.field == "body"), "{errs:?}");
        assert!(
            body_rule(Vec::new()).expect("compiles").rules()[0]
                .check_body(b"x")
                .is_ok()
        );
    }

    #[test]
    fn header_names_in_rules_must_be_tokens() {
        let spec = |name: &str| RuleSpec {
            url: "https://h.example/a".to_owned(),
            methods: vec!["GET".to_owned()],
            set_request_headers: vec![(name.to_owned(), Secret::new("v"))],
            token_pool: None,
            remove_response_headers: vec![name.to_owned()],
            log: LogFlags::default(),
            path_files: Vec::new(),
            query: Vec::new(),
            headers: vec![(name.to_owned(), ValueConstraint::Equals("v".to_owned()))],
            body: Vec::new(),
            origin: RuleOrigin::User { index: 0 },
        };
        assert!(Allowlist::compile(vec![spec("X-Token_1!#$%&'*+.^`|~")]).is_ok());
        for bad in ["", "X Token", "X:Token", "X\"T", "Ä"] {
            let errors = Allowlist::compile(vec![spec(bad)]).expect_err("rejected");
            let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
            assert_eq!(
                fields,
                ["headers", "set_request_headers", "remove_response_headers"],
                "{bad:?}"
            );
            assert!(
                errors
                    .iter()
                    .all(|e| e.message.ends_with("is not a header name"))
            );
        }
    }
}
