//! The commands: each turns resolved flags into work and output. Workers elsewhere never
//! print; commands do.

mod doctor;
mod kernels;
mod smoke;

use crate::cli::{Cli, Cmd, KernelsCmd};
use crate::config::{Profiles, Sources, load::user_config_dir};
use crate::error::Result;
use crate::state::Home;

/// What every command needs: the profiles and kmx's home.
pub struct Context {
    pub profiles: Profiles,
    pub home: Home,
}

impl Context {
    pub fn load(cli: &Cli) -> Result<Context> {
        let sources = Sources::standard(user_config_dir(), cli.global.config_dir.clone());
        Ok(Context {
            profiles: Profiles::load(&sources)?,
            home: Home::resolve(cli.global.home.clone())?,
        })
    }
}

/// Run a command; the result is the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let ctx = Context::load(&cli)?;
    match cli.command {
        Cmd::Kernels(KernelsCmd::Fetch {
            target,
            abi,
            mirror,
            suite,
            refresh,
            with_image,
        }) => kernels::fetch(&ctx, &target, abi, mirror, suite, refresh, with_image),
        Cmd::Kernels(KernelsCmd::List { json }) => kernels::list(&ctx, json),
        Cmd::Targets { json } => doctor::targets(&ctx, json),
        Cmd::Doctor { target, json } => doctor::doctor(&ctx, &target, json),
        Cmd::Smoke {
            paths,
            target,
            timeout,
            json,
        } => smoke::smoke(&ctx, &paths, &target, timeout, json),
    }
}

/// Print JSON to stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| crate::Error::env(format!("cannot serialize JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}
