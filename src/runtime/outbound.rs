//! The webhook relay's I/O (`[outbound]`): the listener the SCM posts to, and the deliveries to
//! the vendor. What to answer and what to send is decided in [`crate::relay`]; this file moves
//! bytes.
//!
//! * The **listener** runs on an executor of its own, `wgbroker-outbound` (unpinned), over
//!   kernel TCP: it reads a request (head limits from `[inbound]`, body up to `max_body`,
//!   `Content-Length` or chunked), hands it to [`intake`] — which spools an accepted event with
//!   blocking `fsync`s before the `202` — and answers. Blocking there stalls only webhooks, never
//!   the data plane.
//! * The **deliveries** run on shard 0, next to the heartbeat, one task per relay: they need the
//!   shard's tunnel stacks (a destination whose IP address is inside a peer's `allowed_ips` is
//!   dialled through the tunnel, as the heartbeat is) and its upstream client (any other
//!   destination: direct, honouring `[upstream]`'s proxy and CA settings). Each task delivers
//!   its relay's spool in order, one event at a time, backing off per [`Backoff`]. A task with
//!   nothing to do looks at the spool every [`IDLE_POLL`] (glommio wakers are not woken across
//!   executors here; a few atomic loads 200 times a second cost nothing measurable).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use ipnet::IpNet;

use super::error::StartError;
use super::shard::{Shard, tunnel_connect};
use crate::config::{Config, Outbound};
use crate::http::{BodyFraming, ChunkedDecoder, Limits, RequestHead, parse_head};
use crate::relay::deliver::{Response, parse_response, request_head};
use crate::relay::intake::{Answer, Stats, intake};
use crate::relay::schedule::{Backoff, Outcome};
use crate::relay::spool::{Event, Spool};
use crate::relay::{Relay, Relays, Webhook};
use crate::telemetry::{LogThrottle, REPEAT_INTERVAL};
use crate::upstream::{Target, Upstreams};

/// How often an idle delivery task looks at its spool queue.
pub const IDLE_POLL: Duration = Duration::from_millis(5);

/// Most webhook connections open at once; one more is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 256;

/// What the listener holds in memory: open connections, and body bytes being read (at most
/// `spool_max`: a body the spool could not take anyway is not worth reading). Over either, the
/// SCM is answered 503 with `Retry-After` — it retries — instead of the broker growing.
#[derive(Debug)]
struct Budget {
    connections: std::cell::Cell<usize>,
    bytes: std::cell::Cell<usize>,
    max_bytes: usize,
}

impl Budget {
    /// Reserves `n` body bytes; `None` when they do not fit.
    fn take(self: &Rc<Self>, n: usize) -> Option<Reserved> {
        let used = self.bytes.get();
        if used.saturating_add(n) > self.max_bytes {
            return None;
        }
        self.bytes.set(used + n);
        Some(Reserved {
            budget: self.clone(),
            n,
        })
    }
}

/// Body bytes reserved in a [`Budget`], given back on drop.
struct Reserved {
    budget: Rc<Budget>,
    n: usize,
}

impl Reserved {
    /// Grows the reservation to `total` bytes (a chunked body); false when it does not fit.
    fn grow(&mut self, total: usize) -> bool {
        if total <= self.n {
            return true;
        }
        let used = self.budget.bytes.get();
        let more = total - self.n;
        if used.saturating_add(more) > self.budget.max_bytes {
            return false;
        }
        self.budget.bytes.set(used + more);
        self.n = total;
        true
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.bytes.set(self.budget.bytes.get() - self.n);
    }
}

