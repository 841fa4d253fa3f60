//! A deterministic two-endpoint network in virtual time.
//!
//! Two [`Endpoint`]s (our [`Conn`], or smoltcp's socket behind an interface, see `smol.rs`)
//! exchange IP packets over two one-way [`Link`]s. A link has a propagation delay, an optional
//! bottleneck rate with a drop-tail queue (in bytes), seeded random loss, duplication and
//! reordering, and a scripted drop predicate ("drop the first transmission of the segment at
//! offset N"). Time only moves from event to event (next arrival, next endpoint timer): no
//! sleeps, no wall clock beyond the one `Instant` that anchors the epoch. Every packet is
//! recorded in a [`Trace`] so tests can assert on what went over the wire.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Ipv4Packet, TcpControl, TcpPacket, TcpRepr};

use super::Rng;
use crate::netstack::tcp::{Config, Conn, Error, wire};

/// Parses a packet for the link's and the trace's bookkeeping, without verifying checksums
/// (the receiving endpoint verifies them; in a debug build the checksum dominates the run time).
fn peek(packet: &[u8]) -> Option<TcpRepr<'_>> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
    TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::ignored()).ok()
}

/// The byte at stream position `i` of the test payload: position-dependent, so a shifted,
/// duplicated or missing byte shows.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8)
}

/// One side of the simulated connection.
pub trait Endpoint {
    /// An IP packet arrives.
    fn ingest(&mut self, now: Instant, packet: &[u8]);
    /// Everything the endpoint wants to send now.
    fn transmit(&mut self, now: Instant, out: &mut Vec<Vec<u8>>);
    /// When the endpoint next needs [`Endpoint::on_timeout`].
    fn next_timeout(&mut self, now: Instant) -> Option<Instant>;
    fn on_timeout(&mut self, now: Instant);
    /// Queues bytes for sending; returns how many were taken.
    fn send(&mut self, data: &[u8]) -> usize;
    /// How many bytes [`Endpoint::send`] would take now.
    fn send_capacity(&mut self) -> usize;
    /// Reads bytes; `None` once the peer finished and everything was read.
    fn recv(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize>;
    fn close(&mut self);
    /// The connection is established (or beyond).
    fn is_established(&self) -> bool;
    /// The connection is completely finished.
    fn is_closed(&self) -> bool;
    /// Our connection, for its stats (not for smoltcp).
    fn conn(&self) -> Option<&Conn> {
        None
    }
}

/// Our connection as an endpoint: a client, or a server that accepts the first SYN.
pub struct OurEnd {
    pub cfg: Config,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub conn: Option<Conn>,
    pub isn: u32,
    buf: Vec<u8>,
}

impl OurEnd {
    pub fn client(
        cfg: Config,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        isn: u32,
    ) -> Self {
        let conn = Conn::connect(&cfg, now, local, remote, isn);
        Self {
            buf: vec![0; cfg.mtu],
            cfg,
            local,
            remote,
            conn: Some(conn),
            isn,
        }
    }

    pub fn server(cfg: Config, local: SocketAddr, remote: SocketAddr, isn: u32) -> Self {
        Self {
            buf: vec![0; cfg.mtu],
            cfg,
            local,
            remote,
            conn: None,
            isn,
        }
    }
}

impl Endpoint for OurEnd {
    fn ingest(&mut self, now: Instant, packet: &[u8]) {
        let Ok(seg) = wire::parse(packet) else { return };
        if seg.dst != self.local || seg.src != self.remote {
            return;
        }
        match &mut self.conn {
            Some(c) => c.handle_segment(now, &seg.repr),
            None => {
                self.conn =
                    Conn::accept(&self.cfg, now, self.local, self.remote, &seg.repr, self.isn);
            }
        }
    }

    fn transmit(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let Some(c) = &mut self.conn else { return };
        while let Some(n) = c.poll_transmit(now, &mut self.buf) {
            out.push(self.buf[..n].to_vec());
        }
    }

    fn next_timeout(&mut self, _now: Instant) -> Option<Instant> {
        self.conn.as_ref()?.poll_timeout()
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(c) = &mut self.conn {
            c.on_timeout(now);
        }
    }

    fn send(&mut self, data: &[u8]) -> usize {
        self.conn
            .as_mut()
            .and_then(|c| c.send(data).ok())
            .unwrap_or(0)
    }

