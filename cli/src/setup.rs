//! `init`, `whoami`, `register`, `rotate-key`: the identity and the server.

use std::path::PathBuf;

use chatr_client::config::{ApiUrl, Config, DEFAULT_CONNECT_PORT, Fingerprint, HostPort, Trust};
use chatr_client::identity::{
    Identity, PENDING_KEY_FILE, generate_key, public_key_base64, read_key, write_key,
};
use chatr_client::rest::{Registration, RegistryClient, RestError};
use chatr_client::trust::{client_config, read_pem_certs};

use super::{CliError, Globals};

/// Arguments of `chatr init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// Connect server: HOST or HOST:PORT (default port 7777)
    #[arg(long, value_name = "HOST[:PORT]")]
    server: String,
    /// Registry API URL [default: https://HOST:7778]
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Trust this server certificate (or the CA certificate that issued it), a PEM file;
    /// it is copied into the home directory
    #[arg(long, value_name = "FILE", conflicts_with = "server_fingerprint")]
    server_cert: Option<PathBuf>,
    /// Trust the server certificate whose SHA-256 fingerprint is this (hex, colons allowed);
    /// chatr-server prints it at start-up.
    /// Without --server-cert or --server-fingerprint, the public web CAs are trusted
    #[arg(long, value_name = "SHA256")]
    server_fingerprint: Option<String>,
    /// Your display name in chats [default: your login name]
    #[arg(long)]
    alias: Option<String>,
    /// Local port for the server session and the UDP socket [default: any free port]
    #[arg(long)]
    port: Option<u16>,
}

/// Arguments of `register` and `rotate-key`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// Single-use registration token from the server's administrator
    /// (servers with `--registration token`)
    #[arg(long, env = "CHATR_REGISTRATION_TOKEN")]
    token: Option<String>,
}

pub(crate) async fn init(g: &Globals, args: InitArgs) -> Result<(), CliError> {
    let server = HostPort::parse(&args.server, DEFAULT_CONNECT_PORT)?;
    let api = match &args.api {
        Some(url) => url.parse::<ApiUrl>()?,
        None => ApiUrl::default_for(&server.host),
    };
    // Check everything before writing anything.
    let trust = match (&args.server_cert, &args.server_fingerprint) {
        (Some(file), _) => {
            read_pem_certs(file)?;
            Trust::PinnedCert(chatr_client::home::SERVER_CERT_FILE.into())
        }
        (None, Some(fp)) => Trust::Fingerprint(fp.parse::<Fingerprint>()?),
        (None, None) => Trust::SystemRoots,
    };
    let home = &g.home;
    home.create()?;
    if let Some(file) = &args.server_cert {
        std::fs::copy(file, home.server_cert_path()).map_err(|e| {
            CliError::Usage(format!("cannot copy {} into the home: {e}", file.display()))
        })?;
    }
    let identity = if Identity::exists(home.dir()) {
        let id = home.identity()?;
        eprintln!("keeping the existing identity in {}", home.dir().display());
        id
    } else {
        let id = Identity::generate();
        id.save(home.dir())?;
        id
    };
    let mut config = Config::new(server, trust);
    config.api = api;
    // Re-running init keeps an alias set earlier unless a new one is given.
    let old_alias = home.config().ok().and_then(|c| c.alias);
    config.alias = args.alias.or(old_alias);
    config.local_port = args.port.filter(|p| *p != 0);
    config.save(&home.config_path())?;

    println!("uuid:       {}", identity.uuid());
    println!("public key: {}", identity.public_key_base64());
    println!("home:       {}", home.dir().display());
    println!("server:     {} (registry {})", config.server, config.api);
    println!(
        "trust:      {}",
        match &config.trust {
            Trust::PinnedCert(p) => format!("pinned certificate {}", p.display()),
            Trust::Fingerprint(f) => format!("certificate with SHA-256 {f}"),
            Trust::SystemRoots => "public web certificate authorities".to_string(),
        }
    );
    eprintln!("next: `chatr register`, then `chatr contacts add <uuid> <alias>` for each peer");
    Ok(())
}

pub(crate) fn whoami(g: &Globals) -> Result<(), CliError> {
    let id = g.home.identity()?;
    println!("{} {}", id.uuid(), id.public_key_base64());
    Ok(())
}

/// The registry client for a home.
pub(crate) fn registry(g: &Globals) -> Result<RegistryClient, CliError> {
    let config = g.home.config()?;
    let tls = client_config(&config.trust, &g.home)?;
    Ok(RegistryClient::new(config.api, tls))
}

/// A peer's registered key; "not registered" names the peer, not us.
pub(crate) async fn lookup_peer(
    g: &Globals,
    uuid: uuid::Uuid,
) -> Result<ed25519_dalek::VerifyingKey, CliError> {
    match registry(g)?.lookup(uuid).await {
        Ok(key) => Ok(key),
        Err(e) if e.api_kind() == Some(&chatr_client::rest::ApiErrorKind::ClientDoesNotExist) => {
            Err(chatr_client::ClientError::PeerNotRegistered(uuid).into())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn register(g: &Globals, args: TokenArgs) -> Result<(), CliError> {
    let id = g.home.identity()?;
    let api = registry(g)?;
    match api.register(&id, args.token.as_deref()).await? {
        Registration::Created => println!("registered {}", id.uuid()),
        Registration::AlreadyRegistered => {
            println!("{} was already registered with this key", id.uuid())
        }
    }
    Ok(())
}

pub(crate) async fn rotate_key(g: &Globals, args: TokenArgs) -> Result<(), CliError> {
    let home = g.home.dir();
    let id = g.home.identity()?;
    let api = registry(g)?;
    let pending_path = home.join(PENDING_KEY_FILE);

    // A previous rotation may have reached the server without us hearing back.
    if pending_path.exists() {
        let pending = read_key(&pending_path)?;
        let registered = api.lookup(id.uuid()).await?;
        if registered == pending.verifying_key() {
            install(&id.with_key(pending), home, &pending_path)?;
            println!("finished an earlier rotation: the registry already had the new key");
            return Ok(());
        }
        std::fs::remove_file(&pending_path)?;
    }

    let new_key = generate_key();
    // Keep the new key on disk before asking, so an answer lost in transit
    // cannot leave us with a registered key we no longer have.
    write_key(&pending_path, &new_key)?;
    match api
        .rotate(&id, &new_key.verifying_key(), args.token.as_deref())
        .await
    {
        Ok(()) => {
            let new_id = id.with_key(new_key);
            install(&new_id, home, &pending_path)?;
            println!("new public key: {}", new_id.public_key_base64());
            eprintln!("tell your contacts: they must re-add you to pin the new key");
            Ok(())
        }
        Err(e @ RestError::Api { .. }) => {
            // A definite refusal: the old key stays valid.
            let _ = std::fs::remove_file(&pending_path);
            Err(e.into())
        }
        Err(e) => Err(CliError::Usage(format!(
            "{e}\nthe outcome is unknown; the new key was kept in {} — run `chatr rotate-key` again to finish",
            pending_path.display()
        ))),
    }
}

fn install(
    id: &Identity,
    home: &std::path::Path,
    pending: &std::path::Path,
) -> Result<(), CliError> {
    id.save(home)?;
    std::fs::remove_file(pending)?;
    tracing::info!(key = %public_key_base64(&id.verifying_key()), "key rotated");
    Ok(())
}
