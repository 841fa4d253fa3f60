//! One TCP segment through a shard's [`StackSet`], with 10, 100 and 1,000 established
//! connections in one smoltcp stack (and 1,000 spread over 4 stacks, the default layout):
//!
//! * `ingest`: a 100-byte data segment from the vendor to one connection — `ingest`, `poll`,
//!   drain the egress (smoltcp's ACK) and the spent buffer, as the shard's ingress and driver
//!   loops do;
//! * `ingest-batch16`: the same segments, but 16 of them (to 16 connections) are queued before
//!   each `poll`, as when the shard drains a burst from its link before polling: the scan is
//!   paid once per poll, not once per packet;
//! * `egress`: the connection task writes 100 bytes — `send_slice`, `poll`, drain the data
//!   segment.
//!
//! smoltcp walks every socket of a stack per packet (ingress demux, egress, `poll_at`), so the
//! per-packet cost grows with the sockets in the stack (DESIGN.md §9: ~3 ns per socket per
//! packet); the slope between the 10- and 1,000-connection cases measures it. Connections take
//! turns (round robin), as concurrent requests do.
//!
//! The vendor side is played by hand-written segments (no second stack), under a frozen clock.
//! ACKs are not delayed (`ack_delay: None`), so every data segment is answered in the same poll
//! and each timed operation moves exactly one packet in and one out. Between timed chunks the
//! broker's application reads what arrived and the vendor ACKs what the broker sent, untimed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use smoltcp::wire::TcpControl;
use wgbroker::netstack::{ConnId, StackConfig, StackSet};
use wgbroker::packet::BufPool;

use crate::wire::{self, BROKER_IP, Segment, VENDOR_IP};

/// `(connections, stacks)`.
const CASES: [(usize, usize); 4] = [(10, 1), (100, 1), (1_000, 1), (1_000, 4)];
/// Payload of every data segment, bytes.
const PAYLOAD: usize = 100;
/// Operations timed between two clock reads.
const CHUNK: usize = 64;
const MTU: usize = 1420;
const FIRST_PORT: u16 = 40_000;

/// One connection as the vendor sees it.
#[derive(Debug)]
struct Conn {
    id: ConnId,
    port: u16,
    /// The vendor's next sequence number.
    seq: u32,
    /// The broker's next sequence number (what the vendor acknowledges).
    ack: u32,
}

/// A segment without payload from the vendor's `port` to the broker's port 80.
fn bare(port: u16, control: TcpControl, seq: u32, ack: Option<u32>) -> Segment<'static> {
    Segment {
        src: (VENDOR_IP, port),
        dst: (BROKER_IP, 80),
        control,
        seq,
        ack,
        payload: &[],
    }
}

/// A stack set with `n` established connections and the two pools around it.
struct Bed {
    set: StackSet,
    now: Instant,
    /// The tunnel core's pool: ingress packets.
    core_pool: BufPool,
    /// The shard's pool: egress packets.
    shard_pool: BufPool,
    conns: Vec<Conn>,
    cursor: usize,
    scratch: Vec<u8>,
}

impl Bed {
    fn new(n: usize, stacks: usize) -> Bed {
        let config = StackConfig {
            address: IpAddr::V4(BROKER_IP),
            mtu: MTU,
            backlog: n + 8,
            max_sockets_per_stack: n + 8,
            stacks,
            // Small buffers: the scan cost does not depend on them, memory does.
            rx_buffer: 16 << 10,
            tx_buffer: 16 << 10,
            ack_delay: None,
            rx_queue: 4096,
            tx_queue: 4096,
            ..StackConfig::default()
        };
        let epoch = Instant::now();
        let mut bed = Bed {
            set: StackSet::new(&config, epoch, 0x5eed).expect("valid config"),
            now: epoch + Duration::from_secs(1),
            core_pool: BufPool::new(MTU, 4096),
            shard_pool: BufPool::new(MTU, 4096),
            conns: Vec::with_capacity(n),
            cursor: 0,
            scratch: vec![0u8; 64 << 10],
        };
        bed.open(n);
        bed
    }

    /// Hands one vendor segment to the set, in a tunnel-core buffer.
    fn inject(&mut self, seg: &Segment<'_>) {
        let mut buf = self.core_pool.take();
        let len = wire::write(seg, buf.space());
        buf.set_len(len);
        self.set.ingest(buf).expect("the segment is for this shard");
    }

    /// Polls and returns the egress packets' TCP headers; buffers go back to their pools.
    fn poll_collect(&mut self) -> Vec<wire::Seen> {
        self.set.poll(self.now, &mut self.shard_pool);
        let mut seen = Vec::new();
        for b in self.set.drain_tx() {
            seen.extend(wire::read(b.as_slice()));
            self.shard_pool.give(b);
        }
        for b in self.set.drain_spent() {
            self.core_pool.give(b);
        }
        seen
    }

