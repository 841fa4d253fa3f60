//! One driver thread: its own [`Gateway`] (UDP socket, WireGuard peer, smoltcp stacks) and its
//! share of the connections, each with at most one request in flight.
//!
//! * **Closed loop**: an idle connection sends its next request at once.
//! * **Open loop**: request `k` is *intended* at `start + k / rate`; it goes out on the first idle
//!   connection at or after that instant and its latency is measured from the intended instant,
//!   so a stalled server is charged for the requests it kept waiting (coordinated omission).
//!   The backlog of overdue requests is a counter, not a queue.
//!
//! Every loop is bounded: the window ends at `start + warmup + duration`, every request has a
//! timeout, and a failing connection is retried after a pause.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::cpu;
use super::report::{Stats, histogram};
use super::scenario::Plan;
use crate::netstack::{ConnError, ConnId, ConnectError, State};
use crate::testkit::gateway::{Gateway, GatewayConfig, GatewayStats};
use crate::testkit::impair::ImpairStats;
use crate::testkit::response::{Metered, ResponseMeter};

/// Pause before a failed connection is opened again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest sleep in one gateway pump while requests are in flight.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// How often a thread publishes its progress.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// What one driver thread is asked to do.
#[derive(Debug, Clone)]
pub struct DriverSpec {
    pub index: usize,
    pub gateway: GatewayConfig,
    /// The broker's inbound TCP port.
    pub port: u16,
    pub plan: Arc<Plan>,
    pub connections: usize,
    /// This thread's share of the open-loop rate (requests per second).
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests left to send across every thread (`--requests`).
    pub budget: Option<Arc<AtomicU64>>,
    pub timeout: Duration,
    /// End `connect` connections with RST instead of FIN (no TIME-WAIT on the driver).
    pub close_rst: bool,
    pub handshake_timeout: Duration,
    pub seed: u64,
}

/// What a driver thread tells the coordinator before the run.
#[derive(Debug)]
pub enum Event {
    /// The gateway's UDP socket is bound here.
    Bound { index: usize, addr: SocketAddr },
    /// Handshake done and connections open: ready for the start signal.
    Ready { index: usize },
    /// The thread gave up.
    Failed { index: usize, error: String },
}

/// Live figures a thread publishes (for the progress line).
#[derive(Debug)]
pub struct Progress {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            bytes: 0,
            latency: histogram(),
        }
    }
}

/// Shared between the coordinator and the driver threads.
#[derive(Debug, Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub progress: Mutex<Progress>,
}

/// What a driver thread measured.
#[derive(Debug)]
pub struct Outcome {
    pub stats: Stats,
    /// CPU of this thread inside the window, nanoseconds.
    pub cpu_ns: u64,
    pub gateway: GatewayStats,
    /// What the impaired path did, `(to the broker, from the broker)`, over the whole session.
    pub wan: Option<(ImpairStats, ImpairStats)>,
    /// The measurement window this thread saw.
    pub window: Duration,
    /// The run did not happen (bind, handshake, stop before start).
    pub error: Option<String>,
}

/// Starts a driver thread named `lt-driver<N>`.
pub fn spawn(
    spec: DriverSpec,
    ctl: Arc<Control>,
    events: Sender<Event>,
    start: Receiver<Instant>,
) -> std::io::Result<JoinHandle<Outcome>> {
    std::thread::Builder::new()
        .name(format!("lt-driver{}", spec.index))
        .spawn(move || run(spec, &ctl, &events, &start))
}

fn failed(spec: &DriverSpec, events: &Sender<Event>, error: String) -> Outcome {
    let _ = events.send(Event::Failed {
        index: spec.index,
        error: error.clone(),
    });
    Outcome {
        stats: Stats::new(spec.plan.templates.len()),
        cpu_ns: 0,
        gateway: GatewayStats::default(),
        wan: None,
        window: Duration::ZERO,
        error: Some(error),
    }
}

