//! The sandbox: the view of the machine one step of one cell gets (a dkms.conf evaluation,
//! a patch, PRE_BUILD, make, POST_BUILD), made by the kernel and entered before the step's
//! first instruction.
//!
//! ## DKMS's directories, per cell
//!
//! Real packages build against paths they do not get from DKMS's variables: the hard-coded
//! `/lib/modules/<release>/build` (in a MAKE line, or a Makefile at any depth of the source),
//! `/usr/src/<name>-<version>` and `/var/lib/dkms/<name>/<version>/build` written literally
//! in dkms.conf, another package's source found with `find /usr/src`. Guessing which sources
//! need which path always misses one, so in every step's view
//!
//! - `/lib/modules/<release>/build` is the cell's kernel tree,
//! - `/usr/src/<name>-<version>` is the cell's source (its own copy, for a build step),
//! - `/var/lib/dkms/<name>/<version>/build` is the cell's build directory (a real directory,
//!   so `find $dkms_tree/.../build` descends it) and `.../source` links to the source,
//! - the other sources of the run are read-only at `/usr/src/<other>-<version>`,
//!
//! and `$dkms_tree` / `$source_tree` are `/var/lib/dkms` / `/usr/src`, as in DKMS. The
//! host's entries of those three directories stay visible (read-only), except the cell's
//! own names, which the cell's directories replace; the host's copies are never written.
//! No two cells share a directory.
//!
//! ## Confinement
//!
//! A dkms.conf is a third party's bash, evaluated (as root, from kernel hooks) before anything
//! is built, also by `--dry-run` and `kmx add`; PRE_BUILD, POST_BUILD and the package's
//! Makefiles are its code too. The view is made by bubblewrap (`bwrap`, Debian's
//! `bubblewrap`: the sandbox Flatpak is built on), which sets it up with system calls in one
//! process and then execs the step. Under the strict policy ([`Policy::strict`], what every
//! evaluation and, by default, every build step gets):
//!
//! - a new user namespace where the kernel allows one (root maps to root; `bwrap
//!   --disable-userns` forbids nesting another), with every capability dropped and the
//!   bounding set cleared, and `no_new_privs` (a set-uid program gains nothing);
//! - a new mount namespace entered with `pivot_root`, the old root detached: the host's
//!   root is bound read-only, recursively, and mounts inherited across the user namespace
//!   are locked read-only by the kernel (no remount can lift it);
//! - new PID, IPC, UTS and cgroup namespaces and a fresh `/proc` for the step's own PID
//!   namespace (no host process to signal, trace or reach through `/proc/<pid>/root`); the
//!   step dies with kmx (`--die-with-parent`), and everything it starts dies with it;
//! - a new network namespace with only its own loopback (no host address, no abstract Unix
//!   socket of the host), unless the step's compiler launcher needs the network (distcc,
//!   icecc, sccache);
//! - a minimal `/dev` (null, zero, full, random, urandom, tty, pts, shm), an empty private
//!   `/tmp` and `/run` (no host socket under `/run` or `/tmp`), a session of its own
//!   without a terminal, made by kmx ([`crate::process::run_supervised`]: no `TIOCSTI` into
//!   kmx's terminal; bwrap keeps the step in that session's process group, which kmx stops);
//! - the machine's secrets hidden ([`SECRETS`]: shadow files, SSH keys, module-signing
//!   keys).
//!
//! A build step can write its build directory, its copy of the source and the directories
//! its policy names (a compiler cache). The host is readable otherwise, as it must be for a
//! build (compilers, headers, the kernel trees wherever they are).
//!
//! `--sandbox open` ([`Policy::open`]) gives build steps the host as DKMS does: writable,
//! with its network, processes and devices, capabilities kept; only DKMS's three directories
//! are the cell's own.
//!
//! Where user namespaces cannot be made (user namespaces disabled, or kmx running in a
//! chroot, where the kernel refuses them), root still gets every other namespace: the step
//! runs as root without capabilities on a read-only host. Where no sandbox can be made at
//! all (no bubblewrap, another user without user namespaces), [`available`] says why and
//! cells run on the host's paths: the plan and the summary say so.

mod seccomp;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// DKMS's `$dkms_tree` inside a cell.
pub const DKMS_TREE: &str = "/var/lib/dkms";
/// DKMS's `$source_tree` inside a cell.
pub const SOURCE_TREE: &str = "/usr/src";

/// Files and directories of the host that no step reads, though the rest of the host is
/// readable: password hashes, SSH keys, and the keys modules are signed with (DKMS's machine
/// owner key, kmx's own), which would let a package sign anything the machine trusts.
pub const SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh",
    "/root/.ssh",
    "/root/.gnupg",
    "/var/lib/dkms/mok.key",
    "/var/lib/shim-signed/mok",
    "/var/lib/kmx/keys",
];

/// More secrets of this run (kmx's own keys, in whichever home it uses), said once before
/// any step runs; a second call changes nothing.
pub fn hide_also(paths: Vec<PathBuf>) {
    let _ = MORE_SECRETS.set(paths);
}

static MORE_SECRETS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// The build directory a cell's steps see: DKMS's `$dkms_tree/<name>/<version>/build`.
pub fn build_dir(name: &str, version: &str) -> PathBuf {
    Path::new(DKMS_TREE).join(name).join(version).join("build")
}

