//! Call verification (DESIGN.md §8): staff about to call a customer (or
//! taking their call) open a verification; the customer is told on their
//! phone "<staff> from <operator> is calling you now" with a code to read
//! out and a link where they type the code staff read to them. Only both
//! codes typed right verify the call; three wrong codes or five minutes
//! and it failed: the customer is told to hang up, and an incident opens.
//!
//! Each step is one [`CallStore::call_step`](crate::store::CallStore)
//! transaction; what a typed code does is `trust::calls`'s pure rules.
//! The codes and the link are kept only as hashes; the customer's code
//! and link wait in their notices only until those are sent.

use crate::changes::Actor;
use crate::config::Config;
use crate::model::{
    Call, CallAnswer, CallCode, CallContext, CallRefusal, CallRule, CallState, CallTarget,
    CallWrite, Incident,
};
use crate::store::{Result, Store};
use crate::text::calls::CallTexts;
use crate::trust::calls::{self as rules, Side};
use chrono::{DateTime, SubsecRound, Utc};
use std::sync::Arc;

/// What opening a verification led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// Open; the code staff read out (shown once, to staff).
    Open {
        call: Box<Call>,
        staff_code: String,
    },
    Refused(CallRefusal),
    /// Over a limit (per account or per staff member) until `retry_at`.
    Limited {
        by: &'static str,
        retry_at: DateTime<Utc>,
    },
}

/// The engine, for one moment.
pub struct Calls<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub now: DateTime<Utc>,
}

/// How the secret of a customer's call link is kept.
pub fn link_hash(token: &str) -> String {
    crate::model::sha256_hex(format!("kci-call-link\u{1f}{token}").as_bytes())
}

