//! WireGuard keys in the format of `wg genkey` / `wg pubkey`: 32 bytes, standard base64 (44
//! characters with one `=`).
//!
//! Invariant: a [`PrivateKey`] is clamped like `wg genkey` clamps (so `genkey` output is
//! byte-identical in form) and never prints itself.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

/// Why a key string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 44 characters of standard base64 decoding to 32 bytes.
    #[error("key is not the correct length or format (expected 44 base64 characters)")]
    Format,
    /// The operating system's random source failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Decodes any 32-byte key in `wg` format (a pre-shared key, say) without clamping.
pub fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != 44 {
        return Err(KeyError::Format);
    }
    let bytes = STANDARD.decode(s).map_err(|_| KeyError::Format)?;
    bytes.try_into().map_err(|_| KeyError::Format)
}

/// A Curve25519 private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

/// A Curve25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key, clamped as `wg genkey` does.
    pub fn generate() -> Result<Self, KeyError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|_| KeyError::Random)?;
        Ok(Self::from_bytes(b))
    }

    /// Wraps raw bytes, clamping them.
    pub fn from_bytes(mut b: [u8; 32]) -> Self {
        b[0] &= 248;
        b[31] = (b[31] & 127) | 64;
        Self(b)
    }

    /// Parses a base64 key (surrounding whitespace ignored). Like `wg`, an unclamped key is
    /// accepted; the scalar multiplication clamps anyway.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// The key in `wg` format. Deliberately not `Display`.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.to_x25519()).to_bytes())
    }

    /// The key as boringtun wants it.
    pub fn to_x25519(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PublicKey {
    /// Parses a base64 key.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as boringtun wants it.
    pub fn to_x25519(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let k = PrivateKey::generate().expect("os rng works");
        let b = k.to_base64();
        assert_eq!(b.len(), 44);
        let raw = STANDARD.decode(&b).expect("valid base64");
        assert_eq!(raw[0] & 7, 0);
        assert_eq!(raw[31] & 0xc0, 0x40);
        assert_eq!(PrivateKey::from_base64(&b).expect("round trip"), k);
        assert_ne!(PrivateKey::generate().expect("os rng works"), k);
    }

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let private = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let k = PrivateKey::from_base64(&STANDARD.encode(private)).expect("valid");
        assert_eq!(k.public_key().as_bytes(), &public);
    }

    #[test]
    fn rejects_bad_keys() {
        for bad in [
            "",
            "abc",
            &"A".repeat(43),
            &"A".repeat(45),
            &format!("{}!=", "A".repeat(42)),
        ] {
            assert_eq!(
                PrivateKey::from_base64(bad),
                Err(KeyError::Format),
                "{bad:?}"
            );
        }
        assert!(!format!("{:?}", PrivateKey::from_bytes([7; 32])).contains("Bw"));
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }
}
