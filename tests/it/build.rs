//! `kmx build` on real trees with real cross compilers.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn cell_dir(out: &Path, module: &str, version: &str, kernel: &str, target: &str) -> PathBuf {
    out.join(module).join(version).join(kernel).join(target)
}

#[test]
fn example_builds_for_the_four_targets_with_each_trees_vermagic() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    let run = k.run(&["build", &hello, "--json"]).ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 4, "{report}");
    let trees = k.run(&["kernels", "list", "--json"]).ok().json();
    for target in TARGETS {
        let tree = trees["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == target)
            .unwrap();
        let cell = report["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["target"] == target)
            .unwrap();
        assert_eq!(cell["status"], "built");
        let ko = PathBuf::from(cell["artifacts"][0]["file"].as_str().unwrap());
        assert_eq!(
            ko,
            cell_dir(
                &k.dir().join("kmx-out"),
                "hello",
                "1.0",
                tree["release"].as_str().unwrap(),
                target
            )
            .join("hello.ko")
        );
        // The tree's own vermagic (plain make there), not the one kmx computes.
        let kdir = Path::new(tree["kdir"].as_str().unwrap());
        assert_eq!(
            modinfo("vermagic", &ko),
            reference_vermagic(target, kdir),
            "{target}"
        );
        assert_eq!(cell["artifacts"][0]["sha256"].as_str().unwrap().len(), 64);
        let log = std::fs::read_to_string(cell["log"].as_str().unwrap()).unwrap();
        // DKMS's words: KERNELRELEASE after the `make` that starts the line.
        let release = tree["release"].as_str().unwrap();
        assert!(
            log.contains(&format!("\n$ make KERNELRELEASE={release} -C ")),
            "{log}"
        );
        assert!(log.contains("# make: exit status 0"), "{log}");
    }
    // The JSON report on stdout is also written next to the artifacts.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(k.dir().join("kmx-out/report.json")).unwrap())
            .unwrap();
    assert_eq!(saved["totals"], report["totals"]);
    assert!(
        run.stderr().contains("4 built, 0 skipped, 0 failed in "),
        "{}",
        run.stderr()
    );
}

#[test]
fn two_modules_in_subdirectories_are_collected() {
    let Some(k) = Kmx::with_trees() else { return };
    k.run(&["build", &fixture("twomods"), "--target", "arm64,armhf"])
        .ok();
    for (target, tree) in [("arm64", "arm64"), ("armhf", "armmp")] {
        let dir = cell_dir(
            &k.dir().join("kmx-out"),
            "twomods",
            "0.3",
            &format!("{}-{tree}", k.abi()),
            target,
        );
        for m in ["alpha", "beta"] {
            let ko = dir.join(format!("{m}.ko"));
            assert_eq!(modinfo("name", &ko), m);
        }
        assert!(dir.join("Module.symvers").is_file());
        assert!(dir.join("make.log").is_file());
    }
}

#[test]
fn dkms_conf_bash_logic_is_evaluated_per_cell() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k.run(&["build", &fixture("bashlogic"), "--json"]).ok();
    let report = run.json();
    for (target, width, flavour) in [
        ("i386", "32", "686-pae"),
        ("amd64", "64", "amd64"),
        ("arm64", "64", "arm64"),
        ("armhf", "32", "armmp"),
    ] {
        let cell = report["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["target"] == target)
            .unwrap();
        let ko = PathBuf::from(cell["artifacts"][0]["file"].as_str().unwrap());
        assert_eq!(modinfo("kmx_width", &ko), width, "{target}");
        assert_eq!(modinfo("kmx_flavour", &ko), flavour, "{target}");
        // What the evaluation printed to stderr is in the cell's log.
        let log = std::fs::read_to_string(cell["log"].as_str().unwrap()).unwrap();
        assert!(
            log.contains(&format!("bashlogic: width {width} flavour {flavour}")),
            "{log}"
        );
    }
}

#[test]
fn build_exclusive_arch_skips_two_targets_with_the_rule_shown() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k.run(&["build", &fixture("x86only"), "--json"]).ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 2);
    assert_eq!(report["totals"]["skipped"], 2);
    for c in report["cells"].as_array().unwrap() {
        match c["target"].as_str().unwrap() {
            "arm64" | "armhf" => {
                assert_eq!(c["status"], "skipped");
                let reason = c["reason"].as_str().unwrap();
                assert!(
                    reason.starts_with("BUILD_EXCLUSIVE_ARCH=\"^(x86_64|i.86)$\" does not match"),
                    "{reason}"
                );
            }
            _ => assert_eq!(c["status"], "built"),
        }
    }
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "skipped x86only 1.0 arm64 {}: BUILD_EXCLUSIVE_ARCH=",
            k.release_of("arm64")
        )),
        "{err}"
    );
}

