//! One tunnel connection: read a head, route it (a proxied exchange, the health check, or 404),
//! answer, repeat — until the vendor closes, an answer ends the connection, a timeout or a drain.
//!
//! Invariants: the read buffer never grows past `max_head_bytes`; a connection that sent a
//! request we cannot frame is answered and closed, never resynchronised by guessing; the idle and
//! head timeouts are deadlines that arriving bytes do not move (`Connection::read_head`), so no
//! pacing of bytes keeps a connection open longer than `idle_timeout + head_timeout` without a
//! request; an error answer that leaves the request body unread ends the connection; pipelined
//! requests are answered strictly in order.

use std::borrow::Cow;
use std::net::IpAddr;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};

use super::buffered::Buffered;
use super::proxy::{self, Request};
use super::{
    ErrorBody, HEALTHCHECK_BODY, REQUEST_ID_HEADER, ServerConfig, ServerCtx, Timer, drain,
};
use crate::http::{BodyFraming, HeadError, Method, RequestHead, ResponseHead, parse_head};
use crate::upstream::Upstreams;

/// Serves one tunnel connection until it closes, errs or times out. `peer` is the vendor's
/// tunnel address (for `X-Forwarded-For`).
pub async fn serve<C, T, U>(
    conn: &mut C,
    ctx: &ServerCtx,
    timer: &T,
    upstreams: &U,
    peer: Option<IpAddr>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    let slot = DrainSlot(&ctx.drain, ctx.drain.claim());
    // The settings of the moment the connection opens: a reload changes them for new ones.
    let cfg = ctx.cfg.get();
    Connection {
        conn,
        ctx,
        cfg,
        timer,
        upstreams,
        peer,
        drain_slot: slot.1,
        buf: vec![0u8; cfg.limits.max_head_bytes],
        filled: 0,
        head: RequestHead::default(),
        head_copy: Vec::new(),
        response_buf: Vec::new(),
        id: String::with_capacity(32),
        local_head: ResponseHead::default(),
    }
    .run()
    .await;
}

/// A connection's drain slot, given back when the connection ends.
struct DrainSlot<'a>(&'a drain::Drain, usize);

impl Drop for DrainSlot<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// One tunnel connection and what it keeps between requests.
struct Connection<'a, C, T, U> {
    conn: &'a mut C,
    ctx: &'a ServerCtx,
    /// `ctx.cfg` when the connection opened.
    cfg: ServerConfig,
    timer: &'a T,
    upstreams: &'a U,
    peer: Option<IpAddr>,
    drain_slot: usize,
    /// The read buffer: `buf[..filled]` was read and not consumed yet. Heads are parsed in place.
    buf: Vec<u8>,
    filled: usize,
    /// The current request's head.
    head: RequestHead,
    /// A copy of a proxied request's head: the exchange reads the body into `buf`.
    head_copy: Vec<u8>,
    /// The upstream read buffer of proxied exchanges, allocated on the first.
    response_buf: Vec<u8>,
    /// The current request's id.
    id: String,
    /// Where health check and 404 heads are built.
    local_head: ResponseHead,
}

/// Where a request left the connection.
struct Served {
    /// The request (body included) ended at this offset of the read buffer; what follows is
    /// the next request.
    end: usize,
    /// The connection may carry another request.
    keep_alive: bool,
}

/// How waiting for a request head ended.
enum HeadWait {
    /// A complete head of this many bytes is at the front of the buffer.
    Complete(usize),
    /// The vendor closed, the read failed, the connection sat idle past `idle_timeout` or a
    /// drain began between requests: close without an answer.
    Closed,
    /// Answer with this error status and message, then close.
    Failed(u16, String),
}

/// One read of a head against its deadline.
enum HeadRead {
    Data(usize),
    /// End of stream or a failed read.
    Gone,
    Expired,
}

