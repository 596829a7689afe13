//! `chatr`, the command-line client (crate `chatr-cli`): a thin layer over the
//! `chatr_client` library, one module per command.
//!
//! Every command loads what it needs from the home directory (`--home`, else
//! the XDG config dir), does one job and exits with a status that says what
//! went wrong (see the exit codes in `--help`), printing an actionable message.
//!
//! The CLI lives in its own crate so that programs embedding `chatr-client`
//! don't pay for what only the command line needs: argument parsing, a log
//! subscriber, and the in-process server `chatr demo` starts (`chatr-server`).

mod byte_size;
mod chat;
mod contacts;
mod demo;
mod files;
mod link;
mod node;
mod pipe;
mod room;
mod setup;
mod status;
mod tui;

use std::path::PathBuf;
use std::process::ExitCode;

use chatr_client::ClientError;
use chatr_client::home::Home;
use chatr_client::rest::{ApiErrorKind, RestError};
use chatr_client::session::SessionError;
use clap::{Parser, Subcommand};

/// Chatr: direct, encrypted peer links across NATs, brokered by a Connect server.
#[derive(Debug, Parser)]
#[command(name = "chatr", version, about, long_about = None, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Home directory with the identity, contacts and config
    /// [default: $XDG_CONFIG_HOME/chatr or ~/.config/chatr]
    #[arg(long, global = true, env = "CHATR_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// After a link attempt, write a JSON report of it to FILE
    #[arg(long, global = true, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Which paths peer links may use: auto (direct when it works, else relayed by the
    /// server), direct (never relayed), relay (always relayed), relay-tls (relayed inside TLS)
    #[arg(
        long,
        global = true,
        env = "CHATR_PATH",
        value_name = "POLICY",
        default_value = "auto"
    )]
    path: chatr_client::path::PathPolicy,
    /// Ask the router to forward a public port to our UDP socket: auto (PCP, NAT-PMP,
    /// then UPnP IGD), off, or only one of pcp, nat-pmp, upnp
    #[arg(
        long,
        global = true,
        env = "CHATR_PORT_MAPPING",
        value_name = "MODE",
        default_value = "auto"
    )]
    port_mapping: chatr_client::portmap::PortMapMode,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG also works
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "\
Exit status: 0 ok, 1 other error, 2 usage, 3 server unreachable, 4 peer denied/offline/no answer,
5 hole punching failed, 6 peer key mismatch or link refused, 7 server certificate not trusted,
8 login/registration refused, 9 data not (fully) delivered, 130 interrupted.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an identity (ed25519 key + UUID) and record the server and how to trust it
    Init(setup::InitArgs),
    /// Print this identity's UUID and base64 public key on one line.
    // The help text shows the line's shape, which rustdoc would read as HTML tags.
    #[command(about = "Print \"<uuid> <public-key-base64>\"")]
    Whoami,
    /// Register this identity with the server's registry
    Register(setup::TokenArgs),
    /// Replace this identity's key (the registry checks the old key's signature)
    RotateKey(setup::TokenArgs),
    /// Manage the address book
    #[command(subcommand)]
    Contacts(contacts::ContactsCommand),
    /// Show server reachability, our public TCP/UDP endpoints and the NAT mapping
    Status(status::StatusArgs),
    /// Stay online; accept link requests from contacts and chat with each
    Listen(chat::ListenArgs),
    /// Open a link to a peer and chat line by line
    Chat(chat::ChatArgs),
    /// netcat over a peer link: stdin to the peer, the peer to stdout
    Pipe(pipe::PipeArgs),
    /// Send a file to a peer (size and SHA-256 checked)
    Send(files::SendArgs),
    /// Wait for one link and receive the files the peer sends
    Receive(files::ReceiveArgs),
    /// Group chats: create, invite, join, leave, who, send
    #[command(subcommand)]
    Room(room::RoomCommand),
    /// The terminal UI: contacts and who is online, chats, rooms, link paths
    Tui(tui::TuiArgs),
    /// Start a local server and two clients, link them and show them chat
    Demo,
}

/// What a command run needs besides its own arguments.
#[derive(Debug, Clone)]
pub(crate) struct Globals {
    pub(crate) home: Home,
    pub(crate) report: Option<PathBuf>,
    /// `--path`: which paths links may use.
    pub(crate) path: chatr_client::path::PathPolicy,
    /// `--port-mapping`: whether and how to ask the router for a port mapping.
    pub(crate) port_mapping: chatr_client::portmap::PortMapMode,
    /// The last report written to `report`, which a pipe completes with its transfer.
    pub(crate) last_report: std::sync::Arc<std::sync::Mutex<Option<chatr_client::AttemptReport>>>,
}

