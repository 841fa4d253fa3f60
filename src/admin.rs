//! The admin listener (default `127.0.0.1:9000`): `/metrics` (Prometheus text), `/healthz`
//! (alive), `/readyz` (tunnel handshake fresh and heartbeat passing), and the Semgrep-compatible
//! aliases `/probes/startup` and `/probes/readiness`.
//!
//! It runs on its own plain thread, off the data path: it only reads the [`Status`] atomics the
//! executors publish at their own pace (per-shard values are merged here, at scrape time), so a
//! scrape costs the data plane nothing. Requests are tiny and bounded; one connection at a time
//! is enough for probes and a scraper.
//!
//! `/metrics` is written by a small hand-written renderer (`Exposition`: `# HELP`, `# TYPE`,
//! samples), not by the `prometheus-client` crate, for three reasons:
//! * that crate writes OpenMetrics, not Prometheus text 0.0.4: a counter family is named without
//!   its `_total` (`# TYPE wgbroker_handshakes counter`, sample `wgbroker_handshakes_total`) and the
//!   text ends with `# EOF`. Our `# TYPE` lines, which dashboards and `tests/it` read, would change;
//! * its registry owns live metric objects, while ours are per-shard atomics in [`Status`] merged
//!   at scrape time (the latency histogram from bucket counts); it would take a custom collector
//!   per family, more code than the renderer;
//! * the renderer is ~80 lines with fixed names and label values (nothing to escape).
//!
//! Counters go through `counter`/`Kind::Counter` (names end in `_total`), everything else is a
//! gauge except the one histogram; a unit test parses the output and checks exactly that.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::server::{LATENCY_BUCKETS_MS, ServerStats};
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

/// The Prometheus text exposition (format 0.0.4) of `status`.
pub fn metrics(status: &Status) -> String {
    let mut m = Exposition::default();
    tunnel_metrics(&mut m, status);
    request_metrics(&mut m, status);
    latency_histogram(&mut m, status);
    socket_metrics(&mut m, status);
    m.labelled(
        "wgbroker_executor_beats_total",
        "Progress ticks per executor (0 = tunnel core).",
        Kind::Counter,
        "executor",
        status.beats().iter().enumerate(),
    );
    if let Some(o) = status.outbound.get() {
        outbound_metrics(&mut m, o);
    }
    m.out
}

/// The webhook relay (`[outbound]`): per-relay counters (relay names are plain words, see
/// `relay::Relay::compile`) and the spool's gauges.
fn outbound_metrics(m: &mut Exposition, o: &crate::relay::intake::Stats) {
    use crate::relay::intake::RelayCounters;
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let relays = o.relays();
    let per = |f: fn(&RelayCounters) -> &std::sync::atomic::AtomicU64| {
        relays
            .iter()
            .map(move |(n, c)| (n.clone(), f(c).load(Ordering::Relaxed)))
    };
    for (name, help, f) in [
        (
            "wgbroker_webhooks_accepted_total",
            "Webhooks verified, relevant and spooled (answered 202).",
            (|c| &c.accepted) as fn(&RelayCounters) -> &std::sync::atomic::AtomicU64,
        ),
        (
            "wgbroker_webhooks_delivered_total",
            "Webhooks the vendor answered 2xx (dropped from the spool).",
            |c| &c.delivered,
        ),
        (
            "wgbroker_webhook_retries_total",
            "Failed delivery attempts (each is retried with back-off).",
            |c| &c.retries,
        ),
        (
            "wgbroker_webhooks_unauthenticated_total",
            "Webhooks with a missing or wrong signature or token (401).",
            |c| &c.unauthenticated,
        ),
        (
            "wgbroker_webhooks_malformed_total",
            "Webhooks refused as malformed (400, 405, 413).",
            |c| &c.malformed,
        ),
        (
            "wgbroker_webhooks_spool_refused_total",
            "Webhooks answered 503 because the spool was full or could not be written.",
            |c| &c.spool_refused,
        ),
    ] {
        m.labelled(name, help, Kind::Counter, "relay", per(f));
    }
    m.family(
        "wgbroker_webhooks_filtered_total",
        "Webhooks filtered out (answered 200), by the filter that decided.",
        Kind::Counter,
    );
    for (n, c) in relays.iter() {
        for (reason, v) in [
            ("events", &c.filtered_events),
            ("touches", &c.filtered_touches),
            ("when", &c.filtered_when),
        ] {
            let _ = writeln!(
                m.out,
                "wgbroker_webhooks_filtered_total{{relay=\"{n}\",reason=\"{reason}\"}} {}",
                r(v)
            );
        }
    }
    m.counter(
        "wgbroker_webhooks_unknown_relay_total",
        "Webhooks posted to no configured relay (404).",
        r(&o.unknown),
    );
    m.gauge(
        "wgbroker_spool_bytes",
        "Bytes of webhooks waiting in the spool.",
        r(&o.spool_bytes),
    );
    m.gauge(
        "wgbroker_spool_events",
        "Webhooks waiting in the spool.",
        r(&o.spool_events),
    );
    let oldest = r(&o.oldest_received_ms);
    let age = if oldest == 0 {
        0.0
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now.saturating_sub(oldest) as f64 / 1000.0
    };
    m.gauge(
        "wgbroker_spool_oldest_age_seconds",
        "Age of the oldest webhook waiting in the spool (0: none).",
        format!("{age:.3}"),
    );
}

