//! One partition of a shard's connections: a slab of [`Conn`]s, the 4-tuple map that finds them,
//! a timer heap, and the bookkeeping that turns sans-IO connections into accept/reap semantics.
//!
//! Every live connection has an [`Entry`] saying what it is for:
//! * **handshake** — opened by an inbound SYN, in `SYN-RECEIVED`;
//! * **accepted** — a handshake that completed; its [`ConnId`] went to the accept queue;
//! * **client** — opened by [`Stack::open_client`].
//!
//! There are no listening sockets: a SYN to the listen port makes a connection in
//! `SYN-RECEIVED` (while the stack is below `max_sockets` and holds fewer than `backlog`
//! half-open handshakes), a segment for no connection is answered with the reset RFC 9293
//! prescribes.
//!
//! Invariants:
//! * `tuples` maps the 4-tuple of every live entry to its slot, and only those.
//! * A slot is emptied only through [`Stack::remove`]: its connection finished (closed in order
//!   and out of `TIME-WAIT`, reset, timed out, aborted after its RST went), or a new SYN recycled
//!   it from `TIME-WAIT`. Its generation changes with every new occupant, so a stale [`ConnId`]
//!   never reaches the next connection.
//! * **Nothing waits without a wake-up, nothing wakes for nothing.** A slot whose connection may
//!   have something to send or a state change to settle is in `ready` (once); a connection with
//!   a deadline has exactly one entry in `timers`, at that deadline (`Entry::timer` names it, so
//!   moving it is a remove and an insert). [`Stack::delay`] is therefore exact: the runtime
//!   sleeps until the earliest real deadline.
//! * **What a burst made is given back.** Connections allocate their buffers as data arrives
//!   and free them as they drain (see [`tcp`](super::tcp)); [`Stack::trim`] shrinks the slab
//!   and the maps of a stack that went quiet.
//!
//! Cost: a segment costs one hash lookup and the connection's own work; only connections that
//! were touched are visited after a poll. (The smoltcp stacks this replaces walked every socket
//! per packet, which is why a shard had many small stacks; the partition is kept because the
//! tunnel core's flow hash names it, and it bounds the work of one poll.)

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::task::Waker;
use std::time::Instant;

use smoltcp::wire::TcpRepr;

use super::tcp::{self, Conn, State, wire};
use super::{ConnError, ConnectError, Counters};
use crate::packet::{BufPool, PacketBuf};

/// A connection across a shard's stack set: which stack, which slot, which incarnation.
///
/// Ids are cheap to copy and never alias: after the connection is reaped every call with its id
/// returns [`ConnError::Gone`], even when the slot already serves a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    stack: u16,
    slot: u32,
    generation: u32,
}

impl ConnId {
    /// Index of the stack (within the shard) that owns the connection.
    pub fn stack(&self) -> usize {
        usize::from(self.stack)
    }

    /// Slot of the connection within its stack.
    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }
}

/// Connection counts and table sizes of one stack (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Every live connection: handshakes, accepted and client connections, `TIME-WAIT`.
    pub sockets: usize,
    /// Handshakes in progress (`SYN-RECEIVED`).
    pub handshakes: usize,
    /// Accepted and client connections, `TIME-WAIT` included.
    pub connections: usize,
    /// Connections in `TIME-WAIT`.
    pub time_wait: usize,
    /// Slots of the connection slab, empty ones included: the most connections the stack held
    /// at once since it was made or last trimmed.
    pub slots: usize,
    /// Entries the 4-tuple map has room for without growing.
    pub table_capacity: usize,
    /// Bytes the connections' send and receive buffers hold.
    pub buffer_bytes: usize,
    /// Connections made since the stack was made.
    pub built: u64,
}

/// The 4-tuple of a connection as seen from the broker (the local address is always ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tuple {
    pub remote: SocketAddr,
    pub local_port: u16,
}

/// A packet waiting in a stack's ingress queue, with what the demultiplexer learnt about it.
#[derive(Debug)]
pub(crate) struct Ingress {
    pub buf: PacketBuf,
    pub tuple: Tuple,
    /// SYN without ACK/RST: may open a connection.
    pub syn: bool,
}