#[test]
fn make_match_and_patch_match_apply_to_one_kernel_only() {
    let Some(k) = Kmx::with_trees() else { return };
    let release = k.release_of("arm64");
    let alt = format!("{release}-kmxalt");
    let alt_kdir = k.variant_tree("arm64", &alt, &[]);
    let run = k
        .run(&["build", &fixture("matchy"), "--target", "arm64", "--json"])
        .ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 2, "{report}");
    let out = k.dir().join("kmx-out");
    let plain = cell_dir(&out, "matchy", "1.1", &release, "arm64").join("matchy.ko");
    let matched = cell_dir(&out, "matchy", "1.1", &alt, "arm64").join("matchy.ko");
    assert_eq!(modinfo("kmx_make", &plain), "default");
    assert_eq!(modinfo("kmx_patched", &plain), "");
    assert_eq!(modinfo("kmx_make", &matched), "matched");
    assert_eq!(modinfo("kmx_patched", &matched), "yes");
    assert_eq!(
        modinfo("vermagic", &matched),
        reference_vermagic("arm64", &alt_kdir)
    );
}

/// `modprobe --dump-modversions`: (crc, symbol) pairs of a module's __versions.
fn modversions(ko: &Path) -> Vec<(String, String)> {
    let out = Command::new("modprobe")
        .arg("--dump-modversions")
        .arg(ko)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('\t')
                .map(|(c, s)| (c.to_string(), s.to_string()))
        })
        .collect()
}

#[test]
fn build_depends_passes_the_dependencys_symbols_and_crcs() {
    let Some(k) = Kmx::with_trees() else { return };
    // The dependent comes first on the command line: the plan orders them.
    let run = k
        .run(&[
            "build",
            &fixture("consumer"),
            &fixture("provider"),
            "--target",
            "amd64,armhf",
            "--json",
        ])
        .ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 4, "{report}");
    for (target, tree) in [("amd64", "amd64"), ("armhf", "armmp")] {
        let out = k.dir().join("kmx-out");
        let kernel = format!("{}-{tree}", k.abi());
        let symvers = std::fs::read_to_string(
            cell_dir(&out, "provider", "1.0", &kernel, target).join("Module.symvers"),
        )
        .unwrap();
        let crc = symvers
            .lines()
            .find(|l| l.contains("\tkmx_provider_answer\t"))
            .unwrap()
            .split('\t')
            .next()
            .unwrap()
            .to_string();
        let consumer = cell_dir(&out, "consumer", "1.0", &kernel, target).join("consumer.ko");
        let versions = modversions(&consumer);
        let found = versions
            .iter()
            .find(|(_, s)| s == "kmx_provider_answer")
            .unwrap_or_else(|| panic!("{target}: {versions:?}"));
        assert_eq!(
            u32::from_str_radix(found.0.trim_start_matches("0x"), 16).unwrap(),
            u32::from_str_radix(crc.trim_start_matches("0x"), 16).unwrap()
        );
        let log =
            std::fs::read_to_string(out.join(format!("logs/consumer-1.0-{kernel}-{target}.log")))
                .unwrap();
        assert!(!log.contains("undefined!"), "{log}");
        assert!(log.contains("KBUILD_EXTRA_SYMBOLS="), "{log}");
    }
    assert_eq!(
        modinfo(
            "depends",
            &k.dir().join(format!(
                "kmx-out/consumer/1.0/{}/amd64/consumer.ko",
                k.release_of("amd64")
            ))
        ),
        "provider"
    );
}

#[test]
fn a_missing_dependency_is_built_without_as_dkms_build_does() {
    // `dkms build` ignores BUILD_DEPENDS (DKMS orders autoinstall by it, nothing more):
    // Debian's nvidia-fs-dkms names `nvidia-current`, and DKMS runs its make anyway. So kmx
    // builds the cell, says so in its log, and the make fails where DKMS's does: modpost
    // finds the provider's symbol undefined.
    let Some(k) = Kmx::with_trees() else { return };
    let run = k
        .run(&["build", &fixture("consumer"), "--target", "amd64", "--json"])
        .expect(1);
    let report = run.json();
    let cell = &report["cells"][0];
    assert_eq!(cell["status"], "failed", "{report}");
    assert_eq!(cell["stage"], "make", "{report}");
    let log = std::fs::read_to_string(cell["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains(
            "# warning: BUILD_DEPENDS names module `provider`, which is not part of this build: \
             built without it, as `dkms build` does"
        ),
        "{log}"
    );
    assert!(
        log.contains("\"kmx_provider_answer\" [") && log.contains("undefined!"),
        "{log}"
    );
}

