//! Scripted byte streams for unit tests of code generic over `AsyncRead + AsyncWrite`.
//!
//! [`Script`]: reads come from `input` in `step`-byte pieces, then EOF (or pending forever when
//! `hang`); writes are recorded in `output`. [`Steps`]: reads follow a list of steps (data, end of
//! stream, reset, silence) and writes go to a record the test keeps after the stream is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use super::clock::{FakeClock, Wait};

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

/// What a [`Steps`] stream does on its next reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// These bytes, over as many reads as the reader's buffer needs.
    Data(Vec<u8>),
    /// End of stream, then on every later read too.
    Eof,
    /// `ConnectionReset`, then on every later read too.
    Reset,
    /// Never ready: a silent peer. Only a timer can end the wait, so a test that reaches it must
    /// run with a timer that fires.
    Silent,
    /// Nothing for this long of the stream's [`FakeClock`] (see [`Steps::clocked`]), then the
    /// next step: a peer that answers late.
    Pause(std::time::Duration),
}

impl Read {
    /// `Data` from text.
    pub fn data(s: impl AsRef<[u8]>) -> Self {
        Read::Data(s.as_ref().to_vec())
    }
}

/// What a [`Steps`] stream was given and did, shared with the test: the stream itself is usually
/// moved into (and dropped by) the code under test.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Every byte written that the stream accepted.
    pub written: Vec<u8>,
    /// `poll_close` was called.
    pub closed: bool,
}

/// A scripted peer: reads follow a list of [`Read`] steps (end of stream after the last);
/// writes are recorded in a shared [`Record`] and fail with `BrokenPipe` once `write_limit`
/// bytes were accepted (a peer that went away).
#[derive(Debug)]
pub(crate) struct Steps {
    reads: std::collections::VecDeque<Read>,
    write_limit: usize,
    record: std::rc::Rc<std::cell::RefCell<Record>>,
    /// The time [`Read::Pause`] steps wait on, and the pause under way.
    clock: Option<FakeClock>,
    pause: Option<Wait>,
}

impl Steps {
    /// A stream that reads `reads` and accepts every write.
    pub fn new(reads: impl IntoIterator<Item = Read>) -> Self {
        Self {
            reads: reads.into_iter().collect(),
            write_limit: usize::MAX,
            record: Default::default(),
            clock: None,
            pause: None,
        }
    }

    /// [`Read::Pause`] steps wait on `clock`.
    pub fn clocked(mut self, clock: &FakeClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }

    /// Writes fail once `n` bytes were accepted (the write that crosses it accepts what fits).
    pub fn write_limit(mut self, n: usize) -> Self {
        self.write_limit = n;
        self
    }

    /// The shared record of what was written.
    pub fn record(&self) -> std::rc::Rc<std::cell::RefCell<Record>> {
        self.record.clone()
    }
}

impl AsyncRead for Steps {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        while let Some(&Read::Pause(d)) = self.reads.front() {
            let this = &mut *self;
            let clock = this
                .clock
                .as_ref()
                .expect("Read::Pause needs Steps::clocked");
            let pause = this.pause.get_or_insert_with(|| clock.wait(d, false));
            if !pause.due() {
                // The racing sleep of the same clock moves time and wakes the task.
                return Poll::Pending;
            }
            this.pause = None;
            this.reads.pop_front();
        }
        match self.reads.front_mut() {
            None | Some(Read::Eof) => Poll::Ready(Ok(0)),
            Some(Read::Pause(_)) => unreachable!("pauses are waited out above"),
            Some(Read::Reset) => Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into())),
            Some(Read::Silent) => Poll::Pending,
            Some(Read::Data(d)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                d.drain(..n);
                if d.is_empty() {
                    self.reads.pop_front();
                }
                Poll::Ready(Ok(n))
            }
        }
    }
}

impl AsyncWrite for Steps {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut r = self.record.borrow_mut();
        let room = self.write_limit.saturating_sub(r.written.len());
        if room == 0 && !buf.is_empty() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = room.min(buf.len());
        r.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.record.borrow_mut().closed = true;
        Poll::Ready(Ok(()))
    }
}
