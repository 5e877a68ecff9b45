//! README.md's examples are checked output (issue 29, item 6): every ```console block
//! preceded by the line `<!-- checked -->` is run, in README order, as one user session on
//! the fetched trees, and what kmx prints must be what the README shows.
//!
//! The session: `HOME` is a scratch directory shown as `/home/me`; `~/kmx` (where every
//! command runs) holds copies of the repository's `examples/` and `tests/fixtures/modules`, as
//! a checkout would; `KMX_HOME` is a fresh home shown as `/var/lib/kmx` whose registry holds
//! what a fresh `kmx kernels fetch` registers (the five default targets, the newest ABI of
//! each kernel series; the trees themselves are the fetched home's, also shown as
//! `/var/lib/kmx`); `~/kmx/rootfs` is the arm64 image of the install example (each arm64
//! kernel's `lib/modules/<release>/kernel/lib/crc7.ko` from its fetched kernel image);
//! `KMX_JOBS=2` (the README's machine has two cores). Each `$ COMMAND` line
//! runs with `bash -c` (so `>` works), stderr into the same pipe as stdout, as a terminal
//! shows them; its output is the lines up to the next `$ ` line.
//!
//! Comparison, after [`normalise`] (nothing else is forgiven): a line `...` in the README
//! stands for any number of lines; a run of `[i/N]` progress lines is compared as a set
//! (cells finish in whatever order the machine makes).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The marker a checked block follows.
const MARKER: &str = "<!-- checked -->";

/// One `$ COMMAND` of a checked block and the output the README shows for it.
#[derive(Debug)]
struct Example {
    /// README.md's line number of the command.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The examples of every checked block, in README order. A marker not followed by a
/// console block, or a checked block with no command, is an error (a typo must not turn
/// the check off).
fn checked_examples(readme: &str) -> Vec<Example> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut examples = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != MARKER {
            i += 1;
            continue;
        }
        assert_eq!(
            lines.get(i + 1).copied(),
            Some("```console"),
            "README.md:{}: {MARKER} must be followed by a ```console block",
            i + 1
        );
        i += 2;
        let before = examples.len();
        while i < lines.len() && lines[i] != "```" {
            let line = lines[i];
            if let Some(command) = prompt(line) {
                // `cmd   # a remark` keeps `cmd`.
                let command = match command.split_once("  #") {
                    Some((c, _)) => c.trim_end(),
                    None => command,
                };
                examples.push(Example {
                    line: i + 1,
                    command: command.to_string(),
                    expected: Vec::new(),
                });
            } else {
                let example = examples[before..].last_mut().unwrap_or_else(|| {
                    panic!("README.md:{}: a checked block starts with a command", i + 1)
                });
                example.expected.push(line.to_string());
            }
            i += 1;
        }
        assert!(examples.len() > before, "README.md: empty checked block");
    }
    examples
}

/// The command of a prompt line: `$ cmd` or `~/dir$ cmd` (always run in `~/kmx`).
fn prompt(line: &str) -> Option<&str> {
    line.strip_prefix("$ ")
        .or_else(|| line.strip_prefix("~/kmx$ "))
}

/// What varies between two runs of the same example, and only that: the scratch paths
/// (shown as the README's `/home/me` and `/var/lib/kmx`), durations, the order of
/// `[i/N]` progress lines, and the note of a boot that `kmx smoke` ran a second time
/// because the first hung or died before `/init` (an emulated board's rare failure on a
/// loaded host).
fn normalise(text: &str, paths: &[(&str, &str)]) -> Vec<String> {
    let mut text = text.to_string();
    for (from, to) in paths {
        text = text.replace(from, to);
    }
    let seconds = regex::Regex::new(r"\b\d+\.\d+( ?)s\b").unwrap();
    let progress = regex::Regex::new(r"^\[\d+/(\d+)\]").unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("  note: booted a second time: "))
        .map(|l| {
            let l = seconds.replace_all(l, "<T>${1}s");
            progress.replace(&l, "[*/$1]").into_owned()
        })
        .collect();
    // Sort each run of progress lines.
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        while i < lines.len() && lines[i].starts_with("[*/") {
            i += 1;
        }
        lines[start..i].sort();
        i = i.max(start + 1);
    }
    lines
}

