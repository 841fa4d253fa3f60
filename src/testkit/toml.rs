//! The broker's `[wireguard]` table as TOML text, for tests, `demo` and `loadtest`: the private
//! key, the tunnel address, an optional `listen_port` and one `[[wireguard.peers]]` entry per
//! vendor gateway. One renderer, so every fixture writes the section the same way and with
//! values quoted and escaped by the `toml` crate.
//!
//! Only the `[wireguard]` part: callers append the rest of the configuration (`[[scm]]`,
//! `[[allow]]`, `[admin]`, ...) themselves. The text is rendered by [`WireguardToml::render`],
//! not `Display`: like [`PrivateKey`], the builder never prints the key by accident (its `Debug`
//! is redacted).

use std::fmt::Display;

use crate::keys::PrivateKey;

/// The `private_key` line.
#[derive(Debug, Clone)]
enum KeyLine {
    /// `private_key = "<base64>"`.
    Key(PrivateKey),
    /// `# private_key = <placeholder>`: a snippet for a human to complete.
    Comment(String),
}

/// A `[wireguard]` table and its `[[wireguard.peers]]`, rendered by [`WireguardToml::render`]:
///
/// ```text
/// [wireguard]
/// private_key = "..."
/// address = "10.77.0.2"
/// listen_port = 0                  (only if set)
/// transport = "tcp"                (only if set)
/// ca_files = ["/path/ca.pem"]      (only if set)
/// proxy = "http://proxy:3128"      (only if set)
///
/// [[wireguard.peers]]
/// public_key = "..."
/// endpoint = "127.0.0.1:51820"
/// allowed_ips = ["10.77.0.1/32"]
/// tcp_endpoint = "127.0.0.1:51820" (only if set)
/// tls_endpoint = "127.0.0.1:443"   (only if set)
/// persistent_keepalive = 0         (only if set; the broker's default is 20)
/// ```
///
/// Each peer starts with a blank line; the text ends with a newline.
#[derive(Debug, Clone)]
pub struct WireguardToml {
    key: KeyLine,
    address: String,
    listen_port: Option<u16>,
    transport: Option<String>,
    ca_files: Vec<String>,
    proxy: Option<String>,
    peers: Vec<PeerToml>,
}

impl WireguardToml {
    /// The table of a broker with `private_key` and tunnel `address` (an IP address), no peers
    /// yet.
    pub fn new(private_key: &PrivateKey, address: impl Display) -> Self {
        Self {
            key: KeyLine::Key(private_key.clone()),
            address: address.to_string(),
            listen_port: None,
            transport: None,
            ca_files: Vec::new(),
            proxy: None,
            peers: Vec::new(),
        }
    }

    /// A table whose private key is left to the reader: the key line is rendered as the comment
    /// `# private_key = {placeholder}` (control characters in `placeholder` become spaces, so it
    /// stays one comment line). The text does not load until a key is filled in.
    pub fn without_private_key(placeholder: &str, address: impl Display) -> Self {
        let placeholder = placeholder
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect();
        Self {
            key: KeyLine::Comment(placeholder),
            address: address.to_string(),
            listen_port: None,
            transport: None,
            ca_files: Vec::new(),
            proxy: None,
            peers: Vec::new(),
        }
    }

    /// Sets `listen_port` (0 = any; left out, the broker's default is also 0).
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    /// Sets `transport` (`udp`, `tcp`, `tls`, `auto`; left out, the broker's default is `auto`).
    pub fn transport(mut self, transport: impl Display) -> Self {
        self.transport = Some(transport.to_string());
        self
    }

    /// Adds a `ca_files` entry (a PEM file the `tls` transport trusts).
    pub fn ca_file(mut self, path: impl Display) -> Self {
        self.ca_files.push(path.to_string());
        self
    }

    /// Sets `proxy` (the stream transports' CONNECT proxy URL).
    pub fn proxy(mut self, url: impl Display) -> Self {
        self.proxy = Some(url.to_string());
        self
    }

    /// Appends a `[[wireguard.peers]]` entry.
    pub fn peer(mut self, peer: PeerToml) -> Self {
        self.peers.push(peer);
        self
    }

