//! The in-process load test's upstream: a small SCM-like HTTP/1.1 server on loopback, cheap per
//! request so that it is not what limits the broker. Thread per connection (the broker pools its
//! upstream connections, so there are few), at most [`MAX_CONNECTIONS`] at once.
//!
//! Routes (the same paths as the test kit's [`MockScm`](crate::testkit::scm::MockScm) where they
//! overlap, so `--upstream` can point at either):
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v3/...` | a small JSON document; `401` without `Authorization: Bearer <token>` |
//! | `GET /:owner/:repo/info/refs` | a git ref advertisement |
//! | `POST /:owner/:repo/git-upload-pack` | [`PACK_SIZE`] bytes of "pack" |
//! | `GET /download/N` | `N` bytes |
//! | `POST` or `PUT /upload` | reads the body, answers its length |
//! | anything else | `404` |

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use crate::http::ChunkedDecoder;
use crate::testkit::listener::Listener;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 4096;

/// Bytes of the `git-upload-pack` answer.
pub const PACK_SIZE: u64 = 256 << 10;

/// Largest download served (4 GiB).
const MAX_DOWNLOAD: u64 = 1 << 32;

/// The running upstream; stops accepting when dropped.
#[derive(Debug)]
pub struct Upstream {
    listener: Listener,
}

impl Upstream {
    /// Starts on `127.0.0.1:0`; `/api/v3` routes require `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> io::Result<Self> {
        let auth: Arc<[u8]> = format!("Bearer {token}").into_bytes().into();
        let listener = Listener::start("lt-upstream", MAX_CONNECTIONS, move |conn| {
            let _ = serve(conn, &auth);
        })?;
        Ok(Self { listener })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }
}

static FILL: [u8; 64 * 1024] = [b'd'; 64 * 1024];

const REFS: &[u8] = b"001e# service=git-upload-pack\n0000\
00fa6ecf0ef2c2dffb796033e5a02219af86ec6584e5 HEAD\0multi_ack thin-pack side-band side-band-64k ofs-delta shallow deepen-since deepen-not deepen-relative no-progress include-tag multi_ack_detailed symref=HEAD:refs/heads/main agent=git/2.43\n\
003f6ecf0ef2c2dffb796033e5a02219af86ec6584e5 refs/heads/main\n\
003e2c9e3b0f4c2b8a1d7e6f5a4b3c2d1e0f9a8b7c6d refs/heads/dev\n\
0000";

fn write_head(w: &mut impl Write, status: u16, ctype: &str, len: u64) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nX-Upstream: wgbroker-loadtest\r\n\r\n",
        crate::http::reason_phrase(status)
    )
}

fn respond(w: &mut impl Write, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
    write_head(w, status, ctype, body.len() as u64)?;
    w.write_all(body)
}

fn stream(w: &mut impl Write, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let k = n.min(FILL.len() as u64) as usize;
        w.write_all(&FILL[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Reads and discards a request body; returns its length.
fn discard_body(r: &mut BufReader<TcpStream>, length: u64, chunked: bool) -> io::Result<u64> {
    if chunked {
        let mut d = ChunkedDecoder::new();
        let mut total = 0u64;
        loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let step = d
                .decode(buf)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunked body"))?;
            total += step.data.len() as u64;
            let used = step.consumed;
            r.consume(used);
            if step.done {
                return Ok(total);
            }
        }
    }
    let mut left = length;
    while left > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = (buf.len() as u64).min(left) as usize;
        r.consume(k);
        left -= k as u64;
    }
    Ok(length)
}

fn serve(conn: TcpStream, auth: &[u8]) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut w = io::BufWriter::with_capacity(64 * 1024, conn.try_clone()?);
    let mut r = BufReader::with_capacity(64 * 1024, conn);
    let mut head = Vec::with_capacity(4096);
    loop {
        // Read the head, line by line, bounded.
        head.clear();
        loop {
            let before = head.len();
            let n = r.by_ref().take(16 * 1024).read_until(b'\n', &mut head)?;
            if n == 0 {
                return Ok(());
            }
            if head.len() > 64 * 1024 {
                return Ok(());
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            respond(&mut w, 400, "text/plain", b"bad request")?;
            w.flush()?;
            return Ok(());
        }
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("");
        let mut length = 0u64;
        let mut chunked = false;
        let mut authorized = false;
        let mut close = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("authorization") {
                authorized = h.value == auth;
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        let path = target.split('?').next().unwrap_or("");
        let mut segs = path.split('/').skip(1);
        let s: [&str; 4] = std::array::from_fn(|_| segs.next().unwrap_or(""));
        let (method, s) = (method.to_owned(), s.map(str::to_owned));
        let body = discard_body(&mut r, length, chunked)?;
        match (method.as_str(), [s[0].as_str(), s[1].as_str(), s[2].as_str(), s[3].as_str()]) {
            (_, ["api", "v3", ..]) if !authorized => respond(
                &mut w,
                401,
                "application/json",
                br#"{"message":"Bad credentials"}"#,
            )?,
            ("GET", ["api", "v3", ..]) => respond(
                &mut w,
                200,
                "application/json",
                br#"{"id":1296269,"full_name":"acme/app","private":true,"default_branch":"main","permissions":{"pull":true}}"#,
            )?,
            ("GET", [_, _, "info", "refs"]) => respond(
                &mut w,
                200,
                "application/x-git-upload-pack-advertisement",
                REFS,
            )?,
            ("POST", [_, _, "git-upload-pack", _]) => {
                write_head(&mut w, 200, "application/x-git-upload-pack-result", PACK_SIZE)?;
                stream(&mut w, PACK_SIZE)?;
            }
            ("GET", ["download", n, "", ""]) => {
                let n = n.parse::<u64>().unwrap_or(0).min(MAX_DOWNLOAD);
                write_head(&mut w, 200, "application/octet-stream", n)?;
                stream(&mut w, n)?;
            }
            ("POST" | "PUT", ["upload", "", "", ""]) => {
                let text = format!(r#"{{"bytes":{body}}}"#);
                respond(&mut w, 200, "application/json", text.as_bytes())?;
            }
            _ => respond(
                &mut w,
                404,
                "application/json",
                crate::testkit::scm::NOT_FOUND,
            )?,
        }
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(req.as_bytes()).expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn routes_answer_as_documented() {
        let u = Upstream::start("t0k").expect("start");
        let a = u.addr();
        let r = exchange(
            a,
            "GET /api/v3/repos/a/b HTTP/1.1\r\nAuthorization: Bearer t0k\r\nConnection: close\r\n\r\n",
        );
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("acme/app"),
            "{r}"
        );
        let r = exchange(
            a,
            "GET /api/v3/repos/a/b HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        let r = exchange(
            a,
            "GET /download/100000 HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(r.contains("Content-Length: 100000\r\n") && r.ends_with(&"d".repeat(100)));
        let r = exchange(
            a,
            "POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert!(r.ends_with(r#"{"bytes":3}"#), "{r}");
        let r = exchange(
            a,
            "GET /acme/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(r.contains("refs/heads/main"), "{r}");
        let r = exchange(a, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }
}
