//! The CLI side of the admin socket: send one command, read one answer.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use super::AdminError;
use super::protocol::{AdminRequest, AdminResponse};

/// How long the server gets to answer (a write includes an fsync).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted answer line (an identity list can be long).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Whether connecting to `socket` failed because no server is there (the
/// socket file is missing or stale), as opposed to any other failure.
pub fn is_not_running(err: &AdminError) -> bool {
    matches!(err, AdminError::Connect { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
}

/// Sends `request` to the server listening on `socket` and returns its answer.
pub async fn call(socket: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let protocol = |message: String| AdminError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| AdminError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_ANSWER));
    let text = serde_json::to_string(request).map_err(|e| protocol(e.to_string()))?;
    lines
        .send(text)
        .await
        .map_err(|e| protocol(format!("cannot send the command: {e}")))?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, lines.next())
        .await
        .map_err(|_| protocol("the server did not answer in time".into()))?;
    match answer {
        Some(Ok(line)) => serde_json::from_str(&line)
            .map_err(|e| protocol(format!("unreadable answer {line:?}: {e}"))),
        Some(Err(e)) => Err(protocol(format!("cannot read the answer: {e}"))),
        None => Err(protocol(
            "the server closed the connection without answering (permission denied? only root and the server's user may use the admin socket)".into(),
        )),
    }
}