/// What the listener and the delivery tasks share (across executors).
#[derive(Debug)]
pub struct Shared {
    /// What a reload replaces (relays, limits, timeouts, TLS, tunnel routes): each request and
    /// each delivery attempt takes the snapshot current when it starts.
    live: RwLock<Arc<Live>>,
    pub spool: Spool,
    pub stats: Arc<Stats>,
    /// Most bytes the spool (and the listener's body budget) may hold; fixed at start.
    spool_max: usize,
    /// Names of the relays that have a delivery task on shard 0 (only shard 0 touches it; a
    /// `Mutex` because `Shared` crosses executors).
    delivering: Mutex<HashSet<String>>,
}

/// The part of [`Shared`] a reload replaces as a whole.
#[derive(Debug)]
struct Live {
    relays: Relays,
    cfg: Outbound,
    limits: Limits,
    head_timeout: Duration,
    body_timeout: Duration,
    /// Every peer's `allowed_ips`: a destination address inside goes through the tunnel.
    tunnel_nets: Vec<IpNet>,
    /// For `https://` destinations reached through the tunnel (direct ones use the upstream
    /// client, which has the same configuration).
    tls: Arc<rustls::ClientConfig>,
}

impl Live {
    fn new(c: &Config, o: &Outbound, tls: Arc<rustls::ClientConfig>) -> Result<Live, String> {
        Ok(Live {
            relays: Relays::compile(o).map_err(|e| e.join("; "))?,
            cfg: o.clone(),
            limits: Limits {
                max_head_bytes: c.inbound.max_head_bytes,
                max_headers: c.inbound.max_headers,
            },
            head_timeout: c.inbound.head_timeout,
            body_timeout: c.inbound.body_timeout,
            tunnel_nets: c
                .wireguard
                .peers
                .iter()
                .flat_map(|p| p.allowed_ips.iter().copied())
                .collect(),
            tls,
        })
    }

    fn relay(&self, name: &str) -> Option<&Relay> {
        self.relays.relays.iter().find(|r| r.name == name)
    }
}

