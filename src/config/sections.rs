//! Readers for each configuration section: merged TOML → validated [`Config`].

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Value;

use super::overlay::Overlay;
use super::reader::{Ctx, FromToml, Section, type_name};
use super::rules::{allow_rule, scm_entry};
use super::secret_source::{self, SecretEnv, SecretValue};
use super::*;
use crate::allowlist::{Allowlist, RuleOrigin, RuleSpec};
use crate::secret::Secret;

/// Byte sizes: an integer, or a string such as `"64KiB"`, `"4MiB"`, `"1GiB"` ([`crate::units`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bytes(pub(super) usize);

impl FromToml for Bytes {
    const EXPECTED: &'static str = "a byte size (integer, or \"64KiB\", \"4MiB\")";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        match v {
            Value::Integer(i) => match usize::try_from(*i) {
                Ok(n) => Some(Bytes(n)),
                Err(_) => {
                    ctx.error(path, format!("{i} is not a valid size"));
                    None
                }
            },
            Value::String(s) => {
                let parsed = parse_bytes(s);
                if parsed.is_none() {
                    ctx.error(
                        path,
                        format!("invalid size {s:?} (expected e.g. \"64KiB\")"),
                    );
                }
                parsed.map(Bytes)
            }
            other => {
                ctx.error(
                    path,
                    format!("expected {}, found {}", Self::EXPECTED, type_name(other)),
                );
                None
            }
        }
    }
}

fn parse_bytes(s: &str) -> Option<usize> {
    crate::units::parse_size(s)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
}

/// Reads a secret field.
pub(super) fn secret(
    s: &mut Section<'_>,
    ctx: &mut Ctx<'_>,
    key: &str,
    env: &dyn SecretEnv,
) -> Option<SecretValue> {
    let path = s.key(key);
    let v = s.raw(key)?;
    secret_source::resolve(v, ctx, &path, env)
}

/// An optional list of secrets (`tokens = [ { file = ... }, { env = ... } ]`): two or more.
pub(super) fn secrets(
    s: &mut Section<'_>,
    ctx: &mut Ctx<'_>,
    key: &str,
    env: &dyn SecretEnv,
) -> Vec<SecretValue> {
    let path = s.key(key);
    match s.raw(key) {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() >= 2 => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| secret_source::resolve(v, ctx, &format!("{path}[{i}]"), env))
            .collect(),
        Some(_) => {
            ctx.error(
                &path,
                "expected an array of two or more secrets (one token: `token`)",
            );
            Vec::new()
        }
    }
}

/// A `set_request_headers` value given as an array: a token pool for header `name`.
pub(super) fn pool_of(
    name: &str,
    items: &[Value],
    have_one: bool,
    ctx: &mut Ctx<'_>,
    path: &str,
    env: &dyn SecretEnv,
) -> Option<std::sync::Arc<crate::allowlist::pool::TokenPool>> {
    if have_one {
        ctx.error(path, "only one header of a rule may have several values");
        return None;
    }
    if items.len() < 2 {
        ctx.error(
            path,
            "a pool needs two or more values (one value: write it alone)",
        );
        return None;
    }
    let values: Vec<Secret> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| secret_source::resolve(v, ctx, &format!("{path}[{i}]"), env))
        .map(|sv| sv.value)
        .collect();
    if values.iter().any(|v| {
        v.expose()
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || b == 0)
    }) {
        ctx.error(path, "header value contains CR, LF or NUL");
    }
    (values.len() == items.len()).then(|| {
        std::sync::Arc::new(crate::allowlist::pool::TokenPool::new(
            name,
            values,
            crate::allowlist::pool::SET_ASIDE,
        ))
    })
}

pub(super) fn required_secret(
    s: &mut Section<'_>,
    ctx: &mut Ctx<'_>,
    key: &str,
    env: &dyn SecretEnv,
) -> Option<SecretValue> {
    if s.raw(key).is_none() {
        ctx.error(
            &s.key(key),
            "missing required key (a secret: a string, or { file | env | credential = ... })",
        );
        return None;
    }
    secret(s, ctx, key, env)
}

