//! Running one cell: copy the source into the cell's own work directory, apply patches, run
//! PRE_BUILD, make, POST_BUILD, copy every expected module out of the build directory
//! without following a link ([`super::collect`]), strip and check each copy (ELF identity
//! and vermagic), then move the finished cell into place in one rename.
//!
//! A cell never prints: everything its commands say goes to its log file, and its outcome is
//! returned to the scheduler. Every child runs under [`process::run_supervised`], so a
//! timeout or Ctrl-C kills the whole process group.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::digest::sha256_file;
use crate::error::{Error, Result};
use crate::kernel::symvers::Symvers;
use crate::matrix::collect;
use crate::matrix::jobserver::Jobserver;
use crate::matrix::options::Options;
use crate::matrix::plan::Cell;
use crate::matrix::provenance::{self, Provenance};
use crate::process::{self, Ended};
use crate::sandbox::Policy;
use crate::state::cache::{Cache, Miss};
use crate::verify::checks::{Others, TreeSymbols};

/// Everything a cell needs from the run, the same for every cell.
pub struct RunEnv<'a> {
    pub jobserver: &'a Jobserver,
    /// The run's options (timeout, launcher, cache, force).
    pub opts: &'a Options,
    pub stop: &'a AtomicBool,
    /// Environment passed through to builds (PATH, HOME, CCACHE_*, DISTCC_*, ...), read once.
    pub passthrough: Vec<(String, String)>,
    /// Each kernel tree's `Module.symvers`, parsed by the first cell that needs it and
    /// shared by every other cell of that tree (keyed by KDIR).
    pub tree_symbols: HashMap<PathBuf, OnceLock<LoadedSymbols>>,
    /// ccache's cache directory, when a cell's launcher is ccache: it stays writable in the
    /// sandbox.
    pub ccache_dir: Option<PathBuf>,
    /// distcc's state directory (DISTCC_DIR, or ~/.distcc), when a cell's launcher is distcc
    /// or pump: distcc writes its locks there.
    pub distcc_dir: Option<PathBuf>,
}

/// Launchers that compile elsewhere (or through a local server): their cells keep the
/// network.
const NETWORK_LAUNCHERS: &[&str] = &["distcc", "pump", "icecc", "sccache"];

/// The file names of the launcher words before `cell`'s compiler (`ccache`, `distcc`).
pub fn launcher_names(cell: &Cell, launcher: Option<&[String]>) -> Vec<String> {
    let words = cc_words(cell, launcher);
    words[..words.len() - 1]
        .iter()
        .map(|w| {
            Path::new(w)
                .file_name()
                .map_or_else(|| w.clone(), |n| n.to_string_lossy().into_owned())
        })
        .collect()
}

/// A tree's parsed `Module.symvers` (`None`: the tree has none), or why it could not be read.
pub type LoadedSymbols = Result<Option<Arc<TreeSymbols>>, String>;

impl RunEnv<'_> {
    /// How far `cell`'s build steps are confined ([`crate::sandbox`]).
    fn policy(&self, cell: &Cell) -> Policy {
        if self.opts.open_sandbox {
            return Policy::open();
        }
        let names = launcher_names(cell, self.opts.launcher.as_deref());
        let mut policy = Policy::strict();
        policy.network = names
            .iter()
            .any(|n| NETWORK_LAUNCHERS.contains(&n.as_str()));
        if names.iter().any(|n| n == "ccache") {
            policy.writable.extend(self.ccache_dir_of(cell));
        }
        if names.iter().any(|n| n == "distcc" || n == "pump") {
            policy.writable.extend(self.distcc_dir.iter().cloned());
        }
        if names.iter().any(|n| n == "icecc") {
            // The local iceccd's socket.
            policy.shown.push(PathBuf::from("/run/icecc"));
        }
        policy
    }

    /// The ccache directory `cell`'s steps write: its module's own with kmx's compiler
    /// cache, else the caller's.
    fn ccache_dir_of(&self, cell: &Cell) -> Option<PathBuf> {
        match &self.opts.compiler_cache {
            Some(cache) => Some(cache.dir_for(&cell.spec.name)),
            None => self.ccache_dir.clone(),
        }
    }

    /// The parsed `Module.symvers` of `tree`, loaded once per run.
    fn symbols_of(&self, tree: &crate::kernel::KernelTree) -> Result<Option<Arc<TreeSymbols>>> {
        let load = || {
            TreeSymbols::load(tree)
                .map(|s| s.map(Arc::new))
                .map_err(|e| crate::error::render_inline(&e))
        };
        let loaded = match self.tree_symbols.get(&tree.kdir) {
            Some(once) => once.get_or_init(load).clone(),
            None => load(),
        };
        loaded.map_err(Error::failed)
    }
}

/// `cell.json` in a finished cell's directory: which inputs made it, and its files
/// (`docs/schemas/kmx.cell-1.json`).
#[derive(Debug, Serialize, serde::Deserialize)]
struct CellRecord {
    /// `kmx.cell/1`; records written before it was named have none, the same format.
    #[serde(default = "cell_schema")]
    schema: String,
    fingerprint: String,
    artifacts: Vec<Artifact>,
    /// Every file of the cell that the cache keeps (the .ko files, Module.symvers, make.log).
    files: Vec<String>,
    build_secs: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn cell_schema() -> String {
    "kmx.cell/1".into()
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Artifact {
    pub file: PathBuf,
    pub sha256: String,
}

/// How a cell ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Built now, or (`fresh`) unchanged since a stored build and reused without running make:
    /// left untouched in the output directory, or (`restored`) copied from the build cache.
    Built {
        artifacts: Vec<Artifact>,
        fresh: bool,
        restored: bool,
        /// What went wrong without failing the cell (a PRE_BUILD that exited non-zero).
        warnings: Vec<String>,
    },
    Skipped {
        reason: String,
    },
    Failed {
        stage: Stage,
        message: String,
        errors: Vec<String>,
        exit_code: Option<i32>,
        /// The cell's build tree, kept for a look at what failed.
        build_dir: Option<PathBuf>,
    },
    /// Not attempted because a dependency did not build.
    DependencyFailed {
        dependency: String,
    },
    Interrupted,
    /// Not started because an earlier cell failed and `--fail-fast` was given.
    Cancelled,
}

impl Outcome {
    pub fn status(&self) -> CellStatus {
        match self {
            Outcome::Built { restored: true, .. } => CellStatus::Restored,
            Outcome::Built { fresh: true, .. } => CellStatus::Fresh,
            Outcome::Built { .. } => CellStatus::Built,
            Outcome::Skipped { .. } => CellStatus::Skipped,
            Outcome::Failed { .. } => CellStatus::Failed,
            Outcome::DependencyFailed { .. } => CellStatus::DependencyFailed,
            Outcome::Interrupted => CellStatus::Interrupted,
            Outcome::Cancelled => CellStatus::Cancelled,
        }
    }
}

/// How a cell ended, without the details: what the report's `status` field holds (its JSON
/// names are the serde names below) and what the screen shows ([`CellStatus::word`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Built,
    /// Unchanged since a stored build: its output directory reused untouched.
    Fresh,
    /// Unchanged since a stored build: copied from the build cache without running make.
    Restored,
    Skipped,
    Failed,
    DependencyFailed,
    Interrupted,
    /// Not started after a failure under `--fail-fast`.
    Cancelled,
}

