//! Configuration: TOML files overlaid in order, read into validated types, every error at once.
//!
//! Loading goes **raw → validated**: the files are parsed and merged into one TOML document
//! ([`overlay`]), then each section is read by [`reader::Section`] into the typed structs below,
//! collecting every problem (type mismatches, unknown keys, missing keys, invalid values, bad
//! allowlist patterns) with the file and key path it was found at. A [`Config`] can therefore only
//! exist when the whole configuration is valid. A file that is not TOML at all is reported by
//! file, line, column and key path ([`syntax`]), never with the source line the toml crate quotes.
//!
//! Secrets (`private_key`, `preshared_key`, `token`, header values) are resolved at load time from
//! their source (see [`secret_source`]) and carried as [`crate::secret::Secret`], which never prints.

pub mod dump;
pub mod error;
pub mod overlay;
pub mod reader;
pub mod reload;
pub mod secret_source;
mod sections;
pub mod syntax;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

pub use error::{ConfigError, ConfigErrors, Position};
pub use secret_source::{ProcessEnv, SecretEnv, SecretSource, SecretValue};

use crate::allowlist::{Allowlist, RuleSpec, scm::ScmKind};
use crate::keys::{PrivateKey, PublicKey};

/// The example configuration shipped with the package (`/etc/wgbroker/broker.toml`).
pub const EXAMPLE: &str = include_str!("../../packaging/broker.toml");

/// How strictly secrets are treated while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Everything must resolve (`run`, `check`).
    Full,
    /// Policy tools (`explain`, `dump`): a secret that cannot be read is a warning and is replaced
    /// by a placeholder, so the allowlist can be inspected on a machine without the key material.
    Policy,
}

/// A loaded configuration: the validated values and the compiled allowlist.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub allowlist: Allowlist,
    /// Non-fatal findings (e.g. unreadable secrets in [`LoadMode::Policy`]).
    pub warnings: Vec<ConfigError>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub wireguard: WireGuard,
    pub inbound: Inbound,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
    /// User `[[allow]]` rules, in order. Not serialized with the sections: `dump` lists them in
    /// `[[rules]]`, every rule in decision order with its origin (`allow[N]`).
    #[serde(skip)]
    pub allow: Vec<RuleSpec>,
    pub scm: Vec<Scm>,
    pub upstream: Upstream,
    pub admin: Admin,
    pub log: Log,
    pub runtime: Runtime,
}

impl Config {
    /// Every rule in decision order: user rules, then the rules generated for each `[[scm]]`.
    pub fn rules(&self) -> Vec<RuleSpec> {
        let mut rules = self.allow.clone();
        for s in &self.scm {
            rules.extend(s.rules.iter().cloned());
        }
        rules
    }
}

/// `[wireguard]`: this broker's interface and its peers (the vendor's gateways).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireGuard {
    /// Secret key of the broker (`wgbroker genkey`). Never serialized (`PrivateKey` has no
    /// `Serialize`): `dump` shows its source and its public key.
    #[serde(skip)]
    pub private_key: PrivateKey,
    #[serde(rename = "private_key")]
    pub private_key_source: SecretSource,
    /// Why the private key could not be read ([`LoadMode::Policy`] only). `private_key` is then a
    /// stand-in: neither it nor its public key may be used or shown.
    #[serde(skip)]
    pub private_key_unavailable: Option<String>,
    /// The broker's address inside the tunnel (v4 or v6); the HTTP endpoint listens here.
    pub address: IpAddr,
    /// Local UDP port; 0 = any (the broker dials out, so no fixed port is needed).
    pub listen_port: u16,
    /// Tunnel MTU; default 1320 (see [`crate::netstack::DEFAULT_MTU`] for why not 1420).
    pub mtu: u16,
    pub peers: Vec<Peer>,
}

/// `[[wireguard.peers]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    #[serde(serialize_with = "dump::display")]
    pub public_key: PublicKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<SecretValue>,
    /// Where the gateway listens; the broker initiates handshakes towards it.
    #[serde(serialize_with = "dump::display")]
    pub endpoint: Endpoint,
    /// Inner source addresses accepted from this peer (and routed to it).
    #[serde(serialize_with = "dump::displays")]
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives; 0 = off. Default 20.
    pub persistent_keepalive: u16,
}

