//! A package must never touch the host through kmx's own hands (issue 25): the collect step
//! (strip, check, copy) on files the package's build laid out, module names and places that
//! lead out of the build directory or `/lib/modules`, crafted archives, absurd job counts.
//!
//! Every victim lives outside /tmp (under cargo's `CARGO_TARGET_TMPDIR`, in the repository's
//! `target/`), so that no copy-on-write `/tmp` of a sandbox can hide a write to it, and each
//! test shows its payload really ran (the build planted the link kmx then refused to follow).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A fresh directory for a test's victims, outside /tmp.
fn victims(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(!dir.starts_with("/tmp"), "{}", dir.display());
    dir
}

/// An executable script `name` in the module source `src`.
fn script(src: &Path, name: &str, body: &str) {
    let path = src.join(name);
    std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every regular file under `dir` (links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                pending.push(e.path());
            } else if t.is_file() {
                found.push(e.path());
            }
        }
    }
    found
}

/// The one cell of a `--json` build report.
fn only_cell(report: &serde_json::Value) -> serde_json::Value {
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{report}");
    cells[0].clone()
}

/// Build hello for arm64 into `out` with `plant` as its POST_BUILD: the cell must fail at
/// `collect` with `said` in its reason (the payload ran: the link was there, and refused).
fn refused_at_collect(k: &Kmx, plant: &str, out: &Path, said: &str) {
    let evil = hello_source(k.dir(), "evil", "POST_BUILD=plant.sh\n");
    script(&evil, "plant.sh", plant);
    let args = [
        "build",
        evil.to_str().unwrap(),
        "-t",
        "arm64",
        "--json",
        "-o",
    ];
    let run = k.command(&args).arg(out).output().unwrap();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let cell = only_cell(&report);
    assert_eq!(cell["status"], "failed", "{cell}");
    assert_eq!(cell["stage"], "collect", "{cell}");
    let reason = cell["reason"].as_str().unwrap_or_else(|| panic!("{cell}"));
    assert!(reason.contains(said), "{reason}");
}

#[test]
fn a_module_symlinked_to_a_host_file_is_refused_and_the_host_file_stays_byte_identical() {
    let Some(k) = Kmx::with_trees() else { return };
    let v = victims("symlinked-ko");
    // The victim: an unstripped arm64 module, what `strip --strip-debug` would shrink.
    let plain = hello_source(k.dir(), "plain", "STRIP[0]=no\n");
    let first = k.dir().join("first");
    k.run(&[
        "build",
        plain.to_str().unwrap(),
        "-t",
        "arm64",
        "-o",
        first.to_str().unwrap(),
    ])
    .ok();
    let built = files_under(&first)
        .into_iter()
        .find(|p| p.ends_with("hello.ko"))
        .expect("the unstripped build's hello.ko");
    let victim = v.join("victim.ko");
    std::fs::copy(&built, &victim).unwrap();
    let before = std::fs::read(&victim).unwrap();
    // The control: strip on a copy of it changes it, so kmx stripping the victim in place
    // (as e6bc50d did) would show.
    let probe = v.join("probe.ko");
    std::fs::copy(&victim, &probe).unwrap();
    let st = Command::new("aarch64-linux-gnu-strip")
        .arg("--strip-debug")
        .arg(&probe)
        .status()
        .unwrap();
    assert!(st.success());
    assert_ne!(
        std::fs::read(&probe).unwrap(),
        before,
        "strip changes the victim"
    );

    let out = k.dir().join("out");
    refused_at_collect(
        &k,
        &format!("rm -f hello.ko\nln -s {} hello.ko\n", victim.display()),
        &out,
        &format!(
            "hello.ko in the build directory is a symbolic link to {}",
            victim.display()
        ),
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "the host file changed"
    );
    assert!(
        !files_under(&out).iter().any(|p| p.ends_with("hello.ko")),
        "a module was shipped"
    );
    let _ = std::fs::remove_dir_all(&v);
}

