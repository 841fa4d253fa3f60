//! The outbound webhook relay, sans-IO: which relay a webhook is for, whether it is authentic,
//! whether it is relevant, and what is forwarded to the vendor.
//!
//! The SCM posts to `http://<broker>:<listen>/relay/<name>`. [`Relays::decide`] takes the request
//! (method, path, headers, body) and answers a [`Verdict`], checked in this order, each with one
//! status code (never 500):
//!
//! | check                                   | answer |
//! |-----------------------------------------|--------|
//! | path is not `/relay/<a configured name>` | `404`  |
//! | method is not `POST`                     | `405`  |
//! | body over `max_body`                     | `413`  |
//! | signature / token missing or wrong       | `401`  |
//! | a filter needs JSON and the body is not  | `400`  |
//! | `events`, `touches` or a `when` fails    | `200` with `{"relayed":false,"reason":...}` |
//! | accepted                                 | `202` (once spooled; `503` + `Retry-After` when the spool is full) |
//!
//! Authenticity is checked before relevance, so an unauthenticated caller learns nothing about
//! the filters. The accepted event carries the body bytes unchanged and the headers the vendor
//! needs ([`FORWARDED`]): event name, delivery id, the HMAC signatures (they prove nothing about
//! the secret), content type; never `X-Gitlab-Token` or `Authorization`, which are the secret
//! itself. The broker adds `X-Wgbroker-Relay: <name>`.
//!
//! Event names: GitHub `X-GitHub-Event`, GitLab `X-Gitlab-Event`, Bitbucket `X-Event-Key`,
//! Azure DevOps the body's `eventType`; with `scm = "none"` the first of those headers present.
//! `touches` looks at `commits[].added/modified/removed` (GitHub and GitLab pushes); an event
//! without those lists (pull requests, Bitbucket Data Center `repo:refs_changed`, which lists no
//! files) is not filtered by it. GitHub also posts `application/x-www-form-urlencoded` bodies
//! (`payload=<json>`): filters read the JSON inside; the vendor receives the body as sent.

pub mod deliver;
pub mod explain;
pub mod intake;
pub mod schedule;
pub mod spec;
pub mod spool;
pub mod verify;

use std::collections::HashMap;

use serde_json::Value;

pub use crate::allowlist::filter::{self, Filter, Quantifier, Subject};
pub use crate::allowlist::pointer;
pub use spec::{Outbound, RelaySpec, WebhookScm, WhenSpec};
pub use verify::{Unverified, Verifier};

/// Request headers copied to the vendor, when present (matched case-insensitively, sent with
/// this spelling).
pub const FORWARDED: &[&str] = &[
    "Content-Type",
    "User-Agent",
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-GitHub-Hook-ID",
    "X-GitHub-Hook-Installation-Target-ID",
    "X-GitHub-Hook-Installation-Target-Type",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Gitlab-Event",
    "X-Gitlab-Event-UUID",
    "X-Gitlab-Webhook-UUID",
    "X-Gitlab-Instance",
    "X-Event-Key",
    "X-Request-Id",
];

/// Where a relay delivers: `http://` or `https://`, host (a name or an IP literal), port, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub tls: bool,
    /// Host without brackets (an IPv6 literal is bare here).
    pub host: String,
    pub port: u16,
    /// The authority as written (the `Host` header).
    pub authority: String,
    /// Path and query (`/` when none).
    pub path: String,
}

