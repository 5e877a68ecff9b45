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
        let tmp = tempfile::tempdir().unwrap();
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

    /// A fresh home that knows the fetched trees (the registry is copied; trees are shared
    /// read-only). `None` when trees are missing outside CI.
    pub fn with_trees() -> Option<Kmx> {
        let fetched = fetched_home()?;
        let k = Kmx::empty();
        std::fs::create_dir_all(k.home.join("trees")).unwrap();
        std::fs::copy(
            fetched.join("trees/registry.json"),
            k.home.join("trees/registry.json"),
        )
        .unwrap();
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmx"));
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("KMX_HOME", &self.home)
            .env_remove("KMX_CONFIG_DIR");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let shown = format!("kmx {}", args.join(" "));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        Run { cmd: shown, out }
    }
}

/// The home `./dev test` fetched trees into, or None (SKIPPED) outside CI.
pub fn fetched_home() -> Option<PathBuf> {
    let home = std::env::var_os("KMX_TEST_HOME").map(PathBuf::from);
    match home {
        Some(h) if h.join("trees/registry.json").is_file() => Some(h),
        _ => {
            let why = "no fetched kernel trees: run `./dev test` (it sets KMX_TEST_HOME)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
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

/// The fetched kernel tree of `target` (from the registry of `KMX_TEST_HOME`).
pub fn fetched_kdir(target: &str) -> PathBuf {
    let home = fetched_home().expect("fetched trees");
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("trees/registry.json")).unwrap()).unwrap();
    let tree = reg["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no fetched tree for {target}"));
    PathBuf::from(tree["kdir"].as_str().unwrap())
}

/// A second, real kernel tree for `target`: a copy of the fetched flavour directory in a
/// private sysroot (beside links to the real `-common` and kbuild directories, so its
/// relative Makefile include and scripts links resolve) with its release renamed to
/// `<release>-<suffix>` and `config_lines` appended to its .config. Returns the KDIR.
pub fn variant_tree(under: &Path, target: &str, suffix: &str, config_lines: &str) -> PathBuf {
    let real = fetched_kdir(target);
    let src = real.parent().unwrap(); // .../usr/src
    let usr = src.parent().unwrap();
    let sysroot = under.join(format!("variant-{target}-{suffix}"));
    std::fs::create_dir_all(sysroot.join("usr/src")).unwrap();
    std::fs::create_dir_all(sysroot.join("usr/lib")).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with("-common") || name.starts_with("linux-kbuild") {
            std::os::unix::fs::symlink(&p, sysroot.join("usr/src").join(&name)).unwrap();
        }
    }
    for entry in std::fs::read_dir(usr.join("lib")).unwrap() {
        let p = entry.unwrap().path();
        std::os::unix::fs::symlink(&p, sysroot.join("usr/lib").join(p.file_name().unwrap()))
            .unwrap();
    }
    let old_release = real
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_start_matches("linux-headers-")
        .to_string();
    let release = format!("{old_release}-{suffix}");
    let kdir = sysroot
        .join("usr/src")
        .join(format!("linux-headers-{release}"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(&real)
        .arg(&kdir)
        .status()
        .unwrap();
    assert!(st.success());
    let edit = |rel: &str, from: &str, to: &str| {
        let p = kdir.join(rel);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace(from, to)).unwrap();
    };
    edit("include/generated/utsrelease.h", &old_release, &release);
    edit(
        ".kernelvariables",
        &format!("KERNELRELEASE = {old_release}"),
        &format!("KERNELRELEASE = {release}"),
    );
    if kdir.join("include/config/kernel.release").exists() {
        std::fs::write(
            kdir.join("include/config/kernel.release"),
            format!("{release}\n"),
        )
        .unwrap();
    }
    let mut config = std::fs::read_to_string(kdir.join(".config")).unwrap();
    config.push_str(config_lines);
    std::fs::write(kdir.join(".config"), config).unwrap();
    kdir
}

/// A config dir whose target `target` builds against its fetched tree AND `extra` trees.
pub fn config_with_trees(dir: &Path, target: &str, extra: &[&Path]) -> PathBuf {
    let shipped =
        std::fs::read_to_string(repo().join("targets").join(format!("{target}.toml"))).unwrap();
    let paths: Vec<String> = extra
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    let text = shipped.replace(
        "fetched = true",
        &format!("fetched = true\npaths = [{}]", paths.join(", ")),
    );
    let cfg = dir.join("cfg");
    write(&cfg.join("targets").join(format!("{target}.toml")), &text);
    cfg
}

/// A module fixture under tests/fixtures/modules.
pub fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures/modules")
        .join(name)
        .display()
        .to_string()
}
