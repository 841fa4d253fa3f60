//! IPv4/TCP packets with valid checksums, written with smoltcp's wire types, and the few header
//! fields the benchmarks read back. This plays the vendor's kernel: what it builds is what a
//! decrypted packet looks like when it reaches the broker.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// The vendor's tunnel address (the peer of every connection).
pub const VENDOR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The broker's tunnel address.
pub const BROKER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// IPv4 + TCP header bytes without options.
pub const HEADERS: usize = 40;

/// One TCP segment to write.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub control: TcpControl,
    pub seq: u32,
    /// The acknowledgment number; `None` for a SYN.
    pub ack: Option<u32>,
    pub payload: &'a [u8],
}

fn seq(n: u32) -> TcpSeqNumber {
    TcpSeqNumber(i32::from_ne_bytes(n.to_ne_bytes()))
}

fn raw(n: TcpSeqNumber) -> u32 {
    u32::from_ne_bytes(n.0.to_ne_bytes())
}

/// Writes `seg` as an IPv4 packet at the start of `out`; returns its length. A SYN carries the
/// MSS option of a 1420-byte tunnel MTU.
pub fn write(seg: &Segment<'_>, out: &mut [u8]) -> usize {
    let tcp = TcpRepr {
        src_port: seg.src.1,
        dst_port: seg.dst.1,
        control: seg.control,
        seq_number: seq(seg.seq),
        ack_number: seg.ack.map(seq),
        window_len: u16::MAX,
        window_scale: None,
        max_seg_size: (seg.control == TcpControl::Syn).then_some(1380),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: seg.payload,
    };
    let ip = Ipv4Repr {
        src_addr: seg.src.0,
        dst_addr: seg.dst.0,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let len = ip.buffer_len() + tcp.buffer_len();
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut out[..len]);
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(seg.src.0),
        &IpAddress::Ipv4(seg.dst.0),
        &caps,
    );
    len
}

/// A data packet of exactly `total` bytes (at least [`HEADERS`]) from `src` to `dst`, between
/// the vendor's port 40000 and the broker's port 80.
pub fn packet(src: Ipv4Addr, dst: Ipv4Addr, total: usize) -> Vec<u8> {
    let payload = vec![0x5a; total.saturating_sub(HEADERS)];
    let ports = if src == BROKER_IP {
        (80, 40_000)
    } else {
        (40_000, 80)
    };
    let mut out = vec![0u8; HEADERS + payload.len()];
    let len = write(
        &Segment {
            src: (src, ports.0),
            dst: (dst, ports.1),
            control: TcpControl::Psh,
            seq: 1,
            ack: Some(1),
            payload: &payload,
        },
        &mut out,
    );
    out.truncate(len);
    out
}

/// The TCP fields of an IPv4 packet the benchmarks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub payload: usize,
}

/// Reads the TCP header of an IPv4 packet (no checksum check).
pub fn read(packet: &[u8]) -> Option<Seen> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(Seen {
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        seq: raw(tcp.seq_number()),
        ack: raw(tcp.ack_number()),
        syn: tcp.syn(),
        payload: tcp.payload().len(),
    })
}