/// The WireGuard side: handshakes, datagrams, batches, heartbeats, readiness.
fn tunnel_metrics(m: &mut Exposition, status: &Status) {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let age = status.handshake_age();
    m.gauge(
        "wgbroker_handshake_age_seconds",
        "Seconds since the newest completed WireGuard handshake (-1: none yet).",
        age.map_or_else(|| "-1".to_owned(), |a| format!("{:.3}", a.as_secs_f64())),
    );
    for (name, help, value) in [
        (
            "wgbroker_handshakes_total",
            "Completed WireGuard handshakes.",
            &status.handshakes,
        ),
        (
            "wgbroker_datagrams_dropped_total",
            "UDP datagrams dropped by the peer table (garbage, replays, bad inner source, ...).",
            &status.datagrams_dropped,
        ),
        (
            "wgbroker_datagrams_oversize_total",
            "UDP datagrams larger than the tunnel MTU allows.",
            &status.oversize,
        ),
        (
            "wgbroker_link_drops_total",
            "Decrypted packets dropped because a shard's link was full.",
            &status.link_drops,
        ),
        (
            "wgbroker_udp_rx_batches_total",
            "recvmmsg calls that returned datagrams (datagrams per batch = received / batches).",
            &status.rx_batches,
        ),
        (
            "wgbroker_udp_tx_batches_total",
            "sendmmsg batches sent.",
            &status.tx_batches,
        ),
        (
            "wgbroker_udp_send_errors_total",
            "Datagrams the kernel refused to send (no route, refused, ...).",
            &status.send_errors,
        ),
        (
            "wgbroker_connections_total",
            "Tunnel TCP connections accepted.",
            &status.connections,
        ),
        (
            "wgbroker_liveness_probes_total",
            "Fresh WireGuard handshakes sent because nothing answered for 2 s (most answered at once).",
            &status.liveness_probes,
        ),
        (
            "wgbroker_idle_probes_total",
            "ICMP echoes sent through the tunnel to a gateway that sent nothing for 2 s (an idle tunnel's liveness probe).",
            &status.idle_probes,
        ),
        (
            "wgbroker_idle_probe_replies_total",
            "Answers to those echoes.",
            &status.idle_probe_replies,
        ),
        (
            "wgbroker_heartbeats_ok_total",
            "Heartbeats that succeeded.",
            &status.heartbeats_ok,
        ),
        (
            "wgbroker_heartbeats_failed_total",
            "Heartbeats that failed.",
            &status.heartbeats_failed,
        ),
    ] {
        m.counter(name, help, r(value));
    }
    m.labelled(
        "wgbroker_session_restarts_total",
        "Dead WireGuard sessions re-established with fresh handshakes, by what noticed them.",
        Kind::Counter,
        "reason",
        [
            ("no_reply", r(&status.session_restarts_no_reply)),
            ("heartbeat_failed", r(&status.session_restarts_heartbeat)),
        ],
    );
    transport_metrics(m, status);
    m.gauge(
        "wgbroker_ready",
        "1 when the tunnel handshake is fresh and the heartbeat passes.",
        u8::from(readiness(status).is_ok()),
    );
}

