//! The operators' HTTP endpoint: `/health`, `/metrics` (Prometheus text) and `/cluster` (JSON).
//!
//! It listens on its own address (loopback by default) so that it is never
//! exposed where clients connect.

use crate::actors::registry::{RegistryMsg, RegistryStats};
use crate::server::NodeCtx;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .with_state(ctx);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

/// Ready when storage is open (it is, once the node serves) and, if the node was given
/// seeds, it has joined: it has met one of its seeds.
async fn health(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    if ctx.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if registry_stats(&ctx).await.joined {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not joined: no seed met yet\n")
    }
}

async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    let stats = registry_stats(&ctx).await;
    let peers = ctx.view.peers();
    let up = peers.iter().filter(|p| p.up).count() as u64;
    let gauges = crate::metrics::Gauges {
        connections: ctx.sessions.load(Ordering::Relaxed) as u64,
        online_users: stats.online_users as u64,
        inboxes: stats.inboxes as u64,
        groups: stats.groups as u64,
        peers_up: up,
        peers_down: peers.len() as u64 - up,
        sled_bytes: ctx.storage.size_on_disk().unwrap_or(0),
        partitions_held: stats.held_partitions as u64,
        requests_waiting: stats.waiting as u64,
        partitions_under_replicated: stats.under_replicated as u64,
        partition_copies: stats.copies as u64,
        storage_syncs: ctx.storage.syncs_completed(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(gauges),
    )
}

async fn cluster(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    let nodes: Vec<serde_json::Value> = ctx
        .nodes()
        .await
        .into_iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "client_addr": n.client_addr,
                "up": n.up,
                "sessions": n.sessions,
            })
        })
        .collect();
    let stats = registry_stats(&ctx).await;
    // The Raft core's view, when it runs (`cluster.consensus`): `settled` means every
    // group here has a live leader and every group led here is whole and placed.
    let consensus = ctx.consensus.as_ref().map(|c| {
        let s = c.status();
        serde_json::json!({
            "groups": s.groups,
            "leading": s.leading,
            "leaderless": s.leaderless,
            "unsettled": s.unsettled,
            "members": s.members,
            "settled": s.settled(),
        })
    });
    let body = serde_json::json!({
        "node": ctx.node_name,
        "consensus": consensus,
        "nodes": nodes,
        "joined": stats.joined,
        "members": stats.members,
        "partitions": {
            "total": crate::partition::PARTITIONS,
            "held": stats.held_partitions,
            "moving": stats.moving,
            "waiting_requests": stats.waiting,
            "under_replicated": stats.under_replicated,
            "copies": stats.copies,
        },
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn registry_stats(ctx: &NodeCtx) -> RegistryStats {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = crate::actors::reply(move |s| {
        let _ = tx.send(s);
    });
    if ctx.router.registry().cast(RegistryMsg::Stats { reply }).is_err() {
        return RegistryStats::default();
    }
    rx.await.unwrap_or_default()
}
