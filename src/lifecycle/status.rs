//! `kmx status`: one line per (module, version, kernel, target) from the state store, with
//! what is registered, built (and whether it is stale), installed where (and whether an
//! install was interrupted), and which recorded files are missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::state::store::{CellKey, InstallState, Origin, Store, content_hash};

/// One line of `kmx status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StatusLine {
    pub module: String,
    pub version: String,
    pub kernel: Option<String>,
    pub target: Option<String>,
    pub state: LineState,
    pub added: bool,
    pub built: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_from: Option<Origin>,
    pub stale: bool,
    pub broken: Vec<Broken>,
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
    pub state: RootState,
    pub files: Vec<PathBuf>,
}

/// Where a status line's cell stands, most advanced first: installed somewhere, else its
/// last build failed, else built, else only registered, else an install began before
/// anything was built. Its word (`installed`, ...) is its JSON and what `kmx status` shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineState {
    #[default]
    Added,
    Built,
    Installed,
    /// An install is recorded (interrupted or under way) and nothing was built.
    Installing,
    /// The last build failed; nothing installed.
    Failed,
}

impl LineState {
    pub fn word(self) -> &'static str {
        match self {
            LineState::Added => "added",
            LineState::Built => "built",
            LineState::Installed => "installed",
            LineState::Installing => "installing",
            LineState::Failed => "failed",
        }
    }

    /// The state of a line from what the store holds for its cell.
    fn of(l: &StatusLine) -> LineState {
        if l.installed.iter().any(|i| i.state == RootState::Installed) {
            LineState::Installed
        } else if l.failed.is_some() {
            LineState::Failed
        } else if l.built {
            LineState::Built
        } else if l.installed.is_empty() {
            LineState::Added
        } else {
            LineState::Installing
        }
    }
}

/// How an install into one root stands ([`InstallState`] as `status` sees it: an install
/// not finished is under way while another kmx holds the store's lock, else interrupted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootState {
    Installed,
    /// Stopped before it finished: re-run the command.
    Interrupted,
    InProgress,
}

impl RootState {
    pub fn word(self) -> &'static str {
        match self {
            RootState::Installed => "installed",
            RootState::Interrupted => "interrupted",
            RootState::InProgress => "in_progress",
        }
    }

    /// The state of an install record whose store is locked by another kmx (`busy`) or not.
    fn of(state: InstallState, busy: bool) -> RootState {
        match (state, busy) {
            (InstallState::Installed, _) => RootState::Installed,
            (_, true) => RootState::InProgress,
            (_, false) => RootState::Interrupted,
        }
    }
}

impl std::fmt::Display for LineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

impl std::fmt::Display for RootState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// What is wrong with a cell the store records; its JSON is its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// A file the record lists is gone (a built module, or one installed into a root).
    Missing(PathBuf),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Missing(p) => write!(f, "missing {}", p.display()),
        }
    }
}

