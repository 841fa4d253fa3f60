//! The gateway's configuration (`wgbroker gateway -c gateway.toml`): the vendor's side, with
//! many tenants and several brokers per tenant.
//!
//! ```toml
//! [gateway]
//! private_key = { file = "/etc/wgbroker/gateway.key" }
//! listen = "0.0.0.0:51820"     # WireGuard, UDP
//! address = "10.77.0.1"        # the gateway's tunnel address (heartbeats go here)
//! front = "127.0.0.1:8080"     # HTTP/1.1 for the vendor's services, kernel TCP
//! # optional: the brokers' `tls` transport
//! tls_listen = "0.0.0.0:443"
//! tls_cert = "/etc/wgbroker/gateway.crt"   # PEM chain, leaf first
//! tls_key = "/etc/wgbroker/gateway.key.pem"
//!
//! [[tenant]]
//! name = "acme"
//! [[tenant.broker]]
//! public_key = "..."
//! address = "10.77.1.2"
//! ```
//!
//! Read the same way as the broker's file (overlay, [`super::reader`], every error at once, a
//! derived `Serialize` for `dump`, `PartialEq` for reload) and sharing its `[admin]`, `[log]`,
//! `[runtime]` and `[netstack]` sections. What is checked across keys, because a mistake there would let one
//! tenant's traffic reach another's broker:
//!
//! * every broker's public key and tunnel address is unique across all tenants (a key or an
//!   address listed twice would make cryptokey routing ambiguous), and neither is the gateway's
//!   own;
//! * tenant names are unique and are one URL path segment (`/t/<name>/...`);
//! * every broker address has the gateway address's family (one netstack, one address).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use toml::Value;

use super::overlay::Overlay;
use super::reader::{Ctx, FromToml, Section};
use super::secret_source::{SecretEnv, SecretSource, SecretValue};
use super::sections;
use super::{Admin, ConfigErrors, LoadMode, Log, Netstack, Runtime, dump};
use crate::keys::{PrivateKey, PublicKey};

/// The example gateway configuration shipped with the package (`/etc/wgbroker/gateway.toml`).
pub const EXAMPLE: &str = include_str!("../../packaging/gateway.toml");

/// A loaded gateway configuration.
#[derive(Debug)]
pub struct LoadedGateway {
    pub config: GatewayConfig,
    /// Non-fatal findings.
    pub warnings: Vec<super::ConfigError>,
}

/// The validated gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayConfig {
    pub gateway: Gateway,
    /// `[[tenant]]`, in file order.
    pub tenant: Vec<Tenant>,
    pub admin: Admin,
    pub log: Log,
    pub runtime: Runtime,
    /// `[netstack]`: the tunnel TCP's tuning, as the broker's (congestion control, buffers).
    pub netstack: Netstack,
}

impl GatewayConfig {
    /// Every broker of every tenant: `(tenant index, broker)`.
    pub fn brokers(&self) -> impl Iterator<Item = (usize, &TenantBroker)> {
        self.tenant
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.broker.iter().map(move |b| (i, b)))
    }
}

