//! `wgbroker loadtest`: the vendor's side under load, to size and tune a deployment.
//!
//! The driver plays the vendor with the test kit's own WireGuard and TCP stack
//! ([`crate::testkit::gateway::Gateway`]: boringtun + smoltcp over a UDP socket, no root, no TUN)
//! against one of three targets:
//!
//! * **in-process** (default): a broker started in this process from `-c FILE` (or an embedded
//!   configuration like `demo`'s), its `[wireguard]` replaced so that it dials the driver's
//!   gateways, plus a local upstream on loopback ([`upstream::Upstream`]);
//! * **gateway** (`--gateway`): the driver's gateways wait for an external broker to dial them
//!   (keys, endpoints and a ready-to-paste `[wireguard]` snippet are printed), then drive it;
//! * **null** (`--null`, and the second half of `--calibrate`): a trivially cheap responder —
//!   another test-kit gateway that dials the driver and answers `200 pong` — so the driver's own
//!   ceiling can be read next to the broker's figure.
//!
//! ## Layout
//!
//! | file | does |
//! |---|---|
//! | [`scenario`] | scenarios → pre-encoded request templates, mix weights |
//! | [`driver`] | one driver thread: a gateway, its connections, closed or open loop, timeouts |
//! | [`session`] | sets up a target, starts the threads, measures the window, stops everything |
//! | [`report`] | mergeable per-thread figures, the report (`--json`) and its table |
//! | [`cpu`] | CPU seconds per thread from `/proc`, to show who was the bottleneck |
//! | [`upstream`] | the in-process upstream: cheap SCM-like routes on loopback |
//! | [`front`] | `--front`: a `wgbroker gateway`'s front door over kernel TCP, thread per connection |
//!
//! ## Invariants
//!
//! * Every loop ends: the window is bounded by `--duration` (at most [`MAX_DURATION`]), every
//!   request by `--timeout`, every wait for a handshake by `--handshake-timeout`.
//! * Nothing grows with the run: per connection one request in flight and fixed buffers; the
//!   open loop's backlog is a counter; histograms have fixed bounds.
//! * Latency in the open loop is measured from the *intended* send time.
//!
//! [`run`] answers with [`Finished`] or an [`Error`] whose [`ErrorKind`] the command line turns
//! into the exit status; this module does not know the numbers.
//!
//! ## A WAN between driver and broker
//!
//! `--delay`, `--jitter`, `--loss`, `--duplicate`, `--reorder` (`--reorder-by`) and `--seed` put
//! a [`crate::testkit::impair::Impair`] queue in each direction of every driver gateway's path
//! (on the driver's own thread, between its UDP socket and its tunnel): every datagram to and
//! from the broker is delayed, dropped, duplicated or held back, drawn from a seeded generator so
//! that a run's loss pattern can be repeated. Thread N draws from `seed + N`. The report says so
//! (`wan`), with what each direction lost.

pub mod cpu;
pub mod driver;
pub mod front;
pub mod report;
pub mod scenario;
pub mod session;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use scenario::Scenario;

use crate::testkit::impair::{self, ImpairSpec};

/// `--help` heading of the WAN options.
const WAN: &str =
    "WAN impairment (each direction, per datagram, between the driver and the broker)";

/// The longest window `--duration` accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most connections across all threads.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Most driver threads.
pub const MAX_THREADS: usize = 64;
/// Most memory the driver's TCP buffers may take (connections × (rx + tx)).
pub const MAX_BUFFER_MEMORY: u64 = 4 << 30;

/// How a `connect` request's connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseMode {
    /// FIN, like a normal client (the driver then holds the socket in TIME-WAIT for 10 s,
    /// which caps one thread at about 1,600 new connections per second).
    Fin,
    /// RST right after the response (no TIME-WAIT anywhere).
    Rst,
}

