//! WireGuard datagrams over a framed TCP or TLS stream: the runtime side of
//! [`crate::transport`].
//!
//! One supervisor task per peer whose transport is `tcp`, `tls` or `auto` runs on the tunnel
//! core's executor ([`supervise`]). With `auto` it first watches the peer on UDP and gives up on
//! it after [`UDP_GIVE_UP_ATTEMPTS`](crate::transport::UDP_GIVE_UP_ATTEMPTS) unanswered
//! initiations, then tries TCP, and TLS when TCP fails ([`auto_next`]); with `tcp` or `tls` it
//! connects at once. Connections are opened as the upstreams' are (`runtime::upstream::dial`:
//! through the CONNECT proxy [`StreamSettings`] names, over TLS to an `https://` proxy); a `tls`
//! stream then runs TLS 1.3 to the gateway, its name (SNI) the endpoint's host, its certificate
//! checked against the system roots and `[wireguard] ca_files`. While a stream is up, the tunnel core sends every
//! datagram for that peer down it ([`Carriers::push`]) instead of the UDP socket, and the
//! datagrams read off it enter the very same path as those the socket receives
//! ([`super::tunnel_core::handle_datagram`]), presented as coming from the peer's UDP endpoint so
//! the peer table's view of the peer does not move. The table stays transport-agnostic.
//!
//! A stream ends on EOF, an I/O error, a framing error or a stall ([`StallWatch`]); the peer is
//! back on UDP at once (`tcp`: on no carrier until the next stream), and the supervisor
//! reconnects after a capped back-off. Every failed attempt is logged once, with the reason
//! (a certificate problem included) and never a proxy's credentials. With `auto`, a peer on a stream sends a handshake
//! initiation on the UDP socket every [`UDP_PROBE_EVERY`]; a handshake response arriving on the
//! socket moves it back to UDP ([`Carriers::udp_works`]) and ends the stream. Sending never
//! blocks the tunnel core: frames queue in a bounded buffer ([`MAX_QUEUED`]) that a writer task
//! drains; a full queue drops the datagram, as a full UDP socket buffer would.
//!
//! A reload's peers are followed ([`follow`], called by the tunnel core right after the peer
//! table's `reconfigure`, with the plans built on the control thread): an added peer gets a
//! supervisor, a removed one's is retired (its stream closed at once, its slot back to UDP), a
//! kept peer whose plan (endpoints) changed gets a new supervisor, and an unchanged one is left
//! alone. A retired supervisor notices within [`CHECK_EVERY`] and ends without touching a slot
//! it no longer owns ([`Carriers::unset`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use super::tunnel_core::{TunnelCore, handle_datagram};
use super::upstream::{Conn, dial};
use crate::config::{Endpoint, StreamPlan};
use crate::keys::PublicKey;
use crate::transport::frame::{self, FrameDecoder};
use crate::transport::{
    Backoff, Carrier, STALL_AFTER, StallWatch, SwitchReason, Transport, UDP_PROBE_EVERY,
    UdpVerdict, auto_next,
};
use crate::tunnel::{PeerId, required_buffer_len};
use crate::upstream::proxy::ProxySettings;
use crate::upstream::{Target, UpstreamError};

/// Most framed bytes queued for one stream before datagrams are dropped.
pub(super) const MAX_QUEUED: usize = 4 << 20;

/// How long reaching the gateway may take: name resolution, the TCP connect, and a proxy's
/// TLS and CONNECT exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the TLS handshake with the gateway may take (`tls`).
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the supervisor looks at the peer's UDP handshakes, and the reader at the clock.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// First and longest wait between stream attempts.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A running supervisor: which peer (slot and key), with which plan, and its own stop flag.
#[derive(Debug)]
pub(super) struct Supervisor {
    peer: PeerId,
    key: PublicKey,
    plan: StreamPlan,
    retired: Rc<Cell<bool>>,
}

/// When a supervisor stops: the broker stops (`all`) or a reload retired it (`this`).
#[derive(Debug, Clone)]
pub(super) struct Stop {
    all: Arc<AtomicBool>,
    this: Rc<Cell<bool>>,
}

