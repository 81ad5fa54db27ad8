//! A client of a node's admin HTTP endpoint, for user and group administration (the
//! `chat admin` subcommands): plain HTTP/1.1 with the admin token as a Bearer token.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one admin request may take (a listing reads every partition).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Names asked per page when a listing is followed to its end.
const PAGE: u32 = 1000;

/// What can go wrong asking the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The endpoint could not be reached, or the connection failed.
    #[error("cannot reach the admin endpoint {addr}")]
    Io {
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no answer from the admin endpoint {0} in time")]
    Timeout(String),
    /// The endpoint answered with a status other than 200.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// host:port.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
    /// The answer could not be read.
    #[error("unreadable answer from {0}: {1}")]
    BadAnswer(String, String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, AdminError>;

/// An account, as `GET /users` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The name.
    pub name: String,
    /// When it registered (ms since the epoch).
    pub created_at_ms: u64,
    /// Disabled by an operator.
    pub disabled: bool,
}

/// A group, as `GET /groups` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The name.
    pub name: String,
    /// Who created it.
    pub creator: String,
    /// When (ms since the epoch).
    pub created_at_ms: u64,
    /// Members, counted up to a bound.
    pub members: u64,
    /// More members than counted.
    pub members_at_least: bool,
}

impl UserRow {
    fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(Self {
            name: v["name"].as_str()?.to_owned(),
            created_at_ms: v["created_at_ms"].as_u64()?,
            disabled: v["disabled"].as_bool()?,
        })
    }
}

impl GroupRow {
    fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(Self {
            name: v["name"].as_str()?.to_owned(),
            creator: v["creator"].as_str()?.to_owned(),
            created_at_ms: v["created_at_ms"].as_u64()?,
            members: v["members"].as_u64()?,
            members_at_least: v["members_at_least"].as_bool()?,
        })
    }
}

/// A node's admin endpoint, with the token to send.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: String,
    token: Option<String>,
}

impl AdminClient {
    /// The endpoint at `addr` (host:port), with the admin token if one is given.
    pub fn new(addr: impl Into<String>, token: Option<String>) -> Self {
        Self {
            addr: addr.into(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// One request; the status and body of the answer, whatever the status.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, String)> {
        tokio::time::timeout(ADMIN_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| AdminError::Timeout(self.addr.clone()))?
    }

    async fn exchange(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<(u16, String)> {
        let io = |source| AdminError::Io {
            addr: self.addr.clone(),
            source,
        };
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.map_err(io)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let (content_type, bytes) = body.unwrap_or(("", &[]));
        if !content_type.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
        let mut request = head.into_bytes();
        request.extend_from_slice(bytes);
        stream.write_all(&request).await.map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(io)?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AdminError::BadAnswer(self.addr.clone(), "not HTTP".into()))?;
        Ok((status, body.to_owned()))
    }

    /// A request that must answer 200; its body.
    async fn ok(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<String> {
        match self.request(method, path, body).await? {
            (200, body) => Ok(body),
            (status, body) => Err(AdminError::Status {
                addr: self.addr.clone(),
                status,
                body: body.trim().to_owned(),
            }),
        }
    }

    /// `POST /users/{user}/{action}` (`disable`, `enable`, `logout`); the answer's text.
    pub async fn user_action(&self, user: &str, action: &str) -> Result<String> {
        self.ok("POST", &format!("/users/{}/{action}", encode(user)), None)
            .await
    }

    /// Sets `user`'s password; every token is revoked, every session closed.
    pub async fn reset_password(&self, user: &str, password: &str) -> Result<String> {
        let body = serde_json::json!({ "password": password }).to_string();
        let path = format!("/users/{}/reset-password", encode(user));
        self.ok("POST", &path, Some(("application/json", body.as_bytes())))
            .await
    }

    /// Deletes a group; the answer's text.
    pub async fn delete_group(&self, group: &str) -> Result<String> {
        self.ok("POST", &format!("/groups/{}/delete", encode(group)), None)
            .await
    }

    /// Every account whose name starts with `prefix`, in name order (page after page).
    pub async fn users(&self, prefix: &str) -> Result<Vec<UserRow>> {
        self.all("/users", "users", prefix, UserRow::from_json).await
    }

    /// Every group whose name starts with `prefix`, in name order (page after page).
    pub async fn groups(&self, prefix: &str) -> Result<Vec<GroupRow>> {
        self.all("/groups", "groups", prefix, GroupRow::from_json).await
    }

    async fn all<T>(
        &self,
        path: &str,
        field: &str,
        prefix: &str,
        row: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        let bad = |why: &str| AdminError::BadAnswer(self.addr.clone(), why.to_owned());
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let query = format!(
                "{path}?prefix={}&after={}&limit={PAGE}",
                encode(prefix),
                encode(&after)
            );
            let body = self.ok("GET", &query, None).await?;
            let page: serde_json::Value = serde_json::from_str(&body).map_err(|e| bad(&e.to_string()))?;
            let items = page[field].as_array().ok_or_else(|| bad("no list"))?;
            for item in items {
                out.push(row(item).ok_or_else(|| bad("an item without its fields"))?);
            }
            let next = page["next_after"].as_str().unwrap_or_default();
            if page["has_more"] != true || next.is_empty() || next == after {
                return Ok(out);
            }
            after = next.to_owned();
        }
    }
}

/// Percent-encodes everything but unreserved characters, for a path segment or a
/// query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_pass_unencoded() {
        assert_eq!(encode("a-b_c.d~1"), "a-b_c.d~1");
        assert_eq!(encode("a b&c=/é"), "a%20b%26c%3D%2F%C3%A9");
    }
}
