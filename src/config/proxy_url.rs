//! The syntax of an HTTP CONNECT proxy URL (`[upstream] proxy`, `https_proxy`, ...), parsed into a
//! [`ProxyEndpoint`].
//!
//! It lives with the configuration because the config reader validates `[upstream] proxy` with it
//! (every error at once, none repeating the URL); `upstream::proxy` decides which targets use
//! which proxy and re-exports the type. Keeping the parser here keeps `config` a leaf that
//! `upstream` reads, not a module in a cycle with it.

use base64::Engine as _;

use crate::secret::Secret;

/// An HTTP CONNECT proxy: where it listens, whether it speaks TLS, and the credentials to present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEndpoint {
    host: String,
    port: u16,
    tls: bool,
    authorization: Option<Secret>,
}

impl ProxyEndpoint {
    /// Parses `http[s]://[user:password@]host[:port][/]`; `origin` names the setting in errors.
    pub fn parse(url: &str, origin: &str) -> Result<Self, String> {
        Self::parse_url(url).map_err(|problem| format!("{origin}: {problem}"))
    }

    /// [`ProxyEndpoint::parse`] without the setting's name: the problem alone, a fixed phrase
    /// that never repeats the URL.
    pub fn parse_url(url: &str) -> Result<Self, &'static str> {
        let url = url.trim();
        let (rest, tls) = match url.find("://") {
            Some(i) if url[..i].eq_ignore_ascii_case("http") => (&url[i + 3..], false),
            Some(i) if url[..i].eq_ignore_ascii_case("https") => (&url[i + 3..], true),
            Some(_) => {
                return Err(
                    "unsupported proxy scheme (expected an http:// or https:// CONNECT proxy)",
                );
            }
            None => (url, false),
        };
        let authority = match rest.find('/') {
            Some(i) if rest[i..] == *"/" => &rest[..i],
            Some(_) => return Err("a proxy URL has no path"),
            None => rest,
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or("invalid proxy host or port")?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        if port == 0 || !valid_host(&host) {
            return Err("invalid proxy host or port");
        }
        let authorization = match userinfo {
            None => None,
            Some(ui) => {
                let (user, pass) = ui.split_once(':').unwrap_or((ui, ""));
                let user = crate::percent::decode_strict(user.as_bytes())
                    .ok_or("invalid escape in proxy user")?;
                let pass = crate::percent::decode_strict(pass.as_bytes())
                    .ok_or("invalid escape in proxy password")?;
                let mut plain = user;
                plain.push(b':');
                plain.extend_from_slice(&pass);
                let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
                plain.fill(0);
                Some(Secret::new(format!("Basic {b64}")))
            }
        };
        Ok(Self {
            host,
            port,
            tls,
            authorization,
        })
    }

    /// True for an `https://` proxy: TLS to the proxy first, CONNECT inside it.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The proxy's host (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the proxy — safe to log.
    pub fn peer(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The `Proxy-Authorization` header value (`Basic ...`), when the URL had credentials.
    pub fn authorization(&self) -> Option<&Secret> {
        self.authorization.as_ref()
    }
}

/// Splits `host[:port]` / `[v6][:port]`; `None` when the port is not a number.
pub(crate) fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = format!("[{}]", &rest[..end]);
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_ascii_lowercase(), Some(p.parse().ok()?))),
        None => Some((s.to_ascii_lowercase(), None)),
    }
}

/// A DNS name, IPv4 literal or bracketed IPv6 literal made of safe characters.
pub(crate) fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let p = ProxyEndpoint::parse("http://proxy.corp:3128", "t").expect("parse");
        assert_eq!((p.host(), p.port()), ("proxy.corp", 3128));
        assert!(p.authorization().is_none());
        let p = ProxyEndpoint::parse("proxy.corp:8080/", "t").expect("parse");
        assert_eq!((p.host(), p.port()), ("proxy.corp", 8080));
        let p = ProxyEndpoint::parse("HTTP://Proxy.Corp", "t").expect("parse");
        assert_eq!((p.host(), p.port()), ("proxy.corp", 80));
        let p = ProxyEndpoint::parse("http://[::1]:3128", "t").expect("parse");
        assert_eq!((p.host(), p.port()), ("[::1]", 3128));
        assert_eq!(p.peer(), "[::1]:3128");
        assert!(!p.is_tls());
        let p = ProxyEndpoint::parse("HTTPS://proxy.corp", "t").expect("parse");
        assert_eq!((p.host(), p.port(), p.is_tls()), ("proxy.corp", 443, true));
        let p = ProxyEndpoint::parse("https://u:p@proxy.corp:8443/", "t").expect("parse");
        assert_eq!((p.port(), p.is_tls()), (8443, true));
        assert!(p.authorization().is_some());
    }

    #[test]
    fn proxy_userinfo_becomes_basic_auth_and_never_prints() {
        let p = ProxyEndpoint::parse("http://us%65r:p%40ss:word@proxy:3128", "t").expect("parse");
        // base64("user:p@ss:word")
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:p@ss:word")
        );
        assert_eq!(p.authorization().map(Secret::expose), Some(want.as_str()));
        let shown = format!("{p:?} {}", p.peer());
        assert!(
            !shown.contains("ss:word") && !shown.contains("user"),
            "{shown}"
        );
    }

    #[test]
    fn bad_proxy_urls_are_refused_without_echoing_them() {
        for bad in [
            "socks5://user:hunter2@proxy:1080",
            "ftp://user:hunter2@proxy:443",
            "https://user:hunter2@proxy:0",
            "http://user:hunter2@proxy:99999",
            "http://user:hunter2@proxy:3128/path",
            "http://user:hunter2@",
            "http://user:hunter2@pro xy:1",
            "http://user:hunter%zz@proxy:1",
        ] {
            let e = ProxyEndpoint::parse(bad, "HTTPS_PROXY").expect_err(bad);
            assert!(
                e.starts_with("HTTPS_PROXY:") && !e.contains("hunter2"),
                "{e}"
            );
        }
    }
}