#[test]
fn a_target_that_fails_to_compile_does_not_stop_the_others() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k
        .run(&["build", &fixture("noexclusive"), "--json"])
        .expect(1);
    let report = run.json();
    assert_eq!(report["totals"]["built"], 2);
    assert_eq!(report["totals"]["failed"], 2);
    for c in report["cells"].as_array().unwrap() {
        let target = c["target"].as_str().unwrap();
        if target.starts_with("arm") {
            assert_eq!(c["status"], "failed");
            assert_eq!(c["stage"], "make");
            assert_eq!(c["exit_code"], 2);
            let first = c["errors"][0].as_str().unwrap();
            assert!(
                first.contains("asm/msr.h: No such file or directory"),
                "{first}"
            );
            assert!(Path::new(c["log"].as_str().unwrap()).is_file());
            assert!(
                !Path::new(c["out_dir"].as_str().unwrap()).exists(),
                "a failed cell leaves no artifact dir"
            );
            // Its build tree is kept, outside the artifact directory, and named.
            let kept = c["build_dir"].as_str().expect("build_dir of a failed cell");
            assert!(Path::new(kept).join("noexclusive.c").is_file(), "{kept}");
            assert!(kept.contains("/kmx-out/.work/"), "{kept}");
            assert!(
                run.stderr()
                    .contains(&format!("build directory kept: {kept}")),
                "{}",
                run.stderr()
            );
        } else {
            assert_eq!(c["status"], "built");
            assert!(Path::new(c["artifacts"][0]["file"].as_str().unwrap()).is_file());
            assert!(c.get("build_dir").is_none(), "{c}");
        }
    }
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "failed noexclusive 1.0 arm64 {}: make failed: exit status 2",
            k.release_of("arm64")
        )),
        "{err}"
    );
    assert!(
        err.contains("asm/msr.h: No such file or directory"),
        "{err}"
    );
}

#[test]
fn a_source_that_is_neither_a_directory_nor_registered_is_a_usage_error() {
    let k = Kmx::empty();
    for arg in ["/nonexistent", "nope", "nope/1.0"] {
        let run = k.run(&["build", arg]).expect(2);
        assert_eq!(
            run.stderr(),
            format!(
                "error: `{arg}` is neither a module source directory nor a registered module\n  \
                 hint: give a directory holding a dkms.conf or kmx.toml, or NAME[/VERSION] of a \
                 module registered with `kmx add DIR` (`kmx status` lists them)\n"
            )
        );
    }
}

#[test]
fn a_kernel_release_not_fetched_names_the_releases_there_are_and_how_to_fetch_it() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    // The ABI after the fetched one: not fetched, as kmx fetches the newest.
    let abi = k.abi();
    let (base, n) = abi.rsplit_once('-').unwrap();
    let next = format!("{base}-{}", n.parse::<u32>().unwrap() + 1);
    let missing = format!("{next}-arm64");
    let run = k.run(&["build", &hello, "-k", &missing]).expect(3);
    assert_eq!(
        run.stderr(),
        format!(
            "error: no target has a kernel tree with release {missing}; kmx has \
             {abi}-686-pae (i386), {abi}-amd64 (amd64), {abi}-arm64 (arm64), \
             {abi}-armmp (armhf)\n  hint: build for one of those (`kmx kernels list` shows \
             them), or fetch Debian's {next} trees with `kmx kernels fetch --abi {next}`\n"
        )
    );
    let run = k
        .run(&["build", &hello, "-k", &missing, "-t", "arm64"])
        .expect(3);
    assert!(
        run.stderr().starts_with(&format!(
            "error: target `arm64` has no kernel tree with release {missing}; kmx has \
             {abi}-arm64 (arm64)\n"
        )) && run
            .stderr()
            .contains(&format!("`kmx kernels fetch --abi {next} --target arm64`")),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_target_without_trees_hints_at_a_profile_in_the_config_dir_not_the_checkout() {
    let k = Kmx::empty();
    let hello = repo().join("examples/hello").display().to_string();
    let run = k.run(&["build", &hello, "-t", "arm64"]).expect(3);
    assert_eq!(
        run.stderr(),
        "error: target `arm64` has no kernel tree\n  hint: run `kmx kernels fetch --target \
         arm64`, or list trees under [kernels] paths in ~/.config/kmx/targets/arm64.toml (or \
         DIR/targets/arm64.toml with --config-dir DIR), which replaces the profile shipped \
         with kmx\n"
    );
}

#[test]
fn malformed_dkms_conf_is_a_usage_error_naming_the_file() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k
        .run(&["build", &fixture("malformed"), "--target", "amd64"])
        .expect(2);
    let err = run.stderr();
    assert!(
        err.starts_with(&format!("error: {}/dkms.conf", fixture("malformed"))),
        "{err}"
    );
}

