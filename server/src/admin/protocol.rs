//! The admin socket's wire format: one JSON object per line each way.
//!
//! Requests are tagged by `cmd`:
//!
//! ```text
//! {"cmd":"identity_add","uuid":"…","key":"<base64>"}
//! {"cmd":"identity_list"}
//! {"cmd":"identity_remove","uuid":"…"}
//! {"cmd":"token_issue"}
//! {"cmd":"status"}
//! ```
//!
//! Every answer has `"ok"`; failures add `"error"` (a name) and `"message"`
//! (what to do); successes add the fields of their command.

use serde::{Deserialize, Serialize};

/// Longest accepted request line.
pub const MAX_LINE: usize = 16 * 1024;

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Register or replace the key of a UUID.
    IdentityAdd {
        /// Client UUID.
        uuid: String,
        /// Base64 of the 32-byte ed25519 public key.
        key: String,
    },
    /// All identities.
    IdentityList,
    /// Forget a UUID and disconnect its session.
    IdentityRemove {
        /// Client UUID.
        uuid: String,
    },
    /// Issue a single-use registration token.
    TokenIssue,
    /// Counts, to check the socket works.
    Status,
}

/// One registered identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityEntry {
    /// Client UUID (hyphenated).
    pub client_id: String,
    /// Base64 public key.
    pub public_key: String,
}

/// The answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Error name on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Human-readable explanation on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `identity_add`: `created`, `replaced` or `unchanged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// `identity_list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<IdentityEntry>>,
    /// `identity_remove`: whether the UUID was registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    /// `identity_remove`: whether a live session was disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected: Option<bool>,
    /// `token_issue`: the token (shown once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `status`: number of identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_count: Option<usize>,
    /// `status`: number of unused tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_tokens: Option<usize>,
}

impl AdminResponse {
    /// A success with no fields yet.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// A failure.
    pub fn error(name: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(name.to_owned()),
            message: Some(message.into()),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_text_form() {
        let req: AdminRequest =
            serde_json::from_str(r#"{"cmd":"identity_remove","uuid":"x"}"#).unwrap();
        assert_eq!(req, AdminRequest::IdentityRemove { uuid: "x".into() });
        assert_eq!(
            serde_json::to_string(&AdminRequest::TokenIssue).unwrap(),
            r#"{"cmd":"token_issue"}"#
        );
        assert!(serde_json::from_str::<AdminRequest>(r#"{"cmd":"drop_tables"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&AdminResponse::error("X", "y")).unwrap(),
            r#"{"ok":false,"error":"X","message":"y"}"#
        );
    }
}
