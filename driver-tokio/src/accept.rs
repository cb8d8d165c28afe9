//! Accepting TCP connections without spinning: an accept error (most often EMFILE, out of
//! descriptors) leaves the pending connection in the backlog, so retrying at once fails again
//! at once. Back off, doubling up to a second, until an accept succeeds.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// First pause after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener`; `what` names the listener in the log.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                // Once per run of failures, then quietly.
                if backoff == FIRST_BACKOFF {
                    warn!(listener = what, error = %e, "accept failed; backing off");
                } else {
                    debug!(listener = what, error = %e, ?backoff, "accept failed again");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
