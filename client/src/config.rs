//! The client config (`config.toml` in the home directory).
//!
//! It records which Connect server to use (`host:port`), where its registry API
//! is (`https://host:port`), and how to trust the server's certificate: a
//! pinned certificate copied into the home, a SHA-256 fingerprint of the leaf
//! certificate, or the public web roots for servers with real certificates.
//! The file is parsed into typed values once; the rest of the client never sees
//! raw strings.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default Connect port (TLS over TCP, and UDP for endpoint discovery).
pub const DEFAULT_CONNECT_PORT: u16 = 7777;
/// Default registry API port.
pub const DEFAULT_API_PORT: u16 = 7778;
/// File name of the config inside the home directory.
pub const CONFIG_FILE: &str = "config.toml";

/// What can go wrong with the config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The home has no config.
    #[error("no config in {0}; run `chatr init --server HOST` first")]
    Missing(PathBuf),
    /// Reading or writing the file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path} is not a valid chatr config: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A server address could not be parsed.
    #[error("invalid server address {0:?}: expected HOST or HOST:PORT")]
    BadServer(String),
    /// An API URL could not be parsed.
    #[error("invalid API URL {0:?}: expected https://HOST[:PORT][/PATH]")]
    BadApiUrl(String),
    /// A fingerprint could not be parsed.
    #[error("invalid SHA-256 fingerprint {0:?}: expected 64 hex digits (colons allowed)")]
    BadFingerprint(String),
}

/// `host:port` of a server, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// DNS name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HostPort {
    /// Parses `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 literal,
    /// using `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadServer(s.to_string());
        let s = s.trim();
        if s.is_empty() {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?,
            };
            (host.to_string(), port)
        } else if s.matches(':').count() > 1 {
            // A bare IPv6 literal has no room for a port.
            (s.to_string(), default_port)
        } else if let Some((h, p)) = s.split_once(':') {
            (h.to_string(), p.parse().map_err(|_| bad())?)
        } else {
            (s.to_string(), default_port)
        };
        if host.is_empty() || port == 0 || host.contains(['/', ' ', '@']) {
            return Err(bad());
        }
        Ok(Self { host, port })
    }

    /// Whether the host is an IPv6 literal (needs brackets in URLs).
    fn is_v6(&self) -> bool {
        self.host.contains(':')
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_v6() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The registry API base URL, parsed: `https://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    /// Host and port to connect to.
    pub authority: HostPort,
    /// Path prefix without trailing slash ("" for none).
    pub base_path: String,
}

impl ApiUrl {
    /// The default API URL for a server host: `https://HOST:7778`.
    pub fn default_for(host: &str) -> Self {
        Self {
            authority: HostPort {
                host: host.to_string(),
                port: DEFAULT_API_PORT,
            },
            base_path: String::new(),
        }
    }
}

