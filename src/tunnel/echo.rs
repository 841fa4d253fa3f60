//! ICMP echo inside the tunnel, built and answered by the table itself (no stack involved):
//! the idle probe a dialed peer is sent ([`super::PeerTable::set_idle_probe`]), and the answer
//! to an echo request a peer sends to this side.
//!
//! Why an echo: a WireGuard keepalive is never answered, so it cannot tell a live peer from a
//! restarted one that silently drops our packets; a handshake is answered but costs the peer
//! Diffie-Hellman (a gateway with 1,000 idle brokers probing every 2 s would verify 500
//! handshakes a second, five times boringtun's default handshake rate limit). An echo is two
//! small encrypted packets, and both gateways answer it: the kernel behind wireguard-go, and
//! `wgbroker gateway` through this very table.
//!
//! Only plain packets are handled: IPv4 without options, IPv6 with ICMPv6 as the first next
//! header, at most [`MAX_ECHO_LEN`] bytes. Checksums of requests are not verified (the packet
//! was authenticated by WireGuard); answers carry correct ones.

use std::net::IpAddr;

use super::table::{Outcome, settle};
use super::{DropReason, PeerId, PeerTable, Received, required_buffer_len};

/// The ICMP identifier of our probes; answers with any other are not ours.
pub(super) const PROBE_IDENT: u16 = 0x7762;

/// The longest echo request (IP length) the table answers: room for an ordinary `ping`
/// (84 bytes) and then some, copied on the stack.
pub(super) const MAX_ECHO_LEN: usize = 256;

/// Payload of our probes (so a capture shows who sent them).
const PROBE_DATA: &[u8] = b"wgbroker idle probe";

const ICMPV4: u8 = 1;
const ICMPV6: u8 = 58;

/// What an IP packet is, as far as echoes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Echo {
    Request,
    Reply { ident: u16 },
}

/// Where the ICMP message starts and which version, for a packet we handle.
fn icmp_offset(p: &[u8]) -> Option<(usize, u8)> {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.first() == Some(&0x45) && p.get(9) == Some(&ICMPV4) => Some((20, 4)),
        Some(6) if p.get(6) == Some(&ICMPV6) => Some((40, 6)),
        _ => None,
    }
}

/// Classifies an IP packet as an echo request or reply (anything else: `None`).
pub(super) fn classify(p: &[u8]) -> Option<Echo> {
    let (at, version) = icmp_offset(p)?;
    let icmp = p.get(at..)?;
    if icmp.len() < 8 || icmp.get(1) != Some(&0) {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    match (version, icmp[0]) {
        (4, 8) | (6, 128) => Some(Echo::Request),
        (4, 0) | (6, 129) => Some(Echo::Reply { ident }),
        _ => None,
    }
}

/// Writes an echo request from `from` to `to` (same family) with our identifier and `seq` into
/// `buf`; returns its length, or `None` for mixed families or a short buffer.
pub(super) fn request(from: IpAddr, to: IpAddr, seq: u16, buf: &mut [u8]) -> Option<usize> {
    let (head, ty) = match (from, to) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (20, 8),
        (IpAddr::V6(_), IpAddr::V6(_)) => (40, 128),
        _ => return None,
    };
    let len = head + 8 + PROBE_DATA.len();
    let p = buf.get_mut(..len)?;
    p.fill(0);
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            p[6] = 0x40; // don't fragment
            p[9] = ICMPV4;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            p[6] = ICMPV6;
            p[8..24].copy_from_slice(&s.octets());
            p[24..40].copy_from_slice(&d.octets());
        }
        _ => return None,
    }
    p[head] = ty;
    p[head + 4..head + 6].copy_from_slice(&PROBE_IDENT.to_be_bytes());
    p[head + 6..head + 8].copy_from_slice(&seq.to_be_bytes());
    p[head + 8..].copy_from_slice(PROBE_DATA);
    finish(p, head);
    Some(len)
}

/// Turns the echo request `p` (as [`classify`] accepted it) into its reply, in place: addresses
/// swapped, TTL / hop limit 64, type reply, checksums recomputed. Identifier, sequence number
/// and data are kept, as RFC 792 and RFC 4443 ask.
pub(super) fn answer_in_place(p: &mut [u8]) -> Option<()> {
    let (head, version) = icmp_offset(p)?;
    if p.len() < head + 8 {
        return None;
    }
    if version == 4 {
        let (s, d) = p.get_mut(12..20)?.split_at_mut(4);
        s.swap_with_slice(d);
        p[8] = 64;
        p[head] = 0;
    } else {
        let (s, d) = p.get_mut(8..40)?.split_at_mut(16);
        s.swap_with_slice(d);
        p[7] = 64;
        p[head] = 129;
    }
    finish(p, head);
    Some(())
}

