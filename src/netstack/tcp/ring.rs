//! A byte ring whose allocation follows what it holds, under a limit that can grow.
//!
//! Both directions of a connection keep their bytes in a [`Ring`]:
//! * the **send ring** holds every byte from `SND.UNA` to the last byte the application wrote:
//!   unacknowledged bytes are retransmitted from it, and an ACK [`consume`](Ring::consume)s them;
//! * the **receive ring** holds in-order bytes the application has not read yet *and*, past them,
//!   out-of-order bytes written at their final position ([`write_at`](Ring::write_at)); the
//!   reassembly map ([`super::reassembly`]) says which of those positions hold data, and
//!   [`commit`](Ring::commit) makes a run readable once the hole before it is filled.
//!
//! Two sizes matter. The **limit** is what the connection may buffer (it sets the advertised
//! receive window and how much the application may queue for sending); autotuning raises it with
//! the measured bandwidth-delay product up to the configured cap. The **allocation** is what the
//! ring holds in memory: it starts empty, grows by doubling to what the bytes actually need (never
//! past the limit), and is dropped again by [`release_if_idle`](Ring::release_if_idle) once the
//! ring is empty. So a connection that may buffer 4 MiB costs nothing while idle, and ten thousand
//! idle keep-alive connections cost ten thousand empty `Vec`s.
//!
//! Invariants: `len <= limit`; `alloc.len()` is 0 or a power of two, at most
//! `limit.next_power_of_two()`; positions `0..len` (from `head`, wrapping) are the readable bytes.
//! Growing copies the whole allocation so out-of-order bytes beyond `len` keep their positions.

/// Smallest allocation (bytes) once a ring holds anything.
const MIN_ALLOC: usize = 4096;

/// A growable byte ring. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    alloc: Vec<u8>,
    head: usize,
    len: usize,
    limit: usize,
}

impl Ring {
    /// An empty ring that may hold up to `limit` bytes. Allocates nothing.
    pub fn new(limit: usize) -> Self {
        Self {
            alloc: Vec::new(),
            head: 0,
            len: 0,
            limit,
        }
    }

    /// Readable (or unacknowledged) bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many bytes the ring may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes that may still be added under the limit.
    pub fn free(&self) -> usize {
        self.limit - self.len
    }

    /// Bytes of memory held.
    pub fn allocated(&self) -> usize {
        self.alloc.len()
    }

    /// Raises the limit (never lowers it: a receive window, once advertised, must stay
    /// acceptable, and bytes already queued must still fit).
    pub fn grow_limit(&mut self, limit: usize) {
        self.limit = self.limit.max(limit);
    }

    /// Makes the allocation cover ring positions `0..extent` (relative to `head`), copying the
    /// held bytes to their positions in the new allocation. `extent` is clamped to the limit.
    fn reserve(&mut self, extent: usize) {
        let extent = extent.min(self.limit);
        if extent <= self.alloc.len() {
            return;
        }
        let cap = extent
            .next_power_of_two()
            .max(MIN_ALLOC)
            .min(self.limit.next_power_of_two());
        let mut next = vec![0u8; cap];
        let old = self.alloc.len();
        if old > 0 {
            // Every old position keeps its offset from `head`: out-of-order bytes past `len`
            // must survive the move.
            let (a, b) = self.alloc.split_at(self.head);
            next[..b.len()].copy_from_slice(b);
            next[b.len()..old].copy_from_slice(a);
        }
        self.alloc = next;
        self.head = 0;
    }

    /// The two stretches of the allocation that hold positions `from..from + n`.
    fn spans(&self, from: usize, n: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let cap = self.alloc.len();
        if n == 0 || cap == 0 {
            return (0..0, 0..0);
        }
        let start = (self.head + from) % cap;
        let first = n.min(cap - start);
        (start..start + first, 0..n - first)
    }

