//! The crate's modules form layers: no import cycle may come back, neither between top-level
//! modules nor between the files of one folder, and commands reach the build matrix only
//! through its front doors.
//!
//! Reads every `crate::` path in `src/` (in `use` lines, grouped or not, and in code) and
//! every top-level `super::` path, and checks three graphs: top-level modules
//! (`src/matrix/` is `matrix`), the files of each folder (`src/matrix/cell.rs` is `cell`;
//! a name a folder's `mod.rs` re-exports counts as the file that defines it), and what
//! `src/commands/` names inside `matrix`. `cargo test --test layers` prints the cycle or the
//! reach it finds, with the files that make each edge.

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

/// A file's code: comments left out (doc links are not imports), and so is the unit-test
/// module at its end (`#[cfg(test)]`), whose `super::` is the file itself.
fn code_of(text: &str) -> String {
    let mut out = Vec::new();
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if !t.starts_with("//") {
            out.push(l);
        }
    }
    out.join("\n")
}

fn ident(s: &str) -> &str {
    let n = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..n]
}

/// The paths of one use tree that starts at `s` (`a::{b, c::{d, e}}` -> `a::b`, `a::c::d`,
/// `a::c::e`), each as its words; `self` ends a path where it stands.
fn use_tree(s: &str) -> Vec<Vec<String>> {
    fn skip_ws(s: &str, at: &mut usize) {
        while s[*at..].starts_with(char::is_whitespace) {
            *at += s[*at..].chars().next().map_or(1, char::len_utf8);
        }
    }
    fn tree(s: &str, at: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        skip_ws(s, at);
        if s[*at..].starts_with('{') {
            *at += 1;
            loop {
                skip_ws(s, at);
                if s[*at..].starts_with('}') {
                    *at += 1;
                    return;
                }
                tree(s, at, prefix, out);
                skip_ws(s, at);
                if s[*at..].starts_with(',') {
                    *at += 1;
                } else if s[*at..].starts_with('}') {
                    *at += 1;
                    return;
                } else {
                    // Not a use tree after all: stop reading.
                    *at = s.len();
                    return;
                }
            }
        }
        let word = ident(&s[*at..]);
        if word.is_empty() {
            // `*`, or the end of what can be read.
            if s[*at..].starts_with('*') {
                *at += 1;
            }
            out.push(prefix.to_vec());
            return;
        }
        *at += word.len();
        let mut path = prefix.to_vec();
        if word != "self" {
            path.push(word.to_string());
        }
        if s[*at..].starts_with("::") {
            *at += 2;
            return tree(s, at, &path, out);
        }
        // `x as y`
        let mut look = *at;
        skip_ws(s, &mut look);
        if let Some(rest) = s[look..].strip_prefix("as ") {
            let rest = rest.trim_start();
            *at = s.len() - rest.len() + ident(rest).len();
        }
        out.push(path);
    }
    let mut out = Vec::new();
    tree(s, &mut 0, &[], &mut out);
    out.retain(|p| !p.is_empty());
    out
}

/// Every path a file's code names from `anchor` (`crate::` or `super::`), without the anchor.
fn paths(text: &str, anchor: &str) -> Vec<Vec<String>> {
    let code = code_of(text);
    let mut out = Vec::new();
    for (i, _) in code.match_indices(anchor) {
        // `xsuper::` or `foo_crate::` is not the anchor.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.extend(use_tree(&code[i + anchor.len()..]));
    }
    out
}

/// The paths a folder's `mod.rs` names starting with its file `file` (`file::x`), not as part
/// of a longer path (`crate::kernel::file::x` is another folder's).
fn child_paths(text: &str, file: &str) -> Vec<Vec<String>> {
    let anchor = format!("{file}::");
    let mut out = Vec::new();
    for (i, _) in text.match_indices(&anchor) {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        out.extend(use_tree(&text[i..]));
    }
    out
}

/// Every top-level module a file's code names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    paths(text, "crate::")
        .into_iter()
        .map(|p| p[0].clone())
        .collect()
}

struct Source {
    /// `matrix/cell.rs`
    rel: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .iter()
        .map(|f| Source {
            rel: f.strip_prefix(&src).unwrap().display().to_string(),
            text: std::fs::read_to_string(f).expect("read source"),
        })
        .collect()
}

