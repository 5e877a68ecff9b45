//! The build pipeline's one front door: resolve the targets, run a plan's cells on the
//! scheduler with the cell runner, write the report, and (with `--smoke`) boot the kernels
//! that load the built modules. `kmx build`, `kmx install` and `kmx autoinstall` all come
//! through here; they parse and print, this does the work and never prints (progress goes
//! to the caller's [`Progress`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Profiles;
use crate::config::load::DEFAULT_TARGETS;
use crate::config::manifest::Given;
use crate::error::{Error, Result, render_inline};
use crate::kernel::KernelTree;
use crate::kernel::registry::{RegisteredTree, Registry, installed_tree, trees_of, usable_tree};
use crate::kernel::select::{self, NoSuchTree, Purpose};
use crate::matrix::cell::{self, RunEnv};
use crate::matrix::jobserver::Jobserver;
use crate::matrix::report::CellSmoke;
use crate::matrix::scheduler::{self, Dag};
use crate::matrix::{inputs, plan, shard};
use crate::sandbox::Mode;
use crate::state::Home;

// What the callers name of the build matrix: the types of this door's calls, and how a
// planned cell's make runs (for `kmx build --dry-run` and the progress).
pub use crate::matrix::cell::{Artifact, CellStatus, Outcome, copy_tree, make_line};
// Where kernel trees' identities are kept between runs (`KMX_HOME/cache/trees`).
pub use crate::matrix::fingerprint::use_dir as keep_tree_identities_in;
pub use crate::matrix::options::Options;
pub use crate::matrix::plan::{Action, Cell, Plan, Shard, TargetSetup};
pub use crate::matrix::report::{CellReport, Report, count};
pub use crate::matrix::scheduler::Event;

/// Plan a build: a cell for every source, target and kernel tree, dependencies linked, each
/// with its inputs and fingerprint.
pub fn plan(
    sources: &[PathBuf],
    targets: &[Arc<TargetSetup>],
    out: &Path,
    mode: Mode,
) -> Result<Plan> {
    let sources: Vec<(PathBuf, Given)> = sources
        .iter()
        .map(|s| (s.clone(), Given::default()))
        .collect();
    plan_given(&sources, targets, out, mode)
}

/// [`plan`], each source with the name and version its caller gives (see [`Given`]).
pub fn plan_given(
    sources: &[(PathBuf, Given)],
    targets: &[Arc<TargetSetup>],
    out: &Path,
    mode: Mode,
) -> Result<Plan> {
    let (mut plan, digests) = plan::draft(sources, targets, out, mode)?;
    inputs::fingerprint(&mut plan.cells, &digests);
    Ok(plan)
}

/// The share `shard` of `plan` (`--shard I/N`), the cells dealt out by the durations of an
/// earlier report (`costs`, `--costs`) where given, else by the size of their sources.
pub fn shard(plan: &Plan, shard: Shard, costs: Option<&Path>) -> Result<Plan> {
    let costs = match costs {
        Some(path) => shard::costs_from(&Report::load(path)?),
        None => Default::default(),
    };
    Ok(shard::select(plan, shard, &costs))
}

/// Whether the run's makes share the calling make's jobserver (MAKEFLAGS), not kmx's own.
pub fn inherits_jobserver() -> bool {
    Jobserver::inherited()
}

/// The variables a planned cell's steps get ([`cell::make_vars`]), its compiler called
/// through `launcher` (`--launcher`) where given, else through its toolchain's.
pub fn make_env(c: &Cell, launcher: Option<&[String]>) -> Vec<(String, String)> {
    cell::make_vars(c, &cell::cc_words(c, launcher))
}

/// Where a run reports its progress (the commands print it; tests may ignore it).
pub trait Progress {
    /// The run starts: at most `jobs` cells at once, on the calling make's jobserver
    /// (`inherited`) or on kmx's own with `jobs` slots. `estimates`: per cell of the plan,
    /// how long its last build took, where known.
    fn begin(&mut self, plan: &Plan, jobs: usize, inherited: bool, estimates: &[Option<f64>]);
    fn event(&mut self, plan: &Plan, ev: &Event);
    fn end(&mut self);
}

/// Environment variables builds see: the basics plus compiler-cache and distcc settings.
/// Read once per run, never inside workers.
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

/// distcc's state directory as distcc resolves it (DISTCC_DIR, else `$HOME/.distcc`),
/// created when missing so the sandbox can show it writable.
fn distcc_dir(passthrough: &[(String, String)]) -> Option<PathBuf> {
    let var = |k: &str| passthrough.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let dir = match (var("DISTCC_DIR"), var("HOME")) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(home)) => Path::new(home).join(".distcc"),
        (None, None) => return None,
    };
    std::fs::create_dir_all(&dir).ok()?;
    dir.is_absolute().then_some(dir)
}

