//! TCP termination inside the tunnel: a shard's connections, fed with decrypted IP packets and
//! draining IP packets to encrypt.
//!
//! The tunnel core hashes every inner packet by its 5-tuple and moves the buffer to the shard that
//! owns the flow ([`crate::packet::shard_of`]). Inside the shard a [`StackSet`] splits its
//! connections over several tables ("stacks", [`StackConfig::stacks`]) and hands each packet to
//! `stacks[shard_of(hash, shards, stacks).1]`, so the tunnel core and the shard agree on the owner
//! of every flow without talking to each other. Each connection is one [`tcp::Conn`], our own
//! sans-IO TCP (SACK, RACK-TLP, PRR, CUBIC, buffers that grow with the path: see [`tcp`]).
//! The set is **sans-IO**: time is passed in ([`StackSet::poll`], [`StackSet::poll_delay`]),
//! packets come in as owned [`PacketBuf`](crate::packet::PacketBuf)s and go out as `PacketBuf`s
//! the caller drains; nothing here reads a clock, owns a socket or spawns.
//!
//! ## Why several tables
//!
//! A table (`stack.rs`) finds a connection by hash lookup and visits only the connections a poll
//! touched, so its size does not cost per packet. Tables remain because the tunnel core's flow
//! hash already names one, and because one table is polled only when it has queued packets, a
//! touched connection, or a due timer: a burst on one table does not make the others work.
//! (Before issue 19 each table was a smoltcp interface, which walks every socket for every
//! packet; that is why a shard has up to 256 of them by default.)
//!
//! ## Invariants
//!
//! * **No packet copies.** An ingress `PacketBuf` is parsed in place ([`tcp::wire::parse`]: the
//!   segment's payload borrows the buffer while the connection copies it into its receive
//!   buffer) and then parked in the *spent* list, which the runtime drains
//!   ([`StackSet::drain_spent`]) and sends back to the core that allocated it. Egress packets are
//!   written by the connection straight into a buffer from the shard's [`BufPool`] (passed to
//!   [`StackSet::poll`]) and queued for [`StackSet::drain_tx`]. Spent buffers are not reused for
//!   egress: a `PacketBuf` carries no record of its home pool, so mixing provenance would send
//!   tunnel-core memory to the shard pool and vice versa.
//! * **A SYN opens a connection while there is room.** A SYN to the listen port makes a
//!   connection in `SYN-RECEIVED` unless the table holds `max_sockets_per_stack` connections
//!   (answered with RST, [`Counters::syn_reset_full`]) or `backlog` half-open ones (dropped, the
//!   peer retransmits, [`Counters::syn_backlog_full`]). A segment for no connection is answered
//!   with the reset RFC 9293 prescribes ([`Counters::stray_segments`]).
//! * **The tables never grow without bound.** A connection is reaped once it finished (in order
//!   and out of `TIME-WAIT`, 10 s; reset; timed out; aborted after its RST went out); a new SYN on
//!   a tuple in `TIME-WAIT` recycles it at once ([`Counters::time_wait_recycled`]).
//! * **Handles do not alias.** A [`ConnId`] carries a generation; once its connection is reaped,
//!   every call with the old id returns [`ConnError::Gone`].
//! * **Memory is bounded.** Per-table ingress queues ([`StackConfig::rx_queue`]) and the shard's
//!   egress queue ([`StackConfig::tx_queue`]) have limits; beyond them packets are dropped and
//!   counted (ingress) or the connection keeps its data for the next poll (egress). Each
//!   connection's buffers are capped (`rx_buffer_max`, `tx_buffer_max`).
//! * **What a burst made is given back.** Connections free their buffers as they drain; the
//!   slab and maps of a table that went quiet are shrunk by [`StackSet::trim`], which the
//!   runtime calls about every 100 ms.
//!
//! [`BufPool`]: crate::packet::BufPool

mod config;
mod set;
mod stack;
pub mod tcp;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, DEFAULT_MTU, StackConfig};
pub use set::{DropReason, StackSet};
pub use stack::{ConnId, StackStats};
pub use tcp::State;

use std::fmt;

/// Why a call on a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The id does not name a live connection: it was reaped (closed and cleaned up), or it never
    /// belonged to this stack set.
    #[error("connection is gone")]
    Gone,
    /// The connection is not in a state that allows the operation (e.g. sending after close, or
    /// receiving after a reset).
    #[error("invalid state for this operation")]
    InvalidState,
    /// The peer closed its sending half and every byte it sent has been read (end of stream).
    #[error("peer finished sending")]
    Finished,
}

/// Why [`StackSet::connect`] could not open a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The remote address is unspecified, has port 0, or is of the other IP family than the
    /// broker's tunnel address.
    #[error("remote address is not reachable from the tunnel address")]
    Unaddressable,
    /// No ephemeral port maps back to this shard on a stack with room (every candidate stack is
    /// full, or every port towards this remote is taken).
    #[error("no free local port whose flow hashes back to this shard")]
    NoPort,
}

