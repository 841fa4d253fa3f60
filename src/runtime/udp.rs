//! Batched datagram I/O on the tunnel core's UDP socket, through its raw fd.
//!
//! glommio sends and receives one datagram per `sendmsg`/`recvmsg` (or io_uring op); under load
//! that per-datagram syscall is most of the broker's CPU (profiled: 41 % of the broker's time in
//! `sendmsg` on the `/healthcheck` wrk run). Here `recvmmsg` drains what the kernel has queued
//! in one call and `sendmmsg` sends a batch in one; with UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18) a
//! run of same-size datagrams to one peer leaves as one buffer that the kernel splits as late as
//! it can. Both calls are non-blocking (`MSG_DONTWAIT`): the caller waits for readiness through
//! glommio and falls back to its async send when the socket buffer is full.
//!
//! The test kit's gateway (the vendor side in tests, `demo` and `loadtest`) uses the same
//! batches, blocking on [`wait`] instead of glommio.
//!
//! Address families: the broker's socket is dual-stack IPv6 (see `runtime::bind_udp`), so an
//! IPv4 peer is written to as its v4-mapped address ([`on_socket`]) and is seen coming from one;
//! every address handed back ([`RecvBatch::get`]) is [`canonical`], so that the peer table
//! compares a datagram's source with the configured or resolved endpoint correctly whatever the
//! socket's family.
//!
//! This module is part of the runtime seam: the only `unsafe` in the crate's data plane and test
//! kit, each block with its reason.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::unix::io::RawFd;
use std::time::Duration;

use socket2::SockAddr;

/// Datagrams per batch (`recvmmsg`/`sendmmsg` vector length).
pub const BATCH: usize = 64;
/// `UDP_SEGMENT` from `<linux/udp.h>` (not exported by `libc` for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;
/// The kernel's limit on segments in one GSO send (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Payload bytes of one GSO send: an IP datagram's 65,535 less IPv6 + UDP headers, rounded down.
const GSO_MAX_BYTES: usize = 65_000;
/// `CMSG_SPACE(sizeof(u16))` on 64-bit Linux: a 16-byte header plus the value, 8-aligned.
const CMSG_WORDS: usize = 3;

/// A peer's address as the peer table keeps it: an IPv4 peer seen through a dual-stack IPv6
/// socket (`[::ffff:a.b.c.d]:p`) is the IPv4 address it stands for.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `to` as a socket of this family takes it: an IPv6 (dual-stack) socket reaches an IPv4 peer
/// at its v4-mapped IPv6 address.
pub fn on_socket(to: SocketAddr, ipv6_socket: bool) -> SocketAddr {
    match to {
        SocketAddr::V4(a) if ipv6_socket => {
            SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())
        }
        _ => to,
    }
}

/// Whether `fd` is an IPv6 socket (then IPv4 peers need [`on_socket`]).
pub fn is_ipv6_socket(fd: RawFd) -> bool {
    socket2::SockRef::from(&fd)
        .local_addr()
        .is_ok_and(|a| a.family() == libc::AF_INET6 as libc::sa_family_t)
}

/// Whether the kernel takes `UDP_SEGMENT` on this socket (probed once, harmlessly: a zero
/// segment size is the default, "no segmentation").
pub fn gso_supported(fd: RawFd) -> bool {
    let zero: libc::c_int = 0;
    // SAFETY: `fd` is a live socket owned by the caller; the option value points at a c_int on
    // this stack frame and its length says so.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&raw const zero).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// What [`SendBatch::send`] could not send without blocking.
#[derive(Debug)]
pub struct Unsent {
    /// Index of the first datagram not sent.
    pub from: usize,
    /// Datagrams dropped by a hard per-destination error (unreachable, refused...).
    pub failed: usize,
}

/// Datagrams to send, encrypted in place into fixed slots.
pub struct SendBatch {
    slot: usize,
    data: Box<[u8]>,
    /// Where each datagram starts inside its slot.
    offs: Vec<usize>,
    lens: Vec<usize>,
    /// The destinations as the socket takes them, rebuilt by every send from `to`.
    dests: Vec<SockAddr>,
    to: Vec<SocketAddr>,
    gso: bool,
    /// The socket's family, learnt on the first send (a batch serves one socket).
    ipv6_socket: Option<bool>,
    // Rebuilt by every send; kept to avoid allocating per batch.
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_WORDS]>,
    /// First datagram of each message in `hdrs`.
    starts: Vec<usize>,
    /// `sendmmsg` calls made, for the caller's statistics.
    calls: u64,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("slot", &self.slot)
            .field("len", &self.lens.len())
            .field("gso", &self.gso)
            .finish_non_exhaustive()
    }
}

