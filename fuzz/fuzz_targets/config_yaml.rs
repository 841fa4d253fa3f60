//! The Semgrep YAML configuration reader (translation to the TOML sections, then validation) on
//! arbitrary text (see `config_common.rs` for what is checked).
#![no_main]

#[path = "config_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check("fuzz.yaml", data));
