//! WireGuard over a byte stream: the transports, the framing and the decisions around them
//! (sans-IO; the sockets live in `runtime::stream` and in the test kit's gateway).
//!
//! ## Why
//!
//! Many customer networks allow no outbound UDP. The broker can then carry its WireGuard
//! datagrams on one TCP connection to the gateway (`tcp`), framed the way Semgrep's broker does
//! (`preferTcpTransport`): each datagram prefixed by its length as a 16-bit big-endian integer,
//! replies framed the same way ([`frame`]). The [`crate::tunnel::PeerTable`] never knows: the
//! runtime feeds it the datagrams it takes off the stream, as if they had come from the peer's
//! UDP endpoint, and sends what the table hands out for that peer down the stream.
//!
//! ## What is here
//!
//! * [`Transport`]: the `[wireguard] transport` setting (`udp`, `tcp`, `tls`, `auto`).
//! * [`Carrier`]: what carries a peer's datagrams now; [`auto_next`]: which stream `auto` tries
//!   after one failed (TCP, then TLS, then TCP again...).
//! * [`frame`]: the framing, with a decoder whose buffer is bounded by the largest datagram.
//! * [`StallWatch`]: when a stream has gone quiet although an answer is due.
//! * [`Backoff`]: capped exponential back-off between reconnects.
//! * [`UdpVerdict`]: when `auto` gives up on UDP; [`UDP_PROBE_EVERY`]: when it tries it again.

pub mod frame;
pub mod tls;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `[wireguard] transport`: how datagrams reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Plain UDP only.
    Udp,
    /// One TCP connection per peer, Semgrep-compatible framing ([`frame`]).
    Tcp,
    /// The same framing inside TLS 1.3 (port 443 by default), the gateway's certificate checked:
    /// passes firewalls and inspecting proxies that only let real TLS out.
    Tls,
    /// UDP first; no handshake within a few seconds → TCP, and TLS when TCP fails too
    /// ([`UdpVerdict`], [`auto_next`]).
    #[default]
    Auto,
}

impl Transport {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Auto => "auto",
        }
    }

    /// Whether this setting ever opens a stream.
    pub fn uses_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// Whether this setting never uses UDP for a peer's datagrams (a stream or nothing).
    pub fn only_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The first stream this setting opens (`None`: `udp`).
    pub fn first_stream(self) -> Option<Carrier> {
        match self {
            Transport::Udp => None,
            Transport::Tcp | Transport::Auto => Some(Carrier::Tcp),
            Transport::Tls => Some(Carrier::Tls),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            "auto" => Ok(Transport::Auto),
            other => Err(format!(
                "unknown transport {other:?} (expected udp, tcp, tls or auto)"
            )),
        }
    }
}

/// What carries a peer's datagrams right now (the `transport` label of
/// `wgbroker_tunnel_transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// The shared UDP socket.
    Udp,
    /// A framed TCP connection.
    Tcp,
    /// A framed stream inside TLS.
    Tls,
}

impl Carrier {
    /// Every carrier, in metric order.
    pub const ALL: [Carrier; 3] = [Carrier::Udp, Carrier::Tcp, Carrier::Tls];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Udp => "udp",
            Carrier::Tcp => "tcp",
            Carrier::Tls => "tls",
        }
    }
}

/// The stream a peer tries next after a stream attempt of kind `tried` ended.
///
/// `worked`: that stream carried a completed handshake (it was a usable path that broke: try
/// it again). Otherwise (no connection, or no handshake on it) `auto` turns to the other kind —
/// TCP after TLS and TLS after TCP —, so a network that lets only TLS to 443 out, or only a
/// proxy, is found whichever way it fails; `tcp` and `tls` keep their one kind.
pub fn auto_next(transport: Transport, tried: Carrier, worked: bool) -> Carrier {
    match (transport, tried, worked) {
        (Transport::Tcp, ..) => Carrier::Tcp,
        (Transport::Tls, ..) => Carrier::Tls,
        (_, c, true) => c,
        (_, Carrier::Tcp, false) => Carrier::Tls,
        (_, _, false) => Carrier::Tcp,
    }
}

