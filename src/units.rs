//! Sizes and durations as people write them, with one meaning everywhere: the configuration
//! (`[runtime] tcp_tx_buffer = "256KiB"`), `wgbroker loadtest --size` and `wgbroker relay`.
//!
//! Sizes follow IEC 80000-13: `KiB`, `MiB`, `GiB` are powers of 1024 and `KB`, `MB`, `GB`
//! (also `k`, `m`, `g`) powers of 1000, case-insensitive; a bare number is bytes and may have a
//! fraction (`1.5MiB`), rounded down to a whole byte. Until this module the configuration read
//! `"64KB"` as 65,536 bytes and `loadtest` as 64,000; both now say 64,000.
//! Durations are whole seconds (`30`) or humantime's forms (`250ms`, `30s`, `5m`, `1h 30m`).

use std::time::Duration;

/// The largest size either reader accepts: 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;

/// `4096`, `100KB`, `64KiB`, `1.5MiB`, `2GB`, ... in bytes; at most [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 64KiB, 1MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > MAX_SIZE as f64 {
        return Err(format!("{s:?} is out of range (at most 1TiB)"));
    }
    Ok(v as u64)
}

/// `30` (seconds), `500ms`, `10s`, `2m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_one_meaning() {
        for (text, bytes) in [
            ("4096", 4096),
            ("64KiB", 64 << 10),
            ("64kib", 64 << 10),
            ("64KB", 64_000),
            ("64k", 64_000),
            ("1.5MiB", 3 << 19),
            ("4MiB", 4 << 20),
            ("2GB", 2_000_000_000),
            ("1GiB", 1 << 30),
            (" 10 B ", 10),
            ("1024GiB", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "KiB", "-1", "1.2.3MiB", "4 parsecs", "1025GiB", "1e9"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
    }
}
