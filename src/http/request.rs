//! Request head parsing and validation.

use std::ops::Range;

/// Limits on a request head, from `[inbound]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head (request line + headers + blank line), bytes.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

/// Why a request head was refused. Each maps to exactly one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The head exceeds `max_head_bytes` (431).
    #[error("request head too large")]
    TooLarge,
    /// More than `max_headers` header lines (431).
    #[error("too many request headers")]
    TooManyHeaders,
    /// Not a well-formed HTTP/1.x head, or a request-smuggling shape (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A transfer-coding other than `chunked` (501).
    #[error("unsupported transfer-coding")]
    UnsupportedTransferCoding,
    /// An `Expect` other than `100-continue` (417).
    #[error("unsupported expectation")]
    ExpectationFailed,
}

impl HeadError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
            HeadError::UnsupportedTransferCoding => 501,
            HeadError::ExpectationFailed => 417,
        }
    }
}

/// A request method, classified. RFC 9110 section 9.1: a method is a token (`1*tchar`) and
/// case-sensitive, so `get` is an extension method, not `GET`. [`parse_method`] is the only way
/// from text to a `Method`, for the wire and for `wgbroker explain` alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Trace,
    Connect,
    /// Any other token (`PROPFIND`, `MKCOL`, `get`, ...); its name is the text it came from, and
    /// a rule that names it exactly can allow it.
    Extension,
}

impl Method {
    /// The methods RFC 9110 defines, by name (`CONNECT` included; the broker refuses it).
    pub const KNOWN: [(&'static str, Method); 9] = [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("PATCH", Method::Patch),
        ("DELETE", Method::Delete),
        ("OPTIONS", Method::Options),
        ("TRACE", Method::Trace),
        ("CONNECT", Method::Connect),
    ];

    /// Classifies a token that is already known to be valid (exact, case-sensitive match);
    /// anything not named in [`Method::KNOWN`] is [`Method::Extension`].
    pub fn of(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            _ => Method::Extension,
        }
    }
}

/// Whether `s` is an RFC 9110 token: one or more of `A-Z a-z 0-9 ! # $ % & ' * + - . ^ _ \` | ~`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// The request method as the broker accepts it: a token (else 400), and not `CONNECT` (400: the
/// destination only ever comes from `/proxy/<url>`). [`parse_head`] calls this on every request
/// and `wgbroker explain` on its METHOD argument, so the two cannot disagree about a method;
/// what the allowlist then says about an accepted method is the same for both as well.
pub fn parse_method(token: &str) -> Result<Method, HeadError> {
    match Method::of(token) {
        Method::Connect => Err(HeadError::Malformed("CONNECT is not supported")),
        Method::Extension if !is_token(token) => {
            Err(HeadError::Malformed("the method is not a token"))
        }
        m => Ok(m),
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A validated request head; text is addressed by ranges into the buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The method, classified.
    pub method: Method,
    method_at: Range<u32>,
    target_at: Range<u32>,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    headers: Vec<(Range<u32>, Range<u32>)>,
    /// Bytes of the head, blank line included; the body starts here.
    pub head_len: usize,
    /// Body framing.
    pub body: BodyFraming,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            method: Method::Extension,
            method_at: 0..0,
            target_at: 0..0,
            minor_version: 1,
            headers: Vec::new(),
            head_len: 0,
            body: BodyFraming::None,
            keep_alive: true,
            expect_continue: false,
        }
    }
}

fn slice<'b>(buf: &'b [u8], r: &Range<u32>) -> &'b [u8] {
    buf.get(r.start as usize..r.end as usize)
        .unwrap_or_default()
}

fn str_of<'b>(buf: &'b [u8], r: &Range<u32>) -> &'b str {
    std::str::from_utf8(slice(buf, r)).unwrap_or_default()
}

impl RequestHead {
    /// The method as sent (`buf` is the buffer the head was parsed from).
    pub fn method_str<'b>(&self, buf: &'b [u8]) -> &'b str {
        str_of(buf, &self.method_at)
    }

    /// The request target as sent (origin-form: `/proxy/...`, `/healthcheck`).
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b str {
        str_of(buf, &self.target_at)
    }

    /// Headers as `(name, value)`, in order.
    pub fn headers<'s, 'b: 's>(
        &'s self,
        buf: &'b [u8],
    ) -> impl Iterator<Item = (&'b str, &'b [u8])> + 's {
        self.headers
            .iter()
            .map(move |(n, v)| (str_of(buf, n), slice(buf, v)))
    }

    /// The first header named `name` (case-insensitive).
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers(buf)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

fn offset(base: &[u8], part: &[u8]) -> Range<u32> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    (start as u32)..((start + part.len()) as u32)
}

