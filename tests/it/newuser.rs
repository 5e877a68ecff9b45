//! What a new user trips on (issue 29): each test is one of its items, run as the user ran
//! it, and fails on the kmx the issue was written against.

use std::path::Path;

use crate::support::*;

/// `kmx ARGS` run in `dir` (as a user who `cd`s into the module's source).
fn run_in(k: &Kmx, dir: &Path, args: &[&str]) -> Run {
    let out = k.command(args).current_dir(dir).output().expect("run kmx");
    Run {
        cmd: format!("(cd {}; kmx {})", dir.display(), args.join(" ")),
        out,
    }
}

#[test]
fn build_dot_inside_the_source_leaves_its_own_output_out_of_the_copy_and_the_hash() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "hello", "");
    let release = k.release_of("arm64");
    let build = ["build", ".", "-t", "arm64", "-k", &release, "--no-cache"];
    let first = run_in(&k, &src, &build).ok();
    assert!(
        first.stderr().contains("1 built, 0 skipped, 0 failed"),
        "{}",
        first.stderr()
    );
    // The output is a tagged cache directory (tar --exclude-caches, cargo's target/).
    let tag = std::fs::read_to_string(src.join("kmx-out/CACHEDIR.TAG")).unwrap();
    assert!(
        tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"),
        "{tag}"
    );
    // The second run finds the cell fresh: ./kmx-out, now full of the first run's files,
    // is not part of the source's hash, nor copied into the build tree.
    let second = run_in(&k, &src, &build).ok();
    assert!(
        second
            .stderr()
            .contains("0 built, 1 fresh, 0 skipped, 0 failed"),
        "{}",
        second.stderr()
    );
    // A change to the source itself still counts, and the copy holds no kmx-out.
    std::fs::write(src.join("extra.h"), "/* new */\n").unwrap();
    let third = run_in(&k, &src, &[&build[..], &["--keep-build-dir"]].concat()).ok();
    assert!(
        third.stderr().contains("1 built, 0 skipped, 0 failed"),
        "{}",
        third.stderr()
    );
    let work = src.join("kmx-out/.work");
    let cell = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("build").is_dir())
        .map(|e| e.path().join("build"))
        .unwrap_or_else(|| panic!("no kept build tree under {}", work.display()));
    assert!(cell.join("extra.h").is_file(), "{}", cell.display());
    assert!(!cell.join("kmx-out").exists(), "{}", cell.display());
    // The output directory may not be the source itself.
    let same = run_in(&k, &src, &["build", ".", "-o", ".", "-t", "arm64"]).expect(2);
    assert!(
        same.stderr().contains("is the module source"),
        "{}",
        same.stderr()
    );
}

#[test]
fn verify_of_a_build_output_checks_each_module_for_its_own_cells_target() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    k.run(&["build", &hello, "-t", "arm64,armhf"]).ok();
    // No -t: each module is checked for the target its cell names, against its kernel.
    let run = k.run(&["verify", "kmx-out", "--json"]).ok();
    let json = run.json();
    let modules = json["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 2, "{json}");
    for m in modules {
        let path = m["path"].as_str().unwrap();
        let target = if path.contains("/armhf/") {
            "armhf"
        } else {
            "arm64"
        };
        assert_eq!(m["kernel"].as_str().unwrap(), k.release_of(target), "{m}");
        assert_ne!(m["status"], "fail", "{m}");
    }
    assert_eq!(json["totals"]["failed"], 0, "{json}");
    // A module away from its build record: the target whose tree has its release and whose
    // compiler makes its ELF identity.
    let armhf = k.release_of("armhf");
    let loose = k.dir().join("loose.ko");
    std::fs::copy(
        k.dir()
            .join(format!("kmx-out/hello/1.0/{armhf}/armhf/hello.ko")),
        &loose,
    )
    .unwrap();
    let one = k.run(&["verify", "loose.ko", "--json"]).ok().json();
    assert_eq!(one["modules"][0]["kernel"], armhf.as_str(), "{one}");
    // A module no target has a tree for is refused by name, with what to do (exit 2).
    let mut bytes = std::fs::read(&loose).unwrap();
    let at = bytes.windows(9).position(|w| w == b"vermagic=").unwrap();
    bytes[at + 9] = b'9'; // vermagic=9.1.0-... : no such tree
    std::fs::write(k.dir().join("alien.ko"), bytes).unwrap();
    let alien = k.run(&["verify", "alien.ko"]).expect(2);
    assert!(
        alien.stderr().contains("no --target given") && alien.stderr().contains("-t TARGET"),
        "{}",
        alien.stderr()
    );
}

