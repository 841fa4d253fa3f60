//! WireGuard over a framed TCP stream (`[wireguard] transport`), in process over loopback: the
//! broker's runtime seam against the test kit gateway's accepting side, and against hand-made
//! servers that misbehave.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use wgbroker::keys::PrivateKey;
use wgbroker::runtime::BrokerHandle;
use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::gateway::{Gateway, GatewayConfig};
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

use crate::harness::{BROKER_IP, VENDOR_IP, metric, poll_for, poll_until, start_broker};

/// A test kit gateway (UDP and TCP on one port) and the keys of both sides.
struct Sides {
    gateway: Gateway,
    broker_key: PrivateKey,
    vendor_key: PrivateKey,
}

fn gateway() -> Sides {
    let broker_key = PrivateKey::generate().expect("rng");
    let vendor_key = PrivateKey::generate().expect("rng");
    let gateway = Gateway::bind(&GatewayConfig::new(
        vendor_key.clone(),
        broker_key.public_key(),
        VENDOR_IP.parse().expect("ip"),
        BROKER_IP.parse().expect("ip"),
    ))
    .expect("gateway");
    Sides {
        gateway,
        broker_key,
        vendor_key,
    }
}

/// A broker dialing `udp` (its peer `endpoint`) with `transport`, and `tcp` as its
/// `tcp_endpoint` when given.
fn broker(
    s: &Sides,
    transport: Option<&str>,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
) -> BrokerHandle {
    broker_for(&s.broker_key, &s.vendor_key, transport, udp, tcp)
}

fn broker_for(
    broker_key: &PrivateKey,
    vendor_key: &PrivateKey,
    transport: Option<&str>,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
) -> BrokerHandle {
    let mut peer = PeerToml::new(vendor_key.public_key(), udp, format!("{VENDOR_IP}/32"))
        .persistent_keepalive(0);
    if let Some(t) = tcp {
        peer = peer.tcp_endpoint(t);
    }
    let mut wg = WireguardToml::new(broker_key, BROKER_IP).peer(peer);
    if let Some(t) = transport {
        wg = wg.transport(t);
    }
    start_broker(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        wg.render()
    ))
}

/// The next connection on `listener`, waited for at most `timeout` (the test fails instead of
/// hanging when the broker never connects).
fn accept_within(listener: &TcpListener, timeout: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).expect("non-blocking");
    let (s, a) = poll_for(timeout, "a connection from the broker", || {
        listener.accept().map_err(|e| e.to_string())
    });
    s.set_nonblocking(false).expect("blocking");
    (s, a)
}

fn admin_port(b: &BrokerHandle) -> u16 {
    b.status()
        .admin_port
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// `n` healthchecks on `conns` connections through the gateway; all must answer 200.
fn healthchecks(gw: &mut Gateway, conns: usize, per_conn: usize) {
    let plan = (0..conns)
        .map(|_| {
            (0..per_conn)
                .map(|_| Request::get("/healthcheck"))
                .collect()
        })
        .collect();
    let results = client::run(
        gw,
        plan,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(30),
            keep_bodies: true,
        },
    );
    for (i, conn) in results.iter().enumerate() {
        assert_eq!(conn.len(), per_conn, "connection {i}");
        for ex in conn {
            let r = ex
                .response
                .as_ref()
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.body, wgbroker::server::HEALTHCHECK_BODY);
        }
    }
}

