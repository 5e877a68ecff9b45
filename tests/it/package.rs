//! Packages: `kmx package --format deb` on real built modules, installed into an image root
//! with the real dpkg (its maintainer scripts run the real depmod); kmx's own package
//! (contrib/debian/mkdeb) installed into a fresh root and run from there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Run a program, asserting success; its stdout.
#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg-deb --field DEB FIELD`.
fn field(deb: &Path, name: &str) -> String {
    run_ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// An empty image root with a dpkg database that accepts `arch` packages.
fn image_root(dir: &Path, arch: &str) -> PathBuf {
    let root = dir.join("image");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run_ok(dpkg(&root).args(["--add-architecture", arch]));
    root
}

/// dpkg on the image root, as mmdebstrap's chrootless mode runs it: maintainer scripts run
/// on this machine with DPKG_ROOT set to the root.
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .arg("--force-not-root");
    cmd
}

/// A stand-in for the kernel's image package, which the module packages depend on.
fn kernel_image_package(dir: &Path, release: &str, arch: &str) -> PathBuf {
    let stage = dir.join(format!("image-pkg-{release}"));
    write(
        &stage.join("DEBIAN/control"),
        &format!(
            "Package: linux-image-{release}\nVersion: 6.1.176-1\nArchitecture: {arch}\n\
             Maintainer: test <test@localhost>\nDescription: test stand-in\n"
        ),
    );
    std::fs::create_dir_all(stage.join(format!("lib/modules/{release}/kernel"))).unwrap();
    let deb = dir.join(format!("linux-image-{release}.deb"));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    );
    deb
}

fn modules_dep(root: &Path, release: &str) -> String {
    std::fs::read_to_string(root.join("lib/modules").join(release).join("modules.dep"))
        .unwrap_or_default()
}

