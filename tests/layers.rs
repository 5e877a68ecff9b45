//! The crate's top-level modules form layers: no import cycle between them may come back.
//!
//! Reads every `crate::<module>` path in `src/` (in `use` lines and in code) and checks that
//! the graph of top-level modules has no cycle. `cargo test --test layers` prints the cycle
//! it finds, with the files that make each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/matrix/cell.rs` -> `matrix`).
fn owner(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every top-level module a file's code names through `crate::` (comments, such as doc links,
/// are not imports).
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, ...}`: the first word of each item.
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| owner(&src, f)).collect();
    // edge (from, to) -> the files that make it
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in &files {
        let from = owner(&src, f);
        let text = std::fs::read_to_string(f).expect("read source");
        for to in imports(&text) {
            // `Error`/`Result` re-exported at the root belong to `error`.
            let to = match to.as_str() {
                "Error" | "Result" => "error".to_string(),
                _ => to,
            };
            if to != from && modules.contains(&to) {
                let rel = f.strip_prefix(&src).unwrap().display().to_string();
                edges.entry((from.clone(), to)).or_default().push(rel);
            }
        }
    }
    assert!(
        edges.contains_key(&("matrix".into(), "config".into())),
        "the scan must see real edges: {edges:?}"
    );
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<(String, String), Vec<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == m).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for (_, to) in edges.keys().filter(|(from, _)| from == m) {
            if let Some(c) = visit(to, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in &modules {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            let why: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let files = &edges[&(w[0].clone(), w[1].clone())];
                    format!("{} -> {} ({})", w[0], w[1], files.join(", "))
                })
                .collect();
            panic!(
                "import cycle between top-level modules:\n  {}",
                why.join("\n  ")
            );
        }
    }
}

#[test]
fn the_scan_reads_grouped_and_plain_paths() {
    let got = imports(
        "use crate::{Error, process};\n//! see [`crate::matrix`]\nlet x = crate::digest::hex(b);",
    );
    let want: BTreeSet<String> = ["Error", "process", "digest"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}
