//! WireGuard data packets through the tunnel core's code, between two [`PeerTable`]s in memory
//! after a completed handshake (the broker dials, the vendor answers):
//!
//! * `encrypt`: the broker's `PeerTable::send` of an IP packet (parse the flow, route by
//!   destination through the allowed IPs, encrypt into the caller's buffer);
//! * `decrypt`: the broker's `PeerTable::receive` of a data datagram from the vendor (classify,
//!   find the peer by receiver index, decrypt, check the inner source against the allowed IPs,
//!   parse the flow). Each datagram is fresh (WireGuard rejects replays); encrypting it is setup,
//!   not timed;
//! * `chacha20poly1305-seal` / `-open`: ring's ChaCha20-Poly1305 (the AEAD boringtun uses) on the
//!   same number of bytes in place: the ceiling, i.e. what the table could reach with zero
//!   overhead of its own.
//!
//! Sizes are IP packet sizes: 60 B (a pure ACK with options), 600 B and 1420 B (the tunnel MTU).

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use wgbroker::keys::PrivateKey;
use wgbroker::tunnel::{PeerSpec, PeerTable, Received, Sent};

use crate::wire::{self, BROKER_IP, VENDOR_IP};

const SIZES: [usize; 3] = [60, 600, 1420];
/// Output buffers: larger than any datagram here (1420 + 32).
const BUF: usize = 2048;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

fn broker_addr() -> SocketAddr {
    addr("192.0.2.10:40000")
}

fn vendor_addr() -> SocketAddr {
    addr("198.51.100.1:51820")
}

fn spec(key: &PrivateKey, endpoint: Option<SocketAddr>, allowed: &str) -> PeerSpec {
    PeerSpec {
        public_key: key.public_key(),
        preshared_key: None,
        endpoint,
        endpoint_name: None,
        allowed_ips: vec![allowed.parse().expect("valid prefix")],
        persistent_keepalive: 0,
    }
}

/// Both ends with a session up.
struct Pair {
    broker: PeerTable,
    vendor: PeerTable,
    now: Instant,
}

fn connected_pair() -> Pair {
    let now = Instant::now();
    let broker_key = PrivateKey::generate().expect("os rng");
    let vendor_key = PrivateKey::generate().expect("os rng");
    let mut broker = PeerTable::new(
        &broker_key,
        vec![spec(&vendor_key, Some(vendor_addr()), "10.77.0.1/32")],
        now,
    )
    .expect("valid table");
    let mut vendor = PeerTable::new(
        &vendor_key,
        vec![spec(&broker_key, None, "10.77.0.2/32")],
        now,
    )
    .expect("valid table");

    // (to the vendor?, datagram)
    let mut wire: VecDeque<(bool, Vec<u8>)> = VecDeque::new();
    let mut out = vec![0u8; BUF];
    broker.initiate_all(now, &mut out, &mut |_, _, d| {
        wire.push_back((true, d.to_vec()))
    });
    let mut rounds = 0;
    while let Some((to_vendor, datagram)) = wire.pop_front() {
        rounds += 1;
        assert!(rounds < 16, "the handshake never went quiet");
        let (table, from) = if to_vendor {
            (&mut vendor, broker_addr())
        } else {
            (&mut broker, vendor_addr())
        };
        let reply = match table.receive(now, from, &datagram, &mut out) {
            Received::Transmit { peer, datagram, .. } => Some((peer, datagram.to_vec())),
            Received::Done => None,
            other => panic!("unexpected during the handshake: {other:?}"),
        };
        if let Some((peer, datagram)) = reply {
            wire.push_back((!to_vendor, datagram));
            if let Some(peer) = peer {
                while let Some(t) = table.flush(peer, &mut out) {
                    wire.push_back((!to_vendor, t.datagram.to_vec()));
                }
            }
        }
    }
    assert_eq!(broker.counters().handshakes_completed, 1);
    assert_eq!(vendor.counters().handshakes_completed, 1);
    Pair {
        broker,
        vendor,
        now,
    }
}

/// The datagram `table.send` makes of `packet`, copied out.
fn seal(table: &mut PeerTable, now: Instant, packet: &[u8], out: &mut [u8]) -> Vec<u8> {
    match table.send(now, packet, out) {
        Sent::Transmit(t) => t.datagram.to_vec(),
        other => panic!("the session is up, the packet must go out: {other:?}"),
    }
}

fn bench_table(c: &mut Criterion) {
    let Pair {
        mut broker,
        mut vendor,
        now,
    } = connected_pair();
    let mut group = c.benchmark_group("tunnel");
    let mut out = vec![0u8; BUF];
    let mut scratch = vec![0u8; BUF];
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        let up = wire::packet(BROKER_IP, VENDOR_IP, size);
        assert_eq!(up.len(), size);
        assert_eq!(seal(&mut broker, now, &up, &mut out).len(), size + 32);
        group.bench_with_input(BenchmarkId::new("encrypt", size), &up, |b, packet| {
            b.iter(|| match broker.send(now, black_box(packet), &mut out) {
                Sent::Transmit(t) => t.datagram.len(),
                _ => 0,
            })
        });

        let down = wire::packet(VENDOR_IP, BROKER_IP, size);
        let from = vendor_addr();
        let check = seal(&mut vendor, now, &down, &mut scratch);
        assert!(matches!(
            broker.receive(now, from, &check, &mut out),
            Received::Packet { packet, .. } if packet.len() == size
        ));
        group.bench_with_input(BenchmarkId::new("decrypt", size), &down, |b, packet| {
            b.iter_batched_ref(
                || seal(&mut vendor, now, packet, &mut scratch),
                |datagram| match broker.receive(now, from, datagram, &mut out) {
                    Received::Packet { packet, .. } => packet.len(),
                    _ => 0,
                },
                BatchSize::NumIterations(64),
            )
        });
    }
    group.finish();
    let dropped = broker.counters().dropped();
    assert_eq!(
        dropped,
        0,
        "nothing may be dropped: {:?}",
        broker.counters()
    );
}

fn bench_aead(c: &mut Criterion) {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).expect("32 bytes"));
    let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
    let mut group = c.benchmark_group("tunnel");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size];
        group.bench_function(BenchmarkId::new("chacha20poly1305-seal", size), |b| {
            b.iter(|| {
                key.seal_in_place_separate_tag(nonce(), Aad::empty(), black_box(&mut buf))
                    .expect("seal")
            })
        });

        let mut sealed = vec![0x5au8; size];
        let tag = key
            .seal_in_place_separate_tag(nonce(), Aad::empty(), &mut sealed)
            .expect("seal");
        sealed.extend_from_slice(tag.as_ref());
        group.bench_function(BenchmarkId::new("chacha20poly1305-open", size), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |in_out| {
                    key.open_in_place(nonce(), Aad::empty(), in_out)
                        .expect("authentic")
                        .len()
                },
                BatchSize::NumIterations(64),
            )
        });
    }
    group.finish();
}

pub fn benches(c: &mut Criterion) {
    bench_table(c);
    bench_aead(c);
}
