//! Every `--json` output names its format (`"schema": "kmx.<name>/1"`) and validates against
//! the JSON Schema documenting it, `docs/schemas/kmx.<name>-1.json`: real outputs of real
//! runs, successes and failures, checked with the `jsonschema` crate.

use std::path::Path;

use crate::support::*;

/// The schema documenting output `name`, itself checked against JSON Schema's meta-schema.
fn schema(name: &str) -> serde_json::Value {
    let path = repo().join(format!("docs/schemas/kmx.{name}-1.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{} is not a valid JSON Schema",
        path.display()
    );
    schema
}

/// Fails with every violation when `output` does not validate against its schema.
pub(crate) fn assert_valid(name: &str, output: &serde_json::Value) {
    assert_eq!(output["schema"], format!("kmx.{name}/1"), "{output}");
    let validator = jsonschema::validator_for(&schema(name)).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(output)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: {} violations:\n{}\n{output:#}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn every_schema_file_is_named_for_an_output_and_valid() {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("docs/schemas"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "kmx.add-1.json",
            "kmx.build-report-1.json",
            "kmx.cache-stats-1.json",
            "kmx.cell-1.json",
            "kmx.compat-1.json",
            "kmx.doctor-1.json",
            "kmx.error-1.json",
            "kmx.install-1.json",
            "kmx.kernels-1.json",
            "kmx.package-1.json",
            "kmx.provenance-1.json",
            "kmx.smoke-report-1.json",
            "kmx.status-1.json",
            "kmx.targets-1.json",
            "kmx.verify-report-1.json",
        ]
    );
    for n in &names {
        let name = n.trim_start_matches("kmx.").trim_end_matches("-1.json");
        assert_eq!(schema(name)["$id"], format!("kmx.{name}/1"));
    }
}

#[test]
fn a_schema_that_does_not_fit_is_caught() {
    // The check can fail: a report without its totals, a status of an unknown word.
    let validator = jsonschema::validator_for(&schema("build-report")).unwrap();
    let bad = serde_json::json!({
        "schema": "kmx.build-report/1", "cells": [], "wall_secs": 1.0, "plan_cells": 0
    });
    assert!(!validator.is_valid(&bad));
    let validator = jsonschema::validator_for(&schema("cache-stats")).unwrap();
    let bad = serde_json::json!({
        "schema": "kmx.cache-stats/1", "dir": "/x", "cells": 1, "bytes": 2, "extra": "\n  hint: x"
    });
    assert!(!validator.is_valid(&bad));
    // A provenance record in the format before it was named, and a cell record without
    // its fingerprint.
    let validator = jsonschema::validator_for(&schema("provenance")).unwrap();
    assert!(!validator.is_valid(&serde_json::json!({ "schema": 1 })));
    let validator = jsonschema::validator_for(&schema("cell")).unwrap();
    let bad = serde_json::json!({
        "schema": "kmx.cell/1", "artifacts": [], "files": [], "build_secs": 1.0
    });
    assert!(!validator.is_valid(&bad));
}

