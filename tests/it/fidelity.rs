//! DKMS fidelity, one test per class of difference found against real DKMS on real
//! packages: the version a module is built with (a placeholder PACKAGE_VERSION, the
//! directory's version, DKMS's `-m`/`-v`), the environment a MAKE line's makes see (compared
//! variable by variable with what Debian's real DKMS gives the same line), and BTF in the
//! modules of trees that ask for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn cells(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["cells"].as_array().unwrap().clone()
}

fn log_of(cell: &serde_json::Value) -> String {
    std::fs::read_to_string(cell["log"].as_str().unwrap()).unwrap()
}

/// A copy of fixture `name` in a new directory `dir_name` under `parent`.
fn copy_fixture(name: &str, parent: &Path, dir_name: &str) -> PathBuf {
    let dst = parent.join(dir_name);
    let out = Command::new("cp")
        .arg("-a")
        .arg(fixture(name))
        .arg(&dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dst
}

/// dkms.conf says PACKAGE_VERSION="#MODULES_VERSION#" (a placeholder Debian's dh_dkms leaves:
/// it substitutes #MODULE_VERSION# only). DKMS builds such a package as `dkms add -m NAME
/// -v VERSION` with the version of /usr/src/NAME-VERSION, in /var/lib/dkms/NAME/VERSION/build;
/// so does kmx, for the directory `.../usr/src/placeholder-2.4.1` (an extracted package). The
/// same files in a checkout (not under a `usr/src`) fail as DKMS given `-v '#MODULES_VERSION#'` does (in kbuild),
/// and build with `--module-version`, for `kmx build` and `kmx add`.
#[test]
fn a_placeholder_version_builds_with_the_directorys_version() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k
        .run(&[
            "build",
            &fixture("placeholder/usr/src/placeholder-2.4.1"),
            "-t",
            "amd64,arm64",
            "--json",
            "--no-cache",
        ])
        .ok();
    let report = run.json();
    for c in cells(&report) {
        assert_eq!(c["status"], "built", "{c}");
        assert_eq!(
            (&c["module"], &c["version"]),
            (&"placeholder".into(), &"2.4.1".into())
        );
        let cmd = c["command"].as_str().unwrap();
        assert!(
            cmd.contains("M=/var/lib/dkms/placeholder/2.4.1/build"),
            "{cmd}"
        );
        assert!(
            Path::new(c["out_dir"].as_str().unwrap()).ends_with(format!(
                "placeholder/2.4.1/{}/{}",
                c["kernel"].as_str().unwrap(),
                c["target"].as_str().unwrap()
            )),
            "{c}"
        );
        let log = log_of(&c);
        assert!(
            log.contains(
                "PACKAGE_VERSION=\"#MODULES_VERSION#\" is not used: DKMS builds placeholder 2.4.1 (the version of the directory"
            ),
            "{log}"
        );
    }

    // Elsewhere the placeholder is the version, and kbuild refuses it, as under DKMS.
    let tmp = tempfile::tempdir().unwrap();
    let checkout = copy_fixture(
        "placeholder/usr/src/placeholder-2.4.1",
        tmp.path(),
        "checkout",
    );
    let checkout = checkout.to_str().unwrap();
    let run = k.run(&["build", checkout, "-t", "amd64", "--json", "--no-cache"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let c = &cells(&run.json())[0];
    assert_eq!(
        (&c["status"], &c["version"]),
        (&"failed".into(), &"#MODULES_VERSION#".into())
    );
    let cmd = c["command"].as_str().unwrap();
    assert!(
        cmd.contains("M='/var/lib/dkms/placeholder/#MODULES_VERSION#/build'"),
        "{cmd}"
    );
    // kbuild's words differ by release: "fixdep: read: Is a directory" (6.1), "missing
    // separator" (6.12); the make fails either way.
    assert!(log_of(c).contains("# make: exit status 2"), "{}", log_of(c));

    // DKMS's -v: the version given wins, for a build and for a registered source.
    let run = k
        .run(&[
            "build",
            checkout,
            "--module-version",
            "3.0",
            "-t",
            "amd64",
            "--json",
            "--no-cache",
        ])
        .ok();
    let c = &cells(&run.json())[0];
    assert_eq!(
        (&c["status"], &c["version"]),
        (&"built".into(), &"3.0".into())
    );
    assert!(log_of(c).contains("(the version given)"), "{}", log_of(c));
    let err = k
        .run(&["build", checkout, checkout, "--module-version", "3.0"])
        .expect(2);
    assert!(
        err.stderr().contains("give one source directory"),
        "{}",
        err.stderr()
    );
    let err = k
        .run(&["add", checkout, "--module-version", "a b"])
        .expect(2);
    assert!(
        err.stderr()
            .contains("--module-version \"a b\" cannot name a directory"),
        "{}",
        err.stderr()
    );

    k.run(&["add", checkout, "--module-version", "3.0"]).ok();
    let status = k.run(&["status", "--json"]).ok().json();
    assert!(status.to_string().contains("\"3.0\""), "{status}");
    let run = k
        .run(&["build", "placeholder/3.0", "-t", "amd64", "--json"])
        .ok();
    let c = &cells(&run.json())[0];
    assert_eq!(
        (&c["status"], &c["version"]),
        (&"built".into(), &"3.0".into())
    );
}

/// The `@env TAG NAME=VALUE` lines fixture twopass's dump.mk prints, per TAG.
fn env_dumps(log: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("@env ") else {
            continue;
        };
        let (tag, var) = rest.split_once(' ').unwrap();
        let (k, v) = var.split_once('=').unwrap_or((var, ""));
        out.entry(tag.into())
            .or_default()
            .insert(k.into(), v.into());
    }
    out
}

/// A two-pass out-of-tree Makefile (`ifndef KERNELRELEASE`) under a MAKE line that starts
/// with `cd`: DKMS gives that make no KERNELRELEASE, so its first pass calls kbuild. kmx
/// builds it for every target; the first make of the line (`make -f dump.mk`, which starts
/// it) sees KERNELRELEASE, the ones after `cd src &&` do not.
#[test]
fn a_two_pass_makefile_under_a_make_line_not_starting_with_make_builds() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k
        .run(&["build", &fixture("twopass-1.0"), "--json", "--no-cache"])
        .ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 4, "{report}");
    for c in cells(&report) {
        let ko = PathBuf::from(c["artifacts"][0]["file"].as_str().unwrap());
        assert_eq!(modinfo("name", &ko), "twopass");
        let dumps = env_dumps(&log_of(&c));
        let release = c["kernel"].as_str().unwrap();
        assert_eq!(
            dumps["first"].get("KERNELRELEASE").map(String::as_str),
            Some(release)
        );
        assert_eq!(dumps["cd"].get("KERNELRELEASE"), None, "{:?}", dumps["cd"]);
        assert!(
            !dumps["cd"]["MAKEFLAGS"].contains("KERNELRELEASE"),
            "{:?}",
            dumps["cd"]
        );
    }
}