/// ccache's cache directory as ccache itself resolves it (CCACHE_DIR, its config files,
/// XDG_CACHE_HOME, HOME), created when missing so the sandbox can show it writable; `None`
/// when ccache cannot say (the steps then fail to cache, and the log says why).
fn ccache_dir(passthrough: &[(String, String)]) -> Option<PathBuf> {
    let out = std::process::Command::new("ccache")
        .args(["-k", "cache_dir"])
        .env_clear()
        .envs(passthrough.iter().map(|(k, v)| (k, v)))
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !dir.is_absolute() {
        return None;
    }
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// What setting up the targets left out, and why: the commands show these before the run.
#[derive(Debug)]
pub enum SetupNote {
    /// A tree of the target could not be read; its other trees build.
    BrokenTree { target: String, error: Error },
    /// A tree whose kernel's compiler this machine lacks; its other trees build.
    NoCompiler { target: String, error: Error },
    /// A target of the default set that cannot build; `missing_tree`: for want of a kernel
    /// tree (of the release asked for, or any).
    LeftOut {
        target: String,
        error: Error,
        missing_tree: bool,
    },
}

impl SetupNote {
    /// A default target left out for want of a tree: no news where the caller asked for a
    /// release only some targets have (`kmx autoinstall -k`).
    pub fn is_missing_tree(&self) -> bool {
        matches!(
            self,
            SetupNote::LeftOut {
                missing_tree: true,
                ..
            }
        )
    }
}

impl std::fmt::Display for SetupNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupNote::BrokenTree { target, error } => write!(
                f,
                "warning: skipping a broken kernel tree of {target}: {}",
                render_inline(error)
            ),
            SetupNote::NoCompiler { target, error } => write!(
                f,
                "warning: leaving out a kernel tree of {target}: {}",
                render_inline(error)
            ),
            SetupNote::LeftOut { target, error, .. } => write!(
                f,
                "note: leaving out target {target}: {}",
                render_inline(error)
            ),
        }
    }
}

/// Resolve the targets to build for. Explicitly named targets must be usable; from the
/// default set, unusable ones are left out with a note (in `notes`) saying why.
pub fn setup_targets(
    profiles: &Profiles,
    home: &Home,
    names: &[String],
    kernels: &[String],
    notes: &mut Vec<SetupNote>,
) -> Result<Vec<Arc<TargetSetup>>> {
    setup_targets_in(profiles, home, names, kernels, Path::new("/"), notes)
}

