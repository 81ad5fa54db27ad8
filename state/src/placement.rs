//! Where entities live: entity → partition by a stable hash, partition → nodes by
//! rendezvous (highest random weight) hashing over the cluster's members.
//!
//! Both functions depend only on names, so every node computes the same owner from
//! the same member list, and a node joining or leaving moves only the partitions
//! it wins or held (about 1/N of them).

/// Partitions in every cluster. Fixed: changing it would move almost everything.
pub const PARTITIONS: u16 = 256;

/// A partition number, below [`PARTITIONS`].
pub type Partition = u16;

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity<'a> {
    /// A user: account, tokens and inbox.
    User(&'a str),
    /// A group: members and log.
    Group(&'a str),
}

/// 64-bit FNV-1a: tiny, stable across versions and platforms (unlike `std`'s hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The partition of an entity.
pub fn partition(entity: Entity<'_>) -> Partition {
    let h = match entity {
        Entity::User(name) => fnv1a(&[b"u/", name.as_bytes()]),
        Entity::Group(name) => fnv1a(&[b"g/", name.as_bytes()]),
    };
    (mix(h) % u64::from(PARTITIONS)) as Partition
}

/// The partition of a user.
pub fn of_user(user: &str) -> Partition {
    partition(Entity::User(user))
}

/// The partition of a group.
pub fn of_group(group: &str) -> Partition {
    partition(Entity::Group(group))
}

/// The partition of a file, by its SHA-256: files spread over every partition.
pub fn of_blob(hash: &[u8; 32]) -> Partition {
    (mix(fnv1a(&[b"b/", hash])) % u64::from(PARTITIONS)) as Partition
}

/// The `n`th name `{prefix}{i}` (i = 0, 1, ...) whose user partition is `p`: names are
/// hashed, so tests and tools that need users in a given partition search for them.
pub fn user_named_in(p: Partition, prefix: &str, n: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| of_user(u) == p)
        .nth(n)
        .expect("names cover every partition")
}

/// The `n`th name `{prefix}{i}` whose group partition is `p`.
pub fn group_named_in(p: Partition, prefix: &str, n: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|g| of_group(g) == p)
        .nth(n)
        .expect("names cover every partition")
}

/// The rendezvous weight of `node` for partition `p`.
fn weight(node: &str, p: Partition) -> u64 {
    mix(fnv1a(&[node.as_bytes(), &p.to_be_bytes()]))
}

/// The owner of `p` among `members`: the highest weight, ties broken by name.
pub fn owner<'a, I>(members: I, p: Partition) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    members.into_iter().max_by_key(|m| (weight(m, p), *m))
}

/// `members` from the owner of `p` down, by rendezvous weight: the owner, then the
/// node that would own `p` without it, and so on. Replicas are taken from the front.
pub fn ranked<'a, I>(members: I, p: Partition) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut all: Vec<&str> = members.into_iter().collect();
    all.sort_by_key(|m| std::cmp::Reverse((weight(m, p), *m)));
    all
}

/// A set of partitions as a bitmap (bit p%8 of byte p/8), as stored and as nodes
/// tell each other: the partitions for which `member` is true.
pub fn to_bits(member: impl Fn(Partition) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; PARTITIONS as usize / 8];
    for p in 0..PARTITIONS {
        if member(p) {
            bits[p as usize / 8] |= 1 << (p % 8);
        }
    }
    bits
}

/// Whether a bitmap from [`to_bits`] has `p` (false past its end).
pub fn has_bit(bits: &[u8], p: Partition) -> bool {
    bits.get(p as usize / 8).is_some_and(|b| b & (1 << (p % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node{i}")).collect()
    }

    fn owners(members: &[String]) -> Vec<String> {
        (0..PARTITIONS)
            .map(|p| owner(members.iter().map(String::as_str), p).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_joining_node_takes_only_partitions_it_wins_and_about_its_share() {
        let three = names(3);
        let four = names(4);
        let (before, after) = (owners(&three), owners(&four));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(a, "node4", "a partition moved between old members");
                moved += 1;
            }
        }
        // A fair share is 64 of 256; allow the spread of a hash.
        assert!((32..=96).contains(&moved), "node4 took {moved} partitions");
    }

    #[test]
    fn owners_do_not_depend_on_member_order_and_spread_evenly() {
        let mut members = names(5);
        let forward = owners(&members);
        members.reverse();
        assert_eq!(forward, owners(&members));
        for m in &members {
            let share = forward.iter().filter(|o| *o == m).count();
            assert!((25..=80).contains(&share), "{m} owns {share} of 256");
        }
    }

    #[test]
    fn users_and_groups_of_the_same_name_hash_apart_and_spread() {
        let differ = (0..200)
            .filter(|i| of_user(&format!("x{i}")) != of_group(&format!("x{i}")))
            .count();
        assert!(differ > 190, "{differ}");
        let mut hit = [false; PARTITIONS as usize];
        for i in 0..5000 {
            hit[of_user(&format!("user{i}")) as usize] = true;
        }
        assert!(hit.iter().all(|h| *h), "5000 users leave a partition empty");
    }

    #[test]
    fn bitmaps_round_trip() {
        let bits = to_bits(|p| p % 3 == 0);
        assert!((0..PARTITIONS).all(|p| has_bit(&bits, p) == (p % 3 == 0)));
        assert!(!has_bit(&[], 5));
    }

    #[test]
    fn ranking_starts_with_the_owner_and_is_what_remains_when_it_goes() {
        let members = names(4);
        for p in 0..PARTITIONS {
            let order = ranked(members.iter().map(String::as_str), p);
            assert_eq!(order.len(), 4);
            assert_eq!(Some(order[0]), owner(members.iter().map(String::as_str), p));
            // Without the first, the second owns it: a replica taken from the front
            // of the ranking is the node that takes over.
            let rest = members.iter().map(String::as_str).filter(|m| *m != order[0]);
            assert_eq!(Some(order[1]), owner(rest, p));
        }
    }

    #[test]
    fn no_members_means_no_owner() {
        assert_eq!(owner(std::iter::empty(), 3), None);
    }
}
