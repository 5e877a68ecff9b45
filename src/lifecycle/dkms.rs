//! `kmx dkms`'s use cases: DKMS's actions (`add`, `build`, `install`, `uninstall`,
//! `unbuild`, `remove`, `status`, `autoinstall`) over kmx's store, for the kernels installed
//! in a root (their headers at `lib/modules/<release>/build`, each built for the target of
//! its own architecture), refused as DKMS 3.0.10 (Debian 12's) refuses them and with its
//! exit codes: [`Refusal`]. Which kernels a request covers is decided by
//! [`Request::kernels`] and [`Request::covers`], which source `add` registers by
//! [`Request::source_dir`], which version an action is about by [`module_version`], and
//! what a failed build or install is to DKMS by [`Refusal::of_build`] and
//! [`Refusal::of_install`]. It never prints: each step goes to the caller's `on` as it
//! happens (the other use cases' own events, wrapped), and a request ends in an
//! [`Outcome`]; `src/commands/dkms.rs` reads DKMS's words into a [`Request`] and prints.

use std::fmt;
use std::path::{Path, PathBuf};

use super::prepare::{Prep, evaluate_generic};
use super::status::{LineState, RootState, StatusLine, dkms_line};
use super::{Env, Run, autoinstall as auto, install as inst, register, remove as rm};
use crate::config::manifest::Given;
use crate::error::{Error, Kind, Result, exit, render, render_inline};
use crate::kernel::installed;
use crate::matrix::pipeline::Progress;
use crate::state::store::{CellKey, InstallRecord, InstallState};

/// DKMS's command line, as its own usage line gives it (the hint of a bad one).
pub const USAGE: &str = "usage as DKMS's: dkms ACTION [MODULE/VERSION] [-m MODULE] [-v VERSION] [-k KERNEL[/ARCH]] [-a ARCH] [--all]";

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

/// A kernel named on the command line: `-k RELEASE/ARCH`, or `-k RELEASE` with the `-a` of
/// the same rank (DKMS's architecture names: x86_64, aarch64, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub release: String,
    pub arch: Option<String>,
}

/// `kmx dkms`, resolved: DKMS's words as DKMS reads them, and where they act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    pub module: Option<String>,
    pub version: Option<String>,
    /// A source tree named on the command line (`dkms add ./hello-1.0`).
    pub source: Option<PathBuf>,
    /// The kernels named, in order.
    pub kernels: Vec<Kernel>,
    /// `--all`: every kernel (`remove`, `unbuild`).
    pub all: bool,
    /// `--force`: build and install again what is built and installed.
    pub force: bool,
    /// The root whose kernels are built for and installed into, canonical.
    pub root: PathBuf,
    /// Where registered sources come from: `--sourcetree`, else ROOT/usr/src.
    pub sources: PathBuf,
}

/// The kernels an action acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernels {
    /// Every kernel the module is built or installed for (`remove --all`, `unbuild --all`).
    Every,
    These(Vec<String>),
}

impl Request {
    /// The releases named, else the running kernel's (DKMS's default).
    pub fn releases(&self, running: impl FnOnce() -> Result<String>) -> Result<Vec<String>> {
        if self.kernels.is_empty() {
            return Ok(vec![running()?]);
        }
        Ok(self.kernels.iter().map(|k| k.release.clone()).collect())
    }

    /// The kernels `build`, `install`, `uninstall`, `unbuild` and `remove` act on: the ones
    /// named; with none, every one for `--all` of `remove` and `unbuild`, else the running
    /// kernel (`--all` of another action changes nothing, as in DKMS).
    pub fn kernels(&self, running: impl FnOnce() -> Result<String>) -> Result<Kernels> {
        if self.kernels.is_empty()
            && self.all
            && matches!(self.action, Action::Remove | Action::Unbuild)
        {
            return Ok(Kernels::Every);
        }
        Ok(Kernels::These(self.releases(running)?))
    }

    /// Whether `status` shows a line of `release` built for DKMS's `arch`: every line when
    /// no kernel is named, else the lines of a kernel named (and of its arch, when one is).
    pub fn covers(&self, release: Option<&str>, arch: &str) -> bool {
        self.kernels.is_empty()
            || self.kernels.iter().any(|k| {
                release == Some(k.release.as_str()) && k.arch.as_ref().is_none_or(|a| a == arch)
            })
    }

    /// The source tree `add` registers: the one named, else `SOURCETREE/<module>-<version>`;
    /// `None` when neither is known.
    pub fn source_dir(&self) -> Option<PathBuf> {
        match (&self.source, &self.module, &self.version) {
            (Some(s), _, _) => Some(s.clone()),
            (None, Some(m), Some(v)) => Some(self.sources.join(format!("{m}-{v}"))),
            _ => None,
        }
    }
}

