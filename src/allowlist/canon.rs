//! URL canonicalisation: the absolute upstream URL the vendor pasted after `/proxy/`, checked once
//! and turned into the one form that is both matched and forwarded.
//!
//! Responsibility: parse `scheme://[userinfo@]host[:port][/path][?query]`, reject everything that
//! two parsers could read differently (DESIGN.md section 5), and hand back a [`CanonUrl`].
//!
//! Invariants of an accepted [`CanonUrl`] (the fuzz target checks them):
//! * `host` is a lower-case DNS name of `[a-z0-9.-]` labels (no trailing dot), a strict IPv4
//!   dotted quad, or a bracketed IPv6 address in its RFC 5952 text form;
//! * `path` starts with `/`, contains only RFC 3986 `pchar`s and `/`, percent escapes with
//!   upper-case hex, no empty segment except one trailing one, no segment that is — or decodes to
//!   something containing — a dot segment, no backslash, control byte or NUL raw or encoded;
//! * parsing the [`fmt::Display`] form again (plus the userinfo) gives the same value, i.e.
//!   canonicalisation is idempotent;
//! * `query` is verbatim (printable ASCII, valid escapes, no encoded control bytes);
//! * `userinfo` never appears in `Display` or `Debug` output.
//!
//! Nothing is decoded and re-encoded except the case of percent-escape hex digits, so what the
//! allowlist matches is byte for byte what goes upstream.

use std::fmt;
use std::net::Ipv6Addr;

use crate::percent::{self, byte_at, hex_val};

/// The longest URL accepted, in bytes. Longer ones are refused rather than matched slowly.
pub const MAX_URL_LEN: usize = 16 * 1024;

/// A canonical absolute `http`/`https` URL; see the module docs for the invariants.
///
/// The fields are public for the proxy and for tests; the allowlist never trusts them beyond not
/// panicking: a hand-built value that breaks the invariants simply fails to match.
#[derive(Clone, PartialEq, Eq)]
pub struct CanonUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Lower-case host; IPv6 in brackets.
    pub host: String,
    /// The explicit port or the scheme's default.
    pub port: u16,
    /// Canonical path, exactly what is forwarded; starts with `/`.
    pub path: String,
    /// The query without `?`, verbatim; `Some("")` for a bare `?`.
    pub query: Option<String>,
    /// Raw `user:password` from the URL, still percent-encoded. Never printed.
    pub userinfo: Option<String>,
}

/// The URL schemes the broker proxies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (port 80 by default).
    Http,
    /// HTTP over TLS (port 443 by default).
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Scheme> {
        if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a URL was refused; the reason is a short, fixed, human-readable phrase (cheap to build,
/// safe to log: it never contains any part of the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed url: {0}")]
pub struct Malformed(pub &'static str);

/// The `host[:port]` of a [`CanonUrl`], default port omitted: the upstream `Host` header.
#[derive(Debug, Clone, Copy)]
pub struct Authority<'a>(&'a CanonUrl);

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.host)?;
        if self.0.port != self.0.scheme.default_port() {
            write!(f, ":{}", self.0.port)?;
        }
        Ok(())
    }
}

/// The origin-form request target of a [`CanonUrl`]: `path[?query]`.
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a>(&'a CanonUrl);

impl fmt::Display for RequestTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.path)?;
        if let Some(q) = &self.0.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

impl CanonUrl {
    /// Parses and canonicalises an absolute `http`/`https` URL, refusing anything ambiguous.
    pub fn parse(raw: &str) -> Result<Self, Malformed> {
        if raw.len() > MAX_URL_LEN {
            return Err(Malformed("url too long"));
        }
        check_raw_bytes(raw)?;
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or(Malformed("not an absolute http(s) url"))?;
        let scheme = Scheme::parse(scheme).ok_or(Malformed("scheme is not http or https"))?;
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(auth_end);
        let (userinfo, hostport) = split_userinfo(authority)?;
        let (host, port) = split_host_port(hostport, scheme)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let path = if path.is_empty() {
            String::from("/")
        } else {
            canon_path(path)?
        };
        if let Some(q) = query {
            check_query(q)?;
        }
        Ok(CanonUrl {
            scheme,
            host,
            port,
            path,
            query: query.map(str::to_owned),
            userinfo: userinfo.map(str::to_owned),
        })
    }

    /// `host[:port]` with the default port omitted (the upstream `Host` header value).
    pub fn authority(&self) -> Authority<'_> {
        Authority(self)
    }

    /// `path[?query]`, the request target sent upstream.
    pub fn request_target(&self) -> RequestTarget<'_> {
        RequestTarget(self)
    }

    /// Whether the port is the scheme's default one.
    pub fn has_default_port(&self) -> bool {
        self.port == self.scheme.default_port()
    }
}

