//! Log output: structured events (`event = "..."` fields) as text, JSON or journald.
//!
//! `[log] format = "auto"` picks journald when the process runs under systemd with its output
//! connected to the journal (`JOURNAL_STREAM` set), text on a terminal, JSON otherwise (a log
//! shipper reads it). When journald is chosen but its socket cannot be reached, the broker falls
//! back to text on stderr and says so.
//!
//! Invariant: nothing here formats configuration values; call sites log event names, counts,
//! addresses and ids only, and secrets are carried as [`crate::secret::Secret`], which never
//! prints.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Log, LogFormat};

/// The concrete output for `[log] format` in this environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Journald,
}

/// Resolves `auto`: journald under systemd's journal, text on a terminal, JSON otherwise.
pub fn choose(format: LogFormat, journal_stream: bool, terminal: bool) -> Output {
    match format {
        LogFormat::Text => Output::Text,
        LogFormat::Json => Output::Json,
        LogFormat::Journald => Output::Journald,
        LogFormat::Auto if journal_stream => Output::Journald,
        LogFormat::Auto if terminal => Output::Text,
        LogFormat::Auto => Output::Json,
    }
}

fn filter(log: &Log) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("wgbroker={},warn", log.level)))
}

/// Installs the global subscriber for `[log]`. `RUST_LOG` overrides the level when set. A second
/// call (tests, `demo` inside a test) keeps the first subscriber.
pub fn init(log: &Log) {
    let terminal = std::io::stderr().is_terminal();
    let output = choose(
        log.format,
        std::env::var_os("JOURNAL_STREAM").is_some(),
        terminal,
    );
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(terminal)
            .with_target(false)
    };
    match output {
        Output::Journald => match tracing_journald::layer() {
            Ok(journald) => {
                let _ = tracing_subscriber::registry()
                    .with(filter(log))
                    .with(journald.with_syslog_identifier("wgbroker".into()))
                    .try_init();
            }
            Err(e) => {
                let _ = tracing_subscriber::registry()
                    .with(filter(log))
                    .with(text())
                    .try_init();
                tracing::warn!(event = "log.journald_unavailable", error = %e, fallback = "text");
            }
        },
        Output::Json => {
            let _ = tracing_subscriber::registry()
                .with(filter(log))
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::io::stderr)
                        .with_target(false),
                )
                .try_init();
        }
        Output::Text => {
            let _ = tracing_subscriber::registry()
                .with(filter(log))
                .with(text())
                .try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_journald_under_systemd_text_on_a_terminal_json_otherwise() {
        assert_eq!(choose(LogFormat::Auto, true, false), Output::Journald);
        assert_eq!(choose(LogFormat::Auto, true, true), Output::Journald);
        assert_eq!(choose(LogFormat::Auto, false, true), Output::Text);
        assert_eq!(choose(LogFormat::Auto, false, false), Output::Json);
        // An explicit choice wins everywhere.
        assert_eq!(choose(LogFormat::Text, true, false), Output::Text);
        assert_eq!(choose(LogFormat::Json, true, true), Output::Json);
        assert_eq!(choose(LogFormat::Journald, false, true), Output::Journald);
    }
}