#[test]
fn verify_says_unsigned_per_module_and_the_hint_once() {
    let Some(k) = Kmx::with_trees() else { return };
    k.run(&["build", &fixture("twomods"), "-t", "arm64,armhf"])
        .ok();
    for verbose in [false, true] {
        let args: &[&str] = if verbose {
            &["verify", "kmx-out", "-v"]
        } else {
            &["verify", "kmx-out"]
        };
        let out = k.run(args).ok().stdout();
        let warn_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("WARN ")).collect();
        assert_eq!(warn_lines.len(), 4, "{out}");
        for l in &warn_lines {
            assert!(
                l.ends_with(": signature: unsigned (loads tainted)"),
                "{out}"
            );
        }
        assert_eq!(out.matches("Secure Boot").count(), 1, "{out}");
        assert!(
            out.contains("hint: 4 modules are unsigned: the kernel (CONFIG_MODULE_SIG)"),
            "{out}"
        );
    }
}

#[test]
fn dkms_commands_take_what_they_can_know_and_unbuild_exists() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    k.run(&["add", &hello]).ok();
    let img = k.dir().join("img");
    let (arm64, armhf) = (k.release_of("arm64"), k.release_of("armhf"));
    for r in [&arm64, &armhf] {
        std::fs::create_dir_all(img.join("lib/modules").join(r)).unwrap();
    }
    let root = img.to_str().unwrap();
    // -k RELEASE names the target: no -t needed.
    for r in [&arm64, &armhf] {
        k.run(&["install", "hello", "-k", r, "--root", root]).ok();
    }
    let status = k.run(&["status", "--json"]).ok().json().to_string();
    assert!(
        status.contains("\"arm64\"") && status.contains("\"armhf\""),
        "{status}"
    );
    // uninstall with --root IMG and no -t or -k: every kernel it is installed for there.
    let un = k.run(&["uninstall", "hello", "--root", root]).ok();
    assert_eq!(
        un.stderr().matches("uninstalled hello 1.0").count(),
        2,
        "{}",
        un.stderr()
    );
    assert!(
        !img.join("lib/modules")
            .join(&arm64)
            .join("updates/dkms/hello.ko")
            .exists()
    );
    // Bare autoinstall acts for the running kernel, as `dkms autoinstall` does.
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let auto = k.run(&["autoinstall"]);
    assert!(
        auto.stderr().contains(running.trim()) && !auto.stderr().contains("--kernel"),
        "{}",
        auto.stderr()
    );
    // unbuild, like `dkms unbuild`: the builds go, the source stays registered.
    k.run(&["unbuild", "hello", "-k", &arm64]).ok();
    let left = k.run(&["status", "--json"]).ok().json().to_string();
    assert!(!left.contains(&format!("\"{arm64}\"")), "{left}");
    assert!(left.contains(&format!("\"{armhf}\"")), "{left}");
    k.run(&["unbuild", "hello", "--all"]).ok();
    let table = k.run(&["status"]).ok().stdout();
    assert!(table.contains("added"), "{table}");
    assert!(!table.contains("built"), "{table}");
    // Nothing left to unbuild is said, with what to do (exit 2).
    let none = k.run(&["unbuild", "hello", "--all"]).expect(2);
    assert!(none.stderr().contains("is not built"), "{}", none.stderr());
}

