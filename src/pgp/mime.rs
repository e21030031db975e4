//! PGP/MIME (RFC 3156): whole RFC 5322 messages, signed or signed then
//! encrypted, as the bytes to hand to SMTP or the Maildir.
//!
//! * Signed: `multipart/signed; protocol="application/pgp-signature";
//!   micalg=pgp-sha256`. The first part is a quoted-printable
//!   `text/plain` (7-bit, so no relay re-encodes it and breaks the
//!   signature); the detached signature covers its exact bytes between the
//!   boundaries, CRLF line ends. It is a text-mode signature (type 0x01),
//!   so a reader that stored the mail with LF line ends still verifies it.
//! * Encrypted: sign-then-encrypt in one OpenPGP message (RFC 3156 §6.2,
//!   the "combined" method), not an encrypted `multipart/signed`: it is
//!   what Thunderbird itself sends, GnuPG 2.2 checks the signature while
//!   it decrypts (`gpg --decrypt` reports `GOODSIG`), and it is one layer
//!   less for every reader. The payload is a `text/plain` part with
//!   `protected-headers="v1"` carrying the real Subject, From, To, Date and
//!   Message-ID; the outer Subject is `...`, so the subject of a fault
//!   notice does not leak to relays and mailbox providers. Encrypted to
//!   every valid encryption subkey of the recipient, SEIPDv1 unless every
//!   recipient key asks for v2 (Sequoia's rule).
//!
//!   **Not encrypted to the operator's own key.** kci never reads what it
//!   sent, and its key sits unprotected on the server (it signs
//!   unattended): encrypting to it would let whoever copies that file read
//!   every customer's mail captured in transit or in the outbox.

use super::{OperatorKey, PgpError, RecipientKey, cv25519};
use chrono::{DateTime, Utc};
use lettre::message::header::{self, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes};
use openpgp::Packet;
use openpgp::crypto::SessionKey;
use openpgp::packet::pkesk::PKESK3;
use openpgp::packet::signature::SignatureBuilder;
use openpgp::serialize::Serialize;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Signer};
use openpgp::types::{HashAlgorithm, SignatureType, SymmetricAlgorithm};
use rand::Rng;
use sequoia_openpgp as openpgp;
use std::io::Write;

/// The outer subject of an encrypted mail (the protected-headers draft's
/// recommendation, and what Thunderbird writes).
pub const NEUTRAL_SUBJECT: &str = "...";

/// The headers of one mail, before PGP/MIME.
#[derive(Debug, Clone)]
pub struct MailHeaders {
    pub from: Mailbox,
    pub to: Mailbox,
    pub subject: String,
    pub date: DateTime<Utc>,
    /// With angle brackets: `<id@domain>`.
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
    /// The `Auto-Submitted` value (`auto-generated`), if any.
    pub auto_submitted: Option<String>,
}

