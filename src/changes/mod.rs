//! The change engine (DESIGN.md §7): every sensitive request of an
//! account — a destination added or removed, security lowered — and every
//! key change waiting out its cooling-off period goes through here.
//!
//! Each step (open, settle, veto, approve, close an incident) is one
//! [`ChangeStore::change_step`](crate::store::ChangeStore::change_step):
//! the store reads the change and what it concerns, locked, and a
//! [`Step`] decides — with the pure rules of `crate::trust::changes` —
//! what to write: the change's new state, what it does to the keys or the
//! directory, the notices to every verified destination, the incident,
//! the audit entries. All of it commits together or not at all, so a
//! change applies once, on one node, and is never applied untold.
//!
//! Notices about a pending change carry a one-click veto link. Its secret
//! is minted only when the notice goes out ([`mint_veto_link`], called by
//! the secure stage), so no usable veto secret is ever at rest: the store
//! keeps its hash.

use crate::config::Config;
use crate::model::audit::AuditDraft;
use crate::model::{
    Change, ChangeAnswer, ChangeContext, ChangeKind, ChangeRefusal, ChangeRule, ChangeState,
    ChangeTarget, ChangeWrite, Destination, Incident, KeyWrite, Notification, ProofKind,
    SecurityLevel, Subject, VetoLink,
};
use crate::store::{Result, Store};
use crate::trust::changes::{self as rules, Settle};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use std::sync::Arc;

mod assurance;
pub use assurance::AssuranceInput;

use crate::text::changes::ChangeTexts as Texts;
pub use crate::text::changes::{REMINDER, reminder_key};

/// Who acts on a change, as the audit log records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actor {
    /// `staff:<name>`, `token:<id>`, `link:<destination>`, `mail:<address>`,
    /// `kci` (the scheduler).
    pub id: String,
    /// From where (an IP address, `smtp:<ip>`, `cli`).
    pub source: Option<String>,
    /// A ticket number staff gave.
    pub ticket: Option<String>,
}

impl Actor {
    pub fn kci() -> Actor {
        Actor {
            id: "kci".into(),
            ..Actor::default()
        }
    }

    /// The staff member acting, if it is one.
    pub fn staff(&self) -> Option<&str> {
        self.id.strip_prefix("staff:")
    }

    fn draft(&self, action: &str, outcome: &str, c: Option<&Change>) -> AuditDraft {
        AuditDraft {
            actor: self.id.clone(),
            action: action.to_string(),
            account: c.and_then(|c| c.account.clone()),
            address: c.and_then(|c| c.address.clone()),
            change: c.map(|c| c.id.clone()),
            ticket: self.ticket.clone(),
            source: self.source.clone(),
            outcome: outcome.to_string(),
            detail: None,
        }
    }
}

/// The engine, for one moment.
pub struct Engine<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub now: DateTime<Utc>,
}

