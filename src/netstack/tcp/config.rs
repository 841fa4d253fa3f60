//! Per-connection settings, with the default and the reason for each.

use std::time::Duration;

use super::cc::Algorithm;

/// How a [`Conn`](super::Conn) behaves. Build it with struct-update syntax over
/// [`Config::default`]; [`Config::validate`] says what is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest IP packet (tunnel MTU). The MSS we announce is this minus the IP and TCP headers;
    /// segments we send never exceed it, options included. Default 1320 (the broker's tunnel
    /// default).
    pub mtu: usize,
    /// Receive buffer (and so advertised window) a connection starts with, bytes. Autotuning
    /// raises it with what the application reads per round trip. Default 64 KiB: a peer's first
    /// flight (ten segments) fits with room to spare.
    pub rx_buffer: usize,
    /// Most the receive buffer may grow to, bytes; also sets our window-scale shift. Default
    /// 4 MiB: the bandwidth-delay product of 1 Gbit/s over 32 ms.
    pub rx_buffer_max: usize,
    /// Send buffer a connection starts with, bytes. It grows to twice the congestion window,
    /// but at most four measured bandwidth-delay products (see `Conn`'s ACK processing).
    /// Default 64 KiB.
    pub tx_buffer: usize,
    /// Most the send buffer may grow to, bytes (bounds the bytes in flight). Default 4 MiB.
    pub tx_buffer_max: usize,
    /// Memory a drained buffer keeps (bytes); larger allocations are freed when a buffer empties,
    /// so idle connections cost little. Default 16 KiB.
    pub buffer_keep: usize,
    /// Initial congestion window in segments (RFC 6928). Default 10.
    pub initial_window: u32,
    /// Congestion controller. Default CUBIC.
    pub congestion: Algorithm,
    /// Floor of the retransmission timeout, applied to the variance term and to the RTO itself
    /// (`RTO = SRTT + max(4·RTTVAR, min_rto)`). Default 200 ms, as Linux.
    pub min_rto: Duration,
    /// RTO before any RTT sample (RFC 6298: 1 s). Also paces SYN retransmissions.
    pub initial_rto: Duration,
    /// Ceiling of the backed-off RTO. Default 60 s (RFC 6298's minimum allowed ceiling).
    pub max_rto: Duration,
    /// How long a pure ACK may wait for data to ride on. `None` ACKs at once. Every second
    /// full-sized segment, out-of-order data, a FIN and window updates are ACKed at once anyway.
    /// Default 5 ms (the broker's `tcp_ack_delay`).
    pub ack_delay: Option<Duration>,
    /// Nagle's algorithm: hold a partial segment while data is unacknowledged. Default off (a
    /// proxied response head must not wait a round trip).
    pub nagle: bool,
    /// Probe an idle connection after this long without receiving anything. Default `None`.
    pub keep_alive: Option<Duration>,
    /// Abort a connection that has received nothing for this long (dead peer). Default `None`.
    pub idle_timeout: Option<Duration>,
    /// How long `TIME-WAIT` lasts. Default 10 s (what the smoltcp-based stack holds today; RFC
    /// 9293's 2·MSL is minutes, but a new SYN on the tuple recycles the connection anyway).
    pub time_wait: Duration,
    /// Abort after this many consecutive retransmission timeouts. Default 15 (Linux
    /// `tcp_retries2`).
    pub max_retransmits: u32,
    /// SYN / SYN-ACK transmissions before giving up. Default 6 (Linux `tcp_syn_retries`).
    pub syn_retries: u32,
    /// Offer/accept selective acknowledgements (RFC 2018). Default on.
    pub sack: bool,
    /// Offer/accept timestamps (RFC 7323): RTT samples from every ACK, PAWS. Default on.
    pub timestamps: bool,
    /// Offer/accept window scaling (RFC 7323). Default on; without it windows stop at 64 KiB.
    pub window_scaling: bool,
    /// IP TTL / hop limit of our packets. Default 64.
    pub hop_limit: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mtu: 1320,
            rx_buffer: 64 << 10,
            rx_buffer_max: 4 << 20,
            tx_buffer: 64 << 10,
            tx_buffer_max: 4 << 20,
            buffer_keep: 16 << 10,
            initial_window: 10,
            congestion: Algorithm::Bbr,
            min_rto: Duration::from_millis(200),
            initial_rto: Duration::from_secs(1),
            max_rto: Duration::from_secs(60),
            ack_delay: Some(Duration::from_millis(5)),
            nagle: false,
            keep_alive: None,
            idle_timeout: None,
            time_wait: Duration::from_secs(10),
            max_retransmits: 15,
            syn_retries: 6,
            sack: true,
            timestamps: true,
            window_scaling: true,
            hop_limit: 64,
        }
    }
}

