//! `kmx dkms`: DKMS's own command line (`dkms add|build|install|uninstall|unbuild|remove|
//! status|autoinstall`, with `-m/-v/-k/-a/--all/--force`), answered from kmx's store, with
//! DKMS 3.0's exit codes. It is what `/usr/sbin/dkms` runs where the `kmx-dkms` package
//! stands in for Debian's `dkms`, so that the maintainer scripts dh_dkms writes into every
//! `*-dkms` package (`/usr/lib/dkms/common.postinst`, `dkms status`, `dkms remove --all`)
//! work through kmx.
//!
//! This reads DKMS's words into a [`Request`] once, runs it ([`crate::lifecycle::dkms`]:
//! which kernels, what DKMS refuses and with which code) and prints its steps, its status
//! lines or its refusal.

use std::path::{Path, PathBuf};

use super::Context;
use super::lifecycle::{print_added, print_auto, print_down, print_install, run_of};
use super::progress::Printer;
use crate::cli::DkmsArgs;
use crate::error::{Error, Result, exit};
use crate::install;
use crate::lifecycle::dkms::{self as engine, Action, Event, Kernel, Outcome, Request, USAGE};
use crate::state::store::valid_component;

/// The DKMS release whose command line and exit codes this follows.
pub const DKMS_VERSION: &str = "3.0.10";

fn action_of(word: &str) -> Option<Action> {
    Some(match word {
        "add" => Action::Add,
        "build" => Action::Build,
        "install" => Action::Install,
        "uninstall" => Action::Uninstall,
        "unbuild" => Action::Unbuild,
        "remove" => Action::Remove,
        "status" => Action::Status,
        "autoinstall" => Action::Autoinstall,
        _ => return None,
    })
}

fn usage(msg: impl Into<String>) -> Error {
    Error::usage(msg).hint(USAGE)
}

/// DKMS's words, interpreted as DKMS does (`dkms [action] [module/version | dir] [-m M
/// [-v V]]`): the action may come anywhere; a directory with a dkms.conf (`is_source`) is
/// a source tree; anything else is MODULE/VERSION. `root`: the root, resolved once the
/// words are read.
pub fn resolve(
    args: &DkmsArgs,
    is_source: &dyn Fn(&Path) -> bool,
    root: impl FnOnce() -> Result<PathBuf>,
) -> Result<Request> {
    let mut action = None;
    let (mut module, mut version, mut source) = (None, args.version.clone(), None);
    if let Some(m) = &args.module {
        match m.split_once('/') {
            Some((m, v)) => {
                module = Some(m.to_string());
                version = version.or(Some(v.to_string()));
            }
            None => module = Some(m.clone()),
        }
    }
    for w in &args.words {
        if let Some(a) = action_of(w) {
            if action.is_some() {
                return Err(usage("Cannot specify more than one action."));
            }
            action = Some(a);
        } else if is_source(Path::new(w)) {
            source = Some(PathBuf::from(w));
        } else if module.is_none() {
            match w.split_once('/') {
                Some((m, v)) => {
                    module = Some(m.to_string());
                    version = Some(v.to_string());
                }
                None => module = Some(w.clone()),
            }
        } else {
            return Err(usage(format!("I do not know how to handle {w}.")));
        }
    }
    let action = action.ok_or_else(|| usage("no action given"))?;
    for (what, v) in [("module", &module), ("version", &version)] {
        if let Some(v) = v
            && !valid_component(v)
        {
            return Err(usage(format!("{what} {v:?} is not a valid name")));
        }
    }
    if args.arch.len() > 1 && args.arch.len() != args.kernel.len() {
        return Err(usage(
            "If more than one arch is specified on the command line, then there must be an equal number of kernel versions also specified (1:1 relationship).",
        ));
    }
    let kernels = args
        .kernel
        .iter()
        .enumerate()
        .map(|(i, k)| match k.split_once('/') {
            Some((k, a)) => Kernel {
                release: k.to_string(),
                arch: Some(a.to_string()),
            },
            None => Kernel {
                release: k.clone(),
                arch: args
                    .arch
                    .get(if args.arch.len() == 1 { 0 } else { i })
                    .cloned(),
            },
        })
        .collect();
    let root = root()?;
    Ok(Request {
        action,
        module,
        version,
        source,
        kernels,
        all: args.all,
        force: args.force,
        sources: args
            .sourcetree
            .clone()
            .unwrap_or_else(|| root.join("usr/src")),
        root,
    })
}

