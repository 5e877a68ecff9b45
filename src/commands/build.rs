//! `kmx build`: resolve targets, plan, run the scheduler, report.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{BuildArgs, CacheCmd};
use crate::commands::progress::Printer;
use crate::commands::{Context, print_json};
use crate::config::manifest::Given;
use crate::error::{Error, Result, exit};
use crate::matrix::pipeline::{self, Action, Cell, Options, Plan, Report, Shard, count};
use crate::state::cache::Cache;

/// What `kmx build` builds: source directories into OUT, or registered modules (their
/// registered copies) into the state store, like `dkms build`.
enum Sources {
    Dirs(Vec<PathBuf>),
    /// Each registered copy with its registered name and version.
    Registered(Vec<(PathBuf, Given)>),
}

/// Each SOURCE is a directory, or else NAME or NAME/VERSION of a registered module (the
/// newest registered version when none is named). Anything else is a usage error (exit 2),
/// found before any target is set up.
fn resolve_sources(ctx: &Context, args: &BuildArgs) -> Result<Sources> {
    let store = &ctx.store;
    let mut dirs = Vec::new();
    let mut registered = Vec::new();
    for s in &args.sources {
        if s.is_dir() {
            dirs.push(s.clone());
            continue;
        }
        let text = s.to_string_lossy();
        let not_found = || {
            Error::usage(format!(
                "`{text}` is neither a module source directory nor a registered module"
            ))
            .hint(
                "give a directory holding a dkms.conf or kmx.toml, or NAME[/VERSION] of a \
                 module registered with `kmx add DIR` (`kmx status` lists them)",
            )
        };
        let Ok((module, version)) = super::split_module(&text) else {
            return Err(not_found());
        };
        let version = match version {
            Some(v) => v,
            None => match store
                .versions_of(&module)?
                .into_iter()
                .rev()
                .find(|v| matches!(store.load_source(&module, v), Ok(Some(_))))
            {
                Some(v) => v,
                None => return Err(not_found()),
            },
        };
        let Some(_) = store.load_source(&module, &version)? else {
            return Err(match store.versions_of(&module)?.contains(&version) {
                true => Error::usage(format!(
                    "{module}/{version} was imported without its source (kmx load-tarball): \
                     it cannot be built here"
                ))
                .hint(format!(
                    "register its source with `kmx add DIR` to build {module}"
                )),
                false => not_found(),
            });
        };
        let copy = store.source_copy(&module, &version);
        // A damaged copy is named here, with what to do, before any planning.
        crate::state::store::content_hash(&copy).map_err(|e| {
            e.hint(format!(
                "the registered copy is damaged: `kmx add` the source of {module} {version} again"
            ))
        })?;
        registered.push((copy, Given::both(&module, &version)));
    }
    match (dirs.is_empty(), registered.is_empty()) {
        (_, true) => Ok(Sources::Dirs(dirs)),
        (true, false) if args.out.is_some() => Err(Error::usage(
            "registered modules are built into the state store, not into --out",
        )
        .hint("drop --out; `kmx tarball` exports what the store holds")),
        (true, false) => Ok(Sources::Registered(registered)),
        (false, false) => Err(Error::usage(
            "directories and registered modules cannot be built in one run: directories are \
             built into OUT, registered modules into the state store",
        )
        .hint("run kmx build once for each")),
    }
}

