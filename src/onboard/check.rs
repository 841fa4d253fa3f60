//! `wgbroker test`: what works from this host and what does not, each with its fix.
//!
//! The checks, in order, and the only traffic they cause:
//!
//! 1. each gateway's endpoint name resolves (DNS, as the broker resolves it);
//! 2. a WireGuard handshake completes within [`HANDSHAKE_WITHIN`]: the broker itself is started
//!    in-process on the same code as `run` ([`crate::service::start`], admin listener off), so
//!    the handshake is the runtime's own — the tunnel core driving the sans-IO peer table;
//!    with `transport = "auto"` it waits [`STREAM_FALLBACK_WITHIN`] longer for the TCP or TLS
//!    fallback, and the row says which transport carried the handshake (a stream: UDP got no
//!    answer);
//!    then, per gateway, which transports work from this host: UDP (from that handshake), TCP
//!    to its `tcp_endpoint` and TLS to its `tls_endpoint` (a connection, through the stream
//!    transports' proxy if any, and for TLS the handshake with the certificate checked —
//!    [`transport_rows`]);
//! 3. the heartbeat answers, through that tunnel (the runtime's first heartbeat, 1 s after
//!    start);
//! 4. each SCM's base URL answers one authenticated `GET` from this host with its token, the
//!    upstream TLS settings and the proxy ([`super::probe`]); 401/403 = reachable, token rejected.
//!
//! The broker is stopped before the SCM probes. While it runs it answers requests from the
//! tunnel as `run` would; a broker already running with the same key loses its session to this
//! one for those seconds (the gateway follows the newest handshake).

use std::net::ToSocketAddrs;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::probe::{self, ProbeError, Settings};
use crate::config::Loaded;
use crate::transport::Transport;

/// A handshake must complete within this: WireGuard retries every 5 s, so a first attempt that
/// gets no answer within it will not get one.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(5);

/// With `transport = "auto"`, the further time given to the stream fallback: TCP starts after two
/// unanswered UDP initiations, about 5 s in, and TLS after TCP failed (a connect timeout of 5 s,
/// a second of back-off, the TLS handshake).
pub const STREAM_FALLBACK_WITHIN: Duration = Duration::from_secs(15);

