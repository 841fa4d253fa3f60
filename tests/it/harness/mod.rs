//! Shared test fixtures: broker configurations, an in-process broker with a vendor gateway, and
//! network namespaces for tests against real peers.

pub mod netns;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use wgbroker::config::{self, LoadMode, Loaded};
use wgbroker::keys::PrivateKey;
use wgbroker::runtime::{self, BrokerHandle};
use wgbroker::testkit::gateway::{Gateway, GatewayConfig};
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

pub const BROKER_IP: &str = "10.77.0.2";
pub const VENDOR_IP: &str = "10.77.0.1";

/// A broker configuration dialing `gateway` (extra TOML appended).
pub fn broker_toml(
    broker_key: &PrivateKey,
    vendor_public: &str,
    gateway: SocketAddr,
    extra: &str,
) -> String {
    let wireguard = WireguardToml::new(broker_key, BROKER_IP)
        .peer(
            PeerToml::new(vendor_public, gateway, format!("{VENDOR_IP}/32"))
                .persistent_keepalive(0),
        )
        .render();
    format!(
        r#"
{wireguard}
# Many brokers run in one test process: each takes an ephemeral admin port.
[admin]
listen = "127.0.0.1:0"

{extra}
"#
    )
}

pub fn load(toml: &str) -> Loaded {
    config::load_str(
        &[(PathBuf::from("test.toml"), toml.to_owned())],
        LoadMode::Full,
        &|_: &str| None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// An in-process broker and the vendor gateway it dials, handshake done.
pub struct Tunnel {
    pub gateway: Gateway,
    pub broker: Option<BrokerHandle>,
    /// The broker's configuration text (to derive a reloaded one from).
    pub config_text: String,
}

impl Tunnel {
    /// Starts a broker with `extra` config and waits for its handshake with a fresh gateway.
    pub fn start(extra: &str) -> Self {
        let broker_key = PrivateKey::generate().expect("rng");
        let vendor_key = PrivateKey::generate().expect("rng");
        let cfg = GatewayConfig::new(
            vendor_key.clone(),
            broker_key.public_key(),
            VENDOR_IP.parse::<IpAddr>().expect("ip"),
            BROKER_IP.parse::<IpAddr>().expect("ip"),
        );
        let mut gateway = Gateway::bind(&cfg).expect("bind gateway");
        let toml = broker_toml(
            &broker_key,
            &vendor_key.public_key().to_string(),
            gateway.local_addr().expect("addr"),
            extra,
        );
        let broker = runtime::start(&load(&toml)).unwrap_or_else(|e| panic!("start: {e}"));
        let config_text = toml;
        assert!(
            gateway.wait_handshake(Duration::from_secs(20)),
            "broker never completed a handshake"
        );
        Self {
            gateway,
            broker: Some(broker),
            config_text,
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            let _ = b.shutdown();
        }
    }
}
