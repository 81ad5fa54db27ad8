//! A user's devices: each token is one device (a password login makes it, token logins
//! reuse it). Devices are named to clients by an id derived from the token, never by the
//! token itself, which is a secret; revoking a device and touching a token are commands
//! of the user's partition, listing them a query of it.

use crate::keys;
use crate::placement::Partition;
use crate::store::{Result, Store, decode};
use chat_protocol::internal::{Empty, TokenRecord, command, outcome};
use chat_protocol::v1::{Device, DeviceList};
use prost::Message;
use sha2::{Digest, Sha256};

/// Hex characters of a device id (the first 8 bytes of SHA-256 of the token).
pub const ID_LEN: usize = 16;
/// Most devices one listing returns (the most recently used).
pub const MAX_LISTED: usize = 200;
/// Most tokens one listing looks at.
pub const MAX_SCAN: usize = 10_000;

/// The id a device is shown and named by: the first [`ID_LEN`] hex characters of the
/// SHA-256 of its token. One-way, so listing devices never hands a token out.
pub fn id_of(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..ID_LEN / 2].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the form of a device id (lowercase hex, [`ID_LEN`] characters).
pub fn plausible_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `user`'s tokens: (token, record), in key order.
fn tokens(p: Partition, store: &impl Store, user: &str, limit: usize) -> Result<Vec<(String, TokenRecord)>> {
    let prefix = keys::token(p, user, "");
    store
        .scan(&prefix, None, limit)?
        .into_iter()
        .map(|(key, value)| {
            let token = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let record = decode::<TokenRecord>(Some(value), "token")?.unwrap_or_default();
            Ok((token, record))
        })
        .collect()
}

/// `user`'s devices whose tokens are unexpired at `now_ms`, the most recently used
/// first (then the newest, then by id), at most [`MAX_LISTED`]; `current` unset.
pub fn list(p: Partition, store: &impl Store, user: &str, now_ms: u64) -> Result<DeviceList> {
    let found = tokens(p, store, user, MAX_SCAN + 1)?;
    let mut truncated = found.len() > MAX_SCAN;
    let mut devices: Vec<Device> = found
        .into_iter()
        .take(MAX_SCAN)
        .filter(|(_, r)| r.expires_at_ms > now_ms)
        .map(|(token, r)| Device {
            id: id_of(&token),
            device: r.device,
            created_at_ms: r.created_at_ms,
            last_login_ms: r.last_login_ms,
            expires_at_ms: r.expires_at_ms,
            current: false,
        })
        .collect();
    devices.sort_by(|a, b| {
        (b.last_login_ms, b.created_at_ms)
            .cmp(&(a.last_login_ms, a.created_at_ms))
            .then_with(|| a.id.cmp(&b.id))
    });
    truncated |= devices.len() > MAX_LISTED;
    devices.truncate(MAX_LISTED);
    Ok(DeviceList { devices, truncated })
}

/// Revokes the token of `r.user` whose id is `r.device` (every one, should two share an
/// id); NotFound when none does.
pub fn revoke(p: Partition, store: &mut impl Store, r: &command::RevokeDevice) -> Result<outcome::Result> {
    let mut found = false;
    for (token, _) in tokens(p, store, &r.user, usize::MAX)? {
        if id_of(&token) == r.device {
            store.delete(keys::token(p, &r.user, &token));
            found = true;
        }
    }
    Ok(if found {
        outcome::Result::Done(Empty {})
    } else {
        outcome::Result::NotFound(Empty {})
    })
}