#[test]
fn a_dest_location_whose_dotdot_stays_inside_builds_and_installs_as_dkms_does() {
    // Debian 13's mstflint-dkms: DEST_MODULE_LOCATION="/kernel/../misc/". DKMS checks only
    // that it starts with /kernel, /updates or /extra, and `mkdir -p` + `mv` put the module
    // in <kver>/misc/. kmx refused the whole build (exit 2). A `..` that climbs out of
    // /lib/modules/<kver> stays refused (hostile.rs, lifecycle.rs).
    let Some(k) = Kmx::with_trees() else { return };
    let (release, _, _) = k.tree_of("amd64");
    let src = hello_source(
        k.dir(),
        "dotdot",
        "PACKAGE_NAME=dotdot\nDEST_MODULE_LOCATION[0]=\"/kernel/../misc/\"\n",
    );
    k.run(&["add", src.to_str().unwrap()]).ok();
    k.run(&["build", "dotdot", "-t", "amd64", "-k", &release])
        .ok();
    // A root without os-release: DKMS's override does not apply, the dkms.conf's place does.
    let root = k.dir().join("rootfs");
    std::fs::create_dir_all(root.join(format!("lib/modules/{release}"))).unwrap();
    k.run(&[
        "install",
        "dotdot",
        "-t",
        "amd64",
        "-k",
        &release,
        "--root",
        root.to_str().unwrap(),
    ])
    .ok();
    let dir = root.join(format!("lib/modules/{release}/misc"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("hello.ko")), "{names:?}");
    assert!(!root.join(format!("lib/modules/{release}/kernel")).exists());
}

