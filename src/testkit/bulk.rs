//! Big bodies through the tunnel without holding them: one request on one connection of the
//! gateway's stack, the request body generated as it is sent and the response body checked as it
//! arrives, so a 4 GiB transfer costs the test a few 64 KiB buffers (and the process's RSS shows
//! what the broker holds, not what the test does).
//!
//! Bodies are [`pattern_byte`] streams: a download of `/download/N` from
//! [`super::scm::MockScm`] is compared byte by byte with the pattern; an upload sends
//! `pattern_byte(i * 7)` chunked and the fixture answers the length and FNV-1a it received,
//! which [`upload_chunked`] compares with what it sent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::gateway::Gateway;
use super::scm::{FNV_INIT, fnv1a, pattern_byte};
use crate::netstack::{ConnError, ConnId, State};

/// What a bulk transfer measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The response status.
    pub status: u16,
    /// Body bytes received (download) or sent (upload).
    pub bytes: u64,
    /// FNV-1a of those bytes.
    pub fnv: u64,
    /// Download: every byte equalled the pattern. Upload: the fixture reported the same length
    /// and checksum as sent.
    pub exact: bool,
    /// The response body of an upload (the fixture's `{"bytes":..,"fnv":".."}`); empty for a
    /// download.
    pub reply: String,
}

/// Connects to the broker's endpoint on `port` and waits for the connection.
fn connect(gw: &mut Gateway, port: u16, deadline: Instant) -> Result<ConnId, String> {
    let to = SocketAddr::new(gw.broker_address(), port);
    let id = gw
        .stack()
        .connect(to)
        .map_err(|e| format!("connect: {e}"))?;
    loop {
        match gw.stack().state(id) {
            State::Established => return Ok(id),
            State::SynSent | State::SynReceived => {}
            other => return Err(format!("connection {other}")),
        }
        pump(gw, deadline)?;
    }
}

fn pump(gw: &mut Gateway, deadline: Instant) -> Result<(), String> {
    if Instant::now() >= deadline {
        return Err("timed out".to_owned());
    }
    gw.pump(Duration::from_millis(5))
        .map_err(|e| format!("gateway socket: {e}"))
}

/// Sends all of `bytes`, pumping while the send buffer is full.
fn send_all(
    gw: &mut Gateway,
    id: ConnId,
    mut bytes: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    while !bytes.is_empty() {
        let n = gw
            .stack()
            .send_slice(id, bytes)
            .map_err(|e| format!("send: {e}"))?;
        bytes = &bytes[n..];
        if !bytes.is_empty() {
            pump(gw, deadline)?;
        }
    }
    Ok(())
}

/// Reads the response head; returns the status, the `Content-Length` and what followed the head
/// in the same reads.
fn read_head(
    gw: &mut Gateway,
    id: ConnId,
    deadline: Instant,
) -> Result<(u16, Option<u64>, Vec<u8>), String> {
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match gw.stack().recv_slice(id, &mut buf) {
            Ok(0) => pump(gw, deadline)?,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(ConnError::Finished) => return Err("closed before the response head".into()),
            Err(e) => return Err(format!("recv: {e}")),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let cl = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                return Ok((r.code.unwrap_or(0), cl, head.split_off(len)));
            }
            Ok(httparse::Status::Partial) if head.len() < 64 * 1024 => {}
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("bad response head: {e}")),
        }
    }
}

/// `GET target` (a `/proxy/...` of a `/download/N`), streamed: the `Content-Length` body is
/// checked against [`pattern_byte`] and hashed as it arrives, never stored.
pub fn download(
    gw: &mut Gateway,
    port: u16,
    target: &str,
    timeout: Duration,
) -> Result<Transfer, String> {
    let deadline = Instant::now() + timeout;
    let id = connect(gw, port, deadline)?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: broker\r\n\r\n");
    send_all(gw, id, req.as_bytes(), deadline)?;
    let (status, len, first) = read_head(gw, id, deadline)?;
    let len = len.ok_or("no Content-Length")?;
    let mut t = Transfer {
        status,
        bytes: 0,
        fnv: FNV_INIT,
        exact: true,
        reply: String::new(),
    };
    let check = |t: &mut Transfer, data: &[u8]| {
        for (k, &b) in data.iter().enumerate() {
            if b != pattern_byte(t.bytes + k as u64) {
                t.exact = false;
            }
        }
        t.fnv = fnv1a(data, t.fnv);
        t.bytes += data.len() as u64;
    };
    check(&mut t, &first);
    let mut buf = vec![0u8; 64 * 1024];
    while t.bytes < len {
        match gw.stack().recv_slice(id, &mut buf) {
            Ok(0) => pump(gw, deadline)?,
            Ok(n) => check(&mut t, &buf[..n]),
            Err(ConnError::Finished) => break,
            Err(e) => return Err(format!("recv after {} bytes: {e}", t.bytes)),
        }
    }
    t.exact &= t.bytes == len;
    let _ = gw.stack().close(id);
    let _ = gw.pump(Duration::ZERO);
    Ok(t)
}