fn run(
    spec: DriverSpec,
    ctl: &Control,
    events: &Sender<Event>,
    start_rx: &Receiver<Instant>,
) -> Outcome {
    let mut gw = match Gateway::bind(&spec.gateway) {
        Ok(g) => g,
        Err(e) => {
            return failed(
                &spec,
                events,
                format!("gateway on {}: {e}", spec.gateway.listen),
            );
        }
    };
    match gw.local_addr() {
        Ok(addr) => {
            let _ = events.send(Event::Bound {
                index: spec.index,
                addr,
            });
        }
        Err(e) => return failed(&spec, events, format!("gateway address: {e}")),
    }
    let until = Instant::now() + spec.handshake_timeout;
    while !gw.handshaken() {
        if ctl.stop.load(Ordering::Relaxed) {
            return failed(&spec, events, "stopped before the handshake".into());
        }
        if Instant::now() >= until {
            return failed(
                &spec,
                events,
                format!(
                    "no WireGuard handshake from the broker within {}",
                    humantime::format_duration(spec.handshake_timeout)
                ),
            );
        }
        if let Err(e) = gw.pump(Duration::from_millis(20)) {
            return failed(&spec, events, format!("gateway socket: {e}"));
        }
    }
    let mut d = Driver::new(spec, gw);
    d.open_all();
    let _ = events.send(Event::Ready {
        index: d.spec.index,
    });
    let start = loop {
        match start_rx.try_recv() {
            Ok(t) => break t,
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                return failed(&d.spec, events, "stopped before the start".into());
            }
        }
        if ctl.stop.load(Ordering::Relaxed) {
            return failed(&d.spec, events, "stopped before the start".into());
        }
        let _ = d.gw.pump(Duration::from_millis(2));
        let now = Instant::now();
        d.step_all(now);
    };
    d.run(start, ctl)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection (never opened, failed, or closed after a request).
    Down,
    Connecting,
    /// Open, waiting for a request.
    Idle,
    /// Writing the request head from this offset.
    Head(usize),
    /// Writing this many more body bytes.
    Body(u64),
    Receiving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    /// The driver's own stack had no free local port (see `Errors::driver_ports`).
    DriverPorts,
    Timeout,
    Reset,
    BadResponse,
}

#[derive(Debug)]
struct Conn {
    id: Option<ConnId>,
    phase: Phase,
    /// A request is assigned (in flight).
    busy: bool,
    /// On the idle list.
    listed: bool,
    tpl: usize,
    intended: Instant,
    started: Instant,
    deadline: Instant,
    retry_at: Instant,
    sent: u64,
    received: u64,
    /// The response came before the request body was complete: close afterwards.
    abandon: bool,
    meter: ResponseMeter,
}

struct Driver {
    spec: DriverSpec,
    gw: Gateway,
    broker: SocketAddr,
    conns: Vec<Conn>,
    /// Connections (or, for `connect`, slots) ready for a request.
    idle: Vec<usize>,
    busy: usize,
    stats: Stats,
    /// Figures since the last publish.
    pending: Progress,
    measure_from: Instant,
    rng: u64,
}

/// Body bytes of uploads.
static BODY: [u8; 16 * 1024] = [b'u'; 16 * 1024];

impl Driver {
    fn new(spec: DriverSpec, gw: Gateway) -> Self {
        let now = Instant::now();
        let broker = SocketAddr::new(gw.broker_address(), spec.port);
        let conns = (0..spec.connections)
            .map(|_| Conn {
                id: None,
                phase: Phase::Down,
                busy: false,
                listed: false,
                tpl: 0,
                intended: now,
                started: now,
                deadline: now,
                retry_at: now,
                sent: 0,
                received: 0,
                abandon: false,
                meter: ResponseMeter::new(),
            })
            .collect();
        let stats = Stats::new(spec.plan.templates.len());
        let rng = spec.seed | 1;
        Self {
            spec,
            gw,
            broker,
            conns,
            idle: Vec::new(),
            busy: 0,
            stats,
            pending: Progress::default(),
            // Nothing is recorded before the run sets the window.
            measure_from: now + Duration::from_secs(365 * 86400),
            rng,
        }
    }

    fn per_request(&self) -> bool {
        self.spec.plan.connection_per_request
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Opens the keep-alive connections (or lists the `connect` slots) and waits a little for
    /// them to be established.
    fn open_all(&mut self) {
        let now = Instant::now();
        for c in 0..self.conns.len() {
            if self.per_request() {
                self.list(c);
            } else {
                self.open(c, now);
            }
        }
        let until = now + Duration::from_secs(10);
        while Instant::now() < until
            && self.conns.iter().any(|c| {
                c.phase == Phase::Connecting || (c.phase == Phase::Down && !self.per_request())
            })
        {
            let _ = self.gw.pump(Duration::from_millis(2));
            self.step_all(Instant::now());
        }
    }

    fn list(&mut self, c: usize) {
        if !self.conns[c].listed {
            self.conns[c].listed = true;
            self.idle.push(c);
        }
    }

    /// Opens connection `c`; a failure is counted and retried later.
    fn open(&mut self, c: usize, now: Instant) {
        match self.gw.stack().connect(self.broker) {
            Ok(id) => {
                let conn = &mut self.conns[c];
                conn.id = Some(id);
                conn.phase = Phase::Connecting;
                if !conn.busy {
                    conn.deadline = now + self.spec.timeout;
                }
                if now >= self.measure_from {
                    self.stats.connections_opened += 1;
                }
            }
            Err(ConnectError::NoPort) => self.fail(c, Failure::DriverPorts, now),
            Err(ConnectError::Unaddressable) => self.fail(c, Failure::Connect, now),
        }
    }

    fn claim(&self) -> bool {
        match &self.spec.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                .is_ok(),
        }
    }