impl SendBatch {
    /// A batch of [`BATCH`] slots of `slot` bytes; `gso` when the socket supports it.
    pub fn new(slot: usize, gso: bool) -> Self {
        Self {
            slot,
            data: vec![0u8; slot * BATCH].into_boxed_slice(),
            offs: Vec::with_capacity(BATCH),
            lens: Vec::with_capacity(BATCH),
            dests: Vec::with_capacity(BATCH),
            to: Vec::with_capacity(BATCH),
            gso,
            ipv6_socket: None,
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            cmsgs: vec![[0u64; CMSG_WORDS]; BATCH],
            starts: Vec::with_capacity(BATCH),
            calls: 0,
        }
    }

    /// `sendmmsg` calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// No slot left.
    pub fn is_full(&self) -> bool {
        self.lens.len() == BATCH
    }

    /// The next free slot, to write a datagram into; commit it with [`Self::commit`].
    /// Call only when not [`Self::is_full`].
    pub fn next_slot(&mut self) -> &mut [u8] {
        let i = self.lens.len().min(BATCH - 1);
        &mut self.data[i * self.slot..(i + 1) * self.slot]
    }

    /// Queues the `len` bytes written at the start of the slot, for `to`.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        self.commit_at(0, len, to);
    }

    /// Queues the `len` bytes written at `start` inside the slot (an encryption that placed its
    /// output after a prefix), for `to`. Clamped to the slot.
    pub fn commit_at(&mut self, start: usize, len: usize, to: SocketAddr) {
        if self.is_full() {
            return;
        }
        let start = start.min(self.slot);
        self.offs.push(start);
        self.lens.push(len.min(self.slot - start));
        self.to.push(to);
    }

    /// Copies `datagram` into the next slot and queues it; false (nothing queued) when the batch
    /// is full or the datagram does not fit a slot.
    pub fn push_copy(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        if self.is_full() || datagram.len() > self.slot {
            return false;
        }
        self.next_slot()[..datagram.len()].copy_from_slice(datagram);
        self.commit(datagram.len(), to);
        true
    }

    /// Datagram `i` and its destination.
    pub fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let len = *self.lens.get(i)?;
        let start = i * self.slot + self.offs[i];
        Some((&self.data[start..start + len], self.to[i]))
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.offs.clear();
        self.lens.clear();
        self.dests.clear();
        self.to.clear();
    }

    /// How many datagrams from `start` go out as one GSO message: same destination, same
    /// size (the last may be shorter), within the kernel's limits.
    fn run_len(&self, start: usize) -> usize {
        if !self.gso {
            return 1;
        }
        let seg = self.lens[start];
        let max = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / seg.max(1));
        let mut end = start + 1;
        while end < self.lens.len()
            && end - start < max
            && self.lens[end] <= seg
            && self.to[end] == self.to[start]
        {
            end += 1;
            if self.lens[end - 1] < seg {
                break; // a short datagram ends a run
            }
        }
        end - start
    }

    /// Builds one message per run, starting at datagram `from`, for a socket of the given family.
    fn build(&mut self, from: usize, ipv6_socket: bool) {
        self.dests.clear();
        self.dests.extend(
            self.to
                .iter()
                .map(|&to| SockAddr::from(on_socket(to, ipv6_socket))),
        );
        self.iovs.clear();
        self.hdrs.clear();
        self.starts.clear();
        let base = self.data.as_mut_ptr();
        for (i, (&len, &off)) in self.lens.iter().zip(&self.offs).enumerate().skip(from) {
            self.iovs.push(libc::iovec {
                // SAFETY: `off + len <= slot` (clamped in `commit_at`) and slot `i` lies inside
                // `data` (`i < BATCH`, `data` is BATCH slots long).
                iov_base: unsafe { base.add(i * self.slot + off) }.cast(),
                iov_len: len,
            });
        }
        let mut i = from;
        let mut m = 0;
        while i < self.lens.len() {
            let run = self.run_len(i);
            // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = self.dests[i].as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = self.dests[i].len();
            // `iovs` is not resized past this point, so the pointer stays valid for the call.
            hdr.msg_iov = self.iovs[i - from..].as_mut_ptr();
            hdr.msg_iovlen = run;
            if run > 1 {
                let cmsg = &mut self.cmsgs[m];
                *cmsg = [0; CMSG_WORDS];
                hdr.msg_control = cmsg.as_mut_ptr().cast();
                hdr.msg_controllen = size_of::<[u64; CMSG_WORDS]>();
                // SAFETY: `hdr.msg_control` points at CMSG_WORDS zeroed u64s (8-aligned), enough
                // for one cmsghdr carrying a u16; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(c).cast::<u16>(),
                        self.lens[i] as u16,
                    );
                }
            }
            self.hdrs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
            self.starts.push(i);
            i += run;
            m += 1;
        }
    }

    /// Sends every queued datagram that the socket takes without blocking. `Ok` when all are
    /// sent (or dropped by a hard error: counted in the returned value); `Err` with the first
    /// unsent index when the socket buffer is full.
    pub fn send(&mut self, fd: RawFd) -> Result<usize, Unsent> {
        self.send_from(fd, 0)
    }

    /// [`Self::send`] for the datagrams from index `from` on (after an [`Unsent`]).
    pub fn send_from(&mut self, fd: RawFd, from: usize) -> Result<usize, Unsent> {
        let mut from = from;
        let mut failed = 0;
        let ipv6_socket = *self.ipv6_socket.get_or_insert_with(|| is_ipv6_socket(fd));
        'rebuild: while from < self.lens.len() {
            self.build(from, ipv6_socket);
            let mut m = 0;
            while m < self.hdrs.len() {
                // SAFETY: `hdrs[m..]` are initialised mmsghdrs whose name, iov and control
                // pointers point into `self` (dests, iovs, cmsgs, data), none of which is
                // touched until the call returns; the length is the slice's.
                let rc = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[m..].as_mut_ptr(),
                        (self.hdrs.len() - m) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                self.calls += 1;
                if rc > 0 {
                    m += rc as usize;
                    continue;
                }
                let err = io::Error::last_os_error();
                let first = self.starts[m];
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => {
                        return Err(Unsent {
                            from: first,
                            failed,
                        });
                    }
                    Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                        if self.hdrs[m].msg_hdr.msg_iovlen > 1 =>
                    {
                        // The device path refused segmentation offload: send plainly from here.
                        tracing::info!(event = "wireguard.gso_disabled", error = %err);
                        self.gso = false;
                        from = first;
                        continue 'rebuild;
                    }
                    _ => {
                        // A hard error for this destination (no route, refused...): drop the
                        // message's datagrams, as a lost packet, and go on with the rest.
                        tracing::debug!(event = "wireguard.send_error", error = %err);
                        failed += self.hdrs[m].msg_hdr.msg_iovlen;
                        m += 1;
                    }
                }
            }
            break;
        }
        Ok(failed)
    }
}

