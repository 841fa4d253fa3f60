//! The one integration-test binary: modules per area, one link step.

mod allowlist;
mod ci_setup;
mod cli;
mod config;
mod harness;
mod interop;
mod interop_proxy;
mod loadtest;
mod logs;
mod operations;
mod proxy;
mod relay;
mod tunnel;
mod upstream;
