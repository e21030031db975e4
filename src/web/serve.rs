//! Serving the router: kci's own accept loop on hyper, so that no client
//! can hold the server by being slow. A request's headers must arrive
//! within `[server] header_timeout` (hyper's own timer, which also closes
//! a kept-alive connection idle that long), its body may not stall for
//! longer than `body_timeout`, the whole request may not take longer than
//! `request_timeout` (tower-http's layers; 408 with the usual JSON body),
//! and at most `max_connections` are open at once — one over that is
//! closed as soon as it is accepted. Graceful shutdown lets requests in
//! flight finish. (TLS, when it comes, wraps the stream here.)

use crate::config::ServerConfig;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// What a client may take of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(c: &ServerConfig) -> Limits {
        Limits {
            header_timeout: c.header_timeout.0,
            body_timeout: c.body_timeout.0,
            request_timeout: c.request_timeout.0,
            max_connections: c.max_connections,
        }
    }
}

/// `router` with the per-request limits: a body that stalls fails, a
/// request that takes too long is answered 408.
pub fn with_limits(router: Router, limits: &Limits) -> Router {
    router
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(timeout_in_words))
}

/// The timeout layer answers 408 with no body: give it the JSON one every
/// error answer has (DESIGN §3).
async fn timeout_in_words(resp: Response) -> Response {
    use axum::body::HttpBody as _;
    if resp.status() == StatusCode::REQUEST_TIMEOUT && resp.body().size_hint().exact() == Some(0) {
        return super::AppError::Timeout.into_response();
    }
    resp
}

/// Serves `router` on `listener` within `limits` — over TLS when `tls` is
/// given — until `shutdown` completes; then stops accepting and waits for
/// the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<super::tls::Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let app = with_limits(router, &limits);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: give the connections open
                // a moment to finish rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection closed: [server] max_connections are open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, http, watcher) = (app.clone(), http.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(stream, peer, None, app, &http, watcher).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let cert = super::tls::client_cert(tls.get_ref().1);
                            serve_connection(tls, peer, cert, app, &http, watcher).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection's requests, each knowing the peer (the audit log
/// records who asked) and the client certificate it presented.
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    cert: Option<super::tls::ClientCert>,
    app: Router,
    http: &hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let with_peer = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        req
    });
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(with_peer));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}
