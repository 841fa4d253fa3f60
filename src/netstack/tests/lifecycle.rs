//! Connections' lives: handshake and accept, refusal when full, duplicate SYNs, reaping after
//! close and TIME-WAIT, client connections, wakers, tables given back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;

use smoltcp::socket::tcp::State as PeerState;
use smoltcp::wire::TcpControl;

use super::harness::{BROKER_V4, Net, PEER_V4, broker_config, tcp_repr};
use super::{MS, broker_read, ipv4_tcp, open, open_from, peer_read, synack_of};
use crate::netstack::{ConnError, ConnectError, DropReason, StackConfig, StackStats, State};
use crate::packet::{Flow, shard_of};

#[test]
fn handshake_completes_and_accept_yields_the_connection() {
    let mut net = Net::new(broker_config());
    net.capture = true;
    let pairs = open(&mut net, 1, 64 << 10);
    let (h, id) = pairs[0];

    assert_eq!(net.broker.state(id), State::Established);
    assert_eq!(net.peer.socket(h).state(), PeerState::Established);
    assert_eq!(
        net.broker.remote_addr(id),
        Some(SocketAddr::new(IpAddr::from(PEER_V4), 40000))
    );
    assert_eq!(net.broker.local_addr(id), Some(net.broker_addr(80)));
    assert_eq!(net.broker.accept(), None, "accepted exactly once");

    // The MSS follows from the 1320-byte MTU; a receive buffer that may grow to 4 MiB needs a
    // window shift of 7.
    let synack = synack_of(&net.broker_sent);
    assert_eq!(synack.max_seg_size, Some(1280));
    assert_eq!(synack.window_scale, Some(7));

    let stats: Vec<_> = net.broker.stack_stats().collect();
    assert_eq!(
        stats[0].sockets, 1,
        "nothing pre-armed: one connection, one slot"
    );
    assert_eq!(stats[0].connections, 1);
    assert_eq!(stats[0].handshakes, 0);
    assert_eq!(net.broker.counters().accepted, 1);
    assert_eq!(net.outstanding, 0, "every ingress buffer went home");
}

#[test]
fn syn_beyond_max_sockets_gets_a_reset_and_room_comes_back() {
    let config = StackConfig {
        backlog: 3,
        max_sockets_per_stack: 3,
        ..broker_config()
    };
    let mut net = Net::new(config);
    net.capture = true;
    let pairs = open(&mut net, 3, 8 << 10);
    assert_eq!(net.broker.stack_stats().next().map(|s| s.sockets), Some(3));

    let remote = net.broker_addr(80);
    let late = net.peer.connect(remote, 41000, 8 << 10);
    net.run_until(20, |net| net.peer.socket(late).state() == PeerState::Closed);
    assert_eq!(net.broker.counters().syn_reset_full, 1);
    let rst = net
        .broker_sent
        .iter()
        .filter_map(|p| tcp_repr(p))
        .find(|r| r.dst_port == 41000)
        .expect("a reply to the late SYN");
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(net.broker.accept(), None);
    assert_eq!(net.broker.stack_stats().next().map(|s| s.sockets), Some(3));

    // Aborting one connection frees its socket at once (no TIME-WAIT after a reset).
    let (h0, id0) = pairs[0];
    net.broker.abort(id0).expect("open");
    net.run_until(20, |net| net.peer.socket(h0).state() == PeerState::Closed);
    assert_eq!(net.broker.abort(id0), Err(ConnError::Gone));
    let again = net.peer.connect(remote, 41001, 8 << 10);
    let mut accepted = None;
    net.run_until(20, |net| {
        accepted = accepted.or_else(|| net.broker.accept());
        accepted.is_some()
    });
    assert_eq!(net.peer.socket(again).state(), PeerState::Established);
    assert_eq!(net.broker.counters().syn_reset_full, 1);
    assert_eq!(net.broker.stack_stats().next().map(|s| s.sockets), Some(3));
}

