//! The multi-node store: any number of `kci serve` nodes share one
//! PostgreSQL database. Due work is claimed with `FOR UPDATE SKIP LOCKED`
//! and a lease, so two nodes never send the same notification and a node
//! that dies hands its work over when the lease runs out. The events of
//! one (account, key) that pair or supersede, and the key changes of one
//! address, are serialised across nodes with transaction-scoped advisory
//! locks. What this file knows is PostgreSQL's SQL, its connections and
//! its locks; every flow and decision is in `db.rs`.

use super::codec::*;
use super::db::{Backend, Db, Job, migrations};
use super::rows::{self, *};
use super::{Decided, Result, StoreError, TokenRecord, mail_address};
use crate::model::audit::{AuditEntry, Checkpoint};
use crate::model::throttle::Window;
use crate::model::{
    Account, Change, CodeRow, Contact, Destination, Event, Incident, KeyRecord, KeyToken, LinkRow,
    Message, Notification, ProofUse, RelatedNotice, Staff, VetoLink, to_millis,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// The multi-node store.
pub type PgStore = Db<Pg>;

/// PostgreSQL's transactions: a pool of connections.
pub struct Pg {
    pool: Pool,
}

/// PostgreSQL's rows: one pooled connection, in a transaction while
/// writing. Dropped mid-transaction (the request went away), it takes its
/// connection out of the pool, so the server rolls the transaction back.
pub struct PgRows {
    client: Option<Object>,
    in_transaction: bool,
}

impl Drop for PgRows {
    fn drop(&mut self) {
        if self.in_transaction
            && let Some(client) = self.client.take()
        {
            drop(Object::take(client));
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

/// How kci talks TLS to PostgreSQL, from the URL's `sslmode` (libpq's
/// words): `disable`, `prefer` (the default: TLS when the server offers
/// it, unverified), `require` (TLS, unverified — as libpq), `verify-full`
/// (TLS, the server's certificate checked against `sslrootcert`, or the
/// web's roots without it, and its name against the host). `verify-ca` is
/// refused: it checks less than `verify-full` and is not needed.
#[derive(Debug, Clone, PartialEq)]
pub enum PgTls {
    Disable,
    Prefer,
    Require,
    VerifyFull { root: Option<std::path::PathBuf> },
}

/// `url` without `sslmode` and `sslrootcert` (which tokio-postgres would
/// read its own way), and the mode they ask for.
pub fn tls_mode(url: &str) -> std::result::Result<(String, PgTls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), PgTls::Prefer));
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = Some(v.to_string()),
            "sslrootcert" => {
                let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                root = Some(std::path::PathBuf::from(v.as_ref()));
            }
            _ => kept.push(pair),
        }
    }
    let mode = match mode.as_deref() {
        None | Some("prefer") => PgTls::Prefer,
        Some("disable") => PgTls::Disable,
        Some("require") => PgTls::Require,
        Some("verify-full") => PgTls::VerifyFull { root: root.clone() },
        Some(other) => {
            return Err(format!(
                "store.url: sslmode `{other}` is not one of disable, prefer, require, verify-full"
            ));
        }
    };
    if root.is_some() && !matches!(mode, PgTls::VerifyFull { .. }) {
        return Err("store.url: sslrootcert needs sslmode=verify-full".into());
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

/// A server certificate verifier that accepts any certificate, as libpq's
/// `sslmode=require` and `prefer` do: the connection is encrypted against
/// a passive listener, not authenticated. Signatures are still checked
/// with the provider's algorithms.
#[derive(Debug)]
struct Unverified(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn pg_tls_connector(
    mode: &PgTls,
) -> std::result::Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match mode {
        PgTls::VerifyFull { root } => {
            let mut roots = rustls::RootCertStore::empty();
            match root {
                Some(path) => {
                    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("store.url sslrootcert {}: {e}", path.display()))?;
                    for cert in certs {
                        let cert = cert.map_err(|e| {
                            format!("store.url sslrootcert {}: {e}", path.display())
                        })?;
                        roots.add(cert).map_err(|e| {
                            format!("store.url sslrootcert {}: {e}", path.display())
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Db<Pg> {
    /// Connects to `url` (`postgres://…`; `options=-csearch_path%3D…` selects a
    /// schema; `sslmode` and `sslrootcert` as libpq reads them, see
    /// [`tls_mode`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_sized(url, super::DEFAULT_POOL_SIZE).await
    }

    /// As [`Db::connect`], keeping at most `pool_size` connections.
    pub async fn connect_sized(url: &str, pool_size: usize) -> Result<Self> {
        let (url, mode) = tls_mode(url).map_err(StoreError::Unavailable)?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                StoreError::Unavailable(format!("bad postgres URL: {e}"))
            })?;
        config.ssl_mode(match mode {
            PgTls::Disable => tokio_postgres::config::SslMode::Disable,
            PgTls::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Self::with_tls(config, &mode, pool_size).await
    }

    pub async fn with_config(config: tokio_postgres::Config) -> Result<Self> {
        Self::with_tls(config, &PgTls::Disable, super::DEFAULT_POOL_SIZE).await
    }

    async fn with_tls(
        config: tokio_postgres::Config,
        mode: &PgTls,
        pool_size: usize,
    ) -> Result<Self> {
        let tls = pg_tls_connector(mode).map_err(StoreError::Unavailable)?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Fail now, with the server's words, rather than on the first request.
        drop(pool.get().await?);
        Ok(Db::new(Pg { pool }))
    }
}

impl Backend for Pg {
    type Rows = PgRows;
    const ONE_PROCESS: bool = false;
    const MIGRATIONS: &'static [(i64, &'static str)] = migrations!("postgres");

    async fn write<T: Send + 'static>(&self, job: Job<PgRows, T>) -> Result<T> {
        self.transaction(job, "BEGIN").await
    }

    /// As `write`, with `synchronous_commit` off for this transaction: the
    /// commit answers before its WAL is flushed (PostgreSQL's asynchronous
    /// commit), and the next synchronous commit flushes it too.
    async fn write_relaxed<T: Send + 'static>(&self, job: Job<PgRows, T>) -> Result<T> {
        self.transaction(job, "BEGIN; SET LOCAL synchronous_commit = off")
            .await
    }

    async fn read<T: Send + 'static>(&self, job: Job<PgRows, T>) -> Result<T> {
        let mut rows = PgRows {
            client: Some(self.pool.get().await?),
            in_transaction: false,
        };
        job(&mut rows).await
    }
}

impl Pg {
    /// Runs `job` in a transaction that `begin` opens.
    async fn transaction<T: Send + 'static>(&self, job: Job<PgRows, T>, begin: &str) -> Result<T> {
        // In a transaction from here: should `begin` fail halfway, the
        // connection is dropped rather than pooled.
        let mut rows = PgRows {
            client: Some(self.pool.get().await?),
            in_transaction: true,
        };
        rows.c()?.batch_execute(begin).await?;
        let out = job(&mut rows).await;
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        rows.c()?.batch_execute(end).await?;
        rows.in_transaction = false;
        out
    }
}

impl Cols for Row {
    fn cell(&self, i: usize) -> Result<Cell> {
        use tokio_postgres::types::Type;
        let ty = self.columns().get(i).map(|c| c.type_().clone());
        Ok(match ty {
            Some(Type::BOOL) => self
                .try_get::<_, Option<bool>>(i)?
                .map_or(Cell::Null, Cell::Bool),
            Some(Type::INT8) => self
                .try_get::<_, Option<i64>>(i)?
                .map_or(Cell::Null, Cell::Int),
            Some(Type::INT4) => self
                .try_get::<_, Option<i32>>(i)?
                .map_or(Cell::Null, |n| Cell::Int(n.into())),
            _ => self
                .try_get::<_, Option<String>>(i)?
                .map_or(Cell::Null, Cell::Text),
        })
    }
}

type P<'a> = &'a [&'a (dyn ToSql + Sync)];

impl PgRows {
    fn c(&self) -> Result<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the connection was given up".into()))
    }

    async fn all<T>(&self, sql: &str, p: P<'_>, f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
        let c = self.c()?;
        let stmt = c.prepare_cached(sql).await?;
        c.query(&stmt, p).await?.iter().map(f).collect()
    }

    async fn one<T>(
        &self,
        sql: &str,
        p: P<'_>,
        f: impl Fn(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let c = self.c()?;
        let stmt = c.prepare_cached(sql).await?;
        c.query_opt(&stmt, p).await?.as_ref().map(f).transpose()
    }

    async fn exec(&self, sql: &str, p: P<'_>) -> Result<u64> {
        let c = self.c()?;
        let stmt = c.prepare_cached(sql).await?;
        Ok(c.execute(&stmt, p).await?)
    }

    /// Stores events, whether each is new (`false`: its id was taken
    /// meanwhile, or earlier in `events`). One statement for the lot
    /// (UNNEST of one array per column), as for one: a statement per row
    /// costs PostgreSQL a parse-bind-execute each, pipelined or not.
    async fn event_rows(&self, events: &[NewEvent<'_>]) -> Result<Vec<bool>> {
        let len = events.len();
        let (mut ids, mut accounts, mut types, mut keys) = (
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
        );
        let (mut received, mut counts, mut payloads, mut keyed) = (
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
            Vec::with_capacity(len),
        );
        for row in events {
            let e = row.event;
            ids.push(e.id.as_str());
            accounts.push(e.account.as_str());
            types.push(e.type_name.as_str());
            keys.push(e.key.as_str());
            received.push(to_millis(e.received_at));
            counts.push(i64::try_from(row.notifications).unwrap_or(i64::MAX));
            payloads.push(row.payload);
            keyed.push(row.keyed);
        }
        let mut fresh: std::collections::HashSet<String> = self
            .all(
                "INSERT INTO events (id, account, type, key, received_at, notifications, payload, keyed) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], \
                 $6::BIGINT[], $7::TEXT[], $8::BOOLEAN[]) ON CONFLICT (id) DO NOTHING RETURNING id",
                &[
                    &ids, &accounts, &types, &keys, &received, &counts, &payloads, &keyed,
                ],
                |r| Ok(r.try_get::<_, String>(0)?),
            )
            .await?
            .into_iter()
            .collect();
        // Taken meanwhile (another node): not fresh. An id twice in one
        // call is fresh once.
        Ok(events
            .iter()
            .map(|row| fresh.remove(&row.event.id))
            .collect())
    }

    /// Stores notifications, each with the decision that made it in its
    /// own row (`first_*`), in one statement (UNNEST of one array per
    /// column), however many.
    async fn notification_rows(&self, notes: &[&Notification]) -> Result<()> {
        let len = notes.len();
        let mut messages = Vec::with_capacity(len);
        for n in notes {
            messages.push(n.message.as_ref().map(message_json).transpose()?);
        }
        let text = |f: fn(&Notification) -> &str| notes.iter().map(|n| f(n)).collect::<Vec<_>>();
        let opt_text =
            |f: fn(&Notification) -> Option<&str>| notes.iter().map(|n| f(n)).collect::<Vec<_>>();
        let int = |f: fn(&Notification) -> i64| notes.iter().map(|n| f(n)).collect::<Vec<_>>();
        let opt_int =
            |f: fn(&Notification) -> Option<i64>| notes.iter().map(|n| f(n)).collect::<Vec<_>>();
        let ids = text(|n| &n.id);
        let events = opt_text(|n| n.event.as_deref());
        let accounts = text(|n| &n.account);
        let contacts = text(|n| &n.contact);
        let destinations = text(|n| &n.destination);
        let uris = text(|n| &n.uri);
        let channels = text(|n| n.channel.as_str());
        let types = text(|n| &n.type_name);
        let keys = text(|n| &n.key);
        let priorities = int(|n| i64::from(n.priority.rank()));
        let states = text(|n| n.state.as_str());
        let reasons = opt_text(|n| n.reason.map(|r| r.as_str()));
        let details = opt_text(|n| n.detail.as_deref());
        let due = int(|n| to_millis(n.due_at));
        let expires = opt_int(|n| n.expires_at.map(to_millis));
        let decided = int(|n| to_millis(n.decided_at));
        let sent = opt_int(|n| n.sent_at.map(to_millis));
        let attempts = int(|n| i64::from(n.attempts));
        let zones = text(|n| &n.timezone);
        let digests = opt_text(|n| n.digest.as_deref());
        let paired = opt_int(|n| n.paired_from.map(to_millis));
        let secrets = opt_text(|n| n.secret.as_ref().map(|s| s.expose().as_str()));
        self.exec(
            "INSERT INTO notifications (id, event, account, contact, destination, uri, channel, type, key, \
             priority, state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, \
             digest, paired_from, secret, first_at, first_state, first_reason, first_detail, first_due_at) \
             SELECT *, decided_at, state, reason, detail, due_at \
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], \
             $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], \
             $14::BIGINT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], $18::BIGINT[], $19::TEXT[], $20::TEXT[], \
             $21::TEXT[], $22::BIGINT[], $23::TEXT[]) \
             AS u(id, event, account, contact, destination, uri, channel, type, key, priority, state, reason, \
             detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, digest, paired_from, \
             secret)",
            &[
                &ids,
                &events,
                &accounts,
                &contacts,
                &destinations,
                &uris,
                &channels,
                &types,
                &keys,
                &priorities,
                &states,
                &reasons,
                &details,
                &due,
                &expires,
                &decided,
                &sent,
                &attempts,
                &zones,
                &messages,
                &digests,
                &paired,
                &secrets,
            ],
        )
        .await?;
        Ok(())
    }

    async fn lock(&self, what: String) -> Result<()> {
        self.exec(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&what],
        )
        .await?;
        Ok(())
    }
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

impl tokio_postgres::types::ToSql for rows::Arg<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        match self {
            rows::Arg::Text(t) => t.to_sql(ty, out),
            rows::Arg::OptText(t) => t.to_sql(ty, out),
            rows::Arg::Int(n) => n.to_sql(ty, out),
            rows::Arg::OptInt(n) => n.to_sql(ty, out),
            rows::Arg::Bool(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
            || <i64 as tokio_postgres::types::ToSql>::accepts(ty)
            || <bool as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Shared arguments as tokio-postgres takes them.
fn pg_args<'a>(args: &'a [rows::Arg<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Rows for PgRows {
    async fn run(&mut self, sql: &str, args: &[rows::Arg<'_>]) -> Result<u64> {
        self.exec(sql, &pg_args(args)).await
    }

    async fn query(&mut self, sql: &str, args: &[rows::Arg<'_>]) -> Result<Vec<rows::Cells>> {
        self.all(sql, &pg_args(args), |r| {
            (0..r.len())
                .map(|i| r.cell(i))
                .collect::<Result<_>>()
                .map(rows::Cells)
        })
        .await
    }

    async fn schema_version(&mut self) -> Result<i64> {
        // One migrator at a time across nodes.
        self.exec("SELECT pg_advisory_xact_lock(8460)", &[]).await?;
        self.c()?
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS kci_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
        let v = self.one(
            "SELECT COALESCE(MAX(version), 0) FROM kci_schema",
            &[],
            |r| r.int(0),
        );
        Ok(v.await?.unwrap_or(0))
    }

    async fn server_time(&mut self) -> Result<Option<i64>> {
        self.one(
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            &[],
            |r| r.int(0),
        )
        .await
    }

    async fn migrate_to(&mut self, version: i64, sql: &str, at: i64) -> Result<()> {
        self.c()?.batch_execute(sql).await?;
        let insert = "INSERT INTO kci_schema (version, applied_at) VALUES ($1, $2)";
        self.exec(insert, &[&version, &at]).await?;
        Ok(())
    }

    async fn insert_token(&mut self, t: &TokenRecord, hash: &str) -> Result<()> {
        self.exec(
            "INSERT INTO tokens (id, name, secret_hash, scopes, created_at, staff, expires_at, allow, cert, session) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &t.id,
                &t.name,
                &hash,
                &scopes_to_text(&t.scopes),
                &to_millis(t.created_at),
                &t.staff,
                &t.expires_at.map(to_millis),
                &prefixes_to_json(&t.allow),
                &t.cert,
                &t.session,
            ],
        )
        .await?;
        Ok(())
    }

    async fn tokens(&mut self, id: Option<&str>) -> Result<Vec<TokenRecord>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE $1::TEXT IS NULL OR id = $1 ORDER BY created_at DESC, id"
        );
        self.all(&sql, &[&id], rows::token).await
    }

    async fn auth_epoch(&mut self) -> Result<i64> {
        self.one(rows::sql::AUTH_EPOCH, &[], |r| r.int(0))
            .await?
            .ok_or_else(|| StoreError::Corrupt("auth_epoch has no row".into()))
    }

    async fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_hash = $1");
        self.one(&sql, &[&hash], rows::token).await
    }

    async fn account(&mut self, id: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
        self.one(&sql, &[&id], rows::account).await
    }

    async fn upsert_account(&mut self, a: &Account) -> Result<()> {
        self.exec(
            "INSERT INTO accounts (id, name, timezone, security_level, paranoid, defaults, prefixes, postal_address) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone, \
             security_level = EXCLUDED.security_level, paranoid = EXCLUDED.paranoid, defaults = EXCLUDED.defaults, \
             prefixes = EXCLUDED.prefixes, postal_address = EXCLUDED.postal_address",
            &[
                &a.id,
                &a.name,
                &a.timezone.map(|t| t.to_string()),
                &a.security_level.as_str(),
                &a.paranoid,
                &prefs_to_json(&a.defaults),
                &prefixes_to_json(&a.prefixes),
                &postal_to_json(a.postal_address.as_ref()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn contacts(&mut self, account: &str) -> Result<Vec<Contact>> {
        let sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE account = $1 ORDER BY id");
        self.all(&sql, &[&account], rows::contact).await
    }

    async fn contact_exists(&mut self, account: &str, id: &str) -> Result<bool> {
        let sql = "SELECT 1 FROM contacts WHERE account = $1 AND id = $2";
        Ok(self.one(sql, &[&account, &id], |_| Ok(())).await?.is_some())
    }

    async fn upsert_contact(&mut self, account: &str, c: &Contact) -> Result<()> {
        self.exec(
            "INSERT INTO contacts (account, id, name, timezone, prefs) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account, id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone, \
             prefs = EXCLUDED.prefs",
            &[&account, &c.id, &c.name, &c.timezone.map(|t| t.to_string()), &prefs_to_json(&c.prefs)],
        )
        .await?;
        Ok(())
    }

    async fn destinations(&mut self, account: &str) -> Result<Vec<Destination>> {
        let sql = format!(
            "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE account = $1 ORDER BY contact, id"
        );
        self.all(&sql, &[&account], rows::destination).await
    }

    async fn insert_destination(&mut self, account: &str, d: &Destination) -> Result<()> {
        self.exec(
            "INSERT INTO destinations (id, account, contact, uri, prefs, verified) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&d.id, &account, &d.contact, &d.uri.to_string(), &prefs_to_json(&d.prefs), &d.verified],
        )
        .await?;
        Ok(())
    }

    async fn delete_destination(&mut self, d: DestRef<'_>) -> Result<bool> {
        let sql = "DELETE FROM destinations WHERE id = $1 AND account = $2 AND contact = $3";
        Ok(self.exec(sql, &[&d.id, &d.account, &d.contact]).await? > 0)
    }

    async fn destination_account(&mut self, id: &str) -> Result<Option<String>> {
        self.one(rows::sql::DESTINATION_ACCOUNT, &[&id], |r| r.text(0))
            .await
    }

    async fn accounts_after(&mut self, after: Option<&str>, limit: i64) -> Result<Vec<Account>> {
        self.all(
            &rows::sql::accounts_after(),
            &[&after, &limit],
            rows::account,
        )
        .await
    }

    async fn contacts_with_uri(&mut self, uri: &str) -> Result<Vec<(String, String)>> {
        let sql = "SELECT DISTINCT account, contact FROM destinations WHERE uri = $1 ORDER BY account, contact";
        self.all(sql, &[&uri], |r| Ok((r.text(0)?, r.text(1)?)))
            .await
    }

    async fn code_row(&mut self, d: DestRef<'_>) -> Result<Option<CodeRow>> {
        let sql = format!(
            "SELECT {CODE_COLUMNS} FROM destinations WHERE id = $1 AND account = $2 AND contact = $3 FOR UPDATE"
        );
        self.one(&sql, &[&d.id, &d.account, &d.contact], |r| {
            rows::code_row(r)
        })
        .await
    }

    async fn write_code_row(&mut self, id: &str, row: &CodeRow) -> Result<()> {
        self.exec(
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

    async fn secrets(&mut self, id: &str) -> Result<SecretsRow> {
        let sql = "SELECT secret, previous_secret, previous_until FROM destinations WHERE id = $1";
        let row = self.one(sql, &[&id], |r| rows::secrets(r, 0)).await?;
        Ok(row.unwrap_or_default())
    }

    async fn set_secret(&mut self, d: DestRef<'_>, s: &SecretsRow) -> Result<bool> {
        let n = self
            .exec(
                "UPDATE destinations SET secret = $4, previous_secret = $5, previous_until = $6 \
                 WHERE id = $1 AND account = $2 AND contact = $3",
                &[
                    &d.id,
                    &d.account,
                    &d.contact,
                    &s.secret,
                    &s.previous,
                    &s.previous_until,
                ],
            )
            .await?;
        Ok(n > 0)
    }

    async fn health(&mut self, id: &str) -> Result<Option<HealthRow>> {
        let sql = "SELECT failures, unhealthy_since FROM destinations WHERE id = $1 FOR UPDATE";
        self.one(sql, &[&id], |r| {
            Ok(HealthRow {
                failures: r.count(0)?,
                unhealthy_since: r.opt_time(1)?,
            })
        })
        .await
    }

    async fn write_health(&mut self, id: &str, h: HealthRow) -> Result<()> {
        let sql = "UPDATE destinations SET failures = $2, unhealthy_since = $3 WHERE id = $1";
        let since = h.unhealthy_since.map(to_millis);
        self.exec(sql, &[&id, &i64::from(h.failures), &since])
            .await?;
        Ok(())
    }

    async fn lock_key(&mut self, account: &str, key: &str) -> Result<()> {
        self.lock(format!("{account}\u{1f}{key}")).await
    }

    /// After five calls PostgreSQL may keep a generic plan of a prepared
    /// statement; one kept from batches of a few rows (single events
    /// stored together) made batches of hundreds four times as costly
    /// (BENCHMARKS.md, stop 34).
    async fn plan_for_values(&mut self) -> Result<()> {
        self.exec("SET LOCAL plan_cache_mode = force_custom_plan", &[])
            .await
            .map(|_| ())
    }

    async fn through_indexes(&mut self) -> Result<()> {
        // Not a custom plan each time: planning the claim costs ~0.6 ms,
        // far more than running it.
        self.exec("SET LOCAL enable_seqscan = off", &[])
            .await
            .map(|_| ())
    }

    async fn event_count(&mut self, id: &str) -> Result<Option<usize>> {
        let sql = "SELECT notifications FROM events WHERE id = $1";
        self.one(sql, &[&id], |r| Ok(count(r.int(0)?))).await
    }

    async fn insert_event(&mut self, row: NewEvent<'_>) -> Result<bool> {
        let fresh = self.event_rows(&[row]).await?;
        Ok(fresh.first().copied().unwrap_or(false))
    }

    async fn event(&mut self, id: &str) -> Result<Option<Event>> {
        let sql = "SELECT payload FROM events WHERE id = $1";
        self.one(sql, &[&id], |r| event_from_json(&r.text(0)?))
            .await
    }

    async fn related(&mut self, e: &Event, types: &[String]) -> Result<Vec<RelatedNotice>> {
        // Every related notice still waiting (pending, or folded into a
        // digest that is), locked so that no worker on another node claims
        // one between this read and the cancel that may follow (claims skip
        // locked rows); then every notice of the latest related event,
        // whatever its state.
        // Two statements, as `FOR UPDATE` cannot lock through a `UNION`.
        let [pending, folded] =
            related_waiting("e.payload::jsonb ->> 'occurred_at'", "n.type = ANY($3)")
                .map(|sql| format!("{sql} FOR UPDATE OF n"));
        let latest = "SELECT n.id, n.event, n.type, n.destination, n.state, n.due_at, \
             e.payload::jsonb ->> 'occurred_at' \
             FROM notifications n JOIN events e ON e.id = n.event WHERE n.event IN \
             (SELECT DISTINCT ON (type) id FROM events WHERE account = $1 AND key = $2 AND type = ANY($3) \
              AND keyed ORDER BY type, received_at DESC, id DESC)";
        let mut out: Vec<RelatedNotice> = Vec::new();
        for sql in [pending.as_str(), folded.as_str(), latest] {
            let p: P<'_> = &[&e.account, &e.key, &types];
            for n in self.all(sql, p, rows::related).await? {
                if !out.iter().any(|o| o.id == n.id) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    async fn count_events(&mut self, e: &Event, types: &[String], since: i64) -> Result<usize> {
        let sql = "SELECT COUNT(*) FROM events WHERE account = $1 AND key = $2 AND type = ANY($3) AND keyed \
             AND received_at > $4";
        let p: P<'_> = &[&e.account, &e.key, &types, &since];
        let n = self.one(sql, p, |r| r.int(0)).await?;
        Ok(count(n.unwrap_or(0)))
    }

    async fn load(&mut self, destination: &str, since: i64) -> Result<usize> {
        let sql = "SELECT COUNT(*) FROM notifications WHERE destination = $1 AND due_at > $2 AND priority < 3 \
             AND state IN ('pending', 'sending', 'sent') AND event IS NOT NULL AND type NOT LIKE 'kci.%'";
        let n = self.one(sql, &[&destination, &since], |r| r.int(0)).await?;
        Ok(count(n.unwrap_or(0)))
    }

    async fn pending_digest(&mut self, account: &str, destination: &str) -> Result<Option<String>> {
        let sql = format!("{PENDING_DIGEST} FOR UPDATE");
        self.one(&sql, &[&account, &destination], |r| r.text(0))
            .await
    }

    async fn history(&mut self, event: &str) -> Result<Vec<Decided>> {
        self.all(&rows::history("seq"), &[&event], rows::decided)
            .await
    }

    async fn insert_notification(&mut self, n: &Notification) -> Result<()> {
        self.notification_rows(&[n]).await
    }

    async fn event_counts(
        &mut self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, usize>> {
        let sql = "SELECT id, notifications FROM events WHERE id = ANY($1)";
        let ids: Vec<&str> = ids.to_vec();
        let found = self
            .all(sql, &[&ids], |r| Ok((r.text(0)?, count(r.int(1)?))))
            .await?;
        Ok(found.into_iter().collect())
    }

    async fn insert_events(&mut self, events: &[NewEvent<'_>]) -> Result<Vec<bool>> {
        self.event_rows(events).await
    }

    async fn insert_notifications(&mut self, notes: &[&Notification]) -> Result<()> {
        if notes.is_empty() {
            return Ok(());
        }
        self.notification_rows(notes).await
    }

    async fn cancel(&mut self, by: By, value: &str, d: &Decided) -> Result<usize> {
        let sql = format!(
            "WITH c AS (UPDATE notifications SET state = 'cancelled', reason = $2, detail = $3, decided_at = $4, \
             secret = NULL WHERE {} RETURNING id, event, due_at) \
             INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
             SELECT id, event, $4, 'cancelled', $2, $3, due_at FROM c",
            cancellable(by, "$1")
        );
        let (reason, at) = (d.reason.map(|r| r.as_str()), to_millis(d.at));
        let n = self.exec(&sql, &[&value, &reason, &d.detail, &at]).await?;
        Ok(count(i64::try_from(n).unwrap_or(i64::MAX)))
    }

    async fn set_paired_from(&mut self, id: &str, from: i64) -> Result<()> {
        let sql = "UPDATE notifications SET paired_from = $2 WHERE id = $1 AND state = 'pending'";
        self.exec(sql, &[&id, &from]).await?;
        Ok(())
    }

    async fn set_message(&mut self, id: &str, m: &Message) -> Result<()> {
        let sql = "UPDATE notifications SET message = $2 WHERE id = $1 AND state = 'pending'";
        self.exec(sql, &[&id, &message_json(m)?]).await?;
        Ok(())
    }

    async fn claim(&mut self, c: Claim) -> Result<Vec<Notification>> {
        let sql = claim_sql(c.channel.is_some());
        let channel = c.channel.map(|c| c.as_str());
        let p: P<'_> = &[&c.now, &c.lease_until, &c.limit, &channel];
        self.all(&sql, p, rows::notification).await
    }

    async fn due_left(&mut self, channel: crate::model::ChannelKind, now: i64) -> Result<bool> {
        let due = self
            .one(rows::sql::DUE_LEFT, &[&channel.as_str(), &now], |r| {
                r.opt_int(0)
            })
            .await?;
        Ok(due.flatten().is_some())
    }

    async fn claim_context(&mut self, notes: &[Notification]) -> Result<ClaimContext> {
        let ids: Vec<&str> = notes.iter().filter_map(|n| n.event.as_deref()).collect();
        let accounts: Vec<&str> = notes.iter().map(|n| n.account.as_str()).collect();
        let addresses: Vec<String> = notes.iter().filter_map(mail_address).collect();
        let sql = "SELECT payload FROM events WHERE id = ANY($1)";
        let events = self
            .all(sql, &[&ids], |r| event_from_json(&r.text(0)?))
            .await?;
        let sql = "SELECT id FROM accounts WHERE id = ANY($1) AND paranoid";
        let paranoid = self.all(sql, &[&accounts], |r| r.text(0)).await?;
        let sql = "SELECT address, armored FROM keys WHERE state = 'active' AND address = ANY($1)";
        let keys = self
            .all(sql, &[&addresses], |r| Ok((r.text(0)?, r.text(1)?)))
            .await?;
        let hooks: Vec<&str> = notes
            .iter()
            .filter(|n| n.channel == crate::model::ChannelKind::Webhook)
            .map(|n| n.destination.as_str())
            .collect();
        let secrets = if hooks.is_empty() {
            Vec::new()
        } else {
            let sql = "SELECT id, secret, previous_secret, previous_until FROM destinations \
                       WHERE id = ANY($1)";
            self.all(sql, &[&hooks], |r| Ok((r.text(0)?, rows::secrets(r, 1)?)))
                .await?
        };
        Ok(ClaimContext {
            events,
            paranoid,
            keys,
            secrets,
        })
    }

    async fn finish_all(&mut self, done: &[(String, FinishRow)]) -> Result<Vec<bool>> {
        // All in one statement: each outcome a row of the arrays, the
        // notice updated only while it is being sent (under the row's
        // lease, where it names one), its decision recorded, its
        // destination's refusals cleared when the row says so.
        let sql = "WITH u AS (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::BIGINT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::TEXT[], $10::TEXT[], \
             $11::BIGINT[], $12::BOOLEAN[], $13::BOOLEAN[], $14::BIGINT[], $15::BIGINT[]) \
             AS u(id, state, reason, detail, sent_at, due_at, decided_at, attempts_delta, provider_ref, \
             receipt, segments, keeps_secret, clears_refusals, paced_delta, lease)), \
             f AS (UPDATE notifications n SET state = u.state, reason = u.reason, detail = u.detail, \
             sent_at = COALESCE(u.sent_at, n.sent_at), due_at = COALESCE(u.due_at, n.due_at), \
             decided_at = u.decided_at, lease_until = NULL, attempts = n.attempts + u.attempts_delta, \
             provider_ref = COALESCE(u.provider_ref, n.provider_ref), receipt = u.receipt, \
             segments = COALESCE(u.segments, n.segments), \
             secret = CASE WHEN u.keeps_secret THEN n.secret END, paced = n.paced + u.paced_delta \
             FROM u WHERE n.id = u.id AND n.state = 'sending' AND (u.lease IS NULL OR n.lease_until = u.lease) \
             RETURNING n.id, n.event, n.due_at, n.destination, u.state, u.reason, u.detail, u.decided_at, \
             u.clears_refusals), \
             h AS (UPDATE destinations SET failures = 0 \
               WHERE failures > 0 AND id IN (SELECT destination FROM f WHERE clears_refusals)), \
             d AS (INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
               SELECT id, event, decided_at, state, reason, detail, due_at FROM f) \
             SELECT id FROM f";
        let rows = || done.iter().map(|(_, f)| f);
        let ids: Vec<&str> = done.iter().map(|(id, _)| id.as_str()).collect();
        let states: Vec<&str> = rows().map(|f| f.state.as_str()).collect();
        let reasons: Vec<Option<&str>> = rows().map(|f| f.reason.map(|r| r.as_str())).collect();
        let details: Vec<Option<&str>> = rows().map(|f| f.detail.as_deref()).collect();
        let sent: Vec<Option<i64>> = rows().map(|f| f.sent_at).collect();
        let due: Vec<Option<i64>> = rows().map(|f| f.due_at).collect();
        let decided: Vec<i64> = rows().map(|f| f.decided_at).collect();
        let attempts: Vec<i64> = rows().map(|f| f.attempts_delta).collect();
        let refs: Vec<Option<&str>> = rows().map(|f| f.provider_ref.as_deref()).collect();
        let receipts: Vec<Option<&str>> = rows().map(|f| f.receipt).collect();
        let segments: Vec<Option<i64>> = rows().map(|f| f.segments).collect();
        let keeps: Vec<bool> = rows().map(|f| f.keeps_secret).collect();
        let clears: Vec<bool> = rows().map(|f| f.clears_refusals).collect();
        let paced: Vec<i64> = rows().map(|f| f.paced_delta).collect();
        let leases: Vec<Option<i64>> = rows().map(|f| f.lease).collect();
        let p: P<'_> = &[
            &ids, &states, &reasons, &details, &sent, &due, &decided, &attempts, &refs, &receipts,
            &segments, &keeps, &clears, &paced, &leases,
        ];
        let written: std::collections::HashSet<String> =
            self.all(sql, p, |r| r.text(0)).await?.into_iter().collect();
        Ok(ids.iter().map(|id| written.contains(*id)).collect())
    }

    async fn next_due(&mut self, after: i64) -> Result<Option<i64>> {
        Ok(self
            .one(&rows::sql::NEXT_DUE, &[&after], |r| r.opt_int(0))
            .await?
            .flatten())
    }

    async fn channel_limit(
        &mut self,
        channel: crate::model::ChannelKind,
    ) -> Result<(Option<i64>, Option<i64>)> {
        let name = channel.as_str();
        self.exec(rows::sql::NEW_CHANNEL_LIMIT, &[&name]).await?;
        // Locked until the transaction ends: nodes reserving slots at
        // once take turns, so together they keep the provider's rate.
        let sql = format!("{} FOR UPDATE", rows::sql::CHANNEL_LIMIT);
        let map = |r: &Row| Ok((r.opt_int(0)?, r.opt_int(1)?));
        Ok(self.one(&sql, &[&name], map).await?.unwrap_or((None, None)))
    }

    async fn channel_pauses(&mut self, now: i64) -> Result<Vec<(String, i64)>> {
        let map = |r: &Row| Ok((r.text(0)?, r.int(1)?));
        self.all(rows::sql::CHANNEL_PAUSES, &[&now], map).await
    }

    async fn backlog(&mut self) -> Result<(Option<i64>, i64, i64, i64)> {
        let map = |r: &Row| Ok((r.opt_int(0)?, r.int(1)?, r.int(2)?, r.int(3)?));
        self.one(&rows::sql::BACKLOG, &[], map)
            .await?
            .ok_or_else(|| StoreError::Unavailable("the backlog query answered no row".into()))
    }

    async fn notifications(&mut self, which: Which<'_>) -> Result<Vec<Notification>> {
        let from = format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE");
        let map = |r: &Row| rows::notification(r);
        match which {
            Which::One(id) => self.all(&format!("{from} id = $1"), &[&id], map).await,
            Which::OfEvent(id) => {
                let sql = format!("{from} event = $1 ORDER BY contact, destination");
                self.all(&sql, &[&id], map).await
            }
            Which::InDigest(id) => {
                let sql = format!("{from} digest = $1 AND state = 'digested' ORDER BY due_at, id");
                self.all(&sql, &[&id], map).await
            }
            Which::InState {
                state,
                before,
                limit,
            } => {
                let sql = format!(
                    "{from} state = $1 AND decided_at < $2 ORDER BY decided_at DESC, id DESC LIMIT $3"
                );
                self.all(&sql, &[&state.as_str(), &before, &limit], map)
                    .await
            }
            Which::Awaiting { channel, limit } => {
                let sql = format!(
                    "{from} receipt = 'awaiting' AND channel = $1 ORDER BY sent_at LIMIT $2"
                );
                self.all(&sql, &[&channel.as_str(), &limit], map).await
            }
            Which::ByRef { channel, reference } => {
                let sql = format!("{from} provider_ref = $1 AND channel = $2 LIMIT 1");
                self.all(&sql, &[&reference, &channel.as_str()], map).await
            }
        }
    }

    async fn redrive(&mut self, id: &str, d: &Decided) -> Result<bool> {
        let sql = "WITH r AS (UPDATE notifications SET state = 'pending', reason = 'redriven', due_at = $2, \
             decided_at = $2, attempts = 0, paced = 0 WHERE id = $1 AND state = 'failed' RETURNING id, event) \
             INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
             SELECT id, event, $2, 'pending', 'redriven', $3, $2 FROM r";
        let n = self.exec(sql, &[&id, &to_millis(d.at), &d.detail]).await?;
        Ok(n > 0)
    }

    async fn requeue_sending(&mut self, _d: &Decided) -> Result<usize> {
        Ok(0) // several nodes: a lease decides (never called here)
    }

    async fn receipt(&mut self, id: &str, r: &ReceiptRow) -> Result<bool> {
        let sql = "WITH r AS (UPDATE notifications SET receipt = $2, receipt_at = $3, state = $4, reason = $5, \
             detail = $6, decided_at = CASE WHEN $4 = 'failed' THEN $3 ELSE decided_at END \
             WHERE id = $1 AND state = 'sent' AND (receipt IS NULL OR receipt = 'awaiting') \
             RETURNING id, event, due_at) \
             INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
             SELECT id, event, $3, $4, $5, $6, due_at FROM r";
        let p: P<'_> = &[
            &id,
            &r.status,
            &r.at,
            &r.state.as_str(),
            &r.reason,
            &r.detail,
        ];
        Ok(self.exec(sql, p).await? > 0)
    }

    async fn lock_address(&mut self, address: &str) -> Result<()> {
        self.lock(format!("kci-keys:{address}")).await
    }

    async fn live_keys(&mut self, address: &str) -> Result<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE address = $1 AND state IN ('active', 'pending') ORDER BY submitted_at"
        );
        self.all(&sql, &[&address], rows::key).await
    }

    async fn changes(&mut self, which: ChangeWhich<'_>) -> Result<Vec<Change>> {
        match which {
            ChangeWhich::Id(id) => {
                let sql = format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE id = $1 FOR UPDATE");
                self.all(&sql, &[&id], rows::change).await
            }
            ChangeWhich::Peek(id) => {
                let sql = format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE id = $1");
                self.all(&sql, &[&id], rows::change).await
            }
            ChangeWhich::Address { address, pending } => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE address = $1 AND (NOT $2 OR state = 'pending') \
                     ORDER BY requested_at, id"
                );
                self.all(&sql, &[&address, &pending], rows::change).await
            }
            ChangeWhich::Account { account, pending } => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE account = $1 AND (NOT $2 OR state = 'pending') \
                     ORDER BY requested_at, id"
                );
                self.all(&sql, &[&account, &pending], rows::change).await
            }
            ChangeWhich::Due { now, limit } => {
                // Another node settling one skips it here; it settles
                // each in its own locked transaction anyway.
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE state = 'pending' AND not_before <= $1 \
                     ORDER BY not_before, id LIMIT $2 FOR UPDATE SKIP LOCKED"
                );
                self.all(&sql, &[&now, &limit], rows::change).await
            }
        }
    }

    async fn key(&mut self, address: &str, fingerprint: &str) -> Result<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE address = $1 AND fingerprint = $2");
        self.one(&sql, &[&address, &fingerprint], rows::key).await
    }

    async fn upsert_pending_key(&mut self, k: &KeyRecord) -> Result<()> {
        self.exec(
            "INSERT INTO keys (address, fingerprint, armored, state, source, submitted_at, expires_at) \
             VALUES ($1, $2, $3, 'pending', $4, $5, $6) \
             ON CONFLICT (address, fingerprint) DO UPDATE SET armored = EXCLUDED.armored, \
             submitted_at = EXCLUDED.submitted_at, expires_at = EXCLUDED.expires_at \
             WHERE keys.state = 'pending'",
            &[
                &k.address,
                &k.fingerprint,
                &k.armored,
                &k.source,
                &to_millis(k.submitted_at),
                &k.expires_at.map(to_millis),
            ],
        )
        .await?;
        Ok(())
    }

    async fn refresh_key(&mut self, k: &KeyRecord) -> Result<bool> {
        let n = self
            .exec(
                "UPDATE keys SET armored = $3, expires_at = $4 WHERE address = $1 AND fingerprint = $2 AND state = 'active'",
                &[&k.address, &k.fingerprint, &k.armored, &k.expires_at.map(to_millis)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn insert_links(&mut self, links: &[KeyToken]) -> Result<()> {
        for t in links {
            self.exec(
                "INSERT INTO key_tokens (hash, address, fingerprint, purpose, change, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &t.hash,
                    &t.address,
                    &t.fingerprint,
                    &t.purpose.as_str(),
                    &t.change,
                    &to_millis(t.expires_at),
                ],
            )
            .await?;
        }
        Ok(())
    }

    async fn link(&mut self, hash: &str) -> Result<Option<LinkRow>> {
        let sql = format!("SELECT {LINK_COLUMNS} FROM key_tokens WHERE hash = $1 FOR UPDATE");
        self.one(&sql, &[&hash], rows::link).await
    }

    async fn use_link(&mut self, hash: &str, at: i64) -> Result<()> {
        let sql = "UPDATE key_tokens SET used_at = $2 WHERE hash = $1";
        self.exec(sql, &[&hash, &at]).await?;
        Ok(())
    }

    async fn move_key(&mut self, m: KeyMove<'_>) -> Result<()> {
        self.exec(
            rows::sql::MOVE_KEY,
            &[&m.address, &m.fingerprint, &m.state, &m.at],
        )
        .await?;
        Ok(())
    }

    async fn upsert_change(&mut self, c: &Change, at: i64) -> Result<()> {
        let j = rows::change_json(c, at)?;
        let needed = i64::from(c.approvals_needed);
        self.exec(
            rows::sql::UPSERT_CHANGE,
            &[
                &c.id,
                &c.kind.as_str(),
                &c.account,
                &c.address,
                &c.state.as_str(),
                &c.proof,
                &to_millis(c.requested_at),
                &c.requested_by,
                &to_millis(c.not_before),
                &j.approvals,
                &needed,
                &c.reason,
                &j.subject,
                &c.proven_current,
                &c.proven_new,
                &j.decided_at,
                &j.code,
                &j.factors,
            ],
        )
        .await?;
        Ok(())
    }

    async fn insert_veto_link(&mut self, hash: &str, l: &VetoLink) -> Result<()> {
        self.exec(
            "INSERT INTO change_links (hash, change, destination, expires_at) VALUES ($1, $2, $3, $4)",
            &[&hash, &l.change, &l.destination, &to_millis(l.expires_at)],
        )
        .await?;
        Ok(())
    }

    async fn veto_link(&mut self, hash: &str) -> Result<Option<VetoLink>> {
        let sql = format!("{} FOR UPDATE", rows::sql::veto_link());
        self.one(&sql, &[&hash], rows::veto_link).await
    }

    async fn upsert_incident(&mut self, i: &Incident) -> Result<()> {
        self.exec(
            "INSERT INTO incidents (id, account, change, kind, opened_at, state, note, closed_at, closed_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, note = EXCLUDED.note, \
             closed_at = EXCLUDED.closed_at, closed_by = EXCLUDED.closed_by",
            &[
                &i.id,
                &i.account,
                &i.change,
                &i.kind,
                &to_millis(i.opened_at),
                &i.state,
                &i.note,
                &i.closed_at.map(to_millis),
                &i.closed_by,
            ],
        )
        .await?;
        Ok(())
    }

    async fn upsert_call(&mut self, c: &crate::model::Call) -> Result<()> {
        let attempts = i64::from(c.attempts);
        self.exec(
            "INSERT INTO calls (id, account, contact, staff, state, opened_at, expires_at, staff_code_hash, \
             customer_code_hash, link_hash, staff_confirmed, customer_confirmed, attempts, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, staff_confirmed = EXCLUDED.staff_confirmed, \
             customer_confirmed = EXCLUDED.customer_confirmed, attempts = EXCLUDED.attempts, reason = EXCLUDED.reason",
            &[
                &c.id,
                &c.account,
                &c.contact,
                &c.staff,
                &c.state.as_str(),
                &to_millis(c.opened_at),
                &to_millis(c.expires_at),
                &c.staff_code.hash,
                &c.customer_code.hash,
                &c.link_hash,
                &c.staff_confirmed,
                &c.customer_confirmed,
                &attempts,
                &c.reason,
            ],
        )
        .await?;
        Ok(())
    }

    async fn calls(&mut self, which: CallWhich<'_>) -> Result<Vec<crate::model::Call>> {
        match which {
            CallWhich::Id(id) => {
                let sql = format!("{} FOR UPDATE", rows::sql::call_by_id());
                self.all(&sql, &[&id], rows::call).await
            }
            CallWhich::Link(hash) => {
                let sql = format!("{} FOR UPDATE", rows::sql::call_by_link());
                self.all(&sql, &[&hash], rows::call).await
            }
            CallWhich::Due { now, limit } => {
                self.all(&rows::sql::calls_due(), &[&now, &limit], rows::call)
                    .await
            }
            CallWhich::Open {
                account,
                contact,
                now,
            } => {
                let sql = rows::sql::calls_open();
                self.all(&sql, &[&account, &contact, &now], rows::call)
                    .await
            }
        }
    }

    async fn upsert_assurance(&mut self, a: &crate::model::Assurance) -> Result<()> {
        let attempts = i64::from(a.attempts);
        self.exec(
            "INSERT INTO assurances (id, change, account, address, assurer, ticket, met_on, recorded_at, state, \
             a_hash, link_hash, link_expires_at, t_hash, t_expires_at, attempts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, t_hash = EXCLUDED.t_hash, \
             t_expires_at = EXCLUDED.t_expires_at, attempts = EXCLUDED.attempts",
            &[
                &a.id,
                &a.change,
                &a.account,
                &a.address,
                &a.assurer,
                &a.ticket,
                &to_millis(a.met_on),
                &to_millis(a.recorded_at),
                &a.state.as_str(),
                &a.a_hash,
                &a.link_hash,
                &to_millis(a.link_expires_at),
                &a.t_hash,
                &a.t_expires_at.map(to_millis),
                &attempts,
            ],
        )
        .await?;
        Ok(())
    }

    async fn assurances(
        &mut self,
        which: AssuranceWhich<'_>,
    ) -> Result<Vec<crate::model::Assurance>> {
        match which {
            AssuranceWhich::Change(id) => {
                let sql = format!(
                    "SELECT {ASSURANCE_COLUMNS} FROM assurances WHERE change = $1 ORDER BY recorded_at, id FOR UPDATE"
                );
                self.all(&sql, &[&id], rows::assurance).await
            }
            AssuranceWhich::Link(hash) => {
                let sql = format!(
                    "SELECT {ASSURANCE_COLUMNS} FROM assurances WHERE link_hash = $1 FOR UPDATE"
                );
                self.all(&sql, &[&hash], rows::assurance).await
            }
        }
    }

    async fn incidents(&mut self, which: IncidentWhich<'_>) -> Result<Vec<Incident>> {
        match which {
            IncidentWhich::Id(id) => {
                let sql = format!("{} FOR UPDATE", rows::sql::incident_by_id());
                self.all(&sql, &[&id], rows::incident).await
            }
            IncidentWhich::List {
                open_only,
                account,
                limit,
            } => {
                let sql = rows::sql::incidents();
                self.all(&sql, &[&open_only, &account, &limit], rows::incident)
                    .await
            }
        }
    }

    async fn audit_last(&mut self) -> Result<Option<(i64, String)>> {
        // One appender at a time across nodes, until this commits: the
        // chain is serialised in the database, not in any one process.
        self.lock("kci-audit".to_string()).await?;
        self.one(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
            |r| Ok((r.int(0)?, r.text(1)?)),
        )
        .await
    }

    async fn insert_audit(&mut self, e: &AuditEntry) -> Result<()> {
        let d = &e.draft;
        self.exec(
            "INSERT INTO audit (seq, at, actor, action, account, address, change, ticket, source, outcome, detail, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &e.seq,
                &to_millis(e.at),
                &d.actor,
                &d.action,
                &d.account,
                &d.address,
                &d.change,
                &d.ticket,
                &d.source,
                &d.outcome,
                &d.detail,
                &e.prev_hash,
                &e.hash,
            ],
        )
        .await?;
        Ok(())
    }

    async fn checkpoints(&mut self, latest: bool) -> Result<Vec<Checkpoint>> {
        let sql = format!(
            "SELECT * FROM (SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC \
             LIMIT CASE WHEN $1 THEN 1 END) c ORDER BY seq"
        );
        self.all(&sql, &[&latest], rows::checkpoint).await
    }

    async fn insert_checkpoint(&mut self, c: &Checkpoint) -> Result<bool> {
        let n = self
            .exec(
                "INSERT INTO audit_checkpoints (seq, head, at, signature) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&c.seq, &c.head, &to_millis(c.at), &c.signature],
            )
            .await?;
        Ok(n > 0)
    }

    async fn insert_staff(&mut self, st: &Staff) -> Result<bool> {
        let n = self
            .exec(
                "INSERT INTO staff (name, role, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&st.name, &st.role.as_str(), &to_millis(st.created_at)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn staff(&mut self, name: Option<&str>) -> Result<Vec<Staff>> {
        let sql = format!(
            "SELECT {STAFF_COLUMNS} FROM staff WHERE $1::TEXT IS NULL OR name = $1 ORDER BY name"
        );
        self.all(&sql, &[&name], rows::staff).await
    }

    async fn credential(
        &mut self,
        name: &str,
    ) -> Result<Option<crate::channels::StoredCredential>> {
        let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE name = $1");
        self.one(&sql, &[&name], rows::credential).await
    }

    async fn use_proof(&mut self, p: &ProofUse, now: i64) -> Result<bool> {
        self.exec("DELETE FROM used_proofs WHERE keep_until < $1", &[&now])
            .await?;
        let sql =
            "INSERT INTO used_proofs (hash, keep_until) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        Ok(self.exec(sql, &[&p.hash, &to_millis(p.keep_until)]).await? > 0)
    }

    async fn window(&mut self, bucket: &str, key: &str) -> Result<Option<Window>> {
        let sql =
            "SELECT window_start, count FROM throttle WHERE bucket = $1 AND key = $2 FOR UPDATE";
        self.one(sql, &[&bucket, &key], rows::window).await
    }

    async fn put_window(&mut self, bucket: &str, key: &str, w: Window) -> Result<()> {
        // The first count of a key has no row to lock yet: two nodes racing
        // on it may both start a window, and one count is lost — a limit is
        // off by at most one per racing node, never unbounded.
        self.exec(
            "INSERT INTO throttle (bucket, key, window_start, count) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bucket, key) DO UPDATE SET window_start = EXCLUDED.window_start, count = EXCLUDED.count",
            &[&bucket, &key, &to_millis(w.start), &i64::from(w.count)],
        )
        .await?;
        Ok(())
    }
}

/// The claim's statement: notices of one channel (`$4`) or of all.
fn claim_sql(of_channel: bool) -> String {
    let returning: Vec<String> = NOTIFICATION_COLUMNS
        .split(", ")
        .map(|c| format!("n.{c}"))
        .collect();
    // The longest-waiting first, each from its partial index: notices
    // whose lease ran out (their node died, or outlived it), then
    // pending ones by due time. Without an order, a claim took rows in
    // whatever order a scan met them: a dead node's notices waited for
    // the backlog, and a claim's cost depended on where in the table
    // the pending rows lay. One statement per case, so each plan can
    // use its index.
    // One channel's due notices in the order of its own index (the same
    // order, the channel being one), whatever the plan kept thinks of
    // the table's size.
    let (channel, due_order) = if of_channel {
        ("AND channel = $4", "channel, due_at")
    } else {
        ("AND $4::TEXT IS NULL", "due_at")
    };
    // Each key's notices to a destination in turn (sql::in_turn, asked in
    // two parts that PostgreSQL's indexes answer); a row another node is
    // claiming is skipped, and its successors wait for it, since it is
    // pending or sending in every snapshot.
    let in_turn = rows::sql::in_turn_split("$1");
    format!(
        "WITH expired AS ( \
           SELECT id FROM notifications n WHERE state = 'sending' AND lease_until <= $1 {channel} \
           AND {in_turn} ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED), \
         due AS ( \
           SELECT id FROM notifications n WHERE state = 'pending' AND due_at <= $1 {channel} \
           AND {in_turn} ORDER BY {due_order} LIMIT GREATEST($3 - (SELECT COUNT(*) FROM expired), 0) \
           FOR UPDATE SKIP LOCKED) \
         UPDATE notifications n SET state = 'sending', attempts = attempts + 1, lease_until = $2 \
         WHERE n.id = ANY(ARRAY(SELECT id FROM expired UNION ALL SELECT id FROM due)) \
         RETURNING {}",
        returning.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relaxed write (a claim's lease) commits asynchronously
    /// (`synchronous_commit` off in its transaction only); any other write
    /// on the same connection afterwards waits for its WAL flush again.
    #[tokio::test]
    async fn only_a_relaxed_write_commits_asynchronously() {
        let (store, _schema) = crate::store::conformance::pg_store().await;
        let setting = || -> Job<PgRows, String> {
            Box::new(|rows| {
                Box::pin(async move {
                    let row = rows.c()?.query_one("SHOW synchronous_commit", &[]).await?;
                    Ok(row.try_get(0)?)
                })
            })
        };
        assert_eq!(store.backend.write(setting()).await.unwrap(), "on");
        assert_eq!(store.backend.write_relaxed(setting()).await.unwrap(), "off");
        // SET LOCAL ends with its transaction: the pooled connection is
        // back to the server's setting.
        assert_eq!(store.backend.write(setting()).await.unwrap(), "on");
        assert_eq!(store.backend.read(setting()).await.unwrap(), "on");
    }

    /// Every text column of kci's schema compares byte by byte (collation
    /// "C", migration 25), as SQLite's BINARY does, whatever the database's
    /// locale: no index comparison goes through the C library's strcoll,
    /// and both stores order ids and names alike. A later migration that
    /// adds a text column must say `COLLATE "C"`; this test names any that
    /// does not.
    #[tokio::test]
    async fn every_text_column_compares_byte_by_byte() {
        let (store, _schema) = crate::store::conformance::pg_store().await;
        let job: Job<PgRows, Vec<String>> = Box::new(|rows| {
            Box::pin(async move {
                let found = rows
                    .c()?
                    .query(
                        "SELECT c.relname || '.' || a.attname || ' ' || a.attcollation::regcollation::text \
                         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'i') \
                           AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'text'::regtype \
                           AND a.attcollation <> '\"C\"'::regcollation \
                         ORDER BY 1",
                        &[],
                    )
                    .await?;
                Ok(found.iter().map(|r| r.get(0)).collect())
            })
        });
        let other = store.backend.read(job).await.unwrap();
        assert!(other.is_empty(), "text not in byte order: {other:?}");
        // The order both stores list in: `check_directory_pages_in_byte_order`.
    }

    #[test]
    fn sslmode_as_libpq_names_it() {
        let base = "postgres://kci@db.example/kci";
        // (url, url kept, mode)
        for (url, kept, want) in [
            (base.to_string(), base.to_string(), Ok(PgTls::Prefer)),
            (
                format!("{base}?sslmode=disable"),
                base.to_string(),
                Ok(PgTls::Disable),
            ),
            (
                format!("{base}?sslmode=require&options=-csearch_path%3Dx"),
                format!("{base}?options=-csearch_path%3Dx"),
                Ok(PgTls::Require),
            ),
            (
                format!("{base}?sslmode=verify-full&sslrootcert=%2Fetc%2Fkci%2Fdb-ca.crt"),
                base.to_string(),
                Ok(PgTls::VerifyFull {
                    root: Some("/etc/kci/db-ca.crt".into()),
                }),
            ),
            (
                format!("{base}?sslmode=verify-ca"),
                String::new(),
                Err("verify-ca"),
            ),
            (
                format!("{base}?sslrootcert=/x"),
                String::new(),
                Err("sslrootcert needs"),
            ),
        ] {
            match (tls_mode(&url), want) {
                (Ok((u, m)), Ok(w)) => assert_eq!((u, m), (kept, w), "{url}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{url}: {e}"),
                (got, want) => panic!("{url}: {got:?}, wanted {want:?}"),
            }
        }
    }

    fn test_url() -> String {
        std::env::var("KCI_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    async fn encrypted(db: &Db<Pg>) -> bool {
        let c = db.backend.pool.get().await.unwrap();
        let row = c
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .unwrap();
        row.get(0)
    }

    /// Against the test server (Debian's PostgreSQL offers TLS with its
    /// self-signed "snakeoil" certificate): `require` encrypts, `disable`
    /// does not, and `verify-full` with a root that did not sign the
    /// server's certificate refuses to connect.
    #[tokio::test]
    async fn tls_to_the_test_server() {
        let url = test_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        let plain = Db::<Pg>::connect(&format!("{url}{sep}sslmode=disable"))
            .await
            .unwrap();
        assert!(!encrypted(&plain).await);
        match Db::<Pg>::connect(&format!("{url}{sep}sslmode=require")).await {
            Ok(tls) => assert!(encrypted(&tls).await, "require encrypts"),
            // A server without TLS: require must refuse, not fall back.
            Err(e) => assert!(
                e.to_string().to_lowercase().contains("tls") || e.to_string().contains("ssl"),
                "{e}"
            ),
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("other-ca.crt");
        let cert = rcgen::generate_simple_self_signed(vec!["other.example".to_string()]).unwrap();
        std::fs::write(&root, cert.cert.pem()).unwrap();
        let verify = format!(
            "{url}{sep}sslmode=verify-full&sslrootcert={}",
            root.display()
        );
        assert!(
            Db::<Pg>::connect(&verify).await.is_err(),
            "a certificate the root did not sign is refused"
        );
    }

    /// The pages `sql` read, run under `EXPLAIN (ANALYZE, BUFFERS, FORMAT
    /// JSON)`: the same on every run for the same rows and plan.
    async fn pages_read(c: &Object, sql: &str, p: P<'_>) -> Result<i64> {
        let explained = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}");
        let plan: serde_json::Value = c.query_one(&explained, p).await?.try_get(0)?;
        let top = &plan[0]["Plan"];
        Ok(top["Shared Hit Blocks"].as_i64().unwrap_or(0)
            + top["Shared Read Blocks"].as_i64().unwrap_or(0))
    }

    /// Pages read by two statements, `few` with a small backlog and `many`
    /// with a large one: each about the same (within the indexes' depth),
    /// not growing with the backlog.
    fn assert_flat(few: (i64, i64), many: (i64, i64), what: &str) {
        assert!(
            many.0 < 2 * few.0 && many.1 < 2 * few.1,
            "pages ({what}): {few:?} with few held, {many:?} with many"
        );
    }

    /// A claim's turn check and pairing's search are answered inside
    /// indexes (migration 23): the pages they read do not grow with the
    /// notices a key holds for later, nor with the hub's backlog. Before,
    /// the turn check read the row of every held notice of the key for
    /// each due one, and pairing read the whole table. Counted in the
    /// buffers `EXPLAIN (ANALYZE, BUFFERS)` reports.
    #[tokio::test]
    async fn a_keys_held_notices_slow_neither_a_claim_nor_pairing() {
        async fn pages(held: i32) -> (i64, i64) {
            let (store, _schema) = crate::store::conformance::pg_store().await;
            let job: Job<PgRows, (i64, i64)> = Box::new(move |rows| {
                Box::pin(async move {
                    let c = rows.c()?;
                    // Held notices of key L1 first (earlier ids), then 20
                    // due; 20,000 keys with a held notice each (so that the
                    // planner's statistics find keys selective: with fewer,
                    // it chose the right index even beside a narrower one
                    // that reads every held row); one notice of key L9
                    // folded into an open digest.
                    let insert = "INSERT INTO notifications (id, event, account, contact, destination, uri, \
                           channel, type, key, priority, state, due_at, decided_at, timezone, digest) \
                         SELECT format('n-%s', lpad(i::text, 8, '0')), NULL, 'A1', 'C1', 'D1', \
                           'mailto:a@example.com', 'email', 'line.down', 'L1', 1, 'pending', \
                           CASE WHEN i <= $1 THEN 4000000000000 ELSE 1 END, 0, 'UTC', NULL \
                         FROM generate_series(1, $1 + 20) i \
                         UNION ALL SELECT format('b-%s', i), NULL, 'A1', 'C1', 'D1', 'mailto:a@example.com', \
                           'email', 'line.down', format('K%s', i), 1, 'pending', 4000000000000, 0, 'UTC', NULL \
                         FROM generate_series(1, 20000) i \
                         UNION ALL VALUES ('x-d', NULL, 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', \
                           'kci.digest', 'L9', 1, 'pending', 4000000000000, 0, 'UTC', NULL), \
                           ('x-n', 'e9', 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', 'line.down', \
                           'L9', 1, 'digested', 4000000000000, 0, 'UTC', 'x-d')";
                    c.execute(insert, &[&held]).await?;
                    c.batch_execute(
                        "INSERT INTO events (id, account, type, key, received_at, notifications, payload) \
                         VALUES ('e9', 'A1', 'line.down', 'L9', 0, 1, '{}'); ANALYZE notifications",
                    )
                    .await?;
                    let none: Option<String> = None;
                    let p: P<'_> = &[&1000_i64, &2000_i64, &64_i64, &none];
                    let claimed = pages_read(c, &claim_sql(false), p).await?;
                    let [pending, folded] = related_waiting("NULL", "n.type = ANY($3)");
                    let mut pairing = 0;
                    for part in [pending, folded] {
                        let sql = format!("{part} FOR UPDATE OF n");
                        let types = vec!["line.down".to_string()];
                        pairing += pages_read(c, &sql, &[&"A1", &"L9", &types]).await?;
                    }
                    // The claim took the earliest due notice, alone.
                    let sending = c
                        .query_one(
                            "SELECT array_agg(id) FROM notifications WHERE state = 'sending'",
                            &[],
                        )
                        .await?;
                    let sending: Vec<String> = sending.try_get(0)?;
                    let first_due = format!("n-{:08}", held + 1);
                    assert_eq!(sending, [first_due]);
                    Ok((claimed, pairing))
                })
            });
            store.backend.write(job).await.unwrap()
        }
        // Eight times the held notices (300, 2,400): the same pages, give
        // or take the indexes' depth (before: eight times as many for
        // both).
        assert_flat(pages(300).await, pages(2_400).await, "claim, pairing");
    }

    /// The next due time and the backlog gauge read the front of each
    /// channel's pending notices whatever PostgreSQL's statistics say.
    /// Asked with `MIN`, PostgreSQL read every pending notice of the
    /// channel until the table was analysed; a table filled by a burst of
    /// ingest, as here, is estimated at one row until then (5–12 ms with
    /// 25,000 held in the load bench, BENCHMARKS.md stop 56). Counted in
    /// the buffers `EXPLAIN (ANALYZE, BUFFERS)` reports, before any
    /// `ANALYZE`.
    #[tokio::test]
    async fn the_next_due_time_reads_the_front_of_an_unanalysed_backlog() {
        async fn pages(held: i64) -> (i64, i64) {
            let (store, _schema) = crate::store::conformance::pg_store().await;
            let job: Job<PgRows, (i64, i64)> = Box::new(move |rows| {
                Box::pin(async move {
                    let c = rows.c()?;
                    let insert = "INSERT INTO notifications (id, account, contact, destination, uri, \
                           channel, type, key, priority, state, due_at, decided_at, timezone) \
                         SELECT format('n-%s', lpad(i::text, 8, '0')), 'A1', 'C1', 'D1', \
                           'mailto:a@example.com', CASE WHEN i % 2 = 0 THEN 'email' ELSE 'webhook' END, \
                           'line.down', format('L%s', i), 1, 'pending', 4000000000000 + i, 0, 'UTC' \
                         FROM generate_series(1, $1::BIGINT) i";
                    c.execute(insert, &[&held]).await?;
                    Ok((
                        pages_read(c, &rows::sql::NEXT_DUE, &[&1000_i64]).await?,
                        pages_read(c, &rows::sql::BACKLOG, &[]).await?,
                    ))
                })
            });
            store.backend.write(job).await.unwrap()
        }
        // Seventy times the held notices (300, 20,000): the same pages,
        // give or take the index's depth (before: about seventy times as
        // many).
        assert_flat(pages(300).await, pages(20_000).await, "next due, backlog");
    }

    /// A claim never reads the notifications table whole. PostgreSQL keeps
    /// a plan for a prepared statement after its first five calls, made
    /// for the table as it was then: on a new hub, a few rows and no
    /// statistics, where reading the whole table looked cheapest for the
    /// claim's update. It stayed until the table was next analysed; in the
    /// load bench a claim then took 3.7 ms rather than 0.6 and deliveries
    /// ran at half their rate (BENCHMARKS.md, stop 43). Read from the
    /// server's own count of whole-table reads, on the one connection that
    /// made ten claims with a few notices held (before the fix: one a
    /// claim).
    #[tokio::test]
    async fn a_claim_never_reads_the_whole_table() {
        use crate::store::{EventStore, QueueStore};
        let (store, _schema) = on_one_connection().await;
        let now = chrono::Utc::now();
        // A few notices, held for later, as a hub's first hour may have.
        let held: Vec<Event> = (0..20)
            .map(|i| Event {
                not_before: Some(now + chrono::Duration::hours(1)),
                ..crate::store::conformance::event(&format!("e{i}"), "A1", &format!("L{i}"), now)
            })
            .collect();
        store
            .ingest(held, crate::store::conformance::planner())
            .await
            .unwrap();
        let before = whole_reads(&store, "notifications").await;
        for _ in 0..10 {
            let claimed = store
                .claim_due_on(
                    crate::model::ChannelKind::Email,
                    now,
                    now + chrono::Duration::minutes(1),
                    64,
                )
                .await
                .unwrap();
            assert!(claimed.claimed.is_empty());
            assert_eq!(claimed.left, crate::store::Left::Nothing);
        }
        assert_eq!(
            whole_reads(&store, "notifications").await - before,
            0,
            "whole-table reads in ten claims"
        );
    }

    /// A migrated, seeded store in a schema of its own, on a single
    /// connection (so each statement's kept plan is that one's).
    async fn on_one_connection() -> (PgStore, crate::store::conformance::TempSchema) {
        let (_migrated, schema) = crate::store::conformance::pg_store().await;
        let url = format!(
            "{}?options=-csearch_path%3D{}",
            crate::store::conformance::pg_url(),
            schema.name
        );
        let store = PgStore::connect_sized(&url, 1).await.unwrap();
        crate::store::conformance::seed(&store).await;
        (store, schema)
    }

    /// Whole-table reads of `table` so far, as the server counts them
    /// once this store's connection has flushed its counts.
    async fn whole_reads(store: &PgStore, table: &'static str) -> i64 {
        let flush: Job<PgRows, ()> = Box::new(|rows| {
            Box::pin(async move {
                rows.exec("SELECT pg_stat_force_next_flush()", &[]).await?;
                Ok(())
            })
        });
        store.backend.read(flush).await.unwrap();
        let count: Job<PgRows, i64> = Box::new(move |rows| {
            Box::pin(async move {
                let sql = "SELECT seq_scan FROM pg_stat_user_tables \
                     WHERE relname = $1 AND schemaname = current_schema()";
                let n = rows.one(sql, &[&table], |r| r.int(0)).await?;
                Ok(n.unwrap_or(0))
            })
        });
        store.backend.read(count).await.unwrap()
    }

    /// An ingest never reads the events table whole. Each asks which of its
    /// events were stored before (a retry answers the first result); a
    /// plan for that question kept from a hub's first minutes (a few
    /// events) read every event once the table had grown: 5-7 ms of the
    /// server's CPU for each event ingested alone on such a connection
    /// beside 60,000 events in the load bench (BENCHMARKS.md, stop 50).
    /// Read from the server's own count of whole-table reads, on the one
    /// connection that ingested events one at a time after a few were
    /// stored.
    #[tokio::test]
    async fn an_ingest_never_reads_the_events_whole() {
        use crate::store::EventStore;
        let (store, _schema) = on_one_connection().await;
        let now = chrono::Utc::now();
        let event = |i: usize| {
            crate::store::conformance::event(&format!("e{i}"), "A1", &format!("L{i}"), now)
        };
        // A hub's first events, statistics taken of the table as they left it.
        let first: Vec<Event> = (0..20).map(event).collect();
        store
            .ingest(first, crate::store::conformance::planner())
            .await
            .unwrap();
        let analyse: Job<PgRows, ()> = Box::new(|rows| {
            Box::pin(async move {
                rows.exec("ANALYZE events", &[]).await?;
                Ok(())
            })
        });
        store.backend.write(analyse).await.unwrap();
        let before = whole_reads(&store, "events").await;
        for i in 20..40 {
            store
                .ingest(vec![event(i)], crate::store::conformance::planner())
                .await
                .unwrap();
        }
        assert_eq!(
            whole_reads(&store, "events").await - before,
            0,
            "whole-table reads of events in twenty ingests"
        );
    }

    /// A claim asks its turn check of each candidate by its own key, also
    /// under a plan made while the table was empty (a fresh hub: a cached
    /// generic plan, no statistics yet). Planned as anti-joins, such a plan
    /// searched `notifications_turn` by `due_at <= $1` alone and matched by
    /// a join filter, once per candidate (a claim of 4,000 due took 7.6 s
    /// in the e2e test of four nodes, and leases ran out). Read from the
    /// plan: each of the four questions (two for notices whose lease ran
    /// out, two for due ones) is an index search by the candidate's
    /// account, key and URI.
    #[tokio::test]
    async fn a_claim_planned_on_an_empty_table_asks_each_candidate_by_its_key() {
        fn searches(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
            let name = node["Index Name"].as_str().unwrap_or_default();
            if name == "notifications_turn" || name == "notifications_busy" {
                let cond = node["Index Cond"].as_str().unwrap_or_default();
                out.push((name.to_string(), cond.to_string()));
            }
            for child in node["Plans"].as_array().into_iter().flatten() {
                searches(child, out);
            }
        }
        let (store, _schema) = crate::store::conformance::pg_store().await;
        let job: Job<PgRows, String> = Box::new(|rows| {
            Box::pin(async move {
                let c = rows.c()?;
                let prepare = format!(
                    "SET LOCAL plan_cache_mode = force_generic_plan; \
                     PREPARE claim_now(BIGINT, BIGINT, BIGINT, TEXT) AS {}",
                    claim_sql(false)
                );
                c.batch_execute(&prepare).await?;
                let mut plan = String::new();
                let explain = "EXPLAIN (FORMAT JSON) EXECUTE claim_now(1000, 2000, 64, NULL)";
                for m in c.simple_query(explain).await? {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        plan.push_str(r.get(0).unwrap_or_default());
                    }
                }
                c.batch_execute("DEALLOCATE claim_now").await?;
                Ok(plan)
            })
        });
        let plan: serde_json::Value =
            serde_json::from_str(&store.backend.write(job).await.unwrap()).unwrap();
        let mut found = Vec::new();
        searches(&plan[0]["Plan"], &mut found);
        assert_eq!(found.len(), 4, "{found:?}\n{plan:#}");
        for (index, cond) in &found {
            for column in ["account = ", "key = ", "uri = "] {
                assert!(cond.contains(column), "{index}: {cond}\n{plan:#}");
            }
        }
    }
}
