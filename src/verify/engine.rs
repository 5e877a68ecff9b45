//! The verify engine: will these modules load on that kernel, and if not, exactly why.
//! `kmx verify` resolves its arguments into a [`Request`], calls [`run`] and prints the
//! [`Report`]; this never prints.
//!
//! The run has four steps, so that shared data is built once and checking is parallel:
//! 1. resolve the target (its ELF identity) and the candidate kernel trees;
//! 2. read every module file in parallel (the reader maps files, it does not read them);
//! 3. index what the modules of the run export (plus any build `Module.symvers` found next
//!    to them or given with `--symvers`), and load each needed tree's `Module.symvers`
//!    ONCE, shared read-only by every thread;
//! 4. check every module in parallel; the report keeps them in file order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::arch::ElfIdentity;
use crate::config::{Profiles, Target};
use crate::error::{Error, Result};
use crate::kernel::registry::{Registry, trees_of};
use crate::kernel::select::{self, Purpose};
use crate::kernel::symvers::Symvers;
use crate::kernel::tree::KernelTree;
use crate::state::Home;
use crate::verify::certs;
use crate::verify::checks::{
    self, Check, CheckKind, Kernel, Keys, KeysUnknown, Options, Others, Status, TreeSymbols,
};
use crate::verify::module::{Compression, Module};
use crate::verify::signing::Keyring;

/// What to verify, resolved from `kmx verify`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Module files, and directories to walk for them.
    pub paths: Vec<PathBuf>,
    /// `--target`; without it (and without `--kdir`/`--no-kernel`), each module's own.
    pub target: Option<String>,
    /// `--kernel RELEASE`: that tree of the target only.
    pub kernel: Option<String>,
    /// `--kdir DIR`: this tree, for every module.
    pub kdir: Option<PathBuf>,
    /// `--no-kernel`: the ELF identity only.
    pub no_kernel: bool,
    /// `--symvers`: build `Module.symvers` files with out-of-tree CRCs.
    pub symvers: Vec<PathBuf>,
    pub strict: bool,
    /// `--cert`: certificates trusted besides the kernel's.
    pub cert: Vec<PathBuf>,
    pub sig_enforce: bool,
    /// Worker threads; `None`: one per CPU.
    pub jobs: Option<usize>,
}

/// Where the engine finds profiles and kmx's home (its kernel trees, caches).
pub struct Env<'a> {
    pub profiles: &'a Profiles,
    pub home: &'a Home,
}

/// What a run found: every module's result in file order, the trees used, the totals, and
/// the notes (warnings about skipped files and trees) to show the user.
#[derive(Debug)]
pub struct Report {
    pub modules: Vec<ModuleReport>,
    pub kernels: Vec<KernelUsed>,
    /// No kernel tree was at hand (only the identity was checked).
    pub no_trees: bool,
    pub totals: Totals,
    pub notes: Vec<String>,
}

/// Verify the modules `req` names.
pub fn run(env: &Env, req: &Request) -> Result<Report> {
    let mut notes = Vec::new();
    let checked = if req.target.is_none() && req.kdir.is_none() && !req.no_kernel {
        // No --target: each module's own (its cell's provenance.json, as `kmx build` wrote
        // it, else the one target whose trees have its vermagic release and whose ELF
        // identity it has), checked in one set per target.
        let (files, found_symvers) = collect(&req.paths, &mut notes)?;
        let mut all = Checked {
            reports: Vec::new(),
            kernels: Vec::new(),
            no_trees: false,
        };
        for (target, files) in targets_of(env, &req.paths, files)? {
            let one = check_set(
                env,
                req,
                Some(&target),
                Some((files, found_symvers.clone())),
                &mut notes,
            )?;
            all.reports.extend(one.reports);
            all.kernels.extend(one.kernels);
            all.no_trees |= one.no_trees;
        }
        all
    } else {
        check_set(env, req, req.target.as_deref(), None, &mut notes)?
    };
    let Checked {
        reports,
        kernels,
        no_trees,
    } = checked;
    let mut totals = Totals {
        modules: reports.len(),
        ..Totals::default()
    };
    for r in &reports {
        match r.status {
            Status::Pass => totals.passed += 1,
            Status::Warn => totals.warned += 1,
            Status::Fail => totals.failed += 1,
        }
    }
    Ok(Report {
        modules: reports,
        kernels,
        no_trees,
        totals,
        notes,
    })
}

