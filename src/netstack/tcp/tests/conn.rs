//! Scripted single-connection tests: the test plays the peer segment by segment and checks
//! what the connection answers (handshake and options, close sequences and `TIME-WAIT`,
//! resets, zero-window probing, reassembly, ACK policy, timers, hostile input).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber, TcpTimestampRepr};

use super::Rng;
use crate::netstack::tcp::{CloseReason, Config, Conn, Error, State, wire};

const MS: Duration = Duration::from_millis(1);
const OUR_ISN: u32 = 1_000_000;
const PEER_ISN: u32 = 5_000_000;

fn local() -> SocketAddr {
    "10.0.0.2:80".parse().expect("addr")
}

fn remote() -> SocketAddr {
    "10.0.0.1:40000".parse().expect("addr")
}

/// A segment the connection sent, owned.
#[derive(Debug, Clone)]
struct Out {
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    window: u16,
    payload: Vec<u8>,
    sacks: Vec<(u32, u32)>,
    ts: Option<TcpTimestampRepr>,
    mss: Option<u16>,
    ws: Option<u8>,
    sack_permitted: bool,
    len: usize,
}

struct Script {
    conn: Conn,
    now: Instant,
    buf: Vec<u8>,
}

impl Script {
    fn new(conn: Conn, now: Instant) -> Self {
        Self {
            conn,
            now,
            buf: vec![0; 1320],
        }
    }

    /// Everything the connection sends now.
    fn out(&mut self) -> Vec<Out> {
        let mut v = Vec::new();
        while let Some(n) = self.conn.poll_transmit(self.now, &mut self.buf) {
            let seg = wire::parse(&self.buf[..n]).expect("we emit valid packets");
            assert_eq!((seg.src, seg.dst), (local(), remote()));
            assert!(n <= 1320, "never above the MTU");
            let r = seg.repr;
            v.push(Out {
                control: r.control,
                seq: r.seq_number.0 as u32,
                ack: r.ack_number.map(|a| a.0 as u32),
                window: r.window_len,
                payload: r.payload.to_vec(),
                sacks: r.sack_ranges.iter().flatten().copied().collect(),
                ts: r.timestamp,
                mss: r.max_seg_size,
                ws: r.window_scale,
                sack_permitted: r.sack_permitted,
                len: n,
            });
            assert!(v.len() < 10_000, "poll_transmit never stops");
        }
        v
    }

    fn feed(&mut self, repr: &TcpRepr<'_>) {
        self.conn.handle_segment(self.now, repr);
    }

    /// Moves the clock to the next timer (at most `max` ahead) and runs it.
    fn next_timer(&mut self, max: Duration) -> Option<Duration> {
        let at = self.conn.poll_timeout()?;
        if at > self.now + max {
            return None;
        }
        let waited = at.saturating_duration_since(self.now);
        self.now = self.now.max(at);
        self.conn.on_timeout(self.now);
        Some(waited)
    }

    fn wait(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.conn.poll_timeout() {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.conn.on_timeout(self.now);
        }
        self.now = end;
    }
}

/// A segment from the peer.
fn seg(control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> TcpRepr<'_> {
    TcpRepr {
        src_port: remote().port(),
        dst_port: local().port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    }
}

fn no_delay() -> Config {
    Config {
        ack_delay: None,
        ..Config::default()
    }
}

/// A passive open completed with a peer that offered no options. Returns the script and the
/// next sequence numbers (ours, the peer's).
fn server(cfg: &Config) -> (Script, u32, u32) {
    server_with(cfg, false)
}

/// [`server`], the peer offering SACK if `sack`.
fn server_with(cfg: &Config, sack: bool) -> (Script, u32, u32) {
    let now = Instant::now();
    let syn = TcpRepr {
        sack_permitted: sack,
        ..seg(TcpControl::Syn, PEER_ISN, None, &[])
    };
    let conn = Conn::accept(cfg, now, local(), remote(), &syn, OUR_ISN).expect("a SYN");
    let mut s = Script::new(conn, now);
    let synack = s.out();
    assert_eq!(synack.len(), 1);
    s.feed(&seg(TcpControl::None, PEER_ISN + 1, Some(OUR_ISN + 1), &[]));
    assert_eq!(s.conn.state(), State::Established);
    (s, OUR_ISN + 1, PEER_ISN + 1)
}