/// Datagrams received in one `recvmmsg`.
pub struct RecvBatch {
    slot: usize,
    data: Box<[u8]>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    from: Vec<Option<SocketAddr>>,
    // Built once: each header points at its name, its iovec and its slot of `data`. All four
    // are boxed slices, never resized, so the pointers stay valid when the batch moves.
    names: Box<[libc::sockaddr_storage]>,
    /// Only read by the kernel, through `hdrs`: owned here so that it lives as long as they do.
    _iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slot", &self.slot)
            .field("len", &self.lens.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// [`BATCH`] slots of `slot` bytes: datagrams longer than that arrive truncated and are
    /// reported as such.
    pub fn new(slot: usize) -> Self {
        // SAFETY: all-zero is a valid `sockaddr_storage`.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut data = vec![0u8; slot * BATCH].into_boxed_slice();
        let mut names = vec![zero_name; BATCH].into_boxed_slice();
        let base = data.as_mut_ptr();
        let mut iovs: Box<[libc::iovec]> = (0..BATCH)
            .map(|i| libc::iovec {
                // SAFETY: slot `i` lies inside `data` (BATCH slots long).
                iov_base: unsafe { base.add(i * slot) }.cast(),
                iov_len: slot,
            })
            .collect();
        let hdrs = (0..BATCH)
            .map(|i| {
                // SAFETY: all-zero is a valid `msghdr`.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&raw mut names[i]).cast();
                hdr.msg_iov = &raw mut iovs[i];
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        Self {
            slot,
            data,
            lens: Vec::with_capacity(BATCH),
            truncated: Vec::with_capacity(BATCH),
            from: Vec::with_capacity(BATCH),
            names,
            _iovs: iovs,
            hdrs,
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_up_to(fd, BATCH)
    }

    /// [`Self::recv`] taking at most `max` datagrams (1 to [`BATCH`]).
    pub fn recv_up_to(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, BATCH);
        self.lens.clear();
        self.truncated.clear();
        self.from.clear();
        for h in self.hdrs.iter_mut() {
            // The kernel writes back the name length and the flags: reset both.
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
        }
        let n = loop {
            // SAFETY: `hdrs` holds BATCH initialised mmsghdrs (`max <= BATCH` are passed) whose
            // name and iov pointers point into the boxed `names`, `iovs` and `data` of `self`
            // (built in `new`, never resized).
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    max as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        for i in 0..n {
            let h = &self.hdrs[i];
            self.lens.push((h.msg_len as usize).min(self.slot));
            self.truncated
                .push(h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0);
            // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into
            // `names[i]`, a full sockaddr_storage.
            let addr = unsafe { SockAddr::new(self.names[i], h.msg_hdr.msg_namelen) };
            self.from.push(addr.as_socket().map(canonical));
        }
        Ok(n)
    }

    /// Datagram `i`: its bytes, its source ([`canonical`]), and whether it was longer than a slot.
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>, bool)> {
        let len = *self.lens.get(i)?;
        Some((
            &self.data[i * self.slot..i * self.slot + len],
            self.from[i],
            self.truncated[i],
        ))
    }
}

/// What [`wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// A datagram is queued (`POLLIN`).
    Readable,
    /// The send buffer has room (`POLLOUT`).
    Writable,
}

/// Blocks the thread until `fd` is `ready` or `timeout` passes (zero: just look); returns
/// whether it is ready. A signal ends the wait early with `false`. For threads that own a
/// socket outside glommio (the test kit's gateway).
pub fn wait(fd: RawFd, ready: Ready, timeout: Duration) -> io::Result<bool> {
    let events = match ready {
        Ready::Readable => libc::POLLIN,
        Ready::Writable => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(3600) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd and a valid timespec, both on this stack frame for the call; no
    // signal mask is passed.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

/// Blocks the thread until any of `fds` is ready for what it is paired with, or `timeout` passes
/// (zero: just look); returns whether one is. A hang-up or error counts as ready (the next read
/// or write reports it). For threads that own several sockets outside glommio (the test kit's
/// gateway: its UDP socket, its TCP listener and the streams). At most 1024 entries are polled.
pub fn wait_any(fds: &[(RawFd, Ready)], timeout: Duration) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .take(1024)
        .map(|&(fd, ready)| libc::pollfd {
            fd,
            events: match ready {
                Ready::Readable => libc::POLLIN,
                Ready::Writable => libc::POLLOUT,
            },
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(3600) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds that lives across the call, and
    // the timespec is on this stack frame; no signal mask is passed.
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        b.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        (a, b)
    }

    fn fill(batch: &mut SendBatch, len: usize, tag: u8, to: SocketAddr) {
        let slot = batch.next_slot();
        slot[..len].fill(tag);
        batch.commit(len, to);
    }

    /// Sends sizes through a batch and reads them back one by one with std: with GSO the
    /// kernel must split the runs back into exactly the datagrams queued, in order.
    fn roundtrip(gso: bool) {
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        let mut batch = SendBatch::new(1500, gso && gso_supported(a.as_raw_fd()));
        let sizes = [1400, 1400, 1400, 700, 1400, 60, 60, 60, 1500, 1];
        for (i, &len) in sizes.iter().enumerate() {
            fill(&mut batch, len, i as u8, to);
        }
        assert_eq!(batch.send(a.as_raw_fd()).expect("sent"), 0);
        let mut buf = [0u8; 2048];
        for (i, &len) in sizes.iter().enumerate() {
            let (n, from) = b.recv_from(&mut buf).expect("datagram");
            assert_eq!(from, a.local_addr().expect("addr"));
            assert_eq!(n, len, "datagram {i}");
            assert!(
                buf[..n].iter().all(|&x| x == i as u8),
                "datagram {i} content"
            );
        }
    }

    #[test]
    fn sendmmsg_plain_keeps_order_and_sizes() {
        roundtrip(false);
    }

    #[test]
    fn sendmmsg_gso_splits_runs_back_into_datagrams() {
        roundtrip(true);
    }

    #[test]
    fn runs_group_same_size_same_destination() {
        let to1: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let to2: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let mut b = SendBatch::new(1500, true);
        for (len, to) in [
            (100, to1),
            (100, to1),
            (50, to1),
            (100, to1),
            (100, to2),
            (100, to2),
        ] {
            fill(&mut b, len, 0, to);
        }
        assert_eq!(b.run_len(0), 3, "a short datagram closes a run");
        assert_eq!(b.run_len(3), 1, "another destination starts a new run");
        assert_eq!(b.run_len(4), 2);
        let mut plain = SendBatch::new(1500, false);
        fill(&mut plain, 100, 0, to1);
        fill(&mut plain, 100, 0, to1);
        assert_eq!(plain.run_len(0), 1);
    }

    #[test]
    fn datagrams_at_an_offset_resume_and_copies_go_out_whole() {
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        let mut batch = SendBatch::new(512, false);
        // As an encryption that writes after a prefix: bytes before `start` must not be sent.
        let slot = batch.next_slot();
        slot[..16].fill(0xee);
        slot[16..116].fill(1);
        batch.commit_at(16, 100, to);
        assert!(batch.push_copy(to, &[2u8; 50]));
        assert!(!batch.push_copy(to, &[3u8; 513]), "longer than a slot");
        // A start past the slot is clamped, not a panic: an empty datagram.
        batch.commit_at(10_000, 5, to);
        assert_eq!(batch.datagram(0).map(|(d, _)| d.len()), Some(100));
        assert_eq!(batch.datagram(2).map(|(d, _)| d.len()), Some(0));
        // Resume after the first, as after an `Unsent { from: 1 }`.
        assert_eq!(batch.send_from(a.as_raw_fd(), 1).expect("sent"), 0);
        assert_eq!(batch.send(a.as_raw_fd()).expect("sent"), 0);
        assert_eq!(batch.calls(), 2);
        let mut buf = [0u8; 1024];
        let got: Vec<Vec<u8>> = (0..5)
            .map(|_| {
                let (n, _) = b.recv_from(&mut buf).expect("datagram");
                buf[..n].to_vec()
            })
            .collect();
        assert_eq!(got[0], vec![2u8; 50]);
        assert_eq!(got[1], Vec::<u8>::new());
        assert_eq!(got[2], vec![1u8; 100]);
        assert_eq!(got[3], vec![2u8; 50]);
        assert_eq!(got[4], Vec::<u8>::new());
    }

    #[test]
    fn recv_up_to_takes_no_more_than_asked_and_wait_sees_readiness() {
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        let fd = b.as_raw_fd();
        assert!(!wait(fd, Ready::Readable, Duration::ZERO).expect("poll"));
        assert!(wait(fd, Ready::Writable, Duration::ZERO).expect("poll"));
        for i in 0..5u8 {
            a.send_to(&[i; 10], to).expect("send");
        }
        assert!(wait(fd, Ready::Readable, Duration::from_secs(2)).expect("poll"));
        let mut rb = RecvBatch::new(64);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            match rb.recv_up_to(fd, 2) {
                Ok(n) => {
                    assert!((1..=2).contains(&n), "asked for at most 2, got {n}");
                    seen.extend((0..n).map(|i| rb.get(i).expect("datagram").0[0]));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(wait(fd, Ready::Readable, Duration::from_secs(2)).expect("poll"));
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert!(!wait(fd, Ready::Readable, Duration::from_millis(10)).expect("poll"));
    }

    #[test]
    fn recvmmsg_drains_what_is_queued_and_flags_truncation() {
        let (a, b) = pair();
        let to = b.local_addr().expect("addr");
        for i in 0..10u8 {
            a.send_to(&vec![i; 100 + i as usize], to).expect("send");
        }
        a.send_to(&[7u8; 400], to).expect("send");
        let mut rb = RecvBatch::new(256);
        let mut got = Vec::new();
        for _ in 0..100 {
            match rb.recv(b.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, from, trunc) = rb.get(i).expect("datagram");
                        assert_eq!(from, Some(a.local_addr().expect("addr")));
                        got.push((d.to_vec(), trunc));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == 11 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        assert_eq!(got.len(), 11);
        for (i, (d, trunc)) in got.iter().take(10).enumerate() {
            assert_eq!(d.len(), 100 + i);
            assert!(!trunc);
            assert!(d.iter().all(|&x| x == i as u8));
        }
        assert_eq!(got[10].0.len(), 256);
        assert!(
            got[10].1,
            "a datagram longer than the slot is reported truncated"
        );
        assert_eq!(
            rb.recv(b.as_raw_fd()).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
    }

    /// A dual-stack IPv6 socket, as the broker binds its tunnel socket.
    fn dual_stack() -> UdpSocket {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).expect("AF_INET6");
        s.set_only_v6(false).expect("dual-stack");
        s.bind(&"[::]:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        s.into()
    }

    #[test]
    fn a_dual_stack_socket_talks_to_ipv4_peers_by_their_ipv4_addresses() {
        let broker = dual_stack();
        assert!(is_ipv6_socket(broker.as_raw_fd()));
        let (v4, _) = pair();
        assert!(!is_ipv6_socket(v4.as_raw_fd()));
        v4.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let v4_addr = v4.local_addr().expect("addr");
        let v6 = UdpSocket::bind("[::1]:0").expect("bind ::1");
        v6.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let v6_addr = v6.local_addr().expect("addr");

        // Out: a batch to an IPv4 and an IPv6 peer, given as the peer table keeps them.
        let mut batch = SendBatch::new(64, false);
        fill(&mut batch, 10, 4, v4_addr);
        fill(&mut batch, 10, 6, v6_addr);
        assert_eq!(batch.send(broker.as_raw_fd()).expect("sent"), 0);
        let mut buf = [0u8; 64];
        let port = broker.local_addr().expect("addr").port();
        let (n, from) = v4
            .recv_from(&mut buf)
            .expect("the IPv4 peer got its datagram");
        assert_eq!((n, buf[0], from.port()), (10, 4, port));
        let (n, _) = v6
            .recv_from(&mut buf)
            .expect("the IPv6 peer got its datagram");
        assert_eq!((n, buf[0]), (10, 6));

        // In: the IPv4 peer's source is its plain IPv4 address, not `[::ffff:127.0.0.1]`, so it
        // equals the endpoint it was configured or resolved as.
        let to = SocketAddr::new("::1".parse().expect("ip"), port);
        v4.send_to(&[1; 5], SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("send v4");
        v6.send_to(&[2; 5], to).expect("send v6");
        let mut rb = RecvBatch::new(64);
        let mut from = Vec::new();
        while from.len() < 2 {
            assert!(
                wait(broker.as_raw_fd(), Ready::Readable, Duration::from_secs(2)).expect("poll")
            );
            let n = rb.recv(broker.as_raw_fd()).expect("recvmmsg");
            from.extend((0..n).map(|i| rb.get(i).expect("datagram").1));
        }
        from.sort();
        assert_eq!(from, vec![Some(v4_addr), Some(v6_addr)]);
    }

    #[test]
    fn canonical_and_on_socket_are_inverses_for_ipv4() {
        let v4: SocketAddr = "192.0.2.7:51820".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:51820".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:51820".parse().expect("addr");
        assert_eq!(on_socket(v4, true), mapped);
        assert_eq!(on_socket(v4, false), v4);
        assert_eq!(on_socket(v6, true), v6);
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        assert_eq!(canonical(v6), v6);
    }
}
