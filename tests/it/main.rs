//! The one integration-test binary: modules per area, one link step.

mod allowlist;
mod harness;
mod interop;
mod cli;
mod config;
mod tunnel;
