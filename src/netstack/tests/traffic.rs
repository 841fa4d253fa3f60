//! What flows over the connections: byte-exact exchanges, many connections at once, bulk
//! transfers with window scaling, IPv6, timers, and packets that must never reach smoltcp.

use std::net::IpAddr;
use std::time::Duration;

use smoltcp::socket::tcp::CongestionControl;

use super::harness::{BROKER_V4, Net, PEER_V4, broker_config, tcp_repr};
use super::{MS, broker_read, ipv4_tcp, open, open_from, peer_read, synack_of};
use crate::netstack::{ConnError, DropReason, StackConfig};

#[test]
fn bytes_flow_both_ways_byte_exact() {
    let mut net = Net::new(broker_config());
    let (h, id) = open(&mut net, 1, 64 << 10)[0];
    let request = b"GET /healthcheck HTTP/1.1\r\nHost: 10.77.0.2\r\nUser-Agent: probe\r\n\r\n";
    assert_eq!(
        net.peer.socket(h).send_slice(request),
        Ok(request.len()),
        "fits"
    );

    net.run_until(50, |net| {
        net.broker
            .peek(id, 4096)
            .is_ok_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n"))
    });
    // The head is parsed in place, then consumed without a copy.
    assert_eq!(net.broker.peek(id, 4096).expect("open"), &request[..]);
    let consumed = net
        .broker
        .recv(id, |buf| (buf.len(), buf.len()))
        .expect("open");
    assert_eq!(consumed, request.len());
    assert_eq!(net.broker.recv_slice(id, &mut [0u8; 16]), Ok(0));

    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
    assert_eq!(net.broker.send_slice(id, response), Ok(response.len()));
    let mut got = Vec::new();
    net.run_until(50, |net| {
        peer_read(net, h, &mut got);
        got.len() >= response.len()
    });
    assert_eq!(got, response);

    // The vendor hangs up: the broker reads end-of-stream.
    net.peer.socket(h).close();
    net.run_until(50, |net| {
        net.broker.recv_slice(id, &mut [0u8; 16]) == Err(ConnError::Finished)
    });
    assert!(!net.broker.may_recv(id));
    assert!(net.broker.may_send(id), "our half stays open (CLOSE-WAIT)");
}