/// `wgbroker loadtest` options.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  wgbroker loadtest                                   small GETs, 16 connections, 10 s, in-process
  wgbroker loadtest -s download --size 10MiB --connections 4
  wgbroker loadtest -s mix --rate 2000 --duration 30s --warmup 2s
  wgbroker loadtest -s small --calibrate              broker figure next to the driver's ceiling
  wgbroker loadtest --gateway --broker-public-key KEY --upstream https://ghe.example.com -s small")]
pub struct Args {
    /// Broker configuration for the in-process broker (repeat to overlay). Its `[wireguard]`
    /// key, address and peers are replaced by the load test's own; its admin listener moves to
    /// an ephemeral loopback port. Default: an embedded configuration like `demo`'s.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,

    /// What to send.
    #[arg(short = 's', long, value_enum, default_value_t = Scenario::Small)]
    pub scenario: Scenario,

    /// Be the gateway an external broker dials (see --broker-public-key, --listen).
    #[arg(long, conflicts_with_all = ["config", "null"])]
    pub gateway: bool,

    /// Drive a `wgbroker gateway`'s front door at ADDR (HTTP/1.1 on kernel TCP) instead of a
    /// broker: each of --connections keep-alive connections sends `GET --front-target` in a
    /// closed loop, on its own thread (see `loadtest::front`).
    #[arg(long, value_name = "ADDR", requires = "front_target", conflicts_with_all = ["config", "null", "gateway", "calibrate", "rate"])]
    pub front: Option<SocketAddr>,

    /// Front-door mode: the request target, e.g. `/t/acme/proxy/https://ghe.example.com/api/v3/repos/a/b`.
    #[arg(long, value_name = "TARGET", requires = "front")]
    pub front_target: Option<String>,

    /// Run the scenario against the broker, then against the null responder, and print both.
    #[arg(long, conflicts_with = "null")]
    pub calibrate: bool,

    /// Run against the null responder only (the driver's own ceiling).
    #[arg(long)]
    pub null: bool,

    /// Connections across all threads; each carries one request at a time (keep-alive).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,

    /// Open loop: send this many requests per second in total (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Driver threads, each with its own gateway, UDP socket and broker peer.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Length of the measurement window (at most 1h).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop after this many requests in total (warm-up included), or at --duration.
    #[arg(long)]
    pub requests: Option<u64>,

    /// Run this long before the window opens; nothing finished in it is counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// A request without a complete response after this long is a timeout error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Body size of `download` and `upload` (e.g. 1MiB, 100KB, 4096).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub size: u64,

    /// Mix weights by kind, e.g. `api.repo=50,denied.admin=0` (kinds: api.repo, api.pulls,
    /// api.contents, api.commits, git.info_refs, git.upload_pack, archive, denied.admin,
    /// denied.metadata).
    #[arg(long, value_name = "KIND=WEIGHT,...")]
    pub mix: Option<String>,

    /// How `connect` ends each connection.
    #[arg(long, value_enum, default_value_t = CloseMode::Fin)]
    pub close: CloseMode,

    /// Print one JSON object with every figure instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,

    /// Gateway mode: UDP address to listen on (thread N listens on port + N; 0 = any).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Gateway mode: also accept the broker's `tls` transport on this TCP address (one thread
    /// only). The certificate is --tls-cert/--tls-key, or else one made for the address's IP
    /// (self-signed; see --tls-ca-out).
    #[arg(long, value_name = "ADDR", requires = "gateway")]
    pub tls_listen: Option<SocketAddr>,

    /// Gateway mode: the certificate chain (PEM) presented on --tls-listen.
    #[arg(long, value_name = "FILE", requires_all = ["tls_listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,

    /// Gateway mode: the private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls_listen", "tls_cert"])]
    pub tls_key: Option<PathBuf>,