#[test]
fn duplicate_syn_does_not_open_a_second_connection() {
    let mut net = Net::new(broker_config());
    net.capture = true;
    let remote = net.broker_addr(80);
    net.peer.connect(remote, 40000, 8 << 10);
    net.exchange();
    let syn = net
        .peer_sent
        .iter()
        .find(|p| tcp_repr(p).is_some_and(|r| r.control == TcpControl::Syn))
        .expect("the SYN")
        .clone();
    net.inject(&syn).expect("to the listen port");
    let mut accepted = Vec::new();
    for _ in 0..20 {
        net.step(MS);
        accepted.extend(std::iter::from_fn(|| net.broker.accept()));
    }
    // Once more while established.
    net.inject(&syn).expect("to the listen port");
    for _ in 0..20 {
        net.step(MS);
        accepted.extend(std::iter::from_fn(|| net.broker.accept()));
    }
    assert_eq!(accepted.len(), 1);
    assert_eq!(net.broker.counters().drop_duplicate_syn, 2);
    assert_eq!(net.broker.state(accepted[0]), State::Established);
    let s = net.broker.stack_stats().next().expect("one stack");
    assert_eq!((s.connections, s.handshakes), (1, 0));
}

#[test]
fn closed_connections_are_reaped_after_time_wait() {
    let config = StackConfig {
        stacks: 2,
        backlog: 8,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let baseline: usize = net.broker.stack_stats().map(|s| s.sockets).sum();
    assert_eq!(baseline, 0, "nothing pre-armed");
    let pairs = open(&mut net, 6, 16 << 10);

    // Even connections: the broker closes first (it will sit in TIME-WAIT). Odd ones: the
    // vendor closes first and the broker answers the FIN (LAST-ACK, then straight to CLOSED).
    for (i, &(h, id)) in pairs.iter().enumerate() {
        if i % 2 == 0 {
            net.broker.close(id).expect("open");
        } else {
            net.peer.socket(h).close();
        }
    }
    net.run_until(200, |net| {
        for &(h, id) in &pairs {
            if net.broker.state(id) == State::CloseWait {
                net.broker.close(id).expect("open");
            }
            if net.peer.socket(h).state() == PeerState::CloseWait {
                net.peer.socket(h).close();
            }
        }
        net.broker.counters().reaped == 3
            && net.broker.stack_stats().map(|s| s.time_wait).sum::<usize>() == 3
    });
    assert_eq!(net.broker.counters().time_wait, 3);
    for (i, &(_, id)) in pairs.iter().enumerate() {
        let expected = if i % 2 == 0 {
            State::TimeWait
        } else {
            State::Closed
        };
        assert_eq!(net.broker.state(id), expected);
    }

    // TIME-WAIT's 10 s is the next deadline; sleeping exactly that long reaps the rest.
    let wait = net.broker.poll_delay(net.now()).expect("TIME-WAIT timer");
    assert!(
        wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
        "{wait:?}"
    );
    net.elapsed += wait;
    net.exchange();
    let c = net.broker.counters();
    assert_eq!(c.reaped, 6);
    let after: usize = net.broker.stack_stats().map(|s| s.sockets).sum();
    assert_eq!(after, baseline, "no connection left");
    for s in net.broker.stack_stats() {
        assert_eq!((s.handshakes, s.connections, s.time_wait), (0, 0, 0));
    }
    let (_, stale) = pairs[0];
    assert_eq!(net.broker.state(stale), State::Closed);
    assert_eq!(
        net.broker.recv_slice(stale, &mut [0u8; 4]),
        Err(ConnError::Gone)
    );
    assert_eq!(net.broker.send_slice(stale, b"x"), Err(ConnError::Gone));
    assert_eq!(net.broker.poll_delay(net.now()), None, "idle again");
}

#[test]
fn connection_churn_reuses_slots_and_new_connections_start_empty() {
    let config = StackConfig {
        stacks: 1,
        backlog: 2,
        ..broker_config()
    };
    let mut net = Net::new(config);
    for round in 0..6u8 {
        let pairs = open(&mut net, 2, 16 << 10);
        let (up, down) = ([b'A' + round; 100], [b'a' + round; 100]);
        for &(h, id) in &pairs {
            net.peer.socket(h).send_slice(&up).expect("open");
            net.broker.send_slice(id, &down).expect("open");
        }
        let (mut got_up, mut got_down) = (vec![Vec::new(); 2], vec![Vec::new(); 2]);
        net.run_until(200, |net| {
            for (i, &(h, id)) in pairs.iter().enumerate() {
                broker_read(net, id, &mut got_up[i]);
                peer_read(net, h, &mut got_down[i]);
            }
            got_up.iter().chain(&got_down).all(|g| g.len() >= 100)
        });
        for i in 0..2 {
            // Only this round's bytes: nothing left over from the slot's last connection.
            assert_eq!((&got_up[i][..], &got_down[i][..]), (&up[..], &down[..]));
        }
        // Die with bytes still in both of the broker's buffers: unread and unsent.
        let reaped = net.broker.counters().reaped;
        for &(h, id) in &pairs {
            net.peer.socket(h).send_slice(&[0xee; 50]).expect("open");
            net.exchange();
            net.broker.send_slice(id, &[0xff; 50]).expect("open");
            net.peer.socket(h).abort();
        }
        net.run_until(200, |net| net.broker.counters().reaped == reaped + 2);
        let stats = net.broker.stack_stats().next().expect("one stack");
        assert_eq!(
            (stats.connections, stats.slots, stats.built),
            (0, 2, 2 * u64::from(round + 1)),
            "round {round}: two slots serve every round"
        );
        assert_eq!(stats.buffer_bytes, 0, "round {round}: buffers freed");
    }
}

#[test]
fn connections_opened_and_closed_leave_the_stacks_at_their_idle_size() {
    let config = StackConfig {
        stacks: 2,
        backlog: 64,
        max_sockets_per_stack: 64,
        ..broker_config()
    };
    let mut net = Net::new(config);
    // `built` counts sockets ever made; everything else must come back to what it was.
    let idle = |net: &Net| -> Vec<StackStats> {
        net.broker
            .stack_stats()
            .map(|s| StackStats { built: 0, ..s })
            .collect()
    };
    let fresh = idle(&net);
    for round in 0..2 {
        let pairs = open(&mut net, 40, 16 << 10);
        for &(h, id) in &pairs {
            net.peer
                .socket(h)
                .send_slice(b"GET / HTTP/1.1\r\n\r\n")
                .expect("open");
            net.broker.send_slice(id, &[b'x'; 3000]).expect("open");
        }
        net.run_until(200, |net| {
            pairs
                .iter()
                .all(|&(h, id)| net.broker.can_recv(id) && net.peer.socket(h).can_recv())
        });
        let busy = net.broker.stack_stats().map(|s| s.slots).sum::<usize>();
        assert!(busy >= 40, "round {round}: the tables grew to {busy}");
        // A third closed by the broker (TIME-WAIT), a third by the vendor, a third reset.
        for (i, &(h, id)) in pairs.iter().enumerate() {
            match i % 3 {
                0 => net.broker.close(id).expect("open"),
                1 => net.peer.socket(h).close(),
                _ => net.peer.socket(h).abort(),
            }
        }
        net.run_until(400, |net| {
            for &(h, id) in &pairs {
                if net.broker.state(id) == State::CloseWait {
                    net.broker.close(id).expect("open");
                }
                if net.peer.socket(h).state() == PeerState::CloseWait {
                    net.peer.socket(h).close();
                }
            }
            net.broker.counters().reaped
                + net.broker.stack_stats().map(|s| s.time_wait).sum::<usize>() as u64
                == 40 * (round + 1)
        });
        // TIME-WAIT's 10 s, then everything is reaped.
        net.elapsed += Duration::from_secs(11);
        net.exchange();
        assert_eq!(net.broker.counters().reaped, 40 * (round + 1));
        // Right after traffic a trim keeps the tables (a busy stack reuses them); once a whole
        // period passed without a poll, the next one gives everything back.
        net.broker.trim();
        let slots = net.broker.stack_stats().map(|s| s.slots).sum::<usize>();
        assert_eq!(slots, busy, "round {round}: a busy stack keeps its slots");
        net.broker.trim();
        assert_eq!(idle(&net), fresh, "round {round}: back to the idle size");
        assert_eq!(
            net.broker.poll_delay(net.now()),
            None,
            "round {round}: no timer left"
        );
    }
}

#[test]
fn trimming_a_quiet_stack_gives_back_empty_slots_and_leaves_open_connections_alone() {
    let config = StackConfig {
        stacks: 1,
        backlog: 4,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let pairs = open(&mut net, 4, 16 << 10);
    let reaped = net.broker.counters().reaped;
    for &(h, _) in &pairs[1..] {
        net.peer.socket(h).abort();
    }
    net.run_until(200, |net| net.broker.counters().reaped == reaped + 3);
    let s = net.broker.stack_stats().next().expect("one stack");
    assert_eq!((s.slots, s.connections), (4, 1));

    net.broker.trim();
    net.broker.trim();
    let s = net.broker.stack_stats().next().expect("one stack");
    assert_eq!(
        (s.slots, s.connections),
        (1, 1),
        "the empty slots after the open connection are gone, the connection kept"
    );
    // The connection that stayed open still works both ways.
    let (h, id) = pairs[0];
    net.peer.socket(h).send_slice(b"ping").expect("open");
    net.broker.send_slice(id, b"pong").expect("open");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    net.run_until(200, |net| {
        broker_read(net, id, &mut up);
        peer_read(net, h, &mut down);
        up.len() == 4 && down.len() == 4
    });
    assert_eq!((&up[..], &down[..]), (&b"ping"[..], &b"pong"[..]));
    // And a new connection is accepted in a new slot; the old ids stay gone.
    let more = open_from(&mut net, 42000, 1, 16 << 10);
    assert_eq!(net.broker.state(more[0].1), State::Established);
    assert_eq!(net.broker.state(pairs[1].1), State::Closed);
}

#[test]
fn connect_picks_a_port_whose_reply_flow_maps_home() {
    let config = StackConfig {
        stacks: 4,
        shards: 4,
        shard_index: 2,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let remote = SocketAddr::new(IpAddr::from(PEER_V4), 8080);
    let mut ports = std::collections::HashSet::new();
    let mut per_stack = [0usize; 4];
    for _ in 0..32 {
        let id = net.broker.connect(remote).expect("a port exists");
        let local = net.broker.local_addr(id).expect("bound");
        assert_eq!(local.ip(), IpAddr::from(BROKER_V4));
        assert!(local.port() >= 49152 && local.port() != 80);
        assert!(ports.insert(local.port()), "ports are unique");
        let reply = Flow {
            src: remote.ip(),
            dst: local.ip(),
            protocol: 6,
            src_port: remote.port(),
            dst_port: local.port(),
        };
        assert_eq!(shard_of(reply.hash(), 4, 4), (2, id.stack()));
        per_stack[id.stack()] += 1;
        assert_eq!(net.broker.state(id), State::SynSent);
    }
    assert!(per_stack.iter().all(|&n| n > 0), "{per_stack:?}");
    assert_eq!(net.broker.counters().connects, 32);

    // A flow owned by another shard is refused at the door.
    let foreign = (1024..2048u16)
        .find(|&p| {
            let f = Flow {
                src: IpAddr::from(PEER_V4),
                dst: IpAddr::from(BROKER_V4),
                protocol: 6,
                src_port: p,
                dst_port: 80,
            };
            shard_of(f.hash(), 4, 4).0 != 2
        })
        .expect("some port hashes elsewhere");
    let mut syn = ipv4_tcp(BROKER_V4, 6, 80, 2, 0);
    syn[20..22].copy_from_slice(&foreign.to_be_bytes());
    assert_eq!(net.inject(&syn), Err(DropReason::WrongShard));

    assert_eq!(
        net.broker.connect("[fd00::1]:80".parse().expect("v6")),
        Err(ConnectError::Unaddressable)
    );
    assert_eq!(
        net.broker
            .connect(SocketAddr::new(IpAddr::from(PEER_V4), 0)),
        Err(ConnectError::Unaddressable)
    );
}

#[test]
fn client_connection_exchanges_bytes_with_the_vendor() {
    let config = StackConfig {
        stacks: 4,
        ..broker_config()
    };
    let mut net = Net::new(config);
    let listener = net.peer.listen(8080);
    let id = net
        .broker
        .connect(SocketAddr::new(IpAddr::from(PEER_V4), 8080))
        .expect("port");
    net.run_until(50, |net| net.broker.state(id) == State::Established);
    assert_eq!(net.peer.socket(listener).state(), PeerState::Established);

    let get = b"GET /api/heartbeat HTTP/1.1\r\nHost: gateway\r\n\r\n";
    assert_eq!(net.broker.send_slice(id, get), Ok(get.len()));
    let mut got = Vec::new();
    net.run_until(50, |net| {
        peer_read(net, listener, &mut got);
        got.len() == get.len()
    });
    assert_eq!(got, get);
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    net.peer.socket(listener).send_slice(ok).expect("open");
    let mut answer = Vec::new();
    net.run_until(50, |net| {
        broker_read(net, id, &mut answer);
        answer.len() == ok.len()
    });
    assert_eq!(answer, ok);
    assert_eq!(net.broker.counters().drop_no_socket, 0);

    net.broker.close(id).expect("open");
    net.run_until(50, |net| {
        if net.peer.socket(listener).state() == PeerState::CloseWait {
            net.peer.socket(listener).close();
        }
        net.broker.state(id) == State::TimeWait
    });
    net.elapsed += Duration::from_secs(11);
    net.exchange();
    assert_eq!(net.broker.state(id), State::Closed);
    assert_eq!(net.broker.counters().reaped, 1);
}

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn wakers_fire_on_data_and_on_work_for_the_poller() {
    let mut net = Net::new(broker_config());
    let (h, id) = open(&mut net, 1, 16 << 10)[0];
    let conn_task = Arc::new(CountingWaker::default());
    let poller = Arc::new(CountingWaker::default());
    net.broker
        .register_recv_waker(id, &Waker::from(conn_task.clone()))
        .expect("open");
    net.broker.set_poll_waker(&Waker::from(poller.clone()));

    net.peer.socket(h).send_slice(b"data").expect("open");
    net.exchange();
    assert_eq!(conn_task.0.load(Ordering::SeqCst), 1, "woken by the data");
    assert_eq!(poller.0.load(Ordering::SeqCst), 0);
    net.broker.send_slice(id, b"reply").expect("open");
    assert_eq!(
        poller.0.load(Ordering::SeqCst),
        1,
        "the poller learns of work"
    );

    net.broker.abort(id).expect("open");
    net.exchange();
    assert_eq!(
        net.broker
            .register_send_waker(id, &Waker::from(conn_task.clone())),
        Err(ConnError::Gone)
    );
}

#[test]
fn new_syn_on_a_time_wait_tuple_recycles_the_socket() {
    let mut net = Net::new(broker_config());
    let (h, id) = open(&mut net, 1, 8 << 10)[0];
    net.broker.close(id).expect("open");
    net.run_until(50, |net| {
        if net.peer.socket(h).state() == PeerState::CloseWait {
            net.peer.socket(h).close();
        }
        net.broker.state(id) == State::TimeWait && net.peer.socket(h).state() == PeerState::Closed
    });
    net.peer.sockets.remove(h);

    // The vendor reuses its port within the 10 s: a new connection, not a stray segment.
    let again = net.peer.connect(net.broker_addr(80), 40000, 8 << 10);
    let mut accepted = None;
    net.run_until(20, |net| {
        accepted = accepted.or_else(|| net.broker.accept());
        accepted.is_some()
    });
    assert_eq!(net.peer.socket(again).state(), PeerState::Established);
    assert_eq!(net.broker.counters().time_wait_recycled, 1);
    assert_eq!(net.broker.state(id), State::Closed, "the old id is gone");
    let fresh = accepted.expect("accepted");
    assert_ne!(fresh, id);
    assert_eq!(net.broker.state(fresh), State::Established);
}

#[test]
fn half_open_handshake_times_out_and_is_reaped() {
    let mut net = Net::new(broker_config());
    let baseline = net.broker.stack_stats().next().expect("one stack");
    net.black_hole_broker = true;
    net.peer.connect(net.broker_addr(80), 40000, 8 << 10);
    net.exchange();
    let s = net.broker.stack_stats().next().expect("one stack");
    assert_eq!(s.handshakes, 1, "SYN-RECEIVED, its SYN-ACK lost");

    // Sleep exactly as long as poll_delay says, like the runtime; the peer's retransmitted
    // SYNs are duplicates and must not keep the half-open socket alive.
    let mut wakeups = 0;
    while let Some(d) = net.broker.poll_delay(net.now()) {
        assert!(wakeups < 100, "timer-driven, not busy");
        net.elapsed += d.max(MS);
        net.exchange();
        wakeups += 1;
    }
    // The SYN-ACK is sent six times (1 + 2 + 4 + 8 + 16 s apart, RFC 6298's back-off from a
    // 1 s initial RTO), then the handshake is given up 32 s after the last; nothing is left to
    // time.
    assert!(
        net.elapsed >= Duration::from_secs(60) && net.elapsed < Duration::from_secs(70),
        "{:?}",
        net.elapsed
    );
    let s = net.broker.stack_stats().next().expect("one stack");
    assert_eq!(s.handshakes, 0);
    assert_eq!(s.sockets, baseline.sockets, "nothing left");
    assert_eq!(net.broker.counters().reaped, 1);
    assert_eq!(net.broker.counters().accepted, 0);
    assert!(net.broker.counters().drop_duplicate_syn > 0);
    println!(
        "half-open socket reaped after {:?} in {wakeups} wake-ups",
        net.elapsed
    );
}
