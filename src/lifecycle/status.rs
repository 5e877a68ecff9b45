//! `kmx status`: one line per (module, version, kernel, target) from the state store, with
//! what is registered, built (and whether it is stale), installed where (and whether an
//! install was interrupted), and which recorded files are missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::state::store::{CellKey, InstallState, Store, content_hash};

/// One line of `kmx status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StatusLine {
    pub module: String,
    pub version: String,
    pub kernel: Option<String>,
    pub target: Option<String>,
    /// added, built, installed, failed (the last build failed; nothing installed)
    pub state: String,
    pub added: bool,
    pub built: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_from: Option<String>,
    pub stale: bool,
    pub broken: Vec<String>,
    pub installed: Vec<StatusInstall>,
    /// An install moved a kernel module of the same name aside (DKMS's `original_module`).
    pub original_module: bool,
    /// The last build of this cell failed (a kernel hook's build, above all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<StatusFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusFailure {
    pub reason: String,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusInstall {
    pub root: PathBuf,
    /// installed, interrupted (re-run the command), in_progress
    pub state: String,
    pub files: Vec<PathBuf>,
}

/// The status line of one (module, version, kernel, target), created on first use.
fn line_of<'a>(
    lines: &'a mut BTreeMap<(String, String, String, String), StatusLine>,
    k: &CellKey,
) -> &'a mut StatusLine {
    let line = lines
        .entry((
            k.module.clone(),
            k.version.clone(),
            k.release.clone(),
            k.target.clone(),
        ))
        .or_default();
    line.module = k.module.clone();
    line.version = k.version.clone();
    line.kernel = Some(k.release.clone());
    line.target = Some(k.target.clone());
    line
}

/// Every line of the store, sorted; registered sources with nothing built have one line each.
pub fn lines(store: &Store) -> Result<Vec<StatusLine>> {
    let busy = store.is_locked();
    let mut lines: BTreeMap<(String, String, String, String), StatusLine> = BTreeMap::new();
    let mut hashes: HashMap<(String, String), Option<String>> = HashMap::new();
    for s in store.sources_all()? {
        let h = content_hash(&store.source_copy(&s.module, &s.version)).ok();
        hashes.insert((s.module.clone(), s.version.clone()), h);
    }
    for b in store.built_all()? {
        let k = b.key();
        let dir = store.cell_dir(&k.module, &k.version, &k.release, &k.target);
        let line = line_of(&mut lines, &k);
        line.built = true;
        line.built_from = Some(b.origin.clone());
        if let Some(current) = hashes.get(&(k.module.clone(), k.version.clone())) {
            line.added = true;
            line.stale = current.is_some() && b.source_hash != *current;
        }
        for f in &b.files {
            if !dir.join(&f.file).is_file() {
                line.broken
                    .push(format!("missing {}", dir.join(&f.file).display()));
            }
        }
    }
    for r in store.installs_all()? {
        let k = r.key();
        let line = line_of(&mut lines, &k);
        line.added |= hashes.contains_key(&(k.module.clone(), k.version.clone()));
        line.original_module |= !r.displaced.is_empty();
        let state = match r.state {
            InstallState::Installed => "installed",
            _ if busy => "in_progress",
            _ => "interrupted",
        };
        if r.state == InstallState::Installed {
            for f in &r.files {
                let p = r.root.join(&f.path);
                if !p.is_file() {
                    line.broken.push(format!("missing {}", p.display()));
                }
            }
        }
        line.installed.push(StatusInstall {
            root: r.root.clone(),
            state: state.to_string(),
            files: r.files.iter().map(|f| f.path.clone()).collect(),
        });
    }
    for f in store.failed_all()? {
        let k = f.key();
        let line = line_of(&mut lines, &k);
        line.added |= hashes.contains_key(&(k.module.clone(), k.version.clone()));
        line.failed = Some(StatusFailure {
            reason: f.reason,
            log: f.log,
        });
    }
    // Registered sources with nothing built: one line each.
    let mut with_cells: HashSet<(String, String)> = HashSet::new();
    for l in lines.values() {
        with_cells.insert((l.module.clone(), l.version.clone()));
    }
    for (m, v) in hashes.keys() {
        if !with_cells.contains(&(m.clone(), v.clone())) {
            lines.insert(
                (m.clone(), v.clone(), String::new(), String::new()),
                StatusLine {
                    module: m.clone(),
                    version: v.clone(),
                    added: true,
                    ..StatusLine::default()
                },
            );
        }
    }
    let mut out: Vec<StatusLine> = lines.into_values().collect();
    for l in &mut out {
        l.state = if l.installed.iter().any(|i| i.state == "installed") {
            "installed"
        } else if l.failed.is_some() {
            "failed"
        } else if l.built {
            "built"
        } else if l.installed.is_empty() {
            "added"
        } else {
            "installing"
        }
        .to_string();
    }
    Ok(out)
}

/// Which lines `kmx status` shows: by module (and version), kernel release and target.
#[derive(Debug, Default)]
pub struct Filter {
    pub module: Option<String>,
    pub version: Option<String>,
    pub kernel: Option<String>,
    pub target: Option<String>,
}