impl Shared {
    /// The current relays and settings.
    fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies a reloaded configuration: `[[outbound.relay]]` (added, removed, changed — a
    /// new secret included), `max_body`, the retry and delivery timings, and the `[inbound]`
    /// limits, peer routes and upstream TLS the relay uses. Requests and delivery attempts
    /// already under way finish with what they started with. `listen`, `spool_dir` and
    /// `spool_max` are not applied (see [`crate::config::reload`]). A relay removed keeps its
    /// spooled events on disk, undelivered, until it is configured again (as at start).
    /// `tls`: the upstream TLS settings when they changed.
    pub(super) fn reload(
        &self,
        c: &Config,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<(), String> {
        let Some(o) = &c.outbound else {
            return Ok(());
        };
        let old = self.live();
        let new = Live::new(c, o, tls.unwrap_or_else(|| old.tls.clone()))?;
        for r in &old.relays.relays {
            if new.relay(&r.name).is_none() {
                let events = self.spool.pending(&r.name);
                tracing::info!(event = "relay.removed", relay = %r.name, events_kept = events);
            }
        }
        for r in &new.relays.relays {
            if old.relay(&r.name).is_none() {
                let events = self.spool.pending(&r.name);
                tracing::info!(event = "relay.added", relay = %r.name, events_waiting = events);
            }
        }
        self.stats.follow(&new.relays);
        match self.live.write() {
            Ok(mut l) => *l = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        Ok(())
    }
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Compiles the relays and opens (recovering) the spool; logs what the spool held.
pub(super) fn open(
    c: &Config,
    o: &Outbound,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Arc<Shared>, StartError> {
    let relays = Relays::compile(o).map_err(|e| StartError::Upstream(e.join("; ")))?;
    let spool_max = u64::try_from(o.spool_max).unwrap_or(u64::MAX);
    let (spool, recovery) =
        Spool::open(&o.spool_dir, spool_max).map_err(|source| StartError::Os {
            what: format!("outbound spool {}", o.spool_dir.display()),
            source,
        })?;
    for (relay, n) in &recovery.pending {
        let known = relays.relays.iter().any(|r| r.name == *relay);
        if known {
            tracing::info!(event = "relay.recovered", relay = %relay, events = n);
        } else {
            tracing::warn!(
                event = "relay.orphaned",
                relay = %relay,
                events = n,
                "the spool holds events of a relay that is no longer configured; they are kept, not delivered"
            );
        }
    }
    if recovery.torn > 0 {
        tracing::info!(event = "relay.torn_removed", files = recovery.torn);
    }
    for path in &recovery.corrupt {
        tracing::error!(event = "relay.corrupt", path = %path.display(), "a spooled event does not parse; set aside");
    }
    let stats = Arc::new(Stats::new(&relays));
    stats.observe(&spool);
    let live = Live::new(c, o, tls.clone()).map_err(StartError::Upstream)?;
    Ok(Arc::new(Shared {
        live: RwLock::new(Arc::new(live)),
        spool,
        stats,
        spool_max: o.spool_max,
        delivering: Mutex::new(HashSet::new()),
    }))
}

// ---------------------------------------------------------------------------------------------
// The listener.

/// The listening socket [`super::prepare`] bound, handed to glommio on this executor.
#[allow(unsafe_code)]
pub(super) fn listener(l: std::net::TcpListener) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = l.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket whose ownership `into_raw_fd` just gave up;
    // the glommio listener becomes its only owner (and closes it).
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(fd) })
}

/// Accepts webhook connections until `stop`.
pub(super) async fn serve(
    listener: glommio::net::TcpListener,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let budget = Rc::new(Budget {
        connections: std::cell::Cell::new(0),
        bytes: std::cell::Cell::new(0),
        max_bytes: shared.spool_max,
    });
    loop {
        let Some(accepted) = super::barrier::until_stopped(listener.accept(), &stop).await else {
            return;
        };
        match accepted {
            Ok(mut stream) => {
                if budget.connections.get() >= MAX_CONNECTIONS {
                    let _ = write_answer(&mut stream, &busy(), false).await;
                    continue;
                }
                budget.connections.set(budget.connections.get() + 1);
                let (shared, budget) = (shared.clone(), budget.clone());
                glommio::spawn_local(async move {
                    connection(stream, &shared, &budget).await;
                    budget.connections.set(budget.connections.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(event = "relay.accept_failed", error = %e);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `503` with `Retry-After`: the listener is at its connection or memory budget.
fn busy() -> Answer {
    Answer {
        status: 503,
        retry_after: Some(crate::relay::intake::RETRY_AFTER.as_secs()),
        body: r#"{"error":"busy: too many webhooks in flight"}"#.to_owned(),
    }
}

/// Why a connection ends without a normal answer.
enum Abort {
    /// Answer 503 + `Retry-After` and close.
    Busy,
    /// Answer this status and close.
    Answer(u16, &'static str),
    /// Close silently (peer gone, timed out mid-request).
    Close,
}

/// Serves requests on one connection (keep-alive) until it closes or fails.
async fn connection(mut stream: glommio::net::TcpStream, shared: &Shared, budget: &Rc<Budget>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        match one_request(&mut stream, &mut buf, shared, budget).await {
            Ok((answer, keep_alive)) => {
                if write_answer(&mut stream, &answer, keep_alive)
                    .await
                    .is_err()
                    || !keep_alive
                {
                    return;
                }
            }
            Err(Abort::Answer(status, reason)) => {
                let answer = Answer {
                    status,
                    retry_after: None,
                    body: serde_json::json!({ "error": reason }).to_string(),
                };
                let _ = write_answer(&mut stream, &answer, false).await;
                return;
            }
            Err(Abort::Busy) => {
                let _ = write_answer(&mut stream, &busy(), false).await;
                return;
            }
            Err(Abort::Close) => return,
        }
    }
}

/// Reads more bytes into `buf` within `timeout`; `Abort::Close` at EOF, error or timeout.
async fn fill(
    stream: &mut glommio::net::TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), Abort> {
    let mut chunk = [0u8; 16 << 10];
    let n = future::or(async { stream.read(&mut chunk).await.ok() }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    match n {
        Some(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        _ => Err(Abort::Close),
    }
}

/// Reads one request from `buf`/`stream`, decides it; leaves the bytes after it in `buf`.
async fn one_request(
    stream: &mut glommio::net::TcpStream,
    buf: &mut Vec<u8>,
    shared: &Shared,
    budget: &Rc<Budget>,
) -> Result<(Answer, bool), Abort> {
    let live = shared.live();
    let mut head = RequestHead::default();
    let head_deadline = Instant::now() + live.head_timeout;
    loop {
        match parse_head(buf, &live.limits, &mut head) {
            Ok(Some(_)) => break,
            Ok(None) => {
                let left = head_deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Abort::Close);
                }
                fill(stream, buf, left).await?;
            }
            Err(e) => return Err(Abort::Answer(e.status(), "malformed request head")),
        }
    }
    let max = live.cfg.max_body;
    let start = head.head_len;
    // Held until the event is spooled (or refused): the body is in memory until then.
    let mut reservation: Option<Reserved> = None;
    // The body, and where the next request starts in `buf`.
    let (body, consumed): (Vec<u8>, usize) = match head.body {
        BodyFraming::None => (Vec::new(), start),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max {
                return Err(Abort::Answer(413, "body over max_body"));
            }
            reservation = Some(budget.take(n).ok_or(Abort::Busy)?);
            continue_if_asked(stream, &head).await?;
            let end = start + n;
            while buf.len() < end {
                fill(stream, buf, live.body_timeout).await?;
            }
            (buf[start..end].to_vec(), end)
        }
        BodyFraming::Chunked => {
            let mut reserved = budget.take(0).ok_or(Abort::Busy)?;
            continue_if_asked(stream, &head).await?;
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            let mut at = start;
            loop {
                if at == buf.len() {
                    fill(stream, buf, live.body_timeout).await?;
                }
                let step = decoder
                    .decode(&buf[at..])
                    .map_err(|_| Abort::Answer(400, "malformed chunked body"))?;
                body.extend_from_slice(&buf[at..][step.data.clone()]);
                at += step.consumed;
                if body.len() > max {
                    return Err(Abort::Answer(413, "body over max_body"));
                }
                if !reserved.grow(body.len()) {
                    return Err(Abort::Busy);
                }
                if step.done {
                    break;
                }
                if step.consumed == 0 {
                    fill(stream, buf, live.body_timeout).await?;
                }
            }
            reservation = Some(reserved);
            (body, at)
        }
    };
    let answer = {
        let headers: Vec<(&str, &[u8])> = head.headers(buf).collect();
        let w = Webhook {
            method: head.method_str(buf),
            path: head.target(buf),
            headers: &headers,
            body: &body,
        };
        intake(&live.relays, &shared.spool, &shared.stats, &w, now_ms())
    };
    buf.drain(..consumed);
    drop(reservation);
    Ok((answer, head.keep_alive))
}

async fn continue_if_asked(
    stream: &mut glommio::net::TcpStream,
    head: &RequestHead,
) -> Result<(), Abort> {
    if head.expect_continue {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Abort::Close)?;
    }
    Ok(())
}

async fn write_answer(
    stream: &mut glommio::net::TcpStream,
    a: &Answer,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        a.status,
        crate::http::reason_phrase(a.status),
        a.body.len()
    );
    if let Some(s) = a.retry_after {
        out.push_str(&format!("Retry-After: {s}\r\n"));
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&a.body);
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

// ---------------------------------------------------------------------------------------------
// The deliveries.

/// Spawns the delivery supervisor on this shard: one delivery task per configured relay, and
/// one more for each relay a reload adds (checked every [`SUPERVISE`]).
pub(super) fn spawn_deliveries(shard: &Rc<Shard>, shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
    let (shard, shared, stop) = (shard.clone(), shared.clone(), stop.clone());
    glommio::spawn_local(async move {
        while !stop.load(Ordering::Relaxed) {
            start_missing_deliveries(&shard, &shared, &stop);
            glommio::timer::sleep(SUPERVISE).await;
        }
    })
    .detach();
}

/// How often the supervisor looks for relays without a delivery task (a reload's new relay
/// starts delivering within this).
const SUPERVISE: Duration = Duration::from_millis(100);

/// Starts a delivery task for every configured relay that has none.
fn start_missing_deliveries(shard: &Rc<Shard>, shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
    let live = shared.live();
    let Ok(mut delivering) = shared.delivering.lock() else {
        return;
    };
    for relay in &live.relays.relays {
        if delivering.insert(relay.name.clone()) {
            glommio::spawn_local(deliver_loop(
                shard.clone(),
                shared.clone(),
                relay.name.clone(),
                stop.clone(),
            ))
            .detach();
        }
    }
}

/// Delivers relay `name`'s spool, in order, until `stop` or until a reload removes the relay
/// (its events stay spooled). Each attempt uses the relay as currently configured (a reload's
/// new destination, secret-free headers, timings apply from the next attempt).
async fn deliver_loop(shard: Rc<Shard>, shared: Arc<Shared>, name: String, stop: Arc<AtomicBool>) {
    let mut live = shared.live();
    let mut backoff = Backoff::new(live.cfg.retry_min, live.cfg.retry_max);
    let mut throttle = LogThrottle::new(REPEAT_INTERVAL);
    while !stop.load(Ordering::Relaxed) {
        let current = shared.live();
        if !Arc::ptr_eq(&current, &live) {
            if (current.cfg.retry_min, current.cfg.retry_max)
                != (live.cfg.retry_min, live.cfg.retry_max)
            {
                backoff = Backoff::new(current.cfg.retry_min, current.cfg.retry_max);
            }
            live = current;
        }
        let Some(relay) = live.relay(&name) else {
            // Removed by a reload: the supervisor starts a new task if it comes back.
            if let Ok(mut d) = shared.delivering.lock() {
                d.remove(&name);
            }
            return;
        };
        let through_tunnel = relay
            .destination
            .ip()
            .is_some_and(|ip| live.tunnel_nets.iter().any(|n| n.contains(&ip)));
        let now = Instant::now();
        let head = if backoff.ready(now) {
            shared.spool.head(&relay.name)
        } else {
            None
        };
        let Some(entry) = head else {
            let wait = backoff
                .next_attempt()
                .map_or(IDLE_POLL, |t| t.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            glommio::timer::sleep(wait).await;
            continue;
        };
        let ev = match shared.spool.load(&relay.name, entry) {
            Ok(ev) => ev,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed from under the broker (an operator): nothing left to deliver.
                tracing::warn!(event = "relay.spool_file_gone", relay = %relay.name, seq = entry.seq);
                let _ = shared.spool.remove(&relay.name, entry);
                shared.stats.observe(&shared.spool);
                continue;
            }
            Err(e) => {
                tracing::error!(event = "relay.spool_read_failed", relay = %relay.name, error = %e);
                shared.stats.observe(&shared.spool);
                backoff.failed(Instant::now(), None);
                continue;
            }
        };
        let started = Instant::now();
        let result = future::or(attempt(&shard, &live, relay, &ev, through_tunnel), async {
            glommio::timer::sleep(live.cfg.delivery_timeout).await;
            Err("timed out".to_owned())
        })
        .await;
        settle(
            &shared,
            relay,
            entry,
            &ev,
            &result,
            started,
            &mut backoff,
            &mut throttle,
        );
    }
}

/// After one attempt: a delivered event leaves the spool; a failed one is retried after the
/// back-off. Counted and logged (failures through `throttle`).
#[allow(clippy::too_many_arguments)]
fn settle(
    shared: &Shared,
    relay: &Relay,
    entry: crate::relay::spool::Entry,
    ev: &Event,
    result: &Result<Response, String>,
    started: Instant,
    backoff: &mut Backoff,
    throttle: &mut LogThrottle,
) {
    let outcome = match result {
        Ok(r) => Outcome::of_status(r.status),
        Err(_) => Outcome::Unavailable,
    };
    if outcome == Outcome::Delivered {
        if let Err(e) = shared.spool.remove(&relay.name, entry) {
            // Delivered but still on disk: it will be delivered again after a restart
            // (at-least-once); say so.
            tracing::error!(event = "relay.spool_remove_failed", relay = %relay.name, error = %e);
        }
        shared.stats.observe(&shared.spool);
        if let Some(c) = shared.stats.counters(&relay.name) {
            c.delivered.fetch_add(1, Ordering::Relaxed);
        }
        let failures = backoff.failures();
        backoff.succeeded();
        throttle.reset();
        tracing::info!(
            event = "relay.delivered",
            relay = %relay.name,
            delivery = ev.delivery.as_deref().unwrap_or(""),
            status = result.as_ref().map_or(0, |r| r.status),
            attempt_ms = started.elapsed().as_millis() as u64,
            waited_ms = now_ms().saturating_sub(ev.received_ms),
            failures_before = failures,
        );
        return;
    }
    if let Some(c) = shared.stats.counters(&relay.name) {
        c.retries.fetch_add(1, Ordering::Relaxed);
    }
    let retry_after = result.as_ref().ok().and_then(|r| r.retry_after);
    let delay = backoff.failed(Instant::now(), retry_after);
    let reason = match result {
        Ok(r) => format!("status {}", r.status),
        Err(e) => e.clone(),
    };
    if let Some(suppressed) = throttle.admit(Instant::now()) {
        tracing::warn!(
            event = "relay.delivery_failed",
            relay = %relay.name,
            delivery = ev.delivery.as_deref().unwrap_or(""),
            reason = %reason,
            refused = outcome == Outcome::Refused,
            failures = backoff.failures(),
            retry_in_ms = delay.as_millis() as u64,
            suppressed,
        );
    }
}

/// One attempt: dial, send, read the response head.
async fn attempt(
    shard: &Rc<Shard>,
    live: &Live,
    relay: &Relay,
    ev: &Event,
    through_tunnel: bool,
) -> Result<Response, String> {
    let d = &relay.destination;
    let head = request_head(d, &relay.name, ev);
    if through_tunnel {
        let ip = d.ip().ok_or("not an IP address")?;
        let conn = tunnel_connect(shard, SocketAddr::new(ip, d.port)).await?;
        if d.tls {
            let name = rustls::pki_types::ServerName::IpAddress(ip.into());
            let tls = futures_rustls::TlsConnector::from(live.tls.clone())
                .connect(name, conn)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(tls, &head, &ev.body).await
        } else {
            exchange(conn, &head, &ev.body).await
        }
    } else {
        let host = if d.host.contains(':') {
            format!("[{}]", d.host)
        } else {
            d.host.clone()
        };
        let target = Target::new(d.tls, host, d.port);
        let pooled = shard
            .upstreams
            .connect_new(&target)
            .await
            .map_err(|e| e.to_string())?;
        exchange(pooled.conn, &head, &ev.body).await
    }
}

/// Sends `head` and `body` on `conn`; reads the response head.
async fn exchange<S>(mut conn: S, head: &[u8], body: &[u8]) -> Result<Response, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.write_all(head)
        .await
        .map_err(|e| format!("write: {e}"))?;
    conn.write_all(body)
        .await
        .map_err(|e| format!("write: {e}"))?;
    conn.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = parse_response(&buf)? {
            let _ = conn.close().await;
            return Ok(r);
        }
    }
}
