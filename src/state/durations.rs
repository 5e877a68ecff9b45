//! How long each cell took when it was last built, for the progress bar's estimate of the
//! time left: one JSON map in `KMX_HOME/cache/durations.json` (cell label to seconds), read
//! once when a run starts and written once when it ends, atomically. It decides nothing: a
//! missing or damaged file only means no estimate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// At most this many cells are remembered (the longest unused go first).
const MAX_ENTRIES: usize = 20_000;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Entry {
    secs: f64,
    /// Seconds since the epoch of the build that took `secs`.
    at: u64,
}

/// Cell label (`hello 1.0 arm64 6.1.0-50-arm64`) to the duration of its last build.
#[derive(Debug, Default)]
pub struct Durations {
    path: PathBuf,
    map: BTreeMap<String, Entry>,
}

impl Durations {
    /// The durations recorded in `path`; none if it is missing or not readable.
    pub fn load(path: &Path) -> Durations {
        let map = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Durations {
            path: path.to_path_buf(),
            map,
        }
    }

    pub fn get(&self, label: &str) -> Option<f64> {
        self.map.get(label).map(|e| e.secs)
    }

    pub fn set(&mut self, label: &str, secs: f64) {
        let at = crate::state::store::now();
        self.map.insert(label.to_string(), Entry { secs, at });
    }

    /// Write the durations, dropping the oldest beyond [`MAX_ENTRIES`].
    pub fn save(&mut self) -> Result<()> {
        if self.map.len() > MAX_ENTRIES {
            let mut ages: Vec<u64> = self.map.values().map(|e| e.at).collect();
            ages.sort_unstable();
            let cut = ages[self.map.len() - MAX_ENTRIES];
            self.map.retain(|_, e| e.at >= cut);
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let json = serde_json::to_vec(&self.map)
            .map_err(|e| Error::env(format!("cannot serialize cell durations: {e}")))?;
        crate::state::write_atomic(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_survive_a_save_and_a_damaged_file_is_no_estimate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/durations.json");
        let mut d = Durations::load(&path);
        assert_eq!(d.get("hello 1.0 arm64 r"), None);
        d.set("hello 1.0 arm64 r", 4.5);
        d.save().unwrap();
        assert_eq!(Durations::load(&path).get("hello 1.0 arm64 r"), Some(4.5));
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Durations::load(&path).get("hello 1.0 arm64 r"), None);
    }
}