#[test]
fn active_open_negotiates_mss_window_scale_sack_and_timestamps() {
    let cfg = no_delay();
    let now = Instant::now();
    let conn = Conn::connect(&cfg, now, local(), remote(), OUR_ISN);
    let mut s = Script::new(conn, now);
    let syn = s.out();
    assert_eq!(syn.len(), 1);
    let syn = &syn[0];
    assert_eq!(syn.control, TcpControl::Syn);
    assert_eq!(syn.seq, OUR_ISN);
    assert_eq!(syn.ack, None);
    assert_eq!(syn.mss, Some(1280), "MTU 1320 - 40");
    assert_eq!(syn.ws, Some(7), "4 MiB buffers need shift 7");
    assert!(syn.sack_permitted);
    let ts = syn.ts.expect("timestamps offered");
    assert_eq!(ts.tsecr, 0);

    s.now += 30 * MS;
    let synack = TcpRepr {
        window_len: 1000,
        window_scale: Some(2),
        max_seg_size: Some(1000),
        sack_permitted: true,
        timestamp: Some(TcpTimestampRepr::new(777, ts.tsval)),
        ..seg(TcpControl::Syn, PEER_ISN, Some(OUR_ISN + 1), &[])
    };
    s.feed(&synack);
    assert_eq!(s.conn.state(), State::Established);
    assert_eq!(
        s.conn.srtt(),
        Some(30 * MS),
        "the handshake gave the first RTT sample"
    );
    assert_eq!(
        s.conn.mss(),
        1000 - 12,
        "the peer's MSS less the timestamp option"
    );
    let ack = s.out();
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].ack, Some(PEER_ISN + 1));
    assert_eq!(
        ack[0].ts.map(|t| t.tsecr),
        Some(777),
        "echoes the peer's TSval"
    );
    // Our window is scaled by 7 from now on: 64 KiB initial buffer → 512.
    assert_eq!(ack[0].window, 512);

    // The peer's window (1000 << 2 after the SYN) limits what we send.
    s.feed(&TcpRepr {
        window_len: 1000,
        timestamp: Some(TcpTimestampRepr::new(778, ts.tsval)),
        ..seg(TcpControl::None, PEER_ISN + 1, Some(OUR_ISN + 1), &[])
    });
    assert_eq!(s.conn.send(&[7u8; 10_000]), Ok(10_000));
    let data = s.out();
    let sent: usize = data.iter().map(|o| o.payload.len()).sum();
    // The peer's window is 1000 << 2 = 4000: four full segments; the 48 bytes left of the
    // window wait (sender-side silly window avoidance).
    assert_eq!(sent, 4 * 988);
    assert!(data.iter().all(|o| o.payload.len() <= 988));
}

#[test]
fn passive_open_answers_only_the_options_the_peer_offered() {
    let (mut s, ours, theirs) = server(&no_delay());
    assert_eq!(s.conn.send(&[1u8; 3000]), Ok(3000));
    let out = s.out();
    assert!(out.iter().all(|o| o.ts.is_none() && o.ws.is_none()));
    assert_eq!(out[0].seq, ours);
    assert_eq!(out[0].ack, Some(theirs));
    assert_eq!(out[0].payload.len(), 536, "no MSS option: the default 536");
    assert_eq!(out[0].window, 65535, "unscaled, capped at 64 KiB - 1");

    // SYN-ACK of a passive open mirrors what the SYN carried.
    let now = Instant::now();
    let syn = TcpRepr {
        max_seg_size: Some(1460),
        sack_permitted: true,
        timestamp: Some(TcpTimestampRepr::new(1, 0)),
        ..seg(TcpControl::Syn, PEER_ISN, None, &[])
    };
    let conn = Conn::accept(&no_delay(), now, local(), remote(), &syn, OUR_ISN).expect("SYN");
    let mut s = Script::new(conn, now);
    let synack = &s.out()[0];
    assert_eq!(synack.ack, Some(PEER_ISN + 1));
    assert!(synack.sack_permitted);
    assert_eq!(
        synack.ws, None,
        "no window scaling: the peer did not offer it"
    );
    assert_eq!(synack.ts.map(|t| t.tsecr), Some(1));
    assert!(
        Conn::accept(
            &no_delay(),
            now,
            local(),
            remote(),
            &seg(TcpControl::None, 1, None, &[]),
            1
        )
        .is_none()
    );
}

