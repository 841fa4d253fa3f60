//! Gateways reached over IPv6 as well as IPv4: the tunnel socket follows the address a gateway's
//! name resolves to, at start and when the name is re-resolved. The names are resolved by the
//! real `wgbroker run` (the system resolver), inside a private mount namespace whose
//! `/etc/hosts` the test writes: the name exists nowhere else.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wgbroker::keys::PrivateKey;
use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::gateway::{Gateway, GatewayConfig};
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

use crate::harness::{BROKER_IP, VENDOR_IP, spread_args};

/// The vendor's gateway, before the broker that dials it is started.
struct Setup {
    gateway: Gateway,
    broker_key: PrivateKey,
    vendor_key: PrivateKey,
}

impl Setup {
    /// A gateway listening on `listen`.
    fn new(listen: SocketAddr) -> Self {
        let broker_key = PrivateKey::generate().expect("rng");
        let vendor_key = PrivateKey::generate().expect("rng");
        let mut cfg = GatewayConfig::new(
            vendor_key.clone(),
            broker_key.public_key(),
            VENDOR_IP.parse().expect("ip"),
            BROKER_IP.parse().expect("ip"),
        );
        cfg.listen = listen;
        let gateway = Gateway::bind(&cfg).expect("gateway");
        Self {
            gateway,
            broker_key,
            vendor_key,
        }
    }

    fn port(&self) -> u16 {
        self.gateway.local_addr().expect("addr").port()
    }

    /// Starts `wgbroker run` dialing `endpoint` (`host:port`), with `hosts` as its `/etc/hosts`.
    fn spawn(self, endpoint: &str, hosts: &str) -> Broker {
        let wireguard = WireguardToml::new(&self.broker_key, BROKER_IP)
            .peer(
                PeerToml::new(
                    self.vendor_key.public_key(),
                    endpoint,
                    format!("{VENDOR_IP}/32"),
                )
                .persistent_keepalive(0),
            )
            .render();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            format!("{wireguard}[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n"),
        )
        .expect("config");
        let hosts_file = dir.path().join("hosts");
        std::fs::write(&hosts_file, hosts).expect("hosts");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && bin=$1 && shift && exec "$bin" run "$@""#)
            .arg(&hosts_file)
            .arg(env!("CARGO_BIN_EXE_wgbroker"))
            .arg("-c")
            .arg(&file)
            .args(spread_args(&file))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the broker");
        Broker {
            child,
            gateway: self.gateway,
            hosts: hosts_file,
            _dir: dir,
        }
    }
}

/// A broker process that sees its own `/etc/hosts`, and the gateway it dials.
struct Broker {
    child: Child,
    gateway: Gateway,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Rewrites the broker's `/etc/hosts` in place (the bind mount follows the file).
    fn set_hosts(&self, text: &str) {
        std::fs::write(&self.hosts, text).expect("rewrite hosts");
    }

    /// A request through the tunnel: the data path works both ways.
    fn healthcheck(&mut self) {
        let res = client::run(
            &mut self.gateway,
            vec![vec![Request::get("/healthcheck")]],
            RunOptions {
                port: 80,
                timeout: Duration::from_secs(10),
                keep_bodies: true,
            },
        );
        let r = res[0][0].response.as_ref().expect("a response");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, wgbroker::server::HEALTHCHECK_BODY)
        );
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..500 {
            if let Some(s) = self.child.try_wait().expect("wait") {
                assert!(s.success(), "{s:?}");
                return;
            }
            let _ = self.gateway.pump(Duration::from_millis(20));
        }
        panic!("the broker did not stop within 10 s");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn v6_loopback() -> SocketAddr {
    "[::1]:0".parse().expect("addr")
}

#[test]
fn a_gateway_name_resolving_to_ipv6_only_is_reached() {
    let setup = Setup::new(v6_loopback());
    let endpoint = format!("gw6.test:{}", setup.port());
    let mut b = setup.spawn(&endpoint, "::1 gw6.test\n");
    assert!(
        b.gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake with the gateway on [::1]"
    );
    b.healthcheck();
    b.stop();
}

#[test]
fn an_ipv4_literal_endpoint_still_works() {
    let setup = Setup::new("127.0.0.1:0".parse().expect("addr"));
    let endpoint = format!("127.0.0.1:{}", setup.port());
    let mut b = setup.spawn(&endpoint, "");
    assert!(b.gateway.wait_handshake(Duration::from_secs(20)));
    b.healthcheck();
    b.stop();
}

/// The name first resolves to an IPv4 address where nobody answers; after the handshakes fail
/// (3 unanswered initiations, 5 s apart) the broker re-resolves it, now to `::1`, and follows.
#[test]
fn a_gateway_name_re_resolved_from_ipv4_to_ipv6_is_followed() {
    let setup = Setup::new(v6_loopback());
    let port = setup.port();
    // The IPv4 side of the same port: bound, never answering.
    let silent = UdpSocket::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut b = setup.spawn(&format!("gw.test:{port}"), "127.0.0.1 gw.test\n");
    let mut buf = [0u8; 256];
    let (n, _) = silent
        .recv_from(&mut buf)
        .expect("a handshake initiation to the IPv4 address");
    assert_eq!((n, buf[0]), (148, 1), "a WireGuard handshake initiation");
    b.set_hosts("::1 gw.test\n");
    assert!(
        b.gateway.wait_handshake(Duration::from_secs(60)),
        "the broker never followed the name to [::1]"
    );
    b.healthcheck();
    drop(silent);
    b.stop();
}