impl Stop {
    fn is_set(&self) -> bool {
        self.this.get() || self.all.load(Ordering::Relaxed)
    }
}

/// Makes the running supervisors match `wanted` (every peer whose transport opens streams, with
/// its plan): at start, and when the tunnel core applied a reload's peers. A supervisor whose
/// peer is gone, whose slot now holds another key, or whose plan changed is retired: it stops,
/// its stream closes at once and the peer's slot no longer routes to it. A wanted peer without a
/// supervisor (added, or just retired for a new plan) gets one, its slot set up first (`tcp`/
/// `tls`: no carrier until its stream is up). A supervisor whose peer and plan are unchanged is
/// left alone: its stream and the session on it are not disturbed.
pub(super) fn follow(core: &Rc<TunnelCore>, wanted: Vec<(PeerId, PublicKey, StreamPlan)>) {
    let mut running = core.supervisors.borrow_mut();
    running.retain(|s| {
        let keep = wanted
            .iter()
            .any(|(peer, key, plan)| s.peer == *peer && s.key == *key && s.plan == *plan);
        if !keep {
            s.retired.set(true);
            core.carriers.release(s.peer);
            tracing::info!(event = "wireguard.transport_supervisor_stopped", peer = %s.peer);
        }
        keep
    });
    for (peer, key, plan) in wanted {
        if running.iter().any(|s| s.peer == peer) || !plan.transport.uses_stream() {
            continue;
        }
        core.carriers.prepare(peer, plan.transport.only_stream());
        let retired = Rc::new(Cell::new(false));
        let stop = Stop {
            all: core.stop.clone(),
            this: retired.clone(),
        };
        glommio::spawn_local(supervise(
            core.clone(),
            peer,
            plan.clone(),
            core.stream_settings.clone(),
            stop,
        ))
        .detach();
        running.push(Supervisor {
            peer,
            key,
            plan,
            retired,
        });
    }
}

/// What every peer's streams connect with: the TLS client configuration of the `tls` transport
/// ([`crate::upstream::tls::stream_client_config`]) and the proxy
/// ([`ProxySettings::for_streams`]). Built at start on the control thread.
#[derive(Debug, Clone)]
pub(super) struct StreamSettings {
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: ProxySettings,
}

/// What carries one peer's datagrams now.
#[derive(Debug, Clone, Default)]
enum Slot {
    /// The UDP socket.
    #[default]
    Udp,
    /// This stream.
    Stream(Rc<StreamOut>),
    /// Nothing: `transport = "tcp"` or `"tls"` and no stream is up (datagrams are dropped; UDP
    /// is never used).
    Down,
}

/// Per peer, what its datagrams go to ([`Carriers::push`]).
#[derive(Debug, Default)]
pub(super) struct Carriers {
    slots: RefCell<Vec<Slot>>,
    /// Whether any peer is off UDP: the UDP-only hot path skips the lookup.
    any: Cell<bool>,
    /// Datagrams dropped because a stream's queue was full.
    pub queue_drops: Cell<u64>,
}

impl Carriers {
    /// A supervisor starts for `peer` (at start, or a reload added it or changed its plan):
    /// with `only_stream` (`tcp`, `tls`) it has no carrier until its stream is up, else UDP.
    /// The slots grow to the peer's index.
    fn prepare(&self, peer: PeerId, only_stream: bool) {
        let mut slots = self.slots.borrow_mut();
        if slots.len() <= peer.index() {
            slots.resize(peer.index() + 1, Slot::Udp);
        }
        if let Some(s) = slots.get_mut(peer.index()) {
            if let Slot::Stream(out) = s {
                out.close();
            }
            *s = if only_stream { Slot::Down } else { Slot::Udp };
        }
        self.any.set(slots.iter().any(|s| !matches!(s, Slot::Udp)));
    }

    /// `peer`'s supervisor was retired (a reload removed the peer or changed its plan): its
    /// stream, if up, is closed now and the slot goes back to UDP.
    fn release(&self, peer: PeerId) {
        let mut slots = self.slots.borrow_mut();
        if let Some(s) = slots.get_mut(peer.index()) {
            if let Slot::Stream(out) = s {
                out.close();
            }
            *s = Slot::Udp;
        }
        self.any.set(slots.iter().any(|s| !matches!(s, Slot::Udp)));
    }

