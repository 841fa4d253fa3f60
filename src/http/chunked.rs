//! A strict, incremental decoder for `Transfer-Encoding: chunked` bodies.
//!
//! It accepts exactly `1*HEXDIG [ chunk-ext ] CRLF data CRLF ... 0 CRLF *(trailer CRLF) CRLF`,
//! with bounded chunk-size digits, extension and trailer lengths; anything else is an error
//! rather than a guess (a lenient chunk parser is a classic smuggling vector). Trailers are read
//! and dropped.

/// Longest accepted chunk-size line after the digits (extensions), bytes.
const MAX_EXT: usize = 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 8 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("chunk extension too long")]
    Extension,
    #[error("missing CRLF after chunk data")]
    Delimiter,
    #[error("trailers too long or malformed")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { digits: u8, value: u64 },
    Ext { len: usize },
    SizeLf,
    Data { left: u64 },
    DataCr,
    DataLf,
    TrailerStart,
    Trailer { len: usize },
    TrailerLf { len: usize },
    FinalLf,
    Done,
}

/// Incremental chunked-body decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Size of the chunk whose size line is being read (carried through `Ext` and `SizeLf`).
    pending: u64,
    trailer_bytes: usize,
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes consumed by this step.
    pub consumed: usize,
    /// Body data found in this step, as a range of the input.
    pub data: std::ops::Range<usize>,
    /// The terminating chunk and trailers have been read.
    pub done: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            pending: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` until it finds body data, the end, or runs out of input. Call again
    /// with the unconsumed rest.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Size { digits, value } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return Err(ChunkError::Size);
                        }
                        let d = (b as char).to_digit(16).map_or(0, u64::from);
                        self.state = State::Size {
                            digits: digits + 1,
                            value: value * 16 + d,
                        };
                        i += 1;
                    }
                    b';' | b'\r' if digits > 0 => {
                        self.state = if b == b';' {
                            State::Ext { len: 0 }
                        } else {
                            State::SizeLf
                        };
                        self.pending = value;
                        i += 1;
                    }
                    _ => return Err(ChunkError::Size),
                },
                State::Ext { len } => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError::Extension),
                        0..=8 | 10..=31 | 127 => return Err(ChunkError::Extension),
                        _ if len >= MAX_EXT => return Err(ChunkError::Extension),
                        _ => self.state = State::Ext { len: len + 1 },
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Size);
                    }
                    i += 1;
                    let size = std::mem::take(&mut self.pending);
                    self.state = if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data { left: size }
                    };
                }
                State::Data { left } => {
                    let avail = (input.len() - i) as u64;
                    let n = avail.min(left) as usize;
                    let start = i;
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    return Ok(Decoded {
                        consumed: i,
                        data: start..i,
                        done: false,
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Delimiter);
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Delimiter);
                    }
                    self.state = State::Size {
                        digits: 0,
                        value: 0,
                    };
                    i += 1;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::FinalLf
                    } else {
                        State::Trailer { len: 0 }
                    };
                    if b == b'\r' {
                        i += 1;
                    }
                }
                State::Trailer { len } => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError::Trailers);
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf { len },
                        b'\n' | 0 => return Err(ChunkError::Trailers),
                        _ => self.state = State::Trailer { len: len + 1 },
                    }
                    i += 1;
                }
                State::TrailerLf { .. } => {
                    if b != b'\n' {
                        return Err(ChunkError::Trailers);
                    }
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Trailers);
                    }
                    self.state = State::Done;
                    i += 1;
                    return Ok(Decoded {
                        consumed: i,
                        data: i..i,
                        done: true,
                    });
                }
            }
        }
        Ok(Decoded {
            consumed: i,
            data: i..i,
            done: self.state == State::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut fed = 0;
        let mut buf: Vec<u8> = Vec::new();
        while !d.is_done() {
            if fed < input.len() {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            let r = d.decode(&buf)?;
            body.extend_from_slice(&buf[r.data.clone()]);
            buf.drain(..r.consumed);
            if r.consumed == 0 && fed == input.len() && !d.is_done() {
                break;
            }
        }
        assert!(d.is_done(), "incomplete");
        Ok((body, buf.len() + input.len() - fed))
    }

    #[test]
    fn decodes_in_any_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = decode_all(wire, step).expect("valid");
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(rest, 4, "the next request's bytes are not consumed");
        }
    }

    #[test]
    fn rejects_malformed_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"-5\r\n",
            b" 5\r\n",
            b"1000000000000000\r\n",
            b"0\r\nX: 1\n\r\n",
            b"5;\x00\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            let mut input = bad;
            let mut failed = false;
            for _ in 0..10 {
                match d.decode(input) {
                    Err(_) => {
                        failed = true;
                        break;
                    }
                    Ok(r) => input = &input[r.consumed..],
                }
            }
            assert!(failed, "accepted {:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bounds_trailers() {
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..1000 {
            wire.extend_from_slice(b"X-Long-Trailer: aaaaaaaaaaaaaaaa\r\n");
        }
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(&wire).map(|_| ()), Err(ChunkError::Trailers));
    }
}