#[test]
fn dry_run_prints_the_plan_and_builds_nothing() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k
        .run(&[
            "build",
            &fixture("x86only"),
            "--dry-run",
            "--no-compiler-cache",
        ])
        .ok();
    let text = run.stdout();
    assert!(
        text.contains(&format!(
            "x86only 1.0 arm64 {}\n  skip: BUILD_EXCLUSIVE_ARCH=",
            k.release_of("arm64")
        )),
        "{text}"
    );
    let release = k.release_of("i386");
    assert!(
        text.contains(&format!("  make:    make KERNELRELEASE={release} -C ")),
        "{text}"
    );
    assert!(text.contains(&format!("  vars:    ARCH=x86 CROSS_COMPILE=i686-linux-gnu- CC=i686-linux-gnu-gcc-12 kernelver={release} arch=i686 module=x86only module_version=1.0 KCFLAGS=")), "{text}");
    assert!(text.ends_with("4 cells: 2 to build, 2 skipped\n"), "{text}");
    assert!(!k.dir().join("kmx-out/x86only").exists());
}

#[test]
fn ctrl_c_stops_every_make_and_reports_what_finished() {
    let Some(k) = Kmx::with_trees() else { return };
    let out = k.dir().join("kmx-out");
    let child = Command::new(env!("CARGO_BIN_EXE_kmx"))
        .args(["build", &fixture("slow"), "--out"])
        .arg(&out)
        .current_dir(k.dir())
        .env("KMX_HOME", &k.home)
        .env("HOME", k.dir())
        .env("XDG_CONFIG_HOME", k.dir().join("xdg"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the makes run (the slow make's `sleep`, which never ends by itself, has
    // started in a work dir).
    wait_for_process(
        "sleep 86400",
        k.dir(),
        PATIENCE,
        "the slow build never started",
    );
    // Each sandboxed step is one process group, the one kmx stops: bwrap's inner process
    // (PID 1 of the step's namespace) stays in the group of the bwrap kmx started, in a
    // session without a terminal. With a session of the inner's own, a SIGINT that came
    // while bwrap was setting up left the inner running (its parent gone before it asked to
    // die with it, and out of the group kmx killed).
    let bwraps = bwrap_processes(k.dir());
    assert!(!bwraps.is_empty(), "no bwrap of this build found");
    let kmx = child.id() as i32;
    for b in &bwraps {
        let leader = bwraps.iter().find(|o| o.pid == b.pgrp);
        assert!(
            leader.is_some_and(|o| o.ppid == kmx) && b.tty == 0,
            "{b:?} is not in the group of a bwrap kmx started, without a terminal: {bwraps:?}"
        );
    }
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut child = child;
    wait_for_exit(&mut child, "kmx did not end after SIGINT");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains(" interrupted in "), "{err}");
    // No make, shell or sleep of this build runs any more: what kmx killed may take a moment
    // to go, but nothing of it ends by itself.
    wait_until("left running after kmx ended", || {
        processes_mentioning("", k.dir()).is_empty()
    });
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["totals"]["interrupted"], 4, "{report}");
}

/// A bwrap process of a test's run, from `/proc/<pid>/stat`.
#[derive(Debug)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    tty: i32,
}

/// The bwrap processes of the run whose HOME or working directory is `dir`.
fn bwrap_processes(dir: &Path) -> Vec<Proc> {
    let home = format!("HOME={}", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let ours = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == home.as_bytes()));
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if !ours || !stat.contains("(bwrap)") {
            continue;
        }
        // pid (comm) state ppid pgrp session tty_nr ...
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let f: Vec<i32> = rest
            .split_whitespace()
            .skip(1)
            .take(5)
            .map(|n| n.parse().unwrap())
            .collect();
        found.push(Proc {
            pid: head.split(' ').next().unwrap().parse().unwrap(),
            ppid: f[0],
            pgrp: f[1],
            tty: f[3],
        });
    }
    found
}

#[test]
fn native_kmx_toml_module_builds_with_its_rules() {
    let Some(k) = Kmx::with_trees() else { return };
    let run = k.run(&["build", &fixture("native"), "--json"]).ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 2, "{report}");
    for c in report["cells"].as_array().unwrap() {
        match c["target"].as_str().unwrap() {
            "amd64" | "arm64" => {
                let ko = PathBuf::from(c["artifacts"][0]["file"].as_str().unwrap());
                assert_eq!(modinfo("name", &ko), "native");
            }
            _ => assert!(
                c["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("[exclusive] arch = "),
                "{c}"
            ),
        }
    }
}

