//! A shard's stack set: demultiplexing, polling, accept/connect, and the per-connection API the
//! runtime's connection tasks use.
//!
//! Invariants:
//! * A packet goes to `stacks[shard_of(hash, shards, stacks).1]` — the stack the tunnel core's
//!   hash designates — or is dropped, counted, and its buffer put on the spent list. Nothing
//!   else reaches smoltcp: only TCP to our address, on the listen port or on the exact tuple of
//!   one of our client connections.
//! * Every ingress buffer comes back through [`StackSet::drain_spent`], exactly once.
//! * [`StackSet::poll`] only polls stacks with queued packets, a touched socket, or an expired
//!   smoltcp deadline; [`StackSet::poll_delay`] is exact for the same three reasons, so a runtime
//!   that sleeps for it neither spins nor misses a timer.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::task::Waker;
use std::time::{Duration, Instant};

use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::time::Instant as SmolInstant;

use super::config::{ConfigError, StackConfig};
use super::device::{self, Port};
use super::stack::{ConnId, Ingress, Stack, StackStats, Tuple};
use super::{ConnError, ConnectError, Counters};
use crate::packet::{BufPool, Flow, FlowError, PacketBuf, shard_of};

/// IP protocol number of TCP.
const TCP: u8 = 6;

/// First and number of the ephemeral ports client connections use (IANA dynamic range).
const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: u16 = 16384;

/// Why [`StackSet::ingest`] dropped a packet (each also has a counter in [`Counters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a parsable IPv4/IPv6 packet.
    Malformed,
    /// An inner IP fragment (no reassembly; the tunnel MTU makes fragments unnecessary).
    Fragment,
    /// Not TCP (ICMP, UDP, IPv6 extension headers, ...).
    NotTcp,
    /// Not addressed to the broker's tunnel address.
    WrongAddress,
    /// The flow belongs to another shard.
    WrongShard,
    /// Not the listen port, and not the tuple of one of our client connections.
    NoSocket,
    /// The owning stack's ingress queue is full.
    QueueFull,
}

/// A shard's TCP termination: `stacks` smoltcp stacks behind one demultiplexer. See the module
/// docs of [`crate::netstack`].
pub struct StackSet {
    address: IpAddr,
    listen_port: u16,
    shard_index: usize,
    shards: usize,
    rx_queue: usize,
    tx_limit: usize,
    caps: DeviceCapabilities,
    epoch: Instant,
    stacks: Vec<Stack>,
    tx: VecDeque<PacketBuf>,
    spent: Vec<PacketBuf>,
    accepted: VecDeque<ConnId>,
    counters: Counters,
    next_port: u16,
    poll_waker: Option<Waker>,
}

impl fmt::Debug for StackSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackSet")
            .field("address", &self.address)
            .field("listen_port", &self.listen_port)
            .field("shard", &(self.shard_index, self.shards))
            .field("stacks", &self.stacks)
            .field("tx_queued", &self.tx.len())
            .field("spent", &self.spent.len())
            .field("accept_queue", &self.accepted.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// splitmix64: spreads one seed over the stacks' interfaces (ISNs) and the port cursor.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn recv_error(e: RecvError) -> ConnError {
    match e {
        RecvError::Finished => ConnError::Finished,
        _ => ConnError::InvalidState,
    }
}

impl StackSet {
    /// Builds the shard's stacks with their listeners armed.
    ///
    /// `epoch` is the instant every later `now` is measured from (any instant at or before the
    /// first `poll`). `seed` seeds smoltcp's initial sequence numbers and the ephemeral port
    /// cursor: pass fresh randomness (e.g. from `getrandom`), different per shard.
    pub fn new(config: &StackConfig, epoch: Instant, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let caps = device::capabilities(config.mtu);
        let stacks = (0..config.stacks)
            .map(|i| {
                let index = u16::try_from(i).unwrap_or(u16::MAX);
                Stack::new(index, config, &caps, mix(seed, i as u64))
            })
            .collect();
        let cursor = mix(seed, u64::MAX) % u64::from(EPHEMERAL_COUNT);
        Ok(Self {
            address: config.address,
            listen_port: config.listen_port,
            shard_index: config.shard_index,
            shards: config.shards,
            rx_queue: config.rx_queue,
            tx_limit: config.tx_queue,
            caps,
            epoch,
            stacks,
            tx: VecDeque::new(),
            spent: Vec::new(),
            accepted: VecDeque::new(),
            counters: Counters::default(),
            next_port: EPHEMERAL_FIRST + u16::try_from(cursor).unwrap_or(0),
            poll_waker: None,
        })
    }