    /// Takes an idle connection that is still open (or a free slot for `connect`).
    fn take_idle(&mut self, now: Instant) -> Option<usize> {
        while let Some(c) = self.idle.pop() {
            self.conns[c].listed = false;
            if self.per_request() {
                return Some(c);
            }
            let open = self.conns[c]
                .id
                .is_some_and(|id| self.gw.stack().state(id) == State::Established);
            if open && self.conns[c].phase == Phase::Idle {
                return Some(c);
            }
            // The server closed it while idle: reopen, try another.
            self.drop_conn(c, false);
            self.conns[c].retry_at = now;
        }
        None
    }

    fn assign(&mut self, c: usize, intended: Instant, now: Instant) {
        let r = self.next_rand();
        let tpl = self.spec.plan.pick(r);
        let conn = &mut self.conns[c];
        conn.busy = true;
        conn.tpl = tpl;
        conn.intended = intended;
        conn.started = now;
        conn.deadline = now + self.spec.timeout;
        conn.sent = 0;
        conn.received = 0;
        conn.abandon = false;
        conn.meter.start(false);
        self.busy += 1;
        if self.per_request() {
            self.open(c, now);
        } else {
            self.conns[c].phase = Phase::Head(0);
        }
    }

    /// Closes connection `c`'s socket (RST when `reset`) and marks it down.
    fn drop_conn(&mut self, c: usize, reset: bool) {
        if let Some(id) = self.conns[c].id.take() {
            if reset {
                let _ = self.gw.stack().abort(id);
            } else {
                let _ = self.gw.stack().close(id);
            }
        }
        self.conns[c].phase = Phase::Down;
    }

    fn in_window(&self, now: Instant) -> bool {
        now >= self.measure_from
    }

    fn fail(&mut self, c: usize, kind: Failure, now: Instant) {
        let counted = self.in_window(now);
        let conn = &self.conns[c];
        let (busy, tpl, sent, received) = (conn.busy, conn.tpl, conn.sent, conn.received);
        if counted {
            let e = &mut self.stats.errors;
            match kind {
                Failure::Connect => e.connect += 1,
                Failure::DriverPorts => e.driver_ports += 1,
                Failure::Timeout => e.timeout += 1,
                Failure::Reset => e.reset += 1,
                Failure::BadResponse => e.bad_response += 1,
            }
            self.pending.errors += 1;
            if busy {
                self.stats.bytes_sent += sent;
                self.stats.bytes_received += received;
                if let Some(k) = self.stats.kinds.get_mut(tpl) {
                    k.requests += 1;
                    k.errors += 1;
                }
                self.pending.requests += 1;
            }
        } else if busy {
            self.stats.warmup_requests += 1;
        }
        if busy {
            self.busy -= 1;
        }
        self.drop_conn(c, true);
        let conn = &mut self.conns[c];
        conn.busy = false;
        conn.retry_at = if matches!(kind, Failure::Connect | Failure::DriverPorts) {
            now + RETRY_PAUSE
        } else {
            now
        };
    }

