//! A vendor-side WireGuard gateway with its own TCP stack, over a plain UDP socket.
//!
//! It is the responder: the broker dials it (or, with [`GatewayConfig::dial`], it dials a peer
//! itself — the load tester's calibration responder plays the broker that way). Everything runs
//! on the caller's thread, driven by [`Gateway::pump`]; no root, no TUN device.
//!
//! The datagram path is batched with the broker's own batches (`runtime::udp`, the crate's only
//! `unsafe`): one `recvmmsg` takes up to [`BATCH`] datagrams, encrypted packets are written
//! straight into the slots of a send batch that one `sendmmsg` flushes (same-size runs as one
//! UDP GSO send where the kernel has it), and the socket stays non-blocking (waiting is one
//! `ppoll`). Decrypted packets live in a [`BufPool`]; nothing is allocated per packet once the
//! pool is warm.
//!
//! With [`GatewayConfig::impair`] (the load tester's `--delay`, `--loss`, ...) every datagram in
//! each direction passes an [`Impair`] queue between the socket and the tunnel: received ones
//! wait before they are decrypted, sent ones after they are encrypted — a WAN between this
//! gateway and the broker, on the gateway's own thread. Those datagrams are copied into owned
//! buffers (recycled), and [`Gateway::pump`] wakes up when the next one is due.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::keys::{PrivateKey, PublicKey};
use crate::netstack::{StackConfig, StackSet};
use crate::packet::BufPool;
use crate::runtime::udp::{self, Ready, RecvBatch};
use crate::testkit::impair::{Impair, ImpairSpec, ImpairStats};
use crate::testkit::serve_port::{Served, serve_one};
use crate::testkit::streams::{StreamStats, Streams};
use crate::tunnel::{
    PeerId, PeerSpec, PeerTable, Received, Sent, TICK_INTERVAL, required_buffer_len,
};

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = udp::BATCH;

