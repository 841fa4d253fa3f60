//! Log output: structured events (`event = "..."` fields) as text, JSON or journald.
//!
//! `[log] format = "auto"` picks journald when the process runs under systemd with its output
//! connected to the journal (`JOURNAL_STREAM` set), text on a terminal, JSON otherwise (a log
//! shipper reads it). When journald is chosen but its socket cannot be reached, the broker falls
//! back to text on stderr and says so.
//!
//! Invariants:
//! * Every line is one of the broker's own events: a record of this crate with an `event` field
//!   ([`own_event`]). Dependencies' records are dropped whatever `RUST_LOG` says — boringtun
//!   logs through `tracing` (`HANDSHAKE(REKEY_TIMEOUT)` every 5 s while a gateway does not
//!   answer), smoltcp and rustls through `log` (bridged into `tracing` by tracing-log). Where
//!   such a condition matters, the code that sees it logs an event of ours instead
//!   (`wireguard.handshake_timeout` from the peer table's [`crate::tunnel::PeerEvent`]).
//! * A condition that can repeat for as long as an outage lasts is logged through a
//!   [`LogThrottle`]: its first occurrence, then at most one line per [`REPEAT_INTERVAL`] that
//!   says how many were suppressed.
//! * Nothing here formats configuration values; call sites log event names, counts, addresses
//!   and ids only, and secrets are carried as [`crate::secret::Secret`], which never prints.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

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
        .unwrap_or_else(|_| EnvFilter::new(format!("wgbroker={}", log.level)))
}

/// The output layer (text, JSON or journald), boxed so that a reload can swap one for another.
type OutputLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
type OutputHandle = tracing_subscriber::reload::Handle<OutputLayer, tracing_subscriber::Registry>;
/// What the level filter sits on: the registry with the (reloadable) output layer.
type WithOutput = tracing_subscriber::layer::Layered<
    tracing_subscriber::reload::Layer<OutputLayer, tracing_subscriber::Registry>,
    tracing_subscriber::Registry,
>;
type LevelHandle = tracing_subscriber::reload::Handle<EnvFilter, WithOutput>;

/// The handles that change the level and the output of the installed subscriber
/// ([`set_level`], [`set_format`]), and the output in use.
static LEVEL: std::sync::OnceLock<LevelHandle> = std::sync::OnceLock::new();
static OUTPUT: std::sync::OnceLock<(OutputHandle, std::sync::Mutex<Output>)> =
    std::sync::OnceLock::new();

/// Applies `[log] level` to the running subscriber (a reload); `RUST_LOG`, when set, still
/// wins. Returns whether a subscriber installed by [`init`] took it.
pub fn set_level(log: &Log) -> bool {
    LEVEL.get().is_some_and(|h| h.reload(filter(log)).is_ok())
}

/// Applies `[log] format` to the running subscriber (a reload): lines from then on are written
/// in the new format (`auto` resolved as at start). Returns whether the output changed.
pub fn set_format(log: &Log) -> bool {
    let Some((handle, current)) = OUTPUT.get() else {
        return false;
    };
    let Ok(mut current) = current.lock() else {
        return false;
    };
    let (layer, output, fallback) = output_layer(log.format);
    if output == *current {
        return false;
    }
    if handle.reload(layer).is_err() {
        return false;
    }
    *current = output;
    if let Some(e) = fallback {
        tracing::warn!(event = "log.journald_unavailable", error = %e, fallback = "text");
    }
    true
}

/// The output layer for `format` in this environment, what it is, and why journald (when chosen)
/// fell back to text.
fn output_layer(format: LogFormat) -> (OutputLayer, Output, Option<std::io::Error>) {
    let terminal = std::io::stderr().is_terminal();
    let text = || -> OutputLayer {
        Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(terminal)
                .with_target(false),
        )
    };
    match choose(
        format,
        std::env::var_os("JOURNAL_STREAM").is_some(),
        terminal,
    ) {
        Output::Journald => match tracing_journald::layer() {
            Ok(j) => (
                Box::new(j.with_syslog_identifier("wgbroker".into())),
                Output::Journald,
                None,
            ),
            Err(e) => (text(), Output::Text, Some(e)),
        },
        Output::Json => (
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_target(false),
            ),
            Output::Json,
            None,
        ),
        Output::Text => (text(), Output::Text, None),
    }
}

/// Whether a record is one of the broker's own events: emitted by this crate and, for an event,
/// carrying an `event` field. Decided from static metadata, so `tracing` caches it per call site.
pub fn own_event(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let ours = target == "wgbroker" || target.starts_with("wgbroker::");
    ours && (!meta.is_event() || meta.fields().field("event").is_some())
}

/// The [`own_event`] filter as a layer.
fn own_events_only<S: tracing::Subscriber>() -> impl tracing_subscriber::Layer<S> {
    tracing_subscriber::filter::filter_fn(own_event)
}

/// The shortest interval between two lines of one repeating condition.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Rate limit for a log line that repeats while a condition lasts (a gateway that does not answer,
/// a failing heartbeat): the first occurrence is logged, then at most one per interval, carrying
/// how many were suppressed in between. Sans-IO: time comes in as `now`.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `every` (see [`REPEAT_INTERVAL`]).
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One occurrence at `now`: `Some(suppressed)` when it is to be logged, with the number of
    /// occurrences suppressed since the previous logged one; `None` when it is suppressed.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The condition is over: its next occurrence is logged at once. Returns how many
    /// occurrences were suppressed since the last logged one.
    pub fn reset(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.suppressed)
    }
}

/// Installs the global subscriber for `[log]`. `RUST_LOG` overrides the level when set. A second
/// call (tests, `demo` inside a test) keeps the first subscriber. The level and the output can
/// be changed later ([`set_level`], [`set_format`]). The level filter and the own-events filter
/// are global filters (they decide for the whole subscriber whatever their place in the stack),
/// so the output layer can sit first, directly on the registry, where a reload can swap it.
pub fn init(log: &Log) {
    let (layer, output, fallback) = output_layer(log.format);
    let (output_layer, output_handle) = tracing_subscriber::reload::Layer::new(layer);
    let (level_layer, level_handle) = tracing_subscriber::reload::Layer::new(filter(log));
    let installed = tracing_subscriber::registry()
        .with(output_layer)
        .with(level_layer)
        .with(own_events_only())
        .try_init()
        .is_ok();
    if installed {
        let _ = LEVEL.set(level_handle);
        let _ = OUTPUT.set((output_handle, std::sync::Mutex::new(output)));
    }
    if let Some(e) = fallback {
        tracing::warn!(event = "log.journald_unavailable", error = %e, fallback = "text");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_line_is_logged_first_then_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = LogThrottle::new(REPEAT_INTERVAL);
        assert_eq!(t.admit(t0), Some(0), "the first occurrence is logged");
        for i in 1..12 {
            // One every 5 s (boringtun's REKEY_TIMEOUT) for the rest of the minute.
            assert_eq!(t.admit(t0 + s(5 * i)), None, "at {} s", 5 * i);
        }
        assert_eq!(
            t.admit(t0 + s(60)),
            Some(11),
            "one line a minute, with the count"
        );
        assert_eq!(t.admit(t0 + s(65)), None);
        assert_eq!(t.reset(), 1, "the condition ended with one suppressed");
        assert_eq!(
            t.admit(t0 + s(70)),
            Some(0),
            "a new outage is logged at once"
        );
    }

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