    /// `peer`'s stream is `out` from now on.
    fn set(&self, peer: PeerId, out: Rc<StreamOut>) {
        let mut slots = self.slots.borrow_mut();
        if let Some(s) = slots.get_mut(peer.index()) {
            *s = Slot::Stream(out);
        }
        self.any.set(slots.iter().any(|s| !matches!(s, Slot::Udp)));
    }

    /// `peer`'s stream `out` ended: the slot falls back (`Down` for `tcp` and `tls`, else UDP),
    /// unless it no longer holds `out` (a reload retired the supervisor; the slot may already
    /// be another supervisor's).
    fn unset(&self, peer: PeerId, out: &Rc<StreamOut>, only_stream: bool) {
        let mut slots = self.slots.borrow_mut();
        if let Some(s) = slots.get_mut(peer.index()) {
            if matches!(s, Slot::Stream(o) if Rc::ptr_eq(o, out)) {
                *s = if only_stream { Slot::Down } else { Slot::Udp };
            }
        }
        self.any.set(slots.iter().any(|s| !matches!(s, Slot::Udp)));
    }

    /// Whether any peer is off UDP.
    pub fn any_stream(&self) -> bool {
        self.any.get()
    }

    /// `auto`: `peer`'s UDP works again (a handshake response arrived on the UDP socket). Its
    /// datagrams go to UDP from now on (the keepalive that completes this handshake first), and
    /// its stream is told to close. Does nothing for a peer not on a stream or with `tcp`/`tls`.
    pub fn udp_works(&self, peer: PeerId) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(peer.index()) else {
            return;
        };
        if let Slot::Stream(out) = slot {
            if out.auto {
                out.udp_works.set(true);
                out.close();
                *slot = Slot::Udp;
            }
        }
        self.any.set(slots.iter().any(|s| !matches!(s, Slot::Udp)));
    }

    /// Routes a datagram for `peer` (`None`: an unauthenticated sender, answered on UDP):
    /// `None` — send it on the UDP socket; `Some(true)` — queued on the peer's stream;
    /// `Some(false)` — dropped (no carrier, or a full queue: counted in `queue_drops`).
    pub fn push(&self, peer: Option<PeerId>, datagram: &[u8]) -> Option<bool> {
        if !self.any.get() {
            return None;
        }
        let peer = peer?;
        let slots = self.slots.borrow();
        match slots.get(peer.index())? {
            Slot::Udp => None,
            Slot::Down => Some(false),
            Slot::Stream(out) => {
                let ok = out.push(datagram);
                if !ok {
                    self.queue_drops.set(self.queue_drops.get() + 1);
                }
                Some(ok)
            }
        }
    }
}

/// The send side of one stream: framed bytes waiting for the writer task.
#[derive(Debug, Default)]
pub(super) struct StreamOut {
    queued: RefCell<Vec<u8>>,
    writer: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    watch: RefCell<StallWatch>,
    /// A handshake answer came in on UDP (`auto`'s probe): the stream is to close.
    udp_works: Cell<bool>,
    /// The peer's transport is `auto` (it may go back to UDP).
    auto: bool,
}

impl StreamOut {
    /// Whether the stream was closed (by its writer after a failed write, or its owner).
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Frames `datagram` into the queue; `false` when it is full or closed (dropped).
    pub fn push(&self, datagram: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        {
            let mut q = self.queued.borrow_mut();
            if q.len() + frame::PREFIX + datagram.len() > MAX_QUEUED
                || frame::encode(datagram, &mut q).is_err()
            {
                return false;
            }
        }
        {
            let mut w = self.watch.borrow_mut();
            if !w.is_waiting() {
                w.sent(Instant::now(), datagram);
            }
        }
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
        true
    }

    pub fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits for queued bytes and swaps them into `into` (empty); `false` once closed.
    async fn take(&self, into: &mut Vec<u8>) -> bool {
        future::poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(false);
            }
            let mut q = self.queued.borrow_mut();
            if q.is_empty() {
                *self.writer.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::swap(&mut *q, into);
            Poll::Ready(true)
        })
        .await
    }
}

