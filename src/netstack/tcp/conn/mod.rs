//! One TCP connection, sans-IO: segments and time in, segments out.
//!
//! ```text
//!   handle_segment(now, &TcpRepr) ──►┌──────────┐──► poll_transmit(now, buf) -> Option<len>
//!   on_timeout(now)               ──►│   Conn   │──► poll_timeout() -> Option<Instant>
//!   send / recv / close / abort   ──►└──────────┘
//! ```
//!
//! The caller (the stack set) demultiplexes packets to connections, calls
//! [`Conn::poll_transmit`] until it returns `None` after every input, and calls
//! [`Conn::on_timeout`] when [`Conn::poll_timeout`] is reached. A connection never reads a clock,
//! never allocates per segment (its buffers grow by doubling, its scoreboard is a `VecDeque`
//! that reaches its working size and stays there), and accepts any [`TcpRepr`] without panicking:
//! every sequence number is compared modulo 2³² against the window before it becomes a `u64`
//! offset, and offsets are checked against what was actually sent or buffered.
//!
//! Files: `input.rs` (segment arrival, RFC 9293 3.10.7 and the ACK processing that drives loss
//! recovery), `output.rs` (what to send next), `timers.rs` (RTO, probe, reordering, persist,
//! delayed ACK, keep-alive, TIME-WAIT).
//!
//! ## Sequence offsets
//!
//! Internally both directions count **offsets** (`u64`) from the first byte after the SYN:
//! send offset 0 is `ISS + 1`, receive offset 0 is `IRS + 1`, and a FIN takes the offset after
//! the last data byte. Wire sequence numbers are produced at the edge (`wire_seq`) and turned
//! back into offsets relative to a known point (`SND.UNA`, `RCV.NXT`) with a signed 32-bit
//! difference, so a connection may carry any number of bytes.

mod input;
mod output;
mod timers;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

use super::cc::Controller;
use super::config::Config;
use super::prr::Prr;
use super::rack::Rack;
use super::reassembly::Reassembly;
use super::ring::Ring;
use super::rtt::RttEstimator;
use super::scoreboard::Scoreboard;
use super::wire;

/// Round trips the send buffer's delivery-rate filter remembers (BBR's bandwidth window).
const BW_ROUNDS: usize = 10;

/// The send buffer holds this many measured bandwidth-delay products (Linux's
/// `tcp_sndbuf_expand` factor): one in flight, one queued behind it for the application.
const TX_BDP_FACTOR: u64 = 2;

/// The measured BDP lags the window by a round trip, which in slow start is a factor of two:
/// the send buffer allows the window up to this many measured BDPs, so slow start proceeds as
/// if the buffer followed the window, while a window that only fills a queue (the BDP stays
/// put) no longer grows the buffer.
const SLOW_START_LAG: u64 = 2;

/// TCP connection states (RFC 9293). `LISTEN` is not one: listening is the stack set's job, and
/// a connection begins in `SYN-SENT` ([`Conn::connect`]) or `SYN-RECEIVED` ([`Conn::accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
    Closed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
            State::Closed => "CLOSED",
        };
        f.write_str(s)
    }
}

/// Why a connection ended, when it did not end with an orderly close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed in order: both FINs exchanged and acknowledged.
    Done,
    /// The peer reset the connection.
    Reset,
    /// The peer refused the connection (RST in answer to our SYN).
    Refused,
    /// The peer stopped answering: retransmissions, SYN retries or the idle timeout ran out.
    TimedOut,
    /// The application aborted it.
    Aborted,
}

/// Why an application call on a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection's state does not allow it (sending after close, or a closed connection).
    #[error("invalid state for this operation")]
    InvalidState,
    /// The peer finished sending and every byte it sent has been read.
    #[error("peer finished sending")]
    Finished,
    /// The connection was reset, refused, timed out or aborted.
    #[error("connection closed: {0:?}")]
    Closed(CloseReason),
}