impl Engine<'_> {
    fn texts(&self) -> Texts {
        let mut base = self.config.server.public_base().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        Texts {
            operator: self.config.email.sender_name().to_string(),
            base,
        }
    }

    async fn step(
        &self,
        target: ChangeTarget,
        action: Action,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        let step = Step {
            action,
            actor: actor.clone(),
            texts: self.texts(),
            assurance: self.config.assurance.clone(),
            reply_number: self.config.changes.reply_number.clone(),
            code_key: self.config.code_key.clone(),
        };
        self.store
            .change_step(target, self.now, Arc::new(step))
            .await
    }

    /// A new pending change of `kind` asked by `actor` for an account at
    /// `level` (the caller decided it is protected): its clock starts now
    /// (stored to the millisecond, so what is answered reads the same as
    /// what is read back).
    pub fn new_change(
        &self,
        kind: ChangeKind,
        account: &str,
        level: SecurityLevel,
        subject: Subject,
        actor: &Actor,
    ) -> Change {
        let now = self.now.trunc_subsecs(3);
        let cooling =
            Duration::from_std(self.config.cooling_off(level)).unwrap_or(Duration::days(30));
        Change {
            id: crate::model::new_id(),
            kind,
            account: Some(account.to_string()),
            address: None,
            state: ChangeState::Pending,
            proof: None,
            requested_at: now,
            requested_by: actor.id.clone(),
            not_before: now + cooling,
            approvals: Vec::new(),
            approvals_needed: self.config.approvals_needed(level),
            reason: None,
            subject,
            proven_current: false,
            proven_new: false,
            proof_code: None,
            factors: Vec::new(),
        }
    }

    /// Opens a protected change of an account: stored pending, everyone
    /// told (with a veto link), unless another one of the account is
    /// pending (refused, `blocked`).
    pub async fn request(&self, change: Change, actor: &Actor) -> Result<ChangeAnswer> {
        self.step(
            ChangeTarget::New(change.clone()),
            Action::Open(change),
            actor,
        )
        .await
    }

    /// Settles every change whose period is over (applied, rejected or
    /// expired); how many ended.
    pub async fn settle_due(&self) -> Result<usize> {
        let mut ended = 0;
        for id in self.store.due_changes(self.now, 100).await? {
            let answer = self
                .step(ChangeTarget::Id(id), Action::Settle, &Actor::kci())
                .await?;
            if let ChangeAnswer::Settled(c) = &answer {
                tracing::info!(change = %c.id, kind = c.kind.as_str(), state = c.state.as_str(), "protected change settled");
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// A veto through a link a notice carried.
    pub async fn veto_link(&self, token: &str, source: Option<String>) -> Result<ChangeAnswer> {
        let hash = veto_hash(token);
        let actor = Actor {
            id: "link".into(),
            source,
            ticket: None,
        };
        self.step(
            ChangeTarget::Link(hash.clone()),
            Action::Veto { link: Some(hash) },
            &actor,
        )
        .await
    }

    /// A veto by staff (or a token) on the customer's behalf.
    pub async fn veto(&self, id: &str, actor: &Actor) -> Result<ChangeAnswer> {
        self.step(
            ChangeTarget::Id(id.to_string()),
            Action::Veto { link: None },
            actor,
        )
        .await
    }

    /// A staff member's approval.
    pub async fn approve(&self, id: &str, actor: &Actor) -> Result<ChangeAnswer> {
        self.step(ChangeTarget::Id(id.to_string()), Action::Approve, actor)
            .await
    }

    /// Sends a code proving change `id` the way `proof` says: a code to
    /// one of the customer's verified destinations (entered back), a split
    /// code (a number by mail and one by `second`; the sum entered back),
    /// or a code by mail to text back from the account's own mobile
    /// number. Where each may go is `rules::code_destination`'s.
    pub async fn send_code(
        &self,
        id: &str,
        proof: ProofKind,
        destination: &str,
        second: Option<&str>,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        let action = Action::SendCode {
            kind: proof,
            destination: destination.to_string(),
            second: second.map(str::to_string),
            codes: [
                crate::trust::codes::six_digits(),
                crate::trust::codes::six_digits(),
            ],
        };
        self.step(ChangeTarget::Id(id.to_string()), action, actor)
            .await
    }

    /// Checks a code entered back for change `id` (typed in), or texted
    /// from the mobile number `from`.
    pub async fn prove(
        &self,
        id: &str,
        code: &str,
        from: Option<&str>,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        let action = Action::Prove {
            code: code.to_string(),
            from: from.map(str::to_string),
        };
        self.step(ChangeTarget::Id(id.to_string()), action, actor)
            .await
    }

    /// The source system says the customer's request for change `id` came
    /// from `address`: a factor if that is inside the account's own
    /// prefixes.
    pub async fn connection(
        &self,
        id: &str,
        address: std::net::IpAddr,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        self.step(
            ChangeTarget::Id(id.to_string()),
            Action::Connection { address },
            actor,
        )
        .await
    }

    /// Closes an incident with staff's note; the customer is told.
    pub async fn close_incident(
        &self,
        id: &str,
        note: &str,
        actor: &Actor,
    ) -> Result<ChangeAnswer> {
        self.step(
            ChangeTarget::Incident(id.to_string()),
            Action::Close {
                note: note.to_string(),
            },
            actor,
        )
        .await
    }
}

/// How long a code proving a change stays valid.
const PROOF_CODE_MINUTES: i64 = 15;

fn expires_in(now: DateTime<Utc>) -> DateTime<Utc> {
    now + Duration::minutes(PROOF_CODE_MINUTES)
}

/// The sum of a split code's two numbers, as the customer enters it.
fn split_sum(a: &str, b: &str) -> String {
    (a.parse::<u32>().unwrap_or(0) + b.parse::<u32>().unwrap_or(0)).to_string()
}

/// How a code proving change `change` through `destination` is kept.
fn proof_code_hash(
    key: &crate::trust::codes::CodeKey,
    change: &str,
    destination: &str,
    code: &str,
) -> String {
    crate::trust::codes::code_hash(key, &format!("change:{change}:{destination}"), code)
}

/// How a veto link's secret is kept at rest.
pub fn veto_hash(token: &str) -> String {
    crate::model::sha256_hex(format!("kci-veto-link\u{1f}{token}").as_bytes())
}

/// Mints the veto link a reminder carries as it goes out: a fresh 256-bit
/// secret, only its hash stored, valid while the change is pending. `None`
/// when the change ended meanwhile (the reminder must not go).
pub async fn mint_veto_link(store: &dyn Store, n: &Notification) -> Result<Option<String>> {
    let Some(change) = n.key.strip_prefix("kci.change:") else {
        return Ok(None);
    };
    let token = crate::keys::new_link_secret();
    let link = VetoLink {
        change: change.to_string(),
        destination: if n.destination.is_empty() {
            n.uri.clone()
        } else {
            n.destination.clone()
        },
        expires_at: n.expires_at.unwrap_or(n.due_at) + rules::EXPIRE_AFTER,
        used: false,
    };
    Ok(store
        .add_veto_link(&veto_hash(&token), &link)
        .await?
        .then_some(token))
}

/// The server's loop for changes, calls and the audit log: settles due
/// changes, ends call verifications past their time, and signs the log's
/// head when a checkpoint is due, every second, until shutdown.
pub async fn run(
    store: Arc<dyn Store>,
    config: Arc<Config>,
    clock: Arc<dyn crate::model::Clock>,
    wake: Arc<crate::schedule::Wake>,
    shutdown: crate::shutdown::Shutdown,
) {
    let key = match crate::channels::email::load_signing_key(&config.email) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "audit checkpoints will not be signed");
            None
        }
    };
    let tick = std::time::Duration::from_secs(1);
    loop {
        let now = clock.now();
        let engine = Engine {
            store: store.as_ref(),
            config: config.as_ref(),
            now,
        };
        match engine.settle_due().await {
            Ok(n) if n > 0 => wake.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "settling protected changes failed; trying again"),
        }
        let calls = crate::calls::Calls {
            store: store.as_ref(),
            config: config.as_ref(),
            now,
        };
        match calls.expire_due().await {
            Ok(n) if n > 0 => wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ending expired call verifications failed; trying again")
            }
        }
        if let Some(key) = &key
            && let Err(e) = crate::audit::checkpoint(store.as_ref(), key, &config.audit, now).await
        {
            tracing::warn!(error = %e, "signing an audit checkpoint failed; trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// What a step does.
#[derive(Debug, Clone)]
// Built once per request and moved a few times: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Action {
    Open(Change),
    Settle,
    /// Through a link (its hash), or by the actor.
    Veto {
        link: Option<String>,
    },
    Approve,
    Close {
        note: String,
    },
    /// A proof code of `kind` through `destination` (and `second`); the
    /// codes themselves, for the notices (a split code uses both).
    SendCode {
        kind: ProofKind,
        destination: String,
        second: Option<String>,
        codes: [String; 2],
    },
    /// A proof code entered back (or texted from `from`).
    Prove {
        code: String,
        from: Option<String>,
    },
    /// Where the customer's request came from.
    Connection {
        address: std::net::IpAddr,
    },
    /// An assurer's assurance (the confirmation link's secret, for its
    /// notice).
    Assure {
        draft: Box<crate::model::Assurance>,
        token: String,
    },
    /// An assurance's confirmation link followed (the T-word to send).
    ConfirmAssurance {
        t_word: String,
    },
    /// A recovery secret, and the assurance it matched, if any.
    CompleteAssurance {
        matched: Option<String>,
    },
}

/// One step's decision (see the module's doc).
struct Step {
    action: Action,
    actor: Actor,
    texts: Texts,
    assurance: crate::config::AssuranceConfig,
    /// Where customers text codes back to.
    reply_number: Option<String>,
    /// What codes are hashed with.
    code_key: crate::trust::codes::CodeKey,
}

impl ChangeRule for Step {
    fn decide(&self, ctx: &ChangeContext, now: DateTime<Utc>) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let (mut writes, answer) = self.decide_all(ctx, now);
        // Letters only as `plan::letter` admits them (kci's security
        // notices at `maximum`): the others are not written at all.
        writes.retain(|w| match w {
            ChangeWrite::Notice(n) => {
                crate::plan::letter::admits(n.channel, &n.type_name, false, ctx.level)
            }
            _ => true,
        });
        (writes, answer)
    }
}

