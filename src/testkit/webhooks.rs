//! Both ends of the webhook relay, for tests and `demo`: an SCM that signs and posts webhooks
//! ([`post`], [`github_headers`]) and a vendor that receives them ([`MockVendor`]) and can be
//! switched down (it answers 503, or drops the connection) and back up.
//!
//! Plain blocking std networking on loopback; the vendor serves each connection on its own
//! thread and records every request it answered 2xx, in order.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A webhook the vendor accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the vendor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200, and the webhook is recorded.
    Up = 0,
    /// 503 with `Retry-After: 0`.
    Unavailable = 1,
    /// Reads the request, closes without an answer.
    Drop = 2,
}

#[derive(Debug)]
struct Shared {
    mode: AtomicU8,
    received: Mutex<Vec<Received>>,
    /// Requests answered otherwise than 2xx (or dropped).
    refused: AtomicU64,
    stop: AtomicBool,
}

/// A vendor webhook endpoint on loopback.
#[derive(Debug)]
pub struct MockVendor {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockVendor {
    /// Listens on an ephemeral loopback port, in `mode`.
    pub fn start(mode: Mode) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(mode as u8),
            received: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mock-vendor".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let s = s.clone();
                        std::thread::spawn(move || serve(stream, &s));
                    }
                }
            })?;
        Ok(Self { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Every webhook answered 2xx so far, in the order they arrived.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requests refused or dropped so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for MockVendor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Reads one request (head + `Content-Length` body); `None` when the peer closed or it is
/// malformed.
fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(end)) = req.parse(&buf) {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(Received {
                headers,
                body: buf[end..end + len].to_vec(),
            });
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    }
}

fn serve(mut stream: TcpStream, s: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    while let Some(req) = read_request(&mut stream) {
        match s.mode.load(Ordering::Relaxed) {
            0 => {
                if let Ok(mut r) = s.received.lock() {
                    r.push(req);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
            1 => {
                s.refused.fetch_add(1, Ordering::Relaxed);
                let _ = stream.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n",
                );
            }
            _ => {
                s.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The headers GitHub sends with a delivery of `event`, signed with `secret`.
pub fn github_headers(
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: &str,
) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("User-Agent".into(), "GitHub-Hookshot/044aadd".into()),
        ("X-GitHub-Event".into(), event.into()),
        ("X-GitHub-Delivery".into(), delivery.into()),
        (
            "X-Hub-Signature-256".into(),
            crate::relay::verify::sign_sha256(secret, body),
        ),
    ]
}

/// What the broker answered a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// POSTs `body` with `headers` to `http://<broker>/relay/<relay>` (one connection) and returns
/// the answer.
pub fn post(
    broker: SocketAddr,
    relay: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&broker, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("POST /relay/{relay} HTTP/1.1\r\nHost: {broker}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let end = match resp.parse(&out) {
        Ok(httparse::Status::Complete(end)) => end,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no response head",
            ));
        }
    };
    Ok(Answer {
        status: resp.code.unwrap_or(0),
        retry_after: resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned()),
        body: String::from_utf8_lossy(&out[end..]).into_owned(),
    })
}
