//! `kmx dkms`: DKMS's own command line (`dkms add|build|install|uninstall|unbuild|remove|
//! status|autoinstall`, with `-m/-v/-k/-a/--all/--force`), answered from kmx's store, with
//! DKMS 3.0's exit codes. It is what `/usr/sbin/dkms` runs where the `kmx-dkms` package
//! stands in for Debian's `dkms`, so that the maintainer scripts dh_dkms writes into every
//! `*-dkms` package (`/usr/lib/dkms/common.postinst`, `dkms status`, `dkms remove --all`)
//! work through kmx.
//!
//! The kernels are the ones installed in the root (`/`, or `KMX_ROOT`), with their headers
//! at `lib/modules/<release>/build`, each built for the target of its own architecture.

use std::path::{Path, PathBuf};

use super::Context;
use super::lifecycle;
use super::progress::Printer;
use crate::cli::DkmsArgs;
use crate::config::manifest::Given;
use crate::error::{Error, Kind, Result, exit, render_inline};
use crate::install;
use crate::kernel::installed;
use crate::lifecycle::prepare::Prep;
use crate::lifecycle::remove::{self as rm, UninstallRequest};
use crate::lifecycle::status::{StatusLine, dkms_line};
use crate::lifecycle::{Run, install as inst, running_kernel};
use crate::state::store::{CellKey, Store, valid_component};

/// The DKMS release whose command line and exit codes this follows.
pub const DKMS_VERSION: &str = "3.0.10";

/// DKMS 3.0's exit codes, as its `die` calls give them.
mod code {
    /// Not added; already added; already built.
    pub const NOT_ADDED_OR_DUPLICATE: i32 = 3;
    /// No source directory for `add`.
    pub const NO_SOURCE: i32 = 2;
    /// Already installed for that kernel.
    pub const ALREADY_INSTALLED: i32 = 5;
    /// No `/lib/modules/<release>` to install into.
    pub const NO_KERNEL: i32 = 6;
    /// A bad dkms.conf.
    pub const BAD_CONF: i32 = 8;
    /// The build failed.
    pub const BUILD_FAILED: i32 = 10;
    /// `autoinstall`: a module failed.
    pub const AUTOINSTALL_FAILED: i32 = 11;
    /// BUILD_EXCLUSIVE rules this kernel out.
    pub const EXCLUDED: i32 = 77;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add,
    Build,
    Install,
    Uninstall,
    Unbuild,
    Remove,
    Status,
    Autoinstall,
}

impl Action {
    fn parse(word: &str) -> Option<Action> {
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
}

/// DKMS's words, interpreted as DKMS does (`dkms [action] [module/version | dir] [-m M
/// [-v V]]`): the action may come anywhere; a directory with a dkms.conf is a source tree;
/// anything else is MODULE/VERSION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    pub module: Option<String>,
    pub version: Option<String>,
    /// A source tree named on the command line (`dkms add ./hello-1.0`).
    pub source: Option<PathBuf>,
    /// (release, arch) pairs: `-k K/ARCH`, or `-k K` paired with the `-a` of the same rank.
    pub kernels: Vec<(String, Option<String>)>,
}

fn usage(msg: impl Into<String>) -> Error {
    Error::usage(msg).hint(
        "usage as DKMS's: dkms ACTION [MODULE/VERSION] [-m MODULE] [-v VERSION] [-k KERNEL[/ARCH]] [-a ARCH] [--all]",
    )
}

pub fn interpret(args: &DkmsArgs, is_source: &dyn Fn(&Path) -> bool) -> Result<Request> {
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
        if let Some(a) = Action::parse(w) {
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
            Some((k, a)) => (k.to_string(), Some(a.to_string())),
            None => (
                k.clone(),
                args.arch
                    .get(if args.arch.len() == 1 { 0 } else { i })
                    .cloned(),
            ),
        })
        .collect();
    Ok(Request {
        action,
        module,
        version,
        source,
        kernels,
    })
}

