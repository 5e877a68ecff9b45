//! Never build twice, and spread builds: fingerprints, the build cache, ccache and distcc
//! launchers, shards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

fn statuses(report: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["module"].as_str().unwrap().to_string(),
                c["kernel"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_noop_rebuild_reports_every_cell_fresh_without_running_make() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    k.run(&["build", &hello]).ok();
    let log = k.dir().join(format!(
        "kmx-out/logs/hello-1.0-{}-arm64.log",
        k.release_of("arm64")
    ));
    let before = std::fs::read_to_string(&log).unwrap();
    let report = k.run(&["build", &hello, "--json"]).ok().json();
    assert_eq!(report["totals"]["fresh"], 4, "{report}");
    assert_eq!(report["totals"]["built"], 0);
    // make did not run: the log was not rewritten, and every cell took no time.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), before);
    for c in report["cells"].as_array().unwrap() {
        assert!(c["duration_secs"].as_f64().unwrap() < 0.5, "{c}");
        assert!(Path::new(c["artifacts"][0]["file"].as_str().unwrap()).is_file());
    }
    // --force rebuilds.
    let forced = k.run(&["build", &hello, "--force", "--json"]).ok().json();
    assert_eq!(forced["totals"]["built"], 4);
    // Another output directory is restored from the cache, not rebuilt.
    let other = k
        .run(&["build", &hello, "--out", "elsewhere", "--json"])
        .ok()
        .json();
    assert_eq!(other["totals"]["restored"], 4, "{other}");
    assert_eq!(other["totals"]["fresh"], 0, "{other}");
    assert!(
        k.dir()
            .join(format!(
                "elsewhere/hello/1.0/{}/amd64/hello.ko",
                k.release_of("amd64")
            ))
            .is_file()
    );
    let stats = k.run(&["cache", "stats"]).ok().stdout();
    assert!(stats.starts_with("4 cells, "), "{stats}");
}

#[test]
fn changing_one_file_rebuilds_exactly_that_modules_cells() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = k.dir().join("src");
    std::fs::create_dir_all(&src).unwrap();
    copy_dir(&repo().join("examples/hello"), &src.join("hello"));
    copy_dir(
        &repo().join("tests/fixtures/modules/twomods"),
        &src.join("twomods"),
    );
    let args = [
        "build",
        "src/hello",
        "src/twomods",
        "--target",
        "amd64,armhf",
        "--json",
    ];
    assert_eq!(k.run(&args).ok().json()["totals"]["built"], 4);
    let beta = src.join("twomods/beta/beta.c");
    let text = std::fs::read_to_string(&beta).unwrap();
    std::fs::write(&beta, text.replace("loaded", "loaded again")).unwrap();
    let report = k.run(&args).ok().json();
    let got = statuses(&report);
    assert_eq!(
        got,
        [
            ("hello".into(), k.release_of("amd64"), "fresh".into()),
            ("hello".into(), k.release_of("armhf"), "fresh".into()),
            ("twomods".into(), k.release_of("amd64"), "built".into()),
            ("twomods".into(), k.release_of("armhf"), "built".into()),
        ]
    );
}

#[test]
fn changing_one_targets_tree_rebuilds_only_that_trees_cells() {
    let Some(k) = Kmx::with_trees() else { return };
    let alt = k.variant_tree("arm64", &format!("{}-kmxalt", k.release_of("arm64")), &[]);
    let hello = repo().join("examples/hello").display().to_string();
    let args = ["build", hello.as_str(), "--target", "arm64,armhf", "--json"];
    assert_eq!(k.run(&args).ok().json()["totals"]["built"], 3);
    // A change in the variant tree's .config (a new, harmless option).
    let cfg = alt.join(".config");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("CONFIG_KMX_TEST_OPTION=y\n");
    std::fs::write(&cfg, text).unwrap();
    let got = statuses(&k.run(&args).ok().json());
    assert_eq!(
        got,
        [
            ("hello".into(), k.release_of("arm64"), "fresh".into()),
            (
                "hello".into(),
                format!("{}-kmxalt", k.release_of("arm64")),
                "built".into()
            ),
            ("hello".into(), k.release_of("armhf"), "fresh".into()),
        ]
    );
}