#[test]
fn lost_syn_ack_is_resent_on_its_timer_and_on_a_repeated_syn_then_gives_up() {
    let cfg = Config {
        syn_retries: 4,
        ..no_delay()
    };
    let now = Instant::now();
    let syn = seg(TcpControl::Syn, PEER_ISN, None, &[]);
    let conn = Conn::accept(&cfg, now, local(), remote(), &syn, OUR_ISN).expect("SYN");
    let mut s = Script::new(conn, now);
    assert_eq!(s.out().len(), 1);
    // The peer's SYN again: our SYN-ACK was lost, answer at once.
    s.now += 200 * MS;
    s.feed(&syn);
    assert_eq!(s.out()[0].control, TcpControl::Syn);
    // Then the timer: 1 s, 2 s (backed off).
    assert_eq!(
        s.next_timer(Duration::from_secs(5)),
        Some(Duration::from_secs(1))
    );
    assert_eq!(s.out().len(), 1);
    assert_eq!(
        s.next_timer(Duration::from_secs(5)),
        Some(Duration::from_secs(2))
    );
    assert_eq!(s.out().len(), 1);
    // The fourth transmission was the last: the next expiry gives up with a reset.
    s.next_timer(Duration::from_secs(10));
    let rst = s.out();
    assert_eq!(rst.len(), 1);
    assert_eq!(rst[0].control, TcpControl::Rst);
    assert_eq!(s.conn.close_reason(), Some(CloseReason::TimedOut));
    assert!(s.conn.is_closed());
}

#[test]
fn a_reset_answering_our_syn_refuses_the_connection() {
    let now = Instant::now();
    let conn = Conn::connect(&no_delay(), now, local(), remote(), OUR_ISN);
    let mut s = Script::new(conn, now);
    s.out();
    // A reset that does not acknowledge our SYN is not for us.
    s.feed(&seg(TcpControl::Rst, 0, Some(OUR_ISN + 99), &[]));
    assert_eq!(s.conn.state(), State::SynSent);
    // An ACK for something we never sent earns a reset.
    s.feed(&seg(TcpControl::None, 0, Some(OUR_ISN + 99), &[]));
    let rst = s.out();
    assert_eq!(
        (rst[0].control, rst[0].seq),
        (TcpControl::Rst, OUR_ISN + 99)
    );
    s.feed(&seg(TcpControl::Rst, 0, Some(OUR_ISN + 1), &[]));
    assert_eq!(s.conn.close_reason(), Some(CloseReason::Refused));
    assert_eq!(s.conn.send(b"x"), Err(Error::Closed(CloseReason::Refused)));
    assert!(s.conn.is_closed());
}

#[test]
fn resets_must_hit_rcv_nxt_exactly_others_get_a_rate_limited_challenge() {
    let (mut s, _ours, theirs) = server(&no_delay());
    // Out of the window: silently dropped.
    s.feed(&seg(
        TcpControl::Rst,
        theirs.wrapping_add(1 << 30),
        None,
        &[],
    ));
    assert!(s.out().is_empty());
    // In the window but not RCV.NXT: a challenge ACK, the connection stays.
    s.feed(&seg(TcpControl::Rst, theirs + 100, None, &[]));
    let ch = s.out();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].ack, Some(theirs));
    assert_eq!(s.conn.state(), State::Established);
    // A second one right away is not answered (RFC 5961 7).
    s.feed(&seg(TcpControl::Rst, theirs + 200, None, &[]));
    assert!(s.out().is_empty());
    // A SYN on an open connection is challenged too, once the interval has passed.
    s.now += 600 * MS;
    s.feed(&seg(TcpControl::Syn, theirs + 300, None, &[]));
    assert_eq!(s.out().len(), 1);
    // The exact one resets.
    s.feed(&seg(TcpControl::Rst, theirs, None, &[]));
    assert_eq!(s.conn.close_reason(), Some(CloseReason::Reset));
    let mut buf = [0u8; 8];
    assert_eq!(
        s.conn.recv(s.now, &mut buf),
        Err(Error::Closed(CloseReason::Reset))
    );
    assert!(s.out().is_empty(), "no answer to a reset");
}

