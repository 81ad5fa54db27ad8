//! Measures the consensus path alone: three `MultiRaft` nodes in one process, 256 groups
//! of three voters each, messages passed in memory, and each node's round written to its
//! own file with one `fdatasync`. Prints committed proposals per second.
//!
//! `cargo run --release -p chat-consensus --example spike -- [PROPOSALS_PER_ROUND] [SECONDS]`

use chat_consensus::logger::discard;
use chat_consensus::{MultiRaft, RaftConfig};
use std::io::Write;
use std::time::{Duration, Instant};

const GROUPS: u32 = 256;

fn main() -> std::io::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let per_round = args.first().copied().unwrap_or(256) as usize;
    let seconds = args.get(1).copied().unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("raft-spike-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = RaftConfig {
        fixed_election_timeout: true,
        ..RaftConfig::default()
    };
    let mut nodes: Vec<MultiRaft<u64>> = (1..=3)
        .map(|id| MultiRaft::new(id, config.clone(), discard()))
        .collect();
    let mut files: Vec<std::fs::File> = (1..=3)
        .map(|id| std::fs::File::create(dir.join(format!("node-{id}.log"))))
        .collect::<Result<_, _>>()?;
    for node in &mut nodes {
        for group in 0..GROUPS {
            node.create(group, &[1, 2, 3]).expect("new group");
        }
    }
    // Spread leadership: node 1 campaigns for a third of the groups, and so on.
    let mut inbox: Vec<Vec<chat_consensus::Outgoing>> = vec![Vec::new(); 3];
    let mut round = |nodes: &mut Vec<MultiRaft<u64>>,
                     inbox: &mut Vec<Vec<chat_consensus::Outgoing>>|
     -> std::io::Result<usize> {
        let mut applied = 0;
        for i in 0..3 {
            for m in std::mem::take(&mut inbox[i]) {
                let _ = nodes[i].step(m.group, m.message);
            }
            if !nodes[i].has_work() {
                continue;
            }
            let r = nodes[i].start_round();
            applied += r.apply.len();
            let mut bytes = 0usize;
            for (_, w) in &r.writes {
                for e in &w.entries {
                    bytes += e.data.len() + 16;
                }
            }
            files[i].write_all(&vec![0u8; bytes.max(1)])?;
            files[i].sync_data()?;
            let mut out = r.send;
            out.extend(nodes[i].finish_round());
            for m in out {
                inbox[(m.to() - 1) as usize].push(m);
            }
        }
        Ok(applied)
    };
    let start = Instant::now();
    while (0..GROUPS).any(|g| !nodes.iter().any(|n| n.is_leader(g))) {
        for (i, node) in nodes.iter_mut().enumerate() {
            node.tick();
            let _ = i;
        }
        round(&mut nodes, &mut inbox)?;
        if start.elapsed() > Duration::from_secs(60) {
            panic!("no leaders after a minute");
        }
    }
    println!("every group led after {:?}", start.elapsed());
    let payload = vec![7u8; 100];
    let start = Instant::now();
    let mut proposed = 0u64;
    let mut applied = 0u64;
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        for k in 0..per_round {
            let group = (proposed + k as u64) as u32 % GROUPS;
            if let Some(node) = nodes.iter_mut().find(|n| n.is_leader(group))
                && node.propose(group, payload.clone(), proposed).is_ok()
            {
                proposed += 1;
            }
        }
        applied += round(&mut nodes, &mut inbox)? as u64;
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    // Each proposal is applied on all three replicas.
    println!(
        "{per_round} proposals per round: {:.0} committed proposals/s ({} rounds, {:.0} fdatasyncs/s per node)",
        applied as f64 / 3.0 / secs,
        rounds,
        rounds as f64 / secs
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
