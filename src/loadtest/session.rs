//! One load-test session: set up the target (an in-process broker with its upstream, an external
//! broker dialing us, or the null responder), start the driver threads, open the window at the
//! same instant for all of them, print progress, collect and report, stop everything started.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cpu::{self, Snapshot};
use super::driver::{self, Control, DriverSpec, Event, Outcome, Progress};
use super::report::{BrokerDrops, Cpu, GatewayFigures, Report, Stats, WanFigures, table};
use super::scenario::{Plan, Scenario, Targets, parse_mix};
use super::upstream::Upstream;
use super::{Args, CloseMode, Error, ErrorKind, Finished};
use crate::config::{self, LoadMode};
use crate::keys::{PrivateKey, PublicKey};
use crate::output::{err, errln, outln};
use crate::testkit::gateway::{Gateway, GatewayConfig};
use crate::testkit::impair::ImpairStats;
use crate::testkit::toml::{PeerToml, WireguardToml};

/// The token the in-process upstream insists on (injected by the broker's GitHub rules).
const TOKEN: &str = "ghp_loadtestTOKENloadtestTOKEN0123456789";

/// A failed session.
type Failure = Error;

fn os(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Os, message)
}

fn usage(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Usage, message)
}

/// Per-connection TCP buffers of the driver for a scenario: `(rx, tx)`.
pub fn buffers(s: Scenario, size: u64) -> (usize, usize) {
    let big = usize::try_from(size.clamp(64 << 10, 1 << 20)).unwrap_or(1 << 20);
    match s {
        Scenario::Download => (big.max(256 << 10), 16 << 10),
        Scenario::Upload => (64 << 10, big.max(256 << 10)),
        Scenario::Mix => (128 << 10, 16 << 10),
        Scenario::Connect => (16 << 10, 4 << 10),
        _ => (64 << 10, 16 << 10),
    }
}

/// `base + i` in the last bits of the address.
pub fn nth_address(base: IpAddr, i: usize) -> Option<IpAddr> {
    let i = u32::try_from(i).ok()?;
    match base {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(i)
            .map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(u128::from(i))
            .map(|x| IpAddr::V6(Ipv6Addr::from(x))),
    }
}

/// Thread `i`'s tunnel address: `base + i`, skipping the broker's address.
pub fn vendor_address(base: IpAddr, broker: IpAddr, i: usize) -> Option<IpAddr> {
    let a = nth_address(base, i)?;
    let skip = match (base, broker, a) {
        (IpAddr::V4(b), IpAddr::V4(k), IpAddr::V4(x)) => {
            (u32::from(b)..=u32::from(x)).contains(&u32::from(k))
        }
        (IpAddr::V6(b), IpAddr::V6(k), IpAddr::V6(x)) => {
            (u128::from(b)..=u128::from(x)).contains(&u128::from(k))
        }
        _ => false,
    };
    if skip {
        nth_address(base, i + 1)
    } else {
        Some(a)
    }
}

/// Which target a measurement ran against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    InProcess,
    Gateway,
    Null,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::InProcess => "in-process",
            Self::Gateway => "gateway",
            Self::Null => "null",
        }
    }
}

