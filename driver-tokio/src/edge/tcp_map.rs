//! `--tcp-map` ports, and the byte splice they share with upgraded WebSockets.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::debug;
use uuid::Uuid;

use burrow_core::edge::{EyeballId, StreamEvent, Target};
use burrow_core::stream::connect::ConnectionType;

use super::event_loop::{open, Acks, Cmd, Events};
use burrow_os::chunk_buf::ChunkBuf;

/// Chunks sent up (each at most [`burrow_os::chunk_buf::READ_CHUNK`]) and not yet acknowledged, at
/// most: the socket is read again while the edge still holds this many, so reading overlaps the
/// edge taking the last chunk, and a slow tunnel holds the socket instead of filling memory.
const IN_FLIGHT: usize = 2;

/// Pipes a raw byte stream (an upgraded WebSocket, a mapped TCP connection) both ways through
/// tunnel stream `key`. Reads go up as they are (no copy), at most [`IN_FLIGHT`] of them not
/// yet acknowledged.
pub(super) async fn splice(
    key: EyeballId,
    mut rd: impl tokio::io::AsyncRead + Unpin,
    mut wr: impl tokio::io::AsyncWrite + Unpin,
    cmds: mpsc::UnboundedSender<Cmd>,
    mut events: Events,
    acks: Acks,
) {
    let c = cmds.clone();
    let up = async move {
        let mut buf = ChunkBuf::default();
        let mut in_flight = 0usize;
        loop {
            while in_flight > 0 && acks.take() {
                in_flight -= 1;
            }
            if in_flight == IN_FLIGHT {
                if !acks.wait().await {
                    break;
                }
                in_flight -= 1;
            }
            match rd.read_buf(buf.room()).await.map(|n| buf.take(n)) {
                Ok(Some(chunk)) => {
                    if c.send(Cmd::Body(key, chunk)).is_err() {
                        break;
                    }
                    in_flight += 1;
                }
                Ok(None) | Err(_) => {
                    let _ = c.send(Cmd::Finish(key));
                    break;
                }
            }
        }
    };
    let down = async move {
        while let Some(ev) = events.recv().await {
            match ev {
                StreamEvent::Body(b) => {
                    if wr.write_all(&b).await.is_err() {
                        let _ = cmds.send(Cmd::Reset(key));
                        break;
                    }
                    events.read_more();
                }
                StreamEvent::End | StreamEvent::Reset | StreamEvent::Refused(_) => {
                    let _ = wr.shutdown().await;
                    break;
                }
                StreamEvent::Ack | StreamEvent::Response { .. } => {}
            }
        }
    };
    tokio::join!(up, down);
}

