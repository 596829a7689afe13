//! `/api/1/clients/{uuid}`: register (PUT), rotate (POST) and look up (GET)
//! a client's ed25519 public key.
//!
//! The body is `{"key":"<base64>"}` and the header `Chatr-PublicKey-Signature`
//! carries the base64 ed25519 signature over the **exact body bytes**: the
//! server verifies the bytes it received, never a re-serialization, so any
//! change to the body (even whitespace) invalidates the signature.
//!
//! * PUT: signed by the key being registered (proof of possession).
//!   201 when stored, 200 when the same key was already registered.
//! * POST: the body holds the new key, signed by the **current** (old) key.
//! * GET: `{"clientId":"…","publicKey":"…"}`.
//!
//! Every 2xx of PUT/POST is sent only after the registry committed the change
//! durably.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use uuid::Uuid;

use super::ApiState;
use super::error::ApiError;
use crate::config::RegistrationPolicy;
use crate::metrics::RegistrationResult;
use crate::registry::{RegisterOutcome, RegistryError, TokenHash, UpdateOutcome};

/// Header carrying the base64 signature over the body.
pub const SIGNATURE_HEADER: &str = "chatr-publickey-signature";
/// Header carrying a registration token (policy `token`).
pub const TOKEN_HEADER: &str = "chatr-registration-token";

/// The answer of GET, PUT and POST.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientView {
    client_id: String,
    public_key: String,
}

impl ClientView {
    fn new(uuid: Uuid, key: &VerifyingKey) -> Self {
        Self {
            client_id: uuid.hyphenated().to_string(),
            public_key: STANDARD.encode(key.as_bytes()),
        }
    }
}

type Answer = Result<(StatusCode, Json<ClientView>), ApiError>;

/// `PUT /api/1/clients/{uuid}`: register.
pub(crate) async fn register(
    State(state): State<Arc<ApiState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let result = register_inner(&state, &raw, &headers, body).await;
    record(&state, &result, |status| {
        if status == StatusCode::CREATED {
            RegistrationResult::Created
        } else {
            RegistrationResult::Unchanged
        }
    });
    result
}

async fn register_inner(
    state: &ApiState,
    raw: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    if state.policy == RegistrationPolicy::Closed {
        return Err(ApiError::RegistrationClosed);
    }
    let uuid = parse_uuid(raw)?;
    let body = read_body(body, state.body_limit)?;
    let key = parse_key_body(&body)?;
    verify(headers, &body, &key)?;
    let token = match state.policy {
        RegistrationPolicy::Token => Some(token_from(headers)?),
        _ => None,
    };
    match state.registry.register(uuid, key, token).await {
        Ok(RegisterOutcome::Created) => {
            tracing::info!(%uuid, "identity registered");
            Ok((StatusCode::CREATED, Json(ClientView::new(uuid, &key))))
        }
        Ok(RegisterOutcome::Unchanged) => Ok((StatusCode::OK, Json(ClientView::new(uuid, &key)))),
        Err(err) => Err(from_registry(err)),
    }
}

/// `POST /api/1/clients/{uuid}`: rotate to the key in the body, signed by the old key.
pub(crate) async fn rotate(
    State(state): State<Arc<ApiState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let result = rotate_inner(&state, &raw, &headers, body).await;
    record(&state, &result, |_| RegistrationResult::Rotated);
    result
}

async fn rotate_inner(
    state: &ApiState,
    raw: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let uuid = parse_uuid(raw)?;
    let body = read_body(body, state.body_limit)?;
    let new = parse_key_body(&body)?;
    let old = state
        .registry
        .lookup(&uuid)
        .ok_or(ApiError::ClientDoesNotExist)?;
    verify(headers, &body, &old)?;
    match state.registry.rotate(uuid, old, new).await {
        Ok(UpdateOutcome::Replaced) => {
            tracing::info!(%uuid, "identity key rotated");
            Ok((StatusCode::OK, Json(ClientView::new(uuid, &new))))
        }
        Ok(UpdateOutcome::Unchanged | UpdateOutcome::Created) => {
            Ok((StatusCode::OK, Json(ClientView::new(uuid, &new))))
        }
        Err(err) => Err(from_registry(err)),
    }
}

/// `GET /api/1/clients/{uuid}`.
pub(crate) async fn get(
    State(state): State<Arc<ApiState>>,
    Path(raw): Path<String>,
) -> Result<Json<ClientView>, ApiError> {
    let uuid = parse_uuid(&raw)?;
    let key = state
        .registry
        .lookup(&uuid)
        .ok_or(ApiError::ClientDoesNotExist)?;
    Ok(Json(ClientView::new(uuid, &key)))
}

