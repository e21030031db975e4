//! Staff as principals (DESIGN.md §7, contract): a person with a role, and
//! tokens acting as that person, limited to what the role allows.

use super::{ParseError, Scope};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// What a staff member may do; each role has what the one before it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The `:read` scopes.
    Viewer,
    /// + `directory:write`, `calls`, `incidents`.
    Agent,
    /// + `changes:approve`.
    Approver,
    /// + `assure`.
    Assurer,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Agent,
        Role::Approver,
        Role::Assurer,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Assurer => "assurer",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of someone in this role may hold `scope`.
    pub fn allows(self, scope: Scope) -> bool {
        let needs = match scope {
            s if s.is_read() => Role::Viewer,
            Scope::DirectoryWrite | Scope::Calls | Scope::Incidents => Role::Agent,
            Scope::ChangesApprove => Role::Approver,
            Scope::Assure => Role::Assurer,
            _ => Role::Admin,
        };
        self >= needs
    }

    /// The scopes this role allows, as a token of it gets them when none
    /// are asked for.
    pub fn scopes(self) -> Vec<Scope> {
        if self == Role::Admin {
            return vec![Scope::Admin];
        }
        Scope::ALL.into_iter().filter(|s| self.allows(*s)).collect()
    }
}

impl std::str::FromStr for Role {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
                ParseError::new(format!("`{s}` is not a role; known: {}", known.join(", ")))
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` may be a staff name (what audits and approvals record,
/// and what a customer is told is calling them).
pub fn check_staff_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` must be 1 to 64 letters, digits, dots, hyphens or underscores",
            name.chars().take(64).collect::<String>()
        ))
    }
}

/// A staff member.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Staff {
    pub name: String,
    pub role: Role,
    #[serde(serialize_with = "super::ser_time")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::ser_time_opt")]
    pub disabled_at: Option<DateTime<Utc>>,
}

/// How a staff member logs in (password + TOTP, `trust::staff`): kept
/// apart from [`Staff`], so a login, which records the code it used, does
/// not move the token epoch that a change of person or role moves.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StaffLogin {
    pub name: String,
    /// The password's argon2id hash (PHC string), once enrolled.
    pub password_hash: Option<String>,
    /// The TOTP secret, sealed (`trust::seal`, bound to the name).
    pub totp_secret: Option<String>,
    /// The TOTP step last used to log in (0: none): a code is used once.
    pub totp_last_step: i64,
    /// SHA-256 of an enrolment code not used yet, and until when it holds.
    pub enrol_hash: Option<String>,
    pub enrol_expires_at: Option<DateTime<Utc>>,
    /// When the password and TOTP secret were set.
    pub enrolled_at: Option<DateTime<Utc>>,
    /// The first login with a code from the authenticator: it was set up.
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_the_contract_says() {
        use Scope::*;
        // (role, allowed, refused)
        let cases: [(Role, &[Scope], &[Scope]); 5] = [
            (
                Role::Viewer,
                &[EventsRead, DirectoryRead, ChangesRead, AuditRead],
                &[
                    DirectoryWrite,
                    Calls,
                    Incidents,
                    ChangesApprove,
                    EventsWrite,
                    Admin,
                ],
            ),
            (
                Role::Agent,
                &[DirectoryRead, DirectoryWrite, Calls, Incidents],
                &[ChangesApprove, Assure, DirectoryAdmin, KeysWrite, Admin],
            ),
            (
                Role::Approver,
                &[ChangesApprove, Incidents],
                &[Assure, Admin],
            ),
            (
                Role::Assurer,
                &[Assure, ChangesApprove],
                &[Admin, EventsWrite],
            ),
            (Role::Admin, &[Admin, EventsWrite, DirectoryAdmin], &[]),
        ];
        for (role, allowed, refused) in cases {
            for s in allowed {
                assert!(role.allows(*s), "{role} should allow {s}");
            }
            for s in refused {
                assert!(!role.allows(*s), "{role} should not allow {s}");
            }
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
        assert_eq!(Role::Admin.scopes(), vec![Admin]);
    }
}
