//! Reproducible builds: the same inputs give the same bytes wherever the source and the
//! output directory are and however many jobs run; a cell restored from the cache has the
//! bytes of a fresh build; `kmx provenance check` rebuilds a cell from its record and names
//! what differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The targets the builds compared here are made for: a 64-bit ARM and a 32-bit x86 cross
/// compiler (every target is built by the rest of the suite; what differs between two builds
/// does not depend on which).
const TWO: &str = "arm64,i386";

/// Copy `from` to `to` (cp -a: modes kept, as a checkout would).
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Every `.ko` under `out`, by its path relative to `out`, with its bytes.
fn modules(out: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &Path, found: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == ".work" || name == "logs" {
                continue;
            }
            if p.is_dir() {
                walk(&p, out, found);
            } else if p.extension().is_some_and(|x| x == "ko") {
                found.insert(
                    p.strip_prefix(out).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(out, out, &mut found);
    found
}

fn assert_same(a: &Path, b: &Path) -> usize {
    let (ma, mb) = (modules(a), modules(b));
    assert!(!ma.is_empty(), "no modules under {}", a.display());
    assert_eq!(
        ma.keys().collect::<Vec<_>>(),
        mb.keys().collect::<Vec<_>>(),
        "not the same modules"
    );
    for (path, bytes) in &ma {
        assert!(bytes == &mb[path], "{} differs", path.display());
    }
    ma.len()
}

#[test]
fn the_same_inputs_give_the_same_bytes_wherever_and_however_they_are_built() {
    let Some(k) = Kmx::with_trees() else { return };
    let packages = [
        repo().join("examples/hello"),
        PathBuf::from(fixture("xsubdir")), // three modules in subdirectories, cross-module CRCs
        PathBuf::from(fixture("filemacro")), // __FILE__ in two directories
    ];
    let build = |sources: &Path, out: &str, jobs: &str| {
        let mut args: Vec<String> = [
            "build",
            "--no-cache",
            "--jobs",
            jobs,
            "--out",
            out,
            "--target",
            TWO,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in &packages {
            let dir = sources.join(p.file_name().unwrap());
            copy(p, &dir);
            args.push(dir.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = k
            .command(&args)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    };
    build(&k.dir().join("a"), "out-a", "1");
    build(
        &k.dir().join("b/somewhere/much/deeper"),
        "elsewhere/out-b",
        "2",
    );
    let n = assert_same(&k.dir().join("out-a"), &k.dir().join("elsewhere/out-b"));
    assert_eq!(
        n,
        2 * 5,
        "hello, three xsubdir modules and filemacro for two targets"
    );
    // The provenance records agree on every input and output.
    let record = |out: &str| -> serde_json::Value {
        let path = k.dir().join(out).join(format!(
            "filemacro/1.0/{}/arm64/provenance.json",
            k.release_of("arm64")
        ));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let (a, b) = (record("out-a"), record("elsewhere/out-b"));
    assert_eq!(a["schema"], "kmx.provenance/1");
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    assert_eq!(a["outputs"], b["outputs"]);
    assert_ne!(a["inputs"]["source"]["dir"], b["inputs"]["source"]["dir"]);
}

#[test]
fn a_cell_restored_from_the_cache_has_the_bytes_of_a_fresh_build() {
    let Some(k) = Kmx::with_trees() else { return };
    let src = fixture("xsubdir");
    k.run(&["build", &src, "--out", "first"]).ok();
    // Elsewhere, from the cache: every cell fresh, nothing compiled.
    let run = k.run(&["build", &src, "--out", "cached", "--json"]).ok();
    assert_eq!(run.json()["totals"]["restored"], 4, "{}", run.stdout());
    k.run(&["cache", "clean"]).ok();
    let run = k.run(&["build", &src, "--out", "fresh", "--json"]).ok();
    assert_eq!(run.json()["totals"]["built"], 4, "{}", run.stdout());
    assert_eq!(
        assert_same(&k.dir().join("cached"), &k.dir().join("fresh")),
        12
    );
    // The restored cell has its provenance record too, with the fresh build's outputs.
    let read = |out: &str| -> serde_json::Value {
        let p = k.dir().join(out).join(format!(
            "xsubdir/1.0/{}/armhf/provenance.json",
            k.release_of("armhf")
        ));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    assert_eq!(read("cached")["outputs"], read("fresh")["outputs"]);
    // And the report carries it.
    let cell = &run.json()["cells"][0];
    assert_eq!(cell["provenance"]["schema"], "kmx.provenance/1", "{cell}");
}

#[test]
fn provenance_check_reproduces_a_cell_and_names_what_differs() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = k.dir().join("hello");
    copy(&repo().join("examples/hello"), &hello);
    let stamped = k.dir().join("stamped");
    copy(Path::new(&fixture("stamped")), &stamped);
    let (hello, stamped) = (hello.to_str().unwrap(), stamped.to_str().unwrap());
    k.run(&["build", hello, stamped, "-t", "arm64"]).ok();
    let record = |m: &str| {
        k.dir()
            .join("kmx-out")
            .join(m)
            .join(format!(
                "1.0/{}/arm64/provenance.json",
                k.release_of("arm64")
            ))
            .display()
            .to_string()
    };
    let run = k.run(&["provenance", "check", &record("hello")]).ok();
    assert!(
        run.stdout().starts_with(&format!(
            "hello 1.0 arm64 {}: reproduced\n",
            k.release_of("arm64")
        )),
        "{}",
        run.stdout()
    );
    // A PRE_BUILD that stamps the time: the rebuild differs, and says where and why.
    let run = k
        .run(&["provenance", "check", &record("stamped")])
        .expect(1);
    let text = run.stdout();
    assert!(
        text.starts_with(&format!(
            "stamped 1.0 arm64 {}: NOT reproduced\n  stamped.ko: recorded ",
            k.release_of("arm64")
        )),
        "{text}"
    );
    assert!(text.contains("    sections that differ: "), "{text}");
    assert!(text.contains(".rodata"), "{text}");
    assert!(
        text.contains("    it embeds a date or time: \"built at "),
        "{text}"
    );
    // Other inputs than the recorded ones: refused, naming them.
    write(&Path::new(hello).join("hello.c"), "// changed\n");
    let run = k.run(&["provenance", "check", &record("hello")]).expect(2);
    assert!(
        run.stderr()
            .contains("this machine's inputs are not the recorded ones (different: source)"),
        "{}",
        run.stderr()
    );
}

/// `ccache --print-stats` counters summed over every module's directory of kmx's compiler
/// cache in `home` (`--zero` zeroes them first and returns nothing).
fn compiler_cache_stats(home: &Path, zero: bool) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    let dirs = std::fs::read_dir(home.join("cache/ccache")).expect("no compiler cache");
    for dir in dirs.flatten().filter(|e| e.path().is_dir()) {
        let out = Command::new("ccache")
            .arg(if zero { "-z" } else { "--print-stats" })
            .env("CCACHE_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once('\t')
                && let Ok(n) = v.parse::<u64>()
            {
                *sums.entry(k.to_string()).or_default() += n;
            }
        }
    }
    sums
}

/// kmx's compiler cache (ccache, by default where it is installed, as `./dev setup` does)
/// gives a build from a warm cache the bytes of a cold build and of a build without it:
/// `__FILE__` in two directories (filemacro; ccache's `base_dir` would change it) and three
/// modules built by separate makes (xsubdir), for two targets.
#[test]
fn a_warm_compiler_cache_gives_the_bytes_of_a_cold_build_and_of_one_without_it() {
    let Some(k) = Kmx::with_trees() else { return };
    if !has_ccache() {
        return;
    }
    let (filemacro, xsubdir) = (fixture("filemacro"), fixture("xsubdir"));
    let build = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            &filemacro,
            &xsubdir,
            "--no-cache",
            "--out",
            out,
            "--target",
            TWO,
        ];
        args.extend(extra);
        k.run(&args).ok();
    };
    build("cold", &[]);
    let cold = compiler_cache_stats(&k.home, false);
    assert!(cold["cache_miss"] >= 2 * 4 * 2, "{cold:?}");
    compiler_cache_stats(&k.home, true);
    build("warm", &[]);
    let warm = compiler_cache_stats(&k.home, false);
    // Every translation unit (a .c and a .mod.c per module) came from the cache.
    assert_eq!(warm["cache_miss"], 0, "{warm:?}");
    assert!(warm["direct_cache_hit"] >= 2 * 4 * 2, "{warm:?}");
    build("none", &["--no-compiler-cache"]);
    let none = compiler_cache_stats(&k.home, false);
    assert_eq!(none, warm, "a build without the cache used it");
    assert_eq!(
        assert_same(&k.dir().join("cold"), &k.dir().join("warm")),
        2 * 4
    );
    assert_eq!(
        assert_same(&k.dir().join("cold"), &k.dir().join("none")),
        2 * 4
    );
}