/// A [`Config`] value that cannot work; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tcp `{field}`: {reason}")]
pub struct ConfigError {
    /// Field name in [`Config`].
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Config {
    /// Checks every field; returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason| Err(ConfigError { field, reason });
        if !(576..=65535).contains(&self.mtu) {
            return err("mtu", "must be between 576 and 65535");
        }
        if self.rx_buffer < 2048 || self.rx_buffer > self.rx_buffer_max {
            return err(
                "rx_buffer",
                "must be at least 2 KiB and at most rx_buffer_max",
            );
        }
        if self.rx_buffer_max > 1 << 30 {
            return err("rx_buffer_max", "must be at most 1 GiB (window scale 14)");
        }
        if self.tx_buffer < 2048 || self.tx_buffer > self.tx_buffer_max {
            return err(
                "tx_buffer",
                "must be at least 2 KiB and at most tx_buffer_max",
            );
        }
        if self.tx_buffer_max > 1 << 30 {
            return err("tx_buffer_max", "must be at most 1 GiB");
        }
        if self.initial_window == 0 || self.initial_window > 100 {
            return err("initial_window", "must be between 1 and 100 segments");
        }
        if self.min_rto.is_zero() || self.min_rto > self.max_rto {
            return err("min_rto", "must be positive and at most max_rto");
        }
        if self.initial_rto < self.min_rto || self.initial_rto > self.max_rto {
            return err("initial_rto", "must be between min_rto and max_rto");
        }
        if self.keep_alive.is_some_and(|k| k.is_zero()) {
            return err("keep_alive", "must not be zero");
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return err("idle_timeout", "must not be zero");
        }
        if self.hop_limit == 0 {
            return err("hop_limit", "must not be zero");
        }
        // Timers are `now + duration`: keep every duration far from `Instant`'s range.
        let day = Duration::from_secs(86_400);
        let durations = [
            ("max_rto", Some(self.max_rto)),
            ("ack_delay", self.ack_delay),
            ("keep_alive", self.keep_alive),
            ("idle_timeout", self.idle_timeout),
            ("time_wait", Some(self.time_wait)),
        ];
        for (field, d) in durations {
            if d.is_some_and(|d| d > day) {
                return err(field, "must be at most one day");
            }
        }
        Ok(())
    }

    /// Our window-scale shift: the smallest that lets the largest receive buffer be advertised.
    pub fn window_shift(&self) -> u8 {
        let mut shift = 0u8;
        while (self.rx_buffer_max >> shift) > 65535 && shift < 14 {
            shift += 1;
        }
        shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        Config::default().validate().expect("defaults are valid");
        let bad = Config {
            rx_buffer: 8 << 20,
            ..Config::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("rx_buffer"));
        let bad = Config {
            initial_rto: Duration::from_millis(10),
            ..Config::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("initial_rto"));
    }

    #[test]
    fn durations_that_would_overflow_the_clock_are_refused() {
        // Timers are `now + duration`: an absurd duration must be a config error, not a
        // panic on the first timer.
        let cases = [
            Config {
                time_wait: Duration::MAX,
                ..Config::default()
            },
            Config {
                keep_alive: Some(Duration::MAX),
                ..Config::default()
            },
            Config {
                idle_timeout: Some(Duration::from_secs(u64::MAX / 2)),
                ..Config::default()
            },
            Config {
                ack_delay: Some(Duration::MAX),
                ..Config::default()
            },
            Config {
                max_rto: Duration::MAX,
                ..Config::default()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn window_shift_covers_the_largest_buffer() {
        assert_eq!(Config::default().window_shift(), 7, "4 MiB / 128 = 32 Ki");
        let small = Config {
            rx_buffer_max: 65535,
            rx_buffer: 4096,
            ..Config::default()
        };
        assert_eq!(small.window_shift(), 0);
    }
}
