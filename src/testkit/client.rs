//! An HTTP/1.1 client over the gateway's TCP stack: many connections in parallel, each sending
//! its requests in order over keep-alive, one at a time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::gateway::Gateway;
use super::response::{Response, ResponseReader};
use crate::netstack::{ConnError, ConnId, State};

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Origin-form target, e.g. `/healthcheck` or `/proxy/https://...`.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A bodiless request.
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a body (sent with `Content-Length`).
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The request on the wire, with `Host` and, for a body, `Content-Length`.
    pub fn encode(&self, host: &str) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.target
        )
        .into_bytes();
        let mut has_len = false;
        for (n, v) in &self.headers {
            has_len |= n.eq_ignore_ascii_case("content-length")
                || n.eq_ignore_ascii_case("transfer-encoding");
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if !self.body.is_empty() && !has_len {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The outcome of one request.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub response: Result<Response, String>,
    /// From the first byte written to the complete response.
    pub latency: Duration,
}

enum Phase {
    Connecting,
    Sending { bytes: Vec<u8>, off: usize },
    Receiving { reader: ResponseReader },
    Done,
}

struct Conn {
    id: Option<ConnId>,
    requests: std::vec::IntoIter<Request>,
    current: Option<Request>,
    phase: Phase,
    started: Instant,
    results: Vec<Exchange>,
}

impl Conn {
    fn fail_rest(&mut self, why: &str) {
        let now = Instant::now();
        if self.current.take().is_some() {
            self.results.push(Exchange {
                response: Err(why.to_owned()),
                latency: now - self.started,
            });
        }
        for _ in self.requests.by_ref() {
            self.results.push(Exchange {
                response: Err(why.to_owned()),
                latency: Duration::ZERO,
            });
        }
        self.phase = Phase::Done;
    }
}

/// Options for [`run`].
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// TCP port of the broker's endpoint.
    pub port: u16,
    /// Give up on whatever is unfinished after this long.
    pub timeout: Duration,
    /// Keep response bodies (false: count them only).
    pub keep_bodies: bool,
}

/// Opens one connection per entry of `conns` to the broker and runs each entry's requests in
/// order on it. Returns one [`Exchange`] per request, in the same shape.
pub fn run(gw: &mut Gateway, conns: Vec<Vec<Request>>, opts: RunOptions) -> Vec<Vec<Exchange>> {
    let broker = SocketAddr::new(gw.broker_address(), opts.port);
    let host = broker.to_string();
    let mut state: Vec<Conn> = conns
        .into_iter()
        .map(|reqs| Conn {
            id: None,
            requests: reqs.into_iter(),
            current: None,
            phase: Phase::Connecting,
            started: Instant::now(),
            results: Vec::new(),
        })
        .collect();
    for c in &mut state {
        match gw.stack().connect(broker) {
            Ok(id) => c.id = Some(id),
            Err(e) => c.fail_rest(&format!("connect: {e}")),
        }
    }
    let deadline = Instant::now() + opts.timeout;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let mut open = 0;
        for c in &mut state {
            if matches!(c.phase, Phase::Done) {
                continue;
            }
            open += 1;
            step(gw, c, &host, &mut scratch, opts.keep_bodies);
        }
        if open == 0 {
            break;
        }
        if Instant::now() >= deadline {
            for c in &mut state {
                if !matches!(c.phase, Phase::Done) {
                    c.fail_rest("timed out");
                    if let Some(id) = c.id {
                        let _ = gw.stack().abort(id);
                    }
                }
            }
            let _ = gw.pump(Duration::ZERO);
            break;
        }
        if gw.pump(Duration::from_millis(5)).is_err() {
            for c in &mut state {
                c.fail_rest("gateway socket failed");
            }
            break;
        }
    }
    state.into_iter().map(|c| c.results).collect()
}

fn step(gw: &mut Gateway, c: &mut Conn, host: &str, scratch: &mut [u8], keep_bodies: bool) {
    let Some(id) = c.id else {
        c.fail_rest("no connection");
        return;
    };
    loop {
        match &mut c.phase {
            Phase::Done => return,
            Phase::Connecting => match gw.stack().state(id) {
                State::Established => match c.requests.next() {
                    Some(r) => {
                        c.started = Instant::now();
                        c.phase = Phase::Sending {
                            bytes: r.encode(host),
                            off: 0,
                        };
                        c.current = Some(r);
                    }
                    None => {
                        let _ = gw.stack().close(id);
                        c.phase = Phase::Done;
                    }
                },
                State::SynSent | State::SynReceived => return,
                other => {
                    c.fail_rest(&format!("connection {other}"));
                    return;
                }
            },
            Phase::Sending { bytes, off } => match gw.stack().send_slice(id, &bytes[*off..]) {
                Ok(n) => {
                    *off += n;
                    if *off == bytes.len() {
                        let head = c.current.as_ref().is_some_and(|r| r.method == "HEAD");
                        c.phase = Phase::Receiving {
                            reader: ResponseReader::new(head, keep_bodies),
                        };
                    } else {
                        return;
                    }
                }
                Err(e) => {
                    c.fail_rest(&format!("send: {e}"));
                    return;
                }
            },
            Phase::Receiving { reader } => {
                let n = match gw.stack().recv_slice(id, scratch) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(ConnError::Finished) => {
                        match reader.finish_on_close() {
                            Some(r) => {
                                c.results.push(Exchange {
                                    response: Ok(r),
                                    latency: c.started.elapsed(),
                                });
                                c.current = None;
                            }
                            None => c.fail_rest("connection closed mid-response"),
                        }
                        c.fail_rest("connection closed");
                        let _ = gw.stack().close(id);
                        return;
                    }
                    Err(e) => {
                        c.fail_rest(&format!("recv: {e}"));
                        return;
                    }
                };
                // A response ends within what we read (no pipelining here).
                match reader.feed(&scratch[..n]) {
                    Ok((_, Some(resp))) => {
                        let close = resp
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                        c.results.push(Exchange {
                            response: Ok(resp),
                            latency: c.started.elapsed(),
                        });
                        c.current = None;
                        if close {
                            c.fail_rest("server closed the connection");
                            let _ = gw.stack().close(id);
                            return;
                        }
                        c.phase = Phase::Connecting;
                    }
                    Ok((_, None)) => {}
                    Err(e) => {
                        c.fail_rest(&format!("bad response: {e}"));
                        return;
                    }
                }
            }
        }
    }
}
