//! `r3fs completions bash|zsh|fish|elvish|powershell`: completion scripts from the clap tree, so
//! they always match the commands this binary has.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate the script for.
    pub shell: Shell,
}

pub fn print(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "r3fs", &mut std::io::stdout());
    Ok(())
}