/// A `host:port` endpoint; the host may be a DNS name, re-resolved when handshakes keep failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[inbound]`: the HTTP/1.1 endpoint inside the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inbound {
    /// TCP port on the tunnel address; default 80.
    pub listen_port: u16,
    /// Largest accepted request head (request line + headers), bytes; default 16 KiB.
    pub max_head_bytes: usize,
    /// Most header lines in a request head; default 100.
    pub max_headers: usize,
    /// Time allowed to receive a complete request head; default 10 s.
    #[serde(serialize_with = "dump::duration")]
    pub head_timeout: Duration,
    /// Idle keep-alive connections are closed after this; default 60 s.
    #[serde(serialize_with = "dump::duration")]
    pub idle_timeout: Duration,
    /// Time a request or response body may stall without progress; default 60 s.
    #[serde(serialize_with = "dump::duration")]
    pub body_timeout: Duration,
}

/// `[heartbeat]`: periodic GET to the vendor's side of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// The URL as configured.
    pub url: String,
    /// The same URL taken apart (validated at load: the runtime never parses it again).
    #[serde(skip)]
    pub target: HeartbeatUrl,
    /// Default 30 s.
    #[serde(serialize_with = "dump::duration")]
    pub interval: Duration,
    /// Default 5 s.
    #[serde(serialize_with = "dump::duration")]
    pub timeout: Duration,
}

/// A `[heartbeat] url`: `http://` or `https://`, an IP address inside the tunnel (there is no
/// DNS inside the tunnel), an optional port, a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatUrl {
    /// `https://`: TLS through the tunnel, the certificate verified for `addr`'s IP address.
    pub tls: bool,
    /// Where to connect inside the tunnel (port 80 or 443 unless given).
    pub addr: SocketAddr,
    /// The authority as written (the `Host` header).
    pub authority: String,
    /// Path and query, `/` when the URL has none.
    pub path: String,
}

impl HeartbeatUrl {
    /// Takes `url` apart; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err("expected an http:// or https:// URL".into()),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains('#') {
            return Err("a fragment (#...) is not sent to a server; remove it".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            // `[v6]:port` or `v4:port`; a bare IPv6 address has colons but no port.
            Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))?;
                (h, port)
            }
            _ => (authority, default_port),
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip = bare.parse::<IpAddr>().map_err(|_| {
            "the heartbeat host must be an IP address inside the tunnel (no DNS inside the tunnel)"
                .to_owned()
        })?;
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            tls,
            addr: SocketAddr::new(ip, port),
            authority: authority.to_owned(),
            path,
        })
    }
}

/// `[[scm]]`: one source-code-management system and its generated rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scm {
    #[serde(rename = "type")]
    pub kind: ScmKind,
    pub base_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretValue>,
    pub allow_code_access: bool,
    /// The rules generated from the built-in table for this entry (`dump` counts them and lists
    /// them in `[[rules]]`).
    #[serde(skip)]
    pub rules: Vec<RuleSpec>,
}

/// Minimum TLS protocol version for upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[upstream]`: how the broker talks to the private systems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    /// Extra PEM CA bundles trusted in addition to the webpki roots and the system store.
    pub ca_files: Vec<PathBuf>,
    /// Default TLS 1.2.
    pub tls_min_version: TlsVersion,
    /// Default 10 s.
    #[serde(serialize_with = "dump::duration")]
    pub connect_timeout: Duration,
    /// Default 10 s.
    #[serde(serialize_with = "dump::duration")]
    pub tls_timeout: Duration,
    /// Time to the response head once the request is sent; default 60 s → 504.
    #[serde(serialize_with = "dump::duration")]
    pub response_timeout: Duration,
    /// Pooled idle connections are closed after this; default 90 s.
    #[serde(serialize_with = "dump::duration")]
    pub idle_timeout: Duration,
    /// Idle connections kept per scheme+host+port per shard; default 256.
    pub pool_max_idle_per_host: usize,
    /// HTTP CONNECT proxy (`http://host:port`); default: `HTTPS_PROXY` when `use_env_proxy`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "dump::without_userinfo"
    )]
    pub proxy: Option<String>,
    /// Hosts (suffixes) reached directly, bypassing the proxy.
    pub no_proxy: Vec<String>,
    /// Honour `HTTPS_PROXY`/`NO_PROXY` from the environment; default true.
    pub use_env_proxy: bool,
}

