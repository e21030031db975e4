//! Assurance recovery on the change engine (DESIGN.md §7): an assurer
//! records an assurance of a pending change, the customer confirms it
//! from the primary address and receives the T-word there, and completes
//! it with `A-word-T-word`. Each step is one `change_step`, like every
//! other step on a change; the slow hashing (argon2) happens before it,
//! outside the transaction. The decisions are `trust::assurance`'s.

use super::{Action, Actor, Engine, Step, refused};
use crate::model::{
    Assurance, AssuranceState, Change, ChangeAnswer, ChangeContext, ChangeRefusal, ChangeTarget,
    ChangeWrite, DestinationUri, Incident,
};
use crate::store::Result;
use crate::trust::assurance as rules;
use chrono::{DateTime, SubsecRound, Utc};

/// What an assurer gives when recording an assurance.
#[derive(Debug, Clone)]
pub struct AssuranceInput {
    /// The customer's primary address; `None`: the key change's address,
    /// or the account's only verified mail address.
    pub address: Option<String>,
    /// Agreed face to face; only its argon2 hash is kept.
    pub a_word: String,
    pub ticket: String,
    /// When they met.
    pub met_on: DateTime<Utc>,
}

impl Engine<'_> {
    /// Records an assurance of change `id` by the staff member acting:
    /// the confirmation link goes to the primary address.
    pub async fn assure(
        &self,
        id: &str,
        input: AssuranceInput,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        let Some(assurer) = actor.staff() else {
            return Ok(refused(ChangeRefusal::OwnChange, None));
        };
        // Nothing to assure: refused before the (slow) hashing. The step
        // decides again, locked.
        match self.store.change(id).await? {
            None => return Ok(refused(ChangeRefusal::NotFound, None)),
            Some(c) if c.state != crate::model::ChangeState::Pending => {
                return Ok(refused(ChangeRefusal::NotPending, Some(&c)));
            }
            Some(_) => {}
        }
        let a_word = input.a_word.clone();
        let a_hash = crate::slow::argon2(move || rules::hash_a_word(&a_word))
            .await?
            .map_err(|e| crate::store::StoreError::Unavailable(format!("hashing: {e}")))?;
        let token = crate::keys::new_link_secret();
        let now = self.now.trunc_subsecs(3);
        let draft = Assurance {
            id: crate::model::new_id(),
            change: id.to_string(),
            account: None,
            address: input.address.unwrap_or_default(),
            assurer: assurer.to_string(),
            ticket: input.ticket,
            met_on: input.met_on,
            recorded_at: now,
            state: AssuranceState::Recorded,
            a_hash,
            link_hash: rules::link_hash(&token),
            link_expires_at: now,
            t_hash: None,
            t_expires_at: None,
            attempts: 0,
        };
        let mut actor = actor.clone();
        actor.ticket = Some(draft.ticket.clone());
        self.step(
            ChangeTarget::Id(id.to_string()),
            Action::Assure {
                draft: Box::new(draft),
                token,
            },
            &actor,
        )
        .await
    }

    /// The customer followed an assurance's confirmation link and
    /// confirmed: the T-word goes to the primary address.
    pub async fn confirm_assurance(
        &self,
        token: &str,
        source: Option<String>,
    ) -> Result<ChangeAnswer> {
        let actor = Actor {
            id: "link".into(),
            source,
            ticket: None,
        };
        self.step(
            ChangeTarget::AssuranceLink(rules::link_hash(token)),
            Action::ConfirmAssurance {
                t_word: rules::t_word(),
            },
            &actor,
        )
        .await
    }

    /// The recovery secret `A-word-T-word` for change `id`: checked
    /// against each of its live assurances before the step (argon2 is
    /// slow), counted and decided in it.
    pub async fn complete_assurance(
        &self,
        id: &str,
        secret: &str,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        let live: Vec<Assurance> = self
            .store
            .assurances(id)
            .await?
            .into_iter()
            .filter(|a| a.state == AssuranceState::Confirmed && a.live(self.now))
            .collect();
        let secret = secret.to_string();
        let key = self.config.code_key.clone();
        let matched = crate::slow::argon2(move || rules::matching(&key, &live, &secret)).await?;
        self.step(
            ChangeTarget::Id(id.to_string()),
            Action::CompleteAssurance { matched },
            actor,
        )
        .await
    }

    /// The assurance a confirmation link belongs to (for its page).
    pub async fn assurance_by_link(&self, token: &str) -> Result<Option<Assurance>> {
        self.store.assurance_by_link(&rules::link_hash(token)).await
    }
}

impl Step {
    fn limits(&self, ctx: &ChangeContext) -> rules::Limits {
        self.assurance.limits(ctx.level)
    }

    fn assure_audit(
        &self,
        action: &str,
        outcome: &str,
        c: Option<&Change>,
        a: &Assurance,
        detail: Option<String>,
    ) -> ChangeWrite {
        let mut d = self.actor.draft(action, outcome, c);
        d.ticket = Some(a.ticket.clone());
        if d.account.is_none() {
            d.account = a.account.clone();
        }
        d.detail = Some(match detail {
            Some(x) => format!("assurance {}: {x}", a.id),
            None => format!("assurance {} by {}", a.id, a.assurer),
        });
        ChangeWrite::Audit(d)
    }