#[test]
fn deb_packages_install_into_an_image_root_with_dpkg_and_modinfo_and_modules_dep_find_the_module() {
    let Some(k) = Kmx::with_trees() else { return };
    let (arm64, arm64_magic, _) = k.tree_of("arm64");
    let (armhf, _, _) = k.tree_of("armhf");
    // A second arm64 kernel whose config wants xz modules: the package holds them
    // compressed and signed, as `kmx install` writes them.
    let xz = "6.1.0-98-arm64";
    let xz_kdir = k.variant_tree(
        "arm64",
        xz,
        &[
            ("CONFIG_MODULE_COMPRESS_NONE", "n"),
            ("CONFIG_MODULE_COMPRESS_XZ", "y"),
        ],
    );
    k.run(&["keys", "generate"]).ok();
    k.run(&["add", hello_source(k.dir(), "hello", "").to_str().unwrap()])
        .ok();
    // Built (and installed into a scratch root) by kmx install: what `package` exports.
    let scratch = k.dir().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    for (target, release) in [("arm64", arm64.as_str()), ("arm64", xz), ("armhf", &armhf)] {
        k.run(&[
            "install",
            "hello",
            "-t",
            target,
            "-k",
            release,
            "--root",
            scratch.to_str().unwrap(),
            "--create",
            "--no-depmod",
        ])
        .ok();
    }

    let out = k.dir().join("debs");
    let run = k
        .run(&[
            "package",
            "hello",
            "--format",
            "deb",
            "-t",
            "arm64",
            "-o",
            out.to_str().unwrap(),
        ])
        .ok();
    let plain = out.join(format!("hello-modules-{arm64}_1.0_arm64.deb"));
    let compressed = out.join(format!("hello-modules-{xz}_1.0_arm64.deb"));
    let mut listed: Vec<String> = run.stdout().lines().map(str::to_string).collect();
    listed.sort();
    let mut expected = vec![
        plain.display().to_string(),
        compressed.display().to_string(),
    ];
    expected.sort();
    assert_eq!(listed, expected, "{}", run.stderr());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);

    // The control fields and the files, as dpkg-deb reads them.
    for (deb, release) in [(&plain, arm64.as_str()), (&compressed, xz)] {
        assert_eq!(field(deb, "Package"), format!("hello-modules-{release}"));
        assert_eq!(field(deb, "Version"), "1.0");
        assert_eq!(field(deb, "Architecture"), "arm64");
        assert_eq!(field(deb, "Depends"), format!("linux-image-{release}"));
        let info = run_ok(Command::new("dpkg-deb").arg("--info").arg(deb));
        assert!(
            info.contains(" postinst ") && info.contains(" postrm "),
            "{info}"
        );
        let postinst = run_ok(
            Command::new("dpkg-deb")
                .args(["--info"])
                .arg(deb)
                .arg("postinst"),
        );
        assert!(
            postinst.contains(&format!("depmod -b \"$DPKG_ROOT\" -a {release}")),
            "{postinst}"
        );
    }
    let contents = |deb: &Path| run_ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let listing = contents(&plain);
    assert!(
        listing.contains(&format!("./lib/modules/{arm64}/updates/dkms/hello.ko\n")),
        "{listing}"
    );
    assert!(
        contents(&compressed).contains(&format!("./lib/modules/{xz}/updates/dkms/hello.ko.xz\n")),
        "{}",
        contents(&compressed)
    );
    // -k picks kernels; the armhf package has armhf's Debian architecture.
    let out2 = k.dir().join("debs-armhf");
    k.run(&[
        "package",
        "hello/1.0",
        "-k",
        &armhf,
        "-o",
        out2.to_str().unwrap(),
    ])
    .ok();
    let armhf_deb = out2.join(format!("hello-modules-{armhf}_1.0_armhf.deb"));
    assert_eq!(field(&armhf_deb, "Architecture"), "armhf");

    // Into an image root with dpkg: refused until the kernel's image package is there.
    let root = image_root(k.dir(), "arm64");
    let refused = dpkg(&root).arg("-i").arg(&plain).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("depends on linux-image-{arm64}")),
        "{err}"
    );
    run_ok(
        dpkg(&root)
            .arg("-i")
            .arg(kernel_image_package(k.dir(), &arm64, "arm64"))
            .arg(kernel_image_package(k.dir(), xz, "arm64"))
            .arg(&plain)
            .arg(&compressed),
    );
    let ko = root.join(format!("lib/modules/{arm64}/updates/dkms/hello.ko"));
    assert_eq!(modinfo("vermagic", &ko), arm64_magic);
    assert_eq!(modinfo("signer", &ko), "kmx module signing key");
    // Byte for byte what `kmx install` put into its root.
    assert_eq!(
        std::fs::read(&ko).unwrap(),
        std::fs::read(scratch.join(format!("lib/modules/{arm64}/updates/dkms/hello.ko"))).unwrap()
    );
    assert!(
        modules_dep(&root, &arm64).contains("updates/dkms/hello.ko:"),
        "{}",
        modules_dep(&root, &arm64)
    );
    let kx = root.join(format!("lib/modules/{xz}/updates/dkms/hello.ko.xz"));
    assert!(std::fs::read(&kx).unwrap().starts_with(b"\xfd7zXZ\0"));
    assert_eq!(
        modinfo("vermagic", &kx),
        reference_vermagic("arm64", &xz_kdir)
    );
    assert_eq!(modinfo("signer", &kx), "kmx module signing key");
    assert!(modules_dep(&root, xz).contains("updates/dkms/hello.ko.xz:"));

    // Removing the package removes the module, and postrm's depmod forgets it.
    run_ok(dpkg(&root).args(["-r", &format!("hello-modules-{arm64}")]));
    assert!(!ko.exists());
    assert!(
        !modules_dep(&root, &arm64).contains("hello"),
        "{}",
        modules_dep(&root, &arm64)
    );
}

#[test]
fn package_refuses_what_it_cannot_make_with_a_clear_error() {
    let k = Kmx::empty();
    let out = k.dir().join("debs");
    let run = k
        .run(&["package", "ghost", "-o", out.to_str().unwrap()])
        .expect(2);
    assert!(
        run.stderr().contains("module `ghost` is not registered"),
        "{}",
        run.stderr()
    );
    assert!(!out.exists());
    let run = k
        .run(&["package", "--format", "rpm", "-o", out.to_str().unwrap()])
        .expect(2);
    assert!(
        run.stderr()
            .contains("invalid value 'rpm' for '--format <FORMAT>'"),
        "{}",
        run.stderr()
    );
}