/// `/usr/src/<name>-<version>`.
pub fn source_dir(name: &str, version: &str) -> PathBuf {
    Path::new(SOURCE_TREE).join(format!("{name}-{version}"))
}

/// Where an evaluation's own files (the dkms.conf copy, the wrapper, the dump) are inside
/// the sandbox.
pub const EVAL_DIR: &str = "/tmp/kmx";

/// Another module source of the run, shown read-only at `/usr/src/<name>-<version>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
}

/// What the view is for.
#[derive(Debug, Clone)]
pub enum Purpose {
    /// A build step: the cell's build directory (this host directory) and its copy of the
    /// source are writable.
    Build { build: PathBuf },
    /// Evaluating a dkms.conf: `files` (a host directory, writable) at [`EVAL_DIR`], the
    /// source read-only.
    Evaluate { files: PathBuf },
}

/// `--sandbox`: the run's choice, for dkms.conf and build steps alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// [`Policy::strict`].
    #[default]
    Strict,
    /// [`Policy::open`]: as under DKMS.
    Open,
}

impl Mode {
    /// The policy a step of this mode starts from (a build step may keep the network or a
    /// cache directory: see the build's own policy).
    pub fn policy(self) -> Policy {
        match self {
            Mode::Strict => Policy::strict(),
            Mode::Open => Policy::open(),
        }
    }
}

/// How far a step is confined, beyond DKMS's directories (which are always private).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The confinement described in the module's documentation; `false`: the host as
    /// under DKMS (writable, its processes, devices, capabilities).
    pub confined: bool,
    /// The host's network; `false`: a network namespace with only its own loopback.
    pub network: bool,
    /// Host directories that stay writable (a compiler cache).
    pub writable: Vec<PathBuf>,
    /// Host paths the step reads by their own path though a private `/tmp` or `/run` would
    /// hide them (a dependency's `Module.symvers`, icecc's daemon socket): shown read-only.
    pub shown: Vec<PathBuf>,
}

impl Policy {
    /// Confined, no network: what every step gets by default.
    pub fn strict() -> Policy {
        Policy {
            confined: true,
            network: false,
            writable: Vec::new(),
            shown: Vec::new(),
        }
    }
    /// The host as under DKMS (`--sandbox open`).
    pub fn open() -> Policy {
        Policy {
            confined: false,
            network: true,
            writable: Vec::new(),
            shown: Vec::new(),
        }
    }
}

/// What one cell's view holds, in host paths.
#[derive(Debug, Clone)]
pub struct View {
    /// The kernel release and its tree, for `/lib/modules/<release>/build`.
    pub release: String,
    pub kdir: PathBuf,
    /// The module's name and version; both empty while unknown (the first reading of a
    /// dkms.conf): then nothing is shown at `/usr/src/<name>-<version>` or under
    /// `/var/lib/dkms`.
    pub name: String,
    pub version: String,
    /// The cell's source, shown at [`source_dir`]: writable for a build step (it is the
    /// cell's own copy), read-only for an evaluation.
    pub source: PathBuf,
    /// Other sources of the run, read-only under /usr/src.
    pub others: std::sync::Arc<Vec<Source>>,
    pub purpose: Purpose,
    pub policy: Policy,
    /// A toolchain root ([`crate::kernel::toolroot`]) that is the view's `/` instead of the
    /// host's: read-only, with the tree, the cell's directories and what the policy names
    /// placed in it at their own paths; nothing else of the host is in the view.
    pub root: Option<PathBuf>,
}

/// Why the sandbox cannot be made here ([`available`]), or a program could not be run in a
/// toolchain root ([`run_in_root`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// No `bwrap` on `PATH`, `/usr/sbin` or `/sbin`.
    #[error("bwrap not found (install bubblewrap)")]
    NoBubblewrap,
    /// The probe's own directory (`what`: "a temporary directory", "build", "src").
    #[error("cannot create {what}: {source}")]
    Create {
        what: &'static str,
        source: std::sync::Arc<std::io::Error>,
    },
    /// `bwrap` could not be started.
    #[error("cannot run {}: {source}", bwrap.display())]
    Run {
        bwrap: PathBuf,
        source: std::sync::Arc<std::io::Error>,
    },
    /// bubblewrap ran and could not make the view: its last line on stderr.
    #[error("{said}")]
    Refused { said: String },
}

/// How bubblewrap is run here, found once per process by [`available`].
#[derive(Debug, Clone)]
struct Runner {
    bwrap: PathBuf,
    /// Whether a user namespace can be made (not in a chroot, not disabled).
    user_ns: bool,
}

