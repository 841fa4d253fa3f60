//! The admin listener (default `127.0.0.1:9000`): `/metrics` (Prometheus text), `/healthz`
//! (alive), `/readyz` (tunnel handshake fresh and heartbeat passing), and the Semgrep-compatible
//! aliases `/probes/startup` and `/probes/readiness`.
//!
//! It runs on its own plain thread, off the data path: it only reads the [`Status`] atomics the
//! executors publish at their own pace (per-shard values are merged here, at scrape time), so a
//! scrape costs the data plane nothing. Requests are tiny and bounded; one connection at a time
//! is enough for probes and a scraper.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::status::Status;

/// A handshake older than this makes the broker not ready (WireGuard rekeys every 2 minutes, so a
/// live tunnel never gets close).
pub const READY_HANDSHAKE_AGE: Duration = Duration::from_secs(180);

/// Whether the broker is ready, and why not.
pub fn readiness(status: &Status) -> Result<(), String> {
    match status.handshake_age() {
        None => return Err("no WireGuard handshake yet".into()),
        Some(age) if age > READY_HANDSHAKE_AGE => {
            return Err(format!("last WireGuard handshake {}s ago", age.as_secs()));
        }
        Some(_) => {}
    }
    if !status.heartbeat_passing.load(Ordering::Relaxed) {
        return Err(format!("heartbeat failing: {}", status.heartbeat_failure()));
    }
    Ok(())
}

