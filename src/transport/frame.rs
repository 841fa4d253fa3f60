//! The stream framing of WireGuard datagrams, compatible with Semgrep's broker
//! (`preferTcpTransport`): every datagram is prefixed by its length, a 16-bit big-endian
//! integer; nothing else is on the stream.
//!
//! [`FrameDecoder`] takes bytes as they arrive and hands out whole datagrams. Its buffer is
//! allocated once, sized from the largest datagram accepted: a length of zero or above that
//! maximum is a [`FrameError`] (the caller closes the stream: after a bad length nothing that
//! follows can be trusted to be aligned), so a peer can never make it grow.

use std::fmt;

/// Bytes of the length prefix.
pub const PREFIX: usize = 2;

/// The longest datagram the framing can carry.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// A framing violation: the stream must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix of zero (no WireGuard message is empty).
    Empty,
    /// A length above what this side accepts.
    TooLong {
        /// The length announced.
        len: usize,
        /// The most accepted.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => f.write_str("a frame of length 0"),
            FrameError::TooLong { len, max } => {
                write!(f, "a frame of {len} bytes (at most {max} accepted)")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends `datagram`, framed, to `out`. A datagram of 0 or more than [`MAX_DATAGRAM`] bytes is
/// refused (`out` is left as it was).
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = datagram.len();
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let prefix = u16::try_from(len).map_err(|_| FrameError::TooLong {
        len,
        max: MAX_DATAGRAM,
    })?;
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Splits a byte stream back into datagrams, in a buffer of fixed size.
///
/// Use: write received bytes into [`FrameDecoder::space`], report them with
/// [`FrameDecoder::filled`], then take datagrams with [`FrameDecoder::next_frame`] until it
/// returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder accepting datagrams of 1 to `max` bytes (capped at [`MAX_DATAGRAM`]). Its buffer
    /// holds two of the largest frames, so a read never has less than one frame of room.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, MAX_DATAGRAM);
        Self {
            buf: vec![0u8; 2 * (PREFIX + max)].into_boxed_slice(),
            start: 0,
            end: 0,
            max,
        }
    }

    /// The longest datagram accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes received but not yet handed out as a datagram.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Room to read into (never empty): the unconsumed bytes are moved to the front first when
    /// less than one largest frame fits behind them.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < PREFIX + self.max {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written at the start of [`FrameDecoder::space`] (clamped to its length).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole datagram, `Ok(None)` when more bytes are needed, or a framing error (the
    /// stream cannot be read further; the decoder stays in error).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        let Some(prefix) = avail.get(..PREFIX) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        if avail.len() < PREFIX + len {
            return Ok(None);
        }
        let from = self.start + PREFIX;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `bytes` in chunks of the given sizes (cycled) and collects the datagrams.
    fn decode_chunked(
        dec: &mut FrameDecoder,
        bytes: &[u8],
        chunks: &[usize],
    ) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let want = chunks[i % chunks.len()].max(1);
            i += 1;
            let space = dec.space();
            assert!(!space.is_empty(), "the decoder always has room");
            let n = want.min(space.len()).min(bytes.len() - at);
            space[..n].copy_from_slice(&bytes[at..at + n]);
            dec.filled(n);
            at += n;
            while let Some(d) = dec.next_frame()? {
                out.push(d.to_vec());
            }
        }
        Ok(out)
    }

    #[test]
    fn encode_prefixes_the_big_endian_length() {
        let mut out = vec![9];
        encode(&[1, 2, 3], &mut out).expect("encode");
        assert_eq!(out, vec![9, 0, 3, 1, 2, 3]);
        let big = vec![7u8; 300];
        let mut out = Vec::new();
        encode(&big, &mut out).expect("encode");
        assert_eq!(&out[..2], &[1, 44]);
        assert_eq!(out.len(), 302);
        assert_eq!(encode(&[], &mut out), Err(FrameError::Empty));
        let huge = vec![0u8; MAX_DATAGRAM + 1];
        assert!(matches!(
            encode(&huge, &mut out),
            Err(FrameError::TooLong { .. })
        ));
        assert_eq!(out.len(), 302, "a refused datagram leaves nothing behind");
    }

    #[test]
    fn a_zero_length_or_oversized_prefix_is_a_framing_error() {
        let mut dec = FrameDecoder::new(1500);
        assert_eq!(
            decode_chunked(&mut dec, &[0, 0], &[2]),
            Err(FrameError::Empty)
        );
        let mut dec = FrameDecoder::new(1500);
        // 1501 announced: refused at the prefix, before any payload is waited for.
        assert_eq!(
            decode_chunked(&mut dec, &[0x05, 0xdd], &[2]),
            Err(FrameError::TooLong {
                len: 1501,
                max: 1500
            })
        );
        let mut dec = FrameDecoder::new(1500);
        let mut bytes = Vec::new();
        encode(&[1; 10], &mut bytes).expect("encode");
        bytes.extend_from_slice(&[0xff, 0xff]);
        let err = decode_chunked(&mut dec, &bytes, &[1]);
        assert_eq!(
            err,
            Err(FrameError::TooLong {
                len: 65535,
                max: 1500
            })
        );
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let mut dec = FrameDecoder::new(100);
        let space = dec.space();
        space[..3].copy_from_slice(&[0, 4, 1]);
        dec.filled(3);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 3);
        let space = dec.space();
        space[..3].copy_from_slice(&[2, 3, 4]);
        dec.filled(3);
        assert_eq!(dec.next_frame(), Ok(Some(&[1u8, 2, 3, 4][..])));
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn the_buffer_never_grows_under_a_stream_of_largest_frames() {
        let max = 1500;
        let mut dec = FrameDecoder::new(max);
        let cap = dec.space().len();
        let mut bytes = Vec::new();
        for i in 0..100u8 {
            encode(&vec![i; max - usize::from(i % 3)], &mut bytes).expect("encode");
        }
        let got = decode_chunked(&mut dec, &bytes, &[1499, 7, 3000, 1]).expect("valid stream");
        assert_eq!(got.len(), 100);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), max - i % 3);
            assert!(d.iter().all(|&b| usize::from(b) == i));
        }
        assert!(dec.space().len() <= cap);
        assert_eq!(cap, 2 * (PREFIX + max));
    }

    proptest! {
        /// Any sequence of datagrams, cut into any chunks, comes back whole and in order.
        #[test]
        fn any_datagrams_in_any_chunks_roundtrip(
            datagrams in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 1..600), 0..40),
            chunks in proptest::collection::vec(1usize..1300, 1..10),
        ) {
            let mut bytes = Vec::new();
            for d in &datagrams {
                encode(d, &mut bytes).expect("encode");
            }
            let mut dec = FrameDecoder::new(600);
            let got = decode_chunked(&mut dec, &bytes, &chunks).expect("valid stream");
            prop_assert_eq!(got, datagrams);
            prop_assert_eq!(dec.buffered(), 0);
        }

        /// Arbitrary bytes never panic and never make the decoder hand out more than its
        /// maximum; it either decodes or reports a framing error.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..5000),
            chunks in proptest::collection::vec(1usize..700, 1..6),
            max in 1usize..2000,
        ) {
            let mut dec = FrameDecoder::new(max);
            if let Ok(got) = decode_chunked(&mut dec, &bytes, &chunks) {
                prop_assert!(got.iter().all(|d| !d.is_empty() && d.len() <= max));
                prop_assert!(dec.buffered() < PREFIX + max);
            }
        }
    }
}
