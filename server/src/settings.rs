//! Command line, environment and config file → [`ServerConfig`].
//!
//! `chatr-server` is configured in four layers; the first that sets a key wins:
//!
//! 1. command-line flags (`--listen 0.0.0.0:7777`),
//! 2. `CHATR_*` environment variables (`CHATR_LISTEN=0.0.0.0:7777`),
//! 3. the TOML file named by `--config` / `CHATR_CONFIG` (`listen = "0.0.0.0:7777"`),
//! 4. built-in defaults.
//!
//! Every key has the same name in all three places: the flag is the key with
//! `-` for `_`, the variable is `CHATR_` + the key in upper case. The environment
//! is passed in as a function so tests can layer settings without touching the
//! process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::config::{RegistrationPolicy, ServerConfig};

/// Data directory used when none is configured (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "chatr-data";

/// Name of the admin socket inside the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

const ENV_HELP: &str = "\
Every serve flag can also be set through a CHATR_* environment variable (the flag name in upper case,
'-' replaced by '_', e.g. CHATR_API_LISTEN, CHATR_DATA_DIR, CHATR_REGISTRATION; CHATR_SAN takes a
comma-separated list) or in the TOML file given by --config / CHATR_CONFIG (same names with '_', e.g.
api_listen = \"0.0.0.0:7778\"). Precedence: command line > environment > config file > defaults.
Durations are written like 500ms, 5s, 2m or 1h.";

/// `chatr-server`: the Chatr Connect server and its admin tools.
#[derive(Debug, Parser)]
#[command(
    name = "chatr-server",
    version,
    about = "Chatr Connect server: TLS rendezvous, UDP endpoint discovery and the identity registry",
    args_conflicts_with_subcommands = true,
    after_help = ENV_HELP
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the default `serve` subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The subcommand to run, with `serve` filled in when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

/// Subcommands.
// Parsed once at start-up: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    #[command(after_help = ENV_HELP)]
    Serve(ServeArgs),
    /// Manage registered identities of a running server (or of a stopped one's data dir).
    Identity {
        /// What to do.
        #[command(subcommand)]
        action: IdentityAction,
        /// Which server.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Manage registration tokens (for `--registration token`).
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
        /// Which server.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Create a development CA and server certificates, or fingerprint a certificate.
    Cert {
        /// What to do.
        #[command(subcommand)]
        action: CertAction,
    },
}

/// `identity …`
#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Register (or replace) the key of a UUID.
    Add {
        /// Client UUID.
        uuid: String,
        /// Base64 of the 32-byte ed25519 public key (as `chatr whoami` prints it).
        public_key: String,
    },
    /// List registered identities (`<uuid> <public-key-base64>` per line).
    List,
    /// Forget a UUID and disconnect its session.
    Remove {
        /// Client UUID.
        uuid: String,
    },
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Issue a single-use registration token and print it.
    Issue,
}