impl View {
    /// The command that runs `line` with bash from `cwd` (a path inside the view). Only
    /// called where [`available`] said yes; otherwise the command says why it cannot run.
    pub fn command(&self, cwd: &Path, line: &str) -> Command {
        match runner() {
            Ok(runner) => {
                let mut cmd = Command::new(&runner.bwrap);
                cmd.args(self.args(runner.user_ns, crate::process::is_root(), cwd));
                if self.policy.confined {
                    use std::os::unix::process::CommandExt;
                    // A descriptor kmx inherited from its caller (a directory of the host
                    // opened by a hook, say) would reach past the read-only view: none
                    // crosses into the step. A jobserver's, configured after this, does.
                    // The caller's session keyring (a login's) is left behind too.
                    // SAFETY: only async-signal-safe system calls between fork and exec.
                    unsafe { cmd.pre_exec(leave_the_caller) };
                    if let Some(fd) = seccomp::program(!self.policy.network).and_then(filter_fd) {
                        cmd.arg("--seccomp").arg(fd.as_raw_fd().to_string());
                        // SAFETY: fcntl is async-signal-safe; the descriptor lives as long
                        // as the command (the closure owns it).
                        unsafe {
                            cmd.pre_exec(move || {
                                match libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) {
                                    -1 => Err(std::io::Error::last_os_error()),
                                    _ => Ok(()),
                                }
                            })
                        };
                    }
                }
                cmd.args(["bash", "-c", line]);
                cmd
            }
            Err(why) => {
                let mut cmd = Command::new("bash");
                cmd.args(["-c", "echo \"bwrap: $0\" >&2; exit 1", &why.to_string()]);
                cmd
            }
        }
    }

    /// The command [`View::command`] runs, as words (`kmx build --dry-run -v` prints them
    /// for benches/noop-rebuild.sh to run a cell's make as kmx does): bubblewrap, its
    /// arguments and `bash -c line`, without the seccomp filter (bubblewrap reads it from a
    /// descriptor kmx passes) and what kmx does between fork and exec, which a shell cannot
    /// repeat. `None` where the sandbox cannot be made.
    pub fn words(&self, cwd: &Path, line: &str) -> Option<Vec<OsString>> {
        let runner = runner().ok()?;
        let mut words = vec![runner.bwrap.clone().into_os_string()];
        words.extend(self.args(runner.user_ns, crate::process::is_root(), cwd));
        words.extend(["bash", "-c", line].map(OsString::from));
        Some(words)
    }

    fn known(&self) -> bool {
        !self.name.is_empty() && !self.version.is_empty()
    }

    /// bubblewrap's arguments, up to the command: namespaces, then the view, mount by mount
    /// in order (a later mount covers an earlier one).
    fn args(&self, user_ns: bool, root: bool, cwd: &Path) -> Vec<OsString> {
        let policy = &self.policy;
        let confined = policy.confined;
        let run = resolve(Path::new("/run"));
        let mut a = Args(Vec::new(), Vec::new());
        // Root under `--sandbox open` is root as under DKMS: no user namespace.
        if (user_ns && confined) || !root {
            a.flags(&["--unshare-user"]);
            if confined {
                a.flags(&["--disable-userns"]);
            }
        }
        a.flags(&["--die-with-parent"]);
        if confined {
            a.flags(&[
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
                "--cap-drop",
                "ALL",
            ]);
            if !policy.network {
                a.flags(&["--unshare-net"]);
            }
        } else if root {
            // As under DKMS: root keeps its capabilities (a user keeps none in any case).
            a.flags(&["--cap-add", "ALL"]);
        }
        // A toolchain root's view: its paths are fixed (the root has merged /usr).
        let mut placed: Vec<PathBuf> = Vec::new();
        let run = match &self.root {
            Some(_) => PathBuf::from("/run"),
            None => run,
        };
        match (&self.root, confined) {
            (Some(toolroot), _) => {
                placed = self.placed_in_root();
                a.place_root(toolroot, Path::new("/"), &placed);
                a.at("--proc", Path::new("/proc"));
                if confined {
                    a.mask_proc();
                    a.at("--dev", Path::new("/dev"));
                } else {
                    a.mount("--dev-bind", Path::new("/dev"), Path::new("/dev"));
                }
                a.at("--tmpfs", Path::new("/tmp"));
                a.at("--tmpfs", &run);
                let mut sorted = placed.clone();
                sorted.sort_by_key(|p| p.components().count());
                for p in &sorted {
                    a.mount(if confined { "--ro-bind" } else { "--bind" }, p, p);
                }
            }
            (None, true) => {
                a.mount("--ro-bind", Path::new("/"), Path::new("/"));
                a.at("--proc", Path::new("/proc"));
                a.mask_proc();
                a.at("--dev", Path::new("/dev"));
                a.at("--tmpfs", Path::new("/tmp"));
                a.at("--tmpfs", &run);
            }
            (None, false) => a.mount("--dev-bind", Path::new("/"), Path::new("/")),
        }
        let bind = if confined { "--ro-bind" } else { "--bind" };

        // /lib/modules/<release>/build: the cell's tree (resolved: the tree may be the
        // host's own /lib/modules/<release>/build).
        let fixed = |p: &str| match self.root {
            Some(_) => PathBuf::from(p),
            None => resolve(Path::new(p)),
        };
        let lib_modules = fixed("/usr/lib/modules");
        let kdir = self
            .kdir
            .canonicalize()
            .unwrap_or_else(|_| self.kdir.clone());
        // /usr/src and /var/lib/dkms: the host's entries, and the cell's own.
        let source_tree = fixed(SOURCE_TREE);
        let dkms_tree = fixed(DKMS_TREE);
        let mut own_sources: Vec<String> = self
            .others
            .iter()
            .map(|o| format!("{}-{}", o.name, o.version))
            .collect();
        if self.known() {
            own_sources.push(format!("{}-{}", self.name, self.version));
        }
        let mut shadows = vec![
            (
                source_tree.as_path(),
                own_sources.iter().map(String::as_str).collect(),
            ),
            (
                dkms_tree.as_path(),
                match self.known() {
                    true => vec![self.name.as_str()],
                    false => Vec::new(),
                },
            ),
        ];
        if !self.release.is_empty() {
            shadows.push((lib_modules.as_path(), vec![self.release.as_str()]));
        }
        if self.root.is_some() {
            // The root's own (empty) directories, the view's alone.
            for (dir, _) in &shadows {
                a.at("--tmpfs", dir);
            }
        } else {
            a.shadow(&shadows, bind);
        }
        if !self.release.is_empty() {
            let release = lib_modules.join(&self.release);
            a.dir(&release);
            if release.is_dir() && self.root.is_none() {
                a.rebind_entries(&release, &["build", "source"], bind);
            }
            a.symlink(&kdir, &release.join("build"));
        }
        if self.known() {
            let module = dkms_tree.join(&self.name).join(&self.version);
            let source = source_tree.join(format!("{}-{}", self.name, self.version));
            match &self.purpose {
                Purpose::Build { build } => {
                    a.mount("--bind", &self.source, &source);
                    a.mount("--bind", build, &module.join("build"));
                }
                Purpose::Evaluate { .. } => {
                    a.mount("--ro-bind", &self.source, &source);
                    a.dir(&module.join("build"));
                }
            }
            a.symlink(
                &source_dir(&self.name, &self.version),
                &module.join("source"),
            );
        }
        for o in self.others.iter() {
            if (&o.name, &o.version) != (&self.name, &self.version) {
                let at = source_tree.join(format!("{}-{}", o.name, o.version));
                a.mount("--ro-bind", &o.dir, &at);
            }
        }
        if confined && self.root.is_none() {
            // What the step reaches by its host path and the private /tmp and /run would
            // hide: the tree (with what its links reach: Debian's `-common` half, the
            // kbuild directory), the source that a first reading of dkms.conf runs in, what
            // the policy shows. The whole directory under /tmp or /run that holds each is
            // shown read-only.
            let hidden = [PathBuf::from("/tmp"), run];
            let mut reached = vec![kdir.clone(), self.kdir.clone()];
            if !self.known() {
                reached.push(self.source.clone());
            }
            reached.extend(policy.shown.iter().cloned());
            let mut shown: Vec<PathBuf> = Vec::new();
            for p in reached {
                let Some(h) = hidden.iter().find(|h| p.starts_with(h)) else {
                    continue;
                };
                let Some(top) = p.strip_prefix(h).ok().and_then(|r| r.components().next()) else {
                    continue;
                };
                let top = h.join(top);
                if top.exists() && !shown.contains(&top) {
                    a.mount("--ro-bind", &top, &top);
                    shown.push(top);
                }
            }
        }
        if let Purpose::Evaluate { files } = &self.purpose {
            a.mount("--bind", files, Path::new(EVAL_DIR));
        }
        for dir in &policy.writable {
            a.mount("--bind", dir, dir);
        }
        if confined {
            let inside = |p: &Path| self.root.is_none() || placed.iter().any(|d| p.starts_with(d));
            let more = MORE_SECRETS.get().map(Vec::as_slice).unwrap_or_default();
            for path in SECRETS
                .iter()
                .map(Path::new)
                .chain(more.iter().map(PathBuf::as_path))
            {
                if !inside(path) {
                    continue;
                }
                match path.symlink_metadata() {
                    Ok(m) if m.is_dir() => a.at("--tmpfs", path),
                    Ok(_) => a.mount("--ro-bind", Path::new("/dev/null"), path),
                    Err(_) => {}
                }
            }
        }
        if self.root.is_some() && confined {
            // The root's own directories made for the view's mounts: read-only once made.
            for p in std::mem::take(&mut a.1) {
                a.at("--remount-ro", &p);
            }
        }
        a.at("--chdir", cwd);
        a.0
    }

    /// The host paths a toolchain root's view shows at their own path (read-only under the
    /// strict policy): the tree's whole sysroot (its links reach the common half and the
    /// kbuild tools), the tree as named, and the directories the policy shows.
    fn placed_in_root(&self) -> Vec<PathBuf> {
        let mut v = sysroot_paths_of_tree(&self.kdir);
        if self.kdir.is_absolute() && !v.iter().any(|p| self.kdir.starts_with(p)) {
            v.push(self.kdir.clone());
        }
        for p in &self.policy.shown {
            if p.exists() && !v.iter().any(|d| p.starts_with(d)) {
                v.push(p.clone());
            }
        }
        v
    }
}