#[test]
fn hundred_parallel_connections_across_four_stacks_are_all_answered() {
    let config = StackConfig {
        stacks: 4,
        backlog: 64,
        max_sockets_per_stack: 64,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let pairs = open(&mut net, 100, 16 << 10);
    assert_eq!(pairs.len(), 100);

    for (i, &(h, _)) in pairs.iter().enumerate() {
        let req = format!("req {i}\n");
        assert_eq!(net.peer.socket(h).send_slice(req.as_bytes()), Ok(req.len()));
    }
    let mut requests = vec![Vec::new(); pairs.len()];
    let mut answered = vec![false; pairs.len()];
    let mut replies = vec![Vec::new(); pairs.len()];
    net.run_until(200, |net| {
        for (i, &(h, id)) in pairs.iter().enumerate() {
            broker_read(net, id, &mut requests[i]);
            if !answered[i] && requests[i].ends_with(b"\n") {
                // Answer with what the request said, so a crossed wire would show.
                let asked = std::str::from_utf8(&requests[i][4..requests[i].len() - 1])
                    .expect("ascii")
                    .to_owned();
                let resp = format!(
                    "resp {asked} to {}\n",
                    net.broker.remote_addr(id).expect("open")
                );
                assert_eq!(net.broker.send_slice(id, resp.as_bytes()), Ok(resp.len()));
                answered[i] = true;
            }
            peer_read(net, h, &mut replies[i]);
        }
        replies.iter().all(|r| r.ends_with(b"\n"))
    });
    for (i, reply) in replies.iter().enumerate() {
        let expected = format!("resp {i} to {}:{}\n", IpAddr::from(PEER_V4), 40000 + i);
        assert_eq!(std::str::from_utf8(reply).expect("ascii"), expected);
    }

    let stats: Vec<_> = net.broker.stack_stats().collect();
    assert_eq!(stats.iter().map(|s| s.connections).sum::<usize>(), 100);
    for s in &stats {
        assert!(s.sockets <= 64, "stack bounded: {stats:?}");
        assert!(s.connections >= 10, "flows spread over stacks: {stats:?}");
        assert_eq!(s.handshakes, 0);
    }
    let c = net.broker.counters();
    assert_eq!(c.accepted, 100);
    assert_eq!(c.syn_reset_full, 0);
    assert_eq!(c.drop_duplicate_syn, 0);
    assert_eq!(net.outstanding, 0);
}

#[test]
fn megabyte_each_way_with_window_scaling() {
    let config = StackConfig {
        rx_buffer: 256 << 10,
        rx_buffer_max: 256 << 10,
        tx_buffer: 256 << 10,
        backlog: 1,
        ..broker_config()
    };
    let mut net = Net::new(config);
    net.capture = true;
    let (h, id) = open(&mut net, 1, 256 << 10)[0];
    assert_eq!(
        synack_of(&net.broker_sent).window_scale,
        Some(3),
        "256 KiB = 2^18: shift 3"
    );
    net.capture = false;
    net.broker_sent.clear();
    // The vendor side sends as fast as the broker's window allows.
    net.peer
        .socket(h)
        .set_congestion_control(CongestionControl::None);

    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    let (mut sent, mut received, mut biggest_round) = (0, Vec::new(), 0);
    let rounds = net.run_until(2000, |net| {
        if sent < data.len() {
            sent += net.peer.socket(h).send_slice(&data[sent..]).expect("open");
        }
        biggest_round = biggest_round.max(broker_read(net, id, &mut received));
        received.len() == data.len()
    });
    assert!(received == data, "upload byte-exact");
    assert!(
        biggest_round > 65535,
        "more than an unscaled window arrived in one round: {biggest_round}"
    );

    let (mut sent, mut received) = (0, Vec::new());
    let down_rounds = net.run_until(3000, |net| {
        if sent < data.len() {
            sent += net.broker.send_slice(id, &data[sent..]).expect("open");
        }
        peer_read(net, h, &mut received);
        received.len() == data.len()
    });
    assert!(received == data, "download byte-exact");
    println!(
        "1 MiB up in {rounds} rounds (largest round {biggest_round} B), down in {down_rounds} \
         rounds; {}",
        net.broker.counters()
    );
}

#[test]
fn ipv6_handshake_uses_the_ipv6_mss() {
    let config = StackConfig {
        address: "fd00:77::2".parse().expect("v6"),
        ..broker_config()
    };
    let mut net = Net::new(config);
    net.capture = true;
    let (h, id) = open(&mut net, 1, 16 << 10)[0];
    assert_eq!(synack_of(&net.broker_sent).max_seg_size, Some(1260));
    net.peer.socket(h).send_slice(b"over v6").expect("open");
    let mut got = Vec::new();
    net.run_until(20, |net| {
        broker_read(net, id, &mut got);
        got.len() == 7
    });
    assert_eq!(got, b"over v6");
}
#[test]
fn poll_delay_is_none_when_idle_and_short_with_unacked_data() {
    let config = StackConfig {
        stacks: 4,
        ..broker_config()
    };
    let mut net = Net::new(config);
    assert_eq!(
        net.broker.poll_delay(net.now()),
        None,
        "listeners have no timers"
    );
    let now = net.now();
    assert!(!net.broker.poll(now, &mut net.shard_pool));
    assert_eq!(
        net.broker.counters().stack_polls,
        0,
        "idle stacks are not polled"
    );

    let (h, id) = open(&mut net, 1, 16 << 10)[0];
    for _ in 0..20 {
        net.step(MS);
    }
    let idle = net.broker.poll_delay(net.now()).expect("keep-alive timer");
    assert!(
        idle > Duration::from_secs(20),
        "idle connection sleeps long: {idle:?}"
    );

    // A packet for one stack polls that stack only.
    let before = net.broker.counters().stack_polls;
    net.peer.socket(h).send_slice(b"ping").expect("open");
    net.exchange();
    assert_eq!(net.broker.counters().stack_polls, before + 1);
    let mut got = Vec::new();
    broker_read(&mut net, id, &mut got);
    assert_eq!(got, b"ping");

    // Data queued: poll now. Data sent but unacknowledged: poll at the retransmission timer.
    net.broker.send_slice(id, b"hello").expect("open");
    assert_eq!(net.broker.poll_delay(net.now()), Some(Duration::ZERO));
    net.black_hole_broker = true;
    net.capture = true;
    net.exchange();
    let rto = net
        .broker
        .poll_delay(net.now())
        .expect("retransmission timer");
    assert!(
        rto > Duration::ZERO && rto <= Duration::from_secs(1),
        "{rto:?}"
    );
    let data_packets = |net: &Net| {
        net.broker_sent
            .iter()
            .filter_map(|p| tcp_repr(p))
            .filter(|r| r.payload == b"hello")
            .count()
    };
    assert_eq!(data_packets(&net), 1);
    net.elapsed += rto / 2;
    net.exchange();
    assert_eq!(data_packets(&net), 1, "nothing before the timer");
    net.elapsed += rto - rto / 2;
    net.exchange();
    assert_eq!(data_packets(&net), 2, "retransmitted when the timer fired");

    net.black_hole_broker = false;
    let mut got = Vec::new();
    net.run_until(3000, |net| {
        peer_read(net, h, &mut got);
        got.len() >= 5
    });
    assert_eq!(got, b"hello");
}

#[test]
fn garbage_non_tcp_and_fragments_are_dropped_and_counted() {
    let mut net = Net::new(broker_config());
    let mut v6 = vec![0u8; 60];
    v6[0] = 0x60;
    v6[6] = 6;
    v6[23] = 1;
    v6[39] = 2;
    let cases: Vec<(Vec<u8>, Result<(), DropReason>)> = vec![
        (vec![], Err(DropReason::Malformed)),
        (vec![0x45; 10], Err(DropReason::Malformed)),
        (vec![0x99; 60], Err(DropReason::Malformed)),
        (ipv4_tcp(BROKER_V4, 17, 80, 0, 0), Err(DropReason::NotTcp)),
        (ipv4_tcp(BROKER_V4, 1, 80, 0, 0), Err(DropReason::NotTcp)),
        (
            ipv4_tcp(BROKER_V4, 6, 80, 2, 0x2000),
            Err(DropReason::Fragment),
        ),
        (
            ipv4_tcp(BROKER_V4, 6, 80, 2, 0x0010),
            Err(DropReason::Fragment),
        ),
        (
            ipv4_tcp([10, 77, 0, 9], 6, 80, 2, 0),
            Err(DropReason::WrongAddress),
        ),
        (v6, Err(DropReason::WrongAddress)),
        (ipv4_tcp(BROKER_V4, 6, 81, 2, 0), Err(DropReason::NoSocket)),
        (
            ipv4_tcp(BROKER_V4, 6, 80, 2, 0)[..22].to_vec(),
            Err(DropReason::NoSocket),
        ),
        // Reaches smoltcp, which rejects the bad checksums silently.
        (ipv4_tcp(BROKER_V4, 6, 80, 2, 0), Ok(())),
        (ipv4_tcp(BROKER_V4, 6, 80, 0x10, 0), Ok(())),
    ];
    for (packet, expected) in &cases {
        assert_eq!(net.inject(packet), *expected, "{packet:02x?}");
    }
    let c = net.broker.counters().clone();
    assert_eq!(c.drop_malformed, 3);
    assert_eq!(c.drop_not_tcp, 2);
    assert_eq!(c.drop_fragment, 2);
    assert_eq!(c.drop_wrong_address, 2);
    assert_eq!(c.drop_no_socket, 2);
    assert_eq!(c.packets_in, 2);

    // Random bytes behind a plausible IPv4+TCP prefix: smoltcp sees them and must not panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000u32 {
        let len = 20 + (rand() % 180) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        let ihl = if round % 7 == 0 { 24 } else { 20 };
        p[0] = 0x40 | (ihl / 4) as u8;
        p[6] &= 0x40; // no fragments
        p[7] = 0;
        p[9] = 6;
        p[16..20].copy_from_slice(&BROKER_V4);
        if len >= ihl + 4 && round % 4 != 0 {
            p[ihl + 2..ihl + 4].copy_from_slice(&80u16.to_be_bytes());
        }
        let _ = net.inject(&p);
        if round % 100 == 99 {
            net.exchange();
        }
    }
    net.exchange();
    net.collect_broker_output();
    assert_eq!(
        net.outstanding, 0,
        "every buffer came back, dropped or consumed"
    );
    for s in net.broker.stack_stats() {
        assert!(s.sockets <= 64);
    }
    assert!(net.broker.counters().packets_in > 1000);
}

