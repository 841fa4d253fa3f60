//! Bodies, both ways: the request head and body to the upstream ([`Exchange::send_request`]) and
//! the response body back to the vendor ([`Exchange::stream_response`]).
//!
//! Invariants: bodies stream through the two fixed buffers with back-pressure (a multi-GB clone
//! never sits in memory); a vendor body that stalls longer than `body_timeout` or ends early fails
//! the exchange on the vendor's side, an upstream that stalls longer than `response_timeout`
//! between reads or closes early fails it on the upstream's; a close-delimited response body is
//! sent on as chunks. Every byte forwarded is counted (and sampled for body logging) in the
//! exchange's [`super::Outcome`].

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, future};

use super::Exchange;
use super::outcome::{ErrorKind, ProxyError};
use super::response::Framing;
use crate::http::{BodyFraming, ChunkedDecoder};
use crate::server::Timer;
use crate::server::buffered::Buffered;
use crate::upstream::Upstreams;

/// `f`, or `None` when `d` passes first.
pub(super) async fn timed<T: Timer, F: Future>(timer: &T, d: Duration, f: F) -> Option<F::Output> {
    future::or(async { Some(f.await) }, async {
        timer.sleep(d).await;
        None
    })
    .await
}

/// Writes `data` as one chunk of a chunked body.
async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &mut String,
    data: &[u8],
) -> io::Result<()> {
    frame.clear();
    let _ = write!(frame, "{:x}\r\n", data.len());
    w.write_all(frame.as_bytes()).await?;
    w.write_all(data).await?;
    w.write_all(b"\r\n").await
}

/// The upstream closed or reset the connection while the request body was going out.
fn body_refused() -> ProxyError {
    ProxyError::new(
        ErrorKind::Reset,
        "upstream closed the connection while receiving the body",
    )
}

/// The upstream closed or reset the connection in the middle of the response body.
fn cut_short() -> ProxyError {
    ProxyError::new(
        ErrorKind::Reset,
        "upstream closed the connection during the response body",
    )
}

