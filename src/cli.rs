//! The command line: thin commands over the library.
//!
//! Exit codes are part of the interface: `explain` exits 0 (allowed), 1 (denied) or 2 (rejected
//! as malformed); every command exits [`EXIT_USAGE`] on a usage error and [`EXIT_CONFIG`] when the
//! configuration is invalid. `run` and `check` share [`crate::service::prepare`] and give its
//! errors the same status: [`EXIT_CONFIG`], [`EXIT_OS`] (the host) or [`EXIT_TEMPFAIL`].
//!
//! The exit statuses live here and only here: the modules below answer with typed errors
//! ([`crate::runtime::StartError`] and its cause, [`crate::service::Error`],
//! [`crate::loadtest::Error`], [`crate::output::finish`]) that this module maps.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::allowlist::{CanonUrl, Decision};
use crate::config::{self, LoadMode, ProcessEnv};
use crate::keys::PrivateKey;
use crate::output::{err, errln, outln};
use crate::runtime::{Cause, Purpose};
use crate::service;

/// Usage error (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Invalid input data, such as a malformed key on stdin (`EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;
/// An input file cannot be read, e.g. `loadtest --private-key-file` (`EX_NOINPUT`).
pub const EXIT_NOINPUT: u8 = 66;
/// Invalid configuration (`EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;
/// The host cannot run the broker: io_uring, the locked-memory limit (`EX_OSERR`); also a
/// failing random source for `genkey`. Permanent until the host changes.
pub const EXIT_OS: u8 = 71;
/// Standard output could not be written, other than a closed pipe (`EX_IOERR`): a full disk,
/// an I/O error. See [`crate::output`].
pub const EXIT_IOERR: u8 = 74;
/// The broker failed while running, e.g. an executor that stopped with an error (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: u8 = 70;
/// Could not start now, may on a later try: an address in use or not assigned, no thread or
/// socket to be had (`EX_TEMPFAIL`). The only start failure the systemd unit restarts on.
pub const EXIT_TEMPFAIL: u8 = 75;

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
    Demo {
        /// Instead: a `wgbroker gateway` with one tenant on two brokers, and one of them
        /// failing over.
        #[arg(long)]
        gateway: bool,
    },
    /// Print a new private key (base64, like `wg genkey`).
    Genkey,
    /// Read a private key on stdin, print its public key (like `wg pubkey`).
    Pubkey,
    /// Run the broker: dial the gateway, serve HTTP inside the tunnel (stops on SIGINT/SIGTERM).
    Run(ConfigArgs),
    /// Run the vendor's gateway: terminate many tenants' brokers (several per tenant) and
    /// forward `METHOD /t/<tenant>/proxy/<URL>` from the front door to a healthy one.
    Gateway(ConfigArgs),
    /// Validate the configuration and report every problem at once, then check the host: the
    /// io_uring sysctl, the locked-memory limit, an io_uring executor, and the UDP buffers the
    /// kernel will grant.
    ///
    /// Exit status: 0 ready to run (warnings on stderr), 78 configuration errors, 71 the host
    /// cannot run the broker.
    Check(ConfigArgs),
    /// Print the merged configuration and generated rules, secrets redacted.
    Dump(ConfigArgs),
    /// Print a Semgrep Network Broker configuration (YAML, with any overlays) as wgbroker TOML,
    /// with a comment wherever a value was translated. The output holds the input's secrets,
    /// unless `--secrets-dir` moves each into a file of its own.
    ///
    /// Exit status: 0 printed, 73 a secret file exists, 74 a secret file cannot be written,
    /// 78 the input does not validate.
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        /// Write each inline secret (private key, pre-shared keys, tokens, header values, relay
        /// secrets) to its own file in DIR (created 0700; files 0600, never overwritten) and
        /// print `{ file = "DIR/..." }` in its place.
        #[arg(long, value_name = "DIR")]
        secrets_dir: Option<PathBuf>,
    },
    /// Write a first configuration and private key from what the vendor gave (asked for, or
    /// taken from flags), print the public key to give the vendor, then run `test`.
    ///
    /// Exit status: 0 written and every test passed, 1 written but a test failed, 64 a value is
    /// missing or malformed, 73 a file exists (use --force), 74, 78 the result would not validate.
    Init(Box<crate::onboard::init::Args>),
    /// Check from this host what the broker needs: the gateway name, a WireGuard handshake
    /// within 5 s, the heartbeat, each SCM with its token; one line per check with its fix.
    ///
    /// Exit status: 0 every check passed, 1 otherwise.
    Test {
        #[command(flatten)]
        config: ConfigArgs,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say whether a request would be allowed, and by which rule.
    ///
    /// Exit status: 0 allowed, 1 denied, 2 rejected as malformed.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// HTTP method, e.g. GET; case-sensitive, as on the wire (`get` is not `GET`).
        method: String,
        /// Absolute upstream URL, as the vendor would send it after `/proxy/`.
        url: String,
        /// A request header `Name: value` the request carries (repeatable).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The request body, `@FILE`, for rules with `[[allow.body]]` constraints.
        #[arg(long = "body", value_name = "@FILE")]
        body: Option<String>,
    },
    /// Say which `[[outbound.relay]]` and which filter decide a webhook payload (a body file,
    /// or an event from the spool), and whether its signature holds.
    ///
    /// Exit status: 0 relayed, 1 filtered out, 2 refused.
    ExplainWebhook {
        #[command(flatten)]
        config: ConfigArgs,
        /// The relay (default: the directory of a spooled event).
        #[arg(long)]
        relay: Option<String>,
        /// A request header `Name: value` the webhook carries (repeatable).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The payload: a body as sent, or a spooled `.evt` file.
        file: PathBuf,
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

/// Runs the command line; the binary's `main` is only this. Whatever became of standard output,
/// the exit status is the command's (or [`EXIT_IOERR`]), never a panic: see [`crate::output`].
pub fn main() -> ExitCode {
    let status = command();
    ExitCode::from(match crate::output::finish() {
        Ok(()) => status,
        Err(e) => {
            errln!("wgbroker: cannot write to standard output: {e}");
            EXIT_IOERR
        }
    })
}

/// Runs the command the arguments name; returns its exit status.
fn command() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let printed = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => match printed
                {
                    Err(w) if w.kind() != std::io::ErrorKind::BrokenPipe => {
                        errln!("wgbroker: cannot write to standard output: {w}");
                        EXIT_IOERR
                    }
                    _ => 0,
                },
                _ => EXIT_USAGE,
            };
        }
    };
    match cli.command {
        Command::Demo { gateway: false } => crate::demo::run(),
        Command::Demo { gateway: true } => crate::demo_gateway::run(),
        Command::Genkey => genkey(),
        Command::Pubkey => pubkey(),
        Command::Run(args) => run(&args.files),
        Command::Gateway(args) => gateway(&args.files),
        Command::Check(args) => check(&args.files),
        Command::Dump(args) => dump(&args.files),
        Command::Import {
            config,
            secrets_dir,
        } => import(&config.files, secrets_dir.as_deref()),
        Command::Init(args) => init(&args),
        Command::Test { config, json } => u8::from(!crate::onboard::run_test(
            &config.files,
            json,
            &mut crate::onboard::Stdout,
        )),
        Command::Explain {
            config,
            method,
            url,
            headers,
            body,
        } => explain(&config.files, &method, &url, &headers, body.as_deref()),
        Command::ExplainWebhook {
            config,
            relay,
            headers,
            file,
        } => explain_webhook(&config.files, relay.as_deref(), &headers, &file),
        Command::Loadtest(args) => loadtest(*args),
        Command::Relay(args) => match crate::testkit::relay::run(&args) {
            Ok(()) => 0,
            Err(crate::testkit::relay::Failure::Usage) => EXIT_USAGE,
            Err(crate::testkit::relay::Failure::Os) => EXIT_OS,
        },
    }
}

