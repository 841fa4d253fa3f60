//! Packet buffers and their per-core pool.

/// An owned packet buffer: a fixed-capacity byte block and the length in use.
///
/// The capacity is fixed at allocation (MTU plus WireGuard overhead) so that a buffer can be
/// reused for any packet; `len` says how much of it holds the current packet.
#[derive(Debug)]
pub struct PacketBuf {
    data: Box<[u8]>,
    len: usize,
}

impl PacketBuf {
    /// A zeroed buffer of `capacity` bytes, empty.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            data: vec![0u8; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// The packet bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// The packet bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }

    /// The whole block, for writing a packet into; follow with [`PacketBuf::set_len`].
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Sets the length of the packet written into [`PacketBuf::space`]; clamped to the capacity.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.data.len());
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Current packet length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A per-core free list of [`PacketBuf`]s of one capacity.
///
/// `take` reuses a returned buffer or allocates; `give` returns one, dropping it when the pool
/// already holds `max_free`. Buffers are given back on the core that took them: shards send
/// spent buffers home over the return path.
///
/// A burst fills the free list up to `max_free` (4096 buffers, 6 MiB at the default MTU);
/// [`BufPool::trim`], called by the owner every 100 ms or so, gives back half of what was not
/// needed since the last call, so an idle pool empties within a second or two while a pool in
/// steady use keeps its working set.
#[derive(Debug)]
pub struct BufPool {
    capacity: usize,
    max_free: usize,
    free: Vec<PacketBuf>,
    allocated: u64,
    /// The fewest buffers the free list held since the last [`BufPool::trim`].
    low_water: usize,
}

impl BufPool {
    /// A pool of buffers of `capacity` bytes keeping at most `max_free` idle buffers.
    pub fn new(capacity: usize, max_free: usize) -> Self {
        Self {
            capacity,
            max_free,
            free: Vec::with_capacity(max_free.min(4096)),
            allocated: 0,
            low_water: 0,
        }
    }

    /// A buffer, empty, from the free list or freshly allocated.
    pub fn take(&mut self) -> PacketBuf {
        match self.free.pop() {
            Some(mut b) => {
                self.low_water = self.low_water.min(self.free.len());
                b.len = 0;
                b
            }
            None => {
                self.allocated += 1;
                PacketBuf::with_capacity(self.capacity)
            }
        }
    }

    /// Returns a buffer to the free list. Buffers of another capacity are dropped.
    pub fn give(&mut self, buf: PacketBuf) {
        if buf.capacity() == self.capacity && self.free.len() < self.max_free {
            self.free.push(buf);
        }
    }

    /// Buffer capacity of this pool.
    pub fn buf_capacity(&self) -> usize {
        self.capacity
    }

    /// How many buffers were ever allocated (not reused); a steady state shows no growth.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Idle buffers held.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// Frees half (rounded up) of the buffers that stayed on the free list since the last call;
    /// returns how many. Call it at a steady pace (the runtime: about every 100 ms).
    pub fn trim(&mut self) -> usize {
        let unused = self.low_water.min(self.free.len());
        let drop = unused.div_ceil(2);
        self.free.truncate(self.free.len() - drop);
        self.low_water = self.free.len();
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_and_bounds_idle_buffers() {
        let mut p = BufPool::new(1500, 2);
        let mut a = p.take();
        a.space()[..3].copy_from_slice(b"abc");
        a.set_len(3);
        assert_eq!(a.as_slice(), b"abc");
        let b = p.take();
        let c = p.take();
        assert_eq!(p.allocated(), 3);
        p.give(a);
        p.give(b);
        p.give(c); // over max_free: dropped
        assert_eq!(p.idle(), 2);
        let d = p.take();
        assert!(d.is_empty(), "a reused buffer comes back empty");
        assert_eq!(p.allocated(), 3, "no new allocation");
        p.give(PacketBuf::with_capacity(10)); // foreign capacity: dropped
        assert_eq!(p.idle(), 1);
    }

    #[test]
    fn trim_gives_back_what_a_burst_left_and_keeps_what_is_used() {
        let mut p = BufPool::new(64, 4096);
        let burst: Vec<PacketBuf> = (0..1000).map(|_| p.take()).collect();
        burst.into_iter().for_each(|b| p.give(b));
        assert_eq!(p.idle(), 1000);
        // Steady use of 10 buffers at a time: they stay, the rest of the burst goes.
        for _ in 0..20 {
            let used: Vec<PacketBuf> = (0..10).map(|_| p.take()).collect();
            used.into_iter().for_each(|b| p.give(b));
            p.trim();
        }
        assert_eq!(p.idle(), 10, "the working set is kept");
        // Idle: everything goes.
        for _ in 0..5 {
            p.trim();
        }
        assert_eq!(p.idle(), 0);
        assert_eq!(p.allocated(), 1000, "nothing was allocated while trimming");
    }

    #[test]
    fn set_len_is_clamped() {
        let mut b = PacketBuf::with_capacity(4);
        b.set_len(100);
        assert_eq!(b.len(), 4);
    }
}