#[test]
fn a_hung_build_step_is_killed_at_the_timeout() {
    let Some(k) = Kmx::with_trees() else { return };
    // The step sleeps a day: kmx ends only if it kills it (a bounded wait, no stopwatch).
    let mut child = k
        .command(&[
            "build",
            &fixture("slow"),
            "--target",
            "arm64",
            "--timeout",
            "2",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child, "kmx did not kill the hung step");
    assert_eq!(status.code(), Some(1));
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cell = &report["cells"][0];
    assert_eq!(cell["status"], "failed");
    assert_eq!(
        cell["reason"],
        "make timed out after 2s (raise it with --timeout)"
    );
    assert!(processes_mentioning("", k.dir()).is_empty());
}

#[test]
fn fail_fast_starts_no_cell_after_the_first_failure() {
    let Some(k) = Kmx::with_trees() else { return };
    // One job: cells run in plan order i386, amd64, arm64 (fails), armhf.
    let run = k
        .run(&[
            "build",
            &fixture("noexclusive"),
            "--jobs",
            "1",
            "--fail-fast",
            "--json",
        ])
        .expect(1);
    let report = run.json();
    let status: Vec<&str> = report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["built", "built", "failed", "cancelled"]);
    assert_eq!(report["totals"]["cancelled"], 1);
    assert!(
        run.stderr()
            .contains("2 built, 0 skipped, 1 failed, 1 cancelled in "),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_dependency_skipped_by_a_rule_skips_its_dependents() {
    let Some(k) = Kmx::with_trees() else { return };
    let provider = k.dir().join("provider");
    let st = Command::new("cp")
        .arg("-a")
        .arg(fixture("provider"))
        .arg(&provider)
        .status()
        .unwrap();
    assert!(st.success());
    let conf = provider.join("dkms.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("BUILD_EXCLUSIVE_ARCH=\"x86_64\"\n");
    std::fs::write(&conf, text).unwrap();
    let run = k
        .run(&[
            "build",
            &fixture("consumer"),
            provider.to_str().unwrap(),
            "--target",
            "amd64,arm64",
            "--json",
        ])
        .ok();
    let report = run.json();
    let arm_consumer = report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["module"] == "consumer" && c["target"] == "arm64")
        .unwrap();
    assert_eq!(arm_consumer["status"], "skipped");
    assert_eq!(
        arm_consumer["reason"],
        format!(
            "its dependency provider 1.0 arm64 {} is skipped: BUILD_EXCLUSIVE_ARCH=\"x86_64\" does not match aarch64 (target arm64)",
            k.release_of("arm64")
        )
    );
    assert_eq!(report["totals"]["built"], 2);
}

#[test]
fn the_same_module_given_twice_is_a_usage_error() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    let run = k
        .run(&["build", &hello, &hello, "--target", "amd64"])
        .expect(2);
    assert!(
        run.stderr().starts_with(&format!(
            "error: module hello 1.0 comes from both {hello} and {hello}"
        )),
        "{}",
        run.stderr()
    );
}

/// Names, kinds and modification times under `dir` (3 levels deep): what a build must not
/// change on the host.
fn snapshot(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            out.push(format!("{} absent", dir.display()));
            return;
        };
        for e in entries.flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            out.push(format!(
                "{} {:?} {:?}",
                e.path().display(),
                meta.file_type(),
                meta.modified().ok()
            ));
            if meta.is_dir() && depth > 0 {
                walk(&e.path(), depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 3, &mut out);
    out.sort();
    out
}