pub fn run(ctx: &Context, args: &BuildArgs, wait: bool) -> Result<i32> {
    let sources = resolve_sources(ctx, args)?;
    // Registered modules are built into the store under its lock, as `install` does.
    let registered = matches!(sources, Sources::Registered(_));
    let given = super::given_of(&args.given)?;
    let (sources, out, _lock) = match sources {
        Sources::Dirs(dirs) => {
            if given != Given::default() && dirs.len() != 1 {
                return Err(Error::usage(
                    "--module-name and --module-version name one module: give one source directory",
                )
                .hint("build each source with its own kmx build"));
            }
            let out = args.out.clone().unwrap_or_else(|| PathBuf::from("kmx-out"));
            let dirs = dirs.into_iter().map(|d| (d, given.clone())).collect();
            (dirs, out, None)
        }
        Sources::Registered(_) if given != Given::default() => {
            return Err(Error::usage(
                "--module-name and --module-version are for a source directory",
            )
            .hint("a registered module is built with the name and version it was added with"));
        }
        Sources::Registered(dirs) => {
            let lock = ctx.store.lock(wait)?;
            (dirs, ctx.store.built(), Some(lock))
        }
    };
    let dirs: Vec<PathBuf> = sources.iter().map(|(d, _)| d.clone()).collect();
    // Paths go into make's command line, the cells' logs and the JSON report as text: one
    // that is not UTF-8 is refused here, by name, rather than mangled into a make that
    // fails with exit 125 and a report that cannot be written.
    let cwd = std::env::current_dir().unwrap_or_default();
    for (what, path) in [
        ("the output directory", cwd.join(&out)),
        ("KMX_HOME", ctx.home.root.clone()),
    ]
    .into_iter()
    .chain(dirs.iter().map(|d| ("the module source", cwd.join(d))))
    {
        if path.to_str().is_none() {
            return Err(Error::usage(format!("{what} {path:?} is not valid UTF-8"))
                .hint("kmx passes paths to make and writes them into JSON reports, which need UTF-8: rename it or choose another directory"));
        }
    }
    if !registered {
        let out_abs = std::fs::canonicalize(&out).unwrap_or_else(|_| cwd.join(&out));
        if let Some(d) = dirs
            .iter()
            .find(|d| std::fs::canonicalize(d).is_ok_and(|d| out_abs == d))
        {
            return Err(Error::usage(format!(
                "the output directory {} is the module source {}",
                out.display(),
                d.display()
            ))
            .hint(
                "choose another output directory (the default ./kmx-out inside the source is fine)",
            ));
        }
    }
    let mut notes = Vec::new();
    // kmx's compiler cache before the toolchains' compilers that name no launcher.
    let (profiles, compiler_cache) = crate::config::ccache::for_build(
        &ctx.profiles,
        &ctx.home.root,
        args.launcher.is_some() || args.no_compiler_cache,
    );
    let targets =
        pipeline::setup_targets(&profiles, &ctx.home, &args.target, &args.kernel, &mut notes)?;
    for n in &notes {
        eprintln!("{n}");
    }
    // What a killed earlier build left in the output directory (its owner is dead: no lock
    // is needed to know it is garbage).
    crate::state::tmp::sweep_output(&out);
    // Tagged before the sources are hashed: OUT inside a source (`kmx build .`) is left out
    // of its copy and its hash.
    if !registered && !args.dry_run {
        crate::digest::tag_output(&out)?;
    }
    let mut plan = pipeline::plan_given(&sources, &targets, &out, args.sandbox.into())?;
    if let Some(spec) = &args.shard {
        let shard: Shard = spec.parse()?;
        plan = pipeline::shard(&plan, shard, args.costs.as_deref())?;
        eprintln!(
            "Shard {shard}: {} of {}",
            plan.cells.len(),
            count(plan.total, "cell")
        );
    }
    if let Some(why) = &plan.no_namespace {
        eprintln!(
            "warning: cells run without the sandbox ({why}): dkms.conf and \
             build steps run unconfined on the host, and sources that build against \
             /lib/modules/<release>/build, /usr/src/<name>-<version> or \
             /var/lib/dkms/<name>/<version>/build will fail\n  \
             hint: install bubblewrap; as another user than root, allow user namespaces \
             (sysctl kernel.unprivileged_userns_clone=1)"
        );
    }
    if args.dry_run {
        print_plan(&plan, args);
        return Ok(exit::OK);
    }
    let opts = Options {
        jobs: args.jobs,
        timeout: Duration::from_secs(args.timeout),
        fail_fast: args.fail_fast,
        launcher: args.launcher.as_ref().map(|w| w.0.clone()),
        cache: (!args.no_cache).then(|| Cache::new(ctx.home.cell_cache(), args.cache_size)),
        force: args.force,
        open_sandbox: args.sandbox == crate::cli::SandboxMode::Open,
        keep_build_dir: args.keep_build_dir,
        durations: Some(ctx.home.durations()),
        compiler_cache,
    };
    let stop = crate::process::stop_flag()?;
    let json_lines = args.message_format == crate::cli::MessageFormat::Json;
    let mut printer = Printer::default();
    (printer.quiet, printer.verbose, printer.json_lines) = (args.quiet, args.verbose, json_lines);
    let mut report = pipeline::execute(&plan, &opts, &stop, &mut printer)?;
    let mut code = report.exit_code();
    if registered {
        // Record every cell with modules in the store, as `install` would have.
        for (c, r) in plan.cells.iter().zip(&report.cells) {
            if r.status.has_modules() {
                let hash = crate::lifecycle::prepare::source_hash(c);
                crate::lifecycle::prepare::record_built(&ctx.store, c, &r.artifacts, hash)?;
            }
        }
    }
    if args.smoke && code != exit::INTERRUPTED {
        eprintln!("Booting the kernels under QEMU to load the built modules");
        let boots = pipeline::smoke(
            &ctx.profiles,
            &ctx.home,
            &plan,
            &mut report,
            Duration::from_secs(args.smoke_timeout),
            &stop,
        )?;
        let smoke_code = crate::smoke::exit_code(&boots);
        // The worst verdict wins: interrupted, then failed, then harness trouble.
        code = [exit::INTERRUPTED, exit::FAILED, exit::HARNESS]
            .into_iter()
            .find(|c| *c == code || *c == smoke_code)
            .unwrap_or(exit::OK);
    }
    let text = report.render();
    match args.quiet {
        // Without the table: what follows it (failures, warnings) and the summary.
        true => eprint!(
            "{}",
            text.split_once("\n\n")
                .map_or(text.as_str(), |(_, rest)| rest)
        ),
        false => eprint!("{text}"),
    }
    if args.json {
        print_json("build-report", &report)?;
    }
    if json_lines {
        crate::commands::progress::json_line(&serde_json::json!({
            "reason": "build-finished",
            "success": code == exit::OK,
            "exit_code": code,
            "totals": report.totals,
        }));
    }
    Ok(code)
}