/// `v` without leading and trailing optional whitespace (RFC 9110 OWS: SP and HTAB).
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Every LF is preceded by CR and every CR is followed by LF (a CR at the very end of a partial
/// head may still get its LF).
fn line_endings_strict(head: &[u8], partial: bool) -> bool {
    // memchr jumps between line ends with SIMD; the byte-by-byte loop this replaced was 45 % of
    // the head parse (benches/hotpath request/head).
    memchr::memchr2_iter(b'\r', b'\n', head).all(|i| match head[i] {
        b'\n' => i > 0 && head[i - 1] == b'\r',
        _ => head.get(i + 1) == Some(&b'\n') || (partial && i + 1 == head.len()),
    })
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Parses and validates a request head at the start of `buf` into `head` (reusing its storage).
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(head_len))` when `head` holds a
/// complete valid head.
pub fn parse_head(
    buf: &[u8],
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<Option<usize>, HeadError> {
    // Leading empty lines before a request line are tolerated by RFC 9112 (section 2.2); httparse
    // skips them too, but a bare LF there is still a bare LF.
    // Uninitialised slots: httparse writes only the ones it fills (zeroing 128 slots, 4 KiB,
    // was a visible part of each parse).
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap;
    let headers: &mut [std::mem::MaybeUninit<httparse::Header<'_>>] =
        if limits.max_headers <= storage.len() {
            &mut storage[..limits.max_headers]
        } else {
            heap = Vec::with_capacity(limits.max_headers);
            heap.resize_with(limits.max_headers, std::mem::MaybeUninit::uninit);
            &mut heap
        };
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, headers) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"));
        }
        Err(httparse::Error::HeaderName) => {
            return Err(HeadError::Malformed("invalid header name"));
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HeadError::Malformed("invalid header value"));
        }
        Err(httparse::Error::NewLine) => return Err(HeadError::Malformed("bare CR or LF")),
        Err(httparse::Error::Token) | Err(httparse::Error::Status) => {
            return Err(HeadError::Malformed("invalid request line"));
        }
    };
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() >= limits.max_head_bytes {
                return Err(HeadError::TooLarge);
            }
            if !line_endings_strict(buf, true) {
                return Err(HeadError::Malformed("bare CR or LF"));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.max_head_bytes {
        return Err(HeadError::TooLarge);
    }
    if !line_endings_strict(&buf[..head_len], false) {
        return Err(HeadError::Malformed("bare CR or LF"));
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let minor_version = req.version.unwrap_or(1);

    // httparse has checked the token already; the shared parser classifies it and refuses
    // CONNECT, exactly as `explain` does.
    head.method = parse_method(method)?;
    head.method_at = offset(buf, method.as_bytes());
    head.target_at = offset(buf, target.as_bytes());
    head.minor_version = minor_version;
    head.head_len = head_len;
    head.headers.clear();
    head.expect_continue = false;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut hosts = 0usize;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in req.headers.iter() {
        head.headers
            .push((offset(buf, h.name.as_bytes()), offset(buf, h.value)));
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::Malformed("duplicate Content-Length"));
            }
            content_length =
                Some(parse_length(h.value).ok_or(HeadError::Malformed("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen {
                return Err(HeadError::Malformed("duplicate Transfer-Encoding"));
            }
            te_seen = true;
            if trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(HeadError::UnsupportedTransferCoding);
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = trim_ows(token);
                conn_close |= t.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = minor_version == 1;
            } else {
                return Err(HeadError::ExpectationFailed);
            }
        }
    }
    if te_seen && content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if te_seen && minor_version == 0 {
        return Err(HeadError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if minor_version == 1 && hosts != 1 {
        return Err(HeadError::Malformed(if hosts == 0 {
            "missing Host"
        } else {
            "duplicate Host"
        }));
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("duplicate Host"));
    }
    if !target.starts_with('/') && target != "*" {
        // Absolute-form and authority-form targets are proxy tricks: the destination is only ever
        // taken from `/proxy/<url>`.
        return Err(HeadError::Malformed("request target must be origin-form"));
    }
    head.body = if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };
    head.keep_alive = if minor_version == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {

    /// The definition, byte by byte: every LF follows a CR, every CR precedes an LF (or ends a
    /// partial head).
    fn strict_reference(head: &[u8], partial: bool) -> bool {
        head.iter().enumerate().all(|(i, &b)| match b {
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\r' => head.get(i + 1) == Some(&b'\n') || (partial && i + 1 == head.len()),
            _ => true,
        })
    }

    proptest::proptest! {
        #[test]
        fn line_endings_match_the_byte_by_byte_definition(
            head in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\r', b'\n', b':']), 0..80),
            partial: bool,
        ) {
            proptest::prop_assert_eq!(
                line_endings_strict(&head, partial),
                strict_reference(&head, partial)
            );
        }
    }

    #[test]
    fn line_endings_examples() {
        assert!(line_endings_strict(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            false
        ));
        assert!(!line_endings_strict(
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            false
        ));
        assert!(!line_endings_strict(b"\nGET", false));
        assert!(!line_endings_strict(b"GET /\r HTTP/1.1\r\n", false));
        assert!(line_endings_strict(b"GET / HTTP/1.1\r", true));
        assert!(!line_endings_strict(b"GET / HTTP/1.1\r", false));
    }
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 4096,
        max_headers: 16,
    };

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut h = RequestHead::default();
        parse_head(s.as_bytes(), &LIMITS, &mut h).map(|o| o.map(|_| h))
    }

    fn ok(s: &str) -> RequestHead {
        parse(s).expect("valid").expect("complete")
    }

    #[test]
    fn parses_a_simple_get_in_place() {
        let raw = "GET /proxy/https://ghe.example.com/api/v3/user?x=1 HTTP/1.1\r\nHost: 10.77.0.2\r\nX-A: b\r\n\r\nBODY";
        let h = ok(raw);
        let buf = raw.as_bytes();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.method_str(buf), "GET");
        assert_eq!(
            h.target(buf),
            "/proxy/https://ghe.example.com/api/v3/user?x=1"
        );
        assert_eq!(h.header(buf, "x-a"), Some(&b"b"[..]));
        assert_eq!(h.head_len, raw.len() - 4);
        assert_eq!(h.body, BodyFraming::None);
        assert!(h.keep_alive);
    }

    #[test]
    fn partial_heads_ask_for_more() {
        assert!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("ok so far")
                .is_none()
        );
        assert!(parse("GET / HT").expect("ok so far").is_none());
    }

    #[test]
    fn framing() {
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n").body,
            BodyFraming::Length(12)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").body,
            BodyFraming::Chunked
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").body,
            BodyFraming::None
        );
        let h = ok("GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(
            ok("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let cases: &[(&str, u16)] = &[
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
                501,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
                400,
            ),
            ("GET / HTTP/1.1\nHost: x\n\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", 400),
            (
                "GET http://evil.example.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
            ),
            (
                "CONNECT evil.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
            ),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n",
                417,
            ),
        ];
        for (raw, status) in cases {
            match parse(raw) {
                Err(e) => assert_eq!(e.status(), *status, "{raw:?}: {e}"),
                Ok(h) => panic!("accepted {raw:?}: {h:?}"),
            }
        }
    }

    #[test]
    fn methods_are_case_sensitive_tokens_and_connect_is_refused() {
        for (token, want) in [
            ("GET", Method::Get),
            ("TRACE", Method::Trace),
            ("get", Method::Extension),
            ("PROPFIND", Method::Extension),
            ("VERSION-CONTROL", Method::Extension),
            ("M!#$%&'*+-.^_`|~9", Method::Extension),
        ] {
            assert_eq!(parse_method(token), Ok(want), "{token:?}");
        }
        for bad in [
            "", "GE T", "GET ", "G\tET", "G\"ET", "G(ET", "GÉT", "G/ET", "CONNECT",
        ] {
            assert_eq!(
                parse_method(bad).map_err(|e| e.status()),
                Err(400),
                "{bad:?}"
            );
        }
        // On the wire: an extension method is parsed (the allowlist decides), CONNECT is not.
        assert_eq!(
            ok("PROPFIND /proxy/https://h/x HTTP/1.1\r\nHost: x\r\n\r\n").method,
            Method::Extension
        );
        assert_eq!(
            ok("get / HTTP/1.1\r\nHost: x\r\n\r\n").method,
            Method::Extension
        );
    }

    #[test]
    fn limits_give_431() {
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..20 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(&many).map(|_| ()), Err(HeadError::TooManyHeaders));
        let big = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(5000));
        assert_eq!(parse(&big).map(|_| ()), Err(HeadError::TooLarge));
        // A partial head that already exceeds the limit is refused without waiting for more.
        let partial = format!("GET /{}", "a".repeat(5000));
        assert_eq!(parse(&partial).map(|_| ()), Err(HeadError::TooLarge));
    }

    #[test]
    fn head_is_reusable_across_requests() {
        let mut h = RequestHead::default();
        let a = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX: 1\r\n\r\n";
        parse_head(a, &LIMITS, &mut h).expect("valid");
        let b = b"GET /b HTTP/1.1\r\nHost: y\r\n\r\n";
        parse_head(b, &LIMITS, &mut h).expect("valid");
        assert_eq!(h.target(b), "/b");
        assert_eq!(h.body, BodyFraming::None);
        assert_eq!(h.headers(b).count(), 1);
    }
}
