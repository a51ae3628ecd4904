//! The chunk store against a `HashMap` model on the crashable in-memory disk: random writes
//! (aligned, unaligned, appends, holes), replaces, truncates, removes, range removes, staged
//! versions left pending or committed later, aborts, reads, clean reopens, compactions and
//! power cuts, either between operations or armed to strike inside the N-th mutating IO (which
//! may tear that write at any sector).
//!
//! After every power cut the store must reopen and every chunk must be at its acknowledged
//! state, except the chunks of the one operation in flight, which may be at their old or their
//! new state (never anything else). The same holds for staged (pending) versions, which are
//! durable once `stage` returns (a chain replica that restarts still holds them), and for the
//! tombstone (version) a committed removal leaves. Space accounting must then match the live
//! chunks' blocks, committed and staged, exactly (no leaked blocks).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use r3fs_chunk::format::SizeClass;
use r3fs_chunk::mem::MemDiskOptions;
use r3fs_chunk::{CommitOutcome, StageOutcome, StageRequest, StoreError, UpdateOp, UpdateOutcome};
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, InodeId};
use std::collections::HashMap;

/// (inode, index, chunk size) of the chunks under test.
const CHUNKS: [(u64, u64, u32); 6] = [
    (1, 0, 64 << 10),
    (1, 1, 64 << 10),
    (1, 2, 64 << 10),
    (2, 0, 256 << 10),
    (2, 1, 256 << 10),
    (2, 2, 256 << 10),
];

fn chunk_of(i: usize) -> (ChunkId, u32) {
    let (inode, index, size) = CHUNKS[i];
    (chunk(inode, index), size)
}

