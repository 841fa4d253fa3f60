//! A shard's stack set: demultiplexing, polling, accept/connect, and the per-connection API the
//! runtime's connection tasks use.
//!
//! Invariants:
//! * A packet goes to `stacks[shard_of(hash, shards, stacks).1]` — the stack the tunnel core's
//!   hash designates — or is dropped, counted, and its buffer put on the spent list. Nothing
//!   else reaches a connection: only TCP to our address, on the listen port or on the exact
//!   tuple of one of our client connections.
//! * Every ingress buffer comes back through [`StackSet::drain_spent`], exactly once.
//! * [`StackSet::poll`] only polls stacks with queued packets, a touched connection, or a due
//!   timer; [`StackSet::poll_delay`] is exact for the same three reasons, so a runtime that
//!   sleeps for it neither spins nor misses a timer.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::config::{ConfigError, StackConfig};
use super::stack::{ConnId, Ingress, Io, Stack, StackOptions, StackStats, Tuple, mix};
use super::tcp::{self, Conn, State};
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

/// A shard's TCP termination: `stacks` connection tables behind one demultiplexer. See the module
/// docs of [`crate::netstack`].
pub struct StackSet {
    address: IpAddr,
    listen_port: u16,
    shard_index: usize,
    shards: usize,
    rx_queue: usize,
    tx_limit: usize,
    /// The latest `now` a poll was given: the time of application calls (receive autotuning,
    /// a client connection's start).
    now: Instant,
    stacks: Vec<Stack>,
    tx: VecDeque<PacketBuf>,
    spent: Vec<PacketBuf>,
    accepted: VecDeque<ConnId>,
    counters: Counters,
    next_port: u16,
    poll_waker: Option<Waker>,
    /// The stack the next poll starts with (it moves on every poll, so no stack is always
    /// first to the egress queue).
    first_stack: usize,
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

/// What a connection's error means to the caller.
fn conn_error(e: tcp::Error) -> ConnError {
    match e {
        tcp::Error::Finished => ConnError::Finished,
        tcp::Error::InvalidState => ConnError::InvalidState,
        // Reset, refused, timed out or aborted: the connection is gone (it is reaped on the
        // next poll).
        _ => ConnError::Gone,
    }
}

impl StackSet {
    /// Builds the shard's (empty) stacks.
    ///
    /// `epoch` is any instant at or before the first `poll` (the clock origin of initial
    /// sequence numbers). `seed` keys the initial sequence numbers and the ephemeral port
    /// cursor: pass fresh randomness (e.g. from `getrandom`), different per shard.
    pub fn new(config: &StackConfig, epoch: Instant, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let opts = StackOptions {
            address: config.address,
            listen_port: config.listen_port,
            backlog: config.backlog,
            max_sockets: config.max_sockets_per_stack,
            tcp: config.tcp_config(),
            epoch,
        };
        let stacks = (0..config.stacks)
            .map(|i| {
                let index = u16::try_from(i).unwrap_or(u16::MAX);
                Stack::new(index, opts.clone(), mix(seed, i as u64))
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
            now: epoch,
            stacks,
            tx: VecDeque::new(),
            spent: Vec::new(),
            accepted: VecDeque::new(),
            counters: Counters::default(),
            first_stack: 0,
            next_port: EPHEMERAL_FIRST + u16::try_from(cursor).unwrap_or(0),
            poll_waker: None,
        })
    }

