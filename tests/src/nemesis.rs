//! The nemesis of the fault-injection test: a seeded schedule of Jepsen's standard faults
//! (isolate a node, majority/minority split, bridge, ring, kill -9, pause), and for each
//! partition shape the pairs of nodes it cuts apart. Pure: the test network applies it.

use crate::workload::Rng;
use std::collections::BTreeSet;
use std::time::Duration;

/// One fault, over nodes numbered from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node reaches no other node.
    Isolate(usize),
    /// Nodes on one side reach only their own side.
    Split(Vec<usize>, Vec<usize>),
    /// Two sides that do not reach each other, and one node that reaches both.
    Bridge {
        /// One side.
        left: Vec<usize>,
        /// The node in both halves.
        bridge: usize,
        /// The other side.
        right: Vec<usize>,
    },
    /// Each node reaches only its two neighbours in this circular order.
    Ring(Vec<usize>),
    /// SIGKILL, and a restart on the same data folder when the fault ends.
    Kill(usize),
    /// SIGSTOP, and SIGCONT when the fault ends.
    Pause(usize),
}

/// An unordered pair of nodes that cannot reach each other, smaller first.
pub type Cut = (usize, usize);

fn cut(a: usize, b: usize) -> Cut {
    (a.min(b), a.max(b))
}

fn across(left: &[usize], right: &[usize]) -> BTreeSet<Cut> {
    left.iter()
        .flat_map(|a| right.iter().map(move |b| cut(*a, *b)))
        .collect()
}

impl Fault {
    /// The pairs of nodes (of `nodes`) this fault cuts apart; none for kills and pauses.
    pub fn cuts(&self, nodes: usize) -> BTreeSet<Cut> {
        match self {
            Fault::Isolate(n) => (0..nodes).filter(|o| o != n).map(|o| cut(*n, o)).collect(),
            Fault::Split(a, b) => across(a, b),
            Fault::Bridge { left, right, .. } => across(left, right),
            Fault::Ring(order) => {
                let k = order.len();
                let mut cuts = BTreeSet::new();
                for i in 0..k {
                    for j in i + 1..k {
                        let adjacent = j == i + 1 || (i == 0 && j == k - 1);
                        if !adjacent {
                            cuts.insert(cut(order[i], order[j]));
                        }
                    }
                }
                cuts
            }
            Fault::Kill(_) | Fault::Pause(_) => BTreeSet::new(),
        }
    }
}

fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|n| format!("n{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Isolate(n) => write!(f, "isolate n{n}"),
            Fault::Split(a, b) => write!(f, "split {} | {}", names(a), names(b)),
            Fault::Bridge { left, bridge, right } => {
                write!(f, "bridge {} <n{bridge}> {}", names(left), names(right))
            }
            Fault::Ring(order) => write!(f, "ring {}", names(order).replace(' ', "-")),
            Fault::Kill(n) => write!(f, "kill -9 n{n}"),
            Fault::Pause(n) => write!(f, "pause n{n}"),
        }
    }
}

/// One step of a schedule: a fault, how long it lasts, and how long the cluster then
/// runs healed before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it lasts.
    pub duration: Duration,
    /// Healed time after it.
    pub rest: Duration,
}

/// How many kinds of fault there are.
pub const KINDS: usize = 6;

fn seconds(rng: &mut Rng, from: u64, to: u64) -> Duration {
    Duration::from_millis(from * 1000 + rng.next_u64() % ((to - from) * 1000 + 1))
}

/// `faults` steps for `nodes` nodes (at least 5): the first six are each kind once in a
/// seeded order, then kinds drawn at random. Partitions and kills last 5 to 15 s, pauses
/// 10 to 20 s; 4 to 8 s of healed running follow each.
pub fn schedule(seed: u64, nodes: usize, faults: usize) -> Vec<Step> {
    assert!(nodes >= 5, "the split, bridge and ring shapes need five nodes");
    let mut rng = Rng::new(seed ^ 0x006e_656d_6573_6973);
    let mut kinds: Vec<usize> = (0..KINDS).collect();
    rng.shuffle(&mut kinds);
    (0..faults)
        .map(|i| {
            let kind = kinds.get(i).copied().unwrap_or_else(|| rng.below(KINDS));
            let mut order: Vec<usize> = (0..nodes).collect();
            rng.shuffle(&mut order);
            let fault = match kind {
                0 => Fault::Isolate(order[0]),
                1 => {
                    let (minority, majority) = order.split_at(nodes / 2);
                    Fault::Split(sorted(minority), sorted(majority))
                }
                2 => {
                    let half = (nodes - 1) / 2;
                    Fault::Bridge {
                        left: sorted(&order[..half]),
                        bridge: order[half],
                        right: sorted(&order[half + 1..]),
                    }
                }
                3 => Fault::Ring(order),
                4 => Fault::Kill(order[0]),
                _ => Fault::Pause(order[0]),
            };
            let duration = match fault {
                Fault::Pause(_) => seconds(&mut rng, 10, 20),
                _ => seconds(&mut rng, 5, 15),
            };
            Step {
                fault,
                duration,
                rest: seconds(&mut rng, 4, 8),
            }
        })
        .collect()
}

