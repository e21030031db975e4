//! Destination verification codes (DESIGN.md §2): a 6-digit code is sent
//! to the destination and must be entered back. A million codes can be
//! guessed only if guesses are cheap, so they are not:
//!
//! * one code allows [`PER_CODE`] wrong tries, then it is locked;
//! * a destination allows [`WRONG_PER_WINDOW`] wrong tries per
//!   [`WINDOW`], whatever code they were for — asking for a new code does
//!   not renew the guesses (the attack review's finding 7);
//! * new codes come at growing intervals ([`gap`]: 1, 4, 16, 64 minutes)
//!   and at most [`CODES_PER_WINDOW`] per window.
//!
//! So an attacker guessing one destination's code gets 10 tries a day: one
//! chance in 100,000 a day. (The API adds a limit per token across
//! destinations, `[directory] wrong_codes_per_token`.)

use crate::model::{
    CodeRow, Destination, Message, Notification, PendingCode, Priority, RenewOutcome, SECRET_MARK,
    VerifyOutcome,
};
use chrono::{DateTime, Duration, Utc};
use rand::{Rng, TryRngCore};
use subtle::ConstantTimeEq;

/// Wrong tries one code allows.
pub const PER_CODE: u32 = 5;
/// Wrong tries one destination allows per window.
pub const WRONG_PER_WINDOW: u32 = 10;
/// Codes one destination is sent per window.
pub const CODES_PER_WINDOW: u32 = 5;
/// The window the counts above are kept over.
pub const WINDOW: Duration = Duration::hours(24);

/// How long after the `n`th code of a window the next may be sent.
pub fn gap(n: u32) -> Duration {
    Duration::minutes(4i64.saturating_pow(n.saturating_sub(1).min(6)))
}

/// The row with its window started anew if the last one is over.
fn current(row: &CodeRow, now: DateTime<Utc>) -> CodeRow {
    match row.window_start {
        Some(start) if now < start + WINDOW => row.clone(),
        _ => CodeRow {
            codes_sent: 0,
            wrong: 0,
            window_start: Some(now),
            ..row.clone()
        },
    }
}

/// The first code of a new destination.
pub fn first(hash: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> CodeRow {
    CodeRow {
        usable: false,
        hash: Some(hash.to_string()),
        expires_at: Some(expires_at),
        attempts: 0,
        codes_sent: 1,
        sent_at: Some(now),
        wrong: 0,
        window_start: Some(now),
    }
}

/// Checks the hash of a submitted code (compared in constant time).
pub fn check(
    row: &CodeRow,
    submitted: &str,
    now: DateTime<Utc>,
) -> (Option<CodeRow>, VerifyOutcome) {
    if row.usable {
        return (None, VerifyOutcome::AlreadyVerified);
    }
    let row = current(row, now);
    let Some(stored) = row.hash.as_deref() else {
        return (None, VerifyOutcome::Locked);
    };
    let expired = row.expires_at.is_none_or(|e| now >= e);
    if expired || row.attempts >= PER_CODE || row.wrong >= WRONG_PER_WINDOW {
        return (None, VerifyOutcome::Locked);
    }
    if bool::from(stored.as_bytes().ct_eq(submitted.as_bytes())) {
        let verified = CodeRow {
            usable: true,
            hash: None,
            expires_at: None,
            attempts: 0,
            ..row
        };
        return (Some(verified), VerifyOutcome::Verified);
    }
    let wrong = CodeRow {
        attempts: row.attempts + 1,
        wrong: row.wrong + 1,
        ..row
    };
    let left = (PER_CODE - wrong.attempts).min(WRONG_PER_WINDOW - wrong.wrong);
    (
        Some(wrong),
        VerifyOutcome::WrongCode {
            attempts_left: left,
        },
    )
}

/// Issues a new code in place of the last one.
pub fn issue(
    row: &CodeRow,
    hash: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<CodeRow, RenewOutcome> {
    if row.usable {
        return Err(RenewOutcome::AlreadyVerified);
    }
    let row = current(row, now);
    let window_end = row.window_start.unwrap_or(now) + WINDOW;
    if row.codes_sent >= CODES_PER_WINDOW || row.wrong >= WRONG_PER_WINDOW {
        return Err(RenewOutcome::TooSoon {
            retry_at: window_end,
        });
    }
    if let Some(last) = row.sent_at
        && row.codes_sent > 0
        && now < last + gap(row.codes_sent)
    {
        return Err(RenewOutcome::TooSoon {
            retry_at: last + gap(row.codes_sent),
        });
    }
    Ok(CodeRow {
        hash: Some(hash.to_string()),
        expires_at: Some(expires_at),
        attempts: 0,
        codes_sent: row.codes_sent + 1,
        sent_at: Some(now),
        ..row
    })
}

/// How long a destination verification code stays valid.
pub const CODE_LIFETIME_HOURS: i64 = 24;

/// Six digits from the OS generator.
pub fn six_digits() -> String {
    format!(
        "{:06}",
        rand::rngs::OsRng.unwrap_err().random_range(0..1_000_000u32)
    )
}

/// The key short codes are hashed with (HMAC-SHA256). It is kept outside
/// the database (`[store] code_key`, or a file beside the SQLite one), so
/// a copy of the database cannot be searched for the codes still live in
/// it: a 6-digit code's plain hash falls to a million guesses.
#[derive(Clone)]
pub struct CodeKey(std::sync::Arc<[u8; 32]>);

impl CodeKey {
    /// A fresh key from the OS generator.
    pub fn random() -> CodeKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut key)
            .unwrap_or_else(|e| panic!("the OS random generator failed: {e}"));
        CodeKey(std::sync::Arc::new(key))
    }

    /// A key written as 64 hex digits (`openssl rand -hex 32`).
    pub fn from_hex(text: &str) -> Result<CodeKey, String> {
        let text = text.trim();
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or("not hex digits")?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "not 64 hex digits (32 bytes)".to_string())?;
        Ok(CodeKey(std::sync::Arc::new(key)))
    }

    /// The key's bytes, for deriving keys of other purposes from it
    /// (`trust::seal`); never shown.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex digits (to write a new key file).
    pub fn to_hex(&self) -> String {
        crate::model::hex(self.0.as_slice())
    }

    /// HMAC-SHA256 over `parts`, separated, as hex.
    pub fn mac(&self, parts: &[&str]) -> String {
        use hmac::Mac;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.0.as_slice()) else {
            unreachable!("HMAC takes a key of any length")
        };
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"\x1f");
            }
            mac.update(p.as_bytes());
        }
        crate::model::hex(&mac.finalize().into_bytes())
    }
}

