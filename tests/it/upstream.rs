//! Upstream connections over loopback: plain and TLS connects, certificate and version failures,
//! connect errors and timeouts, pool reuse and liveness, and the HTTP CONNECT proxy path.
//!
//! Every server here is a small std thread on 127.0.0.1 that stops when its handle is dropped; the
//! broker side runs on a glommio executor started by the test. Each test is bounded in time.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use glommio::{LocalExecutorBuilder, Placement};
use wgbroker::config::{TlsVersion, Upstream};
use wgbroker::runtime::upstream::{Conn, ShardUpstreams};
use wgbroker::upstream::proxy::{NoProxy, ProxyEndpoint, ProxySettings};
use wgbroker::upstream::{Pooled, Target, UpstreamError, Upstreams, tls};

use crate::harness::poll_until;

/// Longest any single socket operation of a test server may block.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Harness: executor, config, servers.
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a fresh glommio executor and propagates its panics.
fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("upstream-test")
        .io_memory(256 << 10)
        .spawn(f)
        .expect("start executor");
    handle.join().expect("executor task");
}

fn upstream_cfg() -> Upstream {
    Upstream {
        ca_files: Vec::new(),
        tls_min_version: TlsVersion::V1_2,
        connect_timeout: Duration::from_secs(3),
        tls_timeout: Duration::from_secs(3),
        response_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(30),
        pool_max_idle_per_host: 4,
        proxy: None,
        no_proxy: Vec::new(),
        use_env_proxy: false,
    }
}

/// A pool for `cfg`, direct connections.
fn pool(cfg: &Upstream) -> ShardUpstreams {
    pool_via(cfg, ProxySettings::direct())
}

fn pool_via(cfg: &Upstream, proxy: ProxySettings) -> ShardUpstreams {
    let tls = tls::client_config(cfg).expect("tls config");
    ShardUpstreams::new(cfg, tls, proxy)
}

/// A test CA, a `localhost` server certificate signed by it, and the CA as a PEM file.
struct TestPki {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl TestPki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "wgbroker test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("leaf cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        Self {
            _dir: dir,
            ca_file,
            chain: vec![leaf.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }

    fn server_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), key)
        .expect("server cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// What a test HTTP server does after each response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterResponse {
    KeepAlive,
    /// Answers with keep-alive and then closes anyway (an upstream's idle timeout firing).
    Close,
}

