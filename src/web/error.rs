//! The one error type of the web layer. Every error answer has the JSON body
//! of DESIGN.md §3, `{"error": code, "message": sentence}`; 5xx bodies stay
//! generic and the detail goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The body of every error answer (DESIGN.md §3).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"error": "invalid_field", "message": "account: is required"})))]
pub struct ErrorBody {
    /// A stable code to act on (`invalid_field`, `not_found`, …).
    pub error: String,
    /// A sentence for a person, naming what is wrong.
    pub message: String,
}

#[derive(Debug)]
pub enum AppError {
    /// 400: the body is not what the endpoint reads at all.
    BadRequest {
        code: &'static str,
        message: String,
    },
    /// 422: well-formed, but a field is wrong; the message names it.
    Invalid {
        code: &'static str,
        message: String,
    },
    /// 401: no token, or one kci does not know.
    Unauthenticated,
    /// 401: credentials sent in the body (a staff login, an enrolment)
    /// that do not check out; the message does not say which part.
    Refused {
        code: &'static str,
        message: String,
    },
    /// 403: the token lacks the scope.
    Forbidden {
        scope: crate::model::Scope,
    },
    /// 403: only a person may do this, and the token is not a staff
    /// member's.
    StaffOnly,
    NotFound {
        what: String,
    },
    /// 403: a provider callback whose signature does not check out.
    BadSignature {
        header: &'static str,
    },
    /// 409: the request does not fit the resource's state.
    Conflict {
        code: &'static str,
        message: String,
    },
    /// 413: more than one request may carry.
    TooLarge {
        code: &'static str,
        message: String,
    },
    /// 429: over a limit on what a caller can make kci do.
    TooMany {
        code: &'static str,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// 403: the client's network may not use this listener.
    NetworkRefused,
    /// 408: the request took longer than `[server] request_timeout`.
    Timeout,
    /// 500/503: kci's own trouble; detail is logged, not answered.
    Internal(String),
}

/// The longest message an error answer carries: some quote what was sent
/// (a JSON parser's words), and an answer is never larger than a line.
const MAX_MESSAGE: usize = 300;

impl AppError {
    pub fn invalid(code: &'static str, field: &str, msg: impl std::fmt::Display) -> Self {
        AppError::Invalid {
            code,
            message: format!("{field}: {msg}"),
        }
    }

    /// 429 for a caller over a limit until `retry_at`: `what` and when
    /// to try again, in the message and in `Retry-After`.
    pub fn limited_until(
        code: &'static str,
        what: impl std::fmt::Display,
        retry_at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        AppError::TooMany {
            code,
            message: format!(
                "{what}; try again after {}",
                crate::model::fmt_time(retry_at)
            ),
            retry_after: (retry_at - now).to_std().ok(),
        }
    }
}

impl From<crate::directory::Invalid> for AppError {
    fn from(e: crate::directory::Invalid) -> Self {
        AppError::invalid(e.code, &e.field, e.message)
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            AppError::TooMany { retry_after, .. } => *retry_after,
            _ => None,
        };
        let (status, code, message) = match self {
            AppError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            AppError::Invalid { code, message } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            AppError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send a valid token as `Authorization: Bearer <token>`".to_string(),
            ),
            AppError::Refused { code, message } => (StatusCode::UNAUTHORIZED, code, message),
            AppError::Forbidden { scope } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this token lacks the `{scope}` scope"),
            ),
            AppError::StaffOnly => (
                StatusCode::FORBIDDEN,
                "staff_only",
                "only a staff member may do this: log in (`POST /v1/staff/login`) or use a token made with `kci token create --staff NAME`".to_string(),
            ),
            AppError::NotFound { what } => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} does not exist"),
            ),
            AppError::BadSignature { header } => (
                StatusCode::FORBIDDEN,
                "bad_signature",
                format!("`{header}` is missing or does not match this request"),
            ),
            AppError::Conflict { code, message } => (StatusCode::CONFLICT, code, message),
            AppError::TooLarge { code, message } => (StatusCode::PAYLOAD_TOO_LARGE, code, message),
            AppError::TooMany { code, message, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, code, message)
            }
            AppError::NetworkRefused => (
                StatusCode::FORBIDDEN,
                "network_refused",
                "this address may not use this listener ([server] allow)".to_string(),
            ),
            AppError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request took longer than this hub allows ([server] request_timeout); it may or may not have taken effect: check before sending it again".to_string(),
            ),
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "kci could not complete this request; nothing was changed, try again"
                        .to_string(),
                )
            }
        };
        let message = crate::model::excerpt(&message, MAX_MESSAGE);
        let body = ErrorBody {
            error: code.to_string(),
            message,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(after) = retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// An error answer with `status`, `code` and `message` (shortened), for
/// answers that do not come from an [`AppError`].
pub fn plain(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: code.to_string(),
        message: crate::model::excerpt(&message, MAX_MESSAGE),
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_answers_are_short_and_say_when_to_come_back() {
        let long = "x".repeat(100_000);
        let resp = AppError::invalid("invalid_field", "body", &long).into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(body.len() < MAX_MESSAGE + 100, "{}", body.len());
        let resp = AppError::TooMany {
            code: "rate_limited",
            message: "later".into(),
            retry_after: Some(std::time::Duration::from_millis(1500)),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2");
    }
}
