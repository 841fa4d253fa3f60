//! Big bodies in bounded memory: a download and a chunked upload through the tunnel to a real
//! `wgbroker run` process, byte-exact (generated streams checked on both ends, nothing stored),
//! with the broker process's peak RSS above its idle RSS bounded.
//!
//! The size is 128 MiB each way (twice the bound: a broker that held a body would fail); `WGBROKER_BIGBODY_BYTES` raises it (`perf/bigbody.sh` runs
//! 4 GiB). The broker runs as its own process so that its RSS is its own, not the test's.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wgbroker::keys::PrivateKey;
use wgbroker::testkit::bulk;
use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::gateway::{Gateway, GatewayConfig};
use wgbroker::testkit::scm::MockScm;
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

use crate::harness::{BROKER_IP, VENDOR_IP, spread_args};

/// How far above idle the broker's peak RSS may go while it streams (the issue's bound).
const MAX_GROWTH_KIB: u64 = 64 * 1024;

/// `VmRSS` and `VmHWM` of process `pid`, KiB.
pub(crate) fn rss_of(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A `wgbroker run` process (killed when dropped).
pub(crate) struct Broker {
    pub(crate) child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker binary: `WGBROKER_BIN` (perf/bigbody.sh points it at a release build), else the
/// one cargo built with this test.
fn broker_bin() -> std::ffi::OsString {
    std::env::var_os("WGBROKER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_wgbroker").into())
}

fn start(scm: &MockScm) -> (Gateway, Broker) {
    start_with(scm, "", |_| {})
}

/// A broker process allowing the fixture's download and upload, `extra` appended to its
/// configuration, dialing a test-kit gateway adjusted by `gateway`; returns once the handshake
/// completed.
pub(crate) fn start_with(
    scm: &MockScm,
    extra: &str,
    gateway: impl FnOnce(&mut GatewayConfig),
) -> (Gateway, Broker) {
    let broker_key = PrivateKey::generate().expect("rng");
    let vendor_key = PrivateKey::generate().expect("rng");
    let mut cfg = GatewayConfig::new(
        vendor_key.clone(),
        broker_key.public_key(),
        VENDOR_IP.parse().expect("ip"),
        BROKER_IP.parse().expect("ip"),
    );
    gateway(&mut cfg);
    let mut gateway = Gateway::bind(&cfg).expect("gateway");
    let wireguard = WireguardToml::new(&broker_key, BROKER_IP)
        .peer(
            PeerToml::new(
                vendor_key.public_key(),
                gateway.local_addr().expect("addr"),
                format!("{VENDOR_IP}/32"),
            )
            .persistent_keepalive(0),
        )
        .render();
    let a = scm.addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        format!(
            r#"{wireguard}
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[allow]]
url = "http://{a}/download/:n"
methods = ["GET"]
[[allow]]
url = "http://{a}/upload"
methods = ["POST"]
{extra}
"#
        ),
    )
    .expect("config");
    let child = Command::new(broker_bin())
        .arg("run")
        .arg("-c")
        .arg(&file)
        .args(spread_args(&file))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the broker");
    let broker = Broker { child, _dir: dir };
    assert!(
        gateway.wait_handshake(Duration::from_secs(20)),
        "no handshake"
    );
    (gateway, broker)
}