    /// Gateway mode: write the self-signed certificate made for --tls-listen (PEM) here, for the
    /// broker's `[wireguard] ca_files`.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_listen",
        conflicts_with = "tls_cert"
    )]
    pub tls_ca_out: Option<PathBuf>,

    /// Gateway mode: the broker's public key.
    #[arg(long, value_name = "KEY")]
    pub broker_public_key: Option<String>,

    /// Gateway mode: the gateway's private key (default: a fresh key per run; one thread only).
    #[arg(long, value_name = "FILE")]
    pub private_key_file: Option<PathBuf>,

    /// The broker's tunnel address.
    #[arg(long, default_value = "10.77.0.2")]
    pub broker_address: IpAddr,

    /// The first driver thread's tunnel address (thread N uses this + N, skipping the
    /// broker's).
    #[arg(long, default_value = "10.77.0.1")]
    pub vendor_address: IpAddr,

    /// The broker's inbound TCP port inside the tunnel.
    #[arg(long, default_value_t = 80)]
    pub port: u16,

    /// How long to wait for the broker's WireGuard handshake.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Base URL of the upstream the scenarios address (gateway mode; in-process mode uses its
    /// own). It should serve the load-test routes: /api/v3/..., /download/N, /upload,
    /// /:owner/:repo/info/refs.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,

    /// The absolute upstream URL of `small`, `connect`, `denied`, `download` or `upload`
    /// (overrides the one built from --upstream).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// An extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Datagrams per recvmmsg/sendmmsg of the driver's gateways (1 = a syscall per datagram).
    #[arg(long, default_value_t = crate::testkit::gateway::BATCH)]
    pub udp_batch: usize,

    /// Busy-poll the driver's UDP socket this long before sleeping (e.g. 50us): lower
    /// wake-up latency for a core; useful when the driver has cores to itself.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub spin: Duration,

    /// One-way delay added to every datagram, e.g. 15ms (the round trip grows by twice this).
    #[arg(long, default_value = "0s", value_parser = parse_duration, help_heading = WAN)]
    pub delay: Duration,

    /// Each datagram's delay is drawn uniformly from --delay ± this; the order is kept.
    #[arg(long, default_value = "0s", value_parser = parse_duration, help_heading = WAN)]
    pub jitter: Duration,

    /// Share of datagrams dropped, e.g. 0.1%.
    #[arg(long, default_value = "0%", value_parser = impair::parse_percent, help_heading = WAN)]
    pub loss: f64,

    /// Share of datagrams sent twice, e.g. 1%.
    #[arg(long, default_value = "0%", value_parser = impair::parse_percent, help_heading = WAN)]
    pub duplicate: f64,

    /// Share of datagrams held back --reorder-by, so that the ones behind them overtake them.
    #[arg(long, default_value = "0%", value_parser = impair::parse_percent, help_heading = WAN)]
    pub reorder: f64,

    /// How long a reordered datagram is held back.
    #[arg(long, default_value = "1ms", value_parser = parse_duration, help_heading = WAN)]
    pub reorder_by: Duration,

    /// Seed of the random draws, to repeat a run's pattern (default: a fresh one, printed in the
    /// report).
    #[arg(long, help_heading = WAN)]
    pub seed: Option<u64>,
}

impl Args {
    /// The WAN impairment of driver thread `thread` (its seed is `--seed + thread`); `None` for
    /// a clean path.
    pub fn impairment(&self, thread: usize) -> Option<ImpairSpec> {
        let spec = ImpairSpec {
            delay: self.delay,
            jitter: self.jitter,
            loss: self.loss,
            duplicate: self.duplicate,
            reorder: self.reorder,
            reorder_by: self.reorder_by,
            seed: self.seed.unwrap_or(0).wrapping_add(thread as u64),
            ..ImpairSpec::default()
        };
        spec.is_active().then_some(spec)
    }
}

pub use crate::units::{parse_duration, parse_size};