impl Serialize for Broken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
                line.broken.push(Broken::Missing(dir.join(&f.file)));
            }
        }
    }
    for r in store.installs_all()? {
        let k = r.key();
        let line = line_of(&mut lines, &k);
        line.added |= hashes.contains_key(&(k.module.clone(), k.version.clone()));
        line.original_module |= !r.displaced.is_empty();
        let state = RootState::of(r.state, busy);
        if state == RootState::Installed {
            for f in &r.files {
                let p = r.root.join(&f.path);
                if !p.is_file() {
                    line.broken.push(Broken::Missing(p));
                }
            }
        }
        line.installed.push(StatusInstall {
            root: r.root.clone(),
            state,
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
        l.state = LineState::of(l);
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
                    state: LineState::Added,
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
    let (Some(kernel), true) = (&l.kernel, l.built || l.state == LineState::Installed) else {
        // A registered module whose build failed is, to DKMS, just added.
        return (l.added && (l.kernel.is_none() || l.state == LineState::Failed))
            .then(|| format!("{}/{}: added", l.module, l.version));
    };
    let state = match l.state {
        LineState::Installed => LineState::Installed,
        _ => LineState::Built,
    };
    let mut line = format!("{}/{}, {kernel}, {arch}: {state}", l.module, l.version);
    if l.original_module {
        line.push_str(" (original_module exists)");
    }
    if l.broken.iter().any(|b| matches!(b, Broken::Missing(_))) {
        line.push_str(" (WARNING! Missing some built modules!)");
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(state: LineState, kernel: Option<&str>) -> StatusLine {
        StatusLine {
            module: "hello".into(),
            version: "1.0".into(),
            kernel: kernel.map(String::from),
            target: kernel.map(|_| "arm64".into()),
            state,
            added: true,
            built: state != LineState::Added,
            ..StatusLine::default()
        }
    }

    fn install(state: RootState) -> StatusInstall {
        StatusInstall {
            root: "/".into(),
            state,
            files: Vec::new(),
        }
    }

    #[test]
    fn a_failed_build_reads_as_added_to_dkms() {
        let mut l = line(LineState::Failed, Some("6.1.0-50-amd64"));
        l.built = false;
        assert_eq!(dkms_line(&l, "x86_64").as_deref(), Some("hello/1.0: added"));
    }

    #[test]
    fn dkms_lines_have_dkms_shape() {
        assert_eq!(
            dkms_line(&line(LineState::Added, None), "aarch64").as_deref(),
            Some("hello/1.0: added")
        );
        assert_eq!(
            dkms_line(&line(LineState::Built, Some("6.1.0-50-arm64")), "aarch64").as_deref(),
            Some("hello/1.0, 6.1.0-50-arm64, aarch64: built")
        );
        let mut broken = line(LineState::Installed, Some("6.1.0-50-arm64"));
        broken.broken.push(Broken::Missing("/x/hello.ko".into()));
        broken.original_module = true;
        assert_eq!(
            dkms_line(&broken, "aarch64").as_deref(),
            Some(
                "hello/1.0, 6.1.0-50-arm64, aarch64: installed (original_module exists) \
                 (WARNING! Missing some built modules!)"
            )
        );
        // An install that began before anything was built: DKMS has no word for it.
        let mut installing = line(LineState::Installing, Some("6.1.0-50-arm64"));
        installing.built = false;
        assert_eq!(dkms_line(&installing, "aarch64"), None);
    }

    #[test]
    fn a_line_s_state_is_the_most_advanced_the_store_shows() {
        let mut l = line(LineState::Added, Some("6.1.0-50-arm64"));
        l.built = false;
        assert_eq!(LineState::of(&l), LineState::Added);
        l.installed.push(install(RootState::Interrupted));
        assert_eq!(LineState::of(&l), LineState::Installing);
        l.built = true;
        assert_eq!(LineState::of(&l), LineState::Built);
        l.failed = Some(StatusFailure {
            reason: "make failed".into(),
            log: "/x/make.log".into(),
        });
        assert_eq!(LineState::of(&l), LineState::Failed);
        // Installed in one root outweighs a later failed build and an interrupted install.
        l.installed.push(install(RootState::Installed));
        assert_eq!(LineState::of(&l), LineState::Installed);
    }

    #[test]
    fn an_unfinished_install_is_in_progress_only_while_the_store_is_locked() {
        use InstallState::*;
        for (state, busy, want) in [
            (Installed, false, RootState::Installed),
            (Installed, true, RootState::Installed),
            (Installing, false, RootState::Interrupted),
            (Installing, true, RootState::InProgress),
            (Removing, false, RootState::Interrupted),
            (Removing, true, RootState::InProgress),
        ] {
            assert_eq!(RootState::of(state, busy), want, "{state:?} {busy}");
        }
    }

    #[test]
    fn states_and_problems_are_their_words_in_json_and_on_screen() {
        let mut l = line(LineState::Installed, Some("6.1.0-50-arm64"));
        l.installed.push(install(RootState::InProgress));
        l.broken.push(Broken::Missing("/x/hello.ko".into()));
        l.built_from = Some(Origin::Tarball("m.tar.gz".into()));
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["state"], "installed");
        assert_eq!(json["installed"][0]["state"], "in_progress");
        assert_eq!(json["broken"][0], "missing /x/hello.ko");
        assert_eq!(json["built_from"], "tarball m.tar.gz");
        for s in [
            LineState::Added,
            LineState::Built,
            LineState::Installed,
            LineState::Installing,
            LineState::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.word());
            assert_eq!(s.to_string(), s.word());
        }
        for s in [
            RootState::Installed,
            RootState::Interrupted,
            RootState::InProgress,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.word());
            assert_eq!(s.to_string(), s.word());
        }
    }

    #[test]
    fn a_filter_keeps_an_added_line_for_a_module_with_no_cell_left() {
        let lines = vec![
            line(LineState::Built, Some("6.1.0-50-arm64")),
            line(LineState::Built, Some("6.1.0-50-amd64")),
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
        assert_eq!(kept[0].state, LineState::Added);
        let f = Filter {
            module: Some("other".into()),
            ..Filter::default()
        };
        assert!(f.apply(lines).is_empty());
    }
}
