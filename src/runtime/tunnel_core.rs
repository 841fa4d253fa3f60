//! The tunnel core: the UDP socket and every peer's WireGuard state, on one executor.
//!
//! Three kinds of task share the [`PeerTable`] (single-threaded, borrowed only between awaits):
//! the receive loop decrypts each datagram straight into a pooled [`PacketBuf`] and moves it to
//! the shard that owns its flow; one egress loop per shard encrypts the packets the shard hands
//! back and sends the spent buffers home; the timer loop drives handshakes, keepalives,
//! re-resolution and the shared rate limiter. [`start`] builds the core on its executor, in
//! either layout (its own executor, or the combined one next to the single shard).

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glommio::net::UdpSocket;

use super::link::{Msg, Rx, Tx};
use super::stream::{Carriers, StreamSettings, Supervisor};
use super::udp::{self, RecvBatch, SendBatch};
use crate::config::StreamPlan;
use crate::keys::PublicKey;
use crate::packet::{BufPool, shard_of};
use crate::status::Status;
use crate::telemetry::{LogThrottle, REPEAT_INTERVAL};
use crate::tunnel::{
    PeerEvent, PeerId, PeerTable, Received, RestartReason, Sent, TICK_INTERVAL, required_buffer_len,
};

/// How long `rx_loop` waits for room on a full link to a shard before it drops the packet.
/// Far below any TCP retransmission timeout (200 ms on Linux, 1 s in smoltcp), and short enough
/// that one shard that is behind does not hold the others' packets up for long.
const LINK_WAIT: Duration = Duration::from_millis(5);

/// Datagrams `rx_loop` may take from the socket in one turn, in full batches back to back,
/// before it lets the other tasks run. Yielding after every batch of [`udp::BATCH`] drained 64
/// datagrams per round of the executor's run queue; on a combined executor with thousands of
/// connection tasks that round is long, and a 10,000-connection burst (`MANY=10000
/// perf/tunnel-figures.sh`) overflowed the socket's 4 MiB receive buffer: 35k datagrams dropped
/// by the kernel (`UdpRcvbufErrors`), each costing the vendor a retransmission timeout. Taking up
/// to this many first moves a burst into the stacks, whose per-connection buffers have room for
/// it; a full link to a shard still makes the loop wait (`LINK_WAIT`), and the budget keeps a
/// flood that never reaches a link (garbage) from starving the other tasks.
const RX_TURN_BUDGET: usize = 1024;

/// What the tunnel core needs, built on the control thread (all `Send`) and moved to its
/// executor, where [`start`] builds the core from it.
pub(super) struct CoreSeed {
    pub table: PeerTable,
    /// The bound, non-blocking UDP socket.
    pub udp: socket2::Socket,
    pub shards: usize,
    pub stacks: usize,
    pub buf_capacity: usize,
    pub gso: bool,
    pub ipv6_socket: bool,
    /// The stream transport to supervise, per peer that uses one.
    pub streams: Vec<(PublicKey, StreamPlan)>,
    /// What the streams connect with (TLS roots, proxy).
    pub stream_settings: StreamSettings,
}

