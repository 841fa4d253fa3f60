//! Upstream connections on a shard: glommio sockets, rustls through `futures-rustls`, and the
//! I/O around the per-shard idle-connection pool behind [`crate::upstream::Upstreams`].
//!
//! Responsibility: resolve names off the executor (`spawn_blocking`), connect with a timeout
//! (directly or through the HTTP CONNECT proxy [`ProxySettings`] picks, over TLS to an `https://`
//! proxy), run the TLS handshake with a timeout, set `TCP_NODELAY`, check an idle connection is
//! still open and silent ([`Conn::idle_and_open`]), read the clock, and sweep the pool on a timer.
//! Which idle connection is handed out, when one expires and how many are kept is decided by
//! [`Pool`] (`upstream::pool`), which is given `now` and that liveness check; change the policy
//! there, with a fake-clock unit test.
//!
//! Invariants:
//! * the pool is single-threaded (`RefCell`, no locks, no atomics); a borrow is never held across
//!   an `.await` or a spawn, and the connections the pool hands back to close are dropped only
//!   after the borrow ends;
//! * an idle connection is handed out only if a non-blocking peek finds nothing to read: readable
//!   EOF (the peer closed it), unsolicited bytes (a late response, a TLS alert or ticket) or a
//!   socket error all mean it is closed instead;
//! * the connect timeout covers name resolution, the TCP connect to every address tried, the TLS
//!   handshake with an `https://` proxy and the proxy's CONNECT exchange; the TLS timeout covers
//!   the target's handshake alone.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, future};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::config;
use crate::upstream::pool::{Pool, PoolStats};
use crate::upstream::proxy::{ProxyEndpoint, ProxySettings};
use crate::upstream::{Pooled, Target, UpstreamError, Upstreams, connect};

/// Most addresses of one name tried in turn.
const MAX_ADDRS: usize = 8;

/// `AsyncRead` and `AsyncWrite` for an enum of two streams, each call forwarded to the variant
/// held (the second variant boxed). [`Hop`] and [`Conn`] are both such a pair.
macro_rules! either_io {
    ($ty:ident, $a:ident, $b:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::$b(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::$b(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_flush(cx),
                    $ty::$b(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_close(cx),
                    $ty::$b(s) => Pin::new(s.as_mut()).poll_close(cx),
                }
            }
        }
    };
}

/// The byte stream to the target before any TLS of the target's own: the TCP connection (to the
/// target, or the CONNECT tunnel of an `http://` proxy), or the CONNECT tunnel inside the TLS
/// session with an `https://` proxy.
pub enum Hop {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS to an `https://` proxy, the tunnel inside it (boxed: the rustls state is large).
    ProxyTls(Box<TlsStream<TcpStream>>),
}

impl fmt::Debug for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.tcp().peer_addr().ok();
        match self {
            Hop::Tcp(_) => f.debug_struct("Hop::Tcp").field("peer", &peer).finish(),
            Hop::ProxyTls(_) => f
                .debug_struct("Hop::ProxyTls")
                .field("peer", &peer)
                .finish(),
        }
    }
}

impl Hop {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Hop::Tcp(s) => s,
            Hop::ProxyTls(s) => s.get_ref().0,
        }
    }

    /// False when the proxy's TLS session holds bytes (or a close_notify) that a peek on the
    /// socket cannot see.
    fn nothing_buffered(&self) -> bool {
        match self {
            Hop::Tcp(_) => true,
            Hop::ProxyTls(s) => s.get_ref().1.wants_read(),
        }
    }
}

either_io!(Hop, Tcp, ProxyTls);

/// A connection to an upstream: plain or TLS, over a [`Hop`].
pub enum Conn {
    /// `http` targets.
    Plain(Hop),
    /// `https` targets (boxed: the rustls state is large).
    Tls(Box<TlsStream<Hop>>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.tcp().peer_addr().ok();
        let via_tls_proxy = matches!(self.hop(), Hop::ProxyTls(_));
        let name = match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        };
        f.debug_struct(name)
            .field("peer", &peer)
            .field("via_tls_proxy", &via_tls_proxy)
            .finish()
    }
}

