//! The store against a simple model: random sequences of namespace operations over a small set
//! of names, each answered by the store and by a map of paths; outcomes (errno or success) and
//! the whole tree must agree after every step, and fsck must stay clean.

use super::{Backend, Env, create_args, root};
use crate::error::MetaResult;
use crate::schema::InodeKind;
use proptest::prelude::*;
use r3fs_types::InodeId;
use r3fs_types::error::errno::*;
use std::collections::BTreeMap;

const R: InodeId = InodeId::ROOT;

#[derive(Clone, Debug)]
enum Op {
    Create(String),
    Mkdir(String),
    Unlink(String),
    Rmdir(String),
    Rename(String, String),
    Link(String, String),
}

fn path() -> impl Strategy<Value = String> {
    // Two levels of two names: enough for moves into subtrees, replacements and non-empty dirs.
    let name = prop::sample::select(vec!["a", "b"]);
    prop::collection::vec(name, 1..=3).prop_map(|parts| parts.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => path().prop_map(Op::Create),
        3 => path().prop_map(Op::Mkdir),
        1 => path().prop_map(Op::Unlink),
        1 => path().prop_map(Op::Rmdir),
        3 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
    ]
}

/// path -> (kind, model inode number). The root is "".
#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, (InodeKind, u64)>,
    next: u64,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Model {
    fn kind(&self, path: &str) -> Option<InodeKind> {
        if path.is_empty() { Some(InodeKind::Directory) } else { self.nodes.get(path).map(|n| n.0) }
    }

    /// The errno of resolving the parent of `path`, if it fails.
    fn parent_error(&self, path: &str) -> Option<i32> {
        // Walk the components: a missing one is ENOENT, a file one ENOTDIR.
        let parent = parent(path);
        if parent.is_empty() {
            return None;
        }
        let mut walked = String::new();
        for part in parent.split('/') {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            match self.kind(&walked) {
                None => return Some(ENOENT),
                Some(InodeKind::Directory) => {}
                Some(_) => return Some(ENOTDIR),
            }
        }
        None
    }

    fn children(&self, dir: &str) -> usize {
        self.nodes.keys().filter(|p| parent(p) == dir).count()
    }

    fn add(&mut self, path: &str, kind: InodeKind) {
        self.next += 1;
        self.nodes.insert(path.to_string(), (kind, self.next));
    }

    fn apply(&mut self, op: &Op) -> Result<(), i32> {
        match op {
            Op::Create(p) | Op::Mkdir(p) => {
                if let Some(e) = self.parent_error(p) {
                    return Err(e);
                }
                // Exclusive create of an existing directory is EEXIST too (O_EXCL is checked first).
                if self.kind(p).is_some() {
                    return Err(EEXIST);
                }
                let kind =
                    if matches!(op, Op::Mkdir(_)) { InodeKind::Directory } else { InodeKind::File };
                self.add(p, kind);
                Ok(())
            }
            Op::Unlink(p) | Op::Rmdir(p) => {
                if let Some(e) = self.parent_error(p) {
                    return Err(e);
                }
                let rmdir = matches!(op, Op::Rmdir(_));
                match self.kind(p) {
                    None => Err(ENOENT),
                    Some(InodeKind::Directory) if !rmdir => Err(EISDIR),
                    Some(InodeKind::Directory) if self.children(p) > 0 => Err(ENOTEMPTY),
                    Some(InodeKind::Directory) => {
                        self.nodes.remove(p);
                        Ok(())
                    }
                    Some(_) if rmdir => Err(ENOTDIR),
                    Some(_) => {
                        self.nodes.remove(p);
                        Ok(())
                    }
                }
            }
            Op::Link(a, b) => {
                if let Some(e) = self.parent_error(a) {
                    return Err(e);
                }
                let Some((kind, id)) = self.nodes.get(a).copied() else { return Err(ENOENT) };
                if kind == InodeKind::Directory {
                    return Err(EACCES);
                }
                if let Some(e) = self.parent_error(b) {
                    return Err(e);
                }
                if self.kind(b).is_some() {
                    return Err(EEXIST);
                }
                self.nodes.insert(b.clone(), (kind, id));
                Ok(())
            }
            Op::Rename(a, b) => {
                if let Some(e) = self.parent_error(a).or_else(|| self.parent_error(b)) {
                    return Err(e);
                }
                let Some((kind, id)) = self.nodes.get(a).copied() else { return Err(ENOENT) };
                let target = self.nodes.get(b).copied();
                if target.map(|t| t.1) == Some(id) {
                    return Ok(());
                }
                let is_dir = kind == InodeKind::Directory;
                if is_dir
                    && parent(a) != parent(b)
                    && (parent(b) == a || parent(b).starts_with(&format!("{a}/")))
                {
                    return Err(EINVAL);
                }
                if let Some((target_kind, _)) = target {
                    match (is_dir, target_kind == InodeKind::Directory) {
                        (true, false) => return Err(ENOTDIR),
                        (false, true) => return Err(EISDIR),
                        (true, true) if self.children(b) > 0 => return Err(ENOTEMPTY),
                        _ => {}
                    }
                    self.nodes.remove(b);
                }
                // Move the node and, for a directory, everything below it.
                let prefix = format!("{a}/");
                let moved: Vec<(String, (InodeKind, u64))> = self
                    .nodes
                    .iter()
                    .filter(|(p, _)| *p == a || p.starts_with(&prefix))
                    .map(|(p, n)| (p.clone(), *n))
                    .collect();
                for (p, node) in moved {
                    self.nodes.remove(&p);
                    let new_path = format!("{b}{}", &p[a.len()..]);
                    self.nodes.insert(new_path, node);
                }
                Ok(())
            }
        }
    }
}