#[test]
fn connections_with_open_windows_take_turns_at_the_egress_queue() {
    // Two downloads over stacks that share one egress queue: each poll must give both a turn,
    // not let the connection polled first send its whole window (megabytes on a LAN) while
    // the other waits.
    let config = StackConfig {
        stacks: 2,
        tx_buffer: 1 << 20,
        tx_buffer_max: 4 << 20,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let pairs = open(&mut net, 2, 4 << 20);
    net.capture = true;
    net.broker_sent.clear();
    let ports: Vec<u16> = pairs
        .iter()
        .map(|&(_, id)| net.broker.remote_addr(id).expect("open").port())
        .collect();
    let total = 4usize << 20;
    let data = vec![7u8; 64 << 10];
    let mut written = [0usize; 2];
    let mut got = [Vec::new(), Vec::new()];
    let (mut worst, mut starved_rounds) = (0usize, 0usize);
    net.run_until(5000, |net| {
        for (i, &(h, id)) in pairs.iter().enumerate() {
            while written[i] < total {
                let chunk = &data[..data.len().min(total - written[i])];
                let n = net.broker.send_slice(id, chunk).expect("open");
                if n == 0 {
                    break;
                }
                written[i] += n;
            }
            peer_read(net, h, &mut got[i]);
        }
        // What the last round's poll sent, per connection.
        let mut per = [0usize; 2];
        for p in net.broker_sent.drain(..) {
            if let Some(r) = tcp_repr(&p) {
                if !r.payload.is_empty() {
                    if let Some(i) = ports.iter().position(|&q| q == r.dst_port) {
                        per[i] += 1;
                    }
                }
            }
        }
        worst = worst.max(per[0]).max(per[1]);
        let both_busy = got.iter().all(|g| g.len() < total);
        if both_busy && (per[0] == 0) != (per[1] == 0) {
            starved_rounds += 1;
        }
        got.iter().all(|g| g.len() == total)
    });
    eprintln!("largest turn {worst} packets, rounds with one connection left out {starved_rounds}");
    assert!(
        worst <= crate::netstack::stack::TX_QUANTUM,
        "one connection wrote {worst} packets in one poll"
    );
}

#[test]
fn a_retune_applies_to_connections_opened_after_it_and_leaves_open_ones_alone() {
    use crate::netstack::tcp::Algorithm;
    let config = StackConfig {
        congestion: Algorithm::Cubic,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let before: Vec<_> = open_from(&mut net, 40000, 4, 64 << 10)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    net.broker.retune(Algorithm::Bbr, 1 << 20, 2 << 20);
    let after: Vec<_> = open_from(&mut net, 41000, 4, 64 << 10)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let of = |id| {
        let c = net.broker.tcp_config(id).expect("open");
        (c.congestion, c.rx_buffer_max, c.tx_buffer_max)
    };
    let old = of(before[0]);
    assert_eq!(old.0, Algorithm::Cubic);
    for id in &before {
        assert_eq!(of(*id), old, "open connections keep their settings");
    }
    for id in &after {
        assert_eq!(
            of(*id),
            (Algorithm::Bbr, 1 << 20, 2 << 20),
            "new ones take the retune"
        );
    }
}
