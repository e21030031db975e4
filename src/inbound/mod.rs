//! Mail to kci's submission address (`kci inbound < message.eml`, from an
//! MTA pipe): who sent it, the key it carries, and — for a PGP/MIME signed
//! mail (RFC 3156 `multipart/signed`) — the exact bytes signed and the
//! signature, so a request signed by an address's current key can count as
//! proof. Parsing is bounded: the whole mail, the number of parts and their
//! nesting are capped before anything else is looked at.
//!
//! A signed mail is read only inside what was signed: the key and the
//! request statement come from the signed entity, nothing outside it is
//! looked at, and a `multipart/signed` with anything beside its one entity
//! and its one signature is refused — so nobody can append their own key to
//! a mail the victim once signed (the attack review's finding 1).

mod handle;
pub mod smtp;

pub use handle::{Handled, handle, handle_from};

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
    /// armored public key block in a text part) — of a signed mail, only
    /// inside the signed entity.
    pub key: Option<Vec<u8>>,
    /// A request statement (`kci-request: …`), likewise.
    pub statement: Option<Statement>,
    /// The signed entity and its signature, for a `multipart/signed` mail.
    pub signed: Option<Signed>,
}

/// A machine-readable request in the text of a mail, so that what the
/// sender signs names exactly what they ask:
///
/// ```text
/// kci-request: key.replace
/// address: alice@example.com
/// fingerprint: 0123…CDEF
/// ```
///
/// (`key.remove` takes no fingerprint.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub action: crate::model::ChangeKind,
    pub address: Option<String>,
    /// The new key's fingerprint, hex upper case, without spaces.
    pub fingerprint: Option<String>,
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
    #[error(
        "a signed mail (multipart/signed) must hold exactly what was signed and one application/pgp-signature, nothing beside them"
    )]
    SignedExtraParts,
    #[error("the kci-request statement is not one kci reads: {0}")]
    Statement(&'static str),
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
    // A secret key anywhere is refused, so its owner hears it is exposed.
    if message
        .parts
        .iter()
        .any(|p| String::from_utf8_lossy(contents(p).unwrap_or_default()).contains(SECRET_BEGIN))
    {
        return Err(InboundError::SecretKey);
    }
    let signed = signed(&message)?;
    let (key, statement) = match &signed {
        // Only what was signed is read.
        Some(s) => {
            let entity = MessageParser::default()
                .parse(&s.data)
                .ok_or(InboundError::NotMail)?;
            scan(&entity)?
        }
        None => scan(&message)?,
    };
    Ok(Submission {
        from,
        key,
        statement,
        signed,
    })
}

/// The body of a leaf part.
fn contents<'a>(part: &'a mail_parser::MessagePart<'_>) -> Option<&'a [u8]> {
    match &part.body {
        PartType::Text(t) | PartType::Html(t) => Some(t.as_bytes()),
        PartType::Binary(b) | PartType::InlineBinary(b) => Some(b.as_ref()),
        _ => None,
    }
}

/// The first key and the first request statement in `message`'s parts.
fn scan(
    message: &mail_parser::Message<'_>,
) -> Result<(Option<Vec<u8>>, Option<Statement>), InboundError> {
    let (mut key, mut statement) = (None, None);
    for part in &message.parts {
        let Some(body) = contents(part) else {
            continue;
        };
        let is_keys = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("application")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("pgp-keys"))
        });
        let text = String::from_utf8_lossy(body);
        if key.is_none() {
            if is_keys {
                key = Some(body.to_vec());
            } else if let Some(block) = armored_block(&text) {
                key = Some(block.into_bytes());
            }
        }
        if statement.is_none() && !is_keys {
            statement = read_statement(&text)?;
        }
    }
    Ok((key, statement))
}

/// The `kci-request:` statement in `text`, if there is one: its line and
/// the `address:` and `fingerprint:` lines up to the next blank line.
pub fn read_statement(text: &str) -> Result<Option<Statement>, InboundError> {
    let mut lines = text.lines().map(str::trim);
    let Some(action) = lines.by_ref().find_map(|l| field(l, "kci-request")) else {
        return Ok(None);
    };
    let action = match action.to_ascii_lowercase().as_str() {
        "key.replace" | "replace" => crate::model::ChangeKind::KeyReplace,
        "key.remove" | "remove" => crate::model::ChangeKind::KeyRemove,
        _ => {
            return Err(InboundError::Statement(
                "kci-request is key.replace or key.remove",
            ));
        }
    };
    let mut statement = Statement {
        action,
        address: None,
        fingerprint: None,
    };
    for line in lines.take_while(|l| !l.is_empty()).take(8) {
        if let Some(a) = field(line, "address") {
            statement.address = Some(
                crate::keys::normalise(a)
                    .ok_or(InboundError::Statement("address is not an email address"))?,
            );
        } else if let Some(f) = field(line, "fingerprint") {
            let f: String = f.chars().filter(|c| !c.is_whitespace()).collect();
            if !(f.len() == 40 || f.len() == 64) || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(InboundError::Statement(
                    "fingerprint is 40 or 64 hex digits",
                ));
            }
            statement.fingerprint = Some(f.to_ascii_uppercase());
        }
    }
    Ok(Some(statement))
}

