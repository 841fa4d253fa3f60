//! Which upstream connections go through an HTTP CONNECT proxy, and which proxy.
//!
//! Responsibility: turn `[upstream] proxy`, `no_proxy`, `use_env_proxy` and the conventional
//! environment variables into [`ProxySettings`], and answer [`ProxySettings::proxy_for`].
//!
//! Semantics (those of curl, which most tooling shares):
//! * `[upstream] proxy` wins over the environment and is used for `http` and `https` targets;
//! * otherwise, with `use_env_proxy`, `https` targets use `https_proxy` / `HTTPS_PROXY` and `http`
//!   targets `http_proxy` / `HTTP_PROXY` (lower case first; an empty value counts as unset);
//! * the bypass list is `[upstream] no_proxy` plus, with `use_env_proxy`, `no_proxy` / `NO_PROXY`
//!   (comma-separated). An entry is `*` (no proxy at all), a domain (`example.com` matches itself
//!   and every subdomain, never `badexample.com`; a leading `.` or `*.` is ignored), an IP literal
//!   or CIDR (`10.1.2.3`, `10.0.0.0/8`, `::1`, `[::1]`; matched against IP-literal targets only —
//!   names are never resolved for this), each optionally with `:port` to bypass that port only.
//!   Matching ignores case and a trailing dot. Entries that parse as none of these are ignored.
//! * A proxy URL is `http://[user:password@]host[:port][/]` or `https://...` (the scheme may be
//!   left out: `http`; the port defaults to 80 for `http`, 443 for `https`). Userinfo is
//!   percent-decoded and becomes `Proxy-Authorization: Basic` on CONNECT. An `https://` proxy is
//!   reached over TLS (its certificate checked against the same roots as the upstreams', so
//!   `[upstream] ca_files` may hold the proxy's CA) and the CONNECT exchange, the tunnel and any
//!   TLS to the target run inside that TLS session. Any other scheme is an error.
//!
//! Invariants: proxy credentials are only ever held in a [`crate::secret::Secret`]; no error
//! message repeats the proxy URL (it may carry a password) — errors name the setting and the
//! problem. The URL's syntax is [`crate::config::proxy_url`]'s.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Target;
pub use crate::config::ProxyEndpoint;
use crate::config::Upstream;
use crate::config::proxy_url::{split_host_port, valid_host};

/// How upstream reaches a proxy that `[upstream] proxy` (parsed with the configuration, see
/// [`crate::config::proxy_url`]) or the environment names.
impl ProxyEndpoint {
    /// The proxy as a [`Target`] to resolve and connect to (its `tls` flag is [`Self::is_tls`]).
    pub fn target(&self) -> Target {
        Target::new(self.is_tls(), self.host(), self.port())
    }
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    All,
    Domain { suffix: String, port: Option<u16> },
    Ip { net: IpNet, port: Option<u16> },
}

/// A parsed `no_proxy` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<Bypass>,
}

impl NoProxy {
    /// Parses entries; each item may itself be a comma-separated list. Unparseable entries are
    /// ignored (environment lists often carry junk).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        let mut entries = Vec::new();
        for item in items {
            for raw in item.split(',') {
                if let Some(e) = parse_entry(raw.trim()) {
                    entries.push(e);
                }
            }
        }
        Self { entries }
    }

    /// True when `target` is reached directly.
    pub fn matches(&self, target: &Target) -> bool {
        let host = target.bare_host().trim_end_matches('.');
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|e| match e {
            Bypass::All => true,
            Bypass::Domain { suffix, port } => {
                port.is_none_or(|p| p == target.port)
                    && ip.is_none()
                    && host.len() >= suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && (host.len() == suffix.len()
                        || host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
            }
            Bypass::Ip { net, port } => {
                port.is_none_or(|p| p == target.port) && ip.is_some_and(|a| net.contains(&a))
            }
        })
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_entry(s: &str) -> Option<Bypass> {
    if s.is_empty() {
        return None;
    }
    if s == "*" {
        return Some(Bypass::All);
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(Bypass::Ip { net, port: None });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Bypass::Ip {
            net: IpNet::from(ip),
            port: None,
        });
    }
    let (host, port) = split_host_port(s)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(net) = host.parse::<IpNet>() {
        return Some(Bypass::Ip { net, port });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Bypass::Ip {
            net: IpNet::from(ip),
            port,
        });
    }
    let suffix = host
        .strip_prefix("*.")
        .or_else(|| host.strip_prefix('.'))
        .unwrap_or(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if suffix.is_empty() || !valid_host(&suffix) {
        return None;
    }
    Some(Bypass::Domain { suffix, port })
}

