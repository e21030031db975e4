//! Staff logins (DESIGN.md §9), as pure rules: a staff member is enrolled
//! with a one-time enrolment code from `kci staff enrol` (proof that an
//! operator meant them to), choosing a password and receiving a TOTP
//! secret; a login then needs the password *and* a fresh code from the
//! authenticator, and yields a session token of bounded life.
//!
//! What a thief of one factor learns: nothing — every refusal looks the
//! same to the caller (the reason goes to the audit log), a wrong name
//! costs an argon2 verification like a right one, and the codes are
//! compared in constant time. A code is used once (its step is recorded
//! with a compare-and-set), and failures are counted per name and per
//! client address (`[staff] failed_logins…`).

use crate::model::{Staff, StaffLogin};
use crate::store::TokenRecord;
use chrono::{DateTime, Utc};
use rand::TryRngCore;
use subtle::ConstantTimeEq;

/// A password's bounds, in characters and bytes: long enough that the
/// password is not the weak half, short enough that argon2 is not a
/// lever for whoever posts a megabyte.
pub const PASSWORD_MIN_CHARS: usize = 12;
pub const PASSWORD_MAX_BYTES: usize = 256;

/// Whether `password` may be `name`'s password; why not.
pub fn check_password(name: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(format!("must be at least {PASSWORD_MIN_CHARS} characters"));
    }
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(format!("must be at most {PASSWORD_MAX_BYTES} bytes"));
    }
    if password.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    if password.to_lowercase().contains(&name.to_lowercase()) {
        return Err("must not contain the staff name".into());
    }
    Ok(())
}

/// A fresh enrolment code: `kcie_` and 160 random bits in base32, so it
/// can be read out or typed as well as pasted.
pub fn new_enrolment_code() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator failed");
    format!("kcie_{}", super::totp::base32(&bytes))
}

/// How an enrolment code is kept (a high-entropy secret: SHA-256 is
/// enough, and it is single use).
pub fn enrolment_hash(code: &str) -> String {
    crate::model::sha256_hex(format!("kci-staff-enrol\u{1f}{}", code.trim()).as_bytes())
}

/// A fresh TOTP secret.
pub fn new_totp_secret() -> [u8; super::totp::SECRET_LEN] {
    let mut bytes = [0u8; super::totp::SECRET_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator failed");
    bytes
}

/// Why an enrolment or a login was refused: for the audit log and the
/// server's log, never for the caller (who learns only "refused").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such staff member")]
    Unknown,
    #[error("the staff member is disabled")]
    Disabled,
    #[error("no enrolment code was issued, or it was used")]
    NoEnrolment,
    #[error("the enrolment code expired")]
    EnrolmentExpired,
    #[error("wrong enrolment code")]
    WrongEnrolmentCode,
    #[error("not enrolled (no password and authenticator yet)")]
    NotEnrolled,
    #[error("wrong password")]
    WrongPassword,
    #[error("wrong or used authenticator code")]
    WrongCode,
}

impl Refusal {
    /// The audit log's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Disabled => "disabled",
            Refusal::NoEnrolment => "no_enrolment",
            Refusal::EnrolmentExpired => "enrolment_expired",
            Refusal::WrongEnrolmentCode => "wrong_enrolment_code",
            Refusal::NotEnrolled => "not_enrolled",
            Refusal::WrongPassword => "wrong_password",
            Refusal::WrongCode => "wrong_code",
        }
    }
}

/// The staff member, if enabled.
fn enabled(staff: Option<&Staff>) -> Result<&Staff, Refusal> {
    match staff {
        None => Err(Refusal::Unknown),
        Some(s) if s.disabled_at.is_some() => Err(Refusal::Disabled),
        Some(s) => Ok(s),
    }
}

/// Whether the enrolment code hashing to `code_hash` enrols this staff
/// member at `now`.
pub fn may_enrol(
    staff: Option<&Staff>,
    login: Option<&StaffLogin>,
    code_hash: &str,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    enabled(staff)?;
    let login = login.ok_or(Refusal::NoEnrolment)?;
    let want = login.enrol_hash.as_deref().ok_or(Refusal::NoEnrolment)?;
    if !bool::from(want.as_bytes().ct_eq(code_hash.as_bytes())) {
        return Err(Refusal::WrongEnrolmentCode);
    }
    if login.enrol_expires_at.is_none_or(|e| now >= e) {
        return Err(Refusal::EnrolmentExpired);
    }
    Ok(())
}

/// What a login attempt showed, worked out before the verdict (the slow
/// and secret-handling parts: argon2, opening the TOTP secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub password_ok: bool,
    /// The step of the code typed, if it was a fresh valid one.
    pub step: Option<i64>,
}