/// The transport each peer's datagrams use now, the switches and the stream queue drops.
fn transport_metrics(m: &mut Exposition, status: &Status) {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let peers = r(&status.peers);
    let on_stream = r(&status.stream_peers).min(peers);
    let on_tls = r(&status.tls_peers).min(on_stream);
    m.labelled(
        "wgbroker_tunnel_transport",
        "WireGuard peers whose datagrams travel on each transport now (udp, or a framed tcp or tls stream).",
        Kind::Gauge,
        "transport",
        crate::transport::Carrier::ALL.map(|c| {
            let n = match c {
                crate::transport::Carrier::Udp => peers - on_stream,
                crate::transport::Carrier::Tcp => on_stream - on_tls,
                crate::transport::Carrier::Tls => on_tls,
            };
            (c.as_str(), n)
        }),
    );
    m.labelled(
        "wgbroker_tunnel_transport_switches_total",
        "Changes of a peer's transport, by reason (configured, udp_no_handshake, \
         other_stream_failed: to a tcp or tls stream; udp_works, stream_closed, stream_stalled, framing_error, stopping: back to udp).",
        Kind::Counter,
        "reason",
        crate::transport::SwitchReason::ALL.map(|why| {
            let n = status
                .transport_switches
                .get(why.index())
                .map_or(0, |c| c.load(Ordering::Relaxed));
            (why.as_str(), n)
        }),
    );
    m.counter(
        "wgbroker_stream_queue_drops_total",
        "Datagrams dropped because a stream transport's send queue was full.",
        r(&status.stream_queue_drops),
    );
}

/// Requests inside the tunnel: per shard, by outcome, by status class, bytes.
fn request_metrics(m: &mut Exposition, status: &Status) {
    m.labelled(
        "wgbroker_requests_total",
        "Requests answered inside the tunnel, per shard.",
        Kind::Counter,
        "shard",
        status.requests_per_shard().iter().enumerate(),
    );
    let stats = status.shard_stats();
    let sum = |f: &dyn Fn(&ServerStats) -> u64| stats.iter().map(f).sum::<u64>();
    m.labelled(
        "wgbroker_outcomes_total",
        "Requests inside the tunnel by outcome.",
        Kind::Counter,
        "outcome",
        [
            ("proxied", sum(&|s| s.proxied)),
            ("denied", sum(&|s| s.denied)),
            ("malformed", sum(&|s| s.rejected)),
            ("upstream_error", sum(&|s| s.upstream_errors)),
            ("vendor_aborted", sum(&|s| s.vendor_aborted)),
            ("healthcheck", sum(&|s| s.healthchecks)),
            ("not_found", sum(&|s| s.not_found)),
            ("timeout", sum(&|s| s.timeouts)),
        ],
    );
    m.labelled(
        "wgbroker_proxied_responses_total",
        "Proxied responses by status class.",
        Kind::Counter,
        "class",
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
            .map(|(i, class)| (class, sum(&|s| s.proxied_by_class[i]))),
    );
    m.labelled(
        "wgbroker_proxied_bytes_total",
        "Body bytes of proxied exchanges.",
        Kind::Counter,
        "direction",
        [("in", sum(&|s| s.bytes_in)), ("out", sum(&|s| s.bytes_out))],
    );
    m.counter(
        "wgbroker_tokens_set_aside_total",
        "Pooled tokens set aside after the upstream answered 401 to them.",
        sum(&|s| s.tokens_set_aside),
    );
}

/// Proxy latency, merged from the shards' bucket counts at scrape time.
fn latency_histogram(m: &mut Exposition, status: &Status) {
    const NAME: &str = "wgbroker_proxy_latency_seconds";
    let stats = status.shard_stats();
    let sum = |f: &dyn Fn(&ServerStats) -> u64| stats.iter().map(f).sum::<u64>();
    m.family(
        NAME,
        "Time from a complete request head to the end of the proxied response.",
        Kind::Histogram,
    );
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += sum(&|s| s.latency_buckets[i]);
        m.sample(
            &format!("{NAME}_bucket"),
            Some(("le", bound / 1000.0)),
            cumulative,
        );
    }
    cumulative += sum(&|s| s.latency_buckets[LATENCY_BUCKETS_MS.len()]);
    m.sample(&format!("{NAME}_bucket"), Some(("le", "+Inf")), cumulative);
    let seconds = sum(&|s| s.latency_sum_us) as f64 / 1e6;
    m.sample(&format!("{NAME}_sum"), None::<(&str, u8)>, seconds);
    m.sample(&format!("{NAME}_count"), None::<(&str, u8)>, cumulative);
}