/// `GET target` and then never read the body: reads the head, then keeps the gateway running
/// (acknowledging what its stack holds, its receive window closing) for `hold` without taking a
/// byte from the connection, and aborts it. `bytes` is what arrived with the head; `exact` is
/// unused (true).
pub fn download_unread(
    gw: &mut Gateway,
    port: u16,
    target: &str,
    hold: Duration,
) -> Result<Transfer, String> {
    let deadline = Instant::now() + hold + Duration::from_secs(60);
    let id = connect(gw, port, deadline)?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: broker\r\n\r\n");
    send_all(gw, id, req.as_bytes(), deadline)?;
    let (status, _, first) = read_head(gw, id, deadline)?;
    let until = Instant::now() + hold;
    while Instant::now() < until {
        gw.pump(Duration::from_millis(5))
            .map_err(|e| format!("gateway socket: {e}"))?;
    }
    let _ = gw.stack().abort(id);
    let _ = gw.pump(Duration::ZERO);
    Ok(Transfer {
        status,
        bytes: first.len() as u64,
        fnv: fnv1a(&first, FNV_INIT),
        exact: true,
        reply: String::new(),
    })
}

/// `POST target` (a `/proxy/...` of the fixture's `/upload`) with a chunked body of `len` bytes
/// of `pattern_byte(i * 7)` in chunks of `chunk` bytes, generated as the send buffer takes them.
/// `exact` when the fixture's reply names the same length and FNV-1a.
pub fn upload_chunked(
    gw: &mut Gateway,
    port: u16,
    target: &str,
    len: u64,
    chunk: usize,
    timeout: Duration,
) -> Result<Transfer, String> {
    let deadline = Instant::now() + timeout;
    let id = connect(gw, port, deadline)?;
    let head =
        format!("POST {target} HTTP/1.1\r\nHost: broker\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_all(gw, id, head.as_bytes(), deadline)?;
    let mut sent = 0u64;
    let mut fnv = FNV_INIT;
    let mut frame = Vec::with_capacity(chunk + 32);
    while sent < len {
        let n = (len - sent).min(chunk as u64) as usize;
        frame.clear();
        frame.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        let start = frame.len();
        frame.extend((0..n as u64).map(|k| pattern_byte((sent + k).wrapping_mul(7))));
        fnv = fnv1a(&frame[start..], fnv);
        frame.extend_from_slice(b"\r\n");
        send_all(gw, id, &frame, deadline)?;
        sent += n as u64;
    }
    send_all(gw, id, b"0\r\n\r\n", deadline)?;
    let (status, cl, mut body) = read_head(gw, id, deadline)?;
    let want = cl.unwrap_or(0) as usize;
    let mut buf = vec![0u8; 4096];
    while body.len() < want.min(4096) {
        match gw.stack().recv_slice(id, &mut buf) {
            Ok(0) => pump(gw, deadline)?,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(ConnError::Finished) => break,
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    let reply = String::from_utf8_lossy(&body).into_owned();
    let _ = gw.stack().close(id);
    let _ = gw.pump(Duration::ZERO);
    Ok(Transfer {
        status,
        bytes: sent,
        fnv,
        exact: reply == format!(r#"{{"bytes":{sent},"fnv":"{fnv:016x}"}}"#),
        reply,
    })
}

/// Resident and peak resident memory of this process, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS (Linux: `5` into `clear_refs`),
/// so that a later [`rss_kib`] shows the peak of what ran in between.
pub fn reset_peak_rss() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}