impl Conn {
    fn hop(&self) -> &Hop {
        match self {
            Conn::Plain(h) => h,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.hop().tcp()
    }

    /// True for TLS connections.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The ALPN protocol the upstream chose, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// True when an idle connection may carry another request: a non-blocking `MSG_PEEK` finds
    /// nothing to read and no error, and (TLS, the target's or an `https://` proxy's) rustls holds
    /// no unread bytes and no close_notify. EOF, data or an error all mean it must be closed.
    pub fn idle_and_open(&self) -> bool {
        // Bytes rustls already pulled off the socket are invisible to the peek: a TLS session with
        // unread plaintext or a received close_notify no longer "wants to read".
        if let Conn::Tls(s) = self {
            if !s.get_ref().1.wants_read() {
                return false;
            }
        }
        if !self.hop().nothing_buffered() {
            return false;
        }
        let sock = socket2::SockRef::from(self.tcp());
        let mut one = [MaybeUninit::<u8>::uninit(); 1];
        match sock.recv_with_flags(&mut one, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }
}

either_io!(Conn, Plain, Tls);

/// A shard's upstream connector and idle-connection pool: the I/O around [`Pool`], whose
/// decisions it follows.
pub struct ShardUpstreams {
    /// Replaced whole by a reload ([`ShardUpstreams::reconfigure`]); a connection being opened
    /// keeps the settings it started with.
    settings: RefCell<Rc<Settings>>,
    pool: RefCell<Pool<Conn>>,
}

/// How connections are opened: `[upstream]` TLS, proxy and timeouts.
struct Settings {
    connector: TlsConnector,
    proxy: ProxySettings,
    connect_timeout: Duration,
    tls_timeout: Duration,
}

impl fmt::Debug for ShardUpstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ShardUpstreams");
        if let Ok(st) = self.settings.try_borrow() {
            d.field("proxy", &st.proxy)
                .field("connect_timeout", &st.connect_timeout)
                .field("tls_timeout", &st.tls_timeout);
        }
        match self.pool.try_borrow() {
            Ok(pool) => d.field("pool", &*pool),
            Err(_) => d.field("pool", &"<in use>"),
        };
        d.finish_non_exhaustive()
    }
}

impl Settings {
    /// Zero timeouts are treated as one millisecond.
    fn new(cfg: &config::Upstream, tls: Arc<rustls::ClientConfig>, proxy: ProxySettings) -> Self {
        let nonzero = |d: Duration| d.max(Duration::from_millis(1));
        Self {
            connector: TlsConnector::from(tls),
            proxy,
            connect_timeout: nonzero(cfg.connect_timeout),
            tls_timeout: nonzero(cfg.tls_timeout),
        }
    }
}

impl ShardUpstreams {
    /// A pool for one shard. `tls` comes from [`crate::upstream::tls::client_config`] (built once
    /// and shared by every shard), `proxy` from
    /// [`ProxySettings::from_config`](crate::upstream::proxy::ProxySettings::from_config).
    /// Zero timeouts are treated as one millisecond.
    pub fn new(
        cfg: &config::Upstream,
        tls: Arc<rustls::ClientConfig>,
        proxy: ProxySettings,
    ) -> Self {
        Self {
            settings: RefCell::new(Rc::new(Settings::new(cfg, tls, proxy))),
            pool: RefCell::new(Pool::new(cfg.idle_timeout, cfg.pool_max_idle_per_host)),
        }
    }

    /// A reload: new TLS settings (CA files, minimum version), proxy, timeouts and pool limits
    /// for the connections opened from now on. Idle pooled connections are closed (they were
    /// opened under the old settings); exchanges in flight finish on theirs.
    pub fn reconfigure(
        &self,
        cfg: &config::Upstream,
        tls: Arc<rustls::ClientConfig>,
        proxy: ProxySettings,
    ) {
        *self.settings.borrow_mut() = Rc::new(Settings::new(cfg, tls, proxy));
        let idle = self
            .pool
            .borrow_mut()
            .reconfigure(cfg.idle_timeout, cfg.pool_max_idle_per_host);
        drop(idle);
    }

    /// The counters so far.
    pub fn stats(&self) -> PoolStats {
        self.pool.borrow().stats()
    }

    /// Idle connections currently pooled for `target`.
    pub fn idle_count(&self, target: &Target) -> usize {
        self.pool.borrow().idle_count(target)
    }

