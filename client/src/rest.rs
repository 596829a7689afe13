//! The HTTPS client of the identity registry API.
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
//! [`ApiErrorKind`]s. One request per connection (`Connection: close`): TCP,
//! then TLS with the same trust as the Connect session (the pinned certificate
//! or fingerprint, or web roots; see [`crate::trust`]), then hyper's HTTP/1.1
//! client on that stream, the response body capped at [`MAX_RESPONSE`].

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Body as _;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// The HTTP exchange failed: the response was not valid HTTP/1.1, or the
    /// connection broke mid-request.
    #[error("HTTP with the registry failed: {0}")]
    Http(#[source] hyper::Error),
    /// The request could not be built (a header value such as the token holds
    /// characters HTTP does not allow, or the API path is not a valid URI path).
    #[error("cannot build the registry request: {0}")]
    Request(#[source] hyper::http::Error),
    /// The response was too large or its content is unusable.
    #[error("the registry sent an invalid response: {0}")]
    BadResponse(String),
    /// The response body is not the JSON the API documents.
    #[error("the registry sent an invalid response: {what}: {source}")]
    Json {
        /// Which answer.
        what: &'static str,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
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
    /// Body bytes (transfer encoding removed).
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
        let parsed: Lookup =
            serde_json::from_slice(&resp.body).map_err(|source| RestError::Json {
                what: "lookup JSON",
                source,
            })?;
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
        let request = build_request(method, &auth.to_string(), path, headers, body)?;
        let tcp = TcpStream::connect((auth.host.as_str(), auth.port))
            .await
            .map_err(|source| RestError::Connect {
                url: self.api.to_string(),
                source,
            })?;
        let connector = TlsConnector::from(self.tls.clone());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| match is_cert_rejection(&e) {
                Some(why) => RestError::ServerCertMismatch(why),
                None => RestError::Io(e),
            })?;
        exchange(tls, request).await
    }
}

/// Sends `request` on `stream` with hyper's HTTP/1.1 client and reads the
/// whole response (TLS in use; in-memory pipes in the tests).
async fn exchange<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<Response, RestError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(RestError::Http)?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(RestError::Http)?;
        let status = response.status().as_u16();
        // A declared length over the cap is refused before reading any of it.
        if response.body().size_hint().lower() > MAX_RESPONSE as u64 {
            return Err(RestError::BadResponse("response too large".into()));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => RestError::Http(*e),
                // The only other error `Limited` has: the cap.
                Err(_) => RestError::BadResponse("response too large".into()),
            })?
            .to_bytes()
            .to_vec();
        Ok(Response { status, body })
    };
    // The connection future moves the bytes; it ends once the exchange is over
    // (`Connection: close`) or has failed, which the exchange then reports.
    let mut connection = std::pin::pin!(connection);
    let mut exchange = std::pin::pin!(exchange);
    let mut connection_done = false;
    loop {
        tokio::select! {
            result = &mut exchange => return result,
            _ = &mut connection, if !connection_done => connection_done = true,
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

/// The request: one per connection, JSON both ways.
fn build_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<hyper::Request<Full<Bytes>>, RestError> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, concat!("chatr/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "application/json")
        .header(CONNECTION, "close");
    if !body.is_empty() || method != "GET" {
        request = request
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len());
    }
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(RestError::Request)
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

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn test_request() -> hyper::Request<Full<Bytes>> {
        build_request(
            "PUT",
            "h:1",
            "/api/1/clients/x",
            &[(SIGNATURE_HEADER, "c2ln".into())],
            b"{}",
        )
        .unwrap()
    }

    /// Runs one exchange against a server that reads the request, answers
    /// `raw` and closes; returns the result and the request bytes it read.
    async fn exchange_with(raw: &[u8]) -> (Result<Response, RestError>, String) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let raw = raw.to_vec();
        let serve = async move {
            let mut seen = Vec::new();
            let mut chunk = [0u8; 1024];
            // The test request's body is the 2 bytes after the head.
            let complete = |seen: &[u8]| {
                seen.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .is_some_and(|end| seen.len() >= end + 4 + 2)
            };
            while !complete(&seen) {
                let n = server.read(&mut chunk).await.unwrap();
                assert!(n > 0, "request ended early: {seen:?}");
                seen.extend_from_slice(&chunk[..n]);
            }
            server.write_all(&raw).await.unwrap();
            server.shutdown().await.unwrap();
            String::from_utf8(seen).unwrap()
        };
        let wait = std::time::Duration::from_secs(10);
        let (result, seen) = tokio::time::timeout(wait, async {
            tokio::join!(exchange(client, test_request()), serve)
        })
        .await
        .expect("the exchange ends (answer or error), never hangs");
        (result, seen)
    }

    #[tokio::test]
    async fn request_has_headers_and_body() {
        let (_, text) = exchange_with(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        // Header names are case-insensitive; hyper writes them in lower case.
        let lower = text.to_ascii_lowercase();
        assert!(
            text.starts_with("PUT /api/1/clients/x HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(lower.contains("\r\nhost: h:1\r\n"), "{text}");
        assert!(lower.contains("\r\ncontent-length: 2\r\n"), "{text}");
        assert!(
            lower.contains("\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        assert!(lower.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            lower.contains("\r\nchatr-publickey-signature: c2ln\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        // What HTTP cannot carry is refused instead of sent.
        let bad = build_request(
            "PUT",
            "h:1",
            "/x",
            &[(TOKEN_HEADER, "a\r\nX: y".into())],
            b"",
        );
        assert!(matches!(bad, Err(RestError::Request(_))));
    }

    #[tokio::test]
    async fn content_length_response() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello";
        // Cut anywhere and closed: an error, never a short or empty answer.
        for cut in 0..raw.len() {
            let (result, _) = exchange_with(&raw[..cut]).await;
            assert!(result.is_err(), "cut {cut}: {result:?}");
        }
        let r = exchange_with(raw).await.0.unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hello");
    }

    #[tokio::test]
    async fn chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = exchange_with(raw).await.0.unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(exchange_with(&raw[..raw.len() - 8]).await.0.is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(exchange_with(bad).await.0.is_err());
    }

    #[tokio::test]
    async fn until_eof_response() {
        let r = exchange_with(b"HTTP/1.0 200 OK\r\n\r\nbody")
            .await
            .0
            .unwrap();
        assert_eq!(r.body, b"body");
        let truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab";
        assert!(exchange_with(truncated).await.0.is_err());
    }

    #[tokio::test]
    async fn garbage_is_rejected() {
        for raw in [
            &b"SMTP 220\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        ] {
            let (result, _) = exchange_with(raw).await;
            assert!(
                matches!(result, Err(RestError::Http(_))),
                "{raw:?}: {result:?}"
            );
        }
        let (result, _) =
            exchange_with(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n").await;
        assert!(
            matches!(result, Err(RestError::BadResponse(ref m)) if m.contains("too large")),
            "{result:?}"
        );
        // A chunked body that grows past the cap is cut off too.
        let mut big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..20 {
            big.extend_from_slice(format!("1000\r\n{}\r\n", "x".repeat(0x1000)).as_bytes());
        }
        big.extend_from_slice(b"0\r\n\r\n");
        let (result, _) = exchange_with(&big).await;
        assert!(
            matches!(result, Err(RestError::BadResponse(ref m)) if m.contains("too large")),
            "{result:?}"
        );
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