#[test]
fn a_module_symvers_symlinked_to_a_secret_is_refused_and_never_copied() {
    let Some(k) = Kmx::with_trees() else { return };
    let v = victims("symvers");
    let secret = v.join("shadow");
    let marker = format!(
        "root:kmx-hostile-secret-{}:19000:0:99999:7:::\n",
        std::process::id()
    );
    std::fs::write(&secret, &marker).unwrap();
    let out = k.dir().join("out");
    // The build's own Module.symvers exists (modpost wrote it) before it is replaced.
    refused_at_collect(
        &k,
        &format!(
            "test -f Module.symvers\nrm Module.symvers\nln -s {} Module.symvers\n",
            secret.display()
        ),
        &out,
        &format!(
            "Module.symvers in the build directory is a symbolic link to {}",
            secret.display()
        ),
    );
    // The secret is nowhere kmx writes: output, cache, state (tarballs and packages are
    // made from those).
    for dir in [&out, &k.home] {
        for f in files_under(dir) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&marker),
                "{} holds the secret",
                f.display()
            );
        }
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), marker);
    let _ = std::fs::remove_dir_all(&v);
}

/// Names and places that lead out of the build directory or `/lib/modules`: refused by
/// `add` and `build` with exit 2 naming the field, before anything runs; the same source
/// with a plain name builds (the control).
#[test]
fn module_names_and_locations_with_dotdot_are_refused_by_add_and_build() {
    let Some(k) = Kmx::with_trees() else { return };
    let v = victims("dotdot");
    let plant = v.join("plant.ko");
    std::fs::write(&plant, b"a host module").unwrap();
    let up = "../".repeat(20);
    let planted = plant.with_extension("");
    let planted = planted.strip_prefix("/").unwrap().display().to_string();
    for (i, (line, shown)) in [
        (
            format!("BUILT_MODULE_NAME[0]=\"{up}{planted}\"\n"),
            format!("BUILT_MODULE_NAME[0]=\"{up}{planted}\" must be a plain file name"),
        ),
        (
            "BUILT_MODULE_LOCATION[0]=\"../../..\"\n".to_string(),
            "BUILT_MODULE_LOCATION[0]=\"../../..\" must not contain `..`".to_string(),
        ),
        (
            "DEST_MODULE_LOCATION[0]=\"/updates/../../\"\n".to_string(),
            "DEST_MODULE_LOCATION[0]=\"/updates/../..\" climbs out with `..`".to_string(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("evil{i}");
        let src = hello_source(k.dir(), &name, &format!("PACKAGE_NAME={name}\n{line}"));
        let run = k.run(&["add", src.to_str().unwrap()]).expect(2);
        assert!(run.stderr().contains(&shown), "{}", run.stderr());
        assert!(
            !k.home.join("state/sources").join(&name).exists(),
            "a refused add left its directory"
        );
        let run = k
            .run(&["build", src.to_str().unwrap(), "-t", "arm64"])
            .expect(2);
        assert!(run.stderr().contains(&shown), "{}", run.stderr());
    }
    assert_eq!(std::fs::read(&plant).unwrap(), b"a host module");
    let control = hello_source(k.dir(), "control", "BUILT_MODULE_LOCATION[0]=\"./\"\n");
    k.run(&["build", control.to_str().unwrap(), "-t", "arm64"])
        .ok();
    let _ = std::fs::remove_dir_all(&v);
}

/// A tar entry with a raw name and type, as no honest archiver writes it.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    size: u64,
    link: &[u8],
) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    tar.append(&h, std::io::empty()).unwrap();
}

/// Writes the hostile entry of one case.
type Entry = dyn Fn(&mut tar::Builder<Vec<u8>>);

fn manifest_entry(tar: &mut tar::Builder<Vec<u8>>) {
    let m = serde_json::json!({"format": 1, "created_by": "a test", "cells": []}).to_string();
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "kmx-tarball.json", m.as_bytes())
        .unwrap();
}

