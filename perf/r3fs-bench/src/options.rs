//! fio's job options: the command line (`--opt=value`, `--name` starts a job) and job files
//! (`[global]` and `[job]` sections), parsed into [`JobOptions`].
//!
//! Units follow fio with its default `kb_base=1024`: sizes are bytes unless suffixed
//! (`k`/`KiB`/`KB` = 1024, `m`, `g`, `t`, `p`), times are seconds unless suffixed
//! (`us`, `ms`, `s`, `m`, `h`, `d`). Any option fio has that r3fs-bench does not implement is an
//! error naming it, never silently ignored; the few accepted-and-ignored ones are listed in
//! [`IGNORED_OPTIONS`] with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options that change nothing here, accepted so that ordinary fio job files run.
pub const IGNORED_OPTIONS: &[(&str, &str)] = &[
    ("thread", "jobs always run as threads"),
    ("randrepeat", "offsets always come from randseed, so runs repeat"),
    ("invalidate", "page-cache invalidation is not performed"),
    ("gtod_reduce", "latencies are always measured"),
    ("fallocate", "files are extended by the writes themselves"),
    ("ior_timeout", "the r3fs-ring engine waits without a timeout"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown option '{0}' (r3fs-bench --help lists the options it accepts)")]
    Unknown(String),
    #[error("option '{option}': bad value '{value}': {reason}")]
    BadValue { option: String, value: String, reason: String },
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    #[error("no job defined: give --name=<job> or a job file")]
    NoJobs,
    #[error("job file {path}: {reason}")]
    JobFile { path: PathBuf, reason: String },
    #[error("job '{job}': {reason}")]
    Invalid { job: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwMode {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Sequential offsets, each IO a read with probability `rwmixread` percent.
    ReadWrite,
    RandRw,
}

impl RwMode {
    pub fn is_random(self) -> bool {
        matches!(self, RwMode::RandRead | RwMode::RandWrite | RwMode::RandRw)
    }
    pub fn reads(self) -> bool {
        !matches!(self, RwMode::Write | RwMode::RandWrite)
    }
    pub fn writes(self) -> bool {
        !matches!(self, RwMode::Read | RwMode::RandRead)
    }
    pub fn fio_name(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::RandRead => "randread",
            RwMode::RandWrite => "randwrite",
            RwMode::ReadWrite => "rw",
            RwMode::RandRw => "randrw",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// `pread`/`pwrite`, one IO at a time per job (iodepth has no effect, as in fio).
    Psync,
    /// io_uring with up to `iodepth` IOs in flight.
    IoUring,
    /// The r3fs native zero-copy ring API (client/r3fs-usrbio).
    R3fsRing,
}

impl EngineKind {
    pub fn fio_name(self) -> &'static str {
        match self {
            EngineKind::Psync => "psync",
            EngineKind::IoUring => "io_uring",
            EngineKind::R3fsRing => "r3fs-ring",
        }
    }
}

/// One job section with its inherited global options (before `numjobs` expansion).
#[derive(Clone, Debug)]
pub struct JobOptions {
    pub name: String,
    pub rw: RwMode,
    /// Percent of IOs that are reads in `rw`/`randrw`.
    pub rwmixread: u32,
    pub bs: u64,
    /// Total bytes per job, split evenly over `nrfiles` files.
    pub size: Option<u64>,
    /// Bytes per file (overrides `size / nrfiles`).
    pub filesize: Option<u64>,
    /// Bytes each job transfers (default: the files' total size, times `loops`).
    pub io_size: Option<u64>,
    pub nrfiles: u32,
    pub numjobs: u32,
    pub iodepth: u32,
    /// Submit after this many IOs are queued (fio `iodepth_batch_submit`, default 1).
    pub iodepth_batch_submit: u32,
    /// Wait for at least this many completions when reaping (fio `iodepth_batch_complete_min`).
    pub iodepth_batch_complete_min: u32,
    pub direct: bool,
    pub runtime: Option<Duration>,
    pub time_based: bool,
    pub loops: u32,
    pub group_reporting: bool,
    pub ioengine: EngineKind,
    /// Entries of the r3fs-ring engine's submission ring (3FS's fio plugin option); 0 = iodepth.
    pub ior_depth: u32,
    /// The r3fs mount the ring engine registers its files with (3FS's fio plugin option).
    pub mountpoint: Option<PathBuf>,
    pub directory: Option<PathBuf>,
    pub filename: Option<PathBuf>,
    pub end_fsync: bool,
    pub norandommap: bool,
    pub randseed: u64,
    pub unlink: bool,
    /// This job waits for the jobs before it to finish and starts a new reporting group.
    pub stonewall: bool,
    /// Options set in the job's own section, in order (fio's JSON "job options").
    pub given: Vec<(String, String)>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            name: String::new(),
            rw: RwMode::Read,
            rwmixread: 50,
            bs: 4096,
            size: None,
            filesize: None,
            io_size: None,
            nrfiles: 1,
            numjobs: 1,
            iodepth: 1,
            iodepth_batch_submit: 1,
            iodepth_batch_complete_min: 1,
            direct: false,
            runtime: None,
            time_based: false,
            loops: 1,
            group_reporting: false,
            ioengine: EngineKind::Psync,
            ior_depth: 0,
            mountpoint: None,
            directory: None,
            filename: None,
            end_fsync: false,
            norandommap: false,
            randseed: 0x0123_4567_89ab_cdef,
            unlink: false,
            stonewall: false,
            given: Vec::new(),
        }
    }
}

/// Options that are about the whole run, not a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Normal,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtaMode {
    /// Progress line on stderr when stderr is a terminal.
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub output_format: OutputFormat,
    pub eta: EtaMode,
    pub output: Option<PathBuf>,
    /// Global options (fio's JSON "global options").
    pub global: Vec<(String, String)>,
    pub jobs: Vec<JobOptions>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(RunOptions),
    Help,
    Version,
}

