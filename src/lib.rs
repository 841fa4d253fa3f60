//! # wgbroker
//!
//! An outbound-only network broker. It runs inside a customer's private network, dials **out** to
//! a SaaS vendor's WireGuard gateway over UDP, and inside that tunnel serves HTTP/1.1: every request
//! the vendor sends (`METHOD /proxy/<absolute upstream URL>`) is canonicalised, checked against a
//! compiled allowlist, gets the customer's credentials injected locally, and is proxied to the
//! private upstream (GitHub Enterprise, GitLab, Bitbucket Data Center, Azure DevOps, ...).
//!
//! ## The crate map
//!
//! The crate is split into **sans-IO cores** that take bytes and time in and hand actions back,
//! **one runtime seam** that owns threads, io_uring and sockets, the **application** that runs
//! the broker as a service and as a command line, and — apart, about a fifth of `src/` — the
//! **tools** that play the vendor's side. The modules are declared in these four groups.
//!
//! | layer | module | where it happens |
//! |---|---|---|
//! | core | [`config`] | reading the TOML files: overlay, secrets, validation with every error at once, `dump` |
//! | core | [`secret`] | secret values that never print themselves; credentials redacted from URLs |
//! | core | [`keys`] | Curve25519 keys in `wg` format |
//! | core | [`allowlist`] | the decision: URL canonicalisation, patterns compiled into one trie, SCM rule tables |
//! | core | [`relay`] | webhooks from the SCM to the vendor: verification, filters, the spool, back-off, the answers |
//! | core | [`packet`] | packet buffers that move between cores, and the flow hash that picks a shard |
//! | core | [`tunnel`] | WireGuard: one boringtun `Tunn` per peer, handshakes, decrypt/encrypt, allowed IPs |
//! | core | [`netstack`] | TCP inside the tunnel: a shard's smoltcp stacks, accept, per-connection buffers |
//! | core | [`gateway`] | the vendor's gateway: routing front-door requests, balancing and health of many tenants' brokers, the pool of kept-alive connections to them |
//! | core | [`http`] | HTTP/1.1 wire format: request heads parsed in place, chunked bodies, response heads |
//! | core | [`server`] | one tunnel connection's exchanges: parse, decide, rewrite, proxy (`server::proxy`), drain |
//! | core | [`upstream`] | where an allowed request goes: targets, TLS settings, CONNECT proxies, upstream errors |
//! | core | [`telemetry`] | log output (text, JSON, journald) and the throttle for repeating lines |
//! | core | [`percent`] | percent-decoding (`%XX`), strict or lenient, for the allowlist, the proxy and config |
//! | core | [`units`] | sizes and durations as people write them, one meaning for config and tools |
//! | seam | [`runtime`] | threads and I/O: executors and their start, the UDP socket, links, shards, tunnel core, upstream pools, the webhook listener and deliveries |
//! | application | [`status`] | the counters and flags the executors publish and the control thread reads |
//! | application | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz` |
//! | application | [`notify`] | systemd notifications: `READY`, `RELOADING`, `STOPPING`, `STATUS`, the watchdog |
//! | application | [`service`] | the broker as a service: prepare, start, `READY`, reload on `SIGHUP`, drain on `SIGTERM` |
//! | application | [`output`] | printing that ends with a documented status whatever becomes of stdout |
//! | application | [`onboard`] | `wgbroker init` (first configuration and key) and `wgbroker test` (what works from this host, with fixes) |
//! | application | [`gateway_service`] | `wgbroker gateway` as a service: its executor, `/metrics` and probes, signals |
//! | application | [`cli`] | the commands and their exit statuses (the only place that knows the numbers) |
//! | tools | [`testkit`] | the vendor's side: a userspace WireGuard gateway, an HTTP client, a mock SCM, scripted connections, a webhook-signing SCM and vendor endpoint |
//! | tools | [`demo`] | `wgbroker demo`: broker, mock SCM and vendor on loopback, a decision table |
//! | tools | [`demo_gateway`] | `wgbroker demo --gateway`: a gateway, one tenant on two brokers, a failover |
//! | tools | [`loadtest`] | `wgbroker loadtest`: the vendor's side under load, HDR latency, CPU per side |
//!
//! Dependencies point down the table — tools use the application, the application the seam,
//! the seam the cores — and no two modules import each other, directly or through others
//! (`tests/it/layout.rs` checks both on the source; `config` is read by `upstream`, and owns
//! the proxy URL's syntax for that reason). The core's unit tests may use [`testkit`]'s scripted connections.
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
//! | step | where |
//! |---|---|
//! | datagrams in and out, batched (`recvmmsg`, `sendmmsg`, GSO) | `runtime::udp`, driven by `runtime::tunnel_core` |
//! | decrypt, check the inner source, encrypt, handshakes, keepalives | [`tunnel::PeerTable`] |
//! | pick the shard that owns a flow | [`packet::shard_of`], in `runtime::tunnel_core` |
//! | hand packets between executors | `runtime::link` |
//! | terminate TCP, accept connections | [`netstack::StackSet`], driven by `runtime::shard` |
//! | parse the request head | [`http::parse_head`] |
//! | canonicalise the URL and decide | [`allowlist::Allowlist`] |
//! | inject credentials, rewrite headers, stream bodies, answer errors | [`server`] (`server::proxy`) |
//! | reach the upstream: DNS, dial, CONNECT proxy, TLS, pooled connections | `runtime::upstream`, with [`upstream`] |
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
//! ## Only the runtime touches glommio
//!
//! Only [`runtime`] imports glommio; every other module runs in a plain `#[test]` and a criterion
//! benchmark without io_uring. A test checks it (`tests/it/layout.rs`), not the compiler: a core
//! crate in a workspace (`wgbroker-core` without glommio in its dependencies) would make it a
//! compile error, and is the next step once the layout has settled. Not now, for two reasons.
//! The move renames every path in the modules other changes of issue 13 are reworking
//! (`server`, `config`, `upstream`), so it is best done after them, in one mechanical commit. And
//! the tools do not split along that line yet: the cores' unit tests use [`testkit`]'s scripted
//! connections, while the test kit's gateway uses `runtime::udp`; the scripted half must move
//! into the core crate first.

// The core: sans-IO layers.
pub mod allowlist;
pub mod config;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod netstack;
pub mod packet;
pub mod percent;
pub mod relay;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod transport;
pub mod tunnel;
pub mod units;
pub mod upstream;

// The runtime seam: the only glommio code.
pub mod runtime;

// The application: the broker as a service and as a command line.
pub mod admin;
pub mod cli;
pub mod gateway_service;
pub mod notify;
pub mod onboard;
pub mod output;
pub mod service;
pub mod status;

// The tools: the vendor's side, for tests, the demo and the load test.
pub mod demo;
pub mod demo_gateway;
pub mod loadtest;
pub mod testkit;

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
