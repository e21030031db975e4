//! For channel tests: a local HTTP server standing in for a provider,
//! recording every request exactly (method, path, headers, body) and
//! answering with the provider's documented status and body; and a
//! builder for the message to deliver.

use super::Outgoing;
use crate::model::{Priority, State};
use crate::render::Rendered;
use crate::store::Notification;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

pub struct Provider {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Provider {
    /// Answers every request with `status` and `body` (JSON if it looks so).
    pub async fn start(status: u16, answer: &'static str) -> Provider {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                seen.lock().unwrap().push(Request {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                });
                let kind = if answer.starts_with('{') {
                    "application/json"
                } else {
                    "text/plain"
                };
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("content-type", kind)],
                    answer,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider { url, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn only_request(&self) -> Request {
        let r = self.requests();
        assert_eq!(r.len(), 1, "{r:?}");
        r[0].clone()
    }
}

/// A notice to `uri` with these texts, as the scheduler would hand it over.
pub fn outgoing(uri: &str, short: &str, subject: &str) -> Outgoing {
    let dest: crate::model::DestinationUri = uri.parse().expect("a valid URI");
    let now = chrono::Utc::now();
    Outgoing {
        notification: Notification {
            id: "01a20000-0000-7000-8000-000000000001".into(),
            event: Some("e1".into()),
            account: "A1".into(),
            contact: "alice".into(),
            destination: "d1".into(),
            uri: uri.into(),
            channel: dest.channel(),
            type_name: "line.down".into(),
            key: "L1".into(),
            priority: Priority::Normal,
            state: State::Sending,
            reason: None,
            detail: None,
            due_at: now,
            expires_at: None,
            decided_at: now,
            sent_at: None,
            attempts: 1,
            timezone: "UTC".into(),
            message: None,
            digest: None,
            paired_from: None,
            provider_ref: None,
            receipt: None,
            segments: None,
        },
        event: None,
        rendered: Rendered {
            short: Some(short.into()),
            subject: subject.into(),
            body: short.into(),
        },
        secrets: Vec::new(),
        channel_secret: true,
        recipient_key: None,
    }
}