    fn send_capacity(&mut self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.send_capacity())
    }

    fn recv(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self.conn.as_mut().map(|c| c.recv(now, buf)) {
            None => Some(0),
            Some(Ok(n)) => Some(n),
            Some(Err(Error::Finished)) => None,
            Some(Err(e)) => panic!("recv failed: {e}"),
        }
    }

    fn close(&mut self) {
        if let Some(c) = &mut self.conn {
            c.close();
        }
    }

    fn is_established(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| {
            !matches!(
                c.state(),
                crate::netstack::tcp::State::SynSent | crate::netstack::tcp::State::SynReceived
            )
        })
    }

    fn is_closed(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.is_closed())
    }

    fn conn(&self) -> Option<&Conn> {
        self.conn.as_ref()
    }
}

/// What a scripted drop predicate sees of a packet about to enter a link.
#[derive(Debug, Clone, Copy)]
pub struct Offered {
    /// Sequence offset of the first payload byte (0 = first byte after the SYN).
    pub offset: i64,
    /// Payload bytes.
    pub len: usize,
    /// This exact stretch was offered before (a retransmission).
    pub again: bool,
    /// Among first transmissions of data segments, this one's index (0-based).
    pub data_index: u64,
    pub syn: bool,
    pub fin: bool,
}

/// Decides whether to drop a packet offered to a link.
pub type DropFn = Box<dyn FnMut(&Offered) -> bool>;

/// A link's impairments.
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Bottleneck rate, bytes per second (`None`: unlimited).
    pub rate: Option<u64>,
    /// Bytes the bottleneck queue holds; arrivals beyond are dropped.
    pub queue: usize,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is duplicated.
    pub duplicate: f64,
    /// Probability a packet is held back by `reorder_delay`.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// A receiving host that works in bursts (a busy CPU, GRO, wireguard-go's batches): when
    /// non-zero, packets are handed over only when that host wakes up, at random intervals of
    /// 0 to 2 × `batch` (seeded), so the far end reads and acknowledges in clumps and RTT
    /// samples range from the path's to the path's plus a few `batch`es. Zero: each packet on
    /// arrival.
    pub batch: Duration,
    /// A stall `(from, until)`, since the start: what is offered in between arrives no earlier
    /// than `until` plus the delay, in order (a relay or host that stopped forwarding a while).
    pub hold: Option<(Duration, Duration)>,
    /// Scripted drops.
    pub drop: Option<DropFn>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(1),
            rate: None,
            queue: usize::MAX,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            batch: Duration::ZERO,
            hold: None,
            drop: None,
        }
    }
}

/// Counters of one link.
#[derive(Debug, Clone, Default)]
pub struct LinkStats {
    pub offered: u64,
    pub delivered: u64,
    pub lost: u64,
    pub scripted: u64,
    pub queue_drops: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Largest backlog of the bottleneck queue, bytes (the packet that arrived included).
    pub max_backlog: usize,
}

struct Link {
    cfg: LinkConfig,
    /// The receiving host's latest wake-up (see [`LinkConfig::batch`]).
    wake: Instant,
    rng: Rng,
    busy_until: Instant,
    epoch: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    counter: u64,
    isn: Option<u32>,
    seen: std::collections::HashSet<(i64, usize)>,
    first_data: u64,
    stats: LinkStats,
}

impl Link {
    fn new(cfg: LinkConfig, seed: u64, epoch: Instant) -> Self {
        Self {
            cfg,
            wake: epoch,
            rng: Rng::new(seed),
            busy_until: epoch,
            epoch,
            queue: BinaryHeap::new(),
            counter: 0,
            isn: None,
            seen: Default::default(),
            first_data: 0,
            stats: LinkStats::default(),
        }
    }