#[test]
fn active_close_goes_through_fin_wait_and_time_wait() {
    let cfg = Config {
        time_wait: Duration::from_secs(10),
        ..no_delay()
    };
    let (mut s, ours, theirs) = server(&cfg);
    assert_eq!(s.conn.send(b"bye"), Ok(3));
    s.conn.close();
    assert_eq!(s.conn.state(), State::FinWait1);
    let out = s.out();
    assert_eq!(out.len(), 1, "the FIN rides on the data");
    assert_eq!(
        (out[0].control, out[0].payload.as_slice()),
        (TcpControl::Fin, &b"bye"[..])
    );
    assert_eq!(s.conn.send(b"more"), Err(Error::InvalidState));
    s.feed(&seg(TcpControl::None, theirs, Some(ours + 4), &[]));
    assert_eq!(s.conn.state(), State::FinWait2);
    // The peer may still send; then its FIN.
    s.feed(&seg(TcpControl::Fin, theirs, Some(ours + 4), b"ok"));
    assert_eq!(s.conn.state(), State::TimeWait);
    let ack = s.out();
    assert_eq!(ack.last().and_then(|o| o.ack), Some(theirs + 3));
    let mut buf = [0u8; 8];
    assert_eq!(s.conn.recv(s.now, &mut buf), Ok(2));
    assert_eq!(s.conn.recv(s.now, &mut buf), Err(Error::Finished));
    // A retransmitted FIN is acknowledged again and restarts the timer.
    s.wait(Duration::from_secs(5));
    s.feed(&seg(TcpControl::Fin, theirs, Some(ours + 4), b"ok"));
    assert_eq!(s.out().len(), 1);
    s.wait(Duration::from_secs(9));
    assert_eq!(
        s.conn.state(),
        State::TimeWait,
        "restarted at 5 s, so 10 s from then"
    );
    s.wait(Duration::from_secs(2));
    assert!(s.conn.is_closed());
    assert_eq!(s.conn.close_reason(), Some(CloseReason::Done));
}

#[test]
fn passive_close_goes_through_close_wait_and_last_ack() {
    let (mut s, ours, theirs) = server(&no_delay());
    s.feed(&seg(TcpControl::Fin, theirs, Some(ours), b"req"));
    assert_eq!(s.conn.state(), State::CloseWait);
    assert_eq!(
        s.out()[0].ack,
        Some(theirs + 4),
        "data and FIN acknowledged"
    );
    let mut buf = [0u8; 8];
    assert_eq!(s.conn.recv(s.now, &mut buf), Ok(3));
    assert_eq!(s.conn.recv(s.now, &mut buf), Err(Error::Finished));
    assert!(!s.conn.may_recv());
    assert_eq!(s.conn.send(b"resp"), Ok(4), "our half is still open");
    s.conn.close();
    assert_eq!(s.conn.state(), State::LastAck);
    let fin = s.out();
    assert_eq!(fin[0].control, TcpControl::Fin);
    // Our FIN is lost; the RTO resends it.
    s.next_timer(Duration::from_secs(2));
    let again = s.out();
    assert_eq!((again[0].control, again[0].seq), (TcpControl::Fin, ours));
    s.feed(&seg(TcpControl::None, theirs + 4, Some(ours + 5), &[]));
    assert!(s.conn.is_closed());
    assert_eq!(s.conn.close_reason(), Some(CloseReason::Done));
}