/// The tree's sysroot (`<sysroot>/usr/src/<name>`), or the tree itself: as `kdir` names it
/// (a path through a link to the sysroot stays that path; see [`sysroot_paths_of_tree`]).
fn sysroot_of_tree(kdir: &Path) -> PathBuf {
    match kdir.parent() {
        Some(p) if p.ends_with("usr/src") => p
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or(kdir.to_path_buf()),
        _ => kdir.to_path_buf(),
    }
}

/// Where a tree's sysroot must be seen for its links to resolve: at the path `kdir` names it
/// by (make runs there, and Debian's flavour Makefile includes `../<abi>-common/Makefile`
/// relative to it) and, when a link leads there, at its real path too.
fn sysroot_paths_of_tree(kdir: &Path) -> Vec<PathBuf> {
    let named = sysroot_of_tree(kdir);
    let mut paths = vec![named.clone()];
    if let Ok(real) = kdir.canonicalize().map(|k| sysroot_of_tree(&k))
        && real != named
    {
        paths.push(real);
    }
    paths
}

/// Run `args` in toolchain root `root` (as `/`, read-only, no network, no capabilities).
pub fn run_in_root(root: &Path, args: &[&str]) -> Result<std::process::Output, Unavailable> {
    let runner = runner()?;
    let mut cmd = Command::new(&runner.bwrap);
    if runner.user_ns || !crate::process::is_root() {
        cmd.args(["--unshare-user", "--disable-userns"]);
    }
    cmd.args([
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
    ])
    .arg(root)
    .args([
        "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--",
    ])
    .args(args)
    .stdin(std::process::Stdio::null());
    cmd.output().map_err(|e| Unavailable::Run {
        bwrap: runner.bwrap.clone(),
        source: e.into(),
    })
}