/// The shapes real DKMS packages take that build under DKMS only because DKMS's own
/// directories exist: each fixture is one shape, all built for two targets (a 64-bit ARM and
/// a 32-bit x86 cross compiler) in one run, so cells that shared a directory would break
/// each other.
#[test]
fn dkms_shaped_packages_build_for_two_targets_in_one_run_without_touching_the_host() {
    let Some(k) = Kmx::with_trees() else { return };
    let host_dirs = ["/lib/modules", "/usr/src", "/var/lib/dkms"];
    let before: Vec<Vec<String>> = host_dirs.iter().map(|d| snapshot(Path::new(d))).collect();
    let packages = [
        "hardcoded", // Makefile at the top hard-codes /lib/modules/<release>/build
        "nested",    // ... in a subdirectory's Makefile
        "xsubdir",   // a core module's exports used from sibling directories
        "findmv",    // find $dkms_tree/<name>/<version>/build -exec mv
        "literal",   // /usr/src/<name>-<version> and /var/lib/dkms written literally,
        "kmxbase",   //   reading this package's header from /usr/src/kmxbase-1.0
        "ccscript",  // a MAKE script that compiles with $CC
        "prebuild",  // PRE_BUILD and POST_BUILD exit non-zero
        "findsrc",   // dkms.conf runs `find /usr/src` for kmxbase's headers
    ];
    let sources: Vec<String> = packages.iter().map(|p| fixture(p)).collect();
    let mut args: Vec<&str> = vec!["build", "--json", "--target", "arm64,i386"];
    args.extend(sources.iter().map(String::as_str));
    let run = k.run(&args).ok();
    let report = run.json();
    assert_eq!(report["totals"]["built"], 2 * packages.len(), "{report}");
    let trees = k.run(&["kernels", "list", "--json"]).ok().json();
    for c in report["cells"].as_array().unwrap() {
        let tree = trees["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == c["target"])
            .unwrap();
        let artifacts = c["artifacts"].as_array().unwrap();
        let expected = if c["module"] == "xsubdir" { 3 } else { 1 };
        assert_eq!(artifacts.len(), expected, "{c}");
        for a in artifacts {
            let ko = PathBuf::from(a["file"].as_str().unwrap());
            let target = c["target"].as_str().unwrap();
            let kdir = Path::new(tree["kdir"].as_str().unwrap());
            assert_eq!(modinfo("vermagic", &ko), reference_vermagic(target, kdir));
        }
        let log = std::fs::read_to_string(c["log"].as_str().unwrap()).unwrap();
        if c["module"] == "prebuild" {
            let warnings: Vec<&str> = c["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            assert_eq!(
                warnings,
                [
                    "PRE_BUILD ended with exit status 3: the build went on, as under DKMS (see the log)",
                    "POST_BUILD ended with exit status 1: the build went on, as under DKMS (see the log)"
                ]
            );
            let kernel = c["kernel"].as_str().unwrap();
            assert!(
                log.contains(&format!(
                    "pre.sh: cannot find optional firmware for {kernel}"
                )),
                "{log}"
            );
        }
        if c["module"] == "ccscript" && c["target"] == "arm64" {
            // kmx's compiler cache goes before the compiler where ccache is installed: its
            // module's wrapper, which carries the cache's settings.
            let cc = match which::which("ccache") {
                Ok(_) => format!(
                    "'{}/cache/ccache/ccscript/kmx-ccache aarch64-linux-gnu-gcc-12'",
                    k.home.display()
                ),
                Err(_) => "aarch64-linux-gnu-gcc-12".to_string(),
            };
            assert!(log.contains(&format!("#   CC={cc}\n")), "{log}");
        }
    }
    assert!(
        run.stderr().contains(&format!(
            "warning prebuild 1.0 arm64 {}: PRE_BUILD ended with exit status 3",
            k.release_of("arm64")
        )),
        "{}",
        run.stderr()
    );
    // The host's DKMS directories are as they were.
    for (dir, was) in host_dirs.iter().zip(&before) {
        assert_eq!(&snapshot(Path::new(dir)), was, "{dir} changed");
    }
    // The plan says where each cell builds.
    let plan = k
        .run(&["build", &fixture("nested"), "-t", "arm64", "--dry-run"])
        .ok();
    assert!(
        plan.stdout().contains(&format!(
            "  in:      /var/lib/dkms/nested/1.0/build (private namespace: /lib/modules/{}/build is the kdir)",
            k.release_of("arm64")
        )),
        "{}",
        plan.stdout()
    );
}

/// Containers and fresh machines have an overlayfs root, and the kernel refuses an overlay
/// upper directory on overlayfs: the cell's namespace must not put one under the output
/// directory.
#[test]
fn cells_build_with_the_output_directory_on_overlayfs() {
    let Some(k) = Kmx::with_trees() else { return };
    let base = k.dir().join("overlay");
    for d in ["lower", "rw", "merged"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let kmx = k.command(&[]);
    // The overlay's own upper directory must not be on overlayfs either (the test may run
    // on an overlayfs root): it goes on a tmpfs.
    let script = format!(
        "mount -t tmpfs rw {b}/rw && mkdir {b}/rw/upper {b}/rw/work && \
         mount -t overlay test -o lowerdir={b}/lower,upperdir={b}/rw/upper,workdir={b}/rw/work {b}/merged && \
         exec \"$0\" build {} -t arm64 -t amd64 --out {b}/merged/out --json",
        fixture("nested"),
        b = base.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.arg("--map-root-user");
    }
    cmd.args(["sh", "-c", &script])
        .arg(kmx.get_program())
        .current_dir(k.dir());
    for (key, v) in kmx.get_envs() {
        if let Some(v) = v {
            cmd.env(key, v);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["totals"]["built"], 2, "{report}");
}

/// The most compiles that ran at once, from a launcher's start/end log.
fn peak_compiles(events: &Path) -> usize {
    let text = std::fs::read_to_string(events).unwrap_or_default();
    let (mut now, mut peak) = (0usize, 0usize);
    for line in text.lines() {
        match line {
            "start" => {
                now += 1;
                peak = peak.max(now);
            }
            "end" => now = now.saturating_sub(1),
            _ => {}
        }
    }
    peak
}

/// A launcher that logs each compile's start and end (and makes each last a while, so that
/// compiles that may overlap do). Only compiles of a source count: kbuild also calls the
/// compiler while it reads its makefiles (`--version`, the `cc-option` probes of
/// `/dev/null`), from `$(shell)`, outside the jobserver.
fn counting_launcher(dir: &Path) -> (PathBuf, PathBuf) {
    let events = dir.join("events");
    let launcher = dir.join("count-cc");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\ncase \" $* \" in */dev/null*) exec \"$@\" ;; *\" -c \"*) ;; *) exec \"$@\" ;; esac\n\
             echo start >> {e}\nsleep 1\n\"$@\"\nrc=$?\necho end >> {e}\nexit $rc\n",
            e = events.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    (launcher, events)
}

/// Run from `make -j2` (a distro build, a recipe, a CI Makefile), kmx uses the caller's
/// jobserver: never more than two compiles at once, whatever `--jobs` says. Without it,
/// the same build runs more.
#[test]
fn under_make_j2_kmx_never_runs_more_than_two_compiles() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello");
    let build = |out: &str, launcher: &Path| -> Vec<String> {
        [
            "build",
            hello.to_str().unwrap(),
            "--out",
            out,
            "--no-cache",
            "--jobs",
            "4",
            "--launcher",
            launcher.to_str().unwrap(),
            // The counting launcher writes its events to a host file.
            "--sandbox",
            "open",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Alone, with four slots of its own.
    let alone = k.dir().join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    let (launcher, events) = counting_launcher(&alone);
    let args = build("out-alone", &launcher);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = k.run(&args).ok();
    assert!(run.stderr().contains("with 4 jobs"), "{}", run.stderr());
    let peak_alone = peak_compiles(&events);
    // Under make -j2.
    let under = k.dir().join("under");
    std::fs::create_dir_all(&under).unwrap();
    let (launcher, events) = counting_launcher(&under);
    let args = build("out-make", &launcher);
    let words: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    std::fs::write(
        under.join("Makefile"),
        format!("all:\n\t+\"$(KMX)\" {}\n", words.join(" ")),
    )
    .unwrap();
    let kmx = k.command(&[]);
    let mut make = Command::new("make");
    make.args(["-j2", "-f"])
        .arg(under.join("Makefile"))
        .arg(format!("KMX={}", kmx.get_program().to_str().unwrap()))
        .current_dir(k.dir());
    for (key, v) in kmx.get_envs() {
        match v {
            Some(v) => make.env(key, v),
            None => make.env_remove(key),
        };
    }
    let out = make.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("on the calling make's jobserver"),
        "{stderr}"
    );
    let peak_make = peak_compiles(&events);
    assert!(
        peak_make <= 2,
        "{peak_make} compiles at once under make -j2"
    );
    // The counter saw the compiles at all (a peak of 0 would pass the bound above).
    assert!(
        peak_make >= 1,
        "no compile counted under make -j2: the launcher's events are missing"
    );
    assert!(
        peak_alone > 2,
        "alone with --jobs 4, kmx ran at most {peak_alone} compiles at once: the test cannot tell"
    );
}

/// A `[kernels] paths` entry that points at another architecture's tree is refused at
/// set-up, naming the tree and the profile, in build and in doctor.
#[test]
fn a_tree_of_another_architecture_is_refused_naming_tree_and_profile() {
    let Some(k) = Kmx::with_trees() else { return };
    let (_, _, arm64_kdir) = k.tree_of("arm64");
    let (_, _, amd64_kdir) = k.tree_of("amd64");
    let conf = k.dir().join("conf");
    std::fs::create_dir_all(conf.join("targets")).unwrap();
    // armhf given the arm64 tree; i386 given the amd64 tree (the same ARCH, x86, but
    // another word size).
    for (target, kdir) in [("armhf", &arm64_kdir), ("i386", &amd64_kdir)] {
        let profile = std::fs::read_to_string(repo().join(format!("targets/{target}.toml")))
            .unwrap()
            .replace(
                "[kernels]\nfetched = true\n",
                &format!(
                    "[kernels]\nfetched = false\npaths = [\"{}\"]\n",
                    kdir.display()
                ),
            );
        assert!(profile.contains("fetched = false"), "{profile}");
        std::fs::write(conf.join(format!("targets/{target}.toml")), profile).unwrap();
    }
    let dir = conf.to_str().unwrap();
    let hello = repo().join("examples/hello");
    let build_err = |target: &str| {
        k.run(&[
            "--config-dir",
            dir,
            "build",
            hello.to_str().unwrap(),
            "-t",
            target,
        ])
        .expect(3)
        .stderr()
    };
    let err = build_err("armhf");
    assert!(
        err.contains(&format!(
            "{}: is a kernel tree for ARCH=arm64, but target `armhf` builds for ARCH=arm",
            arm64_kdir.display()
        )),
        "{err}"
    );
    assert!(err.contains("correct [kernels] paths in"), "{err}");
    assert!(err.contains("targets/armhf.toml"), "{err}");
    let err = build_err("i386");
    assert!(
        err.contains("is a 64-bit kernel tree, but target `i386` (i686) is 32-bit"),
        "{err}"
    );
    let doctor = k
        .run(&[
            "--config-dir",
            dir,
            "doctor",
            "--target",
            "armhf",
            "--target",
            "i386",
        ])
        .expect(1)
        .stdout();
    assert!(doctor.contains("builds for ARCH=arm"), "{doctor}");
    assert!(doctor.contains("is 32-bit"), "{doctor}");
}

/// Ctrl-C, SIGTERM or SIGHUP (a closed terminal) while dkms.conf is evaluated: what bash
/// started is killed, kmx's temporary files are removed, and the exit code says interrupted.
#[test]
fn a_signal_during_planning_kills_what_dkms_conf_started_and_leaves_nothing() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = k.dir().join("slowconf");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("dkms.conf"),
        "PACKAGE_NAME=slowconf\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=slowconf\nsleep 86400\n",
    )
    .unwrap();
    let tmp = k.dir().join("tmp");
    for (sig, name) in [
        (libc::SIGINT, "INT"),
        (libc::SIGTERM, "TERM"),
        (libc::SIGHUP, "HUP"),
    ] {
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = k
            .command(&["build", src.to_str().unwrap(), "-t", "arm64"])
            .env("TMPDIR", &tmp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_process("sleep 86400", k.dir(), PATIENCE, "dkms.conf never ran");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        wait_for_exit(&mut child, "kmx did not end after the signal");
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "SIG{name}: {err}");
        assert!(
            err.contains("interrupted while evaluating it"),
            "SIG{name}: {err}"
        );
        // Had kmx waited for dkms.conf (it sleeps a day), its own evaluation timeout would
        // have ended the run, saying so.
        assert!(
            !err.contains("did not finish evaluating it"),
            "SIG{name}: kmx waited for dkms.conf: {err}"
        );
        let left = processes_mentioning("sleep 86400", k.dir());
        assert!(left.is_empty(), "SIG{name}: left running: {left:?}");
        let litter: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
        assert!(litter.is_empty(), "SIG{name}: left in TMPDIR: {litter:?}");
    }
}

/// What kmx writes (stdout and stderr together) when run on a terminal (a pseudo-terminal
/// made by util-linux `script`) with `TERM=term`.
fn on_a_terminal(k: &Kmx, term: &str, args: &[&str]) -> String {
    let probe = k.command(args);
    let mut line = vec![probe.get_program().to_string_lossy().into_owned()];
    line.extend(args.iter().map(|a| format!("'{a}'")));
    let cmd = k.command(&[]);
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &line.join(" "), "/dev/null"])
        .current_dir(k.dir())
        .env("TERM", term)
        .stdin(std::process::Stdio::null());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => script.env(key, v),
            None => script.env_remove(key),
        };
    }
    let out = script.output().expect("util-linux script runs");
    String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
}

