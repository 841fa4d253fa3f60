//! Shared test fixtures: broker configurations, an in-process broker with a vendor gateway, and
//! network namespaces for tests against real peers.

pub mod netns;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wgbroker::config::{self, LoadMode, Loaded};
use wgbroker::keys::PrivateKey;
use wgbroker::runtime::BrokerHandle;
use wgbroker::service;
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

/// Starts an in-process broker from `toml`, placed by [`spread`].
pub fn start_broker(toml: &str) -> BrokerHandle {
    let mut loaded = load(toml);
    spread(&mut loaded);
    service::start(&loaded).unwrap_or_else(|e| panic!("start: {e}"))
}

/// Gives a broker that names no CPUs the next CPU in turn for its tunnel core.
///
/// Executors stay pinned, as they are by default in production, so the tests exercise the
/// placement brokers really run with; only the starting CPU rotates. Without this every
/// in-process broker took the first available CPU (all on CPU 0 of a 2-core machine), the
/// suite's brokers queued behind each other there and the other CPUs ran only test threads.
/// `tunnel_cpu` rather than a narrowed `cpus` list keeps the layout (combined on one or two CPUs,
/// tunnel core plus shards on more) what it would be. A broker whose config names `cpus` or
/// `tunnel_cpu` is left as written.
pub fn spread(loaded: &mut Loaded) {
    let rt = &mut loaded.config.runtime;
    if rt.cpus.is_empty() && rt.tunnel_cpu.is_none() {
        rt.tunnel_cpu = next_cpu();
    }
}

/// The next available CPU in turn, shared by in-process and subprocess brokers.
fn next_cpu() -> Option<usize> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cpus = wgbroker::runtime::placement::available_cpus();
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    cpus.get(i % cpus.len().max(1)).copied()
}

/// [`spread`] for a broker run as a subprocess (`wgbroker run -c CONFIG ...`): the arguments
/// (`-c FILE`) that overlay a file written next to `config` naming the next CPU in turn as its
/// `[runtime] tunnel_cpu`, or none when `config` names `cpus` or `tunnel_cpu` itself. Without it
/// every subprocess broker took CPU 0. A reload re-reads the overlay with the broker's own file,
/// so it never reads as a change.
pub fn spread_args(config: &Path) -> Vec<OsString> {
    let own = std::fs::read_to_string(config).expect("read the broker's config");
    let Some(cpu) = next_cpu().filter(|_| !own.contains("cpus") && !own.contains("tunnel_cpu"))
    else {
        return Vec::new();
    };
    let file = config.with_file_name(format!("spread-cpu{cpu}.toml"));
    std::fs::write(&file, format!("[runtime]\ntunnel_cpu = {cpu}\n")).expect("write overlay");
    vec!["-c".into(), file.into_os_string()]
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
    /// The `[runtime]` the broker started with, after [`spread`].
    runtime: wgbroker::config::Runtime,
}

impl Tunnel {
    /// Starts a broker with `extra` config and waits for its handshake with a fresh gateway.
    pub fn start(extra: &str) -> Self {
        Self::start_with(extra, |_| {})
    }

    /// Like [`Tunnel::start`], with the gateway's configuration adjusted by `gateway` first.
    pub fn start_with(extra: &str, gateway: impl FnOnce(&mut GatewayConfig)) -> Self {
        let broker_key = PrivateKey::generate().expect("rng");
        let vendor_key = PrivateKey::generate().expect("rng");
        let mut cfg = GatewayConfig::new(
            vendor_key.clone(),
            broker_key.public_key(),
            VENDOR_IP.parse::<IpAddr>().expect("ip"),
            BROKER_IP.parse::<IpAddr>().expect("ip"),
        );
        gateway(&mut cfg);
        let mut gateway = Gateway::bind(&cfg).expect("bind gateway");
        let toml = broker_toml(
            &broker_key,
            &vendor_key.public_key().to_string(),
            gateway.local_addr().expect("addr"),
            extra,
        );
        let mut loaded = load(&toml);
        spread(&mut loaded);
        let runtime = loaded.config.runtime.clone();
        let broker = service::start(&loaded).unwrap_or_else(|e| panic!("start: {e}"));
        let config_text = toml;
        assert!(
            gateway.wait_handshake(Duration::from_secs(20)),
            "broker never completed a handshake"
        );
        Self {
            gateway,
            broker: Some(broker),
            config_text,
            runtime,
        }
    }

    /// `toml` loaded as a configuration to reload this broker with: the `[runtime]` it was
    /// started with (placed by [`spread`]) is kept, so the reload changes only what the text does.
    pub fn reload_config(&self, toml: &str) -> Loaded {
        let mut loaded = load(toml);
        loaded.config.runtime = self.runtime.clone();
        loaded
    }

    /// Reloads the running broker with `toml` (compared with `started`, as `SIGHUP` does),
    /// pumping the in-process gateway meanwhile; asserts every shard took it and returns what
    /// still needs a restart.
    pub fn reload(&mut self, started: &config::Config, toml: &str) -> Vec<String> {
        let new = self.reload_config(toml);
        let broker = self.broker.take().expect("running");
        let outcome = std::thread::scope(|s| {
            let r = s.spawn(|| service::reload(&broker, started, Ok(new)));
            while !r.is_finished() {
                self.gateway.pump(Duration::from_millis(5)).expect("pump");
            }
            r.join().expect("reload")
        });
        self.broker = Some(broker);
        match outcome {
            service::Reloaded::Loaded {
                swapped,
                needs_restart,
                ..
            } => {
                assert!(swapped.is_ok(), "{swapped:?}");
                needs_restart
            }
            service::Reloaded::Invalid(e) => panic!("{e}"),
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

/// `GET path` on the broker's admin listener: (status, body).
pub fn admin_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin listener");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

/// One sample of the broker's `/metrics`, by its exact name with labels; `None` when the broker
/// does not export it. Callers compare with `Some(..)`, so a mistyped name fails the assertion
/// instead of reading as a zero counter.
pub fn metric(port: u16, sample: &str) -> Option<f64> {
    let (_, text) = admin_get(port, "/metrics");
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until `done` holds, checking every 10 ms, for at most `timeout`; panics naming `what`
/// when it never does. For waiting on an effect that has no event of its own to wait for (a
/// counter the broker publishes with its timer tick, a request reaching the mock SCM), in place
/// of a sleep that guesses how long the effect takes.
pub fn poll_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    poll_for(timeout, what, || {
        if done() { Ok(()) } else { Err(String::new()) }
    })
}

/// [`poll_until`] for a value: calls `probe` every 10 ms until it gives `Ok`, for at most
/// `timeout`, and returns that; panics naming `what` and the last `Err` (what was seen instead:
/// a command's output, a log) when it never does.
pub fn poll_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}{}{last}",
            if last.is_empty() { "" } else { ": " }
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