    /// Returns whether the packet was dropped.
    fn offer(&mut self, now: Instant, pkt: Vec<u8>) -> bool {
        self.stats.offered += 1;
        if let Some(repr) = peek(&pkt) {
            if repr.control == TcpControl::Syn {
                self.isn = Some(repr.seq_number.0 as u32);
            }
            let offset = match self.isn {
                Some(isn) => {
                    i64::from((repr.seq_number.0 as u32).wrapping_sub(isn.wrapping_add(1)) as i32)
                }
                None => 0,
            };
            let len = repr.payload.len();
            let again = len > 0 && !self.seen.insert((offset, len));
            let data_index = self.first_data;
            if len > 0 && !again {
                self.first_data += 1;
            }
            let offered = Offered {
                offset,
                len,
                again,
                data_index,
                syn: repr.control == TcpControl::Syn,
                fin: repr.control == TcpControl::Fin,
            };
            if let Some(f) = &mut self.cfg.drop {
                if f(&offered) {
                    self.stats.scripted += 1;
                    return true;
                }
            }
        }
        if self.rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            return true;
        }
        let depart = match self.cfg.rate {
            Some(rate) => {
                let start = self.busy_until.max(now);
                let backlog = start.saturating_duration_since(now).as_secs_f64() * rate as f64;
                if backlog as usize + pkt.len() > self.cfg.queue {
                    self.stats.queue_drops += 1;
                    return true;
                }
                self.stats.max_backlog = self.stats.max_backlog.max(backlog as usize + pkt.len());
                self.busy_until = start + Duration::from_secs_f64(pkt.len() as f64 / rate as f64);
                self.busy_until
            }
            None => now,
        };
        let mut arrive = depart + self.cfg.delay;
        if let Some((from, until)) = self.cfg.hold {
            if (from..until).contains(&now.saturating_duration_since(self.epoch)) {
                arrive = arrive.max(self.epoch + until + self.cfg.delay);
            }
        }
        if self.rng.chance(self.cfg.reorder) {
            arrive += self.cfg.reorder_delay;
            self.stats.reordered += 1;
        }
        if !self.cfg.batch.is_zero() {
            while self.wake < arrive {
                let gap = 2.0 * self.cfg.batch.as_secs_f64() * self.rng.unit();
                self.wake += Duration::from_secs_f64(gap).max(Duration::from_micros(1));
            }
            arrive = self.wake;
        }
        if self.rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            self.counter += 1;
            self.queue.push(Reverse((
                arrive + Duration::from_micros(1),
                self.counter,
                pkt.clone(),
            )));
        }
        self.counter += 1;
        self.queue.push(Reverse((arrive, self.counter, pkt)));
        false
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_arrival()? <= now {
            self.stats.delivered += 1;
            self.queue.pop().map(|Reverse((_, _, p))| p)
        } else {
            None
        }
    }
}

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// One packet as seen on the wire.
#[derive(Debug, Clone)]
pub struct TraceEntry {
    /// Virtual time since the start.
    pub at: Duration,
    pub from: Side,
    /// Sent (offered to the link) or arrived at the other side.
    pub arrived: bool,
    pub dropped: bool,
    /// Sequence offset of the segment (from the sender's ISN + 1), payload length, FIN.
    pub offset: i64,
    pub len: usize,
    pub fin: bool,
    pub syn: bool,
    pub rst: bool,
    /// Acknowledged offset of the other direction, if ACK set.
    pub ack: Option<i64>,
    /// SACK blocks as offsets of the other direction.
    pub sacks: Vec<(i64, i64)>,
}

/// Every packet, in order.
#[derive(Debug, Default)]
pub struct Trace {
    pub entries: Vec<TraceEntry>,
    isn: [Option<u32>; 2],
}

impl Trace {
    fn record(&mut self, at: Duration, from: Side, arrived: bool, dropped: bool, pkt: &[u8]) {
        let Some(r) = peek(pkt) else { return };
        let r = &r;
        let me = from as usize;
        let other = 1 - me;
        if r.control == TcpControl::Syn {
            self.isn[me] = Some(r.seq_number.0 as u32);
        }
        let rel = |isn: Option<u32>, seq: u32| -> i64 {
            isn.map_or(0, |i| i64::from(seq.wrapping_sub(i.wrapping_add(1)) as i32))
        };
        self.entries.push(TraceEntry {
            at,
            from,
            arrived,
            dropped,
            offset: rel(self.isn[me], r.seq_number.0 as u32),
            len: r.payload.len(),
            fin: r.control == TcpControl::Fin,
            syn: r.control == TcpControl::Syn,
            rst: r.control == TcpControl::Rst,
            ack: r.ack_number.map(|a| rel(self.isn[other], a.0 as u32)),
            sacks: r
                .sack_ranges
                .iter()
                .flatten()
                .map(|&(l, h)| (rel(self.isn[other], l), rel(self.isn[other], h)))
                .collect(),
        });
    }

