//! The agent's drop samples for `airlock watch`: a Unix socket beside the agent's
//! lock, for root only (mode 0600, and a client's credentials checked, since the
//! samples name the sources that were refused), one JSON line per sample to each
//! client.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::broadcast::{self, error::RecvError},
};

use super::readers::Feed;

/// What a client reads when it fell behind and samples were skipped for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Missed {
    pub missed: u64,
}

/// Serves `feed` at `path` (in the state directory, which `lock::acquire` checked)
/// for as long as the agent runs. A socket file left by a killed agent is replaced
/// here; until then it refuses connections, and `watch` reads the rings itself.
pub fn serve(path: PathBuf, feed: Feed) -> std::io::Result<()> {
    // Bound under another name and made 0600 there, whatever the umask, then
    // renamed into place: under its own name it is never open to others.
    let mut fresh = path.clone().into_os_string();
    fresh.push(format!(".new-{}", std::process::id()));
    let fresh = PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh)?;
    std::fs::set_permissions(
        &fresh,
        std::fs::Permissions::from_mode(crate::trust::FILE_MODE),
    )
    .and_then(|()| std::fs::rename(&fresh, &path))
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&fresh);
    })?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Root, or the user the agent runs as; never anyone else, even if
                    // the file's mode let them in before it was set.
                    let uid = stream.peer_cred().map(|c| c.uid());
                    let ours = nix::unistd::geteuid().as_raw();
                    if !matches!(uid, Ok(uid) if uid == 0 || uid == ours) {
                        tracing::warn!(?uid, "refused a sample reader that is not root");
                        continue;
                    }
                    tracing::info!("a watch session reads the drop samples");
                    tokio::spawn(send_samples(stream, feed.subscribe()));
                }
                Err(error) => {
                    // EMFILE and the like: try again later rather than spin.
                    tracing::warn!(%error, "accepting a watch session");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

/// Writes every sample to `stream` until the client goes away (noticed when a
/// write fails, or when it closes its end while no samples come).
async fn send_samples(stream: UnixStream, mut samples: broadcast::Receiver<Arc<str>>) {
    let (mut from_client, mut to_client) = stream.into_split();
    let mut ignored = [0u8; 64];
    loop {
        let line: Arc<str> = tokio::select! {
            received = samples.recv() => match received {
                Ok(line) => line,
                Err(RecvError::Lagged(missed)) => match serde_json::to_string(&Missed { missed }) {
                    Ok(line) => line.into(),
                    Err(_) => continue,
                },
                Err(RecvError::Closed) => return,
            },
            // The client sends nothing: end of stream or an error means it left.
            read = from_client.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        if to_client.write_all(line.as_bytes()).await.is_err()
            || to_client.write_all(b"\n").await.is_err()
        {
            return;
        }
    }
}