/// Whether this login succeeds; the TOTP step it uses up.
pub fn may_log_in<'a>(
    staff: Option<&'a Staff>,
    login: Option<&StaffLogin>,
    shown: Shown,
) -> Result<(&'a Staff, i64), Refusal> {
    let staff = enabled(staff)?;
    let login = login.ok_or(Refusal::NotEnrolled)?;
    if login.password_hash.is_none() || login.totp_secret.is_none() {
        return Err(Refusal::NotEnrolled);
    }
    if !shown.password_ok {
        return Err(Refusal::WrongPassword);
    }
    let step = shown.step.ok_or(Refusal::WrongCode)?;
    Ok((staff, step))
}

/// The token a login gives: acting as the staff member, with what their
/// role allows, for `lifetime`, marked as a session (a second factor was
/// shown).
pub fn session(staff: &Staff, now: DateTime<Utc>, lifetime: chrono::Duration) -> TokenRecord {
    TokenRecord {
        id: crate::model::new_id(),
        name: "login".into(),
        scopes: staff.role.scopes(),
        created_at: now,
        staff: Some(staff.name.clone()),
        expires_at: Some(now + lifetime),
        revoked_at: None,
        last_used_at: None,
        last_used_from: None,
        allow: Vec::new(),
        cert: None,
        session: true,
    }
}

/// The context a TOTP secret is sealed to: its staff member.
pub fn seal_context(name: &str) -> String {
    format!("staff:{name}")
}