#[test]
fn simultaneous_close_passes_through_closing() {
    let (mut s, ours, theirs) = server(&no_delay());
    s.conn.close();
    assert_eq!(s.out()[0].control, TcpControl::Fin);
    // The peer's FIN crosses ours: it does not acknowledge our FIN yet.
    s.feed(&seg(TcpControl::Fin, theirs, Some(ours), &[]));
    assert_eq!(s.conn.state(), State::Closing);
    s.feed(&seg(TcpControl::None, theirs + 1, Some(ours + 1), &[]));
    assert_eq!(s.conn.state(), State::TimeWait);
}

#[test]
fn abort_sends_one_reset_then_the_connection_is_gone() {
    let (mut s, ours, theirs) = server(&no_delay());
    assert_eq!(s.conn.send(b"abc"), Ok(3));
    s.out();
    s.conn.abort();
    let rst = s.out();
    assert_eq!(rst.len(), 1);
    assert_eq!(
        (rst[0].control, rst[0].seq, rst[0].ack),
        (TcpControl::Rst, ours + 3, Some(theirs))
    );
    assert!(s.conn.is_closed());
    assert_eq!(
        s.conn.poll_timeout(),
        None,
        "no timer outlives the connection"
    );
    s.feed(&seg(TcpControl::None, theirs, Some(ours + 3), b"late"));
    assert!(s.out().is_empty());
}

#[test]
fn a_zero_window_is_probed_with_backoff_until_it_opens() {
    let (mut s, ours, theirs) = server(&no_delay());
    // The peer takes 1000 bytes and closes its window.
    assert_eq!(s.conn.send(&[5u8; 3000]), Ok(3000));
    let first = s.out();
    assert_eq!(first.iter().map(|o| o.payload.len()).sum::<usize>(), 3000);
    let mut closed = seg(TcpControl::None, theirs, Some(ours + 3000), &[]);
    closed.window_len = 0;
    s.feed(&closed);
    assert_eq!(s.conn.send(&[6u8; 500]), Ok(500));
    assert!(s.out().is_empty(), "nothing goes into a closed window");
    // Probes: an old sequence number, no payload, intervals doubling.
    let mut intervals = Vec::new();
    for _ in 0..3 {
        intervals.push(
            s.next_timer(Duration::from_secs(30))
                .expect("persist timer"),
        );
        let probe = s.out();
        assert_eq!(probe.len(), 1);
        assert_eq!(probe[0].seq, ours + 3000 - 1);
        assert!(probe[0].payload.is_empty());
        s.feed(&closed);
    }
    assert_eq!(intervals[1], intervals[0] * 2);
    assert_eq!(intervals[2], intervals[1] * 2);
    // The window opens: the queued bytes go.
    s.feed(&seg(TcpControl::None, theirs, Some(ours + 3000), &[]));
    let data = s.out();
    assert_eq!(data.iter().map(|o| o.payload.len()).sum::<usize>(), 500);
}