/// MAKEFLAGS or MFLAGS without the jobserver's words (`-j`, `-jN`, `--jobserver-auth=`,
/// `--jobserver-fds=`): DKMS gives `-jN` to a line that starts with make only, kmx its
/// jobserver to every make (the one thing it adds on purpose).
fn without_jobserver(flags: &str) -> String {
    flags
        .split(' ')
        .filter(|w| {
            !(w.starts_with("-j")
                || w.starts_with("--jobserver-auth=")
                || w.starts_with("--jobserver-fds="))
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The environment a MAKE line's makes see, kmx's against Debian's real DKMS (3.0, run on
/// the same fixture, same tree, same caller environment, through the corpus bench's
/// `dkms-cell.sh`), variable by variable, for a make that starts the line and one after
/// `cd src &&`. Left out of the comparison: what the shell itself sets (SHLVL, PWD, OLDPWD,
/// `_`), the caller's own variables (the bench's CORPUS_*, and PATH, where DKMS appends
/// /usr/lib/dkms and the bench its cross `strip`), and the jobserver's words. kmx may add
/// only KCFLAGS (path maps for reproducible bytes), TMPDIR (the sandbox's private /tmp)
/// and KBUILD_BUILD_TIMESTAMP (on trees that make BTF); everything else must be DKMS's.
#[test]
fn make_sees_the_environment_dkms_gives_it_variable_by_variable() {
    let Some(k) = Kmx::with_trees() else { return };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(
            "real DKMS runs in a mount namespace: as root (CI and `./dev test` as root run it)",
        );
        return;
    }
    if !Path::new("/usr/sbin/dkms").is_file() {
        skip_or_fail("Debian's dkms is not installed: `./dev test` installs it");
        return;
    }
    let (release, _, kdir) = k.tree_of("amd64");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // dkms-cell.sh's layout: SRC/<pkg>/usr/src/<name>-<version>, a cell line, a strip, a key.
    let usr_src = t.join("src/twopass/usr/src");
    std::fs::create_dir_all(&usr_src).unwrap();
    copy_fixture("twopass-1.0", &usr_src, "twopass-1.0");
    std::fs::write(
        t.join("cells"),
        format!(
            "amd64 {release} {} x86 x86_64-linux-gnu- x86_64\n",
            kdir.display()
        ),
    )
    .unwrap();
    std::fs::write(t.join("needs"), "").unwrap();
    std::fs::create_dir_all(t.join("tools")).unwrap();
    std::fs::create_dir_all(t.join("mok")).unwrap();
    let strip = t.join("tools/strip");
    std::fs::write(&strip, "#!/bin/sh\nexec \"${CROSS_COMPILE}strip\" \"$@\"\n").unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&strip)
        .status()
        .unwrap();
    let key = Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-nodes", "-days", "1", "-subj", "/CN=t",
        ])
        .args(["-newkey", "rsa:2048", "-outform", "DER"])
        .arg("-keyout")
        .arg(t.join("mok/mok.key"))
        .arg("-out")
        .arg(t.join("mok/mok.pub"))
        .output()
        .unwrap();
    assert!(key.status.success(), "{key:?}");
    // The same caller environment for both.
    let base = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("LC_ALL", "C"),
    ];
    let dkms = Command::new(repo().join("benches/dkms-corpus/dkms-cell.sh"))
        .args(["twopass", "amd64"])
        .env_clear()
        .envs(base)
        .env("CORPUS_SRC", t.join("src"))
        .env("CORPUS_RUN", t.join("run"))
        .env("CORPUS_CELLS", t.join("cells"))
        .env("CORPUS_NEEDS", t.join("needs"))
        .env("CORPUS_TOOLS", t.join("tools"))
        .env("CORPUS_MOK", t.join("mok"))
        .output()
        .unwrap();
    let cell = t.join("run/dkms/twopass/amd64");
    let status = std::fs::read_to_string(cell.join("status")).unwrap_or_default();
    assert_eq!(
        status.trim(),
        "built",
        "{dkms:?}\n{}",
        std::fs::read_to_string(cell.join("dkms.log")).unwrap_or_default()
    );
    let dkms_env = env_dumps(&std::fs::read_to_string(cell.join("make.log")).unwrap());

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmx"));
    cmd.env_clear()
        .envs(base)
        .env("KMX_HOME", &k.home)
        .env("XDG_CONFIG_HOME", t.join("xdg"));
    let out = cmd
        .args(["build"])
        .arg(usr_src.join("twopass-1.0"))
        .args([
            "-t",
            "amd64",
            "-k",
            &release,
            "--json",
            "--no-cache",
            // DKMS calls the compiler itself, as kmx does without its compiler cache.
            "--no-compiler-cache",
            "--out",
        ])
        .arg(t.join("kmx"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kmx_env = env_dumps(&log_of(&cells(&report)[0]));

    let shell = ["SHLVL", "PWD", "OLDPWD", "_", "PATH"];
    let kmx_only = ["KCFLAGS", "TMPDIR", "KBUILD_BUILD_TIMESTAMP"];
    for tag in ["first", "cd"] {
        let norm = |env: &BTreeMap<String, String>, drop: &[&str]| -> BTreeMap<String, String> {
            env.iter()
                .filter(|(k, _)| !shell.contains(&k.as_str()) && !k.starts_with("CORPUS_"))
                .filter(|(k, _)| !drop.contains(&k.as_str()))
                .map(|(k, v)| match k.as_str() {
                    "MAKEFLAGS" | "MFLAGS" => (k.clone(), without_jobserver(v)),
                    _ => (k.clone(), v.clone()),
                })
                .collect()
        };
        let (d, m) = (norm(&dkms_env[tag], &[]), norm(&kmx_env[tag], &kmx_only));
        assert!(d.len() >= 10, "{tag}: too few variables from DKMS: {d:?}");
        for key in d.keys().chain(m.keys()) {
            assert_eq!(
                d.get(key),
                m.get(key),
                "{tag}: {key} (DKMS {d:?}\nkmx {m:?})"
            );
        }
        // Not vacuous: the variables this is about are there, or not, on both sides.
        let has = |k: &str| d.contains_key(k);
        assert_eq!(
            (has("KERNELRELEASE"), has("kernelver"), has("ARCH")),
            (tag == "first", true, true)
        );
    }
}

/// Debian's 6.12 amd64 and arm64 trees have CONFIG_DEBUG_INFO_BTF_MODULES=y and a vmlinux:
/// kbuild runs pahole and the modules carry a .BTF section (readelf), as DKMS's do; armhf's
/// tree asks for none and gets none. Two builds in different directories give the same bytes
/// (pahole runs without its thread-timing-dependent -j: KBUILD_BUILD_TIMESTAMP is set).
#[test]
fn modules_of_trees_that_make_btf_carry_it_and_stay_reproducible() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    if which("pahole").is_none() {
        skip_or_fail("pahole is missing: `./dev setup` installs it");
        return;
    }
    let list = k.run(&["kernels", "list", "--json"]).ok().json();
    // One Debian 12 6.12 tree per target (a home may hold several ABIs of the series, and
    // Debian 13's, which need their toolchain root).
    let mut args: Vec<String> = vec!["-t".into(), "amd64,arm64,armhf".into()];
    for target in ["amd64", "arm64", "armhf"] {
        let tree = list["trees"].as_array().unwrap().iter().find(|t| {
            t["target"] == target
                && t["release"].as_str().unwrap().starts_with("6.12")
                && t["release"].as_str().unwrap().contains("+deb12-")
        });
        let Some(tree) = tree else {
            panic!("no Debian 12 6.12 tree for {target}: {list}");
        };
        args.extend(["-k".into(), tree["release"].as_str().unwrap().to_string()]);
    }
    let src = fixture("twopass-1.0");
    let build = |out: &str| -> Vec<serde_json::Value> {
        let mut a: Vec<&str> = vec!["build", &src, "--json", "--no-cache", "--out", out];
        a.extend(args.iter().map(String::as_str));
        cells(&k.run(&a).ok().json())
    };
    let (one, two) = (build("one"), build("two"));
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        let ko = |c: &serde_json::Value| PathBuf::from(c["artifacts"][0]["file"].as_str().unwrap());
        let sections = Command::new("readelf")
            .arg("-S")
            .arg(ko(a))
            .output()
            .unwrap();
        let sections = String::from_utf8_lossy(&sections.stdout);
        let want = a["target"] != "armhf";
        assert_eq!(
            sections.contains(" .BTF "),
            want,
            "{}: {sections}",
            a["target"]
        );
        assert_eq!(
            std::fs::read(ko(a)).unwrap(),
            std::fs::read(ko(b)).unwrap(),
            "{} differs between two builds",
            a["target"]
        );
    }
}