fn record(state: &ApiState, result: &Answer, ok: impl Fn(StatusCode) -> RegistrationResult) {
    let counted = match result {
        Ok((status, _)) => ok(*status),
        Err(err) => err.registration_result(),
    };
    state.metrics.registration(counted);
}

fn parse_uuid(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::InvalidClientId(truncate(raw)))
}

fn truncate(raw: &str) -> String {
    raw.chars().take(64).collect()
}

fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    match body {
        Ok(bytes) => Ok(bytes),
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(other) => Err(ApiError::InvalidBody(other.body_text())),
    }
}

/// Parses `{"key":"…"}` and the ed25519 key in it.
/// Only a JSON object with exactly one member, `key`, a string, is accepted:
/// serde would also take `["…"]` for a one-field struct, and a map would keep
/// the last of two `key` members, so the object is walked member by member.
fn parse_key_body(body: &[u8]) -> Result<VerifyingKey, ApiError> {
    let KeyBody(key) =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    parse_key(&key)
}

/// The one member of a key body.
struct KeyBody(String);

impl<'de> serde::Deserialize<'de> for KeyBody {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(KeyBodyVisitor)
    }
}

struct KeyBodyVisitor;

impl<'de> serde::de::Visitor<'de> for KeyBodyVisitor {
    type Value = KeyBody;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object with the single member \"key\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeyBody, A::Error> {
        use serde::de::Error as _;
        let mut key: Option<String> = None;
        let mut members = 0usize;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            members += 1;
            if name != "key" {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            if key.is_some() {
                return Err(A::Error::custom("duplicate member key"));
            }
            let value: serde_json::Value = map.next_value()?;
            match value {
                serde_json::Value::String(text) => key = Some(text),
                _ => return Err(A::Error::custom("key must be a string")),
            }
        }
        match (key, members) {
            (Some(key), 1) => Ok(KeyBody(key)),
            (None, _) => Err(A::Error::custom("missing member key")),
            (Some(_), n) => Err(A::Error::custom(format!("{n} members instead of one"))),
        }
    }
}

/// Parses the base64 of a 32-byte ed25519 public key; refuses small-order keys.
pub(crate) fn parse_key(text: &str) -> Result<VerifyingKey, ApiError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| ApiError::InvalidPublicKey(format!("not base64: {e}")))?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::InvalidPublicKey(format!("{} bytes instead of 32", bytes.len())))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| ApiError::InvalidPublicKey("not a point on the curve".into()))?;
    if key.is_weak() {
        return Err(ApiError::InvalidPublicKey(
            "a weak (small-order) key that anyone could sign for".into(),
        ));
    }
    Ok(key)
}

/// Checks the signature header over the exact body bytes with `key`.
fn verify(headers: &HeaderMap, body: &[u8], key: &VerifyingKey) -> Result<(), ApiError> {
    let header = headers.get(SIGNATURE_HEADER).ok_or_else(|| {
        ApiError::InvalidSignature(
            "missing header Chatr-PublicKey-Signature: send the base64 ed25519 signature over the exact body bytes".into(),
        )
    })?;
    let sig = header
        .to_str()
        .ok()
        .and_then(|s| STANDARD.decode(s.trim()).ok())
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(|| {
            ApiError::InvalidSignature(
                "header Chatr-PublicKey-Signature must be the standard base64 of a 64-byte ed25519 signature".into(),
            )
        })?;
    key.verify_strict(body, &sig).map_err(|_| {
        ApiError::InvalidSignature(
            "the signature does not verify: sign the exact body bytes you send (PUT: with the key being registered; POST: with the currently registered key)".into(),
        )
    })
}

fn token_from(headers: &HeaderMap) -> Result<TokenHash, ApiError> {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::InvalidToken(
                "this server requires a registration token: send it in the Chatr-Registration-Token header (ask the administrator for one: chatr-server token issue)".into(),
            )
        })?;
    Ok(TokenHash::of(token))
}

fn from_registry(err: RegistryError) -> ApiError {
    match err {
        RegistryError::AlreadyRegistered(_) => ApiError::ClientAlreadyRegistered,
        RegistryError::DoesNotExist(_) => ApiError::ClientDoesNotExist,
        RegistryError::KeyChanged(_) => ApiError::KeyChanged,
        RegistryError::InvalidToken => ApiError::InvalidToken(
            "the registration token is unknown or was already used; ask the administrator for a new one".into(),
        ),
        RegistryError::ShuttingDown => ApiError::ShuttingDown,
        other => {
            tracing::error!(error = %other, "registry write failed");
            ApiError::Internal
        }
    }
}
