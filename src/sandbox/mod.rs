//! The sandbox: a private view of the file system (and, for dkms.conf, of the network and the
//! process table) for one cell, where DKMS's own directories are as DKMS would have them on a
//! machine where the package is installed, and the host is protected.
//!
//! Real packages build against paths they do not get from DKMS's variables: the hard-coded
//! `/lib/modules/<release>/build` (in a MAKE line, or a Makefile at any depth of the source),
//! `/usr/src/<name>-<version>` and `/var/lib/dkms/<name>/<version>/build` written literally
//! in dkms.conf, another package's source found with `find /usr/src`. Guessing which sources
//! need which path always misses one, so every evaluation of a dkms.conf and every build step
//! of every cell (patch, PRE_BUILD, make, POST_BUILD) runs in a private mount namespace where
//!
//! - `/lib/modules/<release>/build` is the cell's kernel tree,
//! - `/usr/src/<name>-<version>` is the cell's source (its own copy, for a build step),
//! - `/var/lib/dkms/<name>/<version>/build` is the cell's build directory (a real directory,
//!   so `find $dkms_tree/.../build` descends it) and `.../source` links to the source,
//! - the other sources of the run are read-only at `/usr/src/<other>-<version>`,
//!
//! and `$dkms_tree` / `$source_tree` are `/var/lib/dkms` / `/usr/src`, as in DKMS. No two
//! cells share a directory, and the host's copies of those three directories are never
//! written: the namespace sees the host's root through a recursive bind, and the three DKMS
//! directories (or, where one is missing, its nearest existing parent) through overlays whose
//! upper layers live on a tmpfs mounted inside the namespace. A tmpfs, because the kernel
//! refuses an overlay upper directory that lies on overlayfs, the root of most containers.
//! The steps then run chrooted into that view, so the build directory's path is the same for
//! every cell and every output directory.
//!
//! A dkms.conf is a third party's bash, evaluated (as root, from kernel hooks) before anything
//! is built, also by `--dry-run`; PRE_BUILD, POST_BUILD and the package's Makefiles are its
//! code too. So both run confined ([`Policy::strict`]): every mount of the host is read-only,
//! `/tmp` is copy-on-write (the host's files there readable, writes private to the step),
//! there is no network (a new network namespace with only a loopback that is down), and
//! every step runs in a new PID namespace, so everything it starts dies with it. A build
//! step can write its build directory, its copy of the source and the directories its policy
//! names (a compiler cache); a build with a remote compiler launcher keeps the network.
//! `--sandbox open` gives build steps the host as DKMS does ([`Policy::open`]).
//!
//! Root gets the namespaces directly; other users through a user namespace where the kernel
//! allows it. Where none can be made (a container without CAP_SYS_ADMIN, user namespaces
//! disabled), [`available`] says why and cells run on the host's paths: the plan and the
//! summary say so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::process::quote;

/// DKMS's `$dkms_tree` inside a cell.
pub const DKMS_TREE: &str = "/var/lib/dkms";
/// DKMS's `$source_tree` inside a cell.
pub const SOURCE_TREE: &str = "/usr/src";

/// Exit status of the set-up part of the step when a mount could not be made.
pub const SETUP_FAILED: i32 = 125;

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
    /// source are writable; the rest as `policy` says.
    Build { build: PathBuf, policy: Policy },
    /// Evaluating a dkms.conf: the host read-only, no network, `files` (a host directory,
    /// writable) at [`EVAL_DIR`].
    Evaluate { files: PathBuf },
}

/// How far a build step is confined, beyond DKMS's directories (which are always private).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Every mount of the host read-only; `/tmp` copy-on-write (the host's files readable,
    /// writes private); only the cell's directories and `writable` can be written.
    pub read_only_host: bool,
    /// The host's network; `false`: a network namespace with only a loopback that is down.
    pub network: bool,
    /// Host directories that stay writable (a compiler cache).
    pub writable: Vec<PathBuf>,
}

impl Policy {
    /// The host read-only, no network: what a dkms.conf evaluation gets, and build steps by
    /// default.
    pub fn strict() -> Policy {
        Policy {
            read_only_host: true,
            network: false,
            writable: Vec::new(),
        }
    }
    /// The host writable and the network, as under DKMS (`--sandbox open`).
    pub fn open() -> Policy {
        Policy {
            read_only_host: false,
            network: true,
            writable: Vec::new(),
        }
    }
}

/// What one cell's namespace holds, in host paths.
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
    pub others: Vec<Source>,
    /// A directory of the cell's own (on any file system) that holds the namespace's mount
    /// points; nothing is written into it but two empty directories.
    pub scratch: PathBuf,
    pub purpose: Purpose,
}

