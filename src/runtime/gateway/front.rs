//! The gateway's front door: kernel-TCP HTTP/1.1 from the vendor's services, each request
//! routed to a broker of its tenant and relayed through the tunnel with the retry rules (see
//! the parent module's "A request on the front door").

use super::*;

/// Accepts front-door connections. No timeout around `accept`: a cancelled accept could lose a
/// connection the kernel had already taken; the task ends with the executor.
pub(super) async fn front_loop(gw: Rc<Gw>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(front_conn(gw.clone(), stream)).detach();
            }
            Err(e) => {
                tracing::warn!(event = "gateway.accept_error", error = %e);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A small JSON answer from the gateway itself.
async fn answer<S: AsyncWrite + Unpin>(
    client: &mut S,
    status: u16,
    body: &serde_json::Value,
    close: bool,
) -> io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        crate::http::reason_phrase(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.flush().await
}

/// Serves one front-door connection, request after request.
async fn front_conn(gw: Rc<Gw>, mut client: TcpStream) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head = future::or(
            async { Some(read_request_head(&mut client, &mut buf).await) },
            async {
                glommio::timer::sleep(gw.config.gateway.head_timeout).await;
                None
            },
        )
        .await;
        let (head, head_len) = match head {
            None | Some(Err(HeadFailure::Closed)) => return,
            Some(Err(HeadFailure::Bad(status, reason))) => {
                gw.status.malformed.fetch_add(1, Ordering::Relaxed);
                let _ = answer(
                    &mut client,
                    status,
                    &serde_json::json!({ "error": reason }),
                    true,
                )
                .await;
                return;
            }
            Some(Ok(h)) => h,
        };
        let keep = match serve_one(&gw, &mut client, &head, &mut buf, head_len).await {
            Ok(keep) => keep && head.keep_alive,
            Err(_) => false,
        };
        if !keep {
            let _ = client.close().await;
            return;
        }
    }
}