/// `wgbroker run`: loads the configuration and runs the broker as a service
/// ([`crate::service::run`]) until a signal stops it.
fn run(files: &[PathBuf]) -> u8 {
    let loaded = match config::load(files, LoadMode::Full, &ProcessEnv) {
        Ok(l) => l,
        Err(errors) => {
            err!("{errors}");
            return EXIT_CONFIG;
        }
    };
    print_warnings(&loaded.warnings);
    crate::telemetry::init(&loaded.config.log);
    let reload = || config::load(files, LoadMode::Full, &ProcessEnv);
    match service::run(loaded, reload) {
        Ok(()) => 0,
        Err(service::Error::Start(e)) => cannot_start(e.cause(), &e),
        // A thread for the admin listener: may be had on a later try.
        Err(e @ service::Error::Admin { .. }) => cannot_start(Cause::Temporary, &e),
        Err(e @ service::Error::Signals(_)) => {
            errln!("wgbroker: {e}");
            EXIT_TEMPFAIL
        }
        Err(e @ service::Error::Stopped(_)) => {
            errln!("wgbroker: {e}");
            EXIT_SOFTWARE
        }
    }
}

/// Reports why the broker cannot start (`run`) or would not (`check`), and the status that says
/// whether trying again can help.
fn cannot_start(cause: Cause, e: &dyn std::fmt::Display) -> u8 {
    let (what, code) = match cause {
        Cause::Config => ("configuration", EXIT_CONFIG),
        Cause::Host => ("host", EXIT_OS),
        Cause::Temporary => ("cannot start now", EXIT_TEMPFAIL),
    };
    errln!("wgbroker: {what}: {e}");
    code
}

