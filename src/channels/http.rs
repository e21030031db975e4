//! What HTTP-based channels share: one client per channel with a timeout,
//! and one reading of a provider's answer — 2xx delivered; 429, 408 and
//! 5xx worth retrying (honouring `Retry-After`); other 4xx refused for
//! good — so every HTTP channel retries the same way. Whatever a provider
//! answers, kci reads at most [`MAX_ANSWER`] bytes of it.

use super::DeliveryError;
use std::time::Duration;

/// The most of a provider's answer kci reads; the rest is left unread
/// (a receiver answering 50 MB costs kci 64 KiB).
pub const MAX_ANSWER: usize = 64 * 1024;

/// A client for one provider: the timeout, no redirects (a redirect to
/// somewhere else would carry credentials there), kci's user agent.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    builder(timeout).build()
}

/// The settings of [`client`], for a channel that adds its own (the
/// webhook channel's resolver).
pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kci/", env!("CARGO_PKG_VERSION")))
}

/// The body of a provider's answer, at most `limit` bytes of it, read
/// chunk by chunk; the rest is never read. A body that breaks off gives
/// what came before.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The body of a provider's answer as text (lossy), at most
/// [`MAX_ANSWER`] bytes of it.
pub async fn text(resp: reqwest::Response) -> String {
    let body = read_capped(resp, MAX_ANSWER).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// A request that got no answer: always worth retrying. The URL is left
/// out of the words: for some providers it carries the credential.
pub fn unanswered(e: &reqwest::Error) -> DeliveryError {
    let reason = if e.is_timeout() { "timeout" } else { "connect" };
    let mut words = e.to_string();
    if let Some(url) = e.url() {
        words = words.replace(url.as_str(), "(provider)");
    }
    DeliveryError::Transient {
        reason,
        detail: words,
        retry_after: None,
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// The provider's JSON error body inside a failure from [`answer`], with
/// the `HTTP nnn` it came with, to put the provider's words in its place.
pub fn error_body<T: serde::de::DeserializeOwned>(e: &DeliveryError) -> Option<(String, T)> {
    let raw = e.detail();
    let (status, body) = raw.split_at(raw.find('{')?);
    Some((status.trim().to_string(), serde_json::from_str(body).ok()?))
}

/// Reads a provider's answer: status and body on success, else the
/// classified failure with the provider's words (`HTTP 403 …`).
pub async fn answer(resp: reqwest::Response) -> Result<(u16, String), DeliveryError> {
    let status = resp.status();
    let after = retry_after(resp.headers());
    let text = text(resp).await;
    if status.is_success() {
        return Ok((status.as_u16(), text));
    }
    // The provider's words, not a whole page of them.
    let words: String = text.trim().chars().take(500).collect();
    let detail = format!("HTTP {} {words}", status.as_u16())
        .trim()
        .to_string();
    if status.as_u16() == 429 {
        Err(DeliveryError::Transient {
            reason: "rate_limited",
            detail,
            retry_after: after,
        })
    } else if status.as_u16() == 408 || status.is_server_error() {
        Err(DeliveryError::Transient {
            reason: "http_status",
            detail,
            retry_after: after,
        })
    } else {
        Err(DeliveryError::Permanent {
            reason: "http_status",
            detail,
        })
    }
}

/// Whether `signature` is `sha256=` and the hex HMAC-SHA256 of `body`
/// keyed with `secret` (the shape of WhatsApp's `X-Hub-Signature-256` and
/// of the SMS gateway's `X-Kci-Signature`), compared in constant time.
pub fn valid_sha256_signature(secret: &str, body: &[u8], signature: &str) -> bool {
    use hmac::Mac;
    use subtle::ConstantTimeEq;
    let Some(hex) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    let expected = crate::model::hex(&mac.finalize().into_bytes());
    bool::from(
        expected
            .as_bytes()
            .ct_eq(hex.to_ascii_lowercase().as_bytes()),
    )
}
