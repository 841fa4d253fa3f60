//! The hidden `wgbroker relay` (perf/wan.sh's WAN): two UDP peers on loopback talk through it;
//! it delays and drops each datagram, keeps strangers out, and prints exact counters at SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wgbroker::testkit::impair::{Impair, ImpairSpec};

/// A free loopback UDP port (bound, then released for the relay to take).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a port")
        .port()
}

/// How many of `n` datagrams direction `stream` of a relay with `--loss 10% --seed 99` lets
/// through: the relay draws pipe P's directions from streams 2P and 2P + 1 of its seed, so the
/// library says in advance how many it drops.
fn kept(n: u32, stream: u64) -> usize {
    let spec = ImpairSpec {
        loss: 0.1,
        seed: 99,
        ..ImpairSpec::default()
    };
    let mut imp = Impair::new(spec, spec.stream_seed(stream));
    let now = Instant::now();
    (0..n).filter(|i| imp.offer(now, 4, *i).is_none()).count()
}

#[test]
fn relay_delays_drops_and_counts_each_direction() {
    let (want_b, want_a) = (kept(200, 0), kept(50, 1));
    // Binomial(200, 10 %): mean 20, sd 4.2 — the seed gives a typical draw.
    assert!(
        (160..=196).contains(&want_b) && want_a <= 50,
        "{want_b} {want_a}"
    );
    let a = UdpSocket::bind("127.0.0.1:0").expect("peer a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("peer b");
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("stranger");
    // The relay sends the datagrams in a burst when they fall due: room for them in B's receive
    // buffer (each takes about 1 KiB of it however small; 200 fit the default cap too).
    let _ = socket2::SockRef::from(&b).set_recv_buffer_size(4 << 20);
    let (ra, rb) = (free_port(), free_port());
    let pipe = format!(
        "t=127.0.0.1:{ra},{},127.0.0.1:{rb},{}",
        a.local_addr().expect("a"),
        b.local_addr().expect("b")
    );
    let mut relay = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args([
            "relay",
            "--pipe",
            &pipe,
            "--delay",
            "30ms",
            "--loss",
            "10%",
            "--seed",
            "99",
            "--max-time",
            "120s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the relay");
    let mut out = BufReader::new(relay.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert!(
        line.starts_with("relay ready pipes=1 delay 30ms loss 10%"),
        "{line}"
    );

    // 200 numbered datagrams A → B, a few B → A, and one from a stranger.
    b.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    a.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let sent_at = Instant::now();
    for i in 0..200u32 {
        a.send_to(&i.to_be_bytes(), ("127.0.0.1", ra))
            .expect("send");
    }
    for i in 0..50u32 {
        b.send_to(&i.to_be_bytes(), ("127.0.0.1", rb))
            .expect("send");
    }
    stranger
        .send_to(b"not a peer", ("127.0.0.1", ra))
        .expect("send");
    let mut got_b = Vec::new();
    let mut buf = [0u8; 64];
    let mut first = None;
    while let Ok((n, from)) = b.recv_from(&mut buf) {
        // Everything reaches B from the relay's B-side socket, not from A.
        assert_eq!(from.port(), rb);
        first.get_or_insert_with(Instant::now);
        assert_eq!(n, 4, "a stranger's datagram never gets through");
        got_b.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
        if got_b.len() == want_b {
            break;
        }
    }
    let first = first.expect("some datagrams arrive");
    assert!(
        first.duration_since(sent_at) >= Duration::from_millis(30),
        "the first datagram came after {:?}, before the 30 ms delay",
        first.duration_since(sent_at)
    );
    assert!(got_b.windows(2).all(|w| w[0] < w[1]), "order kept");
    let mut got_a = 0;
    while a.recv_from(&mut buf).is_ok() {
        got_a += 1;
        if got_a == want_a {
            break;
        }
    }

    let kill = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = relay.wait().expect("relay exits");
    assert!(status.success(), "{status:?}");
    let mut lines = Vec::new();
    for l in out.lines() {
        lines.push(l.expect("line"));
    }
    let counters = |dir: &str| -> BTreeMap<String, String> {
        let l = lines
            .iter()
            .find(|l| l.starts_with(&format!("relay pipe=t dir={dir} ")))
            .unwrap_or_else(|| panic!("no {dir} line in {lines:?}"));
        l.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let n = |m: &BTreeMap<String, String>, k: &str| -> u64 {
        m[k].parse().unwrap_or_else(|_| panic!("{k} in {m:?}"))
    };
    let ab = counters("a>b");
    assert_eq!(n(&ab, "offered"), 200);
    assert_eq!(n(&ab, "foreign"), 1);
    assert_eq!(n(&ab, "lost") + n(&ab, "delivered"), 200);
    assert_eq!(n(&ab, "forwarded"), n(&ab, "delivered"));
    assert_eq!(
        n(&ab, "delivered"),
        got_b.len() as u64,
        "B got every datagram forwarded"
    );
    assert_eq!(got_b.len(), want_b, "the seed's loss pattern");
    let ba = counters("b>a");
    assert_eq!(n(&ba, "offered"), 50);
    assert_eq!(n(&ba, "delivered"), got_a as u64);
    assert_eq!(n(&ba, "lost") + got_a as u64, 50);
    assert_eq!(got_a, want_a, "the seed's loss pattern");
    for m in [&ab, &ba] {
        for k in ["overflow", "send_failed", "truncated", "queued_at_exit"] {
            assert_eq!(n(m, k), 0, "{k}: {m:?}");
        }
    }
}

#[test]
fn relay_rejects_bad_pipes_and_options() {
    for args in [
        &["relay"][..],
        &["relay", "--pipe", "127.0.0.1:1,127.0.0.1:2"],
        &[
            "relay",
            "--pipe",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4",
            "--loss",
            "2",
        ],
        &[
            "relay",
            "--pipe",
            "127.0.0.1:5,127.0.0.1:2,127.0.0.1:5,127.0.0.1:4",
        ],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
            .args(args)
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(64), "{args:?}");
    }
}
