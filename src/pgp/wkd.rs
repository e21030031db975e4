//! Web Key Directory (draft-koch-openpgp-webkey-service): where a mail
//! reader looks up the key for an address, and what kci serves there for
//! the operator's own address.
//!
//! * direct: `https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL`
//! * advanced: `https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL`
//!
//! HASH is the z-base-32 encoding of the SHA-1 of the local part with
//! ASCII upper case mapped to lower case. The key is served binary
//! (`application/octet-stream`), and a `policy` file (empty: no options)
//! sits beside `hu/`.

use sha1::{Digest, Sha1};

const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// z-base-32 (the alphabet of RFC 6189 §5.1.6), most significant bits first.
fn zbase32(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZBASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ZBASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The WKD hash of a local part.
pub fn hash(local_part: &str) -> String {
    zbase32(&Sha1::digest(local_part.to_ascii_lowercase().as_bytes()))
}

/// The local part and the lower-cased domain of `address`.
pub fn split(address: &str) -> Option<(&str, String)> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((local, domain.to_ascii_lowercase()))
}

fn local_query(local: &str) -> String {
    url::form_urlencoded::byte_serialize(local.as_bytes()).collect()
}

/// The path and query of the direct method for `address`.
pub fn direct_path(address: &str) -> Option<String> {
    let (local, _) = split(address)?;
    Some(format!(
        "/.well-known/openpgpkey/hu/{}?l={}",
        hash(local),
        local_query(local)
    ))
}

/// The path and query of the advanced method for `address` (served on
/// the host `openpgpkey.DOMAIN`).
pub fn advanced_path(address: &str) -> Option<String> {
    let (local, domain) = split(address)?;
    Some(format!(
        "/.well-known/openpgpkey/{domain}/hu/{}?l={}",
        hash(local),
        local_query(local)
    ))
}

/// The full URLs a WKD client tries, advanced first.
pub fn urls(address: &str) -> Option<[String; 2]> {
    let (_, domain) = split(address)?;
    Some([
        format!("https://openpgpkey.{domain}{}", advanced_path(address)?),
        format!("https://{domain}{}", direct_path(address)?),
    ])
}

/// What a directory for one address serves: `(path, body)` pairs, without
/// query strings, for both methods (the key, and the policy file).
pub fn files(address: &str, key: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let (local, domain) = split(address)?;
    let h = hash(local);
    Some(vec![
        (format!("/.well-known/openpgpkey/hu/{h}"), key.to_vec()),
        ("/.well-known/openpgpkey/policy".to_string(), Vec::new()),
        (
            format!("/.well-known/openpgpkey/{domain}/hu/{h}"),
            key.to_vec(),
        ),
        (
            format!("/.well-known/openpgpkey/{domain}/policy"),
            Vec::new(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_draft_example() {
        // draft-koch-openpgp-webkey-service §3.1: Joe.Doe@Example.ORG.
        assert_eq!(hash("Joe.Doe"), "iy9q119eutrkn8s1mk4r39qejnbu3n5q");
        assert_eq!(
            direct_path("Joe.Doe@Example.ORG").unwrap(),
            "/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            advanced_path("Joe.Doe@Example.ORG").unwrap(),
            "/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            urls("Joe.Doe@Example.ORG").unwrap()[0],
            "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert!(direct_path("nobody").is_none());
    }
}