/// A loopback HTTP/1.1 server (optionally TLS) answering `200` with body `conn=<n> req=<m>`.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn plain(after: AfterResponse) -> Self {
        Self::start(None, after)
    }

    fn tls(cfg: Arc<rustls::ServerConfig>) -> Self {
        Self::start(Some(cfg), AfterResponse::KeepAlive)
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, after: AfterResponse) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stop2) = (connections.clone(), stop.clone());
        accept_loop(listener, stop2, move |tcp| {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            match &tls {
                None => serve_http(tcp, n, after),
                Some(cfg) => {
                    if let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) {
                        serve_http(rustls::StreamOwned::new(conn, tcp), n, after);
                    }
                }
            }
        });
        Self {
            addr,
            connections,
            stop,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far, after waiting (up to 2 s) for at least `n`: the accept
    /// thread polls, so a connection the client completed may not be counted yet.
    fn connections(&self, n: usize) -> usize {
        poll_until(
            Duration::from_secs(2),
            &format!("{n} connections accepted"),
            || self.connections.load(Ordering::SeqCst) >= n,
        );
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Accepts until `stop` (or 60 s), handing each connection to `handle` on its own thread.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = Arc::new(handle);
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match listener.accept() {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
                    let h = handle.clone();
                    thread::spawn(move || h(tcp));
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
}

/// Reads one request head (bounded), or `None` at EOF or on error.
fn read_head(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

fn serve_http(mut s: impl Read + Write, conn: usize, after: AfterResponse) {
    let mut req = 0;
    while read_head(&mut s).is_some() {
        req += 1;
        let body = format!("conn={conn} req={req}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes())
            .and_then(|()| s.flush())
            .is_err()
            || after == AfterResponse::Close
        {
            return;
        }
    }
}

/// One GET over `conn`; returns the response body. Bounded by a 5 s timer.
async fn get(conn: &mut Conn, host: &str) -> String {
    let exchange = async {
        let req = format!("GET /probe HTTP/1.1\r\nHost: {host}\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write request");
        conn.flush().await.expect("flush");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = conn.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "upstream closed before a full response");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if buf.len() >= end + 4 + len {
                    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
                    return text[end + 4..end + 4 + len].to_owned();
                }
            }
            assert!(buf.len() < 64 * 1024, "response too large");
        }
    };
    future::or(exchange, async {
        glommio::timer::sleep(IO_TIMEOUT).await;
        panic!("exchange timed out");
    })
    .await
}

/// `connect` that must fail; returns the error.
async fn connect_err(p: &ShardUpstreams, t: &Target) -> UpstreamError {
    match p.connect(t).await {
        Ok(c) => panic!("connect to {t} unexpectedly succeeded ({:?})", c.conn),
        Err(e) => e,
    }
}

async fn connect_ok(p: &ShardUpstreams, t: &Target) -> Pooled<Conn> {
    match p.connect(t).await {
        Ok(c) => c,
        Err(e) => panic!("connect to {t} failed: {e} ({})", e.kind()),
    }
}

/// A CONNECT proxy thread: requires `Proxy-Authorization: <expect_auth>` (when given), then
/// tunnels to the requested 127.0.0.1/localhost port. Records what it saw.
/// (Also the CONNECT proxy of the stream transports' tests, `transport.rs`.)
pub(crate) struct TestProxy {
    pub(crate) addr: SocketAddr,
    pub(crate) tunnels: Arc<AtomicUsize>,
    pub(crate) seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl TestProxy {
    pub(crate) fn start(expect_auth: Option<String>) -> Self {
        Self::start_with(expect_auth, None)
    }

    /// An `https://` proxy: TLS with `tls` first, then the same CONNECT exchange inside it.
    fn start_tls(expect_auth: Option<String>, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(expect_auth, Some(tls))
    }

    fn start_with(expect_auth: Option<String>, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tunnels = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t2, s2) = (tunnels.clone(), seen.clone());
        accept_loop(listener, stop.clone(), move |client| match &tls {
            None => {
                let mut client = client;
                if let Some(up) = open_tunnel(&mut client, expect_auth.as_deref(), &s2, &t2) {
                    pipe(client, up);
                }
            }
            Some(cfg) => {
                let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(conn, client);
                if let Some(up) = open_tunnel(&mut s, expect_auth.as_deref(), &s2, &t2) {
                    let rustls::StreamOwned { conn, sock } = s;
                    pipe_tls(conn, sock, up);
                }
            }
        });
        Self {
            addr,
            tunnels,
            seen,
            stop,
        }
    }

    fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}{}", self.addr)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The proxy's side of a CONNECT exchange over `client`: requires `Proxy-Authorization:
/// <expect_auth>` (when given), records the head in `seen`, connects to the requested port on
/// 127.0.0.1 and answers 200. Returns the upstream connection, or `None` after refusing.
fn open_tunnel(
    client: &mut (impl Read + Write),
    expect_auth: Option<&str>,
    seen: &Mutex<Vec<String>>,
    tunnels: &AtomicUsize,
) -> Option<TcpStream> {
    let head = String::from_utf8_lossy(&read_head(client)?).into_owned();
    seen.lock().expect("lock").push(head.clone());
    let auth = head
        .lines()
        .find_map(|l| l.strip_prefix("Proxy-Authorization: "));
    if expect_auth.is_some() && auth != expect_auth {
        let _ = client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
        let _ = client.flush();
        return None;
    }
    let Some(authority) = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.strip_suffix(" HTTP/1.1"))
    else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let _ = client.flush();
        return None;
    };
    // Loopback only: the test never tunnels anywhere else.
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let up = port.and_then(|p| {
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], p)), IO_TIMEOUT).ok()
    });
    let Some(up) = up else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        let _ = client.flush();
        return None;
    };
    tunnels.fetch_add(1, Ordering::SeqCst);
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .and_then(|()| client.flush())
        .ok()?;
    let _ = up.set_read_timeout(Some(IO_TIMEOUT));
    Some(up)
}