impl Destination {
    /// Takes `url` apart; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Destination, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => return Err("expected an https:// (or http://) URL".into()),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains('#') {
            return Err("a fragment (#...) is not sent to a server; remove it".into());
        }
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("the path contains a space or a control character".into());
        }
        let default = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))?;
                (h, port)
            }
            _ => (authority, default),
        };
        let bare = match host.strip_prefix('[') {
            Some(h) => h
                .strip_suffix(']')
                .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| format!("{host:?} is not a bracketed IPv6 address"))?,
            None => host,
        };
        let dns_ok = !bare.is_empty()
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !(dns_ok || bare.parse::<std::net::IpAddr>().is_ok()) {
            return Err(format!("{bare:?} is not a host name or an IP address"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Destination {
            tls,
            host: bare.to_ascii_lowercase(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }

    /// The IP address when the host is a literal (the only kind routable through the tunnel).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
}

/// A compiled `[[outbound.relay]]`.
#[derive(Debug)]
pub struct Relay {
    pub name: String,
    pub scm: WebhookScm,
    pub destination: Destination,
    verifier: Verifier,
    events: Vec<String>,
    touches: Option<crate::allowlist::FileSet>,
    when: Vec<Filter>,
}

/// Relay names: one path segment, plain.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Relay {
    /// Compiles a relay; errors are `(key relative to the relay, message)`, every one at once.
    pub fn compile(spec: &RelaySpec) -> Result<Relay, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = Vec::new();
        if !valid_name(&spec.name) {
            errors.push((
                "name".into(),
                "a relay name is 1-64 letters, digits, '-', '_' or '.' (it is a URL path segment)"
                    .into(),
            ));
        }
        let destination = Destination::parse(&spec.destination_url)
            .map_err(|e| errors.push(("destination_url".into(), e)))
            .ok();
        let secret = spec.secret.as_ref().map(|s| s.expose());
        let verifier = Verifier::new(spec.scm, secret)
            .map_err(|e| errors.push(("secret".into(), e)))
            .ok();
        for (i, e) in spec.events.iter().enumerate() {
            if e.is_empty() || e.bytes().any(|b| b < 0x20 || b == 0x7f) {
                errors.push((
                    format!("events[{i}]"),
                    "empty or a control character".into(),
                ));
            }
        }
        let touches = if spec.touches.is_empty() {
            None
        } else {
            crate::allowlist::FileSet::compile(&spec.touches)
                .map_err(|list| errors.extend(list.into_iter().map(|m| ("touches".into(), m))))
                .ok()
        };
        let mut when = Vec::new();
        for (i, w) in spec.when.iter().enumerate() {
            match Filter::compile(w) {
                Ok(f) => when.push(f),
                Err(list) => errors.extend(list.into_iter().map(|(k, m)| {
                    let key = if k.is_empty() {
                        format!("when[{i}]")
                    } else {
                        format!("when[{i}].{k}")
                    };
                    (key, m)
                })),
            }
        }
        match (destination, verifier, errors.is_empty()) {
            (Some(destination), Some(verifier), true) => Ok(Relay {
                name: spec.name.clone(),
                scm: spec.scm,
                destination,
                verifier,
                events: spec.events.clone(),
                touches,
                when,
            }),
            _ => Err(errors),
        }
    }

    /// Whether deciding needs the body as JSON.
    fn needs_json(&self) -> bool {
        self.touches.is_some()
            || self.when.iter().any(Filter::needs_json)
            || (self.scm == WebhookScm::AzureDevops && !self.events.is_empty())
    }
}

/// An event accepted for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Index of the relay in [`Relays`].
    pub relay: usize,
    pub event: Option<String>,
    /// The SCM's delivery id, when it sends one (logged; the vendor de-duplicates on it).
    pub delivery: Option<String>,
    /// The [`FORWARDED`] headers present, in that order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What to answer the SCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `202` once spooled.
    Accept(Accepted),
    /// `200`: authentic but not relevant; `relay` and the reason (which filter decided).
    Filtered { relay: usize, reason: String },
    /// An error status (`400`, `401`, `404`, `405`, `413`) and why.
    Refused { status: u16, reason: String },
}

impl Verdict {
    /// The status code of the answer (`202` for an accepted event, before spooling).
    pub fn status(&self) -> u16 {
        match self {
            Verdict::Accept(_) => 202,
            Verdict::Filtered { .. } => 200,
            Verdict::Refused { status, .. } => *status,
        }
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> String {
        match self {
            Verdict::Accept(_) => r#"{"relayed":true}"#.to_owned(),
            Verdict::Filtered { reason, .. } => {
                serde_json::json!({"relayed": false, "reason": reason}).to_string()
            }
            Verdict::Refused { reason, .. } => serde_json::json!({"error": reason}).to_string(),
        }
    }
}

/// Every compiled relay and the limits of the listener.
#[derive(Debug)]
pub struct Relays {
    pub relays: Vec<Relay>,
    by_name: HashMap<String, usize>,
    pub max_body: usize,
}

/// A webhook as received.
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    pub method: &'a str,
    /// The request target (`/relay/<name>`, a query is ignored).
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

impl Relays {
    /// Compiles every relay of `[outbound]`; the errors name the relay.
    pub fn compile(o: &Outbound) -> Result<Relays, Vec<String>> {
        let mut relays = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in o.relay.iter().enumerate() {
            match Relay::compile(spec) {
                Ok(r) => relays.push(r),
                Err(list) => errors.extend(
                    list.into_iter()
                        .map(|(k, m)| format!("outbound.relay[{i}].{k}: {m}")),
                ),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let by_name = relays
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        Ok(Relays {
            relays,
            by_name,
            max_body: o.max_body,
        })
    }

    /// Checks only the signature of a webhook for relay `index`.
    pub fn verify(
        &self,
        index: usize,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<(), Unverified> {
        match self.relays.get(index) {
            Some(r) => r.verifier.verify(headers, body),
            None => Ok(()),
        }
    }

    /// The relay a request path names (`/relay/<name>`).
    pub fn route(&self, path: &str) -> Option<usize> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let name = path.strip_prefix("/relay/")?;
        self.by_name.get(name).copied()
    }

    /// Decides what to do with a webhook (see the module doc for the order of the checks).
    pub fn decide(&self, w: &Webhook<'_>) -> Verdict {
        self.decide_with(w, true)
    }

    /// Decides with or without checking the signature (`explain-webhook` reports the
    /// signature apart, and decides the filters even when none was given).
    pub fn decide_with(&self, w: &Webhook<'_>, verify: bool) -> Verdict {
        let refuse = |status: u16, reason: String| Verdict::Refused { status, reason };
        let Some(index) = self.route(w.path) else {
            return refuse(404, "no relay at this path (expected /relay/<name>)".into());
        };
        let relay = &self.relays[index];
        if w.method != "POST" {
            return refuse(405, "webhooks are POSTed".into());
        }
        if w.body.len() > self.max_body {
            return refuse(413, format!("body over max_body ({} bytes)", self.max_body));
        }
        if verify {
            if let Err(e) = relay.verifier.verify(w.headers, w.body) {
                return refuse(401, e.to_string());
            }
        }
        let json = if relay.needs_json() {
            match parse_json(w.headers, w.body) {
                Some(v) => Some(v),
                None => {
                    return refuse(
                        400,
                        "the body is not JSON and this relay's filters need it".into(),
                    );
                }
            }
        } else {
            None
        };
        let event = event_name(relay.scm, w.headers, json.as_ref());
        let filtered = |reason: String| Verdict::Filtered {
            relay: index,
            reason,
        };
        if !relay.events.is_empty() {
            match &event {
                None => return filtered("events: the webhook names no event".into()),
                Some(e) if !relay.events.iter().any(|x| x == e) => {
                    return filtered("events: not one of the relayed events".into());
                }
                Some(_) => {}
            }
        }
        if let (Some(set), Some(doc)) = (&relay.touches, &json) {
            let files = listed_files(doc);
            if !files.is_empty() && !files.iter().any(|f| set.matches_path(f.as_bytes())) {
                return filtered(format!(
                    "touches: none of the {} listed files matches",
                    files.len()
                ));
            }
        }
        for (i, f) in relay.when.iter().enumerate() {
            let subject = Subject {
                headers: w.headers,
                json: json.as_ref(),
            };
            if let Err(reason) = f.check(subject, Quantifier::Any) {
                return filtered(format!("when[{i}] {reason}"));
            }
        }
        Verdict::Accept(Accepted {
            relay: index,
            delivery: delivery_id(relay.scm, w.headers, json.as_ref()),
            event,
            headers: forwarded(w.headers),
        })
    }
}

/// The body as JSON: as is, or the `payload` field of a form-encoded body (GitHub's other
/// content type).
fn parse_json(headers: &[(&str, &[u8])], body: &[u8]) -> Option<Value> {
    let form = header(headers, "Content-Type").is_some_and(|ct| {
        ct.get(..33)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"application/x-www-form-urlencoded"))
    });
    if !form {
        return serde_json::from_slice(body).ok();
    }
    let payload = body
        .split(|&b| b == b'&')
        .find_map(|kv| kv.strip_prefix(b"payload="))?;
    let plus: Vec<u8> = payload
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let mut out = vec![0u8; plus.len()];
    let n = crate::percent::decode_into(&plus, &mut out);
    serde_json::from_slice(&out[..n]).ok()
}

fn header<'a>(headers: &[(&str, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| crate::http::trim_ows(v))
}