/// Checks what clap cannot; returns the message of a usage error.
///
/// (Over 100 lines, on purpose: one short, independent check per option, in the order of
/// [`Args`]; split up, the checks would no longer read against the flags they guard.)
pub fn validate(a: &Args) -> Result<(), String> {
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    if a.threads == 0 || a.threads > MAX_THREADS {
        return Err(format!("--threads must be 1..={MAX_THREADS}"));
    }
    if a.threads > a.connections {
        return Err("--threads must not exceed --connections".into());
    }
    if a.duration.is_zero() || a.duration > MAX_DURATION {
        return Err("--duration must be more than 0 and at most 1h".into());
    }
    if a.warmup > Duration::from_secs(600) {
        return Err("--warmup must be at most 10m".into());
    }
    if a.timeout < Duration::from_millis(1) || a.timeout > Duration::from_secs(600) {
        return Err("--timeout must be between 1ms and 10m".into());
    }
    if let Some(r) = a.rate {
        if !r.is_finite() || r <= 0.0 || r > 10_000_000.0 {
            return Err(
                "--rate must be a positive number of requests per second (at most 10M)".into(),
            );
        }
    }
    if a.udp_batch == 0 || a.udp_batch > crate::testkit::gateway::BATCH {
        return Err(format!(
            "--udp-batch must be 1..={}",
            crate::testkit::gateway::BATCH
        ));
    }
    if a.spin > Duration::from_millis(10) {
        return Err("--spin must be at most 10ms".into());
    }
    if let Some(spec) = a.impairment(0) {
        spec.validate().map_err(|e| format!("--{e}"))?;
    } else if a.seed.is_some() {
        return Err(
            "--seed applies to the WAN options (--delay, --jitter, --loss, --duplicate, --reorder)"
                .into(),
        );
    }
    if a.reorder_by > impair::MAX_DELAY {
        return Err("--reorder-by must be at most 10s".into());
    }
    if a.requests == Some(0) {
        return Err("--requests must be at least 1".into());
    }
    if a.handshake_timeout.is_zero() || a.handshake_timeout > Duration::from_secs(3600) {
        return Err("--handshake-timeout must be more than 0 and at most 1h".into());
    }
    if a.vendor_address.is_ipv4() != a.broker_address.is_ipv4() {
        return Err("--vendor-address and --broker-address must be of one IP family".into());
    }
    for i in 0..a.threads {
        match session::vendor_address(a.vendor_address, a.broker_address, i) {
            Some(v) if v == a.broker_address => {
                return Err(format!(
                    "thread {i}'s tunnel address {v} is the broker's (--vendor-address)"
                ));
            }
            Some(_) => {}
            None => return Err("--vendor-address + --threads runs out of addresses".into()),
        }
    }
    if let Some(u) = &a.url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err("--url must be an absolute http:// or https:// URL".into());
        }
    }
    if let Some(u) = &a.upstream {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err("--upstream must be an http:// or https:// base URL".into());
        }
    }
    for h in &a.headers {
        match h.split_once(':') {
            Some((n, v))
                if !n.trim().is_empty()
                    && n.trim().bytes().all(|b| b.is_ascii_graphic())
                    && !v.contains(['\r', '\n']) => {}
            _ => return Err(format!("invalid header {h:?} (expected `Name: value`)")),
        }
    }
    if let Some(m) = &a.mix {
        scenario::parse_mix(m)?;
        if a.scenario != Scenario::Mix {
            return Err("--mix applies to `-s mix` only".into());
        }
    }
    if a.gateway {
        if a.broker_public_key.is_none() {
            return Err("--gateway needs --broker-public-key (the broker's public key)".into());
        }
        let needs_upstream = !matches!(a.scenario, Scenario::Healthcheck | Scenario::Denied);
        if needs_upstream
            && a.upstream.is_none()
            && (a.url.is_none() || a.scenario == Scenario::Mix)
        {
            return Err(format!(
                "--gateway with -s {} needs --upstream (or --url): the broker's upstream",
                a.scenario
            ));
        }
        if a.private_key_file.is_some() && a.threads > 1 {
            return Err("--private-key-file works with one thread (each thread is a peer)".into());
        }
        if a.tls_listen.is_some() && a.threads > 1 {
            return Err("--tls-listen works with one thread (each thread is a peer)".into());
        }
    }
    let (rx, tx) = session::buffers(a.scenario, a.size);
    let mem = a.connections as u64 * (rx + tx) as u64;
    if mem > MAX_BUFFER_MEMORY {
        return Err(format!(
            "--connections {} would take {} MiB of TCP buffers (at most {} MiB)",
            a.connections,
            mem >> 20,
            MAX_BUFFER_MEMORY >> 20
        ));
    }
    Ok(())
}

