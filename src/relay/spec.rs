//! The `[outbound]` configuration as validated values: the webhook relay's specification.
//!
//! They live here, not in `config`, so that the relay does not depend on the configuration
//! reader (`config/outbound.rs` reads them and checks them with [`super::Relay::compile`]); like
//! the allowlist's `RuleSpec`. They derive `Serialize` for `dump` and `PartialEq` for the reload
//! diff.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::secret::Secret;

/// A duration as the configuration reader takes it back (`"1m 30s"`).
fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// `[outbound]`: where the SCM posts its webhooks, and where accepted events wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outbound {
    /// TCP address of the webhook listener (kernel TCP, in the customer network).
    pub listen: SocketAddr,
    /// Accepted events wait here, one file each, until the vendor answers 2xx.
    pub spool_dir: PathBuf,
    /// Most bytes the spool may hold; a webhook that would not fit is answered 503.
    pub spool_max: usize,
    /// Largest webhook body accepted (413 above).
    pub max_body: usize,
    /// First retry delay after a failed delivery; doubled per failure up to `retry_max`.
    #[serde(serialize_with = "duration")]
    pub retry_min: Duration,
    #[serde(serialize_with = "duration")]
    pub retry_max: Duration,
    /// Time one delivery attempt may take (connect, send, response head).
    #[serde(serialize_with = "duration")]
    pub delivery_timeout: Duration,
    pub relay: Vec<RelaySpec>,
}

impl Outbound {
    pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/wgbroker/outbound";
    pub const DEFAULT_SPOOL_MAX: usize = 256 << 20;
    /// GitHub's payload cap.
    pub const DEFAULT_MAX_BODY: usize = 25 << 20;
    pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(1);
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
    pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
}

/// How a relay verifies and reads an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookScm {
    Github,
    Gitlab,
    Bitbucket,
    AzureDevops,
    None,
}

/// `[[outbound.relay]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelaySpec {
    /// The SCM posts to `/relay/<name>`.
    pub name: String,
    pub destination_url: String,
    pub scm: WebhookScm,
    /// The webhook secret (GitHub/Bitbucket HMAC key, GitLab token, Azure `user:password`);
    /// serialized as its source, never its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Why the secret could not be read (policy tools only: `secret` is then a placeholder).
    #[serde(skip)]
    pub secret_unavailable: Option<String>,
    /// Event names relayed; empty = every event.
    pub events: Vec<String>,
    /// Globs (the `path_files` dialect) one listed file must match; empty = no file filter.
    pub touches: Vec<String>,
    pub when: Vec<WhenSpec>,
}

pub use crate::allowlist::WhenSpec;