/// Copies both ways between the plaintext of a TLS session with the client (`conn` over
/// `client`) and `up`, until either side closes. The session is shared under a lock; socket
/// reads happen outside it.
fn pipe_tls(conn: rustls::ServerConnection, client: TcpStream, up: TcpStream) {
    let (Ok(client_w), Ok(client_w2), Ok(up_r)) =
        (client.try_clone(), client.try_clone(), up.try_clone())
    else {
        return;
    };
    let conn = Arc::new(Mutex::new(conn));
    let flush = |c: &mut rustls::ServerConnection, to: &mut TcpStream| -> bool {
        while c.wants_write() {
            if c.write_tls(to).is_err() {
                return false;
            }
        }
        true
    };
    let c2 = conn.clone();
    let down = thread::spawn(move || {
        let (mut up_r, mut client_w) = (up_r, client_w);
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = up_r.read(&mut buf) {
            let mut c = c2.lock().expect("lock");
            if c.writer().write_all(&buf[..n]).is_err() || !flush(&mut c, &mut client_w) {
                return;
            }
        }
        let mut c = c2.lock().expect("lock");
        c.send_close_notify();
        flush(&mut c, &mut client_w);
    });
    let (mut client_r, mut client_w, mut up_w) = (client, client_w2, up);
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = client_r.read(&mut buf) {
        let mut plain = Vec::new();
        {
            let mut c = conn.lock().expect("lock");
            let mut records = &buf[..n];
            while !records.is_empty() {
                if c.read_tls(&mut records).is_err() || c.process_new_packets().is_err() {
                    return;
                }
            }
            // Err(WouldBlock) once the plaintext there is has been read; what was read stays.
            let _ = c.reader().read_to_end(&mut plain);
            if !flush(&mut c, &mut client_w) {
                return;
            }
        }
        if up_w.write_all(&plain).is_err() {
            break;
        }
    }
    let _ = up_w.shutdown(std::net::Shutdown::Write);
    let _ = down.join();
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    };
    let t = thread::spawn(move || copy(a, b2));
    copy(b, a2);
    let _ = t.join();
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn plain_connect_and_http_exchange() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let port = server.port();
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let t = Target::new(false, "127.0.0.1", port);
        let mut c = connect_ok(&p, &t).await;
        assert!(!c.reused);
        assert!(!c.conn.is_tls());
        assert_eq!(c.target(), &t);
        assert_eq!(
            get(&mut c.conn, &t.authority().to_string()).await,
            "conn=1 req=1"
        );
        assert_eq!(get(&mut c.conn, "x").await, "conn=1 req=2");
        assert_eq!(p.stats().opened, 1);
    });
    assert_eq!(server.connections(1), 1);
}

#[test]
fn tls_with_test_ca_in_ca_files_succeeds() {
    let pki = TestPki::new();
    let server =
        Server::tls(pki.server_config(&[&rustls::version::TLS13, &rustls::version::TLS12]));
    let (port, ca) = (server.port(), pki.ca_file.clone());
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.ca_files = vec![ca];
        let p = pool(&cfg);
        let t = Target::new(true, "localhost", port);
        let mut c = connect_ok(&p, &t).await;
        assert!(c.conn.is_tls());
        assert_eq!(c.conn.alpn(), Some(&b"http/1.1"[..]));
        assert_eq!(
            get(&mut c.conn, &t.authority().to_string()).await,
            "conn=1 req=1"
        );
    });
    assert_eq!(server.connections(1), 1);
}