/// `wgbroker loadtest`: the load test's outcome or error as the exit status.
fn loadtest(args: crate::loadtest::Args) -> u8 {
    use crate::loadtest::Finished;
    match crate::loadtest::run(args) {
        Ok(Finished::Measured) => 0,
        Ok(Finished::NothingCompleted) => 1,
        Err(e) => {
            errln!("wgbroker loadtest: {e}");
            loadtest_status(e.kind())
        }
    }
}

/// The exit status of a load test that failed with `kind`.
fn loadtest_status(kind: crate::loadtest::ErrorKind) -> u8 {
    use crate::loadtest::ErrorKind;
    match kind {
        ErrorKind::Usage => EXIT_USAGE,
        ErrorKind::Data => EXIT_DATA,
        ErrorKind::NoInput => EXIT_NOINPUT,
        ErrorKind::Config => EXIT_CONFIG,
        ErrorKind::Os => EXIT_OS,
        // No handshake, drivers that failed: the measurement did not happen.
        ErrorKind::NotReady => 1,
    }
}

fn genkey() -> u8 {
    match PrivateKey::generate() {
        Ok(k) => {
            outln!("{}", k.to_base64());
            0
        }
        Err(e) => {
            errln!("wgbroker: {e}");
            EXIT_OS
        }
    }
}

fn pubkey() -> u8 {
    let mut input = String::new();
    // Like `wg pubkey`, read at most a little more than one key.
    if std::io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .is_err()
    {
        errln!("wgbroker: cannot read a key from standard input");
        return EXIT_DATA;
    }
    match PrivateKey::from_base64(&input) {
        Ok(k) => {
            outln!("{}", k.public_key());
            0
        }
        Err(e) => {
            errln!("wgbroker: {e}");
            EXIT_DATA
        }
    }
}

fn print_warnings(w: &[config::ConfigError]) {
    for w in w {
        errln!("warning: {w}");
    }
}

