//! The compiler cache kmx puts before every compile by default: ccache, where it is installed,
//! in depend mode (keyed by the compiler, its arguments, the source and the content of every
//! header the compiler's own dependency list names), with one cache directory per module in
//! kmx's home, shared by every cell of the module (every target and kernel): a build step
//! may write its module's cache, and no other module's.
//!
//! It applies to the toolchains that name no launcher of their own, unless `--launcher` is
//! given, `--no-compiler-cache` (or `KMX_NO_COMPILER_CACHE=1`) turns it off, or the
//! toolchain profile says `compiler_cache = false`. Its settings are kmx's, not the caller's
//! `CCACHE_*` (see [`CompilerCache::env`]); a launcher named with `--launcher` or in a profile
//! still runs with the caller's.
//!
//! Why depend mode and not preprocessor mode: measured on a 25-file module (apfs, amd64,
//! CPU seconds from a cgroup), preprocessor mode costs 28-47% more CPU than no cache on a
//! cold build (ccache runs the preprocessor, then the compiler on the source) and a warm
//! rebuild still takes 45% of a cold one; depend mode costs nothing measurable cold and a
//! warm rebuild takes 13%. No cache reuses a compilation across two ABIs of a Debian kernel
//! series, in either mode: a new ABI is a new upstream stable release (6.1.0-50 is 6.1.176,
//! 6.1.0-57 6.1.192), and headers every translation unit reads change between them
//! (`compiler_attributes.h`, which kbuild's `-include compiler_types.h` puts in every unit,
//! `list.h`, the tree's `autoconf.h`). With both trees shown at the same ABI-free paths,
//! `benches/abi-reuse.sh` finds no unit of the example or the corpus whose preprocessed text
//! is the same for both ABIs, so kmx leaves the trees at their paths (the debug information
//! names `/usr/src/linux-headers-<abi>-common/...`, as a DKMS build's does). What it reuses:
//! the same source for the same tree again (a cell rebuilt with `--force`, or after the build
//! cache let it go), and kbuild's compiler probes (`cc-option` on `/dev/null`).
//!
//! The bytes do not change: ccache's `base_dir` would rewrite the kernel tree's `-I` and
//! `-include` paths to relative ones, so that `-fmacro-prefix-map` no longer applies and
//! `__FILE__` differs; `hash_dir` stays on (the default), so an object whose debug
//! information names the working directory is only reused for the same directory.
//! `tests/it/reproducible.rs` compares a cold build, a build from a warm cache and a build
//! without it, byte for byte.

use std::path::{Path, PathBuf};

use crate::config::Profiles;

/// The bound of each module's cache directory (ccache drops its least recently used objects
/// beyond it): a module's objects for every target and a few ABIs take tens of MB.
const MAX_SIZE: &str = "256M";

/// The launcher word kmx adds.
pub const CCACHE: &str = "ccache";

/// kmx's default compiler cache, when it is in use for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompilerCache {
    /// The cache directory (`KMX_HOME/cache/ccache`), writable inside the sandbox.
    pub dir: PathBuf,
    /// ccache, as found on `PATH`.
    pub ccache: PathBuf,
}

impl CompilerCache {
    /// The cache in `cache_dir` (kmx's `KMX_HOME/cache`) when ccache is on `PATH`; found
    /// without starting a process (a no-op run starts none).
    pub fn find(cache_dir: &Path) -> Option<CompilerCache> {
        let path = std::env::var_os("PATH")?;
        let ccache = which::which_in(CCACHE, Some(path), "/").ok()?;
        Some(CompilerCache {
            dir: cache_dir.join("ccache"),
            ccache,
        })
    }

