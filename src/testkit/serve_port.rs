//! The test gateway's HTTP port (`serve_port`): what the broker's heartbeat and the loadtest's
//! reverse direction talk to inside the tunnel. Answers `pong`, or `/download/N` with N bytes,
//! discards request bodies, keeps connections alive unless asked to close; optionally over TLS.
//! Each accepted connection is a [`Served`] that [`serve_one`] moves on as far as its socket
//! allows, without blocking.

use std::io;
use std::io::{Read as _, Write as _};

use crate::netstack::{ConnId, StackSet};

/// One connection accepted on `serve_port`.
#[derive(Debug)]
pub(super) struct Served {
    id: ConnId,
    /// The TLS session over the connection when `serve_tls` is set.
    tls: Option<Box<rustls::ServerConnection>>,
    /// Request head bytes read so far (bounded).
    head: Vec<u8>,
    /// Request body bytes still to read and discard.
    discard: u64,
    /// Response head bytes not yet queued, from `out_off`.
    out: Vec<u8>,
    out_off: usize,
    /// Response body bytes still to queue.
    body_left: u64,
    /// Close once the response is queued.
    close: bool,
}

/// Largest request head the serve port accepts.
const MAX_SERVE_HEAD: usize = 16 * 1024;

/// Body bytes the serve port sends for a target ending in `/download/N` (at most 4 GiB).
fn download_size(target: &str) -> Option<u64> {
    let path = target.split('?').next().unwrap_or(target);
    let (rest, n) = path.rsplit_once('/')?;
    if !rest.ends_with("/download") {
        return None;
    }
    n.parse::<u64>().ok().map(|n| n.min(1 << 32))
}

/// Response body bytes (`/download/N`).
static BODY_FILL: [u8; 16 * 1024] = [b'x'; 16 * 1024];

/// Queues `data` on a served connection: straight into the TCP socket, or through its TLS
/// session (then flushed as far as the socket takes it). Returns how many bytes were taken;
/// `Err` when the connection is unusable.
fn serve_send(
    set: &mut StackSet,
    s: &mut Served,
    data: &[u8],
    wrote: &mut bool,
) -> Result<usize, ()> {
    let Some(tls) = s.tls.as_deref_mut() else {
        let n = set.send_slice(s.id, data).map_err(drop)?;
        *wrote |= n > 0;
        return Ok(n);
    };
    // rustls bounds what it buffers (64 KiB): a socket that does not drain makes it take 0.
    let n = tls.writer().write(data).map_err(drop)?;
    tls_flush(set, s.id, tls, wrote)?;
    Ok(n)
}

/// Reads from a served connection into `buf`: `Ok(0)` when nothing is there yet, `Err` when the
/// peer closed or the TLS session failed.
fn serve_recv(
    set: &mut StackSet,
    s: &mut Served,
    buf: &mut [u8],
    wrote: &mut bool,
) -> Result<usize, ()> {
    let Some(tls) = s.tls.as_deref_mut() else {
        return set.recv_slice(s.id, buf).map_err(drop);
    };
    let filled = tls_fill(set, s.id, tls);
    // Handshake messages and alerts go out whatever happened.
    tls_flush(set, s.id, tls, wrote)?;
    filled?;
    match tls.reader().read(buf) {
        Ok(0) => Err(()),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(_) => Err(()),
    }
}

/// Feeds the TLS session every byte the socket holds. `Err`: the records did not verify (an
/// alert is queued for [`tls_flush`]).
fn tls_fill(set: &mut StackSet, id: ConnId, tls: &mut rustls::ServerConnection) -> Result<(), ()> {
    while tls.wants_read() {
        let took = set.recv(id, |buf| {
            if buf.is_empty() {
                return (0, 0);
            }
            let mut rd: &[u8] = buf;
            let n = tls.read_tls(&mut rd).unwrap_or(0);
            (n, n)
        });
        match took {
            Ok(0) => break,
            Ok(_) => {
                tls.process_new_packets().map_err(drop)?;
            }
            Err(_) => {
                // The peer finished sending: tell rustls (an empty read is its end of stream).
                let _ = tls.read_tls(&mut io::empty());
                tls.process_new_packets().map_err(drop)?;
                break;
            }
        }
    }
    Ok(())
}

/// Moves the TLS session's pending records into the socket; `Ok(true)` when none are left.
fn tls_flush(
    set: &mut StackSet,
    id: ConnId,
    tls: &mut rustls::ServerConnection,
    wrote: &mut bool,
) -> Result<bool, ()> {
    while tls.wants_write() {
        let n = set
            .send(id, |buf| {
                let mut w: &mut [u8] = buf;
                let n = tls.write_tls(&mut w).unwrap_or(0);
                (n, n)
            })
            .map_err(drop)?;
        if n == 0 {
            return Ok(false);
        }
        *wrote = true;
    }
    Ok(true)
}

/// What one part of a connection's step leaves to do.
enum Next {
    /// More may be done now.
    Continue,
    /// Nothing more until the socket has room or data: keep the connection.
    Wait,
    /// The connection is closed or aborted: drop it.
    Done,
}

impl Next {
    /// The usual reading of a send or receive: nothing moved is a wait, an error the end.
    fn of(moved: Result<usize, ()>) -> Self {
        match moved {
            Ok(0) => Next::Wait,
            Ok(_) => Next::Continue,
            Err(()) => Next::Done,
        }
    }
}

