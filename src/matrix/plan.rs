//! The build plan: module sources x targets x kernel trees, one [`Cell`] each, with every
//! per-cell decision taken up front (manifest evaluated for that kernel, BUILD_EXCLUSIVE
//! rules applied, dependencies resolved into a DAG). Planning runs no compiler and writes
//! nothing.
//!
//! A cell excluded by a rule stays in the plan as skipped, with the rule that excluded it:
//! nothing is dropped silently. A missing dependency or a cycle is an error before anything
//! builds.
//!
//! Where the sandbox can be made ([`namespace::available`]), every cell sees
//! DKMS's own directories (`/var/lib/dkms`, `/usr/src`, `/lib/modules/<release>/build`) as
//! its own, and its dkms.conf is evaluated with DKMS's values for `$dkms_tree` and
//! `$source_tree`; elsewhere with per-cell directories on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::load_spec_memo;
use crate::config::manifest::ModuleSpec;
use crate::config::manifest::{CellVars, Given};
use crate::config::probe::Compiler;
use crate::config::{Target, Toolchain};
use crate::error::{Error, Result};
use crate::kernel::tree::KernelTree;
use crate::matrix::{fingerprint, provenance};
use crate::sandbox as namespace;

/// One target ready to build for: its profile, toolchain, compiler and kernel trees.
#[derive(Debug, Clone)]
pub struct TargetSetup {
    pub target: Target,
    pub toolchain: Toolchain,
    /// The compiler for each compiler name the trees call (`gcc-12`; `None` = plain gcc).
    pub compilers: BTreeMap<Option<String>, Compiler>,
    pub trees: Vec<Arc<KernelTree>>,
}

impl TargetSetup {
    /// Find the compiler every tree of the target calls: the toolchain's CROSS_COMPILE with
    /// the name the tree gives (or the profile's `cc`). One probe per distinct name. A tree
    /// whose compiler is missing is left out, with the reason, returned beside the setup;
    /// when no tree is left, that reason is the error.
    pub fn new(
        target: Target,
        toolchain: Toolchain,
        trees: Vec<Arc<KernelTree>>,
    ) -> Result<(TargetSetup, Vec<Error>)> {
        let mut compilers = BTreeMap::new();
        let mut refused: BTreeMap<Option<String>, Error> = BTreeMap::new();
        let mut usable = Vec::new();
        let mut left_out = Vec::new();
        for t in trees {
            if !compilers.contains_key(&t.compiler) && !refused.contains_key(&t.compiler) {
                match t.probe_compiler(&toolchain) {
                    Ok(c) => {
                        compilers.insert(t.compiler.clone(), c);
                    }
                    Err(e) => {
                        refused.insert(t.compiler.clone(), e);
                    }
                }
            }
            match refused.get(&t.compiler) {
                Some(e) => left_out.push(e.clone()),
                None => usable.push(t),
            }
        }
        left_out.dedup_by(|a, b| a.message == b.message);
        if usable.is_empty()
            && let Some(e) = left_out.pop()
        {
            return Err(e);
        }
        Ok((
            TargetSetup {
                target,
                toolchain,
                compilers,
                trees: usable,
            },
            left_out,
        ))
    }
}

/// What a cell is to do.
#[derive(Debug, Clone)]
pub enum Action {
    Build,
    /// Excluded by a rule, which is the reason.
    Skip(String),
}

/// One module source built for one target and one kernel tree.
#[derive(Debug, Clone)]
pub struct Cell {
    pub index: usize,
    pub source: PathBuf,
    pub spec: ModuleSpec,
    pub target: Arc<TargetSetup>,
    pub tree: Arc<KernelTree>,
    pub action: Action,
    /// Indexes of the cells (same target and kernel) this one needs built first.
    pub deps: Vec<usize>,
    /// Where the cell works while building, `<out>/.work/<slot>` (replaced on every run;
    /// removed after a successful build unless `--keep-build-dir`, kept after a failure).
    pub work_dir: PathBuf,
    /// Where the finished cell lives: `<out>/<module>/<version>/<release>/<target>`.
    pub out_dir: PathBuf,
    /// The build log, kept even when the cell fails.
    pub log: PathBuf,
    /// Everything that decides the cell's output ([`provenance::Inputs`]), and its hash.
    pub inputs: Option<provenance::Inputs>,
    pub fingerprint: String,
    /// The cell's private view of DKMS's directories ([`namespace`]); `None` where no
    /// namespace can be made: its steps then run on the host's paths.
    pub view: Option<namespace::View>,
}

