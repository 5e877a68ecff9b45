//! The lifecycle: add, install into an image root, status, uninstall, autoinstall,
//! signing, compression, crash safety, the lock, path escapes, tarballs. Real trees, real
//! cross compilers, real depmod and modinfo; no root privileges.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn modules_dep(root: &Path, release: &str) -> String {
    std::fs::read_to_string(root.join("lib/modules").join(release).join("modules.dep"))
        .unwrap_or_default()
}

/// The one status line (JSON) for module/kernel/target.
fn status_of(k: &Kmx, module: &str, kernel: &str, target: &str) -> serde_json::Value {
    let all = k.run(&["status", "--json"]).ok().json();
    all["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["module"] == module && l["kernel"] == kernel && l["target"] == target)
        .cloned()
        .unwrap_or_else(|| panic!("no status line for {module} {kernel} {target}: {all}"))
}

/// Wait until the child's stderr has a line containing `what`; returns the lines read.
fn wait_for_stderr(child: &mut Child, what: &str) -> Vec<String> {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let hit = line.contains(what);
            seen.push(line);
            if hit {
                // Keep draining in the background so the child never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return seen;
            }
        }
    }
    panic!(
        "no `{what}` on stderr within {PATIENCE:?}; saw:\n{}",
        seen.join("\n")
    );
}

#[test]
fn build_name_version_builds_a_registered_module_for_the_matrix_and_status_filters() {
    let Some(k) = Kmx::with_trees() else { return };
    // Not at ./hello: a directory of that name would be built as a source directory.
    let src = hello_source(&k.dir().join("src"), "hello", "");
    k.run(&["add", src.to_str().unwrap()]).ok();
    assert_eq!(
        k.run(&["status", "--format", "dkms"]).ok().stdout(),
        "hello/1.0: added\n"
    );
    // Like `dkms build`: the whole matrix, into the store.
    let report = k.run(&["build", "hello/1.0", "--json"]).ok().json();
    assert_eq!(report["totals"]["built"], 4, "{report}");
    assert!(
        report["cells"][0]["out_dir"]
            .as_str()
            .unwrap()
            .starts_with(k.home.join("state/built").to_str().unwrap()),
        "{report}"
    );
    let (i386, _, _) = k.tree_of("i386");
    let (amd64, _, _) = k.tree_of("amd64");
    let (arm64, _, _) = k.tree_of("arm64");
    let (armhf, _, _) = k.tree_of("armhf");
    assert_eq!(
        k.run(&["status", "--format", "dkms"]).ok().stdout(),
        format!(
            "hello/1.0, {amd64}, x86_64: built\nhello/1.0, {arm64}, aarch64: built\n\
             hello/1.0, {armhf}, armv7l: built\nhello/1.0, {i386}, i686: built\n"
        )
    );
    // Filters: module, target, kernel; TARGET before KERNEL as in `kmx build`.
    let table = k.run(&["status", "hello", "-t", "arm64"]).ok().stdout();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["MODULE", "VERSION", "TARGET", "KERNEL", "STATUS"],
            vec!["hello", "1.0", "arm64", arm64.as_str(), "built"]
        ]
    );
    assert_eq!(
        k.run(&["status", "hello/1.0", "-k", &amd64, "--format", "dkms"])
            .ok()
            .stdout(),
        format!("hello/1.0, {amd64}, x86_64: built\n")
    );
    // A kernel with nothing built: the module is only added there, as DKMS says.
    assert_eq!(
        k.run(&["status", "-k", "9.9.9", "--format", "dkms"])
            .ok()
            .stdout(),
        "hello/1.0: added\n"
    );
    assert_eq!(
        k.run(&["status", "other", "--json"]).ok().json(),
        serde_json::json!({ "schema": "kmx.status/1", "lines": [] })
    );
    // The whole matrix is in the store: tarball exports four cells, install builds nothing.
    let tar = k.run(&["tarball", "-o", "all.tar"]).ok();
    assert!(tar.stderr().contains("4 cells"), "{}", tar.stderr());
    let again = k.run(&["build", "hello", "--json"]).ok().json();
    assert_eq!(again["totals"]["fresh"], 4, "{again}");
    // Registered modules go to the store: --out is refused, and so is a mix.
    let out = k.run(&["build", "hello", "--out", "x"]).expect(2);
    assert!(out.stderr().contains("not into --out"), "{}", out.stderr());
    let mixed = k.run(&["build", "hello", src.to_str().unwrap()]).expect(2);
    assert!(
        mixed.stderr().contains("cannot be built in one run"),
        "{}",
        mixed.stderr()
    );
    assert_eq!(k.run(&["status", "--check"]).ok().code(), 0);
}