impl View {
    /// The command that runs `line` with bash from `cwd` (a path inside the view).
    pub fn command(&self, cwd: &Path, line: &str) -> Command {
        let mut cmd = Command::new("unshare");
        // A PID namespace of its own: whatever the step starts dies with it.
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
        ]);
        if !self.policy().network {
            cmd.arg("--net");
        }
        if !crate::process::is_root() {
            cmd.arg("--map-root-user");
        }
        cmd.args(["bash", "-c", &self.script(cwd, line)]);
        cmd
    }

    fn known(&self) -> bool {
        !self.name.is_empty() && !self.version.is_empty()
    }

    /// How far the view is confined: a build step's policy; always strict for dkms.conf.
    fn policy(&self) -> std::borrow::Cow<'_, Policy> {
        match &self.purpose {
            Purpose::Build { policy, .. } => std::borrow::Cow::Borrowed(policy),
            Purpose::Evaluate { .. } => std::borrow::Cow::Owned(Policy::strict()),
        }
    }

    /// The set-up script: mounts, then `chroot` into the view and run the line.
    fn script(&self, cwd: &Path, line: &str) -> String {
        let mut s = Script(String::from(
            "fail() { echo \"kmx: cannot make the cell's private mount namespace: $*\" >&2; exit 125; }\n",
        ));
        let evaluate = matches!(self.purpose, Purpose::Evaluate { .. });
        let policy = self.policy();
        s.run(format!("cd {}", q(&self.scratch)));
        s.run("mkdir -p root stage".into());
        // The host as it is; then a tmpfs for the overlays' upper layers.
        s.run("mount --rbind / root".into());
        if policy.read_only_host {
            // Every mount of the host read-only (a recursive bind makes only the top one so).
            s.0.push_str(concat!(
                "top=$(pwd -P)/root\n",
                "while read -r _ _ _ _ mp _; do\n",
                "  printf -v mp '%b' \"$mp\"\n",
                "  case $mp in \"$top\"|\"$top\"/*) mount -o remount,bind,ro \"$mp\" || fail \"cannot make $mp read-only\" ;; esac\n",
                "done </proc/self/mountinfo\n",
            ));
        }
        s.run("mount -t tmpfs -o mode=0700 kmx stage".into());
        let lib_modules = resolve(Path::new("/lib/modules"));
        let mut roots = vec![
            lib_modules.clone(),
            resolve(Path::new(SOURCE_TREE)),
            resolve(Path::new(DKMS_TREE)),
        ];
        if policy.read_only_host {
            // Writes to /tmp land on the overlay; the host's files there stay readable.
            roots.push(resolve(Path::new("/tmp")));
        }
        for (i, point) in overlay_points(&roots).iter().enumerate() {
            let at = q(&inside(point));
            s.run(format!("mkdir stage/{i} stage/{i}/u stage/{i}/w"));
            s.run(format!(
                "mount -t overlay kmx -o lowerdir={at},upperdir=stage/{i}/u,workdir=stage/{i}/w {at}"
            ));
        }
        // No kernel when a source is registered (`kmx add`): no build link then.
        if !self.release.is_empty() {
            let kver = lib_modules.join(&self.release);
            let link = inside(&kver.join("build"));
            s.run(format!("mkdir -p {}", q(&inside(&kver))));
            s.run(format!("rm -rf {}", q(&link)));
            s.run(format!("ln -s {} {}", q(&self.kdir), q(&link)));
        }
        if self.known() {
            s.bind(
                &self.source,
                &source_dir(&self.name, &self.version),
                evaluate,
            );
            let build = build_dir(&self.name, &self.version);
            match &self.purpose {
                Purpose::Build { build: host, .. } => s.bind(host, &build, false),
                Purpose::Evaluate { .. } => {
                    s.run(format!("mkdir -p {}", q(&inside(&resolve(&build)))));
                }
            }
        }
        for o in &self.others {
            if (&o.name, &o.version) != (&self.name, &self.version) {
                s.bind(&o.dir, &source_dir(&o.name, &o.version), true);
            }
        }
        if self.known() {
            let source_link = inside(&resolve(
                &Path::new(DKMS_TREE)
                    .join(&self.name)
                    .join(&self.version)
                    .join("source"),
            ));
            s.run(format!("rm -rf {}", q(&source_link)));
            s.run(format!(
                "ln -s {} {}",
                q(&source_dir(&self.name, &self.version)),
                q(&source_link)
            ));
        }
        if let Purpose::Evaluate { files } = &self.purpose {
            s.bind(files, Path::new(EVAL_DIR), false);
        }
        for dir in &policy.writable {
            s.bind(dir, dir, false);
        }
        // chroot lives in sbin, which a user's PATH may lack.
        s.0.push_str(&format!(
            "exec \"$(PATH=$PATH:/usr/sbin:/sbin command -v chroot)\" root /bin/bash -c 'cd \"$0\" && exec bash -c \"$1\"' {} {}\n",
            q(cwd),
            quote(line)
        ));
        s.0
    }
}