/// How a load test that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The report is printed and has completed requests.
    Measured,
    /// The report is printed, but no request completed (on every target).
    NothingCompleted,
}

/// Why `wgbroker loadtest` could not measure: what went wrong, in a message, and of which kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What kind of failure a load test [`Error`] is; `wgbroker` exits with a status per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Options that do not work together or are out of range.
    Usage,
    /// A file that holds no valid key (`--private-key-file`).
    Data,
    /// A file that cannot be read (`--private-key-file`).
    NoInput,
    /// The broker configuration (`-c FILE`) cannot be read or is invalid.
    Config,
    /// The host: a thread, a socket or a key that cannot be had, a broker that cannot start.
    Os,
    /// The target never got ready (no handshake in time), or the drivers failed while measuring.
    NotReady,
}

impl Error {
    /// An error of `kind`, saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Its kind (the exit status).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error, said to have happened in `step` (e.g. `calibration`).
    pub fn during(self, step: &str) -> Self {
        Self {
            kind: self.kind,
            message: format!("{step}: {}", self.message),
        }
    }
}

/// Runs `wgbroker loadtest`: checks the options, runs the session, prints the report.
pub fn run(mut args: Args) -> Result<Finished, Error> {
    validate(&args).map_err(|e| Error::new(ErrorKind::Usage, e))?;
    if args.impairment(0).is_some() && args.seed.is_none() {
        // A fresh seed, reported, so that the run can be repeated with --seed.
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        args.seed = Some(u64::from_le_bytes(b) >> 1);
    }
    if let (Some(addr), Some(target)) = (args.front, args.front_target.as_deref()) {
        return front::run(addr, target, &args);
    }
    session::run(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    fn args(extra: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let argv = std::iter::once("loadtest").chain(extra.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("parses")
            .a
    }

    #[test]
    fn wan_options_make_a_seeded_impairment_per_thread() {
        let a = args(&[]);
        assert!(a.impairment(0).is_none(), "a clean path by default");
        assert!(validate(&a).is_ok());
        let a = args(&[
            "--delay",
            "15ms",
            "--jitter",
            "1ms",
            "--loss",
            "0.1%",
            "--reorder",
            "2%",
            "--reorder-by",
            "3ms",
            "--duplicate",
            "1%",
            "--seed",
            "40",
            "--threads",
            "2",
            "--connections",
            "4",
        ]);
        assert!(validate(&a).is_ok());
        let s0 = a.impairment(0).expect("on");
        assert_eq!(s0.delay, Duration::from_millis(15));
        assert_eq!(s0.jitter, Duration::from_millis(1));
        assert_eq!((s0.loss, s0.reorder, s0.duplicate), (0.001, 0.02, 0.01));
        assert_eq!(s0.reorder_by, Duration::from_millis(3));
        assert_eq!(s0.seed, 40);
        assert_eq!(a.impairment(1).expect("on").seed, 41, "thread N: seed + N");
        // Loss alone is an impairment too; a seed alone is a mistake.
        assert!(args(&["--loss", "1%"]).impairment(0).is_some());
        assert!(validate(&args(&["--seed", "1"])).is_err());
        assert!(validate(&args(&["--delay", "20s"])).is_err());
        assert!(validate(&args(&["--reorder-by", "20s"])).is_err());
    }
}
