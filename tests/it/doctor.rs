//! The foundation: profiles, trees, doctor, and their errors.

use crate::support::*;

#[test]
fn doctor_finds_four_usable_targets_whose_vermagic_matches_real_modules() {
    let Some(k) = Kmx::with_trees() else { return };
    // The four targets this home has trees for (the default set also has rpi).
    let four = "i386,amd64,arm64,armhf";
    let run = k.run(&["doctor", "--json", "-t", four]).ok();
    let report = run.json();
    assert_eq!(report["schema"], "kmx.doctor/1");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 4);
    for t in targets {
        let name = t["target"].as_str().unwrap();
        assert_eq!(t["usable"], true, "{name}: {t}");
        assert_eq!(t["compiler"]["version"], "12.2.0", "{name}");
        let tree = &t["trees"][0];
        let kdir = tree["kdir"].as_str().unwrap();
        let vermagic = tree["vermagic"].as_str().unwrap();
        // Build the example with plain make against that tree and compare.
        let build = k.dir().join(format!("plain-{name}"));
        std::fs::create_dir_all(&build).unwrap();
        for f in ["hello.c", "Kbuild"] {
            std::fs::copy(repo().join("examples/hello").join(f), build.join(f)).unwrap();
        }
        plain_make(name, std::path::Path::new(kdir), &build);
        assert_eq!(
            modinfo("vermagic", &build.join("hello.ko")),
            vermagic,
            "{name}"
        );
    }
    let text = k.run(&["doctor", "-t", four]).ok().stdout();
    assert!(text.ends_with("4 of 4 targets usable\n"), "{text}");
    assert!(
        text.starts_with("host: sandbox ok (bubblewrap")
            && text.contains("\nhost: all 14 tools kmx runs are installed\n"),
        "{text}"
    );
}