/// The value of `name: value` in `line` (the name case-insensitive).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (k, v) = line.split_once(':')?;
    k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
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

/// The signed entity and signature of an RFC 3156 `multipart/signed`
/// mail; `Err` for one that holds anything beside them.
fn signed(message: &mail_parser::Message<'_>) -> Result<Option<Signed>, InboundError> {
    let Some(root) = message.parts.first() else {
        return Ok(None);
    };
    let is_signed = root.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
    });
    if !is_signed {
        return Ok(None);
    }
    let PartType::Multipart(children) = &root.body else {
        return Err(InboundError::SignedExtraParts);
    };
    let [content, sig] = children.as_slice() else {
        return Err(InboundError::SignedExtraParts);
    };
    let (Some(content), Some(sig)) = (
        message.parts.get(*content as usize),
        message.parts.get(*sig as usize),
    ) else {
        return Err(InboundError::SignedExtraParts);
    };
    let is_pgp = |p: &mail_parser::MessagePart<'_>, sub: &str| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("application")
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case(sub))
        })
    };
    let protocol_pgp = root
        .content_type()
        .and_then(|ct| ct.attribute("protocol"))
        .is_some_and(|p| p.eq_ignore_ascii_case("application/pgp-signature"));
    if !protocol_pgp || !is_pgp(sig, "pgp-signature") {
        return Err(InboundError::SignedExtraParts);
    }
    let raw = message.raw_message();
    // mail-parser ends a part before the line break that belongs to the
    // next boundary (RFC 2046), which is what was signed.
    let entity = raw
        .get(content.raw_header_offset() as usize..content.raw_end_offset() as usize)
        .ok_or(InboundError::NotMail)?;
    Ok(Some(Signed {
        data: crlf(entity),
        signature: sig.contents().to_vec(),
    }))
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

    /// A mail the victim once signed, with the attacker's key appended:
    /// the appended part is refused, and a key beside a signed entity is
    /// never read.
    #[test]
    fn nothing_outside_the_signed_entity_is_read() {
        let signed_part = "--s\nContent-Type: text/plain\n\nHello list!\n\n--s\n\
             Content-Type: application/pgp-signature\n\n-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n\n";
        let head = "From: alice@example.com\nMIME-Version: 1.0\n\
             Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"s\"\n\n";
        let appended =
            format!("{head}{signed_part}--s\nContent-Type: application/pgp-keys\n\n{KEY}\n--s--\n");
        assert_eq!(
            parse(appended.as_bytes()),
            Err(InboundError::SignedExtraParts)
        );
        // The key in the epilogue or preamble is not a part at all.
        let epilogue = format!("{head}{signed_part}--s--\n{KEY}\n");
        let s = parse(epilogue.as_bytes()).unwrap();
        assert_eq!((s.key, s.statement), (None, None));
        assert!(s.signed.is_some());
        // A signature part that is not a PGP signature is no signed mail.
        let wrong = signed_part.replace("application/pgp-signature\n", "text/plain\n");
        assert_eq!(
            parse(format!("{head}{wrong}--s--\n").as_bytes()),
            Err(InboundError::SignedExtraParts)
        );
        // The key inside the signed entity is read.
        let inside = format!(
            "{head}--s\nContent-Type: text/plain\n\nMy new key:\n{KEY}\n\n--s\n\
             Content-Type: application/pgp-signature\n\nsig\n\n--s--\n"
        );
        assert!(parse(inside.as_bytes()).unwrap().key.is_some());
    }

    #[test]
    fn reads_a_request_statement() {
        let text = "Hello,\n\nkci-request: key.replace\nAddress: Alice@Example.com\n\
                    fingerprint: 0123 4567 89AB CDEF 0123  4567 89ab cdef 0123 4567\n\nthanks\nfingerprint: FF\n";
        assert_eq!(
            read_statement(text).unwrap(),
            Some(Statement {
                action: crate::model::ChangeKind::KeyReplace,
                address: Some("alice@example.com".into()),
                fingerprint: Some("0123456789ABCDEF0123456789ABCDEF01234567".into()),
            })
        );
        assert_eq!(
            read_statement("kci-request: key.remove")
                .unwrap()
                .map(|s| s.action),
            Some(crate::model::ChangeKind::KeyRemove)
        );
        assert_eq!(read_statement("no request here").unwrap(), None);
        for bad in [
            "kci-request: take.over",
            "kci-request: key.replace\naddress: nobody",
            "kci-request: key.replace\nfingerprint: 1234",
        ] {
            assert!(read_statement(bad).is_err(), "{bad}");
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
}