/// `[gateway]`: the gateway's WireGuard interface, its tunnel address and its front door.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// Never serialized: `dump` shows its source and the public key brokers list as their peer.
    #[serde(skip)]
    pub private_key: PrivateKey,
    #[serde(rename = "private_key")]
    pub private_key_source: SecretSource,
    /// Why the key could not be read ([`LoadMode::Policy`] only); `private_key` is then a
    /// stand-in that must be neither used nor shown.
    #[serde(skip)]
    pub private_key_unavailable: Option<String>,
    /// WireGuard's UDP address (the brokers' `endpoint`).
    #[serde(serialize_with = "dump::display")]
    pub listen: SocketAddr,
    /// The gateway's address inside the tunnel: health checks come from here, and
    /// `GET /heartbeat` is answered here.
    pub address: IpAddr,
    /// The front door: HTTP/1.1 on kernel TCP for the vendor's own services.
    #[serde(serialize_with = "dump::display")]
    pub front: SocketAddr,
    /// Where the brokers' `tls` transport is accepted (kernel TCP), with `tls_cert`/`tls_key`;
    /// none: TLS is not offered.
    #[serde(
        serialize_with = "dump::opt_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_listen: Option<SocketAddr>,
    /// The certificate chain (PEM, leaf first) presented on `tls_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM). Only the path is shown by `dump`; the file is read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Tunnel MTU. Default [`Gateway::DEFAULT_MTU`].
    pub mtu: u16,
    /// The TCP port the brokers serve HTTP on inside the tunnel (their `[inbound] listen_port`).
    /// Default [`Gateway::DEFAULT_BROKER_PORT`].
    pub broker_port: u16,
    /// Time between two health checks of a broker. Default [`Gateway::DEFAULT_HEALTH_INTERVAL`].
    #[serde(serialize_with = "dump::duration")]
    pub health_interval: Duration,
    /// Time a health check may take; a broker that fails one is out of rotation.
    /// Default [`Gateway::DEFAULT_HEALTH_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub health_timeout: Duration,
    /// Time to open a connection to a broker through the tunnel before trying another.
    /// Default [`Gateway::DEFAULT_CONNECT_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub connect_timeout: Duration,
    /// Front door: time for a request head to arrive, and for an idle keep-alive connection to
    /// send its next one. Default [`Gateway::DEFAULT_HEAD_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub head_timeout: Duration,
    /// Time a broker may take to start its response (the broker's own upstream timeout is
    /// 60 s). Default [`Gateway::DEFAULT_RESPONSE_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub response_timeout: Duration,
    /// Time a body may stall in either direction. Default [`Gateway::DEFAULT_BODY_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub body_timeout: Duration,
    /// Most idle keep-alive connections kept per broker for the next request (0: a connection
    /// per request). Default [`Gateway::DEFAULT_POOL_IDLE_PER_BROKER`].
    pub pool_idle_per_broker: usize,
    /// Most idle keep-alive connections kept for all brokers together.
    /// Default [`Gateway::DEFAULT_POOL_IDLE_TOTAL`].
    pub pool_idle_total: usize,
    /// An idle kept-alive connection is closed after this; keep it below the brokers'
    /// `[inbound] idle_timeout` (60 s by default). Default [`Gateway::DEFAULT_POOL_IDLE_TIMEOUT`].
    #[serde(serialize_with = "dump::duration")]
    pub pool_idle_timeout: Duration,
}

impl Gateway {
    pub const DEFAULT_MTU: u16 = crate::netstack::DEFAULT_MTU as u16;
    pub const DEFAULT_BROKER_PORT: u16 = 80;
    /// One check a second, and a check that takes longer than a second fails: a broker that
    /// dies is out of rotation within two seconds.
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
    /// Above the broker's own upstream timeout (60 s), so that its 504 reaches the vendor.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(75);
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_POOL_IDLE_PER_BROKER: usize = 64;
    pub const DEFAULT_POOL_IDLE_TOTAL: usize = 1024;
    /// Half the brokers' default `[inbound] idle_timeout`.
    pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The gateway's netstack holds 4,096 connections; idle ones may take at most half.
    pub const MAX_POOL_IDLE_TOTAL: usize = 2048;
}

/// `[[tenant]]`: one customer and its brokers, served active/active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// The path segment in `/t/<name>/proxy/...`.
    pub name: String,
    /// `[[tenant.broker]]`: at least one.
    pub broker: Vec<TenantBroker>,
}

/// `[[tenant.broker]]`: one broker, its own key and its own tunnel address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantBroker {
    #[serde(serialize_with = "dump::display")]
    pub public_key: PublicKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<SecretValue>,
    /// The broker's `[wireguard] address`: the only inner source accepted from its key, and
    /// where the gateway connects to reach it.
    pub address: IpAddr,
}

/// Whether the layers (read once with [`super::read_layers`]: a file may be a pipe) describe a
/// gateway — a `[gateway]` table and no `[wireguard]` — so that `check` and `dump` know which
/// schema to read. Text that is not TOML answers false: the broker's loader then reports it.
pub fn declares_gateway(layers: &[(PathBuf, String)]) -> bool {
    let mut gateway = false;
    for (_, text) in layers {
        match toml::from_str::<toml::Table>(text) {
            Ok(t) if t.contains_key("wireguard") => return false,
            Ok(t) => gateway |= t.contains_key("gateway"),
            Err(_) => return false,
        }
    }
    gateway
}

