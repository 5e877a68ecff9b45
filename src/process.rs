//! Every child process kmx starts goes through here. Errors carry the command line, the
//! exit status (a signal is named) and the tail of stderr, so a failure is never just
//! "bad exit status: 2".

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::error::{Error, Kind, Result};

/// The command line as a user could paste it into a shell, with the environment it sets.
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(
                out,
                "{}={} ",
                k.to_string_lossy(),
                quote(&v.to_string_lossy())
            );
        }
    }
    out.push_str(&display_args(cmd));
    out
}

/// The program and its arguments, quoted for a shell, without the environment.
pub fn display_args(cmd: &Command) -> String {
    let mut out = quote(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(&a.to_string_lossy()));
    }
    out
}

/// Quote a word for a POSIX shell when it needs it.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// "exit status 2", or "killed by signal 9 (SIGKILL)".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => "unknown exit status".to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// The last `n` non-empty lines of `bytes`.
pub fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run to completion capturing stdout and stderr; a non-zero exit is an error of `kind`
/// carrying the command line, status and stderr tail.
pub fn output(cmd: &mut Command, kind: Kind) -> Result<Output> {
    let shown = display(cmd);
    die_with_kmx(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        let mut err = Error::new(
            kind,
            format!("`{shown}` failed: {}", describe_status(out.status)),
        );
        let t = tail(&out.stderr, 8);
        if !t.is_empty() {
            err = err.caused_by(format!("--- stderr\n{t}"));
        }
        return Err(err);
    }
    Ok(out)
}

/// Make the child die with kmx: if kmx is killed (`kill -9`), the kernel sends the child
/// SIGKILL (PR_SET_PDEATHSIG). The signal fires when the *thread* that spawned the child
/// exits; every spawn here waits for its child on the spawning thread ([`output`],
/// [`run_supervised`]), so that thread outlives the child. A child's own children do not
/// inherit it: [`run_supervised`] also registers the child's process group with the
/// [guardian](guard_group), which kills the whole group.
fn die_with_kmx(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // kmx died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("kmx exited"));
            }
            Ok(())
        });
    }
}

/// The guardian: one `bash` per kmx run that knows the process groups kmx started (make and
/// every compiler under it) and kills them all with SIGKILL when kmx's end of its stdin
/// closes, i.e. when kmx exits, however it exits. A normal exit has stopped every group
/// already (the guardian then has nothing to kill); after a `kill -9` nothing else would.
/// It ignores INT, TERM and HUP (kmx handles those) and runs in its own process group.
struct Guardian {
    stdin: std::sync::Mutex<Option<std::process::ChildStdin>>,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

const GUARDIAN: &str = r#"trap '' INT TERM HUP
declare -A g
while read -r op id; do
  case $op in
    +) g[$id]=1 ;;
    -) unset "g[$id]" ;;
  esac
done
for id in "${!g[@]}"; do kill -KILL -- "-$id" 2>/dev/null; done
exit 0
"#;

static GUARD: std::sync::OnceLock<Option<Guardian>> = std::sync::OnceLock::new();

fn guardian() -> Option<&'static Guardian> {
    use std::os::unix::process::CommandExt;
    GUARD
        .get_or_init(|| {
            let mut child = Command::new("bash")
                .args(["-c", GUARDIAN, "kmx-guardian"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .current_dir("/")
                .process_group(0)
                .spawn()
                .ok()?;
            let stdin = child.stdin.take()?;
            Some(Guardian {
                stdin: std::sync::Mutex::new(Some(stdin)),
                child: std::sync::Mutex::new(Some(child)),
            })
        })
        .as_ref()
}

/// End the guardian, if this run started one, and wait (a moment) until it is gone: called
/// once at the end of a run, when every group kmx started has been stopped, so that no
/// process of the run outlives it.
pub fn end_guardian() {
    let Some(g) = GUARD.get().and_then(Option::as_ref) else {
        return;
    };
    if let Ok(mut stdin) = g.stdin.lock() {
        drop(stdin.take());
    }
    if let Ok(mut child) = g.child.lock()
        && let Some(mut c) = child.take()
    {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(2) {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Tell the guardian about a process group kmx started (`add`) or has stopped (`!add`).
/// Best effort: without a guardian (no bash), PR_SET_PDEATHSIG still stops the leader.
fn guard_group(pgid: libc::pid_t, add: bool) {
    use std::io::Write as _;
    if let Some(g) = guardian()
        && let Ok(mut w) = g.stdin.lock()
        && let Some(w) = w.as_mut()
    {
        let _ = writeln!(w, "{} {pgid}", if add { '+' } else { '-' });
        let _ = w.flush();
    }
}

/// The error for a program that could not be started (usually: not installed).
pub fn spawn_error(cmd: &Command, e: std::io::Error) -> Error {
    let prog = cmd.get_program().to_string_lossy().to_string();
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::env(format!("`{prog}` not found"))
    } else {
        Error::env(format!("cannot run `{prog}`: {e}"))
    }
}

/// The one stop flag of the process, set by Ctrl-C, SIGTERM or SIGHUP (a closed terminal or a dropped ssh session). The handlers are registered
/// once, so every build, boot and install of one kmx run sees the same request to stop.
pub fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::{Arc, OnceLock, atomic::AtomicBool};
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| crate::Error::env(format!("cannot handle signals: {e}")))?;
    }
    Ok(FLAG.get_or_init(|| flag).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_status_and_stderr() {
        let err = output(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            Kind::Failed,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo oops >&2; exit 3'` failed: exit status 3"
        );
        assert_eq!(err.causes, ["--- stderr\noops"]);
    }

    #[test]
    fn signals_are_named() {
        let err = output(Command::new("sh").args(["-c", "kill -9 $$"]), Kind::Failed).unwrap_err();
        assert!(
            err.to_string().ends_with("killed by signal 9 (SIGKILL)"),
            "{err}"
        );
    }

    #[test]
    fn missing_program_says_not_found() {
        let err = output(&mut Command::new("kmx-no-such-tool"), Kind::Failed).unwrap_err();
        assert_eq!(err.to_string(), "`kmx-no-such-tool` not found");
    }
}

/// How a supervised child ended.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    /// Killed by kmx after the time limit.
    TimedOut(std::time::Duration),
    /// Killed by kmx because the user interrupted.
    Interrupted,
}