    /// Data segments `from` sent (offered), in order.
    pub fn data_sent(&self, from: Side) -> impl Iterator<Item = &TraceEntry> {
        self.entries
            .iter()
            .filter(move |e| e.from == from && !e.arrived && e.len > 0)
    }
}

/// The two endpoints, the links, the clock.
pub struct Sim {
    pub epoch: Instant,
    pub now: Instant,
    pub a: Box<dyn Endpoint>,
    pub b: Box<dyn Endpoint>,
    ab: Link,
    ba: Link,
    pub trace: Trace,
    pub tracing: bool,
    /// Events at which A's own timer was due and no packet reached A: the wake-ups a runtime
    /// pays for A's timers alone (a pacer that wakes per segment shows here).
    pub a_timer_wakes: u64,
    out: Vec<Vec<u8>>,
}

/// Addresses the simulated endpoints use.
pub fn addr(side: Side, port: u16) -> SocketAddr {
    let ip: IpAddr = match side {
        Side::A => [10, 9, 0, 1].into(),
        Side::B => [10, 9, 0, 2].into(),
    };
    SocketAddr::new(ip, port)
}

impl Sim {
    pub fn new(
        epoch: Instant,
        a: Box<dyn Endpoint>,
        b: Box<dyn Endpoint>,
        ab: LinkConfig,
        ba: LinkConfig,
        seed: u64,
    ) -> Self {
        Self {
            epoch,
            now: epoch,
            a,
            b,
            ab: Link::new(ab, seed, epoch),
            ba: Link::new(ba, seed ^ 0xabcd_ef01, epoch),
            trace: Trace::default(),
            tracing: true,
            a_timer_wakes: 0,
            out: Vec::new(),
        }
    }

    /// smoltcp's socket (today's broker) sending from A to our server on B.
    pub fn smol_to_ours(cfg: &Config, ab: LinkConfig, ba: LinkConfig, seed: u64) -> Self {
        let epoch = Instant::now();
        let a =
            super::smol::SmolEnd::client(epoch, addr(Side::A, 40000), addr(Side::B, 80), 256 << 10);
        let b = OurEnd::server(
            cfg.clone(),
            addr(Side::B, 80),
            addr(Side::A, 40000),
            0x7000_0000,
        );
        Self::new(epoch, Box::new(a), Box::new(b), ab, ba, seed)
    }

    /// Our client on A talking to our server on B, with `cfg` on both ends.
    pub fn ours(cfg: &Config, ab: LinkConfig, ba: LinkConfig, seed: u64) -> Self {
        Self::ours_with(cfg, cfg, ab, ba, seed)
    }

