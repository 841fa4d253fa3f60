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
//!
//! # The schema, once
//!
//! * **Keys and checks**: the readers in `sections.rs`, one function per section (`[[allow]]` and
//!   `[[scm]]` in `rules.rs`, `[outbound]` in `outbound.rs`). They are written
//!   by hand rather than derived with serde's `Deserialize` because serde stops at the first
//!   error, and an operator fixing a file wants every problem at once, each with its file and key
//!   path (and no secret in it); see [`reader`].
//! * **Defaults**: one home each, next to the struct: the `Default` impl that follows a section
//!   whose keys all have one ([`Inbound`], [`Upstream`], [`Admin`], [`Log`], [`Runtime`]), or an
//!   associated `DEFAULT_*` const in a section with required keys ([`WireGuard`], [`Peer`],
//!   [`Heartbeat`]). An absent list, table or flag is empty or off. The readers start from these;
//!   README's configuration reference is checked against them by a test (`config/tests.rs`).
//! * **Output**: the structs derive `Serialize` (→ [`dump`]) and `PartialEq` (→ [`reload`]);
//!   `config/tests.rs` loads, dumps and loads again a non-default value of every key the readers
//!   read.

pub mod dump;
pub mod error;
pub mod gateway;
mod outbound;
pub mod overlay;
pub mod proxy_url;
pub mod reader;
pub mod reload;
mod rules;
pub mod secret_source;
mod sections;
pub mod semgrep;
pub mod syntax;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

pub use error::{ConfigError, ConfigErrors, Position};
pub use outbound::{Outbound, RelaySpec, WebhookScm, WhenSpec};
pub use proxy_url::ProxyEndpoint;
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
    pub netstack: Netstack,
    /// `[outbound]`: the webhook relay ([`crate::relay`]); none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Outbound>,
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
    /// Local UDP port; 0 = any. Default [`WireGuard::DEFAULT_LISTEN_PORT`].
    pub listen_port: u16,
    /// Tunnel MTU: the largest inner packet. Default [`WireGuard::DEFAULT_MTU`].
    pub mtu: u16,
    /// How datagrams reach the gateways: `udp`, `tcp`, `tls` or `auto` (default; see
    /// [`crate::transport`]).
    #[serde(serialize_with = "dump::display")]
    pub transport: crate::transport::Transport,
    /// PEM bundles trusted, besides the system's roots, for the gateways' certificates on the
    /// `tls` transport (and an `https://` proxy's).
    pub ca_files: Vec<PathBuf>,
    /// CONNECT proxy for the `tcp` and `tls` transports (`http://[user:password@]host:port` or
    /// `https://...`); none: `[upstream] proxy`, else the environment's `HTTPS_PROXY` when
    /// `[upstream] use_env_proxy` (see [`crate::upstream::proxy`]).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "dump::without_userinfo"
    )]
    pub proxy: Option<String>,
    pub peers: Vec<Peer>,
}

impl WireGuard {
    /// Any port: the broker dials out, so no fixed port is needed.
    pub const DEFAULT_LISTEN_PORT: u16 = 0;
    /// 1320, not WireGuard's usual 1420: see [`crate::netstack::DEFAULT_MTU`] (the home of the
    /// value and of the reason).
    pub const DEFAULT_MTU: u16 = crate::netstack::DEFAULT_MTU as u16;
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
    /// Where the gateway accepts the framed TCP transport; default: `endpoint`'s host and port.
    #[serde(
        serialize_with = "dump::opt_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_endpoint: Option<Endpoint>,
    /// Where the gateway accepts the `tls` transport; default: `endpoint`'s host, port 443. Its
    /// host is the TLS server name (SNI) the certificate is checked for.
    #[serde(
        serialize_with = "dump::opt_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_endpoint: Option<Endpoint>,
    /// Inner source addresses accepted from this peer (and routed to it).
    #[serde(serialize_with = "dump::displays")]
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives; 0 = off. Default [`Peer::DEFAULT_PERSISTENT_KEEPALIVE`].
    pub persistent_keepalive: u16,
}

