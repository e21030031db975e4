//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP), the
//! second factor of a staff login: HMAC-SHA-1, 6 digits, 30-second steps,
//! as every authenticator app reads an `otpauth://totp/` URI by default.
//!
//! Pure: the caller says what time it is and which step was last used, so
//! a code is accepted once (the step is recorded by the store with a
//! compare-and-set, see `trust::staff`).

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// Seconds per step.
pub const PERIOD: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps either side of now that are still accepted (a phone's clock a
/// little off, a code typed as it turned): ±30 s.
pub const SKEW: i64 = 1;
/// Bytes of a secret: 160 bits, the HMAC-SHA-1 block RFC 4226 recommends.
pub const SECRET_LEN: usize = 20;

/// The step `unix_seconds` falls in.
pub fn step_at(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(PERIOD)
}

/// The code of `secret` at `step`, as `DIGITS` decimal digits (RFC 4226
/// §5.3 dynamic truncation).
pub fn code_at(secret: &[u8], step: i64) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret)
        .expect("HMAC-SHA-1 takes keys of any length");
    mac.update(&(step as u64).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The step whose code `typed` is, among those within [`SKEW`] of `now`
/// and later than `last_step` (a code is used once: the one just used, or
/// an older one, is refused); `None` otherwise. Every candidate is
/// compared, in constant time, so the answer's timing tells nothing.
pub fn verify(secret: &[u8], typed: &str, unix_seconds: i64, last_step: i64) -> Option<i64> {
    let typed = typed.trim();
    if typed.len() != DIGITS as usize || !typed.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(unix_seconds);
    let mut found = None;
    for step in now - SKEW..=now + SKEW {
        let same: bool = code_at(secret, step)
            .as_bytes()
            .ct_eq(typed.as_bytes())
            .into();
        if same && step > last_step && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding, as authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The bytes of a base32 secret as [`base32`] wrote it.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The `otpauth://` URI an authenticator app reads (as a QR code or
/// pasted): `issuer:name`, the secret, and the parameters spelled out.
pub fn uri(issuer: &str, name: &str, secret: &[u8]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        enc(issuer),
        enc(name),
        base32(secret),
        enc(issuer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 secret.
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn codes_are_rfc_6238s_test_vectors() {
        // (time, the RFC's 8 digits): 6 digits are their last six.
        let cases = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        for (t, rfc) in cases {
            assert_eq!(code_at(RFC_SECRET, step_at(t)), rfc[2..], "at {t}");
        }
    }

    #[test]
    fn a_code_is_accepted_near_its_time_once_and_never_an_older_one() {
        let t = 1_111_111_111; // step 37037037
        let now = step_at(t);
        let code = |step| code_at(RFC_SECRET, step);
        // (typed, time, last used step, accepted as)
        let cases: Vec<(String, i64, i64, Option<i64>)> = vec![
            (code(now), t, 0, Some(now)),
            (format!(" {} ", code(now)), t, 0, Some(now)),
            (code(now - 1), t, 0, Some(now - 1)),
            (code(now + 1), t, 0, Some(now + 1)),
            // Out of the window.
            (code(now - 2), t, 0, None),
            (code(now + 2), t, 0, None),
            // Used already, or an earlier one after a later was used.
            (code(now), t, now, None),
            (code(now - 1), t, now, None),
            // A later one after an earlier was used.
            (code(now + 1), t, now, Some(now + 1)),
            // Not a code at all.
            ("".into(), t, 0, None),
            ("12345".into(), t, 0, None),
            ("1234567".into(), t, 0, None),
            ("12a456".into(), t, 0, None),
            ("٣٣٣٣٣٣".into(), t, 0, None),
        ];
        for (typed, at, last, want) in cases {
            assert_eq!(
                verify(RFC_SECRET, &typed, at, last),
                want,
                "{typed:?} last {last}"
            );
        }
        // Another secret's code for the same time.
        assert_eq!(verify(b"another secret......", &code(now), t, 0), None);
    }

    #[test]
    fn secrets_are_written_as_rfc_4648_base32() {
        // RFC 4648 §10, without the padding.
        let cases = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, want) in cases {
            assert_eq!(base32(plain.as_bytes()), want);
        }
        assert_eq!(base32(RFC_SECRET), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        for len in 0..=21 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base32_decode(&base32(&bytes)), Some(bytes));
        }
        assert_eq!(base32_decode("MZXW6YQ!"), None);
    }

    #[test]
    fn the_uri_names_issuer_and_person_and_spells_out_the_parameters() {
        assert_eq!(
            uri("Example ISP", "jo.smith", RFC_SECRET),
            "otpauth://totp/Example%20ISP:jo%2Esmith?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Example%20ISP&algorithm=SHA1&digits=6&period=30"
        );
    }
}
