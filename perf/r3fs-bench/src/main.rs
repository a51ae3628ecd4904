//! `r3fs-bench`: fio's job options in, fio-shaped report out. See docs/design/bench.md.

use anyhow::{Context, Result};
use r3fs_bench::options::{self, Command, OutputFormat};
use r3fs_bench::{report, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let command = match options::parse_command_line(&arguments) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("r3fs-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let run_options = match command {
        Command::Help => {
            print!("{}", options::HELP);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("r3fs-bench-{}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(run_options) => run_options,
    };
    match execute(&run_options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("r3fs-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the jobs and writes the report; Ok(false) if an IO failed (the report shows err=).
fn execute(run_options: &options::RunOptions) -> Result<bool> {
    let groups = run::run(run_options)?;
    let text = match run_options.output_format {
        OutputFormat::Normal => report::text(&groups),
        OutputFormat::Json => {
            let value = report::json(&groups, &run_options.global);
            serde_json::to_string_pretty(&value).context("encode the JSON report")? + "\n"
        }
    };
    match &run_options.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?
        }
        None => print!("{text}"),
    }
    let failed = groups.iter().flat_map(|g| &g.clones).any(|c| c.error != 0);
    if failed {
        eprintln!("r3fs-bench: an IO failed; see err= in the report");
    }
    Ok(!failed)
}