#[test]
fn tls_without_the_ca_fails_with_a_certificate_error_502() {
    let pki = TestPki::new();
    let server = Server::tls(pki.server_config(&[&rustls::version::TLS13]));
    let port = server.port();
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let e = connect_err(&p, &Target::new(true, "localhost", port)).await;
        assert_eq!((e.kind(), e.status()), ("tls_certificate", 502), "{e}");
        assert!(e.retry_safe());
        assert!(e.to_string().contains(&format!("localhost:{port}")), "{e}");
    });
}

#[test]
fn tls_min_version_1_3_against_a_1_2_only_server_fails() {
    let pki = TestPki::new();
    let server = Server::tls(pki.server_config(&[&rustls::version::TLS12]));
    let (port, ca) = (server.port(), pki.ca_file.clone());
    on_executor(move || async move {
        let t = Target::new(true, "localhost", port);
        let mut cfg = upstream_cfg();
        cfg.ca_files = vec![ca];
        // Control: the same server is fine with TLS 1.2 allowed.
        let mut c = connect_ok(&pool(&cfg), &t).await;
        assert_eq!(get(&mut c.conn, "localhost").await, "conn=1 req=1");
        cfg.tls_min_version = TlsVersion::V1_3;
        let e = connect_err(&pool(&cfg), &t).await;
        assert_eq!((e.kind(), e.status()), ("tls", 502), "{e}");
    });
}

#[test]
fn closed_port_is_502_connect() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let e = connect_err(&p, &Target::new(false, "127.0.0.1", port)).await;
        assert_eq!((e.kind(), e.status()), ("connect", 502), "{e}");
        assert!(e.retry_safe());
        assert!(
            matches!(&e, UpstreamError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
        );
    });
}

/// A listener with a zero backlog that never accepts: once its accept queue is full, Linux drops
/// further SYNs, so a connect hangs — a blackhole on loopback.
fn blackhole() -> Option<(socket2::Socket, Vec<TcpStream>, u16)> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).ok()?;
    s.listen(0).ok()?;
    let addr = s.local_addr().ok()?.as_socket()?;
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => fillers.push(c),
            Err(_) => return Some((s, fillers, addr.port())),
        }
    }
    None
}

#[test]
fn blackholed_connect_times_out_504() {
    let Some((_listener, _fillers, port)) = blackhole() else {
        panic!("could not make a loopback blackhole (the accept queue never filled)");
    };
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.connect_timeout = Duration::from_millis(300);
        let p = pool(&cfg);
        let started = Instant::now();
        let e = connect_err(&p, &Target::new(false, "127.0.0.1", port)).await;
        assert_eq!((e.kind(), e.status()), ("timeout_connect", 504), "{e}");
        assert!(e.retry_safe());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn released_connection_is_reused() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let port = server.port();
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let t = Target::new(false, "127.0.0.1", port);
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "h").await, "conn=1 req=1");
        p.release(&t, c);
        assert_eq!(p.idle_count(&t), 1);
        let mut c = connect_ok(&p, &t).await;
        assert!(c.reused);
        assert_eq!(c.exchanges(), 1);
        assert_eq!(p.idle_count(&t), 0);
        assert_eq!(get(&mut c.conn, "h").await, "conn=1 req=2");
        assert_eq!((p.stats().opened, p.stats().reused), (1, 1));
    });
    assert_eq!(server.connections(1), 1);
}

#[test]
fn tls_connection_is_reused_after_release() {
    let pki = TestPki::new();
    let server = Server::tls(pki.server_config(&[&rustls::version::TLS13]));
    let (port, ca) = (server.port(), pki.ca_file.clone());
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.ca_files = vec![ca];
        let p = pool(&cfg);
        let t = Target::new(true, "localhost", port);
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "localhost").await, "conn=1 req=1");
        p.release(&t, c);
        let mut c = connect_ok(&p, &t).await;
        assert!(c.reused);
        assert_eq!(get(&mut c.conn, "localhost").await, "conn=1 req=2");
    });
    assert_eq!(server.connections(1), 1);
}