    /// Appends `[[wireguard.peers]]` entries, in order.
    pub fn peers(mut self, peers: impl IntoIterator<Item = PeerToml>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// The TOML text (contains the private key unless built with
    /// [`WireguardToml::without_private_key`]).
    pub fn render(&self) -> String {
        let mut s = String::from("[wireguard]\n");
        match &self.key {
            KeyLine::Key(k) => {
                s.push_str("private_key = ");
                push_toml_string(&mut s, &k.to_base64());
                s.push('\n');
            }
            KeyLine::Comment(placeholder) => {
                s.push_str("# private_key = ");
                s.push_str(placeholder);
                s.push('\n');
            }
        }
        s.push_str("address = ");
        push_toml_string(&mut s, &self.address);
        s.push('\n');
        if let Some(port) = self.listen_port {
            s.push_str(&format!("listen_port = {port}\n"));
        }
        if let Some(t) = &self.transport {
            s.push_str("transport = ");
            push_toml_string(&mut s, t);
            s.push('\n');
        }
        if !self.ca_files.is_empty() {
            s.push_str("ca_files = [");
            for (i, f) in self.ca_files.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                push_toml_string(&mut s, f);
            }
            s.push_str("]\n");
        }
        if let Some(p) = &self.proxy {
            s.push_str("proxy = ");
            push_toml_string(&mut s, p);
            s.push('\n');
        }
        for p in &self.peers {
            s.push_str("\n[[wireguard.peers]]\npublic_key = ");
            push_toml_string(&mut s, &p.public_key);
            s.push_str("\nendpoint = ");
            push_toml_string(&mut s, &p.endpoint);
            s.push_str("\nallowed_ips = [");
            for (i, net) in p.allowed_ips.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                push_toml_string(&mut s, net);
            }
            s.push_str("]\n");
            if let Some(e) = &p.tcp_endpoint {
                s.push_str("tcp_endpoint = ");
                push_toml_string(&mut s, e);
                s.push('\n');
            }
            if let Some(e) = &p.tls_endpoint {
                s.push_str("tls_endpoint = ");
                push_toml_string(&mut s, e);
                s.push('\n');
            }
            if let Some(k) = p.persistent_keepalive {
                s.push_str(&format!("persistent_keepalive = {k}\n"));
            }
        }
        s
    }
}

/// One `[[wireguard.peers]]` entry: a vendor gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerToml {
    public_key: String,
    endpoint: String,
    allowed_ips: Vec<String>,
    tcp_endpoint: Option<String>,
    tls_endpoint: Option<String>,
    persistent_keepalive: Option<u16>,
}

impl PeerToml {
    /// A peer with `public_key` (base64, e.g. a [`crate::keys::PublicKey`]), `endpoint`
    /// (`host:port`, e.g. a `SocketAddr`) and one `allowed_ips` entry (an IP network in CIDR
    /// form, e.g. an `ipnet::IpNet`).
    pub fn new(public_key: impl Display, endpoint: impl Display, allowed_ip: impl Display) -> Self {
        Self {
            public_key: public_key.to_string(),
            endpoint: endpoint.to_string(),
            allowed_ips: vec![allowed_ip.to_string()],
            tcp_endpoint: None,
            tls_endpoint: None,
            persistent_keepalive: None,
        }
    }

    /// Adds another `allowed_ips` entry.
    pub fn allowed_ip(mut self, net: impl Display) -> Self {
        self.allowed_ips.push(net.to_string());
        self
    }

    /// Sets `tcp_endpoint` (`host:port`; left out, the stream transport uses `endpoint`).
    pub fn tcp_endpoint(mut self, endpoint: impl Display) -> Self {
        self.tcp_endpoint = Some(endpoint.to_string());
        self
    }

    /// Sets `tls_endpoint` (`host:port`; left out, the `tls` transport uses `endpoint`'s host,
    /// port 443).
    pub fn tls_endpoint(mut self, endpoint: impl Display) -> Self {
        self.tls_endpoint = Some(endpoint.to_string());
        self
    }