fn q(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The set-up script being written: each command stops it with [`SETUP_FAILED`] if it fails.
struct Script(String);

impl Script {
    fn run(&mut self, cmd: String) {
        self.0.push_str(&cmd);
        self.0.push_str(&format!(" || fail {}\n", quote(&cmd)));
    }

    /// Show host directory `from` at `to` (a path inside the view).
    fn bind(&mut self, from: &Path, to: &Path, read_only: bool) {
        let to = inside(&resolve(to));
        self.run(format!("mkdir -p {}", q(&to)));
        let opt = if read_only { " -o ro" } else { "" };
        self.run(format!("mount --bind{opt} {} {}", q(from), q(&to)));
    }
}

/// `path` under the view's root, relative to the scratch directory.
fn inside(path: &Path) -> PathBuf {
    Path::new("root").join(path.strip_prefix("/").unwrap_or(path))
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

/// Where overlays go so that each of `dirs` can be created and written in the view: the
/// directory itself when it exists, its nearest existing parent otherwise; never one inside
/// another (overlays stacked on overlays hit the kernel's depth limit on an overlayfs root).
fn overlay_points(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = dirs
        .iter()
        .map(|d| {
            let mut p = d.as_path();
            while !p.is_dir() {
                p = p.parent().unwrap_or(Path::new("/"));
            }
            p.to_path_buf()
        })
        .collect();
    points.sort();
    points.dedup();
    let all = points.clone();
    points.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    points
}

/// Whether cells get their private namespace here: `Err` says why not. Probed once per
/// process by making one, with the same script a cell uses.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let tmp =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    for d in ["build", "src", "ns", "files"] {
        std::fs::create_dir(dir.join(d)).map_err(|e| format!("cannot create {d}: {e}"))?;
    }
    let build = View {
        release: "0.0.0-kmx-probe".into(),
        kdir: dir.join("src"),
        name: "kmx-probe".into(),
        version: "0".into(),
        source: dir.join("src"),
        others: Vec::new(),
        scratch: dir.join("ns"),
        purpose: Purpose::Build {
            build: dir.join("build"),
            policy: Policy::strict(),
        },
    };
    let evaluate = View {
        purpose: Purpose::Evaluate {
            files: dir.join("files"),
        },
        ..build.clone()
    };
    let cwd = build_dir(&build.name, &build.version);
    let check = "test -L /lib/modules/0.0.0-kmx-probe/build && touch made-here";
    try_view(&build, &cwd, check, &dir.join("build/made-here"))?;
    let check = format!("touch {EVAL_DIR}/made-here");
    try_view(&evaluate, &cwd, &check, &dir.join("files/made-here"))
}

/// Run `check` in `view`; Ok when it succeeded and `made` exists.
fn try_view(view: &View, cwd: &Path, check: &str, made: &Path) -> Result<(), String> {
    let out = view
        .command(cwd, check)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e} (install util-linux)"))?;
    if out.status.success() && made.is_file() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string();
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_points_never_nest() {
        let p = |s: &str| PathBuf::from(s);
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        // a/b exists, a/c does not (its parent a is used), and a/b is inside a.
        let points = overlay_points(&[a.join("b"), a.join("c/d")]);
        assert_eq!(points, vec![a.clone()]);
        let points = overlay_points(&[a.join("b"), p("/nonexistent-kmx/x")]);
        assert_eq!(points, vec![p("/")]);
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

    #[test]
    fn the_script_quotes_paths_and_runs_the_line_chrooted() {
        let view = View {
            release: "6.1.0-50-arm64".into(),
            kdir: "/home/a b/kdir".into(),
            name: "m".into(),
            version: "1".into(),
            source: "/out/w/src".into(),
            others: vec![Source {
                name: "o".into(),
                version: "2".into(),
                dir: "/srcs/o".into(),
            }],
            scratch: "/out/w/ns".into(),
            purpose: Purpose::Build {
                build: "/out/w/build".into(),
                policy: Policy::open(),
            },
        };
        let s = view.script(&build_dir("m", "1"), "make 'x'");
        assert!(s.contains("ln -s '/home/a b/kdir' root/"), "{s}");
        assert!(
            s.contains("mount --bind /out/w/build root/var/lib/dkms/m/1/build"),
            "{s}"
        );
        assert!(
            s.contains("mount --bind -o ro /srcs/o root/usr/src/o-2"),
            "{s}"
        );
        assert!(
            s.ends_with("/var/lib/dkms/m/1/build 'make '\\''x'\\'''\n"),
            "{s}"
        );
    }
}