    /// Appends as much of `data` as fits under the limit; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        self.reserve(self.len + n);
        let (a, b) = self.spans(self.len, n);
        let split = a.len();
        self.alloc[a].copy_from_slice(&data[..split]);
        self.alloc[b].copy_from_slice(&data[split..n]);
        self.len += n;
        n
    }

    /// Zero-copy append: `f` fills the largest contiguous free stretch (at most `max` bytes and
    /// the free space) and returns how many bytes it wrote (clamped to the stretch).
    pub fn push_with<R>(&mut self, max: usize, f: impl FnOnce(&mut [u8]) -> (usize, R)) -> R {
        let want = max.min(self.free());
        if want > 0 {
            self.reserve(self.len + want);
        }
        let (a, _) = self.spans(self.len, want);
        let stretch = &mut self.alloc[a];
        let room = stretch.len();
        let (n, r) = f(stretch);
        self.len += n.min(room);
        r
    }

    /// Writes `data` at position `at` (from the first held byte), beyond the readable bytes:
    /// out-of-order data waiting for a hole to fill. Bytes past the limit are cut; returns how
    /// many were written. Does not change [`len`](Ring::len).
    pub fn write_at(&mut self, at: usize, data: &[u8]) -> usize {
        if at >= self.limit {
            return 0;
        }
        let n = data.len().min(self.limit - at);
        if n == 0 {
            return 0;
        }
        self.reserve(at + n);
        let (a, b) = self.spans(at, n);
        let split = a.len();
        self.alloc[a].copy_from_slice(&data[..split]);
        self.alloc[b].copy_from_slice(&data[split..n]);
        n
    }

    /// Makes `n` more bytes readable (bytes already placed with [`write_at`](Ring::write_at)).
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.limit).min(self.alloc.len());
    }

    /// The held bytes at positions `from..from + n` as up to two slices (clamped to `len`).
    pub fn slices(&self, from: usize, n: usize) -> (&[u8], &[u8]) {
        let from = from.min(self.len);
        let n = n.min(self.len - from);
        let (a, b) = self.spans(from, n);
        (&self.alloc[a], &self.alloc[b])
    }

    /// Copies up to `out.len()` bytes from position `from` into `out`; returns how many.
    pub fn copy_out(&self, from: usize, out: &mut [u8]) -> usize {
        let (a, b) = self.slices(from, out.len());
        out[..a.len()].copy_from_slice(a);
        out[a.len()..a.len() + b.len()].copy_from_slice(b);
        a.len() + b.len()
    }

    /// The first contiguous run of readable bytes (zero-copy receive).
    pub fn first_mut(&mut self) -> &mut [u8] {
        let (a, _) = self.spans(0, self.len);
        &mut self.alloc[a]
    }

    /// Drops `n` bytes from the front (read by the application, or acknowledged).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.head = (self.head + n) % self.alloc.len();
        self.len -= n;
    }

    /// Frees the allocation if the ring is empty and holds more than `keep` bytes of memory.
    /// The caller guarantees no out-of-order bytes wait past `len`.
    pub fn release_if_idle(&mut self, keep: usize) {
        if self.len == 0 && self.alloc.len() > keep {
            self.alloc = Vec::new();
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume_wraps_and_keeps_order() {
        let mut r = Ring::new(8192);
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        assert_eq!(r.push(&data), 6000);
        assert_eq!(r.allocated(), 8192, "grew to the next power of two");
        r.consume(5000);
        assert_eq!(r.push(&data[..4000]), 4000, "wraps around the end");
        let mut out = vec![0u8; 5000];
        assert_eq!(r.copy_out(0, &mut out), 5000);
        assert_eq!(&out[..1000], &data[5000..6000]);
        assert_eq!(&out[1000..], &data[..4000]);
        let (a, b) = r.slices(500, 1000);
        assert_eq!(a.len() + b.len(), 1000);
        assert_eq!(r.push(&[0u8; 10000]), 8192 - 5000, "stops at the limit");
    }

    #[test]
    fn growth_keeps_out_of_order_bytes_in_place() {
        let mut r = Ring::new(1 << 20);
        assert_eq!(r.push(&[1u8; 3000]), 3000);
        r.consume(2500);
        // Out of order: position 1000.. of the held stream.
        assert_eq!(r.write_at(1000, &[7u8; 500]), 500);
        r.grow_limit(1 << 21);
        // Forces a reallocation while the head sits mid-buffer.
        assert_eq!(r.write_at(20_000, &[9u8; 100]), 100);
        assert!(r.allocated() >= 32768);
        assert_eq!(r.write_at(500, &[5u8; 500]), 500);
        r.commit(1500);
        let mut out = vec![0u8; 1500];
        assert_eq!(r.copy_out(0, &mut out), 1500);
        assert!(out[..500].iter().all(|&b| b == 1));
        assert!(out[500..1000].iter().all(|&b| b == 5));
        assert!(out[1000..].iter().all(|&b| b == 7));
    }

    #[test]
    fn limit_bounds_everything_and_idle_rings_free_memory() {
        let mut r = Ring::new(5000);
        assert_eq!(r.write_at(4900, &[1u8; 500]), 100, "cut at the limit");
        assert_eq!(r.write_at(6000, &[1u8; 10]), 0);
        assert!(r.allocated() <= 8192);
        r.commit(100_000);
        assert_eq!(r.len(), 5000, "commit cannot pass the limit");
        r.consume(5000);
        r.release_if_idle(4096);
        assert_eq!(r.allocated(), 0);
        let got = r.push_with(100, |buf| {
            buf[..3].copy_from_slice(b"abc");
            (1000, buf.len())
        });
        assert_eq!(got, 100, "the stretch offered is what fits under the limit");
        assert_eq!(r.len(), 100, "clamped to the offered stretch");
    }
}