impl<C, T, U> Connection<'_, C, T, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    async fn run(mut self) {
        loop {
            let head_len = match self.read_head().await {
                HeadWait::Complete(n) => n,
                HeadWait::Closed => {
                    let _ = self.conn.close().await;
                    return;
                }
                HeadWait::Failed(status, message) => {
                    self.refuse(status, &message).await;
                    return;
                }
            };
            self.ctx.stats.borrow_mut().requests += 1;
            self.ctx.ids.borrow_mut().next_into(&mut self.id);
            let served = if self.head.target(&self.buf).starts_with("/proxy/") {
                self.proxy(head_len).await
            } else {
                match self.answer_local(head_len).await {
                    Some(s) => s,
                    None => return,
                }
            };
            // Pipelined bytes move to the front of the buffer.
            self.buf.copy_within(served.end..self.filled, 0);
            self.filled -= served.end;
            if !served.keep_alive {
                let _ = self.conn.flush().await;
                let _ = self.conn.close().await;
                return;
            }
            if self.filled == 0 && self.conn.flush().await.is_err() {
                return;
            }
        }
    }

    /// Reads until `buf[..filled]` starts with a complete request head.
    ///
    /// Two deadlines, each set once and never moved by the bytes that arrive: between requests
    /// (nothing buffered) the connection may stay idle `idle_timeout`; from the first byte of a
    /// head the whole head must arrive within `head_timeout`. A vendor dripping a byte a second
    /// therefore holds its connection for at most `idle_timeout + head_timeout`, however it
    /// paces the bytes.
    async fn read_head(&mut self) -> HeadWait {
        let (ctx, timer, slot) = (self.ctx, self.timer, self.drain_slot);
        let cfg = self.cfg;
        let (conn, buf, filled) = (&mut *self.conn, &mut self.buf[..], &mut self.filled);
        if *filled == 0 {
            // Between requests: one read ends the idle wait; a drain closes the idle connection
            // at once.
            let read = async {
                match conn.read(buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(n),
                }
            };
            let idle = async {
                timer.sleep(cfg.idle_timeout).await;
                None
            };
            let drained = async {
                ctx.drain.wait(slot).await;
                None
            };
            match future::or(read, future::or(idle, drained)).await {
                Some(n) => *filled = n,
                None => return HeadWait::Closed,
            }
        }
        let mut deadline = std::pin::pin!(timer.sleep(cfg.head_timeout));
        loop {
            match parse_head(&buf[..*filled], &cfg.limits, &mut self.head) {
                Ok(Some(n)) => return HeadWait::Complete(n),
                Ok(None) => {}
                Err(e) => return HeadWait::Failed(e.status(), e.to_string()),
            }
            if *filled == buf.len() {
                // parse_head reports TooLarge before this can happen; defensive.
                let e = HeadError::TooLarge;
                return HeadWait::Failed(e.status(), e.to_string());
            }
            let at = *filled;
            let read = async {
                match conn.read(&mut buf[at..]).await {
                    Ok(0) | Err(_) => HeadRead::Gone,
                    Ok(n) => HeadRead::Data(n),
                }
            };
            let expired = async {
                deadline.as_mut().await;
                HeadRead::Expired
            };
            match future::or(read, expired).await {
                HeadRead::Data(n) => *filled += n,
                HeadRead::Expired => return HeadWait::Failed(408, "request head timeout".into()),
                HeadRead::Gone => return HeadWait::Closed,
            }
        }
    }

    /// Answers a head we cannot serve (malformed, too large, too slow) and closes: what follows
    /// it cannot be framed.
    async fn refuse(&mut self, status: u16, message: &str) {
        {
            let mut st = self.ctx.stats.borrow_mut();
            if status == 408 {
                st.timeouts += 1;
            } else {
                st.rejected += 1;
            }
        }
        self.ctx.ids.borrow_mut().next_into(&mut self.id);
        let answer = proxy::error_response(status, message, &self.id, true);
        let _ = self.conn.write_all(&answer).await;
        let _ = self.conn.flush().await;
        let _ = self.conn.close().await;
    }

    /// A `/proxy/` request: the exchange reads its body from the connection's buffer and counts
    /// its outcome.
    async fn proxy(&mut self, head_len: usize) -> Served {
        self.head_copy.clear();
        self.head_copy.extend_from_slice(&self.buf[..head_len]);
        let allowlist = self.ctx.allowlist.borrow().clone();
        let scrubber = self.ctx.scrubber.borrow().clone();
        let cfg = self.cfg;
        let context = proxy::Context {
            allowlist: &allowlist,
            scrubber: &scrubber,
            body_limit: cfg.body_log_limit,
            max_checked_body: cfg.max_checked_body,
            timeouts: cfg.proxy,
            peer: self.peer,
            request_id: &self.id,
        };
        let request = Request {
            head: &self.head,
            bytes: &self.head_copy,
        };
        let mut vendor = Buffered {
            conn: &mut *self.conn,
            buf: &mut self.buf,
            pos: head_len,
            filled: self.filled,
        };
        let outcome = proxy::proxy(
            &context,
            request,
            &mut vendor,
            &mut self.response_buf,
            self.timer,
            self.upstreams,
        )
        .await;
        let end = vendor.pos;
        self.filled = vendor.filled;
        self.ctx.stats.borrow_mut().record_exchange(&outcome);
        Served {
            end,
            keep_alive: outcome.keep_alive && !self.ctx.drain.is_set(),
        }
    }

    /// `GET`/`HEAD /healthcheck`, or 404. `None` when the answer could not be written.
    async fn answer_local(&mut self, head_len: usize) -> Option<Served> {
        // Only bodiless requests keep the connection: these endpoints consume no bodies, and an
        // unread body must not be parsed as the next request.
        let head = &self.head;
        let target = head.target(&self.buf);
        let path = target.split('?').next().unwrap_or_default();
        let has_body = head.body != BodyFraming::None;
        let keep_alive = head.keep_alive && !has_body && !self.ctx.drain.is_set();
        let healthcheck =
            path == "/healthcheck" && matches!(head.method, Method::Get | Method::Head);
        let (status, body): (u16, Cow<'_, [u8]>) = if healthcheck {
            self.ctx.stats.borrow_mut().healthchecks += 1;
            (200, Cow::Borrowed(HEALTHCHECK_BODY))
        } else {
            self.ctx.stats.borrow_mut().not_found += 1;
            let body = ErrorBody {
                error: "not found",
                request_id: &self.id,
            };
            (404, Cow::Owned(body.to_vec()))
        };
        let mut response = self
            .local_head
            .start(status)
            .header("Content-Type", "application/json")
            .header_u64("Content-Length", body.len() as u64)
            .header(REQUEST_ID_HEADER, &self.id)
            .header(
                "Connection",
                if keep_alive { "keep-alive" } else { "close" },
            )
            .finish()
            .to_vec();
        if head.method != Method::Head {
            response.extend_from_slice(&body);
        }
        if self.conn.write_all(&response).await.is_err() {
            return None;
        }
        Some(Served {
            end: head_len,
            keep_alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::*;
    use crate::allowlist::Allowlist;
    use crate::http::Limits;
    use crate::server::{ProxyTimeouts, RequestIds, ServerConfig, ServerStats, scrub};

    use crate::testkit::script::Script;

    /// Sleeps complete at once: every wait times out immediately.
    struct Instant;
    impl Timer for Instant {
        fn sleep(&self, _: Duration) -> impl Future<Output = ()> {
            future::ready(())
        }
    }

    /// Sleeps never complete.
    struct Never;
    impl Timer for Never {
        fn sleep(&self, _: Duration) -> impl Future<Output = ()> {
            future::pending()
        }
    }

    fn cfg() -> ServerConfig {
        ServerConfig {
            limits: Limits {
                max_head_bytes: 1024,
                max_headers: 16,
            },
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            proxy: ProxyTimeouts {
                body: Duration::from_secs(10),
                response: Duration::from_secs(10),
            },
            body_log_limit: 1024,
            max_checked_body: 1 << 20,
        }
    }

    /// An upstream set that must never be used by these tests.
    struct NoUpstreams;
    impl Upstreams for NoUpstreams {
        type Conn = Script;
        async fn connect(
            &self,
            _: &crate::upstream::Target,
        ) -> Result<crate::upstream::Pooled<Script>, crate::upstream::UpstreamError> {
            panic!("no upstream in server unit tests")
        }
        async fn connect_new(
            &self,
            _: &crate::upstream::Target,
        ) -> Result<crate::upstream::Pooled<Script>, crate::upstream::UpstreamError> {
            panic!("no upstream in server unit tests")
        }
        fn release(&self, _: &crate::upstream::Target, _: crate::upstream::Pooled<Script>) {}
    }

    fn run<T: Timer>(
        input: &[u8],
        step: usize,
        hang: bool,
        timer: &T,
    ) -> (String, ServerStats, bool) {
        let mut s = Script::new(input, step).hanging(hang);
        let ctx = ServerCtx::new(
            cfg(),
            Allowlist::default(),
            scrub::Scrubber::default(),
            RequestIds::new(0xabcd, 1),
        );
        future::block_on(serve(&mut s, &ctx, timer, &NoUpstreams, None));
        let stats = ctx.stats.borrow().clone();
        (
            String::from_utf8_lossy(&s.output).into_owned(),
            stats,
            s.closed,
        )
    }

    #[test]
    fn healthcheck_keep_alive_and_pipelining_in_order() {
        let req = "GET /healthcheck HTTP/1.1\r\nHost: b\r\n\r\nGET /nope HTTP/1.1\r\nHost: b\r\n\r\nHEAD /healthcheck HTTP/1.1\r\nHost: b\r\n\r\n";
        for step in [1, 5, 1000] {
            let (out, stats, closed) = run(req.as_bytes(), step, false, &Never);
            let first = out.find("HTTP/1.1 200 OK").expect("200");
            let second = out.find("HTTP/1.1 404 Not Found").expect("404");
            let third = out.rfind("HTTP/1.1 200 OK").expect("HEAD 200");
            assert!(first < second && second < third, "in order: {out}");
            // Semgrep's broker answers the JSON string "OK"; a Semgrep gateway may check it.
            assert!(out.contains("Content-Type: application/json\r\n"));
            assert!(out.contains("Content-Length: 4\r\n"));
            assert!(out.contains("\r\n\r\n\"OK\"HTTP/1.1 404"), "{out}");
            assert!(out.contains("X-Request-Id: 0000abcd-1-1\r\n"));
            assert!(out.contains("X-Request-Id: 0000abcd-1-3\r\n"));
            assert!(
                out.ends_with("Connection: keep-alive\r\n\r\n"),
                "HEAD has no body: {out:?}"
            );
            assert_eq!(stats.requests, 3);
            assert_eq!(stats.healthchecks, 2);
            assert!(closed, "EOF closes");
        }
    }

    #[test]
    fn malformed_and_smuggling_get_400_and_close() {
        let (out, stats, closed) = run(
            b"POST /healthcheck HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthcheck HTTP/1.1\r\nHost: b\r\n\r\n",
            1000,
            false,
            &Never,
        );
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains(
            "\"error\":\"malformed request: both Content-Length and Transfer-Encoding\""
        ));
        assert_eq!(
            out.matches("HTTP/1.1").count(),
            1,
            "the smuggled request is never answered"
        );
        assert_eq!(stats.rejected, 1);
        assert!(closed);
    }

    #[test]
    fn oversized_head_gets_431() {
        let big = format!("GET /{} HTTP/1.1\r\nHost: b\r\n\r\n", "a".repeat(2000));
        let (out, _, _) = run(big.as_bytes(), 100, true, &Never);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[test]
    fn stalled_head_gets_408_and_idle_closes_silently() {
        let (out, stats, closed) = run(b"GET /health", 100, true, &Instant);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert_eq!(stats.timeouts, 1);
        assert!(closed);
        let (out, _, closed) = run(b"", 100, true, &Instant);
        assert!(out.is_empty());
        assert!(closed);
    }

    #[test]
    fn request_with_body_is_answered_then_closed() {
        let (out, _, closed) = run(
            b"POST /x HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabcGET /healthcheck HTTP/1.1\r\nHost: b\r\n\r\n",
            1000,
            false,
            &Never,
        );
        assert!(out.starts_with("HTTP/1.1 404 "));
        assert!(out.contains("Connection: close"));
        assert_eq!(out.matches("HTTP/1.1").count(), 1);
        assert!(closed);
    }
}
