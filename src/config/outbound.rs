//! `[outbound]` and `[[outbound.relay]]`: the webhook relay from the SCM to the vendor.
//!
//! The types are plain validated values defined next to the relay ([`crate::relay::spec`]: the
//! relay must not depend on the configuration reader). What a relay *does* with them — verification, event
//! names, filters — lives in [`crate::relay`]; the reader here compiles every relay once with
//! [`crate::relay::Relay::compile`] so a bad pointer, glob or URL is reported at load with its key,
//! and the runtime compiles the same specs again (cheap) when it starts the listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::reader::{Ctx, Section};
use super::rules::valid_header_name;
use super::secret_source::SecretEnv;
use super::sections::{Bytes, positive, secret};
pub use crate::relay::spec::{Outbound, RelaySpec, WebhookScm, WhenSpec};

/// Reads `[outbound]`.
pub(super) fn outbound(
    mut s: Section<'_>,
    ctx: &mut Ctx<'_>,
    env: &dyn SecretEnv,
) -> Option<Outbound> {
    let listen = s.req::<String>(ctx, "listen").and_then(|l| {
        l.parse::<SocketAddr>()
            .map_err(|_| {
                ctx.error(
                    &s.key("listen"),
                    format!("invalid address {l:?} (expected ip:port)"),
                )
            })
            .ok()
    });
    let spool_dir: PathBuf = s.or(ctx, "spool_dir", Outbound::DEFAULT_SPOOL_DIR.into());
    let spool_max = s.or(ctx, "spool_max", Bytes(Outbound::DEFAULT_SPOOL_MAX)).0;
    let max_body = s.or(ctx, "max_body", Bytes(Outbound::DEFAULT_MAX_BODY)).0;
    let retry_min = s.or(ctx, "retry_min", Outbound::DEFAULT_RETRY_MIN);
    let retry_max = s.or(ctx, "retry_max", Outbound::DEFAULT_RETRY_MAX);
    let delivery_timeout = s.or(ctx, "delivery_timeout", Outbound::DEFAULT_DELIVERY_TIMEOUT);
    positive(ctx, &s, "retry_min", retry_min);
    positive(ctx, &s, "delivery_timeout", delivery_timeout);
    if retry_max < retry_min {
        ctx.error(&s.key("retry_max"), "must be at least retry_min");
    }
    if max_body == 0 || max_body > (1 << 30) {
        ctx.error(&s.key("max_body"), "must be between 1 byte and 1GiB");
    }
    if spool_max < max_body {
        ctx.error(
            &s.key("spool_max"),
            "must be at least max_body (or the largest webhook could never be spooled)",
        );
    }
    let mut relay = Vec::new();
    for r in s.tables(ctx, "relay") {
        if let Some(spec) = relay_spec(r, ctx, env) {
            relay.push(spec);
        }
    }
    for (i, r) in relay.iter().enumerate() {
        if relay[..i].iter().any(|o| o.name == r.name) {
            ctx.error(
                &format!("{}[{i}].name", s.key("relay")),
                format!("duplicate relay name {:?}", r.name),
            );
        }
    }
    s.finish(ctx);
    Some(Outbound {
        listen: listen?,
        spool_dir,
        spool_max,
        max_body,
        retry_min,
        retry_max,
        delivery_timeout,
        relay,
    })
}

fn relay_spec(mut s: Section<'_>, ctx: &mut Ctx<'_>, env: &dyn SecretEnv) -> Option<RelaySpec> {
    let name: Option<String> = s.req(ctx, "name");
    let destination_url: Option<String> = s.req(ctx, "destination_url");
    let scm = match s.req::<String>(ctx, "scm").as_deref() {
        None => None,
        Some("github") => Some(WebhookScm::Github),
        Some("gitlab") => Some(WebhookScm::Gitlab),
        Some("bitbucket") => Some(WebhookScm::Bitbucket),
        Some("azure_devops") => Some(WebhookScm::AzureDevops),
        Some("none") => Some(WebhookScm::None),
        Some(other) => {
            ctx.error(
                &s.key("scm"),
                format!(
                    "unknown scm {other:?} (expected github, gitlab, bitbucket, azure_devops or none)"
                ),
            );
            None
        }
    };
    let secret = secret(&mut s, ctx, "secret", env);
    let events: Vec<String> = s.or(ctx, "events", Vec::new());
    let touches: Vec<String> = s.or(ctx, "touches", Vec::new());
    let when: Vec<WhenSpec> = s
        .tables(ctx, "when")
        .into_iter()
        .map(|w| when_spec(w, ctx, true))
        .collect();
    match (scm, &secret) {
        (Some(WebhookScm::None), Some(_)) => ctx.error(
            &s.key("secret"),
            "scm = \"none\" verifies nothing: drop the secret or name the scm",
        ),
        (Some(k), None) if k != WebhookScm::None => ctx.error(
            &s.key("secret"),
            "missing required key: a relay that verifies webhooks needs the webhook secret",
        ),
        _ => {}
    }
    let (secret, secret_unavailable) = match secret {
        Some(s) => (Some(s.value), s.unavailable),
        None => (None, None),
    };
    let spec = RelaySpec {
        name: name?,
        destination_url: destination_url?,
        scm: scm?,
        secret,
        secret_unavailable,
        events,
        touches,
        when,
    };
    if let Err(errors) = crate::relay::Relay::compile(&spec) {
        for (field, message) in errors {
            ctx.error(&s.key(&field), message);
        }
    }
    s.finish(ctx);
    Some(spec)
}

