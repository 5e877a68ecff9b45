//! What a dkms.conf evaluated to, kept so an unchanged cell starts no bash and no sandbox.
//!
//! An evaluation is kept only when it can be shown to depend on nothing but what its key
//! holds:
//!
//! - the key: the file's bytes and path, every variable of the cell ([`CellVars`]: kernel
//!   release and tree path, `$arch`, the source and DKMS's directories, the identity, the
//!   sandbox mode and the run's other sources), the caller's context (the source's digest,
//!   the kernel tree's identity: `.config`, `Module.symvers`, Makefile; each other source's
//!   digest), this kmx binary, the bash that evaluates it, and the host's `uname`, user and
//!   `$HOME`;
//! - the evaluation ran in the sandbox (where `/usr/src`, `/var/lib/dkms` and
//!   `/lib/modules/<release>/build` are the run's own, read-only) and started no process at
//!   all: no command, no `$(...)`, no subshell, no pipe (the sandbox's PID namespace
//!   allocated no PID between the file's first and last line, read from
//!   `/proc/sys/kernel/ns_last_pid`), so everything it did was bash's own builtins;
//! - the file's text ([`text_is_closed`]) holds none of the builtins that read more than
//!   the key: an input redirection (`<`, `$(<file)`), `source` or `.`, a file test
//!   (`-e`, `-f`, `-d`, ...), `cd`/`pushd`, a glob (`*`, `?`), PATH lookups (`command`,
//!   `type`, `hash`, `compgen`), `enable`, and the clock or randomness (`$RANDOM`,
//!   `$SECONDS`, `$EPOCH*`, `printf %(...)T`).
//!
//! Anything else (a file that runs `grep`, `uname` or `find`) is evaluated again on every
//! run, as before. An entry that cannot be read back is a miss.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::manifest::CellVars;
use crate::digest::Fingerprint;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Keep evaluations under `dir` for this process (the home's `cache/eval`). Without it,
/// nothing is kept.
pub fn use_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// Where evaluations are kept, when they are.
pub fn dir() -> Option<&'static Path> {
    DIR.get().map(PathBuf::as_path)
}

const MAGIC: &[u8] = b"kmx-eval-v1\n";

/// What an evaluation of `conf` (bytes `text`) for `vars` depends on, with `context` (the
/// caller's digest of the source, the tree and the other sources).
pub fn key(context: &str, conf: &Path, text: &[u8], vars: &CellVars) -> String {
    let mut fp = Fingerprint::new();
    fp.field("memo", b"dkms.conf-evaluation-v2")
        .field("context", context.as_bytes())
        .field("conf", conf.as_os_str().as_encoded_bytes())
        .field("text", text)
        .field("kernelver", vars.kernelver.as_bytes())
        .field(
            "kernel_source_dir",
            vars.kernel_source_dir.as_os_str().as_encoded_bytes(),
        )
        .field("arch", vars.arch.as_bytes())
        .field("source_dir", vars.source_dir.as_os_str().as_encoded_bytes())
        .field(
            "source_tree",
            vars.source_tree.as_os_str().as_encoded_bytes(),
        )
        .field("dkms_tree", vars.dkms_tree.as_os_str().as_encoded_bytes())
        .field("module_hint", format!("{:?}", vars.module_hint).as_bytes())
        .field("identity", format!("{:?}", vars.identity).as_bytes())
        // The name and version given (`-m`/`-v`): they decide $module_version.
        .field("given", format!("{:?}", vars.given).as_bytes())
        .field("sandbox", format!("{:?}", vars.sandbox).as_bytes())
        .field("mode", format!("{:?}", vars.mode).as_bytes())
        .field("host", host().as_bytes());
    fp.finish()
}

/// This kmx binary, the bash that evaluates, and the host's names, user and home: read
/// once per process.
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let file = |p: &str| format!("{p}:{}", crate::digest::file_identity(Path::new(p)));
        // SAFETY: uname fills the struct it is given; it is plain data.
        let uts = unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            libc::uname(&mut u);
            u
        };
        let field = |f: &[libc::c_char]| {
            f.iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8 as char)
                .collect::<String>()
        };
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|uid {} euid {}|home {:?}",
            env!("CARGO_PKG_VERSION"),
            file("/proc/self/exe"),
            file("/usr/bin/bash"),
            file("/bin/bash"),
            field(&uts.sysname),
            field(&uts.nodename),
            field(&uts.release),
            field(&uts.machine),
            // SAFETY: getuid and geteuid cannot fail.
            unsafe { libc::getuid() },
            unsafe { libc::geteuid() },
            std::env::var_os("HOME"),
        )
    })
}

fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(&key[..2]).join(key)
}

/// The dump and log kept under `key`, if any (anything unreadable is a miss).
pub fn lookup(key: &str) -> Option<(Vec<u8>, String)> {
    let bytes = std::fs::read(path(dir()?, key)).ok()?;
    let rest = bytes.strip_prefix(MAGIC)?;
    let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
    let rest = &rest[8..];
    let dump = rest.get(..len)?.to_vec();
    let log = String::from_utf8(rest.get(len..)?.to_vec()).ok()?;
    Some((dump, log))
}

