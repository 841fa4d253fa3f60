//! The packet seam: IP + TCP headers in and out, on smoltcp's wire types.
//!
//! smoltcp stays the packet layer: [`parse`] checks an inbound IP packet (IPv4 without
//! fragmentation or IPv6 without extension headers, TCP with a valid checksum) into a
//! [`TcpRepr`] that borrows the payload in place; [`emit`] writes the IP header and a
//! [`TcpRepr`] into the caller's buffer, copying the payload from up to two slices (a ring's two
//! halves) and computing the checksum once over the result. Nothing here allocates.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};

/// IPv4 header without options.
pub const IPV4_HEADER: usize = 20;
/// IPv6 header without extension headers.
pub const IPV6_HEADER: usize = 40;
/// TCP header without options.
pub const TCP_HEADER: usize = 20;

/// An inbound TCP segment with its endpoints; the payload borrows the packet.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Sender of the segment.
    pub src: SocketAddr,
    /// Receiver of the segment.
    pub dst: SocketAddr,
    /// The TCP header and payload.
    pub repr: TcpRepr<'a>,
}

/// Why [`parse`] refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not a well-formed IPv4/IPv6 packet, or a fragment.
    #[error("malformed or fragmented IP packet")]
    Ip,
    /// Not TCP (or IPv6 with extension headers).
    #[error("not a TCP packet")]
    NotTcp,
    /// The TCP header, its options or its checksum are invalid.
    #[error("malformed TCP segment")]
    Tcp,
}

/// Parses an IP packet carrying one TCP segment. See the module docs.
pub fn parse(packet: &[u8]) -> Result<Segment<'_>, ParseError> {
    let caps = ChecksumCapabilities::default();
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).map_err(|_| ParseError::Ip)?;
            if !ip.verify_checksum() || ip.more_frags() || ip.frag_offset() != 0 {
                return Err(ParseError::Ip);
            }
            if ip.next_header() != IpProtocol::Tcp {
                return Err(ParseError::NotTcp);
            }
            let start = usize::from(ip.header_len());
            let end = usize::from(ip.total_len());
            let body = packet.get(start..end).ok_or(ParseError::Ip)?;
            (ip.src_addr().into(), ip.dst_addr().into(), body)
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).map_err(|_| ParseError::Ip)?;
            if ip.next_header() != IpProtocol::Tcp {
                return Err(ParseError::NotTcp);
            }
            let end = IPV6_HEADER + usize::from(ip.payload_len());
            let body = packet.get(IPV6_HEADER..end).ok_or(ParseError::Ip)?;
            (ip.src_addr().into(), ip.dst_addr().into(), body)
        }
        _ => return Err(ParseError::Ip),
    };
    let pkt = TcpPacket::new_checked(tcp).map_err(|_| ParseError::Tcp)?;
    let repr = TcpRepr::parse(&pkt, &IpAddress::from(src), &IpAddress::from(dst), &caps)
        .map_err(|_| ParseError::Tcp)?;
    Ok(Segment {
        src: SocketAddr::new(src, repr.src_port),
        dst: SocketAddr::new(dst, repr.dst_port),
        repr,
    })
}

/// Length of the IP header for this address family.
pub fn ip_header_len(addr: IpAddr) -> usize {
    if addr.is_ipv4() {
        IPV4_HEADER
    } else {
        IPV6_HEADER
    }
}

/// Writes an IP packet from `src` to `dst` carrying `repr` (whose own `payload` must be empty)
/// followed by the payload `parts.0 ++ parts.1`. Returns the packet length, or `None` if `buf`
/// is too small or the addresses are of different families.
pub fn emit(
    buf: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    hop_limit: u8,
    repr: &TcpRepr<'_>,
    parts: (&[u8], &[u8]),
) -> Option<usize> {
    let payload = parts.0.len() + parts.1.len();
    let tcp_len = repr.header_len() + payload;
    let ip_len = ip_header_len(src);
    let total = ip_len + tcp_len;
    // The data offset has 4 bits: at most 60 bytes of header, 40 of options.
    if buf.len() < total || src.is_ipv4() != dst.is_ipv4() || repr.header_len() > 60 {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: tcp_len,
                hop_limit,
            };
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..ip_len]), &caps);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Tcp,
                payload_len: tcp_len,
                hop_limit,
            };
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..ip_len]));
        }
        _ => return None,
    }
    let (src, dst) = (IpAddress::from(src), IpAddress::from(dst));
    let mut tcp = TcpPacket::new_unchecked(&mut buf[ip_len..total]);
    let header = TcpRepr {
        payload: &[],
        ..*repr
    };
    header.emit(&mut tcp, &src, &dst, &ChecksumCapabilities::ignored());
    let body = tcp.payload_mut();
    body[..parts.0.len()].copy_from_slice(parts.0);
    body[parts.0.len()..payload].copy_from_slice(parts.1);
    tcp.fill_checksum(&src, &dst);
    Some(total)
}