    /// Closes idle connections that are stale at `now` or were closed by their peer, and forgets
    /// targets with nothing idle ([`Pool::expire`]). Returns how many connections were closed.
    pub fn sweep(&self, now: Instant) -> usize {
        let closed = self.pool.borrow_mut().expire(now, Conn::idle_and_open);
        closed.len()
    }

    /// How often [`ShardUpstreams::sweep_every`] should run ([`Pool::sweep_period`]).
    pub fn sweep_period(&self) -> Duration {
        self.pool.borrow().sweep_period()
    }

    /// Sweeps the pool every `period` for as long as its owner lives; spawn it detached on the
    /// shard, e.g. `spawn_local(ShardUpstreams::sweep_every(Rc::downgrade(&shard), |s: &Shard|
    /// &s.upstreams, period))`. It holds only a weak reference, so it never keeps the owner alive.
    pub async fn sweep_every<T>(owner: Weak<T>, pool: fn(&T) -> &ShardUpstreams, period: Duration) {
        loop {
            glommio::timer::sleep(period).await;
            let Some(owner) = owner.upgrade() else { return };
            pool(&owner).sweep(Instant::now());
        }
    }

    /// Opens a new connection to `target`.
    async fn open(&self, target: &Target) -> Result<Conn, UpstreamError> {
        let peer = format!("{}:{}", target.host, target.port);
        let st = self.settings.borrow().clone();
        let proxy = st.proxy.proxy_for(target);
        let shown = match proxy {
            Some(p) => format!("{peer} via proxy {}", p.peer()),
            None => peer.clone(),
        };
        let after = st.connect_timeout;
        let deadline = Instant::now() + after;
        let hop = within(after, self.dial(&st, target, proxy, deadline), || {
            UpstreamError::ConnectTimeout { peer: shown, after }
        })
        .await?;
        if !target.tls {
            return Ok(Conn::Plain(hop));
        }
        let name = ServerName::try_from(target.bare_host().to_owned()).map_err(|_| {
            UpstreamError::TlsHandshake {
                peer: peer.clone(),
                detail: "the host is not a valid TLS server name".into(),
            }
        })?;
        let after = st.tls_timeout;
        let handshake = async {
            st.connector
                .connect(name, hop)
                .await
                .map_err(|e| UpstreamError::tls(peer.clone(), &e))
        };
        let tls = within(after, handshake, || UpstreamError::TlsTimeout {
            peer: peer.clone(),
            after,
        })
        .await?;
        Ok(Conn::Tls(Box::new(tls)))
    }

    /// Resolves, connects (to the proxy when there is one: over TLS to an `https://` proxy) and
    /// opens the CONNECT tunnel ([`dial`]); counts the connection opened.
    async fn dial(
        &self,
        st: &Settings,
        target: &Target,
        proxy: Option<&ProxyEndpoint>,
        deadline: Instant,
    ) -> Result<Hop, UpstreamError> {
        let hop = dial(&st.connector, st.connect_timeout, target, proxy, deadline).await?;
        self.pool.borrow_mut().count_opened();
        Ok(hop)
    }
}

