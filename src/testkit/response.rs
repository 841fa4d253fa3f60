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
                    self.body = framing(self.head_request, status, &hs)?;
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

/// What [`ResponseMeter`] reports for one complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered {
    pub status: u16,
    /// The server said `Connection: close` (or the body ran until the close).
    pub close: bool,
    /// Bytes of the status line and headers.
    pub head_bytes: u64,
    /// Body bytes (decoded, for a chunked body).
    pub body_bytes: u64,
}

/// A response reader for load generation: status, lengths and the close flag only, with no
/// allocation per response once warm (the head buffer is reused, the body is counted, never
/// kept). Feed it the bytes of one response after another, calling [`ResponseMeter::start`]
/// before each.
#[derive(Debug)]
pub struct ResponseMeter {
    head: Vec<u8>,
    body: Body,
    in_head: bool,
    head_request: bool,
    status: u16,
    close: bool,
    head_bytes: u64,
    body_bytes: u64,
}

impl Default for ResponseMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseMeter {
    /// A meter ready for a first response to a non-HEAD request.
    pub fn new() -> Self {
        Self {
            head: Vec::with_capacity(1024),
            body: Body::None,
            in_head: true,
            head_request: false,
            status: 0,
            close: false,
            head_bytes: 0,
            body_bytes: 0,
        }
    }

    /// Resets for the next response (`head_request`: the request was HEAD).
    pub fn start(&mut self, head_request: bool) {
        self.head.clear();
        self.body = Body::None;
        self.in_head = true;
        self.head_request = head_request;
        self.status = 0;
        self.close = false;
        self.head_bytes = 0;
        self.body_bytes = 0;
    }

    /// Whether any byte of the current response arrived.
    pub fn started(&self) -> bool {
        !self.head.is_empty() || !self.in_head
    }

    fn done(&self) -> Metered {
        Metered {
            status: self.status,
            close: self.close,
            head_bytes: self.head_bytes,
            body_bytes: self.body_bytes,
        }
    }

    /// Feeds bytes; returns how many belong to this response and the figures once it is
    /// complete. Bytes after its end are not consumed.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Metered>), ReadError> {
        let mut used = 0;
        if self.in_head {
            // Append in small steps so that a head followed by a large body copies little.
            loop {
                let before = self.head.len();
                let room = (MAX_HEAD + 1).saturating_sub(before);
                let take = (input.len() - used).min(4096).min(room);
                if take == 0 {
                    if room == 0 {
                        return Err(ReadError::TooLarge);
                    }
                    return Ok((used, None));
                }
                self.head.extend_from_slice(&input[used..used + take]);
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut headers);
                match r.parse(&self.head) {
                    Ok(httparse::Status::Partial) => used += take,
                    Ok(httparse::Status::Complete(n)) => {
                        used += n - before;
                        self.status = r.code.unwrap_or(0);
                        self.head_bytes = n as u64;
                        let mut chunked = false;
                        let mut length = None;
                        for h in r.headers.iter() {
                            let v = trim(h.value);
                            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = v.eq_ignore_ascii_case(b"chunked");
                            } else if h.name.eq_ignore_ascii_case("content-length") {
                                let n = std::str::from_utf8(v)
                                    .ok()
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .ok_or(ReadError::Head)?;
                                length = Some(n);
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                self.close = v.eq_ignore_ascii_case(b"close");
                            }
                        }
                        let status = self.status;
                        self.body = if self.head_request
                            || status == 204
                            || status == 304
                            || (100..200).contains(&status)
                        {
                            Body::None
                        } else if chunked {
                            Body::Chunked(ChunkedDecoder::new())
                        } else if let Some(n) = length {
                            if n == 0 { Body::None } else { Body::Length(n) }
                        } else {
                            self.close = true;
                            Body::UntilClose
                        };
                        self.in_head = false;
                        self.head.clear();
                        break;
                    }
                    Err(_) => return Err(ReadError::Head),
                }
            }
        }
        loop {
            match &mut self.body {
                Body::None => return Ok((used, Some(self.done()))),
                Body::Length(left) => {
                    let n = (*left).min((input.len() - used) as u64);
                    *left -= n;
                    self.body_bytes += n;
                    used += n as usize;
                    if *left == 0 {
                        self.body = Body::None;
                        continue;
                    }
                    return Ok((used, None));
                }
                Body::UntilClose => {
                    self.body_bytes += (input.len() - used) as u64;
                    return Ok((input.len(), None));
                }
                Body::Chunked(d) => {
                    if used == input.len() {
                        return Ok((used, None));
                    }
                    let step = d.decode(&input[used..]).map_err(|_| ReadError::Chunked)?;
                    self.body_bytes += step.data.len() as u64;
                    used += step.consumed;
                    if step.done {
                        self.body = Body::None;
                        continue;
                    }
                    if step.consumed == 0 {
                        return Ok((used, None));
                    }
                }
            }
        }
    }

    /// The peer closed the connection: a close-delimited body ends here.
    pub fn finish_on_close(&mut self) -> Option<Metered> {
        match self.body {
            Body::UntilClose if !self.in_head => {
                self.body = Body::None;
                Some(self.done())
            }
            _ => None,
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}

/// How the body of a response with `status` and `headers` is framed (`head_request`: it answers
/// a HEAD, so it has none).
fn framing(
    head_request: bool,
    status: u16,
    headers: &[(String, String)],
) -> Result<Body, ReadError> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    Ok(
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            Body::None
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            Body::Chunked(ChunkedDecoder::new())
        } else if let Some(len) = find("content-length") {
            Body::Length(len.parse().map_err(|_| ReadError::Head)?)
        } else {
            Body::UntilClose
        },
    )
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

    #[test]
    fn meter_counts_without_keeping_and_stops_at_the_end() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKHTTP/1.1 404 Not Found\r\n";
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT";
        let h = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\n";
        let mut m = ResponseMeter::new();
        for step in [1, 3, 1000] {
            for (wire, rest, status, body, close) in [
                (&a[..], 24, 200, 2, false),
                (&c[..], 4, 200, 5, true),
                (&h[..], 0, 403, 0, false),
            ] {
                m.start(wire == &h[..]);
                let mut off = 0;
                let got = loop {
                    let end = (off + step).min(wire.len());
                    let (used, done) = m.feed(&wire[off..end]).expect("valid");
                    off += used;
                    if let Some(d) = done {
                        break d;
                    }
                    assert!(end < wire.len(), "stuck");
                };
                assert_eq!(
                    (got.status, got.body_bytes, got.close),
                    (status, body, close)
                );
                assert_eq!(off, wire.len() - rest, "step {step}");
            }
        }
    }
}