/// `cert …`
#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Create a development CA: `<out>/ca.pem` and `<out>/ca-key.pem`.
    Ca {
        /// Output directory.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "Chatr development CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a server certificate signed by a CA: `<out>/cert.pem` (chain) and `<out>/key.pem`.
    Server {
        /// CA certificate (PEM), from `cert ca`.
        #[arg(long, default_value = "certs/dev/ca.pem")]
        ca_cert: PathBuf,
        /// CA private key (PEM), from `cert ca`.
        #[arg(long, default_value = "certs/dev/ca-key.pem")]
        ca_key: PathBuf,
        /// The CA's name as given to `cert ca --name`.
        #[arg(long, default_value = "Chatr development CA")]
        ca_name: String,
        /// Output directory.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Subject alternative names: DNS names or IP addresses (repeatable).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Print the SHA-256 fingerprint (hex) of the first certificate in a PEM file.
    Fingerprint {
        /// PEM file.
        file: PathBuf,
    },
}

/// Locates the admin socket of a server.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminTarget {
    /// Data directory of the server (its admin socket is `<data-dir>/admin.sock`).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// The server's config file (only `data_dir` is read from it).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Admin socket path, overriding the data directory.
    #[arg(long, global = true)]
    pub admin_socket: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags of `serve`; also the shape of the TOML config file (every key optional).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML config file (keys as below, with `_`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// TCP (TLS) and UDP (endpoint discovery, STUN) address [default: 0.0.0.0:7777].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTPS registry API address [default: 0.0.0.0:7778].
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Where the registry, generated certificate and admin socket live [default: ./chatr-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain (e.g. Let's Encrypt fullchain.pem); default: self-signed in the data dir.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert (e.g. Let's Encrypt privkey.pem).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Extra DNS name or IP for the self-signed certificate (repeatable).
    #[arg(long, value_name = "NAME")]
    pub san: Option<Vec<String>>,
    /// Who may register over the REST API [default: open].
    #[arg(long, value_parser = parse_policy, value_name = "open|token|closed")]
    pub registration: Option<RegistrationPolicy>,
    /// Refuse version-1 logins (signature not bound to the TLS session).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub require_channel_binding: Option<bool>,
    /// Log format [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `chatr_server=debug` [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Once listening, write `{"connect":…,"api":…,"fingerprint":…}` to this file.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Ping a session this long after its last pong [default: 5s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub ping_interval: Option<Duration>,
    /// Drop a session with "Time out" this long after an unanswered ping [default: 15s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub ping_timeout: Option<Duration>,
    /// TLS handshake plus PacketConnect must finish within this [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub login_timeout: Option<Duration>,
    /// Unanswered connection requests expire after this [default: 30s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub request_timeout: Option<Duration>,
    /// Time an existing session has to answer before a same-UUID newcomer takes over [default: 2s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub takeover_probe: Option<Duration>,
    /// A write to a client slower than this ends its session [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub write_timeout: Option<Duration>,
    /// Maximum simultaneous connections [default: 200000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Maximum simultaneous connections per source IP [default: 64].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// REST API requests per second per source IP, sustained [default: 5].
    #[arg(long, value_name = "N")]
    pub api_rate: Option<u32>,
    /// REST API burst per source IP [default: 20].
    #[arg(long, value_name = "N")]
    pub api_burst: Option<u32>,
    /// REST API: TLS handshake, request headers (or the next request on a kept-alive
    /// connection) and request body must each arrive within this [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_duration")]
    pub api_timeout: Option<Duration>,
    /// Maximum simultaneous REST API connections; when full, the longest-idle one is evicted [default: 1024].
    #[arg(long, value_name = "N")]
    pub api_max_connections: Option<usize>,
    /// Maximum simultaneous REST API connections per source IP (IPv6: per /64) [default: 8].
    #[arg(long, value_name = "N")]
    pub api_max_connections_per_ip: Option<usize>,
    /// Listen backlog of the Connect and API listeners, capped by net.core.somaxconn [default: 4096].
    #[arg(long, value_name = "N")]
    pub listen_backlog: Option<u32>,
}

/// Why the settings could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a bad value.
    #[error("invalid config file {path}: {message}")]
    ParseConfig {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("invalid value {value:?} in environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// `cert` and `key` must come together.
    #[error(
        "set both cert and key (a PEM certificate chain and its private key), or neither for a self-signed certificate"
    )]
    CertWithoutKey,
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The library configuration.
    pub server: ServerConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive.
    pub log_level: String,
    /// Where to announce the bound addresses, if anywhere.
    pub ready_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Reads every `CHATR_*` variable through `env` into a layer.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        fn get<T>(
            env: &dyn Fn(&str) -> Option<String>,
            var: &'static str,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, SettingsError> {
            match env(var) {
                None => Ok(None),
                Some(value) if value.trim().is_empty() => Ok(None),
                Some(value) => {
                    parse(value.trim())
                        .map(Some)
                        .map_err(|message| SettingsError::Env {
                            var,
                            value,
                            message,
                        })
                }
            }
        }
        let text = |s: &str| Ok::<_, String>(s.to_owned());
        let path = |s: &str| Ok::<_, String>(PathBuf::from(s));
        let addr = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|e| format!("{e}; expected IP:PORT"))
        };
        let num = |s: &str| s.parse::<usize>().map_err(|e| e.to_string());
        let num32 = |s: &str| s.parse::<u32>().map_err(|e| e.to_string());
        Ok(Self {
            config: get(env, "CHATR_CONFIG", path)?,
            listen: get(env, "CHATR_LISTEN", addr)?,
            api_listen: get(env, "CHATR_API_LISTEN", addr)?,
            data_dir: get(env, "CHATR_DATA_DIR", path)?,
            cert: get(env, "CHATR_CERT", path)?,
            key: get(env, "CHATR_KEY", path)?,
            san: get(env, "CHATR_SAN", |s| {
                Ok(s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect())
            })?,
            registration: get(env, "CHATR_REGISTRATION", parse_policy)?,
            require_channel_binding: get(env, "CHATR_REQUIRE_CHANNEL_BINDING", parse_bool)?,
            log_format: get(env, "CHATR_LOG_FORMAT", |s| LogFormat::from_str(s, true))?,
            log_level: get(env, "CHATR_LOG_LEVEL", text)?,
            ready_file: get(env, "CHATR_READY_FILE", path)?,
            ping_interval: get(env, "CHATR_PING_INTERVAL", parse_duration)?,
            ping_timeout: get(env, "CHATR_PING_TIMEOUT", parse_duration)?,
            login_timeout: get(env, "CHATR_LOGIN_TIMEOUT", parse_duration)?,
            request_timeout: get(env, "CHATR_REQUEST_TIMEOUT", parse_duration)?,
            takeover_probe: get(env, "CHATR_TAKEOVER_PROBE", parse_duration)?,
            write_timeout: get(env, "CHATR_WRITE_TIMEOUT", parse_duration)?,
            max_connections: get(env, "CHATR_MAX_CONNECTIONS", num)?,
            max_connections_per_ip: get(env, "CHATR_MAX_CONNECTIONS_PER_IP", num)?,
            api_rate: get(env, "CHATR_API_RATE", num32)?,
            api_burst: get(env, "CHATR_API_BURST", num32)?,
            api_timeout: get(env, "CHATR_API_TIMEOUT", parse_duration)?,
            api_max_connections: get(env, "CHATR_API_MAX_CONNECTIONS", num)?,
            api_max_connections_per_ip: get(env, "CHATR_API_MAX_CONNECTIONS_PER_IP", num)?,
            listen_backlog: get(env, "CHATR_LISTEN_BACKLOG", num32)?,
        })
    }

    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|err| SettingsError::ParseConfig {
            path: path.display().to_string(),
            message: err.to_string(),
        })
    }

    /// Field by field: `self` where set, else `lower`.
    #[must_use]
    pub fn or(self, lower: Self) -> Self {
        Self {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            api_listen: self.api_listen.or(lower.api_listen),
            data_dir: self.data_dir.or(lower.data_dir),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            san: self.san.or(lower.san),
            registration: self.registration.or(lower.registration),
            require_channel_binding: self
                .require_channel_binding
                .or(lower.require_channel_binding),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            ready_file: self.ready_file.or(lower.ready_file),
            ping_interval: self.ping_interval.or(lower.ping_interval),
            ping_timeout: self.ping_timeout.or(lower.ping_timeout),
            login_timeout: self.login_timeout.or(lower.login_timeout),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            takeover_probe: self.takeover_probe.or(lower.takeover_probe),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            api_rate: self.api_rate.or(lower.api_rate),
            api_burst: self.api_burst.or(lower.api_burst),
            api_timeout: self.api_timeout.or(lower.api_timeout),
            api_max_connections: self.api_max_connections.or(lower.api_max_connections),
            api_max_connections_per_ip: self
                .api_max_connections_per_ip
                .or(lower.api_max_connections_per_ip),
            listen_backlog: self.listen_backlog.or(lower.listen_backlog),
        }
    }

    /// Layers CLI (`self`) over the environment over the config file, then
    /// fills defaults. The config file is read from disk.
    pub fn resolve(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let env_layer = Self::from_env(env)?;
        let config_path = self.config.clone().or_else(|| env_layer.config.clone());
        let file_layer = match config_path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| SettingsError::ReadConfig {
                        path: path.display().to_string(),
                        source,
                    })?;
                Self::from_toml(&text, &path)?
            }
            None => Self::default(),
        };
        self.or(env_layer).or(file_layer).finish()
    }

    /// Fills defaults for whatever no layer set.
    pub fn finish(self) -> Result<Settings, SettingsError> {
        let mut server =
            ServerConfig::new(self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        if let Some(listen) = self.listen {
            server.listen = listen;
        }
        if let Some(api_listen) = self.api_listen {
            server.api_listen = api_listen;
        }
        match (self.cert, self.key) {
            (Some(cert), Some(key)) => {
                server.cert = Some(cert);
                server.key = Some(key);
            }
            (None, None) => {}
            _ => return Err(SettingsError::CertWithoutKey),
        }
        server.san = self.san.unwrap_or_default();
        server.registration = self.registration.unwrap_or_default();
        server.require_channel_binding = self.require_channel_binding.unwrap_or(false);
        let t = &mut server.timings;
        let set = |slot: &mut Duration, value: Option<Duration>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        set(&mut t.ping_interval, self.ping_interval);
        set(&mut t.ping_timeout, self.ping_timeout);
        set(&mut t.login_timeout, self.login_timeout);
        set(&mut t.request_timeout, self.request_timeout);
        set(&mut t.takeover_probe, self.takeover_probe);
        set(&mut t.write_timeout, self.write_timeout);
        set(&mut t.api_timeout, self.api_timeout);
        let l = &mut server.limits;
        if let Some(v) = self.max_connections {
            l.max_connections = v;
        }
        if let Some(v) = self.max_connections_per_ip {
            l.max_connections_per_ip = v;
        }
        if let Some(v) = self.api_rate {
            l.api_requests_per_second = v;
        }
        if let Some(v) = self.api_burst {
            l.api_burst = v;
        }
        if let Some(v) = self.api_max_connections {
            l.api_max_connections = v;
        }
        if let Some(v) = self.api_max_connections_per_ip {
            l.api_max_connections_per_ip = v;
        }
        if let Some(v) = self.listen_backlog {
            l.listen_backlog = v;
        }
        Ok(Settings {
            server,
            log_format: self.log_format.unwrap_or_default(),
            log_level: self.log_level.unwrap_or_else(|| "info".to_owned()),
            ready_file: self.ready_file,
        })
    }
}