/// What DKMS refuses, with the exit code DKMS 3.0.10 (Debian 12's `/usr/sbin/dkms`) dies
/// with, and its words. A refusal ends the command.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// No MODULE and VERSION where the action needs both (one registered version stands
    /// for the version). DKMS dies with 1; kmx says 2, its code for a bad command line, as
    /// for DKMS's other usage errors.
    Unspecified,
    /// `add` of a module version already in the tree (3).
    AlreadyAdded { module: String, version: String },
    /// `add` of a directory without a dkms.conf (2).
    NoSource { dir: PathBuf },
    /// `add` of a source whose dkms.conf cannot be read (8).
    BadConf { error: Error },
    /// The module version is not in the tree (3); `source`: for `build` and `install`,
    /// the directory that would have added it has no dkms.conf.
    NotAdded {
        module: String,
        version: String,
        source: Option<PathBuf>,
    },
    /// The kernel has no headers in the root (1).
    NoHeaders { release: String },
    /// `build` of what is built for that kernel, without `--force` (3).
    AlreadyBuilt { release: String },
    /// BUILD_EXCLUSIVE rules the kernel out (77, Debian's DKMS; upstream 3.0.10 says 9).
    Excluded { module: String, reason: String },
    /// The build failed (10): the error, then DKMS's line.
    BuildFailed {
        release: String,
        target: String,
        error: Error,
    },
    /// The dkms.conf, read for the kernel, is wrong (8).
    BadBuildConf { error: Error },
    /// `install` for a kernel with no `lib/modules/<release>` in the root (6).
    NoKernel { dir: PathBuf },
    /// `install` of what is installed for that kernel, without `--force` (5).
    AlreadyInstalled { release: String, target: String },
    /// The install failed (6: never 1, which says the headers are missing).
    InstallAborted { error: Error },
    /// `autoinstall`: a module failed (11).
    AutoinstallFailed,
}

impl Refusal {
    /// DKMS's exit code.
    pub fn code(&self) -> i32 {
        match self {
            Refusal::Unspecified | Refusal::NoSource { .. } => 2,
            Refusal::AlreadyAdded { .. }
            | Refusal::NotAdded { .. }
            | Refusal::AlreadyBuilt { .. } => 3,
            Refusal::NoHeaders { .. } => 1,
            Refusal::AlreadyInstalled { .. } => 5,
            Refusal::NoKernel { .. } | Refusal::InstallAborted { .. } => 6,
            Refusal::BadConf { .. } | Refusal::BadBuildConf { .. } => 8,
            Refusal::BuildFailed { .. } => 10,
            Refusal::AutoinstallFailed => 11,
            Refusal::Excluded { .. } => 77,
        }
    }

    /// What a build's failure is to DKMS: the build failed (`Failed`), or the dkms.conf
    /// read for the kernel is wrong (`Config`); anything else (the machine, a signal) is
    /// kmx's error, not DKMS's refusal.
    pub fn of_build(release: &str, target: &str, error: Error) -> Result<Refusal> {
        match error.kind {
            Kind::Failed => Ok(Refusal::BuildFailed {
                release: release.to_string(),
                target: target.to_string(),
                error,
            }),
            Kind::Config => Ok(Refusal::BadBuildConf { error }),
            Kind::Usage | Kind::Environment | Kind::Interrupted => Err(error),
        }
    }

    /// What an install's failure is to DKMS: "Installation aborted.", unless a signal
    /// stopped it.
    pub fn of_install(error: Error) -> Result<Refusal> {
        match error.kind {
            Kind::Interrupted => Err(error),
            _ => Ok(Refusal::InstallAborted { error }),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unspecified => write!(
                f,
                "error: Arguments <module> and <module-version> are not specified.\n  hint: {USAGE}"
            ),
            Refusal::AlreadyAdded { module, version } => write!(
                f,
                "Error! DKMS tree already contains: {module}-{version}\nYou cannot add the same module/version combo more than once."
            ),
            Refusal::NoSource { dir } => write!(
                f,
                "Error! Could not find module source directory.\nDirectory: {} does not exist (or has no dkms.conf).",
                dir.display()
            ),
            Refusal::BadConf { error } => {
                write!(f, "Error! Bad conf file: {}", render_inline(error))
            }
            Refusal::NotAdded {
                module,
                version,
                source,
            } => {
                write!(
                    f,
                    "Error! The module/version combo: {module}-{version} is not located in the DKMS tree"
                )?;
                match source {
                    Some(dir) => write!(f, " (and {} has no dkms.conf).", dir.display()),
                    None => write!(f, "."),
                }
            }
            Refusal::NoHeaders { release } => write!(
                f,
                "Error! Your kernel headers for kernel {release} cannot be found at /lib/modules/{release}/build or /lib/modules/{release}/source.\nPlease install the linux-headers-{release} package (apt-get install linux-headers-{release})."
            ),
            Refusal::AlreadyBuilt { release } => write!(
                f,
                "Error! This module/version has already been built on: {release}\nUse `dkms remove` (or --force) before building again."
            ),
            Refusal::Excluded { module, reason } => write!(
                f,
                "Error! The dkms.conf for module {module} includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch/config ({reason}).\nThis indicates that it should not be built."
            ),
            Refusal::BuildFailed {
                release,
                target,
                error,
            } => write!(
                f,
                "{}\nError! Bad return status for module build on kernel: {release} ({target})",
                render(error)
            ),
            Refusal::BadBuildConf { error } => write!(f, "{}", render(error)),
            Refusal::NoKernel { dir } => write!(
                f,
                "Error! The directory {} doesn't exist.\nYou cannot install a module onto a non-existant kernel.",
                dir.display()
            ),
            Refusal::AlreadyInstalled { release, target } => write!(
                f,
                "Error! This module/version combo is already installed for kernel {release} ({target})."
            ),
            Refusal::InstallAborted { error } => {
                write!(f, "{}\nError! Installation aborted.", render(error))
            }
            Refusal::AutoinstallFailed => write!(
                f,
                "Error! One or more modules failed to install during autoinstall.\nRefer to previous errors for more information."
            ),
        }
    }
}

/// DKMS's word on a kernel with nothing to do, or on a module leaving the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    NotInstalled {
        module: String,
        version: String,
        release: String,
    },
    NotBuilt {
        module: String,
        version: String,
        release: String,
    },
    /// `remove -k` of the last kernel with a build: the module leaves the tree.
    Deleting { module: String, version: String },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::NotInstalled {
                module,
                version,
                release,
            } => write!(
                f,
                "Module {module} {version} is not installed for kernel {release}. Skipping..."
            ),
            Notice::NotBuilt {
                module,
                version,
                release,
            } => write!(
                f,
                "Module {module} {version} is not built for kernel {release}. Skipping..."
            ),
            Notice::Deleting { module, version } => write!(
                f,
                "Deleting module {module}-{version} completely from the DKMS tree."
            ),
        }
    }
}