/// The Prometheus text exposition of `status`.
pub fn metrics(status: &Status) -> String {
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    gauge(
        "wgbroker_handshake_age_seconds",
        "Seconds since the newest completed WireGuard handshake (-1: none yet).",
        "gauge",
        status
            .handshake_age()
            .map_or_else(|| "-1".to_owned(), |a| format!("{:.3}", a.as_secs_f64())),
    );
    gauge(
        "wgbroker_handshakes_total",
        "Completed WireGuard handshakes.",
        "counter",
        r(&status.handshakes),
    );
    gauge(
        "wgbroker_datagrams_dropped_total",
        "UDP datagrams dropped by the peer table (garbage, replays, bad inner source, ...).",
        "counter",
        r(&status.datagrams_dropped),
    );
    gauge(
        "wgbroker_datagrams_oversize_total",
        "UDP datagrams larger than the tunnel MTU allows.",
        "counter",
        r(&status.oversize),
    );
    gauge(
        "wgbroker_link_drops_total",
        "Decrypted packets dropped because a shard's link was full.",
        "counter",
        r(&status.link_drops),
    );
    gauge(
        "wgbroker_udp_rx_batches_total",
        "recvmmsg calls that returned datagrams (datagrams per batch = received / batches).",
        "counter",
        r(&status.rx_batches),
    );
    gauge(
        "wgbroker_udp_tx_batches_total",
        "sendmmsg batches sent.",
        "counter",
        r(&status.tx_batches),
    );
    gauge(
        "wgbroker_udp_send_errors_total",
        "Datagrams the kernel refused to send (no route, refused, ...).",
        "counter",
        r(&status.send_errors),
    );
    gauge(
        "wgbroker_connections_total",
        "Tunnel TCP connections accepted.",
        "counter",
        r(&status.connections),
    );
    gauge(
        "wgbroker_heartbeats_ok_total",
        "Heartbeats that succeeded.",
        "counter",
        r(&status.heartbeats_ok),
    );
    gauge(
        "wgbroker_heartbeats_failed_total",
        "Heartbeats that failed.",
        "counter",
        r(&status.heartbeats_failed),
    );
    gauge(
        "wgbroker_ready",
        "1 when the tunnel handshake is fresh and the heartbeat passes.",
        "gauge",
        u8::from(readiness(status).is_ok()).to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP wgbroker_requests_total Requests answered inside the tunnel, per shard.\n# TYPE wgbroker_requests_total counter"
    );
    for (shard, n) in status.requests_per_shard().iter().enumerate() {
        let _ = writeln!(out, "wgbroker_requests_total{{shard=\"{shard}\"}} {n}");
    }
    let stats = status.shard_stats();
    let sum = |f: &dyn Fn(&crate::server::ServerStats) -> u64| stats.iter().map(f).sum::<u64>();
    let _ = writeln!(
        out,
        "# HELP wgbroker_outcomes_total Requests inside the tunnel by outcome.\n# TYPE wgbroker_outcomes_total counter"
    );
    for (label, v) in [
        ("proxied", sum(&|s| s.proxied)),
        ("denied", sum(&|s| s.denied)),
        ("malformed", sum(&|s| s.rejected)),
        ("upstream_error", sum(&|s| s.upstream_errors)),
        ("vendor_aborted", sum(&|s| s.vendor_aborted)),
        ("healthcheck", sum(&|s| s.healthchecks)),
        ("not_found", sum(&|s| s.not_found)),
        ("timeout", sum(&|s| s.timeouts)),
    ] {
        let _ = writeln!(out, "wgbroker_outcomes_total{{outcome=\"{label}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP wgbroker_proxied_responses_total Proxied responses by status class.\n# TYPE wgbroker_proxied_responses_total counter"
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let _ = writeln!(
            out,
            "wgbroker_proxied_responses_total{{class=\"{class}\"}} {}",
            sum(&|s| s.proxied_by_class[i])
        );
    }
    let _ = writeln!(
        out,
        "# HELP wgbroker_proxied_bytes_total Body bytes of proxied exchanges.\n# TYPE wgbroker_proxied_bytes_total counter"
    );
    let _ = writeln!(
        out,
        "wgbroker_proxied_bytes_total{{direction=\"in\"}} {}",
        sum(&|s| s.bytes_in)
    );
    let _ = writeln!(
        out,
        "wgbroker_proxied_bytes_total{{direction=\"out\"}} {}",
        sum(&|s| s.bytes_out)
    );
    let _ = writeln!(
        out,
        "# HELP wgbroker_proxy_latency_seconds Time from a complete request head to the end of the proxied response.\n# TYPE wgbroker_proxy_latency_seconds histogram"
    );
    let mut cumulative = 0u64;
    for (i, bound) in crate::server::LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += sum(&|s| s.latency_buckets[i]);
        let _ = writeln!(
            out,
            "wgbroker_proxy_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
            bound / 1000.0
        );
    }
    cumulative += sum(&|s| s.latency_buckets[crate::server::LATENCY_BUCKETS_MS.len()]);
    let _ = writeln!(
        out,
        "wgbroker_proxy_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "wgbroker_proxy_latency_seconds_sum {}",
        sum(&|s| s.latency_sum_us) as f64 / 1e6
    );
    let _ = writeln!(out, "wgbroker_proxy_latency_seconds_count {cumulative}");
    let t = status.tunnel_tables();
    let _ = writeln!(
        out,
        "# HELP wgbroker_tunnel_sockets Tunnel TCP sockets by role (connections include TIME-WAIT; spares are closed sockets kept for reuse while a stack is busy).\n# TYPE wgbroker_tunnel_sockets gauge"
    );
    for (role, n) in [
        ("listener", t.listeners),
        ("handshake", t.handshakes),
        ("connection", t.connections),
        ("time_wait", t.time_wait),
        ("spare", t.spares),
    ] {
        let _ = writeln!(out, "wgbroker_tunnel_sockets{{role=\"{role}\"}} {n}");
    }
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "wgbroker_tunnel_connections_open",
        "Tunnel connections being served.",
        status.active_connections().to_string(),
    );
    gauge(
        "wgbroker_tunnel_socket_slots",
        "Socket table slots of the tunnel TCP stacks, empty ones included (back to the fresh value once connections are gone).",
        t.socket_slots.to_string(),
    );
    gauge(
        "wgbroker_tunnel_table_capacity",
        "Entries the tunnel stacks' per-socket maps have room for (back to the fresh value once connections are gone).",
        t.table_capacity.to_string(),
    );
    gauge(
        "wgbroker_packet_buffers_idle",
        "Packet buffers on the shards' free lists (a burst's surplus is freed within a second or two).",
        t.idle_buffers.to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP wgbroker_executor_beats_total Progress ticks per executor (0 = tunnel core).\n# TYPE wgbroker_executor_beats_total counter"
    );
    for (i, n) in status.beats().iter().enumerate() {
        let _ = writeln!(out, "wgbroker_executor_beats_total{{executor=\"{i}\"}} {n}");
    }
    out
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(mut stream: TcpStream, status: &Status) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 2048];
    let mut filled = 0;
    let path = loop {
        match stream.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") && req.method != Some("HEAD") {
                    respond(
                        &mut stream,
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET only\n",
                    );
                    return;
                }
                break req
                    .path
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_owned();
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => {}
            _ => {
                respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                );
                return;
            }
        }
    };
    match path.as_str() {
        "/metrics" => respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4",
            &metrics(status),
        ),
        "/healthz" | "/probes/startup" => respond(&mut stream, "200 OK", "text/plain", "ok\n"),
        "/readyz" | "/probes/readiness" => match readiness(status) {
            Ok(()) => respond(&mut stream, "200 OK", "text/plain", "ready\n"),
            Err(why) => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                &format!("not ready: {why}\n"),
            ),
        },
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

/// Binds `addr` and serves on a thread until `stop` is set; returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    serve(TcpListener::bind(addr)?, status, stop)
}

/// Serves on `listener` (bound beforehand, by `service::prepare`, so that a start fails on
/// an unusable address before any executor runs) on a thread until `stop` is set; returns the
/// bound address.
pub fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("wgbroker-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        handle(stream, &status);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(local)
}
