//! The contract of DESIGN.md §6, checked against a real GnuPG
//! (`/usr/bin/gpg`, 2.2 on Debian stable): keys gpg makes pass or fail
//! `check_submission` for the right reason, and what kci sends, gpg
//! verifies and decrypts. These tests fail, never skip, without gpg.

use super::*;
use chrono::Duration;
use sequoia_openpgp::cert::Cert;
use sequoia_openpgp::parse::Parse;
use std::time::Instant;

use super::testkit::Gpg;

const OPERATOR: &str = "kci <notify@isp.example>";

fn headers(to: &str, subject: &str) -> MailHeaders {
    MailHeaders {
        from: OPERATOR.parse().unwrap(),
        to: to.parse().unwrap(),
        subject: subject.into(),
        date: Utc::now(),
        message_id: "<n-1@isp.example>".into(),
        in_reply_to: Some("<kci-thread-1@isp.example>".into()),
        references: Some("<kci-thread-1@isp.example>".into()),
        auto_submitted: Some("auto-generated".into()),
    }
}

const BODY: &str = "Line 4711 is down since 09:12.\nWe are on it. Grüße,\nthe NOC\n";

/// The boundary of the top-level multipart in a raw mail.
fn boundary(mail: &str) -> String {
    let at = mail.find("boundary=\"").expect("a boundary") + "boundary=\"".len();
    mail[at..].split('"').next().unwrap().to_string()
}

fn armored_block(text: &str, kind: &str) -> String {
    let begin = format!("-----BEGIN PGP {kind}-----");
    let end = format!("-----END PGP {kind}-----");
    let a = text.find(&begin).expect("armor begins");
    let b = text[a..].find(&end).expect("armor ends") + a + end.len();
    text[a..b].to_string()
}

#[test]
fn gpg_keys_pass_and_are_cleaned() {
    let g = Gpg::new();
    let now = Utc::now();
    for (uid, algo) in [
        ("Carol <carol@example.org>", "rsa3072"),
        ("Dave <dave@example.org>", "ed25519"),
    ] {
        let fpr = g.generate(uid, algo, true, "never");
        let addr = uid.split('<').nth(1).unwrap().trim_end_matches('>');
        let clean = check_submission(g.export(&fpr).as_bytes(), addr, now).unwrap();
        assert_eq!(clean.fingerprint, fpr);
        assert_eq!(clean.expires_at, None);
        assert!(clean.warnings.is_empty(), "{:?}", clean.warnings);
        // An address compares in any case, as one mailbox (EmailAddr).
        check_submission(
            g.export(&fpr).as_bytes(),
            &addr.replace("example.org", "EXAMPLE.org"),
            now,
        )
        .unwrap();
        check_submission(g.export(&fpr).as_bytes(), &addr.to_uppercase(), now).unwrap();
        let e = check_submission(g.export(&fpr).as_bytes(), &addr.replace('@', "+x@"), now)
            .unwrap_err();
        assert_eq!(e.code(), "no_matching_user_id");
        // Binary works as well as armored.
        let binary = g.ok(&["--export", &fpr], None);
        assert_eq!(
            check_submission(&binary, addr, now).unwrap().fingerprint,
            fpr
        );
    }
}

#[test]
fn other_user_ids_and_third_party_certifications_are_stripped() {
    let g = Gpg::new();
    let now = Utc::now();
    let fpr = g.generate("Erin <erin@example.org>", "ed25519", true, "never");
    g.ok(
        &["--quick-add-uid", &fpr, "Erin at work <erin@corp.example>"],
        None,
    );
    let trent = g.generate("Trent <trent@example.net>", "ed25519", false, "never");
    g.ok(
        &["--default-key", &trent, "--yes", "--quick-sign-key", &fpr],
        None,
    );

    let clean = check_submission(g.export(&fpr).as_bytes(), "erin@example.org", now).unwrap();
    let cert = Cert::from_bytes(clean.armored.as_bytes()).unwrap();
    let uids: Vec<String> = cert
        .userids()
        .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
        .collect();
    assert_eq!(uids, ["Erin <erin@example.org>"]);
    assert_eq!(
        cert.userids()
            .map(|u| u.bundle().certifications().count())
            .sum::<usize>(),
        0
    );
    assert!(
        clean.warnings.iter().any(|w| w.contains("other addresses"))
            && clean.warnings.iter().any(|w| w.contains("third-party")),
        "{:?}",
        clean.warnings
    );
    // gpg takes the cleaned key back.
    let other = Gpg::new();
    other.import(clean.armored.as_bytes());
    assert_eq!(other.fingerprint("erin@example.org"), fpr);
    // The address of the stripped user ID is not the one asked for.
    let e = check_submission(g.export(&fpr).as_bytes(), "erin@corp.example", now).unwrap();
    assert_eq!(e.fingerprint, fpr);
}