    fn complete(&mut self, c: usize, m: Metered, now: Instant) {
        let conn = &self.conns[c];
        let (tpl, intended, started, sent) = (conn.tpl, conn.intended, conn.started, conn.sent);
        let received = m.head_bytes + m.body_bytes;
        let expect = self.spec.plan.templates.get(tpl).map_or(200, |t| t.expect);
        let body_sent = self.spec.plan.templates.get(tpl).map_or(0, |t| t.body_len);
        if self.in_window(now) {
            let s = &mut self.stats;
            *s.statuses.entry(m.status).or_default() += 1;
            let ok = m.status == expect;
            if ok {
                s.ok += 1;
            } else {
                s.errors.unexpected_status += 1;
                self.pending.errors += 1;
            }
            let lat = micros(now.saturating_duration_since(intended));
            let svc = micros(now.saturating_duration_since(started));
            s.latency.saturating_record(lat);
            s.service.saturating_record(svc);
            s.bytes_sent += sent;
            s.bytes_received += received;
            s.body_sent += body_sent;
            s.body_received += m.body_bytes;
            if let Some(k) = s.kinds.get_mut(tpl) {
                k.requests += 1;
                k.errors += u64::from(!ok);
                k.latency.saturating_record(lat);
            }
        } else {
            self.stats.warmup_requests += 1;
        }
        self.pending.requests += 1;
        self.pending.bytes += sent + received;
        self.pending
            .latency
            .saturating_record(micros(now.saturating_duration_since(intended)));
        self.busy -= 1;
        let close = m.close || self.conns[c].abandon || self.per_request();
        self.conns[c].busy = false;
        if close {
            let rst = self.per_request() && self.spec.close_rst;
            self.drop_conn(c, rst);
            self.conns[c].retry_at = now;
            if self.per_request() {
                self.list(c);
            }
        } else {
            self.conns[c].phase = Phase::Idle;
            self.list(c);
        }
    }

    fn step_all(&mut self, now: Instant) {
        for c in 0..self.conns.len() {
            self.step(c, now);
        }
    }