/// Loads, overlays and validates the gateway configuration `files`.
pub fn load(
    files: &[PathBuf],
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<LoadedGateway, ConfigErrors> {
    load_str(&super::read_layers(files)?, mode, env)
}

/// Loads gateway configuration text already in memory.
pub fn load_str(
    layers: &[(PathBuf, String)],
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<LoadedGateway, ConfigErrors> {
    let (overlay, translations) = super::overlay_of(layers, env)?;
    validate(&overlay, mode, env).map_err(|mut e| {
        translations.rewrite(&mut e.0);
        e
    })
}

fn validate(
    overlay: &Overlay,
    mode: LoadMode,
    env: &dyn SecretEnv,
) -> Result<LoadedGateway, ConfigErrors> {
    let mut ctx = Ctx::new(&overlay.provenance);
    ctx.lenient_secrets = mode == LoadMode::Policy;
    let mut root = Section::new("", &overlay.merged);
    let gateway = match root.table(&mut ctx, "gateway") {
        Some(s) => gateway(s, &mut ctx, env),
        None => {
            if root.raw("gateway").is_none() {
                ctx.error("gateway", "missing required section [gateway]");
            }
            None
        }
    };
    let tenant: Vec<Tenant> = root
        .tables(&mut ctx, "tenant")
        .into_iter()
        .filter_map(|s| tenant(s, &mut ctx, env))
        .collect();
    if tenant.is_empty() {
        ctx.warning("tenant", "no [[tenant]]: the gateway serves nobody");
    }
    let admin = sections::admin(root.table(&mut ctx, "admin"), &mut ctx);
    let log = sections::log(root.table(&mut ctx, "log"), &mut ctx);
    let runtime = sections::runtime(root.table(&mut ctx, "runtime"), &mut ctx);
    let netstack = sections::netstack(root.table(&mut ctx, "netstack"), &mut ctx);
    root.finish(&mut ctx);
    check_across(gateway.as_ref(), &tenant, &admin, &mut ctx);

    let errors = std::mem::take(&mut ctx.errors);
    match gateway {
        Some(gateway) if errors.is_empty() => Ok(LoadedGateway {
            config: GatewayConfig {
                gateway,
                tenant,
                admin,
                log,
                runtime,
                netstack,
            },
            warnings: ctx.warnings,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// A socket address `ip:port` or `[v6]:port`.
struct Addr(SocketAddr);

impl FromToml for Addr {
    const EXPECTED: &'static str = "an address ip:port";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        let s = String::from_toml(v, ctx, path)?;
        match s.parse() {
            Ok(a) => Some(Addr(a)),
            Err(_) => {
                ctx.error(path, format!("invalid address {s:?} (expected ip:port)"));
                None
            }
        }
    }
}

fn gateway(mut s: Section<'_>, ctx: &mut Ctx<'_>, env: &dyn SecretEnv) -> Option<Gateway> {
    let key = sections::required_secret(&mut s, ctx, "private_key", env);
    let private = key.as_ref().and_then(|k| {
        if k.unavailable.is_some() {
            return Some(PrivateKey::from_bytes([0; 32]));
        }
        PrivateKey::from_base64(k.value.expose())
            .map_err(|e| {
                ctx.error(
                    &s.key("private_key"),
                    format!("{e} (generate one with `wgbroker genkey`)"),
                );
            })
            .ok()
    });
    let listen: Option<Addr> = s.req(ctx, "listen");
    let address: Option<IpAddr> = s.req(ctx, "address");
    let front: Option<Addr> = s.req(ctx, "front");
    let (tls_listen, tls_cert, tls_key) = tls_listener(&mut s, ctx);
    let mtu: u16 = s.or(ctx, "mtu", Gateway::DEFAULT_MTU);
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
    let broker_port: u16 = s.or(ctx, "broker_port", Gateway::DEFAULT_BROKER_PORT);
    if broker_port == 0 {
        ctx.error(&s.key("broker_port"), "must not be 0");
    }
    let health_interval = s.or(ctx, "health_interval", Gateway::DEFAULT_HEALTH_INTERVAL);
    let health_timeout = s.or(ctx, "health_timeout", Gateway::DEFAULT_HEALTH_TIMEOUT);
    let connect_timeout = s.or(ctx, "connect_timeout", Gateway::DEFAULT_CONNECT_TIMEOUT);
    sections::positive(ctx, &s, "health_interval", health_interval);
    sections::positive(ctx, &s, "health_timeout", health_timeout);
    sections::positive(ctx, &s, "connect_timeout", connect_timeout);
    let head_timeout = s.or(ctx, "head_timeout", Gateway::DEFAULT_HEAD_TIMEOUT);
    let response_timeout = s.or(ctx, "response_timeout", Gateway::DEFAULT_RESPONSE_TIMEOUT);
    let body_timeout = s.or(ctx, "body_timeout", Gateway::DEFAULT_BODY_TIMEOUT);
    sections::positive(ctx, &s, "head_timeout", head_timeout);
    sections::positive(ctx, &s, "response_timeout", response_timeout);
    sections::positive(ctx, &s, "body_timeout", body_timeout);
    let (pool_idle_per_broker, pool_idle_total, pool_idle_timeout) = pool_keys(&mut s, ctx);
    s.finish(ctx);
    let key = key?;
    Some(Gateway {
        private_key: private?,
        private_key_source: key.source().clone(),
        private_key_unavailable: key.unavailable,
        listen: listen?.0,
        address: address?,
        front: front?.0,
        tls_listen: tls_listen.map(|a| a.0),
        tls_cert,
        tls_key,
        mtu,
        broker_port,
        health_interval,
        health_timeout,
        connect_timeout,
        head_timeout,
        response_timeout,
        body_timeout,
        pool_idle_per_broker,
        pool_idle_total,
        pool_idle_timeout,
    })
}

/// `tls_listen`, `tls_cert`, `tls_key`: all three or none; the files must exist.
fn tls_listener(
    s: &mut Section<'_>,
    ctx: &mut Ctx<'_>,
) -> (Option<Addr>, Option<PathBuf>, Option<PathBuf>) {
    let tls_listen: Option<Addr> = s.opt(ctx, "tls_listen");
    let tls_cert: Option<PathBuf> = s.opt(ctx, "tls_cert");
    let tls_key: Option<PathBuf> = s.opt(ctx, "tls_key");
    match (&tls_listen, &tls_cert, &tls_key) {
        (Some(_), Some(_), Some(_)) | (None, None, None) => {}
        (Some(_), ..) => ctx.error(
            &s.key("tls_listen"),
            "needs tls_cert and tls_key (the certificate the brokers check, and its key)",
        ),
        (None, ..) => ctx.error(
            &s.key("tls_listen"),
            "tls_cert and tls_key are set but tls_listen is not",
        ),
    }
    for (key, path) in [("tls_cert", &tls_cert), ("tls_key", &tls_key)] {
        if let Some(Err(e)) = path
            .as_ref()
            .map(|p| (p, std::fs::metadata(p)))
            .map(|(p, m)| m.map_err(|e| format!("cannot read {}: {e}", p.display())))
        {
            ctx.error(&s.key(key), e);
        }
    }
    (tls_listen, tls_cert, tls_key)
}

/// The idle connection pool's bounds: `pool_idle_per_broker` ≤ `pool_idle_total` ≤
/// [`Gateway::MAX_POOL_IDLE_TOTAL`], a positive `pool_idle_timeout`.
fn pool_keys(s: &mut Section<'_>, ctx: &mut Ctx<'_>) -> (usize, usize, std::time::Duration) {
    let pool_idle_per_broker = s.or(
        ctx,
        "pool_idle_per_broker",
        Gateway::DEFAULT_POOL_IDLE_PER_BROKER,
    );
    let pool_idle_total = s.or(ctx, "pool_idle_total", Gateway::DEFAULT_POOL_IDLE_TOTAL);
    let pool_idle_timeout = s.or(ctx, "pool_idle_timeout", Gateway::DEFAULT_POOL_IDLE_TIMEOUT);
    if pool_idle_total > Gateway::MAX_POOL_IDLE_TOTAL {
        ctx.error(
            &s.key("pool_idle_total"),
            format!(
                "{pool_idle_total} is above {} (half the gateway's tunnel connections)",
                Gateway::MAX_POOL_IDLE_TOTAL
            ),
        );
    }
    if pool_idle_per_broker > pool_idle_total {
        ctx.error(
            &s.key("pool_idle_per_broker"),
            format!("{pool_idle_per_broker} is above pool_idle_total ({pool_idle_total})"),
        );
    }
    sections::positive(ctx, s, "pool_idle_timeout", pool_idle_timeout);
    (pool_idle_per_broker, pool_idle_total, pool_idle_timeout)
}

/// A tenant name is one path segment a person can type: `[A-Za-z0-9._-]`, 1 to 63 characters,
/// not `.` or `..`.
fn valid_tenant_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn tenant(mut s: Section<'_>, ctx: &mut Ctx<'_>, env: &dyn SecretEnv) -> Option<Tenant> {
    let name: Option<String> = s.req(ctx, "name");
    if let Some(n) = &name {
        if !valid_tenant_name(n) {
            ctx.error(
                &s.key("name"),
                format!("{n:?} is not a valid tenant name (1-63 of A-Z a-z 0-9 . _ -)"),
            );
        }
    }
    let sections = s.tables(ctx, "broker");
    if sections.is_empty() && s.raw("broker").is_none() {
        ctx.error(
            &s.key("broker"),
            "at least one [[tenant.broker]] is required",
        );
    }
    let broker: Vec<TenantBroker> = sections
        .into_iter()
        .filter_map(|b| tenant_broker(b, ctx, env))
        .collect();
    s.finish(ctx);
    Some(Tenant {
        name: name?,
        broker,
    })
}

fn tenant_broker(
    mut s: Section<'_>,
    ctx: &mut Ctx<'_>,
    env: &dyn SecretEnv,
) -> Option<TenantBroker> {
    let public_key = s.req::<String>(ctx, "public_key").and_then(|k| {
        PublicKey::from_base64(&k)
            .map_err(|e| ctx.error(&s.key("public_key"), e.to_string()))
            .ok()
    });
    let preshared_key = sections::secret(&mut s, ctx, "preshared_key", env);
    if let Some(psk) = &preshared_key {
        if psk.unavailable.is_none() && PrivateKey::from_base64(psk.value.expose()).is_err() {
            ctx.error(
                &s.key("preshared_key"),
                "key is not the correct length or format (expected 44 base64 characters, `wg genpsk`)",
            );
        }
    }
    let address: Option<IpAddr> = s.req(ctx, "address");
    s.finish(ctx);
    Some(TenantBroker {
        public_key: public_key?,
        preshared_key,
        address: address?,
    })
}

/// The checks across tenants and brokers (see the module): every finding at the later of two
/// clashing entries.
fn check_across(gw: Option<&Gateway>, tenants: &[Tenant], admin: &Admin, ctx: &mut Ctx<'_>) {
    let own_key = gw
        .filter(|g| g.private_key_unavailable.is_none())
        .map(|g| g.private_key.public_key());
    let mut seen: Vec<(usize, usize, &TenantBroker)> = Vec::new();
    for (t, tenant) in tenants.iter().enumerate() {
        if let Some(first) = tenants[..t].iter().position(|o| o.name == tenant.name) {
            ctx.error(
                &format!("tenant[{t}].name"),
                format!(
                    "tenant {:?} is already defined at tenant[{first}]",
                    tenant.name
                ),
            );
        }
        for (b, broker) in tenant.broker.iter().enumerate() {
            let here = format!("tenant[{t}].broker[{b}]");
            for &(ot, ob, other) in &seen {
                if other.public_key == broker.public_key {
                    ctx.error(
                        &format!("{here}.public_key"),
                        format!("the same key as tenant[{ot}].broker[{ob}]: each broker needs its own key"),
                    );
                }
                if other.address == broker.address {
                    ctx.error(
                        &format!("{here}.address"),
                        format!(
                            "{} is already tenant[{ot}].broker[{ob}]'s address",
                            broker.address
                        ),
                    );
                }
            }
            if own_key.as_ref() == Some(&broker.public_key) {
                ctx.error(
                    &format!("{here}.public_key"),
                    "this is the gateway's own key",
                );
            }
            if let Some(g) = gw {
                if broker.address == g.address {
                    ctx.error(
                        &format!("{here}.address"),
                        "this is the gateway's own address",
                    );
                } else if broker.address.is_ipv4() != g.address.is_ipv4() {
                    ctx.error(
                        &format!("{here}.address"),
                        "must be of the same family (IPv4 or IPv6) as gateway.address",
                    );
                }
            }
            seen.push((t, b, broker));
        }
    }
    if let Some(g) = gw {
        if admin.enabled && admin.listen == g.front && g.front.port() != 0 {
            ctx.error("gateway.front", "the same address as admin.listen");
        }
    }
}

/// `wgbroker dump` for a gateway: the configuration as TOML, secrets as their sources, plus the
/// derived `gateway.public_key` (what every broker lists as its peer).
pub fn render(c: &GatewayConfig) -> String {
    let doc = toml::Table::try_from(c).map(|mut root| {
        if let Some(Value::Table(gw)) = root.get_mut("gateway") {
            let public_key = match &c.gateway.private_key_unavailable {
                Some(why) => format!("unavailable: {why}"),
                None => c.gateway.private_key.public_key().to_string(),
            };
            gw.insert("public_key".into(), public_key.into());
        }
        root
    });
    doc.and_then(|d| toml::to_string_pretty(&d))
        .unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

#[cfg(test)]
mod tests;