    pub(super) fn assure(
        &self,
        ctx: &ChangeContext,
        draft: &Assurance,
        token: &str,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let c = ctx.change.as_ref();
        let limits = self.limits(ctx);
        // The primary address: as given, else the key's, else the
        // account's only verified mailbox.
        let mailboxes: Vec<&str> = ctx
            .audience
            .iter()
            .filter_map(|a| match &a.destination.uri {
                DestinationUri::Mailto(m) => Some(m.as_str()),
                _ => None,
            })
            .collect();
        let address = match (draft.address.as_str(), c.and_then(|c| c.address.as_deref())) {
            ("", Some(key_address)) => key_address.to_string(),
            ("", None) if mailboxes.len() == 1 => mailboxes[0].to_string(),
            (given, _) => crate::keys::normalise(given).unwrap_or_default(),
        };
        let a = Assurance {
            address,
            account: c
                .and_then(|c| c.account.clone())
                .or_else(|| ctx.audience.first().map(|a| a.account.clone())),
            link_expires_at: draft.recorded_at + limits.link_valid,
            ..draft.clone()
        };
        if let Err(why) = rules::record(c, ctx, &a, &limits, now) {
            let audit = self.assure_audit(
                "assurance.recorded",
                "refused",
                c,
                &a,
                Some(why.to_string()),
            );
            return (vec![audit], refused(why, c));
        }
        let Some(c) = c else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        let notice = self.with_secret(self.texts.assurance_link(&a, c, now), token);
        (
            vec![
                ChangeWrite::Assurance(a.clone()),
                ChangeWrite::Notice(notice),
                self.assure_audit("assurance.recorded", "ok", Some(c), &a, None),
            ],
            ChangeAnswer::Assured {
                change: c.clone(),
                assurance: Box::new(a),
            },
        )
    }

    pub(super) fn confirm_assurance(
        &self,
        ctx: &ChangeContext,
        t_word: &str,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(a) = ctx.assurance.as_ref() else {
            // Unknown: one answer for every wrong link, not logged.
            return (Vec::new(), refused(ChangeRefusal::InvalidLink, None));
        };
        let c = ctx.change.as_ref();
        let hash = rules::t_hash(&self.code_key, &a.id, t_word);
        match rules::confirm(Some(a), c, &hash, &self.limits(ctx), now) {
            Err((why, after)) => {
                let mut writes: Vec<ChangeWrite> = after
                    .into_iter()
                    .map(|a| ChangeWrite::Assurance(*a))
                    .collect();
                writes.push(self.assure_audit(
                    "assurance.confirmed",
                    "refused",
                    c,
                    a,
                    Some(why.to_string()),
                ));
                (writes, refused(why, c))
            }
            Ok(confirmed) => {
                let Some(c) = c else {
                    return (Vec::new(), refused(ChangeRefusal::NotFound, None));
                };
                let mut writes = vec![
                    ChangeWrite::Assurance(confirmed.clone()),
                    ChangeWrite::Notice(
                        self.with_secret(self.texts.assurance_t_word(&confirmed, c, now), t_word),
                    ),
                    self.assure_audit("assurance.confirmed", "ok", Some(c), &confirmed, None),
                ];
                writes.extend(
                    self.texts
                        .recovery_under_way(&confirmed, c, &ctx.audience, now)
                        .into_iter()
                        .map(ChangeWrite::Notice),
                );
                (
                    writes,
                    ChangeAnswer::Assured {
                        change: c.clone(),
                        assurance: Box::new(confirmed),
                    },
                )
            }
        }
    }

    pub(super) fn complete_assurance(
        &self,
        ctx: &ChangeContext,
        matched: Option<&str>,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let c = ctx.change.as_ref();
        let (done, answer) = rules::complete(c, &ctx.assurances, matched, &self.limits(ctx), now);
        let Some(c) = c else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        let mut writes: Vec<ChangeWrite> = done
            .assurances
            .iter()
            .cloned()
            .map(ChangeWrite::Assurance)
            .collect();
        match answer {
            Err(why) => {
                let first = done.assurances.first().or(ctx.assurances.last());
                let mut d = self.actor.draft("assurance.completed", "refused", Some(c));
                d.ticket = first.map(|a| a.ticket.clone()).or(d.ticket);
                d.account = d.account.or_else(|| first.and_then(|a| a.account.clone()));
                d.detail = Some(why.to_string());
                writes.push(ChangeWrite::Audit(d));
                if done.locked_now {
                    let incident = Incident {
                        id: crate::model::new_id(),
                        account: c
                            .account
                            .clone()
                            .or_else(|| first.and_then(|a| a.account.clone())),
                        change: Some(c.id.clone()),
                        kind: "assurance_locked".into(),
                        opened_at: now.trunc_subsecs(3),
                        state: "open".into(),
                        note: Some(format!(
                            "recovery of {} locked after {} wrong secrets",
                            c.kind.as_str(),
                            rules::ATTEMPTS
                        )),
                        closed_at: None,
                        closed_by: None,
                    };
                    writes.push(ChangeWrite::Incident(incident));
                    writes.extend(
                        self.texts
                            .recovery_locked(c, &ctx.audience, now)
                            .into_iter()
                            .map(ChangeWrite::Notice),
                    );
                }
                (writes, refused(why, Some(c)))
            }
            Ok(()) => {
                let completed = done.assurances.first();
                let mut d = self.actor.draft("assurance.completed", "ok", Some(c));
                d.ticket = completed.map(|a| a.ticket.clone());
                d.account = d
                    .account
                    .or_else(|| completed.and_then(|a| a.account.clone()));
                d.detail = completed.map(|a| format!("assurance {} by {}", a.id, a.assurer));
                writes.push(ChangeWrite::Audit(d));
                match done.change {
                    // Proven: it applies now if nothing else is missing.
                    Some(proven) => {
                        let (more, answer) = self.conclude(proven, ctx, now);
                        writes.extend(more);
                        (writes, answer)
                    }
                    // Another assurer's assurance is still needed.
                    None => (writes, ChangeAnswer::Waiting(c.clone())),
                }
            }
        }
    }
}
