//! A certificate made in process for the test kit gateway's `tls` listener (tests, `demo`,
//! `loadtest --gateway --tls-listen` without certificate files): self-signed, for the names and
//! addresses given, thrown away with the process. The broker trusts it through `[wireguard]
//! ca_files` (write [`SelfSigned::cert_pem`] to a file).

use std::sync::Arc;

/// A self-signed certificate and the server configuration presenting it.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// For the gateway ([`crate::transport::tls::server_config_from_pem`]).
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate, PEM: what the broker's `ca_files` must hold.
    pub cert_pem: String,
    /// Its private key, PEM (for writing a `[gateway] tls_key` file in tests).
    pub key_pem: String,
}

/// A certificate for `names` (DNS names or IP addresses, which become IP SANs).
pub fn self_signed(names: &[String]) -> Result<SelfSigned, String> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("self-signed certificate: {e}"))?;
    let cert_pem = made.cert.pem();
    let key_pem = made.key_pair.serialize_pem();
    let config =
        crate::transport::tls::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
    Ok(SelfSigned {
        config,
        cert_pem,
        key_pem,
    })
}
