//! The server's one error type and the one place that maps it to an HTTP status and the OpenAI
//! error body `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error's HTTP status, OpenAI `type`, `param` and `code`.
type Parts = (
    StatusCode,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("the model `{model}` does not exist; available: {available}")]
    UnknownModel { model: String, available: String },
    #[error(
        "this conversation has about {tokens} input tokens; the limit is {limit} \
         (server.max_input_tokens)"
    )]
    ContextLength { tokens: usize, limit: usize },
    #[error("{0}")]
    NotConfigured(String),
    #[error("{message}")]
    UpstreamFailed {
        status: StatusCode,
        message: String,
        retry_after: Option<HeaderValue>,
    },
    #[error("routing failed: {0}")]
    Router(String),
    #[error("no request with id `{0}` is remembered (it is unknown or too old)")]
    UnknownRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("reload rejected: {0}")]
    Reload(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the request body did not arrive within {ms} ms (server.body_read_timeout_ms)")]
    BodyTimeout { ms: u64 },
    #[error("{message}")]
    RateLimited {
        message: String,
        info: crate::tenancy::rate_limit::RateInfo,
    },
    #[error("{0}")]
    InsufficientQuota(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the spend ledger failed: {0}")]
    Ledger(#[from] crate::store::ledger::LedgerError),
    /// The shared store cannot be reached: retry, another replica may answer.
    #[error("{0}")]
    StoreUnavailable(String),
    /// A sheddable request while every endpoint of every model it could go to is saturated.
    #[error("{0}")]
    Overloaded(String),
}

impl From<crate::store::error::StoreError> for ApiError {
    fn from(e: crate::store::error::StoreError) -> Self {
        use crate::store::error::StoreError;
        match e {
            StoreError::Unavailable(m) => Self::StoreUnavailable(format!(
                "the gateway's shared store is unavailable ({m}); retry shortly"
            )),
            StoreError::Ledger(e) => Self::Ledger(e),
            StoreError::NoLedger(m) => Self::NotConfigured(m.to_owned()),
            StoreError::Conflict(m) => Self::invalid(m, Some("name")),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// The OpenAI error object.
#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    /// The 503 for a sheddable request that none of `models`' endpoints can take now.
    pub fn overloaded<'a>(models: impl Iterator<Item = &'a str>) -> Self {
        let models: Vec<&str> = models.collect();
        Self::Overloaded(format!(
            "every endpoint of the models this request may go to ({}) is saturated and the \
             request is sheddable; retry shortly",
            models.join(", ")
        ))
    }

    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    /// HTTP status, OpenAI `type`, `param` and `code`.
    fn parts(&self) -> Parts {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                None,
                Some("request_too_large"),
            ),
            Self::BodyRead(_) => (StatusCode::BAD_REQUEST, INVALID, None, None),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, INVALID, None, Some("invalid_json")),
            Self::InvalidRequest { param, .. } => (StatusCode::BAD_REQUEST, INVALID, *param, None),
            Self::UnknownModel { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("model"),
                Some("model_not_found"),
            ),
            Self::ContextLength { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("messages"),
                Some("context_length_exceeded"),
            ),
            Self::NotConfigured(_) => server(StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            Self::UpstreamFailed { status, .. } => upstream_parts(*status),
            Self::Router(_) => server(StatusCode::INTERNAL_SERVER_ERROR, "router_error"),
            Self::UnknownRequest(_) => (
                StatusCode::NOT_FOUND,
                INVALID,
                Some("request_id"),
                Some("request_not_found"),
            ),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                None,
                Some("invalid_api_key"),
            ),
            Self::Reload(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                INVALID,
                None,
                Some("reload_rejected"),
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, INVALID, None, Some("not_found")),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                None,
                Some("method_not_allowed"),
            ),
            Self::BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                None,
                Some("request_timeout"),
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::InsufficientQuota(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
            Self::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                INVALID,
                Some("model"),
                Some("model_not_allowed"),
            ),
            Self::Ledger(_) => server(StatusCode::INTERNAL_SERVER_ERROR, "ledger_error"),
            Self::StoreUnavailable(_) => {
                server(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            Self::Overloaded(_) => server(StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

/// A `server_error` with `code`.
fn server(status: StatusCode, code: &'static str) -> Parts {
    (status, "server_error", None, Some(code))
}

/// Status, type, param and code of an upstream failure: 429 stays a rate limit, a timeout is
/// `upstream_timeout`, the rest `upstream_error`.
fn upstream_parts(status: StatusCode) -> Parts {
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
        StatusCode::GATEWAY_TIMEOUT => "upstream_timeout",
        _ => "upstream_error",
    };
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        "requests"
    } else {
        "server_error"
    };
    (status, kind, None, Some(code))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, param, code) = self.parts();
        let retry_after = match &self {
            Self::UpstreamFailed { retry_after, .. } => retry_after.clone(),
            Self::RateLimited { info, .. } => info.retry_after.and_then(|d| {
                HeaderValue::from_str(&d.as_secs_f64().ceil().max(1.0).to_string()).ok()
            }),
            Self::StoreUnavailable(_) | Self::Overloaded(_) => Some(HeaderValue::from_static("1")),
            _ => None,
        };
        let rate = match &self {
            Self::RateLimited { info, .. } => Some(info.clone()),
            _ => None,
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    message: self.to_string(),
                    kind,
                    param,
                    code,
                },
            }),
        )
            .into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert("retry-after", value);
        }
        if let Some(info) = rate {
            rate_headers(response.headers_mut(), &info);
        }
        response
    }
}

