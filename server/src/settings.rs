//! Command line, environment and config file → [`ServerConfig`].
//!
//! `chatr-server` is configured in four layers; the first that sets a key wins:
//!
//! 1. command-line flags (`--listen [::]:7777`),
//! 2. `CHATR_*` environment variables (`CHATR_LISTEN=0.0.0.0:7777`),
//! 3. the TOML file named by `--config` / `CHATR_CONFIG` (`listen = "[::]:7777"`),
//! 4. built-in defaults ([`Settings::defaults`]: the library's [`ServerConfig`] defaults).
//!
//! Every key has the same name in all three places: the flag is the key with
//! `-` for `_`, the variable is `CHATR_` + the key in upper case. The environment
//! is passed in as a function so tests can layer settings without touching the
//! process environment.
//!
//! # Adding a setting
//!
//! Each setting is declared once, as a row of the table below (the
//! `settings_table!` macro generates the flag, the variable, the file key and the
//! merge from it):
//!
//! 1. give the value a home with its default: a field of [`ServerConfig`] (or
//!    its `Timings` / `Limits`), or of [`Settings`] for what only the binary uses;
//! 2. add the row: help text, key and type, where the value lands, the `CHATR_*`
//!    variable and its parser, and any clap/serde attributes the type needs
//!    (durations take `parse_duration` and `de_duration`, as the rows above do);
//! 3. add it to `deploy/chatr-server.toml` (the example file lists every key) and
//!    to the `every_key_parses_in_every_layer` test.

mod cli;
mod table;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::{AdminTarget, CertAction, Cli, Command, IdentityAction, TokenAction};
pub use values::{LogFormat, parse_duration, parse_policy};

use crate::config::{RegistrationPolicy, ServerConfig};
use table::settings_table;
use values::{
    ShowDefault, de_duration, parse_addr, parse_bool, parse_list, parse_log_format, parse_number,
    parse_path, parse_text,
};

/// Data directory used when none is configured (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "chatr-data";

/// Name of the admin socket inside the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

