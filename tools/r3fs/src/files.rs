//! File formats that `gen-chain-table` writes and `upload-chains`, `upload-chain-table` and
//! `create-targets` read. They follow 3FS's (`generated_chains.csv`, `generated_chain_table.csv`,
//! `create_target_cmd.txt`) so operators can read and edit them by hand:
//!
//! - chains: header `ChainId,TargetId,TargetId,...` (one `TargetId` per replica), then one chain
//!   per line, head first;
//! - chain table: header `ChainId`, then one chain id per line, in table order;
//! - targets: header `TargetId,NodeId,DiskIndex,ChainId`, one target per line;
//! - create-target commands: one `create-target --node-id N --disk-index D --target-id T
//!   --chain-id C` per line (arguments of `r3fs`).
//!
//! Parsing never trusts the file: every line is checked and errors name the line. Blank lines and
//! lines starting with `#` are skipped.

use crate::placement::Placement;
use r3fs_types::{ChainId, NodeId, TargetId};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Most lines a chain, chain-table or targets file may have (bounds memory and request size).
pub const FILE_LINES_MAX: usize = 2_000_000;
/// Most replicas per chain a chains file may list.
pub const CHAIN_TARGETS_MAX: usize = 32;

pub const CHAINS_FILE: &str = "generated_chains.csv";
pub const CHAIN_TABLE_FILE: &str = "generated_chain_table.csv";
pub const TARGETS_FILE: &str = "generated_targets.csv";
pub const CREATE_TARGET_COMMANDS_FILE: &str = "create_target_cmd.txt";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty (expected the header `{0}`)")]
    Empty(&'static str),
    #[error("line {line}: expected the header `{expected}`, found `{found}`")]
    Header { line: usize, expected: String, found: String },
    #[error("line {line}: expected {expected} columns, found {found}")]
    Columns { line: usize, expected: usize, found: usize },
    #[error("line {line}: {column} `{value}` is not a valid number")]
    Number { line: usize, column: &'static str, value: String },
    #[error("line {line}: chain {chain} appears twice")]
    DuplicateChain { line: usize, chain: ChainId },
    #[error("line {line}: target {target} appears twice")]
    DuplicateTarget { line: usize, target: TargetId },
    #[error("line {line}: chain {chain} lists target {target} twice")]
    RepeatedInChain { line: usize, chain: ChainId, target: TargetId },
    #[error("the file lists no entries")]
    NoEntries,
    #[error("more than {FILE_LINES_MAX} lines")]
    TooLong,
    #[error("line {line}: more than {CHAIN_TARGETS_MAX} targets per chain")]
    TooManyTargets { line: usize },
}

/// A chain as listed in a chains file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub chain_id: ChainId,
    /// Head first.
    pub targets: Vec<TargetId>,
}

/// A target as listed in a targets file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub target_id: TargetId,
    pub node_id: NodeId,
    pub disk_index: u32,
    pub chain_id: ChainId,
}

pub fn render_chains(placement: &Placement) -> String {
    let k = placement.spec.replication as usize;
    let mut out = String::from("ChainId");
    for _ in 0..k {
        out.push_str(",TargetId");
    }
    out.push('\n');
    for chain in &placement.chains {
        out.push_str(&chain.chain_id.0.to_string());
        for target in &chain.targets {
            let _ = write!(out, ",{}", target.0);
        }
        out.push('\n');
    }
    out
}

pub fn render_chain_table(placement: &Placement) -> String {
    let mut out = String::from("ChainId\n");
    for chain in &placement.table {
        let _ = writeln!(out, "{}", chain.0);
    }
    out
}

pub fn render_targets(placement: &Placement) -> String {
    let mut out = String::from("TargetId,NodeId,DiskIndex,ChainId\n");
    for t in &placement.targets {
        let _ =
            writeln!(out, "{},{},{},{}", t.target_id.0, t.node_id.0, t.disk_index, t.chain_id.0);
    }
    out
}

pub fn render_create_target_commands(placement: &Placement) -> String {
    let mut out = String::new();
    for t in &placement.targets {
        let _ = writeln!(
            out,
            "create-target --node-id {} --disk-index {} --target-id {} --chain-id {}",
            t.node_id.0, t.disk_index, t.target_id.0, t.chain_id.0
        );
    }
    out
}