pub const HELP: &str = "\
r3fs-bench: fio-comparable benchmark for r3fs

usage: r3fs-bench [--output-format=normal|json] [--eta=auto|always|never] [--output=FILE]
                  [global options] --name=JOB [job options] [--name=JOB2 ...] [jobfile ...]

Options before the first --name are global; each --name starts a job that inherits them.
A job file is fio's INI format: [global] and one [section] per job, `key=value` lines.

job options (fio's meaning):
  rw=read|write|randread|randwrite|rw|readwrite|randrw   rwmixread=PCT  rwmixwrite=PCT
  bs=SIZE  size=SIZE  filesize=SIZE  io_size=SIZE  nrfiles=N  numjobs=N  loops=N
  iodepth=N  iodepth_batch_submit=N (alias iodepth_batch)  iodepth_batch_complete_min=N
  direct=0|1  runtime=TIME  time_based  group_reporting  end_fsync=0|1  norandommap
  randseed=N  unlink=0|1  stonewall (alias new_group)  directory=DIR  filename=FILE
  ioengine=psync|io_uring|r3fs-ring  ior_depth=N  mountpoint=DIR (r3fs-ring)
accepted and ignored: thread, randrepeat, invalidate, gtod_reduce, fallocate, ior_timeout
SIZE: bytes, or with k/m/g/t suffix (KiB, KB and k all mean 1024).  TIME: seconds, or us/ms/s/m/h.
";

/// Parses a size (`4k`, `4M`, `1g`, `512`): bytes with fio's 1024-based suffixes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return Err("expected a number".into());
    }
    let multiplier: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        other => return Err(format!("unknown size suffix '{other}'")),
    };
    if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| "not a number".to_string())?;
        let bytes = value * multiplier as f64;
        if !(0.0..1.8e19).contains(&bytes) {
            return Err("out of range".into());
        }
        Ok(bytes.round() as u64)
    } else {
        let value: u64 = number.parse().map_err(|_| "not a number".to_string())?;
        value.checked_mul(multiplier).ok_or_else(|| "out of range".to_string())
    }
}

