//! Several kernel versions per target, where trees come from (Debian suites or any apt
//! archive given by URL and keyring), and a home that keeps working when moved.

use std::path::Path;

use crate::support::*;

/// The example builds for every default target and every fetched kernel in one run: Debian
/// 12's 6.1 and 6.12 (bookworm, bookworm-security, bookworm-backports; no i386 6.12) for i386, amd64, arm64,
/// armhf and the Raspberry Pi Zero/1 target. Each .ko carries its own tree's vermagic as the
/// tree composes it (the same source built there with plain make, read with kmod's modinfo),
/// which is also what the kernel's own modules carry where its image was fetched, and what
/// `kmx kernels list` computes; `kmx verify` passes it against that tree.
#[test]
fn the_example_builds_for_every_target_and_kernel_version_with_each_trees_vermagic() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    let trees = k.run(&["kernels", "list", "--json"]).ok().json();
    let trees = trees["trees"].as_array().unwrap();
    let default = ["i386", "amd64", "arm64", "armhf", "rpi"];
    let wanted: Vec<(&str, &str, &str, &Path)> = trees
        .iter()
        .filter(|t| default.contains(&t["target"].as_str().unwrap()))
        .map(|t| {
            (
                t["target"].as_str().unwrap(),
                t["release"].as_str().unwrap(),
                t["vermagic"].as_str().unwrap(),
                Path::new(t["kdir"].as_str().unwrap()),
            )
        })
        .collect();
    // What `./dev test` fetched: two kernel versions wherever Debian has them.
    for target in ["amd64", "arm64", "armhf", "rpi"] {
        let series: Vec<&str> = wanted
            .iter()
            .filter(|w| w.0 == target)
            .map(|w| w.1.split('.').take(2).collect::<Vec<_>>().join("."))
            .map(|s| if s.starts_with("6.12") { "6.12" } else { "6.1" })
            .collect();
        assert!(
            series.contains(&"6.1") && series.contains(&"6.12"),
            "{target}: {series:?}"
        );
    }
    assert!(wanted.len() >= 9, "{wanted:?}");
    // The oracle, built while kmx builds.
    let (reference, run) = std::thread::scope(|s| {
        let reference: Vec<_> = wanted
            .iter()
            .map(|(target, _, _, kdir)| s.spawn(move || reference_vermagic(target, kdir)))
            .collect();
        let out = k.dir().join("out");
        let run = k
            .run(&[
                "build",
                repo().join("examples/hello").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .ok();
        let reference: Vec<String> = reference.into_iter().map(|h| h.join().unwrap()).collect();
        (reference, run)
    });
    let said = format!("{}{}", run.stdout(), run.stderr());
    assert!(
        said.contains(&format!("{} built, 0 skipped, 0 failed", wanted.len())),
        "{said}"
    );
    let fetched = fetched_registry(&fetched_home().unwrap());
    let mut against_image = 0;
    for ((target, release, listed, _), expected) in wanted.iter().zip(&reference) {
        assert!(
            expected.starts_with(&format!("{release} ")),
            "{target}: plain make says {expected:?}"
        );
        let dir = k.dir().join(format!("out/hello/1.0/{release}/{target}"));
        assert_eq!(
            modinfo("vermagic", &dir.join("hello.ko")),
            *expected,
            "{target} {release}: kmx's module against plain make's"
        );
        assert_eq!(listed, expected, "{target} {release}: kmx kernels list");
        // The kernel's own modules, where the image was fetched: any module of its tree.
        let modules_dir = fetched["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == *target && t["release"] == *release)
            .and_then(|t| t["boot"]["modules_dir"].as_str())
            .map(|d| registry_path(&fetched_home().unwrap(), d));
        if let Some(modules_dir) = modules_dir {
            // The first module depmod listed.
            let dep = std::fs::read_to_string(modules_dir.join("modules.dep")).unwrap();
            let first = dep.lines().next().unwrap().split(':').next().unwrap();
            let own = modules_dir.join(first);
            assert_eq!(
                modinfo("vermagic", &own),
                *expected,
                "{target} {release}: the image's {}",
                own.display()
            );
            against_image += 1;
        }
        k.run(&["verify", "-t", target, "-k", release, dir.to_str().unwrap()])
            .ok();
    }
    if prerequisites_required() {
        // `./dev test` fetches every default target's images: 6.1 and 6.12 both checked.
        assert_eq!(against_image, wanted.len(), "trees without images");
    }
}

/// A profile (in a config directory) whose trees come from an apt archive given by URL,
/// suite and keyring: Debian's own archive here, as Raspberry Pi OS's or a vendor's would be.
/// Fetched, listed with its source, built; the home then moved keeps a valid registry; an
/// older ABI is pruned and a release removed, with their files.
#[test]
fn an_apt_archive_source_is_fetched_listed_moved_pruned_and_removed() {
    if fetched_home().is_none() {
        return;
    }
    let k = Kmx::empty();
    let conf = k.dir().join("conf");
    write(
        &conf.join("targets/pizero.toml"),
        "kernel_arch = \"arm\"\ntoolchain = \"arm-linux-gnueabi\"\n\
         [kernels]\nfetched = true\n\
         [[kernels.source]]\nname = \"vendor\"\nurl = \"http://deb.debian.org/debian\"\nsuite = \"bookworm\"\n\
         component = \"main\"\nkeyring = \"/usr/share/keyrings/debian-archive-keyring.gpg\"\n\
         arch = \"armel\"\nflavour = \"rpi\"\n",
    );
    let conf = conf.to_str().unwrap();
    let hello = repo().join("examples/hello");
    let hello = hello.to_str().unwrap();

    // A keyring that is not there: a clear error naming it, before any download.
    write(
        &k.dir().join("bad/targets/pizero.toml"),
        "kernel_arch = \"arm\"\ntoolchain = \"arm-linux-gnueabi\"\n[kernels]\nfetched = true\n\
         [[kernels.source]]\nurl = \"http://archive.example/debian\"\nsuite = \"s\"\nkeyring = \"/nonexistent/key.gpg\"\n\
         arch = \"armel\"\nflavour = \"rpi\"\n",
    );
    let bad = k
        .run(&[
            "--config-dir",
            k.dir().join("bad").to_str().unwrap(),
            "kernels",
            "fetch",
            "-t",
            "pizero",
        ])
        .expect(3);
    assert!(
        bad.stderr().contains("/nonexistent/key.gpg is missing")
            && bad.stderr().contains("keyring"),
        "{}",
        bad.stderr()
    );

    // Two ABIs of the source: the newest, then an older one the archive still lists
    // (read from the package lists that fetch downloaded, never written here: the archive
    // drops old ABIs), pinned.
    let fetched = k
        .run(&["--config-dir", conf, "kernels", "fetch", "-t", "pizero"])
        .ok();
    let older = older_abi_listed(&k.home, "armel", "rpi");
    k.run(&[
        "--config-dir",
        conf,
        "kernels",
        "fetch",
        "-t",
        "pizero",
        "--abi",
        &older,
    ])
    .ok();
    let older = older.as_str();
    let list = k
        .run(&["--config-dir", conf, "kernels", "list", "--json"])
        .ok()
        .json();
    let list = list["trees"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}\n{}", fetched.stderr());
    for t in list {
        assert_eq!(t["source"], "vendor bookworm", "{t}");
        assert!(t["error"].is_null(), "{t}");
    }
    let newest = list
        .iter()
        .map(|t| t["release"].as_str().unwrap().to_string())
        .find(|r| !r.starts_with(older))
        .unwrap();
    assert!(
        k.home.join(format!("trees/vendor-{older}")).is_dir(),
        "one sysroot per source and ABI"
    );
    let table = k
        .run(&["--config-dir", conf, "kernels", "list"])
        .ok()
        .stdout();
    assert!(
        table.starts_with("TARGET  KERNEL ") && table.contains("vendor bookworm  yes "),
        "{table}"
    );

    // Moved: the registry's paths follow the home.
    let moved = k.dir().join("moved-home");
    std::fs::rename(&k.home, &moved).unwrap();
    let m = k.env("KMX_HOME", moved.to_str().unwrap());
    let list = m
        .run(&["--config-dir", conf, "kernels", "list", "--json"])
        .ok()
        .json();
    for t in list["trees"].as_array().unwrap() {
        assert!(t["error"].is_null(), "{t}");
        assert!(
            Path::new(t["kdir"].as_str().unwrap()).starts_with(&moved),
            "{t}"
        );
    }
    let out = m.dir().join("out");
    m.run(&[
        "--config-dir",
        conf,
        "build",
        hello,
        "-t",
        "pizero",
        "-k",
        &newest,
        "--out",
        out.to_str().unwrap(),
    ])
    .ok();
    let ko = out.join(format!("hello/1.0/{newest}/pizero/hello.ko"));
    assert!(modinfo("vermagic", &ko).starts_with(&format!("{newest} ")));

    // Prune: the older ABI of the source goes, with its sysroot.
    let said = m
        .run(&["--config-dir", conf, "kernels", "prune"])
        .ok()
        .stdout();
    assert!(
        said.contains(&format!("removed pizero   {older}-rpi")),
        "{said}"
    );
    assert!(!moved.join(format!("trees/vendor-{older}")).exists());
    // Remove: the newest too; nothing of it is left.
    m.run(&["--config-dir", conf, "kernels", "remove", &newest])
        .ok();
    let left: Vec<_> = std::fs::read_dir(moved.join("trees"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["registry.json"]);
    m.run(&["--config-dir", conf, "kernels", "remove", &newest])
        .expect(2);
}

/// The newest ABI but one of `linux-headers-<ABI>-<flavour>` in the `arch` package lists
/// that `kmx kernels fetch` downloaded under `home` (apt-helper reads them compressed).
fn older_abi_listed(home: &Path, arch: &str, flavour: &str) -> String {
    fn find(dir: &Path, suffix: &str, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                find(&p, suffix, out);
            } else if p.to_string_lossy().contains(suffix) {
                out.push(p);
            }
        }
    }
    let mut lists = Vec::new();
    find(home, &format!("_binary-{arch}_Packages"), &mut lists);
    assert!(
        !lists.is_empty(),
        "no {arch} package lists under {}",
        home.display()
    );
    let mut abis = Vec::new();
    for list in &lists {
        let out = std::process::Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(list)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apt-helper cat-file {}",
            list.display()
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(abi) = line
                .strip_prefix("Package: linux-headers-")
                .and_then(|rest| rest.strip_suffix(&format!("-{flavour}")))
                && abi.starts_with(|c: char| c.is_ascii_digit())
            {
                abis.push(abi.to_string());
            }
        }
    }
    let key = |abi: &str| -> Vec<u64> {
        abi.split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().unwrap())
            .collect()
    };
    abis.sort_by_key(|a| key(a));
    abis.dedup();
    assert!(
        abis.len() >= 2,
        "the archive lists one {flavour} ABI only ({abis:?}): nothing older to pin"
    );
    abis[abis.len() - 2].clone()
}
