//! Live reloads of the gateway's tenants and brokers (`SIGHUP`, [`GatewayHandle::reload`]):
//! applying one all or nothing, refusing one that would hand a draining broker's key or address
//! to another broker, and dropping drained brokers' peers.

use super::*;

/// The peers the table should hold: `config`'s brokers and those still draining.
fn table_specs(
    gw: &Gw,
    config: &GatewayConfig,
    draining: &[BrokerId],
) -> Vec<crate::tunnel::PeerSpec> {
    let brokers = gw.brokers.borrow();
    let mut specs = crate::gateway::peer_specs(config);
    specs.extend(
        draining
            .iter()
            .filter_map(|id| brokers.get(id.0).map(|b| b.spec.clone())),
    );
    specs
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReloadError {
    #[error(
        "broker {0} was removed and still has requests in flight; its key and address cannot be given to another broker until they finish: reload again shortly"
    )]
    StillDraining(String),
    #[error("tunnel: {0}")]
    Tunnel(String),
}

/// Applies a reloaded configuration's tenants and brokers, all or nothing: the peer table
/// ([`PeerTable::reconfigure`]: kept brokers keep their sessions) and the balancer
/// ([`Balancer::reconfigure`]: removed brokers drain, added ones join after a passing check,
/// a removed tenant is not found). A draining broker keeps its peer (so its requests can
/// finish) until its last request ends ([`settle_drained`]).
///
/// Tenant isolation: a broker is its tenant, key and address; a broker moved to another
/// tenant is a new broker, checked before it serves. A reload that would give a draining
/// broker's key or address to another broker is refused, so no byte of a request in flight
/// can be routed to another broker's peer.
pub(super) fn apply_reload(
    gw: &Gw,
    new: GatewayConfig,
    now: Instant,
    out: &mut [u8],
) -> Result<Vec<(SocketAddr, Vec<u8>)>, ReloadError> {
    let mut bal = gw.bal.borrow().clone();
    let r = bal.reconfigure(&new, now);
    let mut draining: Vec<BrokerId> = gw
        .draining
        .borrow()
        .iter()
        .chain(&r.removed)
        .copied()
        .filter(|&id| bal.is_draining(id))
        .collect();
    draining.sort_unstable();
    draining.dedup();
    {
        let brokers = gw.brokers.borrow();
        for id in &draining {
            let Some(old) = brokers.get(id.0) else {
                continue;
            };
            if new
                .brokers()
                .any(|(_, b)| b.public_key == old.spec.public_key || b.address == old.addr.ip())
            {
                return Err(ReloadError::StillDraining(old.label.clone()));
            }
        }
    }
    let specs = table_specs(gw, &new, &draining);
    let mut queued = Vec::new();
    gw.table
        .borrow_mut()
        .reconfigure(specs, now, out, &mut |_, to, d| {
            queued.push((to, d.to_vec()))
        })
        .map_err(|e| ReloadError::Tunnel(e.to_string()))?;
    // Committed: follow with addresses, counters, logs.
    for id in &r.removed {
        tracing::info!(event = "gateway.broker_removed", broker = %gw.label(*id), draining = bal.is_draining(*id));
    }
    {
        let table = gw.table.borrow();
        let mut brokers = gw.brokers.borrow_mut();
        let port = gw.config.gateway.broker_port;
        let specs = crate::gateway::peer_specs(&new);
        for (((t, b), &id), spec) in new.brokers().zip(&r.brokers).zip(specs) {
            let Some(peer) = table.peer_id(&b.public_key) else {
                continue;
            };
            let entry = BrokerAddr {
                spec,
                addr: SocketAddr::new(b.address, port),
                label: format!("{}/{}", new.tenant[t].name, b.address),
                peer,
            };
            if r.added.contains(&id) {
                gw.status.set_broker(id.0, &new.tenant[t].name, b.address);
                tracing::info!(event = "gateway.broker_added", broker = %entry.label);
            }
            if id.0 < brokers.len() {
                brokers[id.0] = entry;
            } else {
                brokers.push(entry);
            }
        }
    }
    {
        // Exported while draining (its requests in flight show), until it has drained; one
        // drained meanwhile whose slot was not given to another broker leaves `/metrics` now.
        let was_draining = gw.draining.borrow();
        for id in r.removed.iter().chain(was_draining.iter()) {
            if r.added.contains(id) {
                continue;
            }
            if bal.is_draining(*id) {
                gw.counters(*id).draining.store(true, Ordering::Relaxed);
            } else {
                gw.status.retire_broker(id.0);
            }
        }
    }
    *gw.bal.borrow_mut() = bal;
    *gw.draining.borrow_mut() = draining;
    *gw.current.borrow_mut() = new;
    // A removed (draining) broker serves no new request; a slot given to another broker must
    // not hand it the previous one's connections.
    for &id in r.removed.iter().chain(&r.added) {
        gw.drop_idle(id);
    }
    Ok(queued)
}

/// Drops the peers (and the `/metrics` series) of draining brokers whose last request has
/// finished.
pub(super) fn settle_drained(gw: &Gw, now: Instant, out: &mut [u8]) -> Vec<(SocketAddr, Vec<u8>)> {
    let done: Vec<BrokerId> = {
        let bal = gw.bal.borrow();
        let mut draining = gw.draining.borrow_mut();
        let done = draining
            .iter()
            .copied()
            .filter(|&id| !bal.is_draining(id))
            .collect();
        draining.retain(|&id| bal.is_draining(id));
        done
    };
    for id in &done {
        gw.status.retire_broker(id.0);
    }
    let mut queued = Vec::new();
    if !done.is_empty() {
        let specs = table_specs(gw, &gw.current.borrow(), &gw.draining.borrow());
        if let Err(e) = gw
            .table
            .borrow_mut()
            .reconfigure(specs, now, out, &mut |_, to, d| {
                queued.push((to, d.to_vec()))
            })
        {
            tracing::error!(event = "gateway.drain_failed", error = %e);
        }
    }
    queued
}