/// Resolves `target` (or `proxy`), connects to it within `deadline` (each address an equal share
/// of the time left), over TLS to an `https://` proxy, and opens the CONNECT tunnel to `target`.
/// The upstream pool and the WireGuard stream transport (`runtime::stream`) both connect with
/// it; `connector` is the one whose roots check an `https://` proxy's certificate, and
/// `connect_timeout` is what a timeout error reports.
pub(super) async fn dial(
    connector: &TlsConnector,
    connect_timeout: Duration,
    target: &Target,
    proxy: Option<&ProxyEndpoint>,
    deadline: Instant,
) -> Result<Hop, UpstreamError> {
    let hop = proxy.map_or_else(|| target.clone(), ProxyEndpoint::target);
    let shown = match proxy {
        Some(p) => format!("proxy {}", p.peer()),
        None => format!("{}:{}", hop.host, hop.port),
    };
    let addrs = resolve(&hop, &shown).await?;
    let mut last: Option<io::Error> = None;
    let mut stream = None;
    let n = addrs.len();
    for (i, addr) in addrs.into_iter().enumerate() {
        // Each address gets an equal share of the time left, so one that drops SYNs (a dead
        // IPv6 route, say) cannot use up the whole timeout before the next is tried.
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(n - i).unwrap_or(u32::MAX).max(1);
        let attempt = future::or(async { Some(TcpStream::connect(addr).await) }, async {
            glommio::timer::sleep(share).await;
            None
        });
        match attempt.await {
            Some(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Some(Err(e)) => last = Some(e.into()),
            None => last = Some(io::Error::from(io::ErrorKind::TimedOut)),
        }
    }
    let tcp = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) if e.kind() == io::ErrorKind::TimedOut => {
            return Err(UpstreamError::ConnectTimeout {
                peer: shown,
                after: connect_timeout,
            });
        }
        (None, last) => {
            return Err(UpstreamError::Connect {
                peer: shown,
                source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)),
            });
        }
    };
    // Requests and small bodies go out as they are written; the proxy code writes whole heads.
    let _ = tcp.set_nodelay(true);
    let mut hop = match proxy {
        Some(p) if p.is_tls() => {
            Hop::ProxyTls(Box::new(proxy_tls(connector, target, p, tcp).await?))
        }
        _ => Hop::Tcp(tcp),
    };
    if let Some(p) = proxy {
        connect::handshake(&mut hop, target, p).await?;
    }
    Ok(hop)
}

/// The TLS session with an `https://` proxy, its certificate checked against `connector`'s roots
/// (for upstreams: webpki, the system store, `[upstream] ca_files`; for the stream transport:
/// the same with `[wireguard] ca_files`). Counted in the connect timeout, like the rest of
/// reaching the proxy.
async fn proxy_tls(
    connector: &TlsConnector,
    target: &Target,
    proxy: &ProxyEndpoint,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let refused = |detail: String| UpstreamError::ProxyRefused {
        proxy: proxy.peer(),
        peer: format!("{}:{}", target.host, target.port),
        status: None,
        detail,
    };
    let name = ServerName::try_from(proxy.target().bare_host().to_owned())
        .map_err(|_| refused("the proxy host is not a valid TLS server name".into()))?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| refused(format!("TLS handshake with the proxy failed: {e}")))
}

impl Upstreams for ShardUpstreams {
    type Conn = Conn;

    async fn connect(&self, target: &Target) -> Result<Pooled<Conn>, UpstreamError> {
        let checkout = self
            .pool
            .borrow_mut()
            .checkout(target, Instant::now(), Conn::idle_and_open);
        // The stale and dead connections close here, after the borrow ended.
        drop(checkout.closed);
        if let Some(p) = checkout.found {
            return Ok(p);
        }
        self.connect_new(target).await
    }

    async fn connect_new(&self, target: &Target) -> Result<Pooled<Conn>, UpstreamError> {
        let conn = self.open(target).await?;
        Ok(Pooled::new(conn, target.clone(), 0))
    }

    fn release(&self, target: &Target, conn: Pooled<Conn>) {
        let closed = self.pool.borrow_mut().release(target, conn, Instant::now());
        drop(closed);
    }
}

/// Races `f` against a timer of `d`; the timer's loss builds the timeout error.
async fn within<T>(
    d: Duration,
    f: impl Future<Output = Result<T, UpstreamError>>,
    on_timeout: impl FnOnce() -> UpstreamError,
) -> Result<T, UpstreamError> {
    future::or(f, async move {
        glommio::timer::sleep(d).await;
        Err(on_timeout())
    })
    .await
}

/// The addresses of `hop`: the literal itself, or a DNS lookup on the executor's blocking pool.
async fn resolve(hop: &Target, shown: &str) -> Result<Vec<SocketAddr>, UpstreamError> {
    if let Some(ip) = hop.ip() {
        return Ok(vec![SocketAddr::new(ip, hop.port)]);
    }
    let host = hop.bare_host().to_owned();
    let port = hop.port;
    let found = glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(|it| it.take(MAX_ADDRS).collect::<Vec<_>>())
        })
        .await;
    match found {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(UpstreamError::Dns {
            peer: shown.to_owned(),
            detail: "no addresses".into(),
        }),
        Err(e) => Err(UpstreamError::Dns {
            peer: shown.to_owned(),
            detail: e.to_string(),
        }),
    }
}
