//! Path resolution inside one transaction: walks components from a start directory (or the
//! root), checks search permission on every directory it passes, follows symlinks (at most
//! `symlink_follow_max` per request, ELOOP beyond), and handles `.` and `..`.
//!
//! Every read goes through the [`Tx`]'s read mode, so in a write transaction the whole walk is
//! in the read conflict set: a concurrent rename or chmod of any directory on the path makes the
//! operation retry and resolve again.

use crate::error::{MetaError, MetaResult};
use crate::names::{Last, Limits, parse_path};
use crate::perm::{MAY_EXEC, User, check_inode};
use crate::schema::{Inode, InodeData};
use crate::txn::Tx;
use r3fs_types::{ErrorCode, InodeId};
use std::collections::VecDeque;

/// The parent directory of an entry a request names, and the entry's name.
#[derive(Debug)]
pub struct ParentAndLast {
    /// The directory holding the last component; for [`Last::None`] the start inode itself
    /// (which need not be a directory).
    pub parent: Inode,
    pub last: Last,
    pub trailing_slash: bool,
}

#[derive(Debug)]
pub struct Resolver<'l> {
    pub user: &'l User,
    pub limits: &'l Limits,
    follows: u32,
    steps: usize,
}

impl<'l> Resolver<'l> {
    pub fn new(user: &'l User, limits: &'l Limits) -> Self {
        Self { user, limits, follows: 0, steps: 0 }
    }

    /// Counts one symlink followed; ELOOP past the limit.
    pub fn follow_symlink(&mut self) -> MetaResult<()> {
        self.follows += 1;
        if self.follows > self.limits.symlink_follow_max {
            return Err(MetaError::new(
                ErrorCode::TooManySymlinks,
                format!("followed more than {} symlinks", self.limits.symlink_follow_max),
            ));
        }
        Ok(())
    }

    /// Resolves all but the last component of `path` relative to `at` (the root if absolute).
    pub async fn parent_of(
        &mut self,
        tx: &mut Tx<'_>,
        at: InodeId,
        path: &str,
    ) -> MetaResult<ParentAndLast> {
        let parsed = parse_path(path, self.limits)?;
        let start = if parsed.absolute { InodeId::ROOT } else { at };
        let start = tx.inode_required(start).await?;
        let trailing_slash = parsed.trailing_slash;
        let (rest, last) = parsed.split_last();
        if last == Last::None {
            return Ok(ParentAndLast { parent: start, last, trailing_slash });
        }
        let parent = self.walk(tx, start, rest.components).await?;
        Ok(ParentAndLast { parent, last, trailing_slash })
    }

    /// Resolves `path` relative to `at` to an inode, following a symlink in the last component
    /// when `follow_last` (or when the path ends in `/`).
    pub async fn resolve(
        &mut self,
        tx: &mut Tx<'_>,
        at: InodeId,
        path: &str,
        follow_last: bool,
    ) -> MetaResult<Inode> {
        let mut at = at;
        let mut path = path.to_string();
        loop {
            let ParentAndLast { parent, last, trailing_slash } =
                self.parent_of(tx, at, &path).await?;
            let name = match last {
                Last::None => return Ok(parent),
                Last::Dot => {
                    check_inode(self.user, &parent, MAY_EXEC)?;
                    return Ok(parent);
                }
                Last::DotDot => {
                    check_inode(self.user, &parent, MAY_EXEC)?;
                    return self.dir_parent(tx, &parent).await;
                }
                Last::Name(name) => name,
            };
            check_inode(self.user, &parent, MAY_EXEC)?;
            let entry = tx
                .entry(parent.id, &name)
                .await?
                .ok_or_else(|| MetaError::not_found(format!("{name:?} in {}", parent.id)))?;
            let inode = tx.inode_required(entry.inode).await?;
            match &inode.data {
                InodeData::Symlink { target } if follow_last || trailing_slash => {
                    self.follow_symlink()?;
                    at = parent.id;
                    path = if trailing_slash { format!("{target}/") } else { target.clone() };
                }
                InodeData::Directory { .. } => return Ok(inode),
                _ if trailing_slash => {
                    return Err(MetaError::not_directory(format!("{name:?} is not a directory")));
                }
                _ => return Ok(inode),
            }
        }
    }

    /// The parent of a directory (the root's is the root).
    pub async fn dir_parent(&mut self, tx: &mut Tx<'_>, dir: &Inode) -> MetaResult<Inode> {
        match dir.dir_parent() {
            Some(parent) if parent == dir.id => Ok(dir.clone()),
            Some(parent) => tx.inode_required(parent).await,
            None => Err(MetaError::not_directory(format!("{} is not a directory", dir.id))),
        }
    }

    /// Walks `components` from directory `start`, following symlinks; returns the directory
    /// reached.
    async fn walk(
        &mut self,
        tx: &mut Tx<'_>,
        start: Inode,
        components: Vec<String>,
    ) -> MetaResult<Inode> {
        let mut queue: VecDeque<String> = components.into();
        let mut current = start;
        // Bound the work of one walk: components of the request plus those of every symlink
        // target followed.
        let steps_max = self.limits.path_depth_max * (self.limits.symlink_follow_max as usize + 1);
        while let Some(component) = queue.pop_front() {
            self.steps += 1;
            if self.steps > steps_max {
                return Err(MetaError::new(
                    ErrorCode::NameTooLong,
                    "path walk exceeds its step bound",
                ));
            }
            if !current.is_dir() {
                return Err(MetaError::not_directory(format!("{} is not a directory", current.id)));
            }
            check_inode(self.user, &current, MAY_EXEC)?;
            match component.as_str() {
                "." => continue,
                ".." => {
                    current = self.dir_parent(tx, &current).await?;
                    continue;
                }
                _ => {}
            }
            let entry = tx
                .entry(current.id, &component)
                .await?
                .ok_or_else(|| MetaError::not_found(format!("{component:?} in {}", current.id)))?;
            let inode = tx.inode_required(entry.inode).await?;
            match &inode.data {
                InodeData::Directory { .. } => current = inode,
                InodeData::Symlink { target } => {
                    self.follow_symlink()?;
                    let parsed = parse_path(target, self.limits)?;
                    if parsed.absolute {
                        current = tx.inode_required(InodeId::ROOT).await?;
                    }
                    for component in parsed.components.into_iter().rev() {
                        queue.push_front(component);
                    }
                }
                InodeData::File { .. } => {
                    return Err(MetaError::not_directory(format!(
                        "{component:?} is not a directory"
                    )));
                }
            }
        }
        if !current.is_dir() {
            return Err(MetaError::not_directory(format!("{} is not a directory", current.id)));
        }
        Ok(current)
    }
}
