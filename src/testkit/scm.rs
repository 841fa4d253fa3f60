//! A small SCM-like HTTP/1.1 upstream on loopback, for tests and `demo`: GitHub-style API
//! routes that insist on the injected token, file downloads, an upload sink, a slow route, and
//! `GET /drop-next`, after which the connection reads its next request and closes without an
//! answer (an upstream that closed a kept-alive connection while the request was on its way). It
//! records every request it receives so tests can prove what did — and did not — reach it.
//!
//! Thread per connection ([`Listener`]), std only: it is a fixture, not part of the data plane.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::testkit::listener::Listener;

/// Connections served at once (a test that needs more is doing something else).
const MAX_CONNECTIONS: usize = 1024;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Request target exactly as received (path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// FNV-1a of the body, to compare with what was sent.
    pub body_hash: u64,
}

impl Seen {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// FNV-1a 64, the checksum the fixture reports for bodies.
pub fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a offset basis.
pub const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// Deterministic download content: byte `i` of any download.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// The running fixture; stops when dropped.
#[derive(Debug)]
pub struct MockScm {
    listener: Listener,
    token: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes of `/download/N` bodies written to the kernel so far (all connections).
    download_written: Arc<AtomicU64>,
}

impl MockScm {
    /// Starts on `127.0.0.1:0`; API routes require `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> io::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let download_written = Arc::new(AtomicU64::new(0));
        let (seen2, tok, written) = (seen.clone(), token.to_owned(), download_written.clone());
        let listener = Listener::start("mock-scm", MAX_CONNECTIONS, move |conn| {
            let _ = serve(conn, &seen2, &tok, &written);
        })?;
        Ok(Self {
            listener,
            token: token.to_owned(),
            seen,
            download_written,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// Bytes of `/download/N` bodies written so far, all connections together: what a reader
    /// that stopped reading let through (the kernel's socket buffers fill, then writes block).
    pub fn download_bytes_written(&self) -> u64 {
        self.download_written.load(Ordering::Relaxed)
    }

    /// The token it expects.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A handle on the requests received, for another thread to wait on (a signal or drain sent
    /// once a request is known to be in flight) while the test keeps the server.
    pub fn seen_handle(&self) -> SeenLog {
        SeenLog(self.seen.clone())
    }
}

/// The requests a [`MockScm`] has received, shared with a waiting thread.
#[derive(Debug, Clone)]
pub struct SeenLog(Arc<Mutex<Vec<Seen>>>);

impl SeenLog {
    /// How many requests arrived so far (counted when the head is read, before any answer).
    pub fn len(&self) -> usize {
        self.count(|_| true)
    }

    /// Whether none arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many requests received so far match `pred`.
    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.0
            .lock()
            .map(|v| v.iter().filter(|s| pred(s)).count())
            .unwrap_or_default()
    }
}

fn read_body(r: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> io::Result<(u64, u64)> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.trim().to_owned())
    };
    let mut len = 0u64;
    let mut hash = FNV_INIT;
    let mut buf = vec![0u8; 64 * 1024];
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
            if size == 0 {
                // Trailers until the blank line.
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                break;
            }
            hash = hash_exactly(r, size, &mut buf, hash)?;
            len += size;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(cl) = get("content-length") {
        let cl: u64 = cl
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "length"))?;
        hash = hash_exactly(r, cl, &mut buf, hash)?;
        len += cl;
    }
    Ok((len, hash))
}

/// Reads exactly `n` bytes of body through `buf`, folding them into the FNV-1a `hash`.
fn hash_exactly(
    r: &mut BufReader<TcpStream>,
    n: u64,
    buf: &mut [u8],
    mut hash: u64,
) -> io::Result<u64> {
    let mut left = n;
    while left > 0 {
        let cap = left.min(buf.len() as u64) as usize;
        let got = r.read(&mut buf[..cap])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hash = fnv1a(&buf[..got], hash);
        left -= got as u64;
    }
    Ok(hash)
}

/// The body of a 404 from an SCM API (GitHub's shape); the load-test upstream answers the same.
pub const NOT_FOUND: &[u8] = br#"{"message":"Not Found"}"#;

fn respond(w: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
    let reason = crate::http::reason_phrase(status);
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nSet-Cookie: session=upstream\r\nX-Upstream: mock-scm\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)
}