/// A `--tcp-map` listener: every accepted connection is a TCP stream to `dest` in the tunnel.
pub(super) async fn serve(
    listener: TcpListener,
    tunnel: Uuid,
    dest: String,
    cmds: mpsc::UnboundedSender<Cmd>,
) {
    loop {
        let (sock, _) = crate::accept::accept(&listener, "TCP mapping").await;
        let _ = sock.set_nodelay(true);
        let cmds = cmds.clone();
        let dest = dest.clone();
        tokio::spawn(async move {
            let target = Target::Tunnel(tunnel);
            let (key, mut events, acks) =
                match open(&cmds, target, dest, ConnectionType::Tcp, Vec::new()) {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "TCP mapping: cannot open a stream");
                        return;
                    }
                };
            // The ack (ConnectResponse) first.
            match events.recv().await {
                Some(StreamEvent::Response { error, .. }) if error.is_empty() => {}
                other => {
                    debug!(?other, "TCP mapping refused");
                    let _ = cmds.send(Cmd::Reset(key));
                    return;
                }
            }
            let (rd, wr) = sock.into_split();
            splice(key, rd, wr, cmds, events, acks).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_os::chunk_buf::READ_CHUNK;
    use tokio::io::AsyncReadExt;

    /// What the splice sent up, in order: its bytes, and whether it finished.
    fn drain(cmds: &mut mpsc::UnboundedReceiver<Cmd>, up: &mut Vec<u8>) -> (usize, bool) {
        let (mut bodies, mut finished) = (0, false);
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Body(_, b) => {
                    bodies += 1;
                    up.extend_from_slice(&b);
                }
                Cmd::Finish(_) => finished = true,
                _ => {}
            }
        }
        (bodies, finished)
    }

    /// A stream opened as the listeners open one and spliced to an in-memory eyeball whose
    /// pipe holds `pipe` bytes: the loop's commands, its ends of the events and the acks, the
    /// stream's name, the splice's task and the eyeball.
    async fn spliced(
        pipe: usize,
    ) -> (
        mpsc::UnboundedReceiver<Cmd>,
        mpsc::UnboundedSender<StreamEvent>,
        std::sync::Arc<tokio::sync::Semaphore>,
        EyeballId,
        tokio::task::JoinHandle<()>,
        tokio::io::DuplexStream,
    ) {
        let (cmds_tx, mut cmds) = mpsc::unbounded_channel();
        let target = Target::Hostname("x".into());
        let (key, events, acks) = open(
            &cmds_tx,
            target,
            String::new(),
            ConnectionType::Tcp,
            Vec::new(),
        )
        .unwrap();
        let Some(Cmd::Open {
            events: ev_tx,
            acks: ack_tx,
            ..
        }) = cmds.recv().await
        else {
            panic!("no open");
        };
        let (client, edge_side) = tokio::io::duplex(pipe);
        let (rd, wr) = tokio::io::split(edge_side);
        let task = tokio::spawn(splice(key, rd, wr, cmds_tx, events, acks));
        (cmds, ev_tx, ack_tx, key, task, client)
    }

    /// The eyeball sends `len` patterned bytes, then its end: what it sends, and the task.
    fn upload(
        mut wr: impl AsyncWriteExt + Unpin + Send + 'static,
        len: usize,
    ) -> (Vec<u8>, tokio::task::JoinHandle<()>) {
        let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let bytes = sent.clone();
        let task = tokio::spawn(async move {
            wr.write_all(&bytes).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        (sent, task)
    }

    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    /// An unacknowledging tunnel holds the socket after `IN_FLIGHT` chunks; each ack lets
    /// one more go up; the bytes arrive whole and in order, then the end, and the down
    /// direction carries what the tunnel sends.
    #[tokio::test]
    async fn splice_holds_at_most_in_flight_chunks() {
        let (mut cmds, ev_tx, ack_tx, key, task, client) = spliced(4 * READ_CHUNK).await;
        let (mut client_rd, client_wr) = tokio::io::split(client);

        let (sent, writer) = upload(client_wr, 10 * READ_CHUNK);
        let mut up = Vec::new();
        settle().await;
        assert_eq!(drain(&mut cmds, &mut up), (IN_FLIGHT, false));
        ack_tx.add_permits(1);
        settle().await;
        assert_eq!(drain(&mut cmds, &mut up), (1, false));
        let mut finished = false;
        for _ in 0..1000 {
            ack_tx.add_permits(1);
            settle().await;
            let (_, f) = drain(&mut cmds, &mut up);
            if f {
                finished = true;
                break;
            }
        }
        assert!(finished);
        assert_eq!(up, sent);

        writer.await.unwrap();
        ev_tx
            .send(StreamEvent::Body(bytes::Bytes::from_static(b"down")))
            .unwrap();
        ev_tx.send(StreamEvent::End).unwrap();
        task.await.unwrap();
        let mut down = Vec::new();
        client_rd.read_to_end(&mut down).await.unwrap();
        assert_eq!(down, b"down");
        assert!(matches!(cmds.try_recv(), Ok(Cmd::ReadMore(k)) if k == key));
    }

    /// Acknowledgements reach the upload while the download is stuck writing to an eyeball
    /// that does not read: a client that sends its whole request before reading the answer
    /// (an echo through a mapped port) is not stalled behind its own unread response.
    #[tokio::test]
    async fn the_upload_goes_on_while_the_download_waits_for_the_eyeball() {
        let (mut cmds, ev_tx, ack_tx, _, task, client) = spliced(READ_CHUNK).await;
        let (mut client_rd, client_wr) = tokio::io::split(client);
        // More than the eyeball's pipe holds: the splice's write waits for the reader.
        let answer: Vec<u8> = (0..4 * READ_CHUNK).map(|i| (i % 253) as u8).collect();
        ev_tx
            .send(StreamEvent::Body(bytes::Bytes::from(answer.clone())))
            .unwrap();
        let (sent, writer) = upload(client_wr, 8 * READ_CHUNK);
        let mut up = Vec::new();
        let mut finished = false;
        for _ in 0..1000 {
            ack_tx.add_permits(1);
            settle().await;
            if drain(&mut cmds, &mut up).1 {
                finished = true;
                break;
            }
        }
        assert!(finished, "the upload stalled at {} bytes", up.len());
        assert_eq!(up, sent);
        writer.await.unwrap();
        // The eyeball reads at last: the whole answer, then the end.
        ev_tx.send(StreamEvent::End).unwrap();
        let mut down = Vec::new();
        client_rd.read_to_end(&mut down).await.unwrap();
        assert_eq!(down, answer);
        task.await.unwrap();
    }
}