    /// The directory the cells of module `name` share (made when missing): one per module,
    /// so that a build step, which may write its module's cache, cannot plant an object in
    /// another module's compiles. A name that is not a plain file name is hashed.
    pub fn dir_for(&self, name: &str) -> PathBuf {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains('/')
            && !name.contains('\0');
        let dir = match plain {
            true => self.dir.join(name),
            false => self.dir.join(crate::digest::sha256(name.as_bytes())),
        };
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// The command that runs ccache for module `name`'s compiles: a script in its cache
    /// directory that sets kmx's settings ([`CompilerCache::env`], with the module's own
    /// directory) and runs ccache. The settings travel with the command, not in the
    /// environment, which a package's step may empty (falcosecurity-scap's configure probes
    /// run the compiler under `env -i CC="$(CC)"`: ccache then looked for a cache in the
    /// read-only home and failed every probe). Written again when it differs (a step of the
    /// module may write its directory, so kmx does not trust what it finds there).
    pub fn wrapper_for(&self, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.dir_for(name);
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut script = String::from(
            "#!/bin/sh\n# kmx's compiler cache for one module (written by kmx at each build).\n",
        );
        for (k, v) in self.env() {
            let v = if k == "CCACHE_DIR" {
                dir.to_string_lossy().into_owned()
            } else {
                v
            };
            script.push_str(&format!("{k}={}\nexport {k}\n", quote(&v)));
        }
        script.push_str(&format!(
            "exec {} \"$@\"\n",
            quote(&self.ccache.to_string_lossy())
        ));
        let path = dir.join("kmx-ccache");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
            use std::os::unix::fs::PermissionsExt;
            // Cells of one module run at once: each writes its own temporary file, and
            // the renames of identical scripts race harmlessly.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(".kmx-ccache.{}.{n}", std::process::id()));
            std::fs::write(&tmp, &script)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(path)
    }

    /// Put ccache before the compiler of every toolchain that names no launcher and does
    /// not turn the cache off. Returns whether any toolchain got it.
    pub fn apply(&self, profiles: &mut Profiles) -> bool {
        let mut any = false;
        for tc in profiles.toolchains.values_mut() {
            if tc.launcher.is_empty() && tc.compiler_cache {
                tc.launcher = vec![CCACHE.to_string()];
                any = true;
            }
        }
        any
    }

    /// The environment of every build step of a run that uses it, in place of the caller's
    /// `CCACHE_*`: the cache directory (whose `ccache.conf` is the only configuration file
    /// read besides the system's) and its bound ([`MAX_SIZE`]), depend mode (`CCACHE_DEPEND`:
    /// no preprocessor run; kbuild's `-Wp,-MMD` dependency list names the headers whose
    /// content is hashed), and `base_dir` off and `hash_dir` on whatever a configuration file
    /// says (`base_dir` would change the bytes, `hash_dir = false` reuse debug information
    /// made in another directory).
    pub fn env(&self) -> Vec<(String, String)> {
        let dir = self.dir.to_string_lossy().into_owned();
        vec![
            ("CCACHE_DIR".into(), dir.clone()),
            ("CCACHE_DEPEND".into(), "1".into()),
            ("CCACHE_BASEDIR".into(), String::new()),
            ("CCACHE_HASHDIR".into(), "1".into()),
            ("CCACHE_MAXSIZE".into(), MAX_SIZE.into()),
        ]
    }
}

/// The profiles a build runs with, and the compiler cache it uses: `profiles` with ccache
/// before the compilers of toolchains that name no launcher, unless `off` (`--launcher` or
/// `--no-compiler-cache` given) or ccache is not installed. `home` is `KMX_HOME`.
pub fn for_build<'a>(
    profiles: &'a Profiles,
    home: &Path,
    off: bool,
) -> (std::borrow::Cow<'a, Profiles>, Option<CompilerCache>) {
    let cache = (!off)
        .then(|| CompilerCache::find(&home.join("cache")))
        .flatten();
    match cache {
        Some(cache) => {
            let mut with = profiles.clone();
            match cache.apply(&mut with) {
                true => (std::borrow::Cow::Owned(with), Some(cache)),
                false => (std::borrow::Cow::Borrowed(profiles), None),
            }
        }
        None => (std::borrow::Cow::Borrowed(profiles), None),
    }
}

/// `kmx doctor`'s line: whether builds use the compiler cache, where it is and how full.
pub fn doctor_line(profiles: &Profiles, home: &Path) -> String {
    let Some(cache) = CompilerCache::find(&home.join("cache")) else {
        return "compiler cache: none (ccache is not installed: every build compiles every file)\n  \
                hint: apt-get install ccache"
            .into();
    };
    let version = std::process::Command::new(CCACHE)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .map(|l| l.trim_start_matches("ccache version ").to_string())
        })
        .unwrap_or_else(|| "?".into());
    let (files, bytes) = usage(&cache.dir);
    let off: Vec<&str> = profiles
        .toolchains
        .values()
        .filter(|t| !t.compiler_cache || !t.launcher.is_empty())
        .map(|t| t.name.as_str())
        .collect();
    let mut line = format!(
        "compiler cache: ccache {version} in depend mode, {} ({files} files, {:.1} MB); off with --no-compiler-cache",
        cache.dir.display(),
        bytes as f64 / 1e6
    );
    if !off.is_empty() {
        line.push_str(&format!(
            "\n  not for the toolchains {} (their own launcher, or compiler_cache = false)",
            off.join(", ")
        ));
    }
    line
}

/// The number of files under `dir` and their bytes.
fn usage(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let (f, b) = usage(&e.path());
                (files, bytes) = (files + f, bytes + b);
            }
            Ok(t) if t.is_file() => {
                files += 1;
                bytes += e.metadata().map_or(0, |m| m.len());
            }
            _ => {}
        }
    }
    (files, bytes)
}

/// Replace the caller's `CCACHE_*` in `vars` with the cache's.
pub fn with_cache_env(vars: &mut Vec<(String, String)>, cache: &CompilerCache) {
    vars.retain(|(k, _)| !k.starts_with("CCACHE_"));
    vars.extend(cache.env());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_ccache_settings_give_way_to_kmxs() {
        let cache = CompilerCache {
            dir: PathBuf::from("/h/cache/ccache"),
            ccache: PathBuf::from("/usr/bin/ccache"),
        };
        let mut vars = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("CCACHE_BASEDIR".to_string(), "/".to_string()),
            ("CCACHE_NOHASHDIR".to_string(), "1".to_string()),
        ];
        with_cache_env(&mut vars, &cache);
        assert_eq!(
            vars,
            [
                ("PATH", "/usr/bin"),
                ("CCACHE_DIR", "/h/cache/ccache"),
                ("CCACHE_DEPEND", "1"),
                ("CCACHE_BASEDIR", ""),
                ("CCACHE_HASHDIR", "1"),
                ("CCACHE_MAXSIZE", "256M"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