/// [`setup_targets`] with the kernels installed in `root` (`/`: this machine) as trees too.
/// An installed kernel is built for only when `kernels` names its release (`-k`, the
/// kernel hooks): a plain `kmx build` keeps to the fetched and profiled trees.
pub fn setup_targets_in(
    profiles: &Profiles,
    home: &Home,
    names: &[String],
    kernels: &[String],
    root: &Path,
    notes: &mut Vec<SetupNote>,
) -> Result<Vec<Arc<TargetSetup>>> {
    let explicit = !names.is_empty();
    let mut registry = Registry::load(home)?;
    if !kernels.is_empty() {
        registry.add_installed(profiles, root);
    }
    let mut out = Vec::new();
    // The releases of the targets that have trees, but none with a release of --kernel.
    let mut other_releases: Vec<NoSuchTree> = Vec::new();
    for target in profiles.select(names)? {
        let mut missing_tree = false;
        let mut attempt = || -> Result<TargetSetup> {
            let toolchain = profiles.toolchain_of(target)?.clone();
            let mut trees = Vec::new();
            let mut broken = Vec::new();
            let mut installed: Vec<String> = Vec::new();
            for r in trees_of(target, &registry) {
                let checked = match &r.installed {
                    Some(release) if !kernels.contains(release) => continue,
                    Some(release) => installed_tree(&r.kdir, release, target),
                    None => usable_tree(&r.kdir, target),
                };
                match checked {
                    // The machine's own headers stand for its kernel: a fetched or profiled
                    // tree of the same release is left out rather than built twice.
                    Ok(t) if r.installed.is_some() => {
                        trees.retain(|o: &Arc<KernelTree>| o.release != t.release);
                        installed.push(t.release.clone());
                        trees.push(Arc::new(t));
                    }
                    Ok(t) if installed.contains(&t.release) => {}
                    Ok(t) => trees.push(Arc::new(t)),
                    Err(e) => broken.push(e),
                }
            }
            let trees = match select::of_release(&target.name, trees, kernels, Purpose::Build) {
                Ok(trees) if !trees.is_empty() => trees,
                // None of the release asked for, or none at all: a broken tree's error
                // says more than that there is none.
                _ if !broken.is_empty() => return Err(broken.remove(0)),
                Err(missing) if !missing.have.is_empty() => {
                    other_releases.push(missing.clone());
                    missing_tree = true;
                    return Err(missing.elsewhere_in(&registry).into());
                }
                _ => {
                    missing_tree = true;
                    return Err(
                        Error::env(format!("target `{}` has no kernel tree", target.name))
                            .hint(target.no_tree_hint()),
                    );
                }
            };
            for error in broken {
                notes.push(SetupNote::BrokenTree {
                    target: target.name.clone(),
                    error,
                });
            }
            // A tree whose kernel's compiler this machine lacks is left out, not built with
            // another gcc; the target's other trees still build.
            let (setup, refused) = TargetSetup::new(target.clone(), toolchain, trees)?;
            for error in refused {
                notes.push(SetupNote::NoCompiler {
                    target: target.name.clone(),
                    error,
                });
            }
            Ok(setup)
        };
        match attempt() {
            Ok(t) => out.push(Arc::new(t)),
            Err(e) if explicit => return Err(e),
            Err(error) => notes.push(SetupNote::LeftOut {
                target: target.name.clone(),
                error,
                missing_tree,
            }),
        }
    }
    if out.is_empty()
        && let Some(missing) = NoSuchTree::across(other_releases)
    {
        // Every target has trees, just not of the release asked for: say which exist.
        return Err(missing.into());
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

impl Dag for Plan {
    fn len(&self) -> usize {
        self.cells.len()
    }
    fn deps(&self, i: usize) -> &[usize] {
        &self.cells[i].deps
    }
    fn skip(&self, i: usize) -> Option<&str> {
        match &self.cells[i].action {
            Action::Skip(reason) => Some(reason),
            Action::Build => None,
        }
    }
    fn label(&self, i: usize) -> String {
        self.cells[i].label()
    }
}

/// Hold the output directory for one run: two runs into one `--out` would share every
/// cell's work directory and log (one failed with the other's output, naming a build
/// directory the other had removed). The second waits, saying so, and then finds the
/// first's cells fresh. A lock on the directory itself (flock), so nothing is added to it;
/// the kernel drops it when kmx dies.
fn lock_out(out: &Path) -> Result<std::fs::File> {
    use fs4::FileExt;
    std::fs::create_dir_all(out).map_err(|e| Error::io("create directory", out, e))?;
    let dir = std::fs::File::open(out).map_err(|e| Error::io("open", out, e))?;
    match FileExt::try_lock(&dir) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            eprintln!(
                "kmx: waiting for another kmx building into {}",
                out.display()
            );
            FileExt::lock(&dir).map_err(|e| Error::io("lock", out, e))?;
        }
        Err(fs4::TryLockError::Error(e)) => return Err(Error::io("lock", out, e)),
    }
    Ok(dir)
}