/// Reads the configuration files once (one may be a pipe), or prints why not.
fn read_layers(files: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, u8> {
    config::read_layers(files).map_err(|errors| {
        err!("{errors}");
        EXIT_CONFIG
    })
}

fn check(files: &[PathBuf]) -> u8 {
    let layers = match read_layers(files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if config::gateway::declares_gateway(&layers) {
        return gateway_check(&layers);
    }
    match config::load_str(&layers, LoadMode::Full, &ProcessEnv) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let c = &loaded.config;
            outln!(
                "configuration OK: {} peer(s), {} rule(s) ({} user, {} generated from {} SCM entr{}), inbound port {}",
                c.wireguard.peers.len(),
                loaded.allowlist.rules().len(),
                c.allow.len(),
                loaded.allowlist.rules().len() - c.allow.len(),
                c.scm.len(),
                if c.scm.len() == 1 { "y" } else { "ies" },
                c.inbound.listen_port,
            );
            outln!(
                "broker public key: {}",
                c.wireguard.private_key.public_key()
            );
            // Everything `run` does before it starts an executor, on the same code.
            match service::prepare(&loaded, Purpose::Check) {
                Ok(service::Prepared {
                    runtime: prepared, ..
                }) => {
                    outln!(
                        "host OK: io_uring available, locked-memory limit sufficient; CPUs, \
                         peers, CA files, proxy settings and sockets usable"
                    );
                    for f in &prepared.udp_shortfalls {
                        errln!("warning: {f}");
                    }
                    for f in &prepared.bind_warnings {
                        errln!("warning: {f}");
                    }
                    0
                }
                Err(e) => cannot_start(e.cause(), &e),
            }
        }
        Err(errors) => {
            err!("{errors}");
            EXIT_CONFIG
        }
    }
}

fn dump(files: &[PathBuf]) -> u8 {
    let layers = match read_layers(files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if config::gateway::declares_gateway(&layers) {
        return gateway_dump(&layers);
    }
    match config::load_str(&layers, LoadMode::Policy, &ProcessEnv) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let out = config::dump::render(&loaded.config);
            crate::output::write_out_bytes(out.as_bytes());
            0
        }
        Err(errors) => {
            err!("{errors}");
            EXIT_CONFIG
        }
    }
}

/// A file `init` would overwrite exists (`EX_CANTCREAT`).
pub const EXIT_CANTCREAT: u8 = 73;

/// `wgbroker init`: the outcome as the exit status.
fn init(args: &crate::onboard::init::Args) -> u8 {
    use crate::onboard::init::Outcome;
    let mut stdin = std::io::stdin().lock();
    match crate::onboard::init::run(args, &mut stdin, &mut crate::onboard::Stdout) {
        Outcome::Written { test_passed } => u8::from(test_passed == Some(false)),
        Outcome::Usage(m) => {
            errln!("wgbroker init: {m}");
            EXIT_USAGE
        }
        Outcome::Exists(p) => {
            errln!(
                "wgbroker init: {} exists; not overwritten (use --force)",
                p.display()
            );
            EXIT_CANTCREAT
        }
        Outcome::Config(errors) => {
            err!("{errors}");
            EXIT_CONFIG
        }
        Outcome::Io(m) => {
            errln!("wgbroker init: {m}");
            EXIT_IOERR
        }
    }
}

/// `wgbroker import`: the equivalent TOML on standard output (its inline secrets moved to
/// files in `secrets_dir`, when given).
fn import(files: &[PathBuf], secrets_dir: Option<&std::path::Path>) -> u8 {
    use config::semgrep::SecretsOut;
    let (toml, warnings) = match secrets_dir {
        None => config::semgrep::import(files, &ProcessEnv),
        Some(dir) => match config::semgrep::import_with_secret_files(files, &ProcessEnv, dir) {
            Ok(r) => Ok(r),
            Err(SecretsOut::Config(e)) => Err(e),
            Err(SecretsOut::Exists(path)) => {
                err!(
                    "{} exists: a secret file is never overwritten (choose another --secrets-dir, or remove it)",
                    path.display()
                );
                return EXIT_CANTCREAT;
            }
            Err(SecretsOut::Write(path, e)) => {
                err!("cannot write {}: {e}", path.display());
                return EXIT_IOERR;
            }
        },
    }
    .map_or_else(|errors| (Err(errors), Vec::new()), |(t, w)| (Ok(t), w));
    match toml {
        Ok(toml) => {
            print_warnings(&warnings);
            crate::output::write_out_bytes(toml.as_bytes());
            0
        }
        Err(errors) => {
            err!("{errors}");
            EXIT_CONFIG
        }
    }
}