impl CellStatus {
    /// The word on screen, in progress lines and the summary table alike.
    pub fn word(self) -> &'static str {
        match self {
            CellStatus::Built => "built",
            CellStatus::Fresh => "fresh",
            CellStatus::Restored => "restored",
            CellStatus::Skipped => "skipped",
            CellStatus::Failed => "FAILED",
            CellStatus::DependencyFailed => "dep-failed",
            CellStatus::Interrupted => "interrupted",
            CellStatus::Cancelled => "cancelled",
        }
    }
    /// Built now or reused: the cell's modules are there.
    pub fn has_modules(self) -> bool {
        matches!(
            self,
            CellStatus::Built | CellStatus::Fresh | CellStatus::Restored
        )
    }
    /// Failed itself or because a dependency did.
    pub fn is_failed(self) -> bool {
        matches!(self, CellStatus::Failed | CellStatus::DependencyFailed)
    }
}

/// The step of a cell's build that failed: its word is the report's `stage`, the log's
/// `# <stage>:` lines and the start of the cell's error (`make failed: exit status 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Work directory, log, source copy, and what the build needs on the host.
    #[serde(rename = "prepare")]
    Prepare,
    #[serde(rename = "patch")]
    Patch,
    #[serde(rename = "PRE_BUILD")]
    PreBuild,
    #[serde(rename = "make")]
    Make,
    #[serde(rename = "POST_BUILD")]
    PostBuild,
    #[serde(rename = "strip")]
    Strip,
    /// The modules' load checks against the kernel and their symbols.
    #[serde(rename = "check")]
    Check,
    /// Modules copied out of the build tree, hashed, and the cell moved into place.
    #[serde(rename = "collect")]
    Collect,
    /// kmx itself failed (a worker panicked).
    #[serde(rename = "internal")]
    Internal,
}

impl Stage {
    pub fn word(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Patch => "patch",
            Stage::PreBuild => "PRE_BUILD",
            Stage::Make => "make",
            Stage::PostBuild => "POST_BUILD",
            Stage::Strip => "strip",
            Stage::Check => "check",
            Stage::Collect => "collect",
            Stage::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// A failed stage: what failed, and whether the log holds compiler errors worth showing.
struct StageError {
    stage: Stage,
    message: String,
    /// How a step that exited ended, without the stage in front (`exit status 2`): what a
    /// PRE_BUILD or POST_BUILD warning says. `None` for a step that did not exit.
    ended: Option<String>,
    exit_code: Option<i32>,
    interrupted: bool,
}

/// The test hook ([`process::pause_for_tests`]): after the pause at `point`, before
/// `stage`, the cell ends interrupted.
fn test_pause(point: &'static str, stage: Stage) -> Result<(), StageError> {
    let asked = std::env::var("KMX_TEST_PAUSE_AT").ok();
    match process::pause_for_tests(asked.as_deref(), point) {
        true => Err(StageError {
            stage,
            message: format!("interrupted at {point}"),
            ended: None,
            exit_code: None,
            interrupted: true,
        }),
        false => Ok(()),
    }
}

fn stage_err(stage: Stage, e: Error) -> StageError {
    StageError {
        stage,
        message: crate::error::render_inline(&e),
        ended: None,
        exit_code: None,
        interrupted: false,
    }
}

/// The compiler command for a cell: launcher words + compiler name.
/// `launcher` (from `--launcher`) overrides the toolchain profile's.
pub fn cc_words(cell: &Cell, launcher: Option<&[String]>) -> Vec<String> {
    // A toolchain root holds no launcher: its compiler runs alone.
    if cell.compiler().root.is_some() {
        return vec![cell.compiler().name.clone()];
    }
    let mut words = launcher
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| cell.target.toolchain.launcher.clone());
    words.push(cell.compiler().name.clone());
    words
}

/// [`cc_words`] as a cell runs them: kmx's compiler cache through its module's wrapper
/// ([`crate::config::ccache::CompilerCache::wrapper_for`]), whose settings survive a step
/// that empties the environment.
fn run_cc_words(cell: &Cell, env: &RunEnv) -> Vec<String> {
    let mut words = cc_words(cell, env.opts.launcher.as_deref());
    if let Some(cache) = &env.opts.compiler_cache
        && words.first().map(String::as_str) == Some(crate::config::ccache::CCACHE)
        && let Ok(wrapper) = cache.wrapper_for(&cell.spec.name)
    {
        words[0] = wrapper.to_string_lossy().into_owned();
    }
    words
}

/// The variables kmx adds to the environment of a cell's steps (MAKE, PRE_BUILD, POST_BUILD),
/// which is otherwise the caller's, filtered ([`RunEnv::passthrough`]). It is DKMS's: DKMS
/// exports `CC` (the tree's compiler, from `.kernelvariables`) and, because it calls its build
/// function as `module=… module_version=… kernelver=… arch=… do_build`, those four (not
/// `kernel_source_dir`, not `KERNELRELEASE`: DKMS puts `KERNELRELEASE=` on the command line of a
/// MAKE line that starts with `make`, see [`make_line`]). To those, only what cross-building
/// and reproducible bytes need: `ARCH` and `CROSS_COMPILE` (kbuild reads both from the
/// environment), `KCFLAGS` (the path maps of [`prefix_maps`]; kbuild reads it from the
/// environment, and a package's own `KCFLAGS` still wins), and `KBUILD_BUILD_TIMESTAMP` where
/// the tree makes BTF (kbuild's switch for reproducible builds: pahole runs without `-j`,
/// whose output depends on thread timing). The jobserver travels in MAKEFLAGS (see
/// [`make_cmdline_vars`]). `tests/it/build.rs` compares this, variable by variable, with
/// the environment real DKMS gives the same MAKE line.
pub fn make_vars(cell: &Cell, cc: &[String]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("ARCH".into(), cell.target.target.kernel_arch.clone()),
        (
            "CROSS_COMPILE".into(),
            cell.target.toolchain.cross_compile.clone(),
        ),
        ("CC".into(), cc.join(" ")),
        ("kernelver".into(), cell.tree.release.clone()),
        ("arch".into(), cell.target.target.dkms_arch.clone()),
        ("module".into(), cell.spec.name.clone()),
        ("module_version".into(), cell.spec.version.clone()),
        ("KCFLAGS".into(), prefix_maps(cell)),
    ];
    if makes_btf(&cell.tree) {
        vars.push(("KBUILD_BUILD_TIMESTAMP".into(), BUILD_TIMESTAMP.into()));
    }
    // kmx.toml's command lines are expanded by bash when they run (a dkms.conf's were when
    // the file was sourced): its documented `$kernel_source_dir` comes from here.
    if cell.spec.format == crate::config::manifest::Format::KmxToml {
        vars.push((
            "kernel_source_dir".into(),
            cell.tree.kdir.to_string_lossy().into_owned(),
        ));
    }
    vars
}