/// How long each stream transport probe (connect, proxy, TLS handshake) may take.
pub const STREAM_PROBE_WITHIN: Duration = Duration::from_secs(5);

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Row {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check against `loaded` (a configuration loaded in full: secrets readable).
pub fn run(mut loaded: Loaded, env: &dyn Fn(&str) -> Option<String>) -> Vec<Row> {
    let mut rows = Vec::new();
    let peers = loaded.config.wireguard.peers.clone();
    rows.extend(peers.iter().map(|p| resolves(&p.endpoint)));

    // The tunnel: the broker itself, without its admin listener (one may already run here).
    loaded.config.admin.enabled = false;
    let endpoints: Vec<String> = peers.iter().map(|p| p.endpoint.to_string()).collect();
    let endpoints = endpoints.join(", ");
    let public = loaded.config.wireguard.private_key.public_key().to_string();
    match crate::service::start(&loaded) {
        Err(e) => rows.push(Row::fail(
            "broker starts",
            e.to_string(),
            "run `wgbroker check -c FILE` for the details",
        )),
        Ok(broker) => {
            let status = broker.status().clone();
            let (row, tunnel) = handshake_row(&loaded.config, &status, &endpoints, &public);
            rows.push(row);
            rows.extend(transport_rows(&loaded.config, &status, tunnel, env));
            if let Some(hb) = &loaded.config.heartbeat {
                let check = format!("heartbeat {} answers", hb.url);
                if !tunnel {
                    rows.push(Row::fail(
                        check,
                        "not tried: no tunnel",
                        "fix the handshake first",
                    ));
                } else {
                    // The runtime's first heartbeat goes out 1 s after start.
                    let until = Instant::now() + hb.timeout + Duration::from_secs(2);
                    let done = || {
                        status.heartbeats_ok.load(Ordering::Relaxed)
                            + status.heartbeats_failed.load(Ordering::Relaxed)
                            > 0
                    };
                    while !done() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if status.heartbeats_ok.load(Ordering::Relaxed) > 0 {
                        rows.push(Row::pass(check, "answered 2xx through the tunnel"));
                    } else {
                        let why = status.heartbeat_failure();
                        rows.push(Row::fail(
                            check,
                            if why.is_empty() {
                                "no answer".to_owned()
                            } else {
                                why
                            },
                            "check heartbeat.url with the vendor: its address must be the \
                             gateway's, inside a peer's allowed_ips",
                        ));
                    }
                }
            }
            let _ = broker.shutdown();
        }
    }

    rows.extend(scm_rows(&loaded.config, env));
    rows
}

/// Waits for `status` (a broker just started) to show a handshake (longer with `auto`, whose TCP fallback
/// starts after about 5 s of UDP silence) and says how it went, over which transport.
fn handshake_row(
    config: &crate::config::Config,
    status: &crate::status::Status,
    endpoints: &str,
    public: &str,
) -> (Row, bool) {
    let peers = &config.wireguard.peers;
    let transport = config.wireguard.transport;
    // `auto` moves to TCP only after UDP went unanswered for about 5 s: give it the
    // time to try.
    let within = match transport {
        Transport::Auto => HANDSHAKE_WITHIN + STREAM_FALLBACK_WITHIN,
        Transport::Udp | Transport::Tcp | Transport::Tls => HANDSHAKE_WITHIN,
    };
    let until = Instant::now() + within;
    while status.handshake_age().is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let check = format!("WireGuard handshake with {endpoints}");
    let tunnel = status.handshake_age().is_some();
    let on_stream = status.stream_peers.load(Ordering::Relaxed) > 0;
    let on_tls = status.tls_peers.load(Ordering::Relaxed) > 0;
    let list = |f: fn(&crate::config::Peer) -> crate::config::Endpoint| {
        peers
            .iter()
            .map(|p| f(p).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tcp_endpoints = list(crate::config::Peer::tcp_stream_endpoint);
    let tls_endpoints = list(crate::config::Peer::tls_stream_endpoint);
    if tunnel {
        let (name, to) = if on_tls {
            ("TLS", &tls_endpoints)
        } else {
            ("TCP", &tcp_endpoints)
        };
        let row = Row::pass(
            check,
            match (transport, on_stream) {
                (Transport::Auto, true) => format!(
                    "completed over {name} to {to}: UDP to {endpoints} got no \
                     answer (allowing it gives the best throughput)"
                ),
                (_, true) => format!("completed over {name} to {to}"),
                (_, false) => "completed over UDP".to_owned(),
            },
        );
        return (row, true);
    }
    let tried = match transport {
        Transport::Udp => format!("UDP to {endpoints} blocked or wrong key"),
        Transport::Tcp => format!("TCP to {tcp_endpoints} blocked or wrong key"),
        Transport::Tls => format!(
            "TLS to {tls_endpoints} blocked, its certificate refused (see the log) or wrong key"
        ),
        Transport::Auto => format!(
            "UDP to {endpoints} blocked or wrong key, and no answer over TCP to \
                 {tcp_endpoints} either"
        ),
    };
    let row = Row::fail(
        check,
        format!("no handshake within {} s: {tried}", within.as_secs()),
        format!(
            "allow outbound UDP to {endpoints} in the firewall; check that the vendor \
                 has this broker's public key {public} and that each peer's public_key is \
                 the gateway's"
        ),
    );
    (row, false)
}

/// Per gateway, which transports work from this host: UDP from the handshake just made (it
/// completed over UDP, or `auto` had to leave UDP), TCP and TLS from a connection to the peer's
/// stream endpoints (through the stream transports' proxy; TLS: the handshake, certificate
/// checked). The row fails only when none works: a gateway need not offer every transport.
pub fn transport_rows(
    config: &crate::config::Config,
    status: &crate::status::Status,
    tunnel: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Row> {
    let w = &config.wireguard;
    let on_stream = status.stream_peers.load(Ordering::Relaxed) > 0;
    let udp = match w.transport {
        Transport::Tcp | Transport::Tls => None,
        _ if tunnel && !on_stream => Some(Ok("handshake answered".to_owned())),
        _ => Some(Err("no handshake answered".to_owned())),
    };
    let settings = crate::upstream::tls::stream_client_config(&w.ca_files).and_then(|tls| {
        crate::upstream::proxy::ProxySettings::for_streams(
            w.proxy.as_deref(),
            &config.upstream,
            env,
        )
        .map(|proxy| Settings {
            tls,
            proxy,
            timeout: STREAM_PROBE_WITHIN,
        })
    });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            return vec![Row::fail(
                "stream transport settings",
                e,
                "fix [wireguard] ca_files and proxy (or [upstream] proxy, HTTPS_PROXY)",
            )];
        }
    };
    let stream = |ep: &crate::config::Endpoint, tls: bool| {
        let host = if ep.host.contains(':') {
            format!("[{}]", ep.host)
        } else {
            ep.host.clone()
        };
        match probe::reach(&crate::upstream::Target::new(tls, host, ep.port), &settings) {
            Ok(via) => {
                let via = via.map_or_else(String::new, |p| format!(" via proxy {p}"));
                Ok(if tls {
                    format!("certificate valid{via}")
                } else {
                    format!("connects{via}")
                })
            }
            Err(e) => Err(e.to_string()),
        }
    };
    w.peers
        .iter()
        .map(|p| {
            let (tcp_ep, tls_ep) = (p.tcp_stream_endpoint(), p.tls_stream_endpoint());
            let results = [
                ("udp", p.endpoint.to_string(), udp.clone()),
                ("tcp", tcp_ep.to_string(), Some(stream(&tcp_ep, false))),
                ("tls", tls_ep.to_string(), Some(stream(&tls_ep, true))),
            ];
            let detail = results
                .iter()
                .map(|(name, ep, r)| match r {
                    None => format!("{name} {ep}: not used (transport = \"{}\")", w.transport),
                    Some(Ok(m)) => format!("{name} {ep}: {m}"),
                    Some(Err(m)) => format!("{name} {ep}: {m}"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            let check = format!("transports to {} from this host", p.endpoint);
            if results.iter().any(|(_, _, r)| matches!(r, Some(Ok(_)))) {
                Row::pass(check, detail)
            } else {
                Row::fail(
                    check,
                    detail,
                    "allow one of them out: UDP to the endpoint, TCP to tcp_endpoint, or TLS to \
                     tls_endpoint (443), or set [wireguard] proxy to an HTTP CONNECT proxy \
                     that may reach the gateway; a rejected certificate needs [wireguard] \
                     ca_files",
                )
            }
        })
        .collect()
}

/// Whether a peer's endpoint name resolves (an address needs no resolving).
fn resolves(endpoint: &crate::config::Endpoint) -> Row {
    let host = &endpoint.host;
    let check = format!("gateway name {host} resolves");
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Row::pass(check, "an address, nothing to resolve");
    }
    match (host.as_str(), endpoint.port).to_socket_addrs() {
        Ok(mut a) => match a.next() {
            Some(a) => Row::pass(check, format!("{}", a.ip())),
            None => Row::fail(
                check,
                "no address",
                "check the endpoint name with the vendor and this host's DNS",
            ),
        },
        Err(e) => Row::fail(
            check,
            e.to_string(),
            "check the endpoint name with the vendor and this host's DNS (/etc/resolv.conf)",
        ),
    }
}

/// One authenticated GET per SCM, from this host, with the upstream TLS settings and proxy.
pub fn scm_rows(config: &crate::config::Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<Row> {
    let mut rows = Vec::new();
    let u = &config.upstream;
    let settings = crate::upstream::tls::client_config(u).and_then(|tls| {
        crate::upstream::proxy::ProxySettings::from_config(u, env).map(|proxy| Settings {
            tls,
            proxy,
            timeout: u.connect_timeout.max(u.tls_timeout),
        })
    });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            rows.push(Row::fail(
                "upstream TLS and proxy settings",
                e,
                "fix [upstream] (ca_files, proxy) or the proxy environment",
            ));
            return rows;
        }
    };
    for (i, scm) in config.scm.iter().enumerate() {
        let check = format!(
            "SCM {} {} reachable with its token",
            kind_name(scm.kind),
            scm.base_url
        );
        // The token, or a pool's first one.
        let header = scm.rules.first().and_then(|r| {
            r.set_request_headers
                .first()
                .map(|(n, v)| (n.as_str(), v))
                .or_else(|| {
                    r.token_pool
                        .as_deref()
                        .and_then(|p| p.values().first().map(|v| (p.header(), v)))
                })
        });
        rows.push(match probe::get(&scm.base_url, header, &settings) {
            Ok(p) => {
                let via = p
                    .proxy
                    .map_or_else(|| "direct".to_owned(), |p| format!("via proxy {p}"));
                match p.status {
                    401 | 403 => Row::fail(
                        check,
                        format!("reachable ({via}), but the token was rejected: HTTP {}", p.status),
                        format!("check scm[{i}].token: its value, scopes and expiry"),
                    ),
                    s if s >= 500 => Row::fail(
                        check,
                        format!("reachable ({via}), but the server failed: HTTP {s}"),
                        "check the SCM server".to_owned(),
                    ),
                    s => Row::pass(check, format!("HTTP {s} ({via})")),
                }
            }
            Err(e) => {
                let fix = match &e {
                    ProbeError::Url(_) => format!("check scm[{i}].base_url"),
                    ProbeError::Resolve(_) => "check the base URL's host name and this host's DNS".into(),
                    ProbeError::Connect(_) => "allow this host to reach the SCM (firewall), or set [upstream] proxy".into(),
                    ProbeError::Proxy(_) => "check [upstream] proxy (or HTTPS_PROXY) and that the proxy allows CONNECT to the SCM".into(),
                    ProbeError::Tls(_) => "add the SCM's CA certificate to [upstream] ca_files, or lower tls_min_version if the SCM is older".into(),
                    ProbeError::Http(_) => format!("check that scm[{i}].base_url is the SCM's API"),
                };
                Row::fail(check, e.to_string(), fix)
            }
        });
    }
    rows
}

fn kind_name(k: crate::allowlist::scm::ScmKind) -> &'static str {
    use crate::allowlist::scm::ScmKind;
    match k {
        ScmKind::Github => "github",
        ScmKind::Gitlab => "gitlab",
        ScmKind::Bitbucket => "bitbucket",
        ScmKind::Azuredevops => "azuredevops",
    }
}

/// The report as a table: one line per check, a fix under each failure.
pub fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "{}  {:width$}  {}\n",
            if r.ok { "ok  " } else { "FAIL" },
            r.check,
            r.detail
        ));
        if let Some(f) = &r.fix {
            out.push_str(&format!("      fix: {f}\n"));
        }
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    out.push_str(&match failed {
        0 => format!("all {} checks passed\n", rows.len()),
        n => format!("{n} of {} checks failed\n", rows.len()),
    });
    out
}

