//! What a shard's stack set is built from, with the defaults and the checks that reject values
//! no connection could work with.
//!
//! The runtime maps the validated broker configuration onto [`StackConfig`]:
//! `address`/`mtu` from `[wireguard]`, `listen_port` from `[inbound]`, `backlog` from
//! `[runtime] listen_backlog`, `rx_buffer`/`tx_buffer` from `[runtime] tcp_rx_buffer`/
//! `tcp_tx_buffer`, `stacks` from `[runtime] stacks_per_shard` (resolved when 0),
//! `max_sockets_per_stack` from `[runtime] max_connections / (shards × stacks)` plus the backlog,
//! and `shard_index`/`shards` from the executor layout.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::tcp::{self, Algorithm};

/// Configuration of one shard's [`StackSet`](super::StackSet).
///
/// Build it with struct-update syntax over [`StackConfig::default`]; every field documents its
/// default and why.
/// The default tunnel MTU, 1320 rather than WireGuard's customary 1420.
///
/// 1420 is what fits a 1500-byte Ethernet path (1500 - 80 bytes of WireGuard over IPv6). Brokers
/// sit behind PPPoE (1492), cloud VPN links and IPsec tunnels (1400 and less), and our TCP has no
/// path-MTU discovery: an encrypted datagram too large for such a link is fragmented or dropped,
/// and big responses stall while small ones pass. The Semgrep broker lowered its default to 1320
/// for exactly this; 1320 + 80 = 1400 fits every such path we know of, and matches what a Semgrep
/// gateway is configured for. The price is 7 % more packets per byte in bulk (MSS 1280 against
/// 1380); an operator who knows the path is clean sets `[wireguard] mtu = 1420`.
pub const DEFAULT_MTU: usize = 1320;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    /// The broker's tunnel address (v4 or v6); TCP is terminated on it only. No usable default:
    /// the default `0.0.0.0` is rejected by [`StackConfig::validate`].
    pub address: IpAddr,
    /// Tunnel MTU: the largest inner IP packet. The MSS we announce follows (1320 → 1280 over
    /// IPv4, 1260 over IPv6) and never sends a larger packet. Default [`DEFAULT_MTU`].
    pub mtu: usize,
    /// TCP port of the HTTP endpoint. Default 80.
    pub listen_port: u16,
    /// Half-open handshakes (`SYN-RECEIVED`) one stack may hold; further SYNs are dropped and
    /// the peer retransmits them (Linux's SYN queue). A half-open connection holds no buffer
    /// yet, so this bounds a SYN flood's cost, not a burst's: keep it above the SYNs one stack
    /// sees within a round trip. Default 16.
    pub backlog: usize,
    /// Receive buffer a connection starts with, bytes (its first advertised window); it grows
    /// with what the application reads per round trip up to `rx_buffer_max`. Default 64 KiB.
    pub rx_buffer: usize,
    /// Most a connection's receive buffer may grow to, bytes: the largest upload window. Also
    /// fixes the window-scale shift. Default 4 MiB (1 Gbit/s over 32 ms). At most 1 GiB.
    pub rx_buffer_max: usize,
    /// Send buffer a connection starts with, bytes; it grows to twice the congestion window (but
    /// at most four measured bandwidth-delay products) up to `tx_buffer_max`. Default 128 KiB.
    pub tx_buffer: usize,
    /// Most a connection's send buffer may grow to, bytes: bounds the bytes in flight per
    /// connection (the download window). Default 4 MiB.
    pub tx_buffer_max: usize,
    /// Congestion controller of every connection. Default CUBIC.
    pub congestion: Algorithm,
    /// Connections (handshakes, established, `TIME-WAIT`) one stack may hold; SYNs beyond are
    /// answered with RST. Default 256.
    pub max_sockets_per_stack: usize,
    /// Connection tables in this shard; flows are spread over them by hash. Default 4. At most
    /// 65535.
    pub stacks: usize,
    /// Index of this shard among `shards`. Default 0.
    pub shard_index: usize,
    /// Number of shards the tunnel core hashes flows over. Default 1.
    pub shards: usize,
    /// Keep-alive probe interval on idle connections. Default 30 s. Needed whenever `timeout` is
    /// set: a connection that received nothing for `timeout` is aborted, so an idle but live
    /// peer must be prodded to answer.
    pub keep_alive: Option<Duration>,
    /// A connection that receives nothing for this long is aborted (dead peer, or a half-open
    /// handshake whose SYN-ACK is never answered). Default 120 s (four missed keep-alives).
    /// After [`close`](super::StackSet::close) keep-alive stops, so a peer that never finishes
    /// its side releases the socket after this long.
    pub timeout: Option<Duration>,
    /// How long a connection may hold back a pure ACK hoping to piggyback it on data. `None`
    /// ACKs at once. Default 5 ms (`[runtime] tcp_ack_delay`): long
    /// enough that a proxied reply under load carries the ACK (at 1 ms, a third of requests also
    /// cost a pure-ACK datagram), short enough that a peer running Nagle is not stalled for long.
    /// A second full segment, out-of-order data and a FIN are still ACKed at once.
    pub ack_delay: Option<Duration>,
    /// Packets waiting in one stack's ingress queue before further packets for it are dropped.
    /// Default 1024.
    pub rx_queue: usize,
    /// Packets waiting in the shard's egress queue (not yet drained) before smoltcp is told the
    /// device is busy; it keeps the data and sends it on a later poll. Default 4096.
    pub tx_queue: usize,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            mtu: DEFAULT_MTU,
            listen_port: 80,
            backlog: 16,
            rx_buffer: 64 << 10,
            rx_buffer_max: 4 << 20,
            tx_buffer: 128 << 10,
            tx_buffer_max: 4 << 20,
            congestion: Algorithm::Bbr,
            max_sockets_per_stack: 256,
            stacks: 4,
            shard_index: 0,
            shards: 1,
            keep_alive: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(120)),
            ack_delay: Some(Duration::from_millis(5)),
            rx_queue: 1024,
            tx_queue: 4096,
        }
    }
}