#[test]
fn expired_revoked_and_signing_only_keys_are_refused() {
    let g = Gpg::new();
    let now = Utc::now();

    let fpr = g.generate("Frank <frank@example.org>", "ed25519", true, "1y");
    let key = g.export(&fpr);
    let clean = check_submission(key.as_bytes(), "frank@example.org", now).unwrap();
    assert!(clean.expires_at.is_some());
    // Close to its end: a warning. After it: refused, at submission and
    // at send time.
    let soon = clean.expires_at.unwrap() - Duration::days(3);
    let warned = check_submission(key.as_bytes(), "frank@example.org", soon).unwrap();
    assert!(warned.warnings.iter().any(|w| w.contains("expires")));
    let later = now + Duration::days(800);
    let e = check_submission(key.as_bytes(), "frank@example.org", later).unwrap_err();
    assert_eq!(e.code(), "expired", "{e}");
    assert!(e.to_string().contains("expired on"));
    assert_eq!(
        encryption_key_valid(&clean.armored, later)
            .unwrap_err()
            .code(),
        "expired"
    );
    encryption_key_valid(&clean.armored, now).unwrap();

    let fpr = g.generate("Grace <grace@example.org>", "rsa3072", true, "never");
    let before = g.export(&fpr);
    let rev = std::fs::read_to_string(g.path(&format!("openpgp-revocs.d/{fpr}.rev"))).unwrap();
    g.import(rev.replace(":-----BEGIN", "-----BEGIN").as_bytes());
    let e = check_submission(g.export(&fpr).as_bytes(), "grace@example.org", now).unwrap_err();
    assert_eq!(e.code(), "revoked", "{e}");
    // A key registered before its revocation: the revoked copy says no.
    let registered = check_submission(before.as_bytes(), "grace@example.org", now).unwrap();
    encryption_key_valid(&registered.armored, now).unwrap();
    let revoked = g.export(&fpr);
    assert_eq!(
        encryption_key_valid(&revoked, now).unwrap_err().code(),
        "revoked"
    );

    let fpr = g.generate("Heidi <heidi@example.org>", "ed25519", false, "never");
    let e = check_submission(g.export(&fpr).as_bytes(), "heidi@example.org", now).unwrap_err();
    assert_eq!(e.code(), "no_encryption_subkey", "{e}");
    assert!(e.to_string().contains("signing-only"), "{e}");
}

#[test]
fn sha1_self_signatures_are_refused_with_the_fix() {
    let g = Gpg::new();
    let uid = "Ivan <ivan@example.org>";
    g.ok(
        &[
            "--cert-digest-algo",
            "SHA1",
            "--quick-gen-key",
            uid,
            "rsa3072",
            "sign,cert",
            "never",
        ],
        None,
    );
    let fpr = g.fingerprint(uid);
    g.ok(
        &[
            "--cert-digest-algo",
            "SHA1",
            "--quick-add-key",
            &fpr,
            "rsa3072",
            "encr",
            "never",
        ],
        None,
    );
    let e =
        check_submission(g.export(&fpr).as_bytes(), "ivan@example.org", Utc::now()).unwrap_err();
    assert_eq!(e.code(), "sha1_self_signature", "{e}");
    assert!(e.to_string().contains("--quick-set-expire"), "{e}");
    // The advice works: renewed self-signatures with SHA-256 pass.
    g.ok(
        &[
            "--cert-digest-algo",
            "SHA256",
            "--quick-set-expire",
            &fpr,
            "0",
        ],
        None,
    );
    g.ok(
        &[
            "--cert-digest-algo",
            "SHA256",
            "--quick-set-expire",
            &fpr,
            "0",
            "*",
        ],
        None,
    );
    check_submission(g.export(&fpr).as_bytes(), "ivan@example.org", Utc::now()).unwrap();
}

