//! A partition's records as one byte string: what a Raft snapshot of a partition carries.
//!
//! `(key length u32 BE ‖ key ‖ value length u32 BE ‖ value)*`, in key order.

/// Keys and values, in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Encodes records.
pub fn encode<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes records; `None` if the bytes are cut short.
pub fn decode(mut data: &[u8]) -> Option<Records> {
    fn take(data: &mut &[u8]) -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let out = data.get(4..4 + len)?.to_vec();
        *data = &data[4 + len..];
        Some(out)
    }
    let mut records = Vec::new();
    while !data.is_empty() {
        let k = take(&mut data)?;
        let v = take(&mut data)?;
        records.push((k, v));
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_cut_bytes_are_refused() {
        let records = vec![(b"a".to_vec(), b"1".to_vec()), (b"bc".to_vec(), Vec::new())];
        let bytes = encode(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert_eq!(decode(&bytes), Some(records));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }
}