impl Peer {
    /// The port of the `tls` transport when `tls_endpoint` is not set.
    pub const DEFAULT_TLS_PORT: u16 = 443;

    /// Where the `tcp` transport connects: `tcp_endpoint`, else `endpoint`.
    pub fn tcp_stream_endpoint(&self) -> Endpoint {
        self.tcp_endpoint
            .clone()
            .unwrap_or_else(|| self.endpoint.clone())
    }

    /// Where the `tls` transport connects: `tls_endpoint`, else `endpoint`'s host on port 443.
    pub fn tls_stream_endpoint(&self) -> Endpoint {
        self.tls_endpoint.clone().unwrap_or_else(|| Endpoint {
            host: self.endpoint.host.clone(),
            port: Self::DEFAULT_TLS_PORT,
        })
    }

    /// A keepalive after 20 s of silence keeps the mappings of NATs and stateful firewalls on the
    /// way out open, so the gateway can reach the broker at any time.
    pub const DEFAULT_PERSISTENT_KEEPALIVE: u16 = 20;

    /// The peer's stream plan under `transport`.
    pub fn stream_plan(&self, transport: crate::transport::Transport) -> StreamPlan {
        StreamPlan {
            transport,
            tcp: self.tcp_stream_endpoint(),
            tls: self.tls_stream_endpoint(),
        }
    }
}

/// Where and how one peer's stream connects: what its supervisor in `runtime::stream` is
/// started with ([`Peer::stream_plan`]). Built on the control thread (at start, and by a reload
/// for the tunnel core to follow); a changed plan restarts the peer's supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    pub transport: crate::transport::Transport,
    /// `tcp_endpoint`, or the peer's UDP endpoint.
    pub tcp: Endpoint,
    /// `tls_endpoint`, or the UDP endpoint's host on port 443.
    pub tls: Endpoint,
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
    /// TCP port on the tunnel address.
    pub listen_port: u16,
    /// Largest accepted request head (request line + headers), bytes.
    pub max_head_bytes: usize,
    /// Most header lines in a request head.
    pub max_headers: usize,
    /// Time allowed to receive a complete request head.
    #[serde(serialize_with = "dump::duration")]
    pub head_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[serde(serialize_with = "dump::duration")]
    pub idle_timeout: Duration,
    /// Time a request or response body may stall without progress.
    #[serde(serialize_with = "dump::duration")]
    pub body_timeout: Duration,
    /// Most request body bytes read to check a rule's `[[allow.body]]` constraints (413 above).
    pub max_checked_body: usize,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            listen_port: 80,
            max_head_bytes: 16 << 10,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_checked_body: 1 << 20,
        }
    }
}

/// `[heartbeat]`: periodic GET to the vendor's side of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// The URL as configured.
    pub url: String,
    /// The same URL taken apart (validated at load: the runtime never parses it again).
    #[serde(skip)]
    pub target: HeartbeatUrl,
    /// Time between two heartbeats. Default [`Heartbeat::DEFAULT_INTERVAL`].
    #[serde(serialize_with = "dump::duration")]
    pub interval: Duration,
    /// Time a heartbeat may take to pass. Default [`Heartbeat::DEFAULT_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub timeout: Duration,
}