#[test]
fn real_json_outputs_validate_against_their_schemas() {
    let Some(k) = Kmx::with_trees() else { return };
    let hello = repo().join("examples/hello").display().to_string();
    // A build with built and failed cells (a kept build directory), and its report.json.
    let build = k
        .run(&[
            "build",
            &hello,
            &fixture("noexclusive"),
            "-t",
            "arm64,amd64",
            "--json",
        ])
        .expect(1);
    assert_valid("build-report", &build.json());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(k.dir().join("kmx-out/report.json")).unwrap(),
    )
    .unwrap();
    assert_valid("build-report", &saved);
    // Each built cell's records, and the provenance the report carries per cell.
    let mut records = 0;
    for cell in saved["cells"].as_array().unwrap() {
        if cell["status"] != "built" {
            continue;
        }
        let dir = Path::new(cell["out_dir"].as_str().unwrap());
        for (name, file) in [("provenance", "provenance.json"), ("cell", "cell.json")] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert_valid(name, &serde_json::from_str(&text).unwrap());
            records += 1;
        }
        assert_valid("provenance", &cell["provenance"]);
    }
    assert_eq!(records, 2 * 3, "{saved:#}");
    // Restored and fresh cells.
    let again = k
        .run(&["build", &hello, "-t", "arm64", "--out", "other", "--json"])
        .ok();
    assert_valid("build-report", &again.json());
    let merged = k
        .run(&["report", "merge", "other/report.json", "--json"])
        .ok();
    assert_valid("build-report", &merged.json());

    assert_valid(
        "kernels",
        &k.run(&["kernels", "list", "--json"]).ok().json(),
    );
    assert_valid("targets", &k.run(&["targets", "--json"]).ok().json());
    // This home has no tree for rpi (in the default set): an unusable target, exit 1.
    assert_valid("doctor", &k.run(&["doctor", "--json"]).expect(1).json());
    assert_valid(
        "cache-stats",
        &k.run(&["cache", "stats", "--json"]).ok().json(),
    );
    let verify = k
        .run(&["verify", "kmx-out", "-t", "arm64", "--json"])
        .expect(1);
    assert_valid("verify-report", &verify.json());

    // The lifecycle: added, then built and installed.
    let src = hello_source(&k.dir().join("src"), "hello", "");
    let added = k.run(&["add", src.to_str().unwrap(), "--json"]).ok().json();
    assert_valid("add", &added);
    assert_eq!(added["action"], "added", "{added}");
    let again = k.run(&["add", src.to_str().unwrap(), "--json"]).ok().json();
    assert_valid("add", &again);
    assert_eq!(again["action"], "unchanged", "{again}");
    assert_valid("status", &k.run(&["status", "--json"]).ok().json());
    let (arm64, _, _) = k.tree_of("arm64");
    let installed = k
        .install_into_with(
            "hello",
            "arm64",
            &arm64,
            &k.dir().join("rootfs"),
            &["--json"],
        )
        .ok()
        .json();
    assert_valid("install", &installed);
    let file = installed["installed"][0]["files"][0]["path"]
        .as_str()
        .unwrap();
    assert!(Path::new(file).is_file(), "{installed:#}");
    assert_valid("status", &k.run(&["status", "--json"]).ok().json());
    let packaged = k
        .run(&["package", "hello", "-t", "arm64", "-o", "debs", "--json"])
        .ok()
        .json();
    assert_valid("package", &packaged);
    let deb = packaged["packages"][0]["file"].as_str().unwrap();
    assert!(Path::new(deb).is_file(), "{packaged:#}");

    // A smoke run that cannot boot (no kernel images): its report and hint.
    k.without_images();
    let ko = k
        .dir()
        .join(format!("other/hello/1.0/{arm64}/arm64/hello.ko"));
    assert!(Path::new(&ko).is_file());
    let smoke = k
        .run(&["smoke", "-t", "arm64", "--json", ko.to_str().unwrap()])
        .expect(4);
    assert_valid("smoke-report", &smoke.json());
}

#[test]
fn doctor_json_keeps_a_hint_out_of_the_error_message() {
    let k = Kmx::empty();
    // A target whose tree is not a kernel tree: a problem with its hint apart.
    let cfg = k.dir().join("cfg/targets");
    std::fs::create_dir_all(&cfg).unwrap();
    let not_a_tree = k.dir().join("not-a-tree");
    std::fs::create_dir_all(&not_a_tree).unwrap();
    let text = std::fs::read_to_string(repo().join("targets/arm64.toml")).unwrap();
    let text = text.replace(
        "fetched = true",
        &format!("fetched = false\npaths = [\"{}\"]", not_a_tree.display()),
    );
    std::fs::write(cfg.join("arm64.toml"), text).unwrap();
    let cfg = k.dir().join("cfg").display().to_string();
    let run = k.run(&["--config-dir", &cfg, "doctor", "-t", "arm64", "--json"]);
    let out = run.json();
    assert_valid("doctor", &out);
    let error = &out["targets"][0]["trees"][0]["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{out:#}"));
    assert!(
        !message.contains('\n') && !message.contains("hint:"),
        "{out:#}"
    );
}