#[test]
fn on_a_terminal_a_bar_estimates_the_time_left_from_earlier_runs_and_term_dumb_gets_lines() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    let args = ["build", hello.as_str(), "-t", "arm64,armhf", "--force"];
    // The first run knows no durations: a bar, no estimate, every cell's line.
    let first = on_a_terminal(&k, "xterm", &args);
    assert!(first.contains("[0/2] ["), "{first}");
    assert!(!first.contains("ETA"), "{first}");
    assert!(
        first.contains(&format!(
            "] built       hello 1.0 arm64 {} (",
            k.release_of("arm64")
        )),
        "{first}"
    );
    // The second estimates from the first.
    let second = on_a_terminal(&k, "xterm", &args);
    assert!(second.contains(" ETA "), "{second}");
    // TERM=dumb on a terminal: no bar, and the plain per-cell lines are all there.
    let dumb = on_a_terminal(&k, "dumb", &args);
    assert!(!dumb.contains("ETA") && !dumb.contains("[0/2]"), "{dumb}");
    for target in [
        format!("arm64 {}", k.release_of("arm64")),
        format!("armhf {}", k.release_of("armhf")),
    ] {
        assert!(
            dumb.contains(&format!("built       hello 1.0 {target} (")),
            "{dumb}"
        );
    }
    assert!(
        dumb.starts_with("Building 2 cells (0 skipped by rules) with "),
        "{dumb}"
    );
}