/// The cycles of a graph (node -> node, with the files that make each edge): for each node
/// not yet in a cycle found, the shortest cycle through it, as its nodes in order with the
/// first repeated at the end.
fn cycles(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<Vec<String>> {
    let next = |m: &str| -> Vec<&String> {
        edges
            .keys()
            .filter(|(from, _)| from == m)
            .map(|(_, to)| to)
            .collect()
    };
    let nodes: BTreeSet<&String> = edges.keys().map(|(f, _)| f).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for m in nodes {
        if seen.contains(m.as_str()) {
            continue;
        }
        // Breadth first from m until m comes back.
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([m.clone()]);
        let mut found = false;
        while let Some(n) = queue.pop_front() {
            for to in next(&n) {
                if to == m {
                    came_from.insert(format!("{m}\0end"), n.clone());
                    found = true;
                    break;
                }
                if !came_from.contains_key(to.as_str()) {
                    came_from.insert(to.clone(), n.clone());
                    queue.push_back(to.clone());
                }
            }
            if found {
                break;
            }
        }
        if !found {
            continue;
        }
        let mut cycle = vec![m.clone()];
        let mut at = came_from[&format!("{m}\0end")].clone();
        while at != *m {
            cycle.push(at.clone());
            at = came_from[&at].clone();
        }
        cycle.push(m.clone());
        cycle.reverse();
        seen.extend(cycle.iter().cloned());
        out.push(cycle);
    }
    out
}

fn explain(cycle: &[String], edges: &BTreeMap<(String, String), Vec<String>>) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files = &edges[&(w[0].clone(), w[1].clone())];
            let mut files = files.clone();
            files.dedup();
            format!("{} -> {} ({})", w[0], w[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn explain_all(found: &[Vec<String>], edges: &BTreeMap<(String, String), Vec<String>>) -> String {
    found
        .iter()
        .map(|c| explain(c, edges))
        .collect::<Vec<_>>()
        .join("\n\n  ")
}

/// Edges between top-level modules.
fn module_edges(sources: &[Source]) -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new("");
    let modules: BTreeSet<String> = sources
        .iter()
        .map(|s| owner(src, Path::new(&s.rel)))
        .collect();
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in sources {
        let from = owner(src, Path::new(&s.rel));
        for to in imports(&s.text) {
            // `Error`/`Result` re-exported at the root belong to `error`.
            let to = match to.as_str() {
                "Error" | "Result" => "error".to_string(),
                _ => to,
            };
            if to != from && modules.contains(&to) {
                edges
                    .entry((from.clone(), to))
                    .or_default()
                    .push(s.rel.clone());
            }
        }
    }
    edges
}

/// What a `mod.rs` line re-exports (`pub use x::Y;`, `pub(crate) use x::{Y, z};`), if it
/// is such a line.
fn reexport(line: &str) -> Option<&str> {
    let t = line.trim_start();
    ["pub use ", "pub(crate) use ", "pub(super) use "]
        .iter()
        .find_map(|p| t.strip_prefix(p))
}

/// Edges between the files of each folder, as `folder/file` (`matrix/cell`). A path into the
/// folder names a file (`crate::matrix::cell::run`, or `super::cell::run` from a sibling), or
/// a name the folder's `mod.rs` re-exports (`pub use load::Profiles`: `load`), or else the
/// folder's `mod.rs` itself. `mod.rs`'s own `mod` and `pub use` lines are the folder's door,
/// not imports.
fn file_edges(sources: &[Source]) -> BTreeMap<(String, String), Vec<String>> {
    // folder -> its files (without .rs)
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        if let Some((folder, file)) = s.rel.rsplit_once('/') {
            folders
                .entry(folder.to_string())
                .or_default()
                .insert(file.trim_end_matches(".rs").to_string());
        }
    }
    // folder -> re-exported name -> the file that defines it
    let mut reexports: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in sources {
        let Some(folder) = s.rel.strip_suffix("/mod.rs") else {
            continue;
        };
        for line in code_of(&s.text).lines() {
            if let Some(rest) = reexport(line) {
                for p in use_tree(rest) {
                    if p.len() >= 2 && folders[folder].contains(&p[0]) {
                        reexports
                            .entry(folder.to_string())
                            .or_default()
                            .insert(p[p.len() - 1].clone(), p[0].clone());
                    }
                }
            }
        }
    }
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in sources {
        let Some((folder, file)) = s.rel.rsplit_once('/') else {
            continue;
        };
        let file = file.trim_end_matches(".rs");
        let is_mod = file == "mod";
        let text: String = if is_mod {
            code_of(&s.text)
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    !(reexport(t).is_some() || t.starts_with("pub mod ") || t.starts_with("mod "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            s.text.clone()
        };
        let words: Vec<&str> = folder.split('/').collect();
        let mut inside: Vec<Vec<String>> = paths(&text, "crate::")
            .into_iter()
            .filter(|p| p.len() > words.len() && p.iter().zip(&words).all(|(a, b)| a == b))
            .map(|p| p[words.len()..].to_vec())
            .collect();
        let files = &folders[folder];
        if is_mod {
            // mod.rs names its files by their own names (`a::f()`, `use self::a::X`).
            inside.extend(paths(&text, "self::"));
            for f in files.iter().filter(|f| *f != "mod") {
                inside.extend(child_paths(&text, f));
            }
        } else {
            inside.extend(paths(&text, "super::"));
        }
        for p in inside {
            let to = if files.contains(&p[0]) && p[0] != "mod" {
                p[0].clone()
            } else if let Some(f) = reexports.get(folder).and_then(|r| r.get(&p[0])) {
                f.clone()
            } else {
                "mod".to_string()
            };
            if to != file && files.contains(&to) {
                edges
                    .entry((format!("{folder}/{file}"), format!("{folder}/{to}")))
                    .or_default()
                    .push(s.rel.clone());
            }
        }
    }
    edges
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let edges = module_edges(&sources());
    assert!(
        edges.contains_key(&("matrix".into(), "config".into())),
        "the scan must see real edges: {edges:?}"
    );
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules:\n  {}",
        explain_all(&found, &edges)
    );
}

#[test]
fn no_import_cycle_between_the_files_of_a_folder() {
    let edges = file_edges(&sources());
    assert!(
        edges.contains_key(&("matrix/pipeline".into(), "matrix/scheduler".into())),
        "the scan must see real edges: {edges:?}"
    );
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles between the files of a folder:\n  {}",
        explain_all(&found, &edges)
    );
}

/// The build matrix's front doors: the pipeline (plan, run, report a build) and reproduce
/// (rebuild a cell from its provenance, through the pipeline).
const MATRIX_DOORS: &[&str] = &["pipeline", "reproduce"];

/// What the files of `src/commands/` name inside `crate::matrix` past its front doors (each
/// as `file: crate::matrix::name`), and how many paths go through the doors.
fn reaches_past_the_doors(sources: &[Source]) -> (Vec<String>, usize) {
    let mut reach: Vec<String> = Vec::new();
    let mut through_doors = 0;
    for s in sources {
        if !s.rel.starts_with("commands/") {
            continue;
        }
        for p in paths(&s.text, "crate::") {
            if p[0] != "matrix" {
                continue;
            }
            match p.get(1) {
                Some(m) if MATRIX_DOORS.contains(&m.as_str()) => through_doors += 1,
                other => reach.push(format!(
                    "{}: crate::matrix::{}",
                    s.rel,
                    other.map_or("", String::as_str)
                )),
            }
        }
    }
    reach.sort();
    reach.dedup();
    (reach, through_doors)
}

#[test]
fn commands_reach_the_build_matrix_only_through_its_front_doors() {
    let (reach, through_doors) = reaches_past_the_doors(&sources());
    assert!(
        through_doors > 0,
        "the scan must see the commands' real paths"
    );
    assert!(
        reach.is_empty(),
        "commands reach past the build matrix's front doors ({}):\n  {}",
        MATRIX_DOORS.join(", "),
        reach.join("\n  ")
    );
}

#[test]
fn a_command_reaching_past_the_front_door_is_named() {
    let srcs = vec![
        Source {
            rel: "commands/build.rs".into(),
            text: "use crate::matrix::pipeline::{self, Plan};\n\
                   use crate::matrix::{cell::Outcome, pipeline::Report};\n\
                   fn f() { crate::matrix::shard::deal(); }\n\
                   #[cfg(test)]\nmod tests { use crate::matrix::plan; }\n"
                .into(),
        },
        Source {
            rel: "commands/provenance.rs".into(),
            text: "use crate::matrix::reproduce;".into(),
        },
        // Not a command: the matrix's own files reach wherever they like.
        Source {
            rel: "matrix/pipeline.rs".into(),
            text: "use crate::matrix::cell;".into(),
        },
    ];
    let (reach, through_doors) = reaches_past_the_doors(&srcs);
    assert_eq!(
        reach,
        [
            "commands/build.rs: crate::matrix::cell",
            "commands/build.rs: crate::matrix::shard"
        ]
    );
    assert_eq!(through_doors, 4);
    // The same commands through the doors alone: nothing to name.
    let clean = vec![Source {
        rel: "commands/build.rs".into(),
        text: "use crate::matrix::pipeline::{self, Outcome, Plan};".into(),
    }];
    assert_eq!(reaches_past_the_doors(&clean), (Vec::new(), 3));
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

#[test]
fn the_scan_expands_nested_groups_and_skips_tests() {
    let text = "use crate::matrix::{cell::{self, Outcome}, plan::Cell, report};\n\
                use super::kconfig::{KConfig, NOT_PREPARED};\n\
                fn f() { crate::matrix::shard::select(); }\n\
                #[cfg(test)]\nmod tests { use super::*; use crate::matrix::scheduler; }\n";
    let words = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = paths(text, "crate::");
    assert_eq!(
        got,
        vec![
            words(&["matrix", "cell"]),
            words(&["matrix", "cell", "Outcome"]),
            words(&["matrix", "plan", "Cell"]),
            words(&["matrix", "report"]),
            words(&["matrix", "shard", "select"]),
        ]
    );
    assert_eq!(
        paths(text, "super::"),
        vec![
            words(&["kconfig", "KConfig"]),
            words(&["kconfig", "NOT_PREPARED"])
        ]
    );
}

#[test]
fn a_cycle_through_a_folders_mod_rs_is_found() {
    let srcs = vec![
        Source {
            rel: "m/mod.rs".into(),
            text: "pub mod a;\npub mod b;\npub(crate) use b::B;\n\
                   pub const LIMIT: usize = a::limit();\n"
                .into(),
        },
        Source {
            rel: "m/a.rs".into(),
            text: "pub const fn limit() -> usize { super::DEFAULT }\n".into(),
        },
        Source {
            rel: "m/b.rs".into(),
            text: "pub struct B;\nfn f() { crate::other::a::g(); }\n".into(),
        },
    ];
    let edges = file_edges(&srcs);
    let found = cycles(&edges);
    assert_eq!(found, [["m/a", "m/mod", "m/a"]]);
    // `pub(crate) use b::B` is the folder's door, and `crate::other::a` another folder's file.
    assert!(
        !edges.contains_key(&("m/mod".into(), "m/b".into())),
        "{edges:?}"
    );
    assert!(
        !edges.contains_key(&("m/b".into(), "m/a".into())),
        "{edges:?}"
    );
}

#[test]
fn a_cycle_between_files_is_found_and_named() {
    let srcs = vec![
        Source {
            rel: "m/a.rs".into(),
            text: "use crate::m::b::B;".into(),
        },
        Source {
            rel: "m/b.rs".into(),
            text: "use super::c::C;".into(),
        },
        Source {
            rel: "m/c.rs".into(),
            text: "fn f() { crate::m::X::new(); }".into(),
        },
        Source {
            rel: "m/mod.rs".into(),
            text: "pub mod a;\npub mod b;\npub mod c;\npub use a::X;".into(),
        },
    ];
    let edges = file_edges(&srcs);
    let found = cycles(&edges);
    assert_eq!(
        found,
        [["m/a", "m/b", "m/c", "m/a"]],
        "X is re-exported from a"
    );
    assert_eq!(
        explain(&found[0], &edges),
        "m/a -> m/b (m/a.rs)\n  m/b -> m/c (m/b.rs)\n  m/c -> m/a (m/c.rs)"
    );
}
