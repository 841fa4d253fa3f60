//! Slow, stalling and bursty vendors: the head timeout is a deadline for the whole head (a vendor
//! dripping bytes cannot hold a connection), an error answer that ends the exchange also ends the
//! connection, and what a burst of connections made is gone once they are.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wgbroker::netstack::{ConnError, ConnId, State};
use wgbroker::status::TunnelTables;
use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::response::{Response, ResponseReader};
use wgbroker::testkit::scm::MockScm;

use crate::harness::{Tunnel, metric, poll_for};

/// How long a test waits for an event that should come within a configured timeout of 1 s: a
/// generous upper bound on a functional event (the machine is shared), not a performance figure.
const SLACK: Duration = Duration::from_secs(3);

/// A raw connection from the vendor gateway to the broker's HTTP endpoint.
struct Raw {
    id: ConnId,
    /// Everything the broker sent so far.
    received: Vec<u8>,
    /// When the broker's end of stream (or a reset) was seen.
    closed: Option<Instant>,
}

impl Raw {
    fn open(t: &mut Tunnel) -> Self {
        let to = SocketAddr::new(t.gateway.broker_address(), 80);
        let id = t.gateway.stack().connect(to).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.gateway.stack().state(id) != State::Established {
            assert!(Instant::now() < deadline, "no connection to the broker");
            t.gateway.pump(Duration::from_millis(5)).expect("pump");
        }
        Self {
            id,
            received: Vec::new(),
            closed: None,
        }
    }

    fn send(&mut self, t: &mut Tunnel, data: &[u8]) {
        let n = t.gateway.stack().send_slice(self.id, data).expect("send");
        assert_eq!(n, data.len(), "the send buffer has room");
    }

    /// One pump round; collects the broker's bytes and notices its close.
    fn pump(&mut self, t: &mut Tunnel) {
        t.gateway.pump(Duration::from_millis(5)).expect("pump");
        let mut buf = [0u8; 4096];
        while self.closed.is_none() {
            match t.gateway.stack().recv_slice(self.id, &mut buf) {
                Ok(0) => break,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(ConnError::Finished | ConnError::InvalidState | ConnError::Gone) => {
                    self.closed = Some(Instant::now());
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// The one response the broker sent.
    fn response(&self) -> Response {
        let mut r = ResponseReader::new(false, true);
        match r.feed(&self.received) {
            Ok((_, Some(resp))) => resp,
            other => panic!(
                "no complete response ({other:?}) in {:?}",
                String::from_utf8_lossy(&self.received)
            ),
        }
    }
}

#[test]
fn a_dripping_head_is_closed_at_the_head_deadline() {
    let mut t = Tunnel::start("[inbound]\nhead_timeout = \"1s\"\nidle_timeout = \"30s\"\n");
    let mut c = Raw::open(&mut t);
    // A head that never ends, one byte every 300 ms: each byte comes well within the head
    // timeout of the one before it, the whole head never does.
    let head = b"GET /healthcheck HTTP/1.1\r\nHost: 10.77.0.2\r\nX-Slow: ";
    let started = Instant::now();
    let mut sent = 0usize;
    let mut next = started;
    while c.closed.is_none() && started.elapsed() < Duration::from_secs(8) {
        if Instant::now() >= next {
            c.send(&mut t, &[head.get(sent).copied().unwrap_or(b'a')]);
            sent += 1;
            next += Duration::from_millis(300);
        }
        c.pump(&mut t);
    }
    let closed = c.closed.unwrap_or_else(|| {
        panic!(
            "still open after {:?} of dripping ({sent} bytes sent)",
            started.elapsed()
        )
    });
    let r = c.response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    let after = closed - started;
    assert!(
        after < Duration::from_secs(1) + SLACK,
        "closed {after:?} after the first byte, head timeout 1 s"
    );
}

#[test]
fn a_stalled_request_body_is_answered_408_and_the_connection_closed() {
    let scm = MockScm::start("t").expect("mock scm");
    let a = scm.addr();
    let mut t = Tunnel::start(&format!(
        "[inbound]\nbody_timeout = \"1s\"\nidle_timeout = \"30s\"\n\n\
         [[allow]]\nurl = \"http://{a}/upload\"\nmethods = [\"POST\"]\n"
    ));
    let mut c = Raw::open(&mut t);
    let request = format!(
        "POST /proxy/http://{a}/upload HTTP/1.1\r\nHost: 10.77.0.2\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    c.send(&mut t, request.as_bytes());
    let started = Instant::now();
    while c.closed.is_none() && started.elapsed() < Duration::from_secs(1) + SLACK * 2 {
        c.pump(&mut t);
    }
    let r = c.response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "the answer says the connection ends"
    );
    assert!(
        c.closed.is_some(),
        "the connection is still open {:?} after the body stalled",
        started.elapsed()
    );
}

#[test]
fn connections_opened_and_closed_leave_the_tunnel_tables_at_their_fresh_size() {
    let mut t = Tunnel::start("");
    let status = t.broker.as_ref().expect("running").status().clone();
    // What a fresh broker's tunnel holds: no connection, no slot, no table room, no buffer
    // (connections are made by SYNs, nothing is pre-armed). Counters are not compared.
    let gauges = |t: &TunnelTables| {
        (
            t.handshakes,
            t.connections,
            t.time_wait,
            t.socket_slots,
            t.table_capacity,
            t.buffer_bytes,
        )
    };
    let fresh = (0, 0, 0, 0, 0, 0);
    assert_eq!(gauges(&status.tunnel_tables()), fresh);

    for round in 0..2 {
        let plan = (0..300)
            .map(|_| vec![Request::get("/healthcheck"); 2])
            .collect();
        let results = client::run(
            &mut t.gateway,
            plan,
            RunOptions {
                port: 80,
                timeout: Duration::from_secs(30),
                keep_bodies: false,
            },
        );
        let answered = results
            .iter()
            .flatten()
            .filter(|ex| ex.response.as_ref().is_ok_and(|r| r.status == 200))
            .count();
        assert_eq!(answered, 600, "round {round}");

        // The vendor closed every connection; the broker answers the FINs and reaps them. The
        // tables and the packet buffers the burst left on the free lists go within a second or
        // two. A shard publishes its tables on its beat, so a figure read before each shard has
        // beaten twice since the burst may predate it (a busy machine delays the beat): the
        // second beat's publish follows the first's, which followed the burst.
        let beats_after_burst = status.beats();
        let published = || {
            let now = status.beats();
            (1..now.len()).all(|i| now[i] >= beats_after_burst[i] + 2)
        };
        poll_for(
            Duration::from_secs(10),
            "tunnel tables back to fresh",
            || {
                let now = status.tunnel_tables();
                if published() && (gauges(&now), now.idle_buffers) == (fresh, 0) {
                    return Ok(());
                }
                t.gateway.pump(Duration::from_millis(20)).expect("pump");
                Err(format!("round {round}: {now:?}"))
            },
        );
    }
    let port = status.admin_port.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(metric(port, "wgbroker_tunnel_socket_slots"), Some(0.0));
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_sockets{role="connection"}"#),
        Some(0.0)
    );
}