fn sorted(nodes: &[usize]) -> Vec<usize> {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who `node` still reaches under `cuts`.
    fn reaches(cuts: &BTreeSet<Cut>, nodes: usize, node: usize) -> Vec<usize> {
        (0..nodes)
            .filter(|o| *o != node && !cuts.contains(&cut(node, *o)))
            .collect()
    }

    #[test]
    fn an_isolated_node_reaches_nobody_and_the_others_reach_each_other() {
        let cuts = Fault::Isolate(2).cuts(5);
        assert!(reaches(&cuts, 5, 2).is_empty());
        assert_eq!(reaches(&cuts, 5, 0), [1, 3, 4]);
    }

    #[test]
    fn a_split_keeps_each_side_whole_and_apart() {
        let cuts = Fault::Split(vec![1, 3], vec![0, 2, 4]).cuts(5);
        assert_eq!(reaches(&cuts, 5, 1), [3]);
        assert_eq!(reaches(&cuts, 5, 0), [2, 4]);
        assert_eq!(cuts.len(), 6);
    }

    #[test]
    fn a_bridge_node_reaches_both_halves_which_do_not_reach_each_other() {
        let cuts = Fault::Bridge {
            left: vec![0, 4],
            bridge: 2,
            right: vec![1, 3],
        }
        .cuts(5);
        assert_eq!(reaches(&cuts, 5, 2), [0, 1, 3, 4]);
        assert_eq!(reaches(&cuts, 5, 0), [2, 4]);
        assert_eq!(reaches(&cuts, 5, 3), [1, 2]);
    }

    #[test]
    fn in_a_ring_each_node_reaches_only_its_two_neighbours() {
        let cuts = Fault::Ring(vec![3, 0, 4, 1, 2]).cuts(5);
        assert_eq!(reaches(&cuts, 5, 3), [0, 2]);
        assert_eq!(reaches(&cuts, 5, 4), [0, 1]);
        for n in 0..5 {
            assert_eq!(reaches(&cuts, 5, n).len(), 2);
        }
    }

    #[test]
    fn kills_and_pauses_cut_no_link() {
        assert!(Fault::Kill(1).cuts(5).is_empty());
        assert!(Fault::Pause(1).cuts(5).is_empty());
    }

    #[test]
    fn a_schedule_is_a_function_of_its_seed_and_starts_with_every_kind_once() {
        let a = schedule(7, 5, 8);
        assert_eq!(a, schedule(7, 5, 8));
        assert_ne!(a, schedule(8, 5, 8));
        assert_eq!(a.len(), 8);
        let kind = |f: &Fault| match f {
            Fault::Isolate(_) => 0,
            Fault::Split(..) => 1,
            Fault::Bridge { .. } => 2,
            Fault::Ring(_) => 3,
            Fault::Kill(_) => 4,
            Fault::Pause(_) => 5,
        };
        let first: BTreeSet<usize> = a[..KINDS].iter().map(|s| kind(&s.fault)).collect();
        assert_eq!(first.len(), KINDS);
        for step in &a {
            let (lo, hi) = match step.fault {
                Fault::Pause(_) => (10, 20),
                _ => (5, 15),
            };
            assert!((lo..=hi).contains(&step.duration.as_secs()), "{step:?}");
            assert!((4..=8).contains(&step.rest.as_secs()), "{step:?}");
        }
        match &a.iter().find(|s| kind(&s.fault) == 1).unwrap().fault {
            Fault::Split(minority, majority) => assert_eq!((minority.len(), majority.len()), (2, 3)),
            _ => unreachable!(),
        }
    }
}
