//! A vendor-side WireGuard gateway with its own TCP stack, over a plain UDP socket.
//!
//! It is the responder: the broker dials it. Everything runs on the caller's thread, driven by
//! [`Gateway::pump`]; no root, no TUN device.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::keys::{PrivateKey, PublicKey};
use crate::netstack::{StackConfig, StackSet};
use crate::packet::BufPool;
use crate::tunnel::{
    PeerId, PeerSpec, PeerTable, Received, Sent, TICK_INTERVAL, required_buffer_len,
};

/// How to build a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The gateway's private key.
    pub private_key: PrivateKey,
    /// The broker's public key (its only peer).
    pub broker_public_key: PublicKey,
    /// The gateway's own address inside the tunnel (source of its connections).
    pub vendor_address: IpAddr,
    /// The broker's tunnel address.
    pub broker_address: IpAddr,
    /// UDP address to listen on (loopback in tests).
    pub listen: SocketAddr,
    /// Tunnel MTU.
    pub mtu: usize,
    /// smoltcp stacks for the client connections (many connections → more stacks).
    pub stacks: usize,
    /// Most client sockets per stack.
    pub max_sockets_per_stack: usize,
    /// Per-connection TCP buffers.
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    /// TCP port on `vendor_address` where the gateway answers any HTTP request with
    /// `200 pong` (the broker's heartbeat target).
    pub serve_port: u16,
}

impl GatewayConfig {
    /// Defaults for a gateway at `vendor_address` talking to a broker at `broker_address`,
    /// listening on an ephemeral loopback port.
    pub fn new(
        private_key: PrivateKey,
        broker_public_key: PublicKey,
        vendor_address: IpAddr,
        broker_address: IpAddr,
    ) -> Self {
        Self {
            private_key,
            broker_public_key,
            vendor_address,
            broker_address,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mtu: 1420,
            stacks: 8,
            max_sockets_per_stack: 512,
            rx_buffer: 256 << 10,
            tx_buffer: 256 << 10,
            serve_port: 80,
        }
    }
}

/// Counters of the gateway's own datapath.
#[derive(Debug, Default, Clone)]
pub struct GatewayStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped: u64,
    /// HTTP requests the gateway answered on `serve_port` (heartbeats).
    pub served: u64,
}

/// The vendor side of the tunnel.
#[derive(Debug)]
pub struct Gateway {
    udp: UdpSocket,
    table: PeerTable,
    broker: PeerId,
    set: StackSet,
    pool: BufPool,
    datagram: Vec<u8>,
    out: Vec<u8>,
    next_tick: Instant,
    broker_address: IpAddr,
    /// Connections accepted on `serve_port`, with the request bytes read so far.
    serving: Vec<(crate::netstack::ConnId, Vec<u8>)>,
    pub stats: GatewayStats,
}