/// Counters of one connection (see [`Conn::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Segments sent (all kinds).
    pub segments_out: u64,
    /// Segments handed to [`Conn::handle_segment`].
    pub segments_in: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_out: u64,
    /// Data segments sent again (any cause).
    pub retransmits: u64,
    /// Retransmissions of segments marked lost by RACK or duplicate ACKs.
    pub fast_retransmits: u64,
    /// Tail loss probes sent.
    pub tail_loss_probes: u64,
    /// Retransmission timeouts.
    pub rtos: u64,
    /// Retransmission timeouts found spurious and undone (the held ACKs or D-SACKs showed
    /// nothing was lost).
    pub spurious_rtos: u64,
    /// Fast recovery episodes entered.
    pub recoveries: u64,
    /// Tail loss probes that repaired a loss (their ACK carried no D-SACK).
    pub tlp_recoveries: u64,
    /// D-SACK blocks received (our retransmission was unnecessary).
    pub dsacks: u64,
    /// Times the peer reneged on SACKed data.
    pub renegings: u64,
    /// Out-of-order segments received.
    pub out_of_order: u64,
    /// Segments dropped as unacceptable (outside the window, PAWS, bad ACK).
    pub dropped: u64,
    /// Zero-window and keep-alive probes sent.
    pub probes: u64,
    /// Largest congestion window, bytes.
    pub max_cwnd: u64,
    /// Largest flight (`pipe`), bytes.
    pub max_in_flight: u64,
    /// Largest send buffer limit reached (autotuning), bytes.
    pub max_tx_buffer: u64,
    /// Largest receive buffer limit reached (autotuning), bytes.
    pub max_rx_buffer: u64,
}

/// The timer behind `rtx_at`: only one of these runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RtxTimer {
    /// Retransmission timeout (also SYN / SYN-ACK retransmission).
    Rto,
    /// Tail loss probe.
    Probe,
    /// Zero-window probe.
    Persist,
}

/// Loss recovery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// No recovery under way.
    Open,
    /// Fast recovery (PRR) until `SND.UNA` passes `point`.
    Fast { point: u64 },
    /// After an RTO: slow start from one segment until `SND.UNA` passes `point`.
    Timeout { point: u64 },
}

/// A tail loss probe in flight (RFC 8985 7.4).
#[derive(Debug, Clone, Copy)]
struct Tlp {
    /// `SND.NXT` when the probe went out.
    end: u64,
    /// The probe resent the last segment (rather than new data).
    retransmission: bool,
    /// The probed segment `start..end` (to recognise a D-SACK for it).
    probed: (u64, u64),
    /// A D-SACK for the probed segment arrived: both copies got through, nothing was lost.
    dsacked: bool,
}

/// What a retransmission timeout changed, kept until it proves right or spurious (RFC 4015).
#[derive(Debug, Clone, Copy)]
struct RtoUndo {
    /// When the timeout fired: an ACK advancing `SND.UNA` that echoes a timestamp sent
    /// before answers an original transmission (Eifel detection, RFC 3522).
    at: Instant,
    /// The controller's window and threshold before the timeout.
    cwnd: u64,
    ssthresh: u64,
    /// The fast recovery (its recovery point) the timeout interrupted, if any.
    fast_point: Option<u64>,
    /// Retransmissions since the timeout not yet reported as duplicates by a D-SACK.
    retrans: u32,
    /// `SND.NXT` when the timeout's recovery ended: an ACK beyond it ends the record.
    ended: Option<u64>,
}

/// The peer's options as negotiated in the handshake.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// Payload bytes per segment we send (the peer's MSS, our MTU, minus the timestamp option).
    smss: u32,
    /// Shift applied to the peer's window field.
    snd_shift: u8,
    /// Shift applied to our window field.
    rcv_shift: u8,
    /// Window scaling was negotiated.
    window_scaling: bool,
    sack: bool,
    timestamps: bool,
}

