//! Secure mail on one core: signed+encrypted mails per second (Ed25519
//! operator key to a Cv25519 and to an RSA-3072 recipient), signed-only
//! mails, and a submitted key checked, beside GnuPG doing the same
//! sign+encrypt with the same keys (`gpg --sign --encrypt`, one process per
//! mail, as a shell script or a gpg-based mailer would run it).
//!
//! Then the DKIM signature kci adds on top of a signed mail, per selector
//! kind (Ed25519, RSA-2048) and both together.
//!
//!     cargo bench --bench pgp [-- --mails N --gpg-mails M --only cv25519]
//!
//! `--only cv25519` measures just mail to the Cv25519 key as the email
//! channel sends it (key kept), for a profile of that path alone.

use chrono::Utc;
use kci::pgp::testkit::Gpg;
use kci::pgp::{
    MailHeaders, OperatorKey, RecipientKeys, check_submission, encrypted_mail, encrypted_mail_to,
    signed_mail,
};
use std::hint::black_box;
use std::time::Instant;

/// The allocator the `kci` binary uses (`src/main.rs`), so that the figures
/// are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = "Line 4711 (Example Street 1) is down since 09:12 UTC.\n\
We have dispatched a technician and expect it back by 13:00.\n\
Reference: INC-2024-0815. Reply to this mail to reach the NOC.\n";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mails = arg("--mails", 2000);
    let gpg_mails = arg("--gpg-mails", 100);
    let only_cv25519 = std::env::args().any(|a| a == "cv25519");
    let g = Gpg::new();
    let (operator, tsk) = OperatorKey::generate("kci <notify@isp.example>", None).unwrap();
    g.import(tsk.as_bytes());
    let mut recipients = Vec::new();
    for (uid, algo, sub) in [
        ("cv25519 <cv@example.org>", "ed25519", "cv25519"),
        ("rsa3072 <rsa@example.org>", "rsa3072", "rsa3072"),
    ] {
        let fpr = g.generate(uid, algo, true, "never");
        let armored = g.export(&fpr).into_bytes();
        let addr = uid
            .split('<')
            .nth(1)
            .unwrap()
            .trim_end_matches('>')
            .to_string();
        recipients.push((sub, fpr, addr, armored));
    }

    println!(
        "one core, body {} bytes; kci: sequoia-openpgp (crypto-openssl)",
        BODY.len()
    );
    let headers = |to: &str| MailHeaders {
        from: "kci <notify@isp.example>".parse().unwrap(),
        to: to.parse().unwrap(),
        subject: "Fault: line 4711 down".into(),
        date: Utc::now(),
        message_id: "<n-1@isp.example>".into(),
        in_reply_to: Some("<t@isp.example>".into()),
        references: Some("<t@isp.example>".into()),
        auto_submitted: Some("auto-generated".into()),
    };

    if only_cv25519 {
        let (kind, _, addr, armored) = &recipients[0];
        let clean = check_submission(armored, addr, Utc::now()).unwrap();
        key_kept(&operator, kind, &clean.armored, &headers(addr), mails);
        return;
    }

    let h = headers("carol@example.org");
    let start = Instant::now();
    for _ in 0..mails {
        black_box(signed_mail(&operator, &h, BODY).unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "kci signed (multipart/signed):            {:>8.0} mails/s  ({:.3} ms/mail, n={mails})",
        mails as f64 / secs,
        secs * 1000.0 / mails as f64
    );

    for (kind, fpr, addr, armored) in &recipients {
        let clean = check_submission(armored, addr, Utc::now()).unwrap();
        let n = (mails / 10).max(10);
        let start = Instant::now();
        for _ in 0..n {
            black_box(check_submission(armored, addr, Utc::now()).unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "kci check_submission ({kind:<7}):           {:>8.0} keys/s   ({:.3} ms/key, n={n})",
            n as f64 / secs,
            secs * 1000.0 / n as f64
        );

        let h = headers(addr);
        let start = Instant::now();
        for _ in 0..mails {
            black_box(encrypted_mail(&operator, &clean.armored, &h, BODY, Utc::now()).unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "kci signed+encrypted to {kind:<7}, key checked each mail: {:>8.0} mails/s  ({:.3} ms/mail, n={mails})",
            mails as f64 / secs,
            secs * 1000.0 / mails as f64
        );

        key_kept(&operator, kind, &clean.armored, &h, mails);

        let start = Instant::now();
        for _ in 0..gpg_mails {
            black_box(g.ok(
                &[
                    "--trust-model",
                    "always",
                    "--armor",
                    "-u",
                    operator.fingerprint(),
                    "-r",
                    fpr,
                    "--sign",
                    "--encrypt",
                ],
                Some(BODY.as_bytes()),
            ));
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "gpg --sign --encrypt to {kind:<7}:          {:>8.0} mails/s  ({:.3} ms/mail, n={gpg_mails}, a process each)",
            gpg_mails as f64 / secs,
            secs * 1000.0 / gpg_mails as f64
        );
    }

    // DKIM over the signed mail, as kci sends it with [email.dkim].
    let dir = tempfile::tempdir().unwrap();
    let signed = signed_mail(&operator, &h, BODY).unwrap();
    let mut selectors = Vec::new();
    for (name, rsa) in [("ed", None), ("rsa", Some(2048))] {
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, kci::channels::email::dkim::generate(rsa).unwrap()).unwrap();
        selectors.push(kci::channels::email::dkim::SelectorConfig {
            name: name.into(),
            key: path,
        });
    }
    for (label, chosen) in [
        ("Ed25519", &selectors[..1]),
        ("RSA-2048", &selectors[1..]),
        ("Ed25519 + RSA-2048", &selectors[..]),
    ] {
        let cfg = kci::channels::email::dkim::DkimConfig {
            domain: None,
            selectors: chosen.to_vec(),
        };
        let dkim = kci::channels::email::dkim::Dkim::load(&cfg, "isp.example").unwrap();
        let start = Instant::now();
        for _ in 0..mails {
            black_box(dkim.sign(signed.clone()).unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "DKIM {label:<18} on a signed mail:  {:>8.0} mails/s  ({:.3} ms/mail, n={mails})",
            mails as f64 / secs,
            secs * 1000.0 / mails as f64
        );
    }
}

/// Signed+encrypted mails as the email channel sends them: the key checked
/// once, then kept (`RecipientKeys`).
fn key_kept(operator: &OperatorKey, kind: &str, armored: &str, h: &MailHeaders, mails: usize) {
    let keys = RecipientKeys::new();
    let start = Instant::now();
    for _ in 0..mails {
        let r = keys.get(armored, Utc::now()).unwrap();
        black_box(encrypted_mail_to(operator, &r, h, BODY).unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "kci signed+encrypted to {kind:<7}, key kept (RecipientKeys): {:>8.0} mails/s  ({:.3} ms/mail, n={mails})",
        mails as f64 / secs,
        secs * 1000.0 / mails as f64
    );
}
