//! `chatr send` and `chatr receive`: one file per stream, size and SHA-256 checked.

use std::path::PathBuf;

use chatr_client::link::transfer::{ReceiveLimits, receive_file_with, send_file};
use chatr_client::link::{CloseCode, StreamKind};

use super::byte_size::parse_byte_size;
use super::link::{Policy, accept_one, ctrl_c, request, resolve_peer, start_client};
use super::{CliError, Globals};

/// Arguments of `chatr send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// The peer: a contact's alias or UUID
    peer: String,
    /// The file(s) to send
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Arguments of `chatr receive`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReceiveArgs {
    /// Where to store received files (existing names are never overwritten)
    #[arg(long, default_value = ".", value_name = "DIR")]
    dir: PathBuf,
    /// Accept only this contact (alias or UUID) [default: any contact]
    #[arg(long, value_name = "PEER")]
    from: Option<String>,
    /// Also accept peers that are not contacts (key from the registry)
    #[arg(long, conflicts_with = "from")]
    accept_any: bool,
    /// Refuse files larger than SIZE (bytes, or with K/M/G/T, e.g. 500M) [default: no limit;
    /// files that would leave less than 64 MiB free on the disk are always refused]
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    max_size: Option<u64>,
}

pub(crate) async fn send(g: &Globals, args: SendArgs) -> Result<(), CliError> {
    for file in &args.files {
        if !file.is_file() {
            return Err(CliError::Usage(format!(
                "{} is not a readable file",
                file.display()
            )));
        }
    }
    let peer = resolve_peer(g, &args.peer).await?;
    let client = start_client(g).await?;
    let result = async {
        let link = request(g, &client, &peer).await?;
        for file in &args.files {
            let sent = send_file(&link, file)
                .await
                .map_err(|e| CliError::Undelivered(format!("{}: {e}", file.display())))?;
            println!(
                "sent {} ({} bytes, sha256 {})",
                sent.name,
                sent.size,
                hex::encode(sent.sha256)
            );
        }
        link.close(CloseCode::Normal, "files sent");
        Ok(())
    }
    .await;
    client.shutdown().await;
    result
}

pub(crate) async fn receive(g: &Globals, args: ReceiveArgs) -> Result<(), CliError> {
    if !args.dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a directory",
            args.dir.display()
        )));
    }
    let policy = Policy::from_args(g, args.accept_any, args.from.as_deref())?;
    let limits = ReceiveLimits {
        max_size: args.max_size,
        ..ReceiveLimits::default()
    };
    let client = start_client(g).await?;
    let result = async {
        eprintln!("waiting for a link (uuid {})…", client.uuid());
        let (link, peer) = accept_one(g, &client, &policy, true).await?;
        let mut count = 0u32;
        let mut failed = 0u32;
        loop {
            let stream = tokio::select! {
                s = link.accept_stream() => match s { Ok(s) => s, Err(_) => break },
                _ = ctrl_c() => break,
            };
            if stream.kind() != StreamKind::File {
                let mut stream = stream;
                stream.abort(CloseCode::Refused);
                continue;
            }
            match receive_file_with(stream, &args.dir, &limits).await {
                Ok(f) => {
                    count += 1;
                    println!(
                        "received {} ({} bytes, sha256 {}) from {}",
                        f.path.display(),
                        f.size,
                        hex::encode(f.sha256),
                        peer.name
                    );
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("a file from {} failed: {e}", peer.name);
                }
            }
        }
        if failed > 0 || count == 0 {
            return Err(CliError::Undelivered(format!(
                "received {count} file(s); {failed} failed"
            )));
        }
        Ok(())
    }
    .await;
    client.shutdown().await;
    result
}