#[test]
fn compiler_errors_name_the_users_file_and_a_shared_first_error_is_said_once() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = hello_source(k.dir(), "broken", "");
    write(
        &src.join("util.c"),
        "int broken(void) { return undefined_thing; }\n",
    );
    write(&src.join("Kbuild"), "obj-m := hello.o\nhello-y := util.o\n");
    std::fs::rename(src.join("hello.c"), src.join("hello_main.c")).unwrap();
    write(
        &src.join("Kbuild"),
        "obj-m := hello.o\nhello-y := hello_main.o util.o\n",
    );
    let run = run_in(&k, &src, &["build", ".", "-t", "arm64,armhf", "--json"]).expect(1);
    let err = run.stderr();
    let user_file = format!("{}/util.c:1:", src.canonicalize().unwrap().display());
    assert!(err.contains(&user_file), "{user_file} not in\n{err}");
    assert!(!err.contains("/var/lib/dkms/"), "{err}");
    for c in run.json()["cells"].as_array().unwrap() {
        assert!(
            c["errors"][0].as_str().unwrap().starts_with(&user_file),
            "{c}"
        );
    }
    // The error once as it happens and once in the summary, not once per cell each time.
    assert_eq!(
        err.matches("'undefined_thing' undeclared").count(),
        2,
        "{err}"
    );
    assert_eq!(
        err.matches("the same first error as hello 1.0").count(),
        2,
        "{err}"
    );
    assert_eq!(
        err.matches("2 cells failed with the same first error, shown under hello 1.0 ")
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn hints_name_what_was_built_whose_release_it_is_and_what_is_not_registered() {
    let Some(k) = Kmx::with_trees() else { return };
    // A wrong BUILT_MODULE_NAME: the module that was built is named.
    let src = hello_source(k.dir(), "wrongname", "BUILT_MODULE_NAME[0]=my_mod\n");
    let run = k
        .run(&["build", src.to_str().unwrap(), "-t", "arm64"])
        .expect(1);
    assert!(
        run.stderr().contains(
            "the build did not produce my_mod.ko (BUILT_MODULE_NAME my_mod, BUILT_MODULE_LOCATION the top of the source): it built hello.ko"
        ),
        "{}",
        run.stderr()
    );
    // Another target's release: that target is named, not a fetch of what is fetched.
    let hello = repo().join("examples/hello").display().to_string();
    let armhf = k.release_of("armhf");
    let run = k
        .run(&["build", &hello, "-t", "arm64", "-k", &armhf])
        .expect(3);
    assert!(
        run.stderr().contains(&format!(
            "{armhf} is target armhf's: build it with --target armhf"
        )),
        "{}",
        run.stderr()
    );
    assert!(!run.stderr().contains("kernels fetch"), "{}", run.stderr());
    // An architecture's other names: aarch64 (uname -m, target-lexicon) is arm64.
    let plan = k
        .run(&["build", &hello, "-t", "aarch64", "--dry-run"])
        .ok()
        .stdout();
    assert!(plan.contains("hello 1.0 arm64 "), "{plan}");
    let both = k
        .run(&["build", &hello, "-t", "arm", "--dry-run"])
        .expect(2);
    assert!(
        both.stderr().contains("armhf") && both.stderr().contains("rpi"),
        "{}",
        both.stderr()
    );
    // A module never registered is said to be so.
    let run = k.run(&["package", "nosuch", "-o", "debs"]).expect(2);
    assert!(
        run.stderr().contains("module `nosuch` is not registered"),
        "{}",
        run.stderr()
    );
}

#[test]
fn targets_says_not_fetched_rather_than_broken_for_a_target_without_trees() {
    let Some(k) = Kmx::with_trees() else { return };
    // This home has trees for i386, amd64, arm64 and armhf only: rpi3 uses Debian's arm64
    // packages, which are fetched.
    let out = k.run(&["targets"]).ok().stdout();
    let rpi3 = out
        .lines()
        .find(|l| l.starts_with("rpi3 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!rpi3.contains("BROKEN"), "{out}");
    assert!(
        rpi3.ends_with(
            "not fetched: run `kmx kernels fetch --target rpi3` (the packages target arm64 fetched: no download)"
        ),
        "{out}"
    );
    let arm64 = out.lines().find(|l| l.starts_with("arm64 ")).unwrap();
    assert!(arm64.contains(" ok "), "{out}");
}

#[test]
fn build_has_cargos_quiet_verbose_and_streaming_json_messages() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    // --message-format json: one object per line on stdout per cell, then the totals.
    let run = k
        .run(&[
            "build",
            &hello,
            "-t",
            "arm64,armhf",
            "--message-format",
            "json",
            "-v",
        ])
        .ok();
    let lines: Vec<serde_json::Value> = run
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout());
    for cell in &lines[..2] {
        assert_eq!(cell["reason"], "cell-finished", "{cell}");
        assert_eq!(cell["status"], "built", "{cell}");
        assert!(cell["artifacts"][0]["file"].is_string(), "{cell}");
    }
    assert_eq!(lines[2]["reason"], "build-finished");
    assert_eq!(lines[2]["success"], true);
    assert_eq!(lines[2]["totals"]["built"], 2);
    // -v: each cell's make line as it starts, as cargo -v shows rustc's.
    assert_eq!(
        run.stderr().matches("     Running hello 1.0 ").count(),
        2,
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains(": `make KERNELRELEASE="),
        "{}",
        run.stderr()
    );
    // -q: no progress and no table; the summary stays.
    let quiet = k
        .run(&["build", &hello, "-t", "arm64", "--force", "-q"])
        .ok();
    let err = quiet.stderr();
    assert!(!err.contains("[1/1]") && !err.contains("MODULE"), "{err}");
    assert!(err.contains("1 built, 0 skipped, 0 failed"), "{err}");
    // --verbose is a flag of build (clap once suggested --version for it).
    k.run(&["build", &hello, "-t", "arm64", "--verbose", "--dry-run"])
        .ok();
    // -o is --out and --output on both commands that write a directory.
    k.run(&[
        "build",
        &hello,
        "-t",
        "arm64",
        "--output",
        "o2",
        "--dry-run",
    ])
    .ok();
    let pkg = k.run(&["package", "nosuch", "--out", "debs"]).expect(2);
    assert!(pkg.stderr().contains("not registered"), "{}", pkg.stderr());
}

#[test]
fn help_names_the_default_targets_kmx_really_uses() {
    let k = Kmx::empty();
    let wanted = kmx::config::load::DEFAULT_TARGETS.join(", ");
    for cmd in ["build", "doctor", "kernels fetch"] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let help = k.run(&args).ok().stdout().replace("\n", " ");
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains(&wanted),
            "kmx {cmd} --help lacks [{wanted}]:\n{help}"
        );
    }
}

