//! The operators' HTTP endpoint: `/health`, `/metrics` (Prometheus text), `/cluster`
//! (JSON), `POST /nodes/{name}/remove` (a dead node leaves the cluster for good) and
//! `POST /leave` (this node leaves: its replicas move to the others first).
//!
//! It listens on its own address (loopback by default) so that it is never
//! exposed where clients connect.

use crate::actors::registry::{RegistryMsg, RegistryStats};
use crate::context::NodeCtx;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
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
        .route("/nodes/{name}/remove", post(remove_node))
        .route("/leave", post(leave))
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
        // The database's syncs, and with the Raft core those of its log file.
        storage_syncs: ctx.storage.syncs_completed()
            + ctx.consensus.as_ref().map_or(0, |c| c.status().log_syncs),
        raft_inbox_entries: ctx.consensus.as_ref().map(|c| c.inbox_entries()),
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
            // The partitions led here (the metadata group is not one).
            "led": c.led(),
        })
    });
    // Scripts and tests wait on this: with the Raft core, every partition has a live
    // leader and every group led here is whole; without it, this node has joined, sees
    // every node up, and nothing it holds is moving or short of copies.
    let settled = match &consensus {
        Some(c) => c["settled"] == true,
        None => {
            stats.joined
                && stats.moving == 0
                && stats.under_replicated == 0
                && nodes.iter().all(|n| n["up"] == true)
        }
    };
    let body = serde_json::json!({
        "node": ctx.node_name,
        "settled": settled,
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

/// Removes a node that will never come back from the cluster's members (a consensus
/// decision of the metadata group); placement then makes its replicas again elsewhere.
/// Its id can never join again: a node with that name needs a new data folder and a new
/// name. Answers 200 once the removal is committed, 404 for a name that is no member, 409
/// without consensus or for this node itself, 503 when the metadata group has no
/// reachable leader (retry).
async fn remove_node(State(ctx): State<Arc<NodeCtx>>, Path(name): Path<String>) -> impl IntoResponse {
    use chat_protocol::internal::command::{Op, RemoveNode};
    use chat_protocol::internal::outcome;
    if ctx.consensus.is_none() {
        return (
            StatusCode::CONFLICT,
            "this node runs no consensus (cluster.consensus)\n".to_owned(),
        );
    }
    if name == ctx.node_name {
        return (
            StatusCode::CONFLICT,
            "a node cannot remove itself; ask another node\n".to_owned(),
        );
    }
    let node = crate::consensus::node_id(&name);
    match propose_membership(&ctx, Op::RemoveNode(RemoveNode { node })).await {
        Ok(outcome::Result::Done(_)) => (StatusCode::OK, format!("removed {name}\n")),
        Ok(outcome::Result::NotFound(_)) => (StatusCode::NOT_FOUND, format!("{name} is no member\n")),
        Ok(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected outcome {other:?}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry\n")),
    }
}

/// This node leaves the cluster for good, gracefully: a `LeaveCluster` decision of the
/// metadata group takes it out of placement, the groups' leaders move its replicas to
/// the others, and once it holds none it proposes its own removal (then it can be
/// stopped; its name cannot join again). 200 once the leave is committed (the move
/// goes on: `/cluster` shows its `groups` falling to 0, and its log says when it is
/// out); 409 without consensus or for the cluster's last member; 503 without a
/// reachable leader of the metadata group (retry).
async fn leave(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    use chat_protocol::internal::command::{LeaveCluster, Op};
    use chat_protocol::internal::outcome;
    let Some(consensus) = ctx.consensus.clone() else {
        return (
            StatusCode::CONFLICT,
            "this node runs no consensus (cluster.consensus)\n".to_owned(),
        );
    };
    if consensus.active_members() <= 1 {
        return (
            StatusCode::CONFLICT,
            "the last member of a cluster cannot leave it: nowhere to move its replicas\n".to_owned(),
        );
    }
    let node = crate::consensus::node_id(&ctx.node_name);
    match propose_membership(&ctx, Op::LeaveCluster(LeaveCluster { node })).await {
        Ok(outcome::Result::Done(_)) => {
            // Its leaderships go to the others, which know the members (this node may
            // lose its replica of the metadata group first) and move its replicas.
            consensus.drain();
            tokio::spawn(finish_leaving(ctx.clone(), consensus));
            (
                StatusCode::OK,
                format!(
                    "{} is leaving: its replicas move to the other nodes; it removes itself once it holds none\n",
                    ctx.node_name
                ),
            )
        }
        Ok(outcome::Result::NotFound(_)) => (
            StatusCode::CONFLICT,
            format!("{} is no member (removed?)\n", ctx.node_name),
        ),
        Ok(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected outcome {other:?}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry\n")),
    }
}

/// Once a leaving node holds no replica, it proposes its own removal (retrying while
/// the metadata group has no reachable leader).
async fn finish_leaving(ctx: Arc<NodeCtx>, consensus: crate::consensus::driver::Handle) {
    use chat_protocol::internal::command::{Op, RemoveNode};
    let node = crate::consensus::node_id(&ctx.node_name);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        if consensus.status().groups > 0 {
            continue;
        }
        match propose_membership(&ctx, Op::RemoveNode(RemoveNode { node })).await {
            Ok(_) => {
                tracing::info!(node = %ctx.node_name, "left the cluster: no replica is left here; this node can be stopped");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "removing this node: retrying"),
        }
    }
}

/// Proposes a command of the metadata group at its leader, within 15 s.
async fn propose_membership(
    ctx: &NodeCtx,
    op: chat_protocol::internal::command::Op,
) -> Result<chat_protocol::internal::outcome::Result, String> {
    use prost::Message;
    let command = chat_protocol::internal::Command { op: Some(op) }.encode_to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.remote.propose(
        chat_state::membership::META,
        command,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match tokio::time::timeout(std::time::Duration::from_secs(15), rx).await {
        Ok(Ok(Ok(o))) => o.result.ok_or_else(|| "empty outcome".to_owned()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        _ => Err("no answer from the metadata group".to_owned()),
    }
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