/// Run `cmd` in its own process group with stdout and stderr appended to `log` (never held
/// in memory), until it exits, `limit` passes, or `stop` becomes true. On timeout or stop the
/// whole process group (make and every compiler under it) is terminated: SIGTERM, then
/// SIGKILL after a grace period, so nothing is left behind.
pub fn run_supervised(
    cmd: &mut Command,
    log: &std::fs::File,
    limit: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Ended> {
    run_supervised_until(cmd, log, limit, stop, &|| false)
}

/// [`run_supervised`], also asking `done` a few times a second: once it says the process
/// has finished its work, the process gets two seconds to exit on its own, then its group
/// is stopped (the result is how it ended: killed by a signal). For a process that cannot
/// end itself, such as an emulated board without a power-off path.
pub fn run_supervised_until(
    cmd: &mut Command,
    log: &std::fs::File,
    limit: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
    done: &dyn Fn() -> bool,
) -> Result<Ended> {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let out = log
        .try_clone()
        .map_err(|e| Error::env(format!("cannot share the log file: {e}")))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::env(format!("cannot share the log file: {e}")))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // A session of its own, without a terminal (nothing it starts can reach kmx's with
    // TIOCSTI), whose process group is the one stopped below: a sandbox stays in it (bwrap
    // is not asked for a new session), so its inner process is stopped with the group even
    // when bwrap is stopped while it sets up, before the inner one asked to die with it.
    // SAFETY: setsid is async-signal-safe; the child is not a group leader yet, so it
    // succeeds.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    die_with_kmx(cmd);
    // The guardian first (its first use starts it), so the group is known to it as soon
    // as it exists.
    let _ = guardian();
    let mut child = cmd.spawn().map_err(|e| spawn_error(cmd, e))?;
    let pgid = child.id() as libc::pid_t;
    guard_group(pgid, true);
    // Whatever way this returns, the group is gone by then (killed below): forget it.
    struct Forget(libc::pid_t);
    impl Drop for Forget {
        fn drop(&mut self) {
            guard_group(self.0, false);
        }
    }
    let _forget = Forget(pgid);
    let start = Instant::now();
    let kill_group = |child: &mut std::process::Child| {
        // SAFETY: kill(2) on a process group we created; errors (already gone) are harmless.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; SIGKILL whatever of the group ignored SIGTERM.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    };
    let mut sleep = Duration::from_millis(2);
    let mut asked = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // The group leader is gone; make sure no straggler of its group lives on.
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return Ok(Ended::Exited(status));
            }
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(Error::env(format!(
                    "cannot wait for `{}`: {e}",
                    display(cmd)
                )));
            }
        }
        if stop.load(Ordering::Relaxed) {
            kill_group(&mut child);
            return Ok(Ended::Interrupted);
        }
        if start.elapsed() >= limit {
            kill_group(&mut child);
            return Ok(Ended::TimedOut(limit));
        }
        if done_at.is_none() && asked.elapsed() >= Duration::from_millis(250) {
            asked = Instant::now();
            if done() {
                done_at = Some(Instant::now());
            }
        }
        if done_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
            kill_group(&mut child);
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(Ended::Exited(status));
            }
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(50));
    }
}

/// Whether kmx runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The test hook (`KMX_TEST_PAUSE_AT=<point>`): when `asked` names `point`, say so on stderr
/// and wait until the run is stopped (Ctrl-C, SIGTERM, SIGHUP) or an hour passes. Returns
/// whether it paused.
pub fn pause_for_tests(asked: Option<&str>, point: &str) -> bool {
    if asked != Some(point) {
        return false;
    }
    eprintln!("kmx: paused at {point} (KMX_TEST_PAUSE_AT)");
    let stop = stop_flag().ok();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(3600)
        && !stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}