/// A `multipart/signed` mail: `body` as quoted-printable text, signed with
/// the operator's key, the operator's Autocrypt header attached.
pub fn signed_mail(
    key: &OperatorKey,
    headers: &MailHeaders,
    body: &str,
) -> Result<Vec<u8>, PgpError> {
    let part = text_part(body, None);
    let sig = detached_signature(key, &part, None)?;
    let boundary = boundary();
    let mut out = outer_headers(Some(key), headers, &headers.subject);
    out.push_str(&format!(
        "Content-Type: multipart/signed; micalg=pgp-sha256;\r\n \
         protocol=\"application/pgp-signature\";\r\n boundary=\"{boundary}\"\r\n\r\n\
         This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n\
         --{boundary}\r\n"
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&part);
    out.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\n\
             Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\
             Content-Description: OpenPGP digital signature\r\n\
             Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n\
             {sig}\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    Ok(out)
}

/// A `multipart/encrypted` mail to the holder of `recipient_armored`:
/// the text and the real headers signed by the operator and encrypted to
/// the recipient (see the module doc). Fails with
/// [`PgpError::Recipient`] when that key is not valid at `now`: never
/// falls back to clear text. Checks the key on every call; a sender of
/// many mails keeps the check in a [`super::RecipientKeys`] and calls
/// [`encrypted_mail_to`].
pub fn encrypted_mail(
    key: &OperatorKey,
    recipient_armored: &str,
    headers: &MailHeaders,
    body: &str,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, PgpError> {
    let recipient = RecipientKey::check(recipient_armored, now)?;
    encrypted_mail_to(key, &recipient, headers, body)
}

/// [`encrypted_mail`] to a key already checked (and still fresh: see
/// [`RecipientKey::fresh_at`]).
pub fn encrypted_mail_to(
    key: &OperatorKey,
    recipient: &RecipientKey,
    headers: &MailHeaders,
    body: &str,
) -> Result<Vec<u8>, PgpError> {
    let payload = text_part(body, Some(headers));

    let mut armored = Vec::new();
    {
        let message = Message::new(&mut armored);
        let message = Armorer::new(message)
            .kind(openpgp::armor::Kind::Message)
            .build()
            .map_err(PgpError::crypto)?;
        let message = encryptor(message, recipient).map_err(PgpError::crypto)?;
        let message = Signer::new(message, key.signer())
            .map_err(PgpError::crypto)?
            .hash_algo(HashAlgorithm::SHA256)
            .map_err(PgpError::crypto)?
            .build()
            .map_err(PgpError::crypto)?;
        let mut literal = LiteralWriter::new(message)
            .build()
            .map_err(PgpError::crypto)?;
        literal.write_all(&payload).map_err(PgpError::crypto)?;
        literal.finalize().map_err(PgpError::crypto)?;
    }
    let armored = crlf(&String::from_utf8_lossy(&armored));

    let boundary = boundary();
    let mut out = outer_headers(Some(key), headers, NEUTRAL_SUBJECT);
    out.push_str(&format!(
        "Content-Type: multipart/encrypted;\r\n \
         protocol=\"application/pgp-encrypted\";\r\n boundary=\"{boundary}\"\r\n\r\n\
         This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n\
         --{boundary}\r\n\
         Content-Type: application/pgp-encrypted\r\n\
         Content-Description: PGP/MIME version identification\r\n\r\n\
         Version: 1\r\n\r\n\
         --{boundary}\r\n\
         Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
         Content-Description: OpenPGP encrypted message\r\n\
         Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n\
         {armored}\r\n--{boundary}--\r\n"
    ));
    Ok(out.into_bytes())
}

/// The encryption layer over `message`, to every key of `recipient`, as
/// Sequoia's encryptor writes it (AES-256; SEIPDv2 where every key asks
/// for it, else SEIPDv1), with each Cv25519 key's session key encrypted
/// by [`cv25519::pkesk3`] at two thirds of Sequoia's cost.
fn encryptor<'a>(
    mut message: Message<'a>,
    recipient: &'a RecipientKey,
) -> openpgp::Result<Message<'a>> {
    if recipient.keys().next().is_none() {
        // Never a message nobody can read (a checked key has one).
        return Err(openpgp::Error::InvalidOperation("no key to encrypt to".into()).into());
    }
    if recipient.wants_seipdv2() {
        return Encryptor::for_recipients(message, recipient.recipients()).build();
    }
    let sym = SymmetricAlgorithm::default();
    // From OpenSSL's own DRBG, as the ephemeral key is: Sequoia's
    // `SessionKey::new` makes and seeds a new DRBG for every key.
    let mut session_key: SessionKey = vec![0; sym.key_size()?].into();
    openssl::rand::rand_bytes(&mut session_key)?;
    for (handle, key) in recipient.keys() {
        let pkesk = match cv25519::pkesk3(sym, &session_key, key)? {
            Some(pkesk) => pkesk,
            None => {
                let mut pkesk = PKESK3::for_recipient(sym, &session_key, key)?;
                pkesk.set_recipient(Some(handle.into()));
                pkesk.into()
            }
        };
        Packet::from(pkesk).serialize(&mut message)?;
    }
    Encryptor::with_session_key(message, sym, session_key)?.build()
}

/// The headers of a mail signed some other way (S/MIME): no Autocrypt,
/// ending with MIME-Version.
pub fn plain_headers(h: &MailHeaders) -> String {
    outer_headers(None, h, &h.subject)
}

/// A `text/plain` quoted-printable MIME part of `body`, CRLF line ends,
/// ready to be signed as it is.
pub fn plain_text_part(body: &str) -> Vec<u8> {
    text_part(body, None)
}

/// The message headers outside the MIME body, ending with MIME-Version.
fn outer_headers(key: Option<&OperatorKey>, h: &MailHeaders, subject: &str) -> String {
    let mut out = Headers::new();
    out.set(header::Date::new(h.date.into()));
    out.set(header::From::from(Mailboxes::from(h.from.clone())));
    out.set(header::To::from(Mailboxes::from(h.to.clone())));
    out.set(header::Subject::from(subject.to_string()));
    out.set(header::MessageId::from(h.message_id.clone()));
    if let Some(v) = &h.in_reply_to {
        out.set(header::InReplyTo::from(v.clone()));
    }
    if let Some(v) = &h.references {
        out.set(header::References::from(v.clone()));
    }
    if let Some(v) = &h.auto_submitted {
        out.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            v.clone(),
        ));
    }
    if let Some(key) = key {
        let autocrypt = key.autocrypt_header(h.from.email.as_ref());
        out.insert_raw(HeaderValue::dangerous_new_pre_encoded(
            HeaderName::new_from_ascii_str("Autocrypt"),
            autocrypt.clone(),
            autocrypt,
        ));
    }
    out.set(header::MIME_VERSION_1_0);
    out.to_string()
}

