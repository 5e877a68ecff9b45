//! `dkms.conf`, read the way DKMS reads it: the file is a bash fragment, so bash evaluates it,
//! once per cell, with DKMS's variables (`kernelver`, `kernel_source_dir`, `arch`,
//! `dkms_tree`, `source_tree`, `module`, `module_version`) set for that cell, in a clean
//! environment (only PATH, HOME and LANG=C), stdin closed, from the source directory, under a
//! timeout. As in DKMS, the file runs with the privileges of the user running kmx: it is code.
//! CR before LF is removed first (DKMS strips a trailing CR from every value; removing it from
//! the file also keeps `then\r` from being a syntax error). After sourcing, a wrapper dumps
//! every known directive as NUL-separated `name, index, value` records (values with newlines,
//! quotes and `=` survive) plus the variable names set before and after, so unknown upper-case
//! directives (`LOAD=no`) become warnings. The checks and defaults then follow DKMS's
//! `read_conf`/`read_conf_strict`. The file's stdout and stderr are returned in
//! [`ModuleSpec::log`] for the cell's log. What `$dkms_tree` and `$source_tree` are is the
//! caller's choice (DKMS's own `/var/lib/dkms` and `/usr/src` where cells run in their
//! private namespace); evaluation writes nothing there.

// crate::Error is 128+ bytes; boxing it is error.rs's call, not this module's.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

#[cfg(test)]
use super::manifest::Given;
use super::manifest::{self, BuiltModule, CellVars, Format, ModuleField, ModuleSpec};
use crate::{Error, Result, process, sandbox};

/// How long one evaluation of a dkms.conf may take.
pub const EVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// PATH for the evaluation: fixed, so a cell does not depend on the caller's environment.
const EVAL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every variable DKMS accepts from a dkms.conf (its `dkms_conf_variables`, upper case).
const DIRECTIVES: &[&str] = &[
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "POST_ADD",
    "POST_BUILD",
    "POST_INSTALL",
    "POST_REMOVE",
    "PRE_BUILD",
    "PRE_INSTALL",
    "BUILD_DEPENDS",
    "BUILD_DEPENDS_REBUILD",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "OBSOLETE_BY",
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "BUILT_MODULE_NAME",
    "BUILT_MODULE_LOCATION",
    "DEST_MODULE_NAME",
    "DEST_MODULE_LOCATION",
    "STRIP",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    "CLEAN",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
];

/// Deprecated in DKMS: accepted, warned about, not used.
const DEPRECATED: &[&str] = &[
    "CLEAN",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
];

/// The bash that sources the file and dumps the result. `@DIRECTIVES@` is replaced by the
/// names above (plain identifiers); paths arrive through the environment, never quoted in.
/// The last PID of the sandbox's PID namespace, read before and after the file (`P` record),
/// says whether the file started any process ([`super::memo`]).
const WRAPPER: &str = r#"__kmx_conf=$KMX_CONF __kmx_dump=$KMX_DUMP __kmx_p= __kmx_q=
unset KMX_CONF KMX_DUMP
export -n kernelver kernel_source_dir arch dkms_tree source_tree module module_version
{ for __kmx_n in $(compgen -v); do builtin printf 'B\0%s\0' "$__kmx_n"; done; } >"$__kmx_dump"
builtin read -r __kmx_p </proc/sys/kernel/ns_last_pid 2>/dev/null
set --
. "$__kmx_conf"
builtin read -r __kmx_q </proc/sys/kernel/ns_last_pid 2>/dev/null
set +e +u +o pipefail
IFS=$' \t\n'
{
  builtin printf 'P\0%s\0%s\0' "$__kmx_p" "$__kmx_q"
  for __kmx_n in @DIRECTIVES@; do
    eval "__kmx_keys=(\"\${!$__kmx_n[@]}\")"
    for __kmx_k in "${__kmx_keys[@]}"; do
      eval "__kmx_v=\${$__kmx_n[\$__kmx_k]}"
      builtin printf 'V\0%s\0%s\0%s\0' "$__kmx_n" "$__kmx_k" "$__kmx_v"
    done
  done
  for __kmx_n in $(compgen -v); do builtin printf 'A\0%s\0' "$__kmx_n"; done
  builtin printf 'E\0'
} >>"$__kmx_dump"
exit 0
"#;

/// Evaluate `conf` for one cell and check it the way DKMS does.
pub fn evaluate(conf: &Path, vars: &CellVars) -> Result<ModuleSpec> {
    evaluate_with_timeout(conf, vars, EVAL_TIMEOUT, None)
}

/// [`evaluate`], kept and found again ([`super::memo`]) under `context`: the caller's digest
/// of everything else the evaluation sees (the source, the tree, the run's other sources).
pub fn evaluate_memo(conf: &Path, vars: &CellVars, context: &str) -> Result<ModuleSpec> {
    evaluate_with_timeout(conf, vars, EVAL_TIMEOUT, Some(context))
}