/// The kernel trees modules may be checked against.
pub struct Trees {
    trees: Vec<KernelTree>,
    /// Each tree's kernel image, when it was fetched (`--with-image`): its certificates.
    images: Vec<Option<PathBuf>>,
    /// Chosen explicitly (`--kdir`, `--kernel`): every module is checked against `trees[0]`.
    fixed: bool,
}

/// One module's result, as printed and as JSON.
#[derive(Debug, Serialize)]
pub struct ModuleReport {
    pub path: PathBuf,
    pub name: String,
    pub status: Status,
    /// The release of the kernel tree it was checked against; `None` without a tree.
    pub kernel: Option<String>,
    pub vermagic: Option<String>,
    pub identity: Option<ElfIdentity>,
    pub compression: Option<Compression>,
    pub signer: Option<String>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub modules: usize,
    pub passed: usize,
    pub warned: usize,
    pub failed: usize,
}

/// A kernel tree modules were checked against.
#[derive(Debug, Serialize)]
pub struct KernelUsed {
    pub release: String,
    pub kdir: PathBuf,
    pub vermagic: String,
    pub symvers: Option<PathBuf>,
}

/// What checking one set of modules for one target gave.
struct Checked {
    reports: Vec<ModuleReport>,
    /// The trees modules were checked against.
    kernels: Vec<KernelUsed>,
    /// No kernel tree was at hand (only the identity was checked).
    no_trees: bool,
}

/// The target each module is for, when `--target` is not given: the one its cell's
/// `provenance.json` names (in its directory or one above it, up to the path given), else
/// the only target with a tree of the module's vermagic release and the module's ELF
/// identity (or, when several share that tree, the first of them). Modules grouped by
/// target, in name order; a module with none is a usage error naming it.
fn targets_of(
    ctx: &Env,
    given: &[PathBuf],
    files: Vec<PathBuf>,
) -> Result<std::collections::BTreeMap<String, Vec<PathBuf>>> {
    let registry = Registry::load(ctx.home)?;
    let mut groups: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for file in files {
        let target = match recorded_target(&file, given) {
            Some(t) if ctx.profiles.targets.contains_key(&t) => t,
            _ => inferred_target(ctx, &registry, &file)?,
        };
        groups.entry(target).or_default().push(file);
    }
    Ok(groups)
}

/// The `target` of the `provenance.json` beside the module or in a directory above it,
/// no higher than the path it was found under.
fn recorded_target(file: &Path, given: &[PathBuf]) -> Option<String> {
    let root = given.iter().find(|g| file.starts_with(g));
    let mut dir = file.parent();
    while let Some(d) = dir {
        if let Ok(bytes) = std::fs::read(d.join("provenance.json")) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            return v["target"].as_str().map(str::to_string);
        }
        if root.is_none_or(|r| d == r.as_path()) {
            return None;
        }
        dir = d.parent();
    }
    None
}