/// Receive-buffer autotuning (dynamic right-sizing, in the spirit of Linux's
/// `tcp_rcv_space_adjust` and gVisor's receive buffer moderation): once per receive RTT, the
/// buffer is raised to twice what the application read in that RTT, more when the rate grew.
#[derive(Debug, Clone, Copy)]
struct RcvTune {
    /// Start of the current measurement interval.
    since: Instant,
    /// Bytes read in it.
    copied: u64,
    /// Bytes read in the last interval that raised the buffer.
    prev: u64,
    /// Receive-side RTT estimate (from timestamp echoes or one window's arrival time).
    rtt: Option<Duration>,
    /// Without timestamps: (offset, time) of a window-arrival measurement in progress.
    probe: Option<(u64, Instant)>,
}

/// One TCP connection. See the module docs.
pub struct Conn {
    cfg: Config,
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    reason: Option<CloseReason>,
    created: Instant,

    // Handshake.
    iss: TcpSeqNumber,
    irs: TcpSeqNumber,
    /// Our SYN (or SYN-ACK) must be (re)sent.
    syn_pending: bool,
    syn_sent_at: Option<Instant>,
    syn_xmits: u32,
    opts: Options,
    /// Largest MSS the peer announced (before the timestamp deduction).
    peer_mss: u16,
    ts_offset: u32,
    ts_recent: u32,

    // Send side.
    tx: Ring,
    sb: Scoreboard,
    /// Bytes the application has written (offset one past the last data byte).
    written: u64,
    /// The application closed: the FIN goes at offset `written`.
    fin_queued: bool,
    snd_wnd: u64,
    max_snd_wnd: u64,
    /// Receive offset and ACK offset of the segment that last updated `snd_wnd`.
    snd_wl1: i64,
    snd_wl2: u64,
    cc: Box<dyn Controller>,
    rtt: RttEstimator,
    rack: Rack,
    recovery: Recovery,
    prr: Prr,
    /// The window in force during fast recovery (`pipe + sndcnt` from PRR).
    recovery_cwnd: u64,
    /// Duplicate ACKs in a row (peers without SACK).
    dupacks: u32,
    tlp: Option<Tlp>,
    tlp_pending: bool,
    rto_undo: Option<RtoUndo>,
    /// Pacing (`output.rs`): no data segment goes out before this instant.
    pace_at: Option<Instant>,
    /// Data waits for the pacer: this is then one of the connection's deadlines, half a
    /// quantum after `pace_at` (see `output.rs` `paced`).
    pace_wake: Option<Instant>,
    /// Half a pacing quantum at the current rate.
    pace_slack: Duration,
    /// Delivery-rate bookkeeping (see `scoreboard::Segment`).
    delivered: u64,
    /// Non-zero while the application limits the flight: the `delivered` count that ends the
    /// application-limited stretch (draft-cheng-iccrg-delivery-rate-estimation `C.app_limited`).
    app_limited_until: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    /// Round-trip bookkeeping for "was the window used" (RFC 7661).
    round_end: u64,
    cwnd_limited: bool,
    cwnd_limited_prev: bool,
    /// Send-buffer autotuning: the largest delivery rate (bytes/s) sampled in each of the last
    /// [`BW_ROUNDS`] round trips (slot `rounds % BW_ROUNDS`), and the round count. Their maximum
    /// times the minimum RTT is the measured bandwidth-delay product the send buffer follows.
    bw_rounds: [u64; BW_ROUNDS],
    rounds: u64,
    /// Largest flight in this and the previous window of sends (a window ends when `SND.UNA`
    /// passes `max_pipe_end`, checked when sending, as Linux's `max_packets_out`: the flight
    /// that an ACK acknowledges is still on record when the ACK arrives).
    max_pipe: u64,
    max_pipe_prev: u64,
    max_pipe_end: u64,
    rto_count: u32,

