//! Files (blobs): what a partition's records say about the files whose hash it holds,
//! who may read them, and what a user's uploads count against its quota.
//!
//! A file is stored once per content and named by its SHA-256. Its bytes live in the
//! files folder of the nodes that hold it (the node streams and fetches them); its
//! record here says how big it is, what it is, where it was stored, and who may read
//! it: its uploaders and the readers of messages that carried it (users, and groups
//! whose members may read it). Pure: no clock (times come in the commands), no I/O
//! beyond the [`Store`].

use crate::keys;
use crate::placement::Partition;
use crate::store::{Result, Store, decode};
use chat_protocol::internal::command::{ChargeUpload, DropBlobs, GrantBlob, StoreBlob};
use chat_protocol::internal::query::UploadUsage;
use chat_protocol::internal::{BlobRecord, Empty, outcome};
use prost::Message;

/// Most users a file's record names as readers: a file forwarded to more must be
/// uploaded as part of a group instead.
pub const MAX_USERS: usize = 4096;
/// Most groups a file's record names.
pub const MAX_GROUPS: usize = 1024;
/// Most records one [`drop_blobs`] looks at.
pub const MAX_DROP: u32 = 256;

/// The SHA-256 a blob id names: 64 lowercase hex digits.
pub fn parse_id(id: &str) -> Option<[u8; 32]> {
    let bytes = id.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The blob id of a SHA-256.
pub fn id_of(hash: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(hash.len() * 2);
    for b in hash {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// Whether a user may read a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Named as a reader.
    Reader,
    /// Only as a member of one of these groups (none: not at all).
    IfMemberOf(Vec<String>),
}

/// Whether `user` may read the file of `record`.
pub fn access(record: &BlobRecord, user: &str) -> Access {
    if record.users.iter().any(|u| u == user) {
        Access::Reader
    } else {
        Access::IfMemberOf(record.groups.clone())
    }
}

fn add(list: &mut Vec<String>, names: impl IntoIterator<Item = String>) {
    for name in names {
        if !list.contains(&name) {
            list.push(name);
        }
    }
}

fn not_found() -> outcome::Result {
    outcome::Result::NotFound(Empty {})
}

/// Records a file durable on `c.holders` (a new record, or more holders and a reader
/// for one that exists); with no holders, only claims an existing record for `c.user`
/// (an upload of bytes the cluster has).
pub fn store_blob(p: Partition, store: &mut impl Store, c: &StoreBlob) -> Result<outcome::Result> {
    let Some(hash) = parse_id(&c.blob) else {
        return Ok(outcome::Result::Invalid(format!("not a blob id: {:?}", c.blob)));
    };
    let key = keys::blob(p, &hash);
    let record = match decode::<BlobRecord>(store.get(&key)?, "file record")? {
        None if c.holders.is_empty() => return Ok(not_found()),
        None => BlobRecord {
            size: c.size,
            mime: c.mime.clone(),
            width: c.width,
            height: c.height,
            thumbnail: c.thumbnail.clone(),
            holders: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            created_ms: c.now_ms,
            last_ref_ms: c.now_ms,
        },
        Some(record) => record,
    };
    let mut record = record;
    add(&mut record.holders, c.holders.iter().cloned());
    if record.users.len() >= MAX_USERS && !record.users.contains(&c.user) {
        return Ok(outcome::Result::NotAllowed(Empty {}));
    }
    add(&mut record.users, [c.user.clone()]);
    record.last_ref_ms = record.last_ref_ms.max(c.now_ms);
    store.put(key, record.encode_to_vec());
    Ok(outcome::Result::Blob(record))
}

/// Lets the readers of a message that carries a file read it.
pub fn grant_blob(p: Partition, store: &mut impl Store, c: &GrantBlob) -> Result<outcome::Result> {
    let Some(hash) = parse_id(&c.blob) else {
        return Ok(not_found());
    };
    let key = keys::blob(p, &hash);
    let Some(mut record) = decode::<BlobRecord>(store.get(&key)?, "file record")? else {
        return Ok(not_found());
    };
    add(&mut record.users, c.users.iter().cloned());
    add(&mut record.groups, c.groups.iter().cloned());
    if record.users.len() > MAX_USERS || record.groups.len() > MAX_GROUPS {
        return Ok(outcome::Result::NotAllowed(Empty {}));
    }
    record.last_ref_ms = record.last_ref_ms.max(c.now_ms);
    store.put(key, record.encode_to_vec());
    Ok(outcome::Result::Blob(record))
}

/// Retention: drops the records, after `c.after`, of files no message carried since
/// `c.before_ms` (looking at most at `c.limit` of them). Swept: the last one looked at,
/// or empty once the partition's last was.
pub fn drop_blobs(p: Partition, store: &mut impl Store, c: &DropBlobs) -> Result<outcome::Result> {
    let prefix = keys::blob_prefix(p);
    let after = parse_id(&c.after).map(|h| keys::blob(p, &h));
    let limit = c.limit.clamp(1, MAX_DROP) as usize;
    let page = store.scan(&prefix, after.as_deref(), limit)?;
    let mut last = String::new();
    for (key, value) in &page {
        let record = decode::<BlobRecord>(Some(value.clone()), "file record")?.unwrap_or_default();
        if record.last_ref_ms < c.before_ms {
            store.delete(key.clone());
        }
        last = id_of(&key[prefix.len()..]);
    }
    if page.len() < limit {
        last.clear();
    }
    Ok(outcome::Result::Swept(last))
}

fn charge_value(size: u64, at_ms: u64) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&at_ms.to_be_bytes());
    v
}