    /// Hands an inbound IP packet (decrypted, flow-hashed to this shard) to its stack. On `Err`
    /// the packet was dropped and counted, and its buffer is already on the spent list.
    pub fn ingest(&mut self, buf: PacketBuf) -> Result<(), DropReason> {
        match self.classify(&buf) {
            Ok((stack, tuple)) => {
                let syn = is_opening_syn(buf.as_slice());
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

    /// Runs every stack that has work at `now`: feeds its queued packets to their connections
    /// (opening new ones for SYNs), runs due timers, lets touched connections transmit into
    /// buffers taken from `pool` (the shard's pool; its buffers must hold `mtu` bytes), queues
    /// completed handshakes for [`StackSet::accept`] and reaps finished connections. Returns
    /// whether any connection was processed (connection tasks are woken by the set itself).
    ///
    /// Drain [`StackSet::drain_tx`] before the next poll: a full egress queue makes connections
    /// hold their data, and `poll_delay` then stays at zero.
    pub fn poll(&mut self, now: Instant, pool: &mut BufPool) -> bool {
        self.now = self.now.max(now);
        let now = self.now;
        let mut changed = false;
        // Round robin over the stacks: the egress queue is shared, and the stack polled first
        // could otherwise fill it on every poll while the others' connections wait.
        let n = self.stacks.len();
        let first = self.first_stack % n.max(1);
        self.first_stack = first + 1;
        let (tail, head) = self.stacks.split_at_mut(first);
        for stack in head.iter_mut().chain(tail.iter_mut()) {
            if !stack.wants_poll(now) {
                continue;
            }
            let mut io = Io {
                spent: &mut self.spent,
                tx: &mut self.tx,
                pool: &mut *pool,
                counters: &mut self.counters,
                tx_limit: self.tx_limit,
                accepted: &mut self.accepted,
            };
            changed |= stack.poll(now, &mut io);
        }
        changed
    }

    /// How long the runtime may sleep before the next [`StackSet::poll`] if no packet arrives:
    /// zero when packets are queued or a connection was touched, otherwise the earliest
    /// connection timer (retransmission, probe, delayed ACK, keep-alive, idle timeout,
    /// `TIME-WAIT` expiry); `None` when only an inbound packet or an application call can
    /// create work.
    pub fn poll_delay(&self, now: Instant) -> Option<Duration> {
        self.stacks.iter().filter_map(|s| s.delay(now)).min()
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
            s.mark_ready(id.slot());
        }
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }

    /// Packets the connections wrote, in order, for the tunnel core to encrypt.
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

    /// Ingress buffers the connections are done with (and dropped packets): send them home to the core
    /// that allocated them.
    pub fn drain_spent(&mut self) -> std::vec::Drain<'_, PacketBuf> {
        self.spent.drain(..)
    }

    /// Stops accepting new connections in every stack (drain): later SYNs are answered with
    /// RST; established connections carry on.
    pub fn stop_accepting(&mut self) {
        for s in &mut self.stacks {
            s.stop_accepting();
        }
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }

    /// Gives back what traffic left in every stack that was not polled since the previous call:
    /// empty slots at the end of the slab and map room far beyond what is in use. Call it at a
    /// steady pace (the runtime: about every 100 ms); busy stacks keep their tables.
    pub fn trim(&mut self) {
        for s in &mut self.stacks {
            s.trim();
        }
    }

    /// The next connection that completed its handshake, if any.
    pub fn accept(&mut self) -> Option<ConnId> {
        while let Some(id) = self.accepted.pop_front() {
            if self.conn_ref(id).is_some() {
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
            let now = self.now;
            let st = &mut self.stacks[stack];
            if !st.has_room() || st.knows(&tuple) {
                continue;
            }
            let id = st.open_client(now, tuple)?;
            self.counters.connects += 1;
            self.touch(id);
            return Ok(id);
        }
        Err(ConnectError::NoPort)
    }

    fn conn(&mut self, id: ConnId) -> Result<&mut Conn, ConnError> {
        self.stacks
            .get_mut(id.stack())
            .ok_or(ConnError::Gone)?
            .conn(id)
    }

    fn conn_ref(&self, id: ConnId) -> Option<&Conn> {
        self.stacks.get(id.stack())?.conn_ref(id)
    }

    /// Copies received bytes into `buf`; `Ok(0)` means nothing buffered yet.
    pub fn recv_slice(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        let now = self.now;
        let n = self.conn(id)?.recv(now, buf).map_err(conn_error)?;
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
        let now = self.now;
        let conn = self.conn(id)?;
        let before = conn.recv_queue();
        let r = conn.recv_with(now, f).map_err(conn_error)?;
        if conn.recv_queue() != before {
            self.touch(id);
        }
        Ok(r)
    }

    /// Up to `size` buffered bytes, left in the buffer (parse a request head in place). Only the
    /// contiguous run at the front of the receive buffer is returned, so it can be shorter than
    /// what is buffered: consume, then peek again.
    pub fn peek(&mut self, id: ConnId, size: usize) -> Result<&[u8], ConnError> {
        let now = self.now;
        let conn = self.conn(id)?;
        if conn.recv_queue() == 0 {
            // End of stream or a closed connection is an error, as for `recv`.
            let mut probe = [0u8; 0];
            conn.recv(now, &mut probe).map_err(conn_error)?;
        }
        let run = conn.peek();
        Ok(&run[..run.len().min(size)])
    }

    /// Queues bytes for sending; returns how many fit in the send buffer.
    pub fn send_slice(&mut self, id: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        let n = self.conn(id)?.send(data).map_err(conn_error)?;
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
        let conn = self.conn(id)?;
        let before = conn.send_queue();
        let r = conn.send_with(f).map_err(conn_error)?;
        if conn.send_queue() != before {
            self.touch(id);
        }
        Ok(r)
    }

    /// Whether received bytes are buffered.
    pub fn can_recv(&self, id: ConnId) -> bool {
        self.conn_ref(id).is_some_and(|c| c.recv_queue() > 0)
    }

    /// Whether the send buffer has room and the connection may send.
    pub fn can_send(&self, id: ConnId) -> bool {
        self.conn_ref(id).is_some_and(|c| c.send_capacity() > 0)
    }

    /// Whether more bytes may still arrive (or are buffered).
    pub fn may_recv(&self, id: ConnId) -> bool {
        self.conn_ref(id).is_some_and(Conn::may_recv)
    }

    /// Whether the sending half is open.
    pub fn may_send(&self, id: ConnId) -> bool {
        self.conn_ref(id).is_some_and(Conn::may_send)
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn send_queue(&self, id: ConnId) -> usize {
        self.conn_ref(id).map_or(0, Conn::send_queue)
    }

    /// TCP state; a reaped connection reads as `Closed`.
    pub fn state(&self, id: ConnId) -> State {
        self.conn_ref(id).map_or(State::Closed, Conn::state)
    }

    /// The peer's address and port (the vendor's tunnel address, for `X-Forwarded-For`).
    pub fn remote_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.conn_ref(id).map(Conn::remote)
    }

    /// Our address and port on this connection.
    pub fn local_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.conn_ref(id).map(Conn::local)
    }

    /// The TCP settings connection `id` was opened with.
    pub fn tcp_config(&self, id: ConnId) -> Option<&tcp::Config> {
        self.conn_ref(id).map(Conn::config)
    }

    /// Applies a reloaded `[netstack]` — congestion control and the buffer caps — to the
    /// connections opened from now on (open ones keep theirs: a controller swapped under a
    /// flight would lose its state, and a cap lowered under a full buffer has nothing to drop).
    pub fn retune(
        &mut self,
        congestion: tcp::Algorithm,
        rx_buffer_max: usize,
        tx_buffer_max: usize,
    ) {
        for stack in &mut self.stacks {
            let mut tcp = stack.tcp().clone();
            tcp.congestion = congestion;
            tcp.rx_buffer_max = rx_buffer_max.max(tcp.rx_buffer);
            tcp.tx_buffer_max = tx_buffer_max.max(tcp.tx_buffer);
            stack.set_tcp(tcp);
        }
    }

    /// The connection's own counters and path figures (retransmissions, RTT, windows).
    pub fn tcp_stats(&self, id: ConnId) -> Option<tcp::Stats> {
        self.conn_ref(id).map(Conn::stats)
    }

    /// Wakes `waker` (once) when receiving may make progress: data, FIN, reset, close.
    pub fn register_recv_waker(&mut self, id: ConnId, waker: &Waker) -> Result<(), ConnError> {
        self.stacks
            .get_mut(id.stack())
            .ok_or(ConnError::Gone)?
            .set_recv_waker(id, waker)
    }

    /// Wakes `waker` (once) when sending may make progress: buffer space freed, state change.
    pub fn register_send_waker(&mut self, id: ConnId, waker: &Waker) -> Result<(), ConnError> {
        self.stacks
            .get_mut(id.stack())
            .ok_or(ConnError::Gone)?
            .set_send_waker(id, waker)
    }

    /// Closes the sending half gracefully (FIN after queued data). The connection is reaped
    /// once the close completes: at once after `LAST-ACK`, after `TIME-WAIT` otherwise.
    pub fn close(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.conn(id)?.close();
        self.touch(id);
        Ok(())
    }

    /// Resets the connection (RST on the next poll); it is reaped right after.
    pub fn abort(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.conn(id)?.abort();
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

/// TCP flag bits in byte 13 of the TCP header.
const FLAG_SYN: u8 = 0x02;
const FLAG_RST: u8 = 0x04;
const FLAG_ACK: u8 = 0x10;

/// Whether an IP packet (already validated by [`crate::packet::Flow::parse`] as TCP without
/// IPv6 extension headers) is a connection-opening SYN: SYN set, ACK and RST clear.
pub(crate) fn is_opening_syn(packet: &[u8]) -> bool {
    let offset = match packet.first().map(|b| b >> 4) {
        Some(4) => usize::from(packet[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return false,
    };
    packet
        .get(offset + 13)
        .is_some_and(|f| f & (FLAG_SYN | FLAG_ACK | FLAG_RST) == FLAG_SYN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[33] = flags;
        p
    }

    #[test]
    fn recognises_only_opening_syns() {
        assert!(is_opening_syn(&tcp_v4(FLAG_SYN)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_SYN | FLAG_ACK)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_SYN | FLAG_RST)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_ACK)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_SYN)[..30]));
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[53] = FLAG_SYN;
        assert!(is_opening_syn(&v6));
        assert!(!is_opening_syn(&[]));
    }
}
