//! The gateway side of the `tls` transport: the rustls server configuration the accepting ends
//! (`wgbroker gateway`'s `[gateway] tls_listen`, the test kit gateway) serve the framed stream
//! with.
//!
//! TLS 1.3 only (the brokers are ours; [`crate::upstream::tls::stream_client_config`] offers
//! nothing older), the *ring* provider chosen explicitly like every other configuration here, no
//! client certificate (WireGuard authenticates the broker inside), no ALPN. Sans-IO: it takes
//! PEM bytes; whoever reads the files names them in errors.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server configuration presenting `cert_pem` (the certificate chain, leaf first) with
/// `key_pem` (its private key: PKCS#8, PKCS#1 or SEC1). Errors say what is wrong, never the
/// key's bytes.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM certificate in the certificate file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| "no usable PEM private key in the key file".to_owned())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_its_key_make_a_config_and_mismatches_are_named() {
        let a = rcgen::generate_simple_self_signed(vec!["gw.example".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["gw.example".into()]).expect("cert");
        let cert = a.cert.pem();
        let key = a.key_pair.serialize_pem();
        assert!(server_config_from_pem(cert.as_bytes(), key.as_bytes()).is_ok());
        let e = server_config_from_pem(cert.as_bytes(), b.key_pair.serialize_pem().as_bytes())
            .expect_err("mismatch");
        assert!(e.contains("do not go together"), "{e}");
        let e = server_config_from_pem(b"", key.as_bytes()).expect_err("no cert");
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = server_config_from_pem(cert.as_bytes(), b"junk").expect_err("no key");
        assert!(e.contains("private key") && !e.contains("junk"), "{e}");
    }
}