impl Heartbeat {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// A token pool, used round-robin per request (allowlist/pool.rs); empty: `token` alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<SecretValue>,
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
    pub tls_min_version: TlsVersion,
    /// Time to connect (→ 504).
    #[serde(serialize_with = "dump::duration")]
    pub connect_timeout: Duration,
    /// Time to finish the TLS handshake (→ 504).
    #[serde(serialize_with = "dump::duration")]
    pub tls_timeout: Duration,
    /// Time from the request sent to the end of the response head, one deadline however many
    /// reads it takes (→ 504); also the longest pause within the response body.
    #[serde(serialize_with = "dump::duration")]
    pub response_timeout: Duration,
    /// Pooled idle connections are closed after this.
    #[serde(serialize_with = "dump::duration")]
    pub idle_timeout: Duration,
    /// Idle connections kept per scheme+host+port per shard.
    pub pool_max_idle_per_host: usize,
    /// CONNECT proxy for every upstream (`http://[user:password@]host:port` or `https://...`);
    /// none: the environment's, when `use_env_proxy` (see [`crate::upstream::proxy`]).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "dump::without_userinfo"
    )]
    pub proxy: Option<String>,
    /// Hosts (suffixes) reached directly, bypassing the proxy.
    pub no_proxy: Vec<String>,
    /// Without `proxy`: honour `https_proxy`/`HTTPS_PROXY`, `http_proxy`/`HTTP_PROXY` and
    /// `no_proxy`/`NO_PROXY` from the environment.
    pub use_env_proxy: bool,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            ca_files: Vec::new(),
            tls_min_version: TlsVersion::V1_2,
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            // Keep it above the vendor's concurrency or connections churn (32 idle for 64
            // vendor connections cost +35 % CPU per request).
            pool_max_idle_per_host: 256,
            proxy: None,
            no_proxy: Vec::new(),
            use_env_proxy: true,
        }
    }
}

/// `[admin]`: metrics and probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admin {
    /// Where `/metrics` and the probes are served.
    pub listen: SocketAddr,
    pub enabled: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            enabled: true,
        }
    }
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
    /// `error`, `warn`, `info`, `debug` or `trace` (`RUST_LOG` overrides it).
    pub level: String,
    /// Cap on logged body bytes for rules with body logging.
    pub body_limit: usize,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".to_owned(),
            body_limit: 4 << 10,
        }
    }
}

/// `[netstack]`: how the tunnel's TCP behaves on the path to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Netstack {
    /// Congestion controller of every tunnel connection.
    pub congestion: Congestion,
    /// Most a connection's receive buffer (the upload window) may grow to, bytes.
    pub rx_buffer_max: usize,
    /// Most a connection's send buffer (the download window, bytes in flight) may grow to.
    pub tx_buffer_max: usize,
}

impl Default for Netstack {
    fn default() -> Self {
        Self {
            congestion: Congestion::Bbr,
            // 1 Gbit/s over 32 ms; buffers grow to it only where the path needs it.
            rx_buffer_max: 4 << 20,
            tx_buffer_max: 4 << 20,
        }
    }
}

/// `[netstack] congestion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (RFC 9438) with HyStart++, Linux's default.
    Cubic,
    /// NewReno (RFC 5681, RFC 6582).
    NewReno,
    /// BBR-like: model-based (bottleneck bandwidth and min RTT), paced, not cut by random loss.
    Bbr,
}

