//! One small smoltcp stack: an interface, its socket set, the pre-armed listeners and the
//! bookkeeping that turns smoltcp's socket-per-connection model into accept/reap semantics.
//!
//! Every socket in the set has a [`Slot`] saying what it is for:
//! * **listener** — in `LISTEN` on the inbound port, waiting for a SYN;
//! * **handshake** — a former listener that took a SYN and is in `SYN-RECEIVED`;
//! * **accepted** — a handshake that completed; its [`ConnId`] went to the accept queue;
//! * **client** — opened by [`Stack::open_client`].
//!
//! Invariants:
//! * `slots` has exactly one entry per socket in `sockets`; `listeners` and `handshakes` list the
//!   handles of those roles; `tuples` maps the 4-tuple of every non-listener socket that has one.
//! * A socket leaves the set only through [`Stack::reap`] (`Closed` with nothing left to send, or
//!   `TIME-WAIT` recycled by a new SYN on its tuple). A reaped socket is reused as a listener when
//!   the backlog needs one, else kept as a spare (at most `backlog` of them) for the next listener
//!   or client, else dropped. Reuse spares a busy stack new buffers per connection: a new socket
//!   costs two page mappings made and unmapped (the broker binary maps socket-sized blocks
//!   straight from the kernel, see `runtime::alloc`), which made a connection-per-request load
//!   cost 40 % more CPU, mostly in the TLB shootdowns of `munmap`. A spare's buffers keep the old
//!   bytes, unreachable: smoltcp's reset empties the rings.
//! * **What traffic left is given back when it stops.** A reused socket's buffers have resident
//!   pages (what its earlier connections wrote), a new one's have none until traffic writes to
//!   them; and smoltcp's socket storage only grows (a removed socket leaves an empty slot that
//!   every poll walks past), as do the hash maps. So the owner calls [`Stack::trim`] at a
//!   steady pace (the runtime: about every 100 ms), and a stack that was not polled for a whole
//!   period drops its spares, replaces its reused listeners with new ones, and, when only
//!   listeners are left, moves them into fresh tables ([`Stack::compact`]): once a burst is
//!   over, the stack is back to the size it had when it was made, and busy stacks keep their
//!   spares. Before this, an idle broker kept up to `2 × backlog` used socket buffers per stack
//!   (hundreds of MiB after a burst), which the next slow vendors' connections inherited.
//! * Every time a socket gets a new role it gets a new generation, so a stale [`ConnId`] can
//!   never reach the socket's next connection.
//!
//! Cost: after each poll the stack walks its slots once (promote, reap, count `TIME-WAIT`) — the
//! same order of work as smoltcp's own per-poll socket scan, and the reason stacks stay small.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};

use super::config::StackConfig;
use super::device::Port;
use super::{ConnError, ConnectError, Counters};
use crate::packet::{BufPool, PacketBuf};

/// A connection across a shard's stack set: which stack, which socket, which incarnation.
///
/// Ids are cheap to copy and never alias: after the connection is reaped every call with its id
/// returns [`ConnError::Gone`], even when the socket slot already serves a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    stack: u16,
    handle: SocketHandle,
    generation: u32,
}

impl ConnId {
    /// Index of the stack (within the shard) that owns the connection.
    pub fn stack(&self) -> usize {
        usize::from(self.stack)
    }
}

/// Socket counts of one stack, by role (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Every socket in the stack's set.
    pub sockets: usize,
    /// Armed listeners.
    pub listeners: usize,
    /// Handshakes in progress (`SYN-RECEIVED`).
    pub handshakes: usize,
    /// Accepted and client connections, `TIME-WAIT` included.
    pub connections: usize,
    /// Connections in `TIME-WAIT` as of the stack's last poll.
    pub time_wait: usize,
    /// Closed sockets kept out of the set for reuse.
    pub spares: usize,
    /// Listeners that served an earlier connection (their buffers have resident pages).
    pub reused_listeners: usize,
    /// Slots of smoltcp's socket storage, empty ones included: the most sockets the stack held
    /// at once since it was made or last compacted.
    pub storage: usize,
    /// Entries the per-socket maps (roles, 4-tuples) have room for without growing.
    pub table_capacity: usize,
    /// Sockets built with new buffers since the stack was made.
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
    /// SYN without ACK/RST: may need a listener.
    pub syn: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Listener,
    Handshake,
    Accepted,
    Client,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    role: Role,
    tuple: Option<Tuple>,
    time_wait_seen: bool,
    /// The socket served an earlier connection (a spare, or reaped and re-armed).
    reused: bool,
}