    // Receive side.
    rx: Ring,
    reasm: Reassembly,
    rcv_nxt: u64,
    /// Highest right window edge advertised.
    rcv_adv: u64,
    /// `RCV.NXT` carried by the last ACK we sent.
    last_ack_sent: u64,
    /// Offset of the peer's FIN, once seen.
    peer_fin: Option<u64>,
    /// Largest segment the peer sent us (for ACK and window-update thresholds).
    rcv_mss: u64,
    /// Payload bytes received since our last ACK.
    unacked: u64,
    tune: RcvTune,

    // Output flags and timers.
    ack_now: bool,
    ack_at: Option<Instant>,
    probe_pending: bool,
    rst_pending: Option<(TcpSeqNumber, Option<TcpSeqNumber>)>,
    rtx_at: Option<(Instant, RtxTimer)>,
    persist_backoff: u32,
    reorder_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    time_wait_until: Option<Instant>,
    last_recv: Instant,
    last_challenge: Option<Instant>,

    stats: Stats,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("state", &self.state)
            .field("snd_una", &self.sb.una())
            .field("snd_nxt", &self.sb.nxt())
            .field("rcv_nxt", &self.rcv_nxt)
            .field("cwnd", &self.cwnd())
            .field("srtt", &self.rtt.srtt())
            .finish_non_exhaustive()
    }
}

/// The interval a delivery-rate sample for `seg` spans: the longer of its send and ACK
/// intervals (`tcp_rate`'s rule, so ACK compression cannot inflate the rate).
fn rate_interval(now: Instant, seg: &super::scoreboard::Segment) -> Duration {
    let ack_elapsed = now.saturating_duration_since(seg.delivered_at);
    let send_elapsed = seg.sent_at.saturating_duration_since(seg.first_sent_at);
    ack_elapsed.max(send_elapsed)
}

impl Conn {
    fn new(
        cfg: &Config,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        isn: u32,
        state: State,
    ) -> Self {
        let mss = our_mss(cfg, local);
        let iw = u64::from(cfg.initial_window) * u64::from(mss);
        Self {
            cfg: cfg.clone(),
            local,
            remote,
            state,
            reason: None,
            created: now,
            iss: TcpSeqNumber(isn as i32),
            irs: TcpSeqNumber(0),
            syn_pending: true,
            syn_sent_at: None,
            syn_xmits: 0,
            opts: Options {
                smss: mss,
                snd_shift: 0,
                rcv_shift: 0,
                window_scaling: false,
                sack: false,
                timestamps: false,
            },
            peer_mss: 536,
            // RFC 7323 5.4: a per-connection random offset for TSval.
            ts_offset: isn.rotate_left(13) ^ 0x5bd1_e995,
            ts_recent: 0,
            tx: Ring::new(cfg.tx_buffer),
            sb: Scoreboard::new(),
            written: 0,
            fin_queued: false,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: -1,
            snd_wl2: 0,
            cc: cfg.congestion.build(mss, iw),
            rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
            rack: Rack::default(),
            recovery: Recovery::Open,
            prr: Prr::default(),
            recovery_cwnd: 0,
            dupacks: 0,
            tlp: None,
            rto_undo: None,
            tlp_pending: false,
            pace_at: None,
            pace_wake: None,
            pace_slack: Duration::ZERO,
            delivered: 0,
            app_limited_until: 0,
            delivered_at: now,
            first_sent_at: now,
            round_end: 0,
            cwnd_limited: false,
            cwnd_limited_prev: false,
            bw_rounds: [0; BW_ROUNDS],
            rounds: 0,
            max_pipe: 0,
            max_pipe_prev: 0,
            max_pipe_end: 0,
            rto_count: 0,
            rx: Ring::new(cfg.rx_buffer),
            reasm: Reassembly::default(),
            rcv_nxt: 0,
            rcv_adv: 0,
            last_ack_sent: 0,
            peer_fin: None,
            rcv_mss: 536,
            unacked: 0,
            tune: RcvTune {
                since: now,
                copied: 0,
                prev: 0,
                rtt: None,
                probe: None,
            },
            ack_now: false,
            ack_at: None,
            probe_pending: false,
            rst_pending: None,
            rtx_at: None,
            persist_backoff: 0,
            reorder_at: None,
            keepalive_at: None,
            time_wait_until: None,
            last_recv: now,
            last_challenge: None,
            stats: Stats::default(),
        }
    }