/// How a staff member logs in, as `kci staff list` shows it: no login
/// set up, an enrolment code waiting (or run out), or enrolled and whether
/// the authenticator has been used yet.
pub fn login_state(login: Option<&StaffLogin>, now: DateTime<Utc>) -> String {
    let fmt = crate::model::fmt_time;
    let Some(l) = login else {
        return "no login (token only)".into();
    };
    match (l.enrol_hash.is_some(), l.enrol_expires_at, l.enrolled_at) {
        (true, Some(until), _) if until > now => {
            format!("enrolment code issued, valid until {}", fmt(until))
        }
        (true, Some(until), _) => format!("enrolment code ran out {}", fmt(until)),
        (_, _, Some(at)) => match l.confirmed_at {
            Some(first) => format!("enrolled {}, first login {}", fmt(at), fmt(first)),
            None => format!("enrolled {}, not logged in yet", fmt(at)),
        },
        _ => "no login (token only)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap()
    }

    fn person(disabled: bool) -> Staff {
        Staff {
            name: "jo".into(),
            role: Role::Agent,
            created_at: now(),
            disabled_at: disabled.then(now),
        }
    }

    fn enrolled() -> StaffLogin {
        StaffLogin {
            name: "jo".into(),
            password_hash: Some("$argon2id$...".into()),
            totp_secret: Some("v1.sealed".into()),
            enrolled_at: Some(now()),
            ..StaffLogin::default()
        }
    }

    fn issued(expires_in: i64) -> StaffLogin {
        StaffLogin {
            name: "jo".into(),
            enrol_hash: Some(enrolment_hash("kcie_CODE")),
            enrol_expires_at: Some(now() + chrono::Duration::seconds(expires_in)),
            ..StaffLogin::default()
        }
    }

    #[test]
    fn passwords_are_bounded_and_not_the_name() {
        let cases = [
            ("correct horse battery", Ok(())),
            ("twelve chars", Ok(())),
            ("ünïcödé pässwörd", Ok(())),
            ("eleven char", Err("must be at least 12 characters")),
            ("", Err("must be at least 12 characters")),
            ("line\nbreak in it", Err("must not hold control characters")),
            (
                "my name is JO-smith",
                Err("must not contain the staff name"),
            ),
        ];
        for (pw, want) in cases {
            assert_eq!(
                check_password("jo", pw),
                want.map_err(String::from),
                "{pw:?}"
            );
        }
        let long = "x".repeat(PASSWORD_MAX_BYTES + 1);
        assert_eq!(
            check_password("jo", &long),
            Err("must be at most 256 bytes".into())
        );
        assert!(check_password("jo", &"x".repeat(PASSWORD_MAX_BYTES)).is_ok());
    }

    #[test]
    fn an_enrolment_needs_the_unused_code_in_time_of_an_enabled_person() {
        let right = enrolment_hash("kcie_CODE");
        let wrong = enrolment_hash("kcie_OTHER");
        // (staff, login, code hash, verdict)
        let cases = [
            (Some(person(false)), Some(issued(60)), &right, Ok(())),
            // The code as typed with a space around it.
            (
                Some(person(false)),
                Some(issued(60)),
                &enrolment_hash(" kcie_CODE\n"),
                Ok(()),
            ),
            (None, Some(issued(60)), &right, Err(Refusal::Unknown)),
            (
                Some(person(true)),
                Some(issued(60)),
                &right,
                Err(Refusal::Disabled),
            ),
            (Some(person(false)), None, &right, Err(Refusal::NoEnrolment)),
            // Used (enrolled since): no code left.
            (
                Some(person(false)),
                Some(enrolled()),
                &right,
                Err(Refusal::NoEnrolment),
            ),
            (
                Some(person(false)),
                Some(issued(60)),
                &wrong,
                Err(Refusal::WrongEnrolmentCode),
            ),
            (
                Some(person(false)),
                Some(issued(0)),
                &right,
                Err(Refusal::EnrolmentExpired),
            ),
        ];
        for (i, (staff, login, hash, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                may_enrol(staff.as_ref(), login.as_ref(), hash, now()),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn a_login_needs_an_enabled_enrolled_person_the_password_and_a_fresh_code() {
        let ok = Shown {
            password_ok: true,
            step: Some(7),
        };
        let no_pw = Shown {
            password_ok: false,
            step: Some(7),
        };
        let no_code = Shown {
            password_ok: true,
            step: None,
        };
        // (staff, login, shown, verdict)
        let cases = [
            (Some(person(false)), Some(enrolled()), ok, Ok(7)),
            (None, Some(enrolled()), ok, Err(Refusal::Unknown)),
            (
                Some(person(true)),
                Some(enrolled()),
                ok,
                Err(Refusal::Disabled),
            ),
            (Some(person(false)), None, ok, Err(Refusal::NotEnrolled)),
            // Enrolment issued, not done: the issued code is no password.
            (
                Some(person(false)),
                Some(issued(60)),
                ok,
                Err(Refusal::NotEnrolled),
            ),
            (
                Some(person(false)),
                Some(enrolled()),
                no_pw,
                Err(Refusal::WrongPassword),
            ),
            (
                Some(person(false)),
                Some(enrolled()),
                no_code,
                Err(Refusal::WrongCode),
            ),
        ];
        for (i, (staff, login, shown, want)) in cases.into_iter().enumerate() {
            let got = may_log_in(staff.as_ref(), login.as_ref(), shown).map(|(_, step)| step);
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn a_session_acts_as_the_person_with_their_role_for_its_lifetime() {
        let t = session(&person(false), now(), chrono::Duration::hours(12));
        assert_eq!(t.staff.as_deref(), Some("jo"));
        assert_eq!(t.scopes, Role::Agent.scopes());
        assert_eq!(t.expires_at, Some(now() + chrono::Duration::hours(12)));
        assert!(t.session);
        assert!(t.usable(now()));
        assert!(!t.usable(now() + chrono::Duration::hours(12)));
    }

    #[test]
    fn enrolment_codes_are_fresh_and_typeable() {
        let (a, b) = (new_enrolment_code(), new_enrolment_code());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 32);
        assert!(
            a[5..]
                .bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
        );
        assert_ne!(new_totp_secret(), new_totp_secret());
    }

    #[test]
    fn the_login_state_says_where_a_member_stands() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let now = t("2026-03-22T10:00:00Z");
        let at = t("2026-03-20T09:00:00Z");
        let base = StaffLogin {
            name: "ann".into(),
            ..StaffLogin::default()
        };
        let issued = StaffLogin {
            enrol_hash: Some("h".into()),
            enrol_expires_at: Some(now + chrono::Duration::days(1)),
            ..base.clone()
        };
        let ran_out = StaffLogin {
            enrol_expires_at: Some(now - chrono::Duration::days(1)),
            ..issued.clone()
        };
        let enrolled = StaffLogin {
            password_hash: Some("p".into()),
            enrolled_at: Some(at),
            ..base.clone()
        };
        let confirmed = StaffLogin {
            confirmed_at: Some(at + chrono::Duration::hours(1)),
            ..enrolled.clone()
        };
        let cases: [(Option<&StaffLogin>, &str); 6] = [
            (None, "no login (token only)"),
            (Some(&base), "no login (token only)"),
            (
                Some(&issued),
                "enrolment code issued, valid until 2026-03-23T10:00:00Z",
            ),
            (
                Some(&ran_out),
                "enrolment code ran out 2026-03-21T10:00:00Z",
            ),
            (
                Some(&enrolled),
                "enrolled 2026-03-20T09:00:00Z, not logged in yet",
            ),
            (
                Some(&confirmed),
                "enrolled 2026-03-20T09:00:00Z, first login 2026-03-20T10:00:00Z",
            ),
        ];
        for (login, want) in cases {
            assert_eq!(login_state(login, now), want);
        }
    }
}