/// A step of a DKMS action, as it happens.
pub enum Event<'a> {
    /// A source registered: by `add`, or by `build` and `install` of one not yet added.
    Added(&'a register::Added),
    /// `build`'s cell built.
    Built(&'a CellKey),
    /// A step of `install`'s install.
    Install(inst::Event<'a>),
    /// A step of `uninstall` or `unbuild` (an uninstall says the displaced modules it put
    /// back).
    Uninstall(rm::Event<'a>),
    /// A step of `remove` (of every kernel, or once the last kernel's build is gone).
    Remove(rm::Event<'a>),
    Autoinstall(auto::Event<'a>),
    Notice(&'a Notice),
}

/// How a DKMS action ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// `status`'s lines, DKMS's format.
    Status(Vec<String>),
    Refused(Refusal),
    /// A signal stopped it (an install it interrupted was finished first).
    Interrupted,
}

impl Outcome {
    /// The exit code DKMS gives.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Done | Outcome::Status(_) => exit::OK,
            Outcome::Refused(r) => r.code(),
            Outcome::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// Why an action stopped before its end.
enum Halt {
    Refused(Refusal),
    Interrupted,
    Error(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Halt {
        Halt::Error(e)
    }
}

impl From<Refusal> for Halt {
    fn from(r: Refusal) -> Halt {
        Halt::Refused(r)
    }
}

type Step<T = ()> = std::result::Result<T, Halt>;

/// Do what `req` asks; each build shows its progress on a new `P`.
pub fn run<P: Progress + Default>(
    env: Env,
    req: &Request,
    run: &Run,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let mut job = Job::<P> {
        env,
        req,
        run,
        on,
        progress: std::marker::PhantomData,
    };
    let done = match req.action {
        Action::Status => return Ok(Outcome::Status(job.status()?)),
        Action::Add => job.add(),
        Action::Autoinstall => job.autoinstall(),
        Action::Build => job.each_kernel(Job::build),
        Action::Install => job.each_kernel(Job::install),
        Action::Uninstall => job.each_kernel(Job::uninstall),
        Action::Unbuild | Action::Remove => job.each_kernel(Job::unbuild),
    };
    match done {
        Ok(()) => Ok(Outcome::Done),
        Err(Halt::Refused(r)) => Ok(Outcome::Refused(r)),
        Err(Halt::Interrupted) => Ok(Outcome::Interrupted),
        Err(Halt::Error(e)) => Err(e),
    }
}

/// MODULE and VERSION, as DKMS demands them for every action but add, status and
/// autoinstall: both named, or the module with its one registered version.
fn module_version(
    module: Option<&str>,
    version: Option<&str>,
    versions_of: &dyn Fn(&str) -> Result<Vec<String>>,
) -> Step<(String, String)> {
    match (module, version) {
        (Some(m), Some(v)) => Ok((m.to_string(), v.to_string())),
        // DKMS demands the version; one registered version is unambiguous.
        (Some(m), None) => match versions_of(m)?.as_slice() {
            [v] => Ok((m.to_string(), v.clone())),
            _ => Err(Refusal::Unspecified.into()),
        },
        (None, _) => Err(Refusal::Unspecified.into()),
    }
}

/// Whether MODULE/VERSION leaves the tree after `remove -k`: no kernel has a build of it,
/// and no root has it installed.
fn unbuilt_everywhere(built: &[CellKey], installs: &[InstallRecord], m: &str, v: &str) -> bool {
    let of = |module: &str, version: &str| module == m && version == v;
    !built.iter().any(|k| of(&k.module, &k.version))
        && !installs.iter().any(|r| of(&r.module, &r.version))
}

/// One action's request, where it runs, and who hears of its steps.
struct Job<'a, P> {
    env: Env<'a>,
    req: &'a Request,
    run: &'a Run,
    on: &'a mut dyn FnMut(Event),
    progress: std::marker::PhantomData<P>,
}

impl<P: Progress + Default> Job<'_, P> {
    fn notice(&mut self, n: Notice) {
        (self.on)(Event::Notice(&n));
    }

    /// `act` for MODULE/VERSION on each kernel the request covers, stopping at the first
    /// that stops; `remove` forgets the module once no kernel has a build of it.
    fn each_kernel(&mut self, act: fn(&mut Self, &str, &str, &str) -> Step) -> Step {
        let versions_of = |m: &str| self.env.store.versions_of(m);
        let (m, v) = module_version(
            self.req.module.as_deref(),
            self.req.version.as_deref(),
            &versions_of,
        )?;
        let kernels = match self.req.kernels(super::running_kernel)? {
            Kernels::Every => return self.remove_all(&m, &v),
            Kernels::These(k) => k,
        };
        for k in &kernels {
            act(self, &m, &v, k)?;
        }
        if self.req.action == Action::Remove {
            self.forget_if_unbuilt(&m, &v)?;
        }
        Ok(())
    }

    fn registered(&self, m: &str, v: &str) -> Result<bool> {
        Ok(self.env.store.load_source(m, v)?.is_some())
    }

    /// `kmx add` of `src`, named as `given`, read in the strict sandbox.
    fn register(&mut self, src: &Path, given: &Given) -> Step {
        let added = register::add(
            self.env.store,
            src,
            Default::default(),
            self.run.wait,
            given,
        )?;
        (self.on)(Event::Added(&added));
        Ok(())
    }

    fn add(&mut self) -> Step {
        let req = self.req;
        if let (Some(m), Some(v)) = (&req.module, &req.version)
            && self.registered(m, v)?
        {
            return Err(Refusal::AlreadyAdded {
                module: m.clone(),
                version: v.clone(),
            }
            .into());
        }
        let src = req.source_dir().ok_or(Refusal::Unspecified)?;
        if !src.join("dkms.conf").is_file() {
            return Err(Refusal::NoSource { dir: src }.into());
        }
        // As DKMS: -m/-v name the module whatever PACKAGE_NAME/PACKAGE_VERSION say (a
        // placeholder dh_dkms left there, say); without them, the dkms.conf's.
        let given = Given {
            name: req.module.clone(),
            version: req.version.clone(),
        };
        let canonical = src
            .canonicalize()
            .map_err(|e| Error::io("open module source", &src, e))?;
        let spec = evaluate_generic(&canonical, Default::default(), &given)
            .map_err(|error| Refusal::BadConf { error })?;
        if self.registered(&spec.name, &spec.version)? {
            return Err(Refusal::AlreadyAdded {
                module: spec.name,
                version: spec.version,
            }
            .into());
        }
        self.register(&src, &given)
    }

    /// Register MODULE/VERSION from the source tree if it is not yet, as DKMS's build and
    /// install do.
    fn ensure_added(&mut self, m: &str, v: &str) -> Step {
        if self.registered(m, v)? {
            return Ok(());
        }
        let src = self.req.sources.join(format!("{m}-{v}"));
        if !src.join("dkms.conf").is_file() {
            return Err(Refusal::NotAdded {
                module: m.to_string(),
                version: v.to_string(),
                source: Some(src),
            }
            .into());
        }
        self.register(&src, &Given::both(m, v))
    }

    /// The target an installed kernel builds for.
    fn target_of(&self, release: &str) -> Step<String> {
        let found = installed::kernels(&self.req.root)
            .into_iter()
            .find(|k| k.release == release);
        let Some(kdir) = found.and_then(|k| k.kdir) else {
            return Err(Refusal::NoHeaders {
                release: release.to_string(),
            }
            .into());
        };
        let tree = crate::kernel::KernelTree::inspect(&kdir)?;
        match installed::target_for(self.env.profiles, &tree) {
            Some(t) => Ok(t.name.clone()),
            None => Err(Error::env(format!(
                "no target profile builds for the architecture of {release}'s headers"
            ))
            .at(&kdir)
            .hint("`kmx targets` lists the profiles; add one for this architecture")
            .into()),
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

    fn build(&mut self, m: &str, v: &str, release: &str) -> Step {
        self.ensure_added(m, v)?;
        let target = self.target_of(release)?;
        let key = Self::key(m, v, release, &target);
        if self.env.store.load_built(&key)?.is_some() && !self.req.force {
            return Err(Refusal::AlreadyBuilt {
                release: release.to_string(),
            }
            .into());
        }
        let preps = inst::build(
            self.env,
            &key,
            &self.req.root,
            self.run,
            self.req.force,
            &mut P::default(),
        )?;
        for (key, prep) in preps {
            match prep {
                Ok(Prep::Skipped(reason)) => {
                    return Err(Refusal::Excluded {
                        module: m.to_string(),
                        reason,
                    }
                    .into());
                }
                Ok(Prep::Ready(_)) => (self.on)(Event::Built(&key)),
                Err(e) => return Err(Refusal::of_build(release, &target, e)?.into()),
            }
        }
        Ok(())
    }

    fn installed_here(&self, key: &CellKey) -> Result<bool> {
        Ok(self
            .env
            .store
            .load_install(&self.req.root, key)?
            .is_some_and(|r| r.state == InstallState::Installed))
    }

    fn install(&mut self, m: &str, v: &str, release: &str) -> Step {
        self.ensure_added(m, v)?;
        let dir = self.req.root.join("lib/modules").join(release);
        if !dir.is_dir() {
            return Err(Refusal::NoKernel { dir }.into());
        }
        let target = self.target_of(release)?;
        let key = Self::key(m, v, release, &target);
        if self.installed_here(&key)? && !self.req.force {
            return Err(Refusal::AlreadyInstalled {
                release: release.to_string(),
                target,
            }
            .into());
        }
        // As DKMS's install: build first when it is not built (with its refusals).
        if self.env.store.load_built(&key)?.is_none() {
            self.build(m, v, release)?;
        }
        let req = inst::Request {
            module: m.to_string(),
            version: Some(v.to_string()),
            target: Some(target),
            kernel: Some(release.to_string()),
            root: self.req.root.clone(),
            create: false,
        };
        let on = &mut *self.on;
        match inst::install(self.env, &req, self.run, &mut P::default(), &mut |e| {
            on(Event::Install(e))
        }) {
            Ok(out) if out.interrupted => Err(Halt::Interrupted),
            Ok(_) => Ok(()),
            Err(e) => Err(Refusal::of_install(e)?.into()),
        }
    }

    /// The installs of MODULE/VERSION for `release` in this root.
    fn installs_here(&self, m: &str, v: &str, release: &str) -> Result<Vec<InstallRecord>> {
        Ok(self
            .env
            .store
            .installs_in(&self.req.root)?
            .into_iter()
            .filter(|r| r.module == m && r.version == v && r.release == release)
            .collect())
    }

    fn not_installed(&mut self, m: &str, v: &str, release: &str) {
        self.notice(Notice::NotInstalled {
            module: m.to_string(),
            version: v.to_string(),
            release: release.to_string(),
        });
    }

    fn uninstall(&mut self, m: &str, v: &str, release: &str) -> Step {
        if self.installs_here(m, v, release)?.is_empty() {
            self.not_installed(m, v, release);
            return Ok(());
        }
        let req = rm::UninstallRequest {
            module: Some(m.to_string()),
            version: Some(v.to_string()),
            target: None,
            all: true,
            kernel: Some(release.to_string()),
            root: self.req.root.clone(),
        };
        let (store, run, on) = (self.env.store, self.run, &mut *self.on);
        let n = rm::uninstall(
            store,
            &req,
            run.depmod,
            run.pause_at.as_deref(),
            run.wait,
            &mut |e| on(Event::Uninstall(e)),
        )?;
        // Uninstalled by another kmx since the look above.
        if n == 0 {
            self.not_installed(m, v, release);
        }
        Ok(())
    }

    /// Uninstall from this kernel, then drop the builds for it (DKMS's `unbuild`, and
    /// `remove -k`).
    fn unbuild(&mut self, m: &str, v: &str, release: &str) -> Step {
        if !self.registered(m, v)? && self.built_for(m, v, Some(release))?.is_empty() {
            return Err(Refusal::NotAdded {
                module: m.to_string(),
                version: v.to_string(),
                source: None,
            }
            .into());
        }
        let (store, run) = (self.env.store, self.run);
        let _lock = store.lock(run.wait)?;
        let here = self.installs_here(m, v, release)?;
        if here.is_empty() {
            self.not_installed(m, v, release);
        }
        let built = self.built_for(m, v, Some(release))?;
        let on = &mut *self.on;
        rm::unbuild(
            store,
            here,
            &built,
            &[],
            run.depmod,
            run.pause_at.as_deref(),
            &mut |e| on(Event::Uninstall(e)),
        )?;
        if built.is_empty() {
            self.notice(Notice::NotBuilt {
                module: m.to_string(),
                version: v.to_string(),
                release: release.to_string(),
            });
        }
        Ok(())
    }

    fn built_for(&self, m: &str, v: &str, release: Option<&str>) -> Result<Vec<CellKey>> {
        Ok(self
            .env
            .store
            .built_all()?
            .into_iter()
            .filter(|b| b.module == m && b.version == v && release.is_none_or(|r| b.release == r))
            .map(|b| b.key())
            .collect())
    }

    /// `remove --all` (and `unbuild --all`): every kernel it is built or installed for.
    fn remove_all(&mut self, m: &str, v: &str) -> Step {
        if self.req.action == Action::Remove {
            if !self.registered(m, v)? && self.built_for(m, v, None)?.is_empty() {
                return Err(Refusal::NotAdded {
                    module: m.to_string(),
                    version: v.to_string(),
                    source: None,
                }
                .into());
            }
            return self.remove(m, v, self.run.depmod);
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
        Ok(())
    }

    /// MODULE/VERSION out of every root and the store.
    fn remove(&mut self, m: &str, v: &str, depmod: bool) -> Step {
        let (store, wait, on) = (self.env.store, self.run.wait, &mut *self.on);
        rm::remove(
            store,
            m,
            Some(v.to_string()),
            false,
            depmod,
            wait,
            &mut |e| on(Event::Remove(e)),
        )?;
        Ok(())
    }

    /// DKMS's `remove -k`: once no kernel has a build, the module leaves the tree.
    fn forget_if_unbuilt(&mut self, m: &str, v: &str) -> Step {
        let built = self.built_for(m, v, None)?;
        let installs = self.env.store.installs_all()?;
        if unbuilt_everywhere(&built, &installs, m, v) {
            self.notice(Notice::Deleting {
                module: m.to_string(),
                version: v.to_string(),
            });
            self.remove(m, v, false)?;
        }
        Ok(())
    }

    fn autoinstall(&mut self) -> Step {
        let mut failed = false;
        for k in self.req.releases(super::running_kernel)? {
            let on = &mut *self.on;
            let out = auto::autoinstall(
                self.env,
                &self.req.root,
                Some(&k),
                self.run,
                &mut P::default(),
                &mut |e| on(Event::Autoinstall(e)),
            )?;
            if out.interrupted {
                return Err(Halt::Interrupted);
            }
            failed |= out.failed();
        }
        match failed {
            true => Err(Refusal::AutoinstallFailed.into()),
            false => Ok(()),
        }
    }

    /// `dkms status`: DKMS's lines for this root, narrowed by -m, -v, -k and -a.
    fn status(&self) -> Result<Vec<String>> {
        let lines = super::status::lines(self.env.store)?;
        let profiles = self.env.profiles;
        Ok(status_lines(&lines, self.req, &|target| {
            profiles
                .target(target)
                .map_or(target.to_string(), |t| t.dkms_arch.clone())
        }))
    }
}

/// DKMS's status lines of `lines` as seen in the request's root (installed means installed
/// there), narrowed as it asks, each once; `arch_of`: DKMS's arch of a target.
pub fn status_lines(
    lines: &[StatusLine],
    req: &Request,
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
        if !req.covers(l.kernel.as_deref(), &arch) {
            continue;
        }
        let mut here = l.clone();
        let installed_here = l
            .installed
            .iter()
            .any(|i| i.root == req.root && i.state == RootState::Installed);
        if l.state == LineState::Installed && !installed_here {
            here.state = LineState::Built;
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
    use crate::state::Home;
    use crate::state::store::{SourceRecord, Store};

    fn req(action: Action) -> Request {
        Request {
            action,
            module: Some("hello".into()),
            version: Some("1.0".into()),
            source: None,
            kernels: Vec::new(),
            all: false,
            force: false,
            root: "/".into(),
            sources: "/usr/src".into(),
        }
    }

    fn kernel(release: &str, arch: Option<&str>) -> Kernel {
        Kernel {
            release: release.into(),
            arch: arch.map(str::to_string),
        }
    }

    fn running() -> Result<String> {
        Ok("6.1.0-57-amd64".into())
    }

    fn not_read() -> Result<String> {
        Err(Error::env("the running kernel was read"))
    }

    fn these(v: &[&str]) -> Kernels {
        Kernels::These(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn an_action_acts_on_the_kernels_named_else_the_running_one_and_remove_all_on_every_one() {
        let mut r = req(Action::Build);
        assert_eq!(r.kernels(running).unwrap(), these(&["6.1.0-57-amd64"]));
        r.kernels = vec![kernel("a", None), kernel("b", Some("x86_64"))];
        assert_eq!(r.kernels(not_read).unwrap(), these(&["a", "b"]));
        // --all: every kernel for remove and unbuild, and only when none is named.
        for action in [Action::Remove, Action::Unbuild] {
            let mut r = req(action);
            r.all = true;
            assert_eq!(r.kernels(not_read).unwrap(), Kernels::Every);
            r.kernels = vec![kernel("a", None)];
            assert_eq!(r.kernels(not_read).unwrap(), these(&["a"]));
        }
        for action in [Action::Build, Action::Install, Action::Uninstall] {
            let mut r = req(action);
            r.all = true;
            assert_eq!(r.kernels(running).unwrap(), these(&["6.1.0-57-amd64"]));
        }
        // The running kernel unreadable: an error, only when it is the one asked for.
        assert!(req(Action::Remove).kernels(not_read).is_err());
        // autoinstall: the ones named, else the running one.
        let mut r = req(Action::Autoinstall);
        assert_eq!(r.releases(running).unwrap(), ["6.1.0-57-amd64"]);
        r.kernels = vec![kernel("a", None)];
        assert_eq!(r.releases(not_read).unwrap(), ["a"]);
    }

    #[test]
    fn status_covers_the_kernels_named_and_their_arch_when_one_is_named() {
        let mut r = req(Action::Status);
        assert!(r.covers(Some("a"), "x86_64"));
        assert!(r.covers(None, "x86_64"));
        r.kernels = vec![kernel("a", None), kernel("b", Some("aarch64"))];
        assert!(r.covers(Some("a"), "x86_64"));
        assert!(r.covers(Some("a"), "aarch64"));
        assert!(r.covers(Some("b"), "aarch64"));
        assert!(!r.covers(Some("b"), "x86_64"));
        assert!(!r.covers(Some("c"), "x86_64"));
        // A module only added (no kernel) is not a line of a kernel named.
        assert!(!r.covers(None, "x86_64"));
    }

    #[test]
    fn add_takes_the_source_named_else_sourcetree_s_module_version() {
        let mut r = req(Action::Add);
        assert_eq!(r.source_dir(), Some(PathBuf::from("/usr/src/hello-1.0")));
        r.source = Some("./hello-2.0".into());
        assert_eq!(r.source_dir(), Some(PathBuf::from("./hello-2.0")));
        r.source = None;
        r.version = None;
        assert_eq!(r.source_dir(), None);
    }

    fn unspecified(s: Step<(String, String)>) -> bool {
        matches!(s, Err(Halt::Refused(Refusal::Unspecified)))
    }

    #[test]
    fn the_version_is_the_one_named_else_the_only_one_registered() {
        let one = |_: &str| Ok(vec!["1.0".to_string()]);
        let two = |_: &str| Ok(vec!["1.0".to_string(), "2.0".to_string()]);
        let unread = |_: &str| -> Result<Vec<String>> { Err(Error::env("the store was read")) };
        let got = |s: Step<(String, String)>| s.ok().unwrap();
        assert_eq!(
            got(module_version(Some("hello"), Some("2.0"), &unread)),
            ("hello".to_string(), "2.0".to_string())
        );
        assert_eq!(
            got(module_version(Some("hello"), None, &one)),
            ("hello".to_string(), "1.0".to_string())
        );
        assert!(unspecified(module_version(Some("hello"), None, &two)));
        assert!(unspecified(module_version(Some("hello"), None, &|_| Ok(
            vec![]
        ))));
        assert!(unspecified(module_version(None, Some("1.0"), &unread)));
        assert!(matches!(
            module_version(Some("hello"), None, &unread),
            Err(Halt::Error(_))
        ));
    }

    #[test]
    fn each_refusal_exits_with_dkms_s_code() {
        let e = || Error::failed("x");
        let codes: Vec<(Refusal, i32)> = vec![
            (Refusal::Unspecified, 2),
            (
                Refusal::AlreadyAdded {
                    module: "m".into(),
                    version: "v".into(),
                },
                3,
            ),
            (Refusal::NoSource { dir: "d".into() }, 2),
            (Refusal::BadConf { error: e() }, 8),
            (
                Refusal::NotAdded {
                    module: "m".into(),
                    version: "v".into(),
                    source: None,
                },
                3,
            ),
            (
                Refusal::NoHeaders {
                    release: "r".into(),
                },
                1,
            ),
            (
                Refusal::AlreadyBuilt {
                    release: "r".into(),
                },
                3,
            ),
            (
                Refusal::Excluded {
                    module: "m".into(),
                    reason: "why".into(),
                },
                77,
            ),
            (
                Refusal::BuildFailed {
                    release: "r".into(),
                    target: "t".into(),
                    error: e(),
                },
                10,
            ),
            (Refusal::BadBuildConf { error: e() }, 8),
            (Refusal::NoKernel { dir: "d".into() }, 6),
            (
                Refusal::AlreadyInstalled {
                    release: "r".into(),
                    target: "t".into(),
                },
                5,
            ),
            (Refusal::InstallAborted { error: e() }, 6),
            (Refusal::AutoinstallFailed, 11),
        ];
        for (r, code) in &codes {
            assert_eq!(r.code(), *code, "{r:?}");
            assert_eq!(Outcome::Refused(r.clone()).code(), *code);
        }
        assert_eq!(Outcome::Done.code(), exit::OK);
        assert_eq!(Outcome::Status(vec![]).code(), exit::OK);
        assert_eq!(Outcome::Interrupted.code(), exit::INTERRUPTED);
    }

    #[test]
    fn a_failed_build_is_dkms_s_bad_return_status_or_bad_conf_and_a_signal_is_no_refusal() {
        let of = |e: Error| Refusal::of_build("6.1.0-57-amd64", "amd64", e);
        assert!(matches!(
            of(Error::failed("make failed")),
            Ok(Refusal::BuildFailed { ref release, ref target, .. })
                if release == "6.1.0-57-amd64" && target == "amd64"
        ));
        assert!(matches!(
            of(Error::config("dkms.conf", "bad")),
            Ok(Refusal::BadBuildConf { .. })
        ));
        for kind in [Kind::Environment, Kind::Usage, Kind::Interrupted] {
            assert_eq!(of(Error::new(kind, "x")).unwrap_err().kind, kind);
        }
        assert!(matches!(
            Refusal::of_install(Error::failed("depmod failed")),
            Ok(Refusal::InstallAborted { .. })
        ));
        assert!(matches!(
            Refusal::of_install(Error::env("no space")),
            Ok(Refusal::InstallAborted { .. })
        ));
        let stopped = Error::new(Kind::Interrupted, "interrupted");
        assert_eq!(
            Refusal::of_install(stopped).unwrap_err().kind,
            Kind::Interrupted
        );
    }

    #[test]
    fn remove_k_forgets_the_module_once_no_kernel_has_it_built_or_installed() {
        let key = |m: &str, v: &str, r: &str| CellKey {
            module: m.into(),
            version: v.into(),
            release: r.into(),
            target: "amd64".into(),
        };
        let install = |m: &str, v: &str| InstallRecord {
            root: "/".into(),
            module: m.into(),
            version: v.into(),
            release: "a".into(),
            target: "amd64".into(),
            state: InstallState::Installed,
            files: Vec::new(),
            displaced: Vec::new(),
            updated_at: 0,
        };
        let others = [key("hello", "2.0", "a"), key("vpoll", "1.0", "a")];
        assert!(unbuilt_everywhere(&others, &[], "hello", "1.0"));
        assert!(!unbuilt_everywhere(
            &[key("hello", "1.0", "b")],
            &[],
            "hello",
            "1.0"
        ));
        assert!(!unbuilt_everywhere(
            &others,
            &[install("hello", "1.0")],
            "hello",
            "1.0"
        ));
        assert!(unbuilt_everywhere(
            &others,
            &[install("hello", "2.0")],
            "hello",
            "1.0"
        ));
    }

    fn line(module: &str, kernel: &str, target: &str, state: LineState, root: &str) -> StatusLine {
        StatusLine {
            module: module.into(),
            version: "1.0".into(),
            kernel: Some(kernel.into()),
            target: Some(target.into()),
            state,
            added: true,
            built: true,
            installed: match state {
                LineState::Installed => vec![StatusInstall {
                    root: root.into(),
                    state: RootState::Installed,
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
            line(
                "hello",
                "6.1.0-57-amd64",
                "amd64",
                LineState::Installed,
                "/",
            ),
            line(
                "hello",
                "6.1.0-50-amd64",
                "amd64",
                LineState::Installed,
                "/srv/img",
            ),
            line("vpoll", "6.1.0-57-amd64", "amd64", LineState::Built, "/"),
        ];
        let arch = |t: &str| {
            if t == "amd64" {
                "x86_64".into()
            } else {
                t.into()
            }
        };
        let status = |module: Option<&str>, kernels: Vec<Kernel>| {
            let r = Request {
                module: module.map(str::to_string),
                version: None,
                kernels,
                ..req(Action::Status)
            };
            status_lines(&lines, &r, &arch)
        };
        assert_eq!(
            status(None, vec![]),
            [
                "hello/1.0, 6.1.0-57-amd64, x86_64: installed",
                // Installed in another root only: built, as far as this machine goes.
                "hello/1.0, 6.1.0-50-amd64, x86_64: built",
                "vpoll/1.0, 6.1.0-57-amd64, x86_64: built",
            ]
        );
        assert_eq!(
            status(
                Some("hello"),
                vec![kernel("6.1.0-57-amd64", Some("x86_64"))]
            ),
            ["hello/1.0, 6.1.0-57-amd64, x86_64: installed"]
        );
        assert!(status(None, vec![kernel("6.1.0-57-amd64", Some("aarch64"))]).is_empty());
        assert!(status(Some("nosuch"), vec![]).is_empty());
    }

    /// No progress to show: these requests build nothing.
    #[derive(Default)]
    struct Quiet;

    impl Progress for Quiet {
        fn begin(
            &mut self,
            _: &crate::matrix::pipeline::Plan,
            _: usize,
            _: bool,
            _: &[Option<f64>],
        ) {
        }
        fn event(&mut self, _: &crate::matrix::pipeline::Plan, _: &crate::matrix::pipeline::Event) {
        }
        fn end(&mut self) {}
    }

    /// An empty store and root in a temporary directory.
    struct Fixture {
        tmp: tempfile::TempDir,
        home: Home,
        store: Store,
        profiles: crate::config::Profiles,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let home = Home {
                root: tmp.path().join("home"),
            };
            let store = Store::resolve(&home, None);
            std::fs::create_dir_all(tmp.path().join("root/usr/src")).unwrap();
            Fixture {
                tmp,
                home,
                store,
                profiles: Default::default(),
            }
        }

        fn request(&self, action: Action, kernels: &[&str]) -> Request {
            let root = self.tmp.path().join("root");
            Request {
                kernels: kernels.iter().map(|k| kernel(k, None)).collect(),
                sources: root.join("usr/src"),
                root,
                ..req(action)
            }
        }

        /// Registered as `kmx add` leaves it, without reading a dkms.conf.
        fn register(&self) {
            std::fs::create_dir_all(self.store.source_copy("hello", "1.0")).unwrap();
            self.store
                .save_source(&SourceRecord {
                    module: "hello".into(),
                    version: "1.0".into(),
                    origin: "/usr/src/hello-1.0".into(),
                    hash: String::new(),
                    added_at: 0,
                })
                .unwrap();
        }

        /// The outcome of `req`, and what each step said.
        fn run(&self, req: &Request) -> (Outcome, Vec<String>) {
            let env = Env {
                profiles: &self.profiles,
                home: &self.home,
                store: &self.store,
            };
            let mut said = Vec::new();
            let out = run::<Quiet>(env, req, &Run::default(), &mut |e| {
                said.push(match e {
                    Event::Notice(n) => n.to_string(),
                    Event::Remove(rm::Event::Removed { module, version }) => {
                        format!("removed {module} {version}")
                    }
                    Event::Added(_) => "added".into(),
                    Event::Built(_) => "built".into(),
                    Event::Install(_) => "install".into(),
                    Event::Uninstall(_) => "uninstall".into(),
                    Event::Remove(_) => "remove".into(),
                    Event::Autoinstall(_) => "autoinstall".into(),
                })
            })
            .unwrap();
            (out, said)
        }
    }

    fn refused(out: &Outcome) -> &Refusal {
        match out {
            Outcome::Refused(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_empty_store_refuses_as_dkms_does_and_says_why() {
        let f = Fixture::new();
        let src = f.tmp.path().join("root/usr/src/hello-1.0");
        let (out, said) = f.run(&f.request(Action::Add, &[]));
        assert!(
            matches!(refused(&out), Refusal::NoSource { dir } if *dir == src),
            "{out:?}"
        );
        assert_eq!(out.code(), 2);
        assert!(said.is_empty(), "{said:?}");
        let (out, _) = f.run(&f.request(Action::Build, &["6.1.0-57-amd64"]));
        assert!(
            matches!(refused(&out), Refusal::NotAdded { source: Some(dir), .. } if *dir == src),
            "{out:?}"
        );
        assert_eq!(out.code(), 3);
        let mut all = f.request(Action::Remove, &[]);
        all.all = true;
        let (out, _) = f.run(&all);
        assert!(matches!(
            refused(&out),
            Refusal::NotAdded { source: None, .. }
        ));
        let (out, _) = f.run(&f.request(Action::Unbuild, &["a"]));
        assert_eq!(out.code(), 3);
        // Uninstalling what is not installed is no error, as in DKMS.
        let (out, said) = f.run(&f.request(Action::Uninstall, &["a"]));
        assert!(matches!(out, Outcome::Done), "{out:?}");
        assert_eq!(
            said,
            ["Module hello 1.0 is not installed for kernel a. Skipping..."]
        );
        // No version given and none registered.
        let mut bare = f.request(Action::Install, &["a"]);
        bare.version = None;
        let (out, _) = f.run(&bare);
        assert!(matches!(refused(&out), Refusal::Unspecified));
        let (out, _) = f.run(&f.request(Action::Status, &[]));
        assert!(
            matches!(out, Outcome::Status(ref l) if l.is_empty()),
            "{out:?}"
        );
    }

    #[test]
    fn a_registered_module_is_refused_where_its_kernel_is_missing_and_removed_with_its_last_one() {
        let f = Fixture::new();
        f.register();
        let (out, _) = f.run(&f.request(Action::Add, &[]));
        assert!(matches!(refused(&out), Refusal::AlreadyAdded { .. }));
        assert_eq!(out.code(), 3);
        // No lib/modules/<release> in the root: nothing to install into.
        let (out, _) = f.run(&f.request(Action::Install, &["6.1.0-99-amd64"]));
        assert!(
            matches!(refused(&out), Refusal::NoKernel { dir } if dir.ends_with("lib/modules/6.1.0-99-amd64")),
            "{out:?}"
        );
        assert_eq!(out.code(), 6);
        // A kernel without headers.
        std::fs::create_dir_all(f.tmp.path().join("root/lib/modules/6.1.0-99-amd64")).unwrap();
        let (out, _) = f.run(&f.request(Action::Build, &["6.1.0-99-amd64"]));
        assert!(
            matches!(refused(&out), Refusal::NoHeaders { release } if release == "6.1.0-99-amd64"),
            "{out:?}"
        );
        assert_eq!(out.code(), 1);
        // `remove -k` of a kernel it is not built for: DKMS's words for each, then it
        // leaves the tree, since no kernel has it.
        let (out, said) = f.run(&f.request(Action::Remove, &["a"]));
        assert!(matches!(out, Outcome::Done), "{out:?}");
        assert_eq!(
            said,
            [
                "Module hello 1.0 is not installed for kernel a. Skipping...",
                "Module hello 1.0 is not built for kernel a. Skipping...",
                "Deleting module hello-1.0 completely from the DKMS tree.",
                "removed hello 1.0",
            ]
        );
        assert!(f.store.load_source("hello", "1.0").unwrap().is_none());
        let (out, _) = f.run(&f.request(Action::Remove, &["a"]));
        assert_eq!(out.code(), 3);
    }
}
