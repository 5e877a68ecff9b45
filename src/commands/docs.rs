//! Documentation generated from the command line's definition ([`crate::cli`]): shell
//! completions (clap_complete) and man pages (clap_mangen), so they never disagree with
//! `--help`. Neither needs profiles or kmx's home.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result, exit};

/// `kmx completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kmx", &mut out);
    use std::io::Write;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::env(format!("cannot write the completion script: {e}")))?;
    Ok(exit::OK)
}

/// `kmx man --out DIR`: `kmx.1` and one page per subcommand (`kmx-build.1`,
/// `kmx-kernels-fetch.1`, ...), each written atomically; their paths on stdout.
pub fn man(dir: &Path) -> Result<i32> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    page(&cmd, dir, &mut written)?;
    written.sort();
    for p in &written {
        println!("{}", p.display());
    }
    eprintln!("wrote {} man pages into {}", written.len(), dir.display());
    Ok(exit::OK)
}

fn page(cmd: &clap::Command, dir: &Path, written: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone()).manual("kmx manual");
    let mut text = Vec::new();
    man.render(&mut text)
        .map_err(|e| Error::env(format!("cannot render a man page: {e}")))?;
    let path = dir.join(man.get_filename());
    crate::state::write_atomic_mode(&path, &text, Some(0o644))?;
    written.push(path);
    Ok(())
}