/// `[admin]`: metrics and probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admin {
    /// Default `127.0.0.1:9000`.
    pub listen: SocketAddr,
    pub enabled: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd, text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
    Journald,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Log {
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`; default `info`.
    pub level: String,
    /// Cap on logged body bytes for rules with body logging; default 4 KiB.
    pub body_limit: usize,
}

/// `[runtime]`: the performance tuning surface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runtime {
    /// CPUs to use; empty = every CPU the process may run on.
    pub cpus: Vec<usize>,
    /// CPU of the tunnel core; default: the first of `cpus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_cpu: Option<usize>,
    /// Shard executors; 0 = auto: with one or two CPUs the tunnel core and one shard share an
    /// executor, otherwise one shard per CPU after the tunnel core.
    pub shards: usize,
    /// Pin executors to their CPUs; default true.
    pub pin: bool,
    /// io_uring submission queue depth per executor; default 128.
    pub ring_depth: usize,
    /// Registered io buffer memory per executor, bytes; default 256 KiB (the broker does no file
    /// I/O, so the DMA area glommio registers stays small and within a default memlock limit).
    pub io_memory: usize,
    /// Busy-poll this long before parking an idle executor; default 0 (park at once).
    #[serde(serialize_with = "dump::duration")]
    pub spin_before_park: Duration,
    /// Task preemption timer; default 10 ms.
    #[serde(serialize_with = "dump::duration")]
    pub preempt_timer: Duration,
    /// UDP socket buffers, bytes; default 4 MiB each.
    pub udp_recv_buffer: usize,
    pub udp_send_buffer: usize,
    /// Send runs of same-size datagrams to one peer as one UDP GSO buffer when the kernel takes
    /// `UDP_SEGMENT`; default true. Off: one datagram per `sendmmsg` entry.
    pub udp_gso: bool,
    /// smoltcp per-connection buffers, bytes; default 64 KiB receive, 256 KiB send. The send
    /// buffer is the download window: against a current gateway 256 KiB moved 1.3x the data of
    /// 64 KiB (perf/compare.sh, wireguard-go 0.0.20231211), but it is also the burst one
    /// connection sends into the tunnel, which a gateway with a small UDP receive buffer (e.g.
    /// wireguard-go before 0.0.20230223: 208 KiB) drops; smoltcp then waits out its 1 s RTO.
    pub tcp_rx_buffer: usize,
    pub tcp_tx_buffer: usize,
    /// How long a tunnel connection may hold back a pure ACK, hoping to carry it on the reply;
    /// default 5 ms, 0 = ACK at once. Every second full segment is still ACKed at once. A vendor
    /// client that writes a request in two pieces without `TCP_NODELAY` (Nagle) waits up to this
    /// long for the second piece to go out.
    #[serde(serialize_with = "dump::duration")]
    pub tcp_ack_delay: Duration,
    /// smoltcp stacks per shard (flows are hashed across them); 0 = auto.
    pub stacks_per_shard: usize,
    /// Pre-armed listening sockets per stack (the emulated backlog; re-armed before every SYN);
    /// default 4. Their buffers are allocated but only touched by data (THP is off), so idle
    /// memory stays small.
    pub listen_backlog: usize,
    /// Open tunnel connections across the broker; beyond it new SYNs are refused; default 16384.
    pub max_connections: usize,
    /// Packets in flight on each channel between executors; default 1024.
    pub channel_capacity: usize,
}

/// Loads, overlays and validates `files` in order.
pub fn load(
    files: &[PathBuf],
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<Loaded, ConfigErrors> {
    let mut layers = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => layers.push((f.clone(), text)),
            Err(e) => errors.push(ConfigError {
                file: Some(f.clone()),
                at: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    load_str(&layers, mode, env)
}

/// Loads configuration text already in memory: `(name, text)` layers in overlay order.
pub fn load_str(
    layers: &[(PathBuf, String)],
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<Loaded, ConfigErrors> {
    if layers.is_empty() {
        return Err(ConfigErrors(vec![ConfigError {
            file: None,
            at: None,
            key: String::new(),
            message: "no configuration file given (use -c FILE)".into(),
        }]));
    }
    let mut overlay = overlay::Overlay::default();
    let mut errors = Vec::new();
    for (name, text) in layers {
        match toml::from_str::<toml::Table>(text) {
            Ok(t) => overlay.push(name.clone(), t),
            // Never `e.to_string()`: it quotes the source line, secrets and all.
            Err(e) => errors.push(syntax::parse_error(name, text, &e)),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    sections::validate(&overlay, mode, env)
}