/// Waits until the server's FIN has reached `conn`'s socket (a peek that returns EOF), so the
/// pool's own liveness peek sees it too: the event itself, not a guess at how long it takes.
/// Bounded by a 5 s timer.
async fn peer_closed(conn: &Conn) {
    let mut one = [0u8; 1];
    let peeked = future::or(async { Some(conn.tcp().peek(&mut one).await) }, async {
        glommio::timer::sleep(IO_TIMEOUT).await;
        None
    })
    .await;
    assert!(
        matches!(peeked, Some(Ok(0))),
        "the server did not close the connection: {peeked:?}"
    );
}

/// Polls `done` every millisecond until it holds (at most 5 s): for waiting on a background
/// task's timer, whose effect has no event of its own to wait for.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn connection_closed_by_the_server_while_idle_is_not_reused() {
    let server = Server::plain(AfterResponse::Close);
    let port = server.port();
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let t = Target::new(false, "127.0.0.1", port);
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "h").await, "conn=1 req=1");
        peer_closed(&c.conn).await;
        p.release(&t, c);
        assert_eq!(p.sweep(Instant::now()), 1);
        assert_eq!(p.stats().dead, 1);
        let mut c = connect_ok(&p, &t).await;
        assert!(!c.reused);
        assert_eq!(get(&mut c.conn, "h").await, "conn=2 req=1");
    });
    assert_eq!(server.connections(2), 2);
}

#[test]
fn dead_idle_connection_is_skipped_on_checkout() {
    let server = Server::plain(AfterResponse::Close);
    let port = server.port();
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let t = Target::new(false, "127.0.0.1", port);
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "h").await, "conn=1 req=1");
        peer_closed(&c.conn).await;
        p.release(&t, c);
        // No sweep: the checkout itself must notice the EOF.
        let mut c = connect_ok(&p, &t).await;
        assert!(!c.reused);
        assert_eq!(p.stats().dead, 1);
        assert_eq!(get(&mut c.conn, "h").await, "conn=2 req=1");
    });
}

/// The configured limit and timeout reach the pool (its decisions are unit-tested with a fake
/// clock in `upstream::pool`): expiry is shown by sweeping at a `now` one timeout ahead.
#[test]
fn idle_timeout_and_per_host_limit() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let port = server.port();
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.pool_max_idle_per_host = 2;
        let p = pool(&cfg);
        let t = Target::new(false, "127.0.0.1", port);
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(connect_ok(&p, &t).await);
        }
        for c in conns {
            p.release(&t, c);
        }
        assert_eq!(p.idle_count(&t), 2);
        assert_eq!(p.stats().evicted, 1);
        assert_eq!(
            p.sweep(Instant::now()),
            0,
            "fresh open connections were closed"
        );
        assert_eq!(p.sweep(Instant::now() + cfg.idle_timeout), 2);
        assert_eq!(p.stats().expired, 2);
        assert_eq!(p.idle_count(&t), 0);
        let c = connect_ok(&p, &t).await;
        assert!(!c.reused);
    });
    assert_eq!(server.connections(4), 4);
}

/// With `idle_timeout = 0` every idle connection is stale by the time it is asked for: the
/// checkout (not only the sweep) applies the configured timeout.
#[test]
fn idle_timeout_zero_never_reuses() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let port = server.port();
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.idle_timeout = Duration::ZERO;
        let p = pool(&cfg);
        let t = Target::new(false, "127.0.0.1", port);
        let c = connect_ok(&p, &t).await;
        p.release(&t, c);
        assert_eq!(p.idle_count(&t), 1);
        let c = connect_ok(&p, &t).await;
        assert!(!c.reused, "an expired connection was handed out");
        assert_eq!((p.stats().expired, p.stats().opened), (1, 2));
    });
    assert_eq!(server.connections(2), 2);
}