    /// Three-way handshakes for `n` connections from ports 40000.., then accept them all.
    fn open(&mut self, n: usize) {
        let isn = |i: usize| 1_000_000u32.wrapping_mul(i as u32 + 1);
        for i in 0..n {
            let port = FIRST_PORT + i as u16;
            let syn = bare(port, TcpControl::Syn, isn(i), None);
            self.inject(&syn);
        }
        let mut broker_isn = vec![None; n];
        for s in self.poll_collect() {
            assert!(s.syn, "only SYN-ACKs expected: {s:?}");
            broker_isn[usize::from(s.dst_port - FIRST_PORT)] = Some(s.seq);
        }
        for (i, b) in broker_isn.iter().enumerate() {
            let b = b.expect("a SYN-ACK for every SYN");
            let port = FIRST_PORT + i as u16;
            let ack = bare(port, TcpControl::None, isn(i) + 1, Some(b + 1));
            self.inject(&ack);
        }
        assert!(
            self.poll_collect().is_empty(),
            "the final ACK needs no answer"
        );
        let mut by_port: Vec<Option<ConnId>> = vec![None; n];
        while let Some(id) = self.set.accept() {
            let port = self.set.remote_addr(id).map(|a: SocketAddr| a.port());
            by_port[usize::from(port.expect("connected") - FIRST_PORT)] = Some(id);
        }
        self.conns = by_port
            .into_iter()
            .enumerate()
            .map(|(i, id)| Conn {
                id: id.expect("every connection accepted"),
                port: FIRST_PORT + i as u16,
                seq: isn(i) + 1,
                ack: broker_isn[i].expect("seen") + 1,
            })
            .collect();
    }

    fn next_conn(&mut self) -> usize {
        let i = self.cursor;
        self.cursor = (self.cursor + 1) % self.conns.len();
        i
    }

    /// Untimed: the broker's application reads everything buffered; window updates go out.
    fn read_all(&mut self) {
        for c in &self.conns {
            while let Ok(n) = self.set.recv_slice(c.id, &mut self.scratch) {
                if n == 0 {
                    break;
                }
            }
        }
        self.poll_collect();
    }

    /// `iters` data segments in, `per_poll` of them queued before each poll; one ACK out per
    /// segment (per connection and poll when batched). Returns the time spent in the set.
    fn ingest(&mut self, iters: u64, payload: &[u8], per_poll: usize) -> Duration {
        let mut spent = Duration::ZERO;
        let mut left = iters as usize;
        let mut batch = Vec::with_capacity(CHUNK);
        while left > 0 {
            let k = left.min(CHUNK);
            for _ in 0..k {
                let i = self.next_conn();
                let c = &mut self.conns[i];
                let seg = Segment {
                    src: (VENDOR_IP, c.port),
                    dst: (BROKER_IP, 80),
                    control: TcpControl::Psh,
                    seq: c.seq,
                    ack: Some(c.ack),
                    payload,
                };
                c.seq = c.seq.wrapping_add(payload.len() as u32);
                let mut buf = self.core_pool.take();
                let len = wire::write(&seg, buf.space());
                buf.set_len(len);
                batch.push(buf);
            }
            let mut out = 0;
            let start = Instant::now();
            for (j, buf) in batch.drain(..).enumerate() {
                let _ = self.set.ingest(buf);
                if (j + 1) % per_poll != 0 && j + 1 != k {
                    continue;
                }
                self.set.poll(self.now, &mut self.shard_pool);
                for b in self.set.drain_tx() {
                    out += 1;
                    self.shard_pool.give(b);
                }
                for b in self.set.drain_spent() {
                    self.core_pool.give(b);
                }
            }
            spent += start.elapsed();
            if per_poll == 1 {
                assert_eq!(out, k, "one ACK per data segment");
            } else {
                assert!(out > 0, "segments are acknowledged");
            }
            self.read_all();
            left -= k;
        }
        spent
    }

    /// `iters` writes of `payload` by the application, one data segment out each; returns the
    /// time spent in the set.
    fn egress(&mut self, iters: u64, payload: &[u8]) -> Duration {
        let mut spent = Duration::ZERO;
        let mut left = iters as usize;
        // One write per connection per chunk: everything in flight is acknowledged between
        // chunks, so neither the window nor the congestion window ever holds a write back.
        let chunk = CHUNK.min(self.conns.len());
        let mut ids = Vec::with_capacity(chunk);
        while left > 0 {
            let k = left.min(chunk);
            ids.clear();
            for _ in 0..k {
                let i = self.next_conn();
                ids.push(self.conns[i].id);
                self.conns[i].ack = self.conns[i].ack.wrapping_add(payload.len() as u32);
            }
            let mut out = 0;
            let start = Instant::now();
            for &id in &ids {
                let _ = self.set.send_slice(id, payload);
                self.set.poll(self.now, &mut self.shard_pool);
                for b in self.set.drain_tx() {
                    out += 1;
                    self.shard_pool.give(b);
                }
            }
            spent += start.elapsed();
            assert_eq!(out, k, "one data segment per write");
            // The vendor acknowledges everything (pure ACKs: no answer expected).
            let first = (self.cursor + self.conns.len() - k) % self.conns.len();
            for j in 0..k {
                let c = &self.conns[(first + j) % self.conns.len()];
                let seg = bare(c.port, TcpControl::None, c.seq, Some(c.ack));
                self.inject(&seg);
            }
            let answers = self.poll_collect();
            assert!(answers.is_empty(), "pure ACKs need no answer: {answers:?}");
            left -= k;
        }
        spent
    }
}

pub fn benches(c: &mut Criterion) {
    let payload = [0x5au8; PAYLOAD];
    let mut group = c.benchmark_group("netstack");
    group.throughput(Throughput::Elements(1));
    for (n, stacks) in CASES {
        let name = if stacks == 1 {
            format!("{n}")
        } else {
            format!("{n}x{stacks}stacks")
        };
        let mut bed = Bed::new(n, stacks);
        group.bench_function(BenchmarkId::new("ingest", &name), |b| {
            b.iter_custom(|iters| bed.ingest(iters, &payload, 1))
        });
        group.bench_function(BenchmarkId::new("ingest-batch16", &name), |b| {
            b.iter_custom(|iters| bed.ingest(iters, &payload, 16))
        });
        group.bench_function(BenchmarkId::new("egress", &name), |b| {
            b.iter_custom(|iters| bed.egress(iters, &payload))
        });
    }
    group.finish();
}