/// A machine without the programs kmx runs: doctor names each with what needs it and the
/// one apt-get line, and a missing make leaves no target usable.
#[test]
fn doctor_names_missing_host_tools_with_the_packages_to_install() {
    let Some(k) = Kmx::with_trees() else { return };
    // Only bash and the cross compiler on PATH (sbin is searched too: keep it out).
    let bin = k.dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for p in ["bash", "aarch64-linux-gnu-gcc-12"] {
        let real = which(p);
        std::os::unix::fs::symlink(real, bin.join(p)).unwrap();
    }
    let k = k.env("PATH", bin.to_str().unwrap());
    let run = k.run(&["doctor", "-t", "arm64"]).expect(1);
    let text = run.stdout();
    for line in [
        "host: make not found (REQUIRED): needed by every build",
        "host: patch not found: needed by PATCH directives and kmx.toml patches",
        "host: cpio not found: needed by kmx smoke (the guest's initramfs)",
        "host: pahole not found: needed by BTF in modules for trees with CONFIG_DEBUG_INFO_BTF_MODULES and a vmlinux",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    assert!(!text.contains("host: bash not found"), "{text}");
    assert!(text.ends_with("0 of 1 targets usable\n"), "{text}");
}

fn which(program: &str) -> std::path::PathBuf {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn missing_toolchain_is_one_line_with_the_package_to_install() {
    let Some(k) = Kmx::with_trees() else { return };
    let cfg = k.dir().join("cfg");
    write(
        &cfg.join("toolchains/aarch64-linux-gnu.toml"),
        "triple = \"aarch64-linux-gnu\"\ncross_compile = \"kmx-missing-\"\ndebian_package = \"gcc-kmx-missing\"\n",
    );
    let run = k
        .run(&[
            "--config-dir",
            cfg.to_str().unwrap(),
            "doctor",
            "--target",
            "arm64",
        ])
        .expect(1);
    let text = run.stdout();
    assert!(
        text.contains(
            "  compiler  kmx-missing-gcc-12 not found\n  hint: apt-get install gcc-kmx-missing\n"
        ),
        "{text}"
    );
}

#[test]
fn unknown_key_in_a_profile_names_file_and_line() {
    let k = Kmx::empty();
    let cfg = k.dir().join("cfg");
    write(
        &cfg.join("targets/pi.toml"),
        "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\nflavor = \"v8\"\n",
    );
    let run = k
        .run(&["--config-dir", cfg.to_str().unwrap(), "targets"])
        .expect(2);
    let err = run.stderr();
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with("error: ")
            && first.contains("cfg/targets/pi.toml:3:1: unknown field `flavor`, expected one of"),
        "{err}"
    );
}

#[test]
fn bad_triple_names_file_and_line() {
    let k = Kmx::empty();
    let cfg = k.dir().join("cfg");
    write(
        &cfg.join("toolchains/bad.toml"),
        "triple = \"armv99-linux-gnu\"\n",
    );
    let run = k
        .run(&["--config-dir", cfg.to_str().unwrap(), "targets"])
        .expect(2);
    let err = run.stderr();
    assert!(
        err.contains("cfg/toolchains/bad.toml:1:10: invalid GNU triple `armv99-linux-gnu`"),
        "{err}"
    );
    assert!(err.contains("hint: write a triple such as"), "{err}");
}

/// A target profile pointing at `kdir`, in a config dir.
fn target_at(k: &Kmx, kdir: &std::path::Path) -> String {
    let cfg = k.dir().join("cfg");
    write(
        &cfg.join("targets/board.toml"),
        &format!(
            "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\n[kernels]\npaths = [\"{}\"]\n",
            kdir.display()
        ),
    );
    cfg.display().to_string()
}

#[test]
fn broken_trees_are_reported_with_what_to_do() {
    let k = Kmx::empty();
    let cases = [
        (
            "no-utsrelease",
            vec![(".config", "CONFIG_ARM64=y\n")],
            "include/generated/utsrelease.h",
        ),
        (
            "no-config",
            vec![(
                "include/generated/utsrelease.h",
                "#define UTS_RELEASE \"6.1.0-50-arm64\"\n",
            )],
            ".config",
        ),
    ];
    for (name, files, missing) in cases {
        let kdir = k.dir().join(name);
        for (f, text) in files {
            write(&kdir.join(f), text);
        }
        let cfg = target_at(&k, &kdir);
        let run = k
            .run(&["--config-dir", &cfg, "doctor", "--target", "board"])
            .expect(1);
        let text = run.stdout();
        assert!(
            text.contains(missing) && text.contains("hint:"),
            "{name}: {text}"
        );
        assert!(text.contains("board (): UNUSABLE"), "{text}");
    }
}

#[test]
fn tree_with_foreign_host_tools_is_unusable() {
    let k = Kmx::empty();
    let kdir = k.dir().join("foreign");
    write(&kdir.join(".config"), "CONFIG_ARM64=y\nCONFIG_SMP=y\n");
    write(
        &kdir.join("include/generated/utsrelease.h"),
        "#define UTS_RELEASE \"6.1.0-50-arm64\"\n",
    );
    // ELF64 LSB header of an AArch64 executable.
    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    elf[16] = 2; // ET_EXEC
    elf[18] = 183; // EM_AARCH64
    for tool in ["scripts/basic/fixdep", "scripts/mod/modpost"] {
        std::fs::create_dir_all(kdir.join(tool).parent().unwrap()).unwrap();
        std::fs::write(kdir.join(tool), &elf).unwrap();
    }
    let cfg = target_at(&k, &kdir);
    let text = k
        .run(&["--config-dir", &cfg, "doctor", "--target", "board"])
        .expect(1)
        .stdout();
    assert!(
        text.contains("scripts/basic/fixdep: is built for AArch64, this host is x86-64"),
        "{text}"
    );
    assert!(
        text.contains("hint: the tree's host tools were built for another machine"),
        "{text}"
    );
}

#[test]
fn unknown_target_suggests_a_name() {
    let k = Kmx::empty();
    let run = k.run(&["doctor", "--target", "arm46"]).expect(2);
    assert_eq!(
        run.stderr(),
        "error: unknown target `arm46`\n  hint: did you mean `arm64`? Known targets: amd64, arm64, armhf, i386, rpi, rpi3, rpi4\n"
    );
}

#[test]
fn fetch_from_an_unreachable_mirror_says_so() {
    let k = Kmx::empty();
    // Nothing listens on the discard port of the loopback address.
    let run = k
        .run(&[
            "kernels",
            "fetch",
            "--target",
            "arm64",
            "--mirror",
            "http://127.0.0.1:9/debian",
        ])
        .expect(3);
    let err = run.stderr();
    assert!(err.contains("error: cannot update the package lists of debian bookworm from http://127.0.0.1:9/debian\n  caused by: Err:1 http://127.0.0.1:9/debian bookworm InRelease"), "{err}");
    assert!(
        err.contains("hint: kmx needs the network to reach the archive"),
        "{err}"
    );
    // Nothing was registered.
    assert!(!k.home.join("trees/registry.json").exists());
}

/// Issue 10, item 4: a CONFIG_MODVERSIONS tree without Module.symvers builds modules with
/// an empty __versions, which the kernel refuses: doctor calls it a problem and says what
/// to do.
#[test]
fn doctor_flags_a_modversions_tree_without_module_symvers() {
    let Some(k) = Kmx::with_trees() else { return };
    let kdir = k.variant_tree("amd64", "6.1.0-99-amd64", &[]);
    std::fs::remove_file(kdir.join("Module.symvers")).unwrap();
    let text = k.run(&["doctor", "-t", "amd64"]).ok().stdout();
    let line = format!(
        "  tree      {}: the kernel has CONFIG_MODVERSIONS but the tree has no Module.symvers: modules built against it get no symbol CRCs and the kernel refuses them (\"no symbol version for module_layout\")",
        kdir.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("hint: copy the kernel's Module.symvers into the tree"),
        "{text}"
    );
    // And a build against it does not count the cell as built: modpost left __versions
    // empty, which the kernel refuses.
    let hello = repo().join("examples/hello");
    let run = k.run(&[
        "build",
        hello.to_str().unwrap(),
        "-t",
        "amd64",
        "-k",
        "6.1.0-99-amd64",
        "--no-cache",
    ]);
    let all = format!("{}{}", run.stdout(), run.stderr());
    assert_ne!(run.code(), 0, "{all}");
    assert!(
        all.contains("modversions: no symbol version for module_layout: __versions is empty"),
        "{all}"
    );
}

/// A configuration directory that does not exist was silently ignored (a typo then used
/// the shipped profiles without a word).
#[test]
fn a_missing_config_dir_is_a_usage_error_naming_it() {
    let k = Kmx::empty();
    let missing = k.dir().join("no-such-conf");
    let run = k
        .run(&["--config-dir", missing.to_str().unwrap(), "targets"])
        .expect(2);
    assert!(
        run.stderr().starts_with(&format!(
            "error: {}: the configuration directory does not exist",
            missing.display()
        )),
        "{}",
        run.stderr()
    );
}

#[test]
fn kernels_list_puts_target_before_kernel_and_lines_up_every_column() {
    let Some(k) = Kmx::with_trees() else { return };
    let text = k.run(&["kernels", "list"]).ok().stdout();
    let head = text.lines().next().unwrap();
    assert!(head.starts_with("TARGET  KERNEL  "), "{text}");
    let (magic, symvers) = (
        head.find("VERMAGIC").unwrap(),
        head.find("SYMVERS").unwrap(),
    );
    assert_eq!(text.lines().count(), 5, "{text}");
    for line in text.lines().skip(1) {
        assert_eq!(&line[magic..magic + 1], "\"", "{text}");
        assert_eq!(&line[symvers - 2..symvers + 3], "  yes", "{text}");
    }
}

/// A tree whose kernel was built with a compiler this machine lacks (Debian 13's gcc-14 on
/// Debian 12; here a gcc-99 no machine has) is refused by `kmx doctor` for that tree, with
/// the compiler its kernel was built with, and by `kmx build`: never built with another gcc.
/// The control: the target's other tree stays usable.
#[test]
fn a_tree_whose_compiler_is_missing_is_refused_not_built_with_another_gcc() {
    let Some(k) = Kmx::with_trees() else { return };
    let kdir = k.variant_tree(
        "arm64",
        "6.12.117+deb13-arm64",
        &[(
            "CONFIG_CC_VERSION_TEXT",
            "\"aarch64-linux-gnu-gcc-99 (Debian 99.1.0-1) 99.1.0\"",
        )],
    );
    let kv = kdir.join(".kernelvariables");
    let vars = std::fs::read_to_string(&kv)
        .unwrap()
        .replace("gcc-12", "gcc-99");
    assert!(vars.contains("$(CROSS_COMPILE)gcc-99"), "{vars}");
    std::fs::write(&kv, vars).unwrap();
    let run = k.run(&["doctor", "-t", "arm64"]).ok();
    let out = run.stdout();
    assert!(
        out.contains("aarch64-linux-gnu-gcc-99 not found: kernel 6.12.117+deb13-arm64 was built with \"aarch64-linux-gnu-gcc-99 (Debian 99.1.0-1) 99.1.0\", and kmx builds its modules with that compiler only"),
        "{out}"
    );
    assert!(
        out.contains("arm64 (AArch64, Debian arm64 kernels): ok"),
        "{out}"
    );
    let built = k
        .run(&[
            "build",
            repo().join("examples/hello").to_str().unwrap(),
            "-t",
            "arm64",
            "-k",
            "6.12.117+deb13-arm64",
            "--out",
            k.dir().join("out").to_str().unwrap(),
        ])
        .expect(3);
    assert!(
        built.stderr().contains(
            "aarch64-linux-gnu-gcc-99 not found: kernel 6.12.117+deb13-arm64 was built with"
        ),
        "{}",
        built.stderr()
    );
    assert!(!k.dir().join("out/hello").exists());
    // Without -k: that tree is left out, said once; the target's other trees build.
    let all = k
        .run(&[
            "build",
            repo().join("examples/hello").to_str().unwrap(),
            "-t",
            "arm64",
            "--out",
            k.dir().join("out").to_str().unwrap(),
        ])
        .ok();
    let err = all.stderr();
    assert!(
        err.contains(
            "warning: leaving out a kernel tree of arm64: aarch64-linux-gnu-gcc-99 not found"
        ),
        "{err}"
    );
    assert!(!err.contains("6.12.117+deb13-arm64 (0."), "{err}");
    assert!(k.dir().join("out/hello/1.0").is_dir(), "{err}");
}