/// `transport = "tcp"`: the handshake and every request travel on the framed stream; the UDP
/// socket of the gateway never hears from the broker.
#[test]
fn tcp_transport_carries_the_handshake_and_requests() {
    let mut s = gateway();
    let udp = s.gateway.local_addr().expect("addr");
    assert_eq!(
        s.gateway.tcp_addr(),
        Some(udp),
        "TCP listens on the UDP port"
    );
    let b = broker(&s, Some("tcp"), udp, None);
    assert!(
        s.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake over the stream"
    );
    healthchecks(&mut s.gateway, 20, 3);
    let st = s.gateway.stream_stats().expect("streams").clone();
    assert_eq!(st.accepted, 1, "{st:?}");
    assert!(st.frames_in > 60 && st.frames_out > 60, "{st:?}");
    assert_eq!(st.framing_errors, 0);
    assert_eq!(
        s.gateway.stats.recv_calls, 0,
        "no datagram reached the gateway's UDP socket"
    );
    let port = admin_port(&b);
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_transport{transport="tcp"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_transport{transport="udp"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(
            port,
            r#"wgbroker_tunnel_transport_switches_total{reason="configured"}"#
        ),
        Some(1.0)
    );
    b.shutdown().expect("stop");
}

/// `auto` (the default): UDP to an endpoint that swallows every datagram gets no handshake; the
/// broker moves to the stream (`tcp_endpoint`) within seconds and serves there.
#[test]
fn auto_moves_to_tcp_when_udp_gets_no_handshake() {
    let mut s = gateway();
    // A UDP socket nobody reads: the broker's initiations vanish, as behind a firewall.
    let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tcp = s.gateway.tcp_addr().expect("streams");
    let b = broker(&s, None, black_hole.local_addr().expect("addr"), Some(tcp));
    assert!(
        s.gateway.wait_handshake(Duration::from_secs(30)),
        "auto never reached the gateway over TCP"
    );
    healthchecks(&mut s.gateway, 5, 2);
    assert_eq!(s.gateway.open_streams(), 1);
    let port = admin_port(&b);
    assert_eq!(
        metric(
            port,
            r#"wgbroker_tunnel_transport_switches_total{reason="udp_no_handshake"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_transport{transport="tcp"}"#),
        Some(1.0)
    );
    b.shutdown().expect("stop");
}

/// A gateway that answers with a zero-length frame breaks the framing: the broker closes the
/// stream, counts it, and connects again (after its back-off). What it sent first is a
/// Semgrep-style frame: a 16-bit big-endian length, then a 148-byte handshake initiation.
#[test]
fn a_framing_error_closes_the_stream_and_the_broker_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tcp = listener.local_addr().expect("addr");
    let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let broker_key = PrivateKey::generate().expect("rng");
    let vendor_key = PrivateKey::generate().expect("rng");
    let b = broker_for(
        &broker_key,
        &vendor_key,
        Some("tcp"),
        black_hole.local_addr().expect("addr"),
        Some(tcp),
    );
    let (mut first, _) = accept_within(&listener, Duration::from_secs(20));
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = [0u8; 3];
    first.read_exact(&mut head).expect("a frame");
    assert_eq!(
        (u16::from_be_bytes([head[0], head[1]]), head[2]),
        (148, 1),
        "length 148, message type 1 (initiation)"
    );
    first.write_all(&[0, 0]).expect("write");
    // The broker hangs up: the rest of what it sent, then EOF.
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    let (second, _) = accept_within(&listener, Duration::from_secs(20));
    drop(second);
    let port = admin_port(&b);
    poll_until(Duration::from_secs(5), "the framing error counted", || {
        metric(
            port,
            r#"wgbroker_tunnel_transport_switches_total{reason="framing_error"}"#,
        ) == Some(1.0)
    });
    let text = poll_for(Duration::from_secs(5), "metrics", || {
        Ok::<_, String>(crate::harness::admin_get(port, "/metrics").1)
    });
    assert!(
        text.contains("wgbroker_stream_queue_drops_total 0"),
        "{text}"
    );
    b.shutdown().expect("stop");
}

/// A test kit gateway that also accepts the `tls` transport on a loopback port of its own, with a
/// certificate made in process for 127.0.0.1; `ca` is that certificate as a file, for the
/// broker's `ca_files`.
struct TlsSides {
    sides: Sides,
    tls: SocketAddr,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

fn tls_gateway() -> TlsSides {
    let broker_key = PrivateKey::generate().expect("rng");
    let vendor_key = PrivateKey::generate().expect("rng");
    let cert = wgbroker::testkit::tls::self_signed(&["127.0.0.1".to_owned()]).expect("cert");
    let mut cfg = GatewayConfig::new(
        vendor_key.clone(),
        broker_key.public_key(),
        VENDOR_IP.parse().expect("ip"),
        BROKER_IP.parse().expect("ip"),
    );
    cfg.tls = Some((SocketAddr::from(([127, 0, 0, 1], 0)), cert.config.clone()));
    let gateway = Gateway::bind(&cfg).expect("gateway");
    let tls = gateway.tls_addr().expect("a TLS listener");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("gateway-ca.pem");
    std::fs::write(&ca, &cert.cert_pem).expect("write");
    TlsSides {
        sides: Sides {
            gateway,
            broker_key,
            vendor_key,
        },
        tls,
        _dir: dir,
        ca,
    }
}

/// A broker for `s` with `transport`, its peer and `[wireguard]` table finished by the closures.
fn broker_with(
    s: &Sides,
    transport: &str,
    udp: SocketAddr,
    peer: impl FnOnce(PeerToml) -> PeerToml,
    wireguard: impl FnOnce(WireguardToml) -> WireguardToml,
) -> BrokerHandle {
    let p = peer(
        PeerToml::new(s.vendor_key.public_key(), udp, format!("{VENDOR_IP}/32"))
            .persistent_keepalive(0),
    );
    let wg = wireguard(
        WireguardToml::new(&s.broker_key, BROKER_IP)
            .transport(transport)
            .peer(p),
    );
    start_broker(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        wg.render()
    ))
}

/// `transport = "tls"`: the handshake and every request travel on the framed stream inside TLS
/// to `tls_endpoint`, the gateway's certificate checked against `ca_files`; neither the
/// gateway's UDP socket nor its plain TCP listener hears from the broker.
#[test]
fn tls_transport_carries_the_handshake_and_requests() {
    let TlsSides {
        mut sides,
        tls,
        _dir,
        ca,
    } = tls_gateway();
    let udp = sides.gateway.local_addr().expect("addr");
    let b = broker_with(
        &sides,
        "tls",
        udp,
        |p| p.tls_endpoint(tls),
        |w| w.ca_file(ca.display()),
    );
    assert!(
        sides.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake over TLS"
    );
    healthchecks(&mut sides.gateway, 20, 3);
    let st = sides.gateway.stream_stats().expect("streams").clone();
    assert_eq!((st.accepted, st.tls_accepted), (1, 1), "{st:?}");
    assert_eq!((st.framing_errors, st.tls_errors), (0, 0), "{st:?}");
    assert!(st.frames_in > 60 && st.frames_out > 60, "{st:?}");
    assert_eq!(sides.gateway.stats.recv_calls, 0, "nothing came over UDP");
    let port = admin_port(&b);
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_transport{transport="tls"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_transport{transport="tcp"}"#),
        Some(0.0)
    );
    b.shutdown().expect("stop");
}

/// A gateway certificate the broker does not trust (no `ca_files`): the TLS handshake is
/// refused, no session comes up, and each attempt is logged with its reason (the certificate's
/// issuer is unknown).
#[test]
fn an_untrusted_gateway_certificate_is_refused_and_logged_with_the_reason() {
    let TlsSides {
        mut sides,
        tls,
        _dir,
        ca: _,
    } = tls_gateway();
    let udp = sides.gateway.local_addr().expect("addr");
    // Capture the process's events from before the broker starts.
    let _ = crate::logs::captured();
    let b = broker_with(&sides, "tls", udp, |p| p.tls_endpoint(tls), |w| w);
    let gw = &mut sides.gateway;
    poll_until(
        Duration::from_secs(20),
        "the gateway sees the broker give up on TLS",
        || {
            let _ = gw.pump(Duration::from_millis(20));
            gw.stream_stats().is_some_and(|st| st.tls_errors >= 1)
        },
    );
    assert!(!gw.handshaken(), "no session over an untrusted certificate");
    let endpoint = format!("\"endpoint\":\"{tls}\"");
    poll_until(Duration::from_secs(5), "the failure logged", || {
        crate::logs::captured().lines().any(|l| {
            l.contains("wireguard.transport_connect_failure")
                && l.contains(&endpoint)
                && l.contains("\"kind\":\"tls_certificate\"")
                && l.contains("UnknownIssuer")
        })
    });
    b.shutdown().expect("stop");
}

/// `auto`: UDP swallowed, the TCP endpoint refusing connections, TLS open: the broker goes UDP →
/// TCP → TLS and serves over TLS; the move to TLS is counted as `other_stream_failed`.
#[test]
fn auto_moves_on_to_tls_when_udp_and_tcp_both_fail() {
    let TlsSides {
        mut sides,
        tls,
        _dir,
        ca,
    } = tls_gateway();
    let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // A port nobody listens on: connections are refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let b = broker_with(
        &sides,
        "auto",
        black_hole.local_addr().expect("addr"),
        |p| p.tcp_endpoint(closed).tls_endpoint(tls),
        |w| w.ca_file(ca.display()),
    );
    assert!(
        sides.gateway.wait_handshake(Duration::from_secs(40)),
        "auto never reached the gateway over TLS"
    );
    healthchecks(&mut sides.gateway, 5, 2);
    let port = admin_port(&b);
    assert_eq!(
        metric(port, r#"wgbroker_tunnel_transport{transport="tls"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            port,
            r#"wgbroker_tunnel_transport_switches_total{reason="other_stream_failed"}"#
        ),
        Some(1.0)
    );
    b.shutdown().expect("stop");
}

