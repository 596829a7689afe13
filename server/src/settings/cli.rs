//! The `chatr-server` command line: the subcommands and the admin target. The
//! `serve` flags are [`ServeArgs`], generated from the settings table.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::ServeArgs;

const ENV_HELP: &str = "\
Every serve flag can also be set through a CHATR_* environment variable (the flag name in upper case,
'-' replaced by '_', e.g. CHATR_API_LISTEN, CHATR_DATA_DIR, CHATR_REGISTRATION; CHATR_SAN takes a
comma-separated list) or in the TOML file given by --config / CHATR_CONFIG (same names with '_', e.g.
api_listen = \"[::]:7778\"). Precedence: command line > environment > config file > defaults.
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