#[test]
fn add_install_into_an_image_root_for_arm64_and_armhf_status_stale_and_uninstall_restores() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "hello", "");
    let root = k.dir().join("rootfs");
    let (arm64, arm64_magic, _) = k.tree_of("arm64");
    let (armhf, armhf_magic, _) = k.tree_of("armhf");
    // The kernel's own module of the same name, which the install must move aside.
    let in_tree = root.join(format!("lib/modules/{armhf}/kernel/drivers/misc/hello.ko"));
    write(&in_tree, "the kernel's own hello.ko");
    std::fs::create_dir_all(root.join(format!("lib/modules/{arm64}"))).unwrap();

    k.run(&["add", src.to_str().unwrap()]).ok();
    let before = k.run(&["status"]).ok().stdout();
    assert!(
        before.lines().nth(1).is_some_and(
            |l| l.split_whitespace().collect::<Vec<_>>() == ["hello", "1.0", "-", "-", "added"]
        ),
        "{before}"
    );

    for (target, release, magic) in [
        ("arm64", &arm64, &arm64_magic),
        ("armhf", &armhf, &armhf_magic),
    ] {
        k.run(&[
            "install",
            "hello",
            "--target",
            target,
            "--kernel",
            release,
            "--root",
            root.to_str().unwrap(),
        ])
        .ok();
        let ko = root.join(format!("lib/modules/{release}/updates/dkms/hello.ko"));
        assert_eq!(modinfo("vermagic", &ko), *magic, "{target}");
        let dep = modules_dep(&root, release);
        assert!(
            dep.contains("updates/dkms/hello.ko:"),
            "{target}: modules.dep:\n{dep}"
        );
        let line = status_of(&k, "hello", release, target);
        assert_eq!(line["state"], "installed", "{line}");
        assert_eq!(
            line["installed"][0]["root"],
            root.canonicalize().unwrap().to_str().unwrap()
        );
    }
    assert!(!in_tree.exists(), "the in-tree module must be moved aside");
    // DKMS's own line shape, with DKMS's arch names and its original_module note.
    assert_eq!(
        k.run(&["status", "--format", "dkms"]).ok().stdout(),
        format!(
            "hello/1.0, {arm64}, aarch64: installed\n\
             hello/1.0, {armhf}, armv7l: installed (original_module exists)\n"
        )
    );
    let text = k.run(&["status"]).ok().stdout();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains(&format!(
            "installed in {}",
            root.canonicalize().unwrap().display()
        )),
        "{text}"
    );

    // Changing the source and adding it again makes the builds stale; install rebuilds.
    std::fs::write(
        src.join("hello.c"),
        std::fs::read_to_string(src.join("hello.c")).unwrap() + "\n/* changed */\n",
    )
    .unwrap();
    let again = k.run(&["add", src.to_str().unwrap()]).ok();
    assert!(
        again.stderr().contains("refreshed hello 1.0"),
        "{}",
        again.stderr()
    );
    assert_eq!(status_of(&k, "hello", &arm64, "arm64")["stale"], true);
    assert!(
        k.run(&["status"])
            .ok()
            .stdout()
            .contains("[stale: source changed since the build]")
    );
    let re = k
        .run(&[
            "install",
            "hello",
            "-t",
            "arm64",
            "-k",
            &arm64,
            "--root",
            root.to_str().unwrap(),
        ])
        .ok();
    assert!(
        re.stderr().contains("built       hello 1.0 arm64"),
        "{}",
        re.stderr()
    );
    assert_eq!(status_of(&k, "hello", &arm64, "arm64")["stale"], false);

    // Uninstall restores the displaced module byte for byte and re-runs depmod.
    k.run(&[
        "uninstall",
        "hello",
        "--target",
        "armhf",
        "--kernel",
        &armhf,
        "--root",
        root.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(&in_tree).unwrap(),
        "the kernel's own hello.ko"
    );
    assert!(
        !root
            .join(format!("lib/modules/{armhf}/updates/dkms/hello.ko"))
            .exists()
    );
    let dep = modules_dep(&root, &armhf);
    assert!(
        dep.contains("kernel/drivers/misc/hello.ko:") && !dep.contains("updates/"),
        "{dep}"
    );
    assert_eq!(status_of(&k, "hello", &armhf, "armhf")["state"], "built");

    // remove uninstalls the rest and forgets the module.
    k.run(&["remove", "hello/1.0"]).ok();
    assert!(
        !root
            .join(format!("lib/modules/{arm64}/updates/dkms/hello.ko"))
            .exists()
    );
    assert_eq!(
        k.run(&["status", "--json"]).ok().json()["lines"],
        serde_json::json!([])
    );
}

