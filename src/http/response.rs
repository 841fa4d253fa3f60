//! Response heads written into the caller's buffer.

use std::io::Write as _;

/// The standard reason phrase for the status codes the broker produces.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Builds a response head in a reusable buffer.
#[derive(Debug, Default)]
pub struct ResponseHead {
    buf: Vec<u8>,
}

impl ResponseHead {
    /// Starts a head with the status line (HTTP/1.1).
    pub fn start(&mut self, status: u16) -> &mut Self {
        self.buf.clear();
        let _ = write!(self.buf, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
        self
    }

    /// Adds a header line. Values with CR, LF or NUL are refused (dropped) so that no caller can
    /// split a response.
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        let v = value.as_ref();
        if !v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            self.buf.extend_from_slice(name.as_bytes());
            self.buf.extend_from_slice(b": ");
            self.buf.extend_from_slice(v);
            self.buf.extend_from_slice(b"\r\n");
        }
        self
    }

    /// Adds a numeric header (`Content-Length`).
    pub fn header_u64(&mut self, name: &str, value: u64) -> &mut Self {
        let _ = write!(self.buf, "{name}: {value}\r\n");
        self
    }

    /// Ends the head and returns its bytes.
    pub fn finish(&mut self) -> &[u8] {
        self.buf.extend_from_slice(b"\r\n");
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_head_and_refuses_header_injection() {
        let mut h = ResponseHead::default();
        let bytes = h
            .start(200)
            .header_u64("Content-Length", 2)
            .header("X-Evil", "a\r\nSet-Cookie: x")
            .header("X-Request-Id", "abc")
            .finish()
            .to_vec();
        assert_eq!(
            bytes,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: abc\r\n\r\n"
        );
        let again = h.start(404).finish().to_vec();
        assert_eq!(again, b"HTTP/1.1 404 Not Found\r\n\r\n");
    }
}
