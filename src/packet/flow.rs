//! The flow view of an IP packet: addresses, protocol and ports, and the hash that picks a shard.

use std::net::IpAddr;

/// Why a packet has no usable flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// Shorter than its IP header, or an IP version other than 4 and 6.
    #[error("truncated or not an IP packet")]
    Malformed,
    /// An IPv4 fragment, or an IPv6 packet with a fragment header: the broker drops inner
    /// fragments (there is no reassembly; the tunnel MTU makes them unnecessary).
    #[error("inner IP fragment")]
    Fragment,
}

/// The 5-tuple of a packet (ports are 0 for protocols without ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// IP protocol number of TCP.
pub const TCP: u8 = 6;

impl Flow {
    /// Reads the flow of an IPv4 or IPv6 packet. Only the fixed headers are trusted: IPv6
    /// extension headers other than a fragment header end the walk with ports 0 (the shard's
    /// stack will drop such packets anyway).
    pub fn parse(p: &[u8]) -> Result<Self, FlowError> {
        match p.first().map(|b| b >> 4) {
            Some(4) => {
                if p.len() < 20 {
                    return Err(FlowError::Malformed);
                }
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if ihl < 20 || p.len() < ihl {
                    return Err(FlowError::Malformed);
                }
                let frag = u16::from_be_bytes([p[6], p[7]]);
                // More-fragments flag or a non-zero offset.
                if frag & 0x3fff != 0 {
                    return Err(FlowError::Fragment);
                }
                let src = IpAddr::from([p[12], p[13], p[14], p[15]]);
                let dst = IpAddr::from([p[16], p[17], p[18], p[19]]);
                let (src_port, dst_port) = ports(&p[ihl..]);
                Ok(Self {
                    src,
                    dst,
                    protocol: p[9],
                    src_port,
                    dst_port,
                })
            }
            Some(6) => {
                if p.len() < 40 {
                    return Err(FlowError::Malformed);
                }
                let mut a = [0u8; 16];
                a.copy_from_slice(&p[8..24]);
                let src = IpAddr::from(a);
                a.copy_from_slice(&p[24..40]);
                let dst = IpAddr::from(a);
                let next = p[6];
                if next == 44 {
                    return Err(FlowError::Fragment);
                }
                let (src_port, dst_port) = ports(&p[40..]);
                Ok(Self {
                    src,
                    dst,
                    protocol: next,
                    src_port,
                    dst_port,
                })
            }
            _ => Err(FlowError::Malformed),
        }
    }

    /// A hash of the flow that is stable for the life of the process and the same for every
    /// packet of one connection in one direction (FNV-1a over the tuple; the inputs are chosen by
    /// the remote peer, but a shard imbalance is the worst an adversary can cause).
    pub fn hash(&self) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        };
        match self.src {
            IpAddr::V4(a) => eat(&a.octets()),
            IpAddr::V6(a) => eat(&a.octets()),
        }
        match self.dst {
            IpAddr::V4(a) => eat(&a.octets()),
            IpAddr::V6(a) => eat(&a.octets()),
        }
        eat(&[self.protocol]);
        eat(&self.src_port.to_be_bytes());
        eat(&self.dst_port.to_be_bytes());
        // Final avalanche so that the low bits (used for `% shards`) depend on every input bit.
        h ^= h >> 16;
        h = h.wrapping_mul(0x7feb_352d);
        h ^= h >> 15;
        h
    }
}

fn ports(l4: &[u8]) -> (u16, u16) {
    if l4.len() >= 4 {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    } else {
        (0, 0)
    }
}

/// The shard (of `shards`) that owns a flow hash, and the stack (of `stacks`) inside it.
pub fn shard_of(hash: u32, shards: usize, stacks: usize) -> (usize, usize) {
    let h = hash as usize;
    let shards = shards.max(1);
    (h % shards, (h / shards) % stacks.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_tcp(src_port: u16, frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = TCP;
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        p[20..22].copy_from_slice(&src_port.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p
    }

    #[test]
    fn parses_ipv4_tcp() {
        let f = Flow::parse(&v4_tcp(40000, 0x4000)).expect("DF set, not a fragment");
        assert_eq!(f.src, IpAddr::from([10, 77, 0, 1]));
        assert_eq!(f.dst_port, 80);
        assert_eq!(f.src_port, 40000);
        assert_eq!(f.protocol, TCP);
    }

    #[test]
    fn rejects_fragments_and_garbage() {
        assert_eq!(Flow::parse(&v4_tcp(1, 0x2000)), Err(FlowError::Fragment));
        assert_eq!(Flow::parse(&v4_tcp(1, 0x0001)), Err(FlowError::Fragment));
        assert_eq!(Flow::parse(&[]), Err(FlowError::Malformed));
        assert_eq!(Flow::parse(&[0x45; 10]), Err(FlowError::Malformed));
        assert_eq!(Flow::parse(&[0x4f; 20]), Err(FlowError::Malformed));
        assert_eq!(Flow::parse(&[0x60; 39]), Err(FlowError::Malformed));
        assert_eq!(Flow::parse(&[0x10; 60]), Err(FlowError::Malformed));
    }

    #[test]
    fn hash_spreads_flows_over_shards() {
        let mut counts = [0usize; 4];
        for port in 1024..5120u16 {
            let f = Flow::parse(&v4_tcp(port, 0)).expect("valid");
            counts[shard_of(f.hash(), 4, 1).0] += 1;
        }
        for c in counts {
            assert!((900..1150).contains(&c), "uneven spread {counts:?}");
        }
    }
}
