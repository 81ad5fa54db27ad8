//! Clients over WebSocket, and the web page: `GET /ws` upgrades to a WebSocket whose
//! binary messages each carry one protobuf message (the same envelopes as over TCP);
//! `GET /` and `GET /app.js` serve the single-page client from `client.web_dir`;
//! `/files/{id}` uploads and downloads files (`crate::files_http`).
//!
//! With `client.tls` set, this port speaks TLS too (wss:// and https://).
//!
//! A WebSocket connection is bridged to an in-memory byte stream carrying the usual
//! varint-delimited frames, so the session loop, its limits and its codec are the same
//! for every transport.

use crate::context::NodeCtx;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use chat_protocol::codec::{FrameCodec, encode_raw_frame};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;

/// Serves WebSocket clients (and the web page, if configured) until shutdown, over TLS
/// (wss, https) when the client side has a certificate.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, ctx: Arc<NodeCtx>) {
    let shutdown = ctx.shutdown.clone();
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route(
            "/",
            get(|s: State<Arc<NodeCtx>>| page(s, "index.html", "text/html; charset=utf-8")),
        )
        .route(
            "/app.js",
            get(|s: State<Arc<NodeCtx>>| page(s, "app.js", "text/javascript")),
        )
        .merge(crate::files_http::routes())
        .with_state(ctx.clone())
        .into_make_service_with_connect_info::<Peer>();
    let done = async move { shutdown.cancelled().await };
    let served = match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(done).await,
        Some(acceptor) => match TlsListener::start(listener, acceptor, ctx) {
            Ok(listener) => axum::serve(listener, app).with_graceful_shutdown(done).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "websocket listener failed");
    }
}

/// The client's address, for both the plain and the TLS listener.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A listener whose connections have finished their TLS handshake. Handshakes run in
/// their own tasks (bounded by the login timeout), so a client that never completes one
/// cannot hold up the others.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(listener: TcpListener, acceptor: TlsAcceptor, ctx: Arc<NodeCtx>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "websocket accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx, limit) = (acceptor.clone(), tx.clone(), ctx.config.login_timeout());
                tokio::spawn(async move {
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        _ => tracing::info!(peer = %peer, "websocket TLS handshake failed or timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (shutdown): wait for the graceful shutdown to finish.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// One file of the web client, read from `client.web_dir` at request time.
async fn page(State(ctx): State<Arc<NodeCtx>>, file: &'static str, kind: &'static str) -> Response {
    let Some(dir) = &ctx.config.client.web_dir else {
        return (
            StatusCode::NOT_FOUND,
            "no web client configured (client.web_dir)\n",
        )
            .into_response();
    };
    match tokio::fs::read(dir.join(file)).await {
        Ok(body) => ([(header::CONTENT_TYPE, kind)], body).into_response(),
        Err(e) => {
            tracing::warn!(file, error = %e, "web client file missing");
            (StatusCode::NOT_FOUND, "web client file missing\n").into_response()
        }
    }
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    State(ctx): State<Arc<NodeCtx>>,
) -> Response {
    let max = ctx.config.client.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let (session_side, bridge_side) = tokio::io::duplex(max + 16);
            let bridge = tokio::spawn(bridge(socket, bridge_side, max));
            crate::actors::session::run(session_side, peer, ctx).await;
            let _ = bridge.await;
        })
}

/// Moves messages between the WebSocket and the session's byte stream until either ends.
async fn bridge(ws: WebSocket, stream: DuplexStream, max: usize) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (read, mut write) = tokio::io::split(stream);
    let inbound = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let payload: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                // Text is not the protocol: it goes on as a frame the session cannot
                // decode, which it answers with BAD_REQUEST like any malformed frame.
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                _ => continue,
            };
            let mut framed = BytesMut::with_capacity(payload.len() + 5);
            encode_raw_frame(&payload, &mut framed);
            if write.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    let outbound = async move {
        let mut frames = FramedRead::new(read, FrameCodec::new(max));
        while let Some(Ok(frame)) = frames.next().await {
            if ws_tx.send(Message::Binary(frame)).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    };
    // When the client goes away the session sees EOF and ends, which ends the outbound half.
    tokio::join!(inbound, outbound);
}
