//! For channel tests: a local HTTP server standing in for a provider,
//! recording every request exactly (method, path, headers, body) and
//! answering with the provider's documented status and body; and a
//! builder for the message to deliver.

use super::Outgoing;
use crate::model::Notification;
use crate::model::{Priority, State};
use crate::text::Rendered;
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

/// How a stand-in provider answers every request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The same answer with one more header (`Retry-After`, say).
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

pub struct Provider {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Provider {
    /// Answers every request with `status` and `body` (JSON if it looks so).
    pub async fn start(status: u16, answer: &str) -> Provider {
        Provider::answering(Answer::new(status, answer)).await
    }

    /// Answers every request with `answer`.
    pub async fn answering(answer: Answer) -> Provider {
        Provider::serve(Some(answer)).await
    }

    /// Takes every request in and never answers: a provider that hangs.
    pub async fn hanging() -> Provider {
        Provider::serve(None).await
    }

    async fn serve(answer: Option<Answer>) -> Provider {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (seen, answer) = (seen.clone(), answer.clone());
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
                let Some(answer) = answer else {
                    return std::future::pending().await;
                };
                let kind = if answer.body.starts_with('{') {
                    "application/json"
                } else {
                    "text/plain"
                };
                let mut resp = axum::response::Response::new(axum::body::Body::from(answer.body));
                *resp.status_mut() = axum::http::StatusCode::from_u16(answer.status).unwrap();
                let headers = resp.headers_mut();
                headers.insert("content-type", kind.parse().unwrap());
                for (k, v) in &answer.headers {
                    headers.insert(
                        axum::http::HeaderName::try_from(k.as_str()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                resp
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

/// The address of a port nobody listens on: connecting is refused.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A notice to `uri` with these texts, as the scheduler would hand it over.
pub fn outgoing(uri: &str, short: &str, subject: &str) -> Outgoing {
    let dest: crate::model::DestinationUri = uri.parse().expect("a valid URI");
    let now = chrono::Utc::now();
    let channel = dest.channel();
    Outgoing {
        notification: Notification {
            id: "01a20000-0000-7000-8000-000000000001".into(),
            event: Some("e1".into()),
            account: "A1".into(),
            contact: "alice".into(),
            destination: "d1".into(),
            uri: uri.into(),
            channel,
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
            paced: 0,
            timezone: "UTC".into(),
            message: None,
            digest: None,
            paired_from: None,
            provider_ref: None,
            receipt: None,
            segments: None,
            secret: None,
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
        postal_address: (dest == crate::model::DestinationUri::Postal).then(postal_address),
    }
}

/// The postal address the letters of [`outgoing`] go to.
pub fn postal_address() -> crate::model::PostalAddress {
    crate::model::PostalAddress::parse(crate::model::PostalInput {
        name: "Jörg Müller".into(),
        lines: vec!["Hauptstraße 5".into()],
        postcode: "10115".into(),
        town: "Berlin".into(),
        country: "DE".into(),
    })
    .expect("a valid address")
}
