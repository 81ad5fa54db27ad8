//! Clients over WebSocket, and the web page: `GET /ws` upgrades to a WebSocket whose
//! binary messages each carry one protobuf message (the same envelopes as over TCP);
//! `GET /` and `GET /app.js` serve the single-page client from `client.web_dir`.
//!
//! A WebSocket connection is bridged to an in-memory byte stream carrying the usual
//! varint-delimited frames, so the session loop, its limits and its codec are the same
//! for every transport.

use crate::server::NodeCtx;
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
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

/// Serves WebSocket clients (and the web page, if configured) until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<NodeCtx>) {
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
        .with_state(ctx);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "websocket listener failed");
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
