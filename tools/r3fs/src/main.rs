//! `r3fs`: the admin command of an r3fs cluster.
//!
//! `r3fs [--mgmtd ADDR[,ADDR..]] [--token TOKEN | --token-file PATH] [--json] <command>`; run
//! `r3fs help` for the commands. Errors go to stderr as one line with their causes
//! (`error: list nodes: cannot reach mgmtd at 127.0.0.1:9100: ...`) and exit with status 1;
//! usage errors exit with 2 (clap's convention).

mod cmd;

use clap::Parser;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "r3fs",
    version,
    about = "Administer an r3fs cluster: nodes, chains, targets, users, configs and placement"
)]
pub struct Cli {
    #[command(flatten)]
    global: cmd::ctx::GlobalArgs,

    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let ctx = cmd::ctx::Ctx::new(cli.global);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: build the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run(&ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks (duplicate names, bad defaults, conflicting flags) over the
    /// whole command tree, which otherwise fire only when a command is first used.
    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