#[test]
fn xz_and_signing_from_the_tree_config_and_autoinstall_for_a_second_kernel_of_one_target() {
    let Some(k) = Kmx::with_trees() else { return };
    let release = "6.1.0-99-arm64";
    let variant = k.variant_tree(
        "arm64",
        release,
        &[
            ("CONFIG_MODULE_COMPRESS_NONE", "n"),
            ("CONFIG_MODULE_COMPRESS_XZ", "y"),
        ],
    );
    let keys = k.run(&["keys", "generate"]).ok();
    let cert = PathBuf::from(keys.stdout().lines().nth(1).unwrap());
    let text = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Code Signing") && text.contains("Public-Key: (2048 bit)"),
        "{text}"
    );
    k.run(&["keys", "generate"]).expect(2);

    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    // A module that does not compile must not stop the others.
    let broken = hello_source(k.dir(), "broken", "PACKAGE_NAME=broken\n");
    std::fs::write(broken.join("hello.c"), "this is not C\n").unwrap();
    k.run(&["add", broken.to_str().unwrap()]).ok();
    // A module without AUTOINSTALL is left alone.
    let manual = hello_source(k.dir(), "manual", "PACKAGE_NAME=manual\nAUTOINSTALL=no\n");
    k.run(&["add", manual.to_str().unwrap()]).ok();

    let root = k.dir().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    let run = k
        .run(&[
            "autoinstall",
            "--kernel",
            release,
            "--root",
            root.to_str().unwrap(),
        ])
        .expect(1);
    let err = run.stderr();
    assert!(
        err.contains("1 installed, 0 skipped, 1 failed (broken 1.0 arm64 6.1.0-99-arm64)"),
        "{err}"
    );
    assert!(err.contains("FAILED broken 1.0 arm64"), "{err}");
    assert!(!err.contains("manual"), "{err}");

    let ko = root.join(format!("lib/modules/{release}/updates/dkms/hello.ko.xz"));
    assert!(
        std::fs::read(&ko).unwrap().starts_with(b"\xfd7zXZ\0"),
        "not xz"
    );
    let check = std::process::Command::new("xz")
        .args(["-t", "-v"])
        .arg(&ko)
        .output()
        .unwrap();
    assert!(check.status.success());
    assert_eq!(
        modinfo("vermagic", &ko),
        reference_vermagic("arm64", &variant)
    );
    assert_eq!(modinfo("signer", &ko), "kmx module signing key");
    assert!(modules_dep(&root, release).contains("updates/dkms/hello.ko.xz:"));
    // Only the variant tree has that release: nothing for the other targets or kernels.
    assert_eq!(
        std::fs::read_dir(root.join("lib/modules")).unwrap().count(),
        1,
        "only {release} must be populated"
    );
    let line = status_of(&k, "hello", release, "arm64");
    assert_eq!(line["state"], "installed");
    let all = k.run(&["status", "--json"]).ok().json();
    let broken = all["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["module"] == "broken")
        .unwrap();
    // Its failure is recorded for that kernel, with the log (tests/it/machine.rs reads it).
    assert_eq!(
        (broken["state"].as_str(), broken["kernel"].as_str()),
        (Some("failed"), Some(release))
    );
}