impl Calls<'_> {
    fn texts(&self) -> CallTexts {
        CallTexts {
            operator: self.config.email.sender_name().to_string(),
        }
    }

    async fn step(&self, target: CallTarget, action: Action, actor: &Actor) -> Result<CallAnswer> {
        let step = Step {
            action,
            actor: actor.clone(),
            texts: self.texts(),
            code_key: self.config.code_key.clone(),
        };
        self.store.call_step(target, self.now, Arc::new(step)).await
    }

    /// Opens a verification of `contact` of `account` by staff member
    /// `actor`: the customer is told at once, on every verified
    /// destination that reaches them at once (not mail).
    pub async fn open(&self, account: &str, contact: &str, actor: &Actor) -> Result<Opened> {
        let Some(staff) = actor.staff() else {
            return Ok(Opened::Refused(CallRefusal::NotFound));
        };
        for (bucket, key, cap) in [
            ("calls:account", account, self.config.calls.per_account),
            ("calls:staff", staff, self.config.calls.per_staff),
        ] {
            if let crate::model::throttle::Counted::Refused { retry_at } =
                self.store.throttle(bucket, key, cap, self.now).await?
            {
                let by = if bucket == "calls:account" {
                    "account"
                } else {
                    "staff member"
                };
                return Ok(Opened::Limited { by, retry_at });
            }
        }
        let now = self.now.trunc_subsecs(3);
        let id = crate::model::new_id();
        let (staff_code, customer_code) = (
            crate::trust::codes::six_digits(),
            crate::trust::codes::six_digits(),
        );
        let token = crate::keys::new_link_secret();
        let call = Call {
            id: id.clone(),
            account: account.to_string(),
            contact: contact.to_string(),
            staff: staff.to_string(),
            state: CallState::Open,
            opened_at: now,
            expires_at: rules::expires_at(now),
            staff_code: CallCode {
                hash: rules::code_hash(&self.config.code_key, &id, "staff", &staff_code),
                matched: false,
            },
            customer_code: CallCode {
                hash: rules::code_hash(&self.config.code_key, &id, "customer", &customer_code),
                matched: false,
            },
            link_hash: link_hash(&token),
            customer_confirmed: false,
            staff_confirmed: false,
            attempts: 0,
            reason: None,
        };
        let mut base = self.config.server.public_base().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let secret = self
            .texts()
            .calling_secret(&customer_code, &format!("{base}v1/call/{token}"));
        let action = Action::Open {
            call: Box::new(call.clone()),
            secret,
        };
        Ok(
            match self
                .step(CallTarget::New(Box::new(call)), action, actor)
                .await?
            {
                CallAnswer::Done(call) => Opened::Open {
                    call: Box::new(call),
                    staff_code,
                },
                CallAnswer::Refused { why, .. } => Opened::Refused(why),
            },
        )
    }

    /// Staff type the code the customer read out.
    pub async fn staff_typed(&self, id: &str, code: &str, actor: &Actor) -> Result<CallAnswer> {
        let action = Action::Typed {
            side: Side::Staff,
            code: code.to_string(),
            call: None,
        };
        self.step(CallTarget::Id(id.to_string()), action, actor)
            .await
    }

    /// The customer types the code staff read out, through their link
    /// (for call `id`, if the caller names one: a link of another call is
    /// not valid for it).
    pub async fn customer_typed(
        &self,
        token: &str,
        id: Option<&str>,
        code: &str,
        source: Option<String>,
    ) -> Result<CallAnswer> {
        let actor = Actor {
            id: "link:call".into(),
            source,
            ticket: None,
        };
        let action = Action::Typed {
            side: Side::Customer,
            code: code.to_string(),
            call: id.map(str::to_string),
        };
        self.step(CallTarget::Link(link_hash(token)), action, &actor)
            .await
    }

    /// Ends every open verification past its time (the customer is told
    /// to hang up); how many.
    pub async fn expire_due(&self) -> Result<usize> {
        let mut n = 0;
        for id in self.store.due_calls(self.now, 100).await? {
            if let CallAnswer::Done(_) = self
                .step(CallTarget::Id(id), Action::Expire, &Actor::kci())
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Clone)]
enum Action {
    Open {
        call: Box<Call>,
        secret: String,
    },
    Typed {
        side: Side,
        code: String,
        /// The call the typist means (a customer's link must be its).
        call: Option<String>,
    },
    Expire,
}

struct Step {
    action: Action,
    actor: Actor,
    texts: CallTexts,
    /// What codes are hashed with.
    code_key: crate::trust::codes::CodeKey,
}

impl Step {
    fn audit(&self, action: &str, outcome: &str, c: &Call, detail: Option<String>) -> CallWrite {
        CallWrite::Audit(crate::model::audit::AuditDraft {
            actor: self.actor.id.clone(),
            action: action.to_string(),
            account: Some(c.account.clone()),
            address: None,
            change: None,
            ticket: self.actor.ticket.clone(),
            source: self.actor.source.clone(),
            outcome: outcome.to_string(),
            detail: Some(match detail {
                Some(d) => format!("call {} by staff:{} to {}: {d}", c.id, c.staff, c.contact),
                None => format!("call {} by staff:{} to {}", c.id, c.staff, c.contact),
            }),
        })
    }

    /// The writes that end `c` badly (failed, expired): it, the customer
    /// told to hang up, an incident, the log.
    fn ended_badly(&self, c: Call, ctx: &CallContext, now: DateTime<Utc>) -> Vec<CallWrite> {
        let incident = Incident {
            id: crate::model::new_id(),
            account: Some(c.account.clone()),
            change: None,
            kind: format!("call.{}", c.state.as_str()),
            opened_at: now.trunc_subsecs(3),
            state: "open".into(),
            note: Some(format!(
                "call {} by staff:{} to {} {}: {}",
                c.id,
                c.staff,
                c.contact,
                c.state.as_str(),
                c.reason.as_deref().unwrap_or("")
            )),
            closed_at: None,
            closed_by: None,
        };
        let mut writes = vec![
            self.audit(
                &format!("call.{}", c.state.as_str()),
                c.state.as_str(),
                &c,
                c.reason.clone(),
            ),
            CallWrite::Incident(incident),
        ];
        writes.extend(
            self.texts
                .hang_up(&c, &ctx.audience, now)
                .into_iter()
                .map(CallWrite::Notice),
        );
        writes.insert(0, CallWrite::Call(c));
        writes
    }
}

