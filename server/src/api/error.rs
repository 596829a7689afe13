//! REST API errors: a name a program can match on, an HTTP status, and a
//! message a person can act on.
//!
//! Every error answer has the body `{"error":"<Name>","message":"<text>"}`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::metrics::RegistrationResult;

/// Everything the REST API can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The path segment is not a UUID.
    #[error("{0:?} is not a UUID; use the canonical 8-4-4-4-12 hex form")]
    InvalidClientId(String),
    /// A different key is registered for the UUID.
    #[error(
        "this client id is already registered with a different key; to change it, POST the new key signed with the old one, or pick a new UUID"
    )]
    ClientAlreadyRegistered,
    /// The UUID is not registered.
    #[error("this client id is not registered; register it first with PUT")]
    ClientDoesNotExist,
    /// The body is not `{"key":"…"}`.
    #[error(
        "the body must be exactly {{\"key\":\"<base64 of the 32-byte ed25519 public key>\"}} ({0})"
    )]
    InvalidBody(String),
    /// The key is not a usable ed25519 public key.
    #[error(
        "the key must be the standard base64 (with padding) of a 32-byte ed25519 public key ({0})"
    )]
    InvalidPublicKey(String),
    /// The signature header is missing, malformed or does not verify.
    #[error("{0}")]
    InvalidSignature(String),
    /// The body exceeds the size limit.
    #[error("the request body is larger than {0} bytes; send only {{\"key\":\"…\"}}")]
    PayloadTooLarge(usize),
    /// Registration is closed to clients.
    #[error(
        "this server does not accept registrations; ask its administrator to add your identity (chatr-server identity add <uuid> <key>)"
    )]
    RegistrationClosed,
    /// The registration token is missing, unknown or used.
    #[error("{0}")]
    InvalidToken(String),
    /// The key changed while rotating.
    #[error(
        "the key of this client changed while rotating; GET the current key, sign with it and retry"
    )]
    KeyChanged,
    /// Too many requests from this address.
    #[error("too many requests from your address; retry after {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// No such route.
    #[error(
        "no such endpoint; the API is PUT/POST/GET /api/1/clients/{{uuid}}, GET /certificate, /healthz, /metrics"
    )]
    NotFound,
    /// The route exists but not with this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The server is shutting down.
    #[error("the server is shutting down; retry in a moment")]
    ShuttingDown,
    /// An HTTP/1.1 request without exactly one `Host` header (RFC 9112 §3.2).
    #[error("an HTTP/1.1 request must carry exactly one Host header")]
    MissingHost,
    /// This connection was evicted (idle while every slot was taken) as its
    /// request completed; the connection is being closed.
    #[error("the server has too many connections; retry on a new connection")]
    Busy,
    /// The request body did not arrive in time.
    #[error(
        "the request body did not arrive within {} s; send the whole request at once",
        .0.as_secs_f64()
    )]
    RequestTimeout(Duration),
    /// Storage failure: nothing was changed.
    #[error("internal error; nothing was stored, retry later")]
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    /// The machine-readable name in the `error` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::InvalidClientId(_) => "InvalidClientId",
            Self::ClientAlreadyRegistered => "ClientAlreadyRegistered",
            Self::ClientDoesNotExist => "ClientDoesNotExist",
            Self::InvalidBody(_) => "InvalidBody",
            Self::InvalidPublicKey(_) => "InvalidPublicKey",
            Self::InvalidSignature(_) => "InvalidSignature",
            Self::PayloadTooLarge(_) => "PayloadTooLarge",
            Self::RegistrationClosed => "RegistrationClosed",
            Self::InvalidToken(_) => "InvalidToken",
            Self::KeyChanged => "KeyChanged",
            Self::RateLimited(_) => "RateLimited",
            Self::NotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::ShuttingDown => "ShuttingDown",
            Self::MissingHost => "MissingHost",
            Self::Busy => "Busy",
            Self::RequestTimeout(_) => "RequestTimeout",
            Self::Internal => "InternalError",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidClientId(_)
            | Self::InvalidBody(_)
            | Self::InvalidPublicKey(_)
            | Self::MissingHost => StatusCode::BAD_REQUEST,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidSignature(_) | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::RegistrationClosed => StatusCode::FORBIDDEN,
            Self::ClientDoesNotExist | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientAlreadyRegistered | Self::KeyChanged => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How this error counts in `chatr_registrations_total`.
    pub(crate) fn registration_result(&self) -> RegistrationResult {
        match self {
            Self::ClientAlreadyRegistered | Self::KeyChanged => {
                RegistrationResult::AlreadyRegistered
            }
            Self::ClientDoesNotExist => RegistrationResult::DoesNotExist,
            Self::InvalidSignature(_) => RegistrationResult::InvalidSignature,
            Self::InvalidToken(_) => RegistrationResult::InvalidToken,
            Self::RegistrationClosed => RegistrationResult::Closed,
            Self::RateLimited(_) => RegistrationResult::RateLimited,
            Self::ShuttingDown | Self::Busy | Self::Internal => RegistrationResult::Error,
            Self::InvalidClientId(_)
            | Self::InvalidBody(_)
            | Self::InvalidPublicKey(_)
            | Self::PayloadTooLarge(_)
            | Self::MissingHost
            | Self::RequestTimeout(_)
            | Self::NotFound
            | Self::MethodNotAllowed => RegistrationResult::InvalidRequest,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.name(),
            message: self.to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Self::RateLimited(retry) = self {
            let secs = retry.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