impl Step {
    /// `n` carrying `secret`, sealed (`trust::seal::AtRest`): no code or
    /// link is stored in clear.
    fn with_secret(
        &self,
        n: crate::model::Notification,
        secret: &str,
    ) -> crate::model::Notification {
        crate::trust::seal::AtRest::new(&self.code_key).with_secret(n, secret)
    }

    fn decide_all(
        &self,
        ctx: &ChangeContext,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        match &self.action {
            Action::Open(new) => self.open(new, ctx),
            Action::Settle => self.settle(ctx, now),
            Action::Veto { link } => self.veto(ctx, link.as_deref(), now),
            Action::Approve => self.approve(ctx, now),
            Action::Close { note } => self.close(ctx, note, now),
            Action::SendCode {
                kind,
                destination,
                second,
                codes,
            } => self.send_code(ctx, (*kind, destination, second.as_deref()), codes, now),
            Action::Prove { code, from } => self.prove(ctx, code, from.as_deref(), now),
            Action::Connection { address } => self.connection(ctx, *address, now),
            Action::Assure { draft, token } => self.assure(ctx, draft, token, now),
            Action::ConfirmAssurance { t_word } => self.confirm_assurance(ctx, t_word, now),
            Action::CompleteAssurance { matched } => {
                self.complete_assurance(ctx, matched.as_deref(), now)
            }
        }
    }
}

