//! One authenticated `GET` to an SCM's base URL, from this host, with the broker's upstream TLS
//! settings and proxy: what `wgbroker test` asks of each `[[scm]]` entry.
//!
//! Blocking std sockets and rustls' `StreamOwned`: a one-off check needs no executor, and the
//! TLS configuration and the proxy decision are the runtime's own ([`crate::upstream::tls`],
//! [`crate::upstream::proxy`]). Nothing here logs or returns a header value.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::allowlist::CanonUrl;
use crate::secret::Secret;
use crate::upstream::Target;
use crate::upstream::proxy::{ProxyEndpoint, ProxySettings};

/// Largest response head read (status line and headers).
const MAX_HEAD: usize = 16 << 10;

/// What went wrong, by the step that failed (each has its own fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The URL is not one the broker could forward to.
    Url(String),
    /// The name did not resolve.
    Resolve(String),
    /// No TCP connection (refused, timed out, unreachable).
    Connect(String),
    /// The CONNECT proxy refused or failed.
    Proxy(String),
    /// The TLS handshake failed (an unknown CA, a name mismatch, a version too old).
    Tls(String),
    /// The server's answer was not HTTP.
    Http(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Url(m) => write!(f, "invalid URL: {m}"),
            ProbeError::Resolve(m) => write!(f, "name does not resolve: {m}"),
            ProbeError::Connect(m) => write!(f, "cannot connect: {m}"),
            ProbeError::Proxy(m) => write!(f, "proxy: {m}"),
            ProbeError::Tls(m) => write!(f, "TLS: {m}"),
            ProbeError::Http(m) => write!(f, "HTTP: {m}"),
        }
    }
}

/// The answer to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The response status.
    pub status: u16,
    /// The proxy it went through (`host:port`), if any.
    pub proxy: Option<String>,
}

/// What to probe with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: ProxySettings,
    /// Connect, TLS and response timeouts, each.
    pub timeout: Duration,
}

trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

/// `GET url` with `header` (name, secret value) added; the status, or the step that failed.
pub fn get(url: &str, header: Option<(&str, &Secret)>, s: &Settings) -> Result<Probe, ProbeError> {
    let canon = CanonUrl::parse(url).map_err(|e| ProbeError::Url(e.to_string()))?;
    let target = Target::from_url(&canon);
    let proxy = s.proxy.proxy_for(&target).cloned();
    let mut io: Box<dyn Io> = match &proxy {
        Some(p) => through_proxy(p, &target, s)?,
        None => Box::new(connect(target.bare_host(), target.port, s.timeout)?),
    };
    if target.tls {
        io = tls(io, target.bare_host(), s)?;
    }
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wgbroker-test\r\nAccept: */*\r\nConnection: close\r\n",
        canon.request_target(),
        target.authority()
    );
    if let Some((name, value)) = header {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value.expose());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .and_then(|()| io.flush())
        .map_err(|e| classify_io(&e, target.tls))?;
    let status = read_status(&mut io).map_err(|e| match e {
        Head::Io(e) => classify_io(&e, target.tls),
        Head::Bad(m) => ProbeError::Http(m),
    })?;
    Ok(Probe {
        status,
        proxy: proxy.map(|p| p.peer()),
    })
}

/// Whether a stream to `target` opens from this host (through the proxy `s` names for it, if
/// any) and, for a TLS target, whether its TLS handshake completes with `s.tls` (the server's
/// certificate checked). Nothing is sent after that. Returns the proxy it went through.
pub fn reach(target: &Target, s: &Settings) -> Result<Option<String>, ProbeError> {
    let proxy = s
        .proxy
        .proxy_for(&Target::new(true, target.host.clone(), target.port))
        .cloned();
    let io: Box<dyn Io> = match &proxy {
        Some(p) => through_proxy(p, target, s)?,
        None => Box::new(connect(target.bare_host(), target.port, s.timeout)?),
    };
    if target.tls {
        tls(io, target.bare_host(), s)?;
    }
    Ok(proxy.map(|p| p.peer()))
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ProbeError::Resolve(format!("{host}: {e}")))?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| ProbeError::Connect(format!("{a}: {e}")))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(ProbeError::Connect(
        last.unwrap_or_else(|| format!("{host}: no address")),
    ))
}

fn tls(io: Box<dyn Io>, host: &str, s: &Settings) -> Result<Box<dyn Io>, ProbeError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ProbeError::Tls(format!("{host}: {e}")))?;
    let conn = rustls::ClientConnection::new(s.tls.clone(), name)
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let mut stream = rustls::StreamOwned::new(conn, io);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| classify_io(&e, true))?;
    }
    Ok(Box::new(stream))
}

/// TCP (and TLS, for an `https://` proxy) to the proxy, then `CONNECT` to `target`.
fn through_proxy(
    p: &ProxyEndpoint,
    target: &Target,
    s: &Settings,
) -> Result<Box<dyn Io>, ProbeError> {
    let host = p
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = connect(&host, p.port(), s.timeout).map_err(|e| match e {
        ProbeError::Connect(m) | ProbeError::Resolve(m) => {
            ProbeError::Proxy(format!("cannot reach the proxy {}: {m}", p.peer()))
        }
        other => other,
    })?;
    let mut io: Box<dyn Io> = Box::new(tcp);
    if p.is_tls() {
        io = tls(io, &host, s).map_err(|e| ProbeError::Proxy(format!("{}: {e}", p.peer())))?;
    }
    let authority = format!("{}:{}", target.host, target.port);
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = p.authorization() {
        req.push_str("Proxy-Authorization: ");
        req.push_str(a.expose());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .map_err(|e| ProbeError::Proxy(format!("{}: {e}", p.peer())))?;
    match read_status(&mut io) {
        Ok(200) => Ok(io),
        Ok(code) => Err(ProbeError::Proxy(format!(
            "{} answered {code} to CONNECT {authority}",
            p.peer()
        ))),
        Err(Head::Io(e)) => Err(ProbeError::Proxy(format!("{}: {e}", p.peer()))),
        Err(Head::Bad(m)) => Err(ProbeError::Proxy(format!("{}: {m}", p.peer()))),
    }
}

enum Head {
    Io(std::io::Error),
    Bad(String),
}

/// Reads a response head byte by byte (nothing after it is consumed: a CONNECT tunnel's first
/// byte is the server's) and returns its status.
fn read_status(io: &mut Box<dyn Io>) -> Result<u16, Head> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(Head::Bad("response head too large".into()));
        }
        match io.read(&mut byte) {
            Ok(0) => return Err(Head::Bad("connection closed before a response".into())),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(Head::Io(e)),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(_) => resp.code.ok_or_else(|| Head::Bad("no status".into())),
        Err(e) => Err(Head::Bad(format!("not an HTTP response ({e})"))),
    }
}

/// An I/O error of a TLS stream carries rustls' own error: that is a TLS failure.
fn classify_io(e: &std::io::Error, tls: bool) -> ProbeError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) if tls => ProbeError::Tls(t.to_string()),
        _ => ProbeError::Connect(e.to_string()),
    }
}