#[test]
fn big_download_and_chunked_upload_are_byte_exact_in_bounded_memory() {
    let n: u64 = std::env::var("WGBROKER_BIGBODY_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128 << 20);
    let scm = MockScm::start("unused-token").expect("mock scm");
    let a = scm.addr();
    let (mut gw, broker) = start(&scm);
    let pid = broker.child.id();
    // Warm up both paths with small bodies: buffers and pools the broker keeps are allocated
    // before "idle" is read.
    for _ in 0..2 {
        let d = bulk::download(
            &mut gw,
            80,
            &format!("/proxy/http://{a}/download/1000000"),
            Duration::from_secs(60),
        )
        .expect("warm-up download");
        assert!(d.exact && d.status == 200, "{d:?}");
        let u = bulk::upload_chunked(
            &mut gw,
            80,
            &format!("/proxy/http://{a}/upload"),
            1_000_000,
            65_537,
            Duration::from_secs(60),
        )
        .expect("warm-up upload");
        assert!(u.exact && u.status == 200, "{u:?}");
    }
    let (idle, _) = rss_of(pid);
    let timeout = Duration::from_secs(3600);

    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the broker's peak RSS");
    let t0 = Instant::now();
    let d = bulk::download(
        &mut gw,
        80,
        &format!("/proxy/http://{a}/download/{n}"),
        timeout,
    )
    .expect("download");
    let down_secs = t0.elapsed().as_secs_f64();
    let (_, down_peak) = rss_of(pid);

    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the broker's peak RSS");
    let t0 = Instant::now();
    let u = bulk::upload_chunked(
        &mut gw,
        80,
        &format!("/proxy/http://{a}/upload"),
        n,
        65_537,
        timeout,
    )
    .expect("upload");
    let up_secs = t0.elapsed().as_secs_f64();
    let (after, up_peak) = rss_of(pid);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "bigbody: {n} bytes each way; broker idle RSS {:.1} MiB; download {} fnv {:016x} in {down_secs:.1} s, peak {:.1} MiB (+{:.1}); chunked upload {} fnv {:016x} in {up_secs:.1} s, peak {:.1} MiB (+{:.1}); RSS after {:.1} MiB",
        mib(idle),
        if d.exact { "exact" } else { "DIFFERS" },
        d.fnv,
        mib(down_peak),
        mib(down_peak.saturating_sub(idle)),
        if u.exact { "exact" } else { "DIFFERS" },
        u.fnv,
        mib(up_peak),
        mib(up_peak.saturating_sub(idle)),
        mib(after),
    );
    assert_eq!((d.status, d.bytes), (200, n), "{d:?}");
    assert!(d.exact, "the download differs from the pattern");
    assert_eq!((u.status, u.bytes), (200, n), "{u:?}");
    assert!(u.exact, "the upstream received other bytes: {}", u.reply);
    assert!(
        down_peak <= idle + MAX_GROWTH_KIB,
        "download: peak RSS {down_peak} KiB, idle {idle} KiB"
    );
    assert!(
        up_peak <= idle + MAX_GROWTH_KIB,
        "upload: peak RSS {up_peak} KiB, idle {idle} KiB"
    );
    // The tunnel still serves after both.
    let res = client::run(
        &mut gw,
        vec![vec![Request::get("/healthcheck")]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(10),
            keep_bodies: true,
        },
    );
    assert_eq!(res[0][0].response.as_ref().map(|r| r.status), Ok(200));
}

/// A vendor that asks for a big download and then never reads: its TCP window closes, and the
/// broker must stop reading the upstream rather than buffer the body. Over 10 s of the gateway
/// acknowledging (zero-window) but never reading, with the upstream able to send 1 GiB over
/// loopback far faster than that, the broker's peak RSS stays within 64 MiB of idle and the
/// upstream gets no more than 64 MiB of the body out (its reads are paused, not drained).
#[test]
fn a_vendor_that_never_reads_cannot_make_the_broker_buffer_the_body() {
    let scm = MockScm::start("unused-token").expect("mock scm");
    let a = scm.addr();
    let (mut gw, broker) = start(&scm);
    let pid = broker.child.id();
    let d = bulk::download(
        &mut gw,
        80,
        &format!("/proxy/http://{a}/download/1000000"),
        Duration::from_secs(60),
    )
    .expect("warm-up download");
    assert!(d.exact, "{d:?}");
    let (idle, _) = rss_of(pid);
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the broker's peak RSS");
    let before = scm.download_bytes_written();
    let held = bulk::download_unread(
        &mut gw,
        80,
        &format!("/proxy/http://{a}/download/{}", 1u64 << 30),
        Duration::from_secs(10),
    )
    .expect("the response head");
    let (_, peak) = rss_of(pid);
    // What the upstream got rid of while the vendor read nothing for 10 s: the broker's bounded
    // buffers and the kernel's socket buffers on both loopback ends; then its writes block
    // because the broker stopped reading the upstream.
    let written = scm.download_bytes_written() - before;
    println!(
        "unread 1 GiB download: status {}; broker idle {} KiB, peak {} KiB; the upstream wrote \
         {} KiB of it in 10 s",
        held.status,
        idle,
        peak,
        written / 1024
    );
    assert_eq!(held.status, 200);
    assert!(
        written <= MAX_GROWTH_KIB * 1024,
        "the upstream wrote {written} bytes while the vendor read nothing: the broker kept reading"
    );
    assert!(
        peak <= idle + MAX_GROWTH_KIB,
        "peak RSS {peak} KiB with a vendor that never reads, idle {idle} KiB"
    );
}