impl fmt::Display for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a peer changed carrier (the `reason` label of `wgbroker_tunnel_transport_switches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchReason {
    /// `transport = "tcp"`: the stream is the only carrier.
    Configured,
    /// `auto`: UDP got no handshake ([`UdpVerdict::NoHandshake`]).
    UdpNoHandshake,
    /// `auto`: the other stream kind failed (no connection, or no handshake over it):
    /// [`auto_next`].
    OtherStreamFailed,
    /// The gateway closed the stream, or it failed (reset, write error).
    StreamClosed,
    /// The stream stayed silent while an answer was due ([`StallWatch`]).
    StreamStalled,
    /// The gateway sent a bad frame ([`frame::FrameError`]).
    FramingError,
    /// The broker is stopping.
    Stopping,
    /// `auto`: a handshake probe over UDP got its answer on UDP: back to UDP.
    UdpWorks,
}

impl SwitchReason {
    /// Every reason, in metric order.
    pub const ALL: [SwitchReason; 8] = [
        SwitchReason::Configured,
        SwitchReason::UdpNoHandshake,
        SwitchReason::OtherStreamFailed,
        SwitchReason::StreamClosed,
        SwitchReason::StreamStalled,
        SwitchReason::FramingError,
        SwitchReason::Stopping,
        SwitchReason::UdpWorks,
    ];

    /// The metric label and the log field.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::Configured => "configured",
            SwitchReason::UdpNoHandshake => "udp_no_handshake",
            SwitchReason::OtherStreamFailed => "other_stream_failed",
            SwitchReason::StreamClosed => "stream_closed",
            SwitchReason::StreamStalled => "stream_stalled",
            SwitchReason::FramingError => "framing_error",
            SwitchReason::Stopping => "stopping",
            SwitchReason::UdpWorks => "udp_works",
        }
    }

    /// Position in [`SwitchReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How often `auto` probes UDP while a peer is on a stream: a handshake initiation sent on the
/// UDP socket; its answer arriving there moves the peer back ([`SwitchReason::UdpWorks`]).
pub const UDP_PROBE_EVERY: Duration = Duration::from_secs(20);

/// How long a stream may stay silent while an answer is due before it counts as stalled.
/// WireGuard answers an initiation at once and the inner TCP acknowledges data within a round
/// trip; 15 s of silence after either is a dead path, not a slow one.
pub const STALL_AFTER: Duration = Duration::from_secs(15);

/// Notices a stream that went quiet while an answer is due.
///
/// "Due" means: since the last bytes received we sent a datagram that gets an answer — a
/// handshake initiation, or a data packet that is not a bare keepalive (a keepalive is a data
/// message with nothing inside, 32 bytes, and is never answered). A tunnel that only exchanges
/// keepalives is idle, not stalled.
#[derive(Debug, Clone, Default)]
pub struct StallWatch {
    /// When the oldest unanswered datagram went out.
    waiting_since: Option<Instant>,
}

impl StallWatch {
    /// A datagram (a WireGuard message) was written to the stream at `now`.
    pub fn sent(&mut self, now: Instant, datagram: &[u8]) {
        if self.waiting_since.is_none() && expects_answer(datagram) {
            self.waiting_since = Some(now);
        }
    }

    /// Whether an answer is due (the clock runs).
    pub fn is_waiting(&self) -> bool {
        self.waiting_since.is_some()
    }

    /// Bytes arrived.
    pub fn received(&mut self) {
        self.waiting_since = None;
    }

    /// Whether the stream has been silent for `after` while an answer was due.
    pub fn stalled(&self, now: Instant, after: Duration) -> bool {
        self.waiting_since
            .is_some_and(|t| now.saturating_duration_since(t) >= after)
    }
}

/// Whether a WireGuard message normally gets an answer (see [`StallWatch`]).
fn expects_answer(datagram: &[u8]) -> bool {
    const KEEPALIVE_LEN: usize = 32;
    match datagram.first() {
        // Handshake initiation.
        Some(1) => true,
        // Transport data other than a keepalive.
        Some(4) => datagram.len() > KEEPALIVE_LEN,
        // Responses and cookie replies answer something themselves.
        _ => false,
    }
}

/// Capped exponential back-off: `first`, doubling up to `cap`, back to `first` after
/// [`Backoff::reset`] (a connection that carried a handshake).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first` (at least 1 ms), never beyond `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        let cap = cap.max(first);
        Self {
            first,
            cap,
            next: first,
        }
    }

    /// The wait before the next attempt; each call doubles the following one up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        d
    }

    /// The path worked: the next wait is `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Handshake initiations in a row without an answer after which `auto` stops waiting for UDP:
