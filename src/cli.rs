//! The command line: thin commands over the library.
//!
//! Exit codes are part of the interface: `explain` exits 0 (allowed), 1 (denied) or 2 (rejected
//! as malformed); every command exits [`EXIT_USAGE`] on a usage error and [`EXIT_CONFIG`] when the
//! configuration is invalid.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::allowlist::{CanonUrl, Decision};
use crate::config::{self, LoadMode, ProcessEnv};
use crate::keys::PrivateKey;

/// How long SIGTERM/SIGINT lets in-flight requests finish (systemd's default stop timeout is
/// 90 s; this stays well inside it).
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Usage error (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Invalid input data, such as a malformed key on stdin (`EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;
/// Invalid configuration (`EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;
/// Operating-system failure (`EX_OSERR`).
pub const EXIT_OS: u8 = 71;

#[derive(Debug, Parser)]
#[command(name = "wgbroker", version, about = "Outbound-only WireGuard network broker", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// Configuration file; repeat to overlay (tables merge, arrays replace).
    #[arg(short = 'c', long = "config", value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker, a local SCM-like upstream and a vendor peer on loopback; send a realistic
    /// mix of requests through the real tunnel and print what was allowed, denied and why.
    Demo,
    /// Print a new private key (base64, like `wg genkey`).
    Genkey,
    /// Read a private key on stdin, print its public key (like `wg pubkey`).
    Pubkey,
    /// Run the broker: dial the gateway, serve HTTP inside the tunnel (stops on SIGINT/SIGTERM).
    Run(ConfigArgs),
    /// Validate the configuration and report every problem at once, then check the host: the
    /// io_uring sysctl, the locked-memory limit, an io_uring executor, and the UDP buffers the
    /// kernel will grant.
    ///
    /// Exit status: 0 ready to run (warnings on stderr), 78 configuration errors, 71 the host
    /// cannot run the broker.
    Check(ConfigArgs),
    /// Print the merged configuration and generated rules, secrets redacted.
    Dump(ConfigArgs),
    /// Say whether a request would be allowed, and by which rule.
    ///
    /// Exit status: 0 allowed, 1 denied, 2 rejected as malformed.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// HTTP method, e.g. GET.
        method: String,
        /// Absolute upstream URL, as the vendor would send it after `/proxy/`.
        url: String,
        /// A request header `Name: value` the request carries (repeatable).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
    },
    /// Drive a broker with the vendor's side (WireGuard + TCP in userspace) and report req/s,
    /// MB/s, errors, latency percentiles and CPU per side.
    ///
    /// In-process by default (a broker from -c FILE or an embedded configuration, plus a local
    /// upstream); --gateway waits for an external broker to dial; --calibrate adds the driver's
    /// own ceiling against a null responder.
    Loadtest(Box<crate::loadtest::Args>),
    /// A UDP relay that delays, drops, duplicates and reorders each datagram (for perf/wan.sh;
    /// not part of the product).
    #[command(hide = true)]
    Relay(Box<crate::testkit::relay::Args>),
}

/// Runs the command line; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    match cli.command {
        Command::Demo => ExitCode::from(crate::demo::run()),
        Command::Genkey => genkey(),
        Command::Pubkey => pubkey(),
        Command::Run(args) => run(&args.files),
        Command::Check(args) => check(&args.files),
        Command::Dump(args) => dump(&args.files),
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => explain(&config.files, &method, &url, &headers),
        Command::Loadtest(args) => ExitCode::from(crate::loadtest::run(*args)),
        Command::Relay(args) => ExitCode::from(crate::testkit::relay::run(&args)),
    }
}