/// What kmx gives `KBUILD_BUILD_TIMESTAMP` when the caller does not (see [`make_vars`]).
const BUILD_TIMESTAMP: &str = "1970-01-01 00:00:00 UTC";

/// Whether kbuild adds BTF to the tree's modules (CONFIG_DEBUG_INFO_BTF_MODULES, with the
/// tree's `vmlinux` as the base; without it kbuild prints "Skipping BTF generation").
pub fn makes_btf(tree: &crate::kernel::KernelTree) -> bool {
    tree.config.builtin("CONFIG_DEBUG_INFO_BTF_MODULES") && tree.kdir.join("vmlinux").is_file()
}

/// Command-line variables for every make of the cell (after `--` in MAKEFLAGS): only `CC`,
/// and only where kmx calls another compiler than kbuild would by itself (a launcher such as
/// ccache, a profile's `cc`, a tree without `.kernelvariables` whose kernel was built with a
/// versioned gcc). Anything else there would override a package's own Makefile variables in
/// every make of its MAKE line, which DKMS never does.
pub fn make_cmdline_vars(cell: &Cell, cc: &[String]) -> Vec<(String, String)> {
    let tc = &cell.target.toolchain;
    let kbuild_own = match cell.tree.kdir.join(".kernelvariables").is_file() {
        true => format!(
            "{}{}",
            tc.cross_compile,
            cell.tree.compiler.as_deref().unwrap_or("gcc")
        ),
        false => format!("{}gcc", tc.cross_compile),
    };
    if cc.len() == 1 && cc[0] == kbuild_own {
        return Vec::new();
    }
    vec![("CC".into(), cc.join(" "))]
}

/// Reproducible bytes wherever the tree and the cell are on the host: the compiler records
/// the tree's directory and its siblings (Debian's `-common` half holds the headers) and,
/// without a namespace, the cell's build directory in the debug information the linker
/// hashes into the build ID, so they are mapped to the paths DKMS would use
/// (`/usr/src/<tree>`, `/var/lib/dkms/<name>/<version>/build`).
fn prefix_maps(cell: &Cell) -> String {
    let mut maps = vec![format!(
        "-fdebug-prefix-map={}=/usr/src",
        trees_dir(&cell.tree).display()
    )];
    if cell.view.is_none() {
        maps.push(format!(
            "-ffile-prefix-map={}={}",
            cell.build_dir().display(),
            crate::sandbox::build_dir(&cell.spec.name, &cell.spec.version).display()
        ));
    }
    maps.join(" ")
}