fn charge_of(value: &[u8]) -> (u64, u64) {
    let word = |i: usize| {
        value
            .get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    (word(0), word(8))
}

/// Most of a user's charges one [`charge_upload`] forgets (the rest go on later ones).
const MAX_FORGET: usize = 64;

/// Counts an upload against its user's quota (once per file), and forgets some of the
/// user's charges older than the window.
pub fn charge_upload(p: Partition, store: &mut impl Store, c: &ChargeUpload) -> Result<outcome::Result> {
    let Some(hash) = parse_id(&c.blob) else {
        return Ok(not_found());
    };
    let since = c.now_ms.saturating_sub(c.window_ms);
    let prefix = keys::scoped(p, keys::tree::UPLOADS, &c.user, 0);
    for (key, value) in store.scan(&prefix, None, MAX_FORGET)? {
        if charge_of(&value).1 < since {
            store.delete(key);
        }
    }
    let key = keys::upload(p, &c.user, &hash);
    let fresh = store.get(&key)?.is_none_or(|v| charge_of(&v).1 < since);
    if fresh {
        store.put(key, charge_value(c.size, c.now_ms));
    }
    Ok(outcome::Result::Done(Empty {}))
}

/// The bytes `q.user` uploaded within the window.
pub fn usage(p: Partition, store: &impl Store, q: &UploadUsage) -> Result<u64> {
    let since = q.now_ms.saturating_sub(q.window_ms);
    let prefix = keys::scoped(p, keys::tree::UPLOADS, &q.user, 0);
    let mut total = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(&prefix, after.as_deref(), 1024)?;
        for (_, value) in &page {
            let (size, at) = charge_of(value);
            if at >= since {
                total = total.saturating_add(size);
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == 1024 => after = Some(key.clone()),
            _ => return Ok(total),
        }
    }
}

/// A file's record, by its blob id.
pub fn record(p: Partition, store: &impl Store, id: &str) -> Result<Option<BlobRecord>> {
    match parse_id(id) {
        Some(hash) => decode(store.get(&keys::blob(p, &hash))?, "file record"),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    const P: Partition = 7;

    fn id(n: u8) -> String {
        id_of(&[n; 32])
    }

    fn stored(blob: &str, holders: &[&str], user: &str, now_ms: u64) -> StoreBlob {
        StoreBlob {
            blob: blob.to_owned(),
            size: 10,
            mime: "image/png".into(),
            holders: holders.iter().map(|h| h.to_string()).collect(),
            user: user.into(),
            now_ms,
            ..StoreBlob::default()
        }
    }

    fn blob(o: outcome::Result) -> BlobRecord {
        match o {
            outcome::Result::Blob(b) => b,
            other => panic!("not a blob: {other:?}"),
        }
    }

    #[test]
    fn ids_are_lowercase_hex_of_the_hash_both_ways() {
        let hash: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8);
        let text = id_of(&hash);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_id(&text), Some(hash));
        assert_eq!(parse_id(&text.to_uppercase()), None, "uppercase is another id");
        assert_eq!(parse_id(&text[1..]), None);
        assert_eq!(parse_id(&format!("{}g", &text[1..])), None);
        assert_eq!(parse_id("é".repeat(32).as_str()), None);
    }

    #[test]
    fn a_claim_without_a_record_finds_nothing_and_a_store_makes_the_uploader_a_reader() {
        let mut store = MemStore::default();
        let claim = store_blob(P, &mut store, &stored(&id(1), &[], "ann", 5)).unwrap();
        assert_eq!(claim, not_found());
        assert!(store.0.is_empty(), "a failed claim writes nothing");

        let r = blob(store_blob(P, &mut store, &stored(&id(1), &["n1", "n2"], "ann", 5)).unwrap());
        assert_eq!(r.holders, ["n1", "n2"]);
        assert_eq!(access(&r, "ann"), Access::Reader);
        assert_eq!(access(&r, "bob"), Access::IfMemberOf(vec![]));

        // The same bytes again, by another user: one record, both readers.
        let r = blob(store_blob(P, &mut store, &stored(&id(1), &[], "bob", 9)).unwrap());
        assert_eq!(r.users, ["ann", "bob"]);
        assert_eq!((r.created_ms, r.last_ref_ms), (5, 9));
    }

    #[test]
    fn grants_add_readers_and_groups_and_refuse_past_the_bounds() {
        let mut store = MemStore::default();
        assert_eq!(
            grant_blob(
                P,
                &mut store,
                &GrantBlob {
                    blob: id(2),
                    ..GrantBlob::default()
                }
            )
            .unwrap(),
            not_found()
        );
        store_blob(P, &mut store, &stored(&id(2), &["n1"], "ann", 1)).unwrap();
        let grant = GrantBlob {
            blob: id(2),
            users: vec!["bob".into()],
            groups: vec!["rust".into()],
            now_ms: 3,
        };
        let r = blob(grant_blob(P, &mut store, &grant).unwrap());
        assert_eq!(access(&r, "bob"), Access::Reader);
        assert_eq!(access(&r, "cy"), Access::IfMemberOf(vec!["rust".into()]));
        assert_eq!(r.last_ref_ms, 3);

        let many = GrantBlob {
            blob: id(2),
            users: (0..MAX_USERS).map(|i| format!("u{i}")).collect(),
            ..GrantBlob::default()
        };
        assert_eq!(
            grant_blob(P, &mut store, &many).unwrap(),
            outcome::Result::NotAllowed(Empty {})
        );
        let r = record(P, &store, &id(2)).unwrap().unwrap();
        assert_eq!(r.users, ["ann", "bob"], "a refused grant changes nothing");
    }

    #[test]
    fn retention_drops_records_not_referred_to_since_the_cutoff_page_by_page() {
        let mut store = MemStore::default();
        for n in 0..5u8 {
            store_blob(P, &mut store, &stored(&id(n), &["n1"], "ann", 10 * u64::from(n))).unwrap();
        }
        // Another partition's records are never touched.
        store_blob(P + 1, &mut store, &stored(&id(9), &["n1"], "ann", 0)).unwrap();
        let mut after = String::new();
        let mut pages = 0;
        loop {
            let swept = drop_blobs(
                P,
                &mut store,
                &DropBlobs {
                    before_ms: 25,
                    after: after.clone(),
                    limit: 2,
                },
            )
            .unwrap();
            pages += 1;
            let outcome::Result::Swept(last) = swept else {
                panic!()
            };
            if last.is_empty() {
                break;
            }
            after = last;
        }
        assert!(pages >= 3, "five records in pages of two");
        let left: Vec<u8> = (0..5u8)
            .filter(|n| record(P, &store, &id(*n)).unwrap().is_some())
            .collect();
        assert_eq!(left, [3, 4]);
        assert!(record(P + 1, &store, &id(9)).unwrap().is_some());
    }

    #[test]
    fn uploads_count_once_within_the_window() {
        let mut store = MemStore::default();
        let charge = |blob: String, size: u64, now_ms: u64| ChargeUpload {
            user: "ann".into(),
            blob,
            size,
            now_ms,
            window_ms: 100,
        };
        let used = |store: &MemStore, now_ms: u64| {
            usage(
                P,
                store,
                &UploadUsage {
                    user: "ann".into(),
                    now_ms,
                    window_ms: 100,
                },
            )
            .unwrap()
        };
        charge_upload(P, &mut store, &charge(id(1), 40, 0)).unwrap();
        charge_upload(P, &mut store, &charge(id(1), 40, 10)).unwrap();
        charge_upload(P, &mut store, &charge(id(2), 5, 50)).unwrap();
        assert_eq!(used(&store, 60), 45, "the same file counts once");
        assert_eq!(used(&store, 120), 5, "the first upload left the window");
        // A later charge forgets what left the window.
        charge_upload(P, &mut store, &charge(id(3), 1, 200)).unwrap();
        assert_eq!(store.0.len(), 1);
        assert_eq!(used(&store, 200), 1);
    }
}