/// The target whose trees have the module's vermagic release and whose toolchain makes
/// its ELF identity.
fn inferred_target(ctx: &Env, registry: &Registry, file: &Path) -> Result<String> {
    let no_target = |why: String| {
        Error::usage(format!("no --target given, and {why}"))
            .at(file)
            .hint("name the target with -t TARGET (`kmx targets` lists them), or pass --kdir DIR or --no-kernel")
    };
    let module = Module::read(file).map_err(|e| no_target(format!("it cannot be read: {e}")))?;
    let release = module_release(&module).to_string();
    let mut candidates: Vec<(&str, &Path)> = Vec::new();
    for t in registry.trees.iter().filter(|t| t.release == release) {
        let Ok(target) = ctx.profiles.target(&t.target) else {
            continue;
        };
        let same = ctx
            .profiles
            .toolchain_of(target)
            .is_ok_and(|tc| tc.identity == module.identity);
        if same && !candidates.iter().any(|(n, _)| *n == t.target) {
            candidates.push((&t.target, &t.kdir));
        }
    }
    match candidates.as_slice() {
        [] => Err(no_target(format!(
            "no build record (provenance.json) is beside it and no target has a kernel tree of its release \"{release}\" for {}",
            module.identity
        ))),
        [(first, kdir), rest @ ..] if rest.iter().all(|(_, k)| k == kdir) => Ok(first.to_string()),
        many => Err(no_target(format!(
            "targets {} all have a tree of its release \"{release}\"",
            many.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Check `files` (or, when `None`, the modules under `--paths`) for `target`.
fn check_set(
    ctx: &Env,
    args: &Request,
    target: Option<&str>,
    collected: Option<(Vec<PathBuf>, Vec<PathBuf>)>,
    notes: &mut Vec<String>,
) -> Result<Checked> {
    let target_name = target.unwrap_or("");
    let target = target.map(|t| ctx.profiles.target(t)).transpose()?;
    let identity = target
        .map(|t| ctx.profiles.toolchain_of(t).map(|tc| tc.identity))
        .transpose()?;
    let trees = select_trees(ctx, args, target, notes)?;
    let given_certs = if args.cert.is_empty() {
        None
    } else {
        Some(certs::from_files(&args.cert)?)
    };
    let cert_cache = ctx.home.root.join("cache").join("certs");
    // Compressed modules read before are found by content, not decompressed again.
    crate::verify::memo::open(&ctx.home.root.join("cache").join("verify"));
    // Each tree's Module.symvers is loaded once, by the first module that needs it.
    let symbols: Vec<OnceLock<Result<Option<TreeSymbols>>>> =
        trees.trees.iter().map(|_| OnceLock::new()).collect();
    let digests = OnceLock::new();
    // When every module is checked against one tree, its Module.symvers (tens of thousands
    // of lines) and the digest cache are loaded while this thread walks the directories,
    // instead of by the first worker while the others wait for it.
    let (files, found_symvers) = std::thread::scope(|scope| {
        if trees.fixed || trees.trees.len() == 1 {
            scope.spawn(|| {
                if let (Some(lock), Some(tree)) = (symbols.first(), trees.trees.first()) {
                    lock.get_or_init(|| TreeSymbols::load(tree));
                }
                digests.get_or_init(|| certs::DigestCache::load(&cert_cache));
            });
        }
        match collected {
            Some(c) => Ok(c),
            None => collect(&args.paths, notes),
        }
    })?;

    // Threads bounded by the work and the machine: one per module at most, and no more
    // than the CPUs (each may hold a decompressed module; more would only wait).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = args.jobs.unwrap_or(cpus).min(cpus).min(files.len()).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kmx-verify-{i}"))
        .build()
        .map_err(|e| Error::env(format!("cannot start worker threads: {e}")))?;

    // Each tree's trusted keys are read once, by the first signed module that needs them.
    let keys: Vec<OnceLock<std::result::Result<Keyring, KeysUnknown>>> =
        trees.trees.iter().map(|_| OnceLock::new()).collect();
    let opts = Options {
        strict: args.strict,
        sig_enforce: args.sig_enforce,
    };
    let ctx = Pass {
        trees: &trees,
        symbols: &symbols,
        keys: &keys,
        digests: &digests,
        given_certs: given_certs.as_ref(),
        cert_cache: &cert_cache,
        identity: identity.as_ref(),
        target: target_name,
        opts,
    };

    // `--symvers` files are read now, so that a bad one is an error whether or not a
    // module turns out to need them.
    let given_symvers: Vec<Symvers> = args
        .symvers
        .iter()
        .map(|f| Symvers::load(f))
        .collect::<Result<_>>()?;
    // Pass 1: read and check every module against the kernel alone, keeping only its
    // report and exports, so that memory stays flat however many modules there are.
    let first: Vec<(ModuleReport, Option<Exports>)> = pool.install(|| {
        files
            .par_iter()
            .map(|path| ctx.check(path, &Others::default()))
            .collect()
    });
    let mut reports = Vec::with_capacity(first.len());
    let mut exports = Vec::with_capacity(first.len());
    let mut again = Vec::new();
    for (i, (report, e)) in first.into_iter().enumerate() {
        if let Some(e) = e {
            if e.needs_others {
                again.push((i, e.tree));
            }
            exports.push(e);
        }
        reports.push(report);
    }
    // Pass 2: modules using symbols or modules the kernel does not provide are checked
    // again, now that every module's exports are known. The index of those exports is
    // built only then: over a whole distribution tree, whose Module.symvers lists every
    // in-tree module's exports, no module needs it.
    let mut others = OthersByKernel::default();
    if !again.is_empty() {
        others = OthersByKernel::index(&exports, &found_symvers, &given_symvers)?;
        let second: Vec<(usize, ModuleReport)> = pool.install(|| {
            again
                .par_iter()
                .map(|&(i, tree)| (i, ctx.check(&files[i], others.of(tree)).0))
                .collect()
        });
        for (i, report) in second {
            reports[i] = report;
        }
    }
    crate::verify::memo::save();
    for k in keys
        .iter()
        .filter_map(|k| k.get())
        .filter_map(|k| k.as_ref().ok())
    {
        certs::save_verified(k, &cert_cache);
    }
    if let Some(d) = digests.get() {
        d.save(&cert_cache);
    }
    let mut used = BTreeSet::new();
    for (i, lock) in symbols.iter().enumerate() {
        match lock.get() {
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(loaded)) => {
                if loaded.is_none() {
                    notes.push(format!(
                        "warning: {} has no Module.symvers: CRCs and symbols are not checked",
                        trees.trees[i].kdir.display()
                    ));
                }
                used.insert(i);
            }
            None => {}
        }
    }
    // The run's big tables (each tree's Module.symvers, every module's exports) are not
    // freed one string at a time just before the process exits: the exit frees them.
    std::mem::forget(symbols);
    std::mem::forget(exports);
    std::mem::forget(others);
    let kernels = used
        .iter()
        .map(|&i| {
            let t = &trees.trees[i];
            KernelUsed {
                release: t.release.clone(),
                kdir: t.kdir.clone(),
                vermagic: t.vermagic.to_string(),
                symvers: t.symvers.clone(),
            }
        })
        .collect();
    Ok(Checked {
        reports,
        kernels,
        no_trees: trees.trees.is_empty(),
    })
}

/// `--kdir`, else the target's trees (narrowed by `--kernel`); none with `--no-kernel`, or
/// when the target has no tree at all (then only the identity is checked, with a note).
fn select_trees(
    ctx: &Env,
    args: &Request,
    target: Option<&Target>,
    notes: &mut Vec<String>,
) -> Result<Trees> {
    if args.no_kernel {
        return Ok(Trees {
            trees: Vec::new(),
            images: Vec::new(),
            fixed: false,
        });
    }
    let mut registry = Registry::load(ctx.home)?;
    // `--kernel R`: the machine's installed kernel R is a tree too (`kmx verify
    // /lib/modules/R/updates -t amd64 --kernel R` checks what the hooks installed).
    if args.kernel.is_some() {
        registry.add_installed(ctx.profiles, Path::new("/"));
    }
    let image_of = |kdir: &Path| -> Option<PathBuf> {
        let canonical = std::fs::canonicalize(kdir).ok();
        registry
            .trees
            .iter()
            .find(|r| r.kdir == kdir || std::fs::canonicalize(&r.kdir).ok() == canonical)
            .and_then(|r| r.boot.as_ref())
            .map(|b| b.image.clone())
    };
    if let Some(kdir) = &args.kdir {
        return Ok(Trees {
            trees: vec![KernelTree::inspect(kdir)?],
            images: vec![image_of(kdir)],
            fixed: true,
        });
    }
    let Some(target) = target else {
        return Err(
            Error::usage("--target is required to find a kernel tree").hint(
                "name the target (`kmx targets` lists them), or pass --kdir DIR or --no-kernel",
            ),
        );
    };
    let mut trees = Vec::new();
    for r in trees_of(target, &registry) {
        match KernelTree::inspect(&r.kdir) {
            Ok(t) => trees.push(t),
            Err(e) => notes.push(format!(
                "warning: skipping a broken kernel tree of {}: {}",
                target.name,
                crate::error::render_inline(&e)
            )),
        }
    }
    if let Some(release) = &args.kernel {
        let mut trees = select::of_release(
            &target.name,
            trees,
            std::slice::from_ref(release),
            Purpose::Verify,
        )
        .map_err(|e| e.elsewhere_in(&registry))?;
        trees.truncate(1);
        let images = trees.iter().map(|t| image_of(&t.kdir)).collect();
        return Ok(Trees {
            trees,
            images,
            fixed: true,
        });
    }
    if trees.is_empty() {
        notes.push(format!(
            "note: target {} has no kernel tree: checking the ELF identity only (fetch one with `kmx kernels fetch --target {}`, or pass --kdir DIR)",
            target.name, target.name
        ));
    }
    let images = trees.iter().map(|t| image_of(&t.kdir)).collect();
    Ok(Trees {
        trees,
        images,
        fixed: false,
    })
}

/// The tree a module is checked against: the fixed one, else the one whose release is the
/// module's vermagic release, else the only one. `Ok(None)` without trees.
fn choose_tree(
    trees: &Trees,
    release: &str,
    target: &str,
) -> std::result::Result<Option<usize>, select::NoSuchTree> {
    if trees.trees.is_empty() {
        return Ok(None);
    }
    if trees.fixed || trees.trees.len() == 1 {
        return Ok(Some(0));
    }
    let picked = select::of_release(
        target,
        trees.trees.iter().collect(),
        &[release.to_string()],
        Purpose::ModuleRelease,
    )?;
    Ok(trees.trees.iter().position(|t| std::ptr::eq(t, picked[0])))
}

/// What a module's exports contribute to the run, from pass 1.
struct Exports {
    name: String,
    exported: Vec<String>,
    /// The directory the module is in (a build's `Module.symvers` there is its CRCs).
    dir: PathBuf,
    /// The tree (index into the run's trees) it was checked against: its exports count
    /// only for modules checked against the same kernel. A module built for 6.1.0-50 and
    /// one built for 6.1.0-57 both export `foo`, each with its own CRC.
    tree: Option<usize>,
    /// The module uses a symbol or names a dependency the kernel does not provide: check it
    /// again once the other modules' exports are known.
    needs_others: bool,
}

/// The exports of the run's other modules, one index per kernel tree they were checked
/// against: what the modules built for one kernel export, with the CRCs of the build
/// `Module.symvers` beside them, and those of `--symvers` for every kernel.
#[derive(Default)]
struct OthersByKernel {
    by_tree: std::collections::HashMap<Option<usize>, Others>,
    /// For a kernel no module was checked against: nothing.
    empty: Others,
}

impl OthersByKernel {
    fn index(
        exports: &[Exports],
        found_symvers: &[PathBuf],
        given_symvers: &[Symvers],
    ) -> Result<OthersByKernel> {
        let mut index = OthersByKernel::default();
        let mut all: Vec<Option<usize>> = exports.iter().map(|e| e.tree).collect();
        all.sort();
        all.dedup();
        // Later CRCs win: a build's Module.symvers, then `--symvers`; a module's own
        // exports only add what neither gave.
        for file in found_symvers {
            let symvers = Symvers::load(file)?;
            let dir = file.parent().unwrap_or(Path::new(""));
            // A build's Module.symvers belongs to the kernel of the modules beside it; of
            // a directory without modules, to every kernel.
            let mut trees: Vec<Option<usize>> = exports
                .iter()
                .filter(|e| e.dir == dir)
                .map(|e| e.tree)
                .collect();
            trees.dedup();
            if trees.is_empty() {
                trees.clone_from(&all);
            }
            for tree in trees {
                index.by_tree.entry(tree).or_default().add_symvers(&symvers);
            }
        }
        for symvers in given_symvers {
            for tree in &all {
                index.by_tree.entry(*tree).or_default().add_symvers(symvers);
            }
        }
        for e in exports {
            index
                .by_tree
                .entry(e.tree)
                .or_default()
                .add_module(&e.name, &e.exported);
        }
        Ok(index)
    }

    /// The index for modules checked against `tree`.
    fn of(&self, tree: Option<usize>) -> &Others {
        self.by_tree.get(&tree).unwrap_or(&self.empty)
    }
}

/// Everything a worker needs to check one module; shared read-only by every thread.
struct Pass<'a> {
    trees: &'a Trees,
    symbols: &'a [OnceLock<Result<Option<TreeSymbols>>>],
    keys: &'a [OnceLock<std::result::Result<Keyring, KeysUnknown>>],
    digests: &'a OnceLock<certs::DigestCache>,
    given_certs: Option<&'a Keyring>,
    cert_cache: &'a Path,
    identity: Option<&'a ElfIdentity>,
    target: &'a str,
    opts: Options,
}

impl Pass<'_> {
    /// Give a signed module the digest of its signed bytes: from the digest cache when the
    /// file is unchanged since a run computed it (same path, inode, size, mtime and ctime,
    /// as git's index trusts), else by reading it again with the digest. Left `None` when
    /// the file cannot be read again (the signature check then says it was not checked).
    fn fill_digest(&self, path: &Path, meta: &std::fs::Metadata, module: &mut Module) {
        let Some(message) = module
            .signature
            .as_mut()
            .and_then(|s| s.message.as_deref_mut())
        else {
            return;
        };
        if message.content_digest.is_some() {
            return;
        }
        let cache = self
            .digests
            .get_or_init(|| certs::DigestCache::load(self.cert_cache));
        let key = certs::DigestCache::key(path, meta, &message.digest_oid);
        if let Some(d) = cache.get(&key) {
            message.content_digest = Some(d);
            return;
        }
        let digest = Module::read_with(path, true).ok().and_then(|m| {
            m.signature
                .and_then(|s| s.message)
                .and_then(|m| m.content_digest)
        });
        if let Some(d) = &digest {
            cache.remember(key, d);
        }
        message.content_digest = digest;
    }

    /// The keys tree `i`'s kernel trusts: its image's built-in certificates and `--cert`.
    /// An `Err` says why kmx does not know them (then signatures are not checked).
    fn load_keys(&self, i: usize) -> std::result::Result<Keyring, KeysUnknown> {
        let from_image = self.trees.images[i]
            .as_ref()
            .map(|image| certs::builtin(image, self.cert_cache).map_err(KeysUnknown::Image));
        let mut keyring = match (from_image, self.given_certs) {
            (Some(Ok(mut k)), Some(given)) => {
                k.keys.extend(given.keys.iter().cloned());
                k.source = format!("{} and {}", k.source, given.source);
                k
            }
            (Some(Ok(k)), None) => k,
            (_, Some(given)) => given.clone(),
            (Some(Err(why)), None) => return Err(why),
            (None, None) => {
                return Err(KeysUnknown::NoCertificate {
                    release: self.trees.trees[i].release.clone(),
                });
            }
        };
        certs::load_verified(&mut keyring, self.cert_cache);
        Ok(keyring)
    }

    /// Read the module at `path` and check it; its exports when it could be read.
    fn check(&self, path: &Path, others: &Others) -> (ModuleReport, Option<Exports>) {
        // The signed bytes' digest is computed only when the signature is checked.
        let (mut module, meta) = match Module::read_stat(path, false) {
            Ok(m) => m,
            Err(e) => {
                let report = ModuleReport {
                    path: path.to_path_buf(),
                    name: file_stem(path),
                    status: Status::Fail,
                    kernel: None,
                    vermagic: None,
                    identity: None,
                    compression: None,
                    signer: None,
                    checks: vec![Check::new(CheckKind::Read, Status::Fail, e.to_string())],
                };
                return (report, None);
            }
        };
        let mut kernel = None;
        let mut chosen = None;
        let checks = match choose_tree(self.trees, module_release(&module), self.target) {
            Err(why) => {
                let mut c: Vec<Check> = self
                    .identity
                    .map(|i| checks::identity(&module, i, None))
                    .into_iter()
                    .collect();
                c.push(Check::new(CheckKind::Kernel, Status::Fail, why.to_string()));
                c
            }
            Ok(choice) => {
                chosen = choice;
                let mut load_failed = None;
                if let Some(i) = choice {
                    let tree = &self.trees.trees[i];
                    match self.symbols[i].get_or_init(|| TreeSymbols::load(tree)) {
                        Ok(symbols) => {
                            let keys = if module.signature.is_some() && tree.module_sig.enabled {
                                match self.keys[i].get_or_init(|| self.load_keys(i)) {
                                    Ok(k) => {
                                        self.fill_digest(path, &meta, &mut module);
                                        Keys::Known(k)
                                    }
                                    Err(why) => Keys::Unknown(why),
                                }
                            } else {
                                Keys::Unknown(&KeysUnknown::NotAsked)
                            };
                            kernel = Some(Kernel {
                                tree,
                                symbols: symbols.as_ref(),
                                keys,
                            })
                        }
                        Err(e) => load_failed = Some(e.to_string()),
                    }
                }
                match load_failed {
                    Some(why) => vec![Check::new(CheckKind::Kernel, Status::Fail, why)],
                    None => checks::run_all(&module, self.identity, kernel, others, self.opts),
                }
            }
        };
        let name = module_name(&module, path);
        let exports = Exports {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            tree: chosen,
            needs_others: kernel.is_some_and(|k| checks::needs_others(&module, k)),
            name: name.clone(),
            exported: std::mem::take(&mut module.exported),
        };
        let report = ModuleReport {
            path: path.to_path_buf(),
            name,
            status: checks::worst(&checks),
            kernel: kernel.map(|k| k.tree.release.clone()),
            vermagic: module.vermagic().map(str::to_string),
            identity: Some(module.identity),
            compression: module.compression,
            signer: module.signature.as_ref().map(|s| s.signer.clone()),
            checks,
        };
        (report, Some(exports))
    }
}

/// The release a module was built for: the first word of its vermagic (`""` without one).
fn module_release(module: &Module) -> &str {
    module
        .vermagic()
        .and_then(|v| v.split(' ').next())
        .unwrap_or("")
}

fn module_name(module: &Module, path: &Path) -> String {
    module
        .name()
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(path))
}

/// `hello` for `.../hello.ko.xz`.
fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.find(".ko") {
        Some(i) => name[..i].to_string(),
        None => name,
    }
}

