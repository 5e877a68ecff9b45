//! `add`: register a module source under the name and version DKMS would give it. The
//! source is copied into the store (beside the registered copy, then swapped in under the
//! lock), so a refused or killed add leaves the registered copy as it was.

use std::path::{Path, PathBuf};

use super::{HookFailed, prepare::evaluate_generic, run_hook};
use crate::config::manifest::Given;
use crate::error::{Error, Result};
use crate::state::store::{SourceRecord, Store, content_hash, now, valid_component};

/// What an add did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new module or version.
    Added,
    /// A registered one whose content changed: its builds are stale.
    Refreshed,
    /// A registered one with the same content: nothing changed.
    Unchanged,
}

impl Action {
    /// The word `kmx add --json` says (docs/schemas/kmx.add-1.json).
    pub fn word(self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Refreshed => "refreshed",
            Action::Unchanged => "unchanged",
        }
    }
}

/// What [`add`] registered, and where.
#[derive(Debug)]
pub struct Added {
    pub module: String,
    pub version: String,
    /// The source as given, made canonical.
    pub source: PathBuf,
    /// The registered copy in the store.
    pub copy: PathBuf,
    pub action: Action,
    /// POST_ADD, when it failed (the source is registered all the same).
    pub hook_failed: Option<HookFailed>,
}

/// Register the source `source`, named as `given` (DKMS's `-m NAME -v VERSION`) where set,
/// else as [`crate::config::dkms`] decides, its dkms.conf read in the sandbox `mode`.
pub fn add(
    store: &Store,
    source: &Path,
    mode: crate::sandbox::Mode,
    wait: bool,
    given: &Given,
) -> Result<Added> {
    let src = source
        .canonicalize()
        .map_err(|e| Error::io("open module source", source, e))?;
    let spec = evaluate_generic(&src, mode, given)?;
    for (what, v) in [
        ("PACKAGE_NAME", &spec.name),
        ("PACKAGE_VERSION", &spec.version),
    ] {
        if !valid_component(v) {
            return Err(Error::config(
                &src,
                format!("{what} {v:?} cannot name a directory of the state store"),
            )
            .hint("use a name without `/`, not starting with `.`"));
        }
    }
    let _lock = store.lock(wait)?;
    let dir = store.source_dir(&spec.name, &spec.version);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let previous = store.load_source(&spec.name, &spec.version)?;
    // Copies and old versions of an add that died: made only under the lock, which we hold.
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".src-new-") || name.starts_with(".src-old-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // A refused first add (a FIFO in the source, a full disk) leaves no empty
    // `sources/<name>/<version>` for `status --check` to blame on a killed kmx: the
    // directories it made are removed if they are empty (`remove_dir` removes nothing else).
    let forget = || {
        if previous.is_none() {
            let _ = std::fs::remove_dir(&dir);
            let _ = dir.parent().map(std::fs::remove_dir);
        }
    };
    let new = dir.join(format!(".src-new-{}", std::process::id()));
    let copied = crate::matrix::pipeline::copy_tree(&src, &new).and_then(|_| content_hash(&new));
    let hash = match copied {
        Ok(hash) => hash,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&new);
            forget();
            return Err(e);
        }
    };
    let copy = store.source_copy(&spec.name, &spec.version);
    let added = |action, hook_failed| Added {
        module: spec.name.clone(),
        version: spec.version.clone(),
        source: src.clone(),
        copy: copy.clone(),
        action,
        hook_failed,
    };
    if previous.as_ref().is_some_and(|p| p.hash == hash) && copy.is_dir() {
        let _ = std::fs::remove_dir_all(&new);
        return Ok(added(Action::Unchanged, None));
    }
    let old = dir.join(format!(".src-old-{}", std::process::id()));
    if copy.exists() {
        std::fs::rename(&copy, &old).map_err(|e| Error::io("move aside", &copy, e))?;
    }
    if let Err(e) = std::fs::rename(&new, &copy) {
        // Put the registered copy back as it was.
        let _ = std::fs::rename(&old, &copy);
        let _ = std::fs::remove_dir_all(&new);
        forget();
        return Err(Error::io("move into place", &copy, e));
    }
    // The record first: a kill between the swap and the record leaves the least behind.
    store.save_source(&SourceRecord {
        module: spec.name.clone(),
        version: spec.version.clone(),
        origin: src.clone(),
        hash,
        added_at: now(),
    })?;
    let _ = std::fs::remove_dir_all(&old);
    let hook_failed = spec
        .post_add
        .as_ref()
        .and_then(|line| run_hook("POST_ADD", line, &copy));
    let action = match previous {
        Some(_) => Action::Refreshed,
        None => Action::Added,
    };
    Ok(added(action, hook_failed))
}