pub fn run(ctx: &Context, args: &DkmsArgs, wait: bool) -> Result<i32> {
    if args.version_flag {
        println!("dkms-{DKMS_VERSION}");
        eprintln!(
            "(DKMS's command line, served by kmx {})",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(exit::OK);
    }
    let req = resolve(args, &|p| p.join("dkms.conf").is_file(), || {
        install::resolve_root(&args.root)
    })?;
    // `-j`, `--no-depmod`, kmx's own signing key and the lock: as `kmx install` runs.
    let run = run_of(
        ctx,
        args.jobs,
        !args.no_depmod,
        &crate::cli::SignArgs::default(),
        wait,
    )?;
    let outcome = engine::run::<Printer>(ctx.env(), &req, &run, &mut print)?;
    match &outcome {
        Outcome::Status(lines) => {
            for line in lines {
                println!("{line}");
            }
        }
        Outcome::Refused(r) => eprintln!("{r}"),
        Outcome::Done | Outcome::Interrupted => {}
    }
    Ok(outcome.code())
}

/// What a DKMS action says of a step, as the command of kmx's own that takes it says it.
fn print(e: Event) {
    match e {
        Event::Added(a) => print_added(a),
        Event::Built(key) => eprintln!("built {key}"),
        Event::Install(e) => print_install(e),
        Event::Uninstall(e) => print_down(e, true),
        Event::Remove(e) => print_down(e, false),
        Event::Autoinstall(e) => print_auto(e),
        Event::Notice(n) => eprintln!("{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(words: &[&str]) -> DkmsArgs {
        let mut argv = vec!["kmx", "dkms"];
        argv.extend(words);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Cmd::Dkms(a) => a,
            _ => panic!("not dkms"),
        }
    }

    fn req(words: &[&str]) -> Result<Request> {
        resolve(
            &args(words),
            &|p| p == Path::new("/usr/src/hello-1.0"),
            || Ok(PathBuf::from("/srv/img")),
        )
    }

    #[test]
    fn dkms_words_are_read_as_dkms_reads_them() {
        let r = req(&["build", "-m", "hello", "-v", "1.0", "-k", "6.1.0-57-amd64"]).unwrap();
        assert_eq!(r.action, Action::Build);
        assert_eq!(
            (r.module.as_deref(), r.version.as_deref()),
            (Some("hello"), Some("1.0"))
        );
        assert_eq!(
            r.kernels,
            vec![Kernel {
                release: "6.1.0-57-amd64".into(),
                arch: None
            }]
        );
        assert_eq!(r.root, Path::new("/srv/img"));
        assert_eq!(r.sources, Path::new("/srv/img/usr/src"));
        // MODULE/VERSION anywhere, the action after it, -k K/ARCH.
        let r = req(&["hello/1.0", "install", "-k", "6.1.0-57-arm64/aarch64"]).unwrap();
        assert_eq!(r.action, Action::Install);
        assert_eq!(r.version.as_deref(), Some("1.0"));
        assert_eq!(r.kernels[0].arch.as_deref(), Some("aarch64"));
        // -m M/V; -a pairs with -k.
        let r = req(&[
            "status",
            "-m",
            "hello/1.0",
            "-k",
            "a",
            "-k",
            "b",
            "-a",
            "x86_64",
            "-a",
            "i686",
        ])
        .unwrap();
        assert_eq!(r.version.as_deref(), Some("1.0"));
        assert_eq!(
            r.kernels[1],
            Kernel {
                release: "b".into(),
                arch: Some("i686".into())
            }
        );
        // A source tree.
        let r = req(&["add", "/usr/src/hello-1.0"]).unwrap();
        assert_eq!(r.source.as_deref(), Some(Path::new("/usr/src/hello-1.0")));
        assert_eq!(r.module, None);
        // DKMS's refusals.
        assert!(req(&["build", "install", "hello/1.0"]).is_err());
        assert!(req(&["hello/1.0"]).is_err());
        assert!(req(&["build", "../x/1.0"]).is_err());
        assert!(
            req(&[
                "status", "-k", "a", "-k", "b", "-k", "c", "-a", "x", "-a", "y"
            ])
            .is_err()
        );
    }
}