/// A [`StackConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The named field has a value outside its valid range; the text says which.
    #[error("netstack `{field}`: {reason}")]
    Invalid {
        /// Field name in [`StackConfig`].
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn invalid(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

impl StackConfig {
    /// Checks every field; returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unicast = match self.address {
            IpAddr::V4(a) => {
                !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
            }
            IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
        };
        if !unicast {
            return Err(invalid("address", "must be a unicast tunnel address"));
        }
        let min_mtu = if self.address.is_ipv4() { 576 } else { 1280 };
        if self.mtu < min_mtu || self.mtu > 65535 {
            return Err(invalid(
                "mtu",
                "must be at least 576 (IPv4) / 1280 (IPv6) and at most 65535",
            ));
        }
        if self.listen_port == 0 {
            return Err(invalid("listen_port", "must not be 0"));
        }
        if self.backlog == 0 {
            return Err(invalid("backlog", "must be at least 1"));
        }
        if self.max_sockets_per_stack < self.backlog {
            return Err(invalid(
                "max_sockets_per_stack",
                "must be at least the backlog",
            ));
        }
        for (field, v) in [
            ("rx_buffer", self.rx_buffer),
            ("tx_buffer", self.tx_buffer),
            ("rx_buffer_max", self.rx_buffer_max),
            ("tx_buffer_max", self.tx_buffer_max),
        ] {
            if !(2048..=(1 << 30)).contains(&v) {
                return Err(invalid(field, "must be between 2 KiB and 1 GiB"));
            }
        }
        if self.stacks == 0 || self.stacks > usize::from(u16::MAX) {
            return Err(invalid("stacks", "must be between 1 and 65535"));
        }
        if self.shards == 0 {
            return Err(invalid("shards", "must be at least 1"));
        }
        if self.shard_index >= self.shards {
            return Err(invalid("shard_index", "must be below `shards`"));
        }
        if let Some(t) = self.timeout {
            if t <= Duration::from_secs(10) {
                return Err(invalid(
                    "timeout",
                    "must exceed TIME-WAIT's 10 s, or it aborts closing connections with RST",
                ));
            }
            match self.keep_alive {
                Some(k) if k < t => {}
                _ => {
                    return Err(invalid(
                        "keep_alive",
                        "must be set and shorter than `timeout`, or idle connections are aborted",
                    ));
                }
            }
        }
        if self.keep_alive.is_some_and(|k| k.is_zero()) {
            return Err(invalid("keep_alive", "must not be zero"));
        }
        if self.rx_queue == 0 {
            return Err(invalid("rx_queue", "must be at least 1"));
        }
        if self.tx_queue == 0 {
            return Err(invalid("tx_queue", "must be at least 1"));
        }
        self.tcp_config()
            .validate()
            .map_err(|e| invalid(e.field, e.reason))
    }

    /// The settings every connection of the set is made with. A `*_max` below its starting
    /// size is raised to it (a buffer never starts above its cap).
    pub fn tcp_config(&self) -> tcp::Config {
        tcp::Config {
            mtu: self.mtu,
            rx_buffer: self.rx_buffer,
            rx_buffer_max: self.rx_buffer_max.max(self.rx_buffer),
            tx_buffer: self.tx_buffer,
            tx_buffer_max: self.tx_buffer_max.max(self.tx_buffer),
            congestion: self.congestion,
            ack_delay: self.ack_delay,
            keep_alive: self.keep_alive,
            idle_timeout: self.timeout,
            ..tcp::Config::default()
        }
    }

    /// The MSS smoltcp will announce: the MTU minus the IP and TCP headers.
    pub fn mss(&self) -> usize {
        let ip = if self.address.is_ipv4() { 20 } else { 40 };
        self.mtu.saturating_sub(ip + 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StackConfig {
        StackConfig {
            address: IpAddr::from([10, 77, 0, 2]),
            ..StackConfig::default()
        }
    }

    #[test]
    fn defaults_validate_once_an_address_is_set() {
        assert!(StackConfig::default().validate().is_err());
        base()
            .validate()
            .expect("defaults with an address are valid");
        assert_eq!(base().mss(), 1280, "MTU 1320 - 40");
        let v6 = StackConfig {
            address: "fd00::2".parse().expect("v6"),
            ..base()
        };
        assert_eq!(v6.mss(), 1260, "MTU 1320 - 60");
    }

    #[test]
    fn rejects_values_smoltcp_would_choke_on() {
        let cases = [
            StackConfig {
                listen_port: 0,
                ..base()
            },
            StackConfig {
                rx_buffer: 2 << 30,
                ..base()
            },
            StackConfig {
                stacks: 0,
                ..base()
            },
            StackConfig {
                shard_index: 1,
                ..base()
            },
            StackConfig {
                keep_alive: None,
                ..base()
            },
            StackConfig {
                timeout: Some(Duration::from_secs(5)),
                ..base()
            },
            StackConfig {
                max_sockets_per_stack: 2,
                ..base()
            },
            StackConfig { mtu: 500, ..base() },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?} should be rejected");
        }
    }
}