#[test]
fn secret_garbage_huge_and_hostile_blocks_are_refused_quickly() {
    let g = Gpg::new();
    let now = Utc::now();
    let fpr = g.generate("Judy <judy@example.org>", "ed25519", true, "never");
    let secret = g.ok(&["--armor", "--export-secret-keys", &fpr], None);
    let e = check_submission(&secret, "judy@example.org", now).unwrap_err();
    assert_eq!(e.code(), "secret_key");

    let start = Instant::now();
    let e = check_submission(&vec![b'x'; 10 * 1024 * 1024], "judy@example.org", now).unwrap_err();
    assert_eq!(e.code(), "too_large");
    let e = check_submission(
        b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
        "judy@example.org",
        now,
    )
    .unwrap_err();
    assert_eq!(e.code(), "not_a_key", "{e}");

    // Two keys in one block.
    let other = g.generate("Ken <ken@example.org>", "ed25519", true, "never");
    let both = g.ok(&["--export", &fpr, &other], None);
    assert_eq!(
        check_submission(&both, "judy@example.org", now)
            .unwrap_err()
            .code(),
        "multiple_keys"
    );

    // A key followed by thousands of user IDs, inside the size cap.
    use sequoia_openpgp::packet::{Packet, UserID};
    use sequoia_openpgp::serialize::Serialize;
    let cert = Cert::from_bytes(g.export(&fpr).as_bytes()).unwrap();
    let mut hostile = Vec::new();
    Packet::from(cert.primary_key().key().clone())
        .serialize(&mut hostile)
        .unwrap();
    for i in 0..4000 {
        Packet::from(UserID::from(format!("u{i}")))
            .serialize(&mut hostile)
            .unwrap();
    }
    assert!(hostile.len() < MAX_KEY_BYTES);
    let e = check_submission(&hostile, "judy@example.org", now).unwrap_err();
    assert_eq!(e.code(), "too_many_components", "{e}");

    // A compressed packet (a decompression bomb would hide in one) is not
    // opened.
    let mut bomb = Vec::new();
    Packet::from(cert.primary_key().key().clone())
        .serialize(&mut bomb)
        .unwrap();
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let mut compressed = Vec::new();
    {
        use sequoia_openpgp::serialize::stream::{Compressor, LiteralWriter, Message};
        use std::io::Write;
        let m = Message::new(&mut compressed);
        let m = Compressor::new(m).build().unwrap();
        let mut w = LiteralWriter::new(m).build().unwrap();
        w.write_all(&zeros).unwrap();
        w.finalize().unwrap();
    }
    bomb.extend_from_slice(&compressed);
    assert!(bomb.len() < MAX_KEY_BYTES, "{}", bomb.len());
    let e = check_submission(&bomb, "judy@example.org", now).unwrap_err();
    assert_eq!(e.code(), "unexpected_packet", "{e}");

    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// The operator's key as gpg sees it: imported into `g`.
fn operator_known_to(g: &Gpg) -> OperatorKey {
    let (key, _) = OperatorKey::generate(OPERATOR, None).unwrap();
    g.import(key.public_armored().as_bytes());
    key
}

#[test]
fn gpg_decrypts_encrypted_mail_and_verifies_the_operator_signature() {
    for (uid, algo) in [
        ("Carol <carol@example.org>", "rsa3072"),
        ("Dave <dave@example.org>", "ed25519"),
    ] {
        let g = Gpg::new();
        let operator = operator_known_to(&g);
        let fpr = g.generate(uid, algo, true, "never");
        let addr = uid.split('<').nth(1).unwrap().trim_end_matches('>');
        let clean = check_submission(g.export(&fpr).as_bytes(), addr, Utc::now()).unwrap();

        let subject = "Fault: line 4711 down (Störung)";
        let mail = encrypted_mail(
            &operator,
            &clean.armored,
            &headers(uid, subject),
            BODY,
            Utc::now(),
        )
        .unwrap();
        let text = String::from_utf8(mail.clone()).unwrap();
        // The real subject does not leak; the neutral one is outside.
        assert!(text.contains("Subject: ...\r\n"), "{text}");
        assert!(!text.contains("4711") && !text.contains("Fault"));
        assert!(text.contains("Content-Type: multipart/encrypted;"));
        assert!(text.contains("protocol=\"application/pgp-encrypted\""));
        assert!(text.contains("Version: 1\r\n"));
        assert!(
            text.contains("Autocrypt: addr=notify@isp.example; prefer-encrypt=mutual; keydata=")
        );
        assert!(text.contains("Auto-Submitted: auto-generated\r\n"));
        assert!(text.contains("In-Reply-To: <kci-thread-1@isp.example>\r\n"));
        assert!(text.contains("Message-ID: <n-1@isp.example>\r\n"));
        let parsed = mailparse::parse_mail(&mail).unwrap();
        assert_eq!(parsed.ctype.mimetype, "multipart/encrypted");
        assert_eq!(parsed.subparts.len(), 2);
        assert_eq!(
            parsed.subparts[0].ctype.mimetype,
            "application/pgp-encrypted"
        );
        assert_eq!(
            parsed.subparts[1].ctype.mimetype,
            "application/octet-stream"
        );

        std::fs::write(g.path("mail.eml"), &mail).unwrap();
        std::fs::write(g.path("msg.asc"), armored_block(&text, "MESSAGE")).unwrap();
        let out = g.run(
            &[
                "--status-fd",
                "2",
                "--decrypt",
                g.path("msg.asc").to_str().unwrap(),
            ],
            None,
        );
        assert!(out.ok, "gpg --decrypt failed: {}", out.stderr);
        let status = &out.stderr;
        assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
        assert!(status.contains("[GNUPG:] GOODSIG"), "{status}");
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("[GNUPG:] VALIDSIG") && l.ends_with(operator.fingerprint())),
            "{status}"
        );
        // SEIPDv1 (MDC), as GnuPG 2.2 expects.
        assert!(!status.contains("AEAD"), "{status}");
        let inner = out.text();
        assert!(
            inner.starts_with(
                "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\n"
            ),
            "{inner}"
        );
        let part = mailparse::parse_mail(inner.as_bytes()).unwrap();
        let headers = part.get_headers();
        use mailparse::MailHeaderMap;
        assert_eq!(headers.get_first_value("Subject").unwrap(), subject);
        assert_eq!(
            headers.get_first_value("Message-ID").unwrap(),
            "<n-1@isp.example>"
        );
        assert!(headers.get_first_value("To").unwrap().contains(addr));
        assert_eq!(part.get_body().unwrap().replace("\r\n", "\n"), BODY);
    }
}

