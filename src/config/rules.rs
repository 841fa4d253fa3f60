//! `[[allow]]` and `[[scm]]` entries, each read into the [`RuleSpec`]s the allowlist compiles
//! (split from sections.rs: the rule tables are one concern, the other sections another).

use toml::Value;

use super::reader::{Ctx, Section};
use super::sections::{pool_of, secret, secrets};
use super::*;
use crate::allowlist::{LogFlags, RuleOrigin, RuleSpec, ValueConstraint, scm};
use crate::secret::Secret;

fn constraints(
    s: &mut Section<'_>,
    ctx: &mut Ctx<'_>,
    key: &str,
) -> Vec<(String, ValueConstraint)> {
    let Some(mut t) = s.table(ctx, key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let names: Vec<String> = t_keys(&t);
    for name in names {
        let Some(mut c) = t.table(ctx, &name) else {
            continue;
        };
        let eq: Option<String> = c.opt(ctx, "equals");
        let prefix: Option<String> = c.opt(ctx, "prefix");
        let one_of: Option<Vec<String>> = c.opt(ctx, "one_of");
        let vc = match (eq, prefix, one_of) {
            (Some(v), None, None) => Some(ValueConstraint::Equals(v)),
            (None, Some(v), None) => Some(ValueConstraint::Prefix(v)),
            (None, None, Some(v)) if !v.is_empty() => Some(ValueConstraint::OneOf(v)),
            _ => {
                ctx.error(
                    c.path(),
                    "expected exactly one of `equals`, `prefix`, `one_of` (non-empty)",
                );
                None
            }
        };
        c.finish(ctx);
        if let Some(vc) = vc {
            out.push((name, vc));
        }
    }
    t.finish(ctx);
    out
}

fn t_keys(s: &Section<'_>) -> Vec<String> {
    s.keys().map(str::to_owned).collect()
}

pub(super) fn allow_rule(
    index: usize,
    mut s: Section<'_>,
    ctx: &mut Ctx<'_>,
    env: &dyn SecretEnv,
) -> Option<RuleSpec> {
    let url: Option<String> = s.req(ctx, "url");
    let methods: Option<Vec<String>> = s.req(ctx, "methods");
    let methods = methods.map(|m| {
        m.into_iter()
            .map(|x| x.to_ascii_uppercase())
            .collect::<Vec<_>>()
    });
    let mut set_request_headers = Vec::new();
    let mut token_pool = None;
    if let Some(mut h) = s.table(ctx, "set_request_headers") {
        for name in t_keys(&h) {
            if !valid_header_name(&name) {
                ctx.error(&h.key(&name), "invalid header name");
            }
            let path = h.key(&name);
            if let Some(Value::Array(items)) = h.raw(&name) {
                // Several values: a token pool (allowlist/pool.rs).
                token_pool = pool_of(&name, items, token_pool.is_some(), ctx, &path, env);
                continue;
            }
            if let Some(v) = h.raw(&name) {
                if let Some(sv) = secret_source::resolve(v, ctx, &path, env) {
                    if sv
                        .value
                        .expose()
                        .bytes()
                        .any(|b| b == b'\r' || b == b'\n' || b == 0)
                    {
                        ctx.error(&path, "header value contains CR, LF or NUL");
                    }
                    set_request_headers.push((name, sv.value));
                }
            }
        }
        h.finish(ctx);
    }
    let remove_response_headers: Vec<String> = s.or(ctx, "remove_response_headers", Vec::new());
    for (i, h) in remove_response_headers.iter().enumerate() {
        if !valid_header_name(h) {
            ctx.error(
                &format!("{}[{i}]", s.key("remove_response_headers")),
                "invalid header name",
            );
        }
    }
    let log = LogFlags {
        request_headers: s.or(ctx, "log_request_headers", false),
        response_headers: s.or(ctx, "log_response_headers", false),
        request_body: s.or(ctx, "log_request_body", false),
        response_body: s.or(ctx, "log_response_body", false),
    };
    let path_files: Vec<String> = s.or(ctx, "path_files", Vec::new());
    let query = constraints(&mut s, ctx, "query");
    let headers = constraints(&mut s, ctx, "headers");
    let body: Vec<_> = s
        .tables(ctx, "body")
        .into_iter()
        .map(|b| super::outbound::when_spec(b, ctx, false))
        .collect();
    s.finish(ctx);
    Some(RuleSpec {
        url: url?,
        methods: methods?,
        set_request_headers,
        token_pool,
        remove_response_headers,
        log,
        path_files,
        query,
        headers,
        body,
        origin: RuleOrigin::User { index },
    })
}

pub(super) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One `[[scm]]` entry. `earlier` holds the instances of the valid entries before it (index,
/// instance): an entry whose URLs could overlap one of them is an error at its `base_url`, since
/// a request for one instance could otherwise be allowed by the other's rule and carry the
/// other's token (see [`scm::Instance`]).
pub(super) fn scm_entry(
    index: usize,
    mut s: Section<'_>,
    ctx: &mut Ctx<'_>,
    env: &dyn SecretEnv,
    earlier: &mut Vec<(usize, scm::Instance)>,
) -> Option<Scm> {
    let kind = match s.req::<String>(ctx, "type") {
        Some(t) => match t.as_str() {
            "github" => Some(scm::ScmKind::Github),
            "gitlab" => Some(scm::ScmKind::Gitlab),
            "bitbucket" => Some(scm::ScmKind::Bitbucket),
            "azuredevops" => Some(scm::ScmKind::Azuredevops),
            other => {
                ctx.error(
                    &s.key("type"),
                    format!("unknown SCM type {other:?} (expected github, gitlab, bitbucket or azuredevops)"),
                );
                None
            }
        },
        None => None,
    };
    let base_url: Option<String> = s.req(ctx, "base_url");
    let token = secret(&mut s, ctx, "token", env);
    let tokens = secrets(&mut s, ctx, "tokens", env);
    if token.is_some() && !tokens.is_empty() {
        ctx.error(&s.key("tokens"), "give `token` or `tokens`, not both");
    }
    let allow_code_access: bool = s.or(ctx, "allow_code_access", false);
    s.finish(ctx);
    let (kind, base_url) = (kind?, base_url?);
    let key = format!("scm[{index}].base_url");
    let instance = match scm::Instance::new(kind, &base_url) {
        Ok(i) => i,
        Err(msg) => {
            ctx.error(&key, msg);
            return None;
        }
    };
    for (other_index, other) in earlier.iter() {
        if let Some(msg) = instance.conflict(other, *other_index) {
            ctx.error(&key, msg);
        }
    }
    let tok: Option<&Secret> = token.as_ref().map(|t| &t.value);
    let rules = if tokens.is_empty() {
        instance.rules(index, tok, allow_code_access)
    } else {
        let values: Vec<Secret> = tokens.iter().map(|t| t.value.clone()).collect();
        instance.rules_with_pool(index, &values, allow_code_access)
    };
    earlier.push((index, instance));
    Some(Scm {
        kind,
        base_url,
        token,
        tokens,
        allow_code_access,
        rules,
    })
}