/// Runs the session `a` asks for and prints its report.
pub fn run(a: &Args) -> Result<Finished, Error> {
    let first = if a.null {
        Target::Null
    } else if a.gateway {
        Target::Gateway
    } else {
        Target::InProcess
    };
    if let Some(spec) = a.impairment(0) {
        info(
            a,
            &format!(
                "WAN impairment on the driver's path, each direction: {}{}",
                spec.summary(),
                if a.threads > 1 {
                    " (thread N: seed + N)"
                } else {
                    ""
                }
            ),
        );
    }
    let mut reports = vec![measure_target(a, first)?];
    if a.calibrate {
        reports.push(measure_target(a, Target::Null).map_err(|e| e.during("calibration"))?);
    }
    if a.json {
        let out = if reports.len() == 2 {
            serde_json::json!({ "broker": reports[0], "calibration": reports[1] })
        } else {
            serde_json::to_value(&reports[0]).unwrap_or_default()
        };
        let text = serde_json::to_string_pretty(&out).map_err(|e| os(format!("JSON: {e}")))?;
        outln!("{text}");
    } else {
        let cols: Vec<(&str, &Report)> = reports
            .iter()
            .map(|r| {
                let title = match r.target.as_str() {
                    "null" => "driver ceiling (null responder)",
                    "gateway" => "broker (external)",
                    _ => "broker (in-process)",
                };
                (title, r)
            })
            .collect();
        outln!("\n{}", table(&cols));
        if reports.len() == 2 && reports[1].req_per_s > 0.0 {
            outln!(
                "  the broker reached {:.0}% of the driver's ceiling for this scenario{}",
                100.0 * reports[0].req_per_s / reports[1].req_per_s,
                if reports[0].req_per_s > 0.8 * reports[1].req_per_s {
                    " — close to it: add --threads, or the figure is the driver's, not the broker's"
                } else {
                    ""
                }
            );
        }
    }
    if reports.iter().all(|r| r.requests == 0) {
        Ok(Finished::NothingCompleted)
    } else {
        Ok(Finished::Measured)
    }
}

/// Gateway settings for driver thread `index`.
fn gateway_config(
    a: &Args,
    index: usize,
    key: PrivateKey,
    peer: PublicKey,
    vendor: IpAddr,
    listen: SocketAddr,
    per_thread: usize,
) -> GatewayConfig {
    let (rx, tx) = buffers(a.scenario, a.size);
    let mut g = GatewayConfig::new(key, peer, vendor, a.broker_address);
    g.listen = listen;
    g.rx_buffer = rx;
    g.tx_buffer = tx;
    g.serve_backlog = 1;
    g.batch = a.udp_batch;
    g.spin = a.spin;
    g.impair = a.impairment(index);
    if a.scenario == Scenario::Connect {
        // TIME-WAIT holds a socket for 10 s: room for the 16k ephemeral ports.
        g.stacks = 64;
        g.max_sockets_per_stack = 272;
    } else {
        g.stacks = per_thread.div_ceil(128).clamp(4, 64);
        g.max_sockets_per_stack = 256 + per_thread / g.stacks + 8;
    }
    g
}

/// Gateway mode's `--tls-listen` and its certificate, if asked for.
fn gateway_tls(
    a: &Args,
    target: Target,
) -> Result<Option<(SocketAddr, Arc<rustls::ServerConfig>)>, Failure> {
    match (target, a.tls_listen) {
        (Target::Gateway, Some(addr)) => Ok(Some((addr, tls_config(a, addr)?))),
        _ => Ok(None),
    }
}

/// The certificate of `--tls-listen`: `--tls-cert`/`--tls-key`, or one made for `addr`'s IP
/// (written to `--tls-ca-out` when given).
fn tls_config(a: &Args, addr: SocketAddr) -> Result<Arc<rustls::ServerConfig>, Failure> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| usage(format!("cannot read {}: {e}", p.display())))
    };
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        return crate::transport::tls::server_config_from_pem(&read(cert)?, &read(key)?)
            .map_err(|e| usage(format!("--tls-cert/--tls-key: {e}")));
    }
    let made = crate::testkit::tls::self_signed(&[addr.ip().to_string()]).map_err(usage)?;
    if let Some(out) = &a.tls_ca_out {
        std::fs::write(out, &made.cert_pem)
            .map_err(|e| usage(format!("--tls-ca-out {}: {e}", out.display())))?;
    }
    Ok(made.config)
}

/// The driver threads of one measurement and their wiring.
struct Drivers {
    ctl: Arc<Control>,
    handles: Vec<JoinHandle<Outcome>>,
    starts: Vec<Sender<Instant>>,
    events: Receiver<Event>,
    addrs: Vec<SocketAddr>,
    keys: Vec<PrivateKey>,
    vendors: Vec<IpAddr>,
}