/// The directory holding a tree and its siblings (as the compiler sees it: symbolic links
/// resolved), which [`make_vars`] maps to `/usr/src`.
pub fn trees_dir(tree: &crate::kernel::KernelTree) -> PathBuf {
    let kdir = tree
        .kdir
        .canonicalize()
        .unwrap_or_else(|_| tree.kdir.clone());
    kdir.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// The make invocation (a shell command line) for a cell, as DKMS runs it: a line that
/// starts with `make` gets `KERNELRELEASE=<release>` after that word (DKMS's
/// `${make_command/#make/make -jN KERNELRELEASE=$kernelver}`, a plain prefix match, so
/// `makefoo` is rewritten too, as in DKMS); any other line runs as written, and its makes
/// see no KERNELRELEASE (a two-pass Makefile's `ifndef KERNELRELEASE` branch runs). DKMS's
/// `-jN` is the jobserver here.
pub fn make_line(cell: &Cell) -> String {
    let line = match &cell.spec.make {
        Some(line) => line.clone(),
        None => format!(
            "make -C {} M={} modules",
            process::quote(&cell.tree.kdir.to_string_lossy()),
            process::quote(&cell.step_dir().to_string_lossy())
        ),
    };
    match line.strip_prefix("make") {
        Some(rest) => format!(
            "make KERNELRELEASE={}{rest}",
            process::quote(&cell.tree.release)
        ),
        None => line,
    }
}

/// `VAR=value` words for MAKEFLAGS, spaces escaped as make expects.
fn makeflags_vars(vars: &[(String, String)]) -> String {
    vars.iter()
        .map(|(k, v)| format!("{k}={}", v.replace('\\', "\\\\").replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command run by bash in the build directory with the cell's environment: inside the
/// cell's private namespace where it has one ([`crate::sandbox`]) and `where_`
/// asks for it.
fn shell(
    cell: &Cell,
    env: &RunEnv,
    line: &str,
    deps_symvers: &[PathBuf],
    where_: Where,
) -> Command {
    let extra_symbols = deps_symvers
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let extra_symbols = extra_symbols.as_str();
    match (&cell.view, where_) {
        (Some(view), Where::Cell) => {
            let mut view = view.clone();
            view.policy = env.policy(cell);
            view.policy.shown.extend(deps_symvers.iter().cloned());
            let private_tmp = view.policy.confined;
            let mut cmd = with_cell_env(
                view.command(&cell.step_dir(), line),
                cell,
                env,
                extra_symbols,
            );
            if private_tmp {
                // The caller's TMPDIR may lie on the read-only host: /tmp is the step's own.
                cmd.env("TMPDIR", "/tmp");
            }
            cmd
        }
        _ => {
            let mut cmd = Command::new("bash");
            cmd.arg("-c").arg(line);
            with_cell_env(cmd, cell, env, extra_symbols)
        }
    }
}

/// Where a step runs: the package's own steps in the cell's namespace; kmx's steps on the
/// files it collects (strip) on the host, where their writes land.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    Cell,
    Host,
}

/// The clean environment every step of a cell runs in, from its build directory.
fn with_cell_env(mut cmd: Command, cell: &Cell, env: &RunEnv, extra_symbols: &str) -> Command {
    cmd.current_dir(cell.build_dir()).env_clear();
    for (k, v) in &env.passthrough {
        cmd.env(k, v);
    }
    cmd.env("LC_ALL", "C");
    if let Some(cache) = &env.opts.compiler_cache {
        cmd.env("CCACHE_DIR", cache.dir_for(&cell.spec.name));
    }
    let cc = run_cc_words(cell, env);
    for (k, v) in make_vars(cell, &cc) {
        // The caller's KBUILD_BUILD_TIMESTAMP wins over kmx's.
        if !(k == "KBUILD_BUILD_TIMESTAMP" && env.passthrough.iter().any(|(p, _)| *p == k)) {
            cmd.env(k, v);
        }
    }
    if !extra_symbols.is_empty() {
        cmd.env("KBUILD_EXTRA_SYMBOLS", extra_symbols);
    }
    cmd
}

/// Run one cell to completion. `deps_symvers`: Module.symvers files of built dependencies.
pub fn run(cell: &Cell, env: &RunEnv, deps_symvers: &[PathBuf]) -> (Outcome, String) {
    let command = make_line(cell);
    let mut notes = Vec::new();
    if !env.opts.force {
        let fresh = |(artifacts, warnings), restored| {
            (
                Outcome::Built {
                    artifacts,
                    fresh: true,
                    restored,
                    warnings,
                },
                command.clone(),
            )
        };
        if let Some(found) = fresh_in_place(cell) {
            if !env.opts.keep_build_dir {
                // What a build stopped between its rename and its clean-up left.
                let _ = std::fs::remove_dir_all(&cell.work_dir);
            }
            return fresh(found, false);
        }
        match env.opts.cache.as_ref().map(|c| restore(cell, c)) {
            Some(Ok(artifacts)) => return fresh((artifacts, Vec::new()), true),
            Some(Err(Some(why))) => {
                notes.push(format!("cache entry was damaged and is rebuilt: {why}"))
            }
            _ => {}
        }
    }
    let outcome = match run_stages(cell, env, deps_symvers, &command, &notes) {
        Ok((artifacts, warnings)) => {
            if !env.opts.keep_build_dir {
                // The modules are in place; the build tree is of no more use.
                let _ = std::fs::remove_dir_all(&cell.work_dir);
            }
            Outcome::Built {
                artifacts,
                fresh: false,
                restored: false,
                warnings,
            }
        }
        Err(e) if e.interrupted => Outcome::Interrupted,
        Err(e) => Outcome::Failed {
            stage: e.stage,
            message: e.message,
            errors: first_errors(
                &cell.log,
                &[&cell.step_dir(), &cell.build_dir()],
                &cell.source,
                5,
            ),
            exit_code: e.exit_code,
            build_dir: Some(cell.build_dir()).filter(|d| d.is_dir()),
        },
    };
    (outcome, command)
}

fn run_stages(
    cell: &Cell,
    env: &RunEnv,
    deps_symvers: &[PathBuf],
    command: &str,
    notes: &[String],
) -> Result<(Vec<Artifact>, Vec<String>), StageError> {
    let started = Instant::now();
    let mut log = prepare_work(cell)?;
    let cc = run_cc_words(cell, env);
    let cmdline_vars = make_cmdline_vars(cell, &cc);
    log_header(&mut log, cell, &cc, notes);
    apply_patches(cell, env, &mut log)?;
    require_pahole(cell, env)?;
    let mut warnings = Vec::new();
    if let Some(pre) = &cell.spec.pre_build {
        warnings.extend(build_script(cell, env, &mut log, Stage::PreBuild, pre)?);
    }
    run_make(cell, env, &mut log, command, deps_symvers, &cmdline_vars)?;
    if let Some(post) = &cell.spec.post_build {
        warnings.extend(build_script(cell, env, &mut log, Stage::PostBuild, post)?);
    }
    test_pause("before-strip", Stage::Strip)?;
    let stage = cell.stage_dir();
    let artifacts = collect_and_check(cell, env, &mut log, deps_symvers, &stage)?;
    let build_secs = started.elapsed().as_secs_f64();
    let _ = writeln!(log, "# built in {build_secs:.1}s");
    drop(log);
    let _ = std::fs::copy(&cell.log, stage.join("make.log"));
    finish(cell, env, &stage, &artifacts, &warnings, build_secs)?;
    Ok((artifacts, warnings))
}

fn create_dir(p: &Path) -> Result<(), StageError> {
    std::fs::create_dir_all(p)
        .map_err(|e| stage_err(Stage::Prepare, Error::io("create directory", p, e)))
}

/// A fresh work directory holding a copy of the source, DKMS's tree in it (a copy at
/// `/usr/src/<name>-<version>` for the namespace, or links without one), and a new log.
fn prepare_work(cell: &Cell) -> Result<File, StageError> {
    let _ = std::fs::remove_dir_all(&cell.work_dir);
    create_dir(&cell.work_dir)?;
    if let Some(parent) = cell.log.parent() {
        create_dir(parent)?;
    }
    let log = File::create(&cell.log)
        .map_err(|e| stage_err(Stage::Prepare, Error::io("create", &cell.log, e)))?;
    copy_tree(&cell.source, &cell.build_dir()).map_err(|e| stage_err(Stage::Prepare, e))?;
    match &cell.view {
        // The namespace shows a copy of its own at /usr/src/<name>-<version>.
        Some(view) => {
            copy_tree(&cell.source, &view.source).map_err(|e| stage_err(Stage::Prepare, e))?;
        }
        // No namespace: $dkms_tree/<module>/<version>/build links to the build directory.
        None => link_dkms_tree(cell).map_err(|e| stage_err(Stage::Prepare, e))?,
    }
    Ok(log)
}

/// The log's first lines: the cell, its tree and compiler, what the manifest's evaluation
/// said, the run's notes and the manifest's warnings.
fn log_header(log: &mut File, cell: &Cell, cc: &[String], notes: &[String]) {
    let _ = writeln!(log, "# kmx build of {}", cell.label());
    let _ = writeln!(log, "# kernel tree: {}", cell.tree.kdir.display());
    let _ = writeln!(
        log,
        "# compiler: {} ({})",
        cc.join(" "),
        cell.compiler().version_line
    );
    if !cell.spec.log.trim().is_empty() {
        let _ = writeln!(
            log,
            "# manifest evaluation said:\n{}",
            cell.spec.log.trim_end()
        );
    }
    for note in notes {
        let _ = writeln!(log, "# {note}");
    }
    for w in &cell.spec.warnings {
        let _ = writeln!(log, "# warning: {w}");
    }
}

/// The manifest's patches, in order, as DKMS applies them.
fn apply_patches(cell: &Cell, env: &RunEnv, log: &mut File) -> Result<(), StageError> {
    for patch in &cell.spec.patches {
        // Where the step sees it: the build directory is DKMS's path in the sandbox.
        let file = cell.step_dir().join("patches").join(patch);
        let line = format!(
            "patch -p1 --forward --batch < {}",
            process::quote(&file.to_string_lossy())
        );
        let start = log.metadata().map_or(0, |m| m.len());
        if let Err(mut e) = step(cell, env, log, Stage::Patch, &line, Where::Cell) {
            // Say what patch said ("Hunk #1 FAILED", "can't find file to patch"), not only
            // its exit status.
            let said = patch_output(&cell.log, start);
            if !e.interrupted && !said.is_empty() {
                e.message = format!(
                    "PATCH {}: {}: {}",
                    patch.display(),
                    e.message,
                    said.join(" | ")
                );
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The tree asks kbuild for BTF in its modules: without pahole that step fails after the
/// compile, with "pahole: not found" in the middle of the log. Refused before it starts.
fn require_pahole(cell: &Cell, env: &RunEnv) -> Result<(), StageError> {
    if !makes_btf(&cell.tree) {
        return Ok(());
    }
    let path = env
        .passthrough
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if which::which_in("pahole", Some(&path), "/").is_ok() {
        return Ok(());
    }
    Err(stage_err(
        Stage::Prepare,
        Error::env(format!(
            "{} builds BTF into its modules (CONFIG_DEBUG_INFO_BTF_MODULES=y and a \
             vmlinux), which needs pahole, and pahole is not on PATH: apt-get install \
             pahole (`kmx doctor` checks it)",
            cell.tree.kdir.display()
        )),
    ))
}

/// The manifest's make command, on one jobserver token (make's own implicit slot).
fn run_make(
    cell: &Cell,
    env: &RunEnv,
    log: &mut File,
    command: &str,
    deps_symvers: &[PathBuf],
    cmdline_vars: &[(String, String)],
) -> Result<(), StageError> {
    let _token = env
        .jobserver
        .acquire()
        .map_err(|e| stage_err(Stage::Make, Error::env(format!("jobserver: {e}"))))?;
    let mut cmd = shell(cell, env, command, deps_symvers, Where::Cell);
    // The jobserver's flags (and the inherited descriptors), then kmx's command-line
    // variables, if any, after `--`, where make reads them from MAKEFLAGS. The crate
    // also sets CARGO_MAKEFLAGS and MFLAGS, which no make of DKMS's sees: removed.
    env.jobserver.configure_make(&mut cmd);
    let js_flags = cmd
        .get_envs()
        .find(|(k, _)| *k == "MAKEFLAGS")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let makeflags = match cmdline_vars.is_empty() {
        true => js_flags,
        false => format!("{js_flags} -- {}", makeflags_vars(cmdline_vars)),
    };
    cmd.env("MAKEFLAGS", makeflags)
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MFLAGS");
    logged(&mut cmd, command, log, env, Stage::Make)
}

/// Collect, strip and check every expected module into the cell's stage: it must load on
/// the cell's kernel, its symbols resolved by the kernel, this cell's own exports or its
/// dependencies'. Returns the modules as they will be in the output directory.
///
/// The finished cell is staged beside the build tree and renamed into place ([`finish`]):
/// the output directory holds the modules, Module.symvers, cell.json, provenance.json and
/// make.log, never the build tree (which stays in the work directory). The package wrote the
/// build tree: every file is taken out of it without following a link ([`collect`]), and
/// strip, the checks and the cache work on kmx's own copy in the stage.
fn collect_and_check(
    cell: &Cell,
    env: &RunEnv,
    log: &mut File,
    deps_symvers: &[PathBuf],
    stage: &Path,
) -> Result<Vec<Artifact>, StageError> {
    let tree_symbols = env
        .symbols_of(&cell.tree)
        .map_err(|e| stage_err(Stage::Check, e))?;
    let build = cell.build_dir();
    let _ = std::fs::remove_dir_all(stage);
    create_dir(stage)?;
    let mut built = Vec::new();
    for m in &cell.spec.modules {
        let rel = m.built_location.join(format!("{}.ko", m.built_name));
        let copy = stage.join(format!("{}.ko", m.built_name));
        if !collect::copy_out(&build, &rel, &copy).map_err(|e| stage_err(Stage::Collect, e))? {
            return Err(StageError {
                stage: Stage::Collect,
                message: not_produced(&build, &rel, &m.built_name, &m.built_location),
                ended: None,
                exit_code: None,
                interrupted: false,
            });
        }
        if m.strip {
            let strip = format!("{}strip", cell.target.toolchain.cross_compile);
            let line = format!(
                "{} --strip-debug {}",
                process::quote(&strip),
                process::quote(&copy.to_string_lossy())
            );
            step(cell, env, log, Stage::Strip, &line, Where::Host)?;
        }
        built.push((m, copy));
    }
    // What the cell's modules may resolve besides the kernel: the dependencies' exports and
    // every export of the cell itself, wherever its makes wrote them (a package that builds
    // a core module in one directory and its users in others has a Module.symvers in each;
    // the modules themselves say what they export even where no Module.symvers does).
    let mut others = Others::default();
    for file in deps_symvers.iter().filter(|f| f.is_file()) {
        let symvers = Symvers::load(file).map_err(|e| stage_err(Stage::Check, e))?;
        others.add_symvers(&symvers);
    }
    for file in find_files(&build, "Module.symvers") {
        let rel = file.strip_prefix(&build).unwrap_or(&file);
        let text = read_built(&build, rel).map_err(|e| stage_err(Stage::Check, e))?;
        let symvers = Symvers::parse(&text, &file).map_err(|e| stage_err(Stage::Check, e))?;
        others.add_symvers(&symvers);
    }
    for (m, path) in &built {
        if let Ok(module) = crate::verify::module::Module::read(path) {
            others.add_module(&m.built_name, &module.exported);
        }
    }
    let mut artifacts = Vec::new();
    for (m, path) in &built {
        crate::verify::built::check(
            path,
            &cell.target.toolchain.identity,
            &cell.tree,
            tree_symbols.as_deref(),
            &others,
        )
        .map_err(|e| stage_err(Stage::Check, e))?;
        artifacts.push(Artifact {
            file: cell.out_dir.join(format!("{}.ko", m.built_name)),
            sha256: sha256_file(path).map_err(|e| stage_err(Stage::Collect, e))?,
        });
    }
    collect::copy_out(
        &build,
        Path::new("Module.symvers"),
        &stage.join("Module.symvers"),
    )
    .map_err(|e| stage_err(Stage::Collect, e))?;
    Ok(artifacts)
}

/// The stage's record (cell.json), a copy in the cache, and the stage renamed into the
/// output directory.
fn finish(
    cell: &Cell,
    env: &RunEnv,
    stage: &Path,
    artifacts: &[Artifact],
    warnings: &[String],
    build_secs: f64,
) -> Result<(), StageError> {
    let mut files: Vec<String> = cell
        .spec
        .modules
        .iter()
        .map(|m| format!("{}.ko", m.built_name))
        .collect();
    files.extend(
        ["Module.symvers", "make.log"]
            .iter()
            .filter(|f| stage.join(f).is_file())
            .map(|f| f.to_string()),
    );
    let record = CellRecord {
        schema: cell_schema(),
        fingerprint: cell.fingerprint.clone(),
        artifacts: artifacts.to_vec(),
        files,
        build_secs,
        warnings: warnings.to_vec(),
    };
    write_record(cell, &record).map_err(|e| stage_err(Stage::Collect, e))?;
    if let Some(cache) = &env.opts.cache {
        // A cache that cannot be written costs a rebuild later, not this build.
        if let Err(e) = cache.store(
            &cell.fingerprint,
            &cell.label(),
            stage,
            &record.files,
            build_secs,
        ) {
            let _ = append_log(&cell.log, &format!("# warning: not cached: {e}"));
        }
    }
    crate::state::replace_dir(stage, &cell.out_dir).map_err(|e| stage_err(Stage::Collect, e))
}

/// `$dkms_tree/<name>/<version>/{build,source}` as links to the cell's build directory and
/// source, for cells without a namespace (whose `$dkms_tree` is `<work>/dkms_tree`).
fn link_dkms_tree(cell: &Cell) -> Result<()> {
    let dir = cell
        .work_dir
        .join("dkms_tree")
        .join(&cell.spec.name)
        .join(&cell.spec.version);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    for (link, target) in [("build", cell.build_dir()), ("source", cell.source.clone())] {
        let path = dir.join(link);
        std::os::unix::fs::symlink(&target, &path)
            .map_err(|e| Error::io("create symlink", &path, e))?;
    }
    Ok(())
}

/// The cell's provenance record for these artifacts (`None` for a cell planned without
/// inputs).
pub fn provenance(cell: &Cell, artifacts: &[Artifact]) -> Option<Provenance> {
    let inputs = cell.inputs.clone()?;
    Some(Provenance {
        schema: provenance::SCHEMA.into(),
        kmx: env!("CARGO_PKG_VERSION").to_string(),
        module: cell.spec.name.clone(),
        version: cell.spec.version.clone(),
        target: cell.target.target.name.clone(),
        kernel: cell.tree.release.clone(),
        fingerprint: cell.fingerprint.clone(),
        inputs,
        outputs: artifacts
            .iter()
            .map(|a| provenance::Output {
                file: a
                    .file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: a.sha256.clone(),
            })
            .collect(),
    })
}

/// `cell.json` and `provenance.json` into a finished cell's staging directory.
fn write_record(cell: &Cell, record: &CellRecord) -> Result<()> {
    let dir = &cell.stage_dir();
    if let Some(p) = provenance(cell, &record.artifacts) {
        p.write(dir)?;
    }
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::env(format!("cannot serialize cell.json: {e}")))?;
    crate::state::write_atomic(&dir.join("cell.json"), &json)
}

fn append_log(log: &Path, line: &str) -> std::io::Result<()> {
    let mut f = File::options().append(true).create(true).open(log)?;
    writeln!(f, "{line}")
}

/// The artifacts (and warnings) of the cell's output directory, if it was built from the
/// same inputs and every artifact is intact.
fn fresh_in_place(cell: &Cell) -> Option<(Vec<Artifact>, Vec<String>)> {
    let bytes = std::fs::read(cell.out_dir.join("cell.json")).ok()?;
    let record: CellRecord = serde_json::from_slice(&bytes).ok()?;
    if record.fingerprint != cell.fingerprint {
        return None;
    }
    for a in &record.artifacts {
        if sha256_file(&a.file).ok()? != a.sha256 {
            return None;
        }
    }
    if !cell.log.is_file() {
        let _ = std::fs::create_dir_all(cell.log.parent()?);
        let _ = std::fs::copy(cell.out_dir.join("make.log"), &cell.log);
    }
    Some((record.artifacts, record.warnings))
}

/// Restore the cell from the cache into its output directory (atomically, as a build would).
/// `Err(Some(why))` when the entry was damaged (it is deleted), `Err(None)` when there is
/// none or it could not be restored.
fn restore(cell: &Cell, cache: &Cache) -> Result<Vec<Artifact>, Option<String>> {
    let (entry, dir) = match cache.lookup(&cell.fingerprint) {
        Ok(found) => found,
        Err(Miss::Absent) => return Err(None),
        Err(Miss::Corrupt(why)) => return Err(Some(why)),
    };
    restore_entry(cell, &entry, &dir).ok_or(None)
}

fn restore_entry(
    cell: &Cell,
    entry: &crate::state::cache::Entry,
    dir: &Path,
) -> Option<Vec<Artifact>> {
    let stage = cell.stage_dir();
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).ok()?;
    for f in &entry.files {
        std::fs::copy(dir.join(&f.name), stage.join(&f.name)).ok()?;
    }
    let artifacts: Vec<Artifact> = entry
        .files
        .iter()
        .filter(|f| f.name.ends_with(".ko"))
        .map(|f| Artifact {
            file: cell.out_dir.join(&f.name),
            sha256: f.sha256.clone(),
        })
        .collect();
    let record = CellRecord {
        schema: cell_schema(),
        fingerprint: cell.fingerprint.clone(),
        artifacts: artifacts.clone(),
        files: entry.files.iter().map(|f| f.name.clone()).collect(),
        build_secs: entry.build_secs,
        warnings: Vec::new(),
    };
    write_record(cell, &record).ok()?;
    let _ = std::fs::create_dir_all(cell.log.parent()?);
    let _ = std::fs::copy(stage.join("make.log"), &cell.log);
    crate::state::replace_dir(&stage, &cell.out_dir).ok()?;
    // An earlier failed build's tree is of no more use.
    let _ = std::fs::remove_dir_all(&cell.work_dir);
    Some(artifacts)
}

/// PRE_BUILD / POST_BUILD as DKMS runs them: `script [args]` is a path relative to the build
/// directory, run from there if it is executable; a script that is not executable is
/// skipped with a warning in the log, as DKMS does. A script that exits non-zero does not
/// fail the cell either (DKMS ignores its status): its status is returned as a warning for
/// the summary, unless the manifest asks for `strict-scripts`. A script that times out or
/// is interrupted stops the cell.
fn build_script(
    cell: &Cell,
    env: &RunEnv,
    log: &mut File,
    stage: Stage,
    script: &str,
) -> Result<Option<String>, StageError> {
    let program = script.split_whitespace().next().unwrap_or("");
    let path = cell.build_dir().join(program);
    let executable = std::fs::metadata(&path).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    });
    if !executable {
        let _ = writeln!(
            log,
            "# warning: the {stage} script {program} is not executable; skipped (as DKMS does)"
        );
        return Ok(None);
    }
    let line = format!(
        "exec {}/{script}",
        process::quote(&cell.step_dir().to_string_lossy())
    );
    match step(cell, env, log, stage, &line, Where::Cell) {
        Err(StageError {
            exit_code: Some(_),
            ended: Some(ended),
            ..
        }) if !cell.spec.strict_scripts => {
            let warning = format!(
                "{stage} ended with {ended}: the build went on, as under DKMS (see the log)"
            );
            let _ = writeln!(log, "# warning: {warning}");
            Ok(Some(warning))
        }
        Err(e) => Err(e),
        Ok(()) => Ok(None),
    }
}

/// The first lines a failed patch wrote to the log (from byte `start`), without kmx's own
/// `#` and `$` lines: at most five, each at most 200 characters.
fn patch_output(log: &Path, start: u64) -> Vec<String> {
    let Ok(bytes) = std::fs::read(log) else {
        return Vec::new();
    };
    let from = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[from..])
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with("$ "))
        .take(5)
        .map(|l| l.chars().take(200).collect())
        .collect()
}

/// Run a shell step, logging its command line and outcome.
fn step(
    cell: &Cell,
    env: &RunEnv,
    log: &mut File,
    stage: Stage,
    line: &str,
    where_: Where,
) -> Result<(), StageError> {
    let mut cmd = shell(cell, env, line, &[], where_);
    logged(&mut cmd, line, log, env, stage)
}

/// Why the sandbox a step was to run in could not be made, from what the step wrote to
/// `log` after `start` and its exit `code`: bubblewrap's own message. `None` when the step
/// ran.
fn namespace_failure(log: &File, start: u64, code: Option<i32>) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let n = log.read_at(&mut buf, start).ok()?;
    crate::sandbox::setup_failure(code, &String::from_utf8_lossy(&buf[..n]))
}

