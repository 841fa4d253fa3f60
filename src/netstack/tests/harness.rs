//! A deterministic two-endpoint network for the stack set: the vendor side is a plain smoltcp
//! interface with its own queue device, the broker side a [`StackSet`]; packets move between
//! them under a fake clock. No I/O, no real time (one `Instant::now()` anchors the epoch).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, Ipv4Packet, Ipv6Packet, TcpPacket,
    TcpRepr,
};

use super::super::{StackConfig, StackSet};
use crate::packet::{BufPool, PacketBuf};

pub const PEER_V4: [u8; 4] = [10, 77, 0, 1];
pub const BROKER_V4: [u8; 4] = [10, 77, 0, 2];

/// The broker configuration the tests start from: 10.77.0.2:80, the default MTU (1320).
pub fn broker_config() -> StackConfig {
    StackConfig {
        address: IpAddr::from(BROKER_V4),
        backlog: 4,
        max_sockets_per_stack: 64,
        stacks: 1,
        ..StackConfig::default()
    }
}

/// The vendor side's device: owned byte vectors (test code may allocate).
#[derive(Debug, Default)]
pub struct Wire {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct WireRx(Vec<u8>);
pub struct WireTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = WireRx;
    type TxToken<'a> = WireTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(WireRx, WireTx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((WireRx(p), WireTx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<WireTx<'_>> {
        Some(WireTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1420;
        caps
    }
}

/// The vendor side: one interface, its sockets.
pub struct Peer {
    pub iface: Interface,
    pub wire: Wire,
    pub sockets: SocketSet<'static>,
    pub addr: IpAddr,
}

impl Peer {
    pub fn new(addr: IpAddr) -> Self {
        let mut wire = Wire::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = 0x5eed;
        let mut iface = Interface::new(config, &mut wire, SmolInstant::ZERO);
        let prefix = if addr.is_ipv4() { 24 } else { 64 };
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::from(addr), prefix))
                .expect("room for one address");
        });
        Self {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            addr,
        }
    }

    fn new_socket(buffer: usize) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; buffer]),
            tcp::SocketBuffer::new(vec![0u8; buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s
    }

    /// Opens a connection from `local_port` to `remote` with `buffer`-byte socket buffers.
    pub fn connect(&mut self, remote: SocketAddr, local_port: u16, buffer: usize) -> SocketHandle {
        let mut s = Self::new_socket(buffer);
        s.connect(self.iface.context(), remote, local_port)
            .expect("valid endpoints");
        self.sockets.add(s)
    }

    /// Listens on `port` (for the broker's client connections).
    pub fn listen(&mut self, port: u16) -> SocketHandle {
        let mut s = Self::new_socket(64 << 10);
        s.listen(IpListenEndpoint { addr: None, port })
            .expect("valid port");
        self.sockets.add(s)
    }

    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(h)
    }
}

/// Both ends, the fake clock, and the two packet pools (the tunnel core's and the shard's).
pub struct Net {
    pub epoch: Instant,
    pub elapsed: Duration,
    pub peer: Peer,
    pub broker: StackSet,
    /// The shard's pool: smoltcp writes egress packets into these.
    pub shard_pool: BufPool,
    /// The tunnel core's pool: ingress packets come from here and return via `drain_spent`.
    pub core_pool: BufPool,
    /// Every packet the broker sent, when `capture` is on.
    pub broker_sent: Vec<Vec<u8>>,
    /// Every packet the peer sent, when `capture` is on.
    pub peer_sent: Vec<Vec<u8>>,
    pub capture: bool,
    /// Drop everything the broker sends (to hold back ACKs and data).
    pub black_hole_broker: bool,
    /// Ingress buffers handed to the broker and not yet returned through `drain_spent`.
    pub outstanding: i64,
}

