//! A scripted byte stream for unit tests of code generic over `AsyncRead + AsyncWrite`: reads
//! come from `input` in `step`-byte pieces, then EOF (or pending forever when `hang`); writes are
//! recorded in `output`.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

#[derive(Debug)]
pub(crate) struct Script {
    pub input: Vec<u8>,
    pub pos: usize,
    pub step: usize,
    pub hang: bool,
    pub output: Vec<u8>,
    pub closed: bool,
}

impl Script {
    /// Reads `input` at most `step` bytes at a time, then EOF.
    pub fn new(input: &[u8], step: usize) -> Self {
        Self {
            input: input.to_vec(),
            pos: 0,
            step,
            hang: false,
            output: Vec::new(),
            closed: false,
        }
    }

    /// After `input`, reads stay pending instead of returning EOF.
    pub fn hanging(mut self, hang: bool) -> Self {
        self.hang = hang;
        self
    }
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pos == self.input.len() && self.hang {
            return Poll::Pending;
        }
        let n = self.step.min(buf.len()).min(self.input.len() - self.pos);
        let start = self.pos;
        buf[..n].copy_from_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}