/// The reset RFC 9293 prescribes for a segment that reaches no connection (`CLOSED` state), or
/// `None` if the segment is itself a reset. With ACK: `<SEQ=SEG.ACK><CTL=RST>`; without:
/// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`.
pub fn reset_for(seg: &TcpRepr<'_>) -> Option<TcpRepr<'static>> {
    if seg.control == TcpControl::Rst {
        return None;
    }
    let (seq, ack) = match seg.ack_number {
        Some(ack) => (ack, None),
        None => {
            let len = u32::try_from(seg.segment_len()).unwrap_or(0);
            (
                TcpSeqNumber(0),
                Some(TcpSeqNumber(seg.seq_number.0.wrapping_add(len as i32))),
            )
        }
    };
    Some(TcpRepr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        control: TcpControl::Rst,
        seq_number: seq,
        ack_number: ack,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::TcpTimestampRepr;

    fn syn(payload: &'static [u8]) -> TcpRepr<'static> {
        TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 1024,
            window_scale: Some(7),
            max_seg_size: Some(1280),
            sack_permitted: true,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        }
    }

    /// TCP has room for 40 bytes of options (a 4-bit data offset); a segment that asks for
    /// more is refused, not emitted (smoltcp's emit panics on it: found by `tcp_segments`).
    #[test]
    fn a_segment_with_more_than_40_bytes_of_options_is_refused() {
        let mut buf = [0u8; 1500];
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let repr = TcpRepr {
            sack_ranges: [Some((1, 2)), Some((5, 9)), Some((11, 19))],
            timestamp: Some(TcpTimestampRepr::new(1, 2)),
            ..syn(&[])
        };
        assert!(repr.header_len() > 60);
        assert_eq!(emit(&mut buf, a, b, 64, &repr, (b"", b"")), None);
    }

    #[test]
    fn emit_then_parse_round_trips_both_families_with_split_payloads() {
        for (a, b) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let (a, b): (IpAddr, IpAddr) = (a.parse().expect("ip"), b.parse().expect("ip"));
            let mut buf = [0u8; 1500];
            let repr = TcpRepr {
                control: TcpControl::None,
                ack_number: Some(TcpSeqNumber(77)),
                sack_permitted: false,
                sack_ranges: [Some((1, 2)), Some((5, 9)), None],
                ..syn(&[])
            };
            let n = emit(&mut buf, a, b, 64, &repr, (b"hello ", b"world")).expect("fits");
            let seg = parse(&buf[..n]).expect("valid");
            assert_eq!(seg.src, SocketAddr::new(a, 40000));
            assert_eq!(seg.dst, SocketAddr::new(b, 80));
            assert_eq!(seg.repr.payload, b"hello world");
            assert_eq!(seg.repr.sack_ranges, repr.sack_ranges);
            // A flipped payload bit fails the checksum.
            buf[n - 1] ^= 1;
            assert_eq!(parse(&buf[..n]).err(), Some(ParseError::Tcp));
            assert!(emit(&mut buf[..50], a, b, 64, &repr, (b"x", b"")).is_none());
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(parse(&[]).err(), Some(ParseError::Ip));
        assert_eq!(parse(&[0x45; 10]).err(), Some(ParseError::Ip));
        let mut state = 0x1234_5678_u32;
        let mut buf = [0u8; 80];
        for _ in 0..10_000 {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            buf[0] = if state & 1 == 0 { 0x45 } else { 0x60 };
            let _ = parse(&buf);
        }
    }

    #[test]
    fn resets_answer_what_the_segment_carried() {
        let r = reset_for(&syn(b"ab")).expect("a SYN gets a reset");
        assert_eq!(r.ack_number, Some(TcpSeqNumber(1003)), "SYN + 2 bytes");
        assert_eq!(r.seq_number, TcpSeqNumber(0));
        assert_eq!((r.src_port, r.dst_port), (80, 40000));
        let acked = TcpRepr {
            control: TcpControl::None,
            ack_number: Some(TcpSeqNumber(555)),
            ..syn(&[])
        };
        let r = reset_for(&acked).expect("reset");
        assert_eq!((r.seq_number, r.ack_number), (TcpSeqNumber(555), None));
        let rst = TcpRepr {
            control: TcpControl::Rst,
            ..syn(&[])
        };
        assert!(reset_for(&rst).is_none(), "never answer a reset");
    }
}
