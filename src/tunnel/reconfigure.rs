//! [`PeerTable::reconfigure`]: a reload's new list of peers applied to the running table,
//! matched by public key, without disturbing the sessions of the peers it keeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use ipnet::IpNet;

use super::route::Routes;
use super::{MAX_PEERS, PeerChanges, PeerId, PeerSpec, PeerTable, PeerTableError};

impl PeerTable {
    /// Applies a new list of peers to the running table (a reload), matched by public key:
    ///
    /// * a peer no longer listed is removed (its slot freed; its packets are dropped from now
    ///   on as [`DropReason::UnknownIndex`] or [`DropReason::NoRoute`]);
    /// * a new one is added (and dialed at once when the table dials, see
    ///   [`PeerTable::initiate_all`]);
    /// * a listed one keeps its slot, [`PeerId`] and session: a changed endpoint, keepalive or
    ///   allowed IPs take effect at once without a new handshake; a changed pre-shared key
    ///   needs one (the peer's session starts over).
    ///
    /// All or nothing: on an error (a duplicate key, this side's own key, two peers with one
    /// prefix) the table is unchanged. `emit` receives the handshakes started.
    pub fn reconfigure(
        &mut self,
        specs: Vec<PeerSpec>,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) -> Result<PeerChanges, PeerTableError> {
        self.now = now;
        if specs.len() > MAX_PEERS {
            return Err(PeerTableError::TooManyPeers(specs.len()));
        }
        // Plan: every spec's slot (kept or new), checked before anything changes.
        let mut seen: HashMap<[u8; 32], ()> = HashMap::with_capacity(specs.len());
        let mut plan: Vec<(usize, bool)> = Vec::with_capacity(specs.len());
        let mut taken: Vec<usize> = Vec::new();
        for spec in &specs {
            if spec.public_key == self.own {
                return Err(PeerTableError::OwnKey(spec.public_key));
            }
            if seen.insert(*spec.public_key.as_bytes(), ()).is_some() {
                return Err(PeerTableError::DuplicatePeer(spec.public_key));
            }
            match self.by_key.get(spec.public_key.as_bytes()) {
                Some(&slot) => plan.push((slot, false)),
                None => {
                    // A new peer takes a hole that is free now (not one this change frees: a
                    // removed peer's stragglers then find nobody), else a new slot.
                    let len = self.peers.len();
                    let mut slot = self.peers.next_free(&|i| taken.contains(&i));
                    if slot >= len {
                        slot = len + taken.iter().filter(|&&t| t >= len).count();
                    }
                    Self::index_of(slot)?;
                    taken.push(slot);
                    plan.push((slot, true));
                }
            }
        }
        let mut routes = Routes::default();
        for (spec, &(slot, _)) in specs.iter().zip(&plan) {
            for net in &spec.allowed_ips {
                routes.insert(*net, PeerId(slot as u32)).map_err(|c| {
                    let first = specs
                        .iter()
                        .zip(&plan)
                        .find(|(_, (s, _))| *s == c.owner.index())
                        .map_or(spec.public_key, |(f, _)| f.public_key);
                    PeerTableError::DuplicateAllowedIp {
                        net: c.net,
                        first,
                        second: spec.public_key,
                    }
                })?;
            }
        }

        // Apply.
        let mut changes = PeerChanges::default();
        let keep: HashMap<usize, ()> = plan.iter().map(|&(s, _)| (s, ())).collect();
        let gone: Vec<usize> = self
            .peers
            .live()
            .filter(|s| !keep.contains_key(s))
            .collect();
        for slot in gone {
            if let Some(p) = self.peers.remove(slot) {
                self.by_key.remove(p.public_key.as_bytes());
                self.resolve_queue.retain(|id| id.index() != slot);
                changes.removed.push(p.public_key);
            }
        }
        self.routes = routes;
        for (spec, (slot, new)) in specs.into_iter().zip(plan) {
            let key = spec.public_key;
            if new {
                let index = Self::index_of(slot)?;
                self.by_key.insert(*key.as_bytes(), slot);
                self.install(slot, index, spec, now);
                changes.added.push(key);
                if self.dialing {
                    self.dial(slot, out, emit);
                }
                continue;
            }
            if self.update(slot, spec, now, out, emit) {
                changes.changed.push(key);
            }
        }
        self.single = self.single_slot();
        Ok(changes)
    }

    /// Applies `spec` to the peer in `slot` (same key); true when anything changed.
    fn update(
        &mut self,
        slot: usize,
        spec: PeerSpec,
        now: Instant,
        out: &mut [u8],
        emit: &mut dyn FnMut(PeerId, SocketAddr, &[u8]),
    ) -> bool {
        let Some(p) = self.peers.get_mut(slot) else {
            return false;
        };
        let keepalive = (spec.persistent_keepalive > 0)
            .then(|| Duration::from_secs(u64::from(spec.persistent_keepalive)));
        let mut changed = false;
        if p.keepalive != keepalive {
            p.keepalive = keepalive;
            changed = true;
        }
        if p.configured_endpoint != spec.endpoint || p.endpoint_name != spec.endpoint_name {
            p.configured_endpoint = spec.endpoint;
            p.endpoint_name = spec.endpoint_name.clone();
            if spec.endpoint.is_some() {
                p.endpoint = spec.endpoint;
            }
            p.attempts = 0;
            changed = true;
            if spec.endpoint.is_none() && spec.endpoint_name.is_some() {
                self.request_resolve(slot, now);
            }
        }
        let Some(p) = self.peers.get_mut(slot) else {
            return changed;
        };
        let allowed_changed = {
            let mine: Vec<IpNet> = spec.allowed_ips.iter().map(IpNet::trunc).collect();
            p.allowed_ips != mine
        };
        if allowed_changed {
            p.allowed_ips = spec.allowed_ips.iter().map(IpNet::trunc).collect();
            changed = true;
        }
        if p.preshared_key != spec.preshared_key {
            // A new pre-shared key is a new session: start over with a fresh `Tunn` in the
            // same slot, keeping where the peer is and what it counted.
            let dial = p.dial;
            let endpoint = p.endpoint;
            let index = (slot as u32) ^ self.salt;
            p.tunn = Tunn::new(
                self.static_private.clone(),
                spec.public_key.to_x25519(),
                spec.preshared_key,
                None,
                index,
                Some(Arc::clone(&self.rate_limiter)),
            );
            p.preshared_key = spec.preshared_key;
            p.stale = true;
            p.maybe_queued = false;
            p.attempts = 0;
            p.unanswered_since = None;
            p.recovery = None;
            p.endpoint = endpoint;
            changed = true;
            if dial {
                self.initiate(slot, out, emit, false);
            }
        }
        changed
    }
}