/// `x-ratelimit-*` headers (OpenAI's names).
pub fn rate_headers(
    headers: &mut axum::http::HeaderMap,
    info: &crate::tenancy::rate_limit::RateInfo,
) {
    let mut set = |name: &'static str, value: Option<String>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, v);
        }
    };
    let reset = info.retry_after.map(|d| format!("{:.3}s", d.as_secs_f64()));
    set(
        "x-ratelimit-limit-requests",
        info.limit_requests.map(|v| v.to_string()),
    );
    set(
        "x-ratelimit-remaining-requests",
        info.remaining_requests.map(|v| v.to_string()),
    );
    set(
        "x-ratelimit-limit-tokens",
        info.limit_tokens.map(|v| v.to_string()),
    );
    set(
        "x-ratelimit-remaining-tokens",
        info.remaining_tokens.map(|v| v.to_string()),
    );
    set(
        "x-ratelimit-reset-requests",
        reset.clone().filter(|_| info.limit_requests.is_some()),
    );
    set(
        "x-ratelimit-reset-tokens",
        reset.filter(|_| info.limit_tokens.is_some()),
    );
}

/// An SSE event carrying an OpenAI error object: how a stream that broke after its first byte
/// ends (never as a clean end without `[DONE]`).
pub fn sse_error_event(message: &str, code: &str) -> bytes::Bytes {
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.to_owned(),
            kind: "server_error",
            param: None,
            code: Some(code),
        },
    };
    let json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
    bytes::Bytes::from(format!("data: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_openai_shape() {
        let errors = [
            ApiError::BodyTooLarge { limit: 10 },
            ApiError::invalid("messages is missing", Some("messages")),
            ApiError::UnknownModel {
                model: "x".into(),
                available: "a, b".into(),
            },
            ApiError::ContextLength {
                tokens: 10,
                limit: 5,
            },
            ApiError::NotConfigured("set X".into()),
            ApiError::Unauthorized("bad key".into()),
        ];
        let statuses: Vec<u16> = errors.iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(statuses, [413, 400, 400, 400, 503, 401]);
        for e in errors {
            let (_, kind, param, code) = e.parts();
            let body = serde_json::to_value(ErrorBody {
                error: ErrorDetail {
                    message: e.to_string(),
                    kind,
                    param,
                    code,
                },
            })
            .unwrap();
            let obj = body["error"].as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["code", "message", "param", "type"]);
        }
    }

    #[test]
    fn the_sse_error_event_is_one_data_line() {
        let event = sse_error_event("cut", "upstream_stream_interrupted");
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("data: {\"error\""));
        assert!(text.ends_with("\n\n"));
    }
}
