//! Files over HTTP, on the port that serves the web client: `PUT /files/{id}` streams
//! an upload announced with `UploadBegin` (its upload token as `Authorization: Bearer
//! TOKEN`), `GET /files/{id}` downloads a file the user may read (`Authorization:
//! Bearer USER:LOGIN_TOKEN`), with `Range: bytes=A-B` to resume.
//!
//! Uploaded bytes are served so that a browser never runs them on the web client's
//! origin: `nosniff`, a sandboxing content security policy, and every type but a
//! few image types as an attachment to save.

use crate::context::NodeCtx;
use crate::error::ChatError;
use crate::files::Upload;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chat_protocol::v1::ErrorCode;
use futures::StreamExt;
use std::sync::Arc;

/// Bytes a download reads at a time.
const READ_BYTES: u32 = 256 * 1024;

/// The routes, for the web listener's router.
pub fn routes() -> Router<Arc<NodeCtx>> {
    Router::new().route("/files/{id}", get(download).put(upload))
}

async fn upload(State(ctx): State<Arc<NodeCtx>>, Path(id): Path<String>, req: Request) -> Response {
    let Some(token) = bearer(req.headers()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send the upload token as Authorization: Bearer TOKEN",
        );
    };
    let Some(announced) = ctx.files.take_token(token, &id) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "no such upload token for this file, or it expired",
        );
    };
    let mut upload = match Upload::start(ctx.files.clone(), announced).await {
        Ok(u) => u,
        Err(e) => return error(&e),
    };
    let mut body = req.into_body().into_data_stream();
    let mut offset = 0u64;
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("the upload broke off: {e}")),
        };
        match upload.write(offset, &piece).await {
            Ok(next) => offset = next,
            Err(e) => return error(&e),
        }
    }
    match upload.finish().await {
        Ok(a) => {
            let json = serde_json::json!({
                "blob_id": a.blob_id,
                "name": a.name,
                "mime": a.mime,
                "size": a.size,
                "sha256": a.sha256,
                "width": a.width,
                "height": a.height,
                "thumbnail": base64(&a.thumbnail),
            });
            (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                json.to_string(),
            )
                .into_response()
        }
        Err(e) => error(&e),
    }
}

async fn download(State(ctx): State<Arc<NodeCtx>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some((user, token)) = bearer(&headers).and_then(|b| b.split_once(':')) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send your login as Authorization: Bearer USER:TOKEN",
        );
    };
    if !crate::auth::valid_name(user) {
        return refuse(StatusCode::UNAUTHORIZED, "invalid user name");
    }
    if let Err(e) = logged_in(&ctx, user, token).await {
        return error(&e);
    }
    let record = match ctx.files.may_read(user, &id).await {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let size = record.size;
    let (start, end, partial) = match headers
        .get(header::RANGE)
        .map(|r| r.to_str().map(|r| range(r, size)))
    {
        None => (0, size, false),
        Some(Ok(Some((a, b)))) => (a, b, true),
        Some(_) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
    };
    let inline = INLINE_TYPES.contains(&record.mime.as_str());
    let content_type = static_type(&record.mime);
    let files = ctx.files.clone();
    let stream = futures::stream::unfold((start, record), move |(at, record)| {
        let (files, id) = (files.clone(), id.clone());
        async move {
            if at >= end {
                return None;
            }
            let want = (end - at).min(u64::from(READ_BYTES)) as u32;
            match files.read_range(&id, &record, at, want).await {
                Ok(data) if !data.is_empty() => {
                    let next = at + data.len() as u64;
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(data)), (next, record)))
                }
                Ok(_) => Some((Err(std::io::Error::other("the file ended early")), (end, record))),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), (end, record))),
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if !inline {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    if partial && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
        h.insert(header::CONTENT_RANGE, v);
    }
    response
}

/// Types a browser may show in place.
const INLINE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

fn static_type(t: &str) -> &'static str {
    INLINE_TYPES
        .iter()
        .find(|i| **i == t)
        .copied()
        .unwrap_or("application/octet-stream")
}

/// The byte range `bytes=A-B`, `bytes=A-` or `bytes=-N` of a file of `size` bytes, as
/// `[start, end)`; `None` when it cannot be served (several ranges, or past the end).
fn range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(size)
        };
        (start, end)
    };
    (start < end).then_some((start, end))
}

/// Whether `token` is a live login token of `user`.
async fn logged_in(ctx: &NodeCtx, user: &str, token: &str) -> Result<(), ChatError> {
    if !crate::auth::plausible_token(token) {
        return Err(ChatError::InvalidCredentials);
    }
    let get = |reply| crate::request::AccountMsg::GetToken {
        token: token.to_owned(),
        reply,
    };
    match ctx.router.account(user, get).await? {
        Some(t) if t.expires_at_ms > crate::storage::now_ms() => Ok(()),
        _ => Err(ChatError::InvalidCredentials),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let json = serde_json::json!({ "error": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// A chat error as an HTTP answer: its status, code and message.
fn error(e: &ChatError) -> Response {
    let code = e.code();
    let status = match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidCredentials | ErrorCode::NotAuthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::HashMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::QuotaExceeded | ErrorCode::NotAllowed => StatusCode::FORBIDDEN,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let json = serde_json::json!({ "code": code.as_str_name(), "error": e.to_string() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_single_and_within_the_file() {
        assert_eq!(range("bytes=0-99", 1000), Some((0, 100)));
        assert_eq!(range("bytes=500-", 1000), Some((500, 1000)));
        assert_eq!(range("bytes=-100", 1000), Some((900, 1000)));
        assert_eq!(range("bytes=900-5000", 1000), Some((900, 1000)));
        assert_eq!(range("bytes=1000-", 1000), None);
        assert_eq!(range("bytes=0-1,5-6", 1000), None);
        assert_eq!(range("items=0-1", 1000), None);
        assert_eq!(range("bytes=x-1", 1000), None);
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