#[test]
fn crafted_archives_are_refused_as_bad_input_with_exit_2() {
    let k = Kmx::empty();
    let v = victims("tarball");
    let escaped = v.join("x");
    let cases: Vec<(&str, Box<Entry>, String)> = vec![
        (
            "dotdot",
            Box::new(|t| raw_entry(t, b"built/../../../x", tar::EntryType::Regular, 0, b"")),
            "contains `..`".into(),
        ),
        (
            "absolute",
            Box::new(|t| raw_entry(t, b"/etc/x", tar::EntryType::Regular, 0, b"")),
            "is an absolute path".into(),
        ),
        (
            "symlink",
            Box::new(|t| {
                raw_entry(
                    t,
                    b"built/m/1/r/t/m.ko",
                    tar::EntryType::Symlink,
                    0,
                    b"/etc/shadow",
                )
            }),
            "is a link to \"/etc/shadow\"".into(),
        ),
        (
            "hardlink",
            Box::new(|t| {
                raw_entry(
                    t,
                    b"built/m/1/r/t/m.ko",
                    tar::EntryType::Link,
                    0,
                    b"/etc/shadow",
                )
            }),
            "is a link to \"/etc/shadow\"".into(),
        ),
        (
            "fifo",
            Box::new(|t| raw_entry(t, b"built/m/1/r/t/m.ko", tar::EntryType::Fifo, 0, b"")),
            "is not a regular file".into(),
        ),
        (
            "huge",
            Box::new(|t| {
                raw_entry(
                    t,
                    b"built/m/1/r/t/m.ko",
                    tar::EntryType::Regular,
                    1 << 40,
                    b"",
                )
            }),
            "more than a module may be".into(),
        ),
        (
            "long-name",
            Box::new(|t| {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o644);
                let name = format!("built/{}", "a".repeat(100_000));
                t.append_data(&mut h, name, std::io::empty()).unwrap();
            }),
            "has a name longer than 255 bytes".into(),
        ),
        (
            "record-dotdot",
            Box::new(|t| {
                let rec = serde_json::json!({
                    "module": "m", "version": "1", "release": "r", "target": "t",
                    "vermagic": "r SMP", "kdir": "/usr/src/r", "source_hash": null,
                    "files": [{"file": "m.ko", "sha256": "0", "dest_name": "m",
                               "dest_location": "/updates/../../../../x"}],
                    "compress": null, "sig_enabled": false, "sig_force": false,
                    "sig_hash": null, "autoinstall": false, "origin": "build", "built_at": 0
                })
                .to_string();
                let mut h = tar::Header::new_gnu();
                h.set_size(rec.len() as u64);
                h.set_mode(0o644);
                t.append_data(&mut h, "built/m/1/r/t/kmx-built.json", rec.as_bytes())
                    .unwrap();
            }),
            "DEST_MODULE_LOCATION \"/updates/../../../../x\" climbs out with `..`".into(),
        ),
    ];
    for (name, add, why) in cases {
        let mut t = tar::Builder::new(Vec::new());
        manifest_entry(&mut t);
        add(&mut t);
        let file = v.join(format!("{name}.tar"));
        std::fs::write(&file, t.into_inner().unwrap()).unwrap();
        let run = k.run(&["load-tarball", file.to_str().unwrap()]).expect(2);
        assert!(run.stderr().contains(&why), "{name}: {}", run.stderr());
        assert!(
            run.stderr().contains("refusing to import"),
            "{}",
            run.stderr()
        );
    }
    assert!(!escaped.exists());
    assert!(
        !k.home.join("state/built/m").exists(),
        "a refused archive left a cell in the store"
    );
    let _ = std::fs::remove_dir_all(&v);
}

