//! `kci serve`: the HTTP API and the delivery worker in one process.

use super::ConfigArg;
use crate::channels::Channels;
use crate::metrics::Metrics;
use crate::model::{Clock, SystemClock};
use crate::render::Renderer;
use crate::schedule::Scheduler;
use crate::shutdown::Shutdown;
use crate::web::AppState;
use std::process::ExitCode;
use std::sync::Arc;

pub async fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = Arc::new(super::load_config_with_code_key(&arg)?);
    // The embedded store serves one process: hold a lock for our lifetime,
    // which also makes it safe to take back work a killed predecessor left
    // in flight.
    let _lock = match config.sqlite_path() {
        Some(db) => Some(lock_exclusively(&db)?),
        None => None,
    };
    let store = crate::store::open_sized(config.store.url.expose(), config.store.pool_size).await?;
    if _lock.is_some() {
        let n = store.requeue_abandoned(chrono::Utc::now()).await?;
        if n > 0 {
            tracing::warn!(
                count = n,
                "requeued notifications that were in flight when kci last stopped"
            );
        }
    }
    // Secrets an earlier version stored in clear (pending notices' codes
    // and links, webhook signing secrets) are sealed before anything runs.
    let at_rest = Arc::new(crate::trust::seal::AtRest::new(&config.code_key));
    let sealed = crate::trust::seal::seal_clear(store.as_ref(), &at_rest).await?;
    if sealed > 0 {
        tracing::info!(
            count = sealed,
            "sealed secrets an earlier version kept in clear"
        );
    }
    // A channel whose provider rotates a credential (X) keeps it, sealed
    // with a key derived from the code key, in the store all nodes share.
    let keep = crate::channels::Keep {
        store: store.clone(),
        code_key: config.code_key.clone(),
    };
    let channels = Channels::from_config(&config.channels, &config.email, Some(keep))?;
    let renderer = Arc::new(Renderer::new(&config)?);
    let metrics = Arc::new(Metrics::new().with_store(store.as_ref()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let wake = Arc::new(crate::schedule::Wake::default());
    let shutdown = Shutdown::default();

    let scheduler = Arc::new(Scheduler {
        store: store.clone(),
        channels: channels.clone(),
        renderer,
        delivery: config.delivery.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        wake: wake.clone(),
        limits: crate::schedule::limiters(&config),
        pauses: Default::default(),
        windows: Default::default(),
        at_rest,
        outcomes: crate::schedule::outcomes(store.clone()),
    });
    let worker = tokio::spawn(scheduler.run(shutdown.clone()));
    // Protected changes come due, and the audit log's head is signed.
    let changes = tokio::spawn(crate::changes::run(
        store.clone(),
        config.clone(),
        clock.clone(),
        wake.clone(),
        shutdown.clone(),
    ));

    let planner = crate::ingest::planner(config.clone());
    let state = AppState::new(crate::web::Shared {
        events: crate::ingest::coalesce::Coalescer::start(store.clone(), planner.clone()),
        store,
        planner,
        config: config.clone(),
        channels,
        metrics,
        clock,
        wake,
        limits: Arc::new(crate::web::perimeter::RateLimits::new(&config.server)),
        tokens: Default::default(),
        counts: Default::default(),
    });
    // Token lookups are kept while the store's token epoch holds: a
    // revocation by `kci token revoke` or another node is seen within
    // `TokenCache::TRUST`.
    tokio::spawn(
        state
            .tokens
            .clone()
            .watch(state.store.clone(), shutdown.clone()),
    );
    // Idle rate-limit keys are dropped now and then, so many addresses
    // cannot grow memory without bound.
    let limits = state.limits.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            limits.forget_idle();
        }
    });
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "server.listen: cannot listen on {}: {e}",
                config.server.listen
            )
        })?;
    let tls = match config.server.tls_files().map_err(|e| anyhow::anyhow!(e))? {
        None => None,
        Some(files) => Some(Arc::new(
            crate::web::tls::Tls::load(files).map_err(|e| anyhow::anyhow!(e))?,
        )),
    };
    // The public listener: bound before anything is served, so a port in
    // use stops startup with the setting named.
    let public = match &config.server.public {
        Some(p) => {
            let socket = tokio::net::TcpListener::bind(p.listen).await.map_err(|e| {
                anyhow::anyhow!("server.public.listen: cannot listen on {}: {e}", p.listen)
            })?;
            let tls = match p.tls_files().map_err(|e| anyhow::anyhow!(e))? {
                Some(files) => Some(Arc::new(
                    crate::web::tls::Tls::load(files).map_err(|e| anyhow::anyhow!(e))?,
                )),
                None => None,
            };
            Some((socket, tls))
        }
        None => None,
    };
    let smtp_tls = match &config.keys.smtp_tls {
        Some(t) => Some(crate::inbound::smtp::ListenerTls {
            tls: Arc::new(crate::web::tls::Tls::load(t.files()).map_err(|e| anyhow::anyhow!(e))?),
            required: t.required,
        }),
        None => None,
    };
    #[cfg(unix)]
    {
        // Renewed certificates, read again on SIGHUP.
        let reloadable: Vec<_> = tls
            .iter()
            .cloned()
            .chain(smtp_tls.iter().map(|t| t.tls.clone()))
            .chain(public.iter().filter_map(|(_, t)| t.clone()))
            .collect();
        // Always handled: SIGHUP's default would end the process, and
        // `systemctl reload kci` sends it whether or not TLS is on.
        {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if reloadable.is_empty() {
                        tracing::info!("SIGHUP: no TLS certificate to reload");
                    }
                    for tls in &reloadable {
                        match tls.reload() {
                            Ok(()) => tracing::info!("TLS certificate reloaded"),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "TLS reload failed; the certificate in use stays"
                            ),
                        }
                    }
                }
            });
        }
    }
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "kci is listening");
    eprintln!("kci listening on {scheme}://{addr}");
    if let Some(smtp) = config.keys.smtp_listen {
        let socket = tokio::net::TcpListener::bind(smtp)
            .await
            .map_err(|e| anyhow::anyhow!("keys.smtp_listen: cannot listen on {smtp}: {e}"))?;
        tracing::info!(addr = %smtp, "key submissions by SMTP");
        let inbound = crate::inbound::smtp::Listener {
            store: state.store.clone(),
            config: config.clone(),
            wake: state.wake.clone(),
            metrics: state.metrics.clone(),
            tls: smtp_tls,
        };
        tokio::spawn(inbound.serve(socket, shutdown.clone()));
    }

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.trigger();
    });
    if let Some((socket, tls)) = public {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = socket.local_addr()?;
        tracing::info!(%addr, scheme, "public listener (links, callbacks, WKD)");
        let until = shutdown.clone();
        tokio::spawn(crate::web::serve::serve(
            socket,
            crate::web::public_router(state.clone()),
            crate::web::serve::Limits::from_config(&config.server),
            tls,
            async move { until.wait().await },
        ));
    }
    let until = shutdown.clone();
    crate::web::serve::serve(
        listener,
        crate::web::router(state),
        crate::web::serve::Limits::from_config(&config.server),
        tls,
        async move { until.wait().await },
    )
    .await;
    let _ = worker.await;
    let _ = changes.await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Locks `<db>.lock` so that a second `kci serve` on the same SQLite file
/// refuses to start (other commands, like `kci token create`, may still use
/// the database alongside).
fn lock_exclusively(db: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let path = db.with_extension("lock");
    let file = std::fs::File::create(&path)
        .map_err(|e| anyhow::anyhow!("store.url: cannot create {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!(
                "store.url: another kci serve is already using {}",
                db.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("store.url: cannot lock {}: {e}", path.display())
        }
    }
}