fn print_plan(plan: &Plan, args: &BuildArgs) {
    let env = |c: &Cell| {
        pipeline::make_env(c, args.launcher.as_ref().map(|w| w.0.as_slice()))
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::process::quote(v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let jobs = Options {
        jobs: args.jobs,
        ..Options::default()
    }
    .jobs();
    if pipeline::inherits_jobserver() {
        println!("jobserver: the calling make's (MAKEFLAGS), at most {jobs} cells at once");
    } else {
        println!("jobserver: kmx's own, {jobs} slots");
    }
    if plan.no_namespace.is_none() {
        match args.sandbox {
            crate::cli::SandboxMode::Strict => println!(
                "sandbox: strict (dkms.conf and build steps: no capabilities, the host \
                 read-only, /tmp private, no network unless the launcher compiles remotely)"
            ),
            crate::cli::SandboxMode::Open => println!(
                "sandbox: open (dkms.conf and build steps: the host writable and the \
                 network, as under DKMS)"
            ),
        }
    }
    for c in &plan.cells {
        println!("{}", c.label());
        match &c.action {
            Action::Skip(reason) => println!("  skip: {reason}"),
            Action::Build => {
                println!("  source:  {}", c.source.display());
                println!("  kdir:    {}", c.tree.kdir.display());
                println!("  make:    {}", pipeline::make_line(c));
                if c.view.is_some() {
                    println!(
                        "  in:      {} (private namespace: /lib/modules/{}/build is the kdir)",
                        c.step_dir().display(),
                        c.tree.release
                    );
                }
                if let Some(root) = &c.compiler().root {
                    println!(
                        "  root:    {} (the view's /: the toolchain root)",
                        root.display()
                    );
                }
                // The plan's view: the run adds what a launcher needs (ccache's directory
                // writable, distcc's network), which benches/noop-rebuild.sh does without.
                if let Some(words) = c
                    .view
                    .as_ref()
                    .filter(|_| args.verbose)
                    .and_then(|v| v.words(&c.step_dir(), &pipeline::make_line(c)))
                {
                    let words: Vec<String> = words
                        .iter()
                        .map(|w| crate::process::quote(&w.to_string_lossy()))
                        .collect();
                    println!("  view:    {}", words.join(" "));
                }
                println!("  vars:    {}", env(c));
                for p in &c.spec.patches {
                    println!("  patch:   {}", p.display());
                }
                let deps: Vec<String> = c.deps.iter().map(|&d| plan.cells[d].label()).collect();
                if !deps.is_empty() {
                    println!("  after:   {}", deps.join(", "));
                }
                let mods: Vec<String> = c
                    .spec
                    .modules
                    .iter()
                    .map(|m| {
                        m.built_location
                            .join(format!("{}.ko", m.built_name))
                            .display()
                            .to_string()
                    })
                    .collect();
                println!("  modules: {}", mods.join(" "));
                println!("  out:     {}", c.out_dir.display());
            }
        }
    }
    let s = plan.summary();
    println!(
        "{}: {} to build, {} skipped",
        count(s.cells, "cell"),
        s.to_build,
        s.skipped
    );
}

/// `kmx cache stats` / `kmx cache clean`.
pub fn cache(ctx: &Context, cmd: &CacheCmd) -> Result<i32> {
    let cache = Cache::new(
        ctx.home.cell_cache(),
        crate::state::cache::DEFAULT_MAX_BYTES,
    );
    match cmd {
        CacheCmd::Stats { json: true } => {
            let (n, bytes) = cache.stats();
            print_json(
                "cache-stats",
                &serde_json::json!({ "dir": cache.dir, "cells": n, "bytes": bytes }),
            )?;
        }
        CacheCmd::Stats { json: false } => {
            let (n, bytes) = cache.stats();
            println!(
                "{}, {:.1} MiB in {}",
                count(n, "cell"),
                bytes as f64 / (1 << 20) as f64,
                cache.dir.display()
            );
        }
        CacheCmd::Clean { max_size } => {
            let (n, bytes) = cache.trim_to(max_size.unwrap_or(0));
            println!(
                "removed {}, {:.1} MiB",
                count(n, "cell"),
                bytes as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(exit::OK)
}

/// `kmx report merge`.
pub fn merge(paths: &[std::path::PathBuf], json: bool) -> Result<i32> {
    let parts = paths
        .iter()
        .map(|p| Report::load(p).map(|r| (p.clone(), r)))
        .collect::<Result<Vec<_>>>()?;
    let merged = Report::merge(&parts)?;
    eprint!("{}", merged.render());
    if json {
        print_json("build-report", &merged)?;
    }
    Ok(merged.exit_code())
}