impl Drivers {
    /// Each driver thread's gateway: its key, UDP endpoint and tunnel address.
    fn gateways(&self) -> impl Iterator<Item = (&PrivateKey, &SocketAddr, &IpAddr)> {
        self.keys
            .iter()
            .zip(&self.addrs)
            .zip(&self.vendors)
            .map(|((key, addr), vendor)| (key, addr, vendor))
    }

    fn stop(self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        drop(self.starts);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn spawn_drivers(
    a: &Args,
    target: Target,
    plan: &Arc<Plan>,
    peer: PublicKey,
    keys: Vec<PrivateKey>,
) -> Result<Drivers, Failure> {
    let ctl = Arc::new(Control::default());
    let tls = gateway_tls(a, target)?;
    let (ev_tx, ev_rx) = mpsc::channel();
    let budget = a.requests.map(|n| Arc::new(AtomicU64::new(n)));
    let mut handles = Vec::new();
    let mut starts = Vec::new();
    let mut vendors = Vec::new();
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let seed = u64::from_le_bytes(seed);
    for (i, key) in keys.iter().enumerate() {
        let vendor = vendor_address(a.vendor_address, a.broker_address, i)
            .ok_or_else(|| usage("address range"))?;
        vendors.push(vendor);
        let per_thread = a.connections / a.threads + usize::from(i < a.connections % a.threads);
        let listen = if target == Target::Gateway {
            let port = if a.listen.port() == 0 {
                0
            } else {
                a.listen
                    .port()
                    .checked_add(u16::try_from(i).unwrap_or(u16::MAX))
                    .ok_or_else(|| usage("--listen port + --threads exceeds 65535"))?
            };
            SocketAddr::new(a.listen.ip(), port)
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let mut gateway = gateway_config(a, i, key.clone(), peer, vendor, listen, per_thread);
        gateway.tls = tls.clone();
        let spec = DriverSpec {
            index: i,
            gateway,
            port: a.port,
            plan: plan.clone(),
            connections: per_thread,
            rate: a.rate.map(|r| r / a.threads as f64),
            warmup: a.warmup,
            duration: a.duration,
            budget: budget.clone(),
            timeout: a.timeout,
            close_rst: a.close == CloseMode::Rst,
            handshake_timeout: a.handshake_timeout,
            seed: seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        };
        let (st_tx, st_rx) = mpsc::channel();
        match driver::spawn(spec, ctl.clone(), ev_tx.clone(), st_rx) {
            Ok(h) => {
                handles.push(h);
                starts.push(st_tx);
            }
            Err(e) => {
                ctl.stop.store(true, Ordering::Relaxed);
                return Err(os(format!("cannot start a driver thread: {e}")));
            }
        }
    }
    let mut d = Drivers {
        ctl,
        handles,
        starts,
        events: ev_rx,
        addrs: Vec::new(),
        keys,
        vendors,
    };
    // Every gateway binds first.
    let mut addrs = vec![None; d.handles.len()];
    let until = Instant::now() + Duration::from_secs(10);
    while addrs.iter().any(Option::is_none) {
        let left = until.saturating_duration_since(Instant::now());
        match d.events.recv_timeout(left) {
            Ok(Event::Bound { index, addr }) => {
                if let Some(s) = addrs.get_mut(index) {
                    *s = Some(addr);
                }
            }
            Ok(Event::Failed { error, .. }) => {
                d.stop();
                return Err(os(error));
            }
            Ok(Event::Ready { .. }) => {}
            Err(_) => {
                d.stop();
                return Err(os("the driver threads did not start"));
            }
        }
    }
    d.addrs = addrs.into_iter().flatten().collect();
    Ok(d)
}

/// Waits until every driver thread has its handshake and connections.
fn wait_ready(d: &Drivers, timeout: Duration) -> Result<(), Failure> {
    let mut ready = 0;
    let until = Instant::now() + timeout + Duration::from_secs(15);
    while ready < d.handles.len() {
        let left = until.saturating_duration_since(Instant::now());
        match d.events.recv_timeout(left) {
            Ok(Event::Ready { .. }) => ready += 1,
            Ok(Event::Failed { error, .. }) => return Err(Error::new(ErrorKind::NotReady, error)),
            Ok(Event::Bound { .. }) => {}
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::NotReady,
                    "the driver threads did not get ready",
                ));
            }
        }
    }
    Ok(())
}

