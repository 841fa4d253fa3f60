//! What a reload (`SIGHUP`) can apply, and what waits for a restart.
//!
//! A reload reconfigures the peer table with `[[wireguard.peers]]` (added, removed, changed;
//! kept peers keep their sessions) and swaps into every shard the rules — `[[allow]]` and
//! `[[scm]]`, tokens included —, `[upstream]` (TLS: CA files re-read, minimum version; proxy;
//! timeouts; pool limits), `[inbound]` timeouts and limits and `[log] body_limit` (connections
//! opened from then on take them; so do tunnel connections `[netstack]`), `[heartbeat]`
//! (replaced, added or removed); it applies `[log] level` and `format`, and the webhook relays
//! (`[[outbound.relay]]` added, removed, changed, secrets re-read; `max_body`, retry and
//! delivery timings). What stays is built into the process at start (the broker's key, tunnel
//! address, ports, MTU, executors, the webhook relay's listener and spool): [`needs_restart`]
//! names what a new configuration changes there, so the operator is told the change is still
//! pending.

use super::Config;

/// The sections (or keys) of `new` that differ from `old` and that a reload cannot apply, in
/// configuration order.
///
/// Compares the validated values, secrets included: a private or pre-shared key rotated in its
/// file or variable is a change although `dump` (which shows where a secret comes from, never
/// its value) prints the same text. The destructuring is exhaustive, so a section added to
/// [`Config`] does not compile until it is placed on one side or the other.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let Config {
        wireguard,
        inbound,
        // Applied by the reload: the heartbeat is replaced, added or removed.
        heartbeat: _,
        // Applied by the reload: every rule is swapped into the shards.
        allow: _,
        scm: _,
        // Applied by the reload, `response_timeout` included (connections opened from then on).
        upstream: _,
        admin,
        // Applied by the reload: the level and the format (`telemetry::set_level`,
        // `set_format`); `body_limit` for connections opened from then on.
        log: _,
        runtime,
        // Applied by the reload to tunnel connections opened from then on (open ones keep
        // their controller and buffer caps).
        netstack: _,
        outbound,
    } = old;
    [
        // Peers are applied (the peer table is reconfigured in place, and each peer's stream
        // supervisor follows: started, stopped or restarted with its new endpoints); the
        // broker's own key, tunnel address, UDP port and MTU are built into the socket, the
        // table and every shard's stack.
        ("wireguard", wireguard_restart(wireguard, &new.wireguard)),
        // Timeouts and limits are applied to connections opened from now on; the port is the
        // listener every shard's stack was built with.
        (
            "inbound.listen_port",
            inbound.listen_port != new.inbound.listen_port,
        ),
        ("admin", *admin != new.admin),
        // Executors, CPUs, rings, buffer pools and socket tables are laid out at start.
        ("runtime", *runtime != new.runtime),
    ]
    .into_iter()
    .filter(|&(_, changed)| changed)
    .map(|(section, _)| section.to_owned())
    .chain(outbound_restart(outbound.as_ref(), new.outbound.as_ref()))
    .collect()
}

/// What of `[outbound]` waits for a restart: the relay's listener, executor and spool are
/// opened at start (so the section appearing or going, `listen`, `spool_dir`, `spool_max`);
/// `[[outbound.relay]]`, `max_body` and the retry and delivery timings are applied.
fn outbound_restart(
    old: Option<&crate::relay::spec::Outbound>,
    new: Option<&crate::relay::spec::Outbound>,
) -> Vec<String> {
    let (old, new) = match (old, new) {
        (None, None) => return Vec::new(),
        (Some(old), Some(new)) => (old, new),
        _ => return vec!["outbound".to_owned()],
    };
    let crate::relay::spec::Outbound {
        listen,
        spool_dir,
        spool_max,
        // Applied by the reload (requests and delivery attempts from then on).
        max_body: _,
        retry_min: _,
        retry_max: _,
        delivery_timeout: _,
        relay: _,
    } = old;
    [
        ("outbound.listen", *listen != new.listen),
        ("outbound.spool_dir", *spool_dir != new.spool_dir),
        ("outbound.spool_max", *spool_max != new.spool_max),
    ]
    .into_iter()
    .filter(|&(_, changed)| changed)
    .map(|(key, _)| key.to_owned())
    .collect()
}