#[test]
fn absurd_job_counts_are_refused_with_exit_2_and_the_reason() {
    let k = Kmx::empty();
    let module = repo().join("tests/data/modules/arm64");
    let module = files_under(&module)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "ko"))
        .expect("a test module");
    for args in [
        vec!["verify", module.to_str().unwrap(), "-j", "100000"],
        vec!["build", "x", "--jobs", "100000"],
    ] {
        let run = k.run(&args).expect(2);
        assert!(
            run.stderr().contains("must be at most 1024"),
            "{}",
            run.stderr()
        );
    }
    let run = k
        .command(&["verify", module.to_str().unwrap()])
        .env("KMX_JOBS", "100000")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    // The largest count is accepted, and on one module starts one thread: it ends as any
    // verify of that module does.
    let wide = k.run(&["verify", module.to_str().unwrap(), "-j", "1024"]);
    let narrow = k.run(&["verify", module.to_str().unwrap(), "-j", "1"]);
    assert_eq!(wide.code(), narrow.code());
    assert_eq!(wide.stdout(), narrow.stdout());
}

#[test]
fn a_refused_first_add_leaves_no_directory_for_status_to_blame() {
    let k = Kmx::empty();
    let src = hello_source(k.dir(), "fifo", "PACKAGE_NAME=fifo\n");
    let st = Command::new("mkfifo")
        .arg(src.join("pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    let run = k.run(&["add", src.to_str().unwrap()]).expect(2);
    assert!(
        run.stderr().contains("is a named pipe (FIFO), not a file"),
        "{}",
        run.stderr()
    );
    assert!(!k.home.join("state/sources/fifo").exists());
    k.run(&["status", "--check"]).ok();
    // The control: the same source without the FIFO is added, where the refused one was not.
    std::fs::remove_file(src.join("pipe")).unwrap();
    k.run(&["add", src.to_str().unwrap()]).ok();
    assert!(k.home.join("state/sources/fifo/1.0").is_dir());
}

#[test]
fn a_first_install_that_cannot_write_is_undone_not_recorded_as_interrupted() {
    let Some(k) = Kmx::with_trees() else { return };
    let (release, _, _) = k.tree_of("arm64");
    let src = hello_source(k.dir(), "hello", "");
    k.run(&["add", src.to_str().unwrap()]).ok();
    let root = k.dir().join("rootfs");
    // `updates` a file where the module's directory must go: the write fails, nothing is
    // written.
    let block = root.join(format!("lib/modules/{release}/updates"));
    std::fs::create_dir_all(block.parent().unwrap()).unwrap();
    std::fs::write(&block, b"in the way").unwrap();
    let run = k.install_into("hello", "arm64", &release, &root);
    assert_ne!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stderr().contains("nothing of it was left in the root"),
        "{}",
        run.stderr()
    );
    let status = k.run(&["status", "--json"]).ok().stdout();
    assert!(!status.contains("interrupted"), "{status}");
    k.run(&["status", "--check"]).ok();
    // The control: once the way is clear the same install goes in, and is recorded.
    std::fs::remove_file(&block).unwrap();
    k.install_into("hello", "arm64", &release, &root).ok();
    let status = k.run(&["status", "--json"]).ok().stdout();
    assert!(status.contains("\"installed\""), "{status}");
}

#[test]
fn verify_refuses_named_devices_and_fifos_and_a_scan_says_what_it_skipped() {
    let k = Kmx::empty();
    let dir = k.dir().join("mods");
    std::fs::create_dir_all(&dir).unwrap();
    let module = files_under(&repo().join("tests/data/modules/arm64"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "ko"))
        .expect("a test module");
    std::fs::copy(&module, dir.join("real.ko")).unwrap();
    let st = Command::new("mkfifo")
        .arg(dir.join("pipe.ko"))
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::symlink(dir.join("nothing.ko"), dir.join("gone.ko")).unwrap();
    let zero = k.dir().join("zero.ko");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    // Named: refused before a byte is read (it read 256 MiB of zeros per name).
    let run = k
        .run(&["verify", "-t", "arm64", zero.to_str().unwrap()])
        .expect(2);
    assert!(
        run.stderr().contains(&format!(
            "{}: is a device file, not a module file",
            zero.display()
        )),
        "{}",
        run.stderr()
    );
    // Scanned: the real module is checked, the others named as skipped.
    let run = k
        .run(&["verify", "-t", "arm64", dir.to_str().unwrap()])
        .ok();
    assert!(run.stdout().contains("1 passed") || run.stderr().contains("1 passed"));
    for said in [
        format!(
            "{}: skipped: a named pipe (FIFO), not a file",
            dir.join("pipe.ko").display()
        ),
        format!(
            "{}: skipped: a symlink to nothing",
            dir.join("gone.ko").display()
        ),
    ] {
        assert!(run.stderr().contains(&said), "{said}\n{}", run.stderr());
    }
}

#[test]
fn two_builds_into_one_output_directory_take_turns() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "hello", "PRE_BUILD=slow.sh\n");
    script(&src, "slow.sh", "sleep 3\n");
    let out = k.dir().join("out");
    let args = [
        "build",
        src.to_str().unwrap(),
        "-t",
        "arm64",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    let first = k
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_process(
        "slow.sh",
        k.dir(),
        std::time::Duration::from_secs(60),
        "the first build never ran its PRE_BUILD",
    );
    let second = k.run(&args).ok();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{first:?}");
    assert!(
        second.stderr().contains(&format!(
            "waiting for another kmx building into {}",
            out.display()
        )),
        "{}",
        second.stderr()
    );
    // It waited: the first's cells were there, whole, when it looked.
    let report = second.json();
    for c in report["cells"].as_array().unwrap() {
        assert_eq!(c["status"], "fresh", "{report}");
    }
}