impl CallRule for Step {
    fn decide(&self, ctx: &CallContext, now: DateTime<Utc>) -> (Vec<CallWrite>, CallAnswer) {
        let refused = |why| CallAnswer::Refused { why, call: None };
        match &self.action {
            Action::Open { call, secret } => {
                if !ctx.contact_known {
                    return (Vec::new(), refused(CallRefusal::UnknownContact));
                }
                if ctx.audience.is_empty() {
                    return (Vec::new(), refused(CallRefusal::Unreachable));
                }
                let mut writes = vec![
                    CallWrite::Call((**call).clone()),
                    self.audit("call.opened", "open", call, None),
                ];
                // The code and link sealed: never stored in clear.
                let at_rest = crate::trust::seal::AtRest::new(&self.code_key);
                writes.extend(
                    self.texts
                        .calling(call, &ctx.audience, now)
                        .into_iter()
                        .map(|n| CallWrite::Notice(at_rest.with_secret(n, secret))),
                );
                (writes, CallAnswer::Done((**call).clone()))
            }
            Action::Typed { side, code, call } => {
                let c = ctx
                    .call
                    .as_ref()
                    .filter(|c| call.as_ref().is_none_or(|id| *id == c.id));
                let Some(c) = c else {
                    let why = match side {
                        Side::Staff => CallRefusal::NotFound,
                        Side::Customer => CallRefusal::InvalidLink,
                    };
                    return (Vec::new(), refused(why));
                };
                let which = match side {
                    Side::Staff => "customer",
                    Side::Customer => "staff",
                };
                let hash = rules::code_hash(&self.code_key, &c.id, which, code);
                let who = match side {
                    Side::Staff => "call.staff_typed",
                    Side::Customer => "call.customer_typed",
                };
                match rules::typed(c, *side, &hash, now) {
                    (Some(next), Ok(())) => {
                        let mut writes = vec![
                            CallWrite::Call(next.clone()),
                            self.audit(who, "matched", &next, None),
                        ];
                        if next.state == CallState::Verified {
                            writes.push(self.audit("call.verified", "verified", &next, None));
                            writes.extend(
                                self.texts
                                    .verified(&next, &ctx.audience, now)
                                    .into_iter()
                                    .map(CallWrite::Notice),
                            );
                        }
                        (writes, CallAnswer::Done(next))
                    }
                    (Some(next), Err(why)) => {
                        let mut writes =
                            vec![self.audit(who, "refused", &next, Some(why.to_string()))];
                        if next.state == CallState::Open {
                            writes.push(CallWrite::Call(next.clone()));
                        } else {
                            writes.extend(self.ended_badly(next.clone(), ctx, now));
                        }
                        (
                            writes,
                            CallAnswer::Refused {
                                why,
                                call: Some(next),
                            },
                        )
                    }
                    (None, outcome) => {
                        let why = outcome.err().unwrap_or(CallRefusal::Over);
                        (
                            vec![self.audit(who, "refused", c, Some(why.to_string()))],
                            CallAnswer::Refused {
                                why,
                                call: Some(c.clone()),
                            },
                        )
                    }
                }
            }
            Action::Expire => match ctx.call.as_ref().and_then(|c| rules::expire(c, now)) {
                Some(expired) => {
                    let writes = self.ended_badly(expired.clone(), ctx, now);
                    (writes, CallAnswer::Done(expired))
                }
                None => (Vec::new(), refused(CallRefusal::Over)),
            },
        }
    }
}
