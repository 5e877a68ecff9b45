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
    // $dkms_tree/<module>/<version>/build. Name it by source, target and kernel; the spec
    // may rename the module.
    let slot = format!(
        "{si}-{}-{}-{}",
        source
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module"),
        ts.target.name,
        tree.release
    );
    let work_dir = out.join(".work").join(&slot);
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
    // DKMS's $arch first, then kmx's target name and the kernel's ARCH, each once.
    let mut arch_names: Vec<&str> = Vec::new();
    for name in [
        &ts.target.dkms_arch,
        &ts.target.name,
        &ts.target.kernel_arch,
    ] {
        if !arch_names.contains(&name.as_str()) {
            arch_names.push(name);
        }
    }
    let action = match spec.exclusion(&tree.release, &arch_names, &|c| tree.config.enabled(c)) {
        Some(reason) => Action::Skip(reason),
        None => Action::Build,
    };
    let out_dir = out
        .join(&spec.name)
        .join(&spec.version)
        .join(&tree.release)
        .join(&ts.target.name);
    let log = out.join("logs").join(format!(
        "{}-{}-{}-{}.log",
        spec.name, spec.version, tree.release, ts.target.name
    ));
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

/// Link each cell to the cells of its BUILD_DEPENDS for the same target and kernel, and
/// refuse cycles. A dependency that is not in the build is a warning in the cell's log, and
/// the cell builds without it, as `dkms build` does (DKMS 3.0 reads BUILD_DEPENDS only to
/// order `autoinstall`; Debian's nvidia-fs-dkms names `nvidia-current`, often absent).
fn resolve_dependencies(cells: &mut [Cell]) -> Result<()> {
    let mut by_key: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for c in cells.iter() {
        let key = (
            c.spec.name.clone(),
            c.target.target.name.clone(),
            c.tree.release.clone(),
        );
        if let Some(other) = by_key.insert(key, c.index) {
            let first = &cells[other];
            return Err(Error::usage(format!(
                "module {} {} comes from both {} and {}",
                c.spec.name,
                c.spec.version,
                first.source.display(),
                c.source.display()
            ))
            .hint("build each module once: give each source directory once, with its own PACKAGE_NAME"));
        }
    }
    for cell in cells.iter_mut() {
        let mut deps = Vec::new();
        for dep in &cell.spec.build_depends {
            let key = (
                dep.clone(),
                cell.target.target.name.clone(),
                cell.tree.release.clone(),
            );
            match by_key.get(&key) {
                Some(&j) => deps.push(j),
                None => cell.spec.warnings.push(format!(
                    "BUILD_DEPENDS names module `{dep}`, which is not part of this build: \
                     built without it, as `dkms build` does (pass the source directory of \
                     `{dep}` to the same `kmx build` to build it first and use its symbols)"
                )),
            }
        }
        cell.deps = deps;
    }
    // Cycle check: depth-first search with colours.
    fn visit(i: usize, cells: &[Cell], colour: &mut [u8], stack: &mut Vec<usize>) -> Result<()> {
        match colour[i] {
            2 => return Ok(()),
            1 => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                let names: Vec<&str> = stack[start..]
                    .iter()
                    .chain(std::iter::once(&i))
                    .map(|&c| cells[c].spec.name.as_str())
                    .collect();
                return Err(Error::usage(format!(
                    "BUILD_DEPENDS form a cycle: {}",
                    names.join(" -> ")
                ))
                .hint("remove one of these dependencies"));
            }
            _ => {}
        }
        colour[i] = 1;
        stack.push(i);
        for &d in &cells[i].deps {
            visit(d, cells, colour, stack)?;
        }
        stack.pop();
        colour[i] = 2;
        Ok(())
    }
    let mut colour = vec![0u8; cells.len()];
    for i in 0..cells.len() {
        visit(i, cells, &mut colour, &mut Vec::new())?;
    }
    Ok(())
}

impl Plan {
    /// The cells at positions `needed`, plus everything they depend on, as a plan of its own.
    pub fn with_dependencies(&self, needed: &[usize]) -> Plan {
        let mut keep = vec![false; self.cells.len()];
        let mut stack: Vec<usize> = needed.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.cells[i].deps.iter().copied());
            }
        }
        self.subset(&keep)
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
}