/// Whether `actual` is `expected`, where an `...` line of `expected` matches any lines.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => (0..=actual.len()).any(|n| matches(rest, &actual[n..])),
        Some((e, rest)) => actual.first() == Some(e) && matches(rest, &actual[1..]),
    }
}

/// The fetched registry as a fresh `kmx kernels fetch` leaves it: the five default
/// targets, the newest ABI of each kernel series (kmx's own series: `6.1`, `6.12+deb12`,
/// `6.12+deb13`) per target.
fn fresh_fetch_registry(fetched: &Path) -> serde_json::Value {
    let mut reg = registry_of(fetched);
    let key = |release: &str| -> Vec<u64> {
        release
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect()
    };
    let series = |t: &serde_json::Value| kmx::kernel::fetch::abi_series(t["abi"].as_str().unwrap());
    let trees = reg["trees"].as_array_mut().unwrap();
    let defaults = ["i386", "amd64", "arm64", "armhf", "rpi"];
    trees.retain(|t| defaults.contains(&t["target"].as_str().unwrap()));
    let all = trees.clone();
    trees.retain(|t| {
        let k = key(t["release"].as_str().unwrap());
        !all.iter().any(|o| {
            o["target"] == t["target"]
                && series(o) == series(t)
                && key(o["release"].as_str().unwrap()) > k
        })
    });
    reg
}

/// A session as the README tells it; the paths to show as the README's.
struct Session {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    kmx_home: PathBuf,
    bin: PathBuf,
    paths: Vec<(String, String)>,
}