impl Filter {
    /// The lines the filter keeps. As `dkms status -k`: a registered module with no line
    /// left for that kernel or target still shows as `added`.
    pub fn apply(&self, lines: Vec<StatusLine>) -> Vec<StatusLine> {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        let mut added: Vec<(String, String)> = Vec::new();
        let mut kept: Vec<StatusLine> = Vec::new();
        for l in lines {
            if !eq(&self.module, &l.module) || !eq(&self.version, &l.version) {
                continue;
            }
            let cell = eq(&self.kernel, l.kernel.as_deref().unwrap_or(""))
                && eq(&self.target, l.target.as_deref().unwrap_or(""));
            if l.added && !added.contains(&(l.module.clone(), l.version.clone())) {
                added.push((l.module.clone(), l.version.clone()));
            }
            if cell {
                kept.push(l);
            }
        }
        for (m, v) in added {
            if !kept.iter().any(|l| l.module == m && l.version == v) {
                kept.push(StatusLine {
                    module: m,
                    version: v,
                    state: "added".into(),
                    added: true,
                    ..StatusLine::default()
                });
            }
        }
        kept.sort_by(|a, b| {
            (&a.module, &a.version, &a.target, &a.kernel)
                .cmp(&(&b.module, &b.version, &b.target, &b.kernel))
        });
        kept
    }
}

/// A status line as `dkms status` prints it (DKMS 3.0's `do_status`):
/// `hello/1.0: added`, or `hello/1.0, 6.1.0-50-arm64, aarch64: built` (or `installed`)
/// with `arch` the target's DKMS arch, and DKMS's own suffixes: ` (original_module exists)`
/// when the install moved a kernel module aside, ` (WARNING! Missing some built modules!)`
/// when a built module is gone; `hello/1.0: added` for a registered module whose build
/// failed. `None` for a line DKMS has no word for (an install interrupted before anything
/// was built).
pub fn dkms_line(l: &StatusLine, arch: &str) -> Option<String> {
    let (Some(kernel), true) = (&l.kernel, l.built || l.state == "installed") else {
        // A registered module whose build failed is, to DKMS, just added.
        return (l.added && (l.kernel.is_none() || l.state == "failed"))
            .then(|| format!("{}/{}: added", l.module, l.version));
    };
    let state = match l.state.as_str() {
        "installed" => "installed",
        _ => "built",
    };
    let mut line = format!("{}/{}, {kernel}, {arch}: {state}", l.module, l.version);
    if l.original_module {
        line.push_str(" (original_module exists)");
    }
    if l.broken.iter().any(|b| b.starts_with("missing ")) {
        line.push_str(" (WARNING! Missing some built modules!)");
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(state: &str, kernel: Option<&str>) -> StatusLine {
        StatusLine {
            module: "hello".into(),
            version: "1.0".into(),
            kernel: kernel.map(String::from),
            target: kernel.map(|_| "arm64".into()),
            state: state.into(),
            added: true,
            built: state != "added",
            ..StatusLine::default()
        }
    }

    #[test]
    fn a_failed_build_reads_as_added_to_dkms() {
        let mut l = line("failed", Some("6.1.0-50-amd64"));
        l.built = false;
        assert_eq!(dkms_line(&l, "x86_64").as_deref(), Some("hello/1.0: added"));
    }

    #[test]
    fn dkms_lines_have_dkms_shape() {
        assert_eq!(
            dkms_line(&line("added", None), "aarch64").as_deref(),
            Some("hello/1.0: added")
        );
        assert_eq!(
            dkms_line(&line("built", Some("6.1.0-50-arm64")), "aarch64").as_deref(),
            Some("hello/1.0, 6.1.0-50-arm64, aarch64: built")
        );
        let mut broken = line("installed", Some("6.1.0-50-arm64"));
        broken.broken.push("missing /x/hello.ko".into());
        broken.original_module = true;
        assert_eq!(
            dkms_line(&broken, "aarch64").as_deref(),
            Some(
                "hello/1.0, 6.1.0-50-arm64, aarch64: installed (original_module exists) \
                 (WARNING! Missing some built modules!)"
            )
        );
    }

    #[test]
    fn a_filter_keeps_an_added_line_for_a_module_with_no_cell_left() {
        let lines = vec![
            line("built", Some("6.1.0-50-arm64")),
            line("built", Some("6.1.0-50-amd64")),
        ];
        let f = Filter {
            kernel: Some("6.1.0-50-amd64".into()),
            ..Filter::default()
        };
        let kept = f.apply(lines.clone());
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].kernel.as_deref(), Some("6.1.0-50-amd64"));
        let f = Filter {
            kernel: Some("6.6.0".into()),
            ..Filter::default()
        };
        let kept = f.apply(lines.clone());
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].state, "added");
        let f = Filter {
            module: Some("other".into()),
            ..Filter::default()
        };
        assert!(f.apply(lines).is_empty());
    }
}