fn run(files: &[PathBuf]) -> ExitCode {
    let loaded = match config::load(files, LoadMode::Full, &ProcessEnv) {
        Ok(l) => l,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    print_warnings(&loaded.warnings);
    crate::telemetry::init(&loaded.config.log);
    // Signals first: a signal that arrives during start-up must not kill the process uncleanly.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wgbroker: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    let broker = match crate::runtime::start(&loaded) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wgbroker: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    let c = &loaded.config;
    tracing::info!(
        event = "broker.start",
        public_key = %c.wireguard.private_key.public_key(),
        address = %c.wireguard.address,
        udp_port = broker.status().udp_port.load(std::sync::atomic::Ordering::Relaxed),
        inbound_port = c.inbound.listen_port,
        peers = c.wireguard.peers.len(),
        rules = loaded.allowlist.rules().len(),
    );
    // systemd: READY once every shard listens; the watchdog is fed only while every executor
    // makes progress; STATUS carries a one-line summary.
    let status = broker.status().clone();
    let shards = status.beats().len() - 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status
        .shards_ready
        .load(std::sync::atomic::Ordering::Relaxed)
        < shards
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    crate::notify::ready();
    let _ = std::thread::Builder::new()
        .name("wgbroker-watchdog".into())
        .spawn(move || supervise(&status));
    // Only the rules are swapped at runtime: every other section keeps running as it started, so
    // each reload is compared with the configuration the process started with.
    let started = loaded;
    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGHUP => {
                // Validate with the credentials this process holds (systemd does not hand them
                // to ExecReload=), then swap the allowlist into every shard; an invalid file
                // keeps the running configuration.
                crate::notify::reloading();
                match config::load(files, LoadMode::Full, &ProcessEnv) {
                    Ok(new) => {
                        let restart = sections_needing_restart(&started.config, &new.config);
                        match broker.reload(&new) {
                            Ok(()) => tracing::info!(
                                event = "config.reload",
                                result = "applied",
                                rules = new.allowlist.rules().len()
                            ),
                            Err(e) => {
                                tracing::error!(event = "config.reload", result = "failed", error = %e)
                            }
                        }
                        if !restart.is_empty() {
                            tracing::warn!(
                                event = "config.reload",
                                needs_restart = %restart.join(", "),
                                "changes to these sections apply at the next restart"
                            );
                        }
                    }
                    Err(errors) => tracing::error!(
                        event = "config.reload",
                        result = "invalid, keeping the running configuration",
                        errors = %errors
                    ),
                }
                crate::notify::ready();
            }
            _ => break,
        }
    }
    tracing::info!(
        event = "broker.stop",
        drain_deadline_s = DRAIN_DEADLINE.as_secs()
    );
    crate::notify::stopping();
    match broker.drain(DRAIN_DEADLINE) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(left) => {
            tracing::warn!(event = "broker.drain_deadline", open_connections = left);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgbroker: {e}");
            ExitCode::from(EXIT_OS)
        }
    }
}

/// The sections whose changes a reload cannot apply (everything but the rules).
fn sections_needing_restart(old: &config::Config, new: &config::Config) -> Vec<String> {
    let parse = |c: &config::Config| -> toml::Table {
        toml::from_str(&config::dump::render(c)).unwrap_or_default()
    };
    let (a, b) = (parse(old), parse(new));
    [
        "wireguard",
        "inbound",
        "heartbeat",
        "upstream",
        "admin",
        "log",
        "runtime",
    ]
    .iter()
    .filter(|k| a.get(**k) != b.get(**k))
    .map(|k| (*k).to_owned())
    .collect()
}

/// Feeds the systemd watchdog while every executor advances, and keeps STATUS current.
fn supervise(status: &crate::runtime::Status) {
    use std::sync::atomic::Ordering::Relaxed;
    // Half of WatchdogSec= (see notify::watchdog_interval), or every 5 s for STATUS alone.
    let period = crate::notify::watchdog_interval()
        .unwrap_or(std::time::Duration::from_secs(5))
        .max(std::time::Duration::from_millis(100));
    let mut last = status.beats();
    loop {
        std::thread::sleep(period);
        if status.stopped.load(Relaxed) {
            return;
        }
        let now = status.beats();
        let stalled: Vec<usize> = now
            .iter()
            .zip(&last)
            .enumerate()
            .filter(|(_, (a, b))| a == b)
            .map(|(i, _)| i)
            .collect();
        if stalled.is_empty() {
            crate::notify::watchdog();
        } else {
            tracing::error!(event = "runtime.stall", executors = ?stalled);
        }
        last = now;
        let hs = status.handshake_age().map_or_else(
            || "no handshake yet".to_owned(),
            |a| format!("handshake {}s ago", a.as_secs()),
        );
        crate::notify::status(&format!(
            "{hs}; {} connections, {} requests; heartbeat {}",
            status.connections.load(Relaxed),
            status.requests(),
            if status.heartbeat_passing.load(Relaxed) {
                "ok"
            } else {
                "failing"
            },
        ));
    }
}