/// A pipe holding the seccomp program, for bubblewrap to read (the program is a few hundred
/// bytes: it fits a pipe's buffer, and the write end is closed before bubblewrap starts).
fn filter_fd(program: Vec<u8>) -> Option<std::os::fd::OwnedFd> {
    use std::io::Write;
    let (read, write) = std::io::pipe().ok()?;
    let mut write = write;
    write.write_all(&program).ok()?;
    drop(write);
    Some(read.into())
}

/// Between fork and exec of a confined step's bubblewrap: a new, empty session keyring
/// (`KEYCTL_JOIN_SESSION_KEYRING`; the caller's may hold a login's keys), and every
/// descriptor above standard error close-on-exec (`close_range`, Linux 5.11; `fcntl` one by
/// one before it).
fn leave_the_caller() -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl, close_range and fcntl are async-signal-safe and take plain integers
    // (a null name: an anonymous keyring).
    unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        );
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
            return Ok(());
        }
        let max = match libc::sysconf(libc::_SC_OPEN_MAX) {
            n if n > 3 => n.min(1 << 20) as libc::c_int,
            _ => 1024,
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// bubblewrap's argument list being written, and the directories of a toolchain root's
/// view it made a tmpfs of ([`Args::place_root`]).
struct Args(Vec<OsString>, Vec<PathBuf>);

impl Args {
    /// Show toolchain root `root` at `/` (view directory `dir` of it, which is already a
    /// directory of the view): each entry bound read-only, except the directories that lead
    /// to a path of `placed` (the host paths shown at their own place), which become a tmpfs
    /// holding the root's entries again, and so on down. `/tmp`, `/run`, `/proc` and `/dev`
    /// are the view's own, mounted afterwards.
    fn place_root(&mut self, root: &Path, dir: &Path, placed: &[PathBuf]) {
        // bubblewrap's own new root is already an empty tmpfs.
        let top = dir == Path::new("/");
        self.1.push(dir.to_path_buf());
        let here = root.join(dir.strip_prefix("/").unwrap_or(dir));
        let Ok(entries) = std::fs::read_dir(&here) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if top && ["tmp", "run", "proc", "dev"].iter().any(|n| name == *n) {
                continue;
            }
            let at = dir.join(&name);
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_symlink() {
                if let Ok(target) = std::fs::read_link(e.path()) {
                    self.symlink(&target, &at);
                }
            } else if kind.is_dir() && placed.iter().any(|p| p.starts_with(&at)) {
                self.at("--tmpfs", &at);
                self.place_root(root, &at, placed);
            } else if kind.is_dir() || kind.is_file() {
                self.mount("--ro-bind", &e.path(), &at);
            }
        }
    }

    /// What of the new `/proc` would still reach the whole machine, covered as container
    /// runtimes do: sysctls and `/proc/fs` read-only (the kernel checks no capability for
    /// most sysctls, only that the writer is root), `/proc/sysrq-trigger` (a write reboots
    /// the host) and the kernel's own files hidden.
    fn mask_proc(&mut self) {
        for dir in ["sys", "fs"] {
            let path = Path::new("/proc").join(dir);
            if path.is_dir() {
                self.mount("--ro-bind", &path, &path);
            }
        }
        for file in [
            "sysrq-trigger",
            "kcore",
            "keys",
            "latency_stats",
            "timer_list",
            "sched_debug",
        ] {
            let path = Path::new("/proc").join(file);
            if path.exists() {
                self.mount("--ro-bind", Path::new("/dev/null"), &path);
            }
        }
        for dir in ["acpi", "scsi"] {
            let path = Path::new("/proc").join(dir);
            if path.is_dir() {
                self.at("--tmpfs", &path);
            }
        }
    }

    fn flags(&mut self, flags: &[&str]) {
        self.0.extend(flags.iter().map(OsString::from));
    }
    fn at(&mut self, op: &str, path: &Path) {
        self.0.push(op.into());
        self.0.push(path.into());
    }
    fn mount(&mut self, op: &str, from: &Path, to: &Path) {
        self.0.push(op.into());
        self.0.push(from.into());
        self.0.push(to.into());
    }
    fn dir(&mut self, path: &Path) {
        self.at("--dir", path);
    }
    fn symlink(&mut self, target: &Path, at: &Path) {
        self.mount("--symlink", target, at);
    }

    /// Make each host directory of `dirs` the view's own (a tmpfs, writable by nobody but
    /// the view) with the host's entries shown again by `bind`, except the names given with
    /// it, which the view places itself. A missing directory is made in its nearest
    /// existing parent, shadowed the same way (bubblewrap cannot create a directory on the
    /// read-only host). Outer directories first, so an inner one's tmpfs is never covered.
    fn shadow(&mut self, dirs: &[(&Path, Vec<&str>)], bind: &str) {
        let mut points: Vec<(PathBuf, Vec<String>)> = Vec::new();
        let mut make = Vec::new();
        for (dir, except) in dirs {
            let mut missing = Vec::new();
            let mut existing = dir.to_path_buf();
            while !existing.is_dir() {
                match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        missing.push(name.to_os_string());
                        existing = parent.to_path_buf();
                    }
                    _ => break,
                }
            }
            let names: Vec<String> = match missing.last() {
                Some(first) => vec![first.to_string_lossy().into_owned()],
                None => except.iter().map(|n| n.to_string()).collect(),
            };
            let mut at = existing.clone();
            for name in missing.iter().rev() {
                at.push(name);
                make.push(at.clone());
            }
            match points.iter_mut().find(|(p, _)| *p == existing) {
                Some((_, known)) => known.extend(names),
                None => points.push((existing, names)),
            }
        }
        points.sort_by_key(|(p, _)| p.components().count());
        for (point, names) in &points {
            // The root itself cannot be covered: a directory missing there fails bwrap,
            // which says so.
            if point != Path::new("/") {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                self.at("--tmpfs", point);
                self.rebind_entries(point, &names, bind);
            }
        }
        for dir in make {
            self.dir(&dir);
        }
    }

    /// Show again what host directory `dir` holds (a tmpfs now covers it), but `except`:
    /// directories and files bound by `bind`, symbolic links made again; sockets, FIFOs and
    /// devices are left out.
    fn rebind_entries(&mut self, dir: &Path, except: &[&str], bind: &str) {
        let Some(entries) = listing(dir) else {
            return;
        };
        for (name, path, link) in entries.iter() {
            if except.iter().any(|x| name.as_os_str() == *x) {
                continue;
            }
            match link {
                Some(target) => self.symlink(target, path),
                None => self.mount(bind, path, path),
            }
        }
    }
}

