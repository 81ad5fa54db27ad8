//! User and group administration for the admin endpoint: list and search accounts
//! and groups (a read of every partition, merged by `chat_state::admin::merge`), reset
//! a password, and delete a group (`PurgeGroup` batches at the group's partition, and
//! each member's membership record removed in the member's partition).
//!
//! The HTTP side (routes, the admin token, status codes) is in `admin.rs`; what a
//! partition answers and how a group's records go is decided in `chat_state::admin`.

use crate::error::{ChatError, ChatResult};
use crate::partition::{self, PARTITIONS};
use crate::request::AccountMsg;
use chat_protocol::internal::answer::{A, AccountSummary, GroupSummary};
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome::{self, Purged};
use chat_protocol::internal::query::{ListPage, Q};
use chat_state::admin::Listed;
use futures::{StreamExt, TryStreamExt};

/// Partitions read at once by a listing (of [`PARTITIONS`]).
const SCATTER: usize = 32;
/// Records one batch of a group's deletion removes (and most members it names): a
/// Raft command stays small.
const PURGE_BATCH: u32 = 2000;
/// Membership records removed at once while a group is deleted.
const MEMBERSHIPS_AT_ONCE: usize = 32;
/// Names a listing returns when the request does not say.
pub const DEFAULT_LIMIT: u32 = 100;

/// What a listing asks: names starting with `prefix`, after `after`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAsk {
    pub prefix: String,
    pub after: String,
    pub limit: u32,
}

impl Default for ListAsk {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            after: String::new(),
            limit: DEFAULT_LIMIT,
        }
    }
}

impl ListAsk {
    /// Reads `prefix`, `after` and `limit` from a URL query string; anything else, or a
    /// limit that is no number, is refused (the limit is capped by the partitions).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut ask = Self::default();
        for (key, value) in form_pairs(query)? {
            match key.as_str() {
                "prefix" => ask.prefix = value,
                "after" => ask.after = value,
                "limit" => {
                    ask.limit = value
                        .parse()
                        .map_err(|_| format!("limit must be a number, not {value:?}"))?;
                }
                other => return Err(format!("unknown parameter {other:?}: prefix, after or limit")),
            }
        }
        Ok(ask)
    }

    fn page(&self) -> ListPage {
        ListPage {
            prefix: self.prefix.clone(),
            after: self.after.clone(),
            limit: self.limit,
        }
    }
}

/// The pairs of an `application/x-www-form-urlencoded` text (a URL's query string or
/// a form body): `+` is a space, `%XX` a byte; the result must be UTF-8.
pub fn form_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in {text:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("not UTF-8: {text:?}"))
}

/// The new password in a reset's body: JSON `{"password": "..."}` (content type
/// `application/json`, or a body that starts with `{`) or a form `password=...`.
pub fn password_from_body(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        password: String,
    }
    let json = content_type.is_some_and(|c| c.starts_with("application/json"))
        || body.trim_ascii_start().starts_with(b"{");
    if json {
        let body: Body = serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))?;
        return Ok(body.password);
    }
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let mut password = None;
    for (key, value) in form_pairs(text.trim())? {
        match key.as_str() {
            "password" if password.is_none() => password = Some(value),
            _ => return Err(format!("unexpected form field {key:?}: give password once")),
        }
    }
    password.ok_or_else(|| "no password: send {\"password\": \"...\"} or password=...".to_owned())
}

/// Accounts by name: every partition's page, merged.
pub async fn list_users(ctx: &crate::context::NodeCtx, ask: &ListAsk) -> ChatResult<Listed<AccountSummary>> {
    let pages = scatter(ctx, Q::ListAccounts(ask.page()), |a| match a {
        A::Accounts(a) => Some(Listed {
            items: a.accounts,
            has_more: a.has_more,
            covered: a.covered,
        }),
        _ => None,
    })
    .await?;
    let limit = chat_state::admin::page_size(ask.limit);
    Ok(chat_state::admin::merge(pages, limit, |a| &a.name))
}

/// Groups by name: every partition's page, merged.
pub async fn list_groups(ctx: &crate::context::NodeCtx, ask: &ListAsk) -> ChatResult<Listed<GroupSummary>> {
    let pages = scatter(ctx, Q::ListGroups(ask.page()), |a| match a {
        A::Groups(g) => Some(Listed {
            items: g.groups,
            has_more: g.has_more,
            covered: g.covered,
        }),
        _ => None,
    })
    .await?;
    let limit = chat_state::admin::page_size(ask.limit);
    Ok(chat_state::admin::merge(pages, limit, |g| &g.name))
}

