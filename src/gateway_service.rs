//! `wgbroker gateway` as a service: start the gateway's executor ([`crate::runtime::gateway`]),
//! serve `/metrics`, `/healthz` and `/readyz` on `[admin] listen`, stop on `SIGINT`/`SIGTERM`.
//!
//! `SIGHUP` loads the configuration again and applies its tenants and brokers live
//! ([`GatewayHandle::reload`]: kept brokers keep their sessions, removed ones drain, added
//! ones join after a passing check); what cannot change live (the `[gateway]` section's
//! sockets, address and key, `[admin]`, `[runtime]`, `[log]`) is logged as needing a restart
//! and keeps its running value.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::gateway::{self, GatewayConfig, LoadedGateway};
use crate::config::{LoadMode, ProcessEnv};
use crate::runtime::gateway::{GatewayHandle, GatewayStartError, GatewayStatus, start_gateway};

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Start(#[from] GatewayStartError),
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// The settings `new` changes that cannot change in a running gateway (its sockets, tunnel
/// address, key, timers, pool bounds, the admin listener, runtime and log settings), by name; no
/// value is named (a key is a secret).
pub fn needs_restart(old: &GatewayConfig, new: &GatewayConfig) -> Vec<&'static str> {
    let (o, n) = (&old.gateway, &new.gateway);
    let mut out = Vec::new();
    for (name, changed) in [
        (
            "gateway.private_key",
            o.private_key.public_key() != n.private_key.public_key(),
        ),
        ("gateway.listen", o.listen != n.listen),
        ("gateway.address", o.address != n.address),
        ("gateway.front", o.front != n.front),
        (
            "gateway.tls_listen",
            (&o.tls_listen, &o.tls_cert, &o.tls_key) != (&n.tls_listen, &n.tls_cert, &n.tls_key),
        ),
        ("gateway.mtu", o.mtu != n.mtu),
        ("gateway.broker_port", o.broker_port != n.broker_port),
        (
            "gateway.health_interval",
            o.health_interval != n.health_interval,
        ),
        (
            "gateway.health_timeout",
            o.health_timeout != n.health_timeout,
        ),
        (
            "gateway.connect_timeout",
            o.connect_timeout != n.connect_timeout,
        ),
        ("gateway.head_timeout", o.head_timeout != n.head_timeout),
        (
            "gateway.response_timeout",
            o.response_timeout != n.response_timeout,
        ),
        ("gateway.body_timeout", o.body_timeout != n.body_timeout),
        (
            "gateway.pool_idle_per_broker",
            o.pool_idle_per_broker != n.pool_idle_per_broker,
        ),
        (
            "gateway.pool_idle_total",
            o.pool_idle_total != n.pool_idle_total,
        ),
        (
            "gateway.pool_idle_timeout",
            o.pool_idle_timeout != n.pool_idle_timeout,
        ),
        ("admin", old.admin != new.admin),
        ("runtime", old.runtime != new.runtime),
        ("netstack", old.netstack != new.netstack),
        ("log", old.log != new.log),
    ] {
        if changed {
            out.push(name);
        }
    }
    if out.is_empty() && o != n {
        out.push("gateway");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> GatewayConfig {
        let broker = crate::keys::PrivateKey::from_bytes([1; 32]).public_key();
        let text = format!(
            r#"
[gateway]
private_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
listen = "0.0.0.0:51820"
address = "10.77.0.1"
front = "127.0.0.1:8080"
{extra}
[[tenant]]
name = "a"
[[tenant.broker]]
public_key = "{broker}"
address = "10.77.1.2"
"#
        );
        gateway::load_str(
            &[(PathBuf::from("gw.toml"), text)],
            LoadMode::Full,
            &|_: &str| None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .config
    }

    #[test]
    fn fixed_settings_are_named_as_needing_a_restart_and_tenants_are_not() {
        let old = config("");
        let mut new = config("mtu = 1380");
        new.gateway.front = "127.0.0.1:9090".parse().expect("addr");
        new.tenant[0].name = "b".into();
        assert_eq!(needs_restart(&old, &new), ["gateway.front", "gateway.mtu"]);
        let mut only_tenants = old.clone();
        only_tenants.tenant.clear();
        assert!(needs_restart(&old, &only_tenants).is_empty());
    }
}

/// Starts a gateway and its admin listener; the handle stops both when dropped.
pub fn start(c: &GatewayConfig) -> Result<(GatewayHandle, Option<AdminServer>), Error> {
    let handle = start_gateway(c)?;
    let admin = if c.admin.enabled {
        Some(AdminServer::start(c.clone(), handle.status.clone())?)
    } else {
        None
    };
    Ok((handle, admin))
}

/// Runs the gateway of `loaded` until `SIGINT` or `SIGTERM`.
pub fn run(loaded: LoadedGateway, files: &[PathBuf]) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(Error::Signals)?;
    let mut current = loaded.config;
    let c = &current;
    let (handle, admin) = start(c)?;
    tracing::info!(
        event = "gateway.start",
        public_key = %c.gateway.private_key.public_key(),
        address = %c.gateway.address,
        udp = %handle.udp_addr,
        front = %handle.front_addr,
        tenants = c.tenant.len(),
        brokers = c.brokers().count(),
    );
    crate::notify::ready();
    for s in signals.forever() {
        if s != SIGHUP {
            break;
        }
        match gateway::load(files, LoadMode::Full, &ProcessEnv) {
            Ok(new) => {
                let fixed = needs_restart(&current, &new.config);
                if !fixed.is_empty() {
                    tracing::warn!(
                        event = "config.reload",
                        needs_restart = %fixed.join(", "),
                        note = "these keep their running values until a restart"
                    );
                }
                let tenants_changed = new.config.tenant != current.tenant;
                tracing::info!(event = "config.reload", tenants_changed);
                // Always handed over, changed or not: a reload the executor refused (a broker
                // still draining) is applied by the next SIGHUP with the same file, and one
                // that changes nothing changes nothing.
                handle.reload(new.config.clone());
                current.tenant = new.config.tenant;
            }
            Err(e) => tracing::error!(event = "config.invalid", errors = %e),
        }
    }
    tracing::info!(event = "gateway.stop");
    crate::notify::stopping();
    drop(admin);
    handle.stop();
    Ok(())
}

/// The admin listener: one thread, one request per connection.
#[derive(Debug)]
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: std::net::SocketAddr,
}

