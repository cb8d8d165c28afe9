//! TCP to a name, every address of it raced as core's [`DialPlan`] says (cloudflared's dialer).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::tunnel::happy_eyeballs::{DialPlan, DialStep};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Connects to `target` (`host:port`), resolving it first; a zero `timeout` is none. Core's
/// deadline for the flow still applies on top; this one only shares the time between addresses.
/// `race_families`: see [`DialPlan::new`].
pub async fn dial(target: &str, timeout: Duration, race_families: bool) -> io::Result<TcpStream> {
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target).await?.collect();
    let mut plan = DialPlan::new(Instant::now(), &addrs, deadline, race_families);
    // Dropping the set (a winner, or the caller giving up) aborts the attempts left.
    let mut attempts = JoinSet::new();
    let mut handles = HashMap::new();
    let mut first_error: Option<io::Error> = None;
    loop {
        match plan.poll(Instant::now()) {
            DialStep::Connect(id, addr) => {
                let h = attempts.spawn(async move { (id, TcpStream::connect(addr).await) });
                handles.insert(id, h);
            }
            DialStep::Abandon(id) => {
                if let Some(h) = handles.remove(&id) {
                    h.abort();
                }
                first_error.get_or_insert_with(|| io::ErrorKind::TimedOut.into());
            }
            DialStep::Exhausted => {
                return Err(first_error.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the resolver gave no address")
                }));
            }
            DialStep::Wait(until) => {
                let sleep = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    Some(joined) = attempts.join_next() => {
                        let (id, result) = match joined {
                            Ok(r) => r,
                            // An abandoned attempt, dealt with already.
                            Err(e) if e.is_cancelled() => continue,
                            Err(e) => return Err(io::Error::other(e)),
                        };
                        handles.remove(&id);
                        match result {
                            Ok(s) => return Ok(s),
                            Err(e) => {
                                first_error.get_or_insert(e);
                                plan.failed(Instant::now(), id);
                            }
                        }
                    }
                    () = sleep => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[tokio::test]
    async fn a_refused_dial_reports_the_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = dial(&format!("127.0.0.1:{port}"), Duration::from_secs(5), true)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
