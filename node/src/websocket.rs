//! Clients over WebSocket: binary messages, one protobuf message (no length prefix) each,
//! the same envelopes as over TCP.
//!
//! A WebSocket connection is bridged to an in-memory byte stream carrying the usual
//! varint-delimited frames, so the session loop, its limits and its codec are the same
//! for every transport.

use crate::server::NodeCtx;
use bytes::{Bytes, BytesMut};
use chat_protocol::codec::{FrameCodec, encode_raw_frame};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::FramedRead;

/// Upgrades an accepted connection (bounded by the login timeout) and runs its session.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<NodeCtx>) {
    let max = ctx.config.client.max_frame_bytes;
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max);
    config.max_frame_size = Some(max);
    let upgrade = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    let ws = match tokio::time::timeout(ctx.config.login_timeout(), upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::info!(peer = %peer, error = %e, "websocket upgrade failed"),
        Err(_) => return tracing::info!(peer = %peer, "websocket upgrade timed out"),
    };
    let (session_side, bridge_side) = tokio::io::duplex(max + 16);
    let bridge = tokio::spawn(bridge(ws, bridge_side, max));
    crate::actors::session::run(session_side, peer, ctx).await;
    let _ = bridge.await;
}

/// Moves messages between the WebSocket and the session's byte stream until either ends.
async fn bridge(ws: tokio_tungstenite::WebSocketStream<TcpStream>, stream: DuplexStream, max: usize) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (read, mut write) = tokio::io::split(stream);
    let inbound = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let payload: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                // Text is not the protocol: it goes on as a frame the session cannot
                // decode, which it answers with BAD_REQUEST like any malformed frame.
                Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
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
