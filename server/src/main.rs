//! `chatr-server`: runs the Connect server (default `serve`) and its admin
//! commands. Thin on purpose: settings come from `settings.rs`, the server is
//! the library's `start`, admin commands go through `admin/`.
//!
//! Signals while serving: SIGTERM or Ctrl-C → graceful shutdown (every client
//! gets PacketDisconnect "Server shutting down", registry writes finish, exit
//! 0); SIGHUP → reload the certificate without dropping sessions.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use chatr_server::RegistrationPolicy;
use chatr_server::admin::protocol::{AdminRequest, AdminResponse};
use chatr_server::admin::{self, AdminContext, certs};
use chatr_server::registry::{DATABASE_FILE, Registry};
use chatr_server::settings::{
    AdminTarget, CertAction, Cli, Command, IdentityAction, LogFormat, ServeArgs, Settings,
    TokenAction,
};

// jemalloc with background purging: after load drops, freed pages go back to
// the kernel within about 10 s (dirty_decay_ms), where glibc's malloc kept RSS
// at its peak (BENCHMARKS.md, "Memory after load").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Longest a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.into_command())) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Identity { action, target } => {
            let request = match action {
                IdentityAction::Add { uuid, public_key } => AdminRequest::IdentityAdd {
                    uuid,
                    key: public_key,
                },
                IdentityAction::List => AdminRequest::IdentityList,
                IdentityAction::Remove { uuid } => AdminRequest::IdentityRemove { uuid },
            };
            admin_command(&target, request).await
        }
        Command::Token {
            action: TokenAction::Issue,
            target,
        } => admin_command(&target, AdminRequest::TokenIssue).await,
        Command::Cert { action } => cert(action),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.resolve(&env)?;
    init_tracing(&settings)?;
    let shutdown = CancellationToken::new();
    // Install the handlers before binding, so a signal never hits the default action.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let handle = chatr_server::start(settings.server.clone(), shutdown.clone())
        .await
        .context("cannot start the server")?;

    if settings.log_format == LogFormat::Human {
        println!(
            "chatr-server is running\n  \
             connect (TLS on TCP, discovery/STUN on UDP): {}\n  \
             registry API (HTTPS): https://{}\n  \
             certificate SHA-256 fingerprint: {}\n  \
             data dir: {} (registration: {})\n  \
             admin: chatr-server identity list --data-dir {}",
            handle.connect_addr(),
            handle.api_addr(),
            handle.cert_fingerprint(),
            settings.server.data_dir.display(),
            policy_name(settings.server.registration),
            settings.server.data_dir.display(),
        );
    }
    if let Some(path) = &settings.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({
                "connect": handle.connect_addr().to_string(),
                "api": handle.api_addr().to_string(),
                "fingerprint": handle.cert_fingerprint(),
                "admin_socket": handle.admin_socket(),
                "pid": std::process::id(),
            }),
        )?;
    }

    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            res = tokio::signal::ctrl_c() => {
                if let Err(err) = res {
                    tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                }
                tracing::info!("Ctrl-C: shutting down");
                break;
            }
            _ = sighup.recv() => match handle.tls().reload() {
                Ok(()) => tracing::info!(fingerprint = %handle.cert_fingerprint(), "SIGHUP: certificate reloaded"),
                Err(err) => tracing::error!(error = %err, "SIGHUP: certificate reload failed; keeping the old one"),
            },
        }
    }
    shutdown.cancel();
    tokio::select! {
        () = handle.join() => {}
        () = tokio::time::sleep(SHUTDOWN_DEADLINE) => {
            tracing::error!("graceful shutdown took longer than {SHUTDOWN_DEADLINE:?}; exiting");
            return Ok(ExitCode::FAILURE);
        }
        _ = sigterm.recv() => {
            tracing::warn!("second SIGTERM: exiting without waiting");
            return Ok(ExitCode::FAILURE);
        }
    }
    if let Some(path) = &settings.ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_name(policy: RegistrationPolicy) -> &'static str {
    match policy {
        RegistrationPolicy::Open => "open",
        RegistrationPolicy::Token => "token",
        RegistrationPolicy::Closed => "closed",
    }
}

