//! `kmx build`: resolve targets, plan, run the scheduler, report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::{BuildArgs, CacheCmd};
use crate::commands::{Context, print_json};
use crate::config::load::DEFAULT_TARGETS;
use crate::error::{Error, Result, exit, render};
use crate::kernel::registry::{RegisteredTree, Registry, trees_of};
use crate::kernel::tree::KernelTree;
use crate::matrix::cell;
use crate::matrix::plan::{self, Action, Plan, TargetSetup};
use crate::matrix::report::Report;
use crate::matrix::scheduler::{self, Event, Options};
use crate::matrix::shard::{self, Shard};
use crate::state::cache::Cache;

/// Environment variables builds see: the basics plus compiler-cache and distcc settings.
/// Read once here, never inside workers.
fn passthrough_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "PATH"
                    | "HOME"
                    | "USER"
                    | "TMPDIR"
                    | "SOURCE_DATE_EPOCH"
                    | "KBUILD_BUILD_TIMESTAMP"
                    | "KBUILD_BUILD_USER"
                    | "KBUILD_BUILD_HOST"
            ) || k.starts_with("CCACHE_")
                || k.starts_with("DISTCC_")
        })
        .collect()
}

/// Resolve the targets to build for. Explicitly named targets must be usable; from the
/// default set, unusable ones are left out with a note saying why.
pub fn setup_targets(
    ctx: &Context,
    names: &[String],
    kernels: &[String],
    notes: &mut Vec<String>,
) -> Result<Vec<Arc<TargetSetup>>> {
    let explicit = !names.is_empty();
    let registry = Registry::load(&ctx.home)?;
    let mut out = Vec::new();
    for target in ctx.profiles.select(names)? {
        let mut attempt = || -> Result<TargetSetup> {
            let toolchain = ctx.profiles.toolchain_of(target)?.clone();
            let mut trees = Vec::new();
            let mut broken = Vec::new();
            for r in trees_of(target, &registry) {
                match KernelTree::inspect(&r.kdir).and_then(|t| t.check_host_tools().map(|_| t)) {
                    Ok(t) => trees.push(Arc::new(t)),
                    Err(e) => broken.push(e),
                }
            }
            let trees = plan::filter_trees(trees, kernels);
            if trees.is_empty() {
                let err = match broken.into_iter().next() {
                    Some(e) => e,
                    None if !kernels.is_empty() => Error::env(format!("target `{}` has no kernel tree with release {}", target.name, kernels.join(" or "))).hint("`kmx kernels list` shows the releases kmx knows"),
                    None => Error::env(format!("target `{}` has no kernel tree", target.name)).hint(format!("run `kmx kernels fetch --target {}`, or list trees under [kernels] paths in {}", target.name, target.file.display())),
                };
                return Err(err);
            }
            for e in broken {
                notes.push(format!(
                    "warning: skipping a broken kernel tree of {}: {}",
                    target.name,
                    render(&e).trim_start_matches("error: ")
                ));
            }
            TargetSetup::new(target.clone(), toolchain, trees)
        };
        match attempt() {
            Ok(t) => out.push(Arc::new(t)),
            Err(e) if explicit => return Err(e),
            Err(e) => notes.push(format!(
                "note: leaving out target {}: {}",
                target.name,
                render(&e).trim_start_matches("error: ")
            )),
        }
    }
    if out.is_empty() {
        return Err(Error::env(format!(
            "no usable target among {}",
            DEFAULT_TARGETS.join(", ")
        ))
        .hint("`kmx doctor` says what each target lacks"));
    }
    Ok(out)
}

