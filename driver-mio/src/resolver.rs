//! Origin host names, resolved off the loop. `getaddrinfo` (through std) is the resolver that
//! honours /etc/hosts, nsswitch and the system's DNS settings exactly as every other program on
//! the box, and it blocks; so it runs on one helper thread that the loop talks to through a
//! channel and wakes the loop through a [`mio::Waker`]. One thread, not one per lookup: a small
//! box should not spawn a thread per request, and lookups are few and mostly cached upstream.
//! The thread starts at the first name and the loop lets it end (by dropping its channel) a
//! minute after the last answer, so a tunnel whose origins are numeric (or idle) runs on the
//! loop's thread alone.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burrow_core::tunnel::happy_eyeballs::MAX_ADDRESSES;

/// How long the helper thread is kept after its last answer.
const IDLE: Duration = Duration::from_secs(60);

/// A lookup: the caller's id and `host:port`.
type Job = (u64, String);

/// A lookup's answer: the id it was asked with, the addresses (at least one, at most
/// [`MAX_ADDRESSES`], in the resolver's order) or the error in words.
pub type Answer = (u64, Result<Vec<SocketAddr>, String>);

/// The loop's side of the resolver thread.
pub struct Resolver {
    waker: Arc<mio::Waker>,
    answers_tx: Sender<Answer>,
    answers: Receiver<Answer>,
    thread: Option<(Sender<Job>, JoinHandle<()>)>,
    /// Lookups asked and not answered yet.
    outstanding: usize,
    /// When the last answer came.
    last_answer: Option<Instant>,
}

impl Resolver {
    /// No thread yet; answers wake the loop through `waker`.
    pub fn new(waker: Arc<mio::Waker>) -> Self {
        let (answers_tx, answers) = mpsc::channel();
        Self {
            waker,
            answers_tx,
            answers,
            thread: None,
            outstanding: 0,
            last_answer: None,
        }
    }

    /// Resolves `host:port` (a name) off the loop; the answer comes back from
    /// [`Resolver::answers`] with `id`.
    pub fn lookup(&mut self, id: u64, host_port: String) {
        self.outstanding += 1;
        if self.thread.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let answers = self.answers_tx.clone();
            let waker = self.waker.clone();
            let spawned = std::thread::Builder::new()
                .name("resolver".into())
                .stack_size(128 * 1024)
                .spawn(move || serve(rx, answers, waker));
            match spawned {
                Ok(handle) => self.thread = Some((tx, handle)),
                Err(e) => {
                    let _ = self
                        .answers_tx
                        .send((id, Err(format!("cannot start the resolver: {e}"))));
                    let _ = self.waker.wake();
                    return;
                }
            }
        }
        if let Some((tx, _)) = &self.thread {
            // The thread only ends when this sender is dropped, so the job is never lost.
            let _ = tx.send((id, host_port));
        }
    }

    /// Answers that arrived.
    pub fn answers(&mut self, now: Instant) -> Vec<Answer> {
        let got: Vec<Answer> = self.answers.try_iter().collect();
        if !got.is_empty() {
            self.outstanding = self.outstanding.saturating_sub(got.len());
            self.last_answer = Some(now);
        }
        got
    }

    /// When [`Resolver::retire`] has work (the helper thread may end then).
    pub fn deadline(&self) -> Option<Instant> {
        if self.thread.is_some() && self.outstanding == 0 {
            self.last_answer.map(|t| t + IDLE)
        } else {
            None
        }
    }

    /// Ends the helper thread if it has been idle long enough.
    pub fn retire(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| d <= now) {
            if let Some((tx, handle)) = self.thread.take() {
                drop(tx);
                let _ = handle.join();
            }
        }
    }
}

fn serve(jobs: Receiver<Job>, answers: Sender<Answer>, waker: Arc<mio::Waker>) {
    while let Ok((id, host_port)) = jobs.recv() {
        let answer = match host_port.to_socket_addrs() {
            Ok(addrs) => Some(addrs.take(MAX_ADDRESSES).collect::<Vec<_>>())
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("dial tcp {host_port}: no address")),
            Err(e) => Err(format!("dial tcp {host_port}: lookup: {e}")),
        };
        if answers.send((id, answer)).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}