/// Non-blank, non-comment lines with their 1-based line numbers.
fn lines(text: &str) -> Result<Vec<(usize, &str)>, FileError> {
    let out: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .take(FILE_LINES_MAX + 1)
        .collect();
    if out.len() > FILE_LINES_MAX {
        return Err(FileError::TooLong);
    }
    Ok(out)
}

fn cells(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

fn number<T: std::str::FromStr>(
    line: usize,
    column: &'static str,
    value: &str,
) -> Result<T, FileError> {
    value.parse().map_err(|_| FileError::Number { line, column, value: value.to_string() })
}

pub fn parse_chains(text: &str) -> Result<Vec<ChainSpec>, FileError> {
    let lines = lines(text)?;
    let Some(&(header_line, header)) = lines.first() else {
        return Err(FileError::Empty("ChainId,TargetId,..."));
    };
    let columns = cells(header);
    let header_ok = columns.len() >= 2
        && columns[0].eq_ignore_ascii_case("ChainId")
        && columns[1..].iter().all(|c| c.eq_ignore_ascii_case("TargetId"));
    if !header_ok {
        return Err(FileError::Header {
            line: header_line,
            expected: "ChainId,TargetId,...".into(),
            found: header.into(),
        });
    }
    if columns.len() - 1 > CHAIN_TARGETS_MAX {
        return Err(FileError::TooManyTargets { line: header_line });
    }
    let mut chains = Vec::new();
    let mut chain_ids = BTreeSet::new();
    let mut target_ids = BTreeSet::new();
    for &(line, text) in &lines[1..] {
        let row = cells(text);
        if row.len() != columns.len() {
            return Err(FileError::Columns { line, expected: columns.len(), found: row.len() });
        }
        let chain_id = ChainId(number(line, "ChainId", row[0])?);
        if !chain_ids.insert(chain_id) {
            return Err(FileError::DuplicateChain { line, chain: chain_id });
        }
        let mut targets = Vec::with_capacity(row.len() - 1);
        for cell in &row[1..] {
            let target = TargetId(number(line, "TargetId", cell)?);
            if targets.contains(&target) {
                return Err(FileError::RepeatedInChain { line, chain: chain_id, target });
            }
            if !target_ids.insert(target) {
                return Err(FileError::DuplicateTarget { line, target });
            }
            targets.push(target);
        }
        chains.push(ChainSpec { chain_id, targets });
    }
    if chains.is_empty() {
        return Err(FileError::NoEntries);
    }
    Ok(chains)
}

pub fn parse_chain_table(text: &str) -> Result<Vec<ChainId>, FileError> {
    let lines = lines(text)?;
    let Some(&(header_line, header)) = lines.first() else {
        return Err(FileError::Empty("ChainId"));
    };
    if !header.eq_ignore_ascii_case("ChainId") {
        return Err(FileError::Header {
            line: header_line,
            expected: "ChainId".into(),
            found: header.into(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut table = Vec::new();
    for &(line, text) in &lines[1..] {
        let row = cells(text);
        if row.len() != 1 {
            return Err(FileError::Columns { line, expected: 1, found: row.len() });
        }
        let chain = ChainId(number(line, "ChainId", row[0])?);
        if !seen.insert(chain) {
            return Err(FileError::DuplicateChain { line, chain });
        }
        table.push(chain);
    }
    if table.is_empty() {
        return Err(FileError::NoEntries);
    }
    Ok(table)
}

pub fn parse_targets(text: &str) -> Result<Vec<TargetSpec>, FileError> {
    const HEADER: [&str; 4] = ["TargetId", "NodeId", "DiskIndex", "ChainId"];
    let lines = lines(text)?;
    let Some(&(header_line, header)) = lines.first() else {
        return Err(FileError::Empty("TargetId,NodeId,DiskIndex,ChainId"));
    };
    let columns = cells(header);
    if columns.len() != HEADER.len()
        || !columns.iter().zip(HEADER).all(|(c, h)| c.eq_ignore_ascii_case(h))
    {
        return Err(FileError::Header {
            line: header_line,
            expected: HEADER.join(","),
            found: header.into(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    for &(line, text) in &lines[1..] {
        let row = cells(text);
        if row.len() != HEADER.len() {
            return Err(FileError::Columns { line, expected: HEADER.len(), found: row.len() });
        }
        let target = TargetSpec {
            target_id: TargetId(number(line, "TargetId", row[0])?),
            node_id: NodeId(number(line, "NodeId", row[1])?),
            disk_index: number(line, "DiskIndex", row[2])?,
            chain_id: ChainId(number(line, "ChainId", row[3])?),
        };
        if !seen.insert(target.target_id) {
            return Err(FileError::DuplicateTarget { line, target: target.target_id });
        }
        targets.push(target);
    }
    if targets.is_empty() {
        return Err(FileError::NoEntries);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{PlacementSpec, generate};

    fn small() -> Placement {
        generate(&PlacementSpec {
            nodes: (1..=4).map(NodeId).collect(),
            disks_per_node: 2,
            targets_per_disk: 3,
            replication: 3,
        })
        .expect("valid spec")
    }

    #[test]
    fn generated_files_parse_back_to_the_placement() {
        let placement = small();
        let chains = parse_chains(&render_chains(&placement)).expect("chains parse");
        assert_eq!(chains.len(), placement.chains.len());
        for (parsed, placed) in chains.iter().zip(&placement.chains) {
            assert_eq!(parsed.chain_id, placed.chain_id);
            assert_eq!(parsed.targets, placed.targets);
        }
        let table = parse_chain_table(&render_chain_table(&placement)).expect("table parses");
        assert_eq!(table, placement.table);
        let targets = parse_targets(&render_targets(&placement)).expect("targets parse");
        assert_eq!(targets.len(), placement.targets.len());
        for (parsed, placed) in targets.iter().zip(&placement.targets) {
            assert_eq!(
                (parsed.target_id, parsed.node_id, parsed.disk_index, parsed.chain_id),
                (placed.target_id, placed.node_id, placed.disk_index, placed.chain_id)
            );
        }
        let commands = render_create_target_commands(&placement);
        assert_eq!(commands.lines().count(), placement.targets.len());
        assert!(commands.lines().all(|l| l.starts_with("create-target --node-id ")));
    }

    #[test]
    fn parse_errors_name_the_line() {
        assert_eq!(parse_chains(""), Err(FileError::Empty("ChainId,TargetId,...")));
        assert!(matches!(
            parse_chains("ChainId,TargetId\n1,2\n\n# note\n3,x\n"),
            Err(FileError::Number { line: 5, column: "TargetId", .. })
        ));
        assert_eq!(
            parse_chains("ChainId,TargetId,TargetId\n1,2,3\n2,4\n"),
            Err(FileError::Columns { line: 3, expected: 3, found: 2 })
        );
        assert_eq!(
            parse_chains("ChainId,TargetId,TargetId\n1,2,3\n1,4,5\n"),
            Err(FileError::DuplicateChain { line: 3, chain: ChainId(1) })
        );
        assert_eq!(
            parse_chains("ChainId,TargetId,TargetId\n1,2,3\n2,4,3\n"),
            Err(FileError::DuplicateTarget { line: 3, target: TargetId(3) })
        );
        assert_eq!(
            parse_chains("ChainId,TargetId,TargetId\n1,2,2\n"),
            Err(FileError::RepeatedInChain { line: 2, chain: ChainId(1), target: TargetId(2) })
        );
        assert_eq!(parse_chain_table("ChainId\n"), Err(FileError::NoEntries));
        assert!(matches!(parse_chain_table("Chain\n1\n"), Err(FileError::Header { line: 1, .. })));
        assert!(matches!(
            parse_targets("TargetId,NodeId,DiskIndex,ChainId\n1,2,3\n"),
            Err(FileError::Columns { line: 2, expected: 4, found: 3 })
        ));
        assert!(matches!(
            parse_targets("TargetId,NodeId,DiskIndex,ChainId\n1,2,3,-4\n"),
            Err(FileError::Number { line: 2, column: "ChainId", .. })
        ));
    }
}