/// The shard's queues one stack poll works with.
pub(crate) struct Io<'a> {
    /// Ingress buffers done with, to be sent home.
    pub spent: &'a mut Vec<PacketBuf>,
    /// Egress packets for the tunnel core.
    pub tx: &'a mut VecDeque<PacketBuf>,
    /// Buffers for egress packets (hold the MTU).
    pub pool: &'a mut BufPool,
    pub counters: &'a mut Counters,
    /// Egress packets queued before connections are told to wait.
    pub tx_limit: usize,
    /// Completed handshakes for [`StackSet::accept`](super::StackSet::accept).
    pub accepted: &'a mut VecDeque<ConnId>,
}

impl Io<'_> {
    /// Writes one control segment (a reset) from `local` to `remote`; `false` if the egress
    /// queue is full (the segment is then not sent, as a router would drop it).
    fn emit(&mut self, local: SocketAddr, remote: SocketAddr, repr: &TcpRepr<'_>) -> bool {
        if self.tx.len() >= self.tx_limit {
            self.counters.tx_queue_full += 1;
            return false;
        }
        let mut buf = self.pool.take();
        match wire::emit(buf.space(), local.ip(), remote.ip(), 64, repr, (&[], &[])) {
            Some(n) => {
                buf.set_len(n);
                self.tx.push_back(buf);
                self.counters.packets_out += 1;
                true
            }
            None => {
                self.pool.give(buf);
                self.counters.drop_tx_buffer_small += 1;
                false
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Handshake,
    Accepted,
    Client,
}

/// A live connection and what the stack knows about it.
struct Entry {
    conn: Conn,
    role: Role,
    tuple: Tuple,
    /// In the stack's `ready` list.
    ready: bool,
    /// The deadline this entry has in the stack's `timers` (its connection's next timeout).
    timer: Option<Instant>,
    /// Counted in `TIME-WAIT`.
    time_wait_seen: bool,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    entry: Option<Box<Entry>>,
}

/// What a connection looked like before an input, to decide whom to wake.
#[derive(Clone, Copy)]
struct Before {
    state: State,
    recv_queue: usize,
    send_queue: usize,
}

impl Before {
    fn of(c: &Conn) -> Self {
        Self {
            state: c.state(),
            recv_queue: c.recv_queue(),
            send_queue: c.send_queue(),
        }
    }
}

/// Wakes the tasks an input may let make progress: the reader on new data or a state change,
/// the writer on freed send buffer or a state change.
fn wake_after(e: &mut Entry, before: Before) {
    let state_changed = e.conn.state() != before.state;
    if state_changed || e.conn.recv_queue() > before.recv_queue {
        if let Some(w) = e.recv_waker.take() {
            w.wake();
        }
    }
    if state_changed || e.conn.send_queue() < before.send_queue {
        if let Some(w) = e.send_waker.take() {
            w.wake();
        }
    }
}

/// Settings every connection of the stack shares.
#[derive(Debug, Clone)]
pub(crate) struct StackOptions {
    pub address: std::net::IpAddr,
    pub listen_port: u16,
    /// Most half-open (`SYN-RECEIVED`) handshakes; SYNs beyond are dropped.
    pub backlog: usize,
    /// Most live connections of any kind; SYNs beyond are answered with RST.
    pub max_sockets: usize,
    /// Per-connection TCP settings.
    pub tcp: tcp::Config,
    /// Origin of the initial sequence numbers' clock component.
    pub epoch: Instant,
}

/// One partition of a shard's connections. See the module docs.
pub(crate) struct Stack {
    index: u16,
    slots: Vec<Slot>,
    free: Vec<u32>,
    tuples: HashMap<Tuple, u32>,
    /// Ingress packets demultiplexed to this stack, not yet processed.
    pub rx: VecDeque<Ingress>,
    /// Slots to transmit from and settle on the next poll.
    ready: Vec<u32>,
    /// (deadline, slot) of every connection that has a deadline, earliest first.
    timers: BTreeSet<(Instant, u32)>,
    live: usize,
    handshakes: usize,
    time_wait: usize,
    next_generation: u32,
    built: u64,
    /// Polled since the last [`Stack::trim`].
    busy: bool,
    /// Key of the initial sequence numbers' hash (RFC 6528).
    isn_key: u64,
    opts: StackOptions,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("index", &self.index)
            .field("stats", &self.stats())
            .field("rx_queued", &self.rx.len())
            .field("ready", &self.ready.len())
            .field("next_timer", &self.timers.first().map(|t| t.0))
            .finish_non_exhaustive()
    }
}

/// Packets one connection may write per poll. A connection's window on a LAN path grows to
/// megabytes (CUBIC sees no loss there), and the egress queue (4096 packets) is shared by every
/// connection of the shard: without a turn limit the connection polled first refilled it on
/// every poll while the others waited — in `perf/compare.sh` four 10 MiB downloads had a p50
/// of 0.17 s and a p99 of 2.5-3.5 s (one connection starved for most of the run), with no more
/// than eleven retransmissions in the whole run. 64 packets (about 90 kB) per turn is a fair
/// share that still lets one connection alone fill the queue within a poll or two.
pub(crate) const TX_QUANTUM: usize = 64;

/// How a connection's turn at the egress queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// It wrote everything it had.
    All,
    /// It used its quantum and may have more.
    Quantum,
    /// The egress queue filled.
    QueueFull,
}

