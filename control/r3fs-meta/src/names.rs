//! Names, paths and their limits (sans-IO).
//!
//! A name is one path component: valid UTF-8, 1..=`name_length_max` bytes, no `/`, no NUL, and
//! not `.` or `..` where an entry is created or removed. A path is a `/`-separated list of
//! components; empty components (`a//b`) are skipped as the kernel does, a leading `/` starts at
//! the root, a trailing `/` requires the result to be a directory.

use crate::error::{MetaError, MetaResult};
use r3fs_types::ErrorCode;
use serde::{Deserialize, Serialize};

/// Bounds on names, paths and walks. Defaults are Linux's where Linux has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// NAME_MAX.
    pub name_length_max: usize,
    /// PATH_MAX, for request paths and symlink targets.
    pub path_length_max: usize,
    /// Components in one request path.
    pub path_depth_max: usize,
    /// Symlinks followed while resolving one path (Linux: 40).
    pub symlink_follow_max: u32,
    /// Parent hops of a walk towards the root (real path, rename's cycle check). A tree deeper
    /// than this cannot be renamed into nor have its real path taken.
    pub directory_depth_max: usize,
    /// Hard links of one file.
    pub hard_link_max: u32,
    /// Entries in one readdir page.
    pub readdir_page_max: usize,
    /// Inodes in one batch stat.
    pub batch_stat_max: usize,
    /// Directories a non-root recursive remove may check for permission in its one transaction.
    pub remove_tree_check_dirs_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            name_length_max: 255,
            path_length_max: 4096,
            path_depth_max: 1024,
            symlink_follow_max: 40,
            directory_depth_max: 4096,
            hard_link_max: 65_000,
            readdir_page_max: 4096,
            batch_stat_max: 4096,
            remove_tree_check_dirs_max: 10_000,
        }
    }
}

impl Limits {
    pub fn validate(&self, errors: &mut Vec<String>) {
        let positive = [
            ("name_length_max", self.name_length_max),
            ("path_length_max", self.path_length_max),
            ("path_depth_max", self.path_depth_max),
            ("directory_depth_max", self.directory_depth_max),
            ("readdir_page_max", self.readdir_page_max),
            ("batch_stat_max", self.batch_stat_max),
        ];
        for (name, value) in positive {
            if value == 0 {
                errors.push(format!("limits.{name} must be at least 1"));
            }
        }
        // A KV key holds prefix + parent + name and must stay far below the KV's key limit.
        if self.name_length_max > 1024 {
            errors.push(format!(
                "limits.name_length_max ({}) must be at most 1024",
                self.name_length_max
            ));
        }
        if self.path_length_max < self.name_length_max {
            errors.push("limits.path_length_max must be at least limits.name_length_max".into());
        }
        // Inode records hold symlink targets; keep them well inside a KV value.
        if self.path_length_max > 32 * 1024 {
            errors.push(format!(
                "limits.path_length_max ({}) must be at most 32768",
                self.path_length_max
            ));
        }
        if self.hard_link_max < 1 {
            errors.push("limits.hard_link_max must be at least 1".into());
        }
        if self.readdir_page_max > 100_000 || self.batch_stat_max > 100_000 {
            errors.push("limits.readdir_page_max and batch_stat_max must be at most 100000".into());
        }
    }
}

/// Checks a name for an entry to be created, looked up or removed. `.` and `..` are the caller's
/// to handle first (each operation answers them with its own errno).
pub fn check_name(name: &str, limits: &Limits) -> MetaResult<()> {
    if name.is_empty() {
        return Err(MetaError::not_found("empty name"));
    }
    if name.len() > limits.name_length_max {
        return Err(MetaError::new(
            ErrorCode::NameTooLong,
            format!("name of {} bytes exceeds {}", name.len(), limits.name_length_max),
        ));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(MetaError::new(
            ErrorCode::InvalidName,
            format!("name {name:?} contains / or NUL"),
        ));
    }
    if name == "." || name == ".." {
        return Err(MetaError::new(
            ErrorCode::InvalidName,
            format!("{name:?} cannot name an entry"),
        ));
    }
    Ok(())
}