/// Per-socket settings applied to every socket this stack creates or reuses.
#[derive(Debug, Clone, Copy)]
struct SocketOptions {
    address: IpAddress,
    listen_port: u16,
    rx_buffer: usize,
    tx_buffer: usize,
    keep_alive: Option<SmolDuration>,
    timeout: Option<SmolDuration>,
    ack_delay: Option<SmolDuration>,
    backlog: usize,
    max_sockets: usize,
}

fn smol_duration(d: std::time::Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl SocketOptions {
    /// Request/response tuning (DESIGN.md §9): no Nagle (a response head must not wait for the
    /// ACK of the previous segment), a short ACK delay, CUBIC with a fresh state, keep-alive and
    /// dead-peer timeout.
    fn apply(&self, s: &mut tcp::Socket<'_>) {
        s.set_nagle_enabled(false);
        s.set_ack_delay(self.ack_delay);
        s.set_congestion_control(CongestionControl::Cubic);
        s.set_keep_alive(self.keep_alive);
        s.set_timeout(self.timeout);
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.tx_buffer]);
        let mut s = tcp::Socket::new(rx, tx);
        self.apply(&mut s);
        s
    }

    fn listen_endpoint(&self) -> IpListenEndpoint {
        IpListenEndpoint {
            addr: Some(self.address),
            port: self.listen_port,
        }
    }
}

/// One smoltcp interface with its sockets. See the module docs.
pub(crate) struct Stack {
    index: u16,
    iface: Interface,
    sockets: SocketSet<'static>,
    slots: HashMap<SocketHandle, Slot>,
    listeners: Vec<SocketHandle>,
    handshakes: Vec<SocketHandle>,
    tuples: HashMap<Tuple, SocketHandle>,
    /// Ingress packets demultiplexed to this stack, not yet fed to smoltcp.
    pub rx: VecDeque<Ingress>,
    /// An application call touched a socket since the last poll.
    dirty: bool,
    /// smoltcp's own deadline as of the last poll.
    next_poll: Option<SmolInstant>,
    next_generation: u32,
    time_wait_now: usize,
    reap_scratch: Vec<SocketHandle>,
    /// Slots in smoltcp's socket storage (it never shrinks; see [`Stack::compact`]).
    storage: usize,
    /// Closed sockets out of the set, kept for their buffers (see the module docs).
    spares: Vec<tcp::Socket<'static>>,
    /// Polled since the last [`Stack::trim`].
    busy: bool,
    built: u64,
    opts: SocketOptions,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("index", &self.index)
            .field("stats", &self.stats())
            .field("rx_queued", &self.rx.len())
            .field("dirty", &self.dirty)
            .field("next_poll", &self.next_poll)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// A stack on `config.address` with its listeners armed.
    pub fn new(index: u16, config: &StackConfig, caps: &DeviceCapabilities, seed: u64) -> Self {
        let address = IpAddress::from(config.address);
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        // smoltcp only asks the device for its capabilities here.
        let (mut spent, mut tx, mut pool, mut counters) = (
            Vec::new(),
            VecDeque::new(),
            BufPool::new(0, 0),
            Counters::default(),
        );
        let mut probe = Port {
            next: None,
            spent: &mut spent,
            tx: &mut tx,
            pool: &mut pool,
            counters: &mut counters,
            caps,
            tx_limit: 0,
        };
        let mut iface = Interface::new(iface_config, &mut probe, SmolInstant::ZERO);
        // The tunnel is point to point: one host address, and a default route so replies to any
        // peer address go out (the nominal gateway is never looked up on an IP medium).
        iface.update_ip_addrs(|addrs| {
            let prefix = if config.address.is_ipv4() { 32 } else { 128 };
            // A fresh interface has room for its first address.
            let _ = addrs.push(IpCidr::new(address, prefix));
        });
        let _ = match config.address {
            IpAddr::V4(a) => iface.routes_mut().add_default_ipv4_route(a),
            IpAddr::V6(a) => iface.routes_mut().add_default_ipv6_route(a),
        };
        iface.set_any_ip(false);
        let mut stack = Self {
            index,
            iface,
            sockets: SocketSet::new(Vec::new()),
            slots: HashMap::new(),
            listeners: Vec::with_capacity(config.backlog),
            handshakes: Vec::new(),
            tuples: HashMap::new(),
            rx: VecDeque::new(),
            dirty: false,
            next_poll: None,
            next_generation: 0,
            time_wait_now: 0,
            reap_scratch: Vec::new(),
            storage: 0,
            spares: Vec::new(),
            busy: false,
            built: 0,
            opts: SocketOptions {
                address,
                listen_port: config.listen_port,
                rx_buffer: config.rx_buffer,
                tx_buffer: config.tx_buffer,
                keep_alive: config.keep_alive.map(smol_duration),
                timeout: config.timeout.map(smol_duration),
                ack_delay: config.ack_delay.map(smol_duration),
                backlog: config.backlog,
                max_sockets: config.max_sockets_per_stack,
            },
        };
        stack.top_up_listeners();
        stack
    }