#[test]
fn a_corrupted_cache_entry_is_rebuilt_not_reused() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    let args = ["build", hello.as_str(), "--target", "arm64", "--json"];
    k.run(&args).ok();
    std::fs::remove_dir_all(k.dir().join("kmx-out")).unwrap();
    // Damage the one cached cell's module.
    let cells = k.home.join("cache/cells");
    let entry = std::fs::read_dir(&cells)
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path();
    let ko = entry.join("hello.ko");
    let mut bytes = std::fs::read(&ko).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&ko, bytes).unwrap();
    let report = k.run(&args).ok().json();
    assert_eq!(report["totals"]["built"], 1, "{report}");
    let log = std::fs::read_to_string(report["cells"][0]["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("# cache entry was damaged and is rebuilt: ")
            && log.contains("hello.ko does not match its checksum"),
        "{log}"
    );
    // The rebuilt cell is a good module and is cached again.
    let ko = PathBuf::from(report["cells"][0]["artifacts"][0]["file"].as_str().unwrap());
    assert_eq!(modinfo("vermagic", &ko), k.tree_of("arm64").1);
    std::fs::remove_dir_all(k.dir().join("kmx-out")).unwrap();
    assert_eq!(k.run(&args).ok().json()["totals"]["restored"], 1);
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn built_restored_and_fresh_cells_hold_the_same_files_and_are_told_apart() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    let args = |out: &'static str| ["build", hello.as_str(), "-t", "arm64", "--out", out];
    let release = k.release_of("arm64");
    let cell = |out: &str| k.dir().join(out).join(format!("hello/1.0/{release}/arm64"));
    let expected = [
        "Module.symvers",
        "cell.json",
        "hello.ko",
        "make.log",
        "provenance.json",
    ];
    // Built: the artifact directory holds the cell's files only, and no build tree is
    // left anywhere in OUT.
    let built = k.run(&args("a")).ok();
    assert!(
        built.stderr().contains("1 built, 0 skipped"),
        "{}",
        built.stderr()
    );
    assert_eq!(listing(&cell("a")), expected);
    assert!(!k.dir().join("a/.work").exists());
    // Restored from the cache into another directory: the same files, said `restored`.
    let restored = k.run(&args("b")).ok();
    assert_eq!(listing(&cell("b")), expected);
    let err = restored.stderr();
    assert!(err.contains("0 built, 1 restored, 0 skipped"), "{err}");
    assert!(err.contains(" restored "), "{err}");
    // Untouched: `fresh`.
    let fresh = k.run(&args("b")).ok();
    assert!(
        fresh.stderr().contains("0 built, 1 fresh, 0 skipped"),
        "{}",
        fresh.stderr()
    );
    // One entry: "1 cell", not "1 cells".
    let stats = k.run(&["cache", "stats"]).ok().stdout();
    assert!(stats.starts_with("1 cell, "), "{stats}");
    // verify counts the module once.
    let verified = k.run(&["verify", "b", "--target", "arm64"]).ok();
    assert!(
        verified.stdout().contains(&format!(
            "1 module checked against {}: 0 passed, 1 warned",
            k.release_of("arm64")
        )),
        "{}",
        verified.stdout()
    );
    // --keep-build-dir keeps the build tree, outside the artifact directory.
    let mut keep = args("c").to_vec();
    keep.extend(["--force", "--keep-build-dir"]);
    k.run(&keep).ok();
    assert_eq!(listing(&cell("c")), expected);
    let work = k.dir().join("c/.work");
    let kept: Vec<PathBuf> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("build/hello.ko"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].is_file(), "{kept:?}");
}

#[test]
fn shards_cover_the_matrix_once_and_merge_like_the_unsharded_build() {
    let Some(k) = Kmx::with_trees() else { return };
    let sources = [
        fixture("consumer"),
        fixture("provider"),
        fixture("x86only"),
        repo().join("examples/hello").display().to_string(),
    ];
    // Two targets (x86only is skipped on one): the shards' arithmetic, not the matrix's size.
    let mut base: Vec<&str> = vec!["build", "--target", "amd64,armhf"];
    base.extend(sources.iter().map(String::as_str));
    let mut whole = base.clone();
    whole.extend(["--out", "whole", "--no-cache", "--json"]);
    let unsharded = k.run(&whole).ok().json();
    assert_eq!(unsharded["plan_cells"], 8);
    let mut reports = Vec::new();
    let mut seen = 0;
    for i in 1..=3 {
        let shard = format!("{i}/3");
        let out = format!("shard{i}");
        let mut args = base.clone();
        args.extend(["--shard", &shard, "--out", &out, "--no-cache", "--json"]);
        let r = k.run(&args).ok().json();
        assert_eq!(r["shard"], shard.as_str());
        let n = r["cells"].as_array().unwrap().len();
        assert!(n > 0, "shard {shard} is empty");
        seen += n;
        // A dependent and its dependency always land in the same shard.
        let has = |m: &str| {
            r["cells"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["module"] == m)
        };
        assert_eq!(has("consumer"), has("provider"), "{r}");
        reports.push(k.dir().join(out).join("report.json").display().to_string());
    }
    assert_eq!(seen, 8);
    let mut merge = vec!["report", "merge"];
    merge.extend(reports.iter().map(String::as_str));
    merge.push("--json");
    let merged = k.run(&merge).ok().json();
    let strip = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                serde_json::json!([
                    c["index"],
                    c["module"],
                    c["version"],
                    c["target"],
                    c["kernel"],
                    c["status"],
                    c["reason"]
                ])
            })
            .collect()
    };
    assert_eq!(strip(&merged), strip(&unsharded));
    assert_eq!(merged["totals"], unsharded["totals"]);
    // Two shards only: the merge says what is missing.
    let err = k
        .run(&["report", "merge", &reports[0], &reports[1]])
        .expect(2)
        .stderr();
    assert!(err.contains("the reports do not cover cells"), "{err}");
}

