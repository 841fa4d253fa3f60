//! Criterion benchmarks of the data plane's hot paths, one module per stage that a request or a
//! packet goes through:
//!
//! | group | module | measures | unit |
//! |---|---|---|---|
//! | `request/*` | [`request`] | HTTP/1.1 head parse (bare httparse as the floor), `/proxy/` URL canonicalisation, allowlist decision (4-SCM rules) | per request |
//! | `tunnel/*` | [`tunnel`] | `PeerTable::send` (encrypt) and `PeerTable::receive` (decrypt) at 60, 600 and 1420 B, next to raw ChaCha20-Poly1305 | per packet, MB/s |
//! | `netstack/*` | [`netstack`] | one packet through a `StackSet` (ingest + poll + drain, or write + poll + drain) at 10, 100 and 1,000 connections per stack; 16 packets per poll | per packet |
//! | `handoff/*` | [`handoff`] | `PacketBuf`s between executors over the runtime's links (shared and local channels) | per packet |
//!
//! The allowlist decision on its own, and how it scales with the number of rules, is
//! `benches/allowlist.rs`; it is not repeated here.
//!
//! Run all (49 benchmarks, about 6 minutes on 2 busy cores):
//! `cargo bench --bench hotpath -- --warm-up-time 1 --measurement-time 3`;
//! one group: `cargo bench --bench hotpath -- netstack/`. `cargo test --all-targets` runs each
//! benchmark once (about a second in all).
//!
//! The binary uses the broker's allocator (mimalloc), so allocation costs are the production ones.

mod handoff;
mod netstack;
mod request;
mod tunnel;
mod wire;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Short runs, no plots (rendering them takes longer than measuring here); command-line
/// options override.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .without_plots()
}

criterion_group! {
    name = hotpath;
    config = config();
    targets = request::benches, tunnel::benches, netstack::benches, handoff::benches
}
criterion_main!(hotpath);
