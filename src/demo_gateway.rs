//! `wgbroker demo --gateway`: the vendor's half on loopback. A `wgbroker gateway` with one
//! tenant served by two brokers (active/active), a mock SCM behind them; requests through the
//! front door spread over both brokers, then one broker stops and the tenant fails over to the
//! other without a failed request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{self, LoadMode};
use crate::keys::PrivateKey;
use crate::output::{errln, outln};
use crate::runtime::gateway::BROKER_HEADER;
use crate::testkit::scm::MockScm;

const TOKEN: &str = "ghp_demoTOKENdemoTOKENdemoTOKEN0123456789";
const BROKERS: [&str; 2] = ["10.77.1.2", "10.77.1.3"];

/// Runs the demo; returns the process exit code.
pub fn run() -> u8 {
    match run_inner() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            errln!("wgbroker demo --gateway: {e}");
            71
        }
    }
}

fn run_inner() -> Result<bool, String> {
    let scm = MockScm::start(TOKEN).map_err(|e| format!("mock upstream: {e}"))?;
    let gw_key = PrivateKey::generate().map_err(|e| e.to_string())?;
    let keys = [
        PrivateKey::generate().map_err(|e| e.to_string())?,
        PrivateKey::generate().map_err(|e| e.to_string())?,
    ];
    let text = gateway_toml(&gw_key, &keys);
    let gw_config = config::gateway::load_str(
        &[(PathBuf::from("gateway.toml"), text)],
        LoadMode::Full,
        &|_: &str| None,
    )
    .map_err(|e| e.to_string())?
    .config;
    crate::telemetry::init(&gw_config.log);
    let (gateway, _admin) =
        crate::gateway_service::start(&gw_config).map_err(|e| format!("gateway: {e}"))?;
    let mut brokers = Vec::new();
    for (key, addr) in keys.iter().zip(BROKERS) {
        let text = broker_toml(key, addr, &gw_key, gateway.udp_addr, scm.addr());
        let loaded = config::load_str(
            &[(PathBuf::from("broker.toml"), text)],
            LoadMode::Full,
            &|_: &str| None,
        )
        .map_err(|e| e.to_string())?;
        brokers.push(Some(
            crate::service::start(&loaded).map_err(|e| format!("broker: {e}"))?,
        ));
    }
    outln!("wgbroker demo --gateway — the vendor's side on loopback, in this process");
    outln!("  front door      http://{}", gateway.front_addr);
    outln!(
        "  tenant acme     brokers {} and {}",
        BROKERS[0],
        BROKERS[1]
    );
    outln!("  upstream        http://{}\n", scm.addr());
    let healthy = |i: usize| {
        gateway
            .status
            .broker(i)
            .is_some_and(|b| b.healthy.load(std::sync::atomic::Ordering::Relaxed))
    };
    if !wait(Duration::from_secs(30), || healthy(0) && healthy(1)) {
        return Err("the brokers did not come into rotation".into());
    }
    let target = format!("/t/acme/proxy/http://{}/api/v3/repos/acme/app", scm.addr());
    let mut ok = true;
    outln!("  both brokers in rotation:");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (status, by) = get(gateway.front_addr, &target);
        outln!("    GET /t/acme/proxy/…/repos/acme/app  →  {status}  served by {by}");
        ok &= status == 200;
        seen.insert(by);
    }
    ok &= seen.len() == 2;
    outln!("\n  broker {} stops", BROKERS[0]);
    if let Some(b) = brokers[0].take() {
        let _ = b.shutdown();
    }
    let stopped = Instant::now();
    // Requests go on while the gateway notices: none fails.
    let mut during = 0;
    while healthy(0) && stopped.elapsed() < Duration::from_secs(5) {
        let (status, _) = get(gateway.front_addr, &target);
        ok &= status == 200;
        during += 1;
    }
    ok &= !healthy(0);
    outln!(
        "  out of rotation {:.1} s after it stopped; {during} request(s) meanwhile, all answered",
        stopped.elapsed().as_secs_f64()
    );
    for _ in 0..3 {
        let (status, by) = get(gateway.front_addr, &target);
        outln!("    GET /t/acme/proxy/…/repos/acme/app  →  {status}  served by {by}");
        ok &= status == 200 && by.ends_with(BROKERS[1]);
    }
    outln!(
        "\n  {}",
        if ok {
            "tenant acme failed over to its other broker without a failed request"
        } else {
            "UNEXPECTED: see the lines above"
        }
    );
    for b in brokers.into_iter().flatten() {
        let _ = b.shutdown();
    }
    gateway.stop();
    Ok(ok)
}

/// The demo gateway's configuration: tenant `acme` on the two brokers of `keys`.
fn gateway_toml(gw_key: &PrivateKey, keys: &[PrivateKey; 2]) -> String {
    format!(
        r#"
[gateway]
private_key = "{}"
listen = "127.0.0.1:0"
address = "10.77.0.1"
front = "127.0.0.1:0"
[[tenant]]
name = "acme"
[[tenant.broker]]
public_key = "{}"
address = "{}"
[[tenant.broker]]
public_key = "{}"
address = "{}"
[admin]
enabled = false
[log]
level = "error"
"#,
        gw_key.to_base64(),
        keys[0].public_key(),
        BROKERS[0],
        keys[1].public_key(),
        BROKERS[1]
    )
}

/// One demo broker's configuration: a peer of the gateway at `gateway_udp`, its SCM the mock
/// upstream at `scm`.
fn broker_toml(
    key: &PrivateKey,
    addr: &str,
    gw_key: &PrivateKey,
    gateway_udp: SocketAddr,
    scm: SocketAddr,
) -> String {
    format!(
        r#"
[wireguard]
private_key = "{}"
address = "{addr}"
[[wireguard.peers]]
public_key = "{}"
endpoint = "{}"
allowed_ips = ["10.77.0.1/32"]
[heartbeat]
url = "http://10.77.0.1/heartbeat"
interval = "1s"
[admin]
listen = "127.0.0.1:0"
[runtime]
pin = false
[log]
level = "error"
[[scm]]
type = "github"
base_url = "http://{}/api/v3"
token = "{TOKEN}"
"#,
        key.to_base64(),
        gw_key.public_key(),
        gateway_udp,
        scm
    )
}

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// One GET through the front door: the status and the broker that served it.
fn get(front: SocketAddr, target: &str) -> (u16, String) {
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect(front)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })()
    .unwrap_or_default();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let by = answer
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(BROKER_HEADER)
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "-".into());
    (status, by)
}