/// One entry of a host directory a view shows again: its name, path, and the target when it
/// is a symbolic link (directories and files are bound; other kinds are left out).
type Entry = (std::ffi::OsString, PathBuf, Option<PathBuf>);

/// The entries of host directory `dir`, sorted by name: read once per process while the
/// directory's modification time stays the same (adding, removing or renaming an entry
/// changes it), not for every step of every cell (`/usr/lib` alone has ~100).
fn listing(dir: &Path) -> Option<std::sync::Arc<Vec<Entry>>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    type Seen = HashMap<PathBuf, (std::time::SystemTime, Arc<Vec<Entry>>)>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let stamp = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    let seen = SEEN.get_or_init(Default::default);
    if let Some((at, entries)) = seen.lock().unwrap_or_else(|e| e.into_inner()).get(dir)
        && *at == stamp
    {
        return Some(entries.clone());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter_map(|e| {
            let path = e.path();
            let kind = e.file_type().ok()?;
            if kind.is_symlink() {
                let target = std::fs::read_link(&path).ok()?;
                Some((e.file_name(), path, Some(target)))
            } else if kind.is_dir() || kind.is_file() {
                Some((e.file_name(), path, None))
            } else {
                None
            }
        })
        .collect();
    let entries = Arc::new(entries);
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir.to_path_buf(), (stamp, entries.clone()));
    Some(entries)
}

/// Why a step's sandbox could not be made, from what the step printed (`text`, its first
/// lines) and its exit status: bubblewrap's own message. `None` when the step itself ran.
pub fn setup_failure(code: Option<i32>, text: &str) -> Option<String> {
    if code != Some(1) {
        return None;
    }
    let first = text.lines().find(|l| !l.trim().is_empty())?;
    first.starts_with("bwrap: ").then(|| first.to_string())
}

/// `path` with its existing part resolved on the host (`/lib` is `/usr/lib` with a merged
/// /usr): the mounts must be made on real directories, not through symbolic links.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Whether cells get their sandbox here: `Err` says why not. Probed once per process.
pub fn available() -> Result<(), Unavailable> {
    runner().map(|_| ())
}

fn runner() -> Result<&'static Runner, Unavailable> {
    static RUNNER: OnceLock<Result<Runner, Unavailable>> = OnceLock::new();
    RUNNER
        .get_or_init(probe_or_recall)
        .as_ref()
        .map_err(Clone::clone)
}

static PROBE_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Keep what a successful probe found in `file`, and trust it while nothing it depends on
/// has changed ([`probe_key`]): a run that needs no step then starts no bubblewrap.
pub fn remember_probe(file: PathBuf) {
    let _ = PROBE_FILE.set(file);
}