/// Event counters of one shard's stack set (plain counters; the runtime exports them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Packets queued into a stack.
    pub packets_in: u64,
    /// Packets smoltcp wrote for transmission.
    pub packets_out: u64,
    /// Dropped: not a parsable IPv4/IPv6 packet.
    pub drop_malformed: u64,
    /// Dropped: an inner IP fragment.
    pub drop_fragment: u64,
    /// Dropped: not TCP.
    pub drop_not_tcp: u64,
    /// Dropped: destination is not the broker's tunnel address.
    pub drop_wrong_address: u64,
    /// Dropped: neither the listen port nor the tuple of one of our client connections.
    pub drop_no_socket: u64,
    /// Dropped: a TCP header, option or checksum that does not parse.
    pub drop_bad_segment: u64,
    /// Dropped: the flow hashes to another shard (the tunnel core misrouted it).
    pub drop_wrong_shard: u64,
    /// Dropped: the stack's ingress queue was full.
    pub drop_rx_queue_full: u64,
    /// A repeated SYN for a connection that is already being set up or open: handed to that
    /// connection (which answers it), never a second connection.
    pub drop_duplicate_syn: u64,
    /// Egress attempts into a pool buffer smaller than the MTU (misconfiguration: segments that
    /// do not fit are held back).
    pub drop_tx_buffer_small: u64,
    /// Times a connection found the egress queue full and kept its data for the next poll.
    pub tx_queue_full: u64,
    /// Connections that completed the handshake and were queued for [`StackSet::accept`].
    pub accepted: u64,
    /// SYNs answered with RST because the stack held `max_sockets_per_stack` connections or
    /// the shard stopped accepting (drain).
    pub syn_reset_full: u64,
    /// SYNs dropped because the stack already held `backlog` half-open handshakes (the peer
    /// retransmits its SYN).
    pub syn_backlog_full: u64,
    /// Segments for no connection (answered with RST unless they were resets themselves).
    pub stray_segments: u64,
    /// Client connections opened with [`StackSet::connect`].
    pub connects: u64,
    /// Connections reaped after they finished.
    pub reaped: u64,
    /// Connections that entered `TIME-WAIT` (each holds its slot for 10 s).
    pub time_wait: u64,
    /// `TIME-WAIT` connections recycled early because a new SYN arrived on their tuple.
    pub time_wait_recycled: u64,
    /// Stack polls run (a stack with nothing to do is skipped).
    pub stack_polls: u64,
    /// Of reaped connections: data segments sent again (any cause).
    pub retransmits: u64,
    /// Of reaped connections: retransmissions of segments found lost by SACK/RACK or
    /// duplicate ACKs (no timeout waited for).
    pub fast_retransmits: u64,
    /// Of reaped connections: tail loss probes sent.
    pub tail_loss_probes: u64,
    /// Of reaped connections: retransmission timeouts.
    pub rtos: u64,
    /// Of reaped connections: fast recovery episodes.
    pub recoveries: u64,
    /// Of reaped connections: tail loss probes that repaired a loss (each cut the window).
    pub tlp_recoveries: u64,
    /// Of reaped connections: retransmission timeouts found spurious and undone.
    pub spurious_rtos: u64,
}

impl Counters {
    /// Adds what a finished connection counted.
    pub(crate) fn add_connection(&mut self, s: &tcp::Stats) {
        self.retransmits += s.retransmits;
        self.fast_retransmits += s.fast_retransmits;
        self.tail_loss_probes += s.tail_loss_probes;
        self.rtos += s.rtos;
        self.recoveries += s.recoveries;
        self.tlp_recoveries += s.tlp_recoveries;
        self.spurious_rtos += s.spurious_rtos;
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in={} out={} accepted={} connects={} reaped={} time_wait={} syn_reset_full={} \
             syn_backlog_full={} stray={} drops(malformed={} fragment={} not_tcp={} address={} \
             no_socket={} bad_segment={} shard={} rx_full={} dup_syn={} tx_small={}) \
             tx_queue_full={} polls={} retransmits={} fast={} tlp={} tlp_recoveries={} rto={} \
             spurious_rto={} recoveries={}",
            self.packets_in,
            self.packets_out,
            self.accepted,
            self.connects,
            self.reaped,
            self.time_wait,
            self.syn_reset_full,
            self.syn_backlog_full,
            self.stray_segments,
            self.drop_malformed,
            self.drop_fragment,
            self.drop_not_tcp,
            self.drop_wrong_address,
            self.drop_no_socket,
            self.drop_bad_segment,
            self.drop_wrong_shard,
            self.drop_rx_queue_full,
            self.drop_duplicate_syn,
            self.drop_tx_buffer_small,
            self.tx_queue_full,
            self.stack_polls,
            self.retransmits,
            self.fast_retransmits,
            self.tail_loss_probes,
            self.tlp_recoveries,
            self.rtos,
            self.spurious_rtos,
            self.recoveries,
        )
    }
}