fn refused(why: ChangeRefusal, change: Option<&Change>) -> ChangeAnswer {
    ChangeAnswer::Refused {
        why,
        change: change.cloned(),
    }
}

impl Step {
    fn audit(&self, action: &str, outcome: &str, c: Option<&Change>) -> ChangeWrite {
        ChangeWrite::Audit(self.actor.draft(action, outcome, c))
    }

    fn open(&self, new: &Change, ctx: &ChangeContext) -> (Vec<ChangeWrite>, ChangeAnswer) {
        if let Err(why) = rules::open(new, ctx) {
            let mut d = self.actor.draft("change.requested", "refused", Some(new));
            d.detail = Some(why.to_string());
            let blocking = ctx.others.iter().find(|c| !c.kind.is_key());
            return (vec![ChangeWrite::Audit(d)], refused(why, blocking));
        }
        let mut writes = vec![
            ChangeWrite::Change(new.clone()),
            self.audit("change.requested", "pending", Some(new)),
        ];
        writes.extend(
            self.texts
                .reminders(new, &ctx.audience)
                .into_iter()
                .map(ChangeWrite::Notice),
        );
        (writes, ChangeAnswer::Opened(new.clone()))
    }

    fn settle(&self, ctx: &ChangeContext, now: DateTime<Utc>) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(c) = &ctx.change else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        let (ended, writes) = match rules::settle(c, ctx, now) {
            Settle::Wait => return (Vec::new(), ChangeAnswer::Waiting(c.clone())),
            Settle::Apply => {
                let mut applied = c.clone();
                applied.state = ChangeState::Applied;
                let writes = self.apply(&mut applied, ctx, now);
                (applied, writes)
            }
            Settle::Reject(why) => (
                Change {
                    state: ChangeState::Rejected,
                    reason: Some(why),
                    ..c.clone()
                },
                Vec::new(),
            ),
            Settle::Expire => (
                Change {
                    state: ChangeState::Expired,
                    reason: Some("its staff approvals or assurance did not come in time".into()),
                    ..c.clone()
                },
                Vec::new(),
            ),
        };
        self.end(ended, writes, ctx, now)
    }

    /// A change that just gained a proof or an approval: applied now if
    /// the rules say it may (see `rules::settle`), otherwise stored as it
    /// is and waiting.
    fn conclude(
        &self,
        c: Change,
        ctx: &ChangeContext,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        if rules::settle(&c, ctx, now) == Settle::Apply {
            let mut applied = Change {
                state: ChangeState::Applied,
                ..c
            };
            let writes = self.apply(&mut applied, ctx, now);
            return self.end(applied, writes, ctx, now);
        }
        (
            vec![ChangeWrite::Change(c.clone())],
            ChangeAnswer::Waiting(c),
        )
    }

    /// The writes that end `ended` (applied, rejected, expired) after
    /// `writes`: its state, its reminders cancelled, the log, and everyone
    /// told.
    fn end(
        &self,
        ended: Change,
        mut writes: Vec<ChangeWrite>,
        ctx: &ChangeContext,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        writes.push(ChangeWrite::Change(ended.clone()));
        writes.push(cancel_reminders(&ended));
        writes.push(self.audit("change.settled", ended.state.as_str(), Some(&ended)));
        writes.extend(
            self.texts
                .ended(&ended, &ctx.audience, now)
                .into_iter()
                .map(ChangeWrite::Notice),
        );
        (writes, ChangeAnswer::Settled(ended))
    }

    /// Sends the code(s) proving the change the way `how` says.
    fn send_code(
        &self,
        ctx: &ChangeContext,
        how: (ProofKind, &str, Option<&str>),
        codes: &[String; 2],
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(c) = &ctx.change else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        let (kind, destination, second) = how;
        // What the customer enters back: the code, or a split code's sum.
        let expected = match kind {
            ProofKind::Split => split_sum(&codes[0], &codes[1]),
            _ => codes[0].clone(),
        };
        let expires = expires_in(now);
        let sent = rules::code_destination(c, ctx, kind, destination, second).and_then(|to| {
            let hash = proof_code_hash(&self.code_key, &c.id, destination, &expected);
            rules::with_code(c, how, &hash, expires, now).map(|c| (c, to))
        });
        match sent {
            Ok((with_code, (to, other))) => {
                let notices = match (kind, other) {
                    (ProofKind::Split, Some(other)) => {
                        let [a, b] = self
                            .texts
                            .split_halves(&with_code, (to, other), now, expires);
                        vec![
                            self.with_secret(a, &codes[0]),
                            self.with_secret(b, &codes[1]),
                        ]
                    }
                    (ProofKind::Reply, _) => {
                        let reply = self.reply_number.as_deref();
                        let n = self.texts.reply_code(&with_code, to, reply, now, expires);
                        vec![self.with_secret(n, &expected)]
                    }
                    _ => {
                        let n = self.texts.proof_code(&with_code, to, now, expires);
                        vec![self.with_secret(n, &expected)]
                    }
                };
                let mut d = self.actor.draft("change.code_sent", "ok", Some(&with_code));
                d.detail = Some(match second {
                    Some(s) => format!("{kind:?} code to destinations {destination} and {s}"),
                    None => format!("{kind:?} code to destination {destination}"),
                });
                let mut writes = vec![ChangeWrite::Change(with_code.clone())];
                writes.extend(notices.into_iter().map(ChangeWrite::Notice));
                writes.push(ChangeWrite::Audit(d));
                (writes, ChangeAnswer::Waiting(with_code))
            }
            Err(why) => {
                let mut d = self.actor.draft("change.code_sent", "refused", Some(c));
                d.detail = Some(why.to_string());
                (vec![ChangeWrite::Audit(d)], refused(why, Some(c)))
            }
        }
    }

    /// A code entered back (or texted from `from`): the customer's proof.
    /// With every proof the change needs, it applies now.
    fn prove(
        &self,
        ctx: &ChangeContext,
        code: &str,
        from: Option<&str>,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(c) = &ctx.change else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        let destination = c.proof_code.as_ref().map_or("", |p| p.destination.as_str());
        let code = match c.proof_code.as_ref().map(|p| p.kind) {
            // A sum typed with leading zeros is still that sum.
            Some(ProofKind::Split) => code.trim_start_matches('0').to_string(),
            _ => code.to_string(),
        };
        let hash = proof_code_hash(&self.code_key, &c.id, destination, &code);
        let (after, outcome) = rules::prove_by_code(c, ctx, &hash, from, now);
        self.proved(ctx, after, outcome, now)
    }

    /// The source system's word on where the customer's request came
    /// from: a factor when inside the account's own prefixes.
    fn connection(
        &self,
        ctx: &ChangeContext,
        address: std::net::IpAddr,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(c) = &ctx.change else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        if c.state != ChangeState::Pending {
            return (Vec::new(), refused(ChangeRefusal::NotPending, Some(c)));
        }
        let outcome = match rules::own_connection(address, &ctx.prefixes) {
            Some(factor) => Ok(rules::with_factor(c, &factor, ctx.level)),
            None => Err(ChangeRefusal::NotOwnConnection),
        };
        let (after, outcome) = match outcome {
            Ok(after) => (Some(after), Ok(())),
            Err(why) => (None, Err(why)),
        };
        self.proved(ctx, after, outcome, now)
    }

    /// The writes and answer after a factor was checked: the change as it
    /// is now (applied when that was all it needed), or the refusal.
    fn proved(
        &self,
        ctx: &ChangeContext,
        after: Option<Change>,
        outcome: std::result::Result<(), ChangeRefusal>,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let c = ctx.change.as_ref();
        match (after, outcome) {
            (Some(proven), Ok(())) => {
                let mut d = self.actor.draft("change.proven", "ok", Some(&proven));
                d.detail = proven.factors.last().map(|f| format!("factor {f}"));
                let (more, answer) = self.conclude(proven, ctx, now);
                ([vec![ChangeWrite::Audit(d)], more].concat(), answer)
            }
            (_, Ok(())) => (Vec::new(), refused(ChangeRefusal::NotFound, c)),
            (after, Err(why)) => {
                let mut d = self.actor.draft("change.proof", "refused", c);
                d.detail = Some(why.to_string());
                let mut writes: Vec<ChangeWrite> =
                    after.into_iter().map(ChangeWrite::Change).collect();
                writes.push(ChangeWrite::Audit(d));
                (writes, refused(why, c))
            }
        }
    }

    /// What applying `c` writes (it may learn more of itself: the key
    /// rules cancel the address's other changes).
    fn apply(&self, c: &mut Change, ctx: &ChangeContext, now: DateTime<Utc>) -> Vec<ChangeWrite> {
        match c.kind {
            ChangeKind::KeyReplace | ChangeKind::KeyRemove => {
                let (Some(keys), Some(address)) = (&ctx.keys, c.address.clone()) else {
                    return Vec::new();
                };
                let mut key_writes = Vec::new();
                *c = crate::keys::rules::apply(c.clone(), keys, now, &mut key_writes);
                key_writes
                    .into_iter()
                    .filter_map(|w| match w {
                        // The change itself is written by the caller.
                        KeyWrite::Change(x) if x.id == c.id => None,
                        KeyWrite::Change(x) => Some(ChangeWrite::Change(x)),
                        write => Some(ChangeWrite::Key {
                            address: address.clone(),
                            write,
                        }),
                    })
                    .collect()
            }
            ChangeKind::DestinationAdd => {
                let (Some(account), Some(plan)) = (&c.account, &c.subject.destination) else {
                    return Vec::new();
                };
                let Ok(uri) = plan.uri.parse() else {
                    return Vec::new();
                };
                let dest = Destination {
                    id: plan.id.clone(),
                    contact: plan.contact.clone(),
                    uri,
                    prefs: plan.prefs.clone(),
                    verified: plan.verified,
                    unhealthy_since: None,
                };
                // Its verification code goes only now.
                let (code, notice) = if dest.verified {
                    (None, None)
                } else {
                    let (code, notice) = crate::trust::codes::new_code(
                        &self.code_key,
                        account,
                        &dest,
                        &self.texts.operator,
                        now,
                    );
                    (
                        Some(crate::trust::codes::first(&code.hash, code.expires_at, now)),
                        Some(notice),
                    )
                };
                vec![ChangeWrite::AddDestination {
                    account: account.clone(),
                    destination: dest,
                    code,
                    notice,
                }]
            }
            ChangeKind::DestinationRemove => {
                let (Some(account), Some(plan)) = (&c.account, &c.subject.destination) else {
                    return Vec::new();
                };
                vec![ChangeWrite::RemoveDestination {
                    account: account.clone(),
                    contact: plan.contact.clone(),
                    id: plan.id.clone(),
                }]
            }
            // A `postal:account` destination's letters go to a new
            // address (the account's). Other destinations are changed by
            // removing one and adding another: nothing to write.
            ChangeKind::DestinationChange => match (&c.account, &c.subject.postal_address) {
                (Some(account), Some(address)) => vec![ChangeWrite::SetPostalAddress {
                    account: account.clone(),
                    address: address.clone(),
                }],
                _ => Vec::new(),
            },
            ChangeKind::SecurityLower => {
                let (Some(account), Some(view)) = (&c.account, &ctx.account) else {
                    return Vec::new();
                };
                vec![ChangeWrite::SetSecurity {
                    account: account.clone(),
                    level: c
                        .subject
                        .security_level
                        .unwrap_or(view.account.security_level),
                    paranoid: c.subject.paranoid.unwrap_or(view.account.paranoid),
                }]
            }
        }
    }

    fn veto(
        &self,
        ctx: &ChangeContext,
        link: Option<&str>,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let by = match (&ctx.link, link) {
            (Some(l), Some(_)) => format!("link:{}", l.destination),
            _ => self.actor.id.clone(),
        };
        if link.is_some() && ctx.link.is_none() {
            // Unknown: one answer for every wrong link, and not worth a
            // line in the log (guesses would fill it).
            return (Vec::new(), refused(ChangeRefusal::InvalidLink, None));
        }
        let change = ctx.change.as_ref();
        let vetoed = match rules::veto(change, ctx.link.as_ref(), now, &by) {
            Ok(c) => c,
            Err(why) => {
                let mut d = self.actor.draft("change.veto", "refused", change);
                d.actor = by;
                d.detail = Some(why.to_string());
                return (vec![ChangeWrite::Audit(d)], refused(why, change));
            }
        };
        let incident = Incident {
            id: crate::model::new_id(),
            account: vetoed
                .account
                .clone()
                .or_else(|| ctx.audience.first().map(|a| a.account.clone())),
            change: Some(vetoed.id.clone()),
            kind: "veto".into(),
            opened_at: now.trunc_subsecs(3),
            state: "open".into(),
            note: Some(format!("{} vetoed by {by}", vetoed.kind.as_str())),
            closed_at: None,
            closed_by: None,
        };
        let mut writes = vec![ChangeWrite::Change(vetoed.clone())];
        if let Some(hash) = link {
            writes.push(ChangeWrite::UseLink(hash.to_string()));
        }
        writes.push(cancel_reminders(&vetoed));
        writes.push(ChangeWrite::Incident(incident.clone()));
        let mut d = self.actor.draft("change.vetoed", "vetoed", Some(&vetoed));
        d.actor = by;
        d.detail = Some(format!("incident {}", incident.id));
        writes.push(ChangeWrite::Audit(d));
        writes.extend(
            self.texts
                .ended(&vetoed, &ctx.audience, now)
                .into_iter()
                .map(ChangeWrite::Notice),
        );
        (
            writes,
            ChangeAnswer::Vetoed {
                change: vetoed,
                incident,
            },
        )
    }

    fn approve(&self, ctx: &ChangeContext, now: DateTime<Utc>) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(c) = &ctx.change else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        let Some(staff) = self.actor.staff() else {
            return (Vec::new(), refused(ChangeRefusal::OwnChange, Some(c)));
        };
        match rules::approve(c, staff, now.trunc_subsecs(3)) {
            Ok(approved) => {
                let audit = self.audit("change.approved", "ok", Some(&approved));
                let (more, answer) = self.conclude(approved, ctx, now);
                let answer = match answer {
                    ChangeAnswer::Waiting(c) => ChangeAnswer::Approved(c),
                    settled => settled,
                };
                ([vec![audit], more].concat(), answer)
            }
            Err(why) => {
                let mut d = self.actor.draft("change.approval", "refused", Some(c));
                d.detail = Some(why.to_string());
                (vec![ChangeWrite::Audit(d)], refused(why, Some(c)))
            }
        }
    }

    fn close(
        &self,
        ctx: &ChangeContext,
        note: &str,
        now: DateTime<Utc>,
    ) -> (Vec<ChangeWrite>, ChangeAnswer) {
        let Some(incident) = &ctx.incident else {
            return (Vec::new(), refused(ChangeRefusal::NotFound, None));
        };
        if !incident.is_open() {
            return (Vec::new(), refused(ChangeRefusal::IncidentClosed, None));
        }
        let closed = Incident {
            state: "closed".into(),
            note: Some(note.to_string()),
            closed_at: Some(now.trunc_subsecs(3)),
            closed_by: Some(self.actor.id.clone()),
            ..incident.clone()
        };
        let mut d = self.actor.draft("incident.closed", "ok", None);
        d.account = closed.account.clone();
        d.change = closed.change.clone();
        d.detail = Some(format!("incident {}", closed.id));
        let mut writes = vec![ChangeWrite::Incident(closed.clone()), ChangeWrite::Audit(d)];
        writes.extend(
            self.texts
                .incident_closed(&closed, &ctx.audience, now)
                .into_iter()
                .map(ChangeWrite::Notice),
        );
        (writes, ChangeAnswer::IncidentClosed(closed))
    }
}

fn cancel_reminders(c: &Change) -> ChangeWrite {
    ChangeWrite::CancelNotices {
        key: reminder_key(&c.id),
        detail: format!("the change {} was {}", c.id, c.state.as_str()),
    }
}