/// `scheme://authority/path?query`, never the userinfo.
impl fmt::Display for CanonUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme,
            self.authority(),
            self.request_target()
        )
    }
}

impl fmt::Debug for CanonUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanonUrl")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("userinfo", &self.userinfo.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Whole-URL byte screen: ASCII printable only, no fragment, no backslash.
fn check_raw_bytes(raw: &str) -> Result<(), Malformed> {
    for &b in raw.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'#' && b != b'\\' {
            continue;
        }
        return Err(match b {
            b' ' => Malformed("space"),
            b'#' => Malformed("fragment"),
            b'\\' => Malformed("backslash"),
            0x80.. => Malformed("non-ASCII byte (percent-encode it)"),
            _ => Malformed("control character"),
        });
    }
    Ok(())
}

fn split_userinfo(authority: &str) -> Result<(Option<&str>, &str), Malformed> {
    let Some((userinfo, hostport)) = authority.split_once('@') else {
        return Ok((None, authority));
    };
    if hostport.contains('@') {
        return Err(Malformed("several '@' in authority"));
    }
    if userinfo.is_empty() {
        return Err(Malformed("empty userinfo"));
    }
    let mut bytes = userinfo.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(hex_val);
            let lo = bytes.next().and_then(hex_val);
            if hi.is_none() || lo.is_none() {
                return Err(Malformed("invalid percent-encoding in userinfo"));
            }
        } else if !PCHAR[usize::from(b)] || b == b'@' {
            return Err(Malformed("invalid character in userinfo"));
        }
    }
    Ok((Some(userinfo), hostport))
}

pub(crate) fn split_host_port(hostport: &str, scheme: Scheme) -> Result<(String, u16), Malformed> {
    let (host, port) = if hostport.starts_with('[') {
        match hostport.find(']') {
            Some(i) => {
                let (h, rest) = hostport.split_at(i + 1);
                match rest {
                    "" => (h, None),
                    _ => match rest.strip_prefix(':') {
                        Some(p) => (h, Some(p)),
                        None => return Err(Malformed("garbage after IPv6 host")),
                    },
                }
            }
            None => return Err(Malformed("unterminated IPv6 host")),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host = canon_host(host)?;
    let port = match port {
        None => scheme.default_port(),
        Some(p) => parse_port(p)?,
    };
    Ok((host, port))
}

/// Strict decimal port: 1..=65535, no sign, no leading zero, no empty port.
pub(crate) fn parse_port(p: &str) -> Result<u16, Malformed> {
    if p.is_empty() {
        return Err(Malformed("empty port"));
    }
    if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("bad port"));
    }
    if p.starts_with('0') {
        return Err(Malformed("port with leading zero"));
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => u16::try_from(n).map_err(|_| Malformed("bad port")),
        _ => Err(Malformed("bad port")),
    }
}

/// Canonicalises a host: bracketed IPv6 (RFC 5952 form), strict dotted-quad IPv4, or a
/// lower-cased DNS name. Used for request URLs and rule patterns alike.
pub(crate) fn canon_host(host: &str) -> Result<String, Malformed> {
    if host.is_empty() {
        return Err(Malformed("missing host"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(Malformed("unterminated IPv6 host"))?;
        if inner.contains('%') {
            return Err(Malformed("IPv6 zone identifiers are not supported"));
        }
        let addr: Ipv6Addr = inner.parse().map_err(|_| Malformed("bad IPv6 address"))?;
        return Ok(format!("[{addr}]"));
    }
    if host.len() > 253 {
        return Err(Malformed("host too long"));
    }
    // One pass: lower-case, check characters and labels, remember the last label.
    let mut out = String::with_capacity(host.len());
    let mut label_start = 0;
    let mut last_start = 0;
    for (i, &b) in host.as_bytes().iter().enumerate() {
        let c = b.to_ascii_lowercase();
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => {}
            b'.' => {
                check_label(&host.as_bytes()[label_start..i])?;
                label_start = i + 1;
                last_start = label_start;
            }
            b'%' => return Err(Malformed("percent-encoding in host")),
            _ => return Err(Malformed("invalid character in host")),
        }
        out.push(char::from(c));
    }
    if host.ends_with('.') {
        return Err(Malformed("trailing dot in host"));
    }
    check_label(&host.as_bytes()[label_start..])?;
    // WHATWG parsers read a host whose last label is numeric as an IPv4 address (with octal,
    // hex and short forms); accept only the one unambiguous spelling.
    let last = &out.as_bytes()[last_start..];
    let numeric = last.iter().all(u8::is_ascii_digit)
        || last
            .strip_prefix(b"0x")
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
    if numeric && !is_strict_ipv4(&out) {
        return Err(Malformed("ambiguous numeric host (use a dotted quad)"));
    }
    Ok(out)
}

fn check_label(label: &[u8]) -> Result<(), Malformed> {
    match label {
        [] => Err(Malformed("empty label in host")),
        l if l.len() > 63 => Err(Malformed("host label too long")),
        [b'-', ..] | [.., b'-'] => Err(Malformed("host label starts or ends with '-'")),
        _ => Ok(()),
    }
}

fn is_strict_ipv4(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        let ok = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && !(part.len() > 1 && part.starts_with('0'))
            && part.parse::<u16>().is_ok_and(|n| n <= 255);
        if !ok {
            return false;
        }
    }
    parts == 4
}