/// The report for machines: `{"ok": bool, "checks": [...]}`.
pub fn json(rows: &[Row]) -> String {
    let v = serde_json::json!({ "ok": rows.iter().all(|r| r.ok), "checks": rows });
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    /// A loopback server answering each connection's first request with `status`; sends the
    /// request head it saw.
    fn server(status: u16) -> (u16, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut head = String::new();
                while r.read_line(&mut head).is_ok_and(|n| n > 2) {}
                let _ = tx.send(head);
                let mut s = s;
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            }
        });
        (port, rx)
    }

    /// A loopback CONNECT proxy that splices to the requested authority; counts CONNECTs.
    fn proxy() -> (u16, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut r = BufReader::new(c.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let mut h = String::new();
                while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let authority = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(line.clone());
                let up = std::net::TcpStream::connect(&authority).expect("upstream");
                let mut c2 = c.try_clone().expect("clone");
                let _ = c2.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let mut up2 = up.try_clone().expect("clone");
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut r, &mut up2);
                });
                let mut up = up;
                let mut buf = [0u8; 4096];
                while let Ok(n) = up.read(&mut buf) {
                    if n == 0 || c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        (port, rx)
    }

    fn config(extra: &str) -> crate::config::Config {
        let toml = format!(
            "[wireguard]\nprivate_key = \"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\"\n\
             address = \"10.77.0.2\"\n[[wireguard.peers]]\n\
             public_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
             endpoint = \"127.0.0.1:51820\"\nallowed_ips = [\"10.77.0.1/32\"]\n{extra}"
        );
        crate::config::load_str(
            &[("t.toml".into(), toml)],
            crate::config::LoadMode::Full,
            &|_: &str| None,
        )
        .expect("config")
        .config
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_scm_answering_401_is_reachable_with_its_token_rejected() {
        let (ok, seen) = server(200);
        let (denied, _) = server(401);
        let c = config(&format!(
            "[upstream]\nuse_env_proxy = false\n\
             [[scm]]\ntype = \"github\"\nbase_url = \"http://127.0.0.1:{ok}/api/v3\"\ntoken = \"ghp_T0KEN\"\n\
             [[scm]]\ntype = \"gitlab\"\nbase_url = \"http://127.0.0.1:{denied}/api/v4\"\ntoken = \"glpat-T0KEN\"\n"
        ));
        let rows = scm_rows(&c, &no_env);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows[0].ok && rows[0].detail == "HTTP 200 (direct)",
            "{rows:?}"
        );
        let head = seen.recv().expect("a request");
        assert!(head.starts_with("GET /api/v3 HTTP/1.1"), "{head}");
        assert!(
            head.contains("Authorization: Bearer ghp_T0KEN"),
            "the token is sent: {head}"
        );
        assert!(
            !rows[1].ok && rows[1].detail.contains("token was rejected: HTTP 401"),
            "{rows:?}"
        );
        assert_eq!(
            rows[1].fix.as_deref(),
            Some("check scm[1].token: its value, scopes and expiry")
        );
        assert!(!format!("{rows:?}").contains("T0KEN"), "never the token");
    }

    #[test]
    fn the_configured_proxy_is_used_and_an_unreachable_scm_says_so() {
        let (up, _) = server(200);
        let (px, connects) = proxy();
        let c = config(&format!(
            "[upstream]\nproxy = \"http://127.0.0.1:{px}\"\n\
             [[scm]]\ntype = \"github\"\nbase_url = \"http://127.0.0.1:{up}/api/v3\"\n"
        ));
        let rows = scm_rows(&c, &no_env);
        assert!(rows[0].ok, "{rows:?}");
        assert_eq!(
            rows[0].detail,
            format!("HTTP 200 (via proxy 127.0.0.1:{px})")
        );
        assert!(
            connects
                .recv()
                .expect("a CONNECT")
                .starts_with(&format!("CONNECT 127.0.0.1:{up} "))
        );
        // Nothing listens: refused, with the firewall fix.
        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("a")
            .port();
        let c = config(&format!(
            "[upstream]\nuse_env_proxy = false\n\
             [[scm]]\ntype = \"github\"\nbase_url = \"http://127.0.0.1:{closed}/api/v3\"\n"
        ));
        let rows = scm_rows(&c, &no_env);
        assert!(
            !rows[0].ok && rows[0].detail.starts_with("cannot connect"),
            "{rows:?}"
        );
        assert!(
            rows[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("firewall")),
            "{rows:?}"
        );
    }
}