pub fn run(ctx: &Context, args: &BuildArgs) -> Result<i32> {
    let mut notes = Vec::new();
    let targets = setup_targets(ctx, &args.target, &args.kernel, &mut notes)?;
    for n in &notes {
        eprintln!("{n}");
    }
    let mut plan = plan::plan(&args.sources, &targets, &args.out)?;
    if let Some(spec) = &args.shard {
        let shard: Shard = spec.parse()?;
        let costs = match &args.costs {
            Some(path) => shard::costs_from(&Report::load(path)?),
            None => Default::default(),
        };
        plan = shard::select(&plan, shard, &costs);
        eprintln!(
            "Shard {shard}: {} of {} cells",
            plan.cells.len(),
            plan.total
        );
    }
    if let Some(why) = &plan.no_namespace {
        eprintln!(
            "warning: cells run without their private mount namespace ({why}): sources that \
             build against /lib/modules/<release>/build, /usr/src/<name>-<version> or \
             /var/lib/dkms/<name>/<version>/build will fail\n  \
             hint: run kmx as root, or allow user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        );
    }
    if args.dry_run {
        print_plan(&plan, args);
        return Ok(exit::OK);
    }
    let opts = ExecOptions {
        jobs: args.jobs,
        timeout: Duration::from_secs(args.timeout),
        fail_fast: args.fail_fast,
        launcher: args.launcher.as_ref().map(|w| w.0.clone()),
        cache: (!args.no_cache).then(|| Cache::new(ctx.home.cell_cache(), args.cache_size)),
        force: args.force,
    };
    let mut report = execute_plan(&plan, &opts)?;
    let mut code = report.exit_code();
    if args.smoke && code != exit::INTERRUPTED {
        let smoke_code = smoke_cells(ctx, &plan, &mut report, args.smoke_timeout)?;
        // The worst verdict wins: interrupted, then failed, then harness trouble.
        code = [exit::INTERRUPTED, exit::FAILED, exit::HARNESS]
            .into_iter()
            .find(|c| *c == code || *c == smoke_code)
            .unwrap_or(exit::OK);
        report.save(&plan.out)?;
    }
    eprint!("{}", report.render());
    if args.json {
        print_json(&report)?;
    }
    Ok(code)
}

/// `kmx build --smoke`: boot each (target, kernel) of the built cells once with all their
/// modules, and put each module's verdict into its cell's report. Returns `kmx smoke`'s
/// exit code for those boots.
fn smoke_cells(ctx: &Context, plan: &Plan, report: &mut Report, timeout: u64) -> Result<i32> {
    use std::collections::BTreeMap;
    let registry = Registry::load(&ctx.home)?;
    // (target, kdir) -> (tree, [(report position, modules)])
    type Group = (RegisteredTree, Vec<(usize, Vec<std::path::PathBuf>)>);
    let mut groups: BTreeMap<(String, std::path::PathBuf), Group> = BTreeMap::new();
    for (pos, (cell, rep)) in plan.cells.iter().zip(&report.cells).enumerate() {
        if rep.artifacts.is_empty() || !(rep.status == "built" || rep.status == "fresh") {
            continue;
        }
        let kdir = cell.tree.kdir.clone();
        let tree = registry
            .for_target(&cell.target.target.name)
            .find(|t| t.kdir == kdir)
            .cloned()
            .unwrap_or_else(|| RegisteredTree {
                target: cell.target.target.name.clone(),
                release: cell.tree.release.clone(),
                kdir: kdir.clone(),
                origin: cell.target.target.file.display().to_string(),
                boot: None,
            });
        let kos = rep.artifacts.iter().map(|a| a.file.clone()).collect();
        groups
            .entry((cell.target.target.name.clone(), kdir))
            .or_insert_with(|| (tree, Vec::new()))
            .1
            .push((pos, kos));
    }
    let mut jobs = Vec::new();
    let mut members = Vec::new();
    for ((target, _), (tree, cells)) in groups {
        let kos = cells.iter().flat_map(|(_, k)| k.iter().cloned()).collect();
        jobs.push(crate::smoke::Job::new(
            ctx.profiles.target(&target)?,
            &tree,
            kos,
        ));
        members.push(cells);
    }
    if jobs.is_empty() {
        return Ok(exit::OK);
    }
    eprintln!(
        "Booting {} kernel(s) under QEMU to load the built modules",
        jobs.len()
    );
    let stop = super::stop_flag()?;
    let opts = crate::smoke::Options {
        timeout: Duration::from_secs(timeout.max(1)),
        work_dir: ctx.home.root.join("smoke"),
    };
    let reports = crate::smoke::run(&jobs, &opts, &stop);
    for (target_report, cells) in reports.iter().zip(members) {
        for (pos, kos) in cells {
            let modules: Vec<&crate::smoke::ModuleReport> = target_report
                .modules
                .iter()
                .filter(|m| kos.contains(&m.path))
                .collect();
            let verdict = serde_json::json!({
                "status": target_report.status,
                "message": target_report.message,
                "console_log": target_report.console_log,
                "modules": modules,
            });
            if let Some(cell) = report.cells.get_mut(pos) {
                cell.smoke = Some(verdict);
            }
        }
    }
    Ok(super::smoke::exit_code(&reports))
}

/// How to run a plan: the knobs `kmx build` exposes, shared by `kmx install` and
/// `kmx autoinstall`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub jobs: Option<usize>,
    pub timeout: Duration,
    pub fail_fast: bool,
    pub launcher: Option<Vec<String>>,
    /// The build cache to reuse and fill; `None` builds without it.
    pub cache: Option<Cache>,
    /// Rebuild cells even when they are fresh.
    pub force: bool,
}