    /// Active open: a connection in `SYN-SENT` whose SYN goes out on the next
    /// [`poll_transmit`](Conn::poll_transmit). `isn` is the initial sequence number (pass a
    /// keyed hash of the tuple and a clock, RFC 6528, or fresh randomness). The configuration
    /// must have passed [`Config::validate`].
    pub fn connect(
        cfg: &Config,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        isn: u32,
    ) -> Self {
        Self::new(cfg, now, local, remote, isn, State::SynSent)
    }

    /// Passive open: a connection in `SYN-RECEIVED` for the SYN `syn` that `remote` sent to
    /// `local`; the SYN-ACK goes out on the next [`poll_transmit`](Conn::poll_transmit).
    /// Returns `None` if `syn` is not an opening SYN (SYN without ACK).
    pub fn accept(
        cfg: &Config,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        syn: &TcpRepr<'_>,
        isn: u32,
    ) -> Option<Self> {
        if syn.control != TcpControl::Syn || syn.ack_number.is_some() {
            return None;
        }
        let mut c = Self::new(cfg, now, local, remote, isn, State::SynReceived);
        c.take_syn_options(syn);
        c.stats.segments_in += 1;
        Some(c)
    }

    /// Records the peer's SYN: its sequence number and options (RFC 7323, RFC 2018, MSS).
    fn take_syn_options(&mut self, syn: &TcpRepr<'_>) {
        self.irs = syn.seq_number;
        self.rcv_nxt = 0;
        self.last_ack_sent = 0;
        self.peer_mss = syn.max_seg_size.filter(|&m| m >= 64).unwrap_or(536);
        let ws = match syn.window_scale {
            Some(shift) if self.cfg.window_scaling => Some(shift.min(14)),
            _ => None,
        };
        let (snd_shift, rcv_shift) = match ws {
            Some(s) => (s, self.cfg.window_shift()),
            None => (0, 0),
        };
        let timestamps = self.cfg.timestamps && syn.timestamp.is_some();
        if let Some(ts) = syn.timestamp {
            self.ts_recent = ts.tsval;
        }
        let ours = our_mss(&self.cfg, self.local);
        let smss = u32::from(self.peer_mss).min(ours) - if timestamps { 12 } else { 0 };
        self.opts = Options {
            smss: smss.max(64),
            snd_shift,
            rcv_shift,
            window_scaling: ws.is_some(),
            sack: self.cfg.sack && syn.sack_permitted,
            timestamps,
        };
        self.rcv_mss = u64::from(self.opts.smss).min(536);
        // The SYN's window is never scaled (RFC 7323 2.2).
        self.snd_wnd = u64::from(syn.window_len);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = -1;
        let iw = u64::from(self.cfg.initial_window) * u64::from(self.opts.smss);
        self.cc = self.cfg.congestion.build(self.opts.smss, iw);
    }

    // ---- Application side ----------------------------------------------------------------