/// Parses a time (`30`, `500ms`, `2m`): seconds unless suffixed.
pub fn parse_time(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| "expected a whole number".to_string())?;
    let micros_per_unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "us" | "usec" => 1,
        "ms" | "msec" => 1_000,
        "" | "s" | "sec" => 1_000_000,
        "m" | "min" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        other => return Err(format!("unknown time suffix '{other}'")),
    };
    let micros = value.checked_mul(micros_per_unit).ok_or_else(|| "out of range".to_string())?;
    Ok(Duration::from_micros(micros))
}

fn parse_bool(option: &str, value: Option<&str>) -> Result<bool, OptionError> {
    match value.map(str::trim) {
        None | Some("1") | Some("true") | Some("on") | Some("yes") => Ok(true),
        Some("0") | Some("false") | Some("off") | Some("no") => Ok(false),
        Some(other) => Err(bad(option, other, "expected 0 or 1")),
    }
}

fn bad(option: &str, value: &str, reason: impl Into<String>) -> OptionError {
    OptionError::BadValue { option: option.into(), value: value.into(), reason: reason.into() }
}

fn need<'a>(option: &str, value: Option<&'a str>) -> Result<&'a str, OptionError> {
    value.ok_or_else(|| OptionError::MissingValue(option.into()))
}

fn number<T: std::str::FromStr>(option: &str, value: Option<&str>) -> Result<T, OptionError> {
    let text = need(option, value)?;
    text.trim().parse().map_err(|_| bad(option, text, "expected a whole number"))
}

fn size(option: &str, value: Option<&str>) -> Result<u64, OptionError> {
    let text = need(option, value)?;
    parse_size(text).map_err(|reason| bad(option, text, reason))
}

