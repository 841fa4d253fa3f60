//! Cryptokey routing: the allowed-IPs table, longest prefix first.
//!
//! One table answers both questions WireGuard asks of allowed IPs:
//! * egress: which peer does an IP packet for `dst` go to? ([`Routes::lookup`] of the destination)
//! * ingress: may peer `p` send a packet from `src`? (only if [`Routes::lookup`] of the source is
//!   `p` — the same rule the kernel implementation applies, so with overlapping prefixes a peer
//!   may not claim addresses a more specific prefix gives to another peer).
//!
//! Layout: per address family, one hash map keyed by `(prefix length, masked address)` and the
//! list of prefix lengths present, longest first. A lookup probes one map entry per distinct
//! prefix length (typically one to three), whatever the number of peers.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::PeerId;

/// Two peers were given the same prefix (after truncating host bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conflict {
    /// The prefix, host bits cleared.
    pub(super) net: IpNet,
    /// The peer that has it already.
    pub(super) owner: PeerId,
}

/// The allowed-IPs table of every peer.
#[derive(Debug, Default)]
pub(super) struct Routes {
    v4: Family<u32>,
    v6: Family<u128>,
}

#[derive(Debug)]
struct Family<A> {
    /// Distinct prefix lengths present, longest first.
    lens: Vec<u8>,
    map: HashMap<(u8, A), PeerId>,
}

impl<A> Default for Family<A> {
    fn default() -> Self {
        Self {
            lens: Vec::new(),
            map: HashMap::new(),
        }
    }
}

impl<A: Copy + Eq + std::hash::Hash> Family<A> {
    fn insert(&mut self, len: u8, key: A, peer: PeerId) -> Result<(), PeerId> {
        match self.map.insert((len, key), peer) {
            Some(previous) if previous != peer => {
                self.map.insert((len, key), previous);
                Err(previous)
            }
            _ => {
                if let Err(at) = self.lens.binary_search_by(|l| len.cmp(l)) {
                    self.lens.insert(at, len);
                }
                Ok(())
            }
        }
    }

    fn lookup(&self, mask: impl Fn(u8) -> A) -> Option<PeerId> {
        self.lens
            .iter()
            .find_map(|&len| self.map.get(&(len, mask(len))).copied())
    }
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    // `checked_shl` is `None` for a shift of 32, i.e. a /0 prefix: mask everything.
    addr & u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    addr & u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

impl Routes {
    /// Gives `net` to `peer`. Host bits are ignored (`10.0.0.1/24` is `10.0.0.0/24`). Giving
    /// the same prefix to the same peer twice is harmless; to a second peer, a conflict.
    pub(super) fn insert(&mut self, net: IpNet, peer: PeerId) -> Result<(), Conflict> {
        let net = net.trunc();
        let len = net.prefix_len();
        let result = match net.network() {
            IpAddr::V4(a) => self.v4.insert(len, u32::from(a), peer),
            IpAddr::V6(a) => self.v6.insert(len, u128::from(a), peer),
        };
        result.map_err(|owner| Conflict { net, owner })
    }

    /// The peer whose longest matching prefix contains `addr`.
    pub(super) fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.lookup(|len| mask_v4(a, len))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.lookup(|len| mask_v6(a, len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address")
    }

    #[test]
    fn longest_prefix_wins() {
        let mut r = Routes::default();
        r.insert(net("0.0.0.0/0"), PeerId(0)).expect("no conflict");
        r.insert(net("10.0.0.0/8"), PeerId(1)).expect("no conflict");
        r.insert(net("10.1.0.0/16"), PeerId(2))
            .expect("no conflict");
        r.insert(net("10.1.2.3/32"), PeerId(3))
            .expect("no conflict");
        assert_eq!(r.lookup(ip("10.1.2.3")), Some(PeerId(3)));
        assert_eq!(r.lookup(ip("10.1.2.4")), Some(PeerId(2)));
        assert_eq!(r.lookup(ip("10.2.0.1")), Some(PeerId(1)));
        assert_eq!(r.lookup(ip("192.168.0.1")), Some(PeerId(0)));
        assert_eq!(r.lookup(ip("::1")), None, "no IPv6 routes");
    }

    #[test]
    fn ipv6_and_host_bits() {
        let mut r = Routes::default();
        r.insert(net("fd00:1::5/64"), PeerId(7))
            .expect("no conflict");
        r.insert(net("fd00::/8"), PeerId(8)).expect("no conflict");
        r.insert(net("::/0"), PeerId(9)).expect("no conflict");
        assert_eq!(r.lookup(ip("fd00:1::ffff")), Some(PeerId(7)));
        assert_eq!(r.lookup(ip("fd00:2::1")), Some(PeerId(8)));
        assert_eq!(r.lookup(ip("2001:db8::1")), Some(PeerId(9)));
        assert_eq!(r.lookup(ip("10.0.0.1")), None, "no IPv4 routes");
    }

    #[test]
    fn same_prefix_for_two_peers_is_a_conflict() {
        let mut r = Routes::default();
        r.insert(net("10.0.0.0/24"), PeerId(1)).expect("first");
        r.insert(net("10.0.0.9/24"), PeerId(1))
            .expect("same peer again is fine");
        assert_eq!(
            r.insert(net("10.0.0.1/24"), PeerId(2)),
            Err(Conflict {
                net: net("10.0.0.0/24"),
                owner: PeerId(1)
            })
        );
        assert_eq!(
            r.lookup(ip("10.0.0.200")),
            Some(PeerId(1)),
            "first owner kept"
        );
    }
}