#[test]
fn encrypted_mail_to_an_expired_key_is_refused() {
    let g = Gpg::new();
    let (operator, _) = OperatorKey::generate(OPERATOR, None).unwrap();
    let fpr = g.generate("Olga <olga@example.org>", "ed25519", true, "1y");
    let clean =
        check_submission(g.export(&fpr).as_bytes(), "olga@example.org", Utc::now()).unwrap();
    let e = encrypted_mail(
        &operator,
        &clean.armored,
        &headers("olga@example.org", "x"),
        BODY,
        Utc::now() + Duration::days(800),
    )
    .unwrap_err();
    assert!(
        matches!(e, PgpError::Recipient(ref r) if r.code() == "expired"),
        "{e}"
    );
}

#[test]
fn gpg_verifies_signed_mail() {
    let g = Gpg::new();
    let operator = operator_known_to(&g);
    let mail = signed_mail(
        &operator,
        &headers("carol@example.org", "Wartung heute"),
        BODY,
    )
    .unwrap();
    let text = String::from_utf8(mail.clone()).unwrap();
    assert!(text.is_ascii(), "7-bit only");
    assert!(text.contains("Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\";"));
    assert!(text.contains("Subject: Wartung heute\r\n"));
    let parsed = mailparse::parse_mail(&mail).unwrap();
    assert_eq!(parsed.ctype.mimetype, "multipart/signed");
    assert_eq!(
        parsed.subparts[1].ctype.mimetype,
        "application/pgp-signature"
    );
    assert_eq!(
        parsed.subparts[0].get_body().unwrap().replace("\r\n", "\n"),
        BODY
    );

    // The signed part: the exact bytes between the first two boundaries.
    let b = boundary(&text);
    let open = format!("--{b}\r\n");
    let start = text.find(&open).unwrap() + open.len();
    let end = start + text[start..].find(&format!("\r\n--{b}\r\n")).unwrap();
    std::fs::write(g.path("part"), &text[start..end]).unwrap();
    std::fs::write(g.path("part.asc"), armored_block(&text, "SIGNATURE")).unwrap();
    let verify = |part: &str| {
        g.run(
            &[
                "--status-fd",
                "2",
                "--verify",
                g.path("part.asc").to_str().unwrap(),
                g.path(part).to_str().unwrap(),
            ],
            None,
        )
    };
    let out = verify("part");
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("[GNUPG:] GOODSIG"), "{}", out.stderr);
    assert!(
        out.stderr.contains(operator.fingerprint()),
        "{}",
        out.stderr
    );
    // Stored with LF line ends (as many Maildirs do): still good.
    std::fs::write(g.path("part.lf"), text[start..end].replace("\r\n", "\n")).unwrap();
    let out = verify("part.lf");
    assert!(out.stderr.contains("[GNUPG:] GOODSIG"), "{}", out.stderr);
    // Changed by one character: bad.
    std::fs::write(g.path("part.bad"), text[start..end].replace("4711", "4712")).unwrap();
    let out = verify("part.bad");
    assert!(
        !out.ok && out.stderr.contains("[GNUPG:] BADSIG"),
        "{}",
        out.stderr
    );
}

