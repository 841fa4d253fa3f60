//! # wgbroker
//!
//! An outbound-only network broker. It runs inside a customer's private network, dials **out** to
//! a SaaS vendor's WireGuard gateway over UDP, and inside that tunnel serves HTTP/1.1: every request
//! the vendor sends (`METHOD /proxy/<absolute upstream URL>`) is canonicalised, checked against a
//! compiled allowlist, gets the customer's credentials injected locally, and is proxied to the
//! private upstream (GitHub Enterprise, GitLab, Bitbucket Data Center, Azure DevOps, ...).
//!
//! ## Layers
//!
//! The crate is split into **sans-IO cores** that take bytes and time in and hand actions back, and
//! **one runtime seam** that owns threads, io_uring and sockets:
//!
//! | layer | module | does | never does |
//! |---|---|---|---|
//! | configuration | [`config`] | TOML overlay, secrets, validation with every error at once | I/O after load |
//! | keys | [`keys`] | Curve25519 keys in `wg` format | |
//! | allowlist | [`allowlist`] | canonicalise URLs, compile patterns into one trie, decide | allocate per decision |
//! | runtime seam | [`runtime`] | glommio executors, pinning, UDP socket, channels between cores | protocol logic |
//! | front end | [`cli`], [`output`] | `check`, `dump`, `explain`, `genkey`, `pubkey`, ...; printing that ends with a documented status whatever becomes of stdout | panic on a write error |
//! | load testing | [`loadtest`] | the vendor's side under load: closed/open loop, HDR latency, CPU per side | touch the data path it measures |
//!
//! ## Data path
//!
//! ```text
//!  vendor gateway ==WireGuard/UDP==> [tunnel core] --IP packets by flow hash--> [shard 1..N] --> upstream
//!                                    boringtun Tunn  (SPSC channels, buffers     smoltcp TCP,
//!                                    per peer        moved, not copied)          HTTP/1.1, allowlist,
//!                                                   <--IP packets to encrypt--   pools, rustls
//! ```
//!
//! The tunnel core owns the UDP socket and every peer's `Tunn`; it decrypts, checks the inner
//! source address against the peer's allowed IPs, hashes the inner 4-tuple and moves the packet to
//! the shard that owns the flow. Each shard terminates TCP with its own small smoltcp stacks, parses
//! HTTP/1.1 in place, asks the allowlist, rewrites headers and streams to the upstream over a pooled
//! connection. No TCP payload crosses cores.
//!
//! The tunnel core drains its socket with `recvmmsg` and sends what the shards hand back in
//! batches with `sendmmsg`, runs of same-size datagrams to one peer as one UDP GSO send
//! (`runtime::udp`). With one or two CPUs the tunnel core and the single shard share one executor
//! and the channels are local: a cross-core hand-off to a parked executor costs an eventfd write
//! and a membarrier, which on a 2-core VM doubled the CPU per request (see `runtime::placement`).
//!
//! Only [`runtime`] imports glommio; every other module runs in a plain `#[test]` and a criterion
//! benchmark without io_uring.

pub mod admin;
pub mod allowlist;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod keys;
pub mod loadtest;
pub mod netstack;
pub mod notify;
pub mod output;
pub mod packet;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
pub mod testkit;
pub mod tunnel;
pub mod upstream;

/// Internals that `benches/` measure directly. Not an API: nothing outside this crate's own
/// benchmarks may depend on it, and it changes without notice.
#[doc(hidden)]
pub mod bench_support {
    /// The packet links between the tunnel core and a shard (`runtime::link`): what
    /// `benches/hotpath/handoff.rs` times.
    pub mod link {
        pub use crate::runtime::link::{Msg, Rx, RxEnd, Tx, TxEnd, local, shared};
    }

    use crate::allowlist::RuleSpec;
    use crate::allowlist::scm::{self, ScmKind};
    use crate::secret::Secret;

    /// The built-in rules of four SCMs with code access (GitHub Enterprise, GitLab, Bitbucket
    /// Data Center, Azure DevOps at example bases): what a typical broker runs. Shared by the
    /// allowlist and hot-path benches and the `url_match` fuzz target.
    pub fn four_scm_rules() -> Vec<RuleSpec> {
        let token = Secret::new("token");
        let entries = [
            (ScmKind::Github, "https://ghe.example.com/api/v3"),
            (ScmKind::Gitlab, "https://gitlab.example.com/api/v4"),
            (
                ScmKind::Bitbucket,
                "https://bitbucket.example.com/rest/api/latest",
            ),
            (ScmKind::Azuredevops, "https://dev.azure.com"),
        ];
        let mut specs = Vec::new();
        for (i, (kind, base)) in entries.into_iter().enumerate() {
            specs.extend(
                scm::rules(kind, i, base, Some(&token), true)
                    .expect("the example bases are valid URLs"),
            );
        }
        specs
    }
}