/// Without pahole, a cell of a tree that makes BTF fails before make, saying what to
/// install (not after the compile with "pahole: not found" in the log); a tree that makes
/// none builds.
#[test]
fn without_pahole_a_btf_tree_fails_at_once_saying_so() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    // Every program of /usr/bin but pahole, outside /tmp (each step has a private one).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for e in std::fs::read_dir("/usr/bin").unwrap().flatten() {
        if e.file_name() != "pahole" {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name())).unwrap();
        }
    }
    let k = k.env("PATH", &format!("{}:/usr/sbin:/sbin", bin.display()));
    let list = k.run(&["kernels", "list", "--json"]).ok().json();
    let release = |target: &str| -> String {
        list["trees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["target"].as_str().unwrap(),
                    t["release"].as_str().unwrap(),
                )
            })
            .find(|(t, r)| *t == target && r.starts_with("6.12"))
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| panic!("no 6.12 tree for {target}: {list}"))
    };
    let (amd64, armhf) = (release("amd64"), release("armhf"));
    let run = k.run(&[
        "build",
        &fixture("twopass-1.0"),
        "-t",
        "amd64,armhf",
        "-k",
        &amd64,
        "-k",
        &armhf,
        "--json",
        "--no-cache",
    ]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    for c in cells(&run.json()) {
        match c["target"].as_str().unwrap() {
            "amd64" => {
                assert_eq!(c["status"], "failed", "{c}");
                let why = c.to_string();
                assert!(
                    why.contains(
                        "which needs pahole, and pahole is not on PATH: apt-get install pahole"
                    ),
                    "{why}"
                );
            }
            _ => assert_eq!(c["status"], "built", "{c}"),
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}