settings_table! {
    /// TCP (TLS) and UDP (endpoint discovery, STUN) address; `[::]` is dual-stack.
    listen: SocketAddr => server.listen,
        env "CHATR_LISTEN" parse parse_addr,
        arg(value_name = "ADDR");
    /// HTTPS registry API address; `[::]` is dual-stack.
    api_listen: SocketAddr => server.api_listen,
        env "CHATR_API_LISTEN" parse parse_addr,
        arg(value_name = "ADDR");
    /// Where the registry, generated certificate and admin socket live.
    data_dir: PathBuf => server.data_dir,
        env "CHATR_DATA_DIR" parse parse_path,
        arg(value_name = "DIR");
    /// PEM certificate chain (e.g. Let's Encrypt fullchain.pem); default: self-signed in the data dir.
    cert: PathBuf => server.cert,
        env "CHATR_CERT" parse parse_path,
        arg(value_name = "FILE");
    /// PEM private key for --cert (e.g. Let's Encrypt privkey.pem).
    key: PathBuf => server.key,
        env "CHATR_KEY" parse parse_path,
        arg(value_name = "FILE");
    /// Extra DNS name or IP for the self-signed certificate (repeatable).
    san: Vec<String> => server.san,
        env "CHATR_SAN" parse parse_list,
        arg(value_name = "NAME");
    /// Who may register over the REST API.
    registration: RegistrationPolicy => server.registration,
        env "CHATR_REGISTRATION" parse parse_policy,
        arg(value_parser = parse_policy, value_name = "open|token|closed");
    /// Refuse version-1 logins (signature not bound to the TLS session).
    require_channel_binding: bool => server.require_channel_binding,
        env "CHATR_REQUIRE_CHANNEL_BINDING" parse parse_bool,
        arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
            value_parser = parse_bool, value_name = "BOOL");
    /// Log format.
    log_format: LogFormat => log_format,
        env "CHATR_LOG_FORMAT" parse parse_log_format,
        arg(value_enum);
    /// Log filter, e.g. `info` or `chatr_server=debug`.
    log_level: String => log_level,
        env "CHATR_LOG_LEVEL" parse parse_text,
        arg(value_name = "FILTER");
    /// Once listening, write `{"connect":…,"api":…,"fingerprint":…}` to this file.
    ready_file: PathBuf => ready_file,
        env "CHATR_READY_FILE" parse parse_path,
        arg(value_name = "FILE");
    /// Ping a session this long after its last pong.
    ping_interval: Duration => server.timings.ping_interval,
        env "CHATR_PING_INTERVAL" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// Drop a session with "Time out" this long after an unanswered ping.
    ping_timeout: Duration => server.timings.ping_timeout,
        env "CHATR_PING_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// TLS handshake plus PacketConnect must finish within this.
    login_timeout: Duration => server.timings.login_timeout,
        env "CHATR_LOGIN_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// Unanswered connection requests expire after this.
    request_timeout: Duration => server.timings.request_timeout,
        env "CHATR_REQUEST_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// Time an existing session has to answer before a same-UUID newcomer takes over.
    takeover_probe: Duration => server.timings.takeover_probe,
        env "CHATR_TAKEOVER_PROBE" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// A write to a client slower than this ends its session.
    write_timeout: Duration => server.timings.write_timeout,
        env "CHATR_WRITE_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// Maximum simultaneous connections.
    max_connections: usize => server.limits.max_connections,
        env "CHATR_MAX_CONNECTIONS" parse parse_number,
        arg(value_name = "N");
    /// Maximum simultaneous connections per source IP.
    max_connections_per_ip: usize => server.limits.max_connections_per_ip,
        env "CHATR_MAX_CONNECTIONS_PER_IP" parse parse_number,
        arg(value_name = "N");
    /// REST API requests per second per source IP, sustained.
    api_rate: u32 => server.limits.api_requests_per_second,
        env "CHATR_API_RATE" parse parse_number,
        arg(value_name = "N");
    /// REST API burst per source IP.
    api_burst: u32 => server.limits.api_burst,
        env "CHATR_API_BURST" parse parse_number,
        arg(value_name = "N");
    /// REST API: TLS handshake, request headers (or the next request on a kept-alive
    /// connection) and request body must each arrive within this.
    api_timeout: Duration => server.timings.api_timeout,
        env "CHATR_API_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// Maximum simultaneous REST API connections; when full, the longest-idle one is evicted.
    api_max_connections: usize => server.limits.api_max_connections,
        env "CHATR_API_MAX_CONNECTIONS" parse parse_number,
        arg(value_name = "N");
    /// Maximum simultaneous REST API connections per source IP (IPv6: per /64).
    api_max_connections_per_ip: usize => server.limits.api_max_connections_per_ip,
        env "CHATR_API_MAX_CONNECTIONS_PER_IP" parse parse_number,
        arg(value_name = "N");
    /// Listen backlog of the Connect and API listeners, capped by net.core.somaxconn.
    listen_backlog: u32 => server.limits.listen_backlog,
        env "CHATR_LISTEN_BACKLOG" parse parse_number,
        arg(value_name = "N");
    /// Connection requests one client may be sent per second, from everyone together.
    incoming_request_rate: u32 => server.limits.incoming_requests_per_second,
        env "CHATR_INCOMING_REQUEST_RATE" parse parse_number,
        arg(value_name = "N");
    /// Burst of connection requests one client may be sent.
    incoming_request_burst: u32 => server.limits.incoming_request_burst,
        env "CHATR_INCOMING_REQUEST_BURST" parse parse_number,
        arg(value_name = "N");
    /// Relay accepted exchanges of version-3 clients that cannot reach each other directly.
    relay: bool => server.relay.enabled,
        env "CHATR_RELAY" parse parse_bool,
        arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
            value_parser = parse_bool, value_name = "BOOL");
    /// Also relay inside TLS, for clients whose network blocks UDP.
    relay_tls: bool => server.relay.tls,
        env "CHATR_RELAY_TLS" parse parse_bool,
        arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
            value_parser = parse_bool, value_name = "BOOL");
    /// Relays the whole server keeps at once.
    relay_max_links: usize => server.relay.max_links,
        env "CHATR_RELAY_MAX_LINKS" parse parse_number,
        arg(value_name = "N");
    /// Relays one client may be a party of at once.
    relay_max_links_per_client: usize => server.relay.max_links_per_client,
        env "CHATR_RELAY_MAX_LINKS_PER_CLIENT" parse parse_number,
        arg(value_name = "N");
    /// A relay that carried nothing for this long is closed.
    relay_idle_timeout: Duration => server.relay.idle_timeout,
        env "CHATR_RELAY_IDLE_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// Relayed bytes per second one client may send, sustained (0 = unlimited).
    relay_client_rate: u64 => server.relay.client_rate,
        env "CHATR_RELAY_CLIENT_RATE" parse parse_number,
        arg(value_name = "BYTES");
    /// Relayed bytes one client may send in a burst.
    relay_client_burst: u64 => server.relay.client_burst,
        env "CHATR_RELAY_CLIENT_BURST" parse parse_number,
        arg(value_name = "BYTES");
    /// Relayed bytes per second for the whole server, sustained (0 = unlimited).
    relay_total_rate: u64 => server.relay.total_rate,
        env "CHATR_RELAY_TOTAL_RATE" parse parse_number,
        arg(value_name = "BYTES");
    /// Relayed bytes the whole server may carry in a burst.
    relay_total_burst: u64 => server.relay.total_burst,
        env "CHATR_RELAY_TOTAL_BURST" parse parse_number,
        arg(value_name = "BYTES");
    /// Relayed datagrams queued for one TLS session before more are dropped.
    relay_tls_queue: usize => server.relay.tls_queue,
        env "CHATR_RELAY_TLS_QUEUE" parse parse_number,
        arg(value_name = "N");
    /// Cluster mode: NATS server URL(s), comma-separated (nats://… or tls://…); unset: one node.
    cluster_nats_url: String => server.cluster.nats_url,
        env "CHATR_CLUSTER_NATS_URL" parse parse_text,
        arg(value_name = "URL");
    /// This node's name in logs, metrics and /healthz (default: the host name).
    cluster_node_name: String => server.cluster.node_name,
        env "CHATR_CLUSTER_NODE_NAME" parse parse_text,
        arg(value_name = "NAME");
    /// Prefix of the NATS subjects the nodes of one cluster share.
    cluster_subject_prefix: String => server.cluster.subject_prefix,
        env "CHATR_CLUSTER_SUBJECT_PREFIX" parse parse_text,
        arg(value_name = "PREFIX");
    /// JetStream key-value bucket holding the session claims.
    cluster_claims_bucket: String => server.cluster.claims_bucket,
        env "CHATR_CLUSTER_CLAIMS_BUCKET" parse parse_text,
        arg(value_name = "NAME");
    /// Longest a request to another node (forward, probe, UDP binding) waits for its answer.
    cluster_request_timeout: Duration => server.cluster.request_timeout,
        env "CHATR_CLUSTER_REQUEST_TIMEOUT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// A session claim not refreshed for this long expires (nodes refresh at a quarter of it).
    cluster_claim_ttl: Duration => server.cluster.claim_ttl,
        env "CHATR_CLUSTER_CLAIM_TTL" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// How often nodes announce themselves; one silent for three intervals counts as gone.
    cluster_heartbeat: Duration => server.cluster.heartbeat,
        env "CHATR_CLUSTER_HEARTBEAT" parse parse_duration,
        arg(value_parser = parse_duration, value_name = "DURATION"),
        serde(default, deserialize_with = "de_duration");
    /// PEM CA file to verify a tls:// NATS server with.
    cluster_nats_ca: PathBuf => server.cluster.nats_ca,
        env "CHATR_CLUSTER_NATS_CA" parse parse_path,
        arg(value_name = "FILE");
    /// Cluster registry: PostgreSQL URL shared by every node; unset: the redb file in the data dir.
    registry_postgres_url: String => registry_postgres_url,
        env "CHATR_REGISTRY_POSTGRES_URL" parse parse_text,
        arg(value_name = "URL");
    /// PEM CA file to verify PostgreSQL's certificate with (sslmode=require or stricter).
    registry_postgres_ca: PathBuf => registry_postgres_ca,
        env "CHATR_REGISTRY_POSTGRES_CA" parse parse_path,
        arg(value_name = "FILE");
    /// PostgreSQL connections each node keeps for registry writes and lookups.
    registry_postgres_pool: usize => registry_postgres_pool,
        env "CHATR_REGISTRY_POSTGRES_POOL" parse parse_number,
        arg(value_name = "N");
    /// Tell version-3 clients which of their mutual contacts are online.
    presence: bool => server.presence.enabled,
        env "CHATR_PRESENCE" parse parse_bool,
        arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
            value_parser = parse_bool, value_name = "BOOL");
    /// Most contacts one session's presence list holds (memory: about 100 bytes each).
    presence_max_contacts: usize => server.presence.max_contacts,
        env "CHATR_PRESENCE_MAX_CONTACTS" parse parse_number,
        arg(value_name = "N");
    /// Presence packets a client may send per second, sustained.
    presence_rate: u32 => server.presence.updates_per_second,
        env "CHATR_PRESENCE_RATE" parse parse_number,
        arg(value_name = "N");
    /// Burst of presence packets a client may send.
    presence_burst: u32 => server.presence.update_burst,
        env "CHATR_PRESENCE_BURST" parse parse_number,
        arg(value_name = "N");
    /// Extra UDP ports answering STUN for clients' NAT discovery, from the listen port + 2
    /// (any free ports when the listen port is 0); 0 = off.
    nat_probe_ports: usize => server.nat_probe_ports,
        env "CHATR_NAT_PROBE_PORTS" parse parse_number,
        arg(value_name = "N");
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
    /// The cluster's PostgreSQL registry (becomes `server.registry_postgres`).
    pub registry_postgres_url: Option<String>,
    /// Its CA file.
    pub registry_postgres_ca: Option<PathBuf>,
    /// Its pool size.
    pub registry_postgres_pool: usize,
}