impl JobOptions {
    /// Applies one option (`value` is None for a bare flag such as `time_based`).
    pub fn set(&mut self, option: &str, value: Option<&str>) -> Result<(), OptionError> {
        match option {
            "name" => self.name = need(option, value)?.to_string(),
            "rw" | "readwrite" => {
                let text = need(option, value)?;
                self.rw = match text.trim() {
                    "read" => RwMode::Read,
                    "write" => RwMode::Write,
                    "randread" => RwMode::RandRead,
                    "randwrite" => RwMode::RandWrite,
                    "rw" | "readwrite" => RwMode::ReadWrite,
                    "randrw" => RwMode::RandRw,
                    _ => {
                        return Err(bad(
                            option,
                            text,
                            "expected read, write, randread, randwrite, rw or randrw",
                        ));
                    }
                }
            }
            "rwmixread" | "rwmixwrite" => {
                let percent: u32 = number(option, value)?;
                if percent > 100 {
                    return Err(bad(option, need(option, value)?, "a percentage is at most 100"));
                }
                self.rwmixread = if option == "rwmixread" { percent } else { 100 - percent };
            }
            "bs" | "blocksize" => self.bs = size(option, value)?,
            "size" => self.size = Some(size(option, value)?),
            "filesize" => self.filesize = Some(size(option, value)?),
            "io_size" | "io_limit" => self.io_size = Some(size(option, value)?),
            "nrfiles" => self.nrfiles = number(option, value)?,
            "numjobs" => self.numjobs = number(option, value)?,
            "loops" => self.loops = number(option, value)?,
            "iodepth" => self.iodepth = number(option, value)?,
            "iodepth_batch" | "iodepth_batch_submit" => {
                self.iodepth_batch_submit = number(option, value)?
            }
            "iodepth_batch_complete_min" | "iodepth_batch_complete" => {
                self.iodepth_batch_complete_min = number(option, value)?
            }
            "direct" => self.direct = parse_bool(option, value)?,
            "buffered" => self.direct = !parse_bool(option, value)?,
            "runtime" | "timeout" => {
                let text = need(option, value)?;
                self.runtime = Some(parse_time(text).map_err(|reason| bad(option, text, reason))?);
            }
            "time_based" => self.time_based = parse_bool(option, value)?,
            "group_reporting" => self.group_reporting = parse_bool(option, value)?,
            "end_fsync" => self.end_fsync = parse_bool(option, value)?,
            "norandommap" => self.norandommap = parse_bool(option, value)?,
            "randseed" => self.randseed = number(option, value)?,
            "unlink" => self.unlink = parse_bool(option, value)?,
            "stonewall" | "wait_for_previous" | "new_group" => {
                self.stonewall = parse_bool(option, value)?
            }
            "ioengine" => {
                let text = need(option, value)?;
                self.ioengine = match text.trim() {
                    "psync" | "sync" | "pvsync" => EngineKind::Psync,
                    "io_uring" => EngineKind::IoUring,
                    "r3fs-ring" | "r3fs_ring" | "usrbio" => EngineKind::R3fsRing,
                    _ => return Err(bad(option, text, "expected psync, io_uring or r3fs-ring")),
                }
            }
            "ior_depth" => self.ior_depth = number(option, value)?,
            "mountpoint" => self.mountpoint = Some(PathBuf::from(need(option, value)?)),
            "directory" => self.directory = Some(PathBuf::from(need(option, value)?)),
            "filename" => self.filename = Some(PathBuf::from(need(option, value)?)),
            other if IGNORED_OPTIONS.iter().any(|(name, _)| *name == other) => {}
            other => return Err(OptionError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// Bytes per file.
    pub fn file_bytes(&self) -> Option<u64> {
        match (self.filesize, self.size) {
            (Some(filesize), _) => Some(filesize),
            (None, Some(size)) => Some(size / u64::from(self.nrfiles.max(1))),
            (None, None) => None,
        }
    }

    /// Checks relations between options; reports every violation at once.
    pub fn validate(&self) -> Result<(), OptionError> {
        let mut problems = Vec::new();
        if self.bs == 0 || !self.bs.is_multiple_of(512) {
            problems.push(format!("bs={} must be a positive multiple of 512", self.bs));
        }
        if self.bs > 1 << 30 {
            problems.push("bs is at most 1 GiB".to_string());
        }
        for (name, value) in
            [("numjobs", self.numjobs), ("nrfiles", self.nrfiles), ("iodepth", self.iodepth)]
        {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.loops == 0 {
            problems.push("loops must be at least 1".into());
        }
        if self.iodepth_batch_submit == 0 || self.iodepth_batch_complete_min == 0 {
            problems.push(
                "iodepth_batch_submit and iodepth_batch_complete_min must be at least 1".into(),
            );
        }
        if self.time_based && self.runtime.is_none() {
            problems.push("time_based needs runtime".into());
        }
        if self.filename.is_some() && self.nrfiles > 1 {
            problems.push("filename names one file: nrfiles must be 1".into());
        }
        match self.file_bytes() {
            Some(bytes) if bytes < self.bs => problems.push(format!(
                "each file ({bytes} bytes) must hold at least one block of bs={}",
                self.bs
            )),
            None if self.filename.is_none() => problems.push("size or filesize is required".into()),
            _ => {}
        }
        if self.ioengine == EngineKind::R3fsRing && self.mountpoint.is_none() {
            problems.push("ioengine=r3fs-ring needs mountpoint=<r3fs mount>".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(OptionError::Invalid { job: self.name.clone(), reason: problems.join("; ") })
        }
    }
}

/// Splits `--key=value` / `--key value`-less flags / `-key=value` into (key, value).
fn split_option(argument: &str) -> Option<(&str, Option<&str>)> {
    let body = argument.strip_prefix("--").or_else(|| argument.strip_prefix('-'))?;
    Some(match body.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (body, None),
    })
}

/// Parses the command line (without the program name).
pub fn parse_command_line<S: AsRef<str>>(arguments: &[S]) -> Result<Command, OptionError> {
    let mut run = RunOptions {
        output_format: OutputFormat::Normal,
        eta: EtaMode::Auto,
        output: None,
        global: Vec::new(),
        jobs: Vec::new(),
    };
    let mut global = JobOptions::default();
    let mut current: Option<JobOptions> = None;
    for argument in arguments.iter().map(AsRef::as_ref) {
        let Some((key, value)) = split_option(argument) else {
            // A job file: its jobs follow the command line's, with the command line's globals.
            if let Some(job) = current.take() {
                run.jobs.push(job);
            }
            parse_job_file(Path::new(argument), &global, &mut run.jobs)?;
            continue;
        };
        match key {
            "help" | "h" => return Ok(Command::Help),
            "version" => return Ok(Command::Version),
            "output-format" => {
                let text = need(key, value)?;
                run.output_format = match text {
                    "normal" => OutputFormat::Normal,
                    "json" => OutputFormat::Json,
                    _ => return Err(bad(key, text, "expected normal or json")),
                };
            }
            "eta" => {
                let text = need(key, value)?;
                run.eta = match text {
                    "auto" => EtaMode::Auto,
                    "always" => EtaMode::Always,
                    "never" => EtaMode::Never,
                    _ => return Err(bad(key, text, "expected auto, always or never")),
                };
            }
            "output" => run.output = Some(PathBuf::from(need(key, value)?)),
            "name" => {
                if let Some(job) = current.take() {
                    run.jobs.push(job);
                }
                let mut job = global.clone();
                job.given.clear();
                job.set(key, value)?;
                job.given.push((key.to_string(), value.unwrap_or("").to_string()));
                current = Some(job);
            }
            _ => {
                let target = current.as_mut().unwrap_or(&mut global);
                target.set(key, value)?;
                let record = (key.to_string(), value.unwrap_or("").to_string());
                match current.as_mut() {
                    Some(job) => job.given.push(record),
                    None => run.global.push(record),
                }
            }
        }
    }
    if let Some(job) = current.take() {
        run.jobs.push(job);
    }
    if run.jobs.is_empty() {
        return Err(OptionError::NoJobs);
    }
    for job in &run.jobs {
        job.validate()?;
    }
    Ok(Command::Run(run))
}

/// Parses one fio job file; its `[global]` sections extend `inherited` for the jobs below them.
pub fn parse_job_file(
    path: &Path,
    inherited: &JobOptions,
    jobs: &mut Vec<JobOptions>,
) -> Result<(), OptionError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| OptionError::JobFile { path: path.into(), reason: error.to_string() })?;
    parse_job_text(&text, inherited, jobs).map_err(|error| match error {
        OptionError::JobFile { .. } => error,
        other => OptionError::JobFile { path: path.into(), reason: other.to_string() },
    })
}

/// Parses the text of a job file (see [`parse_job_file`]).
pub fn parse_job_text(
    text: &str,
    inherited: &JobOptions,
    jobs: &mut Vec<JobOptions>,
) -> Result<(), OptionError> {
    let mut global = inherited.clone();
    let mut current: Option<JobOptions> = None;
    let mut in_global = false;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            if let Some(job) = current.take() {
                jobs.push(job);
            }
            in_global = section == "global";
            if !in_global {
                let mut job = global.clone();
                job.given.clear();
                job.name = section.to_string();
                current = Some(job);
            }
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.trim())),
            None => (line, None),
        };
        let target = match current.as_mut() {
            _ if in_global => &mut global,
            Some(job) => job,
            None => {
                return Err(OptionError::JobFile {
                    path: PathBuf::new(),
                    reason: format!("line {}: option outside a section", number + 1),
                });
            }
        };
        target.set(key, value)?;
        target.given.push((key.to_string(), value.unwrap_or("").to_string()));
    }
    if let Some(job) = current.take() {
        jobs.push(job);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(arguments: &[&str]) -> RunOptions {
        match parse_command_line(arguments).unwrap() {
            Command::Run(run) => run,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn sizes_and_times_use_fio_units() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4KB"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5m"), Ok(3 << 19));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_time("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_time("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_time("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_time("1.5s").is_err());
    }

    #[test]
    fn globals_before_the_first_name_are_inherited() {
        let run = run(&[
            "--bs=4M",
            "--size=64M",
            "--ioengine=io_uring",
            "--output-format=json",
            "--name=a",
            "--rw=write",
            "--numjobs=3",
            "--name=b",
            "--rw=randrw",
            "--rwmixread=70",
            "--time_based",
            "--runtime=2s",
        ]);
        assert_eq!(run.output_format, OutputFormat::Json);
        assert_eq!(run.jobs.len(), 2);
        let (a, b) = (&run.jobs[0], &run.jobs[1]);
        assert_eq!((a.name.as_str(), a.rw, a.bs, a.numjobs), ("a", RwMode::Write, 4 << 20, 3));
        assert_eq!(a.ioengine, EngineKind::IoUring);
        assert_eq!((b.rw, b.rwmixread, b.numjobs, b.time_based), (RwMode::RandRw, 70, 1, true));
        assert_eq!(b.runtime, Some(Duration::from_secs(2)));
        assert_eq!(run.global.len(), 3);
        assert_eq!(a.given[0], ("name".to_string(), "a".to_string()));
    }

    #[test]
    fn unknown_options_and_bad_values_are_named() {
        let unknown = parse_command_line(&["--name=a", "--size=1M", "--frobnicate=3"]).unwrap_err();
        assert_eq!(unknown, OptionError::Unknown("frobnicate".into()));
        assert!(unknown.to_string().contains("unknown option 'frobnicate'"));
        let bad = parse_command_line(&["--name=a", "--size=1M", "--rw=sideways"]).unwrap_err();
        assert!(matches!(bad, OptionError::BadValue { ref option, .. } if option == "rw"), "{bad}");
        assert_eq!(parse_command_line(&["--size=1M"]).unwrap_err(), OptionError::NoJobs);
        let invalid = parse_command_line(&["--name=a", "--bs=1000", "--numjobs=0"]).unwrap_err();
        let text = invalid.to_string();
        assert!(
            text.contains("multiple of 512") && text.contains("numjobs") && text.contains("size"),
            "{text}"
        );
    }

    #[test]
    fn job_files_have_global_and_job_sections() {
        let mut jobs = Vec::new();
        let text = "; comment\n[global]\nbs=4k\nsize=8M\ndirect=1\n\n[seq]\nrw=write\n\n[global]\nbs=8k\n[rand]\nrw=randread\niodepth=16\nstonewall\n";
        parse_job_text(text, &JobOptions::default(), &mut jobs).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].name.as_str(), jobs[0].bs, jobs[0].direct), ("seq", 4096, true));
        assert_eq!((jobs[1].name.as_str(), jobs[1].bs, jobs[1].iodepth), ("rand", 8192, 16));
        assert!(jobs[1].stonewall && !jobs[0].stonewall);
        let error =
            parse_job_text("[a]\nbogus=1\n", &JobOptions::default(), &mut Vec::new()).unwrap_err();
        assert_eq!(error, OptionError::Unknown("bogus".into()));
    }

    #[test]
    fn file_bytes_split_size_over_files() {
        let mut job = JobOptions { size: Some(64 << 20), nrfiles: 4, ..JobOptions::default() };
        assert_eq!(job.file_bytes(), Some(16 << 20));
        job.filesize = Some(1 << 20);
        assert_eq!(job.file_bytes(), Some(1 << 20));
    }
}
