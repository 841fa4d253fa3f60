//! CPU time per thread, from `/proc/self/task/*/schedstat` (nanoseconds on the CPU), falling back
//! to `/proc/self/task/*/stat` (user + system clock ticks, 100 per second on Linux), so the report
//! can say whether the driver, the broker or the upstream was the bottleneck.

use std::collections::HashMap;
use std::time::Duration;

/// CPU time of the threads alive at one instant, by thread id.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    threads: HashMap<u32, (String, u64)>,
}

/// CPU used by one thread between two snapshots.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThreadCpu {
    pub name: String,
    pub cpu_s: f64,
}

/// Nanoseconds on the CPU of the calling thread (0 when /proc is unreadable).
pub fn this_thread() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| parse_schedstat(&s))
        .or_else(|| {
            std::fs::read_to_string("/proc/thread-self/stat")
                .ok()
                .and_then(|s| parse_stat(&s).map(|(_, ns)| ns))
        })
        .unwrap_or(0)
}

fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// `(comm, user + system in ns)` from a `stat` line.
fn parse_stat(s: &str) -> Option<(String, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    // Fields after the comm start at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) * 10_000_000))
}

impl Snapshot {
    /// Reads every thread of this process.
    pub fn take() -> Self {
        let mut threads = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return Self { threads };
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let path = e.path();
            let comm = std::fs::read_to_string(path.join("comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            let ns = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| parse_schedstat(&s))
                .or_else(|| {
                    std::fs::read_to_string(path.join("stat"))
                        .ok()
                        .and_then(|s| parse_stat(&s).map(|(_, ns)| ns))
                });
            if let Some(ns) = ns {
                threads.insert(tid, (comm, ns));
            }
        }
        Self { threads }
    }

    /// CPU per thread from `earlier` to `self`, for threads alive now (a thread born in
    /// between counts from zero), sorted by name.
    pub fn since(&self, earlier: &Snapshot) -> Vec<ThreadCpu> {
        let mut v: Vec<ThreadCpu> = self
            .threads
            .iter()
            .map(|(tid, (name, ns))| {
                let before = earlier.threads.get(tid).map_or(0, |(_, b)| *b);
                ThreadCpu {
                    name: name.clone(),
                    cpu_s: Duration::from_nanos(ns.saturating_sub(before)).as_secs_f64(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Sums the CPU of threads whose name starts with any of `prefixes`.
pub fn sum(threads: &[ThreadCpu], prefixes: &[&str]) -> f64 {
    threads
        .iter()
        .filter(|t| prefixes.iter().any(|p| t.name.starts_with(p)))
        .fold(0.0, |a, t| a + t.cpu_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_schedstat_parse() {
        let line = "1234 (lt driver) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("lt driver".into(), 3_000_000_000)));
        assert_eq!(parse_schedstat("123456 789 10\n"), Some(123_456));
    }

    #[test]
    fn a_busy_thread_shows_up() {
        let before = Snapshot::take();
        let mine = this_thread();
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(this_thread() > mine);
        let after = Snapshot::take();
        let total: f64 = after.since(&before).iter().map(|t| t.cpu_s).sum();
        assert!(total > 0.0);
    }
}