/// Keep `dump` and `log` under `key` (written atomically; a failure only costs the next
/// run an evaluation).
pub fn store(key: &str, dump: &[u8], log: &str) {
    let Some(dir) = dir() else { return };
    let file = path(dir, key);
    if let Some(parent) = file.parent()
        && std::fs::create_dir_all(parent).is_err()
    {
        return;
    }
    let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + dump.len() + log.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(dump.len() as u64).to_le_bytes());
    bytes.extend_from_slice(dump);
    bytes.extend_from_slice(log.as_bytes());
    crate::digest::keep_cache_file(&file, &bytes);
}

/// The key of what program `path` prints for `--version`: the program itself by its identity
/// (the file it resolves to, its inode, size, modification and change times: a package
/// upgrade replaces the file, and no one sets a change time back).
fn program_key(path: &Path) -> Option<String> {
    let real = path.canonicalize().ok()?;
    let mut fp = Fingerprint::new();
    fp.field("memo", b"program-version-v1")
        .field("path", real.as_os_str().as_encoded_bytes())
        .field("identity", crate::digest::file_identity(&real).as_bytes());
    Some(fp.finish())
}

/// The first line of `path --version` kept by an earlier run, while the program is the same
/// file.
pub fn program_version(path: &Path) -> Option<String> {
    lookup(&program_key(path)?).map(|(_, line)| line)
}

/// Keep `line` as what `path --version` prints.
pub fn keep_program_version(path: &Path, line: &str) {
    if let Some(key) = program_key(path) {
        store(&key, b"", line);
    }
}

/// Whether the text of a dkms.conf uses none of the builtins whose result depends on more
/// than the key (files it would read, the clock, randomness, PATH). Conservative: a word
/// that merely looks like one (`echo -e`, a `*` in a string) also says no.
pub fn text_is_closed(text: &str) -> bool {
    const WORDS: &[&str] = &[
        "source",
        ".",
        "cd",
        "pushd",
        "popd",
        "command",
        "type",
        "hash",
        "compgen",
        "enable",
        "mapfile",
        "readarray",
        "exec",
        "eval",
        "trap",
        "ulimit",
        "umask",
        "times",
        "-a",
        "-b",
        "-c",
        "-d",
        "-e",
        "-f",
        "-g",
        "-h",
        "-k",
        "-p",
        "-r",
        "-s",
        "-u",
        "-w",
        "-x",
        "-G",
        "-L",
        "-N",
        "-O",
        "-S",
        "-nt",
        "-ot",
        "-ef",
    ];
    const NAMES: &[&str] = &[
        "RANDOM",
        "SRANDOM",
        "SECONDS",
        "EPOCH",
        "BASHPID",
        "%(",
        "BASH_XTRACEFD",
        "PWD",
        "OLDPWD",
        "DIRSTACK",
        "PPID",
    ];
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        if line.contains(['*', '?', '`']) || NAMES.iter().any(|n| line.contains(n)) {
            return false;
        }
        // An input redirection or here-document is `<` not followed or preceded by another
        // `<` (a here-string `<<<` and a here-document `<<` give bash only the text itself).
        let b = line.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'<' && b.get(i + 1) != Some(&b'<') && (i == 0 || b[i - 1] != b'<') {
                return false;
            }
        }
        let words = line.split(|c: char| {
            c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '{' | '}' | '"' | '\'')
        });
        if words.into_iter().any(|w| WORDS.contains(&w)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_assignments_are_closed() {
        let text = "PACKAGE_NAME=\"hello\"\nPACKAGE_VERSION=\"1.0\"\n# a comment with * and cd\n\
                    BUILT_MODULE_NAME[0]=\"hello\"\nMAKE[0]=\"make -C ${kernel_source_dir} M=${dkms_tree}/hello/1.0/build\"\n\
                    if [ \"$arch\" = x86_64 ]; then BUILD_EXCLUSIVE_ARCH=x86_64; fi\n\
                    X=$(cat <<<\"$kernelver\")\nY=${kernelver%%-amd64}\n";
        assert!(text_is_closed(text));
    }

    #[test]
    fn what_reads_more_than_the_key_is_not() {
        for text in [
            "V=$(< /etc/hostname)",
            "while read l; do :; done < /etc/passwd",
            "source /etc/os-release",
            ". /etc/os-release",
            "if [ -f /etc/foo ]; then X=1; fi",
            "[[ -d /opt/x ]] && X=1",
            "for f in /usr/src/*; do :; done",
            "cd /opt",
            "X=$RANDOM",
            "printf -v X '%(%s)T' -1",
            "command -v gcc && X=1",
            "X=`uname -r`",
            "eval \"$(printf x)\"",
        ] {
            assert!(!text_is_closed(text), "{text}");
        }
    }
}
