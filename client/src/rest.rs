//! A tiny HTTPS/1.1 client for the identity registry API.
//!
//! Before it can log in to the Connect server a client registers its UUID and
//! ed25519 public key here; later it may rotate the key, and it looks up other
//! clients' keys to pin them in the address book:
//!
//! * `PUT /api/1/clients/{uuid}`: body exactly `{"key":"<b64>"}`, header
//!   `Chatr-PublicKey-Signature` = base64 ed25519 signature over the exact body
//!   bytes made with that key (plus `Chatr-Registration-Token` when the server
//!   wants one);
//! * `POST /api/1/clients/{uuid}`: same body with the new key, signed with the
//!   **old** key;
//! * `GET /api/1/clients/{uuid}` → `{"clientId":"…","publicKey":"<b64>"}`.
//!
//! Errors come back as `{"error": Name, "message": …}` and become
//! [`ApiErrorKind`]s. One request per connection (`Connection: close`), over
//! tokio-rustls with the same trust as the Connect session; the response is
//! parsed by a small sans-IO parser ([`parse_response`]) with a size cap.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::VerifyingKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uuid::Uuid;

use crate::config::ApiUrl;
use crate::identity::{Identity, parse_public_key, public_key_base64};
use crate::trust::{is_cert_rejection, server_name};

/// Header carrying the signature over the body.
pub const SIGNATURE_HEADER: &str = "Chatr-PublicKey-Signature";
/// Header carrying a single-use registration token.
pub const TOKEN_HEADER: &str = "Chatr-Registration-Token";
/// Responses larger than this are refused (the API's answers are tiny).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The registry's named errors.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// The UUID in the path is not a UUID.
    InvalidClientId,
    /// The UUID is registered with a different key.
    ClientAlreadyRegistered,
    /// The UUID is not registered.
    ClientDoesNotExist,
    /// The key is not a valid ed25519 public key.
    InvalidPublicKey,
    /// The signature does not verify.
    InvalidSignature,
    /// The server does not accept registrations from clients.
    RegistrationClosed,
    /// The registration token is missing, unknown or already used.
    InvalidToken,
    /// Too many requests from our address.
    RateLimited,
    /// Any other error name the server sent.
    Other(String),
}

impl ApiErrorKind {
    fn from_name(name: &str) -> Self {
        match name {
            "InvalidClientId" => Self::InvalidClientId,
            "ClientAlreadyRegistered" => Self::ClientAlreadyRegistered,
            "ClientDoesNotExist" => Self::ClientDoesNotExist,
            "InvalidPublicKey" => Self::InvalidPublicKey,
            "InvalidSignature" => Self::InvalidSignature,
            "RegistrationClosed" => Self::RegistrationClosed,
            "InvalidToken" => Self::InvalidToken,
            "RateLimited" => Self::RateLimited,
            other => Self::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(s) => f.write_str(s),
            other => write!(f, "{other:?}"),
        }
    }
}

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestError {
    /// The API server could not be reached.
    #[error(
        "cannot reach the registry at {url}: {source}; check the server address and that it is running"
    )]
    Connect {
        /// The API URL.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API server's certificate is not the one we trust.
    #[error(
        "the registry's TLS certificate is not trusted: {0}; if the server's certificate really changed, run `chatr init` again with the new one"
    )]
    ServerCertMismatch(String),
    /// TLS or I/O failed after connecting.
    #[error("connection to the registry failed: {0}")]
    Io(#[source] std::io::Error),
    /// The request took too long.
    #[error("the registry did not answer within {0:?}")]
    Timeout(Duration),
    /// The response was not valid HTTP or not the expected JSON.
    #[error("the registry sent an invalid response: {0}")]
    BadResponse(String),
    /// The API answered with an error.
    #[error("the registry refused the request ({status} {kind}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error name.
        kind: ApiErrorKind,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with a key for a different client id.
    #[error("the registry answered for client {got}, not {asked}")]
    WrongClient {
        /// What we asked for.
        asked: Uuid,
        /// What came back.
        got: String,
    },
    /// The TLS server name is invalid.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
}

