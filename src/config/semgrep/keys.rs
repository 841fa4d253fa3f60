//! Semgrep's schema mapped onto ours, key by key: one method per YAML mapping
//! (`inbound.wireguard`, `inbound.allowlist[N]` ...), each reading its keys through
//! [`super::reader`] and writing the TOML keys they translate to.

use toml::{Table, Value};
use yaml_rust2::Yaml;

use super::reader::{Tx, yaml_type};

impl Tx<'_> {
    pub(super) fn root(&mut self, root: &Yaml) {
        let Some(mut m) = self.map("", root) else {
            return;
        };
        if let Some((p, v)) = m.get("inbound") {
            self.inbound(&p, v);
        }
        if let Some((p, v)) = m.get("outbound") {
            self.outbound(&p, v);
        }
        if let Some((p, v)) = m.get("metrics") {
            self.metrics(&p, v);
        }
        self.finish(m);
    }

    /// Sets `section.key` in the output.
    fn set(&mut self, section: &str, key: &str, value: Value, yaml: &str) {
        let t = self
            .out
            .table
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = t {
            t.insert(key.to_owned(), value);
        }
        self.from(&format!("{section}.{key}"), yaml);
    }

    fn inbound(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("wireguard") {
            self.wireguard(&p, v);
        }
        if let Some((p, v)) = m.get("allowlist") {
            self.allowlist(&p, v);
        }
        if let Some((p, v)) = m.get("proxyListenPort") {
            match self.int(&p, v) {
                // 0: Semgrep's default, 80, which is ours.
                Some(0) => {}
                Some(n) => self.set("inbound", "listen_port", Value::Integer(n), &p),
                None => {}
            }
        }
        if let Some((p, v)) = m.get("logging") {
            self.logging(&p, v);
        }
        if let Some((p, v)) = m.get("heartbeat") {
            self.heartbeat(&p, v);
        }
        let mut scms = Vec::new();
        if let Some((p, v)) = m.get("scms") {
            match v {
                Yaml::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        if let Some(e) = self.scm(&ip, item, None) {
                            scms.push(e);
                        }
                    }
                }
                other => self.error(&p, format!("expected a list, found {}", yaml_type(other))),
            }
        }
        for kind in ["github", "gitlab", "bitbucket", "azuredevops"] {
            if let Some((p, v)) = m.get(kind) {
                if let Some(e) = self.scm(&p, v, Some(kind)) {
                    scms.push(e);
                }
            }
        }
        if !scms.is_empty() {
            let mut entries = Vec::with_capacity(scms.len());
            for (i, (t, pairs)) in scms.into_iter().enumerate() {
                for (suffix, yaml) in pairs {
                    self.out.scm_paths.push((format!("scm[{i}]{suffix}"), yaml));
                }
                entries.push(Value::Table(t));
            }
            self.out.table.insert("scm".into(), Value::Array(entries));
        }
        if let Some((p, v)) = m.get("httpClient") {
            self.http_client(&p, v);
        }
        self.finish(m);
    }

    fn wireguard(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("localAddress") {
            if let Some(s) = self.string(&p, v) {
                // An address, sometimes written with the tunnel's prefix length.
                let addr = match s.split_once('/') {
                    Some((a, _)) => {
                        self.note("wireguard.address", "the prefix length of localAddress is not needed: peers' allowed_ips route");
                        a.to_owned()
                    }
                    None => s,
                };
                self.set("wireguard", "address", addr.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("privateKey") {
            if let Some(s) = self.string(&p, v) {
                self.set("wireguard", "private_key", s.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("listenPort") {
            if let Some(n) = self.int(&p, v) {
                self.set("wireguard", "listen_port", Value::Integer(n), &p);
            }
        }
        if let Some((p, v)) = m.get("mtu") {
            match self.int(&p, v) {
                // 0: Semgrep's default, 1320, which is ours.
                Some(0) | None => {}
                Some(n) => self.set("wireguard", "mtu", Value::Integer(n), &p),
            }
        }
        if let Some((p, v)) = m.get("dns") {
            if self.strings(&p, v).is_some_and(|d| !d.is_empty()) {
                self.note(
                    "wireguard",
                    "inbound.wireguard.dns is not needed: nothing is resolved inside the tunnel \
                     (the heartbeat URL names an address)",
                );
            }
        }
        if let Some((p, v)) = m.get("verbose") {
            if self.bool(&p, v) == Some(true) {
                self.out
                    .table
                    .entry("log")
                    .or_insert_with(|| Value::Table(Table::new()));
                if let Some(Value::Table(log)) = self.out.table.get_mut("log") {
                    log.insert("level".into(), "debug".into());
                }
                self.from("log.level", &p);
                self.note("log.level", "from inbound.wireguard.verbose: true");
            }
        }
        if let Some((p, v)) = m.get("preferTcpTransport") {
            // Semgrep's WireGuard over TCP: each datagram prefixed by its 16-bit big-endian
            // length, our `tcp` transport's framing.
            match self.bool(&p, v) {
                Some(true) => self.set("wireguard", "transport", "tcp".into(), &p),
                Some(false) => self.note(
                    "wireguard",
                    "preferTcpTransport: false (UDP) kept our default transport, \"auto\": UDP \
                     first, a TCP or TLS stream only when UDP gets no handshake",
                ),
                None => {}
            }
        }
        if let Some((p, v)) = m.get("disablePeerSettingsDnsLookup") {
            // wgbroker never looks peer settings up in DNS TXT records: true is what it does,
            // and with false every peer key must be written out anyway (a missing one is an
            // error of its own).
            let _ = self.bool(&p, v);
        }
        if let Some((p, v)) = m.get("peers") {
            match v {
                Yaml::Array(items) => {
                    let mut peers = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        if let Some(t) = self.peer(&ip, i, item) {
                            peers.push(Value::Table(t));
                        }
                    }
                    if let Value::Table(wg) = self
                        .out
                        .table
                        .entry("wireguard")
                        .or_insert_with(|| Value::Table(Table::new()))
                    {
                        wg.insert("peers".into(), Value::Array(peers));
                    }
                    self.from("wireguard.peers", &p);
                }
                other => self.error(&p, format!("expected a list, found {}", yaml_type(other))),
            }
        }
        self.finish(m);
    }

    fn peer(&mut self, path: &str, index: usize, v: &Yaml) -> Option<Table> {
        let mut m = self.map(path, v)?;
        let mut t = Table::new();
        let tp = format!("wireguard.peers[{index}]");
        if let Some((p, v)) = m.get("publicKey") {
            if let Some(s) = self.string(&p, v) {
                t.insert("public_key".into(), s.into());
                self.from(&format!("{tp}.public_key"), &p);
            }
        }
        if let Some((p, v)) = m.get("endpoint") {
            if let Some(s) = self.string(&p, v) {
                t.insert("endpoint".into(), s.into());
                self.from(&format!("{tp}.endpoint"), &p);
            }
        }
        if let Some((p, v)) = m.get("allowedIps") {
            if let Some(list) = self.strings(&p, v) {
                // Semgrep takes one CIDR in a string; a comma-separated list reads the same.
                let nets: Vec<Value> = list
                    .iter()
                    .flat_map(|s| s.split(','))
                    .map(|s| Value::String(s.trim().to_owned()))
                    .collect();
                t.insert("allowed_ips".into(), Value::Array(nets));
                self.from(&format!("{tp}.allowed_ips"), &p);
            }
        }
        let mut keepalive = None;
        if let Some((p, v)) = m.get("persistentKeepaliveInterval") {
            match self.int(&p, v) {
                Some(n) if n > 0 => keepalive = Some((Value::Integer(n), p)),
                Some(_) => self.error(&p, "must be greater than zero (to turn keepalives off, set disablePersistentKeepalive: true)"),
                None => {}
            }
        }
        if let Some((p, v)) = m.get("disablePersistentKeepalive") {
            if self.bool(&p, v) == Some(true) {
                keepalive = Some((Value::Integer(0), p));
                self.note(
                    &format!("{tp}.persistent_keepalive"),
                    "disablePersistentKeepalive: true",
                );
            }
        }
        if let Some((value, p)) = keepalive {
            t.insert("persistent_keepalive".into(), value);
            self.from(&format!("{tp}.persistent_keepalive"), &p);
        }
        self.from(&tp, path);
        self.finish(m);
        Some(t)
    }

    fn allowlist(&mut self, path: &str, v: &Yaml) {
        let Yaml::Array(items) = v else {
            self.error(path, format!("expected a list, found {}", yaml_type(v)));
            return;
        };
        let mut rules = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            self.from(&format!("allow[{i}]"), &ip);
            let Some(mut m) = self.map(&ip, item) else {
                continue;
            };
            let mut t = Table::new();
            let tp = format!("allow[{i}]");
            if let Some((p, v)) = m.get("url") {
                if let Some(s) = self.string(&p, v) {
                    t.insert("url".into(), s.into());
                    self.from(&format!("{tp}.url"), &p);
                }
            }
            if let Some((p, v)) = m.get("methods") {
                if let Some(list) = self.strings(&p, v) {
                    let list: Vec<Value> = list
                        .into_iter()
                        .map(|s| Value::String(s.to_ascii_uppercase()))
                        .collect();
                    t.insert("methods".into(), Value::Array(list));
                    self.from(&format!("{tp}.methods"), &p);
                }
            } else {
                // Semgrep: no methods, nothing allowed. Ours requires the key; say so at the
                // YAML path.
                self.error(
                    &ip,
                    "missing methods (a rule without methods allows nothing)",
                );
            }
            if let Some((p, v)) = m.get("setRequestHeaders") {
                if let Some(mut h) = self.map(&p, v) {
                    let mut headers = Table::new();
                    let names: Vec<&str> = h.entries.iter().map(|(k, _)| *k).collect();
                    for name in names {
                        if let Some((hp, hv)) = h.get(name) {
                            if let Some(s) = self.string(&hp, hv) {
                                headers.insert(name.to_owned(), s.into());
                            }
                        }
                    }
                    self.finish(h);
                    t.insert("set_request_headers".into(), Value::Table(headers));
                    self.from(&format!("{tp}.set_request_headers"), &p);
                }
            }
            if let Some((p, v)) = m.get("removeResponseHeaders") {
                if let Some(list) = self.strings(&p, v) {
                    let list = list.into_iter().map(Value::String).collect();
                    t.insert("remove_response_headers".into(), Value::Array(list));
                    self.from(&format!("{tp}.remove_response_headers"), &p);
                }
            }
            for (yk, tk) in [
                ("logRequestBody", "log_request_body"),
                ("logRequestHeaders", "log_request_headers"),
                ("logResponseBody", "log_response_body"),
                ("logResponseHeaders", "log_response_headers"),
            ] {
                if let Some((p, v)) = m.get(yk) {
                    if let Some(b) = self.bool(&p, v) {
                        t.insert(tk.into(), Value::Boolean(b));
                        self.from(&format!("{tp}.{tk}"), &p);
                    }
                }
            }
            self.finish(m);
            rules.push(Value::Table(t));
        }
        self.out.table.insert("allow".into(), Value::Array(rules));
        self.from("allow", path);
    }

    fn logging(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("skipPaths") {
            if self.strings(&p, v).is_some_and(|s| !s.is_empty()) {
                self.error(
                    &p,
                    "not supported: wgbroker does not leave requests out of its log by path",
                );
            }
        }
        for k in [
            "logRequestBody",
            "logRequestHeaders",
            "logResponseBody",
            "logResponseHeaders",
        ] {
            if let Some((p, v)) = m.get(k) {
                if self.bool(&p, v) == Some(true) {
                    self.error(
                        &p,
                        format!(
                            "not supported for every request: wgbroker logs bodies and headers \
                             per rule; set {k}: true on the inbound.allowlist entries that need it \
                             (the rules generated for SCMs cannot log them)"
                        ),
                    );
                }
            }
        }
        self.finish(m);
    }

    fn heartbeat(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("url") {
            if let Some(s) = self.string(&p, v) {
                self.set("heartbeat", "url", s.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("intervalSeconds") {
            match self.int(&p, v) {
                // 0: Semgrep's default (60 s), applied once the files are merged.
                Some(0) | None => {}
                Some(_) => {
                    if let Some(d) = self.seconds(&p, v) {
                        self.set("heartbeat", "interval", d, &p);
                    }
                }
            }
        }
        if let Some((p, v)) = m.get("timeoutSeconds") {
            match self.int(&p, v) {
                Some(0) | None => {}
                Some(_) => {
                    if let Some(d) = self.seconds(&p, v) {
                        self.set("heartbeat", "timeout", d, &p);
                    }
                }
            }
        }
        if let Some((p, v)) = m.get("panicAfterFailureCount") {
            if self.int(&p, v).is_some_and(|n| n > 0) {
                self.note(
                    "heartbeat",
                    "inbound.heartbeat.panicAfterFailureCount: wgbroker never exits on failed \
                     heartbeats; each failure is logged (heartbeat.failure) and /readyz answers \
                     503 until one passes: point the supervisor's probe at /readyz to restart",
                );
            }
        }
        if let Some((p, v)) = m.get("firstHeartbeatMustSucceed") {
            if self.bool(&p, v) == Some(true) {
                self.note(
                    "heartbeat",
                    "inbound.heartbeat.firstHeartbeatMustSucceed: wgbroker does not exit; /readyz \
                     answers 503 (\"no heartbeat has completed yet\") until the first one passes",
                );
            }
        }
        self.finish(m);
    }

    /// One SCM: an `inbound.scms[]` entry (`kind` None: it has a `type`) or a single-provider
    /// key. Returns the `[[scm]]` table and its (TOML suffix, YAML path) pairs.
    #[allow(clippy::type_complexity)]
    fn scm(
        &mut self,
        path: &str,
        v: &Yaml,
        kind: Option<&str>,
    ) -> Option<(Table, Vec<(String, String)>)> {
        let mut m = self.map(path, v)?;
        let mut t = Table::new();
        let mut pairs = vec![(String::new(), path.to_owned())];
        match kind {
            Some(k) => {
                t.insert("type".into(), k.into());
            }
            None => match m.get("type") {
                Some((p, v)) => {
                    if let Some(s) = self.string(&p, v) {
                        t.insert("type".into(), s.to_ascii_lowercase().into());
                        pairs.push((".type".into(), p));
                    }
                }
                None => self.error(
                    path,
                    "missing type (github, gitlab, bitbucket or azuredevops)",
                ),
            },
        }
        match m.get("baseUrl") {
            Some((p, v)) => {
                if let Some(s) = self.string(&p, v) {
                    t.insert("base_url".into(), s.into());
                    pairs.push((".base_url".into(), p));
                }
            }
            None => self.error(
                path,
                "missing baseUrl (it identifies the instance, also when files are overlaid)",
            ),
        }
        if let Some((p, v)) = m.get("token") {
            if let Some(s) = self.string(&p, v) {
                // Semgrep: an empty token adds no header.
                if !s.is_empty() {
                    t.insert("token".into(), s.into());
                    pairs.push((".token".into(), p));
                }
            }
        }
        if let Some((p, v)) = m.get("allowCodeAccess") {
            if let Some(b) = self.bool(&p, v) {
                t.insert("allow_code_access".into(), Value::Boolean(b));
                pairs.push((".allow_code_access".into(), p));
            }
        }
        self.finish(m);
        Some((t, pairs))
    }

    fn http_client(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("additionalCACerts") {
            if let Some(list) = self.strings(&p, v) {
                let list = list.into_iter().map(Value::String).collect();
                self.set("upstream", "ca_files", Value::Array(list), &p);
            }
        }
        if let Some((p, v)) = m.get("tlsMinVersion") {
            if let Some(s) = self.string(&p, v) {
                self.set("upstream", "tls_min_version", s.into(), &p);
            }
        }
        self.finish(m);
    }

    fn outbound(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("relay") {
            match v {
                Yaml::Hash(h) if h.is_empty() => {}
                // Ours verifies, filters by JSON Pointer conditions that must all hold, spools
                // and answers 202; Semgrep's matches one JSONPath against any `equals` or
                // `contains` value and forwards synchronously: not the same relay, so the
                // operator writes ours rather than getting a silently different one.
                _ => self.error(
                    &p,
                    "Semgrep's webhook relays are not translated (a JSONPath whose `equals` or \
                     `contains` value matches, answered synchronously); write them as \
                     [[outbound.relay]] in a TOML file (README: [outbound])",
                ),
            }
        }
        // Only Semgrep's `relay` command reads these; with no relay they change nothing.
        for k in ["listenPort", "logging"] {
            let _ = m.get(k);
        }
        self.finish(m);
    }

    fn metrics(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("disabled") {
            if let Some(b) = self.bool(&p, v) {
                self.set("admin", "enabled", Value::Boolean(!b), &p);
                self.note("admin.enabled", format!("metrics.disabled: {b}"));
            }
        }
        if let Some((p, v)) = m.get("addr") {
            if let Some(s) = self.string(&p, v) {
                // Go's ":9000" is every interface.
                let listen = match s.strip_prefix(':') {
                    Some(port) => {
                        self.note(
                            "admin.listen",
                            format!("metrics.addr {s:?}: every IPv4 interface"),
                        );
                        format!("0.0.0.0:{port}")
                    }
                    None => s,
                };
                self.set("admin", "listen", listen.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("healthcheckGracePeriodSeconds") {
            if self.int(&p, v).is_some() {
                self.note(
                    "admin",
                    "metrics.healthcheckGracePeriodSeconds: /healthz answers 200 from the start; \
                     /readyz says when the tunnel and heartbeat are up",
                );
            }
        }
        self.finish(m);
    }
}
