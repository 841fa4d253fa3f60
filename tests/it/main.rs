//! The one integration-test binary: modules per area, one link step.

mod allowlist;
mod cli;
mod config;
mod harness;
mod interop;
mod interop_proxy;
mod loadtest;
mod logs;
mod operations;
mod proxy;
mod slow;
mod tunnel;
mod upstream;
