//! The multi-node store: any number of `kci serve` nodes share one
//! PostgreSQL database. Due work is claimed with `FOR UPDATE SKIP LOCKED`
//! and a lease, so two nodes never send the same notification and a node
//! that dies hands its work over when the lease runs out. Ingest takes a
//! transaction-scoped advisory lock per (account, key), so pairing and
//! superseding see every earlier event of the same key.

use super::codec::*;
use super::*;
use crate::model::{from_millis, to_millis};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub struct PgStore {
    pool: Pool,
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

impl PgStore {
    /// Claims due notifications (of `channel`, or of all), urgent first.
    async fn claim(
        &self,
        channel: Option<ChannelKind>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "WITH due AS ( \
                   SELECT id FROM notifications \
                   WHERE ((state = 'pending' AND due_at <= $1) OR (state = 'sending' AND lease_until <= $1)) \
                     AND ($4::TEXT IS NULL OR channel = $4) \
                   LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE notifications n SET state = 'sending', attempts = attempts + 1, lease_until = $2 \
                 FROM due WHERE n.id = due.id \
                 RETURNING {}",
                NOTIFICATION_COLUMNS.split(", ").map(|c| format!("n.{c}")).collect::<Vec<_>>().join(", ")
            ))
            .await?;
        let channel = channel.map(|c| c.as_str());
        let rows = c
            .query(
                &stmt,
                &[
                    &to_millis(now),
                    &to_millis(lease_until),
                    &(limit as i64),
                    &channel,
                ],
            )
            .await?;
        let notes = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>>>()?;
        let mut out = with_events(&c, notes).await?;
        out.sort_by_key(|c| {
            (
                std::cmp::Reverse(c.notification.priority),
                c.notification.due_at,
            )
        });
        Ok(out)
    }

    /// Connects to `url` (`postgres://…`; `options=-csearch_path%3D…` selects a schema).
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::Unavailable(format!("bad postgres URL: {e}"))
        })?;
        Self::with_config(config).await
    }

    pub async fn with_config(config: tokio_postgres::Config) -> Result<Self> {
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Fail now, with the server's words, rather than on the first request.
        drop(pool.get().await?);
        Ok(Self { pool })
    }
}

const NOTIFICATION_COLUMNS: &str = "id, event, account, contact, destination, uri, channel, type, key, priority, \
     state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, digest, paired_from, \
     provider_ref, receipt, segments, secret";

fn notification_from_row(r: &Row) -> Result<Notification> {
    Ok(Notification {
        id: r.try_get(0)?,
        event: r.try_get(1)?,
        account: r.try_get(2)?,
        contact: r.try_get(3)?,
        destination: r.try_get(4)?,
        uri: r.try_get(5)?,
        channel: channel_from_text(r.try_get(6)?)?,
        type_name: r.try_get(7)?,
        key: r.try_get(8)?,
        priority: Priority::from_rank(i32::try_from(r.try_get::<_, i64>(9)?).unwrap_or(0)),
        state: state_from_text(r.try_get(10)?)?,
        reason: reason_from_text(r.try_get(11)?)?,
        detail: r.try_get(12)?,
        due_at: from_millis(r.try_get(13)?),
        expires_at: r.try_get::<_, Option<i64>>(14)?.map(from_millis),
        decided_at: from_millis(r.try_get(15)?),
        sent_at: r.try_get::<_, Option<i64>>(16)?.map(from_millis),
        attempts: u32::try_from(r.try_get::<_, i64>(17)?).unwrap_or(0),
        timezone: r.try_get(18)?,
        message: message_from_json(r.try_get(19)?)?,
        digest: r.try_get(20)?,
        paired_from: r.try_get::<_, Option<i64>>(21)?.map(from_millis),
        provider_ref: r.try_get(22)?,
        receipt: receipt_from_text(r.try_get(23)?)?,
        segments: r
            .try_get::<_, Option<i64>>(24)?
            .and_then(|s| u32::try_from(s).ok()),
        secret: r
            .try_get::<_, Option<String>>(25)?
            .map(crate::model::Secret::new),
    })
}

fn key_from_row(r: &Row) -> Result<crate::model::KeyRecord> {
    Ok(crate::model::KeyRecord {
        address: r.try_get(0)?,
        fingerprint: r.try_get(1)?,
        armored: r.try_get(2)?,
        state: key_state(r.try_get(3)?)?,
        source: r.try_get(4)?,
        submitted_at: from_millis(r.try_get(5)?),
        activated_at: r.try_get::<_, Option<i64>>(6)?.map(from_millis),
        expires_at: r.try_get::<_, Option<i64>>(7)?.map(from_millis),
    })
}

fn change_from_row(r: &Row) -> Result<crate::model::KeyChange> {
    Ok(crate::model::KeyChange {
        id: r.try_get(0)?,
        address: r.try_get(1)?,
        kind: change_kind(r.try_get(2)?)?,
        fingerprint: r.try_get(3)?,
        state: change_state(r.try_get(4)?)?,
        requested_at: from_millis(r.try_get(5)?),
        not_before: from_millis(r.try_get(6)?),
        proven_current: r.try_get(7)?,
        proven_new: r.try_get(8)?,
    })
}

async fn insert_key_tokens(
    c: &impl deadpool_postgres::GenericClient,
    tokens: &[crate::model::KeyToken],
) -> Result<()> {
    for t in tokens {
        c.execute(
            "INSERT INTO key_tokens (hash, address, fingerprint, purpose, change, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&t.hash, &t.address, &t.fingerprint, &t.purpose.as_str(), &t.change, &to_millis(t.expires_at)],
        )
        .await?;
    }
    Ok(())
}