/// Receive rounds (of up to [`BATCH`] datagrams) per [`Gateway::pump`] before the TCP stack runs.
const RECV_ROUNDS: usize = 16;

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
    /// TCP port on `vendor_address` where the gateway answers HTTP requests (the broker's
    /// heartbeat target): `200 pong`, or `N` bytes for a target ending in `/download/N`.
    /// Keep-alive unless the request says `Connection: close`.
    pub serve_port: u16,
    /// Serve `serve_port` over TLS with this configuration (an `https://` heartbeat target)
    /// instead of plain HTTP.
    pub serve_tls: Option<Arc<rustls::ServerConfig>>,
    /// Listeners kept armed on `serve_port` per stack.
    pub serve_backlog: usize,
    /// Dial the peer at this UDP address (be the WireGuard initiator) instead of waiting for it.
    pub dial: Option<SocketAddr>,
    /// Requested UDP socket buffer sizes (the kernel caps them at `net.core.{r,w}mem_max`).
    pub udp_buffer: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg` (1..=[`BATCH`]; 1 = one syscall per datagram).
    pub batch: usize,
    /// Before sleeping for a datagram, poll the socket this long (busy-wait). Trades a core
    /// for wake-up latency; zero (the default) sleeps at once.
    pub spin: Duration,
    /// Impair the path to the broker: delay, jitter, loss, duplication, reordering per datagram,
    /// in each direction ([`ImpairSpec`]). `None` (the default): datagrams go straight through.
    pub impair: Option<ImpairSpec>,
    /// Also accept the stream transport ([`crate::transport`]): a TCP listener on the UDP port,
    /// feeding the same peer table (default: on). With an ephemeral `listen` port, a port free
    /// for both is found.
    pub tcp: bool,
    /// Also accept the `tls` transport on this address with this certificate (with `tcp` on;
    /// [`crate::testkit::tls::self_signed`] makes one). Default: none.
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
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
            serve_tls: None,
            serve_backlog: 4,
            dial: None,
            udp_buffer: 4 << 20,
            batch: BATCH,
            spin: Duration::ZERO,
            impair: None,
            tcp: true,
            tls: None,
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
    /// `recvmmsg` calls that returned at least one datagram.
    pub recv_calls: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Times the gateway slept in `ppoll` waiting for a datagram.
    pub waits: u64,
}

/// Outgoing datagrams waiting for one `sendmmsg`: the runtime's batch, flushed at `limit`.
#[derive(Debug)]
struct Outbox {
    batch: udp::SendBatch,
    /// Datagrams per flush.
    limit: usize,
}

impl Outbox {
    fn new(slot: usize, limit: usize, gso: bool) -> Self {
        Self {
            batch: udp::SendBatch::new(slot, gso),
            limit: limit.clamp(1, BATCH),
        }
    }

    fn is_full(&self) -> bool {
        self.batch.len() >= self.limit
    }

    /// The next free slot, to write a datagram into.
    fn space(&mut self) -> &mut [u8] {
        self.batch.next_slot()
    }

    /// Records the datagram written into [`Outbox::space`] at `start..start + len`.
    fn commit(&mut self, to: SocketAddr, start: usize, len: usize) {
        self.batch.commit_at(start, len, to);
    }

    /// Copies `d` into the next slot (handshakes and timer output; the data path encrypts in
    /// place instead).
    fn push_copy(&mut self, to: SocketAddr, d: &[u8]) -> bool {
        !self.is_full() && self.batch.push_copy(to, d)
    }
}

/// Most idle buffers an impaired path keeps for reuse.
const WAN_SPARE: usize = 4096;

/// A datagram on the impaired path: where it came from or goes, and its bytes.
type WanDatagram = (SocketAddr, Vec<u8>);

/// The impaired path between the socket and the tunnel (see the module docs).
#[derive(Debug)]
struct Wan {
    /// Broker → gateway: received, waiting to be decrypted.
    inbound: Impair<WanDatagram>,
    /// Gateway → broker: encrypted, waiting to be sent.
    outbound: Impair<WanDatagram>,
    spare: Vec<Vec<u8>>,
}

impl Wan {
    fn new(spec: ImpairSpec) -> Self {
        Self {
            inbound: Impair::new(spec, spec.stream_seed(1)),
            outbound: Impair::new(spec, spec.stream_seed(2)),
            spare: Vec::new(),
        }
    }

    fn copy(&mut self, d: &[u8]) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(d);
        b
    }

    fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < WAN_SPARE {
            self.spare.push(b);
        }
    }

    /// Queues a datagram received at `now` from `from`.
    fn receive(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        let b = self.copy(d);
        if let Some((_, b)) = self.inbound.offer(now, d.len(), (from, b)) {
            self.recycle(b);
        }
    }

    /// Queues a datagram to send at `now` to `to`.
    fn send(&mut self, now: Instant, to: SocketAddr, d: &[u8]) {
        let b = self.copy(d);
        if let Some((_, b)) = self.outbound.offer(now, d.len(), (to, b)) {
            self.recycle(b);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        match (self.inbound.next_due(), self.outbound.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The vendor side of the tunnel.
#[derive(Debug)]
pub struct Gateway {
    udp: UdpSocket,
    table: PeerTable,
    broker: PeerId,
    set: StackSet,
    pool: BufPool,
    /// Receive slots for `recvmmsg`; `None` only while [`Gateway::receive`] handles a batch.
    rx: Option<RecvBatch>,
    rx_batch: usize,
    spin: Duration,
    tx: Outbox,
    /// Scratch output for table calls whose result is not sent at once (timers).
    out: Vec<u8>,
    next_tick: Instant,
    broker_address: IpAddr,
    serving: Vec<Served>,
    serve_tls: Option<Arc<rustls::ServerConfig>>,
    /// The impaired path, when [`GatewayConfig::impair`] asks for one.
    wan: Option<Box<Wan>>,
    /// The stream transport's listener and connections (`GatewayConfig::tcp`).
    streams: Option<Streams>,
    pub stats: GatewayStats,
}

impl Gateway {
    /// Binds the UDP socket and builds the tunnel and TCP state.
    pub fn bind(cfg: &GatewayConfig) -> io::Result<Self> {
        let (udp, streams) = Self::bind_sockets(cfg)?;
        udp.set_nonblocking(true)?;
        {
            let s = socket2::SockRef::from(&udp);
            let _ = s.set_recv_buffer_size(cfg.udp_buffer);
            let _ = s.set_send_buffer_size(cfg.udp_buffer);
        }
        let now = Instant::now();
        let spec = PeerSpec {
            public_key: cfg.broker_public_key,
            preshared_key: None,
            endpoint: cfg.dial,
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
            backlog: cfg.serve_backlog.max(1),
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
        // A slot holds the largest datagram either side sends (MTU + overhead, or a handshake).
        let slot = required_buffer_len(cap).max(2048);
        let gso = udp::gso_supported(udp.as_raw_fd());
        let mut gw = Self {
            udp,
            table,
            broker,
            set,
            pool: BufPool::new(cap, 8192),
            rx: Some(RecvBatch::new(slot)),
            rx_batch: cfg.batch.clamp(1, BATCH),
            spin: cfg.spin,
            tx: Outbox::new(slot, cfg.batch, gso),
            out: vec![0u8; slot],
            next_tick: now,
            broker_address: cfg.broker_address,
            serving: Vec::new(),
            serve_tls: cfg.serve_tls.clone(),
            wan: cfg.impair.map(|s| Box::new(Wan::new(s))),
            streams,
            stats: GatewayStats::default(),
        };
        if cfg.dial.is_some() {
            let tx = &mut gw.tx;
            gw.table.initiate_all(now, &mut gw.out, &mut |_, to, d| {
                tx.push_copy(to, d);
            });
            gw.flush_tx()?;
        }
        Ok(gw)
    }

    /// The UDP address the broker must dial (its peer `endpoint`).
    /// The UDP socket and, with [`GatewayConfig::tcp`], the TCP listener on the same port.
    fn bind_sockets(cfg: &GatewayConfig) -> io::Result<(UdpSocket, Option<Streams>)> {
        let max_frame = required_buffer_len(cfg.mtu + crate::tunnel::DATA_OVERHEAD);
        let mut tries = 0;
        loop {
            let udp = UdpSocket::bind(cfg.listen)?;
            if !cfg.tcp {
                return Ok((udp, None));
            }
            match Streams::bind(udp.local_addr()?, max_frame) {
                Ok(mut s) => {
                    if let Some((addr, config)) = &cfg.tls {
                        s.listen_tls(*addr, config.clone())?;
                    }
                    return Ok((udp, Some(s)));
                }
                // An ephemeral UDP port whose TCP twin is taken: try another.
                Err(_) if cfg.listen.port() == 0 && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The stream transport's listening address (the UDP port), if it accepts streams.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.streams.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The `tls` transport's listening address, if it accepts TLS ([`GatewayConfig::tls`]).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.streams.as_ref().and_then(Streams::tls_addr)
    }

    /// The stream side's counters, if it accepts streams.
    pub fn stream_stats(&self) -> Option<&StreamStats> {
        self.streams.as_ref().map(|s| &s.stats)
    }

    /// Stream connections open now.
    pub fn open_streams(&self) -> usize {
        self.streams.as_ref().map_or(0, Streams::open)
    }

    /// Closes every stream connection (as a gateway restart or a middlebox would).
    pub fn close_streams(&mut self) {
        if let Some(s) = self.streams.as_mut() {
            s.close_all();
        }
    }

    /// Stops accepting streams and closes the open ones (a network that drops TCP).
    pub fn stop_streams(&mut self) {
        self.streams = None;
    }

    /// The broker's tunnel address.
    pub fn broker_address(&self) -> IpAddr {
        self.broker_address
    }

    /// The TCP stack, for opening and using connections.
    pub fn stack(&mut self) -> &mut StackSet {
        &mut self.set
    }

    /// The WireGuard peer table (counters, peer status).
    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// What the impaired path did, `(to the broker, from the broker)`; `None` without one.
    pub fn wan_stats(&self) -> Option<(ImpairStats, ImpairStats)> {
        self.wan
            .as_ref()
            .map(|w| (w.outbound.stats(), w.inbound.stats()))
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
        let delay = self.set.poll_delay(now);
        let wan_due = self
            .wan
            .as_ref()
            .and_then(|w| w.next_due())
            .map(|d| d.saturating_duration_since(now));
        let wait = if delay == Some(Duration::ZERO) {
            Duration::ZERO
        } else {
            max_wait
                .min(self.next_tick.saturating_duration_since(now))
                .min(delay.unwrap_or(max_wait))
                .min(wan_due.unwrap_or(max_wait))
        };
        self.receive(wait)?;
        self.receive_streams()?;
        self.deliver_due()?;
        self.poll_stack()?;
        if self.serve() {
            self.poll_stack()?;
        }
        let now = Instant::now();
        if now >= self.next_tick {
            let tx = &mut self.tx;
            let mut overflow: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            self.next_tick = self
                .table
                .tick(now, &mut self.out, &mut |_, to, d| {
                    if !tx.push_copy(to, d) {
                        overflow.push((to, d.to_vec()));
                    }
                })
                .min(now + TICK_INTERVAL);
            self.flush_tx()?;
            for (to, d) in overflow {
                self.tx.push_copy(to, &d);
                self.flush_tx()?;
            }
        }
        self.flush_tx()
    }

    fn receive(&mut self, wait: Duration) -> io::Result<()> {
        let Some(mut rx) = self.rx.take() else {
            return Err(io::Error::other("gateway receive re-entered"));
        };
        let r = self.receive_into(&mut rx, wait);
        self.rx = Some(rx);
        r
    }

    fn receive_into(&mut self, rx: &mut RecvBatch, wait: Duration) -> io::Result<()> {
        let fd = self.udp.as_raw_fd();
        let mut waited = wait.is_zero();
        let mut round = 0;
        let rounds = RECV_ROUNDS * BATCH / self.rx_batch;
        while round < rounds {
            let n = match rx.recv_up_to(fd, self.rx_batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                if waited {
                    break;
                }
                // Nothing yet: flush what is queued, then sleep until a datagram or `wait`.
                waited = true;
                self.flush_tx()?;
                if !self.spin.is_zero() {
                    let until = Instant::now() + self.spin.min(wait);
                    let mut got = false;
                    while Instant::now() < until {
                        if self.wait_io(Duration::ZERO)? {
                            got = true;
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    if got {
                        continue;
                    }
                }
                self.stats.waits += 1;
                if !self.wait_io(wait.saturating_sub(self.spin))? {
                    break;
                }
                continue;
            }
            waited = true;
            round += 1;
            self.stats.recv_calls += 1;
            let now = Instant::now();
            for i in 0..n {
                self.stats.datagrams_in += 1;
                match rx.get(i) {
                    Some((datagram, Some(from), false)) => match self.wan.as_deref_mut() {
                        Some(w) => w.receive(now, from, datagram),
                        None => self.handle_datagram(datagram, from)?,
                    },
                    _ => self.stats.dropped += 1,
                }
            }
            if n < self.rx_batch {
                break;
            }
        }
        Ok(())
    }

    /// Decrypts the impaired path's received datagrams whose time has come.
    /// Waits until the UDP socket, or any stream socket, is ready.
    fn wait_io(&self, timeout: Duration) -> io::Result<bool> {
        let fd = self.udp.as_raw_fd();
        let Some(st) = &self.streams else {
            return udp::wait(fd, Ready::Readable, timeout);
        };
        let mut fds = vec![(fd, Ready::Readable)];
        st.poll_fds(&mut fds);
        udp::wait_any(&fds, timeout)
    }

    /// Accepts stream connections and feeds what they carry to the table, as datagrams from
    /// the connection's address.
    fn receive_streams(&mut self) -> io::Result<()> {
        let Some(st) = self.streams.as_mut() else {
            return Ok(());
        };
        let mut frames = Vec::new();
        st.read(&mut frames);
        for (from, d) in frames {
            self.stats.datagrams_in += 1;
            self.handle_datagram(&d, from)?;
        }
        Ok(())
    }

    fn deliver_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Some((_, (from, b))) = self.wan.as_mut().and_then(|w| w.inbound.pop_due(now)) {
            let r = self.handle_datagram(&b, from);
            if let Some(w) = self.wan.as_mut() {
                w.recycle(b);
            }
            r?;
        }
        Ok(())
    }

    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) -> io::Result<()> {
        let mut buf = self.pool.take();
        if datagram.len() > buf.capacity() {
            self.stats.dropped += 1;
            self.pool.give(buf);
            return Ok(());
        }
        let r = self
            .table
            .receive(Instant::now(), from, datagram, buf.space());
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
                if self.tx.is_full() {
                    self.flush_tx()?;
                }
                self.tx.push_copy(to, datagram);
                self.pool.give(buf);
                if let Some(peer) = peer {
                    loop {
                        if self.tx.is_full() {
                            self.flush_tx()?;
                        }
                        let space = self.tx.space();
                        let base = space.as_ptr().addr();
                        let Some(t) = self.table.flush(peer, space) else {
                            break;
                        };
                        let (to, start, len) =
                            (t.to, t.datagram.as_ptr().addr() - base, t.datagram.len());
                        self.tx.commit(to, start, len);
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

    /// Sends every queued datagram. A socket whose send buffer stays full for 10 ms loses the
    /// rest (counted): UDP may drop, TCP inside retransmits. On an impaired path the queued
    /// datagrams join its outbound queue instead, and those whose time has come are sent.
    fn flush_tx(&mut self) -> io::Result<()> {
        let Some(w) = self.wan.as_deref_mut() else {
            return Self::send_batch(
                &self.udp,
                &mut self.tx,
                &mut self.stats,
                self.streams.as_mut(),
            );
        };
        let now = Instant::now();
        for i in 0..self.tx.batch.len() {
            if let Some((d, to)) = self.tx.batch.datagram(i) {
                w.send(now, to, d);
            }
        }
        self.tx.batch.clear();
        while let Some((_, (to, b))) = w.outbound.pop_due(now) {
            if self.tx.is_full() {
                Self::send_batch(
                    &self.udp,
                    &mut self.tx,
                    &mut self.stats,
                    self.streams.as_mut(),
                )?;
            }
            self.tx.push_copy(to, &b);
            w.recycle(b);
        }
        Self::send_batch(
            &self.udp,
            &mut self.tx,
            &mut self.stats,
            self.streams.as_mut(),
        )
    }

    /// The socket half of [`Gateway::flush_tx`]: one `sendmmsg` (or a few) for the batch.
    /// Sends the batch: datagrams for a stream connection's address down that connection, the
    /// rest on the UDP socket.
    fn send_batch(
        udp: &UdpSocket,
        tx: &mut Outbox,
        stats: &mut GatewayStats,
        streams: Option<&mut Streams>,
    ) -> io::Result<()> {
        if let Some(st) = streams.filter(|s| s.open() > 0) {
            for i in 0..tx.batch.len() {
                let Some((d, to)) = tx.batch.datagram(i) else {
                    continue;
                };
                stats.datagrams_out += 1;
                if !st.queue(to, d) && udp.send_to(d, to).is_err() {
                    stats.dropped += 1;
                }
            }
            tx.batch.clear();
            st.write();
            return Ok(());
        }
        if tx.batch.is_empty() {
            return Ok(());
        }
        let calls = tx.batch.calls();
        let sent = super::relay::send_all(&mut tx.batch, udp.as_raw_fd())?;
        stats.dropped += sent.lost;
        stats.datagrams_out += sent.sent;
        stats.send_calls += tx.batch.calls() - calls;
        tx.batch.clear();
        Ok(())
    }

    /// Answers HTTP requests on `serve_port`; returns whether it wrote anything.
    fn serve(&mut self) -> bool {
        while let Some(id) = self.set.accept() {
            let tls = match &self.serve_tls {
                Some(c) => match rustls::ServerConnection::new(c.clone()) {
                    Ok(t) => Some(Box::new(t)),
                    Err(_) => {
                        let _ = self.set.abort(id);
                        continue;
                    }
                },
                None => None,
            };
            self.serving.push(Served::new(id, tls));
        }
        if self.serving.is_empty() {
            return false;
        }
        let mut wrote = false;
        let set = &mut self.set;
        let served = &mut self.stats.served;
        self.serving
            .retain_mut(|s| serve_one(set, s, served, &mut wrote));
        wrote
    }

    fn poll_stack(&mut self) -> io::Result<()> {
        for _ in 0..64 {
            self.set.poll(Instant::now(), &mut self.pool);
            let mut sent = false;
            while let Some(p) = self.set.pop_tx() {
                sent = true;
                self.stats.packets_out += 1;
                if self.tx.is_full() {
                    self.flush_tx()?;
                }
                let space = self.tx.space();
                let base = space.as_ptr().addr();
                let r = self.table.send(Instant::now(), p.as_slice(), space);
                let t = match r {
                    Sent::Transmit(t) => {
                        Some((t.to, t.datagram.as_ptr().addr() - base, t.datagram.len()))
                    }
                    Sent::Queued { .. } => None,
                    Sent::Dropped(_) => {
                        self.stats.dropped += 1;
                        None
                    }
                };
                self.pool.give(p);
                if let Some((to, start, len)) = t {
                    self.tx.commit(to, start, len);
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
