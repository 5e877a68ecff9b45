//! `kmx compat` (which kernels a built module loads on) against the real kernels: every
//! verdict of the matrix of the example, built by kmx for every fetched kernel of arm64,
//! agrees with what that kernel, booted under QEMU, does with the module (loaded, or refused
//! with the reason the matrix gives first). One target: what the matrix compares (vermagic,
//! symbol CRCs, the loader's checks) is the same code for every architecture, and each boot
//! costs the suite; `benches/compat-matrix.sh` pairs amd64's kernels too
//! (`KMX_COMPAT_TARGETS=arm64,amd64`).
//!
//! The pairs are every (module built for A, kernel B) over the trees the home has with their
//! images: under `./dev test`, Debian 12's point release (6.1.0-50), bookworm-security's 6.1
//! and 6.12. `benches/compat-matrix.sh` runs the same test over a home with more ABIs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::differential::renamed;
use crate::support::*;

/// The targets whose pairs are booted: `KMX_COMPAT_TARGETS` (comma-separated), or arm64.
fn paired() -> Vec<String> {
    std::env::var("KMX_COMPAT_TARGETS")
        .unwrap_or_else(|_| "arm64".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// One boot: target, kernel release, and (module name, release it was built for) loaded.
type Boot = (String, String, Vec<(String, String)>);

#[test]
fn the_compat_matrix_agrees_with_the_booted_kernels_on_every_pair() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    let fetched = fetched_registry(&fetched_home().unwrap());
    let paired = paired();
    // (target, release) of every tree with an image: the kernels that can be booted.
    let bootable: Vec<(String, String)> = fetched["trees"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| paired.iter().any(|p| t["target"] == p.as_str()) && t["boot"].is_object())
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_string(),
                t["release"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for target in &paired {
        let n = bootable.iter().filter(|(t, _)| t == target).count();
        if n < 2 {
            skip_or_fail(&format!(
                "{target} has {n} kernel(s) with an image: `kmx kernels fetch --with-image` (and --abi for an older one) to have pairs"
            ));
            return;
        }
    }
    let out = k.dir().join("out");
    let mut build = vec!["build", "examples/hello", "--out", out.to_str().unwrap()];
    for t in &paired {
        build.extend(["-t", t.as_str()]);
    }
    let hello = repo().join("examples/hello");
    build[1] = hello.to_str().unwrap();
    k.run(&build).ok();

    // The matrix, as a user gets it from the build output.
    let run = k.run(&["compat", "--json", out.to_str().unwrap()]).ok();
    let matrix = run.json();
    crate::schemas::assert_valid("compat", &matrix);
    // (target, built for, kernel) -> (verdict, reasons)
    let mut cells: BTreeMap<(String, String, String), (String, Vec<String>)> = BTreeMap::new();
    for m in matrix["modules"].as_array().unwrap() {
        for c in m["kernels"].as_array().unwrap() {
            cells.insert(
                (
                    m["target"].as_str().unwrap().to_string(),
                    m["built_for"].as_str().unwrap().to_string(),
                    c["release"].as_str().unwrap().to_string(),
                ),
                (
                    c["verdict"].as_str().unwrap().to_string(),
                    c["reasons"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                ),
            );
        }
    }

    // Each kernel B booted once with the module built for every A, renamed apart (a name
    // is not part of what the loader compares): two boots at a time.
    let tmp = k.dir().join("renamed");
    let boots: Vec<Boot> = bootable
        .iter()
        .map(|(target, kernel)| {
            let dir = tmp.join(kernel);
            std::fs::create_dir_all(&dir).unwrap();
            let built: Vec<(String, String)> = bootable
                .iter()
                .filter(|(t, _)| t == target)
                .enumerate()
                .map(|(i, (_, a))| {
                    let ko = out.join(format!("hello/1.0/{a}/{target}/hello.ko"));
                    let name = format!("h{i}");
                    renamed(&ko, "hello", &name, &dir);
                    (name, a.clone())
                })
                .collect();
            (target.clone(), kernel.clone(), built)
        })
        .collect();
    let mut reports: Vec<serde_json::Value> = Vec::new();
    for pair in boots.chunks(2) {
        reports.extend(std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|(target, kernel, _)| {
                    let dir = tmp.join(kernel);
                    let k = &k;
                    s.spawn(move || {
                        let run = k.run(&[
                            "smoke",
                            "--json",
                            "-t",
                            target,
                            "-k",
                            kernel,
                            dir.to_str().unwrap(),
                        ]);
                        assert!(run.code() <= 1, "{}", run.stderr());
                        run.json()["boots"][0].clone()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        }));
    }

    let mut table = String::new();
    let mut disagree = Vec::new();
    let mut seen = BTreeMap::new();
    for ((target, kernel, built), report) in boots.iter().zip(&reports) {
        assert_eq!(report["status"], "booted", "{target} {kernel}: {report:#}");
        assert_eq!(report["release"], kernel.as_str(), "{report:#}");
        for (name, a) in built {
            let m = report["modules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{target} {kernel}: {name} not loaded: {report:#}"));
            let outcome = m["outcome"].as_str().unwrap();
            // "h0: disagrees about version of symbol module_layout": the kernel's reason.
            let said = m["message"].as_str().unwrap_or("");
            let said = said.split_once(": ").map_or(said, |(_, r)| r);
            let (verdict, reasons) = cells
                .get(&(target.clone(), a.clone(), kernel.clone()))
                .unwrap_or_else(|| panic!("no matrix cell {target} {a} on {kernel}: {matrix:#}"));
            let agree = match verdict.as_str() {
                "loads" | "warns" => outcome == "loaded",
                "refused" => outcome == "refused" && !said.is_empty() && reasons[0].contains(said),
                v => panic!("verdict {v}"),
            };
            *seen.entry(verdict.clone()).or_insert(0) += 1;
            table.push_str(&format!(
                "| {target} | {a} | {kernel} | {verdict}{} | {outcome}{} | {} |\n",
                reasons
                    .first()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                },
                if agree { "agree" } else { "DISAGREE" }
            ));
            if !agree {
                disagree.push(format!(
                    "{target}: built for {a}, on {kernel}: kmx compat {verdict} {reasons:?}; the kernel {outcome} {said:?}"
                ));
            }
        }
    }
    eprintln!(
        "| target | built for | kernel | kmx compat | kernel booted | |\n|---|---|---|---|---|---|\n{table}"
    );
    assert!(
        disagree.is_empty(),
        "kmx compat and the kernels disagree:\n{}",
        disagree.join("\n")
    );
    // Both kinds of verdict were there to agree on: every pair was booted.
    let pairs: usize = boots.iter().map(|(_, _, b)| b.len()).sum();
    assert_eq!(seen.values().sum::<usize>(), pairs);
    assert!(
        seen.contains_key("loads") && seen.contains_key("refused"),
        "{seen:?}"
    );
}

/// The matrix of one module file on the terminal: every kernel of its target, the refused
/// ones with the symbol whose CRC differs; the same file with `--target` of another class is
/// refused for its ELF identity; a name that is neither a file nor a registered module is a
/// usage error.
#[test]
fn the_matrix_of_a_module_names_each_kernels_reason() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    let ko: PathBuf = repo().join("tests/data/modules/arm64/hello.ko");
    let run = k.run(&["compat", ko.to_str().unwrap()]).ok();
    let out = run.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("MODULE  TARGET  BUILT FOR       KERNEL"),
        "{out}"
    );
    let arm64 = k.run(&["kernels", "list", "--json"]).ok().json()["trees"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["target"] == "arm64")
        .count();
    assert_eq!(lines.len(), 1 + arm64, "{out}");
    for l in &lines[1..] {
        // MODULE TARGET BUILT-FOR KERNEL SOURCE(two words) VERDICT...
        let words: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(words[..3], ["hello", "arm64", "6.1.0-50-arm64"], "{out}");
        if words[3] == "6.1.0-50-arm64" {
            assert!(l.ends_with("loads"), "{out}");
        } else if words[3].starts_with("6.1.0-") {
            assert!(
                l.contains("refused: modversions: disagrees about version of symbol module_layout (module 0xb47ce167, vmlinux 0x"),
                "{out}"
            );
        } else {
            // 6.12 compares the size of struct module first (its own modules say it).
            assert!(
                l.contains("refused: identity: .gnu.linkonce.this_module section size must match the kernel's built struct module size at run time (module 896 bytes, kernel "),
                "{out}"
            );
        }
    }
    let other = k
        .run(&["compat", "-t", "armhf", "--json", ko.to_str().unwrap()])
        .ok()
        .json();
    for c in other["modules"][0]["kernels"].as_array().unwrap() {
        assert_eq!(c["verdict"], "refused", "{c}");
        assert!(
            c["reasons"][0].as_str().unwrap().starts_with("identity: "),
            "{c}"
        );
    }
    let bad = k.run(&["compat", "no-such-module/1.0"]).expect(2);
    assert!(
        bad.stderr()
            .contains("no-such-module/1.0: no such file or directory, and kmx has no build of module no-such-module/1.0"),
        "{}",
        bad.stderr()
    );
}