#[test]
fn out_of_order_duplicate_and_overlapping_segments_reassemble_byte_exact() {
    let (mut s, ours, theirs) = server_with(&no_delay(), true);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut rng = Rng::new(42);
    // Pieces of random sizes, sent in a shuffled order, some twice, some overlapping.
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = 1 + (rng.next_u64() % 1200) as usize;
        let end = (at + len).min(data.len());
        pieces.push((at, end));
        if rng.chance(0.3) {
            let back = at.saturating_sub(100);
            pieces.push((back, end));
        }
        at = end;
    }
    for i in (1..pieces.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        pieces.swap(i, j);
    }
    let mut saw_sack = false;
    let mut saw_dsack = false;
    let mut got = Vec::new();
    for &(a, b) in &pieces {
        s.feed(&seg(
            TcpControl::None,
            theirs + a as u32,
            Some(ours),
            &data[a..b],
        ));
        for o in s.out() {
            saw_sack |= !o.sacks.is_empty();
            // A D-SACK block lies below the cumulative ACK.
            saw_dsack |= o
                .sacks
                .first()
                .is_some_and(|&(_, e)| o.ack.is_some_and(|a| e.wrapping_sub(a) as i32 <= 0));
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.conn.recv(s.now, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(got, data);
    assert!(saw_sack, "holes were reported with SACK");
    assert!(saw_dsack, "duplicates were reported with D-SACK");
}

#[test]
fn a_full_receive_buffer_closes_the_window_and_reading_reopens_it() {
    let cfg = Config {
        rx_buffer: 4096,
        rx_buffer_max: 4096,
        ..no_delay()
    };
    let (mut s, ours, theirs) = server(&cfg);
    s.feed(&seg(TcpControl::None, theirs, Some(ours), &[1u8; 3000]));
    assert_eq!(s.out().last().map(|o| o.window), Some(1096));
    // More than fits: only what fits is taken.
    s.feed(&seg(
        TcpControl::None,
        theirs + 3000,
        Some(ours),
        &[2u8; 2000],
    ));
    let out = s.out();
    assert_eq!(
        out.last().map(|o| (o.ack, o.window)),
        Some((Some(theirs + 4096), 0))
    );
    // Beyond the window: not taken, answered with the same ACK.
    s.feed(&seg(
        TcpControl::None,
        theirs + 4096,
        Some(ours),
        &[3u8; 10],
    ));
    assert_eq!(
        s.out().last().map(|o| (o.ack, o.window)),
        Some((Some(theirs + 4096), 0))
    );
    // The application reads: a window update goes out.
    let mut buf = [0u8; 4096];
    assert_eq!(s.conn.recv(s.now, &mut buf), Ok(4096));
    let upd = s.out();
    assert_eq!(upd.len(), 1);
    assert_eq!(upd[0].window, 4096);
}

#[test]
fn paws_drops_segments_with_old_timestamps() {
    let now = Instant::now();
    let syn = TcpRepr {
        timestamp: Some(TcpTimestampRepr::new(1000, 0)),
        ..seg(TcpControl::Syn, PEER_ISN, None, &[])
    };
    let conn = Conn::accept(&no_delay(), now, local(), remote(), &syn, OUR_ISN).expect("SYN");
    let mut s = Script::new(conn, now);
    s.out();
    let ts = |v| Some(TcpTimestampRepr::new(v, 0));
    s.feed(&TcpRepr {
        timestamp: ts(1001),
        ..seg(TcpControl::None, PEER_ISN + 1, Some(OUR_ISN + 1), b"new")
    });
    s.out();
    // An old duplicate from a previous wrap of the sequence space: same numbers, old TSval.
    s.feed(&TcpRepr {
        timestamp: ts(900),
        ..seg(TcpControl::None, PEER_ISN + 4, Some(OUR_ISN + 1), b"old")
    });
    assert_eq!(s.conn.stats().dropped, 1);
    assert_eq!(s.conn.recv_queue(), 3, "only the fresh segment's bytes");
    assert_eq!(s.out().len(), 1, "answered with an ACK");
}

#[test]
fn acks_are_delayed_for_one_segment_but_not_for_two() {
    let cfg = Config {
        ack_delay: Some(5 * MS),
        ..Config::default()
    };
    let (mut s, ours, theirs) = server(&cfg);
    s.feed(&seg(TcpControl::None, theirs, Some(ours), &[1u8; 536]));
    assert!(s.out().is_empty(), "held back");
    assert_eq!(s.next_timer(Duration::from_secs(1)), Some(5 * MS));
    assert_eq!(s.out().len(), 1);
    s.feed(&seg(
        TcpControl::None,
        theirs + 536,
        Some(ours),
        &[1u8; 536],
    ));
    s.feed(&seg(
        TcpControl::None,
        theirs + 1072,
        Some(ours),
        &[1u8; 536],
    ));
    assert_eq!(s.out().len(), 1, "two full segments: at once");
    // Data to send carries the pending ACK.
    s.feed(&seg(
        TcpControl::None,
        theirs + 1608,
        Some(ours),
        &[1u8; 10],
    ));
    assert_eq!(s.conn.send(b"x"), Ok(1));
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].ack, Some(theirs + 1618));
}

#[test]
fn nagle_holds_small_segments_while_data_is_unacknowledged() {
    let cfg = Config {
        nagle: true,
        ..no_delay()
    };
    let (mut s, ours, theirs) = server(&cfg);
    assert_eq!(s.conn.send(b"a"), Ok(1));
    assert_eq!(s.out().len(), 1);
    assert_eq!(s.conn.send(b"b"), Ok(1));
    assert_eq!(s.conn.send(b"c"), Ok(1));
    assert!(s.out().is_empty(), "held while 'a' is unacknowledged");
    s.feed(&seg(TcpControl::None, theirs, Some(ours + 1), &[]));
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, b"bc");
}