async fn apply_store(env: &Env, op: &Op) -> MetaResult<()> {
    let user = root();
    let store = &env.store;
    match op {
        Op::Create(p) => store.create(&user, R, p, &create_args(0o644)).await.map(|_| ()),
        Op::Mkdir(p) => store.mkdir(&user, R, p, 0o755).await.map(|_| ()),
        Op::Unlink(p) => store.unlink(&user, R, p).await,
        Op::Rmdir(p) => store.rmdir(&user, R, p).await,
        Op::Rename(a, b) => store.rename(&user, R, a, R, b, false).await,
        Op::Link(a, b) => store.link(&user, R, a, R, b).await.map(|_| ()),
    }
}

/// The store's tree as path -> (kind, inode id), and the model's inode numbering mapped onto it.
async fn listing(env: &Env) -> BTreeMap<String, (InodeKind, InodeId)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(String::new(), R)];
    while let Some((path, id)) = dirs.pop() {
        let page = env.store.readdir(&root(), id, "", None, 100).await.expect("readdir");
        assert!(!page.more);
        for entry in page.entries {
            let child =
                if path.is_empty() { entry.name.clone() } else { format!("{path}/{}", entry.name) };
            if entry.kind == InodeKind::Directory {
                dirs.push((child.clone(), entry.inode));
            }
            out.insert(child, (entry.kind, entry.inode));
        }
    }
    out
}

fn run(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let env = Env::new(backend).await;
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let expected = model.apply(op);
            let actual = apply_store(&env, op).await.map_err(|e| e.code.errno());
            prop_assert_eq!(actual, expected, "step {} {:?}", step, op);
            let tree = listing(&env).await;
            let kinds: BTreeMap<_, _> = tree.iter().map(|(p, (k, _))| (p.clone(), *k)).collect();
            let model_kinds: BTreeMap<_, _> =
                model.nodes.iter().map(|(p, (k, _))| (p.clone(), *k)).collect();
            prop_assert_eq!(kinds, model_kinds, "tree after step {} {:?}", step, op);
            // Paths that share a model inode share a store inode, and only those.
            for (p, (_, model_id)) in &model.nodes {
                for (q, (_, other)) in &model.nodes {
                    prop_assert_eq!(model_id == other, tree[p].1 == tree[q].1, "{} vs {}", p, q);
                }
            }
        }
        let report = crate::fsck::fsck(&*env.kv).await.expect("fsck");
        prop_assert!(report.is_clean(), "{:?}", report.problems);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model_on_memory(ops in prop::collection::vec(op(), 1..40)) {
        run(Backend::Memory, ops)?;
    }

    #[test]
    fn store_matches_the_model_on_fjall(ops in prop::collection::vec(op(), 1..25)) {
        run(Backend::Fjall, ops)?;
    }
}