#[test]
fn completion_of_target_offers_the_targets() {
    let k = Kmx::empty();
    let bash = k.run(&["completions", "bash"]).ok().stdout();
    // `kmx build -t <TAB>`: the shipped targets, not file names.
    let build = bash
        .split("kmx__subcmd__build)")
        .nth(1)
        .unwrap_or_else(|| panic!("no build section:\n{bash}"));
    let target = build
        .split("--target)")
        .nth(1)
        .and_then(|s| s.lines().nth(1))
        .unwrap_or_else(|| panic!("no --target case:\n{build}"));
    assert!(
        target.contains("compgen -W \"") && target.contains("arm64") && target.contains("rpi3"),
        "{target}"
    );
    // Any other name is still accepted (user profiles, architecture names), and help is
    // unchanged.
    let help = k.run(&["build", "--help"]).ok().stdout();
    assert!(!help.contains("rpi3"), "{help}");
}

#[test]
fn an_error_under_json_is_a_json_document_too() {
    let k = Kmx::empty();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/schemas/kmx.error-1.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for args in [
        &["verify", "nosuch.ko", "--json"][..],
        &["--config-dir", "/nonexistent/kmx-conf", "targets", "--json"][..],
        &["build", "nosuch-dir", "--message-format", "json"][..],
    ] {
        let run = k.run(args).expect(2);
        let doc = run.json();
        assert_eq!(doc["schema"], "kmx.error/1", "{doc}");
        assert_eq!(doc["exit_code"], 2, "{doc}");
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{doc}");
        // The text stays on stderr.
        assert!(run.stderr().starts_with("error: "), "{}", run.stderr());
    }
}

#[test]
fn smoke_without_a_kernel_image_counts_the_module_and_says_what_to_do_once() {
    let Some(k) = Kmx::with_trees() else { return };
    let release = k.release_of("arm64");
    let hello = repo().join("examples/hello").display().to_string();
    k.run(&["build", &hello, "-t", "arm64", "-k", &release, "-q"])
        .ok();
    k.without_images();
    let ko = k
        .dir()
        .join(format!("kmx-out/hello/1.0/{release}/arm64/hello.ko"));
    let run = k.run(&["smoke", ko.to_str().unwrap()]).expect(4);
    // kmx of e6bc50d: the harness failure, then "0 loaded, 0 refused, 0 crashed, 0 not run".
    assert_eq!(
        run.stdout(),
        format!(
            "arm64    {release:<22} HARNESS FAILED: no kernel image for {release}\n  \
             hint: run `kmx kernels fetch --with-image --target arm64`\n  \
             not run  hello\n\
             0 loaded, 0 refused, 0 crashed, 1 not run; 1 kernel not booted (1 harness failed)\n"
        ),
        "{}",
        run.stderr()
    );
    // The JSON report lists the module too.
    let json = k
        .run(&["smoke", "--json", ko.to_str().unwrap()])
        .expect(4)
        .json();
    let modules = &json["boots"][0]["modules"];
    assert_eq!(modules[0]["name"], "hello", "{json:#}");
    assert_eq!(modules[0]["outcome"], "not-run", "{json:#}");
}