/// Whether `[wireguard]` changed outside `peers`.
fn wireguard_restart(old: &super::WireGuard, new: &super::WireGuard) -> bool {
    let super::WireGuard {
        private_key,
        private_key_source,
        private_key_unavailable,
        address,
        listen_port,
        mtu,
        // Each peer's stream supervisor is started with the transport, the TLS roots and the
        // proxy.
        transport,
        ca_files,
        proxy,
        // Applied by the reload (`PeerTable::reconfigure`; the stream supervisors follow).
        peers: _,
    } = old;
    *private_key != new.private_key
        || *private_key_source != new.private_key_source
        || *private_key_unavailable != new.private_key_unavailable
        || *address != new.address
        || *listen_port != new.listen_port
        || *mtu != new.mtu
        || *transport != new.transport
        || *ca_files != new.ca_files
        || *proxy != new.proxy
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{LoadMode, load_str};

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const KEY_B: &str = "oK56DE9Ue9zK76rAc8pBl6opph+1v36lm7cXXsQKrQM=";

    /// A configuration whose private key and pre-shared key come from the environment
    /// (`KEY`, `PSK`), so a test can change their values without changing the file.
    fn config(extra: &str, key: &str, psk: &str) -> Config {
        let text = format!(
            "[wireguard]\nprivate_key = {{ env = \"KEY\" }}\naddress = \"10.77.0.2\"\n\
             [[wireguard.peers]]\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
             preshared_key = {{ env = \"PSK\" }}\nendpoint = \"127.0.0.1:9\"\n\
             allowed_ips = [\"10.77.0.1/32\"]\n{extra}"
        );
        let (key, psk) = (key.to_owned(), psk.to_owned());
        let env = move |name: &str| match name {
            "KEY" => Some(key.clone()),
            "PSK" => Some(psk.clone()),
            _ => Some("value".to_owned()),
        };
        load_str(&[(PathBuf::from("b.toml"), text)], LoadMode::Full, &env)
            .expect("valid configuration")
            .config
    }

    const RULE: &str = "[[allow]]\nurl = \"https://jira.example.com/*\"\nmethods = [\"GET\"]\n";

    #[test]
    fn the_same_configuration_needs_nothing() {
        let a = config(RULE, KEY_A, KEY_B);
        assert_eq!(needs_restart(&a, &a.clone()), Vec::<String>::new());
    }

    #[test]
    fn rules_apply_without_a_restart() {
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://gl.example.com/api/v4\"\n\
             token = { env = \"TOKEN\" }\n",
            KEY_A,
            KEY_B,
        );
        assert_eq!(needs_restart(&old, &new), Vec::<String>::new());
    }

    #[test]
    fn names_every_changed_section_in_configuration_order() {
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(
            &format!("{RULE}[runtime]\nchannel_capacity = 512\n[inbound]\nlisten_port = 8080\n"),
            KEY_A,
            KEY_B,
        );
        assert_eq!(
            needs_restart(&old, &new),
            ["inbound.listen_port", "runtime"]
        );
    }

    #[test]
    fn the_tunnel_tcp_applies_but_an_added_webhook_relay_needs_a_restart() {
        // Both sections came from branches merged together (issues 19 and 14): each is named.
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(
            &format!(
                "{RULE}[netstack]\ncongestion = \"newreno\"\n[outbound]\nlisten = \"127.0.0.1:8080\"\n"
            ),
            KEY_A,
            KEY_B,
        );
        assert_eq!(
            needs_restart(&old, &new),
            ["outbound"],
            "[netstack] applies to new connections; an [outbound] added needs its listener"
        );
    }

    #[test]
    fn relays_apply_but_the_relay_listener_and_spool_need_a_restart() {
        let outbound = |listen: &str, spool_max: &str, relays: &str| {
            config(
                &format!(
                    "{RULE}[outbound]\nlisten = \"{listen}\"\nspool_max = \"{spool_max}\"\n{relays}"
                ),
                KEY_A,
                KEY_B,
            )
        };
        let relay = |name: &str, events: &str| {
            format!(
                "[[outbound.relay]]\nname = \"{name}\"\n\
                 destination_url = \"https://vendor.example.com/hook\"\nscm = \"none\"\n\
                 events = [{events}]\n"
            )
        };
        let old = outbound("127.0.0.1:8080", "64 MiB", &relay("a", "\"push\""));
        // Relays added, removed and changed, and the timings: applied.
        let relays = outbound(
            "127.0.0.1:8080",
            "64 MiB",
            &format!(
                "max_body = \"64 KiB\"\nretry_min = \"2s\"\n{}{}",
                relay("a", "\"push\", \"issues\""),
                relay("b", "")
            ),
        );
        assert_eq!(needs_restart(&old, &relays), Vec::<String>::new());
        let empty = outbound("127.0.0.1:8080", "64 MiB", "");
        assert_eq!(needs_restart(&old, &empty), Vec::<String>::new());
        // The listener and the spool: named key by key.
        let moved = outbound("127.0.0.1:8081", "65 MiB", &relay("a", "\"push\""));
        assert_eq!(
            needs_restart(&old, &moved),
            ["outbound.listen", "outbound.spool_max"]
        );
        // The section appearing or going: the whole relay.
        let none = config(RULE, KEY_A, KEY_B);
        assert_eq!(needs_restart(&old, &none), ["outbound"]);
        assert_eq!(needs_restart(&none, &old), ["outbound"]);
    }

    #[test]
    fn upstream_tls_proxy_and_log_level_apply_without_a_restart() {
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(
            &format!(
                "{RULE}[upstream]\ntls_min_version = \"1.3\"\nproxy = \"http://proxy.example:3128\"\n\
                 connect_timeout = \"3s\"\npool_max_idle_per_host = 8\n[log]\nlevel = \"debug\"\n"
            ),
            KEY_A,
            KEY_B,
        );
        assert_eq!(needs_restart(&old, &new), Vec::<String>::new());
        let new = config(
            &format!(
                "{RULE}[upstream]\nresponse_timeout = \"5s\"\n[log]\nformat = \"json\"\n\
                 body_limit = 100\n[inbound]\nhead_timeout = \"3s\"\nmax_headers = 50\n"
            ),
            KEY_A,
            KEY_B,
        );
        assert_eq!(
            needs_restart(&old, &new),
            Vec::<String>::new(),
            "the log format is swapped; timeouts, limits and the body log limit apply to new \
             connections"
        );
    }

    #[test]
    fn a_new_private_key_from_the_same_source_needs_a_restart() {
        // `dump` shows where a secret comes from, never its value: only the public key it
        // prints changes here; for a pre-shared key nothing printed does (below).
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(RULE, KEY_B, KEY_B);
        assert_eq!(needs_restart(&old, &new), ["wireguard"]);
    }

    #[test]
    fn a_new_preshared_key_is_applied_to_the_peer() {
        // The peer table starts that peer's session over with the new key (issue 15 §3).
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(RULE, KEY_A, KEY_A);
        assert_ne!(old.wireguard, new.wireguard);
        assert_eq!(needs_restart(&old, &new), Vec::<String>::new());
    }

    #[test]
    fn peers_apply_but_the_tunnel_address_needs_a_restart() {
        let old = config(RULE, KEY_A, KEY_B);
        let new = config(
            &format!(
                "persistent_keepalive = 5\n[[wireguard.peers]]\n\
                 public_key = \"oK56DE9Ue9zK76rAc8pBl6opph+1v36lm7cXXsQKrQM=\"\n\
                 endpoint = \"127.0.0.1:10\"\nallowed_ips = [\"10.78.0.1/32\"]\n{RULE}"
            ),
            KEY_A,
            KEY_B,
        );
        assert_ne!(old.wireguard.peers, new.wireguard.peers);
        // With `auto` (the default) an added peer's stream supervisor starts with the reload,
        // as over UDP alone; a keepalive change applies too.
        assert_eq!(needs_restart(&old, &new), Vec::<String>::new());
        let udp = |c: &Config| {
            let mut c = c.clone();
            c.wireguard.transport = crate::transport::Transport::Udp;
            c
        };
        assert_eq!(needs_restart(&udp(&old), &udp(&new)), Vec::<String>::new());
        let mut keepalive = old.clone();
        keepalive.wireguard.peers[0].persistent_keepalive = 7;
        assert_eq!(needs_restart(&old, &keepalive), Vec::<String>::new());
        assert_eq!(needs_restart(&old, &udp(&old)), ["wireguard"]);
        let mut moved = old.clone();
        moved.wireguard.address = "10.77.0.9".parse().expect("address");
        assert_eq!(needs_restart(&old, &moved), ["wireguard"]);
        let mut mtu = old.clone();
        mtu.wireguard.mtu = 1280;
        assert_eq!(needs_restart(&old, &mtu), ["wireguard"]);
    }
}