impl Settings {
    /// What `serve` runs with when no layer sets anything.
    pub fn defaults() -> Self {
        Self {
            server: ServerConfig::new(DEFAULT_DATA_DIR),
            log_format: LogFormat::default(),
            log_level: "info".to_owned(),
            ready_file: None,
            registry_postgres_url: None,
            registry_postgres_ca: None,
            registry_postgres_pool: 8,
        }
    }
}

/// Reads one variable; unset or blank is `None`, a bad value an error naming the variable.
fn env_value<T>(
    env: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, SettingsError> {
    match env(var) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Ok(None),
        Some(value) => parse(value.trim())
            .map(Some)
            .map_err(|message| SettingsError::Env {
                var,
                value,
                message,
            }),
    }
}

/// A row's `--help` line: its doc text (without the closing period) and the default.
fn help_for(doc: &[&str], default: Option<String>) -> String {
    let text = doc
        .iter()
        .map(|line| line.trim())
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.strip_suffix('.').unwrap_or(&text);
    match default {
        Some(default) => format!("{text} [default: {default}]"),
        None => text.to_owned(),
    }
}

impl ServeArgs {
    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|err| SettingsError::ParseConfig {
            path: path.display().to_string(),
            message: err.to_string(),
        })
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
        let mut settings = Settings::defaults();
        self.apply(&mut settings);
        if settings.server.cert.is_some() != settings.server.key.is_some() {
            return Err(SettingsError::CertWithoutKey);
        }
        settings.server.registry_postgres =
            settings
                .registry_postgres_url
                .clone()
                .map(|url| crate::config::PostgresConfig {
                    url,
                    ca_file: settings.registry_postgres_ca.clone(),
                    pool_size: settings.registry_postgres_pool,
                });
        Ok(settings)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
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
        assert_eq!(s.server.listen, "[::]:7777".parse().unwrap());
        assert_eq!(s.server.api_listen, "[::]:7778".parse().unwrap());
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
            incoming_request_rate = 4
            incoming_request_burst = 6
            relay = false
            relay_tls = false
            relay_max_links = 12
            relay_max_links_per_client = 2
            relay_idle_timeout = "90s"
            relay_client_rate = 1000
            relay_client_burst = 2000
            relay_total_rate = 3000
            relay_total_burst = 4000
            relay_tls_queue = 5
            cluster_nats_url = "nats://127.0.0.1:4222"
            cluster_node_name = "n1"
            cluster_subject_prefix = "c1"
            cluster_claims_bucket = "b1"
            cluster_request_timeout = "600ms"
            cluster_claim_ttl = "10m"
            cluster_heartbeat = "2s"
            cluster_nats_ca = "nats-ca.pem"
            registry_postgres_url = "postgresql://chatr@db/chatr"
            registry_postgres_ca = "pg-ca.pem"
            registry_postgres_pool = 3
            presence = false
            presence_max_contacts = 7
            presence_rate = 8
            presence_burst = 9
            nat_probe_ports = 3
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
                ("CHATR_INCOMING_REQUEST_RATE", "4"),
                ("CHATR_INCOMING_REQUEST_BURST", "6"),
                ("CHATR_RELAY", "false"),
                ("CHATR_RELAY_TLS", "false"),
                ("CHATR_RELAY_MAX_LINKS", "12"),
                ("CHATR_RELAY_MAX_LINKS_PER_CLIENT", "2"),
                ("CHATR_RELAY_IDLE_TIMEOUT", "90s"),
                ("CHATR_RELAY_CLIENT_RATE", "1000"),
                ("CHATR_RELAY_CLIENT_BURST", "2000"),
                ("CHATR_RELAY_TOTAL_RATE", "3000"),
                ("CHATR_RELAY_TOTAL_BURST", "4000"),
                ("CHATR_RELAY_TLS_QUEUE", "5"),
                ("CHATR_CLUSTER_NATS_URL", "nats://127.0.0.1:4222"),
                ("CHATR_CLUSTER_NODE_NAME", "n1"),
                ("CHATR_CLUSTER_SUBJECT_PREFIX", "c1"),
                ("CHATR_CLUSTER_CLAIMS_BUCKET", "b1"),
                ("CHATR_CLUSTER_REQUEST_TIMEOUT", "600ms"),
                ("CHATR_CLUSTER_CLAIM_TTL", "10m"),
                ("CHATR_CLUSTER_HEARTBEAT", "2s"),
                ("CHATR_CLUSTER_NATS_CA", "nats-ca.pem"),
                ("CHATR_REGISTRY_POSTGRES_URL", "postgresql://chatr@db/chatr"),
                ("CHATR_REGISTRY_POSTGRES_CA", "pg-ca.pem"),
                ("CHATR_REGISTRY_POSTGRES_POOL", "3"),
                ("CHATR_PRESENCE", "false"),
                ("CHATR_PRESENCE_MAX_CONTACTS", "7"),
                ("CHATR_PRESENCE_RATE", "8"),
                ("CHATR_PRESENCE_BURST", "9"),
                ("CHATR_NAT_PROBE_PORTS", "3"),
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
            "--incoming-request-rate=4",
            "--incoming-request-burst=6",
            "--relay=false",
            "--relay-tls=false",
            "--relay-max-links=12",
            "--relay-max-links-per-client=2",
            "--relay-idle-timeout=90s",
            "--relay-client-rate=1000",
            "--relay-client-burst=2000",
            "--relay-total-rate=3000",
            "--relay-total-burst=4000",
            "--relay-tls-queue=5",
            "--cluster-nats-url=nats://127.0.0.1:4222",
            "--cluster-node-name=n1",
            "--cluster-subject-prefix=c1",
            "--cluster-claims-bucket=b1",
            "--cluster-request-timeout=600ms",
            "--cluster-claim-ttl=10m",
            "--cluster-heartbeat=2s",
            "--cluster-nats-ca=nats-ca.pem",
            "--registry-postgres-url=postgresql://chatr@db/chatr",
            "--registry-postgres-ca=pg-ca.pem",
            "--registry-postgres-pool=3",
            "--presence=false",
            "--presence-max-contacts=7",
            "--presence-rate=8",
            "--presence-burst=9",
            "--nat-probe-ports=3",
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
            assert_eq!(c.nat_probe_ports, 3);
            assert_eq!(c.limits.incoming_requests_per_second, 4);
            assert_eq!(c.limits.incoming_request_burst, 6);
            assert!(!c.relay.enabled);
            assert!(!c.relay.tls);
            assert_eq!(c.relay.max_links, 12);
            assert_eq!(c.relay.max_links_per_client, 2);
            assert_eq!(c.relay.idle_timeout, Duration::from_secs(90));
            assert_eq!(c.relay.client_rate, 1000);
            assert_eq!(c.relay.client_burst, 2000);
            assert_eq!(c.relay.total_rate, 3000);
            assert_eq!(c.relay.total_burst, 4000);
            assert_eq!(c.relay.tls_queue, 5);
            let k = &c.cluster;
            assert_eq!(k.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
            assert_eq!(k.node_name.as_deref(), Some("n1"));
            assert_eq!(k.subject_prefix, "c1");
            assert_eq!(k.claims_bucket, "b1");
            assert_eq!(k.request_timeout, Duration::from_millis(600));
            assert_eq!(k.claim_ttl, Duration::from_secs(600));
            assert_eq!(k.heartbeat, Duration::from_secs(2));
            assert_eq!(k.nats_ca.as_deref(), Some(Path::new("nats-ca.pem")));
            assert_eq!(
                c.registry_postgres,
                Some(crate::config::PostgresConfig {
                    url: "postgresql://chatr@db/chatr".into(),
                    ca_file: Some("pg-ca.pem".into()),
                    pool_size: 3,
                })
            );
            assert!(!c.presence.enabled);
            assert_eq!(c.presence.max_contacts, 7);
            assert_eq!(c.presence.updates_per_second, 8);
            assert_eq!(c.presence.update_burst, 9);
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
    fn every_variable_is_chatr_and_the_key_in_upper_case() {
        assert_eq!(ServeArgs::KEYS.len(), 53);
        for (key, var) in ServeArgs::KEYS {
            assert_eq!(*var, format!("CHATR_{}", key.to_ascii_uppercase()), "{key}");
        }
    }

    #[test]
    fn help_shows_the_library_defaults() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        for line in [
            "is dual-stack [default: [::]:7777]",
            "is dual-stack [default: [::]:7778]",
            "admin socket live [default: chatr-data]",
            "Who may register over the REST API [default: open]",
            "Ping a session this long after its last pong [default: 5s]",
            "unanswered ping [default: 15s]",
            "Maximum simultaneous connections [default: 200000]",
            "REST API burst per source IP [default: 20]",
        ] {
            assert!(help.contains(line), "{line:?} missing from:\n{help}");
        }
        // Nothing set means no default to show.
        assert!(help.contains("PEM private key for --cert (e.g. Let's Encrypt privkey.pem)\n"));
        let mut config = Settings::defaults();
        config.server.timings.ping_interval = Duration::from_millis(1500);
        assert_eq!(
            ShowDefault::show(&config.server.timings.ping_interval).as_deref(),
            Some("1500ms")
        );
        assert_eq!(
            ShowDefault::show(&Duration::from_secs(120)).as_deref(),
            Some("2m")
        );
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