/// What decides whether bubblewrap works here as it did: the program (by identity), this
/// kmx, the user, the boot, the namespaces kmx runs in, the root directory (a chroot), the
/// kernel's switches for user namespaces, and the directory the probe works in.
fn probe_key(bwrap: &Path) -> String {
    let file = crate::digest::file_identity;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let link = |p: &str| {
        std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap_or_default()
    };
    let text = format!(
        "bwrap {} {}|kmx {} {}|uid {} {}|boot {}|ns {} {} {}|root {}|sysctl {} {} {}|tmp {}",
        bwrap.display(),
        file(bwrap),
        env!("CARGO_PKG_VERSION"),
        file(Path::new("/proc/self/exe")),
        // SAFETY: getuid and geteuid cannot fail.
        unsafe { libc::getuid() },
        unsafe { libc::geteuid() },
        read("/proc/sys/kernel/random/boot_id").trim(),
        link("/proc/self/ns/user"),
        link("/proc/self/ns/mnt"),
        link("/proc/self/ns/pid"),
        file(Path::new("/")),
        read("/proc/sys/kernel/unprivileged_userns_clone").trim(),
        read("/proc/sys/user/max_user_namespaces").trim(),
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").trim(),
        std::env::temp_dir().display(),
    );
    let mut fp = crate::digest::Fingerprint::new();
    fp.field("sandbox-probe", text.as_bytes());
    fp.finish()
}

/// The probe's finding, kept from an earlier run under the same [`probe_key`], or probed
/// now (and kept when it succeeds; a failure is probed again next time).
fn probe_or_recall() -> Result<Runner, Unavailable> {
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let bwrap =
        which::which_in("bwrap", Some(&path), "/").map_err(|_| Unavailable::NoBubblewrap)?;
    let Some(file) = PROBE_FILE.get() else {
        return probe(bwrap);
    };
    let key = probe_key(&bwrap);
    if let Ok(text) = std::fs::read_to_string(file)
        && let Some((k, user_ns)) = text.trim().split_once(' ')
        && k == key
        && let Ok(user_ns) = user_ns.parse::<bool>()
    {
        return Ok(Runner { bwrap, user_ns });
    }
    let runner = probe(bwrap)?;
    crate::digest::keep_cache_file(file, format!("{key} {}\n", runner.user_ns).as_bytes());
    Ok(runner)
}