/// When the run began: set by the first call (the binary's first instruction), so the
/// report's wall time covers planning (dkms.conf evaluations, fingerprints) as well as the
/// cells.
pub fn run_started() -> Instant {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// Run every cell of `plan`, write `<out>/report.json`, and return the report.
pub fn execute(
    plan: &Plan,
    opts: &Options,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<Report> {
    let _out = lock_out(&plan.out)?;
    let jobs = opts.jobs();
    let jobserver = Jobserver::for_run(jobs)?;
    let mut passthrough = passthrough_env();
    if let Some(cache) = &opts.compiler_cache {
        crate::config::ccache::with_cache_env(&mut passthrough, cache);
    }
    // The launchers any cell runs its compiler through, once for the run.
    let launchers: std::collections::BTreeSet<String> = plan
        .cells
        .iter()
        .flat_map(|c| crate::matrix::cell::launcher_names(c, opts.launcher.as_deref()))
        .collect();
    let uses = |names: &[&str]| !opts.open_sandbox && names.iter().any(|n| launchers.contains(*n));
    let ccache_dir = match &opts.compiler_cache {
        // kmx's own: known without asking ccache (a no-op run starts no process).
        Some(cache) if uses(&["ccache"]) => std::fs::create_dir_all(&cache.dir)
            .ok()
            .map(|()| cache.dir.clone()),
        _ => uses(&["ccache"])
            .then(|| ccache_dir(&passthrough))
            .flatten(),
    };
    let distcc_dir = uses(&["distcc", "pump"])
        .then(|| distcc_dir(&passthrough))
        .flatten();
    let env = RunEnv {
        jobserver: &jobserver,
        opts,
        stop,
        ccache_dir,
        distcc_dir,
        passthrough,
        tree_symbols: plan
            .cells
            .iter()
            .map(|c| (c.tree.kdir.clone(), OnceLock::new()))
            .collect::<HashMap<_, _>>(),
    };
    let run = |i: usize| {
        let c = &plan.cells[i];
        let deps_symvers: Vec<PathBuf> = c
            .deps
            .iter()
            .map(|&d| plan.cells[d].out_dir.join("Module.symvers"))
            .collect();
        cell::run(c, &env, &deps_symvers)
    };
    let mut durations = opts
        .durations
        .as_deref()
        .map(crate::state::durations::Durations::load);
    let estimates: Vec<Option<f64>> = plan
        .cells
        .iter()
        .map(|c| durations.as_ref().and_then(|d| d.get(&c.label())))
        .collect();
    progress.begin(plan, jobs, jobserver.is_inherited(), &estimates);
    let started = run_started();
    let results = scheduler::execute(plan, jobs, opts.fail_fast, stop, &run, &mut |ev| {
        progress.event(plan, ev)
    })?;
    progress.end();
    // Every cell's build tree is gone unless one was kept: then so is the work directory.
    let _ = std::fs::remove_dir(plan.out.join(".work"));
    let report = Report::new(plan, &results, started.elapsed().as_secs_f64());
    if let Some(d) = &mut durations {
        // Only cells that ran make: a reused cell's few milliseconds say nothing of a build.
        let mut built = false;
        for (c, r) in plan.cells.iter().zip(&results) {
            if r.outcome.status() == crate::matrix::cell::CellStatus::Built {
                d.set(&c.label(), r.duration.as_secs_f64());
                built = true;
            }
        }
        // An estimate lost costs nothing but the estimate; a run that built nothing has
        // nothing new to say (and a no-op run writes only its report).
        if built {
            let _ = d.save();
        }
    }
    if let Some(cache) = &opts.cache {
        cache.trim();
    }
    report.save(&plan.out)?;
    Ok(report)
}

/// `kmx build --smoke`: boot each (target, kernel) of the built cells once with all their
/// modules, put each module's verdict into its cell's report and save it. Returns the boots'
/// reports (empty when no cell built a module).
pub fn smoke(
    profiles: &Profiles,
    home: &Home,
    plan: &Plan,
    report: &mut Report,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Vec<crate::smoke::TargetReport>> {
    let registry = Registry::load(home)?;
    // (target, kdir) -> (tree, [(report position, modules)])
    type Group = (RegisteredTree, Vec<(usize, Vec<PathBuf>)>);
    let mut groups: BTreeMap<(String, PathBuf), Group> = BTreeMap::new();
    for (pos, (cell, rep)) in plan.cells.iter().zip(&report.cells).enumerate() {
        if rep.artifacts.is_empty() || !rep.status.has_modules() {
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
                source: None,
                abi: None,
                boot: None,
                installed: false,
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
            profiles.target(&target)?,
            &tree,
            kos,
        ));
        members.push(cells);
    }
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let opts = crate::smoke::Options {
        timeout: timeout.max(Duration::from_secs(1)),
        work_dir: home.root.join("smoke"),
    };
    let reports = crate::smoke::run(&jobs, &opts, stop);
    for (target_report, cells) in reports.iter().zip(members) {
        for (pos, kos) in cells {
            let modules = target_report
                .modules
                .iter()
                .filter(|m| kos.contains(&m.path))
                .cloned()
                .collect();
            if let Some(cell) = report.cells.get_mut(pos) {
                cell.smoke = Some(CellSmoke {
                    status: target_report.status,
                    message: target_report.message.clone(),
                    hint: target_report.hint.clone(),
                    console_log: target_report.console_log.clone(),
                    modules,
                });
            }
        }
    }
    report.save(&plan.out)?;
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_notes_render_as_before_and_say_which_are_for_want_of_a_tree() {
        let error = || Error::env("no arm-linux-gnueabihf-gcc-12").hint("apt-get install gcc-12");
        let notes = [
            SetupNote::BrokenTree {
                target: "arm64".into(),
                error: error(),
            },
            SetupNote::NoCompiler {
                target: "armhf".into(),
                error: error(),
            },
            SetupNote::LeftOut {
                target: "rpi".into(),
                error: Error::env("target `rpi` has no kernel tree"),
                missing_tree: true,
            },
            SetupNote::LeftOut {
                target: "i386".into(),
                error: error(),
                missing_tree: false,
            },
        ];
        let shown: Vec<String> = notes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "warning: skipping a broken kernel tree of arm64: no arm-linux-gnueabihf-gcc-12\n  hint: apt-get install gcc-12",
                "warning: leaving out a kernel tree of armhf: no arm-linux-gnueabihf-gcc-12\n  hint: apt-get install gcc-12",
                "note: leaving out target rpi: target `rpi` has no kernel tree",
                "note: leaving out target i386: no arm-linux-gnueabihf-gcc-12\n  hint: apt-get install gcc-12",
            ]
        );
        let missing: Vec<bool> = notes.iter().map(SetupNote::is_missing_tree).collect();
        assert_eq!(missing, [false, false, true, false]);
    }
}
