//! A connection as a buffered reader: bytes already read (past a request head, or past an
//! upstream response head) are consumed first, then the connection is read into the same bounded
//! buffer. The vendor's connection and an upstream connection are both read this way.

use std::io;

use futures_lite::{AsyncRead, AsyncReadExt};

/// A connection and its read buffer. `buf[pos..filled]` holds unread bytes.
#[derive(Debug)]
pub struct Buffered<'a, C> {
    pub conn: &'a mut C,
    pub buf: &'a mut [u8],
    pub pos: usize,
    pub filled: usize,
}

impl<C: AsyncRead + Unpin> Buffered<'_, C> {
    /// Buffered bytes not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// Whether the unread bytes fill the whole buffer (a read could not add any).
    pub fn is_full(&self) -> bool {
        self.filled - self.pos == self.buf.len()
    }

    /// Marks `n` buffered bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }

    /// Reads more bytes into the buffer (compacting it first); `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
        }
        if self.filled == self.buf.len() {
            return Err(io::Error::other("read buffer full"));
        }
        let n = self.conn.read(&mut self.buf[self.filled..]).await?;
        self.filled += n;
        Ok(n)
    }
}