impl Default for ExecOptions {
    fn default() -> ExecOptions {
        ExecOptions {
            jobs: None,
            timeout: Duration::from_secs(1800),
            fail_fast: false,
            launcher: None,
            cache: None,
            force: false,
        }
    }
}

/// Run every cell of `plan` with live progress on stderr, write `<out>/report.json`, and
/// return the report. The build pipeline as a library call: `kmx build`, `kmx install` and
/// `kmx autoinstall` all come through here.
pub fn execute_plan(plan: &Plan, args: &ExecOptions) -> Result<Report> {
    let stop = super::stop_flag()?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let opts = Options {
        jobs,
        timeout: args.timeout,
        fail_fast: args.fail_fast,
        launcher: args.launcher.clone(),
        passthrough: passthrough_env(),
        cache: args.cache.clone(),
        force: args.force,
    };
    let summary = plan.summary();
    eprintln!(
        "Building {} cells ({} skipped by rules) with {jobs} jobs into {}",
        summary.to_build,
        summary.skipped,
        plan.out.display()
    );
    let started = Instant::now();
    let mut progress = Progress::new(plan.cells.len());
    let results = scheduler::execute(plan, &opts, &stop, &mut |ev| progress.event(plan, ev))?;
    progress.finish();
    let report = Report::new(plan, &results, started.elapsed().as_secs_f64());
    if let Some(cache) = &opts.cache {
        cache.trim();
    }
    report.save(&plan.out)?;
    Ok(report)
}

fn print_plan(plan: &Plan, args: &BuildArgs) {
    let env = |c: &plan::Cell| {
        cell::make_vars(
            c,
            &cell::cc_words(c, args.launcher.as_ref().map(|w| w.0.as_slice())),
        )
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::process::quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
    };
    for c in &plan.cells {
        println!("{}", c.label());
        match &c.action {
            Action::Skip(reason) => println!("  skip: {reason}"),
            Action::Build => {
                println!("  source:  {}", c.source.display());
                println!("  kdir:    {}", c.tree.kdir.display());
                println!("  make:    {}", cell::make_line(c));
                if c.view.is_some() {
                    println!(
                        "  in:      {} (private namespace: /lib/modules/{}/build is the kdir)",
                        c.step_dir().display(),
                        c.tree.release
                    );
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
        "{} cells: {} to build, {} skipped",
        s.cells, s.to_build, s.skipped
    );
}

/// Live progress: a bar on a terminal, plain lines otherwise. Failures print at once.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{pos}/{len}] {elapsed} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress {
            bar,
            total,
            done: 0,
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn event(&mut self, plan: &Plan, ev: &Event) {
        let running = match ev {
            Event::Started { running, .. } => running,
            Event::Finished {
                cell,
                result,
                running,
            } => {
                self.done += 1;
                let c = &plan.cells[*cell];
                let mut line = format!(
                    "[{}/{}] {:<11} {} ({:.1}s)",
                    self.done,
                    self.total,
                    result.outcome.word(),
                    c.label(),
                    result.duration.as_secs_f64()
                );
                if let cell::Outcome::Failed {
                    message, errors, ..
                } = &result.outcome
                {
                    line.push_str(&format!("\n  {message}"));
                    for e in errors.iter().take(3) {
                        line.push_str(&format!("\n    {e}"));
                    }
                    line.push_str(&format!("\n  log: {}", c.log.display()));
                }
                if let cell::Outcome::Skipped { reason } = &result.outcome {
                    line.push_str(&format!(": {reason}"));
                }
                self.line(&line);
                running
            }
        };
        if let Some(b) = &self.bar {
            b.set_position(self.done as u64);
            let names: Vec<String> = running
                .iter()
                .map(|&i| {
                    format!(
                        "{}/{}",
                        plan.cells[i].target.target.name, plan.cells[i].spec.name
                    )
                })
                .collect();
            b.set_message(format!("running: {}", names.join(", ")));
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `kmx cache stats` / `kmx cache clean`.
pub fn cache(ctx: &Context, cmd: &CacheCmd) -> Result<i32> {
    let cache = Cache::new(
        ctx.home.cell_cache(),
        crate::state::cache::DEFAULT_MAX_BYTES,
    );
    match cmd {
        CacheCmd::Stats => {
            let (n, bytes) = cache.stats();
            println!(
                "{n} cells, {:.1} MiB in {}",
                bytes as f64 / (1 << 20) as f64,
                cache.dir.display()
            );
        }
        CacheCmd::Clean { max_size } => {
            let (n, bytes) = cache.trim_to(max_size.unwrap_or(0));
            println!(
                "removed {n} cells, {:.1} MiB",
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
        print_json(&merged)?;
    }
    Ok(merged.exit_code())
}