impl PeerTable {
    /// Answers the echo `request` from `slot` (addressed to this side: no peer's allowed IPs
    /// cover its destination) through the tunnel. The answer expects nothing back, so it does
    /// not count as a packet the peer leaves unanswered.
    pub(super) fn answer_echo<'o>(
        &mut self,
        slot: usize,
        request: &mut [u8],
        out: &'o mut [u8],
    ) -> Received<'o> {
        if answer_in_place(request).is_none() {
            return self.dropped_rx(DropReason::Malformed);
        }
        if out.len() < required_buffer_len(request.len()) {
            // Cannot happen (`out` held the datagram the request came in), but `encapsulate`
            // would panic on it.
            return self.dropped_rx(DropReason::BufferTooSmall);
        }
        let Some(p) = self.peers.get_mut(slot) else {
            return self.dropped_rx(DropReason::UnknownIndex);
        };
        let Some(to) = p.endpoint else {
            return self.dropped_rx(DropReason::NoEndpoint);
        };
        let unanswered = p.unanswered_since;
        let base = out.as_ptr().addr();
        let Outcome::Network(range) = settle(base, p.tunn.encapsulate(request, &mut *out)) else {
            return self.dropped_rx(DropReason::NoSession);
        };
        let Some(datagram) = out.get_mut(range) else {
            return self.dropped_rx(DropReason::BufferTooSmall);
        };
        self.account_emit(slot, datagram);
        if let Some(p) = self.peers.get_mut(slot) {
            p.unanswered_since = unanswered;
        }
        self.counters.echo_replies_sent += 1;
        Received::Transmit {
            peer: Some(PeerId(slot as u32)),
            to,
            datagram,
        }
    }
}

/// Fills in the IPv4 header checksum (for IPv4) and the ICMP checksum of a packet whose ICMP
/// message starts at `head`.
fn finish(p: &mut [u8], head: usize) {
    let icmp_len = p.len() - head;
    p[head + 2..head + 4].fill(0);
    let c = if head == 20 {
        p[10..12].fill(0);
        let h = checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&h.to_be_bytes());
        checksum(&p[head..], 0)
    } else {
        // The pseudo-header: both addresses, the upper-layer length, the next header.
        let pseudo = sum(&p[8..40], 0) + icmp_len as u32 + u32::from(ICMPV6);
        checksum(&p[head..], pseudo)
    };
    p[head + 2..head + 4].copy_from_slice(&c.to_be_bytes());
}

/// The ones'-complement sum of `data` as 16-bit big-endian words, added to `initial`
/// (unfolded).
fn sum(data: &[u8], initial: u32) -> u32 {
    data.chunks(2).fold(initial, |acc, w| {
        let hi = u32::from(w[0]) << 8;
        let lo = w.get(1).map_or(0, |&b| u32::from(b));
        acc + (hi | lo)
    })
}

/// The Internet checksum of `data` with `initial` (a pseudo-header's sum) added.
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut s = sum(data, initial);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet with correct checksums sums to 0xffff (checksum 0 over the whole).
    fn verifies(p: &[u8]) -> bool {
        match p[0] >> 4 {
            4 => checksum(&p[..20], 0) == 0 && checksum(&p[20..], 0) == 0,
            _ => {
                let pseudo = sum(&p[8..40], 0) + (p.len() - 40) as u32 + u32::from(ICMPV6);
                checksum(&p[40..], pseudo) == 0
            }
        }
    }

    #[test]
    fn requests_and_answers_carry_valid_checksums_in_both_families() {
        let pairs: [(IpAddr, IpAddr); 2] = [
            (
                "10.77.0.2".parse().expect("an address"),
                "10.77.0.1".parse().expect("an address"),
            ),
            (
                "fd00::2".parse().expect("an address"),
                "fd00::1".parse().expect("an address"),
            ),
        ];
        for (from, to) in pairs {
            let mut buf = [0u8; 128];
            let n = request(from, to, 9, &mut buf).expect("fits");
            let mut p = buf[..n].to_vec();
            assert!(verifies(&p), "{from}: {p:?}");
            assert_eq!(classify(&p), Some(Echo::Request));
            answer_in_place(&mut p).expect("an echo request");
            assert!(verifies(&p), "{from}: {p:?}");
            assert_eq!(classify(&p), Some(Echo::Reply { ident: PROBE_IDENT }));
            assert_eq!(&p[n - PROBE_DATA.len()..], PROBE_DATA, "data kept");
            let (s, d) = if from.is_ipv4() {
                (&p[12..16], &p[16..20])
            } else {
                (&p[8..24], &p[24..40])
            };
            let octets = |a: IpAddr| match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            assert_eq!((s.to_vec(), d.to_vec()), (octets(to), octets(from)));
        }
    }

    #[test]
    fn mixed_families_short_buffers_and_other_packets_are_refused() {
        let v4: IpAddr = "10.0.0.1".parse().expect("an address");
        let v6: IpAddr = "fd00::1".parse().expect("an address");
        assert_eq!(request(v4, v6, 1, &mut [0u8; 128]), None);
        assert_eq!(request(v4, v4, 1, &mut [0u8; 20]), None);
        let mut buf = [0u8; 128];
        let n = request(v4, v4, 1, &mut buf).expect("fits");
        let mut tcp = buf[..n].to_vec();
        tcp[9] = 6;
        assert_eq!(classify(&tcp), None);
        let mut options = buf[..n].to_vec();
        options[0] = 0x46;
        assert_eq!(classify(&options), None, "IPv4 options: not handled");
        assert_eq!(classify(&buf[..24]), None, "truncated ICMP header");
        assert_eq!(answer_in_place(&mut tcp), None);
    }
}