pub(super) fn validate(
    overlay: &Overlay,
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<Loaded, ConfigErrors> {
    let mut ctx = Ctx::new(&overlay.provenance);
    ctx.lenient_secrets = mode == LoadMode::Policy;
    let mut root = Section::new("", &overlay.merged);

    let wireguard = match root.table(&mut ctx, "wireguard") {
        Some(s) => wireguard(s, &mut ctx, env),
        None => {
            if root.raw("wireguard").is_none() {
                ctx.error("wireguard", "missing required section [wireguard]");
            }
            None
        }
    };
    let inbound = inbound(root.table(&mut ctx, "inbound"), &mut ctx);
    let heartbeat = root
        .table(&mut ctx, "heartbeat")
        .and_then(|s| heartbeat(s, &mut ctx));
    let allow: Vec<RuleSpec> = root
        .tables(&mut ctx, "allow")
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| allow_rule(i, s, &mut ctx, env))
        .collect();
    let mut instances = Vec::new();
    let scm: Vec<Scm> = root
        .tables(&mut ctx, "scm")
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| scm_entry(i, s, &mut ctx, env, &mut instances))
        .collect();
    let upstream = upstream(root.table(&mut ctx, "upstream"), &mut ctx);
    let admin = admin(root.table(&mut ctx, "admin"), &mut ctx);
    let log = log(root.table(&mut ctx, "log"), &mut ctx);
    let runtime = runtime(root.table(&mut ctx, "runtime"), &mut ctx);
    let netstack = netstack(root.table(&mut ctx, "netstack"), &mut ctx);
    let outbound = root
        .table(&mut ctx, "outbound")
        .and_then(|s| super::outbound::outbound(s, &mut ctx, env));
    root.finish(&mut ctx);

    // Compile the allowlist even when other sections failed, so its errors are reported too.
    let n_user = allow.len();
    let mut rules = allow.clone();
    let mut scm_paths = Vec::new();
    for (i, s) in scm.iter().enumerate() {
        for _ in &s.rules {
            scm_paths.push(format!("scm[{i}]"));
        }
        rules.extend(s.rules.iter().cloned());
    }
    let allowlist = match Allowlist::compile(rules) {
        Ok(a) => Some(a),
        Err(errs) => {
            for e in errs {
                let key = if e.rule < n_user {
                    format!("allow[{}].{}", user_index(&allow, e.rule), e.field)
                } else {
                    scm_paths
                        .get(e.rule - n_user)
                        .cloned()
                        .unwrap_or_else(|| "scm".into())
                };
                ctx.error(&key, e.message);
            }
            None
        }
    };
    if let Some(wg) = &wireguard {
        if let Some(hb) = &heartbeat {
            check_heartbeat_reachable(hb, wg, &mut ctx);
        }
    }

    let errors = std::mem::take(&mut ctx.errors);
    match (wireguard, errors.is_empty(), allowlist) {
        (Some(wireguard), true, Some(allowlist)) => Ok(Loaded {
            config: Config {
                wireguard,
                inbound,
                heartbeat,
                allow,
                scm,
                upstream,
                admin,
                log,
                runtime,
                netstack,
                outbound,
            },
            allowlist,
            warnings: ctx.warnings,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// The `[[allow]]` index of the rule at position `rule` of the compiled list.
fn user_index(allow: &[RuleSpec], rule: usize) -> usize {
    match allow.get(rule).map(|r| &r.origin) {
        Some(RuleOrigin::User { index }) => *index,
        _ => rule,
    }
}

fn check_heartbeat_reachable(hb: &Heartbeat, wg: &WireGuard, ctx: &mut Ctx<'_>) {
    // The heartbeat goes through the tunnel: its host must be an address some peer routes.
    let ip = hb.target.addr.ip();
    if !wg
        .peers
        .iter()
        .any(|p| p.allowed_ips.iter().any(|n| n.contains(&ip)))
    {
        ctx.error(
            "heartbeat.url",
            format!(
                "{ip} is not inside any peer's allowed_ips, so it is not reachable through the tunnel"
            ),
        );
    }
}

fn wireguard(mut s: Section<'_>, ctx: &mut Ctx<'_>, env: &dyn SecretEnv) -> Option<WireGuard> {
    let key = required_secret(&mut s, ctx, "private_key", env);
    let private = key.as_ref().and_then(|k| {
        if k.unavailable.is_some() {
            // Policy mode: a stand-in so the rest validates; `private_key_unavailable` says why,
            // and nothing derived from it (a public key) is ever shown.
            return Some(PrivateKey::from_bytes([0; 32]));
        }
        match PrivateKey::from_base64(k.value.expose()) {
            Ok(p) => Some(p),
            Err(e) => {
                ctx.error(
                    &s.key("private_key"),
                    format!("{e} (generate one with `wgbroker genkey`)"),
                );
                None
            }
        }
    });
    let address: Option<IpAddr> = s.req(ctx, "address");
    let listen_port: u16 = s.or(ctx, "listen_port", WireGuard::DEFAULT_LISTEN_PORT);
    let mtu: u16 = s.or(ctx, "mtu", WireGuard::DEFAULT_MTU);
    let min_mtu = if matches!(address, Some(IpAddr::V6(_))) {
        1280
    } else {
        576
    };
    if !(min_mtu..=9000).contains(&mtu) {
        ctx.error(
            &s.key("mtu"),
            format!("{mtu} is out of range ({min_mtu}..=9000)"),
        );
    }
    let transport = s
        .opt::<String>(ctx, "transport")
        .and_then(|t| {
            t.parse::<crate::transport::Transport>()
                .map_err(|e| ctx.error(&s.key("transport"), e))
                .ok()
        })
        .unwrap_or_default();
    let ca_files: Vec<std::path::PathBuf> = s.or(ctx, "ca_files", Vec::new());
    readable_files(ctx, &s, "ca_files", &ca_files);
    let proxy: Option<String> = s.opt(ctx, "proxy");
    if let Some(p) = &proxy {
        // The upstreams' parser; its errors never repeat the URL (it may hold a password).
        if let Err(problem) = super::ProxyEndpoint::parse_url(p) {
            ctx.error(&s.key("proxy"), problem);
        }
    }
    let peer_sections = s.tables(ctx, "peers");
    if peer_sections.is_empty() && s.raw("peers").is_none() {
        ctx.error(
            &s.key("peers"),
            "at least one [[wireguard.peers]] entry is required",
        );
    }
    let mut peers = Vec::new();
    for p in peer_sections {
        if let Some(peer) = peer(p, ctx, env) {
            peers.push(peer);
        }
    }
    for (i, a) in peers.iter().enumerate() {
        if peers[..i].iter().any(|b| b.public_key == a.public_key) {
            ctx.error(
                &format!("{}.peers[{i}].public_key", s.path()),
                "duplicate peer public key",
            );
        }
    }
    if let (Some(k), Some(None)) = (&private, key.as_ref().map(|k| &k.unavailable)) {
        if peers.iter().any(|p| p.public_key == k.public_key()) {
            ctx.error(&s.key("peers"), "a peer has the broker's own public key");
        }
    }
    s.finish(ctx);
    let key = key?;
    Some(WireGuard {
        private_key: private?,
        private_key_source: key.source().clone(),
        private_key_unavailable: key.unavailable,
        address: address?,
        listen_port,
        mtu,
        transport,
        ca_files,
        proxy,
        peers,
    })
}

fn endpoint(v: &str) -> Result<Endpoint, String> {
    let bad = || format!("invalid endpoint {v:?} (expected host:port, [v6]:port)");
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h, p)
    } else {
        let (h, p) = v.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(bad());
        }
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() {
        return Err(bad());
    }
    let dns_ok = host.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !(dns_ok || host.parse::<IpAddr>().is_ok()) {
        return Err(bad());
    }
    Ok(Endpoint {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn peer(mut s: Section<'_>, ctx: &mut Ctx<'_>, env: &dyn SecretEnv) -> Option<Peer> {
    let public_key = s.req::<String>(ctx, "public_key").and_then(|k| {
        PublicKey::from_base64(&k)
            .map_err(|e| ctx.error(&s.key("public_key"), e.to_string()))
            .ok()
    });
    let preshared_key = secret(&mut s, ctx, "preshared_key", env);
    if let Some(psk) = &preshared_key {
        if psk.unavailable.is_none() && PrivateKey::from_base64(psk.value.expose()).is_err() {
            ctx.error(&s.key("preshared_key"), "key is not the correct length or format (expected 44 base64 characters, `wg genpsk`)");
        }
    }
    let endpoint = s.req::<String>(ctx, "endpoint").and_then(|e| {
        self::endpoint(&e)
            .map_err(|m| ctx.error(&s.key("endpoint"), m))
            .ok()
    });
    let tcp_endpoint = s.opt::<String>(ctx, "tcp_endpoint").and_then(|e| {
        self::endpoint(&e)
            .map_err(|m| ctx.error(&s.key("tcp_endpoint"), m))
            .ok()
    });
    let tls_endpoint = s.opt::<String>(ctx, "tls_endpoint").and_then(|e| {
        self::endpoint(&e)
            .map_err(|m| ctx.error(&s.key("tls_endpoint"), m))
            .ok()
    });
    let allowed_ips: Option<Vec<IpNet>> = s.req(ctx, "allowed_ips");
    if matches!(&allowed_ips, Some(v) if v.is_empty()) {
        ctx.error(&s.key("allowed_ips"), "must not be empty");
    }
    let persistent_keepalive: u16 = s.or(
        ctx,
        "persistent_keepalive",
        Peer::DEFAULT_PERSISTENT_KEEPALIVE,
    );
    s.finish(ctx);
    Some(Peer {
        public_key: public_key?,
        preshared_key,
        endpoint: endpoint?,
        tcp_endpoint,
        tls_endpoint,
        allowed_ips: allowed_ips?,
        persistent_keepalive,
    })
}

pub(super) fn positive(ctx: &mut Ctx<'_>, s: &Section<'_>, key: &str, v: Duration) {
    if v.is_zero() {
        ctx.error(&s.key(key), "must be greater than zero");
    }
}

fn inbound(s: Option<Section<'_>>, ctx: &mut Ctx<'_>) -> Inbound {
    let empty = toml::Table::new();
    let mut s = s.unwrap_or_else(|| Section::new("inbound", &empty));
    let d = Inbound::default();
    let i = Inbound {
        listen_port: s.or(ctx, "listen_port", d.listen_port),
        max_head_bytes: s.or(ctx, "max_head_bytes", Bytes(d.max_head_bytes)).0,
        max_headers: s.or(ctx, "max_headers", d.max_headers),
        head_timeout: s.or(ctx, "head_timeout", d.head_timeout),
        idle_timeout: s.or(ctx, "idle_timeout", d.idle_timeout),
        body_timeout: s.or(ctx, "body_timeout", d.body_timeout),
        max_checked_body: s.or(ctx, "max_checked_body", Bytes(d.max_checked_body)).0,
    };
    if i.listen_port == 0 {
        ctx.error(&s.key("listen_port"), "must not be 0");
    }
    if !(1024..=(1 << 20)).contains(&i.max_head_bytes) {
        ctx.error(&s.key("max_head_bytes"), "must be between 1KiB and 1MiB");
    }
    if !(8..=1000).contains(&i.max_headers) {
        ctx.error(&s.key("max_headers"), "must be between 8 and 1000");
    }
    positive(ctx, &s, "head_timeout", i.head_timeout);
    positive(ctx, &s, "idle_timeout", i.idle_timeout);
    positive(ctx, &s, "body_timeout", i.body_timeout);
    if !(1..=(64 << 20)).contains(&i.max_checked_body) {
        ctx.error(
            &s.key("max_checked_body"),
            "must be between 1 byte and 64MiB",
        );
    }
    s.finish(ctx);
    i
}

fn heartbeat(mut s: Section<'_>, ctx: &mut Ctx<'_>) -> Option<Heartbeat> {
    let url: Option<String> = s.req(ctx, "url");
    let interval = s.or(ctx, "interval", Heartbeat::DEFAULT_INTERVAL);
    let timeout = s.or(ctx, "timeout", Heartbeat::DEFAULT_TIMEOUT);
    positive(ctx, &s, "interval", interval);
    positive(ctx, &s, "timeout", timeout);
    let target = url
        .as_deref()
        .map(HeartbeatUrl::parse)
        .and_then(|r| r.map_err(|e| ctx.error(&s.key("url"), e)).ok());
    s.finish(ctx);
    Some(Heartbeat {
        url: url?,
        target: target?,
        interval,
        timeout,
    })
}

/// An error per file of `files` (the list at `key`) whose metadata cannot be read.
fn readable_files(ctx: &mut Ctx<'_>, s: &Section<'_>, key: &str, files: &[std::path::PathBuf]) {
    for (i, f) in files.iter().enumerate() {
        if let Err(e) = std::fs::metadata(f) {
            ctx.error(
                &format!("{}[{i}]", s.key(key)),
                format!("cannot read {}: {e}", f.display()),
            );
        }
    }
}

fn upstream(s: Option<Section<'_>>, ctx: &mut Ctx<'_>) -> Upstream {
    let empty = toml::Table::new();
    let mut s = s.unwrap_or_else(|| Section::new("upstream", &empty));
    let d = Upstream::default();
    let ca_files: Vec<std::path::PathBuf> = s.or(ctx, "ca_files", d.ca_files);
    readable_files(ctx, &s, "ca_files", &ca_files);
    let tls_min_version = match s.opt::<String>(ctx, "tls_min_version").as_deref() {
        None => d.tls_min_version,
        Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            ctx.error(
                &s.key("tls_min_version"),
                format!("{other:?} is not supported (expected \"1.2\" or \"1.3\")"),
            );
            d.tls_min_version
        }
    };
    let proxy: Option<String> = s.opt(ctx, "proxy").or(d.proxy);
    if let Some(p) = &proxy {
        // The same parser the runtime uses; its errors never repeat the URL (it may hold a
        // password).
        if let Err(problem) = super::ProxyEndpoint::parse_url(p) {
            ctx.error(&s.key("proxy"), problem);
        }
    }
    let u = Upstream {
        ca_files,
        tls_min_version,
        connect_timeout: s.or(ctx, "connect_timeout", d.connect_timeout),
        tls_timeout: s.or(ctx, "tls_timeout", d.tls_timeout),
        response_timeout: s.or(ctx, "response_timeout", d.response_timeout),
        idle_timeout: s.or(ctx, "idle_timeout", d.idle_timeout),
        pool_max_idle_per_host: s.or(ctx, "pool_max_idle_per_host", d.pool_max_idle_per_host),
        proxy,
        no_proxy: s.or(ctx, "no_proxy", d.no_proxy),
        use_env_proxy: s.or(ctx, "use_env_proxy", d.use_env_proxy),
    };
    positive(ctx, &s, "connect_timeout", u.connect_timeout);
    positive(ctx, &s, "tls_timeout", u.tls_timeout);
    positive(ctx, &s, "response_timeout", u.response_timeout);
    s.finish(ctx);
    u
}

pub(super) fn admin(s: Option<Section<'_>>, ctx: &mut Ctx<'_>) -> Admin {
    let empty = toml::Table::new();
    let mut s = s.unwrap_or_else(|| Section::new("admin", &empty));
    let d = Admin::default();
    let listen = match s.opt::<String>(ctx, "listen") {
        None => d.listen,
        Some(l) => l.parse().unwrap_or_else(|_| {
            ctx.error(
                &s.key("listen"),
                format!("invalid address {l:?} (expected ip:port)"),
            );
            d.listen
        }),
    };
    let enabled = s.or(ctx, "enabled", d.enabled);
    s.finish(ctx);
    Admin { listen, enabled }
}

pub(super) fn log(s: Option<Section<'_>>, ctx: &mut Ctx<'_>) -> Log {
    let empty = toml::Table::new();
    let mut s = s.unwrap_or_else(|| Section::new("log", &empty));
    let d = Log::default();
    let format = match s.opt::<String>(ctx, "format").as_deref() {
        None => d.format,
        Some("auto") => LogFormat::Auto,
        Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some("journald") => LogFormat::Journald,
        Some(other) => {
            ctx.error(
                &s.key("format"),
                format!("unknown format {other:?} (expected auto, text, json or journald)"),
            );
            d.format
        }
    };
    let level: String = s.or(ctx, "level", d.level);
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        ctx.error(&s.key("level"), format!("unknown level {level:?}"));
    }
    let body_limit = s.or(ctx, "body_limit", Bytes(d.body_limit)).0;
    s.finish(ctx);
    Log {
        format,
        level,
        body_limit,
    }
}

/// `[netstack]`: the broker's, and the gateway's (the same tunnel TCP).
pub(super) fn netstack(s: Option<Section<'_>>, ctx: &mut Ctx<'_>) -> Netstack {
    let empty = toml::Table::new();
    let mut s = s.unwrap_or_else(|| Section::new("netstack", &empty));
    let d = Netstack::default();
    let congestion = match s.opt::<String>(ctx, "congestion").as_deref() {
        None => d.congestion,
        Some("cubic") => Congestion::Cubic,
        Some("newreno") => Congestion::NewReno,
        Some("bbr") => Congestion::Bbr,
        Some(other) => {
            ctx.error(
                &s.key("congestion"),
                format!("unknown congestion controller {other:?} (expected cubic, newreno or bbr)"),
            );
            d.congestion
        }
    };
    let n = Netstack {
        congestion,
        rx_buffer_max: s.or(ctx, "rx_buffer_max", Bytes(d.rx_buffer_max)).0,
        tx_buffer_max: s.or(ctx, "tx_buffer_max", Bytes(d.tx_buffer_max)).0,
    };
    for (key, v) in [
        ("rx_buffer_max", n.rx_buffer_max),
        ("tx_buffer_max", n.tx_buffer_max),
    ] {
        if !(2048..=(1 << 30)).contains(&v) {
            ctx.error(&s.key(key), "must be between 2KiB and 1GiB");
        }
    }
    s.finish(ctx);
    n
}

pub(super) fn runtime(s: Option<Section<'_>>, ctx: &mut Ctx<'_>) -> Runtime {
    let empty = toml::Table::new();
    let mut s = s.unwrap_or_else(|| Section::new("runtime", &empty));
    let d = Runtime::default();
    let r = Runtime {
        cpus: s.or(ctx, "cpus", d.cpus),
        tunnel_cpu: s.opt(ctx, "tunnel_cpu").or(d.tunnel_cpu),
        shards: s.or(ctx, "shards", d.shards),
        pin: s.or(ctx, "pin", d.pin),
        ring_depth: s.or(ctx, "ring_depth", d.ring_depth),
        io_memory: s.or(ctx, "io_memory", Bytes(d.io_memory)).0,
        spin_before_park: s.or(ctx, "spin_before_park", d.spin_before_park),
        preempt_timer: s.or(ctx, "preempt_timer", d.preempt_timer),
        udp_recv_buffer: s.or(ctx, "udp_recv_buffer", Bytes(d.udp_recv_buffer)).0,
        udp_send_buffer: s.or(ctx, "udp_send_buffer", Bytes(d.udp_send_buffer)).0,
        udp_gso: s.or(ctx, "udp_gso", d.udp_gso),
        tcp_rx_buffer: s.or(ctx, "tcp_rx_buffer", Bytes(d.tcp_rx_buffer)).0,
        tcp_tx_buffer: s.or(ctx, "tcp_tx_buffer", Bytes(d.tcp_tx_buffer)).0,
        tcp_ack_delay: s.or(ctx, "tcp_ack_delay", d.tcp_ack_delay),
        stacks_per_shard: s.or(ctx, "stacks_per_shard", d.stacks_per_shard),
        listen_backlog: s.or(ctx, "listen_backlog", d.listen_backlog),
        max_connections: s.or(ctx, "max_connections", d.max_connections),
        channel_capacity: s.or(ctx, "channel_capacity", d.channel_capacity),
    };
    if !r.pin && !r.spin_before_park.is_zero() {
        // glommio drops spin_before_park for executors without a CPU binding.
        ctx.warning(
            &s.key("spin_before_park"),
            "has no effect with `pin = false`: executors spin before parking only when pinned",
        );
    }
    if let Some(t) = r.tunnel_cpu {
        if !r.cpus.is_empty() && !r.cpus.contains(&t) {
            ctx.error(&s.key("tunnel_cpu"), format!("CPU {t} is not in `cpus`"));
        }
    }
    if !r.ring_depth.is_power_of_two() || !(8..=32768).contains(&r.ring_depth) {
        ctx.error(
            &s.key("ring_depth"),
            "must be a power of two between 8 and 32768",
        );
    }
    if r.tcp_rx_buffer < 2048 || r.tcp_tx_buffer < 2048 {
        ctx.error(&s.key("tcp_rx_buffer"), "TCP buffers must be at least 2KiB");
    }
    if r.tcp_ack_delay > Duration::from_millis(500) {
        // RFC 1122 4.2.3.2: an ACK must not be delayed by more than 0.5 s.
        ctx.error(&s.key("tcp_ack_delay"), "must be at most 500ms");
    }
    if r.listen_backlog == 0 || r.max_connections == 0 || r.channel_capacity == 0 {
        ctx.error(
            s.path(),
            "listen_backlog, max_connections and channel_capacity must be > 0",
        );
    }
    if r.preempt_timer.is_zero() {
        ctx.error(&s.key("preempt_timer"), "must be greater than zero");
    }
    s.finish(ctx);
    r
}
