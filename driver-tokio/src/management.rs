//! The management service's I/O (core's [`burrow_core::management`] decides everything): one
//! task owns the machine; each in-process connection the dialer hands it is read by a task of
//! its own and written by another; the log tap feeds it the connector's JSON lines while a
//! log stream streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use burrow_core::management::{ConnId, Management, ManagementConfig, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// In-process connections waiting for the task (the edge's requests to the management
/// hostname; a burst beyond this is refused at dial).
const CONN_QUEUE: usize = 64;
/// Log lines waiting for the task; beyond, the tap drops them (cloudflared's window drops too).
const LOG_QUEUE: usize = 1024;
/// Size of an in-process connection's buffer.
const PIPE: usize = 64 * 1024;

/// Hands connections to the management task.
#[derive(Clone, Debug)]
pub struct ManagementHandle {
    conns: mpsc::Sender<DuplexStream>,
}

impl ManagementHandle {
    /// A new in-process connection to the service, or None when the task is gone or behind.
    pub fn connect(&self) -> Option<DuplexStream> {
        let (client, server) = tokio::io::duplex(PIPE);
        self.conns.try_send(server).ok()?;
        Some(client)
    }
}

enum Event {
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId),
    Written(ConnId, usize),
}

/// Starts the service's task; `service_op_ip` is the address whose route gives the
/// connector's own address for `/host_details`.
pub fn spawn(
    config: ManagementConfig,
    service_op_ip: String,
    metrics: Arc<Metrics>,
) -> ManagementHandle {
    let (conns, conn_rx) = mpsc::channel(CONN_QUEUE);
    let mut machine = Management::new(config, burrow_os::host::random_u64());
    machine.set_private_ip(burrow_os::host::own_address(&service_op_ip));
    tokio::spawn(run(machine, conn_rx, metrics));
    ManagementHandle { conns }
}

async fn run(
    mut machine: Management,
    mut conn_rx: mpsc::Receiver<DuplexStream>,
    metrics: Arc<Metrics>,
) {
    let (events_tx, mut events) = mpsc::channel::<Event>(256);
    let (log_tx, mut logs) = mpsc::channel::<Vec<u8>>(LOG_QUEUE);
    let mut writers: HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    loop {
        let deadline = loop {
            match machine.poll_output(Instant::now()) {
                Output::Transmit(id, bytes) => {
                    if let Some(w) = writers.get(&id) {
                        let _ = w.send(bytes);
                    }
                }
                // The writer ends the connection once what it holds is written.
                Output::Close(id) => drop(writers.remove(&id)),
                Output::WantMetrics(id) => machine.handle_metrics(id, &metrics.render()),
                Output::Listening(on) => {
                    let tap = log_tx.clone();
                    burrow_os::log::set_log_tap(on.then(|| {
                        Box::new(move |line: &[u8]| {
                            let _ = tap.try_send(line.to_vec());
                        }) as burrow_os::log::LineSink
                    }));
                }
                Output::Timeout(t) => break t,
            }
        };
        tokio::select! {
            conn = conn_rx.recv() => {
                let Some(conn) = conn else {
                    // The dialer is gone: the connector stopped.
                    burrow_os::log::set_log_tap(None);
                    return;
                };
                let id = machine.open();
                let (mut rd, mut wr) = tokio::io::split(conn);
                let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
                writers.insert(id, tx);
                let events = events_tx.clone();
                tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                        let _ = events.send(Event::Written(id, b.len())).await;
                    }
                    let _ = wr.shutdown().await;
                });
                let events = events_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if events.send(Event::Bytes(id, buf[..n].to_vec())).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = events.send(Event::Closed(id)).await;
                });
            }
            Some(e) = events.recv() => match e {
                Event::Bytes(id, b) => machine.handle_bytes(Instant::now(), id, &b),
                Event::Closed(id) => {
                    machine.handle_closed(id);
                    writers.remove(&id);
                }
                Event::Written(id, n) => machine.handle_written(id, n),
            },
            Some(line) = logs.recv() => {
                machine.handle_log(&line);
                // Take what else is queued before writing.
                while let Ok(line) = logs.try_recv() {
                    machine.handle_log(&line);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => machine.handle_timeout(Instant::now()),
        }
    }
}
