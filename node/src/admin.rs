//! The operators' HTTP endpoint: `/health`, `/metrics` (Prometheus text), `/cluster`
//! (JSON), `POST /nodes/{name}/remove` (a dead node leaves the cluster for good),
//! `POST /leave` (this node leaves: its replicas move to the others first), and user
//! administration, which needs the admin token: `GET /users` and `GET /groups` (list and
//! search by name prefix, a page at a time), `POST /users/{name}/disable`, `/enable`,
//! `/logout` and `/reset-password`, and `POST /groups/{name}/delete` (the work itself is
//! in `admin_users.rs`).
//!
//! It listens on its own address (loopback by default) so that it is never
//! exposed where clients connect.

use crate::actors::registry::RegistryMsg;
use crate::admin_users::{self, ListAsk};
use crate::context::NodeCtx;
use crate::error::ChatError;
use axum::Router;
use axum::extract::{ConnectInfo, FromRef, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers share: the node, and the admin token if one is set.
#[derive(Clone)]
struct Admin {
    ctx: Arc<NodeCtx>,
    token: Option<Arc<str>>,
}

impl FromRef<Admin> for Arc<NodeCtx> {
    fn from_ref(admin: &Admin) -> Self {
        admin.ctx.clone()
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let token = std::env::var("CHAT_ADMIN_TOKEN")
        .ok()
        .or_else(|| ctx.config.admin.token.clone())
        .filter(|t| !t.is_empty())
        .map(Arc::from);
    let admin = Admin { ctx, token };
    // Changes need the token when one is set; user administration needs one set.
    let changes = Router::new()
        .route("/nodes/{name}/remove", post(remove_node))
        .route("/leave", post(leave))
        .route_layer(middleware::from_fn_with_state(admin.clone(), token_if_set));
    let users = Router::new()
        .route("/users", get(list_users))
        .route("/users/{name}/reset-password", post(reset_password))
        .route("/users/{name}/{action}", post(user_action))
        .route("/groups", get(list_groups))
        .route("/groups/{name}/delete", post(delete_group))
        .route_layer(middleware::from_fn_with_state(admin.clone(), token_required));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .merge(changes)
        .merge(users)
        .with_state(admin);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

/// Ready once this node is a member of a cluster: it has a replica of some Raft group
/// (it started a cluster, or the cluster took it in).
async fn health(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    if ctx.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if ctx.consensus.status().groups > 0 {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not in a cluster yet: no seed met, or not taken in yet\n",
        )
    }
}

async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    let peers = ctx.view.peers();
    let up = peers.iter().filter(|p| p.up).count() as u64;
    let raft = ctx.consensus.status();
    let gauges = crate::metrics::Gauges {
        inbox_entries: ctx.consensus.inbox_entries(),
        connections: ctx.sessions.load(Ordering::Relaxed) as u64,
        online_users: online_users(&ctx).await as u64,
        peers_up: up,
        peers_down: peers.len() as u64 - up,
        sled_bytes: ctx.storage.size_on_disk().unwrap_or(0),
        raft,
        requests_waiting: ctx.remote.waiting() as u64,
        storage_syncs: ctx.storage.syncs_completed() + raft.log_syncs,
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
    // `settled`: every group here has a live leader and every group led here is whole
    // and placed (scripts and tests wait on it).
    let s = ctx.consensus.status();
    let consensus = serde_json::json!({
        "groups": s.groups,
        "leading": s.leading,
        "leaderless": s.leaderless,
        "unsettled": s.unsettled,
        "members": s.members,
        "settled": s.settled(),
        // The partitions led here (the metadata group is not one).
        "led": ctx.consensus.led(),
    });
    let body = serde_json::json!({
        "node": ctx.node_name,
        "settled": s.settled(),
        "consensus": consensus,
        "nodes": nodes,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// Removes a node that will never come back from the cluster's members (a consensus
/// decision of the metadata group); placement then makes its replicas again elsewhere.
/// Its id can never join again: a node with that name needs a new data folder and a new
/// name. Answers 200 once the removal is committed, 404 for a name that is no member, 409
/// for this node itself, 503 when the metadata group has no
/// reachable leader (retry).
async fn remove_node(State(ctx): State<Arc<NodeCtx>>, Path(name): Path<String>) -> impl IntoResponse {
    use chat_protocol::internal::command::{Op, RemoveNode};
    use chat_protocol::internal::outcome;
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
/// out); 409 for the cluster's last member; 503 without a
/// reachable leader of the metadata group (retry).
async fn leave(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    use chat_protocol::internal::command::{LeaveCluster, Op};
    use chat_protocol::internal::outcome;
    let consensus = ctx.consensus.clone();
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

/// Lets a request through if no admin token is set, or it carries the token.
async fn token_if_set(
    State(admin): State<Admin>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if admin.token.is_some()
        && let Err(refused) = check_token(&admin, &headers)
    {
        return refused.into_response();
    }
    next.run(request).await
}

/// Lets a request through only if an admin token is set and the request carries it.
async fn token_required(
    State(admin): State<Admin>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match check_token(&admin, &headers) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

fn check_token(admin: &Admin, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(expected) = &admin.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "user administration needs an admin token: set admin.token or CHAT_ADMIN_TOKEN\n",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_secret(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer TOKEN)\n",
        )),
    }
}

/// Compares two secrets in time that depends on their length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /users/{name}/disable`, `/enable` or `/logout`: disable an account (every token
/// revoked, its sessions closed on every node, logins refused), enable it again, or log
/// it out everywhere. 200 once committed, 404 for no such user or action, 503 when the
/// user's partition has no reachable leader (retry). Logged with who asked.
async fn user_action(
    State(ctx): State<Arc<NodeCtx>>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    Path((name, action)): Path<(String, String)>,
) -> impl IntoResponse {
    use crate::request::AccountMsg;
    let result = match action.as_str() {
        "disable" | "enable" => {
            let disabled = action == "disable";
            ctx.router
                .account(&name, |reply| AccountMsg::SetDisabled { disabled, reply })
                .await
        }
        "delete" => crate::admin_users::delete_user(&ctx, &name).await.map(|_| ()),
        "logout" => {
            let revoke = |reply| AccountMsg::RevokeTokens {
                keep: String::new(),
                password_hash: String::new(),
                skip_session: 0,
                reason: "logged out by an operator".into(),
                reply,
            };
            ctx.router.account(&name, revoke).await
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                format!("no action {action}: disable, enable, logout, delete or reset-password\n"),
            );
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(user = %name, action = %action, from = %from, "admin action");
            (StatusCode::OK, format!("{action}: {name}\n"))
        }
        Err(crate::error::ChatError::NotFound(_)) => (StatusCode::NOT_FOUND, format!("no user {name}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry\n")),
    }
}

type From = ConnectInfo<std::net::SocketAddr>;

/// The answer to a failed user or group administration request: 404 for what does not
/// exist, 400 for a bad request, 503 (retry) otherwise.
fn refused(e: &ChatError) -> Response {
    let status = match e {
        ChatError::NotFound(_) => StatusCode::NOT_FOUND,
        ChatError::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
        "; retry"
    } else {
        ""
    };
    (status, format!("{e}{retry}\n")).into_response()
}

fn json(body: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `GET /users?prefix=P&after=A&limit=N`: accounts whose names start with P, after A,
/// at most N (100 by default, 1000 at most), in name order, from every partition:
/// `{"users": [{"name", "created_at_ms", "disabled"}], "has_more", "next_after"}`.
async fn list_users(State(ctx): State<Arc<NodeCtx>>, ConnectInfo(from): From, uri: Uri) -> Response {
    let ask = match ListAsk::from_query(uri.query().unwrap_or("")) {
        Ok(ask) => ask,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match admin_users::list_users(&ctx, &ask).await {
        Ok(page) => {
            tracing::info!(prefix = %ask.prefix, from = %from, "admin action: list users");
            let users: Vec<serde_json::Value> = page
                .items
                .into_iter()
                .map(|a| serde_json::json!({"name": a.name, "created_at_ms": a.created_at_ms, "disabled": a.disabled}))
                .collect();
            json(serde_json::json!({"users": users, "has_more": page.has_more, "next_after": page.covered}))
        }
        Err(e) => refused(&e),
    }
}

/// `GET /groups?prefix=P&after=A&limit=N`, as `/users`: `{"groups": [{"name",
/// "creator", "created_at_ms", "members", "members_at_least"}], "has_more",
/// "next_after"}` (`members` is counted up to a bound, then `members_at_least`).
async fn list_groups(State(ctx): State<Arc<NodeCtx>>, ConnectInfo(from): From, uri: Uri) -> Response {
    let ask = match ListAsk::from_query(uri.query().unwrap_or("")) {
        Ok(ask) => ask,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match admin_users::list_groups(&ctx, &ask).await {
        Ok(page) => {
            tracing::info!(prefix = %ask.prefix, from = %from, "admin action: list groups");
            let groups: Vec<serde_json::Value> = page
                .items
                .into_iter()
                .map(|g| {
                    serde_json::json!({
                        "name": g.name,
                        "creator": g.creator,
                        "created_at_ms": g.created_at_ms,
                        "members": g.members,
                        "members_at_least": g.members_at_least,
                    })
                })
                .collect();
            json(serde_json::json!({"groups": groups, "has_more": page.has_more, "next_after": page.covered}))
        }
        Err(e) => refused(&e),
    }
}

/// `POST /users/{name}/reset-password` with `{"password": "..."}` or `password=...`:
/// sets the password, revokes every token and closes every session of the user.
async fn reset_password(
    State(ctx): State<Arc<NodeCtx>>,
    ConnectInfo(from): From,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let password = match admin_users::password_from_body(content_type, &body) {
        Ok(password) => password,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match admin_users::reset_password(&ctx, &name, password).await {
        Ok(()) => {
            tracing::info!(user = %name, action = "reset-password", from = %from, "admin action");
            (StatusCode::OK, format!("reset-password: {name}\n")).into_response()
        }
        Err(e) => refused(&e),
    }
}

/// `POST /groups/{name}/delete`: deletes a group, its records and every member's
/// membership of it (members keep the posts already in their inboxes).
async fn delete_group(
    State(ctx): State<Arc<NodeCtx>>,
    ConnectInfo(from): From,
    Path(name): Path<String>,
) -> Response {
    if !crate::auth::valid_name(&name) {
        return refused(&ChatError::NotFound(format!("group {name}")));
    }
    match admin_users::delete_group(&ctx.remote, &name).await {
        Ok(members) => {
            tracing::info!(group = %name, members, action = "delete", from = %from, "admin action");
            (
                StatusCode::OK,
                format!("deleted group {name} ({members} members)\n"),
            )
                .into_response()
        }
        Err(e) => refused(&e),
    }
}

/// How many users have a session on this node.
async fn online_users(ctx: &NodeCtx) -> usize {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = crate::actors::reply(move |n| {
        let _ = tx.send(n);
    });
    if ctx.registry.cast(RegistryMsg::OnlineUsers { reply }).is_err() {
        return 0;
    }
    rx.await.unwrap_or(0)
}