/// Runs `peer`'s stream transport until `stop` is set (see the module docs).
async fn supervise(
    core: Rc<TunnelCore>,
    peer: PeerId,
    plan: StreamPlan,
    settings: Rc<StreamSettings>,
    stop: Stop,
) {
    let Some(mut kind) = plan.transport.first_stream() else {
        return;
    };
    let connector = TlsConnector::from(settings.tls.clone());
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
    let mut why = SwitchReason::Configured;
    loop {
        if plan.transport == Transport::Auto {
            // Stay on UDP while it works.
            loop {
                if stop.is_set() {
                    return;
                }
                let attempts = core
                    .table
                    .borrow()
                    .peer_status(peer)
                    .map_or(0, |s| s.handshake_attempts);
                if UdpVerdict::of(attempts) == UdpVerdict::NoHandshake {
                    break;
                }
                // UDP worked meanwhile: the next stream is the first of the ladder again.
                kind = Carrier::Tcp;
                why = SwitchReason::UdpNoHandshake;
                glommio::timer::sleep(CHECK_EVERY).await;
            }
        }
        let endpoint = match kind {
            Carrier::Tls => &plan.tls,
            Carrier::Udp | Carrier::Tcp => &plan.tcp,
        };
        let worked = match connect(&settings, &connector, endpoint, kind).await {
            Ok(conn) => {
                if stop.is_set() {
                    // Retired while connecting: the slot is no longer this supervisor's.
                    return;
                }
                let addr = conn.tcp().peer_addr().ok();
                switched(&core, peer, kind, true, why, addr);
                let (ended, handshaken) = run(&core, peer, plan.transport, conn, &stop).await;
                switched(&core, peer, kind, false, ended, addr);
                if handshaken {
                    backoff.reset();
                }
                handshaken
            }
            Err(e) => {
                let proxy = settings
                    .proxy
                    .proxy_for(&stream_target(endpoint, kind))
                    .map_or_else(|| "-".to_owned(), |p| p.peer());
                tracing::warn!(
                    event = "wireguard.transport_connect_failure",
                    %peer,
                    transport = kind.as_str(),
                    endpoint = %endpoint,
                    proxy = %proxy,
                    kind = e.kind(),
                    error = %e
                );
                false
            }
        };
        let next = auto_next(plan.transport, kind, worked);
        why = if next != kind {
            SwitchReason::OtherStreamFailed
        } else if plan.transport == Transport::Auto {
            SwitchReason::UdpNoHandshake
        } else {
            SwitchReason::Configured
        };
        kind = next;
        // Back off (checking `stop`), then try again.
        let mut left = backoff.next_wait();
        while !left.is_zero() {
            if stop.is_set() {
                return;
            }
            let step = left.min(CHECK_EVERY);
            glommio::timer::sleep(step).await;
            left -= step;
        }
    }
}