impl<C, T, U> Exchange<'_, '_, C, T, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    /// Writes the request head and body to `up`. A write that fails is
    /// [`ProxyError::closed_before_answer`], which the caller may retry.
    pub(super) async fn send_request<W: AsyncWrite + Unpin>(
        &mut self,
        up: &mut W,
        head: &[u8],
    ) -> Result<(), ProxyError> {
        let closed = || ProxyError::closed_before_answer("upstream closed the connection");
        up.write_all(head).await.map_err(|_| closed())?;
        if let Some(body) = &self.checked_body {
            // Read and checked already: sent whole, in the framing the head announces.
            let framed = match self.request.head.body {
                BodyFraming::Chunked if !body.is_empty() => {
                    let mut f = format!("{:x}\r\n", body.len()).into_bytes();
                    f.extend_from_slice(body);
                    f.extend_from_slice(b"\r\n0\r\n\r\n");
                    f
                }
                BodyFraming::Chunked => b"0\r\n\r\n".to_vec(),
                _ => body.clone(),
            };
            up.write_all(&framed).await.map_err(|_| body_refused())?;
            self.out.request_bytes += body.len() as u64;
            return up.flush().await.map_err(|_| closed());
        }
        match self.request.head.body {
            BodyFraming::None => {}
            BodyFraming::Length(n) => self.send_length(up, n).await?,
            BodyFraming::Chunked => self.send_chunked(up).await?,
        }
        up.flush().await.map_err(|_| closed())
    }

    /// One read of the upstream's answer (its head not complete yet), raced against `deadline`:
    /// the response head's one deadline, `response_timeout` after the request went out, shared
    /// by every read of the head (see [`super::Exchange::attempt`]). 504 when the deadline comes
    /// first, 502 when the connection closes first.
    pub(super) async fn read_answer(
        &self,
        deadline: Pin<&mut impl Future<Output = ()>>,
        read: impl Future<Output = io::Result<usize>>,
    ) -> Result<usize, ProxyError> {
        let expired = async {
            deadline.await;
            None
        };
        match future::or(async { Some(read.await) }, expired).await {
            None => Err(ProxyError::new(
                ErrorKind::ResponseTimeout,
                "upstream did not answer in time",
            )),
            Some(Err(_)) | Some(Ok(0)) => Err(ProxyError::closed_before_answer(
                "upstream closed the connection before answering",
            )),
            Some(Ok(n)) => Ok(n),
        }
    }

    /// Streams a `Content-Length` request body of `left` bytes to `up`.
    async fn send_length<W: AsyncWrite + Unpin>(
        &mut self,
        up: &mut W,
        mut left: u64,
    ) -> Result<(), ProxyError> {
        while left > 0 {
            if self.vendor.buffered().is_empty() {
                self.fill_body().await?;
            }
            let data = self.vendor.buffered();
            let take = left.min(data.len() as u64) as usize;
            self.out.sample_request(&data[..take]);
            up.write_all(&data[..take])
                .await
                .map_err(|_| body_refused())?;
            self.vendor.consume(take);
            left -= take as u64;
            self.out.request_bytes += take as u64;
        }
        self.out.body_read = true;
        Ok(())
    }

    /// Streams a chunked request body to `up`, decoded and framed again (extensions and trailers
    /// do not pass).
    async fn send_chunked<W: AsyncWrite + Unpin>(&mut self, up: &mut W) -> Result<(), ProxyError> {
        let mut decoder = ChunkedDecoder::new();
        let mut frame = String::with_capacity(16);
        loop {
            let step = decoder.decode(self.vendor.buffered()).map_err(|e| {
                ProxyError::new(
                    ErrorKind::MalformedBody,
                    format!("malformed chunked body: {e}"),
                )
            })?;
            if !step.data.is_empty() {
                let data = &self.vendor.buffered()[step.data.clone()];
                self.out.sample_request(data);
                write_chunk(up, &mut frame, data)
                    .await
                    .map_err(|_| body_refused())?;
                self.out.request_bytes += data.len() as u64;
            }
            self.vendor.consume(step.consumed);
            if step.done {
                self.out.body_read = true;
                up.write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|_| body_refused())?;
                return Ok(());
            }
            if step.consumed == 0 || self.vendor.buffered().is_empty() {
                self.fill_body().await?;
            }
        }
    }

    /// Reads the whole request body (for `[[allow.body]]`), at most `max_checked_body` bytes:
    /// a larger one is refused (413) before any of it is read past the cap. The connection is
    /// left after the body.
    pub(super) async fn read_checked_body(&mut self) -> Result<Vec<u8>, ProxyError> {
        let max = self.ctx.max_checked_body;
        let too_large = || {
            ProxyError::new(
                ErrorKind::BodyTooLarge,
                format!("request body over the {max} bytes the broker checks"),
            )
        };
        if self.request.head.expect_continue {
            // The URL is allowed; the body decides: let the vendor send it.
            self.vendor
                .conn
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ProxyError::vendor_closed())?;
        }
        let mut body = Vec::new();
        match self.request.head.body {
            BodyFraming::None => {}
            BodyFraming::Length(n) => {
                if n > max as u64 {
                    return Err(too_large());
                }
                let mut left = n as usize;
                while left > 0 {
                    if self.vendor.buffered().is_empty() {
                        self.fill_body().await?;
                    }
                    let data = self.vendor.buffered();
                    let take = left.min(data.len());
                    body.extend_from_slice(&data[..take]);
                    self.vendor.consume(take);
                    left -= take;
                }
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let step = decoder.decode(self.vendor.buffered()).map_err(|e| {
                        ProxyError::new(
                            ErrorKind::MalformedBody,
                            format!("malformed chunked body: {e}"),
                        )
                    })?;
                    body.extend_from_slice(&self.vendor.buffered()[step.data.clone()]);
                    self.vendor.consume(step.consumed);
                    if body.len() > max {
                        return Err(too_large());
                    }
                    if step.done {
                        break;
                    }
                    if step.consumed == 0 || self.vendor.buffered().is_empty() {
                        self.fill_body().await?;
                    }
                }
            }
        }
        self.out.sample_request(&body);
        self.out.body_read = true;
        Ok(body)
    }

    /// Reads more of the vendor's request body, or says why it cannot.
    async fn fill_body(&mut self) -> Result<(), ProxyError> {
        match timed(self.timer, self.ctx.timeouts.body, self.vendor.fill()).await {
            None => Err(ProxyError::new(
                ErrorKind::RequestBodyTimeout,
                "request body timeout",
            )),
            Some(Ok(0)) | Some(Err(_)) => Err(ProxyError::new(
                ErrorKind::BodyIncomplete,
                "request body incomplete",
            )),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Streams the response body from `up` (positioned after the head) to the vendor; returns
    /// whether the upstream connection ended the exchange cleanly (nothing left over, reusable).
    pub(super) async fn stream_response<R: AsyncRead + Unpin>(
        &mut self,
        up: &mut Buffered<'_, R>,
        framing: Framing,
    ) -> Result<bool, ProxyError> {
        match framing {
            Framing::None => Ok(up.buffered().is_empty()),
            Framing::Length(n) => self.relay_length(up, n).await,
            Framing::Chunked => self.relay_chunked(up).await,
            Framing::UntilClose => self.relay_until_close(up).await,
        }
    }

    async fn relay_length<R: AsyncRead + Unpin>(
        &mut self,
        up: &mut Buffered<'_, R>,
        mut left: u64,
    ) -> Result<bool, ProxyError> {
        loop {
            let data = up.buffered();
            let take = left.min(data.len() as u64) as usize;
            self.out.sample_response(&data[..take]);
            if take > 0 {
                self.vendor
                    .conn
                    .write_all(&data[..take])
                    .await
                    .map_err(|_| ProxyError::vendor_closed())?;
            }
            up.consume(take);
            left -= take as u64;
            self.out.response_bytes += take as u64;
            if left == 0 {
                return Ok(up.buffered().is_empty());
            }
            if self.read_body(up).await? == 0 {
                return Err(cut_short());
            }
        }
    }

    async fn relay_chunked<R: AsyncRead + Unpin>(
        &mut self,
        up: &mut Buffered<'_, R>,
    ) -> Result<bool, ProxyError> {
        let mut decoder = ChunkedDecoder::new();
        let mut frame = String::with_capacity(16);
        loop {
            let step = decoder.decode(up.buffered()).map_err(|e| {
                ProxyError::new(
                    ErrorKind::BadResponse,
                    format!("malformed chunked response body: {e}"),
                )
            })?;
            if !step.data.is_empty() {
                let data = &up.buffered()[step.data.clone()];
                self.out.sample_response(data);
                write_chunk(self.vendor.conn, &mut frame, data)
                    .await
                    .map_err(|_| ProxyError::vendor_closed())?;
                self.out.response_bytes += data.len() as u64;
            }
            up.consume(step.consumed);
            if step.done {
                self.vendor
                    .conn
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|_| ProxyError::vendor_closed())?;
                return Ok(up.buffered().is_empty());
            }
            if (step.consumed == 0 || up.buffered().is_empty()) && self.read_body(up).await? == 0 {
                return Err(cut_short());
            }
        }
    }

    /// A body without length or chunking ends when the upstream closes; the vendor gets it as
    /// chunks, so its connection can carry on. The upstream connection cannot.
    async fn relay_until_close<R: AsyncRead + Unpin>(
        &mut self,
        up: &mut Buffered<'_, R>,
    ) -> Result<bool, ProxyError> {
        let mut frame = String::with_capacity(16);
        loop {
            let data = up.buffered();
            if !data.is_empty() {
                self.out.sample_response(data);
                write_chunk(self.vendor.conn, &mut frame, data)
                    .await
                    .map_err(|_| ProxyError::vendor_closed())?;
                self.out.response_bytes += data.len() as u64;
                let n = data.len();
                up.consume(n);
            }
            if self.read_body(up).await? == 0 {
                self.vendor
                    .conn
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|_| ProxyError::vendor_closed())?;
                return Ok(false);
            }
        }
    }

    /// One read of the response body into `up`; `Ok(0)` at the end of the stream.
    async fn read_body<R: AsyncRead + Unpin>(
        &self,
        up: &mut Buffered<'_, R>,
    ) -> Result<usize, ProxyError> {
        match timed(self.timer, self.ctx.timeouts.response, up.fill()).await {
            None => Err(ProxyError::new(
                ErrorKind::ResponseBodyTimeout,
                "upstream response body stalled",
            )),
            Some(Err(_)) => Err(cut_short()),
            Some(Ok(n)) => Ok(n),
        }
    }
}
