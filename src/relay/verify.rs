//! Webhook authenticity, per SCM, in constant time.
//!
//! * GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA-256(secret, body)>`.
//! * Bitbucket Data Center: `X-Hub-Signature: sha256=<hex HMAC-SHA-256(secret, body)>`.
//! * GitLab: `X-Gitlab-Token: <secret>` (a shared token, no signature).
//! * Azure DevOps: `Authorization: Basic base64(user:password)`, the secret being
//!   `user:password` (service hooks send the basic credentials configured on the subscription).
//!
//! HMACs are checked with `ring::hmac::verify` (constant time). A plain token is compared by
//! HMAC-ing the presented value under a random per-process key and verifying it against the
//! tag of the expected value ([`TokenCheck`]), so neither its content nor its length leak through
//! timing; the expected token is kept only as that tag.

use base64::Engine as _;
use ring::hmac;

use super::spec::WebhookScm;

/// Why a webhook failed verification (answered 401; the reason is logged, never a value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// The header carrying the signature or token is missing.
    Missing(&'static str),
    /// Present but malformed (`sha256=` prefix, hex, base64).
    Malformed(&'static str),
    /// Well-formed but wrong.
    Mismatch(&'static str),
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::Missing(h) => write!(f, "{h} missing"),
            Unverified::Malformed(h) => write!(f, "{h} malformed"),
            Unverified::Mismatch(h) => write!(f, "{h} does not match the secret"),
        }
    }
}

/// A secret token compared in constant time.
pub struct TokenCheck {
    key: hmac::Key,
    expected: hmac::Tag,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck(..)")
    }
}

impl TokenCheck {
    fn new(token: &[u8]) -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "no randomness available for the token comparison key".to_owned())?;
        let expected = hmac::sign(&key, token);
        Ok(Self { key, expected })
    }

    fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.expected.as_ref()).is_ok()
    }
}

/// How one relay verifies its webhooks.
#[derive(Debug)]
pub enum Verifier {
    /// `scm = "none"`.
    Nothing,
    /// HMAC-SHA-256 of the body, hex in `header` after `sha256=`.
    Hmac {
        key: hmac::Key,
        header: &'static str,
    },
    /// A token sent as is in `header`.
    Token {
        check: TokenCheck,
        header: &'static str,
    },
    /// `Authorization: Basic` with `user:password`.
    Basic(TokenCheck),
}

impl Verifier {
    /// The verifier of `scm` with `secret` (required unless `scm` is `none`).
    pub fn new(scm: WebhookScm, secret: Option<&str>) -> Result<Verifier, String> {
        let need = || secret.ok_or_else(|| "a verifying relay needs a `secret`".to_owned());
        Ok(match scm {
            WebhookScm::None => Verifier::Nothing,
            WebhookScm::Github => Verifier::Hmac {
                key: hmac::Key::new(hmac::HMAC_SHA256, need()?.as_bytes()),
                header: "X-Hub-Signature-256",
            },
            WebhookScm::Bitbucket => Verifier::Hmac {
                key: hmac::Key::new(hmac::HMAC_SHA256, need()?.as_bytes()),
                header: "X-Hub-Signature",
            },
            WebhookScm::Gitlab => Verifier::Token {
                check: TokenCheck::new(need()?.as_bytes())?,
                header: "X-Gitlab-Token",
            },
            WebhookScm::AzureDevops => {
                let s = need()?;
                if !s.contains(':') {
                    return Err(
                        "for azure_devops the secret is the basic credentials `user:password`"
                            .into(),
                    );
                }
                Verifier::Basic(TokenCheck::new(s.as_bytes())?)
            }
        })
    }

    /// Checks `body` and its headers.
    pub fn verify(&self, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), Unverified> {
        match self {
            Verifier::Nothing => Ok(()),
            Verifier::Hmac { key, header } => {
                let v = one(headers, header).ok_or(Unverified::Missing(header))?;
                let hex = v
                    .strip_prefix(b"sha256=")
                    .ok_or(Unverified::Malformed(header))?;
                let tag = decode_hex(hex).ok_or(Unverified::Malformed(header))?;
                hmac::verify(key, body, &tag).map_err(|_| Unverified::Mismatch(header))
            }
            Verifier::Token { check, header } => {
                let v = one(headers, header).ok_or(Unverified::Missing(header))?;
                if check.matches(v) {
                    Ok(())
                } else {
                    Err(Unverified::Mismatch(header))
                }
            }
            Verifier::Basic(check) => {
                const H: &str = "Authorization";
                let v = one(headers, H).ok_or(Unverified::Missing(H))?;
                let (scheme, b64) = split_once(v, b' ').ok_or(Unverified::Malformed(H))?;
                if !scheme.eq_ignore_ascii_case(b"basic") {
                    return Err(Unverified::Malformed(H));
                }
                let creds = base64::engine::general_purpose::STANDARD
                    .decode(crate::http::trim_ows(b64))
                    .map_err(|_| Unverified::Malformed(H))?;
                if check.matches(&creds) {
                    Ok(())
                } else {
                    Err(Unverified::Mismatch(H))
                }
            }
        }
    }
}

