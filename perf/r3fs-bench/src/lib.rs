//! r3fs-bench: a benchmark that takes fio's job options and prints fio-shaped reports, so r3fs
//! figures sit next to fio's without translation.
//!
//! Key types: [`options::JobOptions`] (fio's options, parsed from `--opt=value` command lines
//! and job files), [`engine::Engine`] (psync, io_uring, and the r3fs native ring once its API
//! lands), [`job::JobPlan`] (one clone of a job and its files), [`stats::JobResult`] (bytes,
//! IOs, slat/clat/lat with hdrhistogram percentiles, bandwidth/IOPS samples, CPU time) and
//! [`report`] (text and JSON with fio's field names).
//!
//! Invariants: every IO of a timed run is counted exactly once, in the direction it went;
//! writes carry the [`pattern`] so a run's files can be checked afterwards; a job's buffer slot
//! is reused only after the IO that used it completed (ring engines read it asynchronously).
//! See docs/design/bench.md.

pub mod engine;
pub mod job;
pub mod options;
pub mod pattern;
pub mod report;
pub mod run;
pub mod stats;