impl AdminServer {
    fn start(c: GatewayConfig, status: Arc<GatewayStatus>) -> Result<Self, Error> {
        let addr = c.admin.listen;
        let listener = TcpListener::bind(addr).map_err(|source| Error::Admin { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Admin { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Admin { addr, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wgbroker-admin".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = serve_admin(stream, &status);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .map_err(|source| Error::Admin { addr, source })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_admin(stream: TcpStream, status: &GatewayStatus) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).take_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (code, ctype, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics(status)),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            if status.running.load(Ordering::Relaxed) {
                (200, "text/plain", "ready\n".to_owned())
            } else {
                (503, "text/plain", "not running\n".to_owned())
            }
        }
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::http::reason_phrase(code),
        body.len()
    )
}

/// Reads one line, at most 8 KiB.
trait TakeLine {
    fn take_line(&mut self, line: &mut String) -> std::io::Result<usize>;
}

impl<R: std::io::Read> TakeLine for BufReader<R> {
    fn take_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        use std::io::Read as _;
        self.by_ref().take(8 << 10).read_line(line)
    }
}

/// The per-broker series of [`metrics`]: name, type, help.
const BROKER_SERIES: [(&str, &str, &str); 12] = [
    (
        "wgbroker_gateway_broker_requests_total",
        "counter",
        "Attempts sent to the broker.",
    ),
    (
        "wgbroker_gateway_broker_errors_total",
        "counter",
        "Attempts that failed (connect, broke off).",
    ),
    (
        "wgbroker_gateway_broker_latency_seconds_sum",
        "counter",
        "Sum of times to the response head of answered attempts.",
    ),
    (
        "wgbroker_gateway_broker_answered_total",
        "counter",
        "Answered attempts.",
    ),
    (
        "wgbroker_gateway_broker_handshake_age_seconds",
        "gauge",
        "Age of the last WireGuard handshake; -1 without one.",
    ),
    (
        "wgbroker_gateway_broker_healthy",
        "gauge",
        "1 when the broker is in rotation.",
    ),
    (
        "wgbroker_gateway_broker_checks_failed_total",
        "counter",
        "Health checks that failed.",
    ),
    (
        "wgbroker_gateway_broker_connections_opened_total",
        "counter",
        "Tunnel connections opened for requests.",
    ),
    (
        "wgbroker_gateway_broker_connections_reused_total",
        "counter",
        "Attempts sent on a connection kept alive from an earlier request.",
    ),
    (
        "wgbroker_gateway_broker_idle_connections",
        "gauge",
        "Idle kept-alive connections to the broker.",
    ),
    (
        "wgbroker_gateway_broker_idle_closed_by_broker_total",
        "counter",
        "Idle kept-alive connections found closed by the broker before any use.",
    ),
    (
        "wgbroker_gateway_broker_draining",
        "gauge",
        "1 while the broker, removed by a reload, finishes its requests in flight.",
    ),
];

/// The Prometheus exposition: per tenant and broker, requests, errors, latency, handshake
/// age, health; the front door's own answers.
pub fn metrics(status: &GatewayStatus) -> String {
    let brokers = status.live_brokers();
    let mut out = String::new();
    for (i, (name, kind, help)) in BROKER_SERIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for counters in &brokers {
            let tenant = &counters.tenant;
            let value = match i {
                0 => counters.requests.load(Ordering::Relaxed).to_string(),
                1 => counters.errors.load(Ordering::Relaxed).to_string(),
                2 => format!(
                    "{:.6}",
                    counters.latency_us.load(Ordering::Relaxed) as f64 / 1e6
                ),
                3 => counters.answered.load(Ordering::Relaxed).to_string(),
                4 => match counters.handshake_age_ms.load(Ordering::Relaxed) {
                    u64::MAX => "-1".to_owned(),
                    ms => format!("{:.3}", ms as f64 / 1e3),
                },
                5 => u8::from(counters.healthy.load(Ordering::Relaxed)).to_string(),
                6 => counters.checks_failed.load(Ordering::Relaxed).to_string(),
                7 => counters
                    .connections_opened
                    .load(Ordering::Relaxed)
                    .to_string(),
                8 => counters
                    .connections_reused
                    .load(Ordering::Relaxed)
                    .to_string(),
                9 => counters.idle.load(Ordering::Relaxed).to_string(),
                10 => counters
                    .idle_closed_by_broker
                    .load(Ordering::Relaxed)
                    .to_string(),
                _ => u8::from(counters.draining.load(Ordering::Relaxed)).to_string(),
            };
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{tenant}\",broker=\"{}\"}} {value}",
                counters.address
            );
        }
    }
    for (name, help, v) in [
        (
            "wgbroker_gateway_not_found_total",
            "Front-door requests for no or an unknown tenant.",
            &status.not_found,
        ),
        (
            "wgbroker_gateway_unavailable_total",
            "Front-door requests answered 503: no healthy broker.",
            &status.unavailable,
        ),
        (
            "wgbroker_gateway_malformed_total",
            "Front-door requests refused as malformed.",
            &status.malformed,
        ),
        (
            "wgbroker_gateway_heartbeats_total",
            "Broker heartbeats answered inside the tunnel.",
            &status.heartbeats,
        ),
        (
            "wgbroker_gateway_tunnel_dropped_total",
            "Packets the tunnel dropped (bad source, replay, garbage).",
            &status.tunnel_dropped,
        ),
        (
            "wgbroker_gateway_reloads_total",
            "Reloads of the tenants and brokers applied.",
            &status.reloads,
        ),
        (
            "wgbroker_gateway_reloads_refused_total",
            "Reloads refused: a draining broker's key or address given to another broker.",
            &status.reloads_refused,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    out
}