/// One serve-port connection's step; returns whether to keep it.
pub(super) fn serve_one(
    set: &mut StackSet,
    s: &mut Served,
    served: &mut u64,
    wrote: &mut bool,
) -> bool {
    if let Some(tls) = s.tls.as_deref_mut() {
        // Records the socket could not take last time.
        if tls_flush(set, s.id, tls, wrote).is_err() {
            let _ = set.abort(s.id);
            return false;
        }
    }
    for _ in 0..64 {
        // The response in progress first, then the request body, then the next request head.
        let next = if s.out_off < s.out.len() {
            send_head(set, s, wrote)
        } else if s.body_left > 0 {
            send_body(set, s, wrote)
        } else if s.close {
            close(set, s, wrote)
        } else if s.discard > 0 {
            discard_body(set, s, wrote)
        } else {
            read_request(set, s, served, wrote)
        };
        match next {
            Next::Continue => {}
            Next::Wait => return true,
            Next::Done => return false,
        }
    }
    true
}

/// Queues more of the response head.
fn send_head(set: &mut StackSet, s: &mut Served, wrote: &mut bool) -> Next {
    let out = std::mem::take(&mut s.out);
    let sent = serve_send(set, s, &out[s.out_off..], wrote);
    s.out = out;
    if let Ok(n) = sent {
        s.out_off += n;
    }
    Next::of(sent)
}

/// Queues more of the response body (`BODY_FILL` over and over).
fn send_body(set: &mut StackSet, s: &mut Served, wrote: &mut bool) -> Next {
    let left = usize::try_from(s.body_left).unwrap_or(usize::MAX);
    let sent = if s.tls.is_some() {
        let n = BODY_FILL.len().min(left);
        serve_send(set, s, &BODY_FILL[..n], wrote)
    } else {
        set.send(s.id, |buf| {
            let n = buf.len().min(left);
            let mut off = 0;
            while off < n {
                let k = (n - off).min(BODY_FILL.len());
                buf[off..off + k].copy_from_slice(&BODY_FILL[..k]);
                off += k;
            }
            (n, n)
        })
        .map_err(drop)
    };
    if let Ok(n) = sent {
        s.body_left -= n as u64;
        *wrote |= n > 0;
    }
    Next::of(sent)
}

/// Closes once the response is out (after TLS's close_notify, which may wait for room).
fn close(set: &mut StackSet, s: &mut Served, wrote: &mut bool) -> Next {
    if let Some(tls) = s.tls.as_deref_mut() {
        tls.send_close_notify();
        match tls_flush(set, s.id, tls, wrote) {
            Ok(false) => return Next::Wait,
            Ok(true) => {}
            Err(()) => {
                let _ = set.abort(s.id);
                return Next::Done;
            }
        }
    }
    let _ = set.close(s.id);
    Next::Done
}

/// Reads and drops more of the request body.
fn discard_body(set: &mut StackSet, s: &mut Served, wrote: &mut bool) -> Next {
    let left = usize::try_from(s.discard).unwrap_or(usize::MAX);
    let taken = if s.tls.is_some() {
        let mut scratch = [0u8; 2048];
        let n = scratch.len().min(left);
        serve_recv(set, s, &mut scratch[..n], wrote)
    } else {
        set.recv(s.id, |buf| {
            let n = buf.len().min(left);
            (n, n)
        })
        .map_err(drop)
    };
    if let Ok(n) = taken {
        s.discard -= n as u64;
    }
    Next::of(taken)
}

/// Starts the response to the next request head once it is buffered (it may already be, after
/// the last body); reads more of it otherwise.
fn read_request(set: &mut StackSet, s: &mut Served, served: &mut u64, wrote: &mut bool) -> Next {
    if let Some(end) = find_head_end(&s.head) {
        if !s.respond(end) {
            let _ = set.abort(s.id);
            return Next::Done;
        }
        *served += 1;
        return Next::Continue;
    }
    let mut buf = [0u8; 2048];
    match serve_recv(set, s, &mut buf, wrote) {
        Ok(0) => Next::Wait,
        Ok(n) if s.head.len() + n > MAX_SERVE_HEAD => {
            let _ = set.abort(s.id);
            Next::Done
        }
        Ok(n) => {
            s.head.extend_from_slice(&buf[..n]);
            Next::Continue
        }
        Err(()) => {
            let _ = set.close(s.id);
            Next::Done
        }
    }
}

impl Served {
    /// A connection just accepted (`tls`: its session when the port serves TLS).
    pub(super) fn new(id: ConnId, tls: Option<Box<rustls::ServerConnection>>) -> Self {
        Self {
            id,
            tls,
            head: Vec::new(),
            discard: 0,
            out: Vec::new(),
            out_off: 0,
            body_left: 0,
            close: false,
        }
    }

    /// Answers the request head that ends at `end` of `head`: queues the response head (and
    /// `pong`, or a `/download/N` body), sets the request body to discard. `false` when the
    /// head does not parse.
    fn respond(&mut self, end: usize) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&self.head[..end]) else {
            return false;
        };
        let mut len = 0u64;
        let mut close = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        let body = download_size(req.path.unwrap_or(""));
        // Body bytes that arrived with the head.
        let from_head = ((self.head.len() - end) as u64).min(len);
        self.discard = len - from_head;
        self.head
            .drain(..end + usize::try_from(from_head).unwrap_or(0));
        let (n, ctype) = match body {
            Some(n) => (n, "application/octet-stream"),
            None => (4, "text/plain"),
        };
        self.out =
            format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {n}").into_bytes();
        if close {
            self.out.extend_from_slice(b"\r\nConnection: close");
        }
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out_off = 0;
        match body {
            None => {
                self.out.extend_from_slice(b"pong");
                self.body_left = 0;
            }
            Some(n) => self.body_left = n,
        }
        self.close = close;
        true
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}