/// Moves the last login of a token forward to `t.at_ms`; NotFound for a token that is
/// gone, which stays gone (a touch racing a revocation must not bring it back).
pub fn touch(p: Partition, store: &mut impl Store, t: &command::TouchToken) -> Result<outcome::Result> {
    let key = keys::token(p, &t.user, &t.token);
    let Some(mut record) = decode::<TokenRecord>(store.get(&key)?, "token")? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    if t.at_ms > record.last_login_ms {
        record.last_login_ms = t.at_ms;
        store.put(key, record.encode_to_vec());
    }
    Ok(outcome::Result::Done(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::apply_op;
    use crate::placement;
    use crate::store::MemStore;
    use chat_protocol::internal::command::Op;

    fn run(p: Partition, store: &mut MemStore, op: Op) -> outcome::Result {
        apply_op(p, op, store).unwrap().result.unwrap()
    }

    fn put(p: Partition, store: &mut MemStore, user: &str, token: &str, device: &str, at: u64) {
        let record = TokenRecord {
            expires_at_ms: at + 1000,
            device: device.into(),
            created_at_ms: at,
            last_login_ms: at,
        };
        let op = Op::PutToken(command::PutToken {
            user: user.into(),
            token: token.into(),
            record: Some(record),
        });
        run(p, store, op);
    }

    #[test]
    fn a_device_id_is_sixteen_hex_characters_of_the_tokens_hash_and_not_the_token() {
        let id = id_of("secret-token");
        assert!(plausible_id(&id), "{id}");
        assert_eq!(id, id_of("secret-token"), "the same token, the same id");
        assert_ne!(id, id_of("secret-tokem"));
        assert!(!id.contains("secret"));
        // SHA-256("abc") starts ba7816bf8f01cfea.
        assert_eq!(id_of("abc"), "ba7816bf8f01cfea");
        assert!(!plausible_id("BA7816BF8F01CFEA"), "uppercase is not an id");
        assert!(!plausible_id("ba7816bf8f01cfe"), "too short");
        assert!(!plausible_id("ba7816bf8f01cfeg"), "not hex");
        assert!(!plausible_id("ba7816bf8f01cféa"), "not ascii");
    }

    #[test]
    fn a_listing_shows_unexpired_devices_most_recently_used_first_without_tokens() {
        let p = 3;
        let ann = placement::user_named_in(p, "user", 0);
        let bob = placement::user_named_in(p, "user", 1);
        let mut store = MemStore::default();
        put(p, &mut store, &ann, "t-old", "desk", 100);
        put(p, &mut store, &ann, "t-new", "phone", 200);
        put(p, &mut store, &ann, "t-gone", "tablet", 0); // expires at 1000
        put(p, &mut store, &bob, "t-bob", "bob's", 300);
        let list = list(p, &store, &ann, 1000).unwrap();
        let shown: Vec<(&str, &str)> = list
            .devices
            .iter()
            .map(|d| (d.id.as_str(), d.device.as_str()))
            .collect();
        let (old, new) = (id_of("t-old"), id_of("t-new"));
        assert_eq!(shown, vec![(new.as_str(), "phone"), (old.as_str(), "desk")]);
        assert!(!list.truncated);
        assert_eq!(list.devices[1].created_at_ms, 100);
        assert_eq!(list.devices[1].expires_at_ms, 1100);
        assert!(list.devices.iter().all(|d| !d.current));
        // A touch moves a device to the front.
        let touch = Op::TouchToken(command::TouchToken {
            user: ann.clone(),
            token: "t-old".into(),
            at_ms: 500,
        });
        assert_eq!(run(p, &mut store, touch), outcome::Result::Done(Empty {}));
        let again = super::list(p, &store, &ann, 1000).unwrap();
        assert_eq!(again.devices[0].id, old);
        assert_eq!(again.devices[0].last_login_ms, 500);
        assert_eq!(again.devices[0].created_at_ms, 100);
    }

    #[test]
    fn revoking_a_device_removes_only_its_token_and_an_unknown_id_is_not_found() {
        let p = 5;
        let ann = placement::user_named_in(p, "user", 0);
        let bob = placement::user_named_in(p, "user", 1);
        let mut store = MemStore::default();
        put(p, &mut store, &ann, "t1", "a", 1);
        put(p, &mut store, &ann, "t2", "b", 2);
        put(p, &mut store, &bob, "t1", "c", 3);
        let revoke = |user: &str, device: String| {
            Op::RevokeDevice(command::RevokeDevice {
                user: user.into(),
                device,
            })
        };
        assert_eq!(
            run(p, &mut store, revoke(&ann, id_of("t1"))),
            outcome::Result::Done(Empty {})
        );
        assert!(store.get(&keys::token(p, &ann, "t1")).unwrap().is_none());
        assert!(store.get(&keys::token(p, &ann, "t2")).unwrap().is_some());
        assert!(
            store.get(&keys::token(p, &bob, "t1")).unwrap().is_some(),
            "another user's token with the same id stays"
        );
        assert_eq!(
            run(p, &mut store, revoke(&ann, id_of("t1"))),
            outcome::Result::NotFound(Empty {}),
            "already gone"
        );
        assert_eq!(
            run(p, &mut store, revoke(&ann, "0123456789abcdef".into())),
            outcome::Result::NotFound(Empty {})
        );
    }

    #[test]
    fn a_touch_never_brings_a_revoked_token_back_nor_moves_the_time_back() {
        let p = 9;
        let ann = placement::user_named_in(p, "user", 0);
        let mut store = MemStore::default();
        put(p, &mut store, &ann, "t", "a", 100);
        let touch = |at_ms| {
            Op::TouchToken(command::TouchToken {
                user: ann.clone(),
                token: "t".into(),
                at_ms,
            })
        };
        assert_eq!(run(p, &mut store, touch(50)), outcome::Result::Done(Empty {}));
        assert_eq!(
            super::list(p, &store, &ann, 0).unwrap().devices[0].last_login_ms,
            100
        );
        let revoke = Op::RevokeToken(command::RevokeToken {
            user: ann.clone(),
            token: "t".into(),
        });
        run(p, &mut store, revoke);
        assert_eq!(
            run(p, &mut store, touch(900)),
            outcome::Result::NotFound(Empty {})
        );
        assert!(store.get(&keys::token(p, &ann, "t")).unwrap().is_none());
    }
}
