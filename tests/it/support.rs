//! Helpers: run kmx, and on failure show everything (command, cwd, stdout, stderr).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TARGETS: [&str; 4] = ["i386", "amd64", "arm64", "armhf"];

pub struct Run {
    pub cmd: String,
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    fn dump(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.cmd,
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }
    /// Assert the exit code, dumping the run if it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(self.code(), code, "unexpected exit code\n{}", self.dump());
        self
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        self.expect(0)
    }
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.dump()))
    }
}

/// A kmx invocation with an isolated environment: its own home and XDG config dir.
pub struct Kmx {
    pub home: PathBuf,
    pub cwd: PathBuf,
    envs: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Kmx {
    /// A fresh, empty home.
    pub fn empty() -> Kmx {
        Kmx::empty_in(&std::env::temp_dir())
    }

    /// A fresh, empty home in a new directory under `parent` (tests of what the sandbox
    /// protects keep their files outside /tmp, which every step gets privately).
    pub fn empty_in(parent: &Path) -> Kmx {
        let tmp = tempfile::Builder::new()
            .prefix("kmx-test-")
            .tempdir_in(parent)
            .unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Kmx {
            cwd: tmp.path().to_path_buf(),
            home,
            envs: vec![(
                "XDG_CONFIG_HOME".into(),
                tmp.path().join("xdg").display().to_string(),
            )],
            _tmp: tmp,
        }
    }

    /// A fresh home that knows one fetched tree (Debian 12's) for each of the four `TARGETS`:
    /// the matrix most tests reason about. The registry is copied, its paths made absolute,
    /// as the fetched home's trees are shared read-only. `None` when trees are missing
    /// outside CI.
    pub fn with_trees() -> Option<Kmx> {
        Kmx::with_registry(|reg| {
            let mut seen = Vec::new();
            reg.retain(|t| {
                let target = t["target"].as_str().unwrap().to_string();
                let keep = TARGETS.contains(&target.as_str()) && !seen.contains(&target);
                seen.push(target);
                keep
            });
        })
    }

    /// A fresh home that knows every fetched tree: both kernel versions, the Raspberry Pi
    /// targets.
    pub fn with_all_trees() -> Option<Kmx> {
        Kmx::with_registry(|_| {})
    }

    /// [`Kmx::with_trees`] with the home and working directory under `parent`.
    pub fn with_trees_in(parent: &Path) -> Option<Kmx> {
        let k = Kmx::with_trees()?;
        let moved = Kmx::empty_in(parent);
        std::fs::create_dir_all(moved.home.join("trees")).unwrap();
        std::fs::copy(
            k.home.join("trees/registry.json"),
            moved.home.join("trees/registry.json"),
        )
        .unwrap();
        Some(moved)
    }

    fn with_registry(select: impl FnOnce(&mut Vec<serde_json::Value>)) -> Option<Kmx> {
        let fetched = fetched_home()?;
        let k = Kmx::empty();
        std::fs::create_dir_all(k.home.join("trees")).unwrap();
        let mut reg = registry_of(&fetched);
        let trees = reg["trees"].as_array_mut().unwrap();
        trees.sort_by(|a, b| a["release"].as_str().cmp(&b["release"].as_str()));
        select(trees);
        std::fs::write(k.home.join("trees/registry.json"), reg.to_string()).unwrap();
        Some(k)
    }

    pub fn env(mut self, k: &str, v: &str) -> Kmx {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn dir(&self) -> &Path {
        &self.cwd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        let shown = format!("kmx {}", args.join(" "));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        Run { cmd: shown, out }
    }
}

/// Whether a missing prerequisite (trees, images, root) must fail the test instead of
/// skipping it: under `./dev test` (it sets `KMX_TEST_HOME`: whoever sets it asked for the
/// integration tests) and under CI (`CI=true`).
pub fn prerequisites_required() -> bool {
    std::env::var_os("KMX_TEST_HOME").is_some() || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test that cannot run here: fails under `./dev test` and CI ([`prerequisites_required`]),
/// else says SKIPPED, with the test's name and why, on the real stderr (cargo test shows it
/// even for a passing test: `eprintln!` would be captured and hidden).
#[track_caller]
pub fn skip_or_fail(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if prerequisites_required() {
        panic!("{test} cannot run: {why}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The home `./dev test` fetched trees into; None (SKIPPED) when there is none and
/// [`prerequisites_required`] is false.
pub fn fetched_home() -> Option<PathBuf> {
    let home = std::env::var_os("KMX_TEST_HOME").map(PathBuf::from);
    match home {
        Some(h) if h.join("trees/registry.json").is_file() => Some(h),
        Some(h) => {
            skip_or_fail(&format!(
                "KMX_TEST_HOME={} has no fetched kernel trees (trees/registry.json): run `./dev test`",
                h.display()
            ));
            None
        }
        None => {
            skip_or_fail(
                "no fetched kernel trees: run `./dev test` (it fetches them and sets KMX_TEST_HOME)",
            );
            None
        }
    }
}

/// The registry `kmx kernels fetch` wrote in `home` (`trees/registry.json`).
pub fn fetched_registry(home: &Path) -> serde_json::Value {
    let path = home.join("trees/registry.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A path of `home`'s registry made absolute: kmx stores the paths under the trees
/// directory relative to it (`debian-6.1.0-50/boot/vmlinuz-...`); older registries and
/// trees elsewhere have absolute ones, kept.
pub fn registry_path(home: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        home.join("trees").join(p)
    }
}

/// A home's registry with every path absolute, as a test home that shares the fetched
/// trees needs it.
pub fn registry_of(home: &Path) -> serde_json::Value {
    let mut reg = fetched_registry(home);
    let absolute = |v: &mut serde_json::Value| {
        if let Some(p) = v.as_str() {
            *v = registry_path(home, p).display().to_string().into();
        }
    };
    for t in reg["trees"].as_array_mut().unwrap() {
        absolute(&mut t["kdir"]);
        if let Some(boot) = t.get_mut("boot").and_then(|b| b.as_object_mut()) {
            boot.values_mut().for_each(absolute);
        }
    }
    reg
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Write a file, creating parent directories.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `modinfo -F FIELD FILE` (kmod), the reference reader.
pub fn modinfo(field: &str, file: &Path) -> String {
    let out = Command::new("modinfo")
        .args(["-F", field])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "modinfo failed on {}", file.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

impl Kmx {
    /// The command `run` would run, for tests that spawn kmx and watch it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmx"));
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("KMX_HOME", &self.home)
            // Builds pass HOME on to every step: it marks this test's processes (see
            // `build::processes_mentioning`) and keeps the user's files out of the test.
            .env("HOME", self.dir())
            .env_remove("KMX_CONFIG_DIR");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// `kmx install MODULE -t TARGET -k RELEASE --root ROOT`, ROOT made first.
    pub fn install_into(&self, module: &str, target: &str, release: &str, root: &Path) -> Run {
        self.install_into_with(module, target, release, root, &[])
    }

    /// [`Kmx::install_into`] with more arguments (`--json`, ...).
    pub fn install_into_with(
        &self,
        module: &str,
        target: &str,
        release: &str,
        root: &Path,
        more: &[&str],
    ) -> Run {
        // An image that runs that kernel: kmx never creates a kernel's directory in a root.
        std::fs::create_dir_all(root.join("lib/modules").join(release)).unwrap();
        let root = root.to_str().unwrap();
        let mut args = vec![
            "install", module, "-t", target, "-k", release, "--root", root,
        ];
        args.extend_from_slice(more);
        self.run(&args)
    }

    /// Forget the kernel images of every tree (as after a `kmx kernels fetch` without
    /// `--with-image`): the trees stay.
    pub fn without_images(&self) {
        let registry = self.home.join("trees/registry.json");
        let mut reg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&registry).unwrap()).unwrap();
        for t in reg["trees"].as_array_mut().unwrap() {
            t.as_object_mut().unwrap().remove("boot");
        }
        std::fs::write(&registry, reg.to_string()).unwrap();
    }

    /// The release of the first tree of `target` this home knows (its registry's order:
    /// Debian 12's in a [`Kmx::with_trees`] home), as fetched: never written into a test, so
    /// that the suite follows the ABI Debian publishes.
    pub fn release_of(&self, target: &str) -> String {
        self.registered(&format!("a tree of {target}"), |t| t["target"] == target)["release"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Every release of `target` this home knows whose release starts with `prefix` (`6.1.`:
    /// Debian 12's point release and its security kernel), as fetched.
    pub fn releases_of(&self, target: &str, prefix: &str) -> Vec<String> {
        fetched_registry(&self.home)["trees"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["target"] == target)
            .filter_map(|t| t["release"].as_str())
            .filter(|r| r.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// The kernel ABI of this home's trees of the four `TARGETS` (`6.1.0-50`: the release
    /// without its flavour), as fetched.
    pub fn abi(&self) -> String {
        self.registered("a fetched tree with an ABI", |t| {
            TARGETS.contains(&t["target"].as_str().unwrap()) && t["abi"].is_string()
        })["abi"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The first tree of this home's registry that `wanted` accepts.
    fn registered(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let reg = fetched_registry(&self.home);
        reg["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| wanted(t))
            .cloned()
            .unwrap_or_else(|| panic!("no {what}: {reg}"))
    }

    /// (release, vermagic, kdir) of the first tree of `target` this home knows: the release
    /// and kdir as `kmx kernels list` says, the vermagic NOT kmx's but what the tree itself
    /// gives a module ([`reference_vermagic`]: plain make there, modinfo).
    pub fn tree_of(&self, target: &str) -> (String, String, PathBuf) {
        let list = self.run(&["kernels", "list", "--json"]).ok().json();
        let t = list["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == target)
            .unwrap_or_else(|| panic!("no tree for {target}: {list}"));
        let kdir = PathBuf::from(t["kdir"].as_str().unwrap());
        (
            t["release"].as_str().unwrap().to_string(),
            reference_vermagic(target, &kdir),
            kdir,
        )
    }

    /// A second kernel tree of `target`, registered in this home: the fetched flavour
    /// directory copied into a private sysroot next to symlinks to the real `-common` and
    /// `linux-kbuild-*` directories (so its relative Makefile include and `scripts` links
    /// resolve), with release `release` (utsrelease.h and .kernelvariables) and the
    /// `.config` lines `config` set (`("CONFIG_X", "n")` unsets one). Returns its KDIR.
    pub fn variant_tree(&self, target: &str, release: &str, config: &[(&str, &str)]) -> PathBuf {
        let (_, _, real) = self.tree_of(target);
        let usr_src = real.parent().unwrap();
        let usr = usr_src.parent().unwrap();
        let sys = self.cwd.join(format!("sysroot-{release}/usr"));
        std::fs::create_dir_all(sys.join("src")).unwrap();
        std::fs::create_dir_all(sys.join("lib")).unwrap();
        for e in std::fs::read_dir(usr_src).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().ends_with("-common") {
                std::os::unix::fs::symlink(e.path(), sys.join("src").join(e.file_name())).unwrap();
            }
        }
        for e in std::fs::read_dir(usr.join("lib")).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with("linux-kbuild-") {
                std::os::unix::fs::symlink(e.path(), sys.join("lib").join(e.file_name())).unwrap();
            }
        }
        let kdir = sys.join(format!("src/linux-headers-{release}"));
        let st = Command::new("cp")
            .arg("-a")
            .arg(&real)
            .arg(&kdir)
            .status()
            .unwrap();
        assert!(st.success());
        let cfg = kdir.join(".config");
        let mut text: String = std::fs::read_to_string(&cfg)
            .unwrap()
            .lines()
            .filter(|l| {
                !config.iter().any(|(k, _)| {
                    l.starts_with(&format!("{k}=")) || *l == format!("# {k} is not set")
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        for (k, v) in config {
            if *v == "n" {
                text.push_str(&format!("# {k} is not set\n"));
            } else {
                text.push_str(&format!("{k}={v}\n"));
            }
        }
        std::fs::write(&cfg, text).unwrap();
        std::fs::write(
            kdir.join("include/generated/utsrelease.h"),
            format!("#define UTS_RELEASE \"{release}\"\n"),
        )
        .unwrap();
        let kv = kdir.join(".kernelvariables");
        let vars: String = std::fs::read_to_string(&kv)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("override KERNELRELEASE") {
                    format!("override KERNELRELEASE = {release}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&kv, vars).unwrap();
        let reg_path = self.home.join("trees/registry.json");
        let mut reg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&reg_path).unwrap()).unwrap();
        reg["trees"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "target": target,
                "release": release,
                "kdir": kdir,
                "origin": "test variant",
            }));
        std::fs::write(&reg_path, serde_json::to_vec_pretty(&reg).unwrap()).unwrap();
        kdir
    }
}

/// A copy of examples/hello under `dir` with `extra` appended to its dkms.conf.
pub fn hello_source(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let src = dir.join(name);
    std::fs::create_dir_all(&src).unwrap();
    for f in ["hello.c", "Kbuild"] {
        std::fs::copy(repo().join("examples/hello").join(f), src.join(f)).unwrap();
    }
    let conf = std::fs::read_to_string(repo().join("examples/hello/dkms.conf")).unwrap();
    std::fs::write(src.join("dkms.conf"), format!("{conf}{extra}")).unwrap();
    src
}

/// A module fixture under tests/fixtures/modules.
pub fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures/modules")
        .join(name)
        .display()
        .to_string()
}

/// Build the module sources in `dir` for `target` against `kdir` with plain make (no kmx),
/// the reference kmx is compared with.
pub fn plain_make(target: &str, kdir: &Path, dir: &Path) {
    let (arch, prefix) = match target {
        "i386" => ("x86", "i686-linux-gnu-"),
        "amd64" => ("x86", "x86_64-linux-gnu-"),
        "arm64" | "rpi3" | "rpi4" => ("arm64", "aarch64-linux-gnu-"),
        "rpi" => ("arm", "arm-linux-gnueabi-"),
        "armhf" => ("arm", "arm-linux-gnueabihf-"),
        other => panic!("plain_make: no compiler known for target {other}"),
    };
    // A Debian 13 tree calls gcc-14, which this host lacks: plain make runs in the toolchain
    // root kmx assembled for it, entered with bubblewrap directly (the tree's sysroot and the
    // module directory at their own paths).
    let sysroot = kdir.join("../../..").canonicalize().unwrap();
    let cc = std::fs::read_to_string(kdir.join(".kernelvariables"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.split_once("$(CROSS_COMPILE)")
                .map(|(_, cc)| cc.trim().to_string())
        })
        .unwrap_or_else(|| "gcc".into());
    let root = sysroot
        .join(".kmx-toolchains")
        .join(format!("{prefix}{cc}"));
    let mut cmd = match root.is_dir() {
        true => {
            // bubblewrap's new root is a tmpfs: the root's entries on it, then the host
            // paths. A directory of the root that leads to a host path (`/root` for a home
            // under /root) is a tmpfs holding the root's entries again, and so on down.
            let mut c = Command::new("bwrap");
            let dir = dir.canonicalize().unwrap();
            let placed = [sysroot.clone(), dir.clone()];
            fn place(c: &mut Command, root: &Path, at: &Path, placed: &[PathBuf]) {
                let here = root.join(at.strip_prefix("/").unwrap());
                for e in std::fs::read_dir(&here).unwrap().flatten() {
                    let to = at.join(e.file_name());
                    if ["/proc", "/dev", "/tmp", "/run"].contains(&to.to_str().unwrap()) {
                        continue;
                    }
                    let kind = e.file_type().unwrap();
                    if kind.is_symlink() {
                        c.arg("--symlink")
                            .arg(std::fs::read_link(e.path()).unwrap())
                            .arg(&to);
                    } else if kind.is_dir() && placed.iter().any(|p| p.starts_with(&to)) {
                        c.arg("--tmpfs").arg(&to);
                        place(c, root, &to, placed);
                    } else {
                        c.arg("--ro-bind").arg(e.path()).arg(&to);
                    }
                }
            }
            place(&mut c, &root, Path::new("/"), &placed);
            c.arg("--ro-bind").arg(&sysroot).arg(&sysroot);
            c.arg("--bind").arg(&dir).arg(&dir);
            c.args(["--proc", "/proc", "--dev", "/dev", "make"]);
            c
        }
        false => Command::new("make"),
    };
    let out = cmd
        .arg("-C")
        .arg(kdir)
        .arg(format!("M={}", dir.display()))
        .arg(format!("ARCH={arch}"))
        .arg(format!("CROSS_COMPILE={prefix}"))
        .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
        .arg("modules")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Processes of this test (run with HOME=`dir`, which kmx passes to every build step, or
/// working under `dir`) whose command line mentions `needle`. Tests running at the same time
/// do not see each other's processes. The environment, not only the working directory:
/// a cell's steps work in their private namespace, where the path is DKMS's.
pub fn processes_mentioning(needle: &str, dir: &Path) -> Vec<String> {
    let home = format!("HOME={}", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let ours = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == home.as_bytes()))
            || std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if !ours {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

/// How long a bounded wait waits before it fails: a safety net against a hang on a loaded
/// machine, never a measure of how fast kmx is (that is for `benches/`).
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Wait until `done()` holds, polling; fails with `what` after [`PATIENCE`].
#[track_caller]
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "{what} (waited {PATIENCE:?})");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Wait until a process of this test ([`processes_mentioning`]) mentions `needle`; fails
/// with `what` once `limit` has passed (give it [`PATIENCE`]).
#[track_caller]
pub fn wait_for_process(needle: &str, dir: &Path, limit: std::time::Duration, what: &str) {
    let started = std::time::Instant::now();
    while processes_mentioning(needle, dir).is_empty() {
        assert!(started.elapsed() < limit, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Wait for `child` to end (its stdout and stderr, if piped, are small enough for the pipe);
/// fails with `what` after [`PATIENCE`], the child killed.
#[track_caller]
pub fn wait_for_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    let started = std::time::Instant::now();
    while status.is_none() {
        status = child.try_wait().unwrap();
        if status.is_none() && started.elapsed() >= PATIENCE {
            let _ = child.kill();
            panic!("{what} (waited {PATIENCE:?})");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    status.unwrap()
}

/// What is left to read of a finished child's piped stderr.
pub fn stderr_of(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut text).unwrap();
    }
    text
}

/// The vermagic a module built against `kdir` carries, from an oracle that is not kmx: the
/// bundled example built in a scratch copy with plain make (the tree's own kbuild composes
/// the string) and read back with kmod's modinfo. Computed once per tree per test binary.
pub fn reference_vermagic(target: &str, kdir: &Path) -> String {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Slots = Mutex<HashMap<PathBuf, Arc<OnceLock<String>>>>;
    static BUILT: OnceLock<Slots> = OnceLock::new();
    let slot = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(kdir.to_path_buf())
        .or_default()
        .clone();
    slot.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["hello.c", "Kbuild"] {
            std::fs::copy(repo().join("examples/hello").join(f), tmp.path().join(f)).unwrap();
        }
        plain_make(target, kdir, tmp.path());
        let magic = modinfo("vermagic", &tmp.path().join("hello.ko"));
        assert!(
            !magic.is_empty(),
            "plain make against {} made a module without vermagic",
            kdir.display()
        );
        magic
    })
    .clone()
}

/// Run a script of `benches/` with bash and `envs`: whether it succeeded, and what it
/// printed (stdout, then stderr).
pub fn run_bench(script: &str, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> (bool, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("benches").join(script)).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run benches/{script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether ccache is installed (kmx's compiler cache uses it); says SKIPPED (or fails under
/// KMX_TEST_HOME) when not.
pub fn has_ccache() -> bool {
    let found = which::which("ccache").is_ok();
    if !found {
        skip_or_fail("ccache is not installed: `./dev setup` installs it");
    }
    found
}
