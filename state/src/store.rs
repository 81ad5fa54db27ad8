//! What the state machine reads and writes: ordered keys and values. The node gives it
//! sled with the round's pending writes on top; tests and the simulator a `BTreeMap`.

use std::collections::BTreeMap;

/// A read failed: the replica cannot apply deterministically and must stop applying
/// (its log is kept; it catches up once the disk works).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct StoreError(pub String);

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Ordered key-value records.
pub trait Store {
    /// One value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` records whose key starts with `prefix` and sorts after `after`
    /// (from the first when `None`), in key order.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Writes a value.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    /// Removes a value.
    fn delete(&mut self, key: Vec<u8>);
}

/// Decodes a stored record; a record that does not decode is a [`StoreError`]: this
/// replica's storage is damaged, and it must not go on applying.
pub fn decode<M: prost::Message + Default>(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<M>> {
    bytes
        .map(|b| M::decode(b.as_slice()).map_err(|e| StoreError(format!("corrupt {what}: {e}"))))
        .transpose()
}

/// Records in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let from = match after {
            Some(after) => Bound::Excluded(after.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .0
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.0.insert(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.0.remove(&key);
    }
}
