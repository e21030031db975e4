//! Mail to kci's submission address (`kci inbound < message.eml`, from an
//! MTA pipe): who sent it, the key it carries, and — for a PGP/MIME signed
//! mail (RFC 3156 `multipart/signed`) — the exact bytes signed and the
//! signature, so a request signed by an address's current key can count as
//! proof. Parsing is bounded: the whole mail, the number of parts and their
//! nesting are capped before anything else is looked at.

mod handle;
pub mod smtp;

pub use handle::{Handled, handle};

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// The largest mail read (a key with a few subkeys is a few KiB).
pub const MAX_MAIL: usize = 256 * 1024;
/// The most MIME parts looked at.
pub const MAX_PARTS: usize = 64;
/// The deepest nesting of multiparts accepted.
pub const MAX_DEPTH: usize = 8;

/// What a submission mail holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The sender's address, lower-cased.
    pub from: String,
    /// The key material found (an `application/pgp-keys` part, or an
    /// armored public key block in a text part).
    pub key: Option<Vec<u8>>,
    /// The signed entity and its signature, for a `multipart/signed` mail.
    pub signed: Option<Signed>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Signed {
    /// The first part's MIME entity, with CRLF line ends, as signed.
    pub data: Vec<u8>,
    /// The `application/pgp-signature` part.
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("the mail is larger than {MAX_MAIL} bytes")]
    TooLarge,
    #[error("this is not an e-mail message")]
    NotMail,
    #[error("the mail has no sender address (From)")]
    NoSender,
    #[error("the mail has more than {MAX_PARTS} MIME parts")]
    TooManyParts,
    #[error("the mail nests MIME parts deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error(
        "the mail carries a SECRET key; kci never takes one. Consider that key exposed: revoke it and make a new one"
    )]
    SecretKey,
}

const PUBLIC_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const PUBLIC_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
const SECRET_BEGIN: &str = "-----BEGIN PGP PRIVATE KEY BLOCK-----";

/// Reads a submission mail.
pub fn parse(raw: &[u8]) -> Result<Submission, InboundError> {
    if raw.len() > MAX_MAIL {
        return Err(InboundError::TooLarge);
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(InboundError::NotMail)?;
    if message.parts.len() > MAX_PARTS {
        return Err(InboundError::TooManyParts);
    }
    if depth(&message, 0, 0) > MAX_DEPTH {
        return Err(InboundError::TooDeep);
    }
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| a.contains('@'))
        .ok_or(InboundError::NoSender)?;
    let mut key = None;
    for part in &message.parts {
        let is_keys = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("application")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("pgp-keys"))
        });
        let contents = match &part.body {
            PartType::Text(t) => t.as_bytes(),
            PartType::Binary(b) | PartType::InlineBinary(b) => b.as_ref(),
            _ => continue,
        };
        let text = String::from_utf8_lossy(contents);
        if text.contains(SECRET_BEGIN) {
            return Err(InboundError::SecretKey);
        }
        if key.is_some() {
            continue;
        }
        if is_keys {
            key = Some(contents.to_vec());
        } else if let Some(block) = armored_block(&text) {
            key = Some(block.into_bytes());
        }
    }
    Ok(Submission {
        from,
        key,
        signed: signed(&message),
    })
}

/// How deep the multiparts under part `id` nest.
fn depth(message: &mail_parser::Message<'_>, id: usize, level: usize) -> usize {
    if level > MAX_DEPTH {
        return level;
    }
    match message.parts.get(id).map(|p| &p.body) {
        Some(PartType::Multipart(children)) => children
            .iter()
            .map(|&c| depth(message, c as usize, level + 1))
            .max()
            .unwrap_or(level + 1),
        _ => level,
    }
}

/// The first armored public key block in `text`.
fn armored_block(text: &str) -> Option<String> {
    let start = text.find(PUBLIC_BEGIN)?;
    let end = text[start..].find(PUBLIC_END)? + start + PUBLIC_END.len();
    Some(text[start..end].to_string())
}