/// What the tunnel TCP stacks and packet pools hold now (all gauges).
fn socket_metrics(m: &mut Exposition, status: &Status) {
    let t = status.tunnel_tables();
    m.labelled(
        "wgbroker_tunnel_sockets",
        "Tunnel TCP connections by role (connections include TIME-WAIT).",
        Kind::Gauge,
        "role",
        [
            ("handshake", t.handshakes),
            ("connection", t.connections),
            ("time_wait", t.time_wait),
        ],
    );
    m.gauge(
        "wgbroker_tunnel_tcp_buffer_bytes",
        "Bytes the tunnel connections' send and receive buffers hold (they grow with the path and shrink when drained).",
        t.buffer_bytes,
    );
    m.counter(
        "wgbroker_tunnel_tcp_retransmits_total",
        "Data segments the tunnel TCP sent again (finished connections).",
        t.retransmits,
    );
    m.counter(
        "wgbroker_tunnel_tcp_fast_retransmits_total",
        "Retransmissions of segments found lost by SACK/RACK or duplicate ACKs, without a timeout (finished connections).",
        t.fast_retransmits,
    );
    m.counter(
        "wgbroker_tunnel_tcp_tail_loss_probes_total",
        "Tail loss probes sent (finished connections).",
        t.tail_loss_probes,
    );
    m.counter(
        "wgbroker_tunnel_tcp_probe_recoveries_total",
        "Tail loss probes that repaired a loss and cut the window (finished connections).",
        t.tlp_recoveries,
    );
    m.counter(
        "wgbroker_tunnel_tcp_timeouts_total",
        "Retransmission timeouts (finished connections).",
        t.rtos,
    );
    m.counter(
        "wgbroker_tunnel_tcp_spurious_timeouts_total",
        "Retransmission timeouts found spurious by timestamps or D-SACKs and undone (finished connections).",
        t.spurious_rtos,
    );
    m.counter(
        "wgbroker_tunnel_syns_refused_total",
        "Inbound SYNs refused: stack full, too many half-open handshakes, or draining.",
        t.syns_refused,
    );
    m.gauge(
        "wgbroker_tunnel_connections_open",
        "Tunnel connections being served.",
        status.active_connections(),
    );
    m.gauge(
        "wgbroker_tunnel_socket_slots",
        "Connection slots of the tunnel TCP stacks, empty ones included (back to the fresh value once connections are gone).",
        t.socket_slots,
    );
    m.gauge(
        "wgbroker_tunnel_table_capacity",
        "Entries the tunnel stacks' connection maps and timer heaps have room for (back to the fresh value once connections are gone).",
        t.table_capacity,
    );
    m.gauge(
        "wgbroker_packet_buffers_idle",
        "Packet buffers on the shards' free lists (a burst's surplus is freed within a second or two).",
        t.idle_buffers,
    );
}