impl FromStr for ApiUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let rest = s
            .trim()
            .strip_prefix("https://")
            .ok_or_else(|| ConfigError::BadApiUrl(s.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority =
            HostPort::parse(authority, 443).map_err(|_| ConfigError::BadApiUrl(s.to_string()))?;
        if path.contains(['?', '#', ' ']) {
            return Err(ConfigError::BadApiUrl(s.to_string()));
        }
        Ok(Self {
            authority,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority, self.base_path)
    }
}

/// A SHA-256 fingerprint of a certificate's DER bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl FromStr for Fingerprint {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let cleaned: String = s
            .trim()
            .trim_start_matches("sha256:")
            .trim_start_matches("SHA256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let bytes = hex::decode(&cleaned).map_err(|_| ConfigError::BadFingerprint(s.into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ConfigError::BadFingerprint(s.into()))?;
        Ok(Self(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// How the client decides the server's certificate is the right one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A certificate (the server's own, or the CA that issued it) kept in the
    /// home directory. The path is absolute or relative to the home.
    PinnedCert(PathBuf),
    /// The SHA-256 fingerprint of the server's leaf certificate.
    Fingerprint(Fingerprint),
    /// The system trust store (falling back to the bundled Mozilla list), for servers with
    /// real certs.
    SystemRoots,
}

/// The parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Connect server `host:port`.
    pub server: HostPort,
    /// Registry API URL.
    pub api: ApiUrl,
    /// Server certificate trust.
    pub trust: Trust,
    /// Our display alias in chats (defaults to the login name).
    pub alias: Option<String>,
    /// Preferred local port P for the TCP session and the UDP socket (None = any).
    pub local_port: Option<u16>,
}

/// The on-disk shape (strings), converted to [`Config`] on load.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: String,
    api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_port: Option<u16>,
    trust: RawTrust,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
enum RawTrust {
    PinnedCert { cert: PathBuf },
    Fingerprint { sha256: String },
    System,
}

impl Config {
    /// A config for `server` with the default API URL and the given trust.
    pub fn new(server: HostPort, trust: Trust) -> Self {
        Self {
            api: ApiUrl::default_for(&server.host),
            server,
            trust,
            alias: None,
            local_port: None,
        }
    }

    /// Loads the config file at `path` (a home's `config.toml`, which
    /// `Home::config` loads).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let path = path.to_path_buf();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(&path).to_path_buf();
                return Err(ConfigError::Missing(dir));
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse { path, reason },
            other => other,
        })
    }

    /// Parses the TOML text of a config.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        let trust = match raw.trust {
            RawTrust::PinnedCert { cert } => Trust::PinnedCert(cert),
            RawTrust::Fingerprint { sha256 } => Trust::Fingerprint(sha256.parse()?),
            RawTrust::System => Trust::SystemRoots,
        };
        Ok(Self {
            server: HostPort::parse(&raw.server, DEFAULT_CONNECT_PORT)?,
            api: raw.api.parse()?,
            trust,
            alias: raw.alias,
            local_port: raw.local_port.filter(|p| *p != 0),
        })
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> String {
        let raw = RawConfig {
            server: self.server.to_string(),
            api: self.api.to_string(),
            alias: self.alias.clone(),
            local_port: self.local_port,
            trust: match &self.trust {
                Trust::PinnedCert(p) => RawTrust::PinnedCert { cert: p.clone() },
                Trust::Fingerprint(f) => RawTrust::Fingerprint {
                    sha256: f.to_string(),
                },
                Trust::SystemRoots => RawTrust::System,
            },
        };
        // Serialising a struct of strings cannot fail; fall back to an empty
        // document rather than panicking if it ever does.
        toml::to_string(&raw).unwrap_or_default()
    }

    /// Writes the config file to `path` (atomically: a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let path = path.to_path_buf();
        let tmp = path.with_extension("toml.tmp");
        let io = |source| ConfigError::Io {
            path: path.clone(),
            source,
        };
        fs::write(&tmp, self.to_toml()).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    /// The alias shown to peers: the configured one, else `$USER`, else "chatr".
    pub fn display_alias(&self) -> String {
        self.alias
            .clone()
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "chatr".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| HostPort::parse(s, 7777).unwrap();
        assert_eq!(hp("example.org").to_string(), "example.org:7777");
        assert_eq!(hp("example.org:123").port, 123);
        assert_eq!(hp("[::1]:9").to_string(), "[::1]:9");
        assert_eq!(hp("[::1]").port, 7777);
        assert_eq!(hp("::1").host, "::1");
        assert_eq!(hp("127.0.0.1:1").host, "127.0.0.1");
        for bad in [
            "",
            "host:",
            "host:0",
            "host:99999",
            "[::1",
            "[::1]x",
            "a/b:1",
        ] {
            assert!(HostPort::parse(bad, 7777).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_url_forms() {
        let u: ApiUrl = "https://h:1/base/".parse().unwrap();
        assert_eq!(u.authority.host, "h");
        assert_eq!(u.authority.port, 1);
        assert_eq!(u.base_path, "/base");
        assert_eq!(u.to_string(), "https://h:1/base");
        let u: ApiUrl = "https://[::1]".parse().unwrap();
        assert_eq!(u.authority.port, 443);
        assert_eq!(u.to_string(), "https://[::1]:443");
        assert!("http://h".parse::<ApiUrl>().is_err());
        assert!("https://".parse::<ApiUrl>().is_err());
        assert_eq!(ApiUrl::default_for("s").to_string(), "https://s:7778");
    }

    #[test]
    fn fingerprint_forms() {
        let hex64 = "ab".repeat(32);
        let f: Fingerprint = hex64.parse().unwrap();
        assert_eq!(f.0, [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), f);
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn toml_roundtrip_every_trust() {
        for trust in [
            Trust::PinnedCert("server-cert.pem".into()),
            Trust::Fingerprint(Fingerprint([7; 32])),
            Trust::SystemRoots,
        ] {
            let mut c = Config::new(HostPort::parse("srv:1", 7777).unwrap(), trust);
            c.alias = Some("me".into());
            c.local_port = Some(4000);
            let text = c.to_toml();
            assert_eq!(Config::from_toml(&text).unwrap(), c, "{text}");
        }
    }

    #[test]
    fn bad_toml_is_a_parse_error() {
        assert!(matches!(
            Config::from_toml("server = 1"),
            Err(ConfigError::Parse { .. })
        ));
        let text = "server = \"s\"\napi = \"https://s\"\n[trust]\nmode = \"bogus\"\n";
        assert!(Config::from_toml(text).is_err());
    }
}