/// The value of header `name` when it occurs exactly once (twice is ambiguous: refused).
fn one<'a>(headers: &[(&str, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    let mut found = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| crate::http::trim_ows(v));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

fn split_once(v: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = v.iter().position(|&b| b == sep)?;
    Some((&v[..i], &v[i + 1..]))
}

/// Hex (either case) → bytes; `None` on an odd length or a non-hex digit.
fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.len() > 128 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16);
    hex.chunks_exact(2)
        .map(|p| u8::try_from(digit(p[0])? * 16 + digit(p[1])?).ok())
        .collect()
}

/// `sha256=<hex>` of `body` under `secret`: what GitHub and Bitbucket send (tests, the test kit).
pub fn sign_sha256(secret: &str, body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_example() {
        // docs.github.com, "Validating webhook deliveries": secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let sig = sign_sha256("It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            sig,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let v = Verifier::new(WebhookScm::Github, Some("It's a Secret to Everybody"))
            .expect("verifier");
        let h: [(&str, &[u8]); 1] = [("x-hub-signature-256", sig.as_bytes())];
        assert_eq!(v.verify(&h, b"Hello, World!"), Ok(()));
        assert_eq!(
            v.verify(&h, b"Hello, World?"),
            Err(Unverified::Mismatch("X-Hub-Signature-256"))
        );
        let upper = sig.to_ascii_uppercase().replace("SHA256=", "sha256=");
        let h: [(&str, &[u8]); 1] = [("X-Hub-Signature-256", upper.as_bytes())];
        assert_eq!(v.verify(&h, b"Hello, World!"), Ok(()));
    }

    #[test]
    fn signatures_missing_malformed_or_doubled_are_refused() {
        let v = Verifier::new(WebhookScm::Bitbucket, Some("s")).expect("verifier");
        let good = sign_sha256("s", b"{}");
        assert_eq!(
            v.verify(&[], b"{}"),
            Err(Unverified::Missing("X-Hub-Signature"))
        );
        for bad in ["sha1=00", "sha256=zz", "sha256=abc", &good[7..]] {
            let h: [(&str, &[u8]); 1] = [("X-Hub-Signature", bad.as_bytes())];
            assert_eq!(
                v.verify(&h, b"{}"),
                Err(Unverified::Malformed("X-Hub-Signature")),
                "{bad}"
            );
        }
        let twice: [(&str, &[u8]); 2] = [
            ("X-Hub-Signature", good.as_bytes()),
            ("X-Hub-Signature", good.as_bytes()),
        ];
        assert!(v.verify(&twice, b"{}").is_err());
        let h: [(&str, &[u8]); 1] = [("X-Hub-Signature", good.as_bytes())];
        assert_eq!(v.verify(&h, b"{}"), Ok(()));
    }

    #[test]
    fn gitlab_token() {
        let v = Verifier::new(WebhookScm::Gitlab, Some("glwh-secret")).expect("verifier");
        let ok: [(&str, &[u8]); 1] = [("X-Gitlab-Token", b"glwh-secret")];
        assert_eq!(v.verify(&ok, b""), Ok(()));
        for bad in [&b"glwh-secre"[..], b"glwh-secret2", b""] {
            let h: [(&str, &[u8]); 1] = [("X-Gitlab-Token", bad)];
            assert_eq!(
                v.verify(&h, b""),
                Err(Unverified::Mismatch("X-Gitlab-Token"))
            );
        }
        assert_eq!(
            v.verify(&[], b""),
            Err(Unverified::Missing("X-Gitlab-Token"))
        );
    }

    #[test]
    fn azure_devops_basic_credentials() {
        assert!(Verifier::new(WebhookScm::AzureDevops, Some("nocolon")).is_err());
        let v = Verifier::new(WebhookScm::AzureDevops, Some("hook:pa55")).expect("verifier");
        let ok: [(&str, &[u8]); 1] = [("Authorization", b"Basic aG9vazpwYTU1")];
        assert_eq!(v.verify(&ok, b""), Ok(()));
        let wrong: [(&str, &[u8]); 1] = [("Authorization", b"Basic aG9vazpwYTU2")];
        assert_eq!(
            v.verify(&wrong, b""),
            Err(Unverified::Mismatch("Authorization"))
        );
        let bearer: [(&str, &[u8]); 1] = [("Authorization", b"Bearer aG9vazpwYTU1")];
        assert_eq!(
            v.verify(&bearer, b""),
            Err(Unverified::Malformed("Authorization"))
        );
    }

    #[test]
    fn a_verifying_scm_needs_a_secret() {
        assert!(Verifier::new(WebhookScm::Github, None).is_err());
        assert!(matches!(
            Verifier::new(WebhookScm::None, None),
            Ok(Verifier::Nothing)
        ));
    }
}