impl Net {
    pub fn new(config: StackConfig) -> Self {
        let peer_addr = match config.address {
            IpAddr::V4(_) => IpAddr::from(PEER_V4),
            IpAddr::V6(_) => "fd00:77::1".parse().expect("v6"),
        };
        let epoch = Instant::now();
        let broker = StackSet::new(&config, epoch, 0x0123_4567_89ab_cdef).expect("valid config");
        Self {
            epoch,
            elapsed: Duration::ZERO,
            peer: Peer::new(peer_addr),
            broker,
            shard_pool: BufPool::new(config.mtu, 4096),
            core_pool: BufPool::new(config.mtu, 4096),
            broker_sent: Vec::new(),
            peer_sent: Vec::new(),
            capture: false,
            black_hole_broker: false,
            outstanding: 0,
        }
    }

    pub fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    fn smol_now(&self) -> SmolInstant {
        SmolInstant::from_micros(i64::try_from(self.elapsed.as_micros()).expect("small"))
    }

    /// The broker's listen address.
    pub fn broker_addr(&self, port: u16) -> SocketAddr {
        match self.peer.addr {
            IpAddr::V4(_) => SocketAddr::new(IpAddr::from(BROKER_V4), port),
            IpAddr::V6(_) => SocketAddr::new("fd00:77::2".parse().expect("v6"), port),
        }
    }

    /// Hands one raw packet to the broker as the tunnel core would: in a core-pool buffer.
    pub fn inject(&mut self, bytes: &[u8]) -> Result<(), super::super::DropReason> {
        let mut b = self.core_pool.take();
        b.space()[..bytes.len()].copy_from_slice(bytes);
        b.set_len(bytes.len());
        self.outstanding += 1;
        self.broker.ingest(b)
    }

    /// Returns spent buffers to the core pool and egress buffers to the shard pool.
    pub fn collect_broker_output(&mut self) -> Vec<Vec<u8>> {
        let spent: Vec<PacketBuf> = self.broker.drain_spent().collect();
        self.outstanding -= spent.len() as i64;
        for b in spent {
            self.core_pool.give(b);
        }
        let sent: Vec<PacketBuf> = self.broker.drain_tx().collect();
        let mut out = Vec::with_capacity(sent.len());
        for b in sent {
            out.push(b.as_slice().to_vec());
            self.shard_pool.give(b);
        }
        out
    }

    /// One round: the peer polls and sends, the broker ingests and polls, its output reaches
    /// the peer. The clock does not move.
    pub fn exchange(&mut self) {
        let now = self.smol_now();
        self.peer
            .iface
            .poll(now, &mut self.peer.wire, &mut self.peer.sockets);
        while let Some(p) = self.peer.wire.tx.pop_front() {
            if self.capture {
                self.peer_sent.push(p.clone());
            }
            // A drop is counted by the broker; the tests assert on the counters.
            let _ = self.inject(&p);
        }
        let t = self.now();
        self.broker.poll(t, &mut self.shard_pool);
        for p in self.collect_broker_output() {
            if self.capture {
                self.broker_sent.push(p.clone());
            }
            if !self.black_hole_broker {
                self.peer.wire.rx.push_back(p);
            }
        }
        self.peer
            .iface
            .poll(now, &mut self.peer.wire, &mut self.peer.sockets);
    }

    /// One round, then the clock moves by `dt`.
    pub fn step(&mut self, dt: Duration) {
        self.exchange();
        self.elapsed += dt;
    }

    /// Steps in 1 ms rounds until `done` holds; returns the rounds taken, or panics after `max`.
    pub fn run_until(&mut self, max: usize, mut done: impl FnMut(&mut Net) -> bool) -> usize {
        for round in 0..max {
            if done(self) {
                return round;
            }
            self.step(Duration::from_millis(1));
        }
        assert!(done(self), "condition not reached within {max} rounds");
        max
    }
}

/// The TCP header of an IP packet sent between the two test addresses.
pub fn tcp_repr(packet: &[u8]) -> Option<TcpRepr<'_>> {
    let caps = ChecksumCapabilities::default();
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let payload = &packet[usize::from(ip.header_len())..usize::from(ip.total_len())];
            let tcp = TcpPacket::new_checked(payload).ok()?;
            TcpRepr::parse(&tcp, &src.into(), &dst.into(), &caps).ok()
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let tcp = TcpPacket::new_checked(&packet[40..]).ok()?;
            TcpRepr::parse(&tcp, &src.into(), &dst.into(), &caps).ok()
        }
        _ => None,
    }
}