/// Validates a path (starting with `/`) and returns it with percent escapes upper-cased.
pub(crate) fn canon_path(path: &str) -> Result<String, Malformed> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(Malformed("path does not start with '/'"));
    }
    let mut lower_hex = false;
    let mut seg_start = 1;
    let mut has_pct = false;
    let mut i = 1;
    loop {
        match b.get(i) {
            Some(&c) if PCHAR[usize::from(c)] => i += 1,
            Some(b'%') => {
                check_escape(b, i)?;
                lower_hex |= b[i + 1..i + 3].iter().any(u8::is_ascii_lowercase);
                has_pct = true;
                i += 3;
            }
            Some(b'/') | None => {
                let seg = &b[seg_start..i];
                let at_end = i >= b.len();
                if seg.is_empty() && !at_end {
                    return Err(Malformed("empty path segment"));
                }
                check_segment_meaning(seg, has_pct)?;
                if at_end {
                    break;
                }
                i += 1;
                seg_start = i;
                has_pct = false;
            }
            Some(_) => return Err(Malformed("invalid character in path")),
        }
    }
    if !lower_hex {
        return Ok(path.to_owned());
    }
    let mut out = String::with_capacity(path.len());
    push_upper_hex(&mut out, path);
    Ok(out)
}

/// Copies `text` into `out` with the hex digits of percent escapes upper-cased. `text` has been
/// validated, so every `%` starts a valid escape.
pub(crate) fn push_upper_hex(out: &mut String, text: &str) {
    let mut after_pct = 0u8;
    for c in text.chars() {
        if c == '%' {
            after_pct = 2;
            out.push(c);
        } else if after_pct > 0 {
            after_pct -= 1;
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
}

/// Checks one path segment (raw, between slashes): allowed characters, valid escapes, no encoded
/// control byte or backslash, and — after decoding — no dot segment, no empty part around an
/// encoded `/`, no double-encoded delimiter, valid UTF-8.
pub(crate) fn check_segment(seg: &str) -> Result<(), Malformed> {
    let has_pct = check_segment_chars(seg.as_bytes())?;
    check_segment_meaning(seg.as_bytes(), has_pct)
}

/// The decoded-form checks of a segment whose characters are valid.
fn check_segment_meaning(seg: &[u8], has_pct: bool) -> Result<(), Malformed> {
    if !has_pct {
        // Only a leading '.', ' ' or ';' can make an unencoded segment a (disguised) dot
        // segment or a path-parameter trick.
        return match seg.first() {
            Some(b'.' | b' ' | b';') => check_decoded_part(seg),
            _ => Ok(()),
        };
    }
    // Decode into a stack buffer (segments are short); only a long one needs the heap.
    let mut buf = [0u8; 256];
    let heap: Vec<u8>;
    let decoded = if seg.len() <= buf.len() {
        let n = percent::decode_into(seg, &mut buf);
        &buf[..n]
    } else {
        heap = percent::decode(seg);
        &heap
    };
    if std::str::from_utf8(decoded).is_err() {
        return Err(Malformed("percent-encoding decodes to invalid UTF-8"));
    }
    if has_delimiter_escape(decoded) {
        return Err(Malformed("double percent-encoding of a delimiter"));
    }
    let multi = decoded.contains(&b'/');
    for part in decoded.split(|&b| b == b'/') {
        if multi && part.is_empty() {
            return Err(Malformed("empty segment inside an encoded '/'"));
        }
        check_decoded_part(part)?;
    }
    Ok(())
}

/// A valid `%XX` escape at `i` that encodes neither a control byte nor a backslash.
fn check_escape(bytes: &[u8], i: usize) -> Result<u8, Malformed> {
    let v = byte_at(bytes, i).ok_or(Malformed("invalid percent-encoding"))?;
    if v < 0x20 || v == 0x7f {
        return Err(Malformed("encoded control character"));
    }
    if v == b'\\' {
        return Err(Malformed("encoded backslash"));
    }
    Ok(v)
}

/// Checks the characters of a raw segment (or of a literal piece of a pattern segment): only
/// `pchar`s and valid escapes, none encoding a control byte or a backslash. Returns whether the
/// text contains an escape.
pub(crate) fn check_segment_chars(bytes: &[u8]) -> Result<bool, Malformed> {
    let mut has_pct = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            check_escape(bytes, i)?;
            has_pct = true;
            i += 3;
        } else if PCHAR[usize::from(b)] {
            i += 1;
        } else {
            return Err(Malformed("invalid character in path"));
        }
    }
    Ok(has_pct)
}