/// What the key rules see of `address`: its active and pending keys and
/// its pending changes. The caller holds the address's lock.
async fn address_keys(
    c: &impl deadpool_postgres::GenericClient,
    address: &str,
) -> Result<crate::model::AddressKeys> {
    let mut keys = crate::model::AddressKeys::default();
    let rows = c
        .query(
            &format!("SELECT {KEY_COLUMNS} FROM keys WHERE address = $1 AND state IN ('active', 'pending') ORDER BY submitted_at"),
            &[&address],
        )
        .await?;
    for r in &rows {
        let k = key_from_row(r)?;
        if k.state == crate::model::KeyState::Active {
            keys.active = Some(k);
        } else {
            keys.pending.push(k);
        }
    }
    let rows = c
        .query(
            &format!("SELECT {CHANGE_COLUMNS} FROM key_changes WHERE address = $1 AND state = 'pending' ORDER BY requested_at, id"),
            &[&address],
        )
        .await?;
    keys.changes = rows.iter().map(change_from_row).collect::<Result<_>>()?;
    Ok(keys)
}

/// Serialises the transactions that change one address's keys, on every node.
async fn lock_address(c: &impl deadpool_postgres::GenericClient, address: &str) -> Result<()> {
    c.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('kci-keys:' || $1, 0))",
        &[&address],
    )
    .await?;
    Ok(())
}