/// Asks `q` of every partition's leader ([`SCATTER`] at a time); fails if one fails.
async fn scatter<T>(
    ctx: &crate::context::NodeCtx,
    q: Q,
    page: impl Fn(A) -> Option<Listed<T>>,
) -> ChatResult<Vec<Listed<T>>> {
    let page = &page;
    futures::stream::iter(0..PARTITIONS)
        .map(|p| {
            let q = q.clone();
            async move {
                let answer = read(ctx, p, q).await?;
                let shown = format!("{answer:?}");
                page(answer).ok_or_else(|| ChatError::Internal(format!("unexpected answer {shown}")))
            }
        })
        .buffer_unordered(SCATTER)
        .try_collect()
        .await
}

/// Sets a new password for `user` (checked as at registration, hashed with argon2id),
/// revokes every token and closes every session of the user on every node.
pub async fn reset_password(ctx: &crate::context::NodeCtx, user: &str, password: String) -> ChatResult<()> {
    crate::auth::check_password(&password)?;
    if !crate::auth::valid_name(user) {
        return Err(ChatError::NotFound(format!("user {user}")));
    }
    let password_hash = ctx.hash_password(password).await?;
    ctx.router
        .account(user, |reply| AccountMsg::RevokeTokens {
            keep: String::new(),
            password_hash,
            skip_session: 0,
            reason: "your password was reset by an operator".into(),
            reply,
        })
        .await
}

/// Deletes `group`: batch after batch at its partition, each member's membership
/// record removed before the group forgets the member, until its last record is gone.
/// Returns how many members it had. Stopped half-way (an error), it can be run again:
/// the group is already gone for everyone else, and the next run goes on.
pub async fn delete_group(remote: &std::sync::Arc<crate::remote::Remote>, group: &str) -> ChatResult<usize> {
    let p = partition::of_group(group);
    let (mut forget, mut members, mut first) = (Vec::new(), 0, true);
    loop {
        let op = Op::PurgeGroup(command::PurgeGroup {
            group: group.to_owned(),
            limit: PURGE_BATCH,
            forget: std::mem::take(&mut forget),
        });
        match propose(remote, p, op).await? {
            outcome::Result::Purged(Purged { done: true, .. }) => return Ok(members),
            outcome::Result::Purged(Purged { members: left, .. }) => {
                leave_all(remote, group, &left).await?;
                members += left.len();
                forget = left;
            }
            // Not there at first: no such group. Later: the answer to its last batch
            // was lost, and a resend found it gone.
            outcome::Result::NotFound(_) if first => {
                return Err(ChatError::NotFound(format!("group {group}")));
            }
            outcome::Result::NotFound(_) => return Ok(members),
            other => return Err(ChatError::Internal(format!("unexpected outcome {other:?}"))),
        }
        first = false;
    }
}

