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