/// Run `cmd` (which runs the shell line `line`), logging its environment, the line and how
/// it ended.
fn logged(
    cmd: &mut Command,
    line: &str,
    log: &mut File,
    env: &RunEnv,
    stage: Stage,
) -> Result<(), StageError> {
    let _ = writeln!(log, "\n# environment:");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = writeln!(
                log,
                "#   {}={}",
                k.to_string_lossy(),
                process::quote(&v.to_string_lossy())
            );
        }
    }
    let in_namespace = Path::new(cmd.get_program()).file_name() == Some("bwrap".as_ref());
    if in_namespace {
        let _ = writeln!(
            log,
            "# in the cell's sandbox (DKMS's directories are the cell's own)"
        );
    }
    let _ = writeln!(log, "$ {line}");
    let start = std::io::Seek::stream_position(log).unwrap_or(0);
    let started = Instant::now();
    let ended = process::run_supervised(cmd, log, env.opts.timeout, env.stop)
        .map_err(|e| stage_err(stage, e))?;
    let secs = started.elapsed().as_secs_f64();
    match ended {
        Ended::Exited(status) if status.success() => {
            let _ = writeln!(log, "# {stage}: exit status 0 ({secs:.1}s)");
            Ok(())
        }
        Ended::Exited(status) => {
            let what = process::describe_status(status);
            let _ = writeln!(log, "# {stage}: {what} ({secs:.1}s)");
            let namespace = match in_namespace {
                true => namespace_failure(log, start, status.code()),
                false => None,
            };
            let (message, ended) = match namespace {
                Some(why) => {
                    let m = format!("{stage}: kmx could not make the cell's sandbox: {why}");
                    (m.clone(), m)
                }
                None => {
                    let ended = match status.code() {
                        Some(127) => format!(
                            "{what} (a command was not found: `kmx doctor` lists the host tools kmx needs)"
                        ),
                        _ => what,
                    };
                    (format!("{stage} failed: {ended}"), ended)
                }
            };
            Err(StageError {
                stage,
                message,
                ended: Some(ended),
                exit_code: status.code(),
                interrupted: false,
            })
        }
        Ended::TimedOut(limit) => {
            let _ = writeln!(
                log,
                "# {stage}: killed after the {}s time limit",
                limit.as_secs()
            );
            Err(StageError {
                stage,
                message: format!(
                    "{stage} timed out after {}s (raise it with --timeout)",
                    limit.as_secs()
                ),
                ended: None,
                exit_code: None,
                interrupted: false,
            })
        }
        Ended::Interrupted => {
            let _ = writeln!(log, "# {stage}: interrupted");
            Err(StageError {
                stage,
                message: "interrupted".into(),
                ended: None,
                exit_code: None,
                interrupted: true,
            })
        }
    }
}

