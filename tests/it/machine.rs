//! kmx as the machine's own DKMS: the kernels installed in a root (`lib/modules/<release>/build`)
//! are trees without fetching, the kernel hooks build, sign and install for them, a failed
//! build is recorded, and removing the kernel removes the modules.
//!
//! The root here is an image root (`--root`, `KMX_ROOT` for the hooks), laid out as Debian
//! installs a kernel's headers: `lib/modules/<release>/build` is an ABSOLUTE link to
//! `/usr/src/linux-headers-<release>`, which kmx must resolve inside the root. The headers
//! are a copy of the fetched Debian 12 amd64 tree, its `-common` and `linux-kbuild`
//! siblings linked in, as the package's files sit next to each other. The hooks' test home
//! also knows the fetched tree of that release, as a machine that ran `kmx kernels fetch`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const RELEASE: &str = "6.1.0-50-amd64";
/// An installed kernel whose headers are not installed.
const HEADERLESS: &str = "6.1.0-77-amd64";

/// An image root with kernel RELEASE and its headers installed, and kernel HEADERLESS without.
fn image_root(k: &Kmx, fetched: &Path) -> Option<PathBuf> {
    let reg = registry_of(fetched);
    let Some(kdir) = reg["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["release"] == RELEASE)
        .map(|t| PathBuf::from(t["kdir"].as_str().unwrap()))
    else {
        let why = format!("the fetched home has no {RELEASE} tree");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED: {why}");
        return None;
    };
    let root = k.dir().join("image");
    let usr_src = kdir.parent().unwrap();
    std::fs::create_dir_all(root.join("usr/src")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    for e in std::fs::read_dir(usr_src).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with("-common") {
            symlink(e.path(), root.join("usr/src").join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(usr_src.parent().unwrap().join("lib")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("linux-kbuild-") {
            symlink(e.path(), root.join("usr/lib").join(e.file_name())).unwrap();
        }
    }
    let headers = root.join(format!("usr/src/linux-headers-{RELEASE}"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(&kdir)
        .arg(&headers)
        .status()
        .unwrap();
    assert!(st.success());
    for release in [RELEASE, HEADERLESS] {
        let dir = root.join("lib/modules").join(release);
        std::fs::create_dir_all(&dir).unwrap();
        symlink(
            format!("/usr/src/linux-headers-{release}"),
            dir.join("build"),
        )
        .unwrap();
    }
    Some(root)
}

/// `program` as root's scripts run it on the machine, for the image root `root`: kmx on the
/// PATH, the test's KMX_HOME, KMX_ROOT = `root`.
fn on_machine(k: &Kmx, root: &Path, program: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_kmx")).parent().unwrap();
    let mut cmd = Command::new(program);
    cmd.env(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    )
    .env("KMX_HOME", &k.home)
    .env("KMX_ROOT", root)
    .env("HOME", k.dir())
    .env("XDG_CONFIG_HOME", k.dir().join("xdg"))
    .env_remove("KMX_CONFIG_DIR");
    cmd
}

/// Run `program` with `args` [`on_machine`].
fn run_on_machine(k: &Kmx, root: &Path, program: &Path, args: &[&str]) -> Run {
    Run {
        cmd: format!("{} {}", program.display(), args.join(" ")),
        out: on_machine(k, root, program).args(args).output().unwrap(),
    }
}

/// Run a kernel hook of contrib/kernel as Debian's run-parts does, for an image root.
fn hook(k: &Kmx, hook: &str, release: &str, root: &Path) -> Run {
    let image = format!("/boot/vmlinuz-{release}");
    run_on_machine(
        k,
        root,
        &repo().join("contrib/kernel").join(hook),
        &[release, &image],
    )
}

/// DKMS's key pair as `dkms` makes it on first use (`prepare_mok`), in the root.
fn dkms_key(root: &Path) {
    let dir = root.join("var/lib/dkms");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-nodes",
            "-days",
            "36500",
            "-subj",
            "/CN=DKMS module signing key",
            "-newkey",
            "rsa:2048",
            "-outform",
            "DER",
        ])
        .arg("-keyout")
        .arg(dir.join("mok.key"))
        .arg("-out")
        .arg(dir.join("mok.pub"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
}

#[test]
fn installed_kernels_are_trees_listed_with_their_source_and_missing_headers_named() {
    let Some(fetched) = fetched_home() else {
        return;
    };
    let k = Kmx::empty();
    let Some(root) = image_root(&k, &fetched) else {
        return;
    };
    let r = root.to_str().unwrap();
    let list = k
        .run(&["kernels", "list", "--root", r, "--json"])
        .ok()
        .json();
    crate::schemas::assert_valid("kernels", &list);
    let trees = list["trees"].as_array().unwrap();
    assert_eq!(trees.len(), 2, "{list}");
    let good = trees.iter().find(|t| t["release"] == RELEASE).unwrap();
    assert_eq!(good["target"], "amd64", "{good}");
    assert_eq!(good["source"], "installed", "{good}");
    assert_eq!(
        good["origin"],
        format!("installed: /lib/modules/{RELEASE}/build")
    );
    assert_eq!(
        good["vermagic"],
        format!("{RELEASE} SMP preempt mod_unload modversions ")
    );
    // Resolved inside the root, not on the host.
    assert_eq!(
        PathBuf::from(good["kdir"].as_str().unwrap()),
        root.join(format!("usr/src/linux-headers-{RELEASE}"))
    );
    let bad = trees
        .iter()
        .find(|t| t["error"].to_string().contains(HEADERLESS))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(bad["target"], "amd64", "{bad}");
    assert_eq!(bad["release"], HEADERLESS, "{bad}");
    assert!(
        bad["error"]["hint"]
            .to_string()
            .contains(&format!("apt-get install linux-headers-{HEADERLESS}")),
        "{bad}"
    );

    let doctor = k.run(&["doctor", "-t", "amd64", "--root", r]);
    let out = doctor.stdout();
    assert!(
        out.contains(&format!("tree      {RELEASE} vermagic")),
        "{out}"
    );
    assert!(
        out.contains(&format!("apt-get install linux-headers-{HEADERLESS}")),
        "{out}"
    );

    // Without the root, this machine's kernels: the image's are not listed.
    let mine = k.run(&["kernels", "list", "--json"]).ok().json();
    assert!(
        !mine.to_string().contains(&root.display().to_string()),
        "{mine}"
    );
}

#[test]
fn the_hooks_build_sign_with_dkms_key_install_record_a_failure_and_remove_with_the_kernel() {
    let Some(fetched) = fetched_home() else {
        return;
    };
    // A home that also fetched RELEASE: the machine's own headers are built against, once.
    let Some(k) = Kmx::with_trees() else { return };
    let Some(root) = image_root(&k, &fetched) else {
        return;
    };
    dkms_key(&root);
    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    let broken = hello_source(k.dir(), "broken", "PACKAGE_NAME=broken\n");
    std::fs::write(broken.join("hello.c"), "this is not C\n").unwrap();
    k.run(&["add", broken.to_str().unwrap()]).ok();

    // The image's postinst hook before its headers: skipped as DKMS skips, exit 0.
    let early = hook(&k, "postinst.d/50-kmx", HEADERLESS, &root);
    assert_eq!(early.code(), 0, "{}", early.stderr());
    assert!(
        early.stdout().contains(&format!(
            "automatic installation of modules for kernel {HEADERLESS} was skipped since the kernel headers"
        )),
        "{}",
        early.stdout()
    );

    // The headers' hook: one module built and installed, one failed; the kernel's
    // installation goes on (exit 0), loudly.
    let run = hook(&k, "header_postinst.d/kmx", RELEASE, &root);
    let err = run.stderr();
    assert_eq!(run.code(), 0, "{err}");
    assert!(err.contains("signing with DKMS's key"), "{err}");
    assert!(
        err.contains(&format!(
            "kmx: WARNING: some modules were NOT installed for kernel {RELEASE}."
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("FAILED broken 1.0 amd64 {RELEASE}")),
        "{err}"
    );
    let ko = root.join(format!("lib/modules/{RELEASE}/updates/dkms/hello.ko"));
    assert_eq!(
        modinfo("vermagic", &ko),
        format!("{RELEASE} SMP preempt mod_unload modversions ")
    );
    assert_eq!(modinfo("signer", &ko), "DKMS module signing key");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(k.home.join(format!(
            "state/built/hello/1.0/{RELEASE}/amd64/kmx-built.json"
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        PathBuf::from(record["kdir"].as_str().unwrap()),
        root.join(format!("usr/src/linux-headers-{RELEASE}")),
        "{record}"
    );
    let dep =
        std::fs::read_to_string(root.join(format!("lib/modules/{RELEASE}/modules.dep"))).unwrap();
    assert!(dep.contains("updates/dkms/hello.ko:"), "{dep}");

    // Recorded: status says failed for that kernel, with the log, which exists.
    let status = k.run(&["status", "--json"]).ok().json();
    crate::schemas::assert_valid("status", &status);
    let line = status["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["module"] == "broken")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(line["state"], "failed", "{line}");
    assert_eq!(line["kernel"], RELEASE, "{line}");
    let log = PathBuf::from(line["failed"]["log"].as_str().unwrap());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("this is not C"),
        "{}",
        log.display()
    );
    let text = k.run(&["status", "--kernel", RELEASE]).ok().stdout();
    assert!(
        text.lines().any(|l| l.starts_with("broken")
            && l.contains("failed")
            && l.contains(&log.display().to_string())),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("hello") && l.contains("installed")),
        "{text}"
    );

    // Fixed and run again: the failure is forgotten.
    std::fs::copy(
        repo().join("examples/hello/hello.c"),
        broken.join("hello.c"),
    )
    .unwrap();
    k.run(&["add", broken.to_str().unwrap()]).ok();
    let again = hook(&k, "postinst.d/50-kmx", RELEASE, &root);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert!(!again.stderr().contains("WARNING"), "{}", again.stderr());
    // What was installed and has not changed is not installed again (the image's hook runs
    // after the headers' one).
    assert!(
        again
            .stderr()
            .contains(&format!("hello 1.0 amd64 {RELEASE}: already installed")),
        "{}",
        again.stderr()
    );
    let line = k.run(&["status", "--json", "-k", RELEASE]).ok().json();
    assert!(
        line["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["state"] == "installed" && l.get("failed").is_none()),
        "{line}"
    );

    // The kernel is removed: its modules go with it.
    let rm = hook(&k, "prerm.d/kmx", RELEASE, &root);
    assert_eq!(rm.code(), 0, "{}", rm.stderr());
    assert!(!ko.exists(), "{}", rm.stderr());
}

/// `kmx dkms ...` (as `/usr/sbin/dkms` of kmx-dkms runs it) with the image root as KMX_ROOT.
fn dkms(k: &Kmx, root: &Path, args: &[&str]) -> Run {
    let args: Vec<&str> = ["dkms"].iter().chain(args).copied().collect();
    run_on_machine(k, root, Path::new(env!("CARGO_BIN_EXE_kmx")), &args)
}

/// What dh_dkms's postinst of a `*-dkms` package runs: `common.postinst NAME VERSION
/// /usr/share/NAME-dkms "" ""` (kmx-dkms's own, contrib/dkms/common.postinst).
fn common_postinst(k: &Kmx, root: &Path, name: &str) -> Run {
    let share = format!("/usr/share/{name}-dkms");
    run_on_machine(
        k,
        root,
        &repo().join("contrib/dkms/common.postinst"),
        &[name, "1.0", &share, "", ""],
    )
}

#[test]
fn dh_dkms_maintainer_scripts_install_and_remove_packages_through_kmx_with_dkms_exit_codes() {
    let Some(fetched) = fetched_home() else {
        return;
    };
    let k = Kmx::empty();
    let Some(root) = image_root(&k, &fetched) else {
        return;
    };
    // Three *-dkms packages' sources, where dh_dkms puts them: one that builds, one whose
    // BUILD_EXCLUSIVE rules out every kernel here, one that does not compile.
    let usr_src = root.join("usr/src");
    // Its dkms.conf says /extra; on Debian (the root's os-release) DKMS installs every
    // module to /updates/dkms, and so must kmx.
    let hello = hello_source(
        &usr_src,
        "hello-1.0",
        "DEST_MODULE_LOCATION[0]=\"/extra\"\n",
    );
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    let excluded = hello_source(
        &usr_src,
        "excluded-1.0",
        "PACKAGE_NAME=excluded\nBUILD_EXCLUSIVE_ARCH=^mips\n",
    );
    let broken = hello_source(&usr_src, "broken-1.0", "PACKAGE_NAME=broken\n");
    std::fs::write(broken.join("hello.c"), "this is not C\n").unwrap();
    let _ = (&hello, &excluded);

    // The package's postinst: registered, built for the kernel with headers, skipped for the
    // one without, installed where DKMS installs (updates/dkms), exit 0.
    let post = common_postinst(&k, &root, "hello");
    let out = post.stdout();
    assert_eq!(post.code(), 0, "{out}\n{}", post.stderr());
    assert!(out.contains("Loading new hello-1.0 DKMS files..."), "{out}");
    assert!(
        out.contains(&format!("Building for {RELEASE}, {HEADERLESS}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Module build for kernel {HEADERLESS} was skipped since the"
        )),
        "{out}"
    );
    assert!(out.contains("Done."), "{out}");
    let ko = root.join(format!("lib/modules/{RELEASE}/updates/dkms/hello.ko"));
    assert_eq!(
        modinfo("vermagic", &ko),
        format!("{RELEASE} SMP preempt mod_unload modversions ")
    );
    let status = dkms(&k, &root, &["status"]);
    assert_eq!(
        status.stdout(),
        format!("hello/1.0, {RELEASE}, x86_64: installed\n"),
        "{}",
        status.stderr()
    );

    // DKMS 3.0's exit codes for what scripts meet.
    let hv = ["-m", "hello", "-v", "1.0"];
    let code = |args: &[&str]| dkms(&k, &root, args).code();
    assert_eq!(code(&[&["add"], &hv[..]].concat()), 3, "already added");
    assert_eq!(
        code(&[&["build"], &hv[..], &["-k", RELEASE]].concat()),
        3,
        "already built"
    );
    assert_eq!(
        code(&[&["install"], &hv[..], &["-k", RELEASE]].concat()),
        5,
        "already installed"
    );
    assert_eq!(
        code(&[&["build"], &hv[..], &["-k", HEADERLESS]].concat()),
        1,
        "no headers"
    );
    assert_eq!(
        code(&[&["install"], &hv[..], &["-k", "6.1.0-99-amd64"]].concat()),
        6,
        "no kernel"
    );
    assert_eq!(code(&["add", "-m", "nosuch", "-v", "1.0"]), 2, "no source");
    assert_eq!(code(&["frobnicate", "hello/1.0"]), 2, "no action");
    assert_eq!(
        code(&["remove", "-m", "nosuch", "-v", "1.0", "--all"]),
        3,
        "not added"
    );
    let v = dkms(&k, &root, &["--version"]);
    assert_eq!(v.stdout(), "dkms-3.0.10\n");

    // BUILD_EXCLUSIVE: the package installs (Skipped.), `dkms build` says 77.
    let post = common_postinst(&k, &root, "excluded");
    assert_eq!(post.code(), 0, "{}\n{}", post.stdout(), post.stderr());
    assert!(post.stdout().contains("Skipped."), "{}", post.stdout());
    assert_eq!(
        code(&["build", "excluded/1.0", "-k", RELEASE]),
        77,
        "BUILD_EXCLUSIVE"
    );
    // A build that fails fails the package's configuration, with DKMS's code.
    let post = common_postinst(&k, &root, "broken");
    assert_eq!(post.code(), 10, "{}\n{}", post.stdout(), post.stderr());
    assert!(
        post.stderr().contains(&format!(
            "Bad return status for module build on kernel: {RELEASE}"
        )),
        "{}",
        post.stderr()
    );
    let status = dkms(&k, &root, &["status"]).stdout();
    assert!(status.contains("broken/1.0: added"), "{status}");
    assert!(status.contains("excluded/1.0: added"), "{status}");

    // The package's prerm: `dkms status -m -v` says something, `dkms remove --all` runs;
    // the module leaves the root and the store. Then the unbuild/remove -k path.
    let st = dkms(&k, &root, &["status", "-m", "hello", "-v", "1.0"]).stdout();
    assert!(!st.is_empty());
    let rm = dkms(&k, &root, &["remove", "-m", "hello", "-v", "1.0", "--all"]);
    assert_eq!(rm.code(), 0, "{}", rm.stderr());
    assert!(!ko.exists(), "{}", rm.stderr());
    let dep =
        std::fs::read_to_string(root.join(format!("lib/modules/{RELEASE}/modules.dep"))).unwrap();
    assert!(!dep.contains("hello.ko"), "{dep}");
    assert!(
        dkms(&k, &root, &["status", "-m", "hello"])
            .stdout()
            .is_empty()
    );
    // Installed again by hand, then `remove -k` of its only kernel: gone from the tree too.
    assert_eq!(code(&["install", "hello/1.0", "-k", RELEASE]), 0);
    assert!(ko.exists());
    let rm = dkms(&k, &root, &["remove", "hello/1.0", "-k", RELEASE]);
    assert_eq!(rm.code(), 0, "{}", rm.stderr());
    assert!(
        rm.stderr()
            .contains("Deleting module hello-1.0 completely from the DKMS tree."),
        "{}",
        rm.stderr()
    );
    assert!(!ko.exists());
    assert_eq!(code(&["remove", "hello/1.0", "-k", RELEASE]), 3);

    // A package whose dkms.conf kept dh_dkms's placeholder (`#MODULES_VERSION#`): built and
    // registered with the version the postinst gives (`-v 1.0`), as DKMS does.
    hello_source(
        &usr_src,
        "placeholder-1.0",
        "PACKAGE_NAME=placeholder\nPACKAGE_VERSION=\"#MODULES_VERSION#\"\n",
    );
    let post = common_postinst(&k, &root, "placeholder");
    assert_eq!(post.code(), 0, "{}\n{}", post.stdout(), post.stderr());
    let status = dkms(&k, &root, &["status", "-m", "placeholder"]).stdout();
    assert_eq!(
        status,
        format!("placeholder/1.0, {RELEASE}, x86_64: installed\n")
    );
}

/// The script of the coexistence test: in a private mount namespace, scratch directories
/// stand for /usr/src and /var/lib/dkms; Debian's real DKMS registers the source as every
/// installed `*-dkms` package leaves it; kmx builds that same /usr/src directory (strict
/// sandbox, which shadows /usr/src and /var/lib/dkms); then what DKMS's tree holds is listed.
const COEXIST: &str = r#"set -e
mount --bind "$SCRATCH/dkms" /var/lib/dkms
mount --bind "$SCRATCH/src" /usr/src
dkms add -m hello -v 1.0 >/dev/null
(cd /var/lib/dkms && find . | sort) >"$SCRATCH/before"
"$KMX" build /usr/src/hello-1.0 -t "$TARGET" -k "$RELEASE" --out "$SCRATCH/out" --force
(cd /var/lib/dkms && find . | sort) >"$SCRATCH/after"
dkms status -m hello -v 1.0 >"$SCRATCH/status"
"#;

#[test]
fn a_source_dkms_registered_builds_with_kmx_and_dkms_finds_its_tree_unchanged() {
    let Some(k) = Kmx::with_trees() else { return };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail(
            "needs root: it bind-mounts over /usr/src and /var/lib/dkms in a private mount namespace",
        );
    }
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) || !Path::new("/usr/sbin/dkms").exists() {
        return skip_or_fail("needs `unshare -m` and Debian's dkms (/usr/sbin/dkms)");
    }
    let scratch = k.dir().join("coexist");
    for d in ["dkms", "src"] {
        std::fs::create_dir_all(scratch.join(d)).unwrap();
    }
    let src = scratch.join("src/hello-1.0");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["hello.c", "Kbuild", "dkms.conf"] {
        std::fs::copy(repo().join("examples/hello").join(f), src.join(f)).unwrap();
    }
    let target = "arm64".to_string();
    let release = k.release_of(&target);
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", COEXIST])
        .env("SCRATCH", &scratch)
        .env("KMX", env!("CARGO_BIN_EXE_kmx"))
        .env("TARGET", &target)
        .env("RELEASE", &release)
        .env("KMX_HOME", &k.home)
        .env("HOME", k.dir())
        .env("XDG_CONFIG_HOME", k.dir().join("xdg"))
        .env_remove("KMX_CONFIG_DIR")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 built, 0 skipped, 0 failed"), "{text}");
    let ko = scratch.join(format!("out/hello/1.0/{release}/{target}/hello.ko"));
    assert!(ko.is_file(), "{text}");
    // DKMS's tree is as DKMS left it: its registration, no file of kmx's build.
    let before = std::fs::read_to_string(scratch.join("before")).unwrap();
    assert!(before.contains("./hello/1.0/source"), "{before}");
    assert_eq!(
        before,
        std::fs::read_to_string(scratch.join("after")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("status")).unwrap(),
        "hello/1.0: added\n"
    );
}

#[test]
fn kmx_dkms_package_stands_in_for_dkms_and_takes_over_dkms_registrations() {
    let Some(fetched) = fetched_home() else {
        return;
    };
    let k = Kmx::empty();
    // The package: what it provides satisfies what real *-dkms packages depend on.
    let out = Command::new(repo().join("contrib/debian/mkdeb-dkms"))
        .arg(env!("CARGO_BIN_EXE_kmx"))
        .arg(k.dir().join("debs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(field("Package"), "kmx-dkms");
    assert_eq!(field("Depends"), format!("kmx (= {version})"));
    assert_eq!(field("Conflicts"), "dkms");
    assert_eq!(field("Replaces"), "dkms");
    let provides = field("Provides");
    let provided = provides
        .strip_prefix("dkms (= ")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{provides}"));
    // acpi-call-dkms: dkms (>= 3.0.3-4~); v4l2loopback-dkms: dkms (>= 2.1.0.0).
    for needed in ["3.0.3-4~", "2.1.0.0"] {
        let ok = Command::new("dpkg")
            .args(["--compare-versions", provided, "ge", needed])
            .status()
            .unwrap();
        assert!(ok.success(), "{provided} < {needed}");
    }
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["./usr/sbin/dkms", "./usr/lib/dkms/common.postinst"] {
        assert!(listing.contains(f), "{listing}");
    }

    // Its postinst on a root where DKMS had built and installed two modules: one kmx builds
    // (DKMS's copy replaced by kmx's), one that does not build here (DKMS's copy stays).
    let Some(root) = image_root(&k, &fetched) else {
        return;
    };
    let usr_src = root.join("usr/src");
    hello_source(&usr_src, "hello-1.0", "");
    let broken = hello_source(&usr_src, "broken-1.0", "PACKAGE_NAME=broken\n");
    std::fs::write(broken.join("hello.c"), "this is not C\n").unwrap();
    let mut dkms_copies = Vec::new();
    for name in ["hello", "broken"] {
        let reg = root.join(format!("var/lib/dkms/{name}/1.0"));
        let module = reg.join(format!("{RELEASE}/x86_64/module"));
        std::fs::create_dir_all(&module).unwrap();
        symlink(
            format!("../../../../../usr/src/{name}-1.0"),
            reg.join("source"),
        )
        .unwrap();
        let bytes = format!("DKMS's build of {name}").into_bytes();
        std::fs::write(module.join(format!("{name}.ko")), &bytes).unwrap();
        let installed = root.join(format!("lib/modules/{RELEASE}/updates/dkms/{name}.ko"));
        std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
        std::fs::write(&installed, &bytes).unwrap();
        dkms_copies.push((installed, bytes));
    }
    let postinst = repo().join("contrib/dkms/postinst");
    let post = run_on_machine(&k, &root, &postinst, &["configure"]);
    let text = format!("{}{}", post.stdout(), post.stderr());
    assert_eq!(post.code(), 0, "{text}");
    let (hello_ko, dkms_hello) = &dkms_copies[0];
    assert_ne!(
        &std::fs::read(hello_ko).unwrap(),
        dkms_hello,
        "{text}\n{}",
        dkms(&k, &root, &["status"]).stdout()
    );
    assert_eq!(
        modinfo("vermagic", hello_ko),
        format!("{RELEASE} SMP preempt mod_unload modversions ")
    );
    let (broken_ko, dkms_broken) = &dkms_copies[1];
    assert_eq!(&std::fs::read(broken_ko).unwrap(), dkms_broken, "{text}");
    assert!(
        text.contains("kmx could not build broken 1.0")
            && text.contains("DKMS's installed copy stays"),
        "{text}"
    );
    let status = dkms(&k, &root, &["status"]).stdout();
    assert!(
        status.contains(&format!("hello/1.0, {RELEASE}, x86_64: installed")),
        "{status}"
    );
    // DKMS's tree is left as it was, for the way back.
    assert!(
        root.join(format!(
            "var/lib/dkms/hello/1.0/{RELEASE}/x86_64/module/hello.ko"
        ))
        .is_file()
    );
    // Run again (an upgrade of kmx-dkms): nothing registered twice, nothing replaced again.
    let again = run_on_machine(&k, &root, &postinst, &["configure"]);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert!(!again.stdout().contains("registering hello"));
}