#[test]
fn background_sweep_closes_expired_connections_and_ends_with_its_owner() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let port = server.port();
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        // Stale at once: the first tick expires it, whatever the clock says.
        cfg.idle_timeout = Duration::ZERO;
        let p = std::rc::Rc::new(pool(&cfg));
        let sweeper = ShardUpstreams::sweep_every(
            std::rc::Rc::downgrade(&p),
            |p: &ShardUpstreams| p,
            Duration::from_millis(1),
        );
        let sweeper = glommio::spawn_local(sweeper);
        let t = Target::new(false, "127.0.0.1", port);
        let c = connect_ok(&p, &t).await;
        p.release(&t, c);
        assert_eq!(p.idle_count(&t), 1);
        until("the sweep", || p.idle_count(&t) == 0).await;
        assert_eq!(p.stats().expired, 1);
        drop(p);
        let ended = future::or(
            async {
                sweeper.await;
                true
            },
            async {
                glommio::timer::sleep(IO_TIMEOUT).await;
                false
            },
        )
        .await;
        assert!(ended, "the sweeper outlived its owner");
    });
}

#[test]
fn a_connection_is_never_filed_under_another_target() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let port = server.port();
    on_executor(move || async move {
        let p = pool(&upstream_cfg());
        let t = Target::new(false, "127.0.0.1", port);
        let other = Target::new(false, "localhost", port);
        let c = connect_ok(&p, &t).await;
        p.release(&other, c);
        assert_eq!((p.idle_count(&t), p.idle_count(&other)), (0, 0));
    });
}

#[test]
fn connect_proxy_with_credentials_tunnels_tls() {
    let pki = TestPki::new();
    let server = Server::tls(pki.server_config(&[&rustls::version::TLS13]));
    let expect = "Basic dXNlcjpwYSBzcw=="; // base64("user:pa ss")
    let proxy = TestProxy::start(Some(expect.to_owned()));
    let (port, ca, url) = (
        server.port(),
        pki.ca_file.clone(),
        proxy.url("user:pa%20ss@"),
    );
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.ca_files = vec![ca];
        cfg.proxy = Some(url);
        let settings = ProxySettings::from_config(&cfg, &|_| None).expect("proxy settings");
        let p = pool_via(&cfg, settings);
        let t = Target::new(true, "localhost", port);
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "localhost").await, "conn=1 req=1");
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("pa ss") && !shown.contains("dXNlcjpwYSBzcw"),
            "{shown}"
        );
    });
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 1);
    assert_eq!(server.connections(1), 1);
    let seen = proxy.seen.lock().expect("lock");
    assert!(
        seen[0].starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\n")),
        "{}",
        seen[0]
    );
}

#[test]
fn https_proxy_is_reached_over_tls_with_the_configured_roots_and_tunnels_tls() {
    let pki = TestPki::new();
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    let server = Server::tls(pki.server_config(versions));
    let expect = "Basic dXNlcjpwYSBzcw=="; // base64("user:pa ss")
    let proxy = TestProxy::start_tls(Some(expect.to_owned()), pki.server_config(versions));
    let (port, ca) = (server.port(), pki.ca_file.clone());
    // The proxy's certificate names localhost: the URL must too.
    let url = format!("https://user:pa%20ss@localhost:{}", proxy.addr.port());
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.ca_files = vec![ca];
        cfg.proxy = Some(url);
        let settings = ProxySettings::from_config(&cfg, &|_| None).expect("proxy settings");
        let p = pool_via(&cfg, settings);
        let t = Target::new(true, "localhost", port);
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "localhost").await, "conn=1 req=1");
        // The connection goes back to the pool and is reused, TLS inside TLS.
        p.release(&t, c);
        let mut c = connect_ok(&p, &t).await;
        assert!(c.reused);
        assert_eq!(get(&mut c.conn, "localhost").await, "conn=1 req=2");
        // A plain http target through the same proxy: CONNECT inside the proxy's TLS only.
        let plain = Server::plain(AfterResponse::KeepAlive);
        let mut c = connect_ok(&p, &Target::new(false, "127.0.0.1", plain.port())).await;
        assert_eq!(get(&mut c.conn, "h").await, "conn=1 req=1");
    });
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 2);
    let seen = proxy.seen.lock().expect("lock");
    assert!(
        seen[0].starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\n"))
            && seen[0].contains(&format!("Proxy-Authorization: {expect}\r\n")),
        "{}",
        seen[0]
    );
}