/// The text of `rel` under the build directory `build`, read without following a link
/// ([`collect::open_in`]).
fn read_built(build: &Path, rel: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    if let Some(mut f) = collect::open_in(build, rel)? {
        f.read_to_string(&mut text)
            .map_err(|e| Error::io("read", build.join(rel), e))?;
    }
    Ok(text)
}

/// Why a module was not collected: the file dkms.conf named was not built, and what was
/// (`mymod.ko`, so that a wrong BUILT_MODULE_NAME or BUILT_MODULE_LOCATION shows at once).
fn not_produced(build: &Path, rel: &Path, name: &str, location: &Path) -> String {
    let location = match location.as_os_str().is_empty() {
        true => "the top of the source".to_string(),
        false => format!("`{}`", location.display()),
    };
    let mut found: Vec<String> = Vec::new();
    let mut pending = vec![build.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => pending.push(e.path()),
                Ok(t) if t.is_file() && e.file_name().to_string_lossy().ends_with(".ko") => found
                    .push(
                        e.path()
                            .strip_prefix(build)
                            .unwrap_or(&e.path())
                            .display()
                            .to_string(),
                    ),
                _ => {}
            }
        }
    }
    found.sort();
    let built = match found.as_slice() {
        [] => "no .ko at all".to_string(),
        some => format!("it built {}", some.join(", ")),
    };
    format!(
        "the build did not produce {} (BUILT_MODULE_NAME {name}, BUILT_MODULE_LOCATION {location}): {built}; correct dkms.conf's BUILT_MODULE_NAME or BUILT_MODULE_LOCATION",
        rel.display()
    )
}

