//! Where each executor runs: the tunnel core on one CPU, one shard per remaining CPU, or tunnel
//! and shard together on one executor on a machine with one or two CPUs. Pure function of the config and the CPUs available,
//! so it is tested without threads.

use crate::config::Runtime;

/// The executor layout the broker starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// CPU of the tunnel core (None = unpinned).
    pub tunnel_cpu: Option<usize>,
    /// CPU of each shard (None = unpinned); `shards.len()` is the shard count.
    pub shards: Vec<Option<usize>>,
    /// The tunnel core and the single shard share one executor.
    pub combined: bool,
}

/// Why `[runtime]` cannot be laid out on the CPUs this process may use (a configuration error:
/// starting again does not help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// `runtime.cpus` names a CPU outside this process's affinity mask.
    #[error("runtime.cpus: CPU {cpu} is not available to this process (available: {available:?})")]
    CpuNotAvailable { cpu: usize, available: Vec<usize> },
    /// The affinity mask (or `runtime.cpus`) is empty.
    #[error("no CPU available")]
    NoCpu,
    /// `runtime.tunnel_cpu` is not one of the CPUs the broker runs on.
    #[error("runtime.tunnel_cpu: CPU {cpu} is not in the CPU set {cpus:?}")]
    TunnelCpuOutside { cpu: usize, cpus: Vec<usize> },
}

/// Computes the plan. `available` is the set of CPUs this process may run on, in order.
pub fn plan(rt: &Runtime, available: &[usize]) -> Result<Plan, PlanError> {
    let cpus: Vec<usize> = if rt.cpus.is_empty() {
        available.to_vec()
    } else {
        if let Some(&cpu) = rt.cpus.iter().find(|c| !available.contains(c)) {
            return Err(PlanError::CpuNotAvailable {
                cpu,
                available: available.to_vec(),
            });
        }
        rt.cpus.clone()
    };
    let Some(&first) = cpus.first() else {
        return Err(PlanError::NoCpu);
    };
    let tunnel = rt.tunnel_cpu.unwrap_or(first);
    if !cpus.contains(&tunnel) {
        return Err(PlanError::TunnelCpuOutside { cpu: tunnel, cpus });
    }
    let rest: Vec<usize> = cpus.iter().copied().filter(|&c| c != tunnel).collect();
    let pin = |c: usize| rt.pin.then_some(c);
    let shard_count = match rt.shards {
        0 => rest.len().max(1),
        n => n,
    };
    // Auto on a machine with one or two CPUs: one executor for everything. Measured on a
    // 2-core VM (perf/tunnel-figures.sh, /healthcheck through wireguard-go): split tunnel core +
    // shard 44 us of broker CPU per request, one combined executor 20 us — the split pays a
    // cross-core wake-up (eventfd write + membarrier IPIs) per hand-off, and pinning both cores
    // leaves none for the kernel's UDP and softirq work. `shards = 1` still asks for the split.
    let auto_combined = rt.shards == 0 && cpus.len() <= 2;
    if (rest.is_empty() && shard_count == 1) || auto_combined {
        return Ok(Plan {
            tunnel_cpu: pin(tunnel),
            shards: vec![pin(tunnel)],
            combined: true,
        });
    }
    // More shards than CPUs is allowed (they share CPUs round-robin), but then pinning them
    // would stack executors on one CPU anyway; say what happens rather than refusing.
    let pool = if rest.is_empty() { vec![tunnel] } else { rest };
    let shards = (0..shard_count)
        .map(|i| pin(pool[i % pool.len()]))
        .collect();
    Ok(Plan {
        tunnel_cpu: pin(tunnel),
        shards,
        combined: false,
    })
}

/// The CPUs this process may run on (from `/proc/self/status`), or `0..available_parallelism`.
pub fn available_cpus() -> Vec<usize> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            if let Some(v) = parse_cpu_list(list.trim()) {
                return v;
            }
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> Runtime {
        let text = "[wireguard]\nprivate_key = \"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\"\naddress = \"10.0.0.2\"\n[[wireguard.peers]]\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\nendpoint = \"127.0.0.1:1\"\nallowed_ips = [\"10.0.0.1/32\"]\n";
        let l = crate::config::load_str(
            &[("t.toml".into(), text.into())],
            crate::config::LoadMode::Full,
            &|_: &str| None,
        )
        .expect("valid");
        l.config.runtime
    }

    #[test]
    fn two_cpus_combine_unless_a_shard_count_is_set() {
        let p = plan(&rt(), &[0, 1]).expect("plan");
        assert!(p.combined);
        assert_eq!(p.tunnel_cpu, Some(0));
        assert_eq!(p.shards, vec![Some(0)]);
        let mut r = rt();
        r.shards = 1;
        let p = plan(&r, &[0, 1]).expect("plan");
        assert_eq!(p.tunnel_cpu, Some(0));
        assert_eq!(p.shards, vec![Some(1)]);
        assert!(!p.combined);
    }

    #[test]
    fn three_cpus_give_tunnel_plus_two_shards() {
        let p = plan(&rt(), &[0, 1, 2]).expect("plan");
        assert_eq!(p.tunnel_cpu, Some(0));
        assert_eq!(p.shards, vec![Some(1), Some(2)]);
        assert!(!p.combined);
    }

    #[test]
    fn one_cpu_combines() {
        let p = plan(&rt(), &[3]).expect("plan");
        assert!(p.combined);
        assert_eq!(p.shards, vec![Some(3)]);
    }

    #[test]
    fn many_cpus_and_overrides() {
        let p = plan(&rt(), &(0..16).collect::<Vec<_>>()).expect("plan");
        assert_eq!(p.shards.len(), 15);
        let mut r = rt();
        r.cpus = vec![2, 3, 4];
        r.tunnel_cpu = Some(4);
        r.pin = false;
        let p = plan(&r, &(0..8).collect::<Vec<_>>()).expect("plan");
        assert_eq!(p.tunnel_cpu, None);
        assert_eq!(p.shards, vec![None, None]);
        r.cpus = vec![9];
        assert_eq!(
            plan(&r, &[0, 1]),
            Err(PlanError::CpuNotAvailable {
                cpu: 9,
                available: vec![0, 1]
            })
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