fn evaluate_with_timeout(
    conf: &Path,
    vars: &CellVars,
    timeout: Duration,
    context: Option<&str>,
) -> Result<ModuleSpec> {
    let text = fs::read(conf).map_err(|e| Error::io("read", conf, e))?;
    let key = context
        .filter(|_| super::memo::dir().is_some() && vars.sandbox.is_some())
        .map(|c| super::memo::key(c, conf, &text, vars));
    if let Some(key) = &key
        && let Some((raw, log)) = super::memo::lookup(key)
    {
        return build_spec(conf, vars, Dump::parse(&raw, log));
    }
    let closed = key.is_some() && super::memo::text_is_closed(&String::from_utf8_lossy(&text));
    let keep = |dump: Dump, forked: bool| {
        if let Some(key) = key.as_ref().filter(|_| closed && !forked && !dump.forked) {
            super::memo::store(key, &dump.raw, &dump.log);
        }
        build_spec(conf, vars, dump)
    };
    let tmp =
        tempfile::tempdir().map_err(|e| Error::io("create a temporary directory for", conf, e))?;
    // The files bash reads and writes, in one directory the sandbox shows at EVAL_DIR.
    let files = tmp.path().join("files");
    fs::create_dir(&files).map_err(|e| Error::io("create", &files, e))?;
    let copy = files.join("dkms.conf");
    fs::write(&copy, strip_cr(&text)).map_err(|e| Error::io("write", &copy, e))?;
    let wrapper = files.join("evaluate.sh");
    fs::write(
        &wrapper,
        WRAPPER.replace("@DIRECTIVES@", &DIRECTIVES.join(" ")),
    )
    .map_err(|e| Error::io("write", &wrapper, e))?;
    let ctx = Eval {
        conf,
        files: &files,
        dir: tmp.path(),
        vars,
        timeout,
    };

    // A reading that knows the identity follows one that checked the syntax.
    if let Some((module, version)) = &vars.identity {
        let dump = ctx.source(module, version)?;
        return keep(dump, false);
    }
    let (status, log) = ctx.run(&["-n", "dkms.conf"], &[])?;
    if !status.success() {
        let first = ctx.first_line(&log).unwrap_or_else(|| describe(status));
        return Err(
            Error::config(conf, format!("bash cannot parse it: {first}"))
                .hint(format!("check it with `bash -n {}`", conf.display())),
        );
    }

    // DKMS learns $module and $module_version from a first read of the file (dkms add),
    // then reads it again with them set; do the same when the guess was wrong.
    let (module, version) = guess_identity(vars);
    let mut dump = ctx.source(&module, &version)?;
    let (name, ver) = (dump.scalar("PACKAGE_NAME"), dump.scalar("PACKAGE_VERSION"));
    // A file that never reads $module or $module_version cannot depend on the guess.
    let text = String::from_utf8_lossy(&text);
    let uses_identity = text.contains("$module") || text.contains("${module");
    let mut forked = false;
    if uses_identity && !name.is_empty() && !ver.is_empty() {
        let (name, ver) = decide_identity(vars, name, ver);
        if name != module || ver != version {
            forked = dump.forked;
            dump = ctx.source(&name, &ver)?;
        }
    }
    keep(dump, forked)
}