/// Logs and counts a change of carrier: `peer` now on a `kind` stream (`up`), or back from it.
fn switched(
    core: &TunnelCore,
    peer: PeerId,
    kind: Carrier,
    up: bool,
    why: SwitchReason,
    addr: Option<SocketAddr>,
) {
    let st = &core.status;
    let tls = kind == Carrier::Tls;
    if up {
        st.stream_peers.fetch_add(1, Ordering::Relaxed);
        if tls {
            st.tls_peers.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        st.stream_peers.fetch_sub(1, Ordering::Relaxed);
        if tls {
            st.tls_peers.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if let Some(c) = st.transport_switches.get(why.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let addr = addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
    // Where the datagrams go now: the stream, or (it ended) UDP or nothing.
    let to = if up { kind.as_str() } else { "udp" };
    match (up, why) {
        (true, _) | (false, SwitchReason::Stopping | SwitchReason::UdpWorks) => {
            tracing::info!(
                event = "wireguard.transport",
                %peer,
                transport = to,
                reason = why.as_str(),
                stream = %addr
            )
        }
        (false, _) => tracing::warn!(
            event = "wireguard.transport",
            %peer,
            transport = to,
            from = kind.as_str(),
            reason = why.as_str(),
            stream = %addr
        ),
    }
}

/// The [`Target`] a stream to `ep` is: TLS for [`Carrier::Tls`]; IPv6 hosts in brackets.
fn stream_target(ep: &Endpoint, kind: Carrier) -> Target {
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    Target::new(kind == Carrier::Tls, host, ep.port)
}

/// Opens a `kind` stream to `ep`: directly or through the proxy, within [`CONNECT_TIMEOUT`];
/// for TLS, then the handshake with the gateway (SNI: the endpoint's host) within
/// [`TLS_TIMEOUT`].
async fn connect(
    settings: &StreamSettings,
    connector: &TlsConnector,
    ep: &Endpoint,
    kind: Carrier,
) -> Result<Conn, UpstreamError> {
    let target = stream_target(ep, kind);
    // The proxy is chosen for a TLS target whatever the stream: `HTTPS_PROXY`, not `HTTP_PROXY`.
    let proxy = settings
        .proxy
        .proxy_for(&Target::new(true, target.host.clone(), target.port));
    let peer = ep.to_string();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let timed_out = || UpstreamError::ConnectTimeout {
        peer: match proxy {
            Some(p) => format!("{peer} via proxy {}", p.peer()),
            None => peer.clone(),
        },
        after: CONNECT_TIMEOUT,
    };
    let hop = future::or(
        dial(connector, CONNECT_TIMEOUT, &target, proxy, deadline),
        async {
            glommio::timer::sleep(CONNECT_TIMEOUT).await;
            Err(timed_out())
        },
    )
    .await?;
    if kind != Carrier::Tls {
        return Ok(Conn::Plain(hop));
    }
    let name = ServerName::try_from(target.bare_host().to_owned()).map_err(|_| {
        UpstreamError::TlsHandshake {
            peer: peer.clone(),
            detail: "the host is not a valid TLS server name".into(),
        }
    })?;
    let handshake = async {
        connector
            .connect(name, hop)
            .await
            .map_err(|e| UpstreamError::tls(peer.clone(), &e))
    };
    let tls = future::or(handshake, async {
        glommio::timer::sleep(TLS_TIMEOUT).await;
        Err(UpstreamError::TlsTimeout {
            peer: peer.clone(),
            after: TLS_TIMEOUT,
        })
    })
    .await?;
    Ok(Conn::Tls(Box::new(tls)))
}

/// Writes what `out` queues to `wr` until `out` closes or a write fails (then closes `out`).
/// Dropping the returned handle cancels the writer (a write blocked on a dead peer included).
pub(super) fn spawn_writer<W: AsyncWrite + Unpin + 'static>(
    out: Rc<StreamOut>,
    mut wr: W,
) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let mut chunk = Vec::new();
        while out.take(&mut chunk).await {
            if wr.write_all(&chunk).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            chunk.clear();
        }
        out.close();
    })
}