impl Cell {
    /// The compiler this cell's tree calls.
    pub fn compiler(&self) -> &Compiler {
        // Every tree of a TargetSetup has its compiler probed in TargetSetup::new.
        &self.target.compilers[&self.tree.compiler]
    }

    /// `hello 1.0 arm64 6.1.0-50-arm64`
    pub fn label(&self) -> String {
        format!(
            "{} {} {} {}",
            self.spec.name, self.spec.version, self.target.target.name, self.tree.release
        )
    }
    /// The build directory on the host.
    pub fn build_dir(&self) -> PathBuf {
        self.work_dir.join("build")
    }
    /// Where the finished cell is put together before it is renamed to [`Cell::out_dir`].
    pub fn stage_dir(&self) -> PathBuf {
        self.work_dir.join("cell")
    }
    /// The build directory as the cell's steps see it: DKMS's
    /// `/var/lib/dkms/<name>/<version>/build` in the cell's namespace.
    pub fn step_dir(&self) -> PathBuf {
        match &self.view {
            Some(_) => namespace::build_dir(&self.spec.name, &self.spec.version),
            None => self.build_dir(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PlanSummary {
    pub cells: usize,
    pub to_build: usize,
    pub skipped: usize,
}

#[derive(Debug)]
pub struct Plan {
    pub cells: Vec<Cell>,
    pub out: PathBuf,
    /// How many cells the whole plan has (more than `cells` when sharded).
    pub total: usize,
    /// The share of the plan these cells are (`--shard`).
    pub shard: Option<Shard>,
    /// Why cells run without their private namespace, when they do.
    pub no_namespace: Option<namespace::Unavailable>,
}

/// The share of a plan one machine builds (`--shard I/N`, 1-based); [`crate::matrix::shard`]
/// deals the cells out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || {
            Error::usage(format!(
                "--shard {s}: expected I/N with 1 <= I <= N, e.g. 2/3"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The hashed inputs the cells of a plan share, each hashed once: every source's digest and
/// every tree's identity ([`fingerprint::kernel_tree`]), keyed by directory.
#[derive(Debug, Default)]
pub struct Digests {
    pub sources: BTreeMap<PathBuf, String>,
    pub trees: BTreeMap<PathBuf, String>,
}

/// The cells of every source for every target and tree, their dependencies linked, each
/// source given the name and version its caller gives (a registered module's,
/// `--module-name`/`--module-version`; see [`Given`]). The cells have no fingerprint yet:
/// that is the next step ([`crate::matrix::inputs`], which needs the [`Digests`]); the
/// pipeline's `plan` takes both.
pub fn draft(
    sources: &[(PathBuf, Given)],
    targets: &[Arc<TargetSetup>],
    out: &Path,
    mode: namespace::Mode,
) -> Result<(Plan, Digests)> {
    use rayon::prelude::*;
    let out = std::path::absolute(out).map_err(|e| Error::io("resolve", out, e))?;
    let given: BTreeMap<PathBuf, Given> = sources
        .iter()
        .map(|(s, g)| {
            s.canonicalize()
                .map(|c| (c, g.clone()))
                .map_err(|e| Error::io("open module source", s, e))
        })
        .collect::<Result<_>>()?;
    let sources: Vec<PathBuf> = sources
        .iter()
        .filter_map(|(s, _)| s.canonicalize().ok())
        .collect();
    let given = &given;
    let mut slots = Vec::new();
    for (si, source) in sources.iter().enumerate() {
        for ts in targets {
            for tree in &ts.trees {
                slots.push((si, source.clone(), ts.clone(), tree.clone()));
            }
        }
    }
    // Each source's digest and each tree's identity, once: the cells' fingerprints and the
    // keys under which their dkms.conf evaluations are kept ([`crate::config::memo`]).
    let digests = sources
        .par_iter()
        .map(|s| Ok((s.clone(), crate::digest::source_tree(s)?)))
        .collect::<Result<BTreeMap<PathBuf, String>>>()?;
    let mut kdirs: Vec<&Arc<KernelTree>> = targets.iter().flat_map(|t| &t.trees).collect();
    kdirs.sort_by(|a, b| a.kdir.cmp(&b.kdir));
    kdirs.dedup_by(|a, b| a.kdir == b.kdir);
    let trees = kdirs
        .par_iter()
        .map(|t| Ok((t.kdir.clone(), fingerprint::kernel_tree(t)?)))
        .collect::<Result<BTreeMap<PathBuf, String>>>()?;
    let known = Known {
        digests: &digests,
        trees: &trees,
    };
    let isolated = namespace::available();
    // In the sandbox, a dkms.conf sees every source of the run at /usr/src/<name>-<version>,
    // as on a machine where the packages are installed: a first reading of each source (in
    // the sandbox, for its first kernel) gives the names and versions.
    let first = targets
        .iter()
        .find_map(|ts| ts.trees.first().map(|tree| (ts, tree)));
    let sandbox = match (&isolated, first) {
        (Ok(()), Some((ts, tree))) => {
            let empty = Arc::new(Vec::new());
            let mut others = sources
                .par_iter()
                .map(|src| {
                    let mut vars = cell_vars(src, ts, tree, None, Some(empty.clone()), mode);
                    vars.given = given[src].clone();
                    let spec =
                        load_spec_memo(src, &vars, known.context(src, tree, &[]).as_deref())?;
                    Ok(namespace::Source {
                        name: spec.name,
                        version: spec.version,
                        dir: src.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            others.sort();
            others.dedup();
            Some(Arc::new(others))
        }
        _ => None,
    };
    // Evaluating a dkms.conf runs bash: do the cells in parallel.
    let mut cells = slots
        .into_par_iter()
        .enumerate()
        .map(|(index, slot)| {
            let g = &given[&slot.1];
            plan_cell(index, slot, &out, sandbox.as_ref(), mode, g, &known)
        })
        .collect::<Result<Vec<Cell>>>()?;
    if let Some(others) = &sandbox {
        for c in &mut cells {
            c.view = Some(namespace::View {
                release: c.tree.release.clone(),
                kdir: c.tree.kdir.clone(),
                name: c.spec.name.clone(),
                version: c.spec.version.clone(),
                source: c.work_dir.join("src"),
                others: others.clone(),
                // The run sets the policy of each step (its options, the cell's launcher).
                purpose: namespace::Purpose::Build {
                    build: c.build_dir(),
                },
                policy: mode.policy(),
                // A compiler in a toolchain root builds with that root as the view's `/`.
                root: c.compiler().root.clone(),
            });
        }
    }
    resolve_dependencies(&mut cells)?;
    let plan = Plan {
        total: cells.len(),
        cells,
        out,
        shard: None,
        no_namespace: isolated.err(),
    };
    Ok((
        plan,
        Digests {
            sources: digests,
            trees,
        },
    ))
}

/// DKMS's variables for `source` built for one kernel tree: DKMS's own `$dkms_tree` and
/// `$source_tree` in the sandbox (`sandbox` given), per-cell directories under `work_dir`
/// on the host otherwise.
fn cell_vars(
    source: &Path,
    ts: &TargetSetup,
    tree: &KernelTree,
    work_dir: Option<&Path>,
    sandbox: Option<Arc<Vec<namespace::Source>>>,
    mode: namespace::Mode,
) -> CellVars {
    let (source_tree, dkms_tree) = match (&sandbox, work_dir) {
        (None, Some(work)) => (source.to_path_buf(), work.join("dkms_tree")),
        _ => (namespace::SOURCE_TREE.into(), namespace::DKMS_TREE.into()),
    };
    let identity = sandbox.as_ref().and_then(|others| {
        others
            .iter()
            .find(|o| o.dir == source)
            .map(|o| (o.name.clone(), o.version.clone()))
    });
    CellVars {
        kernelver: tree.release.clone(),
        kernel_source_dir: tree.kdir.clone(),
        arch: ts.target.dkms_arch.clone(),
        source_dir: source.to_path_buf(),
        source_tree,
        dkms_tree,
        module_hint: None,
        identity,
        given: Given::default(),
        sandbox,
        mode,
    }
}

/// The digests of the run's sources and the identities of its trees, by path.
struct Known<'a> {
    digests: &'a BTreeMap<PathBuf, String>,
    trees: &'a BTreeMap<PathBuf, String>,
}

impl Known<'_> {
    /// What a dkms.conf evaluation of `source` for `tree` sees beyond its own variables: the
    /// source, the tree, and the other sources under /usr/src, by content. `None` (nothing
    /// kept) when evaluations are not kept in this process.
    fn context(
        &self,
        source: &Path,
        tree: &KernelTree,
        others: &[namespace::Source],
    ) -> Option<String> {
        crate::config::memo::dir()?;
        let mut fp = crate::digest::Fingerprint::new();
        fp.field("source", self.digests.get(source)?.as_bytes())
            .field("tree", self.trees.get(&tree.kdir)?.as_bytes());
        for o in others {
            fp.field("other", o.dir.as_os_str().as_encoded_bytes())
                .field("digest", self.digests.get(&o.dir)?.as_bytes());
        }
        Some(fp.finish())
    }
}

/// One slot of the matrix: the source's index, the source, the target and the tree.
type Slot = (usize, PathBuf, Arc<TargetSetup>, Arc<KernelTree>);

fn plan_cell(
    index: usize,
    (si, source, ts, tree): Slot,
    out: &Path,
    sandbox: Option<&Arc<Vec<namespace::Source>>>,
    mode: namespace::Mode,
    given: &Given,
    known: &Known,
) -> Result<Cell> {
    // The work dir must be known before the manifest is evaluated: dkms.conf files refer to
    // $dkms_tree/<module>/<version>/build. The spec may rename the module.
    let work_dir = out
        .join(".work")
        .join(slot_name(si, &source, &ts.target.name, &tree.release));
    let mut vars = cell_vars(&source, &ts, &tree, Some(&work_dir), sandbox.cloned(), mode);
    vars.given = given.clone();
    let others = sandbox.map(|o| o.as_slice()).unwrap_or_default();
    let spec = load_spec_memo(
        &source,
        &vars,
        known.context(&source, &tree, others).as_deref(),
    )?;
    if let Some((name, version)) = &vars.identity
        && (name, version) != (&spec.name, &spec.version)
    {
        let what = format!(
            "PACKAGE_NAME and PACKAGE_VERSION change with the kernel: {name} {version} on the \
             first reading, {} {} for {}",
            spec.name, spec.version, tree.release
        );
        return Err(Error::config(&source, what).hint(
            "a module has one name and version for every kernel: set them without $kernelver or $arch",
        ));
    }
    let t = &ts.target;
    let arch_names = arch_names([&t.dkms_arch, &t.name, &t.kernel_arch]);
    let action = match spec.exclusion(&tree.release, &arch_names, &|c| tree.config.enabled(c)) {
        Some(reason) => Action::Skip(reason),
        None => Action::Build,
    };
    let (out_dir, log) = cell_paths(out, &spec.name, &spec.version, &tree.release, &t.name);
    Ok(Cell {
        index,
        source,
        spec,
        target: ts,
        tree,
        action,
        deps: Vec::new(),
        work_dir,
        out_dir,
        log,
        inputs: None,
        fingerprint: String::new(),
        view: None,
    })
}

/// The name of a cell's work directory, `<source position>-<source dir>-<target>-<release>`:
/// known before its dkms.conf is read (which may rename the module), unique in the plan.
fn slot_name(si: usize, source: &Path, target: &str, release: &str) -> String {
    let dir = source
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("module");
    format!("{si}-{dir}-{target}-{release}")
}

/// Where a finished cell lives under `out`, `<module>/<version>/<release>/<target>`, and its
/// build log, `logs/<module>-<version>-<release>-<target>.log`.
fn cell_paths(
    out: &Path,
    module: &str,
    version: &str,
    release: &str,
    target: &str,
) -> (PathBuf, PathBuf) {
    let out_dir = out.join(module).join(version).join(release).join(target);
    let log = out
        .join("logs")
        .join(format!("{module}-{version}-{release}-{target}.log"));
    (out_dir, log)
}

/// The names a dkms.conf's BUILD_EXCLUSIVE_ARCH matches for a target, given as DKMS's
/// `$arch`, kmx's target name and the kernel's ARCH: in that order, each once.
fn arch_names(names: [&str; 3]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// What linking a cell to its dependencies knows of it.
struct Node<'a> {
    name: &'a str,
    version: &'a str,
    source: &'a Path,
    target: &'a str,
    release: &'a str,
    /// Its BUILD_DEPENDS.
    depends: &'a [String],
}

/// For each cell (by position), the cells its BUILD_DEPENDS names for the same target and
/// kernel, and the names it gives that no cell builds. A module built twice for one target
/// and kernel (from two sources) is an error.
fn link(nodes: &[Node]) -> Result<Vec<(Vec<usize>, Vec<String>)>> {
    let mut by_key: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for (i, c) in nodes.iter().enumerate() {
        if let Some(other) = by_key.insert((c.name, c.target, c.release), i) {
            return Err(Error::usage(format!(
                "module {} {} comes from both {} and {}",
                c.name,
                c.version,
                nodes[other].source.display(),
                c.source.display()
            ))
            .hint("build each module once: give each source directory once, with its own PACKAGE_NAME"));
        }
    }
    Ok(nodes
        .iter()
        .map(|c| {
            let (mut deps, mut absent) = (Vec::new(), Vec::new());
            for dep in c.depends {
                match by_key.get(&(dep.as_str(), c.target, c.release)) {
                    Some(&j) => deps.push(j),
                    None => absent.push(dep.clone()),
                }
            }
            (deps, absent)
        })
        .collect())
}

/// A cycle among the cells' dependencies, as positions with the first repeated at the end
/// (depth-first from each cell in order); `None` when there is none.
fn cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0: not seen, 1: on the current path, 2: done.
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        colour: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match colour[i] {
            2 => return None,
            1 => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                return Some(stack[start..].iter().copied().chain([i]).collect());
            }
            _ => {}
        }
        colour[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            if let Some(found) = visit(d, deps, colour, stack) {
                return Some(found);
            }
        }
        stack.pop();
        colour[i] = 2;
        None
    }
    let mut colour = vec![0u8; deps.len()];
    (0..deps.len()).find_map(|i| visit(i, deps, &mut colour, &mut Vec::new()))
}

/// Link each cell to the cells of its BUILD_DEPENDS for the same target and kernel, and
/// refuse cycles. A dependency that is not in the build is a warning in the cell's log, and
/// the cell builds without it, as `dkms build` does (DKMS 3.0 reads BUILD_DEPENDS only to
/// order `autoinstall`; Debian's nvidia-fs-dkms names `nvidia-current`, often absent).
fn resolve_dependencies(cells: &mut [Cell]) -> Result<()> {
    let nodes: Vec<Node> = cells
        .iter()
        .map(|c| Node {
            name: &c.spec.name,
            version: &c.spec.version,
            source: &c.source,
            target: &c.target.target.name,
            release: &c.tree.release,
            depends: &c.spec.build_depends,
        })
        .collect();
    let links = link(&nodes)?;
    for (cell, (deps, absent)) in cells.iter_mut().zip(links) {
        for dep in absent {
            cell.spec.warnings.push(format!(
                "BUILD_DEPENDS names module `{dep}`, which is not part of this build: \
                 built without it, as `dkms build` does (pass the source directory of \
                 `{dep}` to the same `kmx build` to build it first and use its symbols)"
            ));
        }
        cell.deps = deps;
    }
    let deps: Vec<Vec<usize>> = cells.iter().map(|c| c.deps.clone()).collect();
    if let Some(found) = cycle(&deps) {
        let names: Vec<&str> = found.iter().map(|&c| cells[c].spec.name.as_str()).collect();
        return Err(Error::usage(format!(
            "BUILD_DEPENDS form a cycle: {}",
            names.join(" -> ")
        ))
        .hint("remove one of these dependencies"));
    }
    Ok(())
}

/// The cells `needed` (positions) and everything they depend on, directly or not, marked.
fn with_their_dependencies(deps: &[&[usize]], needed: &[usize]) -> Vec<bool> {
    let mut keep = vec![false; deps.len()];
    let mut stack: Vec<usize> = needed.to_vec();
    while let Some(i) = stack.pop() {
        if !keep[i] {
            keep[i] = true;
            stack.extend(deps[i].iter().copied());
        }
    }
    keep
}

impl Plan {
    /// The cells at positions `needed`, plus everything they depend on, as a plan of its own.
    pub fn with_dependencies(&self, needed: &[usize]) -> Plan {
        let deps: Vec<&[usize]> = self.cells.iter().map(|c| c.deps.as_slice()).collect();
        self.subset(&with_their_dependencies(&deps, needed))
    }

    /// The cells `keep` marks, as a plan of its own: dependencies are remapped to the new
    /// positions (and dropped if not kept); each cell keeps its index in the whole plan.
    pub fn subset(&self, keep: &[bool]) -> Plan {
        let mut pos = vec![None; self.cells.len()];
        let mut cells = Vec::new();
        for (i, c) in self.cells.iter().enumerate() {
            if keep.get(i).copied().unwrap_or(false) {
                pos[i] = Some(cells.len());
                cells.push(c.clone());
            }
        }
        for c in &mut cells {
            c.deps = c.deps.iter().filter_map(|&d| pos[d]).collect();
        }
        Plan {
            cells,
            out: self.out.clone(),
            total: self.total,
            shard: self.shard,
            no_namespace: self.no_namespace.clone(),
        }
    }

    pub fn summary(&self) -> PlanSummary {
        let skipped = self
            .cells
            .iter()
            .filter(|c| matches!(c.action, Action::Skip(_)))
            .count();
        PlanSummary {
            cells: self.cells.len(),
            to_build: self.cells.len() - skipped,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_i_of_n_and_reads_back_as_written() {
        for (text, index, count) in [("1/1", 1, 1), ("2/3", 2, 3), (" 3 / 3 ", 3, 3)] {
            let s: Shard = text.parse().unwrap();
            assert_eq!((s.index, s.count), (index, count), "{text}");
        }
        assert_eq!("2/3".parse::<Shard>().unwrap().to_string(), "2/3");
        for text in ["0/3", "4/3", "1/0", "3", "a/b", "-1/2", "1/2/3", ""] {
            let err = text.parse::<Shard>().unwrap_err();
            assert_eq!(err.code(), crate::error::exit::USAGE, "{text}");
            assert_eq!(
                err.to_string(),
                format!("--shard {text}: expected I/N with 1 <= I <= N, e.g. 2/3")
            );
        }
    }

    fn node<'a>(
        name: &'a str,
        target: &'a str,
        release: &'a str,
        depends: &'a [String],
    ) -> Node<'a> {
        Node {
            name,
            version: "1.0",
            source: Path::new(name),
            target,
            release,
            depends,
        }
    }

    #[test]
    fn a_dependency_links_to_the_same_module_for_the_same_target_and_kernel_only() {
        let on_base = vec!["base".to_string()];
        let nodes = [
            node("base", "arm64", "6.1.0-50-arm64", &[]),
            node("base", "amd64", "6.1.0-50-amd64", &[]),
            node("user", "amd64", "6.1.0-50-amd64", &on_base),
            node("user", "arm64", "6.1.0-50-arm64", &on_base),
            // No base for this kernel: built without it, the name kept for the warning.
            node("user", "arm64", "6.1.0-57-arm64", &on_base),
        ];
        let links = link(&nodes).unwrap();
        let deps: Vec<&[usize]> = links.iter().map(|(d, _)| d.as_slice()).collect();
        assert_eq!(deps, [&[][..], &[], &[1], &[0], &[]]);
        let absent: Vec<&[String]> = links.iter().map(|(_, a)| a.as_slice()).collect();
        assert_eq!(absent, [&[][..], &[], &[], &[], &on_base[..]]);
    }

    #[test]
    fn one_module_from_two_sources_for_one_kernel_is_refused() {
        let mut nodes = [
            node("hello", "arm64", "6.1.0-50-arm64", &[]),
            node("hello", "arm64", "6.1.0-50-arm64", &[]),
        ];
        nodes[0].source = Path::new("/src/a");
        nodes[1].source = Path::new("/src/b");
        let err = link(&nodes).unwrap_err();
        assert_eq!(err.code(), crate::error::exit::USAGE);
        assert_eq!(
            err.message,
            "module hello 1.0 comes from both /src/a and /src/b"
        );
        // The control: the same module for another kernel is another cell.
        nodes[1].release = "6.1.0-57-arm64";
        assert!(link(&nodes).is_ok());
    }

    #[test]
    fn a_cycle_is_found_with_its_path_and_a_chain_is_not_one() {
        // 0 -> 1 -> 2 and 3 -> 0: no cycle.
        let chain = [vec![1], vec![2], vec![], vec![0]];
        assert_eq!(cycle(&chain), None);
        // A diamond (two paths to one cell) is no cycle either.
        assert_eq!(cycle(&[vec![1, 2], vec![3], vec![3], vec![]]), None);
        // 3 -> 1 closes 1 -> 2 -> 3 -> 1: reported from where it closes.
        let looped = [vec![1], vec![2], vec![3], vec![1]];
        assert_eq!(cycle(&looped), Some(vec![1, 2, 3, 1]));
        assert_eq!(cycle(&[vec![0]]), Some(vec![0, 0]));
        assert_eq!(cycle(&[]), None);
    }

    #[test]
    fn a_subset_holds_what_was_asked_and_all_it_depends_on() {
        // 4 -> 2 -> 0, 3 -> 1; 5 alone.
        let deps: [&[usize]; 6] = [&[], &[], &[0], &[1], &[2], &[]];
        assert_eq!(
            with_their_dependencies(&deps, &[4]),
            [true, false, true, false, true, false]
        );
        assert_eq!(
            with_their_dependencies(&deps, &[3, 5]),
            [false, true, false, true, false, true]
        );
        // What depends on an asked cell is not pulled in.
        assert_eq!(
            with_their_dependencies(&deps, &[0]),
            [true, false, false, false, false, false]
        );
        assert_eq!(with_their_dependencies(&deps, &[]), [false; 6]);
    }

    #[test]
    fn arch_names_are_dkms_s_then_kmx_s_then_the_kernel_s_each_once() {
        assert_eq!(
            arch_names(["aarch64", "arm64", "arm64"]),
            ["aarch64", "arm64"]
        );
        assert_eq!(
            arch_names(["x86_64", "amd64", "x86"]),
            ["x86_64", "amd64", "x86"]
        );
        assert_eq!(
            arch_names(["armv7l", "armhf", "arm"]),
            ["armv7l", "armhf", "arm"]
        );
        assert_eq!(arch_names(["i686", "i686", "x86"]), ["i686", "x86"]);
    }

    #[test]
    fn a_cell_lives_under_module_version_release_target_and_works_in_its_slot() {
        let out = Path::new("/out");
        let (dir, log) = cell_paths(out, "hello", "1.0", "6.1.0-50-arm64", "arm64");
        assert_eq!(dir, Path::new("/out/hello/1.0/6.1.0-50-arm64/arm64"));
        assert_eq!(
            log,
            Path::new("/out/logs/hello-1.0-6.1.0-50-arm64-arm64.log")
        );
        assert_eq!(
            slot_name(2, Path::new("/src/hello-dkms"), "arm64", "6.1.0-50-arm64"),
            "2-hello-dkms-arm64-6.1.0-50-arm64"
        );
        // A source whose directory has no name a path can hold (`/`) is `module`.
        assert_eq!(
            slot_name(0, Path::new("/"), "amd64", "6.1"),
            "0-module-amd64-6.1"
        );
    }
}