fn fresh_keys(n: usize) -> Result<Vec<PrivateKey>, Failure> {
    (0..n)
        .map(|_| PrivateKey::generate().map_err(|e| os(e.to_string())))
        .collect()
}

fn headers(a: &Args) -> Vec<(String, String)> {
    a.headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn plan_for(a: &Args, target: Target, upstream: &str) -> Result<Arc<Plan>, Failure> {
    let mix = match &a.mix {
        Some(m) => parse_mix(m).map_err(usage)?,
        None => Vec::new(),
    };
    let targets = Targets {
        host: SocketAddr::new(a.broker_address, a.port).to_string(),
        upstream: upstream.to_owned(),
        url: if target == Target::InProcess {
            None
        } else {
            a.url.clone()
        },
        size: a.size,
        headers: headers(a),
        any_200: target == Target::Null,
    };
    Plan::new(a.scenario, &targets, &mix)
        .map(Arc::new)
        .map_err(usage)
}

fn measure_target(a: &Args, target: Target) -> Result<Report, Failure> {
    match target {
        Target::InProcess => in_process(a),
        Target::Gateway => gateway(a),
        Target::Null => null(a),
    }
}

/// The `[wireguard]` table of the in-process broker: its key and one peer per driver thread.
fn wireguard_toml(a: &Args, broker: &PrivateKey, d: &Drivers) -> String {
    let peers = d.gateways().map(|(key, addr, vendor)| {
        PeerToml::new(key.public_key(), addr, ipnet::IpNet::from(*vendor)).persistent_keepalive(0)
    });
    WireguardToml::new(broker, a.broker_address)
        .listen_port(0)
        .peers(peers)
        .render()
}

/// Rules that let the in-process broker reach the local upstream.
fn upstream_rules_toml(up: SocketAddr) -> String {
    format!(
        r#"
[[scm]]
type = "github"
base_url = "http://{up}/api/v3"
token = "{TOKEN}"
allow_code_access = true

[[allow]]
url = "http://{up}/download/:size"
methods = ["GET"]

[[allow]]
url = "http://{up}/upload"
methods = ["POST", "PUT"]
"#
    )
}

const OVERLAY: &str = r#"
[admin]
listen = "127.0.0.1:0"

[log]
level = "error"
"#;

fn in_process(a: &Args) -> Result<Report, Failure> {
    let upstream = Upstream::start(TOKEN).map_err(|e| os(format!("local upstream: {e}")))?;
    let base = format!("http://{}", upstream.addr());
    let plan = plan_for(a, Target::InProcess, &base)?;
    let broker_key = PrivateKey::generate().map_err(|e| os(e.to_string()))?;
    let d = spawn_drivers(
        a,
        Target::InProcess,
        &plan,
        broker_key.public_key(),
        fresh_keys(a.threads)?,
    )?;
    let wg = wireguard_toml(a, &broker_key, &d);
    let overlay = format!("{wg}\n{OVERLAY}");
    let mut layers: Vec<(PathBuf, String)> = Vec::new();
    for f in &a.config {
        match std::fs::read_to_string(f) {
            Ok(t) => layers.push((f.clone(), t)),
            Err(e) => {
                d.stop();
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{}: cannot read: {e}", f.display()),
                ));
            }
        }
    }
    layers.push((PathBuf::from("<loadtest overlay>"), overlay));
    let loaded = if a.config.is_empty() {
        config::load_str(&layers, LoadMode::Full, &|_: &str| None)
    } else {
        config::load_str(&layers, LoadMode::Policy, &config::ProcessEnv)
    };
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(errors) => {
            d.stop();
            return Err(Error::new(
                ErrorKind::Config,
                format!("invalid configuration:\n{errors}"),
            ));
        }
    };
    for w in &loaded.warnings {
        errln!("warning: {w}");
    }
    // The local upstream's rules come after the user's.
    let rules_text = format!("{wg}\n{}", upstream_rules_toml(upstream.addr()));
    match config::load_str(
        &[(PathBuf::from("<loadtest rules>"), rules_text)],
        LoadMode::Full,
        &|_: &str| None,
    ) {
        Ok(r) => loaded.config.allow.extend(r.config.rules()),
        Err(errors) => {
            d.stop();
            return Err(os(format!("internal rules: {errors}")));
        }
    }
    crate::telemetry::init(&loaded.config.log);
    if loaded.config.inbound.listen_port != a.port {
        d.stop();
        return Err(usage(format!(
            "the configuration's [inbound] listen_port is {}: pass --port {}",
            loaded.config.inbound.listen_port, loaded.config.inbound.listen_port
        )));
    }
    let broker = match crate::service::start(&loaded) {
        Ok(b) => b,
        Err(e) => {
            d.stop();
            return Err(os(format!("broker: {e}")));
        }
    };
    let result = wait_ready(&d, a.handshake_timeout)
        .and_then(|()| measure(a, Target::InProcess, &plan, d))
        .map(|mut r| {
            // Some counters are published with the tunnel core's 100 ms tick: wait for two of
            // its beats (the first may have been under way), a second at the most.
            let st = broker.status();
            let beats = |st: &crate::status::Status| st.beats().first().copied().unwrap_or(0);
            let (seen, until) = (beats(st), Instant::now() + Duration::from_secs(1));
            while beats(st) < seen + 2 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            r.broker_drops = Some(BrokerDrops {
                link: n(&st.link_drops),
                tunnel: n(&st.datagrams_dropped),
                oversize: n(&st.oversize),
                send_errors: n(&st.send_errors),
            });
            r
        });
    let _ = broker.shutdown();
    drop(upstream);
    result
}

