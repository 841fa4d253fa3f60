//! Checks that io_uring can run before any executor starts, with the fix in the message.

/// What stops the broker from starting its executors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    /// `kernel.io_uring_disabled` forbids io_uring for this process.
    #[error(
        "io_uring is disabled by the kernel (kernel.io_uring_disabled = {0}); enable it with \
         `sysctl -w kernel.io_uring_disabled=0` (persist in /etc/sysctl.d/)"
    )]
    IoUringDisabled(u8),
    /// The memlock limit is below what glommio needs.
    #[error(
        "the locked-memory limit is {have} KiB but glommio needs at least {need} KiB; raise it \
         with `ulimit -l {need}` (shell), LimitMEMLOCK= (systemd) or /etc/security/limits.conf"
    )]
    MemlockTooLow { have: u64, need: u64 },
    /// Creating an io_uring failed (old kernel, seccomp profile of a container, ...).
    #[error(
        "cannot create an io_uring ({0}); wgbroker needs Linux >= 5.8 with io_uring allowed \
         (containers: a seccomp profile that permits io_uring_setup/io_uring_enter)"
    )]
    IoUringUnavailable(#[source] std::io::Error),
}

/// Memlock glommio requires per process (its own check), KiB.
pub const MIN_MEMLOCK_KIB: u64 = 512;

/// Parses `Max locked memory` (soft limit, bytes) from `/proc/self/limits` text.
pub fn memlock_soft_limit(limits: &str) -> Option<Option<u64>> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line
        .trim_start_matches("Max locked memory")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

/// The checks that need no io_uring: sysctl and rlimit.
pub fn check_limits() -> Result<(), PreflightError> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "0" | "" => {}
            // 1 = only the io_uring_group may create rings; root (or the group) still can.
            "1" => {}
            other => {
                return Err(PreflightError::IoUringDisabled(other.parse().unwrap_or(2)));
            }
        }
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(Some(bytes)) = memlock_soft_limit(&limits) {
            if bytes / 1024 < MIN_MEMLOCK_KIB {
                return Err(PreflightError::MemlockTooLow {
                    have: bytes / 1024,
                    need: MIN_MEMLOCK_KIB,
                });
            }
        }
    }
    Ok(())
}

/// A UDP socket buffer the kernel grants below what `[runtime]` asks for. `SO_RCVBUF` and
/// `SO_SNDBUF` are capped at `net.core.rmem_max` / `wmem_max` (208 KiB on a stock kernel) without
/// an error, so a burst the configured buffer would have absorbed is dropped instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferShortfall {
    /// `udp_recv_buffer` or `udp_send_buffer`.
    pub key: &'static str,
    /// The sysctl that caps it.
    pub sysctl: &'static str,
    pub requested: usize,
    pub granted: usize,
}

impl std::fmt::Display for BufferShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[runtime] {} asks for {} bytes but {} caps it at {}: datagram bursts beyond that \
             are dropped; raise it with `sysctl -w {}={}` (persist in /etc/sysctl.d/) or lower \
             {}",
            self.key,
            self.requested,
            self.sysctl,
            self.granted,
            self.sysctl,
            self.requested,
            self.key
        )
    }
}

/// Compares the configured UDP buffers with the kernel's caps (`None`: cap unknown, no finding).
pub fn udp_buffer_shortfalls(
    recv: usize,
    send: usize,
    rmem_max: Option<usize>,
    wmem_max: Option<usize>,
) -> Vec<BufferShortfall> {
    [
        ("udp_recv_buffer", "net.core.rmem_max", recv, rmem_max),
        ("udp_send_buffer", "net.core.wmem_max", send, wmem_max),
    ]
    .into_iter()
    .filter_map(|(key, sysctl, requested, cap)| {
        let granted = cap?;
        (granted < requested).then_some(BufferShortfall {
            key,
            sysctl,
            requested,
            granted,
        })
    })
    .collect()
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), before the stacks
/// allocate their socket buffers. With THP a connection that touches one byte of a fresh 64 KiB
/// buffer can fault in a whole 2 MiB page; without it the kernel commits the 4 KiB pages data
/// actually reaches, so a broker's memory follows the bytes in flight rather than its buffer
/// sizes (measured: 2,000 fresh 64 KiB buffers, one byte touched each: 135 MiB RSS with THP, 14
/// MiB without). Best effort: an old kernel without the option keeps THP.
#[allow(unsafe_code)]
pub fn disable_transparent_huge_pages() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let t = "Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\n";
        assert_eq!(memlock_soft_limit(t), Some(Some(8_388_608)));
        let u = "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(memlock_soft_limit(u), Some(None));
        assert_eq!(memlock_soft_limit("nothing"), None);
    }

    #[test]
    fn messages_name_the_fix() {
        let e = PreflightError::MemlockTooLow {
            have: 64,
            need: 512,
        }
        .to_string();
        assert!(e.contains("ulimit -l 512") && e.contains("LimitMEMLOCK"));
        let e = PreflightError::IoUringDisabled(2).to_string();
        assert!(e.contains("sysctl -w kernel.io_uring_disabled=0"));
    }

    #[test]
    fn udp_buffers_above_the_kernel_caps_are_named_with_the_fix() {
        let found = udp_buffer_shortfalls(4 << 20, 4 << 20, Some(212_992), Some(8 << 20));
        assert_eq!(
            found,
            vec![BufferShortfall {
                key: "udp_recv_buffer",
                sysctl: "net.core.rmem_max",
                requested: 4 << 20,
                granted: 212_992,
            }]
        );
        let msg = found[0].to_string();
        assert!(
            msg.contains("udp_recv_buffer asks for 4194304 bytes")
                && msg.contains("net.core.rmem_max caps it at 212992")
                && msg.contains("sysctl -w net.core.rmem_max=4194304"),
            "{msg}"
        );
        assert!(udp_buffer_shortfalls(4 << 20, 4 << 20, Some(4 << 20), Some(4 << 20)).is_empty());
        assert!(udp_buffer_shortfalls(4 << 20, 4 << 20, None, None).is_empty());
        assert_eq!(
            udp_buffer_shortfalls(1 << 20, 1 << 20, Some(1), Some(1)).len(),
            2
        );
    }
}