/// The module files under `paths` (files as given; directories walked, symlinked
/// directories not followed), sorted, and the `Module.symvers` files found in those
/// directories. What the walk skipped and the user may not expect (a symlink loop) goes to
/// `notes` as a warning naming the path.
fn collect(paths: &[PathBuf], notes: &mut Vec<String>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut symvers = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::usage(format!("cannot read: {e}")).at(path).hint(
                "pass module files (.ko, .ko.xz, .ko.zst, .ko.gz) or directories holding them",
            )
        })?;
        if meta.is_dir() {
            let before = files.len();
            walk(path, &mut files, &mut symvers, notes)?;
            if files.len() == before {
                return Err(Error::usage(
                    "no kernel modules (.ko, .ko.xz, .ko.zst, .ko.gz) in this directory",
                )
                .at(path)
                .hint("pass module files or a directory holding them, e.g. lib/modules/RELEASE"));
            }
        } else if let Some(what) = crate::digest::special_kind(&meta.file_type()) {
            // Reading a device or FIFO would read without end (or block), outside the
            // decompression budget a module file has.
            return Err(Error::usage(format!("is {what}, not a module file"))
                .at(path)
                .hint(
                    "pass module files (.ko, .ko.xz, .ko.zst, .ko.gz) or directories holding them",
                ));
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    files.dedup();
    symvers.sort();
    Ok((files, symvers))
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    symvers: &mut Vec<PathBuf>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            walk(&entry.path(), files, symvers, notes)?;
        } else if kind.is_symlink() {
            // Symlinks are not followed (a link to a directory could make the walk loop),
            // but a loop, and a dangling link named like a module, is said: a broken link
            // the user may not know about, not something to skip in silence. The rest of
            // the run goes on. (`build` and `source` in lib/modules/RELEASE often dangle
            // on an image: not modules, not said.)
            match std::fs::metadata(entry.path()) {
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => notes.push(format!(
                    "warning: {}: skipped: a symlink loop ({e})",
                    entry.path().display()
                )),
                Err(e) if crate::verify::is_module_name(&name) => notes.push(format!(
                    "warning: {}: skipped: a symlink to nothing ({e})",
                    entry.path().display()
                )),
                _ => {}
            }
        } else if let Some(what) = crate::digest::special_kind(&kind) {
            notes.push(format!(
                "warning: {}: skipped: {what}, not a file",
                entry.path().display()
            ));
        } else if kind.is_file() {
            if crate::verify::is_module_name(&name) {
                files.push(entry.path());
            } else if name == "Module.symvers" {
                symvers.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> KernelTree {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/trees")
            .join(name);
        KernelTree::inspect(&dir).expect("fixture tree")
    }

    fn trees(names: &[&str], fixed: bool) -> Trees {
        Trees {
            trees: names.iter().map(|n| tree(n)).collect(),
            images: names.iter().map(|_| None).collect(),
            fixed,
        }
    }

    #[test]
    fn without_trees_no_tree_is_chosen() {
        assert_eq!(
            choose_tree(&trees(&[], false), "6.1.0-50-amd64", "amd64"),
            Ok(None)
        );
    }

    #[test]
    fn a_fixed_tree_or_the_only_one_is_chosen_whatever_the_release() {
        let two = trees(&["amd64", "arm64"], true);
        assert_eq!(choose_tree(&two, "5.10.0-1-amd64", "amd64"), Ok(Some(0)));
        let one = trees(&["arm64"], false);
        assert_eq!(choose_tree(&one, "", "arm64"), Ok(Some(0)));
    }

    #[test]
    fn among_several_trees_the_one_of_the_modules_release_is_chosen() {
        let two = trees(&["amd64", "arm64"], false);
        assert_eq!(two.trees[1].release, "6.1.0-50-arm64");
        assert_eq!(choose_tree(&two, "6.1.0-50-arm64", "x"), Ok(Some(1)));
        assert_eq!(choose_tree(&two, "6.1.0-50-amd64", "x"), Ok(Some(0)));
    }

    #[test]
    fn among_several_trees_none_of_the_release_is_an_error_naming_them() {
        let two = trees(&["amd64", "arm64"], false);
        assert_eq!(
            choose_tree(&two, "6.1.0-9-amd64", "amd64").map_err(|e| e.to_string()),
            Err(
                "no kernel tree of target amd64 has the module's release \"6.1.0-9-amd64\" \
                 (trees: 6.1.0-50-amd64, 6.1.0-50-arm64); pass --kernel RELEASE or --kdir DIR"
                    .to_string()
            )
        );
    }

    #[test]
    fn the_recorded_target_is_the_nearest_provenance_no_higher_than_the_path_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cell = dir.path().join("out/hello/1.0/6.1.0-50-arm64/arm64");
        std::fs::create_dir_all(cell.join("sub")).expect("mkdir");
        std::fs::write(cell.join("provenance.json"), r#"{"target": "arm64"}"#).expect("write");
        let module = cell.join("sub/hello.ko");
        // Found one directory up, under the path given.
        assert_eq!(
            recorded_target(&module, &[dir.path().join("out")]).as_deref(),
            Some("arm64")
        );
        // Not looked for above the path given.
        assert_eq!(recorded_target(&module, &[cell.join("sub")]), None);
    }

    #[test]
    fn a_modules_stem_drops_every_ko_suffix() {
        assert_eq!(file_stem(Path::new("/m/hello.ko.xz")), "hello");
        assert_eq!(file_stem(Path::new("hello.ko")), "hello");
        assert_eq!(file_stem(Path::new("README")), "README");
    }

    #[test]
    fn collecting_walks_directories_and_says_what_it_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).expect("mkdir");
        for f in [
            "a/x.ko",
            "a/b/y.ko.zst",
            "a/notes.txt",
            "a/b/Module.symvers",
        ] {
            std::fs::write(d.join(f), b"").expect("write");
        }
        std::os::unix::fs::symlink(d.join("a/gone.ko"), d.join("a/z.ko")).expect("symlink");
        let mut notes = Vec::new();
        let (files, symvers) = collect(&[d.join("a")], &mut notes).expect("collect");
        assert_eq!(files, [d.join("a/b/y.ko.zst"), d.join("a/x.ko")]);
        assert_eq!(symvers, [d.join("a/b/Module.symvers")]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(&format!(
                "warning: {}: skipped: a symlink to nothing",
                d.join("a/z.ko").display()
            )),
            "{notes:?}"
        );
        let empty = d.join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        let err = collect(&[empty], &mut notes).expect_err("no module");
        assert!(err.to_string().contains("no kernel modules"), "{err}");
    }
}
