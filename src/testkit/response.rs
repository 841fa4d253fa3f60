//! An incremental HTTP/1.1 response reader for the vendor-side client (tests, demo, loadtest).

use crate::http::ChunkedDecoder;

/// A complete response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("malformed response head")]
    Head,
    #[error("malformed chunked body")]
    Chunked,
    #[error("response head too large")]
    TooLarge,
}

#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    None,
}

/// Reads one response from bytes fed in any split.
#[derive(Debug)]
pub struct ResponseReader {
    head: Vec<u8>,
    response: Option<Response>,
    body: Body,
    /// The request was HEAD: no body whatever the headers say.
    head_request: bool,
    /// Keep the body bytes (false: only count them, for load tests).
    keep_body: bool,
    body_len: u64,
}

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

impl ResponseReader {
    /// A reader for the response to a request (`head_request` for HEAD).
    pub fn new(head_request: bool, keep_body: bool) -> Self {
        Self {
            head: Vec::new(),
            response: None,
            body: Body::None,
            head_request,
            keep_body,
            body_len: 0,
        }
    }

    /// Body bytes seen so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Feeds bytes; returns how many were used and the response once complete. Bytes after the
    /// end of the response are not consumed (pipelining).
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(usize, Option<Response>), ReadError> {
        let total = input.len();
        if self.response.is_none() {
            let before = self.head.len();
            self.head.extend_from_slice(input);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.head) {
                Ok(httparse::Status::Partial) => {
                    if self.head.len() > MAX_HEAD {
                        return Err(ReadError::TooLarge);
                    }
                    return Ok((total, None));
                }
                Ok(httparse::Status::Complete(n)) => {
                    let status = r.code.unwrap_or(0);
                    let hs: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let find = |name: &str| {
                        hs.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_owned())
                    };
                    self.body = if self.head_request
                        || status == 204
                        || status == 304
                        || (100..200).contains(&status)
                    {
                        Body::None
                    } else if find("transfer-encoding")
                        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
                    {
                        Body::Chunked(ChunkedDecoder::new())
                    } else if let Some(len) = find("content-length") {
                        Body::Length(len.parse().map_err(|_| ReadError::Head)?)
                    } else {
                        Body::UntilClose
                    };
                    self.response = Some(Response {
                        status,
                        headers: hs,
                        body: Vec::new(),
                    });
                    // Bytes of `input` that belong to the head.
                    let used = n - before;
                    self.head.clear();
                    input = &input[used..];
                }
                Err(_) => return Err(ReadError::Head),
            }
        }
        let used_before_body = total - input.len();
        let mut used = 0;
        loop {
            match &mut self.body {
                Body::None => break,
                Body::Length(left) => {
                    let n = (*left).min(input.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.body = Body::None;
                    }
                    self.take_body(&input[..n]);
                    used += n;
                    break;
                }
                Body::UntilClose => {
                    self.take_body(input);
                    return Ok((total, None));
                }
                Body::Chunked(d) => {
                    let step = d.decode(&input[used..]).map_err(|_| ReadError::Chunked)?;
                    let data = (used + step.data.start)..(used + step.data.end);
                    if step.done {
                        self.body = Body::None;
                    }
                    self.take_body(&input[data]);
                    used += step.consumed;
                    if step.done {
                        break;
                    }
                    if step.consumed == 0 || used == input.len() {
                        return Ok((used_before_body + used, None));
                    }
                }
            }
        }
        let done = matches!(self.body, Body::None);
        Ok((
            used_before_body + used,
            if done { self.response.take() } else { None },
        ))
    }

    /// The peer closed the connection: a close-delimited body ends here.
    pub fn finish_on_close(&mut self) -> Option<Response> {
        match self.body {
            Body::UntilClose => {
                self.body = Body::None;
                self.response.take()
            }
            _ => None,
        }
    }

    fn take_body(&mut self, bytes: &[u8]) {
        self.body_len += bytes.len() as u64;
        if self.keep_body {
            if let Some(r) = &mut self.response {
                r.body.extend_from_slice(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(wire: &[u8], step: usize) -> (Response, usize) {
        let mut r = ResponseReader::new(false, true);
        let mut off = 0;
        loop {
            let end = (off + step).min(wire.len());
            let (used, done) = r.feed(&wire[off..end]).expect("valid");
            off += used;
            if let Some(resp) = done {
                return (resp, off);
            }
            assert!(end < wire.len() || used > 0, "stuck");
        }
    }

    #[test]
    fn content_length_and_chunked_in_any_split() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKHTTP/1.1 404 Not Found\r\n";
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT";
        for step in [1, 3, 1000] {
            let (r, used) = read_all(a, step);
            assert_eq!((r.status, r.body.as_slice()), (200, &b"OK"[..]));
            assert_eq!(used, a.len() - "HTTP/1.1 404 Not Found\r\n".len());
            let (r, used) = read_all(c, step);
            assert_eq!(r.body, b"abcde");
            assert_eq!(used, c.len() - 4);
        }
    }
}
