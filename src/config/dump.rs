//! `wgbroker dump`: the merged, validated configuration and every generated rule, as TOML, with
//! every secret redacted.
//!
//! Invariant: no [`crate::secret::Secret`] value is ever read here; a secret is rendered by its
//! source (`{ file = "..." }`, `{ env = "..." }`, `{ credential = "..." }`) or as `"<redacted>"`.

use toml::{Table, Value};

use super::*;
use crate::allowlist::{RuleOrigin, RuleSpec, ValueConstraint};

const REDACTED: &str = "<redacted>";

fn secret_value(source: &SecretSource) -> Value {
    let mut t = Table::new();
    match source {
        SecretSource::Inline => return Value::String(REDACTED.into()),
        SecretSource::File(p) => t.insert("file".into(), p.display().to_string().into()),
        SecretSource::Env(v) => t.insert("env".into(), v.clone().into()),
        SecretSource::Credential(c) => t.insert("credential".into(), c.clone().into()),
    };
    Value::Table(t)
}

fn dur(d: std::time::Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn strs(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn rule(r: &RuleSpec) -> Table {
    let mut t = Table::new();
    let origin = match &r.origin {
        RuleOrigin::User { index } => format!("allow[{index}]"),
        RuleOrigin::Scm {
            index,
            kind,
            template,
        } => format!("scm[{index}] {kind:?} {template}"),
    };
    t.insert("origin".into(), origin.into());
    t.insert("url".into(), r.url.clone().into());
    t.insert("methods".into(), strs(&r.methods));
    if !r.set_request_headers.is_empty() {
        let h: Table = r
            .set_request_headers
            .iter()
            .map(|(k, _)| (k.clone(), Value::String(REDACTED.into())))
            .collect();
        t.insert("set_request_headers".into(), Value::Table(h));
    }
    if !r.remove_response_headers.is_empty() {
        t.insert(
            "remove_response_headers".into(),
            strs(&r.remove_response_headers),
        );
    }
    for (k, on) in [
        ("log_request_headers", r.log.request_headers),
        ("log_response_headers", r.log.response_headers),
        ("log_request_body", r.log.request_body),
        ("log_response_body", r.log.response_body),
    ] {
        if on {
            t.insert(k.into(), true.into());
        }
    }
    if !r.path_files.is_empty() {
        t.insert("path_files".into(), strs(&r.path_files));
    }
    for (key, cs) in [("query", &r.query), ("headers", &r.headers)] {
        if cs.is_empty() {
            continue;
        }
        let ct: Table = cs
            .iter()
            .map(|(name, c)| {
                let mut one = Table::new();
                match c {
                    ValueConstraint::Equals(v) => one.insert("equals".into(), v.clone().into()),
                    ValueConstraint::Prefix(v) => one.insert("prefix".into(), v.clone().into()),
                    ValueConstraint::OneOf(v) => one.insert("one_of".into(), strs(v)),
                };
                (name.clone(), Value::Table(one))
            })
            .collect();
        t.insert(key.into(), Value::Table(ct));
    }
    t
}

/// Renders the configuration as TOML. The `[[rules]]` array lists every effective rule in
/// decision order (user rules, then generated SCM rules).
pub fn render(c: &Config) -> String {
    let mut root = Table::new();

    let mut wg = Table::new();
    wg.insert(
        "private_key".into(),
        secret_value(&c.wireguard.private_key_source),
    );
    // The key an operator hands to the vendor: never one derived from a stand-in key.
    let public_key = match &c.wireguard.private_key_unavailable {
        Some(why) => format!("unavailable: {why}"),
        None => c.wireguard.private_key.public_key().to_string(),
    };
    wg.insert("public_key".into(), public_key.into());
    wg.insert("address".into(), c.wireguard.address.to_string().into());
    wg.insert("listen_port".into(), int(c.wireguard.listen_port));
    wg.insert("mtu".into(), int(c.wireguard.mtu));
    let peers = c
        .wireguard
        .peers
        .iter()
        .map(|p| {
            let mut t = Table::new();
            t.insert("public_key".into(), p.public_key.to_string().into());
            if let Some(psk) = &p.preshared_key {
                t.insert("preshared_key".into(), secret_value(&psk.source));
            }
            t.insert("endpoint".into(), p.endpoint.to_string().into());
            let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
            t.insert("allowed_ips".into(), strs(&ips));
            t.insert("persistent_keepalive".into(), int(p.persistent_keepalive));
            Value::Table(t)
        })
        .collect();
    wg.insert("peers".into(), Value::Array(peers));
    root.insert("wireguard".into(), Value::Table(wg));

    let mut ib = Table::new();
    ib.insert("listen_port".into(), int(c.inbound.listen_port));
    ib.insert("max_head_bytes".into(), int(c.inbound.max_head_bytes));
    ib.insert("max_headers".into(), int(c.inbound.max_headers));
    ib.insert("head_timeout".into(), dur(c.inbound.head_timeout));
    ib.insert("idle_timeout".into(), dur(c.inbound.idle_timeout));
    ib.insert("body_timeout".into(), dur(c.inbound.body_timeout));
    root.insert("inbound".into(), Value::Table(ib));

    if let Some(hb) = &c.heartbeat {
        let mut t = Table::new();
        t.insert("url".into(), hb.url.clone().into());
        t.insert("interval".into(), dur(hb.interval));
        t.insert("timeout".into(), dur(hb.timeout));
        root.insert("heartbeat".into(), Value::Table(t));
    }

    let scm = c
        .scm
        .iter()
        .map(|s| {
            let mut t = Table::new();
            t.insert(
                "type".into(),
                format!("{:?}", s.kind).to_ascii_lowercase().into(),
            );
            t.insert("base_url".into(), s.base_url.clone().into());
            if let Some(tok) = &s.token {
                t.insert("token".into(), secret_value(&tok.source));
            }
            t.insert("allow_code_access".into(), s.allow_code_access.into());
            t.insert("generated_rules".into(), int(s.rules.len()));
            Value::Table(t)
        })
        .collect();
    root.insert("scm".into(), Value::Array(scm));

    let u = &c.upstream;
    let mut ut = Table::new();
    let cas: Vec<String> = u.ca_files.iter().map(|p| p.display().to_string()).collect();
    ut.insert("ca_files".into(), strs(&cas));
    let tls = match u.tls_min_version {
        TlsVersion::V1_2 => "1.2",
        TlsVersion::V1_3 => "1.3",
    };
    ut.insert("tls_min_version".into(), tls.into());
    ut.insert("connect_timeout".into(), dur(u.connect_timeout));
    ut.insert("tls_timeout".into(), dur(u.tls_timeout));
    ut.insert("response_timeout".into(), dur(u.response_timeout));
    ut.insert("idle_timeout".into(), dur(u.idle_timeout));
    ut.insert(
        "pool_max_idle_per_host".into(),
        int(u.pool_max_idle_per_host),
    );
    if let Some(p) = &u.proxy {
        ut.insert("proxy".into(), crate::secret::redact_userinfo(p).into());
    }
    ut.insert("no_proxy".into(), strs(&u.no_proxy));
    ut.insert("use_env_proxy".into(), u.use_env_proxy.into());
    root.insert("upstream".into(), Value::Table(ut));

    let mut at = Table::new();
    at.insert("listen".into(), c.admin.listen.to_string().into());
    at.insert("enabled".into(), c.admin.enabled.into());
    root.insert("admin".into(), Value::Table(at));

    let mut lt = Table::new();
    let fmt = match c.log.format {
        LogFormat::Auto => "auto",
        LogFormat::Text => "text",
        LogFormat::Json => "json",
        LogFormat::Journald => "journald",
    };
    lt.insert("format".into(), fmt.into());
    lt.insert("level".into(), c.log.level.clone().into());
    lt.insert("body_limit".into(), int(c.log.body_limit));
    root.insert("log".into(), Value::Table(lt));

    let r = &c.runtime;
    let mut rt = Table::new();
    rt.insert(
        "cpus".into(),
        Value::Array(r.cpus.iter().map(|&c| int(c)).collect()),
    );
    if let Some(t) = r.tunnel_cpu {
        rt.insert("tunnel_cpu".into(), int(t));
    }
    rt.insert("shards".into(), int(r.shards));
    rt.insert("pin".into(), r.pin.into());
    rt.insert("ring_depth".into(), int(r.ring_depth));
    rt.insert("io_memory".into(), int(r.io_memory));
    rt.insert("spin_before_park".into(), dur(r.spin_before_park));
    rt.insert("preempt_timer".into(), dur(r.preempt_timer));
    rt.insert("udp_recv_buffer".into(), int(r.udp_recv_buffer));
    rt.insert("udp_send_buffer".into(), int(r.udp_send_buffer));
    rt.insert("udp_gso".into(), r.udp_gso.into());
    rt.insert("tcp_rx_buffer".into(), int(r.tcp_rx_buffer));
    rt.insert("tcp_tx_buffer".into(), int(r.tcp_tx_buffer));
    rt.insert("tcp_ack_delay".into(), dur(r.tcp_ack_delay));
    rt.insert("stacks_per_shard".into(), int(r.stacks_per_shard));
    rt.insert("listen_backlog".into(), int(r.listen_backlog));
    rt.insert("max_connections".into(), int(r.max_connections));
    rt.insert("channel_capacity".into(), int(r.channel_capacity));
    root.insert("runtime".into(), Value::Table(rt));

    let rules = c.rules().iter().map(|r| Value::Table(rule(r))).collect();
    root.insert("rules".into(), Value::Array(rules));

    toml::to_string_pretty(&root).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