/// The signed entity and signature of an RFC 3156 `multipart/signed` mail.
fn signed(message: &mail_parser::Message<'_>) -> Option<Signed> {
    let root = message.parts.first()?;
    let ct = root.content_type()?;
    let is_signed = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
        && ct
            .attribute("protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("application/pgp-signature"));
    if !is_signed {
        return None;
    }
    let PartType::Multipart(children) = &root.body else {
        return None;
    };
    let (content, sig) = (
        message.parts.get(*children.first()? as usize)?,
        message.parts.get(*children.get(1)? as usize)?,
    );
    let raw = message.raw_message();
    // mail-parser ends a part before the line break that belongs to the
    // next boundary (RFC 2046), which is what was signed.
    let entity =
        raw.get(content.raw_header_offset() as usize..content.raw_end_offset() as usize)?;
    Some(Signed {
        data: crlf(entity),
        signature: sig.contents().to_vec(),
    })
}

/// Line ends as CRLF, as RFC 3156 signs them.
fn crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 32);
    let mut prev = 0u8;
    for &c in b {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----";

    #[test]
    fn finds_the_sender_and_an_attached_key() {
        let mail = format!(
            "From: Alice <Alice@Example.COM>\r\nTo: keys@isp.example\r\nSubject: my key\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHere it is.\r\n\
             --b\r\nContent-Type: application/pgp-keys; name=\"key.asc\"\r\nContent-Disposition: attachment\r\n\r\n{KEY}\r\n--b--\r\n"
        );
        let s = parse(mail.as_bytes()).unwrap();
        assert_eq!(s.from, "alice@example.com");
        assert!(
            String::from_utf8(s.key.unwrap())
                .unwrap()
                .starts_with(PUBLIC_BEGIN)
        );
        assert_eq!(s.signed, None);
    }

    #[test]
    fn finds_a_key_pasted_into_the_text() {
        let mail = format!("From: bob@example.org\nSubject: key\n\nHello,\n\n{KEY}\n\nBob\n");
        let s = parse(mail.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(s.key.unwrap()).unwrap(), KEY);
    }

    #[test]
    fn reads_the_exact_signed_entity_of_a_signed_mail() {
        let mail = "From: alice@example.com\nSubject: replace\nMIME-Version: 1.0\n\
             Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"s\"\n\n\
             --s\nContent-Type: text/plain\n\nPlease use my new key.\n\n--s\n\
             Content-Type: application/pgp-signature\n\n-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n\n--s--\n";
        for mail in [mail.to_string(), mail.replace('\n', "\r\n")] {
            let s = parse(mail.as_bytes()).unwrap();
            let signed = s.signed.unwrap();
            assert_eq!(
                String::from_utf8(signed.data).unwrap(),
                "Content-Type: text/plain\r\n\r\nPlease use my new key.\r\n"
            );
            assert!(String::from_utf8_lossy(&signed.signature).contains("BEGIN PGP SIGNATURE"));
        }
    }

    #[test]
    fn refuses_what_it_must_not_read() {
        assert_eq!(
            parse(&vec![b'a'; MAX_MAIL + 1]),
            Err(InboundError::TooLarge)
        );
        assert_eq!(
            parse(b"Subject: no sender\n\nhi\n"),
            Err(InboundError::NoSender)
        );
        let secret = "From: a@example.com\n\n-----BEGIN PGP PRIVATE KEY BLOCK-----\nx\n-----END PGP PRIVATE KEY BLOCK-----\n";
        assert_eq!(parse(secret.as_bytes()), Err(InboundError::SecretKey));
        // Multiparts nested twenty deep.
        let mut mail = String::from("From: a@example.com\nMIME-Version: 1.0\n");
        for i in 0..20 {
            mail.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"
            ));
        }
        mail.push_str("Content-Type: text/plain\n\nx\n");
        for i in (0..20).rev() {
            mail.push_str(&format!("--b{i}--\n"));
        }
        assert_eq!(parse(mail.as_bytes()), Err(InboundError::TooDeep));
        // Many parts.
        let mut mail = String::from(
            "From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n",
        );
        for _ in 0..100 {
            mail.push_str("--b\nContent-Type: text/plain\n\nx\n");
        }
        mail.push_str("--b--\n");
        assert_eq!(parse(mail.as_bytes()), Err(InboundError::TooManyParts));
        // No key at all is not an error here: the caller answers it.
        assert_eq!(parse(b"From: a@example.com\n\nhi\n").unwrap().key, None);
    }

    /// Every file the fuzzer kept (fuzz/corpus/inbound_mail) goes through
    /// the parser again: what once crashed it stays fixed.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/inbound_mail");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the corpus") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = parse(&data);
            n += 1;
        }
        assert!(n >= 3, "seeds at least");
    }
}