fn explain(
    files: &[PathBuf],
    method: &str,
    raw_url: &str,
    raw_headers: &[String],
    body: Option<&str>,
) -> u8 {
    let shown = crate::secret::redact_userinfo(raw_url);
    let url = shown.as_str();
    let loaded = match config::load(files, LoadMode::Policy, &ProcessEnv) {
        Ok(l) => l,
        Err(errors) => {
            err!("{errors}");
            return EXIT_CONFIG;
        }
    };
    print_warnings(&loaded.warnings);
    let pairs = match header_args(raw_headers) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let headers: Vec<httparse::Header<'_>> = pairs
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    // The wire's own method parser: case-sensitive, a token, never CONNECT. A method the broker
    // would answer 400 to is malformed here too (shown with `{:?}`: it may hold anything).
    if let Err(e) = crate::http::parse_method(method) {
        outln!("MALFORMED  {method:?} {url}");
        outln!("  rejected before matching: {e}");
        outln!("  the broker answers 400 and nothing reaches an upstream");
        return 2;
    }
    let canon = match CanonUrl::parse(raw_url) {
        Ok(c) => c,
        Err(e) => {
            outln!("MALFORMED  {method} {url}");
            outln!("  rejected before matching: {e}");
            outln!("  the broker answers 400 and nothing reaches an upstream");
            return 2;
        }
    };
    let explanation = loaded.allowlist.explain(method, &canon, &headers);
    let allowed = match &explanation.decision {
        Decision::Allowed { rule_id, rule } => {
            outln!("ALLOWED  {method} {url}");
            outln!("  rule #{rule_id}: {}", rule.spec.origin);
            outln!("  pattern: {} {:?}", rule.spec.url, rule.spec.methods);
            outln!(
                "  forwarded as: {method} {}://{}{}",
                canon.scheme.as_str(),
                canon.authority(),
                canon.request_target()
            );
            for (name, _) in &rule.spec.set_request_headers {
                outln!("  sets header: {name}: <redacted>");
            }
            if let Some(p) = &rule.spec.token_pool {
                outln!(
                    "  sets header: {}: <redacted> (one of a pool of {} tokens, round-robin)",
                    p.header(),
                    p.values().len()
                );
            }
            for name in &rule.spec.remove_response_headers {
                outln!("  removes response header: {name}");
            }
            match explain_body(rule, body) {
                Ok(allowed) => allowed,
                Err(code) => return code,
            }
        }
        Decision::Denied(reason) => {
            outln!("DENIED  {method} {url}");
            outln!("  {reason}");
            outln!("  the broker answers 403 {{\"error\":\"url is not in allowlist\"}}");
            false
        }
    };
    if !explanation.path_matches.is_empty() {
        outln!("  rules whose pattern matches this url:");
        for m in &explanation.path_matches {
            let verdict = match (&m.constraint_failure, m.method_allowed) {
                (_, false) => "method not listed".to_owned(),
                (Some(c), true) => c.clone(),
                (None, true) => "holds".to_owned(),
            };
            outln!("    {}: {verdict}", m.rule);
        }
    }
    if allowed { 0 } else { 1 }
}