/// A request head as read: method, target, headers.
type Head = (String, String, Vec<(String, String)>);

/// Reads a request head; `None` at the end of the stream or past 200 headers (the connection is
/// then dropped).
fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            return Ok(Some((method, target, headers)));
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        if headers.len() > 200 {
            return Ok(None);
        }
    }
}

/// Answers `/download/N`: `n` bytes of [`pattern_byte`], in 64 KiB writes.
fn download(w: &mut TcpStream, n: u64, written: &AtomicU64) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
    )?;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < n {
        let take = (n - off).min(chunk.len() as u64) as usize;
        for (i, b) in chunk[..take].iter_mut().enumerate() {
            *b = pattern_byte(off + i as u64);
        }
        w.write_all(&chunk[..take])?;
        written.fetch_add(take as u64, Ordering::Relaxed);
        off += take as u64;
    }
    Ok(())
}

fn serve(c: TcpStream, seen: &Mutex<Vec<Seen>>, tok: &str, out: &AtomicU64) -> io::Result<()> {
    let (conn, token, written) = (c, tok, out);
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut drop_next = false;
    loop {
        let Some((method, target, headers)) = read_head(&mut r)? else {
            return Ok(());
        };
        let (body_len, body_hash) = read_body(&mut r, &headers)?;
        let s = Seen {
            method: method.clone(),
            target: target.clone(),
            headers,
            body_len,
            body_hash,
        };
        let authorized = s.header("authorization") == Some(&format!("Bearer {token}"));
        if let Ok(mut v) = seen.lock() {
            v.push(s.clone());
        }
        if drop_next {
            return Ok(());
        }
        let path = target.split('?').next().unwrap_or("");
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        match (method.as_str(), segs.as_slice()) {
            (_, ["api", "v3", ..]) if !authorized => {
                respond(
                    &mut w,
                    401,
                    "application/json",
                    br#"{"message":"Bad credentials"}"#,
                )?;
            }
            ("GET", ["api", "v3", "repos", owner, repo]) => {
                let body = format!(
                    r#"{{"full_name":"{owner}/{repo}","private":true,"default_branch":"main"}}"#
                );
                respond(&mut w, 200, "application/json", body.as_bytes())?;
            }
            ("GET", ["api", "v3", "repos", _, _, "pulls"]) => {
                respond(
                    &mut w,
                    200,
                    "application/json",
                    br#"[{"number":7,"title":"Fix it"}]"#,
                )?;
            }
            ("GET", ["api", "v3", "repos", _, _, "contents", rest @ ..]) => {
                let name = rest.join("/");
                let body =
                    format!(r#"{{"path":"{name}","encoding":"base64","content":"aGVsbG8K"}}"#);
                respond(&mut w, 200, "application/json", body.as_bytes())?;
            }
            ("GET", ["download", n]) => {
                download(&mut w, n.parse().unwrap_or(0).min(1 << 32), written)?;
            }
            ("GET", ["chunked", n]) => {
                let n: usize = n.parse().unwrap_or(0).min(1 << 24);
                write!(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                let data: Vec<u8> = (0..n as u64).map(pattern_byte).collect();
                for part in data.chunks(1000) {
                    write!(w, "{:x}\r\n", part.len())?;
                    w.write_all(part)?;
                    w.write_all(b"\r\n")?;
                }
                w.write_all(b"0\r\n\r\n")?;
            }
            ("POST" | "PUT", ["upload"]) => {
                let body = format!(r#"{{"bytes":{body_len},"fnv":"{body_hash:016x}"}}"#);
                respond(&mut w, 200, "application/json", body.as_bytes())?;
            }
            ("GET" | "POST", ["slow", secs]) => {
                thread::sleep(Duration::from_secs(secs.parse().unwrap_or(1).min(30)));
                respond(&mut w, 200, "text/plain", b"late")?;
            }
            ("GET", ["drop-next"]) => {
                drop_next = true;
                respond(&mut w, 200, "text/plain", b"armed")?;
            }
            ("GET", ["redirect"]) => {
                write!(
                    w,
                    "HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/\r\nContent-Length: 0\r\n\r\n"
                )?;
            }
            _ => respond(&mut w, 404, "application/json", NOT_FOUND)?,
        }
        w.flush()?;
        if s.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}
