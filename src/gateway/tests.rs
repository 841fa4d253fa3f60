//! The gateway's peers as the tunnel core sees them: cryptokey routing keeps tenants apart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::config::LoadMode;
use crate::keys::PrivateKey;
use crate::tunnel::{DropReason, PeerTable, Received, Sent};

const GATEWAY_KEY: [u8; 32] = [9; 32];
const GW_UDP: &str = "198.51.100.1:51820";
const A1_UDP: &str = "192.0.2.10:40000";

/// Tenant "a" with brokers `[1;32]` at 10.77.1.2 and `[2;32]` at 10.77.1.3, tenant "b" with
/// `[3;32]` at 10.77.2.2 (also the balancer's tests' configuration).
pub(super) fn config() -> GatewayConfig {
    let key = |n: u8| PrivateKey::from_bytes([n; 32]).public_key().to_string();
    let text = format!(
        r#"
[gateway]
private_key = "{}"
listen = "0.0.0.0:51820"
address = "10.77.0.1"
front = "127.0.0.1:8080"
[[tenant]]
name = "a"
[[tenant.broker]]
public_key = "{}"
address = "10.77.1.2"
[[tenant.broker]]
public_key = "{}"
address = "10.77.1.3"
[[tenant]]
name = "b"
[[tenant.broker]]
public_key = "{}"
address = "10.77.2.2"
"#,
        PrivateKey::from_bytes(GATEWAY_KEY).to_base64(),
        key(1),
        key(2),
        key(3)
    );
    crate::config::gateway::load_str(
        &[(PathBuf::from("gw.toml"), text)],
        LoadMode::Full,
        &|_: &str| None,
    )
    .expect("valid")
    .config
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        sum += (u32::from(pair[0]) << 8) | pair.get(1).map_or(0, |&b| u32::from(b));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet `src` → `dst` (IPv4 header checksum filled, UDP checksum 0 = none).
fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + 4];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..].copy_from_slice(b"ping");
    p
}

/// Delivers datagrams between broker A1 and the gateway until both are quiet.
fn pump(
    broker: &mut PeerTable,
    gateway: &mut PeerTable,
    mut queue: Vec<(bool, Vec<u8>)>,
    now: Instant,
) -> Vec<Result<Vec<u8>, DropReason>> {
    let (gw, a1): (SocketAddr, SocketAddr) =
        (GW_UDP.parse().expect("addr"), A1_UDP.parse().expect("addr"));
    let mut at_gateway = Vec::new();
    let mut out = vec![0u8; 2048];
    while let Some((to_gateway, d)) = queue.pop() {
        let (table, from) = if to_gateway {
            (&mut *gateway, a1)
        } else {
            (&mut *broker, gw)
        };
        match table.receive(now, from, &d, &mut out) {
            Received::Packet { packet, .. } if to_gateway => at_gateway.push(Ok(packet.to_vec())),
            Received::Dropped(r) if to_gateway => at_gateway.push(Err(r)),
            Received::Transmit { peer, datagram, .. } => {
                queue.push((!to_gateway, datagram.to_vec()));
                if let Some(p) = peer {
                    let mut more = vec![0u8; 2048];
                    while let Some(t) = table.flush(p, &mut more) {
                        queue.push((!to_gateway, t.datagram.to_vec()));
                    }
                }
            }
            _ => {}
        }
    }
    at_gateway
}

#[test]
fn a_broker_is_accepted_only_from_its_own_address_and_key() {
    let now = Instant::now();
    let c = config();
    let gw_key = PrivateKey::from_bytes(GATEWAY_KEY);
    let mut gateway = PeerTable::new(&gw_key, peer_specs(&c), now).expect("table");
    // Broker A1 (tenant a), routing all of 10.77.0.0/16 to the gateway: whatever source it
    // writes, its own table sends.
    let a1_key = PrivateKey::from_bytes([1; 32]);
    let spec = PeerSpec {
        public_key: gw_key.public_key(),
        preshared_key: None,
        endpoint: Some(GW_UDP.parse().expect("addr")),
        endpoint_name: None,
        allowed_ips: vec!["10.77.0.0/16".parse().expect("net")],
        persistent_keepalive: 0,
    };
    let mut broker = PeerTable::new(&a1_key, vec![spec], now).expect("table");
    let mut hello = Vec::new();
    let mut out = vec![0u8; 2048];
    broker.initiate_all(now, &mut out, &mut |_, _, d| hello.push((true, d.to_vec())));
    pump(&mut broker, &mut gateway, hello, now);

    let mut send = |src: [u8; 4]| {
        let mut out = vec![0u8; 2048];
        let packet = ipv4_udp(src, [10, 77, 0, 1]);
        let d = match broker.send(now, &packet, &mut out) {
            Sent::Transmit(t) => t.datagram.to_vec(),
            other => panic!("the broker's table did not send: {other:?}"),
        };
        let got = pump(&mut broker, &mut gateway, vec![(true, d)], now);
        (packet, got)
    };
    let (own, got) = send([10, 77, 1, 2]);
    assert_eq!(got, vec![Ok(own)], "its own address passes");
    for forged in [
        [10, 77, 2, 2],
        [10, 77, 1, 3],
        [10, 77, 0, 1],
        [10, 99, 0, 1],
    ] {
        let (_, got) = send(forged);
        assert_eq!(
            got,
            vec![Err(DropReason::BadSource)],
            "a packet from A1's key with source {forged:?}"
        );
    }
    assert_eq!(gateway.counters().bad_source, 4);
}

#[test]
fn peers_follow_the_brokers_in_balancer_order() {
    let c = config();
    let specs = peer_specs(&c);
    let brokers: Vec<_> = c
        .brokers()
        .map(|(_, b)| (b.public_key, b.address))
        .collect();
    assert_eq!(specs.len(), 3);
    for (s, (key, addr)) in specs.iter().zip(brokers) {
        assert_eq!(s.public_key, key);
        assert_eq!(s.allowed_ips, vec![IpNet::from(addr)]);
        assert_eq!(s.endpoint, None);
    }
}