fn gateway(a: &Args) -> Result<Report, Failure> {
    let peer = PublicKey::from_base64(a.broker_public_key.as_deref().unwrap_or(""))
        .map_err(|e| usage(format!("--broker-public-key: {e}")))?;
    let keys = match &a.private_key_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::new(ErrorKind::NoInput, format!("{}: {e}", f.display())))?;
            vec![
                PrivateKey::from_base64(&text)
                    .map_err(|e| Error::new(ErrorKind::Data, format!("{}: {e}", f.display())))?,
            ]
        }
        None => fresh_keys(a.threads)?,
    };
    let base = a
        .upstream
        .clone()
        .unwrap_or_else(|| "http://upstream.invalid".to_owned());
    let plan = plan_for(a, Target::Gateway, &base)?;
    let d = spawn_drivers(a, Target::Gateway, &plan, peer, keys)?;
    print_gateway_info(a, &d);
    wait_ready(&d, a.handshake_timeout).and_then(|()| {
        info(a, "handshake done, driving the load");
        measure(a, Target::Gateway, &plan, d)
    })
}

/// Human information: stdout normally, stderr with `--json` (stdout is the JSON then).
fn info(a: &Args, s: &str) {
    if a.json {
        errln!("{s}");
    } else {
        outln!("{s}");
    }
}

