//! Arbitrary TCP segments, time steps and application calls against a stack set running our own
//! TCP (`netstack::tcp`): nothing may panic, every ingress buffer comes back exactly once, and a
//! drained set never asks to be polled again at once forever (no busy loop).
//!
//! The input is a little program. Each step starts with an opcode byte:
//! * `0` — a segment from one of four vendor ports: flags, sequence and acknowledgement numbers,
//!   window, options (MSS, window scale, SACK permitted, timestamps, up to three SACK blocks) and
//!   a payload, all from the input; the harness writes a valid IPv4 packet (checksums right, so
//!   the segment reaches the connection logic rather than the parser's rejection);
//! * `1` — the clock moves by 0–65,535 ms;
//! * `2` — the application side: accept, then per connection read, write, close or abort;
//! * anything else — raw bytes as an IP packet (parser robustness).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber, TcpTimestampRepr};
use wgbroker::netstack::tcp::wire;
use wgbroker::netstack::{ConnId, StackConfig, StackSet};
use wgbroker::packet::BufPool;

const BROKER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const VENDOR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const MTU: usize = 1320;

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
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn segment(inp: &mut Input<'_>, buf: &mut [u8]) -> Option<usize> {
    let port = 40000 + u16::from(inp.u8()? % 4);
    let flags = inp.u8()?;
    let control = match flags & 0x7 {
        0 => TcpControl::Syn,
        1 => TcpControl::Fin,
        2 => TcpControl::Rst,
        3 => TcpControl::Psh,
        _ => TcpControl::None,
    };
    let seq = inp.u32()?;
    let ack = inp.u32()?;
    let window = inp.u16()?;
    let opts = inp.u8()?;
    let mut sack = [None; 3];
    for s in sack.iter_mut().take(usize::from(opts >> 6)) {
        *s = Some((inp.u32()?, inp.u32()?));
    }
    let tsval = inp.u32()?;
    let tsecr = inp.u32()?;
    let len = usize::from(inp.u16()? % 1400);
    let payload = inp.bytes(len);
    // TCP has 40 bytes of options: a segment that needs more cannot be on the wire (and smoltcp's
    // emitter panics on one). Drop SACK blocks until the options fit, as a sender would.
    let fixed = 4 * usize::from(opts & 0x20 != 0)
        + 3 * usize::from(opts & 1 != 0)
        + 2 * usize::from(flags & 0x10 != 0)
        + 10 * usize::from(flags & 0x20 != 0);
    for n in (0..=3).rev() {
        if fixed + if n > 0 { 2 + 8 * n } else { 0 } <= 40 {
            break;
        }
        sack[n - 1] = None;
    }
    let repr = TcpRepr {
        src_port: port,
        dst_port: 80,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: (flags & 0x8 != 0).then_some(TcpSeqNumber(ack as i32)),
        window_len: window,
        window_scale: (opts & 1 != 0).then_some(opts >> 1 & 0xf),
        max_seg_size: (opts & 0x20 != 0).then_some(536 + (window % 1000)),
        sack_permitted: flags & 0x10 != 0,
        sack_ranges: sack,
        timestamp: (flags & 0x20 != 0).then_some(TcpTimestampRepr::new(tsval, tsecr)),
        payload: &[],
    };
    wire::emit(
        buf,
        IpAddr::V4(VENDOR),
        IpAddr::V4(BROKER),
        64,
        &repr,
        (payload, &[]),
    )
}

fuzz_target!(|data: &[u8]| {
    let config = StackConfig {
        address: IpAddr::V4(BROKER),
        mtu: MTU,
        backlog: 4,
        max_sockets_per_stack: 8,
        stacks: 2,
        rx_buffer: 4096,
        rx_buffer_max: 64 << 10,
        tx_buffer: 4096,
        tx_buffer_max: 64 << 10,
        ..StackConfig::default()
    };
    let epoch = Instant::now();
    let mut set = StackSet::new(&config, epoch, 7).expect("valid config");
    let mut now = epoch;
    let mut core = BufPool::new(2048, 64);
    let mut shard = BufPool::new(2048, 64);
    let mut conns: Vec<ConnId> = Vec::new();
    let (mut lent, mut returned) = (0u64, 0u64);
    let mut inp = Input(data);
    let mut steps = 0;
    while let Some(op) = inp.u8() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        match op {
            0 => {
                let mut b = core.take();
                let Some(n) = segment(&mut inp, b.space()) else {
                    core.give(b);
                    break;
                };
                b.set_len(n);
                lent += 1;
                let _ = set.ingest(b);
            }
            1 => {
                let Some(ms) = inp.u16() else { break };
                now += Duration::from_millis(u64::from(ms));
            }
            2 => {
                let Some(what) = inp.u8() else { break };
                while let Some(id) = set.accept() {
                    conns.push(id);
                }
                for &id in &conns {
                    let mut sink = [0u8; 3000];
                    let _ = set.recv_slice(id, &mut sink[..usize::from(what) * 11]);
                    let _ = set.peek(id, usize::from(what));
                    let _ = set.send_slice(id, &sink[..usize::from(what) * 7]);
                    match what % 16 {
                        0 => {
                            let _ = set.close(id);
                        }
                        1 => {
                            let _ = set.abort(id);
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                let n = usize::from(inp.u8().unwrap_or(0));
                let raw = inp.bytes(n);
                let mut b = core.take();
                b.space()[..raw.len()].copy_from_slice(raw);
                b.set_len(raw.len());
                lent += 1;
                let _ = set.ingest(b);
            }
        }
        // Drive the set as the runtime does: poll, drain, poll again while it asks for it.
        for round in 0.. {
            set.poll(now, &mut shard);
            for b in set.drain_tx() {
                assert!(b.len() <= MTU, "an egress packet over the MTU");
                shard.give(b);
            }
            for b in set.drain_spent() {
                returned += 1;
                core.give(b);
            }
            if set.poll_delay(now) != Some(Duration::ZERO) {
                break;
            }
            assert!(round < 100, "the set asks to be polled at once, forever");
        }
    }
    assert_eq!(lent, returned, "every ingress buffer comes back exactly once");
});
