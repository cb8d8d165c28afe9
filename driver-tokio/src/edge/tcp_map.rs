//! `--tcp-map` ports, and the byte splice they share with upgraded WebSockets.

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::debug;
use uuid::Uuid;

use burrow_core::edge::{EyeballId, StreamEvent, Target};
use burrow_core::stream::connect::ConnectionType;

use super::event_loop::{open, Cmd, Events};

/// Pipes a raw byte stream (an upgraded WebSocket, a mapped TCP connection) both ways through
/// tunnel stream `key`. Each read goes up only after the previous one was acknowledged, so a
/// slow tunnel holds the socket instead of filling memory.
pub(super) async fn splice(
    key: EyeballId,
    mut rd: impl tokio::io::AsyncRead + Unpin,
    mut wr: impl tokio::io::AsyncWrite + Unpin,
    cmds: mpsc::UnboundedSender<Cmd>,
    mut events: Events,
    ack_tx: mpsc::UnboundedSender<()>,
    mut ack_rx: mpsc::UnboundedReceiver<()>,
) {
    let c = cmds.clone();
    let up = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = c.send(Cmd::Finish(key));
                    break;
                }
                Ok(n) => {
                    if c.send(Cmd::Body(key, Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                        || ack_rx.recv().await.is_none()
                    {
                        break;
                    }
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
                    let _ = cmds.send(Cmd::ReadMore(key));
                }
                StreamEvent::Ack => {
                    let _ = ack_tx.send(());
                }
                StreamEvent::End | StreamEvent::Reset | StreamEvent::Refused(_) => {
                    let _ = wr.shutdown().await;
                    break;
                }
                StreamEvent::Response { .. } => {}
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
            let (key, mut events) = match open(&cmds, target, dest, ConnectionType::Tcp, Vec::new())
            {
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
            let (ack_tx, ack_rx) = mpsc::unbounded_channel::<()>();
            splice(key, rd, wr, cmds, events, ack_tx, ack_rx).await;
        });
    }
}
