//! UDP datagrams into the broker's peer table (`tunnel::PeerTable`, sans-IO): nothing may panic,
//! every datagram is accounted for exactly once, and a datagram that is not a WireGuard message
//! by type and length is dropped as garbage before any cryptography.
//!
//! Each run first completes a real handshake between a broker table and a vendor table (fixed
//! keys) and records the legitimate datagrams of both directions (initiation, response,
//! keepalive, data). The input is then a little program; each step starts with an opcode byte:
//! * `0` — raw bytes (length byte, then the bytes) to the broker from the vendor's address;
//! * `1` — a recorded datagram, replayed as it is or with one byte changed (index, position,
//!   xor from the input), from the vendor's address or another one;
//! * `2` — the clock moves by 0–65,535 ms and the broker's timers run;
//! * anything else — the broker sends an IP packet to the vendor (its bytes from the input).
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wgbroker::keys::PrivateKey;
use wgbroker::tunnel::{PeerSpec, PeerTable, Received, Sent};

const BUF: usize = 2048;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

fn spec(key: &PrivateKey, endpoint: Option<&str>, allowed: &str) -> PeerSpec {
    PeerSpec {
        public_key: key.public_key(),
        preshared_key: None,
        endpoint: endpoint.map(sa),
        endpoint_name: None,
        allowed_ips: vec![allowed.parse().expect("valid prefix")],
        persistent_keepalive: 0,
    }
}

/// A minimal IPv4/UDP packet from 10.77.0.2 to 10.77.0.1 carrying `payload`.
fn ip_packet(payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 77, 0, 2]);
    p[16..20].copy_from_slice(&[10, 77, 0, 1]);
    let mut sum = 0u32;
    for w in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&53u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// Whether a datagram is a WireGuard message by type and length alone.
fn well_formed(d: &[u8]) -> bool {
    match d.first() {
        Some(1) => d.len() == 148,
        Some(2) => d.len() == 92,
        Some(3) => d.len() == 64,
        Some(4) => d.len() >= 32,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let bk = PrivateKey::from_bytes([0x11; 32]);
    let vk = PrivateKey::from_bytes([0x22; 32]);
    let vendor_addr = "198.51.100.1:51820";
    let broker_addr = sa("192.0.2.10:40000");
    let t0 = Instant::now();
    let mut broker = PeerTable::new(&bk, vec![spec(&vk, Some(vendor_addr), "10.77.0.1/32")], t0)
        .expect("valid table");
    let mut vendor =
        PeerTable::new(&vk, vec![spec(&bk, None, "10.77.0.2/32")], t0).expect("valid table");

    // The handshake, every datagram recorded.
    let mut recorded: Vec<Vec<u8>> = Vec::new();
    let mut out = vec![0u8; BUF];
    let mut init = Vec::new();
    broker.initiate_all(t0, &mut out, &mut |_, _, d| init.push(d.to_vec()));
    let mut to_vendor = init;
    let mut fed_broker = 0u64;
    for _ in 0..4 {
        let mut to_broker = Vec::new();
        for d in to_vendor.drain(..) {
            recorded.push(d.clone());
            if let Received::Transmit { datagram, .. } =
                vendor.receive(t0, broker_addr, &d, &mut out)
            {
                to_broker.push(datagram.to_vec());
            }
        }
        for d in to_broker {
            recorded.push(d.clone());
            fed_broker += 1;
            if let Received::Transmit { datagram, .. } =
                broker.receive(t0, sa(vendor_addr), &d, &mut out)
            {
                to_vendor.push(datagram.to_vec());
            }
        }
    }
    assert_eq!(
        broker.counters().handshakes_completed,
        1,
        "the harness's own handshake"
    );
    if let Sent::Transmit(t) = broker.send(t0, &ip_packet(b"hello"), &mut out) {
        recorded.push(t.datagram.to_vec());
    }

    let mut now = t0;
    let mut inp = Input(data);
    let mut steps = 0;
    while let Some(op) = inp.u8() {
        steps += 1;
        if steps > 500 {
            break;
        }
        let datagram = match op {
            0 => {
                let n = usize::from(inp.u8().unwrap_or(0)) * 6;
                inp.bytes(n).to_vec()
            }
            1 => {
                let (Some(i), Some(pos), Some(x)) = (inp.u8(), inp.u16(), inp.u8()) else {
                    break;
                };
                let mut d = recorded[usize::from(i) % recorded.len()].clone();
                let pos = usize::from(pos) % d.len();
                d[pos] ^= x;
                d
            }
            2 => {
                let Some(ms) = inp.u16() else { break };
                now += Duration::from_millis(u64::from(ms));
                broker.tick(now, &mut out, &mut |_, _, _| {});
                while broker.poll_event().is_some() {}
                continue;
            }
            _ => {
                let n = usize::from(inp.u8().unwrap_or(0)) * 4;
                let packet = inp.bytes(n).to_vec();
                let _ = broker.send(now, &packet, &mut out);
                let _ = broker.send(now, &ip_packet(&packet), &mut out);
                continue;
            }
        };
        let from = if op == 1 && datagram.len() % 2 == 1 {
            sa("203.0.113.9:1234")
        } else {
            sa(vendor_addr)
        };
        let before = broker.counters().clone();
        let got = broker.receive(now, from, &datagram, &mut out);
        fed_broker += 1;
        let garbage = matches!(
            got,
            Received::Dropped(wgbroker::tunnel::DropReason::Garbage)
        );
        if !well_formed(&datagram) {
            assert!(garbage, "not a WireGuard message, yet not garbage: {got:?}");
        }
        if let Received::Packet { packet, .. } = &got {
            assert!(packet.len() <= datagram.len());
        }
        let after = broker.counters();
        if garbage {
            assert_eq!(after.garbage, before.garbage + 1);
            assert_eq!(
                after.handshakes_completed, before.handshakes_completed,
                "garbage completed a handshake"
            );
        }
    }
    assert_eq!(
        broker.counters().datagrams_received,
        fed_broker,
        "every datagram counted once"
    );
});
