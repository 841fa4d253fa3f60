//! The queue device between a smoltcp interface and the shard's packet queues.
//!
//! A [`Port`] is assembled for the duration of one stack poll from borrowed shard state: the one
//! ingress packet the stack decided to feed next, the *spent* list, the egress queue, the shard's
//! buffer pool and the counters. smoltcp reads an ingress packet in place through [`RxTok`] (no
//! copy) and the buffer then moves to the spent list; it writes an egress packet straight into a
//! pool buffer through [`TxTok`], which is queued for draining.
//!
//! Invariants: packet bytes are never copied by the port (egress buffers come from the pool,
//! which reuses them; only a pool misconfigured below the MTU makes it write into a throwaway
//! scratch buffer, and that is counted); every ingress buffer handed to smoltcp ends in the spent
//! list exactly once; `transmit` refuses once the egress queue holds `tx_limit` packets, which
//! makes smoltcp keep its data for a later poll instead of growing the queue.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::Counters;
use crate::packet::{BufPool, PacketBuf};

/// TCP flag bits in byte 13 of the TCP header.
const FLAG_SYN: u8 = 0x02;
const FLAG_RST: u8 = 0x04;
const FLAG_ACK: u8 = 0x10;

/// Whether an IP packet (already validated by [`crate::packet::Flow::parse`] as TCP without
/// IPv6 extension headers) is a connection-opening SYN: SYN set, ACK and RST clear.
pub(crate) fn is_opening_syn(packet: &[u8]) -> bool {
    let offset = match packet.first().map(|b| b >> 4) {
        Some(4) => usize::from(packet[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return false,
    };
    packet
        .get(offset + 13)
        .is_some_and(|f| f & (FLAG_SYN | FLAG_ACK | FLAG_RST) == FLAG_SYN)
}

/// Capabilities of every stack's device: raw IP, the tunnel MTU, software checksums both ways.
pub(crate) fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.max_burst_size = None;
    caps
}

/// One stack's view of the shard's packet queues during a poll.
#[derive(Debug)]
pub(crate) struct Port<'a> {
    /// The ingress packet smoltcp receives next, if any (the stack feeds one at a time).
    pub next: Option<PacketBuf>,
    pub spent: &'a mut Vec<PacketBuf>,
    pub tx: &'a mut VecDeque<PacketBuf>,
    pub pool: &'a mut BufPool,
    pub counters: &'a mut Counters,
    pub caps: &'a DeviceCapabilities,
    pub tx_limit: usize,
}

impl Port<'_> {
    /// Sends a buffer that will not reach smoltcp home through the spent list.
    pub fn spend(&mut self, buf: PacketBuf) {
        self.spent.push(buf);
    }
}

impl phy::Device for Port<'_> {
    type RxToken<'b>
        = RxTok<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        let buf = self.next.take()?;
        Some((
            RxTok {
                buf,
                spent: &mut *self.spent,
            },
            TxTok {
                tx: &mut *self.tx,
                pool: &mut *self.pool,
                counters: &mut *self.counters,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxTok<'_>> {
        if self.tx.len() >= self.tx_limit {
            self.counters.tx_queue_full += 1;
            return None;
        }
        Some(TxTok {
            tx: &mut *self.tx,
            pool: &mut *self.pool,
            counters: &mut *self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// Lends smoltcp the bytes of one ingress buffer, then parks the buffer in the spent list.
#[derive(Debug)]
pub(crate) struct RxTok<'a> {
    buf: PacketBuf,
    spent: &'a mut Vec<PacketBuf>,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.buf.as_slice());
        self.spent.push(self.buf);
        r
    }
}

/// Lets smoltcp write one egress packet into a pool buffer and queues it.
#[derive(Debug)]
pub(crate) struct TxTok<'a> {
    tx: &'a mut VecDeque<PacketBuf>,
    pool: &'a mut BufPool,
    counters: &'a mut Counters,
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.pool.take();
        if buf.capacity() < len {
            // The pool was built for a smaller MTU than the stack's. smoltcp must still be given
            // somewhere to write; the packet is lost (and counted), and TCP retransmits it, into
            // an equally small buffer: the misconfiguration shows as a climbing counter.
            self.pool.give(buf);
            self.counters.drop_tx_buffer_small += 1;
            let mut scratch = vec![0u8; len];
            return f(&mut scratch);
        }
        buf.set_len(len);
        let r = f(buf.as_mut_slice());
        self.tx.push_back(buf);
        self.counters.packets_out += 1;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, RxToken, TxToken};

    fn tcp_v4(flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[33] = flags;
        p
    }

    #[test]
    fn recognises_only_opening_syns() {
        assert!(is_opening_syn(&tcp_v4(FLAG_SYN)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_SYN | FLAG_ACK)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_SYN | FLAG_RST)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_ACK)));
        assert!(!is_opening_syn(&tcp_v4(FLAG_SYN)[..30]));
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[53] = FLAG_SYN;
        assert!(is_opening_syn(&v6));
        assert!(!is_opening_syn(&[]));
    }

    #[test]
    fn rx_is_lent_in_place_and_tx_lands_in_pool_buffers() {
        let mut spent = Vec::new();
        let mut tx = VecDeque::new();
        let mut pool = BufPool::new(64, 8);
        let mut counters = Counters::default();
        let caps = capabilities(64);
        let mut incoming = PacketBuf::with_capacity(64);
        incoming.space()[..3].copy_from_slice(b"abc");
        incoming.set_len(3);
        let mut port = Port {
            next: Some(incoming),
            spent: &mut spent,
            tx: &mut tx,
            pool: &mut pool,
            counters: &mut counters,
            caps: &caps,
            tx_limit: 2,
        };
        let (rx, _) = port.receive(Instant::ZERO).expect("a packet is queued");
        assert_eq!(rx.consume(|b| b.to_vec()), b"abc");
        assert!(port.receive(Instant::ZERO).is_none());
        for _ in 0..2 {
            let t = port.transmit(Instant::ZERO).expect("room");
            t.consume(10, |b| b.fill(7));
        }
        assert!(
            port.transmit(Instant::ZERO).is_none(),
            "queue limit reached"
        );
        let t = TxTok {
            tx: port.tx,
            pool: port.pool,
            counters: port.counters,
        };
        t.consume(100, |b| assert_eq!(b.len(), 100));
        assert_eq!(spent.len(), 1);
        assert_eq!(tx.len(), 2);
        assert_eq!(tx[0].as_slice(), &[7u8; 10]);
        assert_eq!(counters.packets_out, 2);
        assert_eq!(counters.tx_queue_full, 1);
        assert_eq!(counters.drop_tx_buffer_small, 1);
    }
}