/// Reads one `when` table (`header` allowed) or `[[allow.body]]` table (a pointer only); the
/// checks of the combination live in [`crate::allowlist::filter`].
pub(super) fn when_spec(mut s: Section<'_>, ctx: &mut Ctx<'_>, header: bool) -> WhenSpec {
    let w = WhenSpec {
        pointer: s.opt(ctx, "pointer"),
        header: if header { s.opt(ctx, "header") } else { None },
        equals: s.opt(ctx, "equals"),
        one_of: s.opt(ctx, "one_of"),
        prefix: s.opt(ctx, "prefix"),
        contains: s.opt(ctx, "contains"),
        glob: s.opt(ctx, "glob"),
    };
    if !header && w.pointer.is_none() {
        ctx.error(
            &s.key("pointer"),
            "missing required key (a JSON Pointer into the request body)",
        );
    }
    if let Some(h) = &w.header {
        if !valid_header_name(h) {
            ctx.error(&s.key("header"), "invalid header name");
        }
    }
    s.finish(ctx);
    w
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{LoadMode, load_str};

    const BASE: &str = "[wireguard]\nprivate_key = \"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\"\n\
        address = \"10.77.0.2\"\n[[wireguard.peers]]\n\
        public_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
        endpoint = \"127.0.0.1:9\"\nallowed_ips = [\"10.77.0.1/32\"]\n";

    /// Every error of `extra` (appended to a valid configuration), as `key: message`.
    fn errors(extra: &str) -> Vec<String> {
        let text = format!("{BASE}{extra}");
        match load_str(
            &[(PathBuf::from("b.toml"), text)],
            LoadMode::Full,
            &|_: &str| None,
        ) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn every_mistake_of_a_relay_is_reported_at_once_with_its_key() {
        let e = errors(
            "[outbound]\nlisten = \"127.0.0.1:8080\"\nmax_body = \"1GiB\"\nspool_max = \"1MiB\"\n\
             [[outbound.relay]]\nname = \"a\"\ndestination_url = \"https://v.example/a\"\n\
             scm = \"github\"\n\
             [[outbound.relay]]\nname = \"a\"\ndestination_url = \"ftp://v\"\nscm = \"none\"\n\
             secret = \"x\"\n\
             [[outbound.relay.when]]\npointer = \"action\"\nequals = \"opened\"\ncolour = 1\n",
        );
        let expected = [
            "outbound.relay[0].secret: missing required key",
            "outbound.relay[1].when[0].colour: unknown key",
            "outbound.relay[1].secret: scm = \"none\" verifies nothing",
            "outbound.relay[1].destination_url: expected an https://",
            "outbound.relay[1].when[0].pointer: \"action\" is not a JSON Pointer",
            "outbound.relay[1].name: duplicate relay name",
            "outbound.spool_max: must be at least max_body",
        ];
        for x in expected {
            assert!(e.iter().any(|m| m.starts_with(x)), "{x:?} not in {e:#?}");
        }
    }

    #[test]
    fn a_relay_secret_never_reaches_an_error() {
        let e = errors(
            "[outbound]\nlisten = \"127.0.0.1:8080\"\n[[outbound.relay]]\nname = \"a\"\n\
             destination_url = \"https://v.example/a\"\nscm = \"azure_devops\"\n\
             secret = \"nocolon-secret\"\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("outbound.relay[0].secret: for azure_devops"),
            "{e:?}"
        );
        assert!(!e[0].contains("nocolon-secret"));
    }
}