fn genkey() -> ExitCode {
    match PrivateKey::generate() {
        Ok(k) => {
            println!("{}", k.to_base64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgbroker: {e}");
            ExitCode::from(EXIT_OS)
        }
    }
}

fn pubkey() -> ExitCode {
    let mut input = String::new();
    // Like `wg pubkey`, read at most a little more than one key.
    if std::io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .is_err()
    {
        eprintln!("wgbroker: cannot read a key from standard input");
        return ExitCode::from(EXIT_DATA);
    }
    match PrivateKey::from_base64(&input) {
        Ok(k) => {
            println!("{}", k.public_key());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgbroker: {e}");
            ExitCode::from(EXIT_DATA)
        }
    }
}

fn print_warnings(w: &[config::ConfigError]) {
    for w in w {
        eprintln!("warning: {w}");
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    match config::load(files, LoadMode::Full, &ProcessEnv) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let c = &loaded.config;
            println!(
                "configuration OK: {} peer(s), {} rule(s) ({} user, {} generated from {} SCM entr{}), inbound port {}",
                c.wireguard.peers.len(),
                loaded.allowlist.rules().len(),
                c.allow.len(),
                loaded.allowlist.rules().len() - c.allow.len(),
                c.scm.len(),
                if c.scm.len() == 1 { "y" } else { "ies" },
                c.inbound.listen_port,
            );
            println!(
                "broker public key: {}",
                c.wireguard.private_key.public_key()
            );
            match crate::runtime::host_check(c) {
                Ok(findings) => {
                    println!("host OK: io_uring available, locked-memory limit sufficient");
                    for f in findings {
                        eprintln!("warning: {f}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wgbroker: host: {e}");
                    ExitCode::from(EXIT_OS)
                }
            }
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn dump(files: &[PathBuf]) -> ExitCode {
    match config::load(files, LoadMode::Policy, &ProcessEnv) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let out = config::dump::render(&loaded.config);
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `scheme://user:pass@host/...` → `scheme://<redacted>@host/...`: what the user typed is echoed,
/// but never a credential.
fn redact_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

fn explain(files: &[PathBuf], method: &str, raw_url: &str, raw_headers: &[String]) -> ExitCode {
    let shown = redact_userinfo(raw_url);
    let url = shown.as_str();
    let loaded = match config::load(files, LoadMode::Policy, &ProcessEnv) {
        Ok(l) => l,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    print_warnings(&loaded.warnings);
    let mut pairs = Vec::with_capacity(raw_headers.len());
    for h in raw_headers {
        match h.split_once(':') {
            Some((n, v)) => pairs.push((n.trim().to_owned(), v.trim().to_owned())),
            None => {
                eprintln!("wgbroker: invalid header {h:?} (expected `Name: value`)");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let headers: Vec<httparse::Header<'_>> = pairs
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let method = method.to_ascii_uppercase();
    let canon = match CanonUrl::parse(raw_url) {
        Ok(c) => c,
        Err(e) => {
            println!("MALFORMED  {method} {url}");
            println!("  rejected before matching: {e}");
            println!("  the broker answers 400 and nothing reaches an upstream");
            return ExitCode::from(2);
        }
    };
    let explanation = loaded.allowlist.explain(&method, &canon, &headers);
    let allowed = match &explanation.decision {
        Decision::Allowed { rule_id, rule } => {
            println!("ALLOWED  {method} {url}");
            println!("  rule #{rule_id}: {}", rule.spec.origin);
            println!("  pattern: {} {:?}", rule.spec.url, rule.spec.methods);
            println!(
                "  forwarded as: {method} {}://{}{}",
                canon.scheme.as_str(),
                canon.authority(),
                canon.request_target()
            );
            for (name, _) in &rule.spec.set_request_headers {
                println!("  sets header: {name}: <redacted>");
            }
            for name in &rule.spec.remove_response_headers {
                println!("  removes response header: {name}");
            }
            true
        }
        Decision::Denied(reason) => {
            println!("DENIED  {method} {url}");
            println!("  {reason}");
            println!("  the broker answers 403 {{\"error\":\"url is not in allowlist\"}}");
            false
        }
    };
    if !explanation.path_matches.is_empty() {
        println!("  rules whose pattern matches this url:");
        for m in &explanation.path_matches {
            let verdict = match (&m.constraint_failure, m.method_allowed) {
                (_, false) => "method not listed".to_owned(),
                (Some(c), true) => c.clone(),
                (None, true) => "holds".to_owned(),
            };
            println!("    {}: {verdict}", m.rule);
        }
    }
    ExitCode::from(if allowed { 0 } else { 1 })
}