impl Session {
    fn new(fetched: &Path) -> Session {
        let tmp = tempfile::Builder::new()
            .prefix("kmx-readme-")
            .tempdir()
            .unwrap();
        let home = tmp.path().join("me");
        let kmx_home = tmp.path().join("kmx-home");
        let bin = tmp.path().join("bin");
        let checkout = home.join("kmx");
        std::fs::create_dir_all(checkout.join("tests/fixtures")).unwrap();
        std::fs::create_dir_all(kmx_home.join("trees")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kmx"), bin.join("kmx")).unwrap();
        for (from, to) in [
            ("examples", "examples"),
            ("tests/fixtures/modules", "tests/fixtures/modules"),
        ] {
            let ok = Command::new("cp")
                .arg("-a")
                .arg(repo().join(from))
                .arg(checkout.join(to))
                .status()
                .unwrap()
                .success();
            assert!(ok, "cp -a {from}");
        }
        let registry = fresh_fetch_registry(fetched);
        // `./rootfs`, the arm64 image the install example installs into: for each arm64
        // kernel, one module of its own (crc7) where Debian's image has it.
        for t in registry["trees"].as_array().unwrap() {
            if t["target"] != "arm64" {
                continue;
            }
            let release = t["release"].as_str().unwrap();
            let modules = Path::new(t["boot"]["modules_dir"].as_str().unwrap_or_else(|| {
                panic!("{release}: no kernel image (`kmx kernels fetch --with-image`)")
            }));
            let crc7 = ["crc7.ko", "crc7.ko.xz"]
                .iter()
                .map(|f| Path::new("kernel/lib").join(f))
                .find(|f| modules.join(f).is_file())
                .unwrap_or_else(|| panic!("{}: no kernel/lib/crc7.ko", modules.display()));
            let dest = checkout
                .join("rootfs/lib/modules")
                .join(release)
                .join(&crc7);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(modules.join(&crc7), &dest).unwrap();
        }
        std::fs::write(kmx_home.join("trees/registry.json"), registry.to_string()).unwrap();
        let shown = |p: &Path| p.display().to_string();
        // Longest first: the session's home is inside the scratch directory.
        let mut paths = vec![
            (shown(&kmx_home), "/var/lib/kmx".to_string()),
            (shown(&home), "/home/me".to_string()),
            (shown(fetched), "/var/lib/kmx".to_string()),
        ];
        paths.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Session {
            _tmp: tmp,
            home,
            kmx_home,
            bin,
            paths,
        }
    }

    /// Run one example's command; its output (stdout and stderr as one stream) with the
    /// README's paths, as printed and normalised.
    fn run(&self, command: &str) -> (String, Vec<String>) {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>&1; {command}"))
            .current_dir(self.home.join("kmx"))
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("KMX_HOME", &self.kmx_home)
            .env("KMX_JOBS", "2")
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap();
        let paths: Vec<(&str, &str)> = self
            .paths
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let mut shown = String::from_utf8_lossy(&out.stdout).into_owned();
        for (from, to) in &paths {
            shown = shown.replace(from, to);
        }
        let normalised = normalise(&shown, &[]);
        (shown, normalised)
    }
}

#[test]
fn readme_examples_are_what_kmx_prints() {
    let Some(fetched) = fetched_home() else {
        return;
    };
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let examples = checked_examples(&readme);
    let session = Session::new(&fetched);
    let mut drifted = Vec::new();
    for ex in &examples {
        let (shown, actual) = session.run(&ex.command);
        let expected = normalise(&ex.expected.join("\n"), &[]);
        if !matches(&expected, &actual) {
            drifted.push(format!(
                "README.md:{}: $ {}\n--- README shows\n{}\n--- kmx printed\n{shown}",
                ex.line,
                ex.command,
                ex.expected.join("\n"),
            ));
        }
    }
    assert!(
        drifted.is_empty(),
        "{} of {} README examples differ from what kmx prints:\n\n{}",
        drifted.len(),
        examples.len(),
        drifted.join("\n\n")
    );
}

#[test]
fn a_drifted_line_fails_and_the_normalisation_forgives_only_what_varies() {
    // The README's own comparison, on a block as it would appear.
    let readme = "text\n<!-- checked -->\n```console\n$ kmx build x   # a remark\n\
                  Building 2 cells\n...\n[1/2] built a (1.0s)\n[2/2] built b (12.5s)\n\
                  2 built in 13.1s\n$ kmx status\nnone\n```\n";
    let ex = checked_examples(readme);
    assert_eq!(ex.len(), 2);
    assert_eq!((ex[0].line, ex[0].command.as_str()), (4, "kmx build x"));
    let expected = normalise(&ex[0].expected.join("\n"), &[]);
    let real =
        "Building 2 cells\nwarning: x\n[1/2] built b (3.0s)\n[2/2] built a (4.2s)\n2 built in 5.0s";
    assert!(matches(&expected, &normalise(real, &[])));
    // A changed word, a missing line, an extra line, a changed count: each fails.
    for wrong in [
        "Building 3 cells\n[1/2] built b (3.0s)\n[2/2] built a (4.2s)\n2 built in 5.0s",
        "Building 2 cells\n[1/2] built b (3.0s)\n2 built in 5.0s",
        "Building 2 cells\n[1/2] built b (3.0s)\n[2/2] built a (4.2s)\n2 built in 5.0s\nextra",
        "Building 2 cells\n[1/2] built b (3.0s)\n[2/2] built c (4.2s)\n2 built in 5.0s",
    ] {
        assert!(!matches(&expected, &normalise(wrong, &[])), "{wrong}");
    }
    // Paths: the scratch ones are shown as the README's.
    assert_eq!(
        normalise("/tmp/x/me/kmx/kmx-out", &[("/tmp/x/me", "/home/me")]),
        ["/home/me/kmx/kmx-out"]
    );
    // A marker before anything but a console block is an error, not a skipped check.
    let typo = std::panic::catch_unwind(|| checked_examples("<!-- checked -->\n```sh\n$ x\n```\n"));
    assert!(typo.is_err());
}