#[test]
fn https_proxy_with_an_untrusted_certificate_is_502_proxy() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let server = Server::tls(pki.server_config(&[&rustls::version::TLS13]));
    // The proxy's certificate comes from a CA the broker does not trust.
    let proxy = TestProxy::start_tls(None, other.server_config(&[&rustls::version::TLS13]));
    let (port, ca) = (server.port(), pki.ca_file.clone());
    let url = format!("https://user:hunter2@localhost:{}", proxy.addr.port());
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.ca_files = vec![ca];
        cfg.proxy = Some(url);
        let settings = ProxySettings::from_config(&cfg, &|_| None).expect("proxy settings");
        let p = pool_via(&cfg, settings);
        let e = connect_err(&p, &Target::new(true, "localhost", port)).await;
        assert_eq!(
            (e.kind(), e.status(), e.retry_safe()),
            ("proxy", 502, true),
            "{e}"
        );
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("TLS") && shown.contains("certificate") && !shown.contains("hunter2"),
            "{shown}"
        );
    });
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 0);
    assert_eq!(server.connections(0), 0);
}

#[test]
fn connect_proxy_refusal_is_502_proxy_without_the_password() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let proxy = TestProxy::start(Some("Basic something-else".to_owned()));
    let (port, url) = (server.port(), proxy.url("user:hunter2@"));
    on_executor(move || async move {
        let ep = ProxyEndpoint::parse(&url, "test").expect("proxy url");
        let p = pool_via(
            &upstream_cfg(),
            ProxySettings::with_proxy(ep, NoProxy::default()),
        );
        let e = connect_err(&p, &Target::new(false, "127.0.0.1", port)).await;
        assert_eq!((e.kind(), e.status()), ("proxy", 502), "{e}");
        assert!(matches!(
            e,
            UpstreamError::ProxyRefused {
                status: Some(407),
                ..
            }
        ));
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    });
    assert_eq!(server.connections(0), 0);
}

#[test]
fn no_proxy_bypasses_the_environment_proxy() {
    let server = Server::plain(AfterResponse::KeepAlive);
    let proxy = TestProxy::start(None);
    let (port, url) = (server.port(), proxy.url(""));
    on_executor(move || async move {
        let mut cfg = upstream_cfg();
        cfg.use_env_proxy = true;
        let t = Target::new(false, "127.0.0.1", port);
        // Control: HTTP_PROXY alone sends the connection through the proxy.
        let env_proxy = |k: &str| (k == "HTTP_PROXY").then(|| url.clone());
        let p = pool_via(
            &cfg,
            ProxySettings::from_config(&cfg, &env_proxy).expect("settings"),
        );
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "h").await, "conn=1 req=1");
        // With NO_PROXY naming the host, the same target is reached directly.
        let env_bypass = |k: &str| match k {
            "HTTP_PROXY" => Some(url.clone()),
            "NO_PROXY" => Some("example.com, 127.0.0.1".to_owned()),
            _ => None,
        };
        let p = pool_via(
            &cfg,
            ProxySettings::from_config(&cfg, &env_bypass).expect("settings"),
        );
        let mut c = connect_ok(&p, &t).await;
        assert_eq!(get(&mut c.conn, "h").await, "conn=2 req=1");
    });
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 1);
    assert_eq!(server.connections(2), 2);
}