    /// [`Sim::ours`] with a configuration per side: A (the client, `a_cfg`) and B (`b_cfg`).
    pub fn ours_with(
        a_cfg: &Config,
        b_cfg: &Config,
        ab: LinkConfig,
        ba: LinkConfig,
        seed: u64,
    ) -> Self {
        let epoch = Instant::now();
        let a = OurEnd::client(
            a_cfg.clone(),
            epoch,
            addr(Side::A, 40000),
            addr(Side::B, 80),
            0x1000_0000,
        );
        let b = OurEnd::server(
            b_cfg.clone(),
            addr(Side::B, 80),
            addr(Side::A, 40000),
            0x7000_0000,
        );
        Self::new(epoch, Box::new(a), Box::new(b), ab, ba, seed)
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Starts the link's counters afresh (to measure a steady state).
    pub fn reset_link_stats(&mut self, from: Side) {
        match from {
            Side::A => self.ab.stats = LinkStats::default(),
            Side::B => self.ba.stats = LinkStats::default(),
        }
    }

    pub fn link_stats(&self, from: Side) -> &LinkStats {
        match from {
            Side::A => &self.ab.stats,
            Side::B => &self.ba.stats,
        }
    }

    /// One event: deliver what is due, run due timers, let both sides send.
    fn settle(&mut self) {
        let now = self.now;
        let at = self.elapsed();
        while let Some(p) = self.ab.pop_due(now) {
            if self.tracing {
                self.trace.record(at, Side::A, true, false, &p);
            }
            self.b.ingest(now, &p);
        }
        let mut a_got_packets = false;
        while let Some(p) = self.ba.pop_due(now) {
            if self.tracing {
                self.trace.record(at, Side::B, true, false, &p);
            }
            self.a.ingest(now, &p);
            a_got_packets = true;
        }
        if self.a.next_timeout(now).is_some_and(|t| t <= now) {
            self.a.on_timeout(now);
            if !a_got_packets {
                self.a_timer_wakes += 1;
            }
        }
        if self.b.next_timeout(now).is_some_and(|t| t <= now) {
            self.b.on_timeout(now);
        }
        self.flush();
    }

    /// Lets both sides send what they have (after an application call, too).
    pub fn flush(&mut self) {
        let now = self.now;
        let at = self.elapsed();
        for side in [Side::A, Side::B] {
            let mut out = std::mem::take(&mut self.out);
            let (ep, link) = match side {
                Side::A => (&mut self.a, &mut self.ab),
                Side::B => (&mut self.b, &mut self.ba),
            };
            ep.transmit(now, &mut out);
            for p in out.drain(..) {
                let rec = if self.tracing { Some(p.clone()) } else { None };
                let dropped = link.offer(now, p);
                if let Some(p) = rec {
                    self.trace.record(at, side, false, dropped, &p);
                }
            }
            self.out = out;
        }
    }

    /// The next event time, if anything is scheduled.
    fn next_event(&mut self) -> Option<Instant> {
        let now = self.now;
        [
            self.ab.next_arrival(),
            self.ba.next_arrival(),
            self.a.next_timeout(now),
            self.b.next_timeout(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs until `app` (the application, called after every event) returns true, or `limit`
    /// of virtual time passes. Returns whether `app` said done.
    pub fn run(&mut self, limit: Duration, mut app: impl FnMut(&mut Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        let mut same_time = 0u32;
        loop {
            self.settle();
            let done = app(self);
            self.flush();
            if done {
                return true;
            }
            let Some(next) = self.next_event() else {
                return false;
            };
            if next > deadline {
                self.now = deadline;
                return false;
            }
            if next <= self.now {
                same_time += 1;
                assert!(
                    same_time < 100_000,
                    "a timer does not advance at {:?}",
                    self.elapsed()
                );
            } else {
                same_time = 0;
                self.now = next;
            }
        }
    }
}

/// A one-way bulk transfer: A writes `total` bytes of [`pattern`] and closes; B reads and
/// checks every byte.
#[derive(Debug, Default, Clone)]
pub struct Transfer {
    pub total: u64,
    pub written: u64,
    pub read: u64,
    pub finished: bool,
    pub closed: bool,
    /// When B had read everything.
    pub done_at: Option<Duration>,
    /// Don't close after writing (keep the connection open).
    pub keep_open: bool,
}

impl Transfer {
    pub fn new(total: u64) -> Self {
        Self {
            total,
            ..Self::default()
        }
    }

    /// The application step: write what fits, read what arrived.
    pub fn step(&mut self, sim: &mut Sim) {
        let mut chunk = [0u8; 16 * 1024];
        while self.written < self.total && sim.a.is_established() {
            let n = (self.total - self.written)
                .min(chunk.len() as u64)
                .min(sim.a.send_capacity() as u64) as usize;
            if n == 0 {
                break;
            }
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(self.written + i as u64);
            }
            let took = sim.a.send(&chunk[..n]);
            self.written += took as u64;
            if took < n {
                break;
            }
        }
        if self.written == self.total && !self.closed && !self.keep_open {
            sim.a.close();
            self.closed = true;
        }
        let now = sim.now;
        loop {
            match sim.b.recv(now, &mut chunk) {
                Some(0) => break,
                Some(n) => {
                    for (i, &b) in chunk[..n].iter().enumerate() {
                        let pos = self.read + i as u64;
                        assert_eq!(b, pattern(pos), "byte {pos} differs");
                    }
                    self.read += n as u64;
                    if self.read == self.total && self.done_at.is_none() {
                        self.done_at = Some(sim.elapsed());
                    }
                }
                None => {
                    if !self.finished {
                        // The reader answers the writer's FIN with its own.
                        sim.b.close();
                    }
                    self.finished = true;
                    break;
                }
            }
        }
        assert!(self.read <= self.total, "more bytes than were sent");
    }
}