fn header_text(headers: &[(&str, &[u8])], name: &str) -> Option<String> {
    header(headers, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn body_text(json: Option<&Value>, key: &str) -> Option<String> {
    json?.get(key)?.as_str().map(str::to_owned)
}

/// The event name (see the module doc).
pub fn event_name(
    scm: WebhookScm,
    headers: &[(&str, &[u8])],
    json: Option<&Value>,
) -> Option<String> {
    match scm {
        WebhookScm::Github => header_text(headers, "X-GitHub-Event"),
        WebhookScm::Gitlab => header_text(headers, "X-Gitlab-Event"),
        WebhookScm::Bitbucket => header_text(headers, "X-Event-Key"),
        WebhookScm::AzureDevops => body_text(json, "eventType"),
        WebhookScm::None => ["X-GitHub-Event", "X-Gitlab-Event", "X-Event-Key"]
            .iter()
            .find_map(|h| header_text(headers, h)),
    }
}

/// The SCM's delivery id, when it sends one.
pub fn delivery_id(
    scm: WebhookScm,
    headers: &[(&str, &[u8])],
    json: Option<&Value>,
) -> Option<String> {
    let id = match scm {
        WebhookScm::Github => header_text(headers, "X-GitHub-Delivery"),
        WebhookScm::Gitlab => header_text(headers, "X-Gitlab-Event-UUID"),
        WebhookScm::Bitbucket => header_text(headers, "X-Request-Id"),
        WebhookScm::AzureDevops => body_text(json, "id"),
        WebhookScm::None => ["X-GitHub-Delivery", "X-Gitlab-Event-UUID", "X-Request-Id"]
            .iter()
            .find_map(|h| header_text(headers, h)),
    }?;
    // Logged: keep it a short printable token.
    (id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())).then_some(id)
}

/// Every path in `commits[].added/modified/removed`.
pub fn listed_files(doc: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    let Some(commits) = doc.get("commits").and_then(Value::as_array) else {
        return out;
    };
    for c in commits {
        for list in ["added", "modified", "removed"] {
            if let Some(files) = c.get(list).and_then(Value::as_array) {
                out.extend(files.iter().filter_map(Value::as_str));
            }
        }
    }
    out
}

fn forwarded(headers: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    FORWARDED
        .iter()
        .filter_map(|name| header(headers, name).map(|v| ((*name).to_owned(), v.to_vec())))
        .collect()
}

#[cfg(test)]
mod tests;
