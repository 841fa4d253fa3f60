//! The rustls client configurations: upstream connections, and the WireGuard `tls` transport.
//!
//! Responsibility: build one [`rustls::ClientConfig`] per configuration (shared by every shard
//! through an `Arc`) that trusts the webpki root set, the system store and the PEM bundles of
//! `[upstream] ca_files`, offers only the protocol versions `tls_min_version` allows, and
//! advertises ALPN `http/1.1` (the broker speaks HTTP/1.1 upstream, never h2). The `tls`
//! transport's ([`stream_client_config`]) trusts the same system roots plus `[wireguard]
//! ca_files`, speaks TLS 1.3 only (the gateway is ours) and advertises no ALPN.
//!
//! Invariants: the crypto provider is always *ring*, chosen explicitly (no process-wide default is
//! read or installed); a `ca_files` entry that cannot be read, holds no certificate, or holds a
//! certificate rustls refuses as a trust anchor is an error naming the file — never silently
//! skipped. An unreadable system store is not an error (the broker may run in a minimal
//! container); it is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{TlsVersion, Upstream};

/// Largest CA bundle read from `ca_files`, bytes. A system bundle is ~200 KiB.
pub const MAX_CA_FILE: u64 = 16 * 1024 * 1024;

/// The client configuration for `[upstream]`; the error names the offending file or setting.
pub fn client_config(c: &Upstream) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = root_store(&c.ca_files, "upstream.ca_files")?;
    client_config_with_roots(roots, c.tls_min_version)
}

/// The client configuration of the WireGuard `tls` transport (and of an `https://` proxy on the
/// way to a gateway): the system roots plus `[wireguard] ca_files`, TLS 1.3 only, no ALPN.
pub fn stream_client_config(ca_files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = root_store(ca_files, "wireguard.ca_files")?;
    let mut config = client_config_with_roots(roots, TlsVersion::V1_3)?;
    Arc::make_mut(&mut config).alpn_protocols.clear();
    Ok(config)
}

/// The webpki roots, the system store and every certificate of `ca_files` (`setting` names the
/// list in errors).
pub fn root_store(ca_files: &[PathBuf], setting: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if !native.errors.is_empty() || ignored > 0 {
        tracing::debug!(
            event = "upstream.tls_roots",
            system_added = added,
            system_ignored = ignored,
            errors = native.errors.len(),
            "some system CA certificates could not be loaded"
        );
    }
    for path in ca_files {
        add_ca_file(&mut roots, path, setting)?;
    }
    Ok(roots)
}

/// A client configuration trusting exactly `roots` (for callers and tests that bring their own).
pub fn client_config_with_roots(
    roots: RootCertStore,
    min_version: TlsVersion,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("upstream TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Adds every certificate of the PEM file at `path` to `roots`; `setting` names the list the
/// file comes from in errors.
pub fn add_ca_file(roots: &mut RootCertStore, path: &Path, setting: &str) -> Result<usize, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{setting}: cannot read {shown}: {e}"))?
        .len();
    if len > MAX_CA_FILE {
        return Err(format!(
            "{setting}: {shown} is {len} bytes, more than the {MAX_CA_FILE} accepted"
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("{setting}: cannot read {shown}: {e}"))?;
    let mut count = 0usize;
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("{setting}: {shown}: bad PEM: {e}"))?;
        roots.add(cert).map_err(|e| {
            format!(
                "{setting}: {shown}: certificate {} is not a usable CA: {e}",
                i + 1
            )
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("{setting}: {shown} contains no PEM certificate"));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(ca_files: Vec<std::path::PathBuf>, v: TlsVersion) -> Upstream {
        Upstream {
            ca_files,
            tls_min_version: v,
            connect_timeout: std::time::Duration::from_secs(1),
            tls_timeout: std::time::Duration::from_secs(1),
            response_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            proxy: None,
            no_proxy: Vec::new(),
            use_env_proxy: false,
        }
    }

    #[test]
    fn alpn_and_versions() {
        let c = client_config(&upstream(Vec::new(), TlsVersion::V1_3)).expect("config");
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let c12 = client_config(&upstream(Vec::new(), TlsVersion::V1_2)).expect("config");
        assert_eq!(c12.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn the_stream_transport_config_names_its_own_setting_and_offers_no_alpn() {
        let c = stream_client_config(&[]).expect("config");
        assert!(c.alpn_protocols.is_empty());
        let e = stream_client_config(&["/nonexistent/gw-ca.pem".into()]).expect_err("must fail");
        assert!(
            e.starts_with("wireguard.ca_files: ") && e.contains("/nonexistent/gw-ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn missing_ca_file_is_named() {
        let e = client_config(&upstream(
            vec!["/nonexistent/ca.pem".into()],
            TlsVersion::V1_2,
        ))
        .expect_err("must fail");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").expect("write");
        let e = client_config(&upstream(vec![p.clone()], TlsVersion::V1_2)).expect_err("must fail");
        assert!(
            e.contains("no PEM certificate") && e.contains("empty.pem"),
            "{e}"
        );
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = client_config(&upstream(vec![p], TlsVersion::V1_2)).expect_err("must fail");
        assert!(e.contains("empty.pem"), "{e}");
    }
}