/// Starts the tunnel core on the current executor, in either layout, linked to each shard by
/// `to_shards[i]` / `from_shards[i]`: waits until every shard listens (so the first handshake
/// completes when the broker can already answer), builds the core, and spawns one egress task
/// per shard and the receive task. Returns the timer task (handshakes, keepalives,
/// re-resolution), which ends once `stop` is set; `None` when `stop` was set while it waited.
pub(super) async fn start(
    seed: CoreSeed,
    to_shards: Vec<Tx>,
    from_shards: Vec<Rx>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) -> Option<glommio::Task<()>> {
    while status.shards_ready.load(Ordering::Relaxed) < seed.shards {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    status
        .peers
        .store(seed.table.peers().count() as u64, Ordering::Relaxed);
    let core = Rc::new(TunnelCore {
        carriers: Carriers::default(),
        supervisors: RefCell::new(Vec::new()),
        stream_settings: Rc::new(seed.stream_settings),
        stop: stop.clone(),
        table: RefCell::new(seed.table),
        udp: UdpSocket::from(seed.udp),
        to_shards,
        pool: RefCell::new(BufPool::new(seed.buf_capacity, 4096)),
        shards: seed.shards,
        stacks: seed.stacks,
        status,
        gso: seed.gso,
        ipv6_socket: seed.ipv6_socket,
        io: IoCounters::default(),
    });
    for (i, rx) in from_shards.into_iter().enumerate() {
        glommio::spawn_local(egress_loop(core.clone(), rx, i)).detach();
    }
    glommio::spawn_local(rx_loop(core.clone())).detach();
    let wanted = supervised(&core, seed.streams);
    super::stream::follow(&core, wanted);
    Some(glommio::spawn_local(timer_loop(core, stop)))
}

/// The tunnel core's state.
pub(super) struct TunnelCore {
    pub table: RefCell<PeerTable>,
    pub udp: UdpSocket,
    pub to_shards: Vec<Tx>,
    pub pool: RefCell<BufPool>,
    pub shards: usize,
    pub stacks: usize,
    pub status: Arc<Status>,
    /// `[runtime] udp_gso`: use UDP GSO where the kernel supports it.
    pub gso: bool,
    /// The socket is IPv6 (dual-stack): IPv4 peers are sent to at their v4-mapped addresses,
    /// and resolved names may give IPv6 ones.
    pub ipv6_socket: bool,
    /// Batch counters, kept on this core and published with the timer tick (no atomic per batch).
    pub io: IoCounters,
    /// Peers whose datagrams go on a stream now ([`super::stream`]).
    pub carriers: Carriers,
    /// The stream supervisors running, one per peer that uses a stream
    /// ([`super::stream::follow`]).
    pub supervisors: RefCell<Vec<Supervisor>>,
    /// What the streams connect with (TLS roots, proxy).
    pub stream_settings: Rc<StreamSettings>,
    /// Set when the broker stops (the supervisors end too).
    pub stop: Arc<AtomicBool>,
}

/// `plans` (by key) with each peer's handle in the table; a key the table does not hold is
/// skipped.
fn supervised(
    core: &TunnelCore,
    plans: Vec<(PublicKey, StreamPlan)>,
) -> Vec<(PeerId, PublicKey, StreamPlan)> {
    let table = core.table.borrow();
    plans
        .into_iter()
        .filter_map(|(key, plan)| table.peer_id(&key).map(|peer| (peer, key, plan)))
        .collect()
}

/// The tunnel core's own counters of its batched UDP I/O.
#[derive(Debug, Default)]
pub(super) struct IoCounters {
    rx_batches: Cell<u64>,
    tx_batches: Cell<u64>,
    send_errors: Cell<u64>,
}

impl IoCounters {
    fn bump(c: &Cell<u64>, by: u64) {
        c.set(c.get().wrapping_add(by));
    }
}

impl std::fmt::Debug for TunnelCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCore")
            .field("shards", &self.shards)
            .field("stacks", &self.stacks)
            .finish_non_exhaustive()
    }
}

/// Sends `datagram` for `peer` to `to`: down the peer's stream while it has one, else on the UDP
/// socket.
async fn send_datagram(core: &TunnelCore, peer: Option<PeerId>, datagram: &[u8], to: SocketAddr) {
    if core.carriers.push(peer, datagram).is_some() {
        return;
    }
    let wire = udp::on_socket(to, core.ipv6_socket);
    if let Err(e) = core.udp.send_to(datagram, wire).await {
        tracing::debug!(event = "wireguard.send_error", %to, error = %e);
    }
}

