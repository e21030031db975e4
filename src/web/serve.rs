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
        .layer(axum::middleware::map_response(errors_in_words))
}

/// The longest plain-text error answer read to be put into words.
const MAX_PLAIN_ERROR: usize = 4096;

/// Error answers that axum and tower give in plain text (a query string
/// that does not parse, a body over the limit, a method the path does not
/// take) or with no body (the timeout layer's 408): give them the JSON
/// body every error answer has (DESIGN §3). Pages for people (HTML) and
/// kci's own JSON answers pass as they are.
async fn errors_in_words(resp: Response) -> Response {
    use axum::body::HttpBody as _;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !plain {
        return resp;
    }
    if status == StatusCode::REQUEST_TIMEOUT && resp.body().size_hint().exact() == Some(0) {
        return super::AppError::Timeout.into_response();
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            "the body is larger than this hub takes ([server] max_body_bytes)".to_string(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this path does not take this method".to_string(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        s if s.is_server_error() => (
            "unavailable",
            "kci could not complete this request".to_string(),
        ),
        _ => ("bad_request", text),
    };
    let mut answer = super::error::plain(status, code, message);
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;

    #[derive(serde::Deserialize)]
    struct Q {
        #[allow(dead_code)]
        limit: usize,
    }

    /// axum's and tower's plain-text errors get the JSON body of DESIGN §3;
    /// pages for people and JSON answers pass as they are.
    #[tokio::test]
    async fn every_error_answer_is_json() {
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_connections: 8,
        };
        let router = Router::new()
            .route(
                "/q",
                axum::routing::get(|_: axum::extract::Query<Q>| async { "ok" }),
            )
            .route(
                "/page",
                axum::routing::get(|| async {
                    (StatusCode::NOT_FOUND, axum::response::Html("<p>gone</p>"))
                }),
            )
            .route(
                "/body",
                axum::routing::post(|_: axum::body::Bytes| async { "ok" }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(16));
        let app = with_limits(router, &limits);
        let cases = [
            ("GET", "/q?limit=many", "", 400, Some("bad_request")),
            ("GET", "/q?limit=3", "", 200, None),
            ("POST", "/q", "", 405, Some("method_not_allowed")),
            (
                "POST",
                "/body",
                "0123456789abcdefghij",
                413,
                Some("body_too_large"),
            ),
            ("GET", "/page", "", 404, None),
        ];
        for (method, uri, body, status, code) in cases {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "{method} {uri}");
            let kind = resp.headers().get("content-type").cloned();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            match code {
                Some(code) => {
                    let e: crate::web::error::ErrorBody = serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("{uri}: {e}: {bytes:?}"));
                    assert_eq!(e.error, code, "{uri}");
                    assert!(!e.message.is_empty(), "{uri}");
                }
                None => assert_ne!(
                    kind.as_ref().and_then(|k| k.to_str().ok()),
                    Some("application/json"),
                    "{uri}"
                ),
            }
        }
    }
}