    fn stamp(&self, now: Instant) -> SmolInstant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        SmolInstant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Hands an inbound IP packet (decrypted, flow-hashed to this shard) to its stack. On `Err`
    /// the packet was dropped and counted, and its buffer is already on the spent list.
    pub fn ingest(&mut self, buf: PacketBuf) -> Result<(), DropReason> {
        match self.classify(&buf) {
            Ok((stack, tuple)) => {
                let syn = device::is_opening_syn(buf.as_slice());
                self.stacks[stack].rx.push_back(Ingress { buf, tuple, syn });
                self.counters.packets_in += 1;
                Ok(())
            }
            Err(reason) => {
                let c = &mut self.counters;
                match reason {
                    DropReason::Malformed => c.drop_malformed += 1,
                    DropReason::Fragment => c.drop_fragment += 1,
                    DropReason::NotTcp => c.drop_not_tcp += 1,
                    DropReason::WrongAddress => c.drop_wrong_address += 1,
                    DropReason::WrongShard => c.drop_wrong_shard += 1,
                    DropReason::NoSocket => c.drop_no_socket += 1,
                    DropReason::QueueFull => c.drop_rx_queue_full += 1,
                }
                self.spent.push(buf);
                Err(reason)
            }
        }
    }

    fn classify(&self, buf: &PacketBuf) -> Result<(usize, Tuple), DropReason> {
        let flow = match Flow::parse(buf.as_slice()) {
            Ok(f) => f,
            Err(FlowError::Fragment) => return Err(DropReason::Fragment),
            Err(_) => return Err(DropReason::Malformed),
        };
        if flow.protocol != TCP {
            return Err(DropReason::NotTcp);
        }
        if flow.dst != self.address {
            return Err(DropReason::WrongAddress);
        }
        let (shard, stack) = shard_of(flow.hash(), self.shards, self.stacks.len());
        if shard != self.shard_index {
            return Err(DropReason::WrongShard);
        }
        let tuple = Tuple {
            remote: SocketAddr::new(flow.src, flow.src_port),
            local_port: flow.dst_port,
        };
        let st = &self.stacks[stack];
        if flow.dst_port != self.listen_port && !st.knows(&tuple) {
            return Err(DropReason::NoSocket);
        }
        if st.rx.len() >= self.rx_queue {
            return Err(DropReason::QueueFull);
        }
        Ok((stack, tuple))
    }

    /// Runs every stack that has work at `now`: feeds its queued packets, lets its sockets
    /// transmit into buffers taken from `pool` (the shard's pool; its buffers must hold `mtu`
    /// bytes), re-arms listeners, queues completed handshakes for [`StackSet::accept`] and reaps
    /// closed sockets. Returns whether any socket may have changed state (wake connection
    /// tasks; smoltcp also wakes registered wakers itself).
    ///
    /// Drain [`StackSet::drain_tx`] before the next poll: a full egress queue makes smoltcp hold
    /// its data, and `poll_delay` then stays at zero.
    pub fn poll(&mut self, now: Instant, pool: &mut BufPool) -> bool {
        let now = self.stamp(now);
        let mut changed = false;
        for stack in &mut self.stacks {
            if !stack.wants_poll(now) {
                continue;
            }
            let mut port = Port {
                next: None,
                spent: &mut self.spent,
                tx: &mut self.tx,
                pool: &mut *pool,
                counters: &mut self.counters,
                caps: &self.caps,
                tx_limit: self.tx_limit,
            };
            changed |= stack.poll(now, &mut port, &mut self.accepted);
        }
        changed
    }

    /// How long the runtime may sleep before the next [`StackSet::poll`] if no packet arrives:
    /// zero when packets are queued or a connection was touched, otherwise the earliest smoltcp
    /// timer (retransmission, delayed ACK, keep-alive, timeout, `TIME-WAIT` expiry); `None` when
    /// only an inbound packet or an application call can create work.
    pub fn poll_delay(&self, now: Instant) -> Option<Duration> {
        let now = self.stamp(now);
        self.stacks
            .iter()
            .filter_map(|s| s.delay(now))
            .min()
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Registers the waker of the task that drives [`StackSet::poll`]. It is woken (once) when
    /// an application call gives a stack work: data queued or consumed, close, abort, connect.
    pub fn set_poll_waker(&mut self, waker: &Waker) {
        match &self.poll_waker {
            Some(w) if w.will_wake(waker) => {}
            _ => self.poll_waker = Some(waker.clone()),
        }
    }

    fn touch(&mut self, id: ConnId) {
        if let Some(s) = self.stacks.get_mut(id.stack()) {
            s.touch();
        }
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }

    /// Packets smoltcp wrote, in order, for the tunnel core to encrypt.
    pub fn drain_tx(&mut self) -> std::collections::vec_deque::Drain<'_, PacketBuf> {
        self.tx.drain(..)
    }