impl Default for CodeKey {
    fn default() -> CodeKey {
        CodeKey::random()
    }
}

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(..)") // never the key
    }
}

/// A fresh 6-digit code for `dest` (from the OS generator), stored
/// hashed with `key`, and the notice that carries it there.
pub fn new_code(
    key: &CodeKey,
    account: &str,
    dest: &Destination,
    sender: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> (PendingCode, Notification) {
    let code = six_digits();
    let pending = PendingCode {
        hash: code_hash(key, &dest.id, &code),
        expires_at: now + chrono::Duration::hours(CODE_LIFETIME_HOURS),
    };
    let notice = verification_notice(account, dest, sender, now);
    (
        pending,
        super::seal::AtRest::new(key).with_secret(notice, &code),
    )
}

/// A code is stored as HMAC-SHA256 with `key` over the destination id and
/// the code, so the same code on two destinations does not hash alike, and
/// the database alone does not give it away.
pub fn code_hash(key: &CodeKey, destination: &str, code: &str) -> String {
    key.mac(&["kci-verify", destination, code])
}

/// The notice carrying a verification code: the code itself is rendered
/// in at [`SECRET_MARK`] when it goes out, and erased once it did.
fn verification_notice(
    account: &str,
    dest: &Destination,
    sender: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Notification {
    let short = format!(
        "Your verification code is {SECRET_MARK}. It confirms this address for notices from {sender}."
    );
    let message = Message {
        short: short.clone(),
        subject: "Your verification code".into(),
        body: format!(
            "{short}\n\nIf you did not ask for notices to be sent here, ignore this message: nothing will be sent until the code is entered.\n"
        ),
        encrypt_to: None,
    };
    Notification::own(
        account,
        dest,
        "kci.verify",
        Priority::High,
        message,
        now,
        Some(now + chrono::Duration::hours(CODE_LIFETIME_HOURS)),
    )
}

/// A secret a person chose (a password, an A-word) as its argon2id hash
/// (PHC string, a fresh salt). Slow on purpose: call it outside any
/// transaction.
pub fn argon2_hash(secret: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| format!("the OS random number generator failed: {e}"))?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `secret` is the one hashed to `phc` by [`argon2_hash`] (a
/// hash that does not parse matches nothing). Slow, as that is.
pub fn argon2_matches(secret: &str, phc: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::password_hash::PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// A fresh token secret from the operating system's CSPRNG.
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator failed");
    format!(
        "kci_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored of a token.
pub fn hash_token(token: &str) -> String {
    crate::model::sha256_hex(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A code's stored hash depends on a key kept out of the database: a
    /// copy of the database alone cannot be searched for the code.
    #[test]
    fn codes_are_hashed_with_a_key() {
        let (k1, k2) = (CodeKey::random(), CodeKey::random());
        assert_ne!(
            code_hash(&k1, "d1", "123456"),
            code_hash(&k2, "d1", "123456")
        );
        assert_ne!(
            code_hash(&k1, "d1", "123456"),
            code_hash(&k1, "d2", "123456")
        );
        assert_eq!(
            code_hash(&k1, "d1", "123456"),
            code_hash(&k1, "d1", "123456")
        );
        let plain = crate::model::sha256_hex("kci-verify\u{1f}d1\u{1f}123456".as_bytes());
        assert_ne!(code_hash(&k1, "d1", "123456"), plain);
        let again = CodeKey::from_hex(&k1.to_hex()).unwrap();
        assert_eq!(code_hash(&again, "d1", "1"), code_hash(&k1, "d1", "1"));
        assert!(CodeKey::from_hex("00").is_err());
        assert_eq!(format!("{k1:?}"), "CodeKey(..)");
    }

    fn t(min: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(min)
    }

    fn fresh() -> CodeRow {
        first("h1", t(24 * 60), t(0))
    }

    #[test]
    fn checking_a_code() {
        let locked_out = CodeRow {
            wrong: WRONG_PER_WINDOW,
            ..fresh()
        };
        let spent = CodeRow {
            attempts: PER_CODE,
            ..fresh()
        };
        let stale_window = CodeRow {
            wrong: WRONG_PER_WINDOW,
            window_start: Some(t(-25 * 60)),
            ..fresh()
        };
        let usable = CodeRow {
            usable: true,
            ..Default::default()
        };
        // (case, row, submitted, at, outcome)
        let cases = [
            ("right code", fresh(), "h1", t(1), VerifyOutcome::Verified),
            (
                "wrong code",
                fresh(),
                "h2",
                t(1),
                VerifyOutcome::WrongCode { attempts_left: 4 },
            ),
            ("expired", fresh(), "h1", t(24 * 60), VerifyOutcome::Locked),
            (
                "five wrong already",
                spent,
                "h1",
                t(1),
                VerifyOutcome::Locked,
            ),
            (
                "ten wrong today",
                locked_out,
                "h1",
                t(1),
                VerifyOutcome::Locked,
            ),
            (
                "a new day",
                stale_window,
                "h1",
                t(1),
                VerifyOutcome::Verified,
            ),
            (
                "nothing to prove",
                usable,
                "h1",
                t(1),
                VerifyOutcome::AlreadyVerified,
            ),
            (
                "no code",
                CodeRow::default(),
                "h1",
                t(1),
                VerifyOutcome::Locked,
            ),
        ];
        for (case, row, submitted, at, want) in cases {
            assert_eq!(check(&row, submitted, at).1, want, "{case}");
        }
        let (row, _) = check(&fresh(), "h1", t(1));
        let row = row.unwrap();
        assert!(row.usable && row.hash.is_none());
    }

    #[test]
    fn a_new_code_does_not_renew_the_guesses() {
        // Guess five times, ask for a new code, guess again: ten wrong
        // guesses a day in all, however many codes.
        let mut row = fresh();
        let mut now = t(0);
        let mut guesses = 0;
        loop {
            match check(&row, "wrong", now) {
                (Some(next), VerifyOutcome::WrongCode { .. }) => {
                    row = next;
                    guesses += 1;
                }
                (None, VerifyOutcome::Locked) => {
                    match issue(&row, "h", now + Duration::hours(24), now) {
                        Ok(next) => row = next,
                        Err(RenewOutcome::TooSoon { retry_at }) if retry_at < t(24 * 60) => {
                            now = retry_at
                        }
                        Err(_) => break,
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(guesses, WRONG_PER_WINDOW);
        // The next day, guessing may go on, at the same pace.
        assert_eq!(
            check(&row, "wrong", t(24 * 60 + 1)).1,
            VerifyOutcome::Locked
        );
        assert!(issue(&row, "h", t(48 * 60), t(24 * 60 + 1)).is_ok());
    }

    #[test]
    fn codes_come_at_growing_intervals_and_a_few_a_day() {
        let mut row = fresh(); // the 1st code at t(0)
        let mut sent = vec![0];
        let mut now = t(0);
        for _ in 0..10 {
            match issue(&row, "h", now + Duration::hours(24), now) {
                Ok(next) => {
                    row = next;
                    sent.push((now - t(0)).num_minutes());
                }
                Err(RenewOutcome::TooSoon { retry_at }) if retry_at < t(24 * 60) => now = retry_at,
                Err(_) => break,
            }
        }
        assert_eq!(sent, vec![0, 1, 5, 21, 85]);
        assert_eq!(
            issue(&row, "h", now, now),
            Err(RenewOutcome::TooSoon {
                retry_at: t(24 * 60)
            })
        );
        let verified = CodeRow {
            usable: true,
            ..row
        };
        assert_eq!(
            issue(&verified, "h", now, now),
            Err(RenewOutcome::AlreadyVerified)
        );
    }
}