    fn bump_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    fn socket(&self, h: SocketHandle) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket<'static>>(h)
    }

    fn socket_mut(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(h)
    }

    /// Whether another socket fits under `max_sockets_per_stack`.
    pub fn has_room(&self) -> bool {
        self.slots.len() < self.opts.max_sockets
    }

    /// Whether a connection with this tuple exists here (client sockets, handshakes, accepted).
    pub fn knows(&self, tuple: &Tuple) -> bool {
        self.tuples.contains_key(tuple)
    }

    /// Marks the stack for polling (an application call changed what smoltcp may send).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether [`Stack::poll`] has anything to do at `now`.
    pub fn wants_poll(&self, now: SmolInstant) -> bool {
        self.dirty || !self.rx.is_empty() || self.next_poll.is_some_and(|t| t <= now)
    }

    /// Time until this stack needs a poll; `None` when only a packet can give it work.
    pub fn delay(&self, now: SmolInstant) -> Option<SmolDuration> {
        if self.dirty || !self.rx.is_empty() {
            return Some(SmolDuration::ZERO);
        }
        self.next_poll
            .map(|t| if t > now { t - now } else { SmolDuration::ZERO })
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            sockets: self.slots.len(),
            listeners: self.listeners.len(),
            handshakes: self.handshakes.len(),
            connections: self.slots.len() - self.listeners.len() - self.handshakes.len(),
            time_wait: self.time_wait_now,
            spares: self.spares.len(),
            reused_listeners: self
                .listeners
                .iter()
                .filter(|h| self.slots.get(h).is_some_and(|s| s.reused))
                .count(),
            storage: self.storage,
            table_capacity: self.slots.capacity() + self.tuples.capacity(),
            built: self.built,
        }
    }

    /// Stops accepting: no listener is armed again and the armed ones are dropped (a SYN then
    /// meets no listener and smoltcp answers RST). Established connections are untouched.
    pub fn stop_accepting(&mut self) {
        self.opts.backlog = 0;
        self.spares = Vec::new();
        for h in std::mem::take(&mut self.listeners) {
            self.sockets.remove(h);
            self.slots.remove(&h);
        }
        self.touch();
    }

    /// A socket for a new role: a spare if there is one (options applied afresh; `true`), else a
    /// new one with untouched buffers.
    fn take_socket(&mut self) -> (tcp::Socket<'static>, bool) {
        match self.spares.pop() {
            Some(mut s) => {
                self.opts.apply(&mut s);
                (s, true)
            }
            None => {
                self.built += 1;
                (self.opts.new_socket(), false)
            }
        }
    }

    /// Adds `s` to the socket set, keeping count of the storage slots (smoltcp fills the first
    /// empty slot and grows the storage only when there is none).
    fn add_socket(&mut self, s: tcp::Socket<'static>) -> SocketHandle {
        if self.slots.len() == self.storage {
            self.storage += 1;
        }
        self.sockets.add(s)
    }

    /// Adds listeners until the backlog is armed or the stack is full.
    fn top_up_listeners(&mut self) {
        while self.listeners.len() < self.opts.backlog && self.has_room() {
            let (mut s, reused) = self.take_socket();
            if s.listen(self.opts.listen_endpoint()).is_err() {
                // Only a zero port fails, which the config rejects.
                return;
            }
            let h = self.add_socket(s);
            let generation = self.bump_generation();
            self.slots.insert(
                h,
                Slot {
                    generation,
                    role: Role::Listener,
                    tuple: None,
                    time_wait_seen: false,
                    reused,
                },
            );
            self.listeners.push(h);
        }
    }

    /// Moves listeners that took a SYN to the handshake list and records their tuples.
    fn sync_listeners(&mut self) {
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i];
            let s = self.sockets.get::<tcp::Socket<'static>>(h);
            if s.state() == State::Listen {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            let tuple = s.remote_endpoint().map(|remote| Tuple {
                remote: SocketAddr::from(remote),
                local_port: self.opts.listen_port,
            });
            if let Some(t) = tuple {
                self.tuples.insert(t, h);
            }
            if let Some(slot) = self.slots.get_mut(&h) {
                slot.role = Role::Handshake;
                slot.tuple = tuple;
            }
            self.handshakes.push(h);
        }
    }

    /// Prepares for an inbound SYN on the listen port; `false` means drop it.
    ///
    /// A SYN on a tuple that already has a connection is a retransmission: it is dropped, since
    /// a listener placed before that connection in the set would otherwise take it and open a
    /// second connection on the same tuple (our SYN-ACK is retransmitted on its own timer). A
    /// SYN on a tuple in `TIME-WAIT` is a new connection: the old socket is recycled at once.
    fn admit_syn(&mut self, tuple: &Tuple, counters: &mut Counters) -> bool {
        self.sync_listeners();
        if let Some(&h) = self.tuples.get(tuple) {
            if self.socket(h).state() != State::TimeWait {
                counters.drop_duplicate_syn += 1;
                return false;
            }
            counters.time_wait_recycled += 1;
            self.reap(h, counters);
        }
        self.top_up_listeners();
        if self.listeners.is_empty() {
            // smoltcp will answer with RST.
            counters.syn_reset_full += 1;
        }
        true
    }

    /// Removes a finished socket from service: forgets its tuple and reuses it as a listener if
    /// the backlog is short, else takes it out of the set as a spare or drops it.
    fn reap(&mut self, h: SocketHandle, counters: &mut Counters) {
        counters.reaped += 1;
        if let Some(t) = self.slots.get(&h).and_then(|s| s.tuple) {
            self.tuples.remove(&t);
        }
        if self.listeners.len() < self.opts.backlog {
            let opts = self.opts;
            let s = self.socket_mut(h);
            opts.apply(s);
            if s.listen(opts.listen_endpoint()).is_ok() {
                let generation = self.bump_generation();
                self.slots.insert(
                    h,
                    Slot {
                        generation,
                        role: Role::Listener,
                        tuple: None,
                        time_wait_seen: false,
                        reused: true,
                    },
                );
                self.listeners.push(h);
                return;
            }
        }
        let removed = self.sockets.remove(h);
        self.slots.remove(&h);
        if self.spares.len() < self.opts.backlog {
            // Only TCP sockets are ever added; other variants exist only if another crate
            // enables more smoltcp features.
            #[allow(irrefutable_let_patterns)]
            if let smoltcp::socket::Socket::Tcp(s) = removed {
                self.spares.push(s);
            }
        }
    }

    /// Gives back what traffic left, once the stack was not polled for a whole period between
    /// two calls (see the module docs): drops the spares, replaces reused listeners with new
    /// sockets, and compacts the tables when only listeners are left. Call it at a steady pace.
    pub fn trim(&mut self) {
        if std::mem::take(&mut self.busy) {
            return;
        }
        self.spares = Vec::new();
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i];
            if self.slots.get(&h).is_some_and(|s| s.reused) {
                self.listeners.swap_remove(i);
                self.sockets.remove(h);
                self.slots.remove(&h);
            } else {
                i += 1;
            }
        }
        // No spares left: the listeners re-armed here are new sockets.
        self.top_up_listeners();
        self.compact();
    }

    /// When only listeners are left in a stack whose tables grew beyond them: moves the
    /// listeners into fresh tables of the idle size (see the module docs). Listeners have no
    /// [`ConnId`] anywhere, so their new handles break nothing. (A compaction moves `backlog`
    /// sockets and makes three small tables; [`Stack::trim`] does it only to an idle stack.)
    fn compact(&mut self) {
        let idle = self.slots.len() == self.listeners.len();
        if !idle || self.storage <= self.listeners.len() {
            return;
        }
        let mut sockets = SocketSet::new(Vec::with_capacity(self.listeners.len()));
        let mut slots = HashMap::with_capacity(self.listeners.len());
        let mut listeners = Vec::with_capacity(self.opts.backlog);
        for h in std::mem::take(&mut self.listeners) {
            let generation = self.bump_generation();
            let reused = self.slots.get(&h).is_some_and(|s| s.reused);
            let new = sockets.add(self.sockets.remove(h));
            slots.insert(
                new,
                Slot {
                    generation,
                    role: Role::Listener,
                    tuple: None,
                    time_wait_seen: false,
                    reused,
                },
            );
            listeners.push(new);
        }
        self.storage = listeners.len();
        self.sockets = sockets;
        self.slots = slots;
        self.listeners = listeners;
        self.tuples = HashMap::new();
        self.handshakes = Vec::new();
        self.reap_scratch = Vec::new();
        if self.rx.is_empty() {
            self.rx = VecDeque::new();
        }
    }

    /// After smoltcp ran: promote completed handshakes, reap closed sockets, re-arm listeners.
    fn settle(&mut self, accepted: &mut VecDeque<ConnId>, counters: &mut Counters) -> bool {
        let mut changed = false;
        self.sync_listeners();

        let mut i = 0;
        while i < self.handshakes.len() {
            let h = self.handshakes[i];
            let s = self.socket(h);
            let (state, pending_rst) = (s.state(), s.remote_endpoint().is_some());
            match state {
                State::SynReceived => i += 1,
                State::Closed if pending_rst => i += 1,
                State::Listen | State::Closed => {
                    // RST during the handshake (smoltcp went back to LISTEN) or handshake
                    // timeout (its RST already sent).
                    self.handshakes.swap_remove(i);
                    self.reap(h, counters);
                    changed = true;
                }
                _ => {
                    self.handshakes.swap_remove(i);
                    if let Some(slot) = self.slots.get_mut(&h) {
                        slot.role = Role::Accepted;
                        accepted.push_back(ConnId {
                            stack: self.index,
                            handle: h,
                            generation: slot.generation,
                        });
                        counters.accepted += 1;
                        changed = true;
                    }
                }
            }
        }

        let mut reap = std::mem::take(&mut self.reap_scratch);
        reap.clear();
        let mut time_wait = 0;
        for (&h, slot) in self.slots.iter_mut() {
            if !matches!(slot.role, Role::Accepted | Role::Client) {
                continue;
            }
            let s = self.sockets.get::<tcp::Socket<'static>>(h);
            match s.state() {
                State::TimeWait => {
                    time_wait += 1;
                    if !slot.time_wait_seen {
                        slot.time_wait_seen = true;
                        counters.time_wait += 1;
                    }
                }
                // Closed, and the RST (if it was aborted) has gone out.
                State::Closed if s.remote_endpoint().is_none() => reap.push(h),
                _ => {}
            }
        }
        for &h in &reap {
            self.reap(h, counters);
            changed = true;
        }
        self.reap_scratch = reap;
        self.time_wait_now = time_wait;
        self.top_up_listeners();
        changed
    }

    /// Feeds the queued ingress packets to smoltcp one by one, lets every socket transmit, then
    /// settles the socket roles and records smoltcp's next deadline. Returns whether any socket
    /// may have changed state.
    pub fn poll(
        &mut self,
        now: SmolInstant,
        port: &mut Port<'_>,
        accepted: &mut VecDeque<ConnId>,
    ) -> bool {
        port.counters.stack_polls += 1;
        self.dirty = false;
        self.busy = true;
        let mut changed = false;
        while let Some(packet) = self.rx.pop_front() {
            if packet.syn
                && packet.tuple.local_port == self.opts.listen_port
                && !self.admit_syn(&packet.tuple, port.counters)
            {
                port.spend(packet.buf);
                continue;
            }
            port.next = Some(packet.buf);
            if self.iface.poll_ingress_single(now, port, &mut self.sockets)
                == PollIngressSingleResult::SocketStateChanged
            {
                changed = true;
            }
            if let Some(buf) = port.next.take() {
                port.spend(buf);
            }
        }
        while self.iface.poll_egress(now, port, &mut self.sockets) == PollResult::SocketStateChanged
        {
            changed = true;
        }
        self.iface.poll_maintenance(now);
        changed |= self.settle(accepted, port.counters);
        self.next_poll = self.iface.poll_at(now, &self.sockets);
        changed
    }

    /// The socket of a live accepted or client connection.
    pub fn conn(&mut self, id: ConnId) -> Result<&mut tcp::Socket<'static>, ConnError> {
        self.check(id)?;
        Ok(self.socket_mut(id.handle))
    }

    /// Shared access to the socket of a live connection.
    pub fn conn_ref(&self, id: ConnId) -> Option<&tcp::Socket<'static>> {
        self.check(id).ok()?;
        Some(self.socket(id.handle))
    }

    fn check(&self, id: ConnId) -> Result<(), ConnError> {
        match self.slots.get(&id.handle) {
            Some(slot)
                if slot.generation == id.generation
                    && matches!(slot.role, Role::Accepted | Role::Client) =>
            {
                Ok(())
            }
            _ => Err(ConnError::Gone),
        }
    }

    /// Starts an active open on `tuple` (the caller picked a port that hashes back here).
    pub fn open_client(&mut self, tuple: Tuple) -> Result<ConnId, ConnectError> {
        let (mut s, reused) = self.take_socket();
        let local = IpListenEndpoint {
            addr: Some(self.opts.address),
            port: tuple.local_port,
        };
        s.connect(self.iface.context(), IpEndpoint::from(tuple.remote), local)
            .map_err(|_| ConnectError::Unaddressable)?;
        let h = self.add_socket(s);
        let generation = self.bump_generation();
        self.slots.insert(
            h,
            Slot {
                generation,
                role: Role::Client,
                tuple: Some(tuple),
                time_wait_seen: false,
                reused,
            },
        );
        self.tuples.insert(tuple, h);
        self.dirty = true;
        Ok(ConnId {
            stack: self.index,
            handle: h,
            generation,
        })
    }

    /// Graceful close: FIN after the queued data. Keep-alive stops, so a peer that never closes
    /// its side lets the socket go after the configured timeout.
    pub fn close(&mut self, id: ConnId) -> Result<(), ConnError> {
        let s = self.conn(id)?;
        s.close();
        s.set_keep_alive(None);
        self.dirty = true;
        Ok(())
    }
}