/// `[runtime]`: the performance tuning surface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runtime {
    /// CPUs to use; empty = every CPU the process may run on.
    pub cpus: Vec<usize>,
    /// CPU of the tunnel core; none: the first of `cpus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_cpu: Option<usize>,
    /// Shard executors; 0 = auto: with one or two CPUs the tunnel core and one shard share an
    /// executor, otherwise one shard per CPU after the tunnel core.
    pub shards: usize,
    /// Pin executors to their CPUs.
    pub pin: bool,
    /// io_uring submission queue depth per executor.
    pub ring_depth: usize,
    /// Registered io buffer memory per executor, bytes.
    pub io_memory: usize,
    /// Busy-poll this long before parking an idle executor; 0 = park at once.
    #[serde(serialize_with = "dump::duration")]
    pub spin_before_park: Duration,
    /// Task preemption timer.
    #[serde(serialize_with = "dump::duration")]
    pub preempt_timer: Duration,
    /// UDP socket buffers, bytes.
    pub udp_recv_buffer: usize,
    pub udp_send_buffer: usize,
    /// Send runs of same-size datagrams to one peer as one UDP GSO buffer when the kernel takes
    /// `UDP_SEGMENT`. Off: one datagram per `sendmmsg` entry.
    pub udp_gso: bool,
    /// Per-connection buffers a tunnel connection starts with, bytes: the receive buffer is the
    /// first upload window, the send buffer the first download window. Both grow with the
    /// measured bandwidth-delay product up to `[netstack]`'s caps.
    pub tcp_rx_buffer: usize,
    pub tcp_tx_buffer: usize,
    /// How long a tunnel connection may hold back a pure ACK, hoping to carry it on the reply;
    /// 0 = ACK at once. Every second full segment is still ACKed at once. A vendor client that
    /// writes a request in two pieces without `TCP_NODELAY` (Nagle) waits up to this long for the
    /// second piece to go out.
    #[serde(serialize_with = "dump::duration")]
    pub tcp_ack_delay: Duration,
    /// Connection tables per shard (flows are hashed across them; each bounds one poll's
    /// work); 0 = auto.
    pub stacks_per_shard: usize,
    /// Half-open handshakes (`SYN-RECEIVED`) per table; further SYNs are dropped and the
    /// vendor retransmits them (a bound against SYN floods, like Linux's SYN queue).
    pub listen_backlog: usize,
    /// Open tunnel connections across the broker; beyond it new SYNs are refused.
    pub max_connections: usize,
    /// Packets in flight on each channel between executors.
    pub channel_capacity: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            cpus: Vec::new(),
            tunnel_cpu: None,
            shards: 0,
            pin: true,
            ring_depth: 128,
            // The broker does no file I/O, so the DMA area glommio registers stays small and
            // within a default memlock limit.
            io_memory: 256 << 10,
            spin_before_park: Duration::ZERO,
            preempt_timer: Duration::from_millis(10),
            udp_recv_buffer: 4 << 20,
            udp_send_buffer: 4 << 20,
            udp_gso: true,
            tcp_rx_buffer: 64 << 10,
            // The first download window; it grows with the congestion window (twice cwnd,
            // Linux's rule) up to `[netstack] tx_buffer_max`, and what it sends is paced by
            // congestion control, not by this size.
            tcp_tx_buffer: 256 << 10,
            // At 1 ms, a third of proxied requests under load also cost a pure-ACK datagram.
            tcp_ack_delay: Duration::from_millis(5),
            stacks_per_shard: 0,
            // A burst of 10,000 connections spreads over the tables (about 160 per table at
            // the default layout); half-open ones cost a few hundred bytes each.
            listen_backlog: 256,
            max_connections: 16384,
            channel_capacity: 1024,
        }
    }
}

/// Loads, overlays and validates `files` in order.
pub fn load(
    files: &[PathBuf],
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<Loaded, ConfigErrors> {
    let layers = read_layers(files)?;
    load_str(&layers, mode, env)
}

/// Loads configuration text already in memory: `(name, text)` layers in overlay order.
pub fn load_str(
    layers: &[(PathBuf, String)],
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<Loaded, ConfigErrors> {
    let (overlay, translations) = overlay_of(layers, env)?;
    match sections::validate(&overlay, mode, env) {
        Ok(mut loaded) => {
            translations.rewrite(&mut loaded.warnings);
            Ok(loaded)
        }
        Err(mut e) => {
            translations.rewrite(&mut e.0);
            Err(e)
        }
    }
}

/// Reads the files in order, each once (a file may be a pipe): `(name, text)` layers for
/// [`load_str`] or [`gateway::load_str`].
pub fn read_layers(files: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, ConfigErrors> {
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
    if errors.is_empty() {
        Ok(layers)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parses and merges the layers into one document (shared by the broker's and the gateway's
/// configuration), with the YAML-to-TOML key translations that error messages are rewritten
/// with.
fn overlay_of(
    layers: &[(PathBuf, String)],
    env: &dyn SecretEnv,
) -> Result<(overlay::Overlay, semgrep::Translations), ConfigErrors> {
    if layers.is_empty() {
        return Err(ConfigErrors(vec![ConfigError {
            file: None,
            at: None,
            key: String::new(),
            message: "no configuration file given (use -c FILE)".into(),
        }]));
    }
    // TOML and Semgrep YAML layers alike (config/semgrep/); errors in a YAML file name the
    // YAML key they came from.
    semgrep::overlay(layers, env).map_err(ConfigErrors)
}