/// Every regular file called `name` under `dir` (symbolic links are not followed).
fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => pending.push(e.path()),
                Ok(t) if t.is_file() && e.file_name() == name => found.push(e.path()),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// Copy a source tree (regular files, directories, symlinks), skipping VCS metadata and
/// cache directories (kmx's own output: [`crate::digest::left_out_of_source`]); a FIFO,
/// socket or device in it is an error, never opened.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io("create directory", to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| Error::io("read directory", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", from, e))?;
        if crate::digest::left_out_of_source(&entry) {
            continue;
        }
        let name = entry.file_name();
        let src = entry.path();
        let dst = to.join(&name);
        let ft = entry.file_type().map_err(|e| Error::io("stat", &src, e))?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| Error::io("read link", &src, e))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(|e| Error::io("create link", &dst, e))?;
        } else {
            crate::digest::refuse_special(&src, &ft)?;
            std::fs::copy(&src, &dst).map_err(|e| {
                // A full or read-only destination is the destination's problem: name it.
                use std::io::ErrorKind::{ReadOnlyFilesystem, StorageFull};
                match e.kind() {
                    StorageFull | ReadOnlyFilesystem => Error::io("write", &dst, e),
                    _ => Error::io("copy", &src, e),
                }
            })?;
        }
    }
    Ok(())
}