/// splitmix64 finaliser: the keyed hash behind initial sequence numbers and port choice.
pub(crate) fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Stack {
    /// Replaces the per-connection TCP settings: connections opened from now on take them,
    /// open ones keep theirs.
    pub fn set_tcp(&mut self, tcp: tcp::Config) {
        self.opts.tcp = tcp;
    }

    /// The per-connection TCP settings new connections take.
    pub fn tcp(&self) -> &tcp::Config {
        &self.opts.tcp
    }

    /// An empty stack.
    pub fn new(index: u16, opts: StackOptions, seed: u64) -> Self {
        Self {
            index,
            slots: Vec::new(),
            free: Vec::new(),
            tuples: HashMap::new(),
            rx: VecDeque::new(),
            ready: Vec::new(),
            timers: BTreeSet::new(),
            live: 0,
            handshakes: 0,
            time_wait: 0,
            next_generation: 0,
            built: 0,
            busy: false,
            isn_key: seed,
            opts,
        }
    }

    /// Whether another connection fits under `max_sockets`.
    pub fn has_room(&self) -> bool {
        self.live < self.opts.max_sockets
    }

    /// Whether a connection with this tuple exists here.
    pub fn knows(&self, tuple: &Tuple) -> bool {
        self.tuples.contains_key(tuple)
    }

    /// Whether [`Stack::poll`] has anything to do at `now`.
    pub fn wants_poll(&self, now: Instant) -> bool {
        !self.ready.is_empty()
            || !self.rx.is_empty()
            || self.timers.first().is_some_and(|t| t.0 <= now)
    }

    /// Time until this stack needs a poll; `None` when only a packet or a call can give it work.
    pub fn delay(&self, now: Instant) -> Option<std::time::Duration> {
        if !self.ready.is_empty() || !self.rx.is_empty() {
            return Some(std::time::Duration::ZERO);
        }
        self.timers
            .first()
            .map(|t| t.0.saturating_duration_since(now))
    }

    pub fn stats(&self) -> StackStats {
        let buffer_bytes = self
            .slots
            .iter()
            .filter_map(|s| s.entry.as_ref())
            .map(|e| e.conn.buffer_memory())
            .sum();
        StackStats {
            sockets: self.live,
            handshakes: self.handshakes,
            connections: self.live - self.handshakes,
            time_wait: self.time_wait,
            slots: self.slots.len(),
            table_capacity: self.tuples.capacity(),
            buffer_bytes,
            built: self.built,
        }
    }

    /// Stops accepting: later SYNs are answered with RST. Established connections are untouched.
    pub fn stop_accepting(&mut self) {
        self.opts.backlog = 0;
    }

    /// RFC 6528: a clock (4 µs ticks) plus a keyed hash of the tuple, so sequence numbers of
    /// successive connections on one tuple increase and are not guessable without the key.
    fn isn(&self, now: Instant, tuple: &Tuple) -> u32 {
        let ticks = now.saturating_duration_since(self.opts.epoch).as_micros() / 4;
        let mut h = mix(self.isn_key, u64::from(tuple.local_port));
        h = mix(h, u64::from(tuple.remote.port()));
        match tuple.remote.ip() {
            std::net::IpAddr::V4(a) => h = mix(h, u64::from(u32::from(a))),
            std::net::IpAddr::V6(a) => {
                let v = u128::from(a);
                h = mix(mix(h, v as u64), (v >> 64) as u64);
            }
        }
        (ticks as u32).wrapping_add(h as u32)
    }

    fn local(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.opts.address, port)
    }

    /// Puts `conn` in a free slot; returns its id.
    fn insert(&mut self, conn: Conn, role: Role, tuple: Tuple) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = generation;
        s.entry = Some(Box::new(Entry {
            conn,
            role,
            tuple,
            ready: false,
            timer: None,
            time_wait_seen: false,
            recv_waker: None,
            send_waker: None,
        }));
        self.tuples.insert(tuple, slot);
        self.live += 1;
        self.built += 1;
        if role == Role::Handshake {
            self.handshakes += 1;
        }
        self.mark_ready(slot);
        ConnId {
            stack: self.index,
            slot,
            generation,
        }
    }

    fn entry(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_deref_mut()
    }

    /// Queues `slot` for the next poll's transmit and settle pass.
    pub fn mark_ready(&mut self, slot: u32) {
        if let Some(e) = self.entry(slot) {
            if !e.ready {
                e.ready = true;
                self.ready.push(slot);
            }
        }
    }

    /// Empties a slot: forgets the tuple, wakes the tasks (their next call sees `Gone`), adds the
    /// connection's counters to the shard's.
    fn remove(&mut self, slot: u32, counters: &mut Counters) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(mut e) = s.entry.take() else {
            return;
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        s.generation = self.next_generation;
        self.free.push(slot);
        self.tuples.remove(&e.tuple);
        if let Some(at) = e.timer {
            self.timers.remove(&(at, slot));
        }
        self.live -= 1;
        if e.role == Role::Handshake {
            self.handshakes -= 1;
        }
        if e.time_wait_seen {
            self.time_wait -= 1;
        }
        counters.reaped += 1;
        counters.add_connection(&e.conn.stats());
        for w in [e.recv_waker.take(), e.send_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }

    /// One ingress packet: to its connection, to a new connection (SYN), or answered with RST.
    fn input(&mut self, now: Instant, packet: Ingress, io: &mut Io<'_>) {
        let Ingress { buf, tuple, syn } = packet;
        match wire::parse(buf.as_slice()) {
            Err(_) => io.counters.drop_bad_segment += 1,
            Ok(seg) => self.dispatch(now, tuple, syn, &seg.repr, io),
        }
        io.spent.push(buf);
    }

    fn dispatch(
        &mut self,
        now: Instant,
        tuple: Tuple,
        syn: bool,
        repr: &TcpRepr<'_>,
        io: &mut Io<'_>,
    ) {
        if let Some(&slot) = self.tuples.get(&tuple) {
            let recycle = syn
                && self
                    .entry(slot)
                    .is_some_and(|e| e.conn.state() == State::TimeWait);
            if !recycle {
                if syn {
                    io.counters.drop_duplicate_syn += 1;
                }
                if let Some(e) = self.entry(slot) {
                    let before = Before::of(&e.conn);
                    e.conn.handle_segment(now, repr);
                    wake_after(e, before);
                }
                self.mark_ready(slot);
                return;
            }
            // RFC 6191's case without its timestamp check: the old incarnation is done (its
            // FIN was acknowledged), and the new SYN gets a fresh connection.
            io.counters.time_wait_recycled += 1;
            self.remove(slot, io.counters);
        }
        let (local, remote) = (self.local(tuple.local_port), tuple.remote);
        if syn && tuple.local_port == self.opts.listen_port {
            if !self.has_room() || self.opts.backlog == 0 {
                io.counters.syn_reset_full += 1;
            } else if self.handshakes >= self.opts.backlog {
                // Like a full SYN queue: drop, the peer retransmits its SYN.
                io.counters.syn_backlog_full += 1;
                return;
            } else {
                let isn = self.isn(now, &tuple);
                if let Some(conn) = Conn::accept(&self.opts.tcp, now, local, remote, repr, isn) {
                    self.insert(conn, Role::Handshake, tuple);
                    return;
                }
            }
        } else {
            io.counters.stray_segments += 1;
        }
        if let Some(rst) = wire::reset_for(repr) {
            io.emit(local, remote, &rst);
        }
    }

    /// Runs the timers that are due.
    fn run_timers(&mut self, now: Instant) {
        while let Some(&(at, slot)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(e) = self.entry(slot) else {
                continue;
            };
            e.timer = None;
            let before = Before::of(&e.conn);
            e.conn.on_timeout(now);
            wake_after(e, before);
            self.mark_ready(slot);
        }
    }

    /// Lets the connection in `slot` write up to [`TX_QUANTUM`] packets.
    fn transmit(&mut self, now: Instant, slot: u32, io: &mut Io<'_>) -> Sent {
        let Some(e) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.entry.as_deref_mut())
        else {
            return Sent::All;
        };
        let mut sent = 0;
        loop {
            if io.tx.len() >= io.tx_limit {
                io.counters.tx_queue_full += 1;
                return Sent::QueueFull;
            }
            if sent >= TX_QUANTUM {
                return Sent::Quantum;
            }
            let mut buf = io.pool.take();
            if buf.capacity() < self.opts.tcp.mtu {
                // A pool built for a smaller MTU: the connection holds back what does not fit
                // and the misconfiguration shows as a climbing counter.
                io.counters.drop_tx_buffer_small += 1;
            }
            match e.conn.poll_transmit(now, buf.space()) {
                Some(n) => {
                    buf.set_len(n);
                    io.tx.push_back(buf);
                    io.counters.packets_out += 1;
                    sent += 1;
                }
                None => {
                    io.pool.give(buf);
                    return Sent::All;
                }
            }
        }
    }

    /// After a connection transmitted: promote a completed handshake, count `TIME-WAIT`, reap a
    /// finished connection, re-arm its timer.
    fn settle(&mut self, slot: u32, io: &mut Io<'_>) {
        let index = self.index;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = s.generation;
        let Some(e) = s.entry.as_deref_mut() else {
            return;
        };
        e.ready = false;
        if e.conn.is_closed() {
            self.remove(slot, io.counters);
            return;
        }
        let state = e.conn.state();
        if e.role == Role::Handshake && !matches!(state, State::SynReceived | State::Closed) {
            e.role = Role::Accepted;
            self.handshakes -= 1;
            io.accepted.push_back(ConnId {
                stack: index,
                slot,
                generation,
            });
            io.counters.accepted += 1;
        }
        if state == State::TimeWait && !e.time_wait_seen {
            e.time_wait_seen = true;
            self.time_wait += 1;
            io.counters.time_wait += 1;
        }
        let at = e.conn.poll_timeout();
        if at != e.timer {
            if let Some(old) = e.timer {
                self.timers.remove(&(old, slot));
            }
            if let Some(new) = at {
                self.timers.insert((new, slot));
            }
            e.timer = at;
        }
    }

    /// Processes the queued ingress packets, runs due timers, then lets every touched
    /// connection transmit and settles it. Returns whether any connection was processed.
    pub fn poll(&mut self, now: Instant, io: &mut Io<'_>) -> bool {
        io.counters.stack_polls += 1;
        self.busy = true;
        while let Some(packet) = self.rx.pop_front() {
            self.input(now, packet, io);
        }
        self.run_timers(now);
        let ready = std::mem::take(&mut self.ready);
        let mut done = 0;
        for &slot in &ready {
            match self.transmit(now, slot, io) {
                Sent::QueueFull => break,
                Sent::All => self.settle(slot, io),
                Sent::Quantum => {
                    // Its turn is over: the rest goes out on the next poll, after the other
                    // connections (of every stack) had theirs.
                    self.settle(slot, io);
                    self.mark_ready(slot);
                }
            }
            done += 1;
        }
        // Slots left when the egress queue filled stay ready (their flag is still set); slots
        // touched while settling were pushed to the new list.
        let mut ready = ready;
        ready.drain(..done);
        ready.append(&mut self.ready);
        self.ready = ready;
        done > 0
    }

    /// The connection of a live accepted or client id.
    pub fn conn(&mut self, id: ConnId) -> Result<&mut Conn, ConnError> {
        self.live_entry(id).map(|e| &mut e.conn)
    }

    /// Shared access to the connection of a live id.
    pub fn conn_ref(&self, id: ConnId) -> Option<&Conn> {
        let s = self.slots.get(id.slot as usize)?;
        let e = s.entry.as_deref()?;
        (s.generation == id.generation && e.role != Role::Handshake).then_some(&e.conn)
    }

    fn live_entry(&mut self, id: ConnId) -> Result<&mut Entry, ConnError> {
        let s = self
            .slots
            .get_mut(id.slot as usize)
            .ok_or(ConnError::Gone)?;
        match s.entry.as_deref_mut() {
            Some(e) if s.generation == id.generation && e.role != Role::Handshake => Ok(e),
            _ => Err(ConnError::Gone),
        }
    }

    /// Stores the waker to wake when receiving may progress.
    pub fn set_recv_waker(&mut self, id: ConnId, waker: &Waker) -> Result<(), ConnError> {
        let e = self.live_entry(id)?;
        match &e.recv_waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.recv_waker = Some(waker.clone()),
        }
        Ok(())
    }

    /// Stores the waker to wake when sending may progress.
    pub fn set_send_waker(&mut self, id: ConnId, waker: &Waker) -> Result<(), ConnError> {
        let e = self.live_entry(id)?;
        match &e.send_waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.send_waker = Some(waker.clone()),
        }
        Ok(())
    }

    /// Starts an active open on `tuple` (the caller picked a port that hashes back here).
    pub fn open_client(&mut self, now: Instant, tuple: Tuple) -> Result<ConnId, ConnectError> {
        if tuple.remote.is_ipv4() != self.opts.address.is_ipv4() {
            return Err(ConnectError::Unaddressable);
        }
        let isn = self.isn(now, &tuple);
        let conn = Conn::connect(
            &self.opts.tcp,
            now,
            self.local(tuple.local_port),
            tuple.remote,
            isn,
        );
        Ok(self.insert(conn, Role::Client, tuple))
    }

    /// Gives back what traffic left once the stack was not polled for a whole period between
    /// two calls: trailing empty slots, and table room far beyond what is in use. Call it at a
    /// steady pace.
    pub fn trim(&mut self) {
        if std::mem::take(&mut self.busy) {
            return;
        }
        while self.slots.last().is_some_and(|s| s.entry.is_none()) {
            self.slots.pop();
        }
        let len = self.slots.len();
        self.free.retain(|&i| (i as usize) < len);
        if self.slots.capacity() > 2 * len + 8 {
            self.slots.shrink_to_fit();
            self.free.shrink_to_fit();
        }
        if self.tuples.is_empty() {
            self.tuples = HashMap::new();
        } else if self.tuples.capacity() > 2 * self.tuples.len() + 8 {
            self.tuples.shrink_to_fit();
        }
        if self.rx.is_empty() && self.rx.capacity() > 64 {
            self.rx = VecDeque::new();
        }
        if self.ready.is_empty() && self.ready.capacity() > 64 {
            self.ready = Vec::new();
        }
    }
}
