//! Our own TCP: a sans-IO connection core built for WAN paths, on smoltcp's wire types.
//!
//! smoltcp's TCP socket (what the stack set ran until issue 19) recovers from loss the way TCP
//! did in the 1990s: a 1 s minimum RTO with exponential back-off, fast retransmit of one segment, SACK blocks
//! received but never used, no RACK, no tail loss probe, a fixed send buffer. Over a 30 ms path
//! with 0.1 % loss a 10 MiB download took 19.7 s against the kernel's 0.5 s (issue 19). This
//! module is the replacement: one [`Conn`] per connection, driven exactly like the rest of
//! `netstack` — segments and time in, segments out — with smoltcp kept as the packet layer
//! ([`wire`]: `Ipv4Packet`/`Ipv6Packet`/`TcpPacket`/`TcpRepr` parse and emit).
//!
//! Every tunnel connection is one: the [`StackSet`](super::StackSet) (in `stack.rs`) drives
//! them like this:
//!
//! ```text
//!  StackSet (demux by 4-tuple, listeners/backlog, accept queue, ConnId generations, reaping)
//!     │ wire::parse(packet) ─► Conn::accept(SYN) / conn.handle_segment(now, &repr)
//!     │ conn.poll_transmit(now, pool_buffer) ─► IP packet written in place (zero-copy egress)
//!     │ conn.poll_timeout() / conn.on_timeout(now)     (one timer per connection)
//!     │ send / send_with / recv / recv_with / peek / close / abort / state / stats
//!     ▼ unmatched segment ─► wire::reset_for(&repr)
//! ```
//!
//! ## Layout
//!
//! | file | what | RFC |
//! |---|---|---|
//! | `conn/` | the state machine: handshake and options, acceptability, RST/SYN handling, ACK processing, data and FIN, close, timers, output | 9293, 5961, 7323, 1122 |
//! | `scoreboard.rs` | every segment in flight with SACKed/lost/retransmitted flags; `pipe` in O(1) | 6675, 2018 |
//! | `rack.rs` | time-based loss detection, reordering window, tail loss probe timeout | 8985 |
//! | `prr.rs` | how much to send per ACK during fast recovery | 6937 / 9937 |
//! | `rtt.rs` | SRTT/RTTVAR/RTO (200 ms floor on the variance term, as Linux), windowed min RTT | 6298 |
//! | `cc/` | [`Controller`] trait; [`Cubic`] with HyStart++, [`NewReno`], [`Bbr`] (model-based, paced; samples marked application-limited) | 9438, 9406, 5681, 3465, BBR and delivery-rate drafts |
//! | `reassembly.rs` | out-of-order map (bounded), SACK blocks most recent first, D-SACK | 2018, 2883 |
//! | `ring.rs` | send/receive byte rings that allocate what they hold, under a limit that grows | |
//! | `wire.rs` | IP + TCP parse/emit on smoltcp's types; RST for strays | |
//! | `config.rs` | [`Config`] with the default and the reason for each field | |
//!
//! ## Loss recovery
//!
//! With SACK (every modern peer), **RACK** decides what is lost: a segment is lost once a segment
//! sent after it has been delivered and `RACK.rtt + reo_wnd` has passed since it was sent;
//! `reo_wnd` is `min_rtt / 4` until three segments are SACKed above a hole (or zero during
//! recovery) and widens after D-SACKs show reordering. Losses at the end of a flight are found
//! by the **tail loss probe** (2·SRTT after the last ACK); a probe that resent data cuts the
//! window only once an ACK *beyond* it, without a D-SACK for it, shows it repaired a loss (the
//! original's ACK, held by the peer's delayed-ACK timer, may arrive first). The first loss of
//! a window cuts `ssthresh` once and **PRR** spreads the reduction over the recovery round trip;
//! retransmissions go first, in offset order, and a SACKed segment is never sent again
//! (segments keep their boundaries for life, so SACK blocks cover whole entries; a FIN
//! segment counts as SACKed by its data). Without SACK the connection falls back to three
//! duplicate ACKs and NewReno partial ACKs. The **RTO** (RFC 6298, `SRTT + max(4·RTTVAR,
//! 200 ms)`) is the last resort: everything not SACKed is marked lost, the window collapses to
//! one segment, and a peer that reneged on SACKed data (ACKs stop at a segment it SACKed) has
//! its SACKs forgotten. A timeout that proves **spurious** is undone, as Linux does: an ACK
//! that echoes a timestamp from before it (Eifel, RFC 3522: the ACK path stalled), or D-SACKs
//! for every retransmission since (the ACK that would have stopped it was lost), give the
//! controller its window and threshold back and drop the loss marks (RFC 4015). Karn's rule
//! applies to RTT samples; timestamps disambiguate.
//!
//! ## Windows and buffers
//!
//! The congestion window is byte-counted (a stretch ACK covering 40 segments grows it by 40
//! segments' worth) and grows only when it was used (RFC 7661: in slow start while the flight
//! is at least half the window, afterwards when it was full), so an application- or
//! receiver-limited connection does not inflate it. The send buffer follows the window (twice
//! `cwnd`, Linux's rule) but at most four measured bandwidth-delay products (delivery rate ×
//! minimum RTT: a window that only fills a queue does not grow it), from [`Config::tx_buffer`]
//! up to [`Config::tx_buffer_max`]; the receive
//! buffer is autotuned once per receive RTT to twice what the application read in it (more
//! while the rate is still climbing) up to [`Config::rx_buffer_max`], which also fixes our
//! window-scale shift. Both rings allocate only what they hold and free large allocations when
//! they drain, so an idle keep-alive connection holds at most [`Config::buffer_keep`] per
//! direction.
//!
//! ## Hostile input
//!
//! Any `TcpRepr` sequence is safe: sequence and acknowledgement numbers are compared modulo 2³²
//! against the window before becoming `u64` offsets, SACK blocks are clamped to what was sent,
//! out-of-order data is bounded by the receive window and at most 32 stretches, RSTs must hit
//! `RCV.NXT` exactly and challenge ACKs are rate-limited (RFC 5961), PAWS drops stale segments.
//! A randomised test feeds tens of thousands of arbitrary segments (`tests/conn.rs`); a fuzz
//! target is the next step.
//!
//! ## Testing
//!
//! `tests/sim.rs` is a deterministic two-endpoint network in virtual time: per-direction
//! delay, bottleneck rate with a drop-tail queue, seeded loss, duplication, reordering and
//! scripted drops, and a trace of every packet. `tests/wan.rs` holds the issue's acceptance
//! scenarios; each also runs with smoltcp 0.14's socket as the sender (`tests/smol.rs`) to show
//! the old behaviour failing. `tests/conn.rs` scripts single connections segment by segment;
//! `tests/loss.rs` holds high-loss cases and a receiver that delays its ACKs as Linux does.
//!
//! ## Why not a library
//!
//! We looked (crates.io and docs.rs, 2026): smoltcp 0.14 (the newest release) has none of the
//! above; `ts_netstack_smoltcp` and `wireguard-netstack` wrap smoltcp; `ipstack` and its fork
//! `ipstack-geph` ship a minimal TCP bound to tokio (`ipstack-geph`: a fixed 100 ms RTO,
//! 16 KiB windows); `lwip` and `tun2socks` bind C stacks (lwIP) behind tokio streams; `pktkit`'s `vtcp` (0.1) lists SACK
//! and NewReno/HighSpeed but no RFC 6675 scoreboard, RACK-TLP, PRR or CUBIC; `s2n-quic` and
//! `quinn-proto` have the controllers and loss detection we want but for QUIC, not TCP. None
//! offers a sans-IO TCP connection with SACK-based recovery, RACK-TLP and CUBIC that we can
//! drive from our own demultiplexer, with our buffers and our clock. The designs we learned
//! from are gVisor's netstack (`pkg/tcpip/transport/tcp`: the scoreboard / RACK / recovery /
//! congestion split, receive buffer moderation) and quinn-proto (`congestion/`: a small
//! controller trait fed bytes and time); the code here is our own.
//!
//! ## Not yet
//!
//! Pacing for the loss-based controllers (only [`Bbr`] paces: its rate comes from its model);
//! BBRv2's loss/ECN-bounded in-flight limits (see `cc/bbr.rs`); undoing spurious fast
//! recoveries (D-SACK undo) and F-RTO (spurious timeouts are undone by timestamps and
//! D-SACKs; [`Bbr`] keeps the one-segment window after an undo and regrows from its model); ECN; SYN cookies; path MTU discovery; PAWS's 24-day idle
//! rule; urgent data (ignored, as by smoltcp). Whether a SYN may reopen a tuple in
//! `TIME-WAIT` (RFC 6191) is the stack set's call. RACK's loss scan walks the segments below
//! the most recently delivered one on every ACK during recovery (Linux keeps a list in send
//! order to avoid that); each connection keeps its own copy of the [`Config`] (184 bytes).

mod cc;
mod config;
mod conn;
mod prr;
mod rack;
mod reassembly;
mod ring;
mod rtt;
mod scoreboard;
pub mod wire;

#[cfg(test)]
mod tests;

pub use cc::{Ack, Algorithm, Bbr, BbrMode, Controller, Cubic, NewReno, RateSample};
pub use config::{Config, ConfigError};
pub use conn::{CloseReason, Conn, Error, State, Stats};