/// The first error lines of a log, for the summary: compiler and modpost errors first, make's
/// own "***" lines only when there is nothing better. Paths into the cell's build tree (as
/// its steps saw it, `/var/lib/dkms/NAME/VERSION/build` in the sandbox, or on the host)
/// name the user's own file in `source` instead: the build tree is a copy of it.
pub fn first_errors(log: &Path, build_dirs: &[&Path], source: &Path, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    let source = format!("{}/", source.display());
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let strong = |l: &&&str| {
        l.contains("error:")
            || l.contains("undefined!")
            || l.contains(": not found")
            || l.contains("fatal:")
    };
    let mut picked: Vec<&str> = lines.iter().filter(strong).take(n).copied().collect();
    if picked.is_empty() {
        picked = lines
            .iter()
            .filter(|l| l.contains("***") || l.contains("Error"))
            .take(n)
            .copied()
            .collect();
    }
    picked
        .iter()
        .map(|l| {
            build_dirs.iter().fold(l.trim().to_string(), |l, dir| {
                l.replace(&format!("{}/", dir.display()), &source)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_its_word_in_json_on_screen_and_read_back() {
        let all = [
            (Stage::Prepare, "prepare"),
            (Stage::Patch, "patch"),
            (Stage::PreBuild, "PRE_BUILD"),
            (Stage::Make, "make"),
            (Stage::PostBuild, "POST_BUILD"),
            (Stage::Strip, "strip"),
            (Stage::Check, "check"),
            (Stage::Collect, "collect"),
            (Stage::Internal, "internal"),
        ];
        for (stage, word) in all {
            assert_eq!(stage.word(), word);
            assert_eq!(stage.to_string(), word);
            let json = serde_json::to_value(stage).unwrap();
            assert_eq!(json, word);
            assert_eq!(serde_json::from_value::<Stage>(json).unwrap(), stage);
        }
        // A report's stage reads back only as one of these words.
        assert!(serde_json::from_str::<Stage>("\"Make\"").is_err());
        assert!(serde_json::from_str::<Stage>("\"pre_build\"").is_err());
    }

    fn log_with(before: &str, step: &str) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(before.as_bytes()).expect("write");
        let start = before.len() as u64;
        f.write_all(step.as_bytes()).expect("write");
        (f, start)
    }

    #[test]
    fn a_namespace_that_cannot_be_made_is_named_with_the_reason() {
        let (f, start) = log_with(
            "bwrap: from an earlier step\n",
            "bwrap: Can't mkdir /var/lib/dkms: Read-only file system\n",
        );
        assert_eq!(
            namespace_failure(f.as_file(), start, Some(1)).as_deref(),
            Some("bwrap: Can't mkdir /var/lib/dkms: Read-only file system")
        );
        // A step that ran and failed is not a namespace failure, even if it mentions one.
        let (f, start) = log_with("", "make: *** [Makefile:2: all] Error 1\nbwrap: x\n");
        assert_eq!(namespace_failure(f.as_file(), start, Some(1)), None);
        let (f, start) = log_with("", "bwrap: x\n");
        assert_eq!(namespace_failure(f.as_file(), start, Some(2)), None);
    }
}