    /// Advances connection `c` as far as its socket allows.
    fn step(&mut self, c: usize, now: Instant) {
        for _ in 0..64 {
            let phase = self.conns[c].phase;
            let Some(id) = self.conns[c].id else {
                // Down.
                if now >= self.conns[c].retry_at && !self.conns[c].busy {
                    if self.per_request() {
                        self.list(c);
                    } else {
                        self.open(c, now);
                        continue;
                    }
                }
                return;
            };
            if matches!(
                phase,
                Phase::Connecting | Phase::Head(_) | Phase::Body(_) | Phase::Receiving
            ) && now >= self.conns[c].deadline
            {
                let kind = if phase == Phase::Connecting && !self.conns[c].busy {
                    Failure::Connect
                } else {
                    Failure::Timeout
                };
                self.fail(c, kind, now);
                return;
            }
            match phase {
                Phase::Down | Phase::Idle => return,
                Phase::Connecting => match self.gw.stack().state(id) {
                    State::Established => {
                        if self.conns[c].busy {
                            self.conns[c].phase = Phase::Head(0);
                        } else {
                            self.conns[c].phase = Phase::Idle;
                            self.list(c);
                            return;
                        }
                    }
                    State::SynSent | State::SynReceived => return,
                    _ => {
                        self.fail(c, Failure::Connect, now);
                        return;
                    }
                },
                Phase::Head(off) => {
                    let tpl = self.conns[c].tpl;
                    let plan = Arc::clone(&self.spec.plan);
                    let Some(t) = plan.templates.get(tpl) else {
                        return;
                    };
                    match self.gw.stack().send_slice(id, &t.head[off..]) {
                        Ok(0) => return,
                        Ok(n) => {
                            self.conns[c].sent += n as u64;
                            let off = off + n;
                            self.conns[c].phase = if off < t.head.len() {
                                Phase::Head(off)
                            } else if t.body_len > 0 {
                                Phase::Body(t.body_len)
                            } else {
                                Phase::Receiving
                            };
                        }
                        Err(_) => {
                            self.fail(c, Failure::Reset, now);
                            return;
                        }
                    }
                }
                Phase::Body(left) => {
                    if self.gw.stack().can_recv(id) {
                        // An early answer (an error, say): read it, then close.
                        self.conns[c].abandon = true;
                        self.conns[c].phase = Phase::Receiving;
                        continue;
                    }
                    let r = self.gw.stack().send(id, |buf| {
                        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let mut off = 0;
                        while off < n {
                            let k = (n - off).min(BODY.len());
                            buf[off..off + k].copy_from_slice(&BODY[..k]);
                            off += k;
                        }
                        (n, n)
                    });
                    match r {
                        Ok(0) => return,
                        Ok(n) => {
                            self.conns[c].sent += n as u64;
                            let left = left - n as u64;
                            self.conns[c].phase = if left == 0 {
                                Phase::Receiving
                            } else {
                                Phase::Body(left)
                            };
                        }
                        Err(_) => {
                            self.fail(c, Failure::Reset, now);
                            return;
                        }
                    }
                }
                Phase::Receiving => {
                    let conn = &mut self.conns[c];
                    let meter = &mut conn.meter;
                    let r = self.gw.stack().recv(id, |buf| {
                        let len = buf.len();
                        match meter.feed(buf) {
                            Ok((used, done)) => (used, Ok((len, used, done))),
                            Err(e) => (0, Err(e)),
                        }
                    });
                    match r {
                        Ok(Ok((_, used, Some(m)))) => {
                            self.conns[c].received += used as u64;
                            self.complete(c, m, now);
                            return;
                        }
                        Ok(Ok((len, used, None))) => {
                            self.conns[c].received += used as u64;
                            // Nothing buffered yet (a closed socket reports an error instead).
                            if len == 0 || used == 0 {
                                return;
                            }
                        }
                        Ok(Err(_)) => {
                            self.fail(c, Failure::BadResponse, now);
                            return;
                        }
                        Err(ConnError::Finished) => {
                            match self.conns[c].meter.finish_on_close() {
                                Some(m) => self.complete(c, m, now),
                                None => self.fail(c, Failure::Reset, now),
                            }
                            return;
                        }
                        Err(_) => {
                            self.fail(c, Failure::Reset, now);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn publish(&mut self, ctl: &Control) {
        if let Ok(mut p) = ctl.progress.lock() {
            p.requests += self.pending.requests;
            p.errors += self.pending.errors;
            p.bytes += self.pending.bytes;
            let _ = p.latency.add(&self.pending.latency);
        }
        self.pending.requests = 0;
        self.pending.errors = 0;
        self.pending.bytes = 0;
        self.pending.latency.reset();
    }

    /// Gives requests to idle connections: closed loop, every idle one now; open loop, one per
    /// `interval` that has come due since `next_due` (moved on). `false` once the request budget
    /// is spent (no more will be given).
    fn dispatch(
        &mut self,
        interval: Option<Duration>,
        next_due: &mut Instant,
        now: Instant,
    ) -> bool {
        loop {
            if interval.is_some() && *next_due > now {
                return true;
            }
            let Some(c) = self.take_idle(now) else {
                return true;
            };
            if !self.claim() {
                self.list(c);
                return false;
            }
            match interval {
                Some(iv) => {
                    self.assign(c, *next_due, now);
                    *next_due += iv;
                }
                None => self.assign(c, now, now),
            }
        }
    }

    fn run(mut self, start: Instant, ctl: &Control) -> Outcome {
        // Every thread opens the window at the same instant.
        loop {
            let now = Instant::now();
            if now >= start || ctl.stop.load(Ordering::Relaxed) {
                break;
            }
            let _ = self
                .gw
                .pump(start.saturating_duration_since(now).min(MAX_WAIT));
        }
        self.measure_from = start + self.spec.warmup;
        let end = self.measure_from + self.spec.duration;
        let interval = self
            .spec
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next_due = start;
        let mut cpu_start: Option<u64> = None;
        let mut exhausted = false;
        let mut last_publish = Instant::now();
        let window_end: Instant;
        let mut backlog = 0u64;
        loop {
            let now = Instant::now();
            if cpu_start.is_none() && now >= self.measure_from {
                cpu_start = Some(cpu::this_thread());
            }
            if now >= end || ctl.stop.load(Ordering::Relaxed) {
                window_end = now.min(end);
                if let Some(iv) = interval {
                    if next_due <= now && !exhausted {
                        let overdue = now.saturating_duration_since(next_due);
                        backlog = (overdue.as_secs_f64() / iv.as_secs_f64()) as u64 + 1;
                    }
                }
                break;
            }
            if exhausted && self.busy == 0 {
                window_end = now;
                break;
            }
            if !exhausted {
                exhausted = !self.dispatch(interval, &mut next_due, now);
            }
            self.step_all(now);
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                self.publish(ctl);
                last_publish = now;
            }
            let mut wait = MAX_WAIT.min(end.saturating_duration_since(now));
            if let Some(_iv) = interval {
                if !self.idle.is_empty() && !exhausted {
                    wait = wait.min(next_due.saturating_duration_since(now));
                }
            }
            if self.gw.pump(wait).is_err() {
                window_end = Instant::now().min(end);
                break;
            }
        }
        let cpu_end = cpu::this_thread();
        self.publish(ctl);
        self.stats.cancelled = self.busy as u64 + backlog;
        for c in 0..self.conns.len() {
            self.drop_conn(c, true);
        }
        for _ in 0..5 {
            let _ = self.gw.pump(Duration::from_millis(2));
        }
        Outcome {
            stats: self.stats,
            cpu_ns: cpu_start.map_or(0, |s| cpu_end.saturating_sub(s)),
            gateway: self.gw.stats.clone(),
            wan: self.gw.wan_stats(),
            window: window_end.saturating_duration_since(self.measure_from),
            error: None,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}
