//! Log output: structured events (`event = "..."` fields) as text or JSON on stderr.
//!
//! Invariant: nothing here formats configuration values; call sites log event names, counts,
//! addresses and ids only, and secrets are carried as [`crate::secret::Secret`], which never
//! prints.

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Installs the global subscriber for `[log]`. `RUST_LOG` overrides the level when set.
pub fn init(log: &Log) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("wgbroker={},warn", log.level)));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text | LogFormat::Journald => false,
        // Under systemd stderr goes to the journal: plain lines; elsewhere text for humans.
        LogFormat::Auto => false,
    };
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests, demo inside a test) keeps the first subscriber.
    let _ = result;
}