/// Errors of the CLI: a library error, or a CLI-level problem.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Input the user can fix.
    #[error("{0}")]
    Usage(String),
    /// Not every byte reached the peer.
    #[error("{0}")]
    Undelivered(String),
    /// Ctrl-C (or SIGTERM) before the job was done.
    #[error("interrupted")]
    Interrupted,
    /// A room command failed.
    #[error(transparent)]
    Room(#[from] chatr_client::room::host::HostError),
    /// The rooms on disk.
    #[error(transparent)]
    RoomStore(#[from] chatr_client::room::store::StoreError),
    /// The command's task panicked or was cancelled: a bug in chatr.
    #[error("the command stopped unexpectedly ({0}); this is a bug in chatr, please report it")]
    TaskFailed(#[from] tokio::task::JoinError),
}

/// `?` works on every library layer's error.
macro_rules! from_layer {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError::Client(ClientError::from(e))
            }
        }
    )*};
}
from_layer!(
    chatr_client::identity::IdentityError,
    chatr_client::config::ConfigError,
    chatr_client::contacts::ContactsError,
    chatr_client::trust::TrustError,
    RestError,
    SessionError,
    chatr_client::link::LinkError
);

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Undelivered(_) => 9,
            CliError::Interrupted => 130,
            CliError::Io(_)
            | CliError::Room(_)
            | CliError::RoomStore(_)
            | CliError::TaskFailed(_) => 1,
            CliError::Client(e) => client_exit_code(e),
        }
    }
}

fn client_exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Session(s) => match s {
            SessionError::ServerCertMismatch(_) => 7,
            SessionError::LoginRejected(_) | SessionError::AlreadyConnected => 8,
            _ => 3,
        },
        ClientError::Rest(r) => match r {
            RestError::ServerCertMismatch(_) => 7,
            RestError::Connect { .. } | RestError::Timeout(_) => 3,
            RestError::Api {
                kind:
                    ApiErrorKind::ClientAlreadyRegistered
                    | ApiErrorKind::InvalidSignature
                    | ApiErrorKind::RegistrationClosed
                    | ApiErrorKind::InvalidToken,
                ..
            } => 8,
            _ => 1,
        },
        ClientError::SessionLost(_) => 3,
        ClientError::Denied { .. } | ClientError::RequestTimeout { .. } => 4,
        ClientError::PunchFailed(_) => 5,
        ClientError::KeyMismatch { .. } | ClientError::LinkRefused { .. } => 6,
        _ => 1,
    }
}

/// Runs the CLI: parses arguments, runs the command, maps errors to exit codes.
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let globals = Globals {
        home: Home::new(cli.home.clone().unwrap_or_else(Home::default_dir)),
        report: cli.report.clone(),
        path: cli.path,
        port_mapping: cli.port_mapping,
        last_report: std::sync::Arc::default(),
    };
    // One worker: a link's endpoint driver, connection driver and pipe task then hand
    // work to each other on one thread instead of waking a second worker for every
    // batch of datagrams. The pipe's stdin and stdout have threads of their own, and
    // blocking work still goes to the blocking pool. Measured (BENCHMARKS.md, issue
    // 12): 14-15 % more pipe throughput and 4-9 % less CPU per GiB than two workers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatr: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs as a task on that worker, not in `block_on` on the main thread:
    // otherwise the pipe's task (checksum, framing) ran on the main thread and every
    // batch of stream data woke it from the worker. Measured (BENCHMARKS.md, issue 12):
    // 4-17 % more pipe throughput, 0.1-0.4 s/GiB less CPU on each side.
    let command = cli.command;
    let task_globals = globals.clone();
    let result = runtime.block_on(async move {
        tokio::spawn(async move { run(command, &task_globals).await }).await?
    });
    // Background tasks are stopped by each command; don't wait for stragglers
    // (e.g. a blocking stdin read) when leaving.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatr: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command, g: &Globals) -> Result<(), CliError> {
    // Short commands keep the default (die on Ctrl-C); long-running ones stop politely.
    if matches!(
        command,
        Command::Listen(_)
            | Command::Chat(_)
            | Command::Pipe(_)
            | Command::Send(_)
            | Command::Receive(_)
            | Command::Room(_)
    ) {
        link::watch_interrupts();
    }
    match command {
        Command::Init(args) => setup::init(g, args).await,
        Command::Whoami => setup::whoami(g),
        Command::Register(args) => setup::register(g, args).await,
        Command::RotateKey(args) => setup::rotate_key(g, args).await,
        Command::Contacts(cmd) => contacts::run(g, cmd).await,
        Command::Status(args) => status::run(g, args).await,
        Command::Listen(args) => chat::listen(g, args).await,
        Command::Chat(args) => chat::chat(g, args).await,
        Command::Pipe(args) => pipe::run(g, args).await,
        Command::Send(args) => files::send(g, args).await,
        Command::Receive(args) => files::receive(g, args).await,
        Command::Room(cmd) => room::run(g, cmd).await,
        Command::Tui(args) => tui::run(g, args).await,
        Command::Demo => demo::run().await,
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info,chatr_client=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