#[test]
fn keep_alive_probes_an_idle_peer_and_the_idle_timeout_gives_up() {
    let cfg = Config {
        keep_alive: Some(Duration::from_secs(30)),
        idle_timeout: Some(Duration::from_secs(100)),
        ..no_delay()
    };
    let (mut s, ours, theirs) = server(&cfg);
    assert_eq!(
        s.next_timer(Duration::from_secs(60)),
        Some(Duration::from_secs(30))
    );
    let probe = s.out();
    assert_eq!(probe.len(), 1);
    assert_eq!(
        probe[0].seq,
        ours - 1,
        "an already acknowledged sequence number"
    );
    // The peer answers: the idle clock restarts.
    s.feed(&seg(TcpControl::None, theirs, Some(ours), &[]));
    let answered = s.now;
    // Silence from now on: probes every 30 s, then the reset at 100 s.
    let mut sent = Vec::new();
    while s.conn.state() == State::Established {
        s.next_timer(Duration::from_secs(200)).expect("a timer");
        sent.extend(s.out().into_iter().map(|o| o.control));
    }
    assert_eq!(
        sent,
        [
            TcpControl::None,
            TcpControl::None,
            TcpControl::None,
            TcpControl::Rst
        ]
    );
    assert_eq!(s.now - answered, Duration::from_secs(100));
    assert_eq!(s.conn.close_reason(), Some(CloseReason::TimedOut));
}

/// Random segments against connections in each state: nothing panics, every emitted packet
/// is valid and within the MTU, and the connection keeps its invariants.
#[test]
fn hostile_segments_never_panic() {
    let mut rng = Rng::new(0xbad5eed);
    let controls = [
        TcpControl::None,
        TcpControl::Psh,
        TcpControl::Syn,
        TcpControl::Fin,
        TcpControl::Rst,
    ];
    let payload = [0xaau8; 2000];
    for round in 0..300 {
        let cfg = Config {
            sack: rng.chance(0.5),
            timestamps: rng.chance(0.5),
            window_scaling: rng.chance(0.5),
            ack_delay: if rng.chance(0.5) { None } else { Some(5 * MS) },
            rx_buffer: 4096,
            ..Config::default()
        };
        let now = Instant::now();
        let (mut s, ours, theirs) = match round % 3 {
            // SYN-SENT.
            0 => {
                let c = Conn::connect(&cfg, now, local(), remote(), OUR_ISN);
                (Script::new(c, now), OUR_ISN + 1, PEER_ISN + 1)
            }
            // SYN-RECEIVED.
            1 => {
                let syn = seg(TcpControl::Syn, PEER_ISN, None, &[]);
                let c = Conn::accept(&cfg, now, local(), remote(), &syn, OUR_ISN).expect("SYN");
                (Script::new(c, now), OUR_ISN + 1, PEER_ISN + 1)
            }
            // ESTABLISHED and onwards.
            _ => server(&cfg),
        };
        if round % 5 < 2 {
            let _ = s.conn.send(&payload[..1500]);
        }
        if round % 7 == 2 {
            s.conn.close();
        }
        for _ in 0..200 {
            let near = |rng: &mut Rng, base: u32| -> u32 {
                match rng.next_u64() % 4 {
                    0 => rng.next_u64() as u32,
                    _ => base
                        .wrapping_add((rng.next_u64() % 8000) as u32)
                        .wrapping_sub(4000),
                }
            };
            let len = (rng.next_u64() % 1500) as usize;
            let mut sack_ranges = [None; 3];
            for r in sack_ranges.iter_mut() {
                if rng.chance(0.3) {
                    *r = Some((near(&mut rng, ours), near(&mut rng, ours)));
                }
            }
            let repr = TcpRepr {
                src_port: remote().port(),
                dst_port: local().port(),
                control: controls[(rng.next_u64() % 5) as usize],
                seq_number: TcpSeqNumber(near(&mut rng, theirs) as i32),
                ack_number: rng
                    .chance(0.9)
                    .then(|| TcpSeqNumber(near(&mut rng, ours) as i32)),
                window_len: rng.next_u64() as u16,
                window_scale: rng.chance(0.1).then(|| (rng.next_u64() % 20) as u8),
                max_seg_size: rng.chance(0.1).then(|| rng.next_u64() as u16),
                sack_permitted: rng.chance(0.1),
                sack_ranges,
                timestamp: rng
                    .chance(0.5)
                    .then(|| TcpTimestampRepr::new(rng.next_u64() as u32, rng.next_u64() as u32)),
                payload: &payload[..len],
            };
            s.feed(&repr);
            for o in s.out() {
                assert!(o.len <= 1320);
            }
            if rng.chance(0.2) {
                s.wait(Duration::from_millis(rng.next_u64() % 3000));
                s.out();
            }
            if rng.chance(0.1) {
                let mut buf = [0u8; 512];
                let _ = s.conn.recv(s.now, &mut buf);
                let _ = s.conn.send(&payload[..100]);
            }
            assert!(s.conn.send_queue() <= s.conn.buffer_limits().1);
            assert!(s.conn.recv_queue() <= s.conn.buffer_limits().0);
            assert!(s.conn.in_flight() <= 1 << 31);
        }
    }
}

