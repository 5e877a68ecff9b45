//! What every command shares: the context they load (profiles, home, store), the parsing of
//! `MODULE[/VERSION]` and `--module-name`/`--module-version`, and JSON output. Apart from
//! mod.rs, which dispatches to the commands, so that the commands' files and mod.rs form no
//! circle.

use crate::cli::Cli;
use crate::config::{Profiles, Sources, load::user_config_dir};
use crate::error::{Error, Result};
use crate::state::store::valid_component;
use crate::state::{Home, Store};

/// What every command needs: the profiles and kmx's home.
pub struct Context {
    pub profiles: Profiles,
    pub home: Home,
    /// The lifecycle store (`--state-dir`, default HOME/state).
    pub store: Store,
}

impl Context {
    pub fn load(cli: &Cli) -> Result<Context> {
        if let Some(dir) = &cli.global.config_dir
            && !dir.is_dir()
        {
            return Err(crate::Error::usage("the configuration directory does not exist")
                .at(dir)
                .hint("--config-dir (or KMX_CONFIG_DIR) must name a directory holding targets/ and toolchains/"));
        }
        let sources = Sources::standard(user_config_dir(), cli.global.config_dir.clone());
        let home = Home::resolve(cli.global.home.clone())?;
        Ok(Context {
            profiles: Profiles::load(&sources)?,
            store: Store::resolve(&home, cli.global.state_dir.clone()),
            home,
        })
    }
}

/// `MODULE` or `MODULE/VERSION`.
pub(crate) fn split_module(arg: &str) -> Result<(String, Option<String>)> {
    let (m, v) = match arg.split_once('/') {
        Some((m, v)) => (m, Some(v.to_string())),
        None => (arg, None),
    };
    if !valid_component(m) || v.as_deref().is_some_and(|v| !valid_component(v)) {
        return Err(Error::usage(format!(
            "`{arg}` is not MODULE or MODULE/VERSION"
        )));
    }
    Ok((m.to_string(), v))
}

/// Print JSON to stdout, buffered: stdout is line-buffered, and a report of thousands of
/// modules has hundreds of thousands of lines. Every JSON output is an object whose
/// `schema` names its format and version, `kmx.<schema>/1`, described by
/// `docs/schemas/kmx.<schema>-1.json`; a change that breaks a reader bumps the version.
pub(crate) fn print_json<T: serde::Serialize>(schema: &str, value: &T) -> Result<()> {
    use std::io::Write;
    let mut value = serde_json::to_value(value)
        .map_err(|e| crate::Error::env(format!("cannot write JSON output: {e}")))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(crate::Error::env(format!(
            "kmx bug: the JSON output {schema} is not an object"
        )));
    };
    fields.insert("schema".into(), format!("kmx.{schema}/1").into());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer_pretty(&mut out, &value)
        .map_err(|e| crate::Error::env(format!("cannot write JSON output: {e}")))?;
    writeln!(out)
        .and_then(|_| out.flush())
        .map_err(|e| crate::Error::env(format!("cannot write JSON output: {e}")))
}

/// `--module-name`/`--module-version` as a [`crate::config::manifest::Given`]; a value that
/// cannot name a directory is a usage error.
pub fn given_of(args: &crate::cli::GivenArgs) -> Result<crate::config::manifest::Given> {
    for (flag, value) in [
        ("--module-name", &args.module_name),
        ("--module-version", &args.module_version),
    ] {
        if let Some(v) = value
            && let Some(why) = crate::config::manifest::invalid_identity(v)
        {
            return Err(crate::error::Error::usage(format!(
                "{flag} {v:?} cannot name a directory: {why}"
            ))
            .hint("use one word of letters, digits, '.', '-', '_' or '+'"));
        }
    }
    Ok(crate::config::manifest::Given {
        name: args.module_name.clone(),
        version: args.module_version.clone(),
    })
}