#[test]
fn kill_9_mid_install_leaves_state_consistent_a_rerun_completes_and_installs_wait_for_the_lock() {
    let Some(k) = Kmx::with_trees() else { return };
    let (release, _, _) = k.tree_of("arm64");
    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    let root = k.dir().join("rootfs");
    let in_tree = root.join(format!("lib/modules/{release}/kernel/hello.ko"));
    write(&in_tree, "in-tree");
    let other_root = k.dir().join("other");
    std::fs::create_dir_all(other_root.join(format!("lib/modules/{release}"))).unwrap();
    let install = |root: &Path| {
        vec![
            "install".to_string(),
            "hello".into(),
            "-t".into(),
            "arm64".into(),
            "-k".into(),
            release.clone(),
            "--root".into(),
            root.display().to_string(),
        ]
    };
    let args = install(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // A: stops after writing the files, before depmod and the final record, holding the lock.
    let mut a = k
        .command(&args)
        .env("KMX_TEST_PAUSE_AT", "before-depmod")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_stderr(&mut a, "paused at before-depmod");

    // The lock: --no-wait fails at once; without it, B waits and says so.
    let other = install(&other_root);
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let mut nowait = vec!["--no-wait"];
    nowait.extend(&other);
    let refused = k.run(&nowait).expect(3);
    assert!(
        refused
            .stderr()
            .contains("the state store is locked by kmx process"),
        "{}",
        refused.stderr()
    );
    let mut b = k
        .command(&other)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let seen = wait_for_stderr(&mut b, "waiting for");
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("kmx process {}", a.id()))),
        "{seen:?}"
    );

    // kill -9 A in the middle of its install.
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(b.wait().unwrap().success(), "B must finish once A is gone");
    assert_eq!(
        status_of(&k, "hello", &release, "arm64")["installed"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // State and root agree: the record says interrupted, lists the file that is there, and
    // the in-tree module is in the store (not lost, not in both places).
    let line = status_of(&k, "hello", &release, "arm64");
    let mine = line["installed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["root"] == root.canonicalize().unwrap().to_str().unwrap())
        .unwrap()
        .clone();
    assert_eq!(mine["state"], "interrupted", "{line}");
    assert!(
        k.run(&["status"])
            .ok()
            .stdout()
            .contains("interrupted: re-run kmx install or uninstall")
    );
    let dest_dir = root.join(format!("lib/modules/{release}/updates/dkms"));
    let names: Vec<String> = std::fs::read_dir(&dest_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hello.ko"], "no temporary files may be left");
    assert!(!in_tree.exists());
    let saved: Vec<PathBuf> = walk(&k.home.join("state/displaced"));
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap(), "in-tree");
    assert!(
        !modules_dep(&root, &release).contains("hello"),
        "depmod had not run"
    );

    // A re-run completes it.
    k.run(&args).ok();
    assert!(modules_dep(&root, &release).contains("updates/dkms/hello.ko:"));
    let line = status_of(&k, "hello", &release, "arm64");
    assert!(
        line["installed"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "installed"),
        "{line}"
    );
    k.run(&[
        "uninstall",
        "hello",
        "-t",
        "arm64",
        "-k",
        &release,
        "--root",
        root.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read_to_string(&in_tree).unwrap(), "in-tree");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn destinations_escaping_the_root_are_refused() {
    let Some(k) = Kmx::with_trees() else { return };
    let (release, _, _) = k.tree_of("arm64");
    let root = k.dir().join("rootfs");
    let outside = k.dir().join("outside");
    std::fs::create_dir_all(root.join(format!("lib/modules/{release}"))).unwrap();
    std::fs::create_dir_all(&outside).unwrap();

    let evil = hello_source(
        k.dir(),
        "evil",
        "PACKAGE_NAME=evil\nDEST_MODULE_LOCATION[0]=\"/updates/../../../../outside\"\n",
    );
    // Refused where it enters (`add`), by the rule every entry point applies; a record
    // that carries it anyway (a crafted tarball) is tested in hostile.rs.
    let run = k.run(&["add", evil.to_str().unwrap()]).expect(2);
    assert!(
        run.stderr().contains(
            r#"DEST_MODULE_LOCATION[0]="/updates/../../../../outside" climbs out with `..`"#
        ),
        "{}",
        run.stderr()
    );

    // A symlink inside the root pointing out of it.
    std::os::unix::fs::symlink(
        &outside,
        root.join(format!("lib/modules/{release}/updates")),
    )
    .unwrap();
    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    let run = k
        .run(&[
            "install",
            "hello",
            "-t",
            "arm64",
            "-k",
            &release,
            "--root",
            root.to_str().unwrap(),
        ])
        .expect(2);
    assert!(
        run.stderr().contains("outside the root"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        walk(&outside),
        Vec::<PathBuf>::new(),
        "nothing may be written outside the root"
    );
    // The module is known (so the check below is over something) and is not installed
    // anywhere.
    let all = k.run(&["status", "--json"]).ok().json();
    let lines = all["lines"].as_array().unwrap();
    let mut modules: Vec<&str> = lines
        .iter()
        .map(|l| l["module"].as_str().unwrap())
        .collect();
    modules.dedup();
    // (evil's `..` location is refused by `add` itself, so only hello is known.)
    assert_eq!(modules, ["hello"], "{all}");
    assert!(
        lines
            .iter()
            .all(|l| l["installed"].as_array().unwrap().is_empty()),
        "{all}"
    );
    // The control: a file written through the same symlink is what the walk sees.
    write(
        &root.join(format!("lib/modules/{release}/updates/control")),
        "written through the link\n",
    );
    assert_eq!(walk(&outside), [outside.join("control")]);
}

#[test]
fn tarball_round_trip_installs_without_source_and_hostile_archives_are_refused() {
    let Some(k) = Kmx::with_trees() else { return };
    let (release, magic, _) = k.tree_of("armhf");
    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    let root = k.dir().join("rootfs");
    std::fs::create_dir_all(root.join(format!("lib/modules/{release}"))).unwrap();
    k.run(&[
        "install",
        "hello",
        "-t",
        "armhf",
        "-k",
        &release,
        "--root",
        root.to_str().unwrap(),
        "--no-depmod",
    ])
    .ok();
    let tarball = k.dir().join("hello.tar.gz");
    k.run(&[
        "tarball",
        "hello",
        "-t",
        "armhf",
        "-o",
        tarball.to_str().unwrap(),
    ])
    .ok();

    // Another machine: a fresh home and state that never saw the source.
    let other = Kmx::with_trees().unwrap();
    let loaded = other.run(&["load-tarball", tarball.to_str().unwrap()]).ok();
    assert!(
        loaded
            .stderr()
            .contains(&format!("imported hello 1.0 armhf {release}")),
        "{}",
        loaded.stderr()
    );
    let line = status_of(&other, "hello", &release, "armhf");
    assert_eq!(
        (line["state"].as_str(), line["added"].as_bool()),
        (Some("built"), Some(false))
    );
    let root2 = other.dir().join("rootfs");
    std::fs::create_dir_all(root2.join(format!("lib/modules/{release}"))).unwrap();
    other
        .run(&[
            "install",
            "hello",
            "-t",
            "armhf",
            "-k",
            &release,
            "--root",
            root2.to_str().unwrap(),
        ])
        .ok();
    let ko = root2.join(format!("lib/modules/{release}/updates/dkms/hello.ko"));
    assert_eq!(modinfo("vermagic", &ko), magic);

    // Hostile archives: `..`, absolute paths, links out.
    let hostile = |name: &str, kind: tar::EntryType, path: &[u8], link: Option<&str>| {
        let file = other.dir().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&file).unwrap());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        h.set_size(if link.is_some() { 0 } else { 4 });
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if link.is_some() { b"" } else { b"evil" };
        b.append(&h, data).unwrap();
        b.finish().unwrap();
        file
    };
    // A header that claims more than a module may be (2 GiB of zeros would compress to a
    // few MB): refused from the header, before anything is read or written.
    let big = other.dir().join("big.tar");
    let mut h = tar::Header::new_gnu();
    h.set_path("built/hello/1.0/r/t/hello.ko").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(2 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend([0u8; 1024]);
    std::fs::write(&big, bytes).unwrap();
    let cases = [
        (
            big,
            "is 2147483648 bytes, more than a module may be (268435456 bytes)",
        ),
        (
            hostile(
                "dots.tar",
                tar::EntryType::Regular,
                b"built/../../../escaped",
                None,
            ),
            "contains `..`",
        ),
        (
            hostile(
                "abs.tar",
                tar::EntryType::Regular,
                b"/tmp/kmx-escaped",
                None,
            ),
            "is an absolute path",
        ),
        (
            hostile(
                "link.tar",
                tar::EntryType::Symlink,
                b"built/hello",
                Some("/etc"),
            ),
            "is a link to \"/etc\", which could point outside the store",
        ),
    ];
    for (file, why) in cases {
        let run = other
            .run(&["load-tarball", file.to_str().unwrap()])
            .expect(2);
        assert!(
            run.stderr().contains(why),
            "{}: {}",
            file.display(),
            run.stderr()
        );
        assert!(
            run.stderr()
                .starts_with(&format!("error: {}: entry", file.display())),
            "{}",
            run.stderr()
        );
    }
    assert!(!other.home.parent().unwrap().join("escaped").exists());
    assert!(!Path::new("/tmp/kmx-escaped").exists());
}

/// Run kmx, killing it if it outlives `limit` (a hang is the failure being tested).
fn run_within(k: &Kmx, args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = k
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("kmx {args:?} hung (still running after {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A FIFO in a module source hung `build` and `add` (open blocks until a writer comes), and
/// a failed `add` left its half copy behind. Now: a clear error naming the file, nothing
/// left, and the retry works, also over the leftovers of an add that was killed.
#[test]
fn a_fifo_in_a_source_is_refused_and_a_failed_add_leaves_nothing() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "piped", "");
    let fifo = src.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let limit = PATIENCE;
    for args in [
        vec!["build", src.to_str().unwrap(), "-t", "arm64"],
        vec!["add", src.to_str().unwrap()],
    ] {
        let out = run_within(&k, &args, limit);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: is a named pipe (FIFO), not a file",
                fifo.display()
            )),
            "{args:?}: {err}"
        );
    }
    let versions = k.home.join("state/sources/hello/1.0");
    let left: Vec<_> = std::fs::read_dir(&versions)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed add left {left:?}");
    // The leftovers of an add killed mid-copy do not stop the next one.
    std::fs::create_dir_all(versions.join(".src-new-999999/sub")).unwrap();
    std::fs::remove_file(&fifo).unwrap();
    k.run(&["add", src.to_str().unwrap()]).ok();
    let left: Vec<String> = std::fs::read_dir(&versions)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".src-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// An image root deleted by hand (`rm -rf ROOT`) is forgotten, said plainly: `uninstall`
/// drops its record, and `remove` uninstalls from the other roots and drops the record of
/// the vanished one instead of stopping partway.
#[test]
fn a_deleted_image_root_is_forgotten_by_uninstall_and_remove() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "hello", "");
    let (arm64, _, _) = k.tree_of("arm64");
    k.run(&["add", src.to_str().unwrap()]).ok();
    let roots: Vec<PathBuf> = ["img-a", "img-b"].iter().map(|r| k.dir().join(r)).collect();
    let install = |root: &Path| {
        k.install_into("hello", "arm64", &arm64, root).ok();
    };
    for root in &roots {
        install(root);
    }
    std::fs::remove_dir_all(&roots[0]).unwrap();
    let run = k
        .run(&[
            "uninstall",
            "hello",
            "-t",
            "arm64",
            "-k",
            &arm64,
            "--root",
            roots[0].to_str().unwrap(),
        ])
        .ok();
    assert!(
        run.stderr().contains(&format!(
            "{} no longer exists: forgot the install of",
            roots[0].display()
        )),
        "{}",
        run.stderr()
    );
    assert!(!roots[0].exists(), "uninstall must not make the root again");
    // Again, then remove: the other root is uninstalled, the vanished one forgotten.
    install(&roots[0]);
    std::fs::remove_dir_all(&roots[0]).unwrap();
    let run = k.run(&["remove", "hello/1.0"]).ok();
    assert!(
        run.stderr()
            .contains("no longer exists: forgot the install"),
        "{}",
        run.stderr()
    );
    let ko = roots[1].join(format!("lib/modules/{arm64}/updates/dkms/hello.ko"));
    assert!(!ko.exists(), "remove left {}", ko.display());
    let status = k.run(&["status", "--json"]).ok().json();
    assert_eq!(
        status["lines"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
}

/// Issue 12, item 5: an image says which kernels it runs. Without --kernel, `install --root`
/// installs for each release in the image (merged /usr: lib is a link to usr/lib) that the
/// target has a tree for; a target of another architecture than the image's kernel (read
/// from the image's own module) is refused; no `lib/modules/<release>` is ever created
/// unless asked with --create.
#[test]
fn install_into_an_image_finds_its_kernels_refuses_another_arch_and_creates_nothing() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    let trees = k.run(&["kernels", "list", "--json"]).ok().json();
    // Each release with its tree's own vermagic (plain make there, not kmx's).
    let arm64: Vec<(String, String)> = trees["trees"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["target"] == "arm64")
        .map(|t| {
            (
                t["release"].as_str().unwrap().to_string(),
                reference_vermagic("arm64", Path::new(t["kdir"].as_str().unwrap())),
            )
        })
        .collect();
    assert!(arm64.len() >= 2, "two arm64 kernels are fetched: {arm64:?}");
    let (r1, magic1) = &arm64[0];
    let (r2, magic2) = &arm64[1];
    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    // The image: merged /usr, both kernels, the first with one real module of its own.
    let img = k.dir().join("img");
    std::fs::create_dir_all(img.join("usr/lib/modules")).unwrap();
    std::os::unix::fs::symlink("usr/lib", img.join("lib")).unwrap();
    let (_, _, kdir) = k.tree_of("arm64");
    let own = kdir
        .ancestors()
        .nth(3)
        .unwrap()
        .join(format!("lib/modules/{r1}/kernel/lib/crc7.ko"));
    let kernel_lib = img.join(format!("usr/lib/modules/{r1}/kernel/lib"));
    std::fs::create_dir_all(&kernel_lib).unwrap();
    if own.is_file() {
        std::fs::copy(&own, kernel_lib.join("crc7.ko")).unwrap();
    } else {
        // Trees fetched without images: the kernel's config says the architecture.
        std::fs::create_dir_all(img.join("boot")).unwrap();
        std::fs::copy(kdir.join(".config"), img.join(format!("boot/config-{r1}"))).unwrap();
    }
    std::fs::create_dir_all(img.join(format!("usr/lib/modules/{r2}"))).unwrap();
    let listing = |root: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join("usr/lib/modules"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing(&img);
    let root = img.to_str().unwrap();

    // Another architecture: refused, naming the image's own module.
    let wrong = k
        .run(&["install", "hello", "-t", "armhf", "--root", root])
        .expect(2);
    assert!(
        wrong
            .stderr()
            .contains(&format!("the image's kernel {r1} is ELF64"))
            && wrong.stderr().contains("target `armhf` builds ELF32"),
        "{}",
        wrong.stderr()
    );
    // A kernel the image does not have: refused, nothing created.
    let missing = k
        .run(&[
            "install",
            "hello",
            "-t",
            "arm64",
            "-k",
            "6.1.0-99-arm64",
            "--root",
            root,
        ])
        .expect(2);
    assert!(
        missing
            .stderr()
            .contains("the image has no kernel 6.1.0-99-arm64")
            && missing.stderr().contains("--create"),
        "{}",
        missing.stderr()
    );
    assert_eq!(listing(&img), before);

    // The right target: both of the image's kernels, each module with its kernel's vermagic.
    let run = k
        .run(&["install", "hello", "-t", "arm64", "--root", root])
        .ok();
    for (release, magic) in [(r1, magic1), (r2, magic2)] {
        let dir = img.join(format!("usr/lib/modules/{release}/updates/dkms"));
        let ko = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", dir.display(), run.stderr()))
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("hello.ko"))
            .unwrap();
        assert_eq!(modinfo("vermagic", &ko), *magic);
    }
    assert_eq!(listing(&img), before, "no kernel directory was created");
}