#[test]
fn ccache_serves_the_compiles_of_a_cleaned_rebuild() {
    let Some(k) = Kmx::with_trees() else { return };
    let ccache_dir = k.dir().join("ccache");
    let k = k.env("CCACHE_DIR", ccache_dir.to_str().unwrap());
    let hello = repo().join("examples/hello").display().to_string();
    let args = [
        "build",
        hello.as_str(),
        "--target",
        "arm64,armhf",
        "--launcher",
        "ccache",
        "--no-cache",
        "--json",
    ];
    let first = k.run(&args).ok().json();
    let ko = |r: &serde_json::Value, t: &str| {
        let c = r["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["target"] == t)
            .unwrap()
            .clone();
        PathBuf::from(c["artifacts"][0]["file"].as_str().unwrap())
    };
    let before: Vec<String> = ["arm64", "armhf"]
        .iter()
        .map(|t| {
            Command::new("modinfo")
                .arg(ko(&first, t))
                .output()
                .unwrap()
                .stdout
        })
        .map(|o| String::from_utf8(o).unwrap())
        .collect();
    std::fs::remove_dir_all(k.dir().join("kmx-out")).unwrap();
    let second = k.run(&args).ok().json();
    assert_eq!(second["totals"]["built"], 2);
    let after: Vec<String> = ["arm64", "armhf"]
        .iter()
        .map(|t| {
            Command::new("modinfo")
                .arg(ko(&second, t))
                .output()
                .unwrap()
                .stdout
        })
        .map(|o| String::from_utf8(o).unwrap())
        .collect();
    assert_eq!(before, after);
    let stats = Command::new("ccache")
        .arg("--print-stats")
        .env("CCACHE_DIR", &ccache_dir)
        .output()
        .unwrap();
    let stats = String::from_utf8(stats.stdout).unwrap();
    let hits: u64 = stats
        .lines()
        .filter(|l| {
            l.starts_with("direct_cache_hit\t") || l.starts_with("preprocessed_cache_hit\t")
        })
        .map(|l| l.split('\t').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    // Two translation units (hello.c, hello.mod.c) per cell.
    assert!(hits >= 4, "{stats}");
}

/// A distccd on 127.0.0.1 with a free port, stopped by PID when dropped.
struct Distccd {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Distccd {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_distccd(dir: &Path) -> Distccd {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    // distccd drops root privileges: let it write its log here.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cmdlist = dir.join("cmdlist");
    let compilers: Vec<String> = [
        "aarch64-linux-gnu-gcc-12",
        "arm-linux-gnueabihf-gcc-12",
        "i686-linux-gnu-gcc-12",
        "x86_64-linux-gnu-gcc-12",
    ]
    .iter()
    .map(|c| format!("/usr/bin/{c}\n"))
    .collect();
    std::fs::write(&cmdlist, compilers.concat()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.join("distccd.log");
    let child = Command::new("distccd")
        .args([
            "--daemon",
            "--no-detach",
            "--listen",
            "127.0.0.1",
            "--allow",
            "127.0.0.1",
            "--jobs",
            "2",
            "--log-level",
            "info",
        ])
        .arg("--port")
        .arg(port.to_string())
        .arg("--log-file")
        .arg(&log)
        .env("DISTCC_CMDLIST", &cmdlist)
        .stdin(Stdio::null())
        .spawn()
        .expect("distccd (package distcc)");
    wait_until("distccd did not start", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Distccd { child, port, log }
}

#[test]
fn distcc_on_loopback_compiles_every_translation_unit() {
    let Some(k) = Kmx::with_trees() else { return };
    let daemon = start_distccd(&k.dir().join("distcc"));
    let client_dir = k.dir().join("distcc-client");
    std::fs::create_dir_all(&client_dir).unwrap();
    let k = k
        .env("DISTCC_HOSTS", &format!("127.0.0.1:{}/4", daemon.port))
        .env("DISTCC_FALLBACK", "0")
        .env("DISTCC_DIR", client_dir.to_str().unwrap());
    let hello = repo().join("examples/hello").display().to_string();
    // With a remote launcher, --jobs may exceed the local cores.
    let report = k
        .run(&[
            "build",
            &hello,
            "--launcher",
            "distcc",
            "--jobs",
            "4",
            "--no-cache",
            "--timeout",
            "300",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(report["totals"]["built"], 4, "{report}");
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    // Every cell builds at DKMS's path in its own namespace, so the cells' file names are the
    // same in the daemon's log; each target's cross compiler tells their compiles apart.
    for c in report["cells"].as_array().unwrap() {
        let compiler = match c["target"].as_str().unwrap() {
            "i386" => "/i686-linux-gnu-gcc",
            "amd64" => "/x86_64-linux-gnu-gcc",
            "arm64" => "/aarch64-linux-gnu-gcc",
            "armhf" => "/arm-linux-gnueabihf-gcc",
            other => panic!("unexpected target {other}"),
        };
        for unit in ["hello.c", "hello.mod.c"] {
            let served = log.lines().any(|l| {
                l.contains("COMPILE_OK") && l.contains(compiler) && l.ends_with(&format!("/{unit}"))
            });
            assert!(
                served,
                "{compiler} {unit} was not compiled by distccd:\n{log}"
            );
        }
    }
}

/// Every kept dkms.conf evaluation under `home` (the memo's entries that hold a dump).
fn kept_evaluations(home: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(home.join("cache/eval")) else {
        return found;
    };
    for d in dirs.flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let bytes = std::fs::read(f.path()).unwrap();
            if bytes.windows(16).any(|w| w == b"PACKAGE_VERSION\0") {
                found.push(f.path());
            }
        }
    }
    found
}

#[test]
fn a_no_op_plan_reads_the_kept_evaluation_and_starts_no_bash() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "hello", "");
    let src = src.to_str().unwrap();
    let plan = |k: &Kmx| {
        k.run(&["build", src, "-t", "amd64", "--dry-run"])
            .ok()
            .stdout()
    };
    let first = plan(&k);
    assert!(first.contains("hello 1.0 amd64"), "{first}");
    let kept = kept_evaluations(&k.home);
    // The first reading (for the names of the run's sources) and the cell's own.
    assert_eq!(kept.len(), 2, "{kept:?}");
    // What bash printed is replaced in every kept entry: a plan that still says hello.ko
    // ran bash again; one that says hellx.ko read the entries.
    for f in &kept {
        let bytes = std::fs::read(f).unwrap();
        let (from, to) = (
            b"V\0BUILT_MODULE_NAME\x000\x00hello\0",
            b"V\0BUILT_MODULE_NAME\x000\x00hellx\0",
        );
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("the module's record");
        let mut changed = bytes.clone();
        changed[at..at + to.len()].copy_from_slice(to);
        std::fs::write(f, changed).unwrap();
    }
    let second = plan(&k);
    assert!(second.contains("modules: hellx.ko"), "{second}");
    // Any change to the source is a new key: evaluated again.
    write(&Path::new(src).join("README"), "changed\n");
    let third = plan(&k);
    assert!(third.contains("modules: hello.ko"), "{third}");
}

#[test]
fn a_dkms_conf_that_reads_beyond_its_key_is_evaluated_every_time() {
    // Outside /tmp, which every evaluation gets privately.
    let Some(k) = Kmx::with_trees_in(Path::new("/var/tmp")) else {
        return;
    };
    // The version is read from a file outside the source (shown read-only in the sandbox,
    // in no key): once by a process (`cat`, caught by the PID check), once by bash itself
    // (`$(<file)` starts no process, caught by the text check).
    let version = k.dir().join("version");
    for (name, read) in [("bycat", "$(cat {})"), ("bybash", "$(<{})")] {
        let read = read.replace("{}", &version.display().to_string());
        let src = hello_source(k.dir(), name, &format!("PACKAGE_VERSION=\"{read}\"\n"));
        let src = src.to_str().unwrap();
        for v in ["1.0", "2.0", "3.0"] {
            write(&version, &format!("{v}\n"));
            let plan = k
                .run(&["build", src, "-t", "amd64", "--dry-run"])
                .ok()
                .stdout();
            assert!(plan.contains(&format!("hello {v} amd64")), "{name}: {plan}");
        }
    }
    assert!(kept_evaluations(&k.home).is_empty());
}

/// kmx's compiler cache is writable in the sandbox, one directory per module: a build step
/// writes its own module's (the attack can see a success) and cannot plant a file in another
/// module's, whose compiles would otherwise take it for a cached object.
#[test]
fn a_build_step_cannot_write_another_modules_compiler_cache() {
    let Some(k) = Kmx::with_trees() else { return };
    if !has_ccache() {
        return;
    }
    let hello = repo().join("examples/hello").display().to_string();
    k.run(&["build", &hello, "-t", "amd64", "--no-cache"]).ok();
    let cache = k.home.join("cache/ccache");
    assert!(cache.join("hello").is_dir());
    let evil = k.dir().join("evil");
    copy_dir(&repo().join("examples/hello"), &evil);
    std::fs::write(
        evil.join("dkms.conf"),
        "PACKAGE_NAME=\"evil\"\nPACKAGE_VERSION=\"1.0\"\nPRE_BUILD=\"poison.sh\"\n\
         BUILT_MODULE_NAME[0]=\"hello\"\nDEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n",
    )
    .unwrap();
    std::fs::write(
        evil.join("poison.sh"),
        "#!/bin/sh\ntouch \"$CCACHE_DIR/own\" && echo own: written\n\
         touch \"$CCACHE_DIR/../hello/planted\" && echo planted: written\n\
         mkdir \"$CCACHE_DIR/../newcomer\" && echo newcomer: written\nexit 0\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(evil.join("poison.sh"))
        .status()
        .unwrap();
    let evil = evil.display().to_string();
    let run = k
        .run(&["build", &evil, "-t", "amd64", "--no-cache", "--json"])
        .ok();
    let log = std::fs::read_to_string(run.json()["cells"][0]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("own: written"), "{log}");
    assert!(cache.join("evil/own").is_file(), "{log}");
    // Checked on the host: inside the sandbox the parent directory may be a private one
    // (a home under /tmp is), where a write lands nowhere.
    assert!(!cache.join("hello/planted").exists(), "{log}");
    assert!(!cache.join("newcomer").exists(), "{log}");
}

/// kmx's compiler cache keeps working for a step that empties the environment: real
/// packages probe the compiler under `env -i CC="$(CC)" PATH="$(PATH)"`
/// (falcosecurity-scap's configure), and a probe that fails silently changes the module.
/// kmx's settings travel with the compiler command (its module's wrapper), not in the
/// environment. The control: `--launcher ccache` (the caller's ccache, configured by the
/// environment alone) fails the same probe, so the test sees the failure it guards against.
#[test]
fn a_compiler_probe_under_env_i_compiles_through_the_compiler_cache() {
    let Some(k) = Kmx::with_trees() else { return };
    if !has_ccache() {
        return;
    }
    let src = k.dir().join("envi");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("dkms.conf"),
        "PACKAGE_NAME=\"envi\"\nPACKAGE_VERSION=\"1.0\"\n\
         BUILT_MODULE_NAME[0]=\"envi\"\nDEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n",
    )
    .unwrap();
    std::fs::write(
        src.join("Kbuild"),
        "obj-m := envi.o\n\
         PROBE := $(shell printf 'int probe;\\n' >/tmp/kmx-probe.c && \
         env -i CC=\"$(CC)\" PATH=\"$(PATH)\" sh -c '$(CC) -c /tmp/kmx-probe.c -o /tmp/kmx-probe.o' \
         >/dev/null 2>&1 && echo ok)\n\
         ifeq ($(PROBE),ok)\nccflags-y += -DPROBE_OK\nendif\n",
    )
    .unwrap();
    std::fs::write(
        src.join("envi.c"),
        "#include <linux/module.h>\n#ifndef PROBE_OK\n\
         #error the compiler probe failed under env -i\n#endif\nMODULE_LICENSE(\"GPL\");\n",
    )
    .unwrap();
    let src = src.display().to_string();
    let built = k.run(&[
        "build",
        &src,
        "-t",
        "amd64",
        "--no-cache",
        "--out",
        "cached",
    ]);
    built.ok();
    assert!(k.home.join("cache/ccache/envi/kmx-ccache").is_file());
    let control = k.run(&[
        "build",
        &src,
        "-t",
        "amd64",
        "--no-cache",
        "--out",
        "caller",
        "--launcher",
        "ccache",
    ]);
    let control = control.expect(1);
    assert!(
        control
            .stderr()
            .contains("the compiler probe failed under env -i"),
        "{}",
        control.stderr()
    );
}