#[test]
fn kmx_deb_installs_into_a_fresh_root_and_runs_version_and_targets_there() {
    let k = Kmx::empty();
    let out = k.dir().join("out");
    // A reader's view of the previous package (a hard link to it): the new one must be
    // written beside it and renamed over it, never written into it (issue 29, item 10).
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    let previous = out.join(format!(
        "kmx_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    write(&previous, "the previous package\n");
    let reader = k.dir().join("reader.deb");
    std::fs::hard_link(&previous, &reader).unwrap();
    let deb = run_ok(
        Command::new(repo().join("contrib/debian/mkdeb"))
            .arg(env!("CARGO_BIN_EXE_kmx"))
            .arg(&out),
    );
    let deb = PathBuf::from(deb.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("kmx_{version}_")),
        "{}",
        deb.display()
    );
    assert_eq!(field(&deb, "Package"), "kmx");
    assert!(
        std::fs::read(&reader).unwrap() == b"the previous package\n",
        "the new package was written into the old one's file, not renamed over it"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "no temporary left"
    );
    // The default rpi target's compiler is recommended with the others.
    let recommends = field(&deb, "Recommends");
    for cc in ["gcc-arm-linux-gnueabihf", "gcc-arm-linux-gnueabi,"] {
        assert!(recommends.contains(cc), "{recommends}");
    }
    // lintian's basics: DEBIAN/md5sums right for every file, and a copyright file.
    let unpacked = k.dir().join("unpacked");
    run_ok(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&unpacked));
    let sums = std::fs::read_to_string(unpacked.join("DEBIAN/md5sums")).unwrap();
    assert!(sums.contains("  usr/bin/kmx\n"), "{sums}");
    run_ok(
        Command::new("md5sum")
            .args(["-c", "--quiet", "DEBIAN/md5sums"])
            .current_dir(&unpacked),
    );
    let copyright = std::fs::read_to_string(unpacked.join("usr/share/doc/kmx/copyright")).unwrap();
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        ),
        "{copyright}"
    );
    let root = k.dir().join("fresh");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // A fresh root has no libc6 or kmod package to satisfy Depends.
    run_ok(dpkg(&root).arg("--force-depends").arg("-i").arg(&deb));

    let kmx = root.join("usr/bin/kmx");
    let v = run_ok(Command::new(&kmx).arg("--version"));
    assert_eq!(v.trim(), format!("kmx {version}"));
    let targets = run_ok(
        Command::new(&kmx)
            .arg("targets")
            .env("KMX_HOME", k.home.as_os_str())
            .env("XDG_CONFIG_HOME", k.dir().join("xdg"))
            .env_remove("KMX_CONFIG_DIR"),
    );
    for t in TARGETS {
        assert!(
            targets.lines().any(|l| l.starts_with(&format!("{t} "))),
            "{t}:\n{targets}"
        );
    }
    // What the package installs besides the binary.
    for f in [
        "usr/share/man/man1/kmx.1.gz",
        "usr/share/man/man1/kmx-build.1.gz",
        "usr/share/man/man1/kmx-package.1.gz",
        "usr/share/bash-completion/completions/kmx",
        "usr/share/zsh/vendor-completions/_kmx",
        "usr/share/fish/vendor_completions.d/kmx.fish",
        "usr/share/kmx/targets/arm64.toml",
        "usr/share/kmx/toolchains/aarch64-linux-gnu.toml",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    // postinst.d's runs before initramfs-tools (run-parts' lexical order), as DKMS's does.
    let hooks = ["postinst.d/50-kmx", "header_postinst.d/kmx", "prerm.d/kmx"];
    for hook in hooks {
        let path = root.join("etc/kernel").join(hook);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(repo().join("contrib/kernel").join(hook)).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    let conffiles = run_ok(
        Command::new("dpkg-query")
            .arg(format!("--root={}", root.display()))
            .args(["-W", "-f", "${Conffiles}", "kmx"]),
    );
    for hook in hooks {
        assert!(
            conffiles.contains(&format!("/etc/kernel/{hook}")),
            "{hook}: {conffiles}"
        );
    }
    let page = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man1/kmx-build.1.gz"))
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0"),
    );
    assert!(page.contains("kmx-build"), "{page}");
}