impl AdminTarget {
    /// The admin socket and the data directory it lives in, resolved like `serve` would.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(PathBuf, PathBuf), SettingsError> {
        let layer = ServeArgs {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            ..ServeArgs::default()
        };
        let settings = layer.resolve(env)?;
        let data_dir = settings.server.data_dir;
        let socket = self
            .admin_socket
            .clone()
            .unwrap_or_else(|| data_dir.join(ADMIN_SOCKET));
        Ok((socket, data_dir))
    }
}

/// Parses `open`, `token` or `closed`.
pub fn parse_policy(s: &str) -> Result<RegistrationPolicy, String> {
    match s.to_ascii_lowercase().as_str() {
        "open" => Ok(RegistrationPolicy::Open),
        "token" => Ok(RegistrationPolicy::Token),
        "closed" => Ok(RegistrationPolicy::Closed),
        _ => Err("expected open, token or closed".to_owned()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m or 1h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cli(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["chatr-server"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().into_command() {
            Command::Serve(args) => args,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("chatr.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_without_any_layer() {
        let s = cli(&[]).resolve(&env_of(&[])).unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:7777".parse().unwrap());
        assert_eq!(s.server.api_listen, "0.0.0.0:7778".parse().unwrap());
        assert_eq!(s.server.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.server.registration, RegistrationPolicy::Open);
        assert!(!s.server.require_channel_binding);
        assert_eq!(s.server.timings.ping_interval, Duration::from_secs(5));
        assert_eq!(s.log_format, LogFormat::Human);
        assert_eq!(s.log_level, "info");
        assert!(s.server.cert.is_none());
    }

    #[test]
    fn cli_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            r#"
            listen = "127.0.0.1:1001"
            api_listen = "127.0.0.1:2001"
            data_dir = "/from/file"
            registration = "closed"
            ping_interval = "3s"
            log_format = "json"
            "#,
        );
        let env = env_of(&[
            ("CHATR_CONFIG", config.to_str().unwrap()),
            ("CHATR_LISTEN", "127.0.0.1:1002"),
            ("CHATR_API_LISTEN", "127.0.0.1:2002"),
            ("CHATR_REGISTRATION", "token"),
        ]);
        let s = cli(&["--listen", "127.0.0.1:1003"]).resolve(&env).unwrap();
        // CLI wins over env and file.
        assert_eq!(s.server.listen, "127.0.0.1:1003".parse().unwrap());
        // Env wins over file.
        assert_eq!(s.server.api_listen, "127.0.0.1:2002".parse().unwrap());
        assert_eq!(s.server.registration, RegistrationPolicy::Token);
        // File wins over defaults.
        assert_eq!(s.server.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.server.timings.ping_interval, Duration::from_secs(3));
        assert_eq!(s.log_format, LogFormat::Json);
        // Defaults where nobody set anything.
        assert_eq!(s.server.timings.ping_timeout, Duration::from_secs(15));
    }

    #[test]
    fn cli_config_flag_beats_env_config() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "data_dir = \"/a\"\n").unwrap();
        std::fs::write(&b, "data_dir = \"/b\"\n").unwrap();
        let env = env_of(&[("CHATR_CONFIG", a.to_str().unwrap())]);
        let s = cli(&["--config", b.to_str().unwrap()])
            .resolve(&env)
            .unwrap();
        assert_eq!(s.server.data_dir, PathBuf::from("/b"));
    }

    #[test]
    fn every_key_parses_in_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            r#"
            listen = "[::1]:7000"
            api_listen = "[::1]:7001"
            data_dir = "d"
            cert = "c.pem"
            key = "k.pem"
            san = ["chat.example.org", "203.0.113.7"]
            registration = "token"
            require_channel_binding = true
            log_format = "json"
            log_level = "debug"
            ready_file = "r.json"
            ping_interval = "200ms"
            ping_timeout = "1s"
            login_timeout = "2s"
            request_timeout = "1m"
            takeover_probe = "300ms"
            write_timeout = "4s"
            max_connections = 10
            max_connections_per_ip = 2
            api_rate = 7
            api_burst = 9
            api_timeout = "3s"
            api_max_connections = 11
            api_max_connections_per_ip = 3
            listen_backlog = 512
            "#,
        );
        let from_file = cli(&["--config", config.to_str().unwrap()])
            .resolve(&env_of(&[]))
            .unwrap();
        let from_env = cli(&[])
            .resolve(&env_of(&[
                ("CHATR_LISTEN", "[::1]:7000"),
                ("CHATR_API_LISTEN", "[::1]:7001"),
                ("CHATR_DATA_DIR", "d"),
                ("CHATR_CERT", "c.pem"),
                ("CHATR_KEY", "k.pem"),
                ("CHATR_SAN", "chat.example.org, 203.0.113.7"),
                ("CHATR_REGISTRATION", "token"),
                ("CHATR_REQUIRE_CHANNEL_BINDING", "true"),
                ("CHATR_LOG_FORMAT", "json"),
                ("CHATR_LOG_LEVEL", "debug"),
                ("CHATR_READY_FILE", "r.json"),
                ("CHATR_PING_INTERVAL", "200ms"),
                ("CHATR_PING_TIMEOUT", "1s"),
                ("CHATR_LOGIN_TIMEOUT", "2s"),
                ("CHATR_REQUEST_TIMEOUT", "1m"),
                ("CHATR_TAKEOVER_PROBE", "300ms"),
                ("CHATR_WRITE_TIMEOUT", "4s"),
                ("CHATR_MAX_CONNECTIONS", "10"),
                ("CHATR_MAX_CONNECTIONS_PER_IP", "2"),
                ("CHATR_API_RATE", "7"),
                ("CHATR_API_BURST", "9"),
                ("CHATR_API_TIMEOUT", "3s"),
                ("CHATR_API_MAX_CONNECTIONS", "11"),
                ("CHATR_API_MAX_CONNECTIONS_PER_IP", "3"),
                ("CHATR_LISTEN_BACKLOG", "512"),
            ]))
            .unwrap();
        let from_cli = cli(&[
            "--listen=[::1]:7000",
            "--api-listen=[::1]:7001",
            "--data-dir=d",
            "--cert=c.pem",
            "--key=k.pem",
            "--san=chat.example.org",
            "--san=203.0.113.7",
            "--registration=token",
            "--require-channel-binding",
            "--log-format=json",
            "--log-level=debug",
            "--ready-file=r.json",
            "--ping-interval=200ms",
            "--ping-timeout=1s",
            "--login-timeout=2s",
            "--request-timeout=1m",
            "--takeover-probe=300ms",
            "--write-timeout=4s",
            "--max-connections=10",
            "--max-connections-per-ip=2",
            "--api-rate=7",
            "--api-burst=9",
            "--api-timeout=3s",
            "--api-max-connections=11",
            "--api-max-connections-per-ip=3",
            "--listen-backlog=512",
        ])
        .resolve(&env_of(&[]))
        .unwrap();
        for s in [&from_file, &from_env, &from_cli] {
            let c = &s.server;
            assert_eq!(c.listen, "[::1]:7000".parse().unwrap());
            assert_eq!(c.api_listen, "[::1]:7001".parse().unwrap());
            assert_eq!(c.data_dir, PathBuf::from("d"));
            assert_eq!(c.cert.as_deref(), Some(Path::new("c.pem")));
            assert_eq!(c.key.as_deref(), Some(Path::new("k.pem")));
            assert_eq!(c.san, vec!["chat.example.org", "203.0.113.7"]);
            assert_eq!(c.registration, RegistrationPolicy::Token);
            assert!(c.require_channel_binding);
            assert_eq!(s.log_format, LogFormat::Json);
            assert_eq!(s.log_level, "debug");
            assert_eq!(s.ready_file.as_deref(), Some(Path::new("r.json")));
            assert_eq!(c.timings.ping_interval, Duration::from_millis(200));
            assert_eq!(c.timings.ping_timeout, Duration::from_secs(1));
            assert_eq!(c.timings.login_timeout, Duration::from_secs(2));
            assert_eq!(c.timings.request_timeout, Duration::from_secs(60));
            assert_eq!(c.timings.takeover_probe, Duration::from_millis(300));
            assert_eq!(c.timings.write_timeout, Duration::from_secs(4));
            assert_eq!(c.limits.max_connections, 10);
            assert_eq!(c.limits.max_connections_per_ip, 2);
            assert_eq!(c.limits.api_requests_per_second, 7);
            assert_eq!(c.limits.api_burst, 9);
            assert_eq!(c.timings.api_timeout, Duration::from_secs(3));
            assert_eq!(c.limits.api_max_connections, 11);
            assert_eq!(c.limits.api_max_connections_per_ip, 3);
            assert_eq!(c.limits.listen_backlog, 512);
        }
    }

    #[test]
    fn cli_false_overrides_env_true() {
        let env = env_of(&[("CHATR_REQUIRE_CHANNEL_BINDING", "1")]);
        let s = cli(&[]).resolve(&env).unwrap();
        assert!(s.server.require_channel_binding);
        let s = cli(&["--require-channel-binding=false"])
            .resolve(&env)
            .unwrap();
        assert!(!s.server.require_channel_binding);
    }

    #[test]
    fn bad_values_are_reported_with_their_source() {
        let err = cli(&[])
            .resolve(&env_of(&[("CHATR_LISTEN", "nowhere")]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                SettingsError::Env {
                    var: "CHATR_LISTEN",
                    ..
                }
            ),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "lisen = \"127.0.0.1:1\"\n");
        let err = cli(&["--config", config.to_str().unwrap()])
            .resolve(&env_of(&[]))
            .unwrap_err();
        assert!(matches!(err, SettingsError::ParseConfig { .. }), "{err}");
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = cli(&["--config", "/nonexistent/chatr.toml"])
            .resolve(&env_of(&[]))
            .unwrap_err();
        assert!(matches!(err, SettingsError::ReadConfig { .. }));
        let err = cli(&["--cert", "c.pem"]).resolve(&env_of(&[])).unwrap_err();
        assert!(matches!(err, SettingsError::CertWithoutKey));
        assert!(Cli::try_parse_from(["chatr-server", "--registration", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["chatr-server", "--ping-interval", "5 parsecs"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn subcommands_parse() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["chatr-server"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(Cli::into_command)
        };
        assert!(matches!(
            parse(&["identity", "add", "u", "k", "--data-dir", "/d"]).unwrap(),
            Command::Identity { action: IdentityAction::Add { .. }, target } if target.data_dir.as_deref() == Some(Path::new("/d"))
        ));
        assert!(matches!(
            parse(&["identity", "list"]).unwrap(),
            Command::Identity {
                action: IdentityAction::List,
                ..
            }
        ));
        assert!(matches!(
            parse(&["token", "issue"]).unwrap(),
            Command::Token {
                action: TokenAction::Issue,
                ..
            }
        ));
        assert!(matches!(
            parse(&["serve", "--listen", "127.0.0.1:1"]).unwrap(),
            Command::Serve(ServeArgs {
                listen: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&["cert", "server", "--san", "localhost"]).unwrap(),
            Command::Cert {
                action: CertAction::Server { .. }
            }
        ));
        // Serve flags and another subcommand don't mix.
        assert!(parse(&["--listen", "127.0.0.1:1", "identity", "list"]).is_err());
    }

    #[test]
    fn admin_target_uses_data_dir_layers() {
        let env = env_of(&[("CHATR_DATA_DIR", "/srv/chatr")]);
        let (socket, dir) = AdminTarget::default().resolve(&env).unwrap();
        assert_eq!(dir, PathBuf::from("/srv/chatr"));
        assert_eq!(socket, PathBuf::from("/srv/chatr/admin.sock"));
        let target = AdminTarget {
            admin_socket: Some("/tmp/x.sock".into()),
            ..AdminTarget::default()
        };
        assert_eq!(
            target.resolve(&env).unwrap().0,
            PathBuf::from("/tmp/x.sock")
        );
    }
}