fn init_tracing(settings: &Settings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .with_context(|| format!("invalid log level {:?}", settings.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match settings.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("cannot install the logger: {err}"))
}

/// Writes the file atomically so a watcher never reads half of it.
fn write_ready_file(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{value}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write ready file {}", path.display()))
}

/// Sends one command to the running server, or, if none runs on this data
/// dir, executes it directly on the registry file.
async fn admin_command(target: &AdminTarget, request: AdminRequest) -> anyhow::Result<ExitCode> {
    let (socket, data_dir) = target.resolve(&env)?;
    let answer = match admin::client::call(&socket, &request).await {
        Ok(answer) => answer,
        Err(err) if admin::client::is_not_running(&err) && target.admin_socket.is_none() => {
            offline(&data_dir, request)
                .await
                .with_context(|| format!("{err}; and the registry could not be opened directly"))?
        }
        Err(err) => return Err(err.into()),
    };
    Ok(print_answer(&answer))
}

async fn offline(data_dir: &Path, request: AdminRequest) -> anyhow::Result<AdminResponse> {
    let creates = matches!(
        request,
        AdminRequest::IdentityAdd { .. } | AdminRequest::TokenIssue
    );
    if !creates && !data_dir.join(DATABASE_FILE).exists() {
        bail!(
            "no server is running and there is no registry in {}; check --data-dir",
            data_dir.display()
        );
    }
    let registry = Registry::open_in(data_dir)?;
    let answer = admin::execute(&AdminContext::new(registry.clone(), None), request).await;
    registry.close().await;
    Ok(answer)
}

fn print_answer(answer: &AdminResponse) -> ExitCode {
    if !answer.ok {
        eprintln!(
            "error: {} ({})",
            answer.message.as_deref().unwrap_or("the server refused"),
            answer.error.as_deref().unwrap_or("Error")
        );
        return ExitCode::FAILURE;
    }
    if let Some(identities) = &answer.identities {
        for id in identities {
            println!("{} {}", id.client_id, id.public_key);
        }
    }
    if let Some(outcome) = &answer.outcome {
        println!("identity {outcome}");
    }
    if let Some(removed) = answer.removed {
        if !removed {
            eprintln!("error: no such identity");
            return ExitCode::FAILURE;
        }
        let disconnected = answer.disconnected.unwrap_or(false);
        println!(
            "identity removed{}",
            if disconnected {
                "; its session was disconnected"
            } else {
                ""
            }
        );
    }
    if let Some(token) = &answer.token {
        println!("{token}");
        eprintln!("single-use registration token; send it in the Chatr-Registration-Token header");
    }
    if let (Some(ids), Some(tokens)) = (answer.identity_count, answer.unused_tokens) {
        println!("{ids} identities, {tokens} unused tokens");
    }
    ExitCode::SUCCESS
}

fn cert(action: CertAction) -> anyhow::Result<ExitCode> {
    match action {
        CertAction::Ca { out, name, days } => {
            let ca = certs::create_ca(&out, &name, days)?;
            println!(
                "CA certificate: {}\nCA key (keep secret): {}\nfingerprint: {}\n\
                 next: chatr-server cert server --ca-cert {} --ca-key {} --ca-name {:?} --san <host>",
                ca.cert.display(),
                ca.key.display(),
                ca.fingerprint,
                ca.cert.display(),
                ca.key.display(),
                name,
            );
        }
        CertAction::Server {
            ca_cert,
            ca_key,
            ca_name,
            out,
            sans,
            days,
        } => {
            let issued = certs::issue_server(&ca_cert, &ca_key, &ca_name, &out, &sans, days)?;
            println!(
                "certificate chain: {}\nkey: {}\nfingerprint: {}\n\
                 next: chatr-server --cert {} --key {}",
                issued.cert.display(),
                issued.key.display(),
                issued.fingerprint,
                issued.cert.display(),
                issued.key.display(),
            );
        }
        CertAction::Fingerprint { file } => {
            println!("{}", certs::fingerprint_file(&file)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