/// What an action works on: its root and the command's flags, resolved.
struct Job<'a> {
    ctx: &'a Context,
    store: &'a Store,
    root: PathBuf,
    /// Where registered sources come from: `--sourcetree`, else ROOT/usr/src.
    sources: PathBuf,
    /// `--force`: build and install again what is built and installed.
    force: bool,
    /// `-j`, `--no-depmod`, kmx's own signing key and the lock: as `kmx install` runs.
    run: Run,
}

pub fn run(ctx: &Context, store: &Store, args: &DkmsArgs, wait: bool) -> Result<i32> {
    if args.version_flag {
        println!("dkms-{DKMS_VERSION}");
        eprintln!(
            "(DKMS's command line, served by kmx {})",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(exit::OK);
    }
    let req = interpret(args, &|p| p.join("dkms.conf").is_file())?;
    let root = install::resolve_root(&args.root)?;
    let job = Job {
        ctx,
        store,
        sources: args
            .sourcetree
            .clone()
            .unwrap_or_else(|| root.join("usr/src")),
        root,
        force: args.force,
        run: lifecycle::run_of(
            ctx,
            args.jobs,
            !args.no_depmod,
            &crate::cli::SignArgs::default(),
            wait,
        )?,
    };
    match req.action {
        Action::Status => job.status(&req),
        Action::Add => job.add(&req),
        Action::Autoinstall => job.autoinstall(&req),
        action => {
            let (module, version) = job.module_version(&req)?;
            let kernels = match req.kernels.is_empty() {
                true if args.all && matches!(action, Action::Remove | Action::Unbuild) => {
                    return job.remove_all(&module, &version, action);
                }
                true => vec![running_kernel()?],
                false => req.kernels.iter().map(|(k, _)| k.clone()).collect(),
            };
            let mut code = exit::OK;
            for k in &kernels {
                let c = match action {
                    Action::Build => job.build(&module, &version, k)?,
                    Action::Install => job.install(&module, &version, k)?,
                    Action::Uninstall => job.uninstall(&module, &version, k)?,
                    Action::Unbuild | Action::Remove => job.unbuild(&module, &version, k)?,
                    _ => unreachable!("handled above"),
                };
                if c != exit::OK {
                    return Ok(c);
                }
                code = c;
            }
            if action == Action::Remove {
                job.forget_if_unbuilt(&module, &version)?;
            }
            Ok(code)
        }
    }
}

impl Job<'_> {
    /// MODULE and VERSION, as DKMS demands them for every action but status and autoinstall.
    fn module_version(&self, req: &Request) -> Result<(String, String)> {
        let unspecified = || usage("Arguments <module> and <module-version> are not specified.");
        match (&req.module, &req.version) {
            (Some(m), Some(v)) => Ok((m.clone(), v.clone())),
            // DKMS demands the version; one registered version is unambiguous.
            (Some(m), None) => match self.store.versions_of(m)?.as_slice() {
                [v] => Ok((m.clone(), v.clone())),
                _ => Err(unspecified()),
            },
            _ => Err(unspecified()),
        }
    }

    /// `kmx add` of `src`, named as `given`, read in the strict sandbox.
    fn register(&self, src: &Path, given: &Given) -> Result<i32> {
        lifecycle::add(
            self.store,
            src,
            Default::default(),
            self.run.wait,
            given,
            false,
        )
    }

    fn registered(&self, m: &str, v: &str) -> Result<bool> {
        Ok(self.store.load_source(m, v)?.is_some())
    }

    /// The source tree of `add`: the one named, else `SOURCETREE/<module>-<version>`.
    fn add(&self, req: &Request) -> Result<i32> {
        if let (Some(m), Some(v)) = (&req.module, &req.version)
            && self.registered(m, v)?
        {
            return Ok(already_added(m, v));
        }
        let src = match (&req.source, &req.module, &req.version) {
            (Some(s), _, _) => s.clone(),
            (None, Some(m), Some(v)) => self.sources.join(format!("{m}-{v}")),
            _ => {
                return Err(usage(
                    "Arguments <module> and <module-version> are not specified.",
                ));
            }
        };
        if !src.join("dkms.conf").is_file() {
            eprintln!(
                "Error! Could not find module source directory.\nDirectory: {} does not exist (or has no dkms.conf).",
                src.display()
            );
            return Ok(code::NO_SOURCE);
        }
        // As DKMS: -m/-v name the module whatever PACKAGE_NAME/PACKAGE_VERSION say (a
        // placeholder dh_dkms left there, say); without them, the dkms.conf's.
        let given = Given {
            name: req.module.clone(),
            version: req.version.clone(),
        };
        let spec = match crate::lifecycle::prepare::evaluate_generic(
            &src.canonicalize()
                .map_err(|e| Error::io("open module source", &src, e))?,
            Default::default(),
            &given,
        ) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("Error! Bad conf file: {}", render_inline(&e));
                return Ok(code::BAD_CONF);
            }
        };
        if self.registered(&spec.name, &spec.version)? {
            return Ok(already_added(&spec.name, &spec.version));
        }
        self.register(&src, &given)
    }

    /// Register MODULE/VERSION from the source tree if it is not yet, as DKMS's build and
    /// install do.
    fn ensure_added(&self, m: &str, v: &str) -> Result<Option<i32>> {
        if self.registered(m, v)? {
            return Ok(None);
        }
        let src = self.sources.join(format!("{m}-{v}"));
        if !src.join("dkms.conf").is_file() {
            eprintln!(
                "Error! The module/version combo: {m}-{v} is not located in the DKMS tree (and {} has no dkms.conf).",
                src.display()
            );
            return Ok(Some(code::NOT_ADDED_OR_DUPLICATE));
        }
        let given = Given::both(m, v);
        match self.register(&src, &given)? {
            exit::OK => Ok(None),
            c => Ok(Some(c)),
        }
    }

    /// The target an installed kernel builds for; `Err(code)` with DKMS's message when its
    /// headers are missing.
    fn target_of(&self, release: &str) -> Result<std::result::Result<String, i32>> {
        let found = installed::kernels(&self.root)
            .into_iter()
            .find(|k| k.release == release);
        let Some(kdir) = found.as_ref().and_then(|k| k.kdir.clone()) else {
            eprintln!(
                "Error! Your kernel headers for kernel {release} cannot be found at /lib/modules/{release}/build or /lib/modules/{release}/source.\nPlease install the linux-headers-{release} package (apt-get install linux-headers-{release})."
            );
            return Ok(Err(exit::FAILED));
        };
        let tree = crate::kernel::KernelTree::inspect(&kdir)?;
        match installed::target_for(&self.ctx.profiles, &tree) {
            Some(t) => Ok(Ok(t.name.clone())),
            None => Err(Error::env(format!(
                "no target profile builds for the architecture of {release}'s headers"
            ))
            .at(&kdir)
            .hint("`kmx targets` lists the profiles; add one for this architecture")),
        }
    }

    fn key(m: &str, v: &str, release: &str, target: &str) -> CellKey {
        CellKey {
            module: m.into(),
            version: v.into(),
            release: release.into(),
            target: target.into(),
        }
    }

    fn build(&self, m: &str, v: &str, release: &str) -> Result<i32> {
        if let Some(c) = self.ensure_added(m, v)? {
            return Ok(c);
        }
        let target = match self.target_of(release)? {
            Ok(t) => t,
            Err(c) => return Ok(c),
        };
        let key = Self::key(m, v, release, &target);
        if self.store.load_built(&key)?.is_some() && !self.force {
            eprintln!(
                "Error! This module/version has already been built on: {release}\nUse `dkms remove` (or --force) before building again."
            );
            return Ok(code::NOT_ADDED_OR_DUPLICATE);
        }
        let preps = inst::build(
            self.ctx.env(),
            &key,
            &self.root,
            &self.run,
            self.force,
            &mut Printer::default(),
        )?;
        for (key, prep) in preps {
            match prep {
                Ok(Prep::Skipped(reason)) => {
                    eprintln!(
                        "Error! The dkms.conf for module {m} includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch/config ({reason}).\nThis indicates that it should not be built."
                    );
                    return Ok(code::EXCLUDED);
                }
                Ok(Prep::Ready(_)) => eprintln!("built {key}"),
                Err(e) if e.kind == Kind::Failed => {
                    eprintln!("{}", crate::error::render(&e));
                    eprintln!(
                        "Error! Bad return status for module build on kernel: {release} ({target})"
                    );
                    return Ok(code::BUILD_FAILED);
                }
                Err(e) if e.kind == Kind::Config => {
                    eprintln!("{}", crate::error::render(&e));
                    return Ok(code::BAD_CONF);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(exit::OK)
    }

    fn installed_here(&self, key: &CellKey) -> Result<bool> {
        Ok(self
            .store
            .load_install(&self.root, key)?
            .is_some_and(|r| r.state == crate::state::store::InstallState::Installed))
    }

    fn install(&self, m: &str, v: &str, release: &str) -> Result<i32> {
        if let Some(c) = self.ensure_added(m, v)? {
            return Ok(c);
        }
        if !self.root.join("lib/modules").join(release).is_dir() {
            eprintln!(
                "Error! The directory {} doesn't exist.\nYou cannot install a module onto a non-existant kernel.",
                self.root.join("lib/modules").join(release).display()
            );
            return Ok(code::NO_KERNEL);
        }
        let target = match self.target_of(release)? {
            Ok(t) => t,
            Err(c) => return Ok(c),
        };
        let key = Self::key(m, v, release, &target);
        if self.installed_here(&key)? && !self.force {
            eprintln!(
                "Error! This module/version combo is already installed for kernel {release} ({target})."
            );
            return Ok(code::ALREADY_INSTALLED);
        }
        // As DKMS's install: build first when it is not built (with its exit codes).
        if self.store.load_built(&key)?.is_none() {
            match self.build(m, v, release)? {
                exit::OK => {}
                c => return Ok(c),
            }
        }
        let req = inst::Request {
            module: m.to_string(),
            version: Some(v.to_string()),
            target: Some(target),
            kernel: Some(release.to_string()),
            root: self.root.clone(),
            create: false,
        };
        match lifecycle::install(self.ctx, &req, &self.run, false) {
            // DKMS's "Installation aborted." (and never 1: that says the headers are missing).
            Err(e) if e.kind != Kind::Interrupted => {
                eprintln!("{}", crate::error::render(&e));
                eprintln!("Error! Installation aborted.");
                Ok(code::NO_KERNEL)
            }
            other => other,
        }
    }

    /// The installs of MODULE/VERSION for `release` in this root.
    fn installs_here(
        &self,
        m: &str,
        v: &str,
        release: &str,
    ) -> Result<Vec<crate::state::store::InstallRecord>> {
        Ok(self
            .store
            .installs_in(&self.root)?
            .into_iter()
            .filter(|r| r.module == m && r.version == v && r.release == release)
            .collect())
    }

    fn uninstall(&self, m: &str, v: &str, release: &str) -> Result<i32> {
        if self.installs_here(m, v, release)?.is_empty() {
            eprintln!("Module {m} {v} is not installed for kernel {release}. Skipping...");
            return Ok(exit::OK);
        }
        let req = UninstallRequest {
            module: Some(m.to_string()),
            version: Some(v.to_string()),
            target: None,
            all: true,
            kernel: Some(release.to_string()),
            root: self.root.clone(),
        };
        lifecycle::uninstall(self.store, &req, self.run.depmod, self.run.wait)
    }

    /// Uninstall from this kernel, then drop the builds for it (DKMS's `unbuild`, and
    /// `remove -k`).
    fn unbuild(&self, m: &str, v: &str, release: &str) -> Result<i32> {
        if !self.registered(m, v)? && self.built_for(m, v, Some(release))?.is_empty() {
            eprintln!("Error! The module/version combo: {m}-{v} is not located in the DKMS tree.");
            return Ok(code::NOT_ADDED_OR_DUPLICATE);
        }
        let _lock = self.store.lock(self.run.wait)?;
        let here = self.installs_here(m, v, release)?;
        if here.is_empty() {
            eprintln!("Module {m} {v} is not installed for kernel {release}. Skipping...");
        }
        let built = self.built_for(m, v, Some(release))?;
        rm::unbuild(
            self.store,
            here,
            &built,
            &[],
            self.run.depmod,
            self.run.pause_at.as_deref(),
            &mut |e| lifecycle::print_down(e, true),
        )?;
        if built.is_empty() {
            eprintln!("Module {m} {v} is not built for kernel {release}. Skipping...");
        }
        Ok(exit::OK)
    }

    fn built_for(&self, m: &str, v: &str, release: Option<&str>) -> Result<Vec<CellKey>> {
        Ok(self
            .store
            .built_all()?
            .into_iter()
            .filter(|b| b.module == m && b.version == v && release.is_none_or(|r| b.release == r))
            .map(|b| b.key())
            .collect())
    }

    /// `remove --all` (and `unbuild --all`): every kernel it is built or installed for.
    fn remove_all(&self, m: &str, v: &str, action: Action) -> Result<i32> {
        if action == Action::Remove {
            if !self.registered(m, v)? && self.built_for(m, v, None)?.is_empty() {
                eprintln!(
                    "Error! The module/version combo: {m}-{v} is not located in the DKMS tree."
                );
                return Ok(code::NOT_ADDED_OR_DUPLICATE);
            }
            return lifecycle::remove_cmd(
                self.store,
                &format!("{m}/{v}"),
                false,
                !self.run.depmod,
                self.run.wait,
            );
        }
        let mut releases: Vec<String> = self
            .built_for(m, v, None)?
            .into_iter()
            .map(|k| k.release)
            .collect();
        releases.dedup();
        for r in releases {
            self.unbuild(m, v, &r)?;
        }
        Ok(exit::OK)
    }

    /// DKMS's `remove -k`: once no kernel has a build, the module leaves the tree.
    fn forget_if_unbuilt(&self, m: &str, v: &str) -> Result<()> {
        let installed_anywhere = self
            .store
            .installs_all()?
            .iter()
            .any(|r| r.module == m && r.version == v);
        if self.built_for(m, v, None)?.is_empty() && !installed_anywhere {
            eprintln!("Deleting module {m}-{v} completely from the DKMS tree.");
            lifecycle::remove_cmd(self.store, &format!("{m}/{v}"), false, true, self.run.wait)?;
        }
        Ok(())
    }

    fn autoinstall(&self, req: &Request) -> Result<i32> {
        let kernels = match req.kernels.is_empty() {
            true => vec![running_kernel()?],
            false => req.kernels.iter().map(|(k, _)| k.clone()).collect(),
        };
        let mut worst = exit::OK;
        for k in kernels {
            match lifecycle::autoinstall(self.ctx, &self.root, Some(&k), &self.run)? {
                exit::OK => {}
                exit::INTERRUPTED => return Ok(exit::INTERRUPTED),
                _ => worst = code::AUTOINSTALL_FAILED,
            }
        }
        if worst != exit::OK {
            eprintln!(
                "Error! One or more modules failed to install during autoinstall.\nRefer to previous errors for more information."
            );
        }
        Ok(worst)
    }

    /// `dkms status`: DKMS's lines for this root, narrowed by -m, -v, -k and -a.
    fn status(&self, req: &Request) -> Result<i32> {
        let lines = crate::lifecycle::status::lines(self.store)?;
        for line in status_lines(&lines, req, &self.root, &|target| {
            self.ctx
                .profiles
                .target(target)
                .map_or(target.to_string(), |t| t.dkms_arch.clone())
        }) {
            println!("{line}");
        }
        Ok(exit::OK)
    }
}

fn already_added(m: &str, v: &str) -> i32 {
    eprintln!(
        "Error! DKMS tree already contains: {m}-{v}\nYou cannot add the same module/version combo more than once."
    );
    code::NOT_ADDED_OR_DUPLICATE
}

/// DKMS's status lines of `lines` as seen in `root` (installed means installed there),
/// narrowed as `req` asks, each once.
pub fn status_lines(
    lines: &[StatusLine],
    req: &Request,
    root: &Path,
    arch_of: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        if req.module.as_ref().is_some_and(|m| *m != l.module)
            || req.version.as_ref().is_some_and(|v| *v != l.version)
        {
            continue;
        }
        let arch = arch_of(l.target.as_deref().unwrap_or(""));
        if !req.kernels.is_empty()
            && !req.kernels.iter().any(|(k, a)| {
                l.kernel.as_deref() == Some(k.as_str()) && a.as_ref().is_none_or(|a| *a == arch)
            })
        {
            continue;
        }
        let mut here = l.clone();
        let installed_here = l
            .installed
            .iter()
            .any(|i| i.root == root && i.state == "installed");
        if l.state == "installed" && !installed_here {
            here.state = "built".into();
        }
        if let Some(line) = dkms_line(&here, &arch)
            && !out.contains(&line)
        {
            out.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::status::StatusInstall;
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
        interpret(&args(words), &|p| p == Path::new("/usr/src/hello-1.0"))
    }

    #[test]
    fn dkms_words_are_read_as_dkms_reads_them() {
        let r = req(&["build", "-m", "hello", "-v", "1.0", "-k", "6.1.0-57-amd64"]).unwrap();
        assert_eq!(r.action, Action::Build);
        assert_eq!(
            (r.module.as_deref(), r.version.as_deref()),
            (Some("hello"), Some("1.0"))
        );
        assert_eq!(r.kernels, vec![("6.1.0-57-amd64".to_string(), None)]);
        // MODULE/VERSION anywhere, the action after it, -k K/ARCH.
        let r = req(&["hello/1.0", "install", "-k", "6.1.0-57-arm64/aarch64"]).unwrap();
        assert_eq!(r.action, Action::Install);
        assert_eq!(r.version.as_deref(), Some("1.0"));
        assert_eq!(r.kernels[0].1.as_deref(), Some("aarch64"));
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
        assert_eq!(r.kernels[1], ("b".to_string(), Some("i686".to_string())));
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

    fn line(module: &str, kernel: &str, target: &str, state: &str, root: &str) -> StatusLine {
        StatusLine {
            module: module.into(),
            version: "1.0".into(),
            kernel: Some(kernel.into()),
            target: Some(target.into()),
            state: state.into(),
            added: true,
            built: true,
            installed: match state {
                "installed" => vec![StatusInstall {
                    root: root.into(),
                    state: "installed".into(),
                    files: vec![],
                }],
                _ => vec![],
            },
            ..Default::default()
        }
    }

    #[test]
    fn status_is_dkms_s_lines_for_this_root_narrowed_as_asked() {
        let lines = vec![
            line("hello", "6.1.0-57-amd64", "amd64", "installed", "/"),
            line("hello", "6.1.0-50-amd64", "amd64", "installed", "/srv/img"),
            line("vpoll", "6.1.0-57-amd64", "amd64", "built", "/"),
        ];
        let arch = |t: &str| {
            if t == "amd64" {
                "x86_64".into()
            } else {
                t.into()
            }
        };
        let all = status_lines(&lines, &req(&["status"]).unwrap(), Path::new("/"), &arch);
        assert_eq!(
            all,
            [
                "hello/1.0, 6.1.0-57-amd64, x86_64: installed",
                // Installed in another root only: built, as far as this machine goes.
                "hello/1.0, 6.1.0-50-amd64, x86_64: built",
                "vpoll/1.0, 6.1.0-57-amd64, x86_64: built",
            ]
        );
        let one = status_lines(
            &lines,
            &req(&[
                "status",
                "-m",
                "hello",
                "-k",
                "6.1.0-57-amd64",
                "-a",
                "x86_64",
            ])
            .unwrap(),
            Path::new("/"),
            &arch,
        );
        assert_eq!(one, ["hello/1.0, 6.1.0-57-amd64, x86_64: installed"]);
        let other_arch = status_lines(
            &lines,
            &req(&["status", "-k", "6.1.0-57-amd64/aarch64"]).unwrap(),
            Path::new("/"),
            &arch,
        );
        assert!(other_arch.is_empty());
        assert!(
            status_lines(
                &lines,
                &req(&["status", "-m", "nosuch"]).unwrap(),
                Path::new("/"),
                &arch
            )
            .is_empty()
        );
    }
}
