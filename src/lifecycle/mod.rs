//! The lifecycle's domain, DKMS's words over kmx's state store, one file a use case:
//! [`register`] (`add`), [`install`], [`autoinstall`], [`remove`] (`uninstall`, `unbuild`,
//! `remove`, over one shared unbuild), [`package`] (`package`, `tarball`,
//! `load-tarball`) and [`dkms`] (DKMS's command line, with DKMS's refusals); [`prepare`]
//! makes registered modules ready to install (building what is missing or stale),
//! [`status`] reads the store into status lines. Use cases take resolved
//! requests (no command-line type reaches here), never print, and return typed outcomes or
//! hand each step to the caller's `on` as it happens (so what the commands print comes in
//! the order the work is done); `src/commands/lifecycle.rs` and `src/commands/dkms.rs`
//! resolve the arguments, call these and print.

pub mod autoinstall;
pub mod dkms;
pub mod install;
pub mod package;
pub mod prepare;
pub mod register;
pub mod remove;
pub mod status;

use std::path::Path;
use std::process::Command;

use crate::config::Profiles;
use crate::error::{Error, Kind, Result};
use crate::install::SignKey;
use crate::install::mok::MachineKey;
use crate::matrix::pipeline::Options;
use crate::state::Home;
use crate::state::cache::{Cache, DEFAULT_MAX_BYTES};
use crate::state::store::{CellKey, Store};
use prepare::Prep;

/// What the use cases work in: the profiles, kmx's home and its state store.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub profiles: &'a Profiles,
    pub home: &'a Home,
    pub store: &'a Store,
}

/// How a use case that builds and installs runs, resolved once from the command line.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Parallel jobs for the builds (`None`: the number of CPUs).
    pub jobs: Option<usize>,
    /// Run depmod after installing or uninstalling.
    pub depmod: bool,
    /// The key the flags (or kmx's home) give; `None`: the machine's, if a module needs one.
    pub sign: Option<SignKey>,
    /// Test hook (`KMX_TEST_PAUSE_AT`): the install step to pause at.
    pub pause_at: Option<String>,
    /// Wait for the store's lock rather than fail at once.
    pub wait: bool,
}

impl Run {
    /// The build options of an install: the same build cache as `kmx build` (a cell built
    /// there is not built again).
    pub fn build_options(&self, home: &Home) -> Options {
        Options {
            jobs: self.jobs,
            cache: Some(Cache::new(home.cell_cache(), DEFAULT_MAX_BYTES)),
            ..Options::default()
        }
    }
}

/// The version to act on: the named one, or the newest registered or built.
pub fn pick_version(store: &Store, module: &str, version: Option<String>) -> Result<String> {
    if let Some(v) = version {
        return Ok(v);
    }
    store.versions_of(module)?.pop().ok_or_else(|| {
        Error::usage(format!("module `{module}` is not registered"))
            .hint("register its source with `kmx add DIR`, or import a build with `kmx load-tarball FILE`")
    })
}

/// Whether Ctrl-C, SIGTERM or SIGHUP arrived (for commands that handle them).
pub fn interrupted() -> bool {
    crate::process::stop_flag().is_ok_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
}

/// The running kernel's release (`uname -r`): DKMS's default kernel.
pub fn running_kernel() -> Result<String> {
    let path = Path::new("/proc/sys/kernel/osrelease");
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io("read the running kernel's release from", path, e))
}

/// With no key given, the key for the modules about to be installed into `root`
/// ([`crate::install::mok::for_root`]), when one of them is to be signed; `Some(Err)`: a
/// key that cannot be made (the modules are installed unsigned, or refused where the
/// kernel forces signatures).
pub fn machine_key(
    home: &Home,
    root: &Path,
    preps: &[(CellKey, Result<Prep>)],
) -> Option<Result<MachineKey>> {
    let wanted = preps
        .iter()
        .any(|(_, p)| matches!(p, Ok(Prep::Ready(r)) if r.record.sig_enabled));
    if !wanted {
        return None;
    }
    crate::install::mok::for_root(&home.root.join("keys"), root)
}

/// Install one cell made ready by [`prepare`] into `root`.
pub fn install_ready(
    store: &Store,
    root: &Path,
    ready: &prepare::Ready,
    run: &Run,
    sign: &Option<SignKey>,
) -> Result<crate::install::Installed> {
    let opts = crate::install::Options {
        depmod: run.depmod,
        sign: sign.clone(),
        sign_file: ready.sign_file.clone(),
        pre_install: ready.pre_install.clone(),
        post_install: ready.post_install.clone(),
        pause_at: run.pause_at.clone(),
    };
    crate::install::install(store, root, &ready.record, &ready.cell_dir, &opts)
}

/// A source hook (POST_ADD, POST_REMOVE) that failed: as in DKMS, a warning, since what it
/// follows has already happened.
#[derive(Debug)]
pub struct HookFailed {
    pub name: &'static str,
    pub error: Error,
}

/// Run a source hook from the source copy `dir`; its failure is returned, not raised.
pub fn run_hook(name: &'static str, line: &str, dir: &Path) -> Option<HookFailed> {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(line).current_dir(dir);
    crate::process::output(&mut cmd, Kind::Failed)
        .err()
        .map(|error| HookFailed { name, error })
}

/// The key to sign with, or what kept the machine's key from being made; `None` when no
/// module asks for a signature or a key was given.
pub enum KeyChoice {
    Machine(MachineKey),
    NoKey(Error),
}

/// The key for `preps`: the one given, else the machine's ([`machine_key`]), said to `on`.
pub fn choose_key(
    home: &Home,
    root: &Path,
    given: &Option<SignKey>,
    preps: &[(CellKey, Result<Prep>)],
    on: &mut dyn FnMut(&KeyChoice),
) -> Option<SignKey> {
    if given.is_some() {
        return given.clone();
    }
    let choice = match machine_key(home, root, preps)? {
        Ok(k) => KeyChoice::Machine(k),
        Err(e) => KeyChoice::NoKey(e),
    };
    on(&choice);
    match choice {
        KeyChoice::Machine(k) => Some(k.key().clone()),
        KeyChoice::NoKey(_) => None,
    }
}

/// A built cell for the use cases' unit tests.
#[cfg(test)]
pub(crate) fn built_fixture(
    module: &str,
    version: &str,
    release: &str,
    target: &str,
    autoinstall: bool,
) -> crate::state::store::BuiltRecord {
    crate::state::store::BuiltRecord {
        module: module.into(),
        version: version.into(),
        release: release.into(),
        target: target.into(),
        vermagic: crate::modfile::Vermagic {
            release: release.into(),
            flags: "SMP mod_unload ".into(),
        },
        kdir: std::path::PathBuf::new(),
        source_hash: None,
        files: Vec::new(),
        compress: None,
        sig_enabled: false,
        sig_force: false,
        sig_hash: None,
        autoinstall,
        origin: crate::state::store::Origin::Build,
        built_at: 0,
    }
}