/// A broker (`wgbroker run`, `transport` left at `auto`) in a network namespace whose nftables
/// drop what it sends (by default every UDP packet; the rules count them: chain `inet wgb out`),
/// with a gateway key written for the vendor side the test starts; `admin` is the broker's admin
/// listener.
struct UdpBlocked {
    pair: crate::harness::netns::Pair,
    broker_ns: String,
    /// Holds the key and the configuration until the test ends.
    _dir: tempfile::TempDir,
    /// The vendor's private key, for `loadtest --gateway --private-key-file`.
    key_file: std::path::PathBuf,
    bin: &'static str,
    /// The vendor's WireGuard address, UDP and TCP.
    listen: String,
    broker_public: String,
}

impl UdpBlocked {
    fn start(tag: &str, admin: &str) -> Self {
        Self::start_with(
            tag,
            admin,
            |_| vec!["add rule inet wgb out meta l4proto udp counter drop".to_owned()],
            |w, _, _| w,
        )
    }

    /// The broker's namespace gets chain `inet wgb out` (an output hook) with `rules` (given the
    /// namespaces); `wireguard` finishes the broker's `[wireguard]` table (given the namespaces
    /// and the test's directory, for files the broker reads).
    fn start_with(
        tag: &str,
        admin: &str,
        rules: impl FnOnce(&crate::harness::netns::Pair) -> Vec<String>,
        wireguard: impl FnOnce(
            WireguardToml,
            &crate::harness::netns::Pair,
            &std::path::Path,
        ) -> WireguardToml,
    ) -> Self {
        use crate::harness::netns::Pair;
        let mut pair = Pair::new(tag);
        let broker_ns = pair.broker.clone();
        let mut all = vec![
            "add table inet wgb".to_owned(),
            "add chain inet wgb out { type filter hook output priority 0 ; policy accept ; }"
                .to_owned(),
        ];
        all.extend(rules(&pair));
        for rule in &all {
            let mut args = vec!["nft"];
            args.extend(rule.split(' '));
            pair.exec(&broker_ns, &args);
        }
        let vendor_key = PrivateKey::generate().expect("rng");
        let broker_key = PrivateKey::generate().expect("rng");
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("gateway.key");
        std::fs::write(&key_file, vendor_key.to_base64()).expect("key");
        let cfg = dir.path().join("broker.toml");
        let wg = WireguardToml::new(&broker_key, BROKER_IP).peer(PeerToml::new(
            vendor_key.public_key(),
            format!("{}:51820", pair.vendor_ip),
            format!("{VENDOR_IP}/32"),
        ));
        let wireguard = wireguard(wg, &pair, dir.path()).render();
        std::fs::write(
            &cfg,
            format!("{wireguard}[admin]\nlisten = \"{admin}\"\n[log]\nlevel = \"warn\"\n"),
        )
        .expect("config");
        let bin = env!("CARGO_BIN_EXE_wgbroker");
        let cfg_s = cfg.to_str().expect("utf-8 path").to_owned();
        let mut args = vec![bin, "run", "-c", cfg_s.as_str()];
        let spread = crate::harness::spread_args(&cfg);
        let spread: Vec<&str> = spread.iter().filter_map(|a| a.to_str()).collect();
        args.extend(spread);
        pair.spawn(&broker_ns, &args);
        let listen = format!("{}:51820", pair.vendor_ip);
        let broker_public = broker_key.public_key().to_string();
        Self {
            pair,
            broker_ns,
            _dir: dir,
            key_file,
            bin,
            listen,
            broker_public,
        }
    }