#[test]
fn gpg_imports_the_operator_key_and_its_autocrypt_copy() {
    let g = Gpg::new();
    let (operator, tsk) = OperatorKey::generate(OPERATOR, None).unwrap();
    g.import(operator.public_armored().as_bytes());
    let listing = g
        .run(
            &["--with-colons", "--list-keys", "notify@isp.example"],
            None,
        )
        .text();
    // Ed25519 primary (sign, certify), Cv25519 encryption subkey.
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("pub:") && l.contains(":22:") && l.contains(":sc")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("sub:") && l.contains(":18:") && l.contains(":e:")),
        "{listing}"
    );
    // gpg takes the secret key file too (it is an ordinary TSK).
    let other = Gpg::new();
    other.import(tsk.as_bytes());
    let secret = other
        .run(&["--with-colons", "--list-secret-keys"], None)
        .text();
    assert!(secret.contains(operator.fingerprint()));
    // And encrypts to the operator (the submission address can receive).
    let out = g.run(
        &[
            "--trust-model",
            "always",
            "--armor",
            "--encrypt",
            "-r",
            operator.fingerprint(),
        ],
        Some(b"hello"),
    );
    assert!(out.ok, "{}", out.stderr);
}

#[test]
fn signatures_made_by_gpg_verify() {
    let g = Gpg::new();
    let fpr = g.generate("Mallory <mallory@example.org>", "ed25519", true, "never");
    let key = g.export(&fpr);
    // gpg stamps its signatures to the second, after this: verify as of a
    // moment later, as kci allows for clock skew.
    let now = Utc::now() + chrono::Duration::seconds(5);
    let text = b"confirm: remove my key\n";

    let clear = g.run(&["--clearsign"], Some(text));
    let v = verify_signed(&clear.stdout, None, &key, now).unwrap();
    // The cleartext framework does not sign the last line end.
    assert_eq!(v.content, text.trim_ascii_end());
    assert_eq!(v.signing_key, fpr);

    let inline = g.run(&["--sign"], Some(text));
    let v = verify_signed(&inline.stdout, None, &key, now).unwrap();
    assert_eq!(v.content, text);

    let detached = g.run(&["--detach-sign", "--armor"], Some(text));
    let v = verify_signed(text, Some(&detached.stdout), &key, now).unwrap();
    assert_eq!(v.signing_key, fpr);
    assert!(verify_signed(b"confirm: keep my key\n", Some(&detached.stdout), &key, now).is_err());

    // Signed by another key: refused.
    let (other, _) = OperatorKey::generate(OPERATOR, None).unwrap();
    let e = verify_signed(&clear.stdout, None, &other.public_armored(), now).unwrap_err();
    assert!(matches!(e, PgpError::BadSignature(_)), "{e}");
    assert!(verify_signed(b"garbage", None, &key, now).is_err());
}

/// The operator key's revocation certificate, as `kci keys generate`
/// writes it: real GnuPG, given the public key and then the certificate,
/// holds the key revoked.
#[test]
fn the_operator_keys_revocation_certificate_revokes_it_in_gnupg() {
    let g = Gpg::new();
    let (key, _, revocation) =
        crate::pgp::OperatorKey::generate_with_revocation("NOC <noc@isp.example>", None, None)
            .unwrap();
    g.import(key.public_armored().as_bytes());
    let colons = |g: &Gpg| {
        String::from_utf8(g.ok(&["--with-colons", "--list-keys", key.fingerprint()], None)).unwrap()
    };
    assert!(
        colons(&g)
            .lines()
            .any(|l| l.starts_with("pub:u:") || l.starts_with("pub:-:"))
    );
    g.import(revocation.as_bytes());
    let listed = colons(&g);
    assert!(listed.lines().any(|l| l.starts_with("pub:r:")), "{listed}");
}