/// The name and version DKMS builds with (`$module`, `$module_version`, the `<name>/<version>`
/// of `/var/lib/dkms`), read from DKMS 3.0's own script: `-m`/`-v` when given (PACKAGE_NAME
/// and PACKAGE_VERSION are then only checked to be set); else, for a source at
/// `<source_tree>/<name>-<version>` (where dh_dkms's postinst calls `dkms add -m <name> -v
/// <version>` with the directory's version, never substituting a `#MODULES_VERSION#` left in
/// dkms.conf; kmx takes any directory `.../usr/src/<name>-<version>`, so an extracted
/// package is built as installed), that directory's version; else PACKAGE_NAME and
/// PACKAGE_VERSION (`dkms add DIR`).
fn decide_identity(vars: &CellVars, package_name: &str, package_version: &str) -> (String, String) {
    let name = vars
        .given
        .name
        .clone()
        .unwrap_or_else(|| package_name.to_string());
    if let Some(v) = &vars.given.version {
        return (name, v.clone());
    }
    let dir = vars
        .source_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Only a package's directory: one under a `usr/src` (the machine's, or an extracted
    // package's). A checkout named `<name>-<branch>` keeps PACKAGE_VERSION, as `dkms add DIR`.
    let installed = vars
        .source_dir
        .parent()
        .is_some_and(|p| p.ends_with("usr/src"));
    let from_dir = dir
        .strip_prefix(name.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .filter(|v| installed && manifest::invalid_identity(v).is_none());
    let version = from_dir.unwrap_or(package_version).to_string();
    (name, version)
}

/// `$module`/`$module_version` for the first evaluation: the hint, and the rest of a
/// `<module>-<version>` directory name.
fn guess_identity(vars: &CellVars) -> (String, String) {
    if let (Some(m), Some(v)) = (&vars.given.name, &vars.given.version) {
        return (m.clone(), v.clone());
    }
    let dir = vars
        .source_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match &vars.module_hint {
        Some(m) => {
            let v = dir
                .strip_prefix(m.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .unwrap_or("");
            (m.clone(), v.to_string())
        }
        None => match dir.rsplit_once('-') {
            Some((m, v)) => (m.to_string(), v.to_string()),
            None => (dir, String::new()),
        },
    }
}

fn strip_cr(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for (i, &b) in text.iter().enumerate() {
        if b == b'\r' && text.get(i + 1).is_none_or(|&n| n == b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

/// The most of a dump kmx reads: every directive of a real package fits in far less.
const DUMP_LIMIT: u64 = 64 << 20;

/// What the wrapper wrote to `path`, a file the evaluated bash could also replace: read only
/// if it is a regular file (not a FIFO that never ends, not a link to `/dev/zero`), and at
/// most [`DUMP_LIMIT`] bytes. Anything else reads as empty, which says the evaluation did
/// not finish.
fn read_dump(path: &Path) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let Ok(file) = file else { return Vec::new() };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    match file.take(DUMP_LIMIT).read_to_end(&mut bytes) {
        Ok(_) => bytes,
        Err(_) => Vec::new(),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// One evaluation's fixed inputs.
struct Eval<'a> {
    conf: &'a Path,
    /// The files bash reads and writes (the copy, the wrapper, the dump).
    files: &'a Path,
    /// The evaluation's temporary directory (holds `files` and the log).
    dir: &'a Path,
    vars: &'a CellVars,
    timeout: Duration,
}

impl Eval<'_> {
    /// Where bash sees `files`: [`sandbox::EVAL_DIR`] in the sandbox.
    fn seen(&self) -> PathBuf {
        match self.vars.sandbox {
            Some(_) => PathBuf::from(sandbox::EVAL_DIR),
            None => self.files.to_path_buf(),
        }
    }

    /// Source the file with `$module`/`$module_version` set and read back the dump.
    fn source(&self, module: &str, version: &str) -> Result<Dump> {
        let v = self.vars;
        let seen = self.seen();
        let (conf, dump) = (seen.join("dkms.conf"), seen.join("dump"));
        let env: [(&str, &OsStr); 9] = [
            ("KMX_CONF", conf.as_os_str()),
            ("KMX_DUMP", dump.as_os_str()),
            ("kernelver", OsStr::new(&v.kernelver)),
            ("kernel_source_dir", v.kernel_source_dir.as_os_str()),
            ("arch", OsStr::new(&v.arch)),
            ("dkms_tree", v.dkms_tree.as_os_str()),
            ("source_tree", v.source_tree.as_os_str()),
            ("module", OsStr::new(module)),
            ("module_version", OsStr::new(version)),
        ];
        let (status, log) = self.run(&["evaluate.sh"], &env)?;
        let dump_path = self.files.join("dump");
        let bytes = read_dump(&dump_path);
        let _ = fs::remove_file(&dump_path);
        let dump = Dump::parse(&bytes, log);
        if !status.success() || !dump.complete {
            let first = self
                .first_line(&dump.log)
                .map(|l| format!(": {l}"))
                .unwrap_or_default();
            return Err(Error::config(
                self.conf,
                format!(
                    "bash stopped before the end of the file ({}){first}",
                    describe(status)
                ),
            )
            .hint("dkms.conf is sourced for every kernel; it must not call `exit` or `exec`"));
        }
        Ok(dump)
    }

    /// Run bash with `args` (file names of `files`, or options) in the clean environment
    /// plus `env`, in the sandbox when there is one; returns its status and everything it
    /// printed, with the copy's path replaced by the real one.
    fn run(&self, args: &[&str], env: &[(&str, &OsStr)]) -> Result<(ExitStatus, String)> {
        let log_path = self.dir.join("log");
        let log = fs::File::create(&log_path).map_err(|e| Error::io("create", &log_path, e))?;
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        let seen = self.seen();
        let words: Vec<String> = args
            .iter()
            .map(|a| match a.starts_with('-') {
                true => a.to_string(),
                false => seen.join(a).to_string_lossy().into_owned(),
            })
            .collect();
        let mut cmd = match &self.vars.sandbox {
            Some(others) => {
                let view = self.view(others);
                let cwd = match &self.vars.identity {
                    Some((name, version)) => sandbox::source_dir(name, version),
                    None => self.vars.source_dir.clone(),
                };
                let line = std::iter::once("exec bash".to_string())
                    .chain(words.iter().map(|w| process::quote(w)))
                    .collect::<Vec<_>>()
                    .join(" ");
                view.command(&cwd, &line)
            }
            None => {
                let mut cmd = Command::new("bash");
                cmd.args(&words).current_dir(&self.vars.source_dir);
                cmd
            }
        };
        cmd.env_clear()
            .env("PATH", EVAL_PATH)
            .env("HOME", home)
            .env("LANG", "C")
            .envs(env.iter().copied());
        // Supervised like every child: its own process group, killed (with anything the
        // file left running in the background) when it ends, overstays, or the run is
        // stopped (Ctrl-C, SIGTERM, SIGHUP during planning).
        let stop = process::stop_flag()?;
        let ended = process::run_supervised(&mut cmd, &log, self.timeout, &stop)
            .map_err(|e| e.hint("kmx evaluates dkms.conf with bash, as DKMS does; install bash"))?;
        let status = match ended {
            process::Ended::Exited(status) => status,
            process::Ended::Interrupted => {
                return Err(Error::new(
                    crate::error::Kind::Interrupted,
                    "interrupted while evaluating it",
                )
                .at(self.conf));
            }
            process::Ended::TimedOut(_) => {
                return Err(Error::config(
                    self.conf,
                    format!(
                        "bash did not finish evaluating it within {} s",
                        self.timeout.as_secs()
                    ),
                )
                .hint(
                    "dkms.conf is sourced for every kernel; it must not sleep or wait for input",
                ));
            }
        };
        let text = read_kept(&log_path).map_err(|e| Error::io("read", &log_path, e))?;
        if self.vars.sandbox.is_some()
            && let Some(why) = sandbox::setup_failure(status.code(), &text)
        {
            return Err(Error::env(format!("cannot make the sandbox: {why}"))
                .at(self.conf)
                .hint("kmx evaluates dkms.conf in a sandbox (bubblewrap); `kmx doctor` says why one cannot be made"));
        }
        let copy = seen.join("dkms.conf");
        Ok((
            status,
            text.replace(
                copy.to_string_lossy().as_ref(),
                &self.conf.to_string_lossy(),
            ),
        ))
    }

    /// The sandbox for this evaluation: the cell's kernel, source and identity (when
    /// known), the other sources of the run, no network, the host read-only.
    fn view(&self, others: &std::sync::Arc<Vec<sandbox::Source>>) -> sandbox::View {
        let (name, version) = self.vars.identity.clone().unwrap_or_default();
        sandbox::View {
            release: self.vars.kernelver.clone(),
            kdir: self.vars.kernel_source_dir.clone(),
            name,
            version,
            source: self.vars.source_dir.clone(),
            others: others.clone(),
            purpose: sandbox::Purpose::Evaluate {
                files: self.files.to_path_buf(),
            },
            policy: self.vars.mode.policy(),
            root: None,
        }
    }

    /// The first non-empty line of `log`, without the "<dkms.conf>: " prefix bash puts on it.
    fn first_line(&self, log: &str) -> Option<String> {
        let prefix = format!("{}: ", self.conf.to_string_lossy());
        let line = log.lines().find(|l| !l.trim().is_empty())?;
        Some(line.strip_prefix(&prefix).unwrap_or(line).to_string())
    }
}

/// What the wrapper printed: directive values and the variable names set before and after.
#[derive(Default)]
struct Dump {
    values: HashMap<String, BTreeMap<usize, String>>,
    before: HashSet<String>,
    after: Vec<String>,
    /// Keys that are not array indexes (a directive declared `-A`).
    bad_keys: Vec<String>,
    complete: bool,
    log: String,
    /// Whether the file may have started a process (no `P` record with equal PIDs).
    forked: bool,
    /// The bytes parsed, as kept by [`super::memo`].
    raw: Vec<u8>,
}

impl Dump {
    fn parse(bytes: &[u8], log: String) -> Dump {
        let mut d = Dump {
            log,
            forked: true,
            raw: bytes.to_vec(),
            ..Dump::default()
        };
        let mut fields = bytes
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned());
        while let Some(tag) = fields.next() {
            match tag.as_str() {
                "B" => d.before.extend(fields.next()),
                "A" => d.after.extend(fields.next()),
                "E" => d.complete = true,
                "P" => {
                    let (Some(before), Some(after)) = (fields.next(), fields.next()) else {
                        break;
                    };
                    d.forked = before.is_empty() || before != after;
                }
                "V" => {
                    let (Some(name), Some(key), Some(value)) =
                        (fields.next(), fields.next(), fields.next())
                    else {
                        break;
                    };
                    match key.parse::<usize>() {
                        Ok(i) => {
                            d.values.entry(name).or_default().insert(i, value);
                        }
                        Err(_) => d.bad_keys.push(format!("{name}[{key}]")),
                    }
                }
                _ => break,
            }
        }
        d
    }

    fn get(&self, name: &str, i: usize) -> &str {
        self.values
            .get(name)
            .and_then(|a| a.get(&i))
            .map_or("", String::as_str)
    }
    fn scalar(&self, name: &str) -> &str {
        self.get(name, 0)
    }
    fn opt(&self, name: &str) -> Option<String> {
        Some(self.scalar(name).to_string()).filter(|s| !s.is_empty())
    }
    /// `${#NAME[@]}`: how many elements are set.
    fn count(&self, name: &str) -> usize {
        self.values.get(name).map_or(0, BTreeMap::len)
    }
    fn indexes(&self, name: &str) -> Vec<usize> {
        self.values
            .get(name)
            .map(|a| a.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// DKMS's `read_conf` + `read_conf_strict` on the dumped values.
fn build_spec(conf: &Path, vars: &CellVars, d: Dump) -> Result<ModuleSpec> {
    let (module, module_version, notes) = identity(conf, vars, &d)?;
    let mut spec = ModuleSpec::new(Format::DkmsConf, module, module_version);
    spec.warnings = notes;
    modules(conf, &d, &mut spec)?;
    make_and_patches(conf, vars, &d, &mut spec)?;
    exclusions(conf, &d, &mut spec)?;
    scripts_and_flags(conf, &d, &mut spec)?;
    directive_warnings(conf, &d, &mut spec);
    spec.log = d.log;
    Ok(spec)
}

/// The package's name and version as DKMS builds it (checked to name a directory), and a
/// note for each of PACKAGE_NAME and PACKAGE_VERSION it does not use.
fn identity(conf: &Path, vars: &CellVars, d: &Dump) -> Result<(String, String, Vec<String>)> {
    let err = |msg: String| Error::config(conf, msg);
    let name = d.scalar("PACKAGE_NAME");
    let version = d.scalar("PACKAGE_VERSION");
    for (key, value) in [("PACKAGE_NAME", name), ("PACKAGE_VERSION", version)] {
        if value.is_empty() {
            return Err(err(format!("{key} is missing or empty")).hint(format!(
                "set {key}=\"...\" in it; DKMS refuses the file too"
            )));
        }
        if let Some(why) = manifest::invalid_identity(value) {
            return Err(
                err(format!("{key}={value:?} cannot name a directory: {why}"))
                    .hint("use one word of letters, digits, '.', '-', '_' or '+'"),
            );
        }
    }
    let at = conf.display();
    let (module, module_version) = decide_identity(vars, name, version);
    for (what, value) in [
        ("the module name", &module),
        ("the module version", &module_version),
    ] {
        if let Some(why) = manifest::invalid_identity(value) {
            return Err(
                err(format!("{what} {value:?} cannot name a directory: {why}"))
                    .hint("use one word of letters, digits, '.', '-', '_' or '+'"),
            );
        }
    }
    let mut notes = Vec::new();
    for (key, value, used) in [
        ("PACKAGE_NAME", name, &module),
        ("PACKAGE_VERSION", version, &module_version),
    ] {
        if value != used {
            let whose = match (&vars.given.name, &vars.given.version, key) {
                (Some(_), _, "PACKAGE_NAME") | (_, Some(_), "PACKAGE_VERSION") => {
                    "given".to_string()
                }
                _ => format!("of the directory {}", vars.source_dir.display()),
            };
            notes.push(format!(
                "{at}: {key}={value:?} is not used: DKMS builds {module} {module_version} (the \
                 {} {whose})",
                if key == "PACKAGE_NAME" {
                    "name"
                } else {
                    "version"
                },
            ));
        }
    }
    Ok((module, module_version, notes))
}

/// The module arrays (BUILT_MODULE_NAME, ..., STRIP), as DKMS reads them: sparse, up to the
/// highest index of any.
fn modules(conf: &Path, d: &Dump, spec: &mut ModuleSpec) -> Result<()> {
    let err = |msg: String| Error::config(conf, msg);
    let at = conf.display();
    let name = d.scalar("PACKAGE_NAME");
    const MODULE_ARRAYS: [&str; 4] = [
        "BUILT_MODULE_NAME",
        "BUILT_MODULE_LOCATION",
        "DEST_MODULE_NAME",
        "DEST_MODULE_LOCATION",
    ];
    let num = MODULE_ARRAYS
        .iter()
        .flat_map(|a| d.indexes(a))
        .max()
        .map_or(0, |m| m + 1);
    let mut strip0 = true;
    for i in 0..num {
        let mut built = d.get("BUILT_MODULE_NAME", i).to_string();
        if built.is_empty() && num == 1 {
            built = name.to_string();
        }
        if built.is_empty() {
            return Err(err(format!(
                "BUILT_MODULE_NAME[{i}] is missing (the module arrays have records 0 to {})",
                num - 1
            ))
            .hint("DKMS rejects gaps too: give every record its BUILT_MODULE_NAME"));
        }
        let dest = Some(d.get("DEST_MODULE_NAME", i))
            .filter(|s| !s.is_empty())
            .unwrap_or(&built)
            .to_string();
        let dest_location = manifest::trim_slashes(d.get("DEST_MODULE_LOCATION", i)).to_string();
        if dest_location.is_empty() {
            return Err(err(format!("DEST_MODULE_LOCATION[{i}] is missing"))
                .hint("DKMS requires it too; /updates/dkms is the usual value"));
        }
        let location = manifest::trim_slashes(d.get("BUILT_MODULE_LOCATION", i));
        for (field, value) in [
            (ModuleField::BuiltName, built.as_str()),
            (ModuleField::BuiltLocation, location),
            (ModuleField::DestName, dest.as_str()),
            (ModuleField::DestLocation, dest_location.as_str()),
        ] {
            if let Err(why) = manifest::check_module_field(field, value) {
                return Err(err(format!("{}[{i}]={value:?} {why}", field.dkms_name())));
            }
        }
        let strip = match d.get("STRIP", i).chars().next() {
            Some('n' | 'N') => false,
            None => strip0,
            _ => true,
        };
        if i == 0 {
            strip0 = strip;
        }
        let dup = spec.modules.iter().find_map(|m: &BuiltModule| {
            if m.built_name == built && m.built_location == Path::new(location) {
                Some(format!(
                    "duplicate module {built:?} in BUILT_MODULE_NAME[{i}]"
                ))
            } else if m.dest_name == dest {
                Some(format!(
                    "duplicate module {dest:?} in DEST_MODULE_NAME[{i}]"
                ))
            } else {
                None
            }
        });
        if let Some(msg) = dup {
            return Err(err(msg));
        }
        spec.modules.push(BuiltModule {
            built_name: built,
            built_location: PathBuf::from(location),
            dest_name: dest,
            dest_location,
            strip,
        });
    }
    if num == 0 {
        spec.warnings.push(format!(
            "{at}: no BUILT_MODULE_NAME: zero modules specified"
        ));
    }

    Ok(())
}

/// MAKE and PATCH for this cell's kernel (their *_MATCH rules).
fn make_and_patches(conf: &Path, vars: &CellVars, d: &Dump, spec: &mut ModuleSpec) -> Result<()> {
    let err = |msg: String| Error::config(conf, msg);
    let at = conf.display();
    let w = &mut spec.warnings;
    // MAKE / PATCH: DKMS walks indexes below the element count, so elements past a gap are
    // never looked at; say so instead of silently differing from DKMS.
    let matches = |key: &str, i: usize, re: &str, text: &str| -> Result<bool> {
        manifest::ere(re).map(|r| r.is_match(text)).map_err(|e| {
            err(format!(
                "{key}[{i}]={re:?} is not a valid regular expression"
            ))
            .caused_by(e)
        })
    };
    let kver = vars.kernelver.as_str();
    let mut make = if d.get("MAKE_MATCH", 0).is_empty() {
        d.get("MAKE", 0)
    } else {
        ""
    };
    for i in 0..d.count("MAKE") {
        let (m, re) = (d.get("MAKE", i), d.get("MAKE_MATCH", i));
        if !m.is_empty() && !re.is_empty() && matches("MAKE_MATCH", i, re, kver)? {
            make = m;
        }
    }
    spec.make = Some(make.to_string()).filter(|m| !m.is_empty());
    for i in 0..d.count("PATCH") {
        let (p, re) = (d.get("PATCH", i), d.get("PATCH_MATCH", i));
        if !p.is_empty() && (re.is_empty() || matches("PATCH_MATCH", i, re, kver)?) {
            if Path::new(p)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(err(format!(
                    "PATCH[{i}]={p:?} contains a '..' path component"
                )));
            }
            spec.patches.push(PathBuf::from(p));
        }
    }
    for key in ["MAKE", "PATCH"] {
        let count = d.count(key);
        for i in d.indexes(key).into_iter().filter(|&i| i >= count) {
            w.push(format!(
                "{at}: {key}[{i}] is ignored: DKMS only reads {key}[0] to {key}[{}] (the array has {count} elements)",
                count.saturating_sub(1)
            ));
        }
    }

    Ok(())
}

/// The global BUILD_EXCLUSIVE_* rules and OBSOLETE_BY (which caps the kernel when no MAX is
/// set); the per-module ones are warned about.
fn exclusions(conf: &Path, d: &Dump, spec: &mut ModuleSpec) -> Result<()> {
    let err = |msg: String| Error::config(conf, msg);
    let at = conf.display();
    spec.obsolete_by = d.opt("OBSOLETE_BY");
    let ex = &mut spec.exclusive;
    ex.kernel = d.opt("BUILD_EXCLUSIVE_KERNEL");
    ex.kernel_min = d.opt("BUILD_EXCLUSIVE_KERNEL_MIN");
    ex.kernel_max = d
        .opt("BUILD_EXCLUSIVE_KERNEL_MAX")
        .or_else(|| spec.obsolete_by.clone());
    ex.arch = d.opt("BUILD_EXCLUSIVE_ARCH");
    ex.config = d
        .scalar("BUILD_EXCLUSIVE_CONFIG")
        .split_whitespace()
        .map(String::from)
        .collect();
    for key in ["BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_ARCH"] {
        let re = d.scalar(key);
        if !re.is_empty() {
            manifest::ere(re).map_err(|e| {
                err(format!("{key}={re:?} is not a valid regular expression")).caused_by(e)
            })?;
        }
    }
    for key in DIRECTIVES
        .iter()
        .filter(|k| k.starts_with("BUILD_EXCLUSIVE_"))
    {
        for i in d.indexes(key).into_iter().filter(|&i| i > 0) {
            spec.warnings.push(format!(
                "{at}: {key}[{i}] (a per-module rule) is not supported by kmx; ignored"
            ));
        }
    }

    Ok(())
}

/// The scripts DKMS runs around a build and an install, BUILD_DEPENDS, and the yes/no
/// directives.
fn scripts_and_flags(conf: &Path, d: &Dump, spec: &mut ModuleSpec) -> Result<()> {
    let err = |msg: String| Error::config(conf, msg);
    spec.clean = d.opt("CLEAN");
    spec.pre_build = d.opt("PRE_BUILD");
    spec.post_build = d.opt("POST_BUILD");
    spec.post_add = d.opt("POST_ADD");
    spec.pre_install = d.opt("PRE_INSTALL");
    spec.post_install = d.opt("POST_INSTALL");
    spec.post_remove = d.opt("POST_REMOVE");
    spec.build_depends = d
        .values
        .get("BUILD_DEPENDS")
        .map(|a| a.values().filter(|s| !s.is_empty()).cloned().collect())
        .unwrap_or_default();
    let yes_no = |key: &str| -> Result<bool> {
        match d.scalar(key).to_ascii_lowercase().as_str() {
            "yes" => Ok(true),
            "" | "no" => Ok(false),
            _ => Err(err(format!(
                "{key}={:?} is not supported: use yes or no",
                d.scalar(key)
            ))),
        }
    };
    spec.autoinstall = yes_no("AUTOINSTALL")?;
    spec.no_weak_modules = yes_no("NO_WEAK_MODULES")?;
    yes_no("BUILD_DEPENDS_REBUILD")?;

    Ok(())
}

/// Warnings for what kmx ignores: deprecated directives, elements that are not indexed, and
/// names that look like directives and are not.
fn directive_warnings(conf: &Path, d: &Dump, spec: &mut ModuleSpec) {
    let at = conf.display();
    let w = &mut spec.warnings;
    for key in DEPRECATED {
        let value = d.scalar(key);
        if d.count(key) > 0
            && !(*key == "CLEAN" && matches!(value, "true" | "/bin/true" | "/usr/bin/true"))
        {
            w.push(format!(
                "{at}: {key} is deprecated in DKMS and ignored by kmx"
            ));
        }
    }
    for key in &d.bad_keys {
        w.push(format!(
            "{at}: {key}: directives are indexed arrays; this element is ignored"
        ));
    }
    let mut unknown: Vec<&String> = d
        .after
        .iter()
        .filter(|n| !d.before.contains(*n) && looks_like_directive(n))
        .collect();
    unknown.sort();
    unknown.dedup();
    for n in unknown {
        w.push(format!(
            "{at}: {n} is not a DKMS directive; ignored (fine if it only helps build another value)"
        ));
    }
}

/// What a cell keeps of what dkms.conf printed while it was read: it goes into every cell's
/// log (and from there into `make.log` and the cache), and a file that prints megabytes
/// would be stored that many times over. The first [`KEPT_OUTPUT`] bytes, and a line saying
/// how much was cut; only that much is read, so a file that prints gigabytes costs kmx no
/// memory.
const KEPT_OUTPUT: usize = 64 * 1024;

fn read_kept(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let total = file.metadata()?.len() as usize;
    let mut bytes = Vec::with_capacity(total.min(KEPT_OUTPUT));
    file.take(KEPT_OUTPUT as u64).read_to_end(&mut bytes)?;
    let mut log = String::from_utf8_lossy(&bytes).into_owned();
    if total > KEPT_OUTPUT {
        // A character cut in two reads as U+FFFD; the count is of the file's bytes.
        log.push_str(&format!(
            "\n[kmx: {} more bytes of dkms.conf's output not kept]\n",
            total - KEPT_OUTPUT
        ));
    }
    Ok(log)
}

/// An upper-case name that is neither a known directive, a kernel config symbol (files
/// source the kernel's .config), nor one of bash's own variables.
fn looks_like_directive(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_uppercase())
        && n.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !DIRECTIVES.contains(&n)
        && !n.starts_with("CONFIG_")
        && !n.starts_with("BASH")
        && !matches!(
            n,
            "PIPESTATUS"
                | "REPLY"
                | "OPTARG"
                | "OPTIND"
                | "COPROC"
                | "MAPFILE"
                | "FUNCNAME"
                // pushd/popd and cd set these.
                | "OLDPWD"
                | "DIRSTACK"
                | "PWD"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_dkms_conf_prints_is_kept_up_to_64_kib() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("log");
        fs::write(&path, "said\n").expect("write");
        assert_eq!(read_kept(&path).expect("read"), "said\n");
        fs::write(&path, "é".repeat(KEPT_OUTPUT)).expect("write");
        let kept = read_kept(&path).expect("read");
        assert!(kept.len() < KEPT_OUTPUT + 100, "{}", kept.len());
        assert!(
            kept.ends_with(&format!(
                "\n[kmx: {} more bytes of dkms.conf's output not kept]\n",
                KEPT_OUTPUT * 2 - KEPT_OUTPUT
            )),
            "{}",
            &kept[kept.len() - 80..]
        );
    }
    use crate::error::render;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dkms")
            .join(name)
    }

    /// A cell for fixture `name`: scratch directories in a temp dir, `config` as the kernel's .config.
    fn cell(
        name: &str,
        kernelver: &str,
        arch: &str,
        config: &str,
    ) -> (tempfile::TempDir, CellVars) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kernel = tmp.path().join("kernel");
        fs::create_dir_all(&kernel).expect("mkdir");
        fs::write(kernel.join(".config"), config).expect("write .config");
        let vars = CellVars {
            kernelver: kernelver.into(),
            kernel_source_dir: kernel,
            arch: arch.into(),
            source_dir: fixture(name),
            source_tree: fixture(name),
            dkms_tree: tmp.path().join("dkms"),
            module_hint: None,
            identity: None,
            given: Default::default(),
            sandbox: None,
            mode: Default::default(),
        };
        (tmp, vars)
    }

    fn eval(name: &str, kernelver: &str) -> Result<ModuleSpec> {
        let (_tmp, vars) = cell(name, kernelver, "x86_64", "");
        evaluate(&fixture(name).join("dkms.conf"), &vars)
    }

    fn eval_err(name: &str) -> String {
        render(&eval(name, "6.1.0-18-amd64").expect_err("must fail"))
    }

    fn conf(name: &str) -> String {
        fixture(name).join("dkms.conf").display().to_string()
    }

    #[test]
    fn the_version_is_the_given_one_else_an_installed_directorys_else_package_version() {
        let decide = |dir: &str, given: Given| {
            let mut vars = CellVars::for_tests(Path::new(dir));
            vars.given = given;
            decide_identity(&vars, "foo", "#MODULES_VERSION#")
        };
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        // dh_dkms: `dkms add -m foo -v 1.2` for /usr/src/foo-1.2; an extracted package too.
        assert_eq!(
            decide("/usr/src/foo-1.2", Given::default()),
            pair("foo", "1.2")
        );
        assert_eq!(
            decide("/x/pkg/usr/src/foo-1.2-3", Given::default()),
            pair("foo", "1.2-3")
        );
        // `dkms add DIR` elsewhere: PACKAGE_VERSION, whatever the directory is called.
        assert_eq!(
            decide("/home/me/foo-master", Given::default()),
            pair("foo", "#MODULES_VERSION#")
        );
        // Another package's name, or no version in the name.
        assert_eq!(
            decide("/usr/src/bar-1.2", Given::default()),
            pair("foo", "#MODULES_VERSION#")
        );
        assert_eq!(
            decide("/usr/src/foo", Given::default()),
            pair("foo", "#MODULES_VERSION#")
        );
        // -m/-v win over both.
        let given = Given {
            name: Some("baz".into()),
            version: Some("9".into()),
        };
        assert_eq!(decide("/usr/src/foo-1.2", given), pair("baz", "9"));
        let name_only = Given {
            name: Some("foo".into()),
            version: None,
        };
        assert_eq!(decide("/usr/src/foo-1.2", name_only), pair("foo", "1.2"));
    }

    #[test]
    fn simple() {
        let s = eval("simple", "6.1.0-18-amd64").expect("evaluates");
        assert_eq!((s.name.as_str(), s.version.as_str()), ("hello", "1.0"));
        assert_eq!(
            s.modules,
            vec![BuiltModule {
                built_name: "hello".into(),
                built_location: PathBuf::new(),
                dest_name: "hello".into(),
                dest_location: "/updates/dkms".into(),
                strip: true,
            }]
        );
        assert!(s.autoinstall);
        assert_eq!((s.make, s.patches.len()), (None, 0));
        assert_eq!(s.warnings, Vec::<String>::new());
        assert_eq!(s.log, "");
    }

    #[test]
    fn two_modules_in_subdirectories() {
        let (_tmp, vars) = cell("two-modules", "6.1.0-18-amd64", "x86_64", "");
        let s = evaluate(&fixture("two-modules").join("dkms.conf"), &vars).expect("evaluates");
        let m = &s.modules;
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].built_location.to_str(), m[0].dest_location.as_str()),
            (Some("core"), "/kernel/drivers/net/wireless")
        );
        assert_eq!(
            (m[1].built_location.to_str(), m[1].dest_name.as_str()),
            (Some("usb"), "wifi-usb")
        );
        assert_eq!((m[0].strip, m[1].strip), (true, false));
        let build = vars.dkms_tree.join("wifi/2.3-1/build");
        assert_eq!(
            s.make,
            Some(format!(
                "make -C {} M={}",
                vars.kernel_source_dir.display(),
                build.display()
            ))
        );
        // Second evaluation with $module/$module_version from PACKAGE_NAME/VERSION, as DKMS.
        assert_eq!(s.post_build.as_deref(), Some("post.sh wifi 2.3-1"));
        assert_eq!(s.build_depends, ["cfg", "mac"]);
        assert!(s.autoinstall);
    }

    #[test]
    fn bash_logic_sees_the_cells_kernel_config() {
        let (_t, vars) = cell(
            "bash-logic",
            "6.1.0-18-arm64",
            "aarch64",
            "CONFIG_NET=y\nCONFIG_GAMMA=y\n",
        );
        let s = evaluate(&fixture("bash-logic").join("dkms.conf"), &vars).expect("evaluates");
        let names: Vec<&str> = s.modules.iter().map(|m| m.built_name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "gamma"]);
        assert_eq!(
            (s.version.as_str(), s.make.as_deref()),
            ("0.9", Some("make KVER=6.1.0-18-arm64 ARCH_HINT=aarch64"))
        );
        assert_eq!(
            s.log,
            "logic: evaluated for 6.1.0-18-arm64 with 3 modules\n"
        );
        assert_eq!(
            s.warnings,
            Vec::<String>::new(),
            "CONFIG_* from .config are not directives"
        );
        assert_eq!(s.exclusion("6.1.0-18-arm64", &["aarch64"], &|_| true), None);

        let (_t, vars) = cell(
            "bash-logic",
            "6.1.0-18-arm64",
            "aarch64",
            "# CONFIG_NET is not set\n",
        );
        let s = evaluate(&fixture("bash-logic").join("dkms.conf"), &vars).expect("evaluates");
        assert_eq!(s.modules.len(), 2);
        assert_eq!(
            s.exclusion("6.1.0-18-arm64", &["aarch64", "arm64"], &|_| true)
                .as_deref(),
            Some(r#"BUILD_EXCLUSIVE_ARCH="^do_not_build$" does not match aarch64 (target arm64)"#)
        );
    }

    #[test]
    fn build_exclusive_rules() {
        let s = eval("exclusive-arch", "6.1.0").expect("evaluates");
        let pci = |c: &str| c == "CONFIG_PCI";
        assert_eq!(
            s.exclusion("6.1.0-18-amd64", &["x86_64", "amd64"], &pci),
            None
        );
        assert_eq!(s.exclusion("6.1.0-18-686", &["i686", "i386"], &pci), None);
        assert_eq!(
            s.exclusion("6.1.0-18-arm64", &["aarch64", "arm64"], &pci)
                .as_deref(),
            Some(r#"BUILD_EXCLUSIVE_ARCH="^(x86_64|i.86)$" does not match aarch64 (target arm64)"#)
        );
        assert_eq!(
            s.exclusion("4.19.0-20-amd64", &["x86_64"], &pci).as_deref(),
            Some(r#"BUILD_EXCLUSIVE_KERNEL_MIN="5.10" > 4.19.0-20-amd64"#)
        );
        assert_eq!(
            s.exclusion("6.6.13", &["x86_64"], &pci).as_deref(),
            Some(r#"BUILD_EXCLUSIVE_KERNEL_MAX="6.5" < 6.6.13"#),
            "OBSOLETE_BY caps the kernel as in DKMS"
        );
        assert_eq!(
            s.exclusion("6.1.0", &["x86_64"], &|_| true).as_deref(),
            Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_PREEMPT_RT is set")
        );
    }

    #[test]
    fn make_match_and_patch_match_choose_per_kernel() {
        let pick = |kver: &str| {
            let s = eval("match", kver).expect("evaluates");
            let patches: Vec<String> = s.patches.iter().map(|p| p.display().to_string()).collect();
            (
                s.make.unwrap_or_default(),
                patches.join(" "),
                s.modules[0].built_name.clone(),
                s.modules[0].strip,
            )
        };
        assert_eq!(
            pick("5.10.0-28-amd64"),
            (
                "make old".into(),
                "all.patch five.patch".into(),
                "matchy".into(),
                false
            )
        );
        assert_eq!(pick("6.1.0-18-amd64").0, "make six-one");
        assert_eq!(pick("6.1.0-18-amd64").1, "all.patch six.patch");
        assert_eq!(pick("6.6.13").0, "make six");
    }

    #[test]
    fn sparse_module_arrays_are_rejected_like_dkms() {
        assert_eq!(
            eval_err("sparse"),
            format!(
                "error: {}: BUILT_MODULE_NAME[1] is missing (the module arrays have records 0 to 2)\n  hint: DKMS rejects gaps too: give every record its BUILT_MODULE_NAME",
                conf("sparse")
            )
        );
    }

    #[test]
    fn sparse_make_past_the_count_is_ignored_with_a_warning() {
        let s = eval("sparse-make", "6.1.0").expect("evaluates");
        assert_eq!(s.make.as_deref(), Some("make default"));
        assert_eq!(
            s.modules[0].built_name, "sparse",
            "one record defaults to PACKAGE_NAME"
        );
        assert_eq!(
            s.warnings,
            [format!(
                "{}: MAKE[3] is ignored: DKMS only reads MAKE[0] to MAKE[1] (the array has 2 elements)",
                conf("sparse-make")
            )]
        );
    }

    #[test]
    fn crlf_file() {
        let s = eval("crlf", "6.1.0").expect("evaluates");
        assert_eq!(
            (s.name.as_str(), s.version.as_str(), s.autoinstall),
            ("crlf", "1.0", true)
        );
        assert_eq!(s.modules[0].built_name, "crlf");
    }

    #[test]
    fn pushd_popd_and_cd_are_not_taken_for_directives() {
        let s = eval("pushd", "6.1.0").expect("evaluates");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn unknown_and_deprecated_directives_warn_and_values_survive() {
        let s = eval("unknown", "6.1.0").expect("evaluates");
        let c = conf("unknown");
        assert_eq!(
            s.warnings,
            [
                format!("{c}: CLEAN is deprecated in DKMS and ignored by kmx"),
                format!("{c}: REMAKE_INITRD is deprecated in DKMS and ignored by kmx"),
                format!(
                    "{c}: LOAD is not a DKMS directive; ignored (fine if it only helps build another value)"
                ),
            ]
        );
        assert_eq!(
            s.make.as_deref(),
            Some("make 'quoted' \"double\" a=b\nsecond line")
        );
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        assert_eq!(
            eval_err("syntax-error"),
            format!(
                "error: {c}: bash cannot parse it: line 3: syntax error near unexpected token `fi'\n  hint: check it with `bash -n {c}`",
                c = conf("syntax-error")
            )
        );
    }

    #[test]
    fn missing_package_name() {
        assert_eq!(
            eval_err("missing-name"),
            format!(
                "error: {}: PACKAGE_NAME is missing or empty\n  hint: set PACKAGE_NAME=\"...\" in it; DKMS refuses the file too",
                conf("missing-name")
            )
        );
    }

    #[test]
    fn bad_dest_location() {
        assert_eq!(
            eval_err("bad-dest"),
            format!(
                "error: {}: DEST_MODULE_LOCATION[0]=\"/lib/modules/bad\" does not start with /kernel, /updates or /extra",
                conf("bad-dest")
            )
        );
    }

    #[test]
    fn exit_in_the_file_is_an_error_with_its_stderr() {
        assert_eq!(
            eval_err("exits"),
            format!(
                "error: {}: bash stopped before the end of the file (exit status 3): kernel not supported\n  hint: dkms.conf is sourced for every kernel; it must not call `exit` or `exec`",
                conf("exits")
            )
        );
    }

    #[test]
    fn a_file_that_sleeps_is_killed() {
        // The file sleeps 1000 s: the error below can only come from the 1 s limit.
        let (_t, vars) = cell("sleeps", "6.1.0", "x86_64", "");
        let err = evaluate_with_timeout(
            &fixture("sleeps").join("dkms.conf"),
            &vars,
            Duration::from_secs(1),
            None,
        )
        .expect_err("must time out");
        assert_eq!(
            render(&err),
            format!(
                "error: {}: bash did not finish evaluating it within 1 s\n  hint: dkms.conf is sourced for every kernel; it must not sleep or wait for input",
                conf("sleeps")
            )
        );
    }

    #[test]
    fn yes_no_values_are_checked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("dkms.conf");
        fs::write(&path, "PACKAGE_NAME=a\nPACKAGE_VERSION=1\nAUTOINSTALL=1\n").expect("write");
        let vars = CellVars::for_tests(tmp.path());
        let err = evaluate(&path, &vars).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: AUTOINSTALL=\"1\" is not supported: use yes or no",
                path.display()
            )
        );
    }

    #[test]
    fn names_that_cannot_name_a_directory_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("dkms.conf");
        let vars = CellVars::for_tests(tmp.path());
        for (value, why) in [
            (
                "$'two\\nlines'",
                "it contains a space, newline or other control character",
            ),
            (
                "'a b'",
                "it contains a space, newline or other control character",
            ),
            ("$'caf\\xe9'", "it is not valid UTF-8"),
            ("a/b", "it contains '/'"),
            (".hidden", "it starts with '.'"),
        ] {
            let text = format!(
                "PACKAGE_NAME={value}\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=m\n\
                 DEST_MODULE_LOCATION[0]=/extra\n"
            );
            fs::write(&path, text).expect("write");
            let err = evaluate(&path, &vars).expect_err(value);
            let text = err.to_string();
            assert!(text.contains("PACKAGE_NAME="), "{value}: {text}");
            assert!(
                text.ends_with(&format!("cannot name a directory: {why}")),
                "{value}: {text}"
            );
        }
    }
}