/// The text part: headers (with the protected ones when given), a blank
/// line, the quoted-printable body. No CRLF after the body: that one
/// belongs to the boundary that follows (RFC 2046 §5.1.1).
fn text_part(body: &str, protected: Option<&MailHeaders>) -> Vec<u8> {
    let mut out = String::new();
    match protected {
        Some(h) => {
            out.push_str(
                "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n",
            );
            let mut inner = Headers::new();
            inner.set(header::From::from(Mailboxes::from(h.from.clone())));
            inner.set(header::To::from(Mailboxes::from(h.to.clone())));
            inner.set(header::Subject::from(h.subject.clone()));
            inner.set(header::Date::new(h.date.into()));
            inner.set(header::MessageId::from(h.message_id.clone()));
            out.push_str(&inner.to_string());
        }
        None => out.push_str(
            "Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n",
        ),
    }
    out.push_str("\r\n");
    out.push_str(&quoted_printable(body));
    out.into_bytes()
}

pub(super) fn detached_signature(
    key: &OperatorKey,
    data: &[u8],
    at: Option<std::time::SystemTime>,
) -> Result<String, PgpError> {
    let mut sig = Vec::new();
    {
        let message = Message::new(&mut sig);
        let message = Armorer::new(message)
            .kind(openpgp::armor::Kind::Signature)
            .build()
            .map_err(PgpError::crypto)?;
        let mut signer = Signer::with_template(
            message,
            key.signer(),
            SignatureBuilder::new(SignatureType::Text),
        )
        .map_err(PgpError::crypto)?
        .hash_algo(HashAlgorithm::SHA256)
        .map_err(PgpError::crypto)?
        .detached();
        if let Some(at) = at {
            signer = signer.creation_time(at);
        }
        let mut signer = signer.build().map_err(PgpError::crypto)?;
        signer.write_all(data).map_err(PgpError::crypto)?;
        signer.finalize().map_err(PgpError::crypto)?;
    }
    Ok(crlf(&String::from_utf8_lossy(&sig)))
}

fn crlf(text: &str) -> String {
    text.trim_end().replace("\r\n", "\n").replace('\n', "\r\n")
}

fn boundary() -> String {
    let mut rng = rand::rng();
    let id: String = (0..24)
        .map(|_| {
            let i = rng.random_range(0..36u8);
            char::from(if i < 10 { b'0' + i } else { b'a' + i - 10 })
        })
        .collect();
    // `=_` cannot occur in quoted-printable text or base64.
    format!("=_kci_{id}")
}

/// Quoted-printable (RFC 2045 §6.7) with CRLF line ends; also encodes a
/// leading `From ` and `.` and trailing white space, which relays mangle.
pub(crate) fn quoted_printable(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let lines: Vec<&str> = text.split('\n').collect();
    for (n, line) in lines.iter().enumerate() {
        let bytes = line.as_bytes();
        let mut col = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let encode = match b {
                b'=' => true,
                b' ' | b'\t' => last,
                b'F' if i == 0 => line.starts_with("From "),
                b'.' if i == 0 => true,
                33..=126 => false,
                _ => true,
            };
            let piece = if encode {
                format!("={b:02X}")
            } else {
                char::from(b).to_string()
            };
            // Soft line break before the line would pass 76 characters.
            if col + piece.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            out.push_str(&piece);
            col += piece.len();
        }
        if n + 1 < lines.len() {
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_is_seven_bit_and_short_lined() {
        let qp = quoted_printable("Grüße = ok \nFrom here\n.\nline with trailing tab\t\n");
        assert!(qp.is_ascii());
        assert!(qp.contains("Gr=C3=BC=C3=9Fe =3D ok=20\r\n"), "{qp}");
        assert!(qp.contains("=46rom here"));
        assert!(qp.contains("\r\n=2E\r\n"));
        assert!(qp.contains("tab=09\r\n"));
        let long = quoted_printable(&"x".repeat(200));
        assert!(long.split("\r\n").all(|l| l.len() <= 76), "{long}");
        assert_eq!(long.replace("=\r\n", ""), "x".repeat(200));
    }
}
