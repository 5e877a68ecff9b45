//! `kmx status`: one line per (module, version, kernel, target) from the state store, with
//! what is registered, built (and whether it is stale), installed where (and whether an
//! install was interrupted), and which recorded files are missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::state::store::{CellKey, InstallState, Store, content_hash};

/// One line of `kmx status`.
#[derive(Debug, Default, Serialize)]
pub struct StatusLine {
    pub module: String,
    pub version: String,
    pub kernel: Option<String>,
    pub target: Option<String>,
    /// added, built, installed
    pub state: String,
    pub added: bool,
    pub built: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_from: Option<String>,
    pub stale: bool,
    pub broken: Vec<String>,
    pub installed: Vec<StatusInstall>,
}

#[derive(Debug, Serialize)]
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