/// the first initiation and boringtun's retry 5 s later (`REKEY_TIMEOUT`) both unanswered.
pub const UDP_GIVE_UP_ATTEMPTS: u32 = 2;

/// `auto`'s judgement of UDP for one peer, from the peer table's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpVerdict {
    /// A session is up (or a handshake is young): stay.
    Working,
    /// [`UDP_GIVE_UP_ATTEMPTS`] initiations in a row went unanswered: try a stream.
    NoHandshake,
}

impl UdpVerdict {
    /// From [`crate::tunnel::PeerStatus::handshake_attempts`]: initiations sent since the last
    /// completed handshake.
    pub fn of(handshake_attempts: u32) -> Self {
        if handshake_attempts >= UDP_GIVE_UP_ATTEMPTS {
            UdpVerdict::NoHandshake
        } else {
            UdpVerdict::Working
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_print() {
        for t in [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Auto,
        ] {
            assert_eq!(t.as_str().parse::<Transport>(), Ok(t));
        }
        assert_eq!(Transport::default(), Transport::Auto);
        let e = "quic".parse::<Transport>().expect_err("unknown");
        assert!(e.contains("\"quic\"") && e.contains("tls"), "{e}");
        assert!(!Transport::Udp.uses_stream());
        assert!(Transport::Auto.uses_stream() && Transport::Tls.uses_stream());
        assert!(Transport::Tls.only_stream() && !Transport::Auto.only_stream());
        assert_eq!(Transport::Tls.first_stream(), Some(Carrier::Tls));
        assert_eq!(Transport::Auto.first_stream(), Some(Carrier::Tcp));
        assert_eq!(Transport::Udp.first_stream(), None);
    }

    #[test]
    fn auto_alternates_tcp_and_tls_until_one_carries_a_handshake() {
        use Carrier::{Tcp, Tls};
        // UDP failed → TCP; TCP failed → TLS; TLS failed → TCP again.
        assert_eq!(auto_next(Transport::Auto, Tcp, false), Tls);
        assert_eq!(auto_next(Transport::Auto, Tls, false), Tcp);
        // A stream that worked and broke is tried again.
        assert_eq!(auto_next(Transport::Auto, Tls, true), Tls);
        assert_eq!(auto_next(Transport::Auto, Tcp, true), Tcp);
        // A fixed transport keeps its kind.
        for worked in [false, true] {
            assert_eq!(auto_next(Transport::Tcp, Tcp, worked), Tcp);
            assert_eq!(auto_next(Transport::Tls, Tls, worked), Tls);
        }
    }

    #[test]
    fn a_stall_needs_an_unanswered_message_that_expects_an_answer() {
        let t0 = Instant::now();
        let after = Duration::from_secs(15);
        let mut w = StallWatch::default();
        let keepalive = [4u8; 32];
        let data = [4u8; 100];
        let init = [1u8; 148];
        let response = [2u8; 92];
        w.sent(t0, &keepalive);
        w.sent(t0, &response);
        assert!(
            !w.stalled(t0 + Duration::from_secs(60), after),
            "keepalives and responses are not answered"
        );
        w.sent(t0, &init);
        assert!(!w.stalled(t0 + Duration::from_secs(14), after));
        // A later message does not move the clock of the oldest unanswered one.
        w.sent(t0 + Duration::from_secs(10), &data);
        assert!(w.stalled(t0 + Duration::from_secs(15), after));
        w.received();
        assert!(!w.stalled(t0 + Duration::from_secs(100), after));
        w.sent(t0 + Duration::from_secs(100), &data);
        assert!(w.stalled(t0 + Duration::from_secs(115), after));
    }

    #[test]
    fn switch_reasons_index_their_table() {
        for (i, r) in SwitchReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let waits: Vec<u64> = (0..6).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, vec![500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
        // Degenerate settings stay usable.
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(z.next_wait(), Duration::from_millis(1));
        assert_eq!(z.next_wait(), Duration::from_millis(1));
    }

    #[test]
    fn udp_is_given_up_after_two_unanswered_initiations() {
        assert_eq!(UdpVerdict::of(0), UdpVerdict::Working);
        assert_eq!(UdpVerdict::of(1), UdpVerdict::Working);
        assert_eq!(UdpVerdict::of(2), UdpVerdict::NoHandshake);
        assert_eq!(UdpVerdict::of(40), UdpVerdict::NoHandshake);
    }
}