    /// The next packet to encrypt, for a runtime that stops when its channel is full.
    pub fn pop_tx(&mut self) -> Option<PacketBuf> {
        self.tx.pop_front()
    }

    /// Packets waiting in the egress queue.
    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }

    /// Ingress buffers smoltcp is done with (and dropped packets): send them home to the core
    /// that allocated them.
    pub fn drain_spent(&mut self) -> std::vec::Drain<'_, PacketBuf> {
        self.spent.drain(..)
    }

    /// Stops accepting new connections in every stack (drain): armed listeners are dropped and
    /// never re-armed; established connections carry on.
    pub fn stop_accepting(&mut self) {
        for s in &mut self.stacks {
            s.stop_accepting();
        }
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }

    /// Gives back what traffic left in every stack that was not polled since the previous call:
    /// spare sockets, listeners that served an earlier connection (replaced by new ones), table
    /// slots beyond the listeners. Call it at a steady pace (the runtime: about every 100 ms);
    /// busy stacks keep their spares, so connection churn does not make new sockets.
    pub fn trim(&mut self) {
        for s in &mut self.stacks {
            s.trim();
        }
    }

    /// The next connection that completed its handshake, if any.
    pub fn accept(&mut self) -> Option<ConnId> {
        while let Some(id) = self.accepted.pop_front() {
            if self.stacks[id.stack()].conn_ref(id).is_some() {
                return Some(id);
            }
        }
        None
    }

    /// Opens a client connection to `remote` (e.g. the vendor's heartbeat URL inside the
    /// tunnel). The local port is an ephemeral port chosen so that the *reply* flow
    /// (`remote → our address:port`) hashes to this shard, and the connection lives in the stack
    /// that flow hashes to — so the tunnel core routes the replies here without knowing about
    /// the connection. The SYN goes out on the next poll.
    pub fn connect(&mut self, remote: SocketAddr) -> Result<ConnId, ConnectError> {
        if remote.ip().is_unspecified()
            || remote.port() == 0
            || remote.is_ipv4() != self.address.is_ipv4()
        {
            return Err(ConnectError::Unaddressable);
        }
        for _ in 0..EPHEMERAL_COUNT {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            if port == self.listen_port {
                continue;
            }
            let reply = Flow {
                src: remote.ip(),
                dst: self.address,
                protocol: TCP,
                src_port: remote.port(),
                dst_port: port,
            };
            let (shard, stack) = shard_of(reply.hash(), self.shards, self.stacks.len());
            if shard != self.shard_index {
                continue;
            }
            let tuple = Tuple {
                remote,
                local_port: port,
            };
            let st = &mut self.stacks[stack];
            if !st.has_room() || st.knows(&tuple) {
                continue;
            }
            let id = st.open_client(tuple)?;
            self.counters.connects += 1;
            self.touch(id);
            return Ok(id);
        }
        Err(ConnectError::NoPort)
    }

    fn socket(&mut self, id: ConnId) -> Result<&mut tcp::Socket<'static>, ConnError> {
        self.stacks
            .get_mut(id.stack())
            .ok_or(ConnError::Gone)?
            .conn(id)
    }

    fn socket_ref(&self, id: ConnId) -> Option<&tcp::Socket<'static>> {
        self.stacks.get(id.stack())?.conn_ref(id)
    }

    /// Copies received bytes into `buf`; `Ok(0)` means nothing buffered yet.
    pub fn recv_slice(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        let n = self.socket(id)?.recv_slice(buf).map_err(recv_error)?;
        if n > 0 {
            self.touch(id);
        }
        Ok(n)
    }

    /// Zero-copy receive: `f` sees the largest contiguous run of buffered bytes and returns how
    /// many it consumed (clamped to the slice), plus a result.
    pub fn recv<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        let (n, r) = self
            .socket(id)?
            .recv(|buf| {
                let len = buf.len();
                let (n, r) = f(buf);
                // smoltcp asserts on an overlong count; clamp instead of panicking.
                let n = n.min(len);
                (n, (n, r))
            })
            .map_err(recv_error)?;
        if n > 0 {
            self.touch(id);
        }
        Ok(r)
    }

    /// Up to `size` buffered bytes, left in the buffer (parse a request head in place). Only the
    /// contiguous run at the front of the receive ring is returned, so it can be shorter than
    /// what is buffered: consume, then peek again.
    pub fn peek(&mut self, id: ConnId, size: usize) -> Result<&[u8], ConnError> {
        self.socket(id)?.peek(size).map_err(recv_error)
    }

    /// Queues bytes for sending; returns how many fit in the send buffer.
    pub fn send_slice(&mut self, id: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        let n = self
            .socket(id)?
            .send_slice(data)
            .map_err(|_| ConnError::InvalidState)?;
        if n > 0 {
            self.touch(id);
        }
        Ok(n)
    }

    /// Zero-copy send: `f` fills the largest contiguous free run of the send buffer and returns
    /// how many bytes it wrote (clamped to the slice), plus a result.
    pub fn send<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        let (n, r) = self
            .socket(id)?
            .send(|buf| {
                let len = buf.len();
                let (n, r) = f(buf);
                // smoltcp asserts on an overlong count; clamp instead of panicking.
                let n = n.min(len);
                (n, (n, r))
            })
            .map_err(|_| ConnError::InvalidState)?;
        if n > 0 {
            self.touch(id);
        }
        Ok(r)
    }

    /// Whether received bytes are buffered.
    pub fn can_recv(&self, id: ConnId) -> bool {
        self.socket_ref(id).is_some_and(|s| s.can_recv())
    }

    /// Whether the send buffer has room and the connection may send.
    pub fn can_send(&self, id: ConnId) -> bool {
        self.socket_ref(id).is_some_and(|s| s.can_send())
    }

    /// Whether more bytes may still arrive (or are buffered).
    pub fn may_recv(&self, id: ConnId) -> bool {
        self.socket_ref(id).is_some_and(|s| s.may_recv())
    }

    /// Whether the sending half is open.
    pub fn may_send(&self, id: ConnId) -> bool {
        self.socket_ref(id).is_some_and(|s| s.may_send())
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn send_queue(&self, id: ConnId) -> usize {
        self.socket_ref(id).map_or(0, |s| s.send_queue())
    }

    /// TCP state; a reaped connection reads as `Closed`.
    pub fn state(&self, id: ConnId) -> State {
        self.socket_ref(id).map_or(State::Closed, |s| s.state())
    }

    /// The peer's address and port (the vendor's tunnel address, for `X-Forwarded-For`).
    pub fn remote_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.socket_ref(id)?.remote_endpoint().map(SocketAddr::from)
    }

    /// Our address and port on this connection.
    pub fn local_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.socket_ref(id)?.local_endpoint().map(SocketAddr::from)
    }

    /// Wakes `waker` (once) when receiving may make progress: data, FIN, reset, close.
    pub fn register_recv_waker(&mut self, id: ConnId, waker: &Waker) -> Result<(), ConnError> {
        self.socket(id)?.register_recv_waker(waker);
        Ok(())
    }

    /// Wakes `waker` (once) when sending may make progress: buffer space freed, state change.
    pub fn register_send_waker(&mut self, id: ConnId, waker: &Waker) -> Result<(), ConnError> {
        self.socket(id)?.register_send_waker(waker);
        Ok(())
    }

    /// Closes the sending half gracefully (FIN after queued data). The socket is reaped once
    /// the close completes: at once after `LAST-ACK`, 10 s later after `TIME-WAIT`.
    pub fn close(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.stacks
            .get_mut(id.stack())
            .ok_or(ConnError::Gone)?
            .close(id)?;
        self.touch(id);
        Ok(())
    }

    /// Resets the connection (RST on the next poll); the socket is reaped right after.
    pub fn abort(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.socket(id)?.abort();
        self.touch(id);
        Ok(())
    }

    /// Counters since construction.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Socket counts of each stack, in stack order.
    pub fn stack_stats(&self) -> impl Iterator<Item = StackStats> + '_ {
        self.stacks.iter().map(Stack::stats)
    }

    /// Number of stacks in this shard.
    pub fn stacks(&self) -> usize {
        self.stacks.len()
    }
}
