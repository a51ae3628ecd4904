//! Property: for random client scripts (writes, truncates, extends, removes, replaces and reads on
//! a few chunks), random message interleavings (FIFO per link), random storage completion order,
//! message loss and corruption, and optionally one target failing mid-run, every replica ends with
//! exactly the state of a simple model that applies the acknowledged writes in version order; each
//! write is applied once; no read returns uncommitted data or anything older than what a client had
//! already observed.

mod harness;

use bytes::Bytes;
use harness::*;
use proptest::prelude::*;
use r3fs_craq::Update;
use r3fs_types::PublicTargetState::{Offline, Serving, Syncing};

fn op() -> impl Strategy<Value = ClientOp> {
    let chunk_index = 0..3u64;
    prop_oneof![
        4 => (chunk_index.clone(), 0..64u32, 1..24usize, any::<u8>())
            .prop_map(|(c, offset, len, fill)| write_op(c, offset, len, fill)),
        1 => (chunk_index.clone(), 0..96u32).prop_map(|(c, length_bytes)| ClientOp::Write {
            chunk: chunk(c),
            update: Update::Truncate { length_bytes },
        }),
        1 => (chunk_index.clone(), 0..96u32).prop_map(|(c, length_bytes)| ClientOp::Write {
            chunk: chunk(c),
            update: Update::Extend { length_bytes },
        }),
        1 => chunk_index.clone().prop_map(|c| ClientOp::Write { chunk: chunk(c), update: Update::Remove }),
        1 => (chunk_index.clone(), proptest::collection::vec(any::<u8>(), 0..32)).prop_map(|(c, data)| {
            ClientOp::Write { chunk: chunk(c), update: Update::Replace { data: Bytes::from(data) } }
        }),
        2 => (chunk_index, 0..80u32, 1..64u32).prop_map(|(c, offset, len)| read_op(c, offset, len)),
    ]
}

#[derive(Clone, Debug)]
struct Failure {
    after_steps: u64,
    /// Index into the chain (taken modulo its length).
    position: usize,
    /// Steps after the crash at which the target restarts and is resynced back in, if it does.
    rejoin_after_steps: Option<u64>,
}

fn scenario() -> impl Strategy<Value = (u64, u64, Vec<Vec<ClientOp>>, Faults, Option<Failure>)> {
    (
        any::<u64>(),
        1..=4u64,
        proptest::collection::vec(proptest::collection::vec(op(), 1..8), 1..=3),
        (0..=80u32, 0..=80u32).prop_map(|(drop_per_mille, corrupt_per_mille)| Faults {
            drop_per_mille,
            corrupt_per_mille,
        }),
        proptest::option::of((0..400u64, 0..4usize, proptest::option::of(0..400u64)).prop_map(
            |(after_steps, position, rejoin_after_steps)| Failure {
                after_steps,
                position,
                rejoin_after_steps,
            },
        )),
    )
}

proptest! {
    // 400 cases by default (about a second); PROPTEST_CASES widens the sweep.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400)
    ))]

    #[test]
    fn replicas_converge_to_the_model((seed, replicas, scripts, faults, failure) in scenario()) {
        let mut sim = Sim::new(seed, replicas, faults);
        let writes: usize = scripts
            .iter()
            .map(|s| s.iter().filter(|op| matches!(op, ClientOp::Write { .. })).count())
            .sum();
        for (client, script) in scripts.into_iter().enumerate() {
            sim.add_channel(client as u64 + 1, 0, script);
        }
        // Readers race the writers on every chunk, so stale or uncommitted reads would show.
        for reader in 0..2u64 {
            sim.add_channel(100 + reader, 0, (0..16).map(|i| read_op((i + reader) % 3, 0, 96)).collect());
        }
        if let Some(failure) = failure.filter(|_| replicas > 1) {
            sim.run_steps(failure.after_steps);
            let victim = failure.position as u64 % replicas + 1;
            sim.crash(victim);
            let mut chain: Vec<(u64, _)> =
                (1..=replicas).filter(|t| *t != victim).map(|t| (t, Serving)).collect();
            chain.push((victim, Offline));
            sim.set_chain(&chain);
            if let Some(rejoin_after_steps) = failure.rejoin_after_steps {
                sim.run_steps(rejoin_after_steps);
                sim.restart(victim);
                let last = chain.len() - 1;
                chain[last].1 = Syncing;
                sim.set_chain(&chain);
                let version = sim.chain_version();
                let synced = sim.run_until(300_000, |s| s.nodes[&target(victim)].sync_done == Some(version));
                prop_assert!(synced.is_ok(), "{}", synced.err().unwrap_or_default());
                chain[last].1 = Serving;
                sim.set_chain(&chain);
            }
        }
        let run = sim.run(300_000);
        prop_assert!(run.is_ok(), "{}", run.err().unwrap_or_default());
        let check = sim.check();
        prop_assert!(check.is_ok(), "{}", check.err().unwrap_or_default());
        prop_assert_eq!(sim.writes.len(), writes, "every write acknowledged once");
    }
}