/// The proxy decision for every target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    https: Option<ProxyEndpoint>,
    http: Option<ProxyEndpoint>,
    no_proxy: NoProxy,
}

impl ProxySettings {
    /// No proxy: every target is reached directly.
    pub fn direct() -> Self {
        Self::default()
    }

    /// From `[upstream]` and, when `use_env_proxy`, the environment as read by `env` (pass
    /// `&|k| std::env::var(k).ok()` in production). Errors name the setting, never its value.
    pub fn from_config(c: &Upstream, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        };
        let (https, http) = if let Some(p) = &c.proxy {
            let e = ProxyEndpoint::parse(p, "upstream.proxy")?;
            (Some(e.clone()), Some(e))
        } else if c.use_env_proxy {
            let https = var(["https_proxy", "HTTPS_PROXY"])
                .map(|(n, v)| ProxyEndpoint::parse(&v, n))
                .transpose()?;
            let http = var(["http_proxy", "HTTP_PROXY"])
                .map(|(n, v)| ProxyEndpoint::parse(&v, n))
                .transpose()?;
            (https, http)
        } else {
            (None, None)
        };
        let env_no_proxy = if c.use_env_proxy {
            var(["no_proxy", "NO_PROXY"]).map(|(_, v)| v)
        } else {
            None
        };
        let no_proxy = NoProxy::parse(
            c.no_proxy
                .iter()
                .map(String::as_str)
                .chain(env_no_proxy.as_deref()),
        );
        Ok(Self {
            https,
            http,
            no_proxy,
        })
    }

    /// The proxy of the WireGuard stream transports (`tcp`, `tls`): `[wireguard] proxy` when set
    /// (for every gateway), else the upstreams' settings ([`ProxySettings::from_config`]:
    /// `[upstream] proxy`, or with `use_env_proxy` the environment's, `no_proxy` included). A
    /// stream is looked up as an `https` target ([`Target::new`]`(true, ..)`): it is not plain
    /// HTTP, so `HTTPS_PROXY` is the variable that speaks for it. Errors name the setting, never
    /// its value.
    pub fn for_streams(
        wireguard_proxy: Option<&str>,
        upstream: &Upstream,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        match wireguard_proxy {
            Some(p) => Ok(Self::with_proxy(
                ProxyEndpoint::parse(p, "wireguard.proxy")?,
                NoProxy::default(),
            )),
            None => Self::from_config(upstream, env),
        }
    }

    /// A proxy for every target (tests, tools), with a bypass list.
    pub fn with_proxy(proxy: ProxyEndpoint, no_proxy: NoProxy) -> Self {
        Self {
            https: Some(proxy.clone()),
            http: Some(proxy),
            no_proxy,
        }
    }

    /// The proxy to tunnel through to reach `target`, or `None` to connect directly.
    pub fn proxy_for(&self, target: &Target) -> Option<&ProxyEndpoint> {
        let p = if target.tls {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        (!self.no_proxy.matches(target)).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn cfg(proxy: Option<&str>, no_proxy: &[&str], use_env: bool) -> Upstream {
        Upstream {
            ca_files: Vec::new(),
            tls_min_version: crate::config::TlsVersion::V1_2,
            connect_timeout: Duration::from_secs(1),
            tls_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            proxy: proxy.map(str::to_owned),
            no_proxy: no_proxy.iter().map(|s| (*s).to_owned()).collect(),
            use_env_proxy: use_env,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn https(h: &str) -> Target {
        Target::new(true, h, 443)
    }

    fn np(list: &str) -> NoProxy {
        NoProxy::parse([list])
    }

    #[test]
    fn config_proxy_wins_over_environment_for_both_schemes() {
        let e = env(&[("HTTPS_PROXY", "http://env:1")]);
        let s =
            ProxySettings::from_config(&cfg(Some("http://cfg:3128"), &[], true), &e).expect("ok");
        assert_eq!(
            s.proxy_for(&https("a.example"))
                .map(ProxyEndpoint::peer)
                .as_deref(),
            Some("cfg:3128")
        );
        let plain = Target::new(false, "a.example", 80);
        assert_eq!(
            s.proxy_for(&plain).map(ProxyEndpoint::peer).as_deref(),
            Some("cfg:3128")
        );
    }

    #[test]
    fn streams_use_the_wireguard_proxy_else_the_upstreams_https_proxy() {
        let gw = Target::new(true, "gw.example", 443);
        let e = env(&[
            ("HTTPS_PROXY", "http://env:1"),
            ("HTTP_PROXY", "http://plain:2"),
        ]);
        let own = ProxySettings::for_streams(
            Some("http://u:pw@wg:3128"),
            &cfg(Some("http://cfg:3"), &["gw.example"], true),
            &e,
        )
        .expect("ok");
        // `[wireguard] proxy` wins, and the upstreams' bypass list does not apply to it.
        let p = own.proxy_for(&gw).expect("proxied");
        assert_eq!(p.peer(), "wg:3128");
        assert!(p.authorization().is_some());
        let inherited = ProxySettings::for_streams(None, &cfg(None, &[], true), &e).expect("ok");
        assert_eq!(
            inherited.proxy_for(&gw).map(ProxyEndpoint::peer).as_deref(),
            Some("env:1")
        );
        let off = ProxySettings::for_streams(None, &cfg(None, &[], false), &e).expect("ok");
        assert!(off.proxy_for(&gw).is_none());
        let err =
            ProxySettings::for_streams(Some("socks5://u:secretpw@p:1"), &cfg(None, &[], false), &e)
                .expect_err("bad");
        assert!(
            err.starts_with("wireguard.proxy:") && !err.contains("secretpw"),
            "{err}"
        );
    }

    #[test]
    fn environment_per_scheme_lower_case_first() {
        let e = env(&[
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:2"),
            ("HTTP_PROXY", "plain:3"),
        ]);
        let s = ProxySettings::from_config(&cfg(None, &[], true), &e).expect("ok");
        assert_eq!(
            s.proxy_for(&https("a.example"))
                .map(ProxyEndpoint::peer)
                .as_deref(),
            Some("lower:1")
        );
        let plain = Target::new(false, "a.example", 80);
        assert_eq!(
            s.proxy_for(&plain).map(ProxyEndpoint::peer).as_deref(),
            Some("plain:3")
        );
    }

    #[test]
    fn environment_ignored_without_use_env_proxy_and_empty_values_unset() {
        let e = env(&[("HTTPS_PROXY", "http://env:1"), ("NO_PROXY", "*")]);
        let s = ProxySettings::from_config(&cfg(None, &[], false), &e).expect("ok");
        assert_eq!(s, ProxySettings::direct());
        let e = env(&[("https_proxy", "  "), ("HTTPS_PROXY", "http://env:1")]);
        let s = ProxySettings::from_config(&cfg(None, &[], true), &e).expect("ok");
        assert_eq!(
            s.proxy_for(&https("x")).map(ProxyEndpoint::peer).as_deref(),
            Some("env:1")
        );
    }

    #[test]
    fn bad_environment_proxy_is_an_error_naming_the_variable() {
        let e = env(&[("HTTPS_PROXY", "socks5://u:secretpw@p:1")]);
        let err = ProxySettings::from_config(&cfg(None, &[], true), &e).expect_err("bad");
        assert!(
            err.contains("HTTPS_PROXY") && !err.contains("secretpw"),
            "{err}"
        );
    }

    #[test]
    fn no_proxy_from_config_and_environment_combine() {
        let e = env(&[
            ("HTTPS_PROXY", "http://p:1"),
            ("no_proxy", "internal.corp, 10.0.0.0/8"),
        ]);
        let s = ProxySettings::from_config(&cfg(None, &["git.example.com"], true), &e).expect("ok");
        assert!(s.proxy_for(&https("git.example.com")).is_none());
        assert!(s.proxy_for(&https("gitlab.internal.corp")).is_none());
        assert!(s.proxy_for(&https("10.2.3.4")).is_none());
        assert!(s.proxy_for(&https("github.com")).is_some());
    }

    #[test]
    fn no_proxy_domain_suffix_at_label_boundary() {
        let n = np("example.com");
        assert!(n.matches(&https("example.com")));
        assert!(n.matches(&https("git.example.com")));
        assert!(n.matches(&https("a.b.EXAMPLE.com")));
        assert!(!n.matches(&https("badexample.com")));
        assert!(!n.matches(&https("example.com.evil")));
        assert!(!n.matches(&https("com")));
    }

    #[test]
    fn no_proxy_leading_dot_and_star_prefix() {
        for list in [".example.com", "*.example.com", "example.com."] {
            let n = np(list);
            assert!(n.matches(&https("git.example.com")), "{list}");
            assert!(n.matches(&https("example.com")), "{list}");
            assert!(!n.matches(&https("notexample.com")), "{list}");
        }
        assert!(np("example.com").matches(&https("git.example.com.")));
    }

    #[test]
    fn no_proxy_star_bypasses_everything() {
        let n = np("foo, *");
        assert!(n.matches(&https("anything.example")));
        assert!(n.matches(&https("[::1]")));
        // `*` only as a whole entry.
        assert!(np("*foo").is_empty());
    }

    #[test]
    fn no_proxy_host_port_entries() {
        let n = np("git.example.com:8443, 10.1.2.3:80, [::1]:8080");
        assert!(n.matches(&Target::new(true, "git.example.com", 8443)));
        assert!(!n.matches(&Target::new(true, "git.example.com", 443)));
        assert!(n.matches(&Target::new(false, "10.1.2.3", 80)));
        assert!(!n.matches(&Target::new(true, "10.1.2.3", 443)));
        assert!(n.matches(&Target::new(false, "[::1]", 8080)));
        assert!(!n.matches(&Target::new(false, "[::1]", 80)));
    }

    #[test]
    fn no_proxy_ip_literals_and_cidrs() {
        let n = np("127.0.0.1, ::1, 192.168.0.0/16, fd00::/8");
        assert!(n.matches(&https("127.0.0.1")));
        assert!(!n.matches(&https("127.0.0.2")));
        assert!(n.matches(&https("[::1]")));
        assert!(n.matches(&https("192.168.44.1")));
        assert!(n.matches(&https("[fd12::1]")));
        assert!(!n.matches(&https("[fe80::1]")));
        // Names are never resolved for IP entries.
        assert!(!n.matches(&https("localhost")));
        // An IP entry is not a domain suffix.
        assert!(!np("0.0.1").matches(&https("10.0.0.1")));
    }

    #[test]
    fn no_proxy_ignores_junk() {
        let n = np(" , :, host:notaport, [::1, ..., a b");
        assert!(n.is_empty(), "{n:?}");
    }
}
