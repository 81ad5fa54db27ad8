//! A session's view of its user's devices and sessions: ListDevices, LogoutDevice and
//! ListSessions, the device name a password login gives its token, and when a token
//! login records its time. The decisions are pure functions here; the records are
//! `chat_state::devices`, served by `crate::served`; the sessions of other nodes are
//! asked through the member actors (`crate::view::sessions_elsewhere`).

use crate::actors::Reply;
use crate::context::NodeCtx;
use crate::error::{ChatError, ChatResult};
use crate::request::{DeviceMsg, Target};
use chat_protocol::internal::TokenRecord;
use chat_protocol::v1;
use chat_state::devices;

/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME: usize = 64;
/// A token login records its time only when the last one recorded is at least this old
/// (ms): a login with a token costs a read, and at most this often also a Raft write,
/// so a storm of reconnections does not become a storm of writes.
pub const TOUCH_EVERY_MS: u64 = 60_000;

/// A device name is at most [`MAX_DEVICE_NAME`] bytes without control characters (it is
/// shown in listings as is); empty means unnamed.
pub fn check_device_name(name: &str) -> ChatResult<()> {
    if name.len() > MAX_DEVICE_NAME {
        return Err(ChatError::BadRequest(format!(
            "device name is longer than {MAX_DEVICE_NAME} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ChatError::BadRequest("device name has control characters".into()));
    }
    Ok(())
}

/// The record of a token made by a password login at `now_ms` on `device`.
pub fn new_token_record(device: String, now_ms: u64, ttl_ms: u64) -> TokenRecord {
    TokenRecord {
        expires_at_ms: now_ms.saturating_add(ttl_ms),
        device,
        created_at_ms: now_ms,
        last_login_ms: now_ms,
    }
}

/// Whether a login with a token whose record is `record` records its time at `now_ms`.
pub fn needs_touch(record: &TokenRecord, now_ms: u64) -> bool {
    now_ms >= record.last_login_ms.saturating_add(TOUCH_EVERY_MS)
}

/// A device id as a client typed it: lowercase hex of the right length, or BAD_REQUEST.
pub fn parse_id(id: &str) -> ChatResult<String> {
    let id = id.trim().to_ascii_lowercase();
    if devices::plausible_id(&id) {
        Ok(id)
    } else {
        Err(ChatError::BadRequest(format!(
            "a device id is {} hex characters",
            devices::ID_LEN
        )))
    }
}

/// Marks the device `current` (the asking session's) in a listing.
pub fn mark_current(mut list: v1::DeviceList, current: &str) -> v1::DeviceList {
    for d in &mut list.devices {
        d.current = d.id == current;
    }
    list
}

/// One listing of sessions: this node's (with their ids, to find the asking session
/// `me`) and the other nodes', by node then connection time.
pub fn merge_sessions(
    local: Vec<(u64, v1::SessionInfo)>,
    me: u64,
    elsewhere: Vec<v1::SessionInfo>,
) -> Vec<v1::SessionInfo> {
    let mut all: Vec<v1::SessionInfo> = local
        .into_iter()
        .map(|(id, s)| v1::SessionInfo {
            current: id == me,
            ..s
        })
        .chain(
            elsewhere
                .into_iter()
                .map(|s| v1::SessionInfo { current: false, ..s }),
        )
        .collect();
    all.sort_by(|a, b| {
        (&a.node, a.connected_since_ms, &a.client_address).cmp(&(
            &b.node,
            b.connected_since_ms,
            &b.client_address,
        ))
    });
    all
}

/// Lists `user`'s devices, `current` marking the asking session's.
pub fn list_devices(ctx: &NodeCtx, user: &str, current: String, reply: Reply<ChatResult<v1::DeviceList>>) {
    let msg = DeviceMsg::List {
        now_ms: crate::storage::now_ms(),
        reply: Box::new(move |r| reply(r.map(|list| mark_current(list, &current)))),
    };
    ctx.router.route(Target::Devices(user.to_owned(), msg));
}

/// Logs out `user`'s device `id` (as the client typed it); answers with the id.
pub fn logout_device(
    ctx: &NodeCtx,
    user: &str,
    id: &str,
    reply: Reply<ChatResult<String>>,
) -> ChatResult<()> {
    let device = parse_id(id)?;
    let msg = DeviceMsg::LogOut {
        device: device.clone(),
        reply: Box::new(move |r| reply(r.map(|()| device))),
    };
    ctx.router.route(Target::Devices(user.to_owned(), msg));
    Ok(())
}

/// Lists `user`'s sessions on every node; `session` is the asking one.
pub fn list_sessions(
    ctx: &NodeCtx,
    user: &str,
    session: u64,
    reply: Reply<ChatResult<Vec<v1::SessionInfo>>>,
) {
    let local = ctx.remote.sessions_of(user);
    let user = user.to_owned();
    tokio::spawn(async move {
        let elsewhere = crate::view::sessions_elsewhere(&user).await;
        reply(Ok(merge_sessions(local, session, elsewhere)));
    });
}

/// Records a token login's time, in the background (a failure costs only a stale time).
pub fn touch(ctx: &NodeCtx, user: &str, token: String, record: &TokenRecord, now_ms: u64) {
    if !needs_touch(record, now_ms) {
        return;
    }
    let user_name = user.to_owned();
    let msg = DeviceMsg::Touch {
        token,
        at_ms: now_ms,
        reply: Box::new(move |r| {
            if let Err(e) = r {
                tracing::debug!(user = %user_name, error = %e, "token login time not recorded");
            }
        }),
    };
    ctx.router.route(Target::Devices(user.to_owned(), msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_bounded_and_free_of_control_characters() {
        assert!(check_device_name("").is_ok());
        assert!(check_device_name("laptop firefox").is_ok());
        assert!(check_device_name(&"é".repeat(32)).is_ok(), "64 bytes");
        assert!(matches!(
            check_device_name(&"x".repeat(65)),
            Err(ChatError::BadRequest(_))
        ));
        assert!(matches!(check_device_name("a\nb"), Err(ChatError::BadRequest(_))));
        assert!(matches!(
            check_device_name("a\u{7}"),
            Err(ChatError::BadRequest(_))
        ));
    }

    #[test]
    fn a_token_login_records_its_time_at_most_once_a_minute() {
        let record = new_token_record("cli".into(), 1_000, 5_000);
        assert_eq!(
            (record.created_at_ms, record.last_login_ms, record.expires_at_ms),
            (1_000, 1_000, 6_000)
        );
        assert!(!needs_touch(&record, 1_000));
        assert!(!needs_touch(&record, 1_000 + TOUCH_EVERY_MS - 1));
        assert!(needs_touch(&record, 1_000 + TOUCH_EVERY_MS));
        let old = TokenRecord {
            expires_at_ms: 9,
            ..TokenRecord::default()
        };
        assert!(
            needs_touch(&old, TOUCH_EVERY_MS),
            "a token of an older node has no time yet"
        );
    }

    #[test]
    fn device_ids_are_hex_of_the_right_length_whatever_their_case() {
        assert_eq!(parse_id(" BA7816BF8F01CFEA ").unwrap(), "ba7816bf8f01cfea");
        assert!(matches!(parse_id("ba78"), Err(ChatError::BadRequest(_))));
        assert!(matches!(
            parse_id("zz7816bf8f01cfea"),
            Err(ChatError::BadRequest(_))
        ));
        assert!(matches!(parse_id(""), Err(ChatError::BadRequest(_))));
    }

    #[test]
    fn the_asking_sessions_device_and_session_are_marked_current() {
        let device = |id: &str| v1::Device {
            id: id.into(),
            current: true,
            ..v1::Device::default()
        };
        let list = v1::DeviceList {
            devices: vec![device("a"), device("b")],
            truncated: false,
        };
        let marked: Vec<bool> = mark_current(list, "b")
            .devices
            .iter()
            .map(|d| d.current)
            .collect();
        assert_eq!(marked, vec![false, true]);

        let session = |node: &str, since: u64| v1::SessionInfo {
            node: node.into(),
            connected_since_ms: since,
            current: true,
            ..v1::SessionInfo::default()
        };
        let merged = merge_sessions(
            vec![(7, session("n2", 5)), (8, session("n2", 1))],
            7,
            vec![session("n3", 0), session("n1", 9)],
        );
        let seen: Vec<(&str, u64, bool)> = merged
            .iter()
            .map(|s| (s.node.as_str(), s.connected_since_ms, s.current))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("n1", 9, false),
                ("n2", 1, false),
                ("n2", 5, true),
                ("n3", 0, false)
            ],
            "by node then time; only the asking session is current, whatever peers said"
        );
    }
}