/// A metric family's type, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A Prometheus text (0.0.4) writer: a family's `# HELP` and `# TYPE` lines, then its samples.
/// Label values here are fixed words and numbers, so they need no escaping.
#[derive(Debug, Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let kind = kind.as_str();
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(
        &mut self,
        name: &str,
        label: Option<(&str, impl std::fmt::Display)>,
        value: impl std::fmt::Display,
    ) {
        let _ = match label {
            Some((key, v)) => writeln!(self.out, "{name}{{{key}=\"{v}\"}} {value}"),
            None => writeln!(self.out, "{name} {value}"),
        };
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Kind::Counter);
        self.sample(name, None::<(&str, u8)>, value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, help, Kind::Gauge);
        self.sample(name, None::<(&str, u8)>, value);
    }

    /// One family with one label: a sample per `(label value, value)`.
    fn labelled<L: std::fmt::Display, V: std::fmt::Display>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        label: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(name, help, kind);
        for (l, v) in samples {
            self.sample(name, Some((label, l)), v);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::TunnelTables;
    use std::time::Instant;

    /// A status with a distinct value in every counter the exposition reads.
    fn busy_status() -> Status {
        let status = Status::new(2);
        status.handshakes.store(3, Ordering::Relaxed);
        status.datagrams_dropped.store(5, Ordering::Relaxed);
        status.oversize.store(7, Ordering::Relaxed);
        status.link_drops.store(11, Ordering::Relaxed);
        status.rx_batches.store(13, Ordering::Relaxed);
        status.tx_batches.store(17, Ordering::Relaxed);
        status.send_errors.store(19, Ordering::Relaxed);
        status.connections.store(23, Ordering::Relaxed);
        status.heartbeats_ok.store(29, Ordering::Relaxed);
        status.heartbeats_failed.store(31, Ordering::Relaxed);
        status.heartbeat_passing.store(true, Ordering::Relaxed);
        status.set_last_handshake(Instant::now());
        status.set_requests(0, 37);
        status.set_requests(1, 41);
        for shard in 0..2u64 {
            let mut s = ServerStats {
                proxied: 43 + shard,
                denied: 47,
                rejected: 53,
                upstream_errors: 59,
                vendor_aborted: 61,
                healthchecks: 67,
                not_found: 71,
                timeouts: 73,
                bytes_in: 79,
                bytes_out: 83,
                latency_sum_us: 1_500_000,
                ..ServerStats::default()
            };
            s.proxied_by_class = [1, 2, 3, 4, 5];
            for (i, b) in s.latency_buckets.iter_mut().enumerate() {
                *b = i as u64 + shard;
            }
            status.set_shard_stats(shard as usize, &s);
            status.set_active(shard as usize, 2);
            let t = TunnelTables {
                handshakes: 2,
                connections: 3,
                time_wait: 4,
                buffer_bytes: 5,
                retransmits: 9,
                socket_slots: 6,
                table_capacity: 7,
                idle_buffers: 8,
                ..TunnelTables::default()
            };
            status.set_shard_tables(shard as usize, t);
        }
        status.beat(0);
        status.beat(2);
        status
    }

    #[test]
    fn counters_are_typed_counter_and_the_rest_gauge() {
        use prometheus_parse::{Scrape, Value};
        let text = metrics(&busy_status());
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
        assert!(scrape.samples.len() > 40, "{text}");
        for s in &scrape.samples {
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|x| s.metric.strip_suffix(x))
                .filter(|f| f.ends_with("_seconds"))
                .unwrap_or(&s.metric);
            assert!(scrape.docs.contains_key(family), "{} has no HELP", s.metric);
            let ok = match &s.value {
                Value::Counter(_) => s.metric.ends_with("_total"),
                Value::Gauge(_) => !s.metric.ends_with("_total"),
                Value::Histogram(_) => s.metric == "wgbroker_proxy_latency_seconds",
                // prometheus-parse leaves a histogram's _sum and _count untyped.
                Value::Untyped(_) => s.metric.starts_with("wgbroker_proxy_latency_seconds_"),
                _ => false,
            };
            assert!(ok, "{} typed {:?}", s.metric, s.value);
        }
        let value = |metric: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
                })
                .map(|s| match &s.value {
                    Value::Counter(v) | Value::Gauge(v) => *v,
                    other => panic!("{metric}: {other:?}"),
                })
        };
        assert_eq!(value("wgbroker_handshakes_total", None), Some(3.0));
        assert_eq!(value("wgbroker_ready", None), Some(1.0));
        assert_eq!(
            value("wgbroker_requests_total", Some(("shard", "1"))),
            Some(41.0)
        );
        assert_eq!(
            value("wgbroker_outcomes_total", Some(("outcome", "proxied"))),
            Some(87.0)
        );
        assert_eq!(
            value("wgbroker_proxied_responses_total", Some(("class", "5xx"))),
            Some(10.0)
        );
        assert_eq!(
            value("wgbroker_tunnel_sockets", Some(("role", "time_wait"))),
            Some(8.0)
        );
        assert_eq!(
            value("wgbroker_tunnel_tcp_retransmits_total", None),
            Some(18.0)
        );
        assert_eq!(value("wgbroker_tunnel_connections_open", None), Some(4.0));
        assert_eq!(
            value("wgbroker_executor_beats_total", Some(("executor", "2"))),
            Some(1.0)
        );
        assert!(
            text.contains("wgbroker_proxy_latency_seconds_bucket{le=\"+Inf\"} 169\n"),
            "{text}"
        );
        assert!(
            text.contains("wgbroker_proxy_latency_seconds_sum 3\n"),
            "{text}"
        );
    }
}