/// A UDP receive that found nothing before its deadline.
fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Gateway {
    /// Binds the UDP socket and builds the tunnel and TCP state.
    pub fn bind(cfg: &GatewayConfig) -> io::Result<Self> {
        let udp = UdpSocket::bind(cfg.listen)?;
        let now = Instant::now();
        let spec = PeerSpec {
            public_key: cfg.broker_public_key,
            preshared_key: None,
            endpoint: None,
            endpoint_name: None,
            allowed_ips: vec![IpNet::from(cfg.broker_address)],
            persistent_keepalive: 0,
        };
        let table = PeerTable::new(&cfg.private_key, vec![spec], now)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let broker = table
            .peer_id(&cfg.broker_public_key)
            .ok_or_else(|| io::Error::other("broker peer missing"))?;
        let stack = StackConfig {
            address: cfg.vendor_address,
            mtu: cfg.mtu,
            listen_port: cfg.serve_port,
            backlog: 4,
            rx_buffer: cfg.rx_buffer,
            tx_buffer: cfg.tx_buffer,
            max_sockets_per_stack: cfg.max_sockets_per_stack,
            stacks: cfg.stacks,
            shard_index: 0,
            shards: 1,
            ..StackConfig::default()
        };
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let set = StackSet::new(&stack, now, u64::from_le_bytes(seed))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let cap = (cfg.mtu + crate::tunnel::DATA_OVERHEAD + 63) & !63;
        Ok(Self {
            udp,
            table,
            broker,
            set,
            pool: BufPool::new(cap, 8192),
            datagram: vec![0u8; 65536],
            out: vec![0u8; required_buffer_len(cap)],
            next_tick: now,
            broker_address: cfg.broker_address,
            serving: Vec::new(),
            stats: GatewayStats::default(),
        })
    }

    /// The UDP address the broker must dial (its peer `endpoint`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The broker's tunnel address.
    pub fn broker_address(&self) -> IpAddr {
        self.broker_address
    }

    /// The TCP stack, for opening and using connections.
    pub fn stack(&mut self) -> &mut StackSet {
        &mut self.set
    }

    /// Whether a session with the broker is up.
    pub fn handshaken(&self) -> bool {
        self.table
            .peer_status(self.broker)
            .is_some_and(|s| s.last_handshake.is_some())
    }

    /// Pumps until the broker's handshake completes or `timeout` passes.
    pub fn wait_handshake(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.handshaken() {
            if Instant::now() >= deadline {
                return false;
            }
            if self.pump(Duration::from_millis(20)).is_err() {
                return false;
            }
        }
        true
    }

    /// One round: wait up to `max_wait` for datagrams, process all that arrived, poll the TCP
    /// stack, send what it produced, run WireGuard timers when due.
    pub fn pump(&mut self, max_wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        let wait = if self.set.poll_delay(now) == Some(Duration::ZERO) {
            Duration::ZERO
        } else {
            max_wait
                .min(self.next_tick.saturating_duration_since(now))
                .min(self.set.poll_delay(now).unwrap_or(max_wait))
        };
        self.receive(wait)?;
        self.poll_stack()?;
        if self.serve() {
            self.poll_stack()?;
        }
        let now = Instant::now();
        if now >= self.next_tick {
            let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            self.next_tick = self
                .table
                .tick(now, &mut self.out, &mut |_, to, d| {
                    sends.push((to, d.to_vec()))
                })
                .min(now + TICK_INTERVAL);
            for (to, d) in sends {
                self.udp.send_to(&d, to)?;
                self.stats.datagrams_out += 1;
            }
        }
        Ok(())
    }

    fn receive(&mut self, wait: Duration) -> io::Result<()> {
        // First datagram: wait up to `wait`; then drain without blocking.
        if wait.is_zero() {
            self.udp.set_nonblocking(true)?;
        } else {
            self.udp.set_nonblocking(false)?;
            self.udp.set_read_timeout(Some(wait))?;
        }
        let mut first = true;
        for _ in 0..4096 {
            let r = self.udp.recv_from(&mut self.datagram);
            if first && !wait.is_zero() {
                self.udp.set_nonblocking(true)?;
            }
            first = false;
            let (n, from) = match r {
                Ok(x) => x,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            };
            self.stats.datagrams_in += 1;
            self.handle_datagram(n, from)?;
        }
        Ok(())
    }

    fn handle_datagram(&mut self, n: usize, from: SocketAddr) -> io::Result<()> {
        let mut buf = self.pool.take();
        if n > buf.capacity() {
            self.stats.dropped += 1;
            self.pool.give(buf);
            return Ok(());
        }
        let r = self
            .table
            .receive(Instant::now(), from, &self.datagram[..n], buf.space());
        match r {
            Received::Packet { packet, .. } => {
                let len = packet.len();
                buf.set_len(len);
                self.stats.packets_in += 1;
                if self.set.ingest(buf).is_err() {
                    self.stats.dropped += 1;
                }
            }
            Received::Transmit { peer, to, datagram } => {
                let len = datagram.len();
                buf.set_len(len);
                self.udp.send_to(buf.as_slice(), to)?;
                self.stats.datagrams_out += 1;
                self.pool.give(buf);
                if let Some(peer) = peer {
                    while let Some(t) = self.table.flush(peer, &mut self.out) {
                        let len = t.datagram.len();
                        let to = t.to;
                        self.udp.send_to(&self.out[..len], to)?;
                        self.stats.datagrams_out += 1;
                    }
                }
            }
            Received::Done => self.pool.give(buf),
            Received::Dropped(_) => {
                self.stats.dropped += 1;
                self.pool.give(buf);
            }
        }
        Ok(())
    }

    /// Answers HTTP requests on `serve_port`; returns whether it wrote anything.
    fn serve(&mut self) -> bool {
        while let Some(id) = self.set.accept() {
            self.serving.push((id, Vec::new()));
        }
        let mut wrote = false;
        let mut buf = [0u8; 2048];
        let set = &mut self.set;
        let served = &mut self.stats.served;
        self.serving.retain_mut(|(id, req)| {
            match set.recv_slice(*id, &mut buf) {
                Ok(n) => req.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
            if req.len() > 16 * 1024 {
                let _ = set.abort(*id);
                return false;
            }
            if req.windows(4).any(|w| w == b"\r\n\r\n") {
                let _ = set.send_slice(
                    *id,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong",
                );
                let _ = set.close(*id);
                *served += 1;
                wrote = true;
                return false;
            }
            true
        });
        wrote
    }

    fn poll_stack(&mut self) -> io::Result<()> {
        for _ in 0..64 {
            self.set.poll(Instant::now(), &mut self.pool);
            let mut sent = false;
            while let Some(p) = self.set.pop_tx() {
                sent = true;
                self.stats.packets_out += 1;
                let r = self.table.send(Instant::now(), p.as_slice(), &mut self.out);
                let t = match r {
                    Sent::Transmit(t) => Some((t.to, t.datagram.len())),
                    Sent::Queued { .. } => None,
                    Sent::Dropped(_) => {
                        self.stats.dropped += 1;
                        None
                    }
                };
                self.pool.give(p);
                if let Some((to, len)) = t {
                    self.udp.send_to(&self.out[..len], to)?;
                    self.stats.datagrams_out += 1;
                }
            }
            for b in self.set.drain_spent() {
                self.pool.give(b);
            }
            if !sent {
                break;
            }
        }
        Ok(())
    }
}