#[test]
fn ipv6_connections_announce_the_ipv6_mss_and_emit_ipv6_packets() {
    let (a, b): (SocketAddr, SocketAddr) = (
        "[fd00::2]:80".parse().expect("v6"),
        "[fd00::1]:40000".parse().expect("v6"),
    );
    let now = Instant::now();
    let mut conn = Conn::connect(&no_delay(), now, a, b, OUR_ISN);
    let mut buf = [0u8; 1320];
    let n = conn.poll_transmit(now, &mut buf).expect("SYN");
    assert_eq!(buf[0] >> 4, 6);
    let syn = wire::parse(&buf[..n]).expect("valid IPv6");
    assert_eq!((syn.src, syn.dst), (a, b));
    assert_eq!(syn.repr.max_seg_size, Some(1260), "MTU 1320 - 40 - 20");
    let synack = TcpRepr {
        src_port: b.port(),
        dst_port: a.port(),
        max_seg_size: Some(1440),
        ..seg(TcpControl::Syn, PEER_ISN, Some(OUR_ISN + 1), &[])
    };
    conn.handle_segment(now, &synack);
    assert_eq!(conn.state(), State::Established);
    assert_eq!(conn.send(&[9u8; 5000]), Ok(5000));
    let mut sizes = Vec::new();
    while let Some(n) = conn.poll_transmit(now, &mut buf) {
        sizes.push(n);
    }
    assert!(sizes.iter().all(|&n| n <= 1320), "{sizes:?}");
    assert!(
        sizes.contains(&1320),
        "full segments fill the MTU: {sizes:?}"
    );
}

#[test]
fn one_stretch_ack_grows_the_window_as_much_as_one_ack_per_segment() {
    // A receiver behind GRO acknowledges a whole flight at once; slow start must still double
    // (a window-based controller's slow start: CUBIC; BBR paces its Startup instead).
    let cfg = Config {
        congestion: crate::netstack::tcp::Algorithm::Cubic,
        ..no_delay()
    };
    for stretch in [true, false] {
        let (mut s, ours, theirs) = server(&cfg);
        assert_eq!(s.conn.send(&[3u8; 60_000]), Ok(60_000));
        let first = s.out();
        assert_eq!(first.len(), 10, "initial window: ten segments");
        let mss = first[0].payload.len() as u32;
        s.now += 30 * MS;
        if stretch {
            s.feed(&seg(TcpControl::None, theirs, Some(ours + 10 * mss), &[]));
        } else {
            for i in 1..=10 {
                s.feed(&seg(TcpControl::None, theirs, Some(ours + i * mss), &[]));
            }
        }
        assert_eq!(s.out().len(), 20, "stretch ACK: {stretch}");
    }
}
