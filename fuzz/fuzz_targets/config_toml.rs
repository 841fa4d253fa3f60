//! The TOML configuration reader on arbitrary text (see `config_common.rs` for what is checked).
#![no_main]

#[path = "config_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check("fuzz.toml", data));
