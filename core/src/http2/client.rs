//! The h2 client side both client roles share: the edge toward a connector
//! ([`super::edge::Client`]) and the bridge toward an HTTP/2 origin
//! ([`super::origin::OriginClient`]). Handshake settings, the connection's life, and the
//! polling of response heads are the same; what a role does with a head is its own.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::{self, SendRequest};
use h2::RecvStream;

use super::machine::{
    connection_window, Event, INITIAL_WINDOW, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, RESET_RETENTION,
};
use super::pipe::Pipe;
use super::streams::{reason_of, Stream, StreamEvent, StreamId, Streams};

type HandshakeFuture = Pin<
    Box<
        dyn Future<
                Output = Result<(SendRequest<Bytes>, client::Connection<Pipe, Bytes>), h2::Error>,
            > + Send,
    >,
>;

/// An h2 client connection from its handshake to its end.
pub(super) enum ClientState {
    Handshaking(HandshakeFuture),
    Running {
        /// `None` after shutdown: no new streams.
        send: Option<SendRequest<Bytes>>,
        /// Boxed: h2's connection is large and lives as long as the connection.
        conn: Box<client::Connection<Pipe, Bytes>>,
    },
    Done,
}

/// What one drive of the connection found.
pub(super) enum Step {
    /// The handshake is not done.
    Handshaking,
    /// Running: the role polls its streams.
    Running,
    /// It ended on this drive; heads that came with the end are still to be polled.
    Ended(Option<h2::Error>),
    /// It was over before this drive (the handshake failed, or it ended earlier).
    Closed(Option<h2::Error>),
}

impl ClientState {
    /// Starts h2's client handshake over `pipe`, its connection window making room for
    /// `held` streams whose reader takes nothing. Neither peer may push (Cloudflare's edge
    /// sends SETTINGS_ENABLE_PUSH 0; Go's transport takes no pushes either).
    pub(super) fn handshake(pipe: Pipe, held: u32) -> Self {
        let handshake = client::Builder::new()
            .enable_push(false)
            .initial_window_size(INITIAL_WINDOW)
            .initial_connection_window_size(connection_window(held))
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .reset_stream_duration(RESET_RETENTION)
            .handshake(pipe);
        ClientState::Handshaking(Box::pin(handshake))
    }

    /// Polls the handshake, then the connection.
    pub(super) fn step(&mut self, cx: &mut Context<'_>) -> Step {
        if let ClientState::Handshaking(handshake) = self {
            match handshake.as_mut().poll(cx) {
                Poll::Ready(Ok((send, conn))) => {
                    *self = ClientState::Running {
                        send: Some(send),
                        conn: Box::new(conn),
                    }
                }
                Poll::Ready(Err(e)) => {
                    *self = ClientState::Done;
                    return Step::Closed(Some(e));
                }
                Poll::Pending => return Step::Handshaking,
            }
        }
        let ClientState::Running { conn, .. } = self else {
            return Step::Closed(None);
        };
        match Pin::new(&mut **conn).poll(cx) {
            Poll::Ready(result) => {
                *self = ClientState::Done;
                Step::Ended(result.err())
            }
            Poll::Pending => Step::Running,
        }
    }

    /// Whether the handshake is done and the connection not over.
    pub(super) fn ready(&self) -> bool {
        matches!(self, ClientState::Running { .. })
    }

    /// Where new requests go; `None` before the handshake, after shutdown or the end.
    pub(super) fn sender(&mut self) -> Option<&mut SendRequest<Bytes>> {
        match self {
            ClientState::Running { send, .. } => send.as_mut(),
            _ => None,
        }
    }

    /// No new streams: without a SendRequest h2 ends the connection once the open streams
    /// finish.
    pub(super) fn shutdown(&mut self) {
        if let ClientState::Running { send, .. } = self {
            *send = None;
        }
    }
}

/// Polls each stream's response head. `on_head` takes one that arrived, with its stream (to
/// keep the body or reset it), and says whether the stream stays; a head that failed is
/// reported as a reset and its stream removed.
pub(super) fn poll_heads(
    cx: &mut Context<'_>,
    streams: &mut Streams,
    events: &mut VecDeque<Event>,
    mut on_head: impl FnMut(
        StreamId,
        &mut Stream,
        http::response::Parts,
        RecvStream,
        &mut VecDeque<Event>,
    ) -> bool,
) {
    let mut gone = Vec::new();
    for (&raw, s) in streams.map.iter_mut() {
        let Some(future) = s.response.as_mut() else {
            continue;
        };
        let stream = StreamId(raw);
        match Pin::new(future).poll(cx) {
            Poll::Ready(Ok(response)) => {
                s.response = None;
                let (head, body) = response.into_parts();
                if !on_head(stream, s, head, body, events) {
                    gone.push(raw);
                }
                streams.progress = true;
            }
            Poll::Ready(Err(e)) => {
                gone.push(raw);
                events.push_back(Event::Stream(StreamEvent::Reset {
                    stream,
                    reason: reason_of(&e),
                }));
            }
            Poll::Pending => {}
        }
    }
    for raw in gone {
        streams.progress = true;
        streams.map.remove(&raw);
    }
}