    /// `wgbroker loadtest --gateway` in the vendor's namespace, `extra` arguments added:
    /// `requests` healthchecks on 4 connections; the JSON report, once it passed.
    fn load(&self, requests: u64, extra: &[&str]) -> serde_json::Value {
        let requests = requests.to_string();
        let key_file = self.key_file.to_str().expect("utf-8 path");
        let mut args = vec![
            self.bin,
            "loadtest",
            "--gateway",
            "--listen",
            &self.listen,
            "--broker-public-key",
            &self.broker_public,
            "--private-key-file",
            key_file,
            "-s",
            "healthcheck",
            "--connections",
            "4",
            "--requests",
            &requests,
            "--duration",
            "30s",
            "--handshake-timeout",
            "60s",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = self
            .pair
            .command(&self.pair.vendor.clone(), &args)
            .output()
            .expect("run the gateway");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "loadtest: {stdout}\n{stderr}");
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("loadtest JSON ({e}): {stdout}\n{stderr}"))
    }

    /// The packet counters, summed, of the rules of chain `inet wgb out` that end in `verdict`
    /// (`drop`, `accept`).
    fn counted(&self, verdict: &str) -> u64 {
        let listed = self.pair.exec(
            &self.broker_ns,
            &["nft", "list", "chain", "inet", "wgb", "out"],
        );
        listed
            .lines()
            .filter(|l| l.contains("counter") && l.trim_end().ends_with(verdict))
            .filter_map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    }

    /// A sample of the broker's `/metrics` (its admin listener at `admin` in its namespace).
    fn metric(&self, admin: &str, sample: &str) -> Option<f64> {
        let out = self
            .pair
            .command(
                &self.broker_ns,
                &["curl", "-s", &format!("http://{admin}/metrics")],
            )
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

/// In network namespaces: nftables in the broker's namespace drops every UDP packet it sends.
/// The broker (`wgbroker run`, `transport` left at `auto`) gets no handshake over UDP, moves to
/// the framed TCP stream on the gateway's port and serves: the test kit gateway
/// (`wgbroker loadtest --gateway`, in the vendor's namespace) sends its requests through it.
#[test]
fn netns_udp_dropped_the_broker_connects_over_tcp_and_serves() {
    let fx = UdpBlocked::start("tcp", "127.0.0.1:0");
    let report = fx.load(200, &[]);
    let ok = find_u64(&report, "ok").unwrap_or(0);
    assert!(ok >= 100, "requests served: {ok}: {report}");
    assert_eq!(find_u64(&report, "errors_total"), Some(0), "{report}");
    // The network really dropped the broker's UDP.
    assert!(fx.counted("drop") > 0, "no UDP was dropped");
}

/// In network namespaces: everything the broker's namespace sends is dropped except TCP to port
/// 443 (and loopback). The broker (`auto`, its gateway's certificate in `ca_files`) gets nothing
/// over UDP nor over TCP to 51820, moves on to TLS on 443 — the test kit gateway's
/// `--tls-listen`, with a certificate from files — and serves 200 requests without an error.
#[test]
fn netns_only_tcp_443_open_the_broker_connects_over_tls_and_serves() {
    const ADMIN: &str = "127.0.0.1:9000";
    let mut files = None;
    let fx = UdpBlocked::start_with(
        "tls",
        ADMIN,
        |_| {
            vec![
                "add rule inet wgb out oif lo accept".to_owned(),
                "add rule inet wgb out tcp dport 443 counter accept".to_owned(),
                "add rule inet wgb out counter drop".to_owned(),
            ]
        },
        |w, pair, dir| {
            let cert = wgbroker::testkit::tls::self_signed(std::slice::from_ref(&pair.vendor_ip))
                .expect("cert");
            let (crt, key) = (dir.join("gw.crt"), dir.join("gw.key"));
            std::fs::write(&crt, &cert.cert_pem).expect("write");
            std::fs::write(&key, &cert.key_pem).expect("write");
            let w = w.ca_file(crt.display());
            files = Some((crt, key));
            w
        },
    );
    let (crt, key) = files.expect("certificate files");
    let tls_listen = format!("{}:443", fx.pair.vendor_ip);
    let report = fx.load(
        200,
        &[
            "--tls-listen",
            &tls_listen,
            "--tls-cert",
            crt.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let ok = find_u64(&report, "ok").unwrap_or(0);
    assert!(ok >= 100, "requests served: {ok}: {report}");
    assert_eq!(find_u64(&report, "errors_total"), Some(0), "{report}");
    assert!(fx.counted("drop") > 0, "nothing was dropped");
    assert!(fx.counted("accept") > 0, "nothing went to 443");
    // `auto` gave up on TCP for TLS (the gateway has gone with the load test: the gauge of the
    // transport in use is back at UDP by now).
    assert!(
        fx.metric(
            ADMIN,
            r#"wgbroker_tunnel_transport_switches_total{reason="other_stream_failed"}"#
        )
        .is_some_and(|n| n >= 1.0)
    );
}

/// In network namespaces: the broker's namespace may reach only a real HTTP CONNECT proxy —
/// tinyproxy (Debian's `tinyproxy-bin`), run in the vendor's namespace with its own
/// configuration file, wanting Basic credentials. The broker (`auto`, `[wireguard] proxy` with
/// those credentials) gets nothing over UDP, goes through the proxy to the gateway's TCP port
/// and serves; the proxy's log shows the tunnel and the nftables rule for the proxy counted its
/// packets.
#[test]
fn netns_only_a_connect_proxy_reachable_the_broker_goes_through_it_and_serves() {
    const ADMIN: &str = "127.0.0.1:9000";
    const PASSWORD: &str = "Tiny-Pr0xy-pw";
    let mut fx = UdpBlocked::start_with(
        "proxy",
        ADMIN,
        |pair| {
            vec![
                "add rule inet wgb out oif lo accept".to_owned(),
                format!(
                    "add rule inet wgb out ip daddr {} tcp dport 8888 counter accept",
                    pair.vendor_ip
                ),
                "add rule inet wgb out counter drop".to_owned(),
            ]
        },
        |w, pair, _| w.proxy(format!("http://wguser:{PASSWORD}@{}:8888", pair.vendor_ip)),
    );
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let log = conf_dir.path().join("tinyproxy.log");
    let conf = conf_dir.path().join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port 8888\nListen {}\nTimeout 600\nMaxClients 16\nLogLevel Connect\n\
             LogFile \"{}\"\nBasicAuth wguser {PASSWORD}\n",
            fx.pair.vendor_ip,
            log.display()
        ),
    )
    .expect("tinyproxy config");
    let vendor_ns = fx.pair.vendor.clone();
    fx.pair.spawn(
        &vendor_ns,
        &["tinyproxy", "-d", "-c", conf.to_str().expect("utf-8 path")],
    );
    let report = fx.load(200, &[]);
    let ok = find_u64(&report, "ok").unwrap_or(0);
    assert!(ok >= 100, "requests served: {ok}: {report}");
    assert_eq!(find_u64(&report, "errors_total"), Some(0), "{report}");
    assert!(fx.counted("accept") > 0, "nothing went to the proxy");
    assert!(fx.counted("drop") > 0, "nothing was dropped");
    let proxy_log = std::fs::read_to_string(&log).unwrap_or_default();
    let target = format!("{}:51820", fx.pair.vendor_ip);
    assert!(
        proxy_log.contains("CONNECT") && proxy_log.contains(&target),
        "tinyproxy's log shows no tunnel to {target}:\n{proxy_log}"
    );
}

/// In network namespaces: UDP from the broker's namespace is dropped, so the broker (`auto`)
/// serves over the TCP stream; then the rule goes. Within a UDP probe interval (20 s) the broker
/// is back on UDP — `wgbroker_tunnel_transport{transport="udp"} 1`, the switch counted as
/// `udp_works` — and the load test that ran through all of it saw no failed request.
#[test]
fn netns_udp_unblocked_the_broker_moves_back_to_udp_without_failed_requests() {
    // The namespace is ours: a fixed admin port in it collides with nothing.
    let UdpBlocked {
        pair,
        broker_ns,
        _dir,
        key_file,
        bin,
        listen,
        broker_public,
    } = UdpBlocked::start("back", "127.0.0.1:9000");
    let vendor_ns = pair.vendor.clone();
    let load = pair
        .command(
            &vendor_ns,
            &[
                bin,
                "loadtest",
                "--gateway",
                "--listen",
                &listen,
                "--broker-public-key",
                &broker_public,
                "--private-key-file",
                key_file.to_str().expect("utf-8 path"),
                "-s",
                "healthcheck",
                "--connections",
                "2",
                "--rate",
                "50",
                "--duration",
                "40s",
                "--handshake-timeout",
                "60s",
                "--json",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the gateway");
    let metric_in_ns = |sample: &str| -> Option<f64> {
        let out = pair
            .command(&broker_ns, &["curl", "-s", "http://127.0.0.1:9000/metrics"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    poll_until(Duration::from_secs(40), "the broker on TCP", || {
        metric_in_ns(r#"wgbroker_tunnel_transport{transport="tcp"}"#) == Some(1.0)
    });
    pair.exec(&broker_ns, &["nft", "delete", "table", "inet", "wgb"]);
    poll_until(Duration::from_secs(35), "the broker back on UDP", || {
        metric_in_ns(r#"wgbroker_tunnel_transport{transport="udp"}"#) == Some(1.0)
    });
    assert_eq!(
        metric_in_ns(r#"wgbroker_tunnel_transport_switches_total{reason="udp_works"}"#),
        Some(1.0)
    );
    let out = load.wait_with_output().expect("the load test ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("loadtest JSON ({e}): {stdout}\n{stderr}"));
    let ok = find_u64(&report, "ok").unwrap_or(0);
    assert!(ok >= 500, "requests served: {ok}: {stdout}");
    assert_eq!(find_u64(&report, "errors_total"), Some(0), "{stdout}");
    // Still on UDP at the end: the move back held.
    assert_eq!(
        metric_in_ns(r#"wgbroker_tunnel_transport{transport="udp"}"#),
        Some(1.0)
    );
}

/// The first number named `key` anywhere in `v` (depth first).
fn find_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .or_else(|| m.values().find_map(|x| find_u64(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

/// `wgbroker test` (its checks, in process) with UDP swallowed: the handshake row passes and
/// says the handshake went over TCP because UDP got no answer.
#[test]
fn the_onboarding_test_reports_the_tcp_fallback() {
    let s = gateway();
    let tcp = s.gateway.tcp_addr().expect("streams");
    let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let udp = black_hole.local_addr().expect("addr");
    let wg = WireguardToml::new(&s.broker_key, BROKER_IP)
        .peer(
            PeerToml::new(s.vendor_key.public_key(), udp, format!("{VENDOR_IP}/32"))
                .persistent_keepalive(0)
                .tcp_endpoint(tcp),
        )
        .render();
    let mut loaded = crate::harness::load(&format!("{wg}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    crate::harness::spread(&mut loaded);
    // The checks block for up to 15 s on their own thread; this one plays the gateway meanwhile.
    let checks = std::thread::spawn(move || wgbroker::onboard::check::run(loaded, &|_: &str| None));
    let mut gw = s.gateway;
    while !checks.is_finished() {
        gw.pump(Duration::from_millis(20)).expect("pump");
    }
    let rows = checks.join().expect("the checks ran");
    let row = rows
        .iter()
        .find(|r| r.check.starts_with("WireGuard handshake"))
        .expect("a handshake row");
    assert!(row.ok, "{row:?}");
    assert!(
        row.detail.contains(&format!(
            "completed over TCP to {tcp}: UDP to {udp} got no answer"
        )),
        "{row:?}"
    );
}

/// `wgbroker gateway` accepts the stream transport on its WireGuard port: a broker with
/// `transport = "tcp"` handshakes over it, and the gateway's health check of that broker (a
/// request through the tunnel, both ways) passes.
#[test]
fn the_vendor_gateway_serves_a_broker_over_tcp() {
    use std::sync::atomic::Ordering;
    let gw_key = PrivateKey::generate().expect("rng");
    let broker_key = PrivateKey::generate().expect("rng");
    let text = format!(
        "[gateway]\nprivate_key = \"{}\"\nlisten = \"127.0.0.1:0\"\naddress = \"{VENDOR_IP}\"\n\
         front = \"127.0.0.1:0\"\n[[tenant]]\nname = \"a\"\n[[tenant.broker]]\n\
         public_key = \"{}\"\naddress = \"{BROKER_IP}\"\n",
        gw_key.to_base64(),
        broker_key.public_key(),
    );
    let config = wgbroker::config::gateway::load_str(
        &[(std::path::PathBuf::from("gateway.toml"), text)],
        wgbroker::config::LoadMode::Full,
        &|_: &str| None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .config;
    let gateway = wgbroker::runtime::gateway::start_gateway(&config).expect("gateway starts");
    let b = broker_for(&broker_key, &gw_key, Some("tcp"), gateway.udp_addr, None);
    let status = gateway.status.clone();
    poll_until(
        Duration::from_secs(30),
        "the gateway's health check of the broker passes",
        || {
            status
                .broker(0)
                .is_some_and(|b| b.healthy.load(Ordering::Relaxed))
        },
    );
    assert_ne!(
        status
            .broker(0)
            .map(|b| b.handshake_age_ms.load(Ordering::Relaxed))
            .unwrap_or(u64::MAX),
        u64::MAX
    );
    assert_eq!(
        metric(
            admin_port(&b),
            r#"wgbroker_tunnel_transport{transport="tcp"}"#
        ),
        Some(1.0)
    );
    b.shutdown().expect("stop");
    gateway.stop();
}

/// `wgbroker gateway` with `[gateway] tls_listen` (certificate and key from files) accepts the
/// `tls` transport: a broker with `transport = "tls"` handshakes over it, trusting the
/// certificate through `ca_files`, and the gateway's health check of it passes.
#[test]
fn the_vendor_gateway_serves_a_broker_over_tls() {
    use std::sync::atomic::Ordering;
    let gw_key = PrivateKey::generate().expect("rng");
    let broker_key = PrivateKey::generate().expect("rng");
    let cert = wgbroker::testkit::tls::self_signed(&["127.0.0.1".to_owned()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
    std::fs::write(&cert_file, &cert.cert_pem).expect("write");
    std::fs::write(&key_file, &cert.key_pem).expect("write");
    let text = format!(
        "[gateway]\nprivate_key = \"{}\"\nlisten = \"127.0.0.1:0\"\naddress = \"{VENDOR_IP}\"\n\
         front = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\
         [[tenant]]\nname = \"a\"\n[[tenant.broker]]\n\
         public_key = \"{}\"\naddress = \"{BROKER_IP}\"\n",
        gw_key.to_base64(),
        cert_file.display().to_string(),
        key_file.display().to_string(),
        broker_key.public_key(),
    );
    let config = wgbroker::config::gateway::load_str(
        &[(std::path::PathBuf::from("gateway.toml"), text)],
        wgbroker::config::LoadMode::Full,
        &|_: &str| None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .config;
    let gateway = wgbroker::runtime::gateway::start_gateway(&config).expect("gateway starts");
    let tls = gateway.tls_addr.expect("a TLS listener");
    let wg = WireguardToml::new(&broker_key, BROKER_IP)
        .transport("tls")
        .ca_file(cert_file.display())
        .peer(
            PeerToml::new(
                gw_key.public_key(),
                gateway.udp_addr,
                format!("{VENDOR_IP}/32"),
            )
            .persistent_keepalive(0)
            .tls_endpoint(tls),
        );
    let b = start_broker(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        wg.render()
    ));
    let status = gateway.status.clone();
    poll_until(
        Duration::from_secs(30),
        "the gateway's health check of the broker passes",
        || {
            status
                .broker(0)
                .is_some_and(|b| b.healthy.load(Ordering::Relaxed))
        },
    );
    assert_eq!(
        metric(
            admin_port(&b),
            r#"wgbroker_tunnel_transport{transport="tls"}"#
        ),
        Some(1.0)
    );
    b.shutdown().expect("stop");
    gateway.stop();
}

/// `Proxy-Authorization` for `user:password`.
fn basic(user_pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// `transport = "tls"` through `[wireguard] proxy` (an HTTP CONNECT proxy wanting
/// credentials): the broker opens one CONNECT tunnel to `tls_endpoint` with the URL's
/// credentials, runs TLS to the gateway inside it and serves. The password appears in no log
/// line.
#[test]
fn tls_goes_through_the_wireguard_proxy_with_its_credentials() {
    let TlsSides {
        mut sides,
        tls,
        _dir,
        ca,
    } = tls_gateway();
    let _ = crate::logs::captured();
    let proxy = crate::upstream::TestProxy::start(Some(basic("wg-user:Pr0xyS3cret")));
    let url = format!("http://wg-user:Pr0xyS3cret@{}", proxy.addr);
    let udp = sides.gateway.local_addr().expect("addr");
    let b = broker_with(
        &sides,
        "tls",
        udp,
        |p| p.tls_endpoint(tls),
        |w| w.ca_file(ca.display()).proxy(&url),
    );
    assert!(
        sides.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake through the proxy"
    );
    healthchecks(&mut sides.gateway, 5, 2);
    assert_eq!(proxy.tunnels.load(std::sync::atomic::Ordering::SeqCst), 1);
    let seen = proxy.seen.lock().expect("lock").clone();
    assert!(
        seen[0].starts_with(&format!("CONNECT {tls} HTTP/1.1\r\n")),
        "{seen:?}"
    );
    assert_eq!(
        sides.gateway.stream_stats().map(|s| s.tls_accepted),
        Some(1)
    );
    b.shutdown().expect("stop");
    assert!(!crate::logs::captured().contains("Pr0xyS3cret"));
}

/// `transport = "tcp"` through a proxy named by `[upstream] proxy` (no `[wireguard] proxy`):
/// the stream goes through it, and a proxy refusing the credentials (407) is logged as the
/// attempt's failure — the proxy's address and status, never the password.
#[test]
fn tcp_goes_through_the_upstream_proxy_and_a_refusal_is_logged_without_the_password() {
    let mut s = gateway();
    let tcp = s.gateway.tcp_addr().expect("streams");
    let _ = crate::logs::captured();
    let good = crate::upstream::TestProxy::start(Some(basic("u:GoodPa55")));
    let bad = crate::upstream::TestProxy::start(Some(basic("u:other")));
    let wg = |proxy: &crate::upstream::TestProxy, key: &PrivateKey, pass: &str| {
        let w = WireguardToml::new(key, BROKER_IP)
            .transport("tcp")
            .peer(
                PeerToml::new(s.vendor_key.public_key(), tcp, format!("{VENDOR_IP}/32"))
                    .persistent_keepalive(0),
            )
            .render();
        format!(
            "{w}\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nproxy = \"http://u:{pass}@{}\"\n",
            proxy.addr
        )
    };
    let b = start_broker(&wg(&good, &s.broker_key, "GoodPa55"));
    assert!(
        s.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake through the proxy"
    );
    healthchecks(&mut s.gateway, 5, 2);
    assert_eq!(good.tunnels.load(std::sync::atomic::Ordering::SeqCst), 1);
    b.shutdown().expect("stop");
    // Another broker (its own key) whose proxy refuses its password.
    let other = PrivateKey::generate().expect("rng");
    let refused = start_broker(&wg(&bad, &other, "WrongPa55"));
    let proxy_field = format!("\"proxy\":\"{}\"", bad.addr);
    poll_until(Duration::from_secs(10), "the refusal logged", || {
        crate::logs::captured().lines().any(|l| {
            l.contains("wireguard.transport_connect_failure")
                && l.contains(&proxy_field)
                && l.contains("\"kind\":\"proxy\"")
                && l.contains("407")
        })
    });
    assert_eq!(bad.tunnels.load(std::sync::atomic::Ordering::SeqCst), 0);
    refused.shutdown().expect("stop");
    let logs = crate::logs::captured();
    assert!(!logs.contains("WrongPa55") && !logs.contains("GoodPa55"));
}

/// `wgbroker test` (its checks, in process) says which transports work from this host: with
/// `transport = "tls"`, UDP is not used, the TCP endpoint refuses, TLS completes with the
/// certificate trusted through `ca_files`; without `ca_files` the same row names the
/// certificate problem and fails (no transport works).
#[test]
fn the_onboarding_test_reports_which_transports_work() {
    let TlsSides {
        sides,
        tls,
        _dir,
        ca,
    } = tls_gateway();
    let udp = sides.gateway.local_addr().expect("addr");
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut gw = sides.gateway;
    let mut rows_for = |ca_file: Option<&std::path::Path>| {
        let mut wg = WireguardToml::new(&sides.broker_key, BROKER_IP)
            .transport("tls")
            .peer(
                PeerToml::new(
                    sides.vendor_key.public_key(),
                    udp,
                    format!("{VENDOR_IP}/32"),
                )
                .persistent_keepalive(0)
                .tcp_endpoint(closed)
                .tls_endpoint(tls),
            );
        if let Some(f) = ca_file {
            wg = wg.ca_file(f.display());
        }
        let mut loaded = crate::harness::load(&format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            wg.render()
        ));
        crate::harness::spread(&mut loaded);
        let checks =
            std::thread::spawn(move || wgbroker::onboard::check::run(loaded, &|_: &str| None));
        while !checks.is_finished() {
            gw.pump(Duration::from_millis(20)).expect("pump");
        }
        checks.join().expect("the checks ran")
    };
    let transports = |rows: &[wgbroker::onboard::check::Row]| {
        rows.iter()
            .find(|r| r.check.starts_with("transports to "))
            .cloned()
            .expect("a transports row")
    };
    let rows = rows_for(Some(&ca));
    let row = transports(&rows);
    assert!(row.ok, "{row:?}");
    assert!(
        row.detail
            .contains(&format!("udp {udp}: not used (transport = \"tls\")"))
            && row
                .detail
                .contains(&format!("tcp {closed}: cannot connect"))
            && row
                .detail
                .contains(&format!("tls {tls}: certificate valid")),
        "{row:?}"
    );
    let rows = rows_for(None);
    let row = transports(&rows);
    assert!(!row.ok, "{row:?}");
    assert!(
        row.detail.contains(&format!("tls {tls}: TLS:")) && row.detail.contains("UnknownIssuer"),
        "{row:?}"
    );
    assert!(row.fix.as_deref().is_some_and(|f| f.contains("ca_files")));
}

/// A second test kit gateway (vendor address `vendor_ip`) for the broker of `s`.
fn second_gateway(s: &Sides, vendor_ip: &str) -> (Gateway, PrivateKey) {
    let vendor_key = PrivateKey::generate().expect("rng");
    let gateway = Gateway::bind(&GatewayConfig::new(
        vendor_key.clone(),
        s.broker_key.public_key(),
        vendor_ip.parse().expect("ip"),
        BROKER_IP.parse().expect("ip"),
    ))
    .expect("gateway");
    (gateway, vendor_key)
}

/// The broker's configuration with `transport = "tcp"` and one peer per `(vendor key, gateway,
/// vendor address)`.
fn tcp_config(s: &Sides, peers: &[(&PrivateKey, SocketAddr, &str)]) -> String {
    let mut wg = WireguardToml::new(&s.broker_key, BROKER_IP).transport("tcp");
    for (key, addr, ip) in peers {
        wg = wg.peer(
            PeerToml::new(key.public_key(), addr, format!("{ip}/32")).persistent_keepalive(0),
        );
    }
    format!("{}\n[admin]\nlisten = \"127.0.0.1:0\"\n", wg.render())
}

/// Reloads `broker` with `toml` as `SIGHUP` does (the started `[runtime]` kept); returns what
/// still needs a restart.
fn reload(broker: &BrokerHandle, started: &wgbroker::config::Config, toml: &str) -> Vec<String> {
    let mut new = crate::harness::load(toml);
    new.config.runtime = started.runtime.clone();
    match wgbroker::service::reload(broker, started, Ok(new)) {
        wgbroker::service::Reloaded::Loaded {
            swapped,
            needs_restart,
            ..
        } => {
            assert!(swapped.is_ok(), "{swapped:?}");
            needs_restart
        }
        wgbroker::service::Reloaded::Invalid(e) => panic!("{e}"),
    }
}

/// `transport = "tcp"`: a reload that adds a gateway reaches it over TCP (never UDP) and serves
/// through it without disturbing the first gateway's stream; a reload that then removes the
/// first gateway closes its stream, and the second one keeps serving.
#[test]
fn a_reload_adds_and_removes_tcp_streams() {
    const SECOND_IP: &str = "10.77.0.3";
    let mut s = gateway();
    let first = s.gateway.local_addr().expect("addr");
    let (mut second, second_key) = second_gateway(&s, SECOND_IP);
    let second_addr = second.local_addr().expect("addr");

    let mut loaded = crate::harness::load(&tcp_config(&s, &[(&s.vendor_key, first, VENDOR_IP)]));
    crate::harness::spread(&mut loaded);
    let started = loaded.config.clone();
    let b = wgbroker::service::start(&loaded).unwrap_or_else(|e| panic!("start: {e}"));
    assert!(
        s.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake over the stream"
    );
    healthchecks(&mut s.gateway, 2, 2);

    // Add the second gateway.
    let both = tcp_config(
        &s,
        &[
            (&s.vendor_key, first, VENDOR_IP),
            (&second_key, second_addr, SECOND_IP),
        ],
    );
    assert_eq!(reload(&b, &started, &both), Vec::<String>::new());
    assert!(
        second.wait_handshake(Duration::from_secs(20)),
        "the added gateway got no handshake"
    );
    healthchecks(&mut second, 3, 2);
    let st = second.stream_stats().expect("streams").clone();
    assert_eq!(st.accepted, 1, "{st:?}");
    assert_eq!(
        second.stats.recv_calls, 0,
        "no datagram reached the added gateway's UDP socket"
    );
    // The first gateway's stream and session were left alone.
    healthchecks(&mut s.gateway, 2, 2);
    let st = s.gateway.stream_stats().expect("streams").clone();
    assert_eq!(st.accepted, 1, "{st:?}");
    assert_eq!(s.gateway.open_streams(), 1);

    // Remove the first gateway: its stream closes.
    let second_only = tcp_config(&s, &[(&second_key, second_addr, SECOND_IP)]);
    let started = crate::harness::load(&both).config;
    assert_eq!(reload(&b, &started, &second_only), Vec::<String>::new());
    poll_until(
        Duration::from_secs(10),
        "the removed peer's stream closes",
        || {
            s.gateway.pump(Duration::from_millis(20)).expect("pump");
            s.gateway.open_streams() == 0
        },
    );
    healthchecks(&mut second, 2, 2);
    assert_eq!(second.open_streams(), 1);
    assert_eq!(second.stream_stats().expect("streams").accepted, 1);
    b.shutdown().expect("stop");
}

/// `transport = "tcp"`: a reload that moves the peer's endpoint (its stream's with it) to
/// another gateway with the same key closes the stream to the old one and opens one to the new,
/// which then serves; the UDP socket stays unused.
#[test]
fn a_reload_moving_the_endpoint_moves_the_tcp_stream() {
    let mut s = gateway();
    let old = s.gateway.local_addr().expect("addr");
    let mut moved = Gateway::bind(&GatewayConfig::new(
        s.vendor_key.clone(),
        s.broker_key.public_key(),
        VENDOR_IP.parse().expect("ip"),
        BROKER_IP.parse().expect("ip"),
    ))
    .expect("gateway");
    let new = moved.local_addr().expect("addr");

    let first = tcp_config(&s, &[(&s.vendor_key, old, VENDOR_IP)]);
    let mut loaded = crate::harness::load(&first);
    crate::harness::spread(&mut loaded);
    let started = loaded.config.clone();
    let b = wgbroker::service::start(&loaded).unwrap_or_else(|e| panic!("start: {e}"));
    assert!(
        s.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake over the stream"
    );
    healthchecks(&mut s.gateway, 1, 2);

    let second = tcp_config(&s, &[(&s.vendor_key, new, VENDOR_IP)]);
    assert_eq!(reload(&b, &started, &second), Vec::<String>::new());
    poll_until(Duration::from_secs(10), "the old stream closes", || {
        s.gateway.pump(Duration::from_millis(20)).expect("pump");
        s.gateway.open_streams() == 0
    });
    assert!(
        moved.wait_handshake(Duration::from_secs(20)),
        "no handshake with the gateway at the new endpoint"
    );
    healthchecks(&mut moved, 2, 2);
    assert_eq!(moved.stream_stats().expect("streams").accepted, 1);
    assert_eq!(moved.stats.recv_calls, 0, "nothing on UDP");
    b.shutdown().expect("stop");
}