/// Makes the writes the key rules returned for `address`; `link` is the
/// hash of the link being followed, if any.
async fn write_keys(
    c: &impl deadpool_postgres::GenericClient,
    address: &str,
    link: Option<&str>,
    now: DateTime<Utc>,
    writes: &[crate::model::KeyWrite],
) -> Result<()> {
    use crate::model::KeyWrite;
    for w in writes {
        match w {
            KeyWrite::UseLink => {
                c.execute(
                    "UPDATE key_tokens SET used_at = $2 WHERE hash = $1",
                    &[&link, &to_millis(now)],
                )
                .await?;
            }
            KeyWrite::Retire { fingerprint, state } => {
                c.execute(
                    "UPDATE keys SET state = $3 WHERE address = $1 AND fingerprint = $2",
                    &[&address, fingerprint, &state.as_str()],
                )
                .await?;
            }
            KeyWrite::Activate { fingerprint, at } => {
                c.execute(
                    "UPDATE keys SET state = 'active', activated_at = $3 WHERE address = $1 AND fingerprint = $2",
                    &[&address, fingerprint, &to_millis(*at)],
                )
                .await?;
            }
            KeyWrite::Change(ch) => {
                c.execute(
                    "INSERT INTO key_changes (id, address, kind, fingerprint, state, requested_at, not_before, proven_current, proven_new) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, proven_current = excluded.proven_current, \
                     proven_new = excluded.proven_new",
                    &[
                        &ch.id,
                        &ch.address,
                        &ch.kind.as_str(),
                        &ch.fingerprint,
                        &ch.state.as_str(),
                        &to_millis(ch.requested_at),
                        &to_millis(ch.not_before),
                        &ch.proven_current,
                        &ch.proven_new,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// A destination's verification code row, locked for the transaction;
/// `None` if there is no such destination under that account and contact.
async fn code_row(
    c: &impl deadpool_postgres::GenericClient,
    id: &str,
    account: &str,
    contact: &str,
) -> Result<Option<CodeRow>> {
    let row = c
        .query_opt(
            "SELECT verified AND unhealthy_since IS NULL, code_hash, code_expires_at, code_attempts, codes_sent, \
             code_sent_at, wrong_codes, code_window_start FROM destinations \
             WHERE id = $1 AND account = $2 AND contact = $3 FOR UPDATE",
            &[&id, &account, &contact],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let count = |i: usize| -> Result<u32> {
        Ok(u32::try_from(r.try_get::<_, i64>(i)?).unwrap_or(u32::MAX))
    };
    Ok(Some(CodeRow {
        usable: r.try_get(0)?,
        hash: r.try_get(1)?,
        expires_at: r.try_get::<_, Option<i64>>(2)?.map(from_millis),
        attempts: count(3)?,
        codes_sent: count(4)?,
        sent_at: r.try_get::<_, Option<i64>>(5)?.map(from_millis),
        wrong: count(6)?,
        window_start: r.try_get::<_, Option<i64>>(7)?.map(from_millis),
    }))
}

/// Stores a destination's code row; a row that became usable also makes
/// the destination verified and healthy again.
async fn write_code_row(
    c: &impl deadpool_postgres::GenericClient,
    id: &str,
    row: &CodeRow,
) -> Result<()> {
    c.execute(
        "UPDATE destinations SET code_hash = $2, code_expires_at = $3, code_attempts = $4, codes_sent = $5, \
         code_sent_at = $6, wrong_codes = $7, code_window_start = $8, \
         verified = verified OR $9, unhealthy_since = CASE WHEN $9 THEN NULL ELSE unhealthy_since END, \
         failures = CASE WHEN $9 THEN 0 ELSE failures END WHERE id = $1",
        &[
            &id,
            &row.hash,
            &row.expires_at.map(to_millis),
            &i64::from(row.attempts),
            &i64::from(row.codes_sent),
            &row.sent_at.map(to_millis),
            &i64::from(row.wrong),
            &row.window_start.map(to_millis),
            &row.usable,
        ],
    )
    .await?;
    Ok(())
}

/// The stored window of `key` in `bucket` (`lock`: for update).
async fn throttle_window(
    c: &impl deadpool_postgres::GenericClient,
    bucket: &str,
    key: &str,
    lock: bool,
) -> Result<Option<crate::model::throttle::Window>> {
    let sql = if lock {
        "SELECT window_start, count FROM throttle WHERE bucket = $1 AND key = $2 FOR UPDATE"
    } else {
        "SELECT window_start, count FROM throttle WHERE bucket = $1 AND key = $2"
    };
    c.query_opt(sql, &[&bucket, &key])
        .await?
        .map(|r| {
            Ok(crate::model::throttle::Window {
                start: from_millis(r.try_get(0)?),
                count: u32::try_from(r.try_get::<_, i64>(1)?).unwrap_or(u32::MAX),
            })
        })
        .transpose()
}

async fn insert_notification(
    c: &impl deadpool_postgres::GenericClient,
    n: &Notification,
) -> Result<()> {
    let message = n
        .message
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_default());
    let stmt = c
        .prepare_cached(
            "WITH n AS (INSERT INTO notifications (id, event, account, contact, destination, uri, channel, type, key, \
             priority, state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, \
             digest, paired_from, secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
             $22, $23) \
             RETURNING id, event, decided_at, state, reason, detail, due_at) \
             INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) SELECT * FROM n",
        )
        .await?;
    let paired_from = n.paired_from.map(to_millis);
    let secret = n.secret.as_ref().map(|s| s.expose());
    let params: [&(dyn ToSql + Sync); 23] = [
        &n.id,
        &n.event,
        &n.account,
        &n.contact,
        &n.destination,
        &n.uri,
        &n.channel.as_str(),
        &n.type_name,
        &n.key,
        &i64::from(n.priority.rank()),
        &n.state.as_str(),
        &n.reason.map(|r| r.as_str()),
        &n.detail,
        &to_millis(n.due_at),
        &n.expires_at.map(to_millis),
        &to_millis(n.decided_at),
        &n.sent_at.map(to_millis),
        &i64::from(n.attempts),
        &n.timezone,
        &message,
        &n.digest,
        &paired_from,
        &secret,
    ];
    c.execute(&stmt, &params).await?;
    Ok(())
}

/// Cancels the pending notifications whose `column` (id, event or
/// destination) is `value` — with the notices folded into a digest that is
/// still pending — recording why; returns how many. By event, kci's own
/// notices (digests, flap summaries) stay: they carry other events too.
async fn cancel_pending(
    c: &impl deadpool_postgres::GenericClient,
    column: &str,
    value: &str,
    reason: Reason,
    detail: Option<&str>,
    at: DateTime<Utc>,
) -> Result<usize> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH c AS (UPDATE notifications SET state = 'cancelled', reason = $2, detail = $3, decided_at = $4, secret = NULL \
             WHERE {} RETURNING id, event, due_at) \
             INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
             SELECT id, event, $4, 'cancelled', $2, $3, due_at FROM c",
            cancellable(column, "$1")
        ))
        .await?;
    let n = c
        .execute(&stmt, &[&value, &reason.as_str(), &detail, &to_millis(at)])
        .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Pairs each notification with its event (one query for all of them).
async fn with_events(
    c: &impl deadpool_postgres::GenericClient,
    notes: Vec<Notification>,
) -> Result<Vec<Claimed>> {
    let ids: Vec<String> = notes.iter().filter_map(|n| n.event.clone()).collect();
    let mut events = HashMap::new();
    if !ids.is_empty() {
        for r in c
            .query("SELECT id, payload FROM events WHERE id = ANY($1)", &[&ids])
            .await?
        {
            events.insert(r.try_get::<_, String>(0)?, event_from_json(r.try_get(1)?)?);
        }
    }
    let accounts: Vec<String> = notes.iter().map(|n| n.account.clone()).collect();
    let mut paranoid = HashMap::new();
    for r in c
        .query(
            "SELECT id, paranoid FROM accounts WHERE id = ANY($1)",
            &[&accounts],
        )
        .await?
    {
        paranoid.insert(r.try_get::<_, String>(0)?, r.try_get::<_, bool>(1)?);
    }
    let addresses: Vec<String> = notes.iter().filter_map(mail_address).collect();
    let mut keys = HashMap::new();
    if !addresses.is_empty() {
        for r in c
            .query(
                "SELECT address, armored FROM keys WHERE state = 'active' AND address = ANY($1)",
                &[&addresses],
            )
            .await?
        {
            keys.insert(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?);
        }
    }
    Ok(notes
        .into_iter()
        .map(|n| {
            let event = n.event.as_ref().and_then(|id| events.get(id).cloned());
            let paranoid = paranoid.get(&n.account).copied().unwrap_or(false);
            let active_key = mail_address(&n).and_then(|a| keys.get(&a).cloned());
            Claimed {
                notification: n,
                event,
                paranoid,
                active_key,
            }
        })
        .collect())
}

async fn account_view(
    c: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Option<AccountView>> {
    let stmt = c
        .prepare_cached("SELECT id, name, timezone, security_level, paranoid, defaults FROM accounts WHERE id = $1")
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let account = Account {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        timezone: tz_from_text(r.try_get(2)?)?,
        security_level: level_from_text(r.try_get(3)?)?,
        paranoid: r.try_get(4)?,
        defaults: prefs_from_json(r.try_get(5)?)?,
    };
    let stmt = c
        .prepare_cached(
            "SELECT id, name, timezone, prefs FROM contacts WHERE account = $1 ORDER BY id",
        )
        .await?;
    let mut contacts = Vec::new();
    for r in c.query(&stmt, &[&id]).await? {
        contacts.push(ContactView {
            contact: Contact {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                timezone: tz_from_text(r.try_get(2)?)?,
                prefs: prefs_from_json(r.try_get(3)?)?,
            },
            destinations: Vec::new(),
        });
    }
    let stmt = c
        .prepare_cached(
            "SELECT id, contact, uri, prefs, verified, unhealthy_since FROM destinations WHERE account = $1 ORDER BY contact, id",
        )
        .await?;
    for r in c.query(&stmt, &[&id]).await? {
        let dest = Destination {
            id: r.try_get(0)?,
            contact: r.try_get(1)?,
            uri: uri_from_text(r.try_get(2)?)?,
            prefs: prefs_from_json(r.try_get(3)?)?,
            verified: r.try_get(4)?,
            unhealthy_since: r.try_get::<_, Option<i64>>(5)?.map(from_millis),
        };
        if let Some(cv) = contacts.iter_mut().find(|cv| cv.contact.id == dest.contact) {
            cv.destinations.push(dest);
        }
    }
    Ok(Some(AccountView { account, contacts }))
}

async fn ingest_one(
    tx: &deadpool_postgres::Transaction<'_>,
    event: &Event,
    planner: &dyn Planner,
    views: &mut HashMap<String, Option<AccountView>>,
) -> Result<IngestOutcome> {
    // An event that pairs or supersedes serialises with the other events of
    // its (account, key) across nodes until commit, so each sees the other.
    let types = planner.related_types(event);
    if !types.is_empty() {
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .await?;
        tx.execute(&lock, &[&format!("{}\u{1f}{}", event.account, event.key)])
            .await?;
    }
    if !views.contains_key(&event.account) {
        views.insert(
            event.account.clone(),
            account_view(tx, &event.account).await?,
        );
    }
    let Some(view) = views.get(&event.account).and_then(|v| v.as_ref()) else {
        return Ok(IngestOutcome::Rejected(Rejection {
            code: "unknown_account",
            message: format!("account: `{}` is not a known account", event.account),
        }));
    };
    let mut pending: Vec<RelatedNotice> = Vec::new();
    if !types.is_empty() {
        // Every related notice still pending, locked so that no worker on
        // another node claims one between this read and the cancel below
        // (claims skip locked rows); then every notice of the latest
        // related event, whatever its state.
        let waiting = tx
            .prepare_cached(&format!(
                "SELECT n.id, n.event, n.type, n.destination, 'pending', n.due_at, e.payload::jsonb ->> 'occurred_at' \
                 FROM notifications n JOIN events e ON e.id = n.event \
                 WHERE n.account = $1 AND n.key = $2 AND n.type = ANY($3) AND {} \
                 FOR UPDATE OF n",
                waiting("n.")
            ))
            .await?;
        let latest = tx
            .prepare_cached(
                "SELECT n.id, n.event, n.type, n.destination, n.state, n.due_at, e.payload::jsonb ->> 'occurred_at' \
                 FROM notifications n JOIN events e ON e.id = n.event WHERE n.event IN \
                 (SELECT DISTINCT ON (type) id FROM events WHERE account = $1 AND key = $2 AND type = ANY($3) \
                  ORDER BY type, received_at DESC, id DESC)",
            )
            .await?;
        for stmt in [&waiting, &latest] {
            for r in tx
                .query(stmt, &[&event.account, &event.key, &types])
                .await?
            {
                let id: String = r.try_get(0)?;
                if pending.iter().any(|n| n.id == id) {
                    continue;
                }
                pending.push(RelatedNotice {
                    id,
                    event: r.try_get(1)?,
                    type_name: r.try_get(2)?,
                    destination: r.try_get(3)?,
                    state: state_from_text(r.try_get(4)?)?,
                    due_at: from_millis(r.try_get(5)?),
                    occurred_at: occurred(r.try_get(6)?)?,
                });
            }
        }
    }
    let recent = match planner.flap_window(event) {
        Some((types, within)) => {
            let stmt = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM events WHERE account = $1 AND key = $2 AND type = ANY($3) AND received_at > $4",
                )
                .await?;
            let since = to_millis(event.received_at - within);
            let n: i64 = tx
                .query_one(&stmt, &[&event.account, &event.key, &types, &since])
                .await?
                .try_get(0)?;
            usize::try_from(n).unwrap_or(0)
        }
        None => 0,
    };
    let mut loads = Vec::new();
    for (destination, period) in planner.loads_needed(event, view) {
        let recent = match period {
            Some(p) => {
                let stmt = tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM notifications WHERE destination = $1 AND due_at > $2 AND priority < 3 \
                         AND state IN ('pending', 'sending', 'sent') AND event IS NOT NULL AND type NOT LIKE 'kci.%'",
                    )
                    .await?;
                let n: i64 = tx
                    .query_one(&stmt, &[&destination, &to_millis(event.received_at - p)])
                    .await?
                    .try_get(0)?;
                usize::try_from(n).unwrap_or(0)
            }
            None => 0,
        };
        let stmt = tx
            .prepare_cached(
                "SELECT id FROM notifications WHERE destination = $1 AND type = 'kci.digest' AND state = 'pending' \
                 ORDER BY due_at LIMIT 1 FOR UPDATE",
            )
            .await?;
        let pending_digest: Option<String> = match tx.query_opt(&stmt, &[&destination]).await? {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        };
        loads.push(Load {
            destination,
            recent,
            pending_digest,
        });
    }
    let seen = Seen {
        related: &pending,
        recent,
        loads: &loads,
    };
    let plan = match planner.plan(event, view, &seen) {
        Ok(p) => p,
        Err(r) => return Ok(IngestOutcome::Rejected(r)),
    };
    let payload = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (id, account, type, key, received_at, notifications, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    let inserted = tx
        .execute(
            &stmt,
            &[
                &event.id,
                &event.account,
                &event.type_name,
                &event.key,
                &to_millis(event.received_at),
                &(plan.notifications.len() as i64),
                &payload,
            ],
        )
        .await?;
    if inserted == 0 {
        // Seen before (perhaps by another node a moment ago): the first result.
        let r = tx
            .query_one(
                "SELECT notifications FROM events WHERE id = $1",
                &[&event.id],
            )
            .await?;
        let n: i64 = r.try_get(0)?;
        return Ok(IngestOutcome::Duplicate {
            id: event.id.clone(),
            notifications: usize::try_from(n).unwrap_or(0),
        });
    }
    for n in &plan.notifications {
        insert_notification(tx, n).await?;
    }
    for c in &plan.cancels {
        cancel_pending(
            tx,
            "id",
            &c.id,
            c.reason,
            Some(&c.detail),
            event.received_at,
        )
        .await?;
    }
    for (id, from) in &plan.paired {
        tx.execute(
            "UPDATE notifications SET paired_from = $2 WHERE id = $1 AND state = 'pending'",
            &[id, &to_millis(*from)],
        )
        .await?;
    }
    for (id, message) in &plan.updates {
        let text =
            serde_json::to_string(message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE notifications SET message = $2 WHERE id = $1 AND state = 'pending'",
            &[id, &text],
        )
        .await?;
    }
    Ok(IngestOutcome::Accepted {
        id: event.id.clone(),
        notifications: plan.notifications.len(),
    })
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        // One migrator at a time across nodes.
        tx.execute("SELECT pg_advisory_xact_lock(8460)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS kci_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let have: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM kci_schema", &[])
            .await?
            .try_get(0)?;
        for (version, sql) in MIGRATIONS {
            if *version > have {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO kci_schema (version, applied_at) VALUES ($1, $2)",
                    &[version, &to_millis(Utc::now())],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_token(&self, t: &TokenRecord, hash: &str) -> Result<()> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO tokens (id, name, secret_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&t.id, &t.name, &hash, &scopes_to_text(&t.scopes), &to_millis(t.created_at)],
        )
        .await?;
        Ok(())
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, name, scopes, created_at FROM tokens WHERE secret_hash = $1",
            )
            .await?;
        c.query_opt(&stmt, &[&hash])
            .await?
            .map(|r| {
                Ok(TokenRecord {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    scopes: scopes_from_text(r.try_get(2)?)?,
                    created_at: from_millis(r.try_get(3)?),
                })
            })
            .transpose()
    }

    async fn put_account(&self, a: &Account) -> Result<PutOutcome> {
        let c = self.pool.get().await?;
        // xmax = 0 only for a freshly inserted row.
        let row = c
            .query_one(
                "INSERT INTO accounts (id, name, timezone, security_level, paranoid, defaults) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, \
                 security_level = excluded.security_level, paranoid = excluded.paranoid, defaults = excluded.defaults \
                 RETURNING (xmax = 0)",
                &[
                    &a.id,
                    &a.name,
                    &a.timezone.map(|t| t.to_string()),
                    &a.security_level.as_str(),
                    &a.paranoid,
                    &prefs_to_json(&a.defaults),
                ],
            )
            .await?;
        Ok(if row.try_get(0)? {
            PutOutcome::Created
        } else {
            PutOutcome::Updated
        })
    }

    async fn account_view(&self, id: &str) -> Result<Option<AccountView>> {
        let c = self.pool.get().await?;
        account_view(&c, id).await
    }

    async fn put_contact(&self, account: &str, ct: &Contact) -> Result<PutOutcome> {
        let c = self.pool.get().await?;
        if c.query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&account])
            .await?
            .is_none()
        {
            return Ok(PutOutcome::NoParent);
        }
        let row = c
            .query_one(
                "INSERT INTO contacts (account, id, name, timezone, prefs) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (account, id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, \
                 prefs = excluded.prefs RETURNING (xmax = 0)",
                &[&account, &ct.id, &ct.name, &ct.timezone.map(|t| t.to_string()), &prefs_to_json(&ct.prefs)],
            )
            .await?;
        Ok(if row.try_get(0)? {
            PutOutcome::Created
        } else {
            PutOutcome::Updated
        })
    }

    async fn add_destination(
        &self,
        account: &str,
        d: &Destination,
        code: Option<CodeRow>,
        notice: Option<Notification>,
    ) -> Result<PutOutcome> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        if tx
            .query_opt(
                "SELECT 1 FROM contacts WHERE account = $1 AND id = $2",
                &[&account, &d.contact],
            )
            .await?
            .is_none()
        {
            return Ok(PutOutcome::NoParent);
        }
        tx.execute(
            "INSERT INTO destinations (id, account, contact, uri, prefs, verified) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &d.id,
                &account,
                &d.contact,
                &d.uri.to_string(),
                &prefs_to_json(&d.prefs),
                &d.verified,
            ],
        )
        .await?;
        if let Some(code) = &code {
            write_code_row(&tx, &d.id, code).await?;
        }
        if let Some(n) = &notice {
            insert_notification(&tx, n).await?;
        }
        tx.commit().await?;
        Ok(PutOutcome::Created)
    }

    async fn verify_destination(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        code_hash: &str,
        now: DateTime<Utc>,
        rule: crate::model::CheckRule,
    ) -> Result<VerifyOutcome> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some(row) = code_row(&tx, id, account, contact).await? else {
            return Ok(VerifyOutcome::NotFound);
        };
        let (next, outcome) = rule(&row, code_hash, now);
        if let Some(next) = next {
            write_code_row(&tx, id, &next).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn delete_destination(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM destinations WHERE id = $1 AND account = $2 AND contact = $3",
                &[&id, &account, &contact],
            )
            .await?;
        if n > 0 {
            cancel_pending(
                &tx,
                "destination",
                id,
                Reason::DestinationRemoved,
                None,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn ingest(
        &self,
        events: Vec<Event>,
        planner: Arc<dyn Planner>,
    ) -> Result<Vec<IngestOutcome>> {
        // No savepoint per event: an event writes only after its checks
        // passed, and a store error rolls the whole request back.
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let mut views = HashMap::new();
        let mut out = Vec::with_capacity(events.len());
        for ev in &events {
            out.push(ingest_one(&tx, ev, &*planner, &mut views).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn event(&self, id: &str) -> Result<Option<(Event, Vec<Notification>)>> {
        let c = self.pool.get().await?;
        let Some(r) = c
            .query_opt("SELECT payload FROM events WHERE id = $1", &[&id])
            .await?
        else {
            return Ok(None);
        };
        let event = event_from_json(r.try_get(0)?)?;
        let rows = c
            .query(
                &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE event = $1 ORDER BY contact, destination"),
                &[&id],
            )
            .await?;
        let notes = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((event, notes)))
    }

    async fn cancel_event(&self, id: &str, now: DateTime<Utc>) -> Result<Option<usize>> {
        let c = self.pool.get().await?;
        if c.query_opt("SELECT 1 FROM events WHERE id = $1", &[&id])
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let n = cancel_pending(
            &c,
            "event",
            id,
            Reason::EventCancelled,
            Some("DELETE /v1/events"),
            now,
        )
        .await?;
        Ok(Some(n))
    }

    async fn enqueue(&self, n: &Notification) -> Result<()> {
        let c = self.pool.get().await?;
        insert_notification(&c, n).await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.claim(None, now, lease_until, limit).await
    }

    async fn claim_due_on(
        &self,
        channel: ChannelKind,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.claim(Some(channel), now, lease_until, limit).await
    }

    async fn finish(&self, id: &str, outcome: Finish) -> Result<()> {
        let c = self.pool.get().await?;
        let f = finish_row(&outcome);
        let stmt = c
            .prepare_cached(
                "WITH f AS (UPDATE notifications SET state = $2, reason = $3, detail = $4, \
                 sent_at = COALESCE($5, sent_at), due_at = COALESCE($6, due_at), decided_at = $7, lease_until = NULL, attempts = attempts + $8, \
                 provider_ref = COALESCE($9, provider_ref), receipt = $10, segments = COALESCE($11, segments), \
                 secret = CASE WHEN $2 = 'pending' THEN secret END \
                 WHERE id = $1 AND state = 'sending' RETURNING id, event, due_at, destination), \
                 h AS (UPDATE destinations SET failures = 0 \
                   WHERE $2 = 'sent' AND failures > 0 AND id IN (SELECT destination FROM f)) \
                 INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
                 SELECT id, event, $7, $2, $3, $4, due_at FROM f",
            )
            .await?;
        c.execute(
            &stmt,
            &[
                &id,
                &f.state.as_str(),
                &f.reason.map(|r| r.as_str()),
                &f.detail,
                &f.sent_at,
                &f.due_at,
                &f.decided_at,
                &f.attempts_delta,
                &f.provider_ref,
                &f.receipt,
                &f.segments,
            ],
        )
        .await?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let c = self.pool.get().await?;
        let r = c
            .query_one(
                "SELECT LEAST((SELECT MIN(due_at) FROM notifications WHERE state = 'pending'), \
                              (SELECT MIN(lease_until) FROM notifications WHERE state = 'sending'))",
                &[],
            )
            .await?;
        Ok(r.try_get::<_, Option<i64>>(0)?.map(from_millis))
    }

    async fn digest_members(&self, id: &str) -> Result<Vec<Claimed>> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE digest = $1 AND state = 'digested' ORDER BY due_at, id"
                ),
                &[&id],
            )
            .await?;
        let notes = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>>>()?;
        with_events(&c, notes).await
    }

    async fn notifications_in(
        &self,
        state: State,
        before: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let c = self.pool.get().await?;
        let before = before.map(to_millis).unwrap_or(i64::MAX);
        let rows = c
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE state = $1 AND decided_at < $2 \
                     ORDER BY decided_at DESC, id DESC LIMIT $3"
                ),
                &[&state.as_str(), &before, &(limit as i64)],
            )
            .await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn redrive(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "WITH r AS (UPDATE notifications SET state = 'pending', reason = 'redriven', due_at = $2, \
                 decided_at = $2, attempts = 0 WHERE id = $1 AND state = 'failed' RETURNING id, event) \
                 INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
                 SELECT id, event, $2, 'pending', 'redriven', 'POST /v1/deliveries/{id}/retry', $2 FROM r",
                &[&id, &to_millis(now)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn record_receipt(
        &self,
        id: &str,
        report: &crate::model::Report,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let c = self.pool.get().await?;
        let undelivered = report.status == crate::model::ReceiptStatus::Undelivered;
        let (state, reason) = if undelivered {
            (State::Failed, Some(Reason::Undelivered))
        } else {
            (State::Sent, None)
        };
        let detail = receipt_detail(report);
        let stmt = c
            .prepare_cached(
                "WITH r AS (UPDATE notifications SET receipt = $2, receipt_at = $3, state = $4, reason = $5, \
                 detail = $6, decided_at = CASE WHEN $4 = 'failed' THEN $3 ELSE decided_at END \
                 WHERE id = $1 AND state = 'sent' AND (receipt IS NULL OR receipt = 'awaiting') \
                 RETURNING id, event, due_at) \
                 INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
                 SELECT id, event, $3, $4, $5, $6, due_at FROM r",
            )
            .await?;
        let n = c
            .execute(
                &stmt,
                &[
                    &id,
                    &report.status.as_str(),
                    &to_millis(at),
                    &state.as_str(),
                    &reason.map(|r| r.as_str()),
                    &detail,
                ],
            )
            .await?;
        Ok(n > 0)
    }

    async fn notification(&self, id: &str) -> Result<Option<Notification>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"),
                &[&id],
            )
            .await?;
        row.as_ref().map(notification_from_row).transpose()
    }

    async fn awaiting_receipts(
        &self,
        channel: ChannelKind,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE receipt = 'awaiting' AND channel = $1 \
                     ORDER BY sent_at LIMIT $2"
                ),
                &[&channel.as_str(), &(limit as i64)],
            )
            .await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn count_outcome(
        &self,
        destination: &str,
        failed: bool,
        threshold: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let c = self.pool.get().await?;
        if !failed {
            c.execute(
                "UPDATE destinations SET failures = 0 WHERE id = $1 AND failures > 0",
                &[&destination],
            )
            .await?;
            return Ok(false);
        }
        let row = c
            .query_opt(
                "UPDATE destinations SET failures = failures + 1, \
                 unhealthy_since = CASE WHEN unhealthy_since IS NULL AND failures + 1 >= $2 THEN $3 ELSE unhealthy_since END \
                 WHERE id = $1 RETURNING unhealthy_since = $3",
                &[&destination, &i64::from(threshold), &to_millis(now)],
            )
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<_, Option<bool>>(0)?.unwrap_or(false),
            None => false,
        })
    }

    async fn renew_code(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        code: PendingCode,
        notice: Notification,
        now: DateTime<Utc>,
        rule: crate::model::IssueRule,
    ) -> Result<RenewOutcome> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some(row) = code_row(&tx, id, account, contact).await? else {
            return Ok(RenewOutcome::NotFound);
        };
        match rule(&row, &code.hash, code.expires_at, now) {
            Ok(next) => {
                write_code_row(&tx, id, &next).await?;
                insert_notification(&tx, &notice).await?;
                tx.commit().await?;
                Ok(RenewOutcome::Sent)
            }
            Err(refused) => Ok(refused),
        }
    }

    async fn throttle(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<crate::model::throttle::Counted> {
        use crate::model::throttle::{Counted, count};
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        // The first count of a key has no row to lock yet: two nodes racing
        // on it may both start a window, and one count is lost — a limit is
        // off by at most one per racing node, never unbounded.
        let counted = count(throttle_window(&tx, bucket, key, true).await?, cap, now);
        if let Counted::Allowed(w) = counted {
            tx.execute(
                "INSERT INTO throttle (bucket, key, window_start, count) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (bucket, key) DO UPDATE SET window_start = excluded.window_start, count = excluded.count",
                &[&bucket, &key, &to_millis(w.start), &i64::from(w.count)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(counted)
    }

    async fn throttle_peek(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>> {
        let c = self.pool.get().await?;
        let stored = throttle_window(&c, bucket, key, false).await?;
        Ok(crate::model::throttle::peek(stored, cap, now))
    }

    async fn destination_secrets(&self, id: &str, now: DateTime<Utc>) -> Result<Signing> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT secret, previous_secret, previous_until FROM destinations WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(match row {
            Some(r) => current_secrets(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, now),
            None => current_secrets(None, None, None, now),
        })
    }

    async fn set_destination_secret(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        secret: &str,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE destinations SET previous_secret = CASE WHEN $5::BIGINT IS NULL THEN NULL ELSE secret END, \
                 previous_until = $5, secret = $4 WHERE id = $1 AND account = $2 AND contact = $3",
                &[&id, &account, &contact, &secret, &previous_until.map(to_millis)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn record_key_request(
        &self,
        request: &crate::model::KeyRequest,
        now: DateTime<Utc>,
        rule: crate::model::AdmitRule,
    ) -> Result<std::result::Result<Vec<crate::model::KeyWrite>, crate::model::Refused>> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let address = request.address.as_str();
        lock_address(&tx, address).await?;
        let writes = match &request.change {
            Some(change) => match rule(&address_keys(&tx, address).await?, change, now) {
                Ok(writes) => writes,
                Err(refused) => return Ok(Err(refused)),
            },
            None => Vec::new(),
        };
        if let Some(proof) = &request.proof {
            tx.execute(
                "DELETE FROM used_proofs WHERE keep_until < $1",
                &[&to_millis(now)],
            )
            .await?;
            let fresh = tx
                .execute(
                    "INSERT INTO used_proofs (hash, keep_until) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&proof.hash, &to_millis(proof.keep_until)],
                )
                .await?;
            if fresh == 0 {
                return Ok(Err(crate::model::Refused::Replayed));
            }
        }
        if let Some(key) = &request.key {
            tx.execute(
                "INSERT INTO keys (address, fingerprint, armored, state, source, submitted_at, expires_at) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6) \
                 ON CONFLICT (address, fingerprint) DO UPDATE SET armored = excluded.armored, \
                 submitted_at = excluded.submitted_at, expires_at = excluded.expires_at \
                 WHERE keys.state = 'pending'",
                &[
                    &key.address,
                    &key.fingerprint,
                    &key.armored,
                    &key.source,
                    &to_millis(key.submitted_at),
                    &key.expires_at.map(to_millis),
                ],
            )
            .await?;
        }
        write_keys(&tx, address, None, now, &writes).await?;
        insert_key_tokens(&tx, &request.links).await?;
        for n in &request.notices {
            insert_notification(&tx, n).await?;
        }
        tx.commit().await?;
        Ok(Ok(writes))
    }

    async fn key_status(&self, address: &str) -> Result<crate::model::KeyStatus> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE address = $1 AND state IN ('active', 'pending') ORDER BY submitted_at"
                ),
                &[&address],
            )
            .await?;
        let (mut active, mut pending) = (None, Vec::new());
        for r in &rows {
            let k = key_from_row(r)?;
            if k.state == crate::model::KeyState::Active {
                active = Some(k);
            } else {
                pending.push(k);
            }
        }
        let changes = c
            .query(
                &format!("SELECT {CHANGE_COLUMNS} FROM key_changes WHERE address = $1 ORDER BY requested_at, id"),
                &[&address],
            )
            .await?
            .iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::model::KeyStatus {
            address: address.to_string(),
            active,
            pending,
            changes,
        })
    }

    async fn contacts_with_uri(&self, uri: &str) -> Result<Vec<(String, String)>> {
        let c = self.pool.get().await?;
        c.query(
            "SELECT DISTINCT account, contact FROM destinations WHERE uri = $1 ORDER BY account, contact",
            &[&uri],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    async fn active_key(&self, address: &str) -> Result<Option<crate::model::KeyRecord>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE address = $1 AND state = 'active'"),
                &[&address],
            )
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn refresh_key(
        &self,
        address: &str,
        fingerprint: &str,
        armored: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE keys SET armored = $3, expires_at = $4 WHERE address = $1 AND fingerprint = $2 AND state = 'active'",
                &[&address, &fingerprint, &armored, &expires_at.map(to_millis)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn key(
        &self,
        address: &str,
        fingerprint: &str,
    ) -> Result<Option<crate::model::KeyRecord>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE address = $1 AND fingerprint = $2"),
                &[&address, &fingerprint],
            )
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn follow_key_link(
        &self,
        hash: &str,
        now: DateTime<Utc>,
        rule: crate::model::LinkRule,
    ) -> Result<crate::model::Confirmed> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT address, fingerprint, purpose, change, expires_at, used_at IS NOT NULL FROM key_tokens \
                 WHERE hash = $1 FOR UPDATE",
                &[&hash],
            )
            .await?;
        let link = row
            .map(|r| {
                Ok::<_, StoreError>(crate::model::LinkRow {
                    address: r.try_get(0)?,
                    fingerprint: r.try_get(1)?,
                    purpose: token_purpose(r.try_get(2)?)?,
                    change: r.try_get(3)?,
                    expires_at: from_millis(r.try_get(4)?),
                    used: r.try_get(5)?,
                })
            })
            .transpose()?;
        let keys = match &link {
            Some(l) => {
                lock_address(&tx, &l.address).await?;
                address_keys(&tx, &l.address).await?
            }
            None => Default::default(),
        };
        let (writes, outcome) = rule(link.as_ref(), &keys, now);
        if let Some(l) = &link {
            write_keys(&tx, &l.address, Some(hash), now, &writes).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn history(&self, event: &str) -> Result<Vec<Decided>> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT notification, at, state, reason, detail, due_at FROM decisions WHERE event = $1 ORDER BY at, seq",
                &[&event],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Decided {
                    notification: r.try_get(0)?,
                    at: from_millis(r.try_get(1)?),
                    state: state_from_text(r.try_get(2)?)?,
                    reason: reason_from_text(r.try_get(3)?)?,
                    detail: r.try_get(4)?,
                    due_at: from_millis(r.try_get(5)?),
                })
            })
            .collect()
    }

    async fn requeue_abandoned(&self, _now: DateTime<Utc>) -> Result<usize> {
        // Many nodes share this store: another node's lease is not ours to
        // break. Abandoned work is taken over when its lease runs out.
        Ok(0)
    }

    async fn count_by_state(&self) -> Result<Vec<(State, i64)>> {
        let c = self.pool.get().await?;
        c.query(
            "SELECT state, COUNT(*) FROM notifications GROUP BY state",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((state_from_text(r.try_get(0)?)?, r.try_get(1)?)))
        .collect()
    }
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres.sql")),
    (2, include_str!("migrations/postgres-2.sql")),
    (3, include_str!("migrations/postgres-3.sql")),
    (4, include_str!("migrations/postgres-4.sql")),
    (5, include_str!("migrations/postgres-5.sql")),
];