    /// Sets `persistent_keepalive` in seconds (0 = off; left out, the broker's default is 20).
    pub fn persistent_keepalive(mut self, seconds: u16) -> Self {
        self.persistent_keepalive = Some(seconds);
        self
    }
}

/// Appends `v` as a TOML string value, quoted and escaped.
fn push_toml_string(s: &mut String, v: &str) {
    // The `toml` crate's own encoder (the one `config::dump` renders with): it quotes and
    // escapes as TOML requires.
    s.push_str(&::toml::Value::String(v.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{self, LoadMode};

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    fn parse(text: &str) -> ::toml::Table {
        text.parse::<::toml::Table>()
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn wireguard(t: &::toml::Table) -> &::toml::Table {
        t["wireguard"].as_table().expect("[wireguard] table")
    }

    fn peers(t: &::toml::Table) -> Vec<&::toml::Table> {
        wireguard(t)["peers"]
            .as_array()
            .expect("peers array")
            .iter()
            .map(|p| p.as_table().expect("peer table"))
            .collect()
    }

    fn strs(v: &::toml::Value) -> Vec<&str> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string"))
            .collect()
    }

    #[test]
    fn renders_every_field() {
        let broker = key(1);
        let (a, b) = (key(2).public_key(), key(3).public_key());
        let text = WireguardToml::new(&broker, "10.77.0.2")
            .listen_port(51821)
            .transport("tcp")
            .peer(
                PeerToml::new(a, "127.0.0.1:4000", "10.77.0.1/32")
                    .persistent_keepalive(0)
                    .tcp_endpoint("127.0.0.1:4001"),
            )
            .peers([PeerToml::new(b, "gw.example:51820", "10.77.1.0/24")
                .allowed_ip("fd00::/64")
                .persistent_keepalive(25)])
            .render();
        let t = parse(&text);
        let wg = wireguard(&t);
        assert_eq!(
            wg["private_key"].as_str(),
            Some(broker.to_base64().as_str())
        );
        assert_eq!(wg["address"].as_str(), Some("10.77.0.2"));
        assert_eq!(wg["listen_port"].as_integer(), Some(51821));
        assert_eq!(wg["transport"].as_str(), Some("tcp"));
        assert_eq!(wg.len(), 5, "{text}");
        let p = peers(&t);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["public_key"].as_str(), Some(a.to_string().as_str()));
        assert_eq!(p[0]["endpoint"].as_str(), Some("127.0.0.1:4000"));
        assert_eq!(p[0]["tcp_endpoint"].as_str(), Some("127.0.0.1:4001"));
        assert_eq!(strs(&p[0]["allowed_ips"]), ["10.77.0.1/32"]);
        assert_eq!(p[0]["persistent_keepalive"].as_integer(), Some(0));
        assert_eq!(p[1]["public_key"].as_str(), Some(b.to_string().as_str()));
        assert_eq!(p[1]["endpoint"].as_str(), Some("gw.example:51820"));
        assert_eq!(strs(&p[1]["allowed_ips"]), ["10.77.1.0/24", "fd00::/64"]);
        assert_eq!(p[1]["persistent_keepalive"].as_integer(), Some(25));
    }

    #[test]
    fn optional_fields_are_left_out() {
        let text = WireguardToml::new(&key(1), "10.77.0.2")
            .peer(PeerToml::new(
                key(2).public_key(),
                "127.0.0.1:4000",
                "10.77.0.1/32",
            ))
            .render();
        let t = parse(&text);
        assert!(!wireguard(&t).contains_key("listen_port"), "{text}");
        let p = peers(&t);
        assert_eq!(p.len(), 1);
        assert!(!p[0].contains_key("persistent_keepalive"), "{text}");
        // No peers: no peers array at all.
        let t = parse(&WireguardToml::new(&key(1), "10.77.0.2").render());
        assert!(!wireguard(&t).contains_key("peers"));
    }

    #[test]
    fn the_layout_is_stable() {
        // `loadtest --gateway` prints this text for a human to paste: keep its shape.
        let text = WireguardToml::without_private_key("<the broker's key>", "10.77.0.2")
            .peer(PeerToml::new(
                "PUB",
                "<this host's address>:4000",
                "10.77.0.1/32",
            ))
            .render();
        assert_eq!(
            text,
            "[wireguard]\n# private_key = <the broker's key>\naddress = \"10.77.0.2\"\n\
             \n[[wireguard.peers]]\npublic_key = \"PUB\"\nendpoint = \"<this host's address>:4000\"\n\
             allowed_ips = [\"10.77.0.1/32\"]\n"
        );
        let text = WireguardToml::new(&key(1), "10.77.0.2")
            .listen_port(0)
            .peer(PeerToml::new("PUB", "127.0.0.1:4000", "10.77.0.1/32").persistent_keepalive(0))
            .render();
        assert_eq!(
            text,
            format!(
                "[wireguard]\nprivate_key = \"{}\"\naddress = \"10.77.0.2\"\nlisten_port = 0\n\
                 \n[[wireguard.peers]]\npublic_key = \"PUB\"\nendpoint = \"127.0.0.1:4000\"\n\
                 allowed_ips = [\"10.77.0.1/32\"]\npersistent_keepalive = 0\n",
                key(1).to_base64()
            )
        );
    }

    #[test]
    fn values_are_escaped() {
        let nasty = "a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{7f}é\"]\n[admin]\nx = \"";
        let text = WireguardToml::new(&key(1), nasty)
            .peer(PeerToml::new(nasty, nasty, nasty).allowed_ip(nasty))
            .render();
        let t = parse(&text);
        assert_eq!(t.len(), 1, "nothing escaped the table: {text}");
        let wg = wireguard(&t);
        assert_eq!(wg["address"].as_str(), Some(nasty));
        let p = peers(&t);
        assert_eq!(p[0]["public_key"].as_str(), Some(nasty));
        assert_eq!(p[0]["endpoint"].as_str(), Some(nasty));
        assert_eq!(strs(&p[0]["allowed_ips"]), [nasty, nasty]);
    }

    #[test]
    fn the_placeholder_is_a_comment_only() {
        let text = WireguardToml::without_private_key(
            "<paste it here>\nprivate_key = \"injected\"",
            "10.77.0.2",
        )
        .render();
        assert!(
            text.contains("\n# private_key = <paste it here> private_key = \"injected\"\n"),
            "{text}"
        );
        let t = parse(&text);
        let wg = wireguard(&t);
        assert!(!wg.contains_key("private_key"), "{text}");
        assert_eq!(wg["address"].as_str(), Some("10.77.0.2"));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let k = key(7);
        let wg = WireguardToml::new(&k, "10.77.0.2");
        assert!(!format!("{wg:?}").contains(&k.to_base64()));
    }

    #[test]
    fn the_config_loader_accepts_it() {
        let broker = key(1);
        let (a, b) = (key(2).public_key(), key(3).public_key());
        let text = WireguardToml::new(&broker, "10.77.0.2")
            .listen_port(51821)
            .peer(PeerToml::new(a, "127.0.0.1:4000", "10.77.0.1/32").persistent_keepalive(0))
            .peer(PeerToml::new(b, "[::1]:4001", "10.77.1.0/24").allowed_ip("fd00::/64"))
            .render();
        let loaded = config::load_str(
            &[(PathBuf::from("test.toml"), text)],
            LoadMode::Full,
            &|_: &str| None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let wg = &loaded.config.wireguard;
        assert_eq!(wg.private_key, broker);
        assert_eq!(wg.address.to_string(), "10.77.0.2");
        assert_eq!(wg.listen_port, 51821);
        assert_eq!(wg.peers.len(), 2);
        assert_eq!(wg.peers[0].public_key, a);
        assert_eq!(wg.peers[0].endpoint.to_string(), "127.0.0.1:4000");
        assert_eq!(
            wg.peers[0]
                .allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.77.0.1/32"]
        );
        assert_eq!(wg.peers[0].persistent_keepalive, 0);
        assert_eq!(wg.peers[1].public_key, b);
        assert_eq!(wg.peers[1].endpoint.to_string(), "[::1]:4001");
        assert_eq!(
            wg.peers[1]
                .allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.77.1.0/24", "fd00::/64"]
        );
        assert_eq!(wg.peers[1].persistent_keepalive, 20, "the default");
    }
}