/// Deletes `user` and all its data: disabled first (every token revoked, every session
/// closed), its relations ended (both sides are told, through the pairs' outboxes), it
/// leaves its groups (ownership passes on; a group left empty is deleted), then its
/// records go batch by batch on every replica of its partition: tokens, inbox,
/// contacts and blocks. The account stays as a tombstone that keeps the name taken:
/// what it sent others stays in their inboxes under its name. Stopped half-way (an
/// error), it can be run again. Returns how many groups it left.
pub async fn delete_user(ctx: &crate::context::NodeCtx, user: &str) -> ChatResult<usize> {
    let p = partition::of_user(user);
    match read(ctx, p, Q::Account(user.to_owned())).await? {
        A::Account(_) => {
            let disable = |reply| AccountMsg::SetDisabled {
                disabled: true,
                reply,
            };
            ctx.router.account(user, disable).await?;
        }
        // Maybe a deletion that stopped half-way: a tombstone reads as no account.
        _ => {
            let op = Op::PurgeUser(command::PurgeUser {
                user: user.to_owned(),
                limit: 1,
            });
            if matches!(propose(&ctx.remote, p, op).await?, outcome::Result::NotFound(_)) {
                return Err(ChatError::NotFound(format!("user {user}")));
            }
        }
    }
    if let A::Contacts(c) = read(ctx, p, Q::Contacts(user.to_owned())).await? {
        for contact in c.contacts {
            let op = Op::ContactAction(command::ContactAction {
                actor: user.to_owned(),
                other: contact.user.clone(),
                action: chat_state::contacts::Action::Remove as u32,
                now_ms: crate::storage::now_ms(),
            });
            propose(
                &ctx.remote,
                chat_state::contacts::pair_partition(user, &contact.user),
                op,
            )
            .await?;
        }
    }
    let groups = match read(ctx, p, Q::GroupsOf(user.to_owned())).await? {
        A::Names(n) => n.names,
        _ => Vec::new(),
    };
    for group in &groups {
        let op = Op::DropMember(command::DropMember {
            group: group.clone(),
            user: user.to_owned(),
            now_ms: crate::storage::now_ms(),
        });
        if let outcome::Result::Purged(Purged { done: true, .. }) =
            propose(&ctx.remote, partition::of_group(group), op).await?
        {
            match delete_group(&ctx.remote, group).await {
                Ok(_) | Err(ChatError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    loop {
        let op = Op::PurgeUser(command::PurgeUser {
            user: user.to_owned(),
            limit: PURGE_BATCH,
        });
        match propose(&ctx.remote, p, op).await? {
            outcome::Result::Purged(Purged { done: true, .. }) => return Ok(groups.len()),
            outcome::Result::Purged(_) => {}
            other => return Err(ChatError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

/// Removes `group` from the lists of groups of `users`, in their partitions.
async fn leave_all(
    remote: &std::sync::Arc<crate::remote::Remote>,
    group: &str,
    users: &[String],
) -> ChatResult<()> {
    let ops: Vec<(partition::Partition, Op)> = users
        .iter()
        .map(|user| {
            let op = Op::Membership(command::Membership {
                user: user.clone(),
                group: group.to_owned(),
                joined: false,
            });
            (partition::of_user(user), op)
        })
        .collect();
    futures::stream::iter(ops)
        .map(|(p, op)| propose(remote, p, op))
        .buffer_unordered(MEMBERSHIPS_AT_ONCE)
        .try_for_each(|_| futures::future::ready(Ok(())))
        .await
}

async fn propose(
    remote: &std::sync::Arc<crate::remote::Remote>,
    p: partition::Partition,
    op: Op,
) -> ChatResult<outcome::Result> {
    remote.propose_op(p, op).await
}

async fn read(ctx: &crate::context::NodeCtx, p: partition::Partition, q: Q) -> ChatResult<A> {
    ctx.remote.query(p, q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_string_is_decoded_and_unknown_or_bad_parameters_are_refused() {
        let ask = ListAsk::from_query("prefix=al%20i+ce&after=b&limit=5").unwrap();
        assert_eq!(
            ask,
            ListAsk {
                prefix: "al i ce".into(),
                after: "b".into(),
                limit: 5
            }
        );
        assert_eq!(ListAsk::from_query("").unwrap(), ListAsk::default());
        assert!(ListAsk::from_query("limit=lots").is_err());
        assert!(ListAsk::from_query("limit=-1").is_err());
        assert!(ListAsk::from_query("prefx=a").is_err());
        assert!(ListAsk::from_query("prefix=%zz").is_err());
        assert!(ListAsk::from_query("prefix=%").is_err());
        assert!(ListAsk::from_query("prefix=%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn a_password_comes_as_json_or_as_a_form_and_anything_else_is_refused() {
        let json = Some("application/json");
        assert_eq!(
            password_from_body(json, br#"{"password":"n3w pw"}"#).unwrap(),
            "n3w pw"
        );
        assert_eq!(password_from_body(None, br#" {"password":"x"}"#).unwrap(), "x");
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(password_from_body(form, b"password=a%26b+c").unwrap(), "a&b c");
        assert!(password_from_body(json, b"{").is_err());
        assert!(password_from_body(json, br#"{"password":1}"#).is_err());
        assert!(password_from_body(json, br#"{"password":"a","admin":true}"#).is_err());
        assert!(password_from_body(form, b"").is_err());
        assert!(password_from_body(form, b"pass=x").is_err());
        assert!(password_from_body(form, b"password=a&password=b").is_err());
        assert!(password_from_body(None, &[0xff, 0xfe]).is_err());
    }
}