    /// The connection state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the connection closed (`None` while it is open or closing in order).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// Whether the connection is finished and holds nothing more to send: the caller may drop
    /// it. (A connection in `TIME-WAIT` is not finished; an aborted one is once its RST went.)
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && self.rst_pending.is_none()
    }

    /// Our address and port.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The peer's address and port.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Whether the application may still queue data (the sending half is open).
    pub fn may_send(&self) -> bool {
        !self.fin_queued
            && matches!(
                self.state,
                State::SynSent | State::SynReceived | State::Established | State::CloseWait
            )
    }

    /// Whether more bytes may still be read (buffered, or the peer has not finished).
    pub fn may_recv(&self) -> bool {
        !self.rx.is_empty()
            || matches!(
                self.state,
                State::SynSent
                    | State::SynReceived
                    | State::Established
                    | State::FinWait1
                    | State::FinWait2
            )
    }

    /// Room left in the send buffer.
    pub fn send_capacity(&self) -> usize {
        if self.may_send() { self.tx.free() } else { 0 }
    }

    /// Bytes queued and not yet acknowledged.
    pub fn send_queue(&self) -> usize {
        self.tx.len()
    }

    /// Bytes received and not yet read.
    pub fn recv_queue(&self) -> usize {
        self.rx.len()
    }

    fn closed_error(&self) -> Error {
        match self.reason {
            Some(r) if r != CloseReason::Done => Error::Closed(r),
            _ => Error::InvalidState,
        }
    }

    /// Queues as much of `data` as fits; returns how much.
    pub fn send(&mut self, data: &[u8]) -> Result<usize, Error> {
        if !self.may_send() {
            return Err(self.closed_error());
        }
        let n = self.tx.push(data);
        self.written += n as u64;
        Ok(n)
    }

    /// Zero-copy send: `f` fills the largest contiguous free stretch of the send buffer and
    /// returns how many bytes it wrote (clamped to the stretch) and a result.
    pub fn send_with<R>(&mut self, f: impl FnOnce(&mut [u8]) -> (usize, R)) -> Result<R, Error> {
        if !self.may_send() {
            return Err(self.closed_error());
        }
        let before = self.tx.len();
        let r = self.tx.push_with(usize::MAX, f);
        self.written += (self.tx.len() - before) as u64;
        Ok(r)
    }

    /// Copies received bytes into `buf`; `Ok(0)` means nothing buffered yet,
    /// `Err(Finished)` that the peer finished and everything was read.
    pub fn recv(&mut self, now: Instant, buf: &mut [u8]) -> Result<usize, Error> {
        let n = self.rx.copy_out(0, buf);
        if n == 0 {
            return self.recv_empty();
        }
        self.consumed(now, n);
        Ok(n)
    }

    /// Zero-copy receive: `f` sees the first contiguous run of received bytes and returns how
    /// many it consumed (clamped) and a result.
    pub fn recv_with<R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, Error> {
        if self.rx.is_empty() {
            self.recv_empty()?;
        }
        let run = self.rx.first_mut();
        let len = run.len();
        let (n, r) = f(run);
        let n = n.min(len);
        if n > 0 {
            self.consumed(now, n);
        }
        Ok(r)
    }

    /// The first contiguous run of received bytes, without consuming them.
    pub fn peek(&mut self) -> &[u8] {
        self.rx.first_mut()
    }

    fn recv_empty(&self) -> Result<usize, Error> {
        if let Some(r) = self.reason.filter(|&r| r != CloseReason::Done) {
            return Err(Error::Closed(r));
        }
        if self.peer_fin.is_some_and(|f| self.rcv_nxt > f) {
            return Err(Error::Finished);
        }
        if self.state == State::Closed {
            return Err(Error::InvalidState);
        }
        Ok(0)
    }

    /// The application took `n` bytes: free them, feed autotuning, maybe announce the window.
    fn consumed(&mut self, now: Instant, n: usize) {
        self.rx.consume(n);
        if self.rx.is_empty() && self.reasm.is_empty() {
            self.rx.release_if_idle(self.cfg.buffer_keep);
        }
        self.tune_receive_buffer(now, n as u64);
        // Window update: announce when the edge can move by two segments, or when the window
        // we last announced was too small for one.
        let edge = self.rcv_nxt + self.rx.free() as u64;
        let announced = self.rcv_adv.saturating_sub(self.rcv_nxt);
        if self.state_receives()
            && (edge >= self.rcv_adv + 2 * self.rcv_mss || announced < self.rcv_mss)
            && edge > self.rcv_adv
        {
            self.ack_now = true;
        }
    }

    /// Raises the receive buffer once per receive RTT to twice what was read in it (more when
    /// the rate is growing, as the sender's slow start doubles per RTT).
    fn tune_receive_buffer(&mut self, now: Instant, n: u64) {
        self.tune.copied += n;
        let rtt = match (self.rtt.srtt(), self.tune.rtt) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(r) => r,
                None => return,
            },
        };
        if now.saturating_duration_since(self.tune.since) < rtt {
            return;
        }
        let copied = self.tune.copied;
        let prev = self.tune.prev;
        if copied > prev {
            let mut target = 2 * copied + 16 * self.rcv_mss;
            // Growth factor while the rate climbs, at most doubling again.
            if let Some(grow) = target.saturating_mul(copied - prev).checked_div(prev) {
                target += grow.min(target);
            }
            let target = usize::try_from(target)
                .unwrap_or(usize::MAX)
                .min(self.cfg.rx_buffer_max);
            if target > self.rx.limit() {
                self.rx.grow_limit(target);
                self.tune.prev = copied;
                self.stats.max_rx_buffer = self.rx.limit() as u64;
            }
        }
        self.tune.since = now;
        self.tune.copied = 0;
    }

    /// Out-of-order data arrived, `span` bytes past what the application last read: a hole
    /// holds reading back for the repair's round trip while the sender goes on sending, so the
    /// window must hold what is in flight twice over, or the sender stalls until the repair
    /// (reads per round trip, what [`tune_receive_buffer`](Self::tune_receive_buffer) sees,
    /// fall under loss and never raise the window: at 3 % loss, 400 Mbit/s × 30 ms, 57 % of
    /// the link against 65 % with the largest window from the start). The same idea as recent
    /// Linux's receive-buffer growth on out-of-order arrivals; the span can only lie inside
    /// the window the sender was given, so this at most doubles what the sender already uses.
    fn grow_for_out_of_order(&mut self, span: u64) {
        let target = usize::try_from(2 * span)
            .unwrap_or(usize::MAX)
            .min(self.cfg.rx_buffer_max);
        if target > self.rx.limit() {
            self.rx.grow_limit(target);
            self.stats.max_rx_buffer = self.rx.limit() as u64;
        }
    }

    fn state_receives(&self) -> bool {
        matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        )
    }

    /// Closes the sending half: a FIN follows the queued data. Reading continues.
    pub fn close(&mut self) {
        match self.state {
            State::SynSent => self.finish(CloseReason::Done),
            State::SynReceived | State::Established | State::CloseWait => {
                self.fin_queued = true;
                self.keepalive_at = None;
                self.state = match self.state {
                    State::Established => State::FinWait1,
                    State::CloseWait => State::LastAck,
                    s => s,
                };
            }
            _ => {}
        }
    }

    /// Resets the connection: one RST goes out on the next poll, then it is closed.
    pub fn abort(&mut self) {
        self.reset(CloseReason::Aborted);
    }

    /// Enters `CLOSED` for `reason` and drops what no longer matters.
    fn finish(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
        self.rtx_at = None;
        self.reorder_at = None;
        self.ack_at = None;
        self.keepalive_at = None;
        self.time_wait_until = None;
        self.ack_now = false;
        self.probe_pending = false;
        self.tlp_pending = false;
        self.syn_pending = false;
        self.reasm.clear();
        self.tx = Ring::new(0);
        if reason != CloseReason::Done {
            self.rx = Ring::new(0);
        }
    }

    /// The settings this connection was opened with (a reload's new `[netstack]` applies to
    /// connections opened after it).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.max_cwnd = s.max_cwnd.max(self.cwnd());
        s.max_tx_buffer = s.max_tx_buffer.max(self.tx.limit() as u64);
        s.max_rx_buffer = s.max_rx_buffer.max(self.rx.limit() as u64);
        s
    }

    /// Smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// The congestion window in force, bytes.
    pub fn cwnd(&self) -> u64 {
        match self.recovery {
            Recovery::Fast { .. } if !self.cc.keeps_window_in_recovery() => self.recovery_cwnd,
            _ => self.cc.window(),
        }
    }

    /// Bytes believed in flight (RFC 6675 `pipe`).
    pub fn in_flight(&self) -> u64 {
        self.sb.pipe()
    }

    /// The current receive and send buffer limits, bytes.
    pub fn buffer_limits(&self) -> (usize, usize) {
        (self.rx.limit(), self.tx.limit())
    }

    /// Memory the two buffers hold, bytes.
    pub fn buffer_memory(&self) -> usize {
        self.rx.allocated() + self.tx.allocated()
    }

    /// The payload bytes per segment we send.
    pub fn mss(&self) -> u32 {
        self.opts.smss
    }

    // ---- Sequence arithmetic -------------------------------------------------------------

    /// Wire sequence number of send offset `off`.
    fn wire_snd(&self, off: u64) -> TcpSeqNumber {
        TcpSeqNumber(self.iss.0.wrapping_add(1).wrapping_add(off as u32 as i32))
    }

    /// Wire sequence number of receive offset `off`.
    fn wire_rcv(&self, off: u64) -> TcpSeqNumber {
        TcpSeqNumber(self.irs.0.wrapping_add(1).wrapping_add(off as u32 as i32))
    }

    /// Send offset of wire number `seq`, taken as the nearest to `SND.UNA` (may be negative).
    fn snd_offset(&self, seq: u32) -> i64 {
        let una = self.sb.una();
        let d = seq.wrapping_sub(self.wire_snd(una).0 as u32) as i32;
        una as i64 + i64::from(d)
    }

    /// Receive offset of wire number `seq`, taken as the nearest to `RCV.NXT`.
    fn rcv_offset(&self, seq: TcpSeqNumber) -> i64 {
        let d = seq.0.wrapping_sub(self.wire_rcv(self.rcv_nxt).0);
        self.rcv_nxt as i64 + i64::from(d)
    }

    /// Our TSval at `now` (milliseconds since the connection began, plus the offset).
    fn ts_now(&self, now: Instant) -> u32 {
        let ms = now.saturating_duration_since(self.created).as_millis() as u32;
        self.ts_offset.wrapping_add(ms)
    }

    /// The earliest instant whose TSval is newer than `echo` (a segment sent at or after it
    /// was sent after the echoed one), if `echo` is one of ours and not in the future.
    fn ts_sent_before(&self, now: Instant, echo: u32) -> Option<Instant> {
        self.ts_age(now, echo)?;
        let ms = echo.wrapping_sub(self.ts_offset);
        Some(self.created + Duration::from_millis(u64::from(ms) + 1))
    }

    /// How long ago we sent the TSval `echo`, if it is one of ours and not in the future.
    fn ts_age(&self, now: Instant, echo: u32) -> Option<Duration> {
        let d = self.ts_now(now).wrapping_sub(echo) as i32;
        (0..=600_000)
            .contains(&d)
            .then(|| Duration::from_millis(d as u64))
    }

    /// One past the last sequence offset the application gave us (the FIN included once
    /// queued).
    fn send_end(&self) -> u64 {
        self.written + u64::from(self.fin_queued)
    }
}

/// The MSS we announce: the MTU minus IP and TCP headers.
fn our_mss(cfg: &Config, local: SocketAddr) -> u32 {
    let ip = wire::ip_header_len(local.ip());
    let mss = cfg
        .mtu
        .saturating_sub(ip + wire::TCP_HEADER)
        .clamp(64, 65535);
    mss as u32
}