/// The last component of a path, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Last {
    /// The path was empty or only slashes: the start directory (or the root) itself.
    None,
    Dot,
    DotDot,
    Name(String),
}

/// A validated path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPath {
    pub absolute: bool,
    pub components: Vec<String>,
    pub trailing_slash: bool,
}

impl ParsedPath {
    /// Splits off the last component.
    pub fn split_last(mut self) -> (ParsedPath, Last) {
        let last = match self.components.pop() {
            None => Last::None,
            Some(c) if c == "." => Last::Dot,
            Some(c) if c == ".." => Last::DotDot,
            Some(c) => Last::Name(c),
        };
        (self, last)
    }
}

pub fn parse_path(path: &str, limits: &Limits) -> MetaResult<ParsedPath> {
    if path.len() > limits.path_length_max {
        return Err(MetaError::new(
            ErrorCode::NameTooLong,
            format!("path of {} bytes exceeds {}", path.len(), limits.path_length_max),
        ));
    }
    if path.contains('\0') {
        return Err(MetaError::new(ErrorCode::InvalidName, "path contains NUL"));
    }
    let mut components = Vec::new();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component.len() > limits.name_length_max {
            return Err(MetaError::new(
                ErrorCode::NameTooLong,
                format!(
                    "path component of {} bytes exceeds {}",
                    component.len(),
                    limits.name_length_max
                ),
            ));
        }
        if components.len() == limits.path_depth_max {
            return Err(MetaError::new(
                ErrorCode::NameTooLong,
                format!("path has more than {} components", limits.path_depth_max),
            ));
        }
        components.push(component.to_string());
    }
    Ok(ParsedPath {
        absolute: path.starts_with('/'),
        trailing_slash: path.len() > 1 && path.ends_with('/') && !components.is_empty(),
        components,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use r3fs_types::error::errno;

    #[test]
    fn names_are_refused_with_the_kernels_errno() {
        let l = Limits::default();
        assert_eq!(check_name("", &l).unwrap_err().errno(), errno::ENOENT);
        assert_eq!(check_name("a/b", &l).unwrap_err().errno(), errno::EINVAL);
        assert_eq!(check_name("a\0b", &l).unwrap_err().errno(), errno::EINVAL);
        assert_eq!(check_name(&"x".repeat(256), &l).unwrap_err().errno(), errno::ENAMETOOLONG);
        assert!(check_name(&"x".repeat(255), &l).is_ok());
        assert!(check_name("..", &l).is_err());
        assert!(check_name("ünïcødé ok", &l).is_ok());
    }

    #[test]
    fn paths_split_like_the_kernel() {
        let l = Limits::default();
        let p = parse_path("/a//b/./c/", &l).unwrap();
        assert!(p.absolute && p.trailing_slash);
        assert_eq!(p.components, vec!["a", "b", ".", "c"]);
        let (rest, last) = p.split_last();
        assert_eq!(last, Last::Name("c".into()));
        assert_eq!(rest.components.len(), 3);
        let root = parse_path("/", &l).unwrap();
        assert!(root.absolute && !root.trailing_slash && root.components.is_empty());
        assert_eq!(parse_path("", &l).unwrap().split_last().1, Last::None);
        assert_eq!(parse_path("x/..", &l).unwrap().split_last().1, Last::DotDot);
    }

    #[test]
    fn path_limits() {
        let l = Limits { path_depth_max: 3, ..Limits::default() };
        assert!(parse_path("a/b/c", &l).is_ok());
        assert_eq!(parse_path("a/b/c/d", &l).unwrap_err().errno(), errno::ENAMETOOLONG);
        assert_eq!(parse_path(&"a".repeat(4097), &l).unwrap_err().errno(), errno::ENAMETOOLONG);
        assert_eq!(parse_path("a\0", &l).unwrap_err().errno(), errno::EINVAL);
        let mut errors = Vec::new();
        Limits { name_length_max: 0, path_length_max: 0, ..Limits::default() }
            .validate(&mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