/// Carries `peer`'s datagrams on `conn` (a TCP or TLS stream) until it ends; returns why, and
/// whether a handshake completed meanwhile.
async fn run(
    core: &Rc<TunnelCore>,
    peer: PeerId,
    transport: Transport,
    conn: Conn,
    stop: &Stop,
) -> (SwitchReason, bool) {
    let _ = conn.tcp().set_nodelay(true);
    let stream_addr = conn.tcp().peer_addr().ok();
    let (mut rd, wr) = futures_lite::io::split(conn);
    let out = Rc::new(StreamOut {
        auto: transport == Transport::Auto,
        ..StreamOut::default()
    });
    let only_stream = transport.only_stream();
    core.carriers.set(peer, out.clone());
    let writer = spawn_writer(out.clone(), wr);
    let handshakes = |core: &TunnelCore| {
        core.table
            .borrow()
            .peer_status(peer)
            .map_or(0, |s| s.handshakes)
    };
    let before = handshakes(core);
    // Start a handshake now rather than at boringtun's next retry (up to 5 s away); it goes
    // down the stream, which is the peer's carrier from here on.
    super::tunnel_core::initiate(core, peer).await;

    let capacity = core.pool.borrow().buf_capacity();
    let mut dec = FrameDecoder::new(required_buffer_len(capacity));
    let mut frame_copy = Vec::with_capacity(dec.max());
    let mut scratch = vec![0u8; required_buffer_len(capacity)];
    let mut next_probe = Instant::now() + UDP_PROBE_EVERY;
    let ended = loop {
        if stop.is_set() {
            break SwitchReason::Stopping;
        }
        if out.udp_works.get() {
            break SwitchReason::UdpWorks;
        }
        if out.closed.get() {
            break SwitchReason::StreamClosed;
        }
        let now = Instant::now();
        if out.watch.borrow().stalled(now, STALL_AFTER) {
            break SwitchReason::StreamStalled;
        }
        if out.auto && now >= next_probe {
            next_probe = now + UDP_PROBE_EVERY;
            super::tunnel_core::probe_udp(core, peer).await;
        }
        // A read interrupted by the tick loses nothing: glommio reads only when it returns, and
        // rustls keeps what it decrypted until it is read.
        let read = future::or(async { Some(rd.read(dec.space()).await) }, async {
            glommio::timer::sleep(CHECK_EVERY).await;
            None
        })
        .await;
        let n = match read {
            None => continue,
            Some(Ok(0)) => break SwitchReason::StreamClosed,
            Some(Err(e)) => {
                tracing::debug!(event = "wireguard.stream_error", %peer, error = %e);
                break SwitchReason::StreamClosed;
            }
            Some(Ok(n)) => n,
        };
        dec.filled(n);
        out.watch.borrow_mut().received();
        // As if from the peer's UDP endpoint: the table's endpoint for it stays put.
        let from = core
            .table
            .borrow()
            .peer_status(peer)
            .and_then(|s| s.endpoint)
            .or(stream_addr);
        let Some(from) = from else {
            break SwitchReason::StreamClosed;
        };
        let bad = loop {
            match dec.next_frame() {
                Ok(Some(d)) => {
                    frame_copy.clear();
                    frame_copy.extend_from_slice(d);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
            handle_datagram(core, Instant::now(), from, &frame_copy, &mut scratch, false).await;
        };
        if let Some(e) = bad {
            tracing::warn!(event = "wireguard.stream_framing_error", %peer, error = %e);
            break SwitchReason::FramingError;
        }
    };
    core.carriers.unset(peer, &out, only_stream);
    out.close();
    drop(writer);
    (ended, handshakes(core) > before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(table_index: usize) -> PeerId {
        // Handles come from a table; build one with as many peers as needed.
        let own = crate::keys::PrivateKey::generate().expect("rng");
        let specs = (0..=table_index)
            .map(|i| crate::tunnel::PeerSpec {
                public_key: crate::keys::PrivateKey::generate()
                    .expect("rng")
                    .public_key(),
                preshared_key: None,
                endpoint: None,
                endpoint_name: None,
                allowed_ips: vec![format!("10.9.0.{}/32", i + 1).parse().expect("net")],
                persistent_keepalive: 0,
            })
            .collect();
        let table = crate::tunnel::PeerTable::new(&own, specs, Instant::now()).expect("table");
        table.peers().nth(table_index).expect("peer")
    }

    #[test]
    fn a_retired_stream_never_clears_its_successors_slot() {
        let c = Carriers::default();
        let p = peer(2);
        // The slots grow to a peer added beyond them; `tcp`: no carrier until a stream is up.
        c.prepare(p, true);
        assert_eq!(c.push(Some(p), b"x"), Some(false));
        let old = Rc::new(StreamOut::default());
        c.set(p, old.clone());
        assert_eq!(c.push(Some(p), b"x"), Some(true));
        // A reload changes the plan: the old stream is closed, its successor's slot set up.
        c.release(p);
        assert!(old.is_closed());
        c.prepare(p, true);
        let new = Rc::new(StreamOut::default());
        c.set(p, new.clone());
        // The old supervisor ends late: the new stream keeps the slot.
        c.unset(p, &old, true);
        assert_eq!(c.push(Some(p), b"y"), Some(true));
        assert!(!new.queued.borrow().is_empty());
        // Its own end falls back to no carrier.
        c.unset(p, &new, true);
        assert_eq!(c.push(Some(p), b"z"), Some(false));
        // A removed peer's slot routes nowhere but UDP.
        c.release(p);
        assert_eq!(c.push(Some(p), b"z"), None);
    }
}