impl RestError {
    /// The registry error name, when the API answered with one.
    pub fn api_kind(&self) -> Option<&ApiErrorKind> {
        match self {
            Self::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// Outcome of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// 201: newly registered.
    Created,
    /// 200: this exact key was already registered.
    AlreadyRegistered,
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

/// Client for the registry API.
#[derive(Clone)]
pub struct RegistryClient {
    api: ApiUrl,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("api", &self.api.to_string())
            .finish()
    }
}

/// The exact body of a register/rotate request.
pub fn key_body(key: &VerifyingKey) -> String {
    format!("{{\"key\":\"{}\"}}", public_key_base64(key))
}

impl RegistryClient {
    /// A client for the API at `api`, trusting its certificate per `tls`.
    pub fn new(api: ApiUrl, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            api,
            tls,
            timeout: Duration::from_secs(15),
        }
    }

    /// Changes the whole-request timeout (default 15 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Registers `identity`'s UUID and key.
    pub async fn register(
        &self,
        identity: &Identity,
        token: Option<&str>,
    ) -> Result<Registration, RestError> {
        let resp = self
            .send_key("PUT", identity, &identity.verifying_key(), token)
            .await?;
        match resp.status {
            201 => Ok(Registration::Created),
            200 | 204 => Ok(Registration::AlreadyRegistered),
            _ => Err(api_error(&resp)),
        }
    }

    /// Replaces `identity`'s registered key with `new_key`; the request is
    /// signed with the current (old) key. Save the new key only after `Ok`.
    pub async fn rotate(
        &self,
        identity: &Identity,
        new_key: &VerifyingKey,
        token: Option<&str>,
    ) -> Result<(), RestError> {
        let resp = self.send_key("POST", identity, new_key, token).await?;
        if (200..300).contains(&resp.status) {
            Ok(())
        } else {
            Err(api_error(&resp))
        }
    }

    /// Looks up the key registered for `uuid`.
    pub async fn lookup(&self, uuid: Uuid) -> Result<VerifyingKey, RestError> {
        let resp = self
            .request("GET", &self.client_path(uuid), &[], b"")
            .await?;
        if resp.status != 200 {
            return Err(api_error(&resp));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Lookup {
            client_id: String,
            public_key: String,
        }
        let parsed: Lookup = serde_json::from_slice(&resp.body)
            .map_err(|e| RestError::BadResponse(format!("lookup JSON: {e}")))?;
        if Uuid::parse_str(&parsed.client_id).ok() != Some(uuid) {
            return Err(RestError::WrongClient {
                asked: uuid,
                got: parsed.client_id,
            });
        }
        parse_public_key(&parsed.public_key)
            .ok_or_else(|| RestError::BadResponse("publicKey is not an ed25519 key".into()))
    }

    /// Sends `key` as the body for `identity`'s UUID with `method`, the body
    /// signed by `identity`'s current key (plus the registration token, if any).
    async fn send_key(
        &self,
        method: &str,
        identity: &Identity,
        key: &VerifyingKey,
        token: Option<&str>,
    ) -> Result<Response, RestError> {
        let body = key_body(key);
        let sig = B64.encode(identity.sign(body.as_bytes()).to_bytes());
        let mut headers = vec![(SIGNATURE_HEADER, sig)];
        if let Some(t) = token {
            headers.push((TOKEN_HEADER, t.to_string()));
        }
        self.request(
            method,
            &self.client_path(identity.uuid()),
            &headers,
            body.as_bytes(),
        )
        .await
    }

    fn client_path(&self, uuid: Uuid) -> String {
        format!("{}/api/1/clients/{}", self.api.base_path, uuid)
    }

    /// Sends one request and reads the whole response, within the timeout.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response, RestError> {
        tokio::time::timeout(
            self.timeout,
            self.request_inner(method, path, headers, body),
        )
        .await
        .map_err(|_| RestError::Timeout(self.timeout))?
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response, RestError> {
        let auth = &self.api.authority;
        let name = server_name(&auth.host)?;
        let tcp = TcpStream::connect((auth.host.as_str(), auth.port))
            .await
            .map_err(|source| RestError::Connect {
                url: self.api.to_string(),
                source,
            })?;
        let connector = TlsConnector::from(self.tls.clone());
        let mut tls =
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| match is_cert_rejection(&e) {
                    Some(why) => RestError::ServerCertMismatch(why),
                    None => RestError::Io(e),
                })?;
        let request = build_request(method, &auth.to_string(), path, headers, body);
        tls.write_all(&request).await.map_err(RestError::Io)?;
        tls.flush().await.map_err(RestError::Io)?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(resp) = parse_response(&buf)? {
                return Ok(resp);
            }
            let n = match tls.read(&mut chunk).await {
                Ok(n) => n,
                // A server that closes without close_notify after a complete
                // response is handled by the EOF branch of the parser.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(RestError::Io(e)),
            };
            if n == 0 {
                return parse_response_at_eof(&buf);
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if buf.len() > MAX_RESPONSE {
                return Err(RestError::BadResponse("response too large".into()));
            }
        }
    }
}

fn api_error(resp: &Response) -> RestError {
    #[derive(serde::Deserialize)]
    struct ErrBody {
        error: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<ErrBody>(&resp.body) {
        Ok(e) => RestError::Api {
            status: resp.status,
            kind: ApiErrorKind::from_name(&e.error),
            message: e.message,
        },
        Err(_) => RestError::Api {
            status: resp.status,
            kind: ApiErrorKind::Other(format!("HTTP {}", resp.status)),
            message: String::from_utf8_lossy(&resp.body)
                .chars()
                .take(200)
                .collect(),
        },
    }
}

/// Serialises an HTTP/1.1 request.
pub fn build_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chatr/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if !body.is_empty() || method != "GET" {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

enum BodyKind {
    Length(usize),
    Chunked,
    UntilEof,
}

struct Head {
    status: u16,
    body_start: usize,
    kind: BodyKind,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, RestError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(buf.get(..end).unwrap_or_default())
        .map_err(|_| RestError::BadResponse("non-UTF-8 header".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(RestError::BadResponse(format!(
            "status line {status_line:?}"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| RestError::BadResponse(format!("status line {status_line:?}")))?;
    let mut kind = BodyKind::UntilEof;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(RestError::BadResponse(format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            kind = BodyKind::Chunked;
        } else if name.eq_ignore_ascii_case("content-length") && !matches!(kind, BodyKind::Chunked)
        {
            let len: usize = value
                .parse()
                .map_err(|_| RestError::BadResponse("bad Content-Length".into()))?;
            if len > MAX_RESPONSE {
                return Err(RestError::BadResponse("response too large".into()));
            }
            kind = BodyKind::Length(len);
        }
    }
    // 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        kind = BodyKind::Length(0);
    }
    Ok(Some(Head {
        status,
        body_start: end + 4,
        kind,
    }))
}

/// Parses a complete response from `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, RestError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = buf.get(head.body_start..).unwrap_or_default();
    match head.kind {
        BodyKind::Length(n) => Ok(rest.get(..n).map(|b| Response {
            status: head.status,
            body: b.to_vec(),
        })),
        BodyKind::Chunked => Ok(dechunk(rest)?.map(|body| Response {
            status: head.status,
            body,
        })),
        BodyKind::UntilEof => Ok(None),
    }
}

/// Parses the response once the server closed the connection.
fn parse_response_at_eof(buf: &[u8]) -> Result<Response, RestError> {
    if let Some(resp) = parse_response(buf)? {
        return Ok(resp);
    }
    match parse_head(buf)? {
        Some(Head {
            status,
            body_start,
            kind: BodyKind::UntilEof,
        }) => Ok(Response {
            status,
            body: buf.get(body_start..).unwrap_or_default().to_vec(),
        }),
        _ => Err(RestError::BadResponse(
            "connection closed mid-response".into(),
        )),
    }
}

/// Decodes a chunked body; `Ok(None)` when incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, RestError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(rest.get(..line_end).unwrap_or_default())
            .map_err(|_| RestError::BadResponse("bad chunk size".into()))?;
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| RestError::BadResponse("bad chunk size".into()))?;
        if size > MAX_RESPONSE {
            return Err(RestError::BadResponse("response too large".into()));
        }
        rest = rest.get(line_end + 2..).unwrap_or_default();
        if size == 0 {
            // Trailers are ignored; the final CRLF may or may not have arrived,
            // but the body is complete.
            return Ok(Some(body));
        }
        let Some(data) = rest.get(..size) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        rest = match rest.get(size..size + 2) {
            Some(b"\r\n") => rest.get(size + 2..).unwrap_or_default(),
            Some(_) => return Err(RestError::BadResponse("bad chunk terminator".into())),
            None => return Ok(None),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_exact_json() {
        let id = Identity::generate();
        let body = key_body(&id.verifying_key());
        assert_eq!(body, format!("{{\"key\":\"{}\"}}", id.public_key_base64()));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["key"], id.public_key_base64());
    }

    #[test]
    fn request_has_headers_and_body() {
        let req = build_request(
            "PUT",
            "h:1",
            "/api/1/clients/x",
            &[(SIGNATURE_HEADER, "c2ln".into())],
            b"{}",
        );
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("PUT /api/1/clients/x HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Chatr-PublicKey-Signature: c2ln\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }

    #[test]
    fn content_length_response() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut]).unwrap(), None, "cut {cut}");
        }
        let r = parse_response(raw).unwrap().unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap().unwrap();
        assert_eq!(r.body, b"abcde");
        assert_eq!(parse_response(&raw[..raw.len() - 8]).unwrap(), None);
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad).is_err());
    }

    #[test]
    fn until_eof_response() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\nbody";
        assert_eq!(parse_response(raw).unwrap(), None);
        assert_eq!(parse_response_at_eof(raw).unwrap().body, b"body");
        assert!(parse_response_at_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse_response(b"SMTP 220\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n").is_err());
    }

    #[test]
    fn api_errors_are_named() {
        let resp = Response {
            status: 409,
            body: br#"{"error":"ClientAlreadyRegistered","message":"taken"}"#.to_vec(),
        };
        match api_error(&resp) {
            RestError::Api {
                status,
                kind,
                message,
            } => {
                assert_eq!(status, 409);
                assert_eq!(kind, ApiErrorKind::ClientAlreadyRegistered);
                assert_eq!(message, "taken");
            }
            other => panic!("{other:?}"),
        }
        let resp = Response {
            status: 429,
            body: b"slow down".to_vec(),
        };
        assert!(matches!(
            api_error(&resp),
            RestError::Api {
                kind: ApiErrorKind::Other(_),
                ..
            }
        ));
    }
}