#[test]
fn a_path_that_is_not_utf8_is_refused_by_name_before_anything_builds() {
    use std::os::unix::ffi::OsStrExt;
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello");
    let out = k.dir().join(std::ffi::OsStr::from_bytes(b"out-\xfe"));
    let mut cmd = k.command(&["build", hello.to_str().unwrap(), "-t", "arm64", "-o"]);
    let run = cmd.arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the output directory")
            && stderr.contains("out-\\xFE\" is not valid UTF-8"),
        "{stderr}"
    );
    assert!(!out.exists(), "it built into it");
    // The control: the same build into a UTF-8 name builds.
    let fine = k.dir().join("out-þ");
    k.run(&[
        "build",
        hello.to_str().unwrap(),
        "-t",
        "arm64",
        "-o",
        fine.to_str().unwrap(),
    ])
    .ok();
}

#[test]
fn a_symlink_install_replaces_is_moved_aside_as_a_link_and_restored_by_uninstall() {
    let Some(k) = Kmx::with_trees() else { return };
    let (release, _, _) = k.tree_of("arm64");
    let src = hello_source(k.dir(), "hello", "");
    k.run(&["add", src.to_str().unwrap()]).ok();
    let root = k.dir().join("rootfs");
    // The image had its own hello.ko as a link (e.g. to a vendor's copy), pointing at a
    // host file: kmx must neither follow it nor lose it.
    let victim = victims("a_symlink_install_replaces").join("vendor-hello.ko");
    std::fs::write(&victim, b"the vendor's module").unwrap();
    let link = root.join(format!("lib/modules/{release}/updates/dkms/hello.ko"));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let run = k.install_into("hello", "arm64", &release, &root).ok();
    assert!(
        run.stderr().contains("moved aside") && run.stderr().contains("hello.ko"),
        "{}",
        run.stderr()
    );
    // The installed module is a regular file now; the host file is untouched.
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"the vendor's module");
    k.run(&["status", "--check"]).ok();
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
    // Put back as it was: the same link, to the same target.
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), victim);
    assert_eq!(std::fs::read(&victim).unwrap(), b"the vendor's module");
    k.run(&["status", "--check"]).ok();
}