/// Receives datagrams until the socket fails for good: drains the socket with `recvmmsg`,
/// decrypts each datagram straight into a pooled buffer and moves it to its shard, then lets the
/// shards run before the next batch; waits for readability through glommio when it is empty.
async fn rx_loop(core: Rc<TunnelCore>) {
    let capacity = core.pool.borrow().buf_capacity();
    // One byte more than any datagram our buffers take, so that longer ones show as truncated.
    let mut batch = RecvBatch::new(capacity + 1);
    let mut scratch = vec![0u8; required_buffer_len(capacity)];
    let fd = core.udp.as_raw_fd();
    let mut probe = [0u8; 1];
    let mut this_turn = 0;
    loop {
        let n = match batch.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                this_turn = 0;
                // Empty: wait until a datagram is queued (a peek leaves it there).
                if let Err(e) = core.udp.peek_from(&mut probe).await {
                    tracing::warn!(event = "wireguard.recv_error", error = %e);
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(event = "wireguard.recv_error", error = %e);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        IoCounters::bump(&core.io.rx_batches, 1);
        let now = Instant::now();
        for i in 0..n {
            let Some((datagram, from, truncated)) = batch.get(i) else {
                break;
            };
            let Some(from) = from else { continue };
            if truncated {
                // Larger than any datagram our MTU allows: garbage.
                core.status.oversize.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            handle_datagram(&core, now, from, datagram, &mut scratch, true).await;
        }
        // A full batch says more is queued: keep draining, up to the turn's budget. Then let the
        // shards (and, on one executor, the egress loop) work through what came.
        this_turn += n;
        if n < udp::BATCH || this_turn >= RX_TURN_BUDGET {
            this_turn = 0;
            futures_lite::future::yield_now().await;
        }
    }
}

/// One datagram from `from` (the UDP socket's, or one taken off a peer's stream): decrypts it
/// into a pooled buffer and moves the packet to its shard, or sends what the table answers.
pub(super) async fn handle_datagram(
    core: &Rc<TunnelCore>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    scratch: &mut [u8],
    via_udp: bool,
) {
    let mut buf = core.pool.borrow_mut().take();
    let received = core
        .table
        .borrow_mut()
        .receive(now, from, datagram, buf.space());
    match received {
        Received::Packet { flow, packet, .. } => {
            let len = packet.len();
            buf.set_len(len);
            let (shard, _) = shard_of(flow.hash(), core.shards, core.stacks);
            // A full link means the shard is behind: wait a little (the UDP socket
            // buffers what arrives meanwhile) rather than drop a packet that the vendor
            // would resend only after its retransmission timeout; a shard that stays
            // behind loses packets instead of stalling the others for long.
            let link = &core.to_shards[shard];
            if let Err(m) = link.try_send_or_return(Msg::Packet(buf)) {
                if !link.send_within(m, LINK_WAIT).await {
                    core.status.link_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Received::Transmit {
            peer,
            to,
            datagram: reply,
        } => {
            let len = reply.len();
            buf.set_len(len);
            if let Some(p) = peer.filter(|_| via_udp && datagram.first() == Some(&2)) {
                // An authenticated handshake response on the UDP socket: UDP works both ways.
                // A peer that `auto` moved to a stream (the probe got its answer) goes back,
                // the keepalive completing this handshake included.
                if core.carriers.any_stream() {
                    core.carriers.udp_works(p);
                }
            }
            send_datagram(core, peer, buf.as_slice(), to).await;
            core.pool.borrow_mut().give(buf);
            if let Some(peer) = peer {
                loop {
                    let next = core
                        .table
                        .borrow_mut()
                        .flush(peer, &mut *scratch)
                        .map(|t| (t.to, t.datagram.len()));
                    match next {
                        Some((to, len)) => {
                            send_datagram(core, Some(peer), &scratch[..len], to).await
                        }
                        None => break,
                    }
                }
            }
        }
        Received::Done => core.pool.borrow_mut().give(buf),
        Received::Dropped(reason) => {
            tracing::trace!(event = "wireguard.drop", ?reason, %from);
            core.pool.borrow_mut().give(buf);
        }
    }
}

/// Encrypts what shard `shard` hands back; returns when the shard's link closes. Takes every
/// packet already queued on the link (up to a batch), encrypts each into a batch slot and sends
/// the batch with one `sendmmsg` (runs of same-size datagrams as one GSO send).
async fn egress_loop(core: Rc<TunnelCore>, from_shard: Rx, shard: usize) {
    let slot = required_buffer_len(core.pool.borrow().buf_capacity());
    let fd = core.udp.as_raw_fd();
    let mut batch = SendBatch::new(slot, core.gso && udp::gso_supported(fd));
    while let Some(first) = from_shard.recv().await {
        // One clock read per drain: the packets of a batch leave together.
        let now = Instant::now();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Packet(p) => {
                    let sent = core
                        .table
                        .borrow_mut()
                        .send(now, p.as_slice(), batch.next_slot())
                        .transmit_len();
                    // The plaintext buffer belongs to the shard: send it home before any await.
                    let _ = core.to_shards[shard].try_send(Msg::Home(p));
                    if let Some((peer, to, len)) = sent {
                        let slot = batch.next_slot();
                        let d = &slot[..len.min(slot.len())];
                        if core.carriers.push(Some(peer), d).is_none() {
                            batch.commit(len, to);
                        }
                    }
                }
                Msg::Home(b) => core.pool.borrow_mut().give(b),
            }
            if batch.is_full() {
                flush(&core, &mut batch).await;
                // Every packet sent one `Msg::Home` into the link that also carries inbound
                // packets to the shard. Draining the whole outbound link (up to
                // `channel_capacity` packets) before the shard could take its buffers back filled
                // that link during downloads, and `rx_loop` dropped the vendor's ACKs: each cost
                // smoltcp a 1 s retransmission timeout. Let the shard catch up after every batch.
                futures_lite::future::yield_now().await;
            }
            next = match futures_lite::future::poll_once(from_shard.recv()).await {
                Some(Some(m)) => Some(m),
                _ => None,
            };
        }
        flush(&core, &mut batch).await;
    }
}

/// Sends a batch: one `sendmmsg` when the socket has room, glommio's async send for what it
/// could not take.
async fn flush(core: &TunnelCore, batch: &mut SendBatch) {
    if batch.is_empty() {
        return;
    }
    IoCounters::bump(&core.io.tx_batches, 1);
    match batch.send(core.udp.as_raw_fd()) {
        Ok(0) => {}
        Ok(failed) => {
            IoCounters::bump(&core.io.send_errors, failed as u64);
        }
        Err(unsent) => {
            IoCounters::bump(&core.io.send_errors, unsent.failed as u64);
            for i in unsent.from..batch.len() {
                if let Some((d, to)) = batch.datagram(i) {
                    send_datagram(core, None, d, to).await;
                }
            }
        }
    }
    batch.clear();
}

trait TransmitLen {
    fn transmit_len(self) -> Option<(PeerId, SocketAddr, usize)>;
}

impl TransmitLen for Sent<'_> {
    fn transmit_len(self) -> Option<(PeerId, SocketAddr, usize)> {
        match self {
            Sent::Transmit(t) => Some((t.peer, t.to, t.datagram.len())),
            Sent::Queued { .. } => None,
            Sent::Dropped(reason) => {
                tracing::trace!(event = "wireguard.drop_outbound", ?reason);
                None
            }
        }
    }
}

/// Starts a handshake with `peer` now (a stream just came up: its first initiation need not
/// wait for boringtun's next retry, and the one in flight went elsewhere).
pub(super) async fn initiate(core: &TunnelCore, peer: PeerId) {
    let mut out = vec![0u8; required_buffer_len(core.pool.borrow().buf_capacity())];
    let mut pending: Vec<(PeerId, SocketAddr, Vec<u8>)> = Vec::new();
    core.table
        .borrow_mut()
        .initiate_now(peer, Instant::now(), &mut out, &mut |peer, to, d| {
            pending.push((peer, to, d.to_vec()))
        });
    for (peer, to, d) in pending {
        send_datagram(core, Some(peer), &d, to).await;
    }
}

/// `auto`'s probe of a peer on a stream: a fresh handshake initiation on the UDP socket, past
/// the stream. Its response arriving on the socket moves the peer back to UDP
/// ([`super::stream::Carriers::udp_works`]); a lost one costs a retry on the stream 5 s later.
pub(super) async fn probe_udp(core: &TunnelCore, peer: PeerId) {
    let mut out = vec![0u8; required_buffer_len(core.pool.borrow().buf_capacity())];
    let mut pending: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    core.table
        .borrow_mut()
        .initiate_now(peer, Instant::now(), &mut out, &mut |_, to, d| {
            pending.push((to, d.to_vec()))
        });
    for (to, d) in pending {
        // `None`: no peer, so the carriers leave it on the UDP socket.
        send_datagram(core, None, &d, to).await;
    }
}

/// Drives WireGuard timers until `stop` is set.
async fn timer_loop(core: Rc<TunnelCore>, stop: Arc<AtomicBool>) {
    let mut out = vec![0u8; required_buffer_len(core.pool.borrow().buf_capacity())];
    let mut pending: Vec<(PeerId, SocketAddr, Vec<u8>)> = Vec::new();
    let mut handshakes_seen = 0u64;
    // A failed heartbeat (counted by shard 0) is a sign of a dead session: start a fresh
    // handshake for it (the table ignores it while a recovery is under way).
    let mut heartbeat_failures_seen = core.status.heartbeats_failed.load(Ordering::Relaxed);
    // One throttle per peer for the lines that repeat while a gateway does not answer.
    let mut throttles: Vec<LogThrottle> = core
        .table
        .borrow()
        .peers()
        .map(|_| LogThrottle::new(REPEAT_INTERVAL))
        .collect();
    let mut last_trim = Instant::now();
    let mut reclaim = super::alloc::Reclaim::default();
    {
        let now = Instant::now();
        core.table
            .borrow_mut()
            .initiate_all(now, &mut out, &mut |peer, to, d| {
                pending.push((peer, to, d.to_vec()))
            });
    }
    loop {
        for (peer, to, d) in pending.drain(..) {
            send_datagram(&core, Some(peer), &d, to).await;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let next = core
            .table
            .borrow_mut()
            .tick(now, &mut out, &mut |peer, to, d| {
                pending.push((peer, to, d.to_vec()))
            });
        control(
            &core,
            now,
            &mut out,
            &mut pending,
            &mut throttles,
            &mut heartbeat_failures_seen,
        );
        // Endpoint names whose handshakes keep failing: resolve off the executor.
        loop {
            let job = core.table.borrow_mut().poll_resolve();
            let Some((peer, endpoint)) = job else { break };
            let core2 = core.clone();
            glommio::spawn_local(async move {
                let name = endpoint.to_string();
                let ipv6_socket = core2.ipv6_socket;
                let resolved = glommio::executor()
                    .spawn_blocking(move || {
                        name.to_socket_addrs()
                            .map(|a| super::prepare::usable_address(a, ipv6_socket))
                    })
                    .await;
                match resolved {
                    Ok(Some(addr)) => {
                        if core2.table.borrow_mut().set_endpoint(peer, addr) {
                            tracing::info!(event = "wireguard.endpoint_resolved", %peer, endpoint = %endpoint, %addr);
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(event = "wireguard.resolve_failure", %peer, endpoint = %endpoint);
                    }
                }
            })
            .detach();
        }
        log_events(&core, &mut throttles, now);
        publish(&core, &mut handshakes_seen);
        core.status.beat(0);
        if now.duration_since(last_trim) >= TICK_INTERVAL {
            // Packet buffers a burst left on the free list go back bit by bit, and to the kernel
            // as the pool drains.
            let idle = {
                let mut pool = core.pool.borrow_mut();
                pool.trim();
                pool.idle()
            };
            if reclaim.due(idle) {
                super::alloc::collect();
            }
            last_trim = now;
        }
        if pending.is_empty() {
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(TICK_INTERVAL);
            glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// What the control side asks of the tunnel core, checked every tick: a reload's new peers
/// (applied with `reconfigure`, then the stream supervisors follow; the log throttles grow with
/// new slots) and a failed heartbeat (each dialed peer's session is probed with a fresh
/// handshake).
fn control(
    core: &Rc<TunnelCore>,
    now: Instant,
    out: &mut [u8],
    pending: &mut Vec<(PeerId, SocketAddr, Vec<u8>)>,
    throttles: &mut Vec<LogThrottle>,
    heartbeat_failures_seen: &mut u64,
) {
    if let Some(new) = core.status.take_pending_peers() {
        if apply_peers(core, new.specs, now, out, pending) {
            // Before the handshakes `reconfigure` started go out: a new `tcp` peer's slot
            // must already hold no carrier rather than UDP.
            let wanted = supervised(core, new.streams);
            super::stream::follow(core, wanted);
        }
        let slots = core
            .table
            .borrow()
            .peers()
            .map(|p| p.index() + 1)
            .max()
            .unwrap_or(0);
        if throttles.len() < slots {
            throttles.resize_with(slots, || LogThrottle::new(REPEAT_INTERVAL));
        }
    }
    let failures = core.status.heartbeats_failed.load(Ordering::Relaxed);
    if failures != *heartbeat_failures_seen {
        *heartbeat_failures_seen = failures;
        let mut table = core.table.borrow_mut();
        let peers: Vec<_> = table.peers().collect();
        for peer in peers {
            table.restart_session(
                peer,
                now,
                RestartReason::HeartbeatFailed,
                out,
                &mut |peer, to, d| pending.push((peer, to, d.to_vec())),
            );
        }
    }
}

/// Applies a reload's `[[wireguard.peers]]` to the table (see
/// [`PeerTable::reconfigure`]): kept peers keep their sessions, so no request in flight to them
/// notices; the outcome is logged as `config.reload` with `section = "wireguard.peers"`.
/// Returns whether they were applied.
fn apply_peers(
    core: &TunnelCore,
    specs: Vec<crate::tunnel::PeerSpec>,
    now: Instant,
    out: &mut [u8],
    pending: &mut Vec<(PeerId, SocketAddr, Vec<u8>)>,
) -> bool {
    let result = core
        .table
        .borrow_mut()
        .reconfigure(specs, now, out, &mut |peer, to, d| {
            pending.push((peer, to, d.to_vec()))
        });
    match result {
        Ok(changes) => {
            let keys = |v: &[crate::keys::PublicKey]| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::info!(
                event = "config.reload",
                section = "wireguard.peers",
                added = %keys(&changes.added),
                removed = %keys(&changes.removed),
                changed = %keys(&changes.changed),
                "peers applied"
            );
            true
        }
        Err(e) => {
            tracing::error!(event = "config.reload", section = "wireguard.peers", error = %e, "kept the running peers");
            false
        }
    }
}

/// Logs what the peer table reports, as the broker's own events (boringtun's lines are filtered
/// out): a gateway that does not answer gives one `wireguard.handshake_timeout` line at once, then
/// at most one a minute with the count of the retries in between.
fn log_events(core: &TunnelCore, throttles: &mut [LogThrottle], now: Instant) {
    loop {
        let event = core.table.borrow_mut().poll_event();
        match event {
            None => return,
            Some(PeerEvent::HandshakeTimeout {
                peer,
                endpoint,
                unanswered,
            }) => {
                let Some(throttle) = throttles.get_mut(peer.index()) else {
                    continue;
                };
                if unanswered == 1 {
                    // A new outage (the first timeout since a completed handshake).
                    throttle.reset();
                }
                if let Some(suppressed) = throttle.admit(now) {
                    tracing::warn!(
                        event = "wireguard.handshake_timeout",
                        %peer,
                        %endpoint,
                        attempts = unanswered,
                        suppressed,
                        "no handshake response from the gateway; retrying"
                    );
                }
            }
            Some(PeerEvent::SessionRestart {
                peer,
                endpoint,
                reason,
            }) => {
                // Rare (once per outage) and worth seeing: never throttled.
                let counter = match reason {
                    RestartReason::HeartbeatFailed => &core.status.session_restarts_heartbeat,
                    _ => &core.status.session_restarts_no_reply,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let silent_ms = match reason {
                    RestartReason::NoReply { silent_for } => silent_for.as_millis() as u64,
                    _ => 0,
                };
                tracing::warn!(
                    event = "wireguard.session_restart",
                    %peer,
                    %endpoint,
                    reason = reason.as_str(),
                    silent_ms,
                    "the session with the gateway looks dead; starting a fresh handshake"
                );
            }
            Some(PeerEvent::IdleProbeOff { peer, to }) => {
                // Once per peer and process: never throttled.
                tracing::warn!(
                    event = "wireguard.idle_probe_off",
                    %peer,
                    %to,
                    "the gateway does not answer ICMP echoes inside the tunnel; an idle broker \
                     notices a gateway restart only at its next keepalive"
                );
            }
        }
    }
}

fn publish(core: &TunnelCore, handshakes_seen: &mut u64) {
    let table = core.table.borrow();
    let c = table.counters();
    core.status
        .liveness_probes
        .store(c.liveness_probes, Ordering::Relaxed);
    core.status
        .idle_probes
        .store(c.idle_probes, Ordering::Relaxed);
    core.status
        .idle_probe_replies
        .store(c.idle_probe_replies, Ordering::Relaxed);
    if c.handshakes_completed != *handshakes_seen {
        *handshakes_seen = c.handshakes_completed;
        core.status
            .handshakes
            .store(c.handshakes_completed, Ordering::Relaxed);
        let newest = table
            .peers()
            .filter_map(|p| table.peer_status(p))
            .filter_map(|s| s.last_handshake)
            .max();
        if let Some(at) = newest {
            core.status.set_last_handshake(at);
        }
        tracing::info!(
            event = "wireguard.handshake",
            total = c.handshakes_completed
        );
    }
    core.status
        .datagrams_dropped
        .store(c.dropped(), Ordering::Relaxed);
    let io = &core.io;
    core.status
        .rx_batches
        .store(io.rx_batches.get(), Ordering::Relaxed);
    core.status
        .tx_batches
        .store(io.tx_batches.get(), Ordering::Relaxed);
    core.status
        .send_errors
        .store(io.send_errors.get(), Ordering::Relaxed);
    core.status
        .stream_queue_drops
        .store(core.carriers.queue_drops.get(), Ordering::Relaxed);
}