#[derive(Clone, Debug)]
enum Op {
    Write { chunk: usize, offset: u32, len: u32, aligned: bool, seed: u64 },
    Replace { chunk: usize, len: u32, seed: u64 },
    Truncate { chunk: usize, len: u32 },
    Extend { chunk: usize, len: u32 },
    Remove { chunk: usize },
    RemoveRange { inode: u64, start: u64, end: u64 },
    StageOnly { chunk: usize, offset: u32, len: u32, seed: u64 },
    CommitStaged { chunk: usize },
    Abort { chunk: usize },
    Read { chunk: usize, offset: u32, len: u32 },
    ArmCrash { after_ops: u64 },
    PowerCut,
    Reopen,
    Compact,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let c = 0..CHUNKS.len();
    prop_oneof![
        8 => (c.clone(), any::<u32>(), 1u32..70_000, any::<bool>(), any::<u64>())
            .prop_map(|(chunk, offset, len, aligned, seed)| Op::Write { chunk, offset, len, aligned, seed }),
        2 => (c.clone(), 0u32..70_000, any::<u64>()).prop_map(|(chunk, len, seed)| Op::Replace { chunk, len, seed }),
        2 => (c.clone(), any::<u32>()).prop_map(|(chunk, len)| Op::Truncate { chunk, len }),
        2 => (c.clone(), any::<u32>()).prop_map(|(chunk, len)| Op::Extend { chunk, len }),
        1 => c.clone().prop_map(|chunk| Op::Remove { chunk }),
        1 => (1u64..3, 0u64..3, 0u64..4).prop_map(|(inode, start, end)| Op::RemoveRange { inode, start, end }),
        2 => (c.clone(), any::<u32>(), 1u32..70_000, any::<u64>())
            .prop_map(|(chunk, offset, len, seed)| Op::StageOnly { chunk, offset, len, seed }),
        2 => c.clone().prop_map(|chunk| Op::CommitStaged { chunk }),
        1 => c.clone().prop_map(|chunk| Op::Abort { chunk }),
        3 => (c, any::<u32>(), 1u32..300_000).prop_map(|(chunk, offset, len)| Op::Read { chunk, offset, len }),
        2 => (1u64..30).prop_map(|after_ops| Op::ArmCrash { after_ops }),
        1 => Just(Op::PowerCut),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

type Content = Option<Vec<u8>>;

fn written(old: &Content, offset: u32, data: &[u8]) -> Vec<u8> {
    let mut new = old.clone().unwrap_or_default();
    let end = offset as usize + data.len();
    if new.len() < end {
        new.resize(end, 0);
    }
    new[offset as usize..end].copy_from_slice(data);
    new
}

/// Grown with zeros to at least `len`; never shortened.
fn extended(old: &Content, len: u32) -> Vec<u8> {
    let mut new = old.clone().unwrap_or_default();
    if new.len() < len as usize {
        new.resize(len as usize, 0);
    }
    new
}

fn truncated(old: &Content, len: u32) -> Vec<u8> {
    let mut new = old.clone().unwrap_or_default();
    new.resize(len as usize, 0);
    new
}

struct Run {
    h: MemHarness,
    model: HashMap<ChunkId, Vec<u8>>,
    /// Staged (pending) versions the store should hold: chunk -> (version, content if committed).
    staged: HashMap<ChunkId, (u64, Content)>,
    /// Versions left by committed removals (a removal by range leaves none).
    tombstones: HashMap<ChunkId, u64>,
    /// What the operation being applied does to tombstones once acknowledged.
    new_tombstones: Vec<(ChunkId, Option<u64>)>,
    /// The staged version the operation being applied tries to write.
    attempted_stage: Option<(ChunkId, (u64, Content))>,
    version: u64,
}

impl Run {
    fn content(&self, c: ChunkId) -> Content {
        self.model.get(&c).cloned()
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn set(&mut self, c: ChunkId, content: Content) {
        match content {
            Some(bytes) => self.model.insert(c, bytes),
            None => self.model.remove(&c),
        };
    }

    /// The effect on the model of an acknowledged operation: new contents, then tombstones.
    fn settle(&mut self, touched: &[(ChunkId, Content)], tombstones: &[(ChunkId, Option<u64>)]) {
        for (c, content) in touched {
            self.set(*c, content.clone());
            if content.is_some() {
                self.tombstones.remove(c);
            }
        }
        for (c, tombstone) in tombstones {
            match tombstone {
                Some(version) => self.tombstones.insert(*c, *version),
                None => self.tombstones.remove(c),
            };
        }
    }

    /// Runs one operation. Returns the chunks it may have changed with their new content, and
    /// whether it was acknowledged. Tombstones it leaves go to `self.new_tombstones`.
    fn apply(&mut self, op: &Op) -> (Vec<(ChunkId, Content)>, Result<(), StoreError>) {
        let store = self.h.store();
        self.new_tombstones.clear();
        self.attempted_stage = None;
        match *op {
            Op::Write { chunk: i, offset, len, aligned, seed } => {
                let (c, size) = chunk_of(i);
                let mut offset = offset % size;
                if aligned {
                    offset -= offset % 4096;
                }
                let len = len.min(size - offset).max(1);
                let data = bytes(seed, len as usize);
                let new = written(&self.content(c), offset, &data);
                let version = self.next_version();
                self.staged.remove(&c);
                let result = self.h.run(write(&store, c, version, size, offset, &data));
                (vec![(c, Some(new))], expect_committed(result))
            }
            Op::Replace { chunk: i, len, seed } => {
                let (c, size) = chunk_of(i);
                let data = bytes(seed, len.min(size) as usize);
                let version = self.next_version();
                self.staged.remove(&c);
                let request = StageRequest {
                    chunk: c,
                    version: ChunkVersion(version),
                    chain_version: ChainVersion(1),
                    chunk_size: size,
                    op: UpdateOp::Replace { data: buf(&store, &data), crc: crc32c::crc32c(&data) },
                };
                let result = self.h.run(store.update(request));
                (vec![(c, Some(data))], expect_committed(result))
            }
            Op::Truncate { chunk: i, len } => {
                let (c, size) = chunk_of(i);
                let len = len % (size + 1);
                let new = truncated(&self.content(c), len);
                let version = self.next_version();
                self.staged.remove(&c);
                let request = StageRequest {
                    chunk: c,
                    version: ChunkVersion(version),
                    chain_version: ChainVersion(2),
                    chunk_size: size,
                    op: UpdateOp::Truncate { len },
                };
                let result = self.h.run(store.update(request));
                (vec![(c, Some(new))], expect_committed(result))
            }
            Op::Extend { chunk: i, len } => {
                let (c, size) = chunk_of(i);
                let len = len % (size + 1);
                let new = extended(&self.content(c), len);
                let version = self.next_version();
                self.staged.remove(&c);
                let request = StageRequest {
                    chunk: c,
                    version: ChunkVersion(version),
                    chain_version: ChainVersion(2),
                    chunk_size: size,
                    op: UpdateOp::Extend { len },
                };
                let result = self.h.run(store.update(request));
                (vec![(c, Some(new))], expect_committed(result))
            }
            Op::Remove { chunk: i } => {
                let (c, size) = chunk_of(i);
                let version = self.next_version();
                self.staged.remove(&c);
                let request = StageRequest {
                    chunk: c,
                    version: ChunkVersion(version),
                    chain_version: ChainVersion(1),
                    chunk_size: size,
                    op: UpdateOp::Remove,
                };
                self.new_tombstones.push((c, Some(version)));
                let result = self.h.run(store.update(request));
                (vec![(c, None)], expect_committed(result))
            }
            Op::RemoveRange { inode, start, end } => {
                let touched: Vec<(ChunkId, Content)> = (start..end.max(start))
                    .map(|index| (chunk(inode, index), None))
                    .filter(|(c, _)| CHUNKS.iter().any(|(i, x, _)| chunk(*i, *x) == *c))
                    .collect();
                for (c, _) in &touched {
                    self.staged.remove(c);
                    self.new_tombstones.push((*c, None));
                }
                let result = self.h.run(store.remove_range(InodeId(inode), start..end));
                let result = result.map(|outcome| {
                    assert!(
                        outcome.busy.is_empty() && outcome.resume_from.is_none(),
                        "{outcome:?}"
                    );
                });
                (touched, result)
            }
            Op::StageOnly { chunk: i, offset, len, seed } => {
                let (c, size) = chunk_of(i);
                let offset = offset % size;
                let len = len.min(size - offset).max(1);
                let data = bytes(seed, len as usize);
                let new = written(&self.content(c), offset, &data);
                let version = self.next_version();
                let request = write_request(&store, c, version, size, offset, &data);
                self.attempted_stage = Some((c, (version, Some(new.clone()))));
                let result = self.h.run(store.stage(request));
                let result = result.map(|outcome| {
                    assert!(matches!(outcome, StageOutcome::Staged(_)), "{outcome:?}");
                    self.staged.insert(c, (version, Some(new)));
                });
                (Vec::new(), result)
            }
            Op::CommitStaged { chunk: i } => {
                let (c, _) = chunk_of(i);
                let Some((version, content)) = self.staged.remove(&c) else {
                    return (Vec::new(), Ok(()));
                };
                let result = self.h.run(store.commit(c, ChunkVersion(version)));
                let result = result.map(|outcome| {
                    assert!(matches!(outcome, CommitOutcome::Committed(_)), "{outcome:?}");
                });
                if content.is_none() {
                    self.new_tombstones.push((c, Some(version)));
                }
                (vec![(c, content)], result)
            }
            Op::Abort { chunk: i } => {
                let (c, _) = chunk_of(i);
                let Some((version, _)) = self.staged.remove(&c) else {
                    return (Vec::new(), Ok(()));
                };
                let result = self.h.run(store.abort(c, ChunkVersion(version)));
                (Vec::new(), result.map(|dropped| assert!(dropped)))
            }
            Op::Read { chunk: i, offset, len } => {
                let (c, size) = chunk_of(i);
                let offset = offset % (size + 1);
                let expected = self.content(c);
                let result = self.h.run(store.read(c, offset, len));
                let result = match (result, expected) {
                    (Ok(read), Some(model)) => {
                        let start = (offset as usize).min(model.len());
                        let end = (offset as usize + len as usize).min(model.len());
                        assert_eq!(read.data(), &model[start..end], "read {c} at {offset}+{len}");
                        assert_eq!(read.crc, crc32c::crc32c(read.data()));
                        Ok(())
                    }
                    (Err(StoreError::ChunkNotFound(_)), None) => Ok(()),
                    (Err(e), _) => Err(e),
                    (Ok(_), None) => panic!("read of removed chunk {c} succeeded"),
                };
                (Vec::new(), result)
            }
            Op::ArmCrash { after_ops } => {
                self.h.disk.crash_after_ops(after_ops);
                (Vec::new(), Ok(()))
            }
            Op::PowerCut => {
                self.h.disk.crash();
                (Vec::new(), Ok(()))
            }
            Op::Reopen => {
                if !self.h.disk.crash_armed() {
                    self.h.close_and_reopen();
                    // Staged versions are durable: a reopen keeps them.
                    let staged = self.staged.clone();
                    self.check_all(&[], &staged);
                }
                (Vec::new(), Ok(()))
            }
            Op::Compact => (Vec::new(), self.h.run(store.compact())),
        }
    }

    /// Every chunk at its model state (or, for `uncertain` ones, at one of two states, which
    /// then becomes the model), metadata consistent, no leaked space. Staged versions: each
    /// chunk's is the model's, or the one in `staged_before` (the state before the operation a
    /// power cut interrupted); whichever it is becomes the model.
    fn check_all(
        &mut self,
        uncertain: &[(ChunkId, Content)],
        staged_before: &HashMap<ChunkId, (u64, Content)>,
    ) {
        let store = self.h.store();
        let mut used = 0;
        let mut blocks = std::collections::BTreeSet::new();
        for i in 0..CHUNKS.len() {
            let (c, _) = chunk_of(i);
            let actual: Content = match self.h.run(read_all(&store, c)) {
                Ok(bytes) => Some(bytes),
                Err(StoreError::ChunkNotFound(_)) => None,
                Err(e) => panic!("chunk {c} unreadable after recovery: {e}"),
            };
            let old = self.content(c);
            match uncertain.iter().find(|(u, _)| *u == c) {
                Some((_, new)) => {
                    assert!(
                        actual == old || actual == *new,
                        "chunk {c}: neither old ({:?} bytes) nor new ({:?} bytes) state, but {:?} bytes",
                        old.as_ref().map(Vec::len),
                        new.as_ref().map(Vec::len),
                        actual.as_ref().map(Vec::len)
                    );
                    self.set(c, actual.clone());
                }
                None => assert!(actual == old, "chunk {c} lost its acknowledged state"),
            }
            if let Some(bytes) = &actual {
                let meta = store.metadata(c).unwrap().committed.unwrap();
                assert_eq!(meta.len as usize, bytes.len());
                assert_eq!(meta.crc, crc32c::crc32c(bytes));
            }
            // A removed chunk keeps its version in a tombstone, across crashes too.
            let tombstone = store.metadata(c).and_then(|m| m.tombstone).map(|t| t.version.0);
            if actual.is_some() {
                assert_eq!(tombstone, None, "chunk {c}: data and a tombstone");
                self.tombstones.remove(&c);
            } else if uncertain.iter().any(|(u, _)| *u == c) {
                match tombstone {
                    Some(version) => self.tombstones.insert(c, version),
                    None => self.tombstones.remove(&c),
                };
            } else {
                assert_eq!(tombstone, self.tombstones.get(&c).copied(), "chunk {c}: tombstone");
            }
            // The staged version survives, bytes and all.
            let pending = store.metadata(c).and_then(|m| m.pending);
            let now = self.staged.get(&c).cloned();
            let before = staged_before.get(&c).cloned();
            // A stage a power cut interrupted may have become durable without an answer.
            let attempted = self.attempted_stage.clone().filter(|(a, _)| *a == c).map(|(_, s)| s);
            let found = match pending {
                None => None,
                Some(p) => {
                    let staged_bytes = self
                        .h
                        .run(store.read_pending(c, 0, p.len))
                        .unwrap_or_else(|e| panic!("chunk {c}: staged version unreadable: {e}"))
                        .map(|read| read.data().to_vec());
                    let content = if p.removal { None } else { staged_bytes };
                    if let Some(bytes) = &content {
                        assert_eq!(p.crc, crc32c::crc32c(bytes), "chunk {c}: staged crc");
                    }
                    Some((p.version.0, content))
                }
            };
            assert!(
                found == now || found == before || (found.is_some() && found == attempted),
                "chunk {c}: staged version {:?}, expected {:?} or {:?}",
                found.as_ref().map(|f| f.0),
                now.as_ref().map(|n| n.0),
                before.as_ref().map(|b| b.0)
            );
            match found {
                Some(found) => self.staged.insert(c, found),
                None => self.staged.remove(&c),
            };
            for location in [store.locate(c), store.locate_pending(c)].into_iter().flatten() {
                if blocks.insert((location.file_name.clone(), location.header_offset)) {
                    used += SizeClass::for_len(location.data_bytes).unwrap().stride_bytes();
                }
            }
        }
        let space = store.space();
        assert_eq!(space.used_bytes, used, "space accounting after reopen: {space:?}");
        assert!(space.reserved_bytes <= space.capacity_bytes);
    }
}

fn expect_committed(result: Result<UpdateOutcome, StoreError>) -> Result<(), StoreError> {
    result.map(|outcome| assert!(matches!(outcome, UpdateOutcome::Committed(_)), "{outcome:?}"))
}

fn run_model(seed: u64, ops: &[Op]) {
    let mut run = Run {
        // Jitter: a batch's block-file sync and its log write complete in either order. Odd
        // seeds model a file system whose syncs flush the whole device (ext4, XFS): overwrites
        // of stable slots then rely on the log's sync alone.
        h: MemHarness::new(
            seed,
            MemDiskOptions {
                jitter_yields_max: 2,
                device_flush: seed % 2 == 1,
                ..MemDiskOptions::default()
            },
            small_config(),
        ),
        model: HashMap::new(),
        staged: HashMap::new(),
        tombstones: HashMap::new(),
        new_tombstones: Vec::new(),
        attempted_stage: None,
        version: 0,
    };
    for op in ops {
        let crashes = run.h.disk.crashes();
        let staged_before = run.staged.clone();
        let (touched, result) = run.apply(op);
        let crashed = run.h.disk.crashes() > crashes;
        let acknowledged = match (result, crashed) {
            (Ok(()), _) => {
                let tombstones = std::mem::take(&mut run.new_tombstones);
                run.settle(&touched, &tombstones);
                true
            }
            (Err(_), true) => false,
            (Err(e), false) => panic!("{op:?} failed without a crash: {e}"),
        };
        if crashed {
            if let Err(e) = run.h.reopen() {
                panic!("reopen after a power cut during {op:?} failed: {e}");
            }
            // An acknowledged op is certain; an interrupted one may have landed or not, and so
            // may the staged versions it added, committed or dropped.
            let uncertain =
                if acknowledged && run.model_matches(&touched) { Vec::new() } else { touched };
            let staged_before = if acknowledged { run.staged.clone() } else { staged_before };
            run.check_all(&uncertain, &staged_before);
        }
    }
    if !run.h.disk.crash_armed() {
        run.h.close_and_reopen();
        let staged = run.staged.clone();
        run.check_all(&[], &staged);
    }
}

impl Run {
    fn model_matches(&self, touched: &[(ChunkId, Content)]) -> bool {
        touched.iter().all(|(c, content)| self.content(*c) == *content)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_across_power_cuts(seed in any::<u64>(), ops in proptest::collection::vec(op_strategy(), 1..50)) {
        run_model(seed, &ops);
    }
}

/// A long fixed-seed run with many armed crashes (deterministic: replays exactly).
#[test]
fn long_run_with_crashes() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops =
        proptest::collection::vec(op_strategy(), 400).new_tree(&mut runner).unwrap().current();
    run_model(0xC0FFEE, &ops);
    // The same with syncs that flush the whole device (an odd seed).
    run_model(0xC0FFEF, &ops);
}

/// Regression (found by the property test): a power cut while the last batch's block-file
/// sync was still pending.
#[test]
fn regression_power_cut_before_block_file_growth_is_durable() {
    let ops = vec![
        Op::Replace { chunk: 5, len: 1, seed: 0 },
        Op::Write { chunk: 0, offset: 0, len: 1, aligned: false, seed: 0 },
        Op::ArmCrash { after_ops: 28 },
        Op::Replace { chunk: 2, len: 1, seed: 0 },
        Op::Write { chunk: 1, offset: 0, len: 1, aligned: false, seed: 0 },
        Op::RemoveRange { inode: 1, start: 1, end: 3 },
        Op::Write { chunk: 2, offset: 0, len: 1, aligned: false, seed: 0 },
        Op::Write { chunk: 0, offset: 1, len: 12010, aligned: false, seed: 0 },
        Op::Write { chunk: 2, offset: 4096, len: 1, aligned: false, seed: 0 },
        Op::Write { chunk: 2, offset: 1, len: 1, aligned: false, seed: 0 },
        Op::StageOnly { chunk: 3, offset: 1901376277, len: 19692, seed: 0 },
        Op::Read { chunk: 0, offset: 3481456514, len: 1 },
        Op::StageOnly { chunk: 3, offset: 34946257, len: 49968, seed: 0 },
        Op::StageOnly { chunk: 2, offset: 1, len: 1, seed: 0 },
        Op::ArmCrash { after_ops: 4 },
        Op::Write { chunk: 0, offset: 1589313536, len: 12011, aligned: false, seed: 0 },
    ];
    run_model(9060105229611641412, &ops);
}