/// The `-H 'Name: value'` arguments of `explain` and `explain-webhook` as trimmed (name, value)
/// pairs; `Err` is the usage exit status, after saying which argument has no colon.
fn header_args(raw: &[String]) -> Result<Vec<(String, String)>, u8> {
    let mut pairs = Vec::with_capacity(raw.len());
    for (i, h) in raw.iter().enumerate() {
        let Some((n, v)) = h.split_once(':') else {
            // Not echoed: a header argument is as likely as not to carry a credential.
            errln!(
                "wgbroker: -H argument {} is not `Name: value` (no colon)",
                i + 1
            );
            return Err(EXIT_USAGE);
        };
        pairs.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(pairs)
}

/// `wgbroker explain-webhook`: see [`crate::relay::explain`].
fn explain_webhook(files: &[PathBuf], relay: Option<&str>, raw: &[String], file: &PathBuf) -> u8 {
    let loaded = match config::load(files, LoadMode::Policy, &ProcessEnv) {
        Ok(l) => l,
        Err(errors) => {
            err!("{errors}");
            return EXIT_CONFIG;
        }
    };
    print_warnings(&loaded.warnings);
    let Some(outbound) = &loaded.config.outbound else {
        errln!("wgbroker: the configuration has no [outbound] section");
        return EXIT_CONFIG;
    };
    let relays = match crate::relay::Relays::compile(outbound) {
        Ok(r) => r,
        Err(e) => {
            errln!("wgbroker: {}", e.join("\n"));
            return EXIT_CONFIG;
        }
    };
    let headers: Vec<(String, Vec<u8>)> = match header_args(raw) {
        Ok(p) => p.into_iter().map(|(n, v)| (n, v.into_bytes())).collect(),
        Err(code) => return code,
    };
    let payload = match std::fs::read(file) {
        Ok(p) => p,
        Err(e) => {
            errln!("wgbroker: cannot read {}: {e}", file.display());
            return EXIT_NOINPUT;
        }
    };
    let spool_relay = file
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    let x = crate::relay::explain::explain(&relays, relay, spool_relay, &payload, &headers);
    for line in &x.lines {
        outln!("{line}");
    }
    x.status
}

/// The `[[allow.body]]` part of `explain`: whether `body` (`@FILE`) satisfies the rule's body
/// constraints. `Err` is an exit status (the file cannot be read, or is not given as `@FILE`).
fn explain_body(rule: &crate::allowlist::Rule, body: Option<&str>) -> Result<bool, u8> {
    if !rule.checks_body() {
        return Ok(true);
    }
    let Some(arg) = body else {
        outln!("  body: the rule checks the request body ([[allow.body]]); pass --body @FILE");
        return Ok(true);
    };
    let Some(path) = arg.strip_prefix('@') else {
        errln!("wgbroker: --body takes @FILE");
        return Err(EXIT_USAGE);
    };
    let bytes = std::fs::read(path).map_err(|e| {
        errln!("wgbroker: cannot read {path}: {e}");
        EXIT_NOINPUT
    })?;
    match rule.check_body(&bytes) {
        Ok(()) => {
            outln!("  body: every [[allow.body]] constraint holds");
            Ok(true)
        }
        Err(reason) => {
            outln!("  body: DENIED {reason}");
            outln!("  the broker answers 403 {{\"error\":\"request body is not allowed\"}}");
            Ok(false)
        }
    }
}

/// `check` on a gateway configuration (`[gateway]`, `[[tenant]]`): every problem at once, then
/// what the brokers need to know.
fn gateway_check(layers: &[(PathBuf, String)]) -> u8 {
    match config::gateway::load_str(layers, LoadMode::Full, &ProcessEnv) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let c = &loaded.config;
            outln!(
                "gateway configuration OK: {} tenant(s), {} broker(s), front door {}",
                c.tenant.len(),
                c.brokers().count(),
                c.gateway.front,
            );
            outln!("gateway public key: {}", c.gateway.private_key.public_key());
            0
        }
        Err(errors) => {
            err!("{errors}");
            EXIT_CONFIG
        }
    }
}

/// `dump` on a gateway configuration, secrets as their sources.
fn gateway_dump(layers: &[(PathBuf, String)]) -> u8 {
    match config::gateway::load_str(layers, LoadMode::Policy, &ProcessEnv) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let out = config::gateway::render(&loaded.config);
            crate::output::write_out_bytes(out.as_bytes());
            0
        }
        Err(errors) => {
            err!("{errors}");
            EXIT_CONFIG
        }
    }
}

/// `wgbroker gateway`: loads a gateway configuration and runs it until a signal stops it.
fn gateway(files: &[PathBuf]) -> u8 {
    let loaded = match config::gateway::load(files, LoadMode::Full, &ProcessEnv) {
        Ok(l) => l,
        Err(errors) => {
            err!("{errors}");
            return EXIT_CONFIG;
        }
    };
    print_warnings(&loaded.warnings);
    crate::telemetry::init(&loaded.config.log);
    match crate::gateway_service::run(loaded, files) {
        Ok(()) => 0,
        Err(e) => {
            errln!("wgbroker gateway: {e}");
            EXIT_TEMPFAIL
        }
    }
}