/// Whether bubblewrap at `bwrap` can make a user namespace here, by making the strict view
/// of a cell and running a step in it that must see its build directory and tree link.
fn probe(bwrap: PathBuf) -> Result<Runner, Unavailable> {
    let tmp = tempfile::Builder::new()
        .prefix(".kmx-probe-")
        .tempdir_in(std::env::temp_dir())
        .map_err(|e| Unavailable::Create {
            what: "a temporary directory",
            source: e.into(),
        })?;
    let dir = tmp.path();
    for d in ["build", "src"] {
        std::fs::create_dir(dir.join(d)).map_err(|e| Unavailable::Create {
            what: d,
            source: e.into(),
        })?;
    }
    let view = View {
        release: "0.0.0-kmx-probe".into(),
        kdir: dir.join("src"),
        name: "kmx-probe".into(),
        version: "0".into(),
        source: dir.join("src"),
        others: Default::default(),
        purpose: Purpose::Build {
            build: dir.join("build"),
        },
        policy: Policy::strict(),
        root: None,
    };
    let cwd = build_dir(&view.name, &view.version);
    let check = "test -L /lib/modules/0.0.0-kmx-probe/build && touch made-here";
    let made = dir.join("build/made-here");
    let mut last = String::new();
    let root = crate::process::is_root();
    // A user namespace first; root without one where the kernel refuses it (a chroot).
    for user_ns in [true, false] {
        if !user_ns && !root {
            break;
        }
        let out = Command::new(&bwrap)
            .args(view.args(user_ns, root, &cwd))
            .args(["bash", "-c", check])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Unavailable::Run {
                bwrap: bwrap.clone(),
                source: e.into(),
            })?;
        if out.status.success() && made.is_file() {
            return Ok(Runner { bwrap, user_ns });
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
    }
    Err(Unavailable::Refused { said: last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(purpose: Purpose, policy: Policy) -> View {
        View {
            release: "6.1.0-50-arm64".into(),
            kdir: "/home/a b/kdir".into(),
            name: "m".into(),
            version: "1".into(),
            source: "/out/w/src".into(),
            others: std::sync::Arc::new(vec![Source {
                name: "o".into(),
                version: "2".into(),
                dir: "/srcs/o".into(),
            }]),
            purpose,
            policy,
            root: None,
        }
    }

    fn words(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Whether `seq` appears in `all` as consecutive words.
    fn has(all: &[String], seq: &[&str]) -> bool {
        all.windows(seq.len()).any(|w| w == seq)
    }

    #[test]
    fn a_strict_view_drops_everything_and_places_the_cells_directories() {
        let v = view(
            Purpose::Build {
                build: "/out/w/build".into(),
            },
            Policy::strict(),
        );
        let a = words(&v.args(true, true, &build_dir("m", "1")));
        for flag in [
            "--unshare-user",
            "--disable-userns",
            "--unshare-pid",
            "--unshare-net",
            "--die-with-parent",
        ] {
            assert!(a.iter().any(|w| w == flag), "{flag} missing: {a:?}");
        }
        assert!(has(&a, &["--cap-drop", "ALL"]), "{a:?}");
        assert!(has(&a, &["--ro-bind", "/", "/"]), "{a:?}");
        assert!(has(&a, &["--proc", "/proc"]) && has(&a, &["--dev", "/dev"]));
        assert!(has(&a, &["--tmpfs", "/tmp"]), "{a:?}");
        let dkms = resolve(Path::new(DKMS_TREE));
        let src = resolve(Path::new(SOURCE_TREE));
        let build = dkms.join("m/1/build").to_string_lossy().into_owned();
        let own = src.join("m-1").to_string_lossy().into_owned();
        let other = src.join("o-2").to_string_lossy().into_owned();
        assert!(has(&a, &["--bind", "/out/w/build", &build]), "{a:?}");
        assert!(has(&a, &["--bind", "/out/w/src", &own]), "{a:?}");
        assert!(has(&a, &["--ro-bind", "/srcs/o", &other]), "{a:?}");
        assert!(has(&a, &["--chdir", "/var/lib/dkms/m/1/build"]), "{a:?}");
        // The host is never bound writable.
        assert!(!a.iter().any(|w| w == "--dev-bind"), "{a:?}");
    }

    #[test]
    fn an_open_view_is_the_host_as_under_dkms() {
        let v = view(
            Purpose::Build {
                build: "/out/w/build".into(),
            },
            Policy::open(),
        );
        let a = words(&v.args(false, true, &build_dir("m", "1")));
        assert!(has(&a, &["--dev-bind", "/", "/"]), "{a:?}");
        assert!(has(&a, &["--cap-add", "ALL"]), "{a:?}");
        for flag in ["--unshare-net", "--unshare-pid", "--new-session", "--proc"] {
            assert!(!a.iter().any(|w| w == flag), "{flag} present: {a:?}");
        }
    }

    #[test]
    fn an_evaluation_is_strict_and_sees_its_source_read_only() {
        let v = view(
            Purpose::Evaluate {
                files: "/out/e".into(),
            },
            Policy::strict(),
        );
        let a = words(&v.args(false, true, Path::new("/usr/src/m-1")));
        let src = resolve(Path::new(SOURCE_TREE));
        let own = src.join("m-1").to_string_lossy().into_owned();
        assert!(has(&a, &["--ro-bind", "/out/w/src", &own]), "{a:?}");
        assert!(has(&a, &["--bind", "/out/e", EVAL_DIR]), "{a:?}");
        assert!(has(&a, &["--unshare-net"]) && has(&a, &["--cap-drop", "ALL"]));
        // Root without a user namespace (a chroot): no --unshare-user, still no caps.
        assert!(!a.iter().any(|w| w == "--unshare-user"), "{a:?}");
    }

    #[test]
    fn shadowing_a_directory_shows_the_hosts_entries_but_the_views_own() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("keep")).unwrap();
        std::fs::create_dir(d.join("mine")).unwrap();
        std::fs::write(d.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("keep", d.join("link")).unwrap();
        let mut a = Args(Vec::new(), Vec::new());
        a.shadow(&[(&d, vec!["mine"])], "--ro-bind");
        let a = words(&a.0);
        let p = |n: &str| d.join(n).to_string_lossy().into_owned();
        assert!(has(&a, &["--tmpfs", &d.to_string_lossy()]), "{a:?}");
        assert!(has(&a, &["--ro-bind", &p("keep"), &p("keep")]), "{a:?}");
        assert!(has(&a, &["--ro-bind", &p("file"), &p("file")]), "{a:?}");
        assert!(has(&a, &["--symlink", "keep", &p("link")]), "{a:?}");
        assert!(!a.iter().any(|w| w == &p("mine")), "{a:?}");
        // A missing directory is made in its nearest existing parent, after every tmpfs:
        // an outer one (for the missing `new`) never covers an inner one (`keep`'s own).
        let mut a = Args(Vec::new(), Vec::new());
        let new = d.join("new/deeper");
        let keep = d.join("keep");
        a.shadow(&[(&keep, vec![]), (&new, vec![])], "--ro-bind");
        let a = words(&a.0);
        let at = |seq: &[&str]| a.windows(seq.len()).position(|w| w == seq).unwrap();
        assert!(at(&["--tmpfs", &d.to_string_lossy()]) < at(&["--tmpfs", &p("keep")]));
        assert!(at(&["--tmpfs", &p("keep")]) < at(&["--dir", &p("new")]));
        assert!(at(&["--dir", &p("new")]) < at(&["--dir", &p("new/deeper")]));
    }

    #[test]
    fn a_setup_failure_is_bubblewraps_own_first_line() {
        assert_eq!(
            setup_failure(Some(1), "\nbwrap: Can't mkdir /x: Read-only file system\n").as_deref(),
            Some("bwrap: Can't mkdir /x: Read-only file system")
        );
        assert_eq!(setup_failure(Some(2), "bwrap: x\n"), None);
        assert_eq!(
            setup_failure(Some(1), "make: *** Error 1\nbwrap: x\n"),
            None
        );
    }

    #[test]
    fn resolve_keeps_the_missing_part() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("usr")).unwrap();
        std::os::unix::fs::symlink("usr", real.join("lib")).unwrap();
        assert_eq!(
            resolve(&real.join("lib/modules/6.1/build")),
            real.join("usr/modules/6.1/build")
        );
    }
}
