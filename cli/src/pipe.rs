//! `chatr pipe`: netcat over a peer link.
//!
//! stdin goes to the peer and the peer's bytes go to stdout; end of stdin
//! closes our sending half. The pipe protocol confirms delivery end to end
//! (byte count and checksum: XXH3-128, or BLAKE3 or SHA-256 with an older peer), so the
//! exit status is 0 only when the peer received and wrote out every byte we
//! read.

use std::time::Duration;

use chatr_client::link::pipe::run_pipe_blocking;
use chatr_client::link::{CloseCode, StreamKind};

use chatr_client::TransferReport;

use super::link::{
    Policy, accept_one, ctrl_c, report_transfer, request, resolve_peer, start_client,
};
use super::{CliError, Globals};

/// Arguments of `chatr pipe`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["peer", "listen"])))]
pub(crate) struct PipeArgs {
    /// Ask this peer (alias or UUID) for a link
    peer: Option<String>,
    /// Wait for one link instead (like `nc -l`), then exit
    #[arg(long)]
    listen: bool,
    /// With --listen: accept only this contact (alias or UUID) [default: any contact]
    #[arg(long, requires = "listen", value_name = "PEER")]
    from: Option<String>,
    /// With --listen: also accept peers that are not contacts (key from the registry)
    #[arg(long, requires = "listen", conflicts_with = "from")]
    accept_any: bool,
    /// After the transfer, wait up to this many seconds for the link to go direct if it
    /// is relayed (the NAT lab measures time-to-direct with it); 0 = do not wait
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    wait_direct: u64,
}

/// Our stdin and stdout as plain files (duplicated descriptors): read and written in
/// whole blocks on threads of their own, without std's line buffering of stdout or
/// tokio's copy of every byte.
fn stdio_files() -> Result<(std::fs::File, std::fs::File), CliError> {
    use std::os::fd::AsFd as _;
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok((stdin.into(), stdout.into()))
}

/// How long the peer has to open the pipe stream once linked.
const STREAM_WAIT: Duration = Duration::from_secs(30);
/// With `--wait-direct`: how long the link stays up once this side is direct, for the
/// peer's side to get there too (a round trip later) before we close it.
const DIRECT_LINGER: Duration = Duration::from_secs(1);

pub(crate) async fn run(g: &Globals, args: PipeArgs) -> Result<(), CliError> {
    let target = match &args.peer {
        Some(name) => Some(resolve_peer(g, name).await?),
        None => None,
    };
    let policy = Policy::from_args(g, args.accept_any, args.from.as_deref())?;
    let client = start_client(g).await?;
    let result = async {
        let started = std::time::Instant::now();
        let (link, stream) = match &target {
            Some(peer) => {
                let link = request(g, &client, peer).await?;
                let stream = link.open(StreamKind::Pipe).await?;
                (link, stream)
            }
            None => {
                eprintln!("waiting for a link (uuid {})…", client.uuid());
                let (link, peer) = accept_one(g, &client, &policy, true).await?;
                let stream = loop {
                    let s = tokio::time::timeout(STREAM_WAIT, link.accept_stream())
                        .await
                        .map_err(|_| CliError::Usage(format!("{} linked but never opened a pipe", peer.name)))??;
                    if s.kind() == StreamKind::Pipe {
                        break s;
                    }
                    let mut s = s;
                    s.abort(CloseCode::Refused);
                };
                (link, stream)
            }
        };
        let (stdin, stdout) = stdio_files()?;
        let began = std::time::Instant::now();
        let report = tokio::select! {
            r = run_pipe_blocking(stream, stdin, stdout) => r.map_err(|e| CliError::Undelivered(format!("the pipe failed: {e}")))?,
            _ = ctrl_c() => return Err(CliError::Undelivered("interrupted".into())),
        };
        let mut path = link.paths().map(|p| p.current()).unwrap_or_default();
        let direct_ms = wait_direct(&link, started, Duration::from_secs(args.wait_direct)).await;
        if direct_ms.is_some() {
            path = link.paths().map(|p| p.current()).unwrap_or_default();
            if args.wait_direct > 0 {
                // The two sides reach the direct path a round trip apart (the initiator
                // moves when it nominates, the responder when the nomination arrives):
                // closing at once would end the link before the peer's side got there,
                // and its report would name the relay.
                tokio::select! {
                    () = tokio::time::sleep(DIRECT_LINGER) => {}
                    _ = link.closed() => {}
                }
            }
        }
        report_transfer(
            g,
            TransferReport {
                ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
                path_class: path.class,
                received: report.received,
                relay_reason: path.reason.map(|r| r.to_string()),
                remote: match path.path {
                    Some(chatr_client::path::PathId::Direct(addr)) => Some(addr),
                    _ => None,
                },
                sent: report.sent,
                switches: path.switches,
                direct_ms,
                probes_sent: Some(path.probes_sent),
            },
        );
        link.close(CloseCode::Normal, "pipe done");
        tracing::info!(sent = report.sent, received = report.received, "pipe finished");
        if report.delivered {
            Ok(())
        } else {
            Err(CliError::Undelivered(format!(
                "the peer did not confirm all {} bytes we sent",
                report.sent
            )))
        }
    }
    .await;
    client.shutdown().await;
    result
}

/// Waits up to `limit` for `link` to be on a direct path; the milliseconds from
/// `started` (the link attempt) until it was, 0 when it already is, `None` when it was
/// not in time.
async fn wait_direct(
    link: &chatr_client::link::PeerLink,
    started: std::time::Instant,
    limit: Duration,
) -> Option<u64> {
    let mut paths = link.paths()?.clone();
    let is_direct =
        |p: &chatr_client::path::LinkPaths| p.current().class.is_some_and(|c| !c.is_relayed());
    if is_direct(&paths) {
        return Some(0);
    }
    if limit.is_zero() {
        return None;
    }
    let waited = tokio::time::timeout(limit, async {
        while paths.changed().await {
            if is_direct(&paths) {
                return true;
            }
        }
        false
    })
    .await;
    matches!(waited, Ok(true))
        .then(|| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}