/// A decoded segment part must not be a dot segment, also not in the forms that servers
/// normalise to one: path parameters (`..;x`, Tomcat) and trailing dots/spaces (`.. `, IIS).
fn check_decoded_part(part: &[u8]) -> Result<(), Malformed> {
    let before_params = match part.iter().position(|&b| b == b';') {
        Some(0) => return Err(Malformed("segment starts with a path parameter")),
        Some(i) => &part[..i],
        None => part,
    };
    if !before_params.is_empty() && before_params.iter().all(|&b| b == b'.' || b == b' ') {
        return Err(Malformed("dot segment"));
    }
    Ok(())
}

/// Whether decoded bytes still contain an escape for `.`, `/`, `\`, `%`, `;` or a control byte
/// (an upstream that decodes twice would see a different path).
fn has_delimiter_escape(decoded: &[u8]) -> bool {
    (0..decoded.len()).any(|i| {
        decoded[i] == b'%'
            && byte_at(decoded, i)
                .is_some_and(|v| matches!(v, b'.' | b'/' | b'\\' | b'%' | b';' | 0..=0x1f | 0x7f))
    })
}

/// Query: printable ASCII, valid escapes, no encoded control byte.
fn check_query(q: &str) -> Result<(), Malformed> {
    let bytes = q.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let v = byte_at(bytes, i).ok_or(Malformed("invalid percent-encoding in query"))?;
            if v < 0x20 || v == 0x7f {
                return Err(Malformed("encoded control character in query"));
            }
        }
    }
    Ok(())
}

/// RFC 3986 `pchar` minus `%` (escapes are handled separately), as a lookup table.
static PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> CanonUrl {
        CanonUrl::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn splits_all_parts() {
        let u = ok("https://user:pw@GHE.example.com:8443/api/v3/repos/a/b?x=1&y");
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.host, "ghe.example.com");
        assert_eq!(u.port, 8443);
        assert_eq!(u.path, "/api/v3/repos/a/b");
        assert_eq!(u.query.as_deref(), Some("x=1&y"));
        assert_eq!(u.userinfo.as_deref(), Some("user:pw"));
        assert_eq!(u.authority().to_string(), "ghe.example.com:8443");
        assert_eq!(u.request_target().to_string(), "/api/v3/repos/a/b?x=1&y");
    }

    #[test]
    fn userinfo_is_never_printed() {
        let u = ok("https://alice:s3cr3t@h.example/");
        assert!(!format!("{u}").contains("s3cr3t"));
        assert!(!format!("{u:?}").contains("s3cr3t"));
        assert!(!format!("{u:?}").contains("alice"));
    }

    #[test]
    fn hex_is_upper_cased_but_not_decoded() {
        assert_eq!(ok("http://h/a%2fb%7e").path, "/a%2Fb%7E");
    }

    #[test]
    fn segment_checks() {
        for bad in [
            ".", "..", "%2e", "%2E%2e", "..%2F..", "a%2F..", "..;x", ".. ", "..%20", "%252e",
        ] {
            assert!(check_segment(bad).is_err(), "{bad}");
        }
        for good in [
            "a",
            "a.b",
            "...a",
            "a%2Fb",
            "g%2Fsub%2Fproj",
            "~u",
            "v1.2",
            "a;b",
        ] {
            assert!(check_segment(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ipv4_strictness() {
        assert!(is_strict_ipv4("10.0.0.1"));
        assert!(!is_strict_ipv4("010.0.0.1"));
        assert!(!is_strict_ipv4("10.0.1"));
        assert!(!is_strict_ipv4("256.0.0.1"));
        assert!(canon_host("1.2.3.4").is_ok());
        assert!(canon_host("127.1").is_err());
        assert!(canon_host("foo.0x7f").is_err());
        assert!(canon_host("2130706433").is_err());
        assert!(canon_host("v1.example").is_ok());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("443"), Ok(443));
        for bad in ["", "0", "065", "65536", "+1", "99999999"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
