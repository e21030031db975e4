//! The Web Key Directory for the operator's address (issue 5): mail
//! readers (Thunderbird, GnuPG's `--locate-keys`) fetch the key that signs
//! kci's mail from `/.well-known/openpgpkey/…`, direct and advanced methods.
//! Public and unauthenticated, as the draft requires; the files are built
//! once at startup. The HTTPS front (and the `openpgpkey.` host name for
//! the advanced method) is the reverse proxy's job.

use super::AppState;
use crate::pgp::{OperatorKey, wkd};
use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;

/// The directory's files by path (no query string).
#[derive(Clone, Default)]
pub struct Directory(Arc<HashMap<String, Vec<u8>>>);

impl Directory {
    /// The files for the operator's `address` and `key`.
    pub fn new(key: &OperatorKey, address: &str) -> Directory {
        let files = wkd::files(address, &key.public_bytes()).unwrap_or_default();
        Directory(Arc::new(files.into_iter().collect()))
    }

    /// The answer for `path`.
    pub fn answer(&self, path: &str) -> Response {
        match self.0.get(path) {
            Some(body) => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                ],
                body.clone(),
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

/// The routes for both methods, answering from `dir` (any `?l=` is
/// accepted and ignored: the hash decides).
pub fn routes(dir: Directory) -> Router<AppState> {
    let (d1, d2, d3, d4) = (dir.clone(), dir.clone(), dir.clone(), dir);
    Router::new()
        .route(
            "/.well-known/openpgpkey/hu/{hash}",
            get(move |Path(hash): Path<String>| async move {
                d1.answer(&format!("/.well-known/openpgpkey/hu/{hash}"))
            }),
        )
        .route(
            "/.well-known/openpgpkey/policy",
            get(move || async move { d2.answer("/.well-known/openpgpkey/policy") }),
        )
        .route(
            "/.well-known/openpgpkey/{domain}/hu/{hash}",
            get(
                move |Path((domain, hash)): Path<(String, String)>| async move {
                    d3.answer(&format!("/.well-known/openpgpkey/{domain}/hu/{hash}"))
                },
            ),
        )
        .route(
            "/.well-known/openpgpkey/{domain}/policy",
            get(move |Path(domain): Path<String>| async move {
                d4.answer(&format!("/.well-known/openpgpkey/{domain}/policy"))
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequoia_openpgp::Cert;
    use sequoia_openpgp::parse::Parse;

    #[tokio::test]
    async fn serves_the_operator_key_by_both_methods() {
        let (key, _) = OperatorKey::generate("NOC <Noc@ISP.example>", None).unwrap();
        let dir = Directory::new(&key, "Noc@ISP.example");
        let h = wkd::hash("noc");
        for path in [
            format!("/.well-known/openpgpkey/hu/{h}"),
            format!("/.well-known/openpgpkey/isp.example/hu/{h}"),
        ] {
            let r = dir.answer(&path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            let cert = Cert::from_bytes(&body).unwrap();
            assert_eq!(cert.fingerprint().to_hex(), key.fingerprint());
            assert!(!cert.is_tsk());
        }
        assert_eq!(
            dir.answer("/.well-known/openpgpkey/policy").status(),
            StatusCode::OK
        );
        assert_eq!(
            dir.answer(&format!(
                "/.well-known/openpgpkey/hu/{}",
                wkd::hash("other")
            ))
            .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            dir.answer(&format!("/.well-known/openpgpkey/other.example/hu/{h}"))
                .status(),
            StatusCode::NOT_FOUND
        );
    }
}