/// Serves the request whose head is at the start of `buf`; leaves in `buf` what the client sent
/// after its body. `Ok(false)`: the connection must close.
async fn serve_one(
    gw: &Rc<Gw>,
    client: &mut TcpStream,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    head_len: usize,
) -> io::Result<bool> {
    let target = head.target(buf).to_owned();
    let (tenant_name, broker_target) = match route(&target) {
        Route::Tenant { tenant, target } => (tenant.to_owned(), target.to_owned()),
        Route::NotFound => {
            gw.status.not_found.fetch_add(1, Ordering::Relaxed);
            answer(
                client,
                404,
                &serde_json::json!({ "error": "not found" }),
                head.body != BodyFraming::None,
            )
            .await?;
            return Ok(head.body == BodyFraming::None);
        }
    };
    let found = gw.bal.borrow().tenant(&tenant_name);
    let Some(tenant) = found else {
        gw.status.not_found.fetch_add(1, Ordering::Relaxed);
        answer(
            client,
            404,
            &serde_json::json!({ "error": "unknown tenant" }),
            head.body != BodyFraming::None,
        )
        .await?;
        return Ok(head.body == BodyFraming::None);
    };
    if head.expect_continue && head.body != BodyFraming::None {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let method = head.method_str(buf).to_owned();
    let upstream_head = upstream_head(head, buf, &method, &broker_target);
    buf.drain(..head_len);
    let request = Forward {
        tenant,
        tenant_name: &tenant_name,
        method: &method,
        upstream_head: &upstream_head,
        framing: head.body,
    };
    forward(gw, client, &request, buf).await
}

/// The head sent to a broker: the front-door request's, its target rewritten to the broker's
/// `/proxy/<URL>`, hop-by-hop headers dropped. No `Connection` header: HTTP/1.1's default,
/// keep-alive, lets the connection carry the next request ([`crate::gateway::pool`]).
fn upstream_head(head: &RequestHead, buf: &[u8], method: &str, broker_target: &str) -> Vec<u8> {
    let mut out = format!("{method} {broker_target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in head.headers(buf) {
        if [
            "connection",
            "keep-alive",
            "proxy-connection",
            "expect",
            "te",
            "upgrade",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A routed front-door request, ready for [`forward`].
struct Forward<'a> {
    tenant: TenantId,
    tenant_name: &'a str,
    method: &'a str,
    upstream_head: &'a [u8],
    framing: BodyFraming,
}

/// Sends `req` to a broker of its tenant the balancer picks, again to another by the [`Retry`]
/// rules when an attempt fails, and answers 503/502 when none is left. `buf` holds what the
/// client sent after the head. `Ok(false)`: the client connection must close.
async fn forward(
    gw: &Rc<Gw>,
    client: &mut TcpStream,
    req: &Forward<'_>,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let Forward {
        tenant,
        tenant_name,
        method,
        framing,
        ..
    } = *req;
    let mut retry = Retry::new(method, framing == BodyFraming::None);
    let idempotent = crate::gateway::balance::is_idempotent(method);
    let mut body = Some(BodyReader::new(framing));
    let mut attempts = 0u32;
    loop {
        let picked = {
            let mut bal = gw.bal.borrow_mut();
            bal.pick(tenant, retry.tried()).or_else(|| {
                retry
                    .may_try_again()
                    .then(|| bal.pick(tenant, &[]))
                    .flatten()
            })
        };
        let Some(id) = picked else {
            gw.status.unavailable.fetch_add(1, Ordering::Relaxed);
            let body_left = body.as_ref().is_some_and(|b| !b.done());
            answer(
                client,
                503,
                &serde_json::json!({ "error": "no healthy broker", "tenant": tenant_name }),
                body_left,
            )
            .await?;
            return Ok(!body_left);
        };
        retry.attempt(id);
        gw.counters(id).requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // After a failed attempt, a new connection: kept-alive ones may have failed alike.
        let fresh = attempts > 0;
        attempts += 1;
        let attempt = attempt(gw, id, req, &mut body, client, buf, idempotent, fresh).await;
        let outcome = match &attempt {
            Ok(_) => Outcome::Answered,
            Err(f) => f.outcome(),
        };
        gw.bal.borrow_mut().finish(id, outcome, Instant::now());
        gw.publish_events();
        match attempt {
            Ok(keep) => {
                let c = gw.counters(id);
                c.answered.fetch_add(1, Ordering::Relaxed);
                c.latency_us.fetch_add(
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                return Ok(keep);
            }
            Err(failure) => {
                gw.counters(id).errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event = "gateway.attempt_failed", broker = %gw.label(id), ?failure);
                if let AttemptFailure::Client(e) = failure {
                    return Err(e);
                }
                if outcome == Outcome::DiedAfterResponse {
                    return Ok(false);
                }
                if retry.after(outcome) == Next::GiveUp {
                    answer(
                        client,
                        502,
                        &serde_json::json!({ "error": "broker failed before answering", "tenant": tenant_name }),
                        true,
                    )
                    .await?;
                    return Ok(false);
                }
            }
        }
    }
}

/// How an attempt failed.
#[derive(Debug)]
enum AttemptFailure {
    /// No connection to the broker (nothing was sent).
    Connect(#[allow(dead_code)] io::Error),
    /// The broker broke off or left rotation before the response head.
    BeforeResponse(#[allow(dead_code)] io::Error),
    /// As `BeforeResponse`, on a connection kept alive from an earlier request.
    ReusedBeforeResponse(#[allow(dead_code)] io::Error),
    /// The response had started.
    AfterResponse(#[allow(dead_code)] io::Error),
    /// The client went away or sent a malformed body.
    Client(io::Error),
}

impl AttemptFailure {
    fn outcome(&self) -> Outcome {
        match self {
            AttemptFailure::Connect(_) => Outcome::ConnectFailed,
            AttemptFailure::BeforeResponse(_) => Outcome::DiedBeforeResponse,
            AttemptFailure::ReusedBeforeResponse(_) => Outcome::ReusedDiedBeforeResponse,
            // A client failure says nothing about the broker.
            AttemptFailure::AfterResponse(_) => Outcome::DiedAfterResponse,
            AttemptFailure::Client(_) => Outcome::Answered,
        }
    }
}

/// One attempt on broker `id`: a connection (kept alive from an earlier request unless
/// `fresh`, else a new one), the head and the body sent, the response streamed back; the
/// connection kept for the next request when its response ended cleanly.
/// `Ok(keep)`: answered; `keep` says whether the client connection may carry another request.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Rc<Gw>,
    id: BrokerId,
    req: &Forward<'_>,
    body: &mut Option<BodyReader>,
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    idempotent: bool,
    fresh: bool,
) -> Result<bool, AttemptFailure> {
    let g = &gw.config.gateway;
    let (mut conn, reused) = connection(gw, id, fresh).await?;
    // Before the first response byte, a failure on a kept-alive connection is its own outcome
    // (see `Retry`): the broker may only have closed it while the request crossed its close.
    let before = |e: io::Error| {
        if reused {
            AttemptFailure::ReusedBeforeResponse(e)
        } else {
            AttemptFailure::BeforeResponse(e)
        }
    };
    conn.write_all(req.upstream_head).await.map_err(before)?;
    // The body, streamed from the client: what came with the head first.
    if let Some(reader) = body.as_mut() {
        reader
            .pump(client, buf, &mut conn, g.body_timeout)
            .await
            .map_err(|f| match f {
                AttemptFailure::BeforeResponse(e) => before(e),
                other => other,
            })?;
    }
    let head = future::or(
        async {
            read_response_head(&mut conn, Vec::new())
                .await
                .map_err(before)
        },
        async {
            if idempotent {
                died(gw, id).await;
                Err(before(io::Error::other("broker left rotation")))
            } else {
                future::pending::<()>().await;
                Err(before(io::ErrorKind::TimedOut.into()))
            }
        },
    );
    let head = future::or(head, async {
        glommio::timer::sleep(g.response_timeout).await;
        Err(before(io::ErrorKind::TimedOut.into()))
    })
    .await;
    let (resp, early) = head?;
    let request_done = body.as_ref().is_none_or(BodyReader::done);
    relay_response(gw, id, req.method, conn, resp, early, client, request_done).await
}

/// Streams broker `id`'s response (its head already read, `early` the body bytes that came
/// with it) to the client, then keeps `conn` for the next request or closes it.
/// `request_done`: the request's body was sent whole. `Ok(keep)` as for [`attempt`].
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    gw: &Rc<Gw>,
    id: BrokerId,
    method: &str,
    mut conn: TunnelConn,
    resp: ResponseHead,
    early: Vec<u8>,
    client: &mut TcpStream,
    request_done: bool,
) -> Result<bool, AttemptFailure> {
    let g = &gw.config.gateway;
    // A response to HEAD has no body whatever its head says.
    let framing = match resp.body {
        _ if method == "HEAD" => Some(BodyFraming::None),
        ResponseBody::Empty => Some(BodyFraming::None),
        ResponseBody::Length(n) => Some(BodyFraming::Length(n)),
        ResponseBody::Chunked => Some(BodyFraming::Chunked),
        ResponseBody::UntilClose => None,
    };
    let mut out = resp.lines;
    out.extend_from_slice(BROKER_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(gw.label(id).as_bytes());
    out.extend_from_slice(b"\r\n");
    if framing.is_none() {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // The body: to its end by its framing (the connection may then carry the next request), or
    // until the broker closes.
    let mut reader = framing.map(BodyReader::new);
    // Bytes after the body's end: the broker is out of step, the connection is not kept.
    let mut excess = false;
    let first = match reader.as_mut() {
        Some(r) => r.take(&early).map_err(AttemptFailure::AfterResponse)?,
        None => early.len(),
    };
    excess |= first < early.len();
    out.extend_from_slice(&early[..first]);
    client
        .write_all(&out)
        .await
        .map_err(AttemptFailure::Client)?;
    let mut chunk = vec![0u8; 16 << 10];
    while !excess && !reader.as_ref().is_some_and(BodyReader::done) {
        let n = future::or(
            async {
                conn.read(&mut chunk)
                    .await
                    .map_err(AttemptFailure::AfterResponse)
            },
            async {
                glommio::timer::sleep(g.body_timeout).await;
                Err(AttemptFailure::AfterResponse(
                    io::ErrorKind::TimedOut.into(),
                ))
            },
        )
        .await?;
        if n == 0 {
            if reader.is_some() {
                return Err(AttemptFailure::AfterResponse(
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            break;
        }
        let used = match reader.as_mut() {
            Some(r) => r.take(&chunk[..n]).map_err(AttemptFailure::AfterResponse)?,
            None => n,
        };
        excess |= used < n;
        client
            .write_all(&chunk[..used])
            .await
            .map_err(AttemptFailure::Client)?;
    }
    client.flush().await.map_err(AttemptFailure::Client)?;
    // Kept for the next request only when both messages ended where their framing says: the
    // request's body sent whole (a broker may answer before reading it) and the response's
    // read to its end, nothing after it, and the broker not closing.
    if reader.is_some() && !excess && !resp.close && request_done {
        gw.put_idle(id, conn);
    } else {
        let _ = conn.close().await;
    }
    Ok(framing.is_some())
}

/// A connection to broker `id` for an attempt: an idle kept-alive one that is still open
/// (unless `fresh`), else a new one. `true` with a kept-alive one.
async fn connection(
    gw: &Rc<Gw>,
    id: BrokerId,
    fresh: bool,
) -> Result<(TunnelConn, bool), AttemptFailure> {
    if !fresh && let Some(conn) = gw.take_idle(id) {
        return Ok((conn, true));
    }
    let conn = open(gw, id, true).await.map_err(AttemptFailure::Connect)?;
    gw.counters(id)
        .connections_opened
        .fetch_add(1, Ordering::Relaxed);
    Ok((conn, false))
}

/// Streams a request body from the client to a broker, by its framing.
#[derive(Debug)]
struct BodyReader {
    framing: BodyFraming,
    /// `Length`: bytes left; chunked: unused.
    left: u64,
    chunked: ChunkedDecoder,
    finished: bool,
}

impl BodyReader {
    fn new(framing: BodyFraming) -> Self {
        Self {
            framing,
            left: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::new(),
            finished: framing == BodyFraming::None || framing == BodyFraming::Length(0),
        }
    }

    fn done(&self) -> bool {
        self.finished
    }

    /// How many of `input`'s bytes belong to the body; marks the end.
    fn take(&mut self, input: &[u8]) -> io::Result<usize> {
        match self.framing {
            BodyFraming::None => {
                self.finished = true;
                Ok(0)
            }
            BodyFraming::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.left -= n as u64;
                self.finished = self.left == 0;
                Ok(n)
            }
            BodyFraming::Chunked => {
                let mut used = 0;
                while used < input.len() && !self.chunked.is_done() {
                    let d = self
                        .chunked
                        .decode(&input[used..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    used += d.consumed;
                    if d.consumed == 0 {
                        break;
                    }
                }
                self.finished = self.chunked.is_done();
                Ok(used)
            }
        }
    }

    /// Moves the body from `buf` (bytes already read) and then `client` to `conn`.
    async fn pump(
        &mut self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        conn: &mut TunnelConn,
        timeout: Duration,
    ) -> Result<(), AttemptFailure> {
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            if !buf.is_empty() && !self.finished {
                let n = self.take(buf).map_err(AttemptFailure::Client)?;
                conn.write_all(&buf[..n])
                    .await
                    .map_err(AttemptFailure::BeforeResponse)?;
                buf.drain(..n);
            }
            if self.finished {
                return Ok(());
            }
            let n = future::or(
                async {
                    client
                        .read(&mut chunk)
                        .await
                        .map_err(AttemptFailure::Client)
                },
                async {
                    glommio::timer::sleep(timeout).await;
                    Err(AttemptFailure::Client(io::ErrorKind::TimedOut.into()))
                },
            )
            .await?;
            if n == 0 {
                return Err(AttemptFailure::Client(io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
