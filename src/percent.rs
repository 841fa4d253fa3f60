//! Percent-decoding (RFC 3986 `%XX` escapes), the one implementation in the crate.
//!
//! Two policies, chosen by the caller:
//! * strict ([`decode_strict`]): a `%` that does not start a valid escape makes the whole text
//!   invalid — for input read from the configuration (CONNECT proxy credentials);
//! * lenient ([`decode`], [`decode_into`]): an invalid escape is kept as it is — for text that the
//!   allowlist canonicaliser has already validated (it rejects invalid escapes itself, with
//!   [`byte_at`]), or for matching where a stray `%` is just a byte.
//!
//! Hex digits are exactly `0-9a-fA-F` (no sign, no whitespace: `u8::from_str_radix` would take
//! `"+1"`).

/// The value of one hex digit.
pub fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte encoded by a valid `%XX` escape starting at `i`; `None` if there is none there.
pub fn byte_at(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let hi = hex_val(*bytes.get(i + 1)?)?;
    let lo = hex_val(*bytes.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Decodes `raw` into `out`, invalid escapes kept as they are; stops when `out` is full.
/// Returns the number of bytes written (at most `raw.len()`).
pub fn decode_into(raw: &[u8], out: &mut [u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < raw.len() && n < out.len() {
        match byte_at(raw, i) {
            Some(v) => {
                out[n] = v;
                i += 3;
            }
            None => {
                out[n] = raw[i];
                i += 1;
            }
        }
        n += 1;
    }
    n
}

/// Decodes `raw`, invalid escapes kept as they are.
pub fn decode(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0; raw.len()];
    let n = decode_into(raw, &mut out);
    out.truncate(n);
    out
}

/// Decodes `raw`; `None` if any `%` does not start a valid escape.
pub fn decode_strict(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            out.push(byte_at(raw, i)?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_escapes_decode_in_either_case() {
        assert_eq!(decode(b"a%2Fb%2fc%7E"), b"a/b/c~");
        assert_eq!(
            decode_strict(b"u%40x:p%3Aw").as_deref(),
            Some(&b"u@x:p:w"[..])
        );
        assert_eq!(decode(b"%00%ff"), [0, 0xff]);
        assert_eq!(byte_at(b"x%41", 1), Some(b'A'));
        assert_eq!(byte_at(b"x%41", 0), None);
    }

    #[test]
    fn lenient_keeps_invalid_escapes_strict_rejects_them() {
        for bad in ["%", "a%", "%4", "%4g", "%g4", "%+1", "% 1", "%%41"] {
            let want: Vec<u8> = if bad == "%%41" {
                b"%A".to_vec()
            } else {
                bad.as_bytes().to_vec()
            };
            assert_eq!(decode(bad.as_bytes()), want, "{bad:?}");
            assert_eq!(decode_strict(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn decode_into_stops_when_the_buffer_is_full() {
        let mut buf = [0u8; 2];
        assert_eq!(decode_into(b"%41%42%43", &mut buf), 2);
        assert_eq!(&buf, b"AB");
        let mut big = [0u8; 16];
        let n = decode_into(b"a%2Fb", &mut big);
        assert_eq!(&big[..n], b"a/b");
    }
}