fn print_gateway_info(a: &Args, d: &Drivers) {
    let mut s = String::from("wgbroker loadtest — gateway mode: waiting for the broker to dial\n");
    for (i, (key, addr, vendor)) in d.gateways().enumerate() {
        s.push_str(&format!(
            "  gateway {i}: public key {}  endpoint {addr}  tunnel address {vendor}\n",
            key.public_key()
        ));
    }
    s.push_str(&format!(
        "  broker: tunnel address {}, HTTP port {}\n\n# --- paste into the broker's configuration ---\n",
        a.broker_address, a.port
    ));
    // No persistent_keepalive: the broker's default applies.
    let peers = d.gateways().map(|(key, addr, vendor)| {
        let endpoint = if addr.ip().is_unspecified() {
            format!("<this host's address>:{}", addr.port())
        } else {
            addr.to_string()
        };
        PeerToml::new(key.public_key(), endpoint, ipnet::IpNet::from(*vendor))
    });
    s.push_str(
        &WireguardToml::without_private_key(
            "<the broker's key, whose public key was given as --broker-public-key>",
            a.broker_address,
        )
        .peers(peers)
        .render(),
    );
    s.push_str("# --- end ---");
    info(a, &s);
}

fn null(a: &Args) -> Result<Report, Failure> {
    let plan = plan_for(a, Target::Null, "http://null.invalid")?;
    let responder_key = PrivateKey::generate().map_err(|e| os(e.to_string()))?;
    let d = spawn_drivers(
        a,
        Target::Null,
        &plan,
        responder_key.public_key(),
        fresh_keys(a.threads)?,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut responders = Vec::new();
    let mut failed = None;
    for (i, (key, addr, vendor)) in d.gateways().enumerate() {
        let per_thread = a.connections / a.threads + 1;
        let mut g = GatewayConfig::new(
            responder_key.clone(),
            key.public_key(),
            a.broker_address,
            *vendor,
        );
        g.dial = Some(*addr);
        g.batch = a.udp_batch;
        g.spin = a.spin;
        g.serve_port = a.port;
        let (rx, tx) = buffers(a.scenario, a.size);
        // The responder's receive side is the driver's send side and vice versa.
        g.rx_buffer = tx.max(16 << 10);
        g.tx_buffer = rx.max(16 << 10);
        g.stacks = per_thread.div_ceil(128).clamp(4, 64);
        g.serve_backlog = 16;
        g.max_sockets_per_stack = 2 * per_thread / g.stacks + 64;
        let stop2 = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lt-null{i}"))
            .spawn(move || -> Result<(), String> {
                let mut gw = Gateway::bind(&g).map_err(|e| e.to_string())?;
                while !stop2.load(Ordering::Relaxed) {
                    gw.pump(Duration::from_millis(5))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        match spawned {
            Ok(h) => responders.push(h),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        stop.store(true, Ordering::Relaxed);
        d.stop();
        return Err(os(format!("cannot start the null responder: {e}")));
    }
    let result = wait_ready(&d, a.handshake_timeout.min(Duration::from_secs(20)))
        .and_then(|()| measure(a, Target::Null, &plan, d));
    stop.store(true, Ordering::Relaxed);
    for h in responders {
        let _ = h.join();
    }
    result
}

/// Prints the live line and waits for the threads; returns the report.
fn measure(a: &Args, target: Target, plan: &Arc<Plan>, d: Drivers) -> Result<Report, Failure> {
    let show = a.progress || std::io::stderr().is_terminal();
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now() + Duration::from_millis(20);
    for s in &d.starts {
        let _ = s.send(start);
    }
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let mut before: Option<Snapshot> = None;
    let mut last = (start, 0u64, 0u64);
    let mut next_line = start + Duration::from_secs(1);
    let hard_end = end + a.timeout + Duration::from_secs(10);
    while d.handles.iter().any(|h| !h.is_finished()) {
        let now = Instant::now();
        if before.is_none() && now >= measure_from {
            before = Some(Snapshot::take());
        }
        if now >= hard_end {
            // Drivers end by themselves at `end`; this only guards against a stuck thread.
            d.ctl.stop.store(true, Ordering::Relaxed);
        }
        if show && now >= next_line {
            next_line += Duration::from_secs(1);
            last = progress_line(&d.ctl.progress, start, now, measure_from, last, tty);
        }
        std::thread::sleep(
            Duration::from_millis(20).min(
                next_line
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            ),
        );
    }
    if show && tty {
        errln!();
    }
    let after = Snapshot::take();
    let before = before.unwrap_or_default();
    let mut stats = Stats::new(plan.templates.len());
    let mut window = Duration::ZERO;
    let mut driver_ns = 0u64;
    let mut gw = GatewayFigures::default();
    let mut wan: Option<(ImpairStats, ImpairStats)> = None;
    let mut errors = Vec::new();
    for h in d.handles {
        match h.join() {
            Ok(o) => {
                if let Some(e) = o.error {
                    errors.push(e);
                    continue;
                }
                stats.merge(&o.stats);
                window = window.max(o.window);
                driver_ns += o.cpu_ns;
                gw.datagrams_in += o.gateway.datagrams_in;
                gw.datagrams_out += o.gateway.datagrams_out;
                gw.recv_calls += o.gateway.recv_calls;
                gw.send_calls += o.gateway.send_calls;
                gw.dropped += o.gateway.dropped;
                if let Some((to, from)) = o.wan {
                    let w = wan.get_or_insert_default();
                    w.0.add(&to);
                    w.1.add(&from);
                }
            }
            Err(_) => errors.push("a driver thread panicked".into()),
        }
    }
    if !errors.is_empty() {
        return Err(Error::new(ErrorKind::NotReady, errors.join("; ")));
    }
    let threads = after.since(&before);
    let cpu = Cpu {
        driver: Duration::from_nanos(driver_ns).as_secs_f64(),
        broker: cpu::sum(&threads, &["wgbroker-"]),
        upstream: cpu::sum(&threads, &["lt-upstream"]),
        responder: cpu::sum(&threads, &["lt-null"]),
        threads: threads.into_iter().filter(|t| t.cpu_s > 0.0).collect(),
    };
    let mut report = Report::new(
        target.name(),
        plan,
        a.threads,
        a.connections,
        a.rate,
        a.warmup.as_secs_f64(),
        window.as_secs_f64(),
        &stats,
        cpu,
        gw,
    );
    if let (Some(spec), Some((to_broker, from_broker))) = (a.impairment(0), wan) {
        report.wan = Some(WanFigures::new(&spec, to_broker, from_broker));
    }
    Ok(report)
}

/// Prints one progress line; returns the totals it printed, for the next interval.
fn progress_line(
    p: &Mutex<Progress>,
    start: Instant,
    now: Instant,
    measure_from: Instant,
    last: (Instant, u64, u64),
    tty: bool,
) -> (Instant, u64, u64) {
    let Ok(p) = p.lock() else {
        return last;
    };
    let dt = now
        .saturating_duration_since(last.0)
        .as_secs_f64()
        .max(1e-3);
    let rps = (p.requests.saturating_sub(last.1)) as f64 / dt;
    let mbs = (p.bytes.saturating_sub(last.2)) as f64 / dt / 1e6;
    let p99 = if p.latency.is_empty() {
        0.0
    } else {
        p.latency.value_at_quantile(0.99) as f64 / 1000.0
    };
    let phase = if now < measure_from { " (warm-up)" } else { "" };
    let line = format!(
        "[{:6.1}s] {:>9.0} req/s {:>9.2} MB/s  errors {:>6}  p99 {:>8.3} ms{phase}",
        now.saturating_duration_since(start).as_secs_f64(),
        rps,
        mbs,
        p.errors,
        p99
    );
    if tty {
        err!("\r{line}\x1b[K");
    } else {
        errln!("{line}");
    }
    (now, p.requests, p.bytes)
}
