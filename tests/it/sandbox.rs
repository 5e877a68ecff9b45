//! The sandbox as an attacker sees it: one payload that tries every way out it knows, run
//! from a dkms.conf (under `build`, `build --dry-run` and `add`) and from PRE_BUILD, MAKE
//! and POST_BUILD. Each attempt aims at something of the host the test can observe itself
//! (a file outside /tmp, the kernel tree, kmx's home, the output, $HOME, a process, a
//! listening socket, the kernel log, a sysfs setting): under the default sandbox none may
//! be reached; under `--sandbox open` (the host as under DKMS) every one must be, which
//! shows that each check can see an escape.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::support::*;

/// What the payload tries, each with the host-side check that tells whether it got out.
const ATTACKS: &[&str] = &[
    "write",          // a host directory outside /tmp
    "tree",           // the kernel tree
    "kmx-home",       // KMX_HOME
    "out",            // the build output
    "home",           // $HOME
    "proc-root",      // /proc/<pid>/root of every process it can see
    "remount",        // mount -o remount,rw / (and mount_setattr through mount(8))
    "nsenter",        // setns into PID 1's and PID 2's mount and network namespaces
    "unshare",        // a new user namespace, then remount
    "chroot",         // chroot into /proc/<pid>/root of a host process
    "suid",           // a set-uid root shell
    "fd",             // a directory descriptor kmx inherited from its caller
    "sys",            // a sysfs setting
    "proc-sys",       // a sysctl that is not namespaced (/proc/sys/vm)
    "sysrq",          // /proc/sysrq-trigger (h: the kernel logs its help, harmlessly)
    "dev",            // a device node (/dev/kmsg, or one made with mknod)
    "kill",           // kill(2) of a host process
    "ptrace",         // ptrace(2) of a host process
    "tcp4",           // 127.0.0.1
    "tcp6",           // ::1
    "unix",           // a Unix socket under /run
    "unix-elsewhere", // a Unix socket outside /run and /tmp
    "keyring",        // (build steps) the caller's session keyring
    "abstract",       // an abstract Unix socket
    "symlink",        // (build steps) a link planted in the build directory, written through later
];

const HELPER: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    if (!strcmp(argv[1], "keyring")) {
        long id = syscall(SYS_keyctl, 10 /* KEYCTL_SEARCH */, -3 /* session */, "user", argv[2], 0);
        if (id < 0) { perror("keyctl search"); return 1; }
        char buf[256] = {0};
        long n = syscall(SYS_keyctl, 11 /* KEYCTL_READ */, id, buf, sizeof buf - 1);
        if (n < 0) { perror("keyctl read"); return 1; }
        printf("KEYRING %s %s\n", argc > 3 ? argv[3] : "", buf);
        return 0;
    }
    if (!strcmp(argv[1], "ptrace")) {
        pid_t pid = atoi(argv[2]);
        if (ptrace(PTRACE_ATTACH, pid, 0, 0) != 0) { perror("ptrace"); return 1; }
        waitpid(pid, 0, __WALL);
        ptrace(PTRACE_KILL, pid, 0, 0);
        return 0;
    }
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    socklen_t len = sizeof a;
    if (!strcmp(argv[1], "abstract")) {
        strncpy(a.sun_path + 1, argv[2], sizeof a.sun_path - 2);
        len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(argv[2]);
    } else {
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, len) != 0) { perror("connect"); return 1; }
    const char *ctx = argc > 3 ? argv[3] : "";
    return write(s, ctx, strlen(ctx)) == (ssize_t)strlen(ctx) ? 0 : 1;
}
"#;

/// The payload, with `@NAME@` replaced by the host's targets; `$1` names the context.
const PAYLOAD: &str = r#"#!/bin/bash
ctx=$1
V=@VICTIM@
t() { timeout 5 "$@" </dev/null >/dev/null 2>&1; }
t bash -c "echo x > $V/write-$ctx"
t bash -c "echo x > '@KDIR@/kmx-escape-@TOKEN@-tree-$ctx'"
t bash -c "echo x > '@KHOME@/tree-escape-kmx-home-$ctx'"
t bash -c "echo x > '@OUT@/escape-out-$ctx'"
t bash -c "echo x > '@UHOME@/escape-home-$ctx'"
for p in /proc/[0-9]*; do t bash -c "echo x > $p/root$V/proc-root-$ctx"; done
t bash -c "mount -o remount,bind,rw / ; mount -o remount,rw / ; echo x > $V/remount-$ctx"
for pid in 1 2; do t nsenter -t $pid -m -n bash -c "echo x > $V/nsenter-$ctx"; done
t unshare -Urm bash -c "mount -o remount,bind,rw /; echo x > $V/unshare-$ctx"
t "$(PATH=$PATH:/usr/sbin:/sbin command -v chroot)" "/proc/$(cat @PIDS@/kill-$ctx)/root" bash -c "echo x > $V/chroot-$ctx"
t @SUID@ -p -c "mount -o remount,bind,rw / ; echo x > $V/suid-$ctx"
for f in /proc/self/fd/*; do [ -d "$f" ] && t bash -c "echo x > $f/fd-$ctx"; done
for kv in @KNOBS@; do t bash -c "echo ${kv#*=} > ${kv%%=*}"; done
t bash -c "echo h > /proc/sysrq-trigger"
t bash -c "echo '@TOKEN@ dev $ctx' > /dev/kmsg" ||
  t bash -c "mknod /tmp/kmsg c 1 11 && echo '@TOKEN@ dev $ctx' > /tmp/kmsg"
t bash -c "kill -9 $(cat @PIDS@/kill-$ctx)"
t @HELPER@ ptrace "$(cat @PIDS@/ptrace-$ctx)"
t bash -c "echo $ctx > /dev/tcp/127.0.0.1/@PORT4@"
t bash -c "echo $ctx > /dev/tcp/::1/@PORT6@"
t @HELPER@ unix @SOCKET@ "$ctx"
t @HELPER@ abstract @ABSTRACT@ "$ctx"
t @HELPER@ unix @SOCKET2@ "$ctx"
@HELPER@ keyring kmx-escape-@TOKEN@ "$ctx" 2>/dev/null
case $ctx in
  *-pre) ln -sfn $V plant ;;
  *-post) t bash -c "echo x > plant/symlink-$ctx" ;;
esac
setsid sleep 7311 </dev/null >/dev/null 2>&1 &
echo "PAYLOAD-RAN $ctx"
"#;

/// The host side: victims, canaries and listeners, made before a run and read after it.
struct Host {
    work: PathBuf,
    kmx_home: PathBuf,
    user_home: PathBuf,
    victim: PathBuf,
    kdir: PathBuf,
    token: String,
    canaries: BTreeMap<String, Child>,
    tcp4: std::net::TcpListener,
    tcp6: Option<std::net::TcpListener>,
    unix: std::os::unix::net::UnixListener,
    unix_path: PathBuf,
    unix_elsewhere: std::os::unix::net::UnixListener,
    abstract_: std::os::unix::net::UnixListener,
    /// Attacks that cannot work here even for root outside any sandbox (in a chroot the
    /// kernel makes no user namespace and enters no other mount namespace).
    impossible: Vec<&'static str>,
    /// Settings of the whole machine the payload tries to change: (attack, path, value
    /// before), restored at the end.
    knobs: Vec<(&'static str, PathBuf, String)>,
}

impl Host {
    fn new(k: &Kmx, work: &Path, kdir: &Path) -> Host {
        use std::os::linux::net::SocketAddrExt;
        let token = format!("kmxesc{}", std::process::id());
        let victim = work.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::create_dir_all(work.join("pids")).unwrap();
        let helper = work.join("helper");
        write(&work.join("helper.c"), HELPER);
        let cc = Command::new("gcc")
            .arg("-o")
            .arg(&helper)
            .arg(work.join("helper.c"))
            .output()
            .unwrap();
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let suid = work.join("suid-bash");
        std::fs::copy("/bin/bash", &suid).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let tcp4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp4.set_nonblocking(true).unwrap();
        let tcp6 = std::net::TcpListener::bind("[::1]:0").ok();
        match &tcp6 {
            Some(l) => l.set_nonblocking(true).unwrap(),
            None => eprintln!("NOTE: this host has no ::1; the IPv6 attempt is not checked"),
        }
        let unix_path = PathBuf::from(format!("/run/{token}.sock"));
        let _ = std::fs::remove_file(&unix_path);
        let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
        unix.set_nonblocking(true).unwrap();
        let unix_elsewhere = work.join("sock/s.sock");
        std::fs::create_dir_all(unix_elsewhere.parent().unwrap()).unwrap();
        let unix2 = std::os::unix::net::UnixListener::bind(&unix_elsewhere).unwrap();
        unix2.set_nonblocking(true).unwrap();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(token.as_bytes()).unwrap();
        let abstract_ = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        abstract_.set_nonblocking(true).unwrap();
        // Settings root may change, harmless for a moment, restored at the end.
        let knobs: Vec<(&'static str, PathBuf, String)> = [
            (
                "sys",
                "/sys/kernel/mm/transparent_hugepage/khugepaged/alloc_sleep_millisecs",
            ),
            ("proc-sys", "/proc/sys/vm/stat_interval"),
        ]
        .iter()
        .filter_map(|(attack, p)| {
            let v = std::fs::read_to_string(p).ok()?;
            Some((*attack, PathBuf::from(p), v.trim().to_string()))
        })
        .collect();
        let works = |cmd: &[&str]| {
            Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let mut impossible = Vec::new();
        for (attack, cmd) in [
            ("nsenter", &["nsenter", "-t", "1", "-m", "-n", "true"][..]),
            ("unshare", &["unshare", "-Urm", "true"][..]),
        ] {
            if !works(cmd) {
                eprintln!(
                    "NOTE: `{}` fails here outside kmx too: {attack} is not checked",
                    cmd.join(" ")
                );
                impossible.push(attack);
            }
        }
        if !Path::new("/proc/sysrq-trigger").exists() {
            eprintln!(
                "NOTE: this kernel has no /proc/sysrq-trigger: the sysrq attempt is not checked"
            );
        }
        for attack in ["sys", "proc-sys"] {
            if !knobs.iter().any(|k| k.0 == attack) {
                eprintln!("NOTE: no setting to aim at for {attack}: not checked");
            }
        }
        let knob_words: Vec<String> = knobs
            .iter()
            .map(|(_, p, v)| format!("{}={}", p.display(), v.parse::<u64>().unwrap_or(0) + 7))
            .collect();
        let payload = PAYLOAD
            .replace("@VICTIM@", &victim.display().to_string())
            .replace("@KDIR@", &kdir.display().to_string())
            .replace("@KHOME@", &k.home.display().to_string())
            .replace("@OUT@", &k.dir().join("kmx-out").display().to_string())
            .replace("@UHOME@", &k.dir().display().to_string())
            .replace("@TOKEN@", &token)
            .replace("@SUID@", &suid.display().to_string())
            .replace("@HELPER@", &helper.display().to_string())
            .replace("@PIDS@", &work.join("pids").display().to_string())
            .replace("@PORT4@", &tcp4.local_addr().unwrap().port().to_string())
            .replace(
                "@PORT6@",
                &tcp6
                    .as_ref()
                    .map_or(1, |l| l.local_addr().unwrap().port())
                    .to_string(),
            )
            .replace("@SOCKET@", &unix_path.display().to_string())
            .replace("@SOCKET2@", &unix_elsewhere.display().to_string())
            .replace("@ABSTRACT@", &token)
            .replace("@KNOBS@", &knob_words.join(" "));
        write(&work.join("escape.sh"), &payload);
        std::fs::create_dir_all(k.dir().join("kmx-out")).unwrap();
        Host {
            work: work.to_path_buf(),
            kmx_home: k.home.clone(),
            user_home: k.dir().to_path_buf(),
            victim,
            kdir: kdir.to_path_buf(),
            token,
            canaries: BTreeMap::new(),
            tcp4,
            tcp6,
            unix,
            unix_path,
            unix_elsewhere: unix2,
            abstract_,
            knobs,
            impossible,
        }
    }

    /// A source whose dkms.conf runs the payload as `<mode>-conf-<kind>` and whose
    /// PRE_BUILD, MAKE and POST_BUILD run it as `<mode>-pre`, `-make`, `-post`.
    fn source(&self, dir: &Path, mode: &str, kind: &str) -> PathBuf {
        let src = dir.join(format!("esc-{mode}-{kind}"));
        std::fs::create_dir_all(&src).unwrap();
        for f in ["hello.c", "Kbuild"] {
            std::fs::copy(repo().join("examples/hello").join(f), src.join(f)).unwrap();
        }
        let script = src.join("escape.sh");
        std::fs::copy(self.work.join("escape.sh"), &script).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(
            &src.join("dkms.conf"),
            &format!(
                "PACKAGE_NAME=esc\n\
                 PACKAGE_VERSION=\"1.0+$(bash ./escape.sh {mode}-conf-{kind} >/dev/null 2>&1; echo ran)\"\n\
                 BUILT_MODULE_NAME[0]=hello\n\
                 DEST_MODULE_LOCATION[0]=/updates\n\
                 MAKE[0]=\"bash ./escape.sh {mode}-make && make -C ${{kernel_source_dir}} M=${{dkms_tree}}/esc/${{PACKAGE_VERSION}}/build modules\"\n\
                 PRE_BUILD=\"escape.sh {mode}-pre\"\n\
                 POST_BUILD=\"escape.sh {mode}-post\"\n\
                 AUTOINSTALL=yes\n"
            ),
        );
        src
    }

    /// Start the processes `ctx`'s payload tries to kill and to trace.
    fn canaries_for(&mut self, ctx: &str) {
        for what in ["kill", "ptrace"] {
            let child = Command::new("sleep").arg("3600").spawn().unwrap();
            write(
                &self.work.join("pids").join(format!("{what}-{ctx}")),
                &child.id().to_string(),
            );
            self.canaries.insert(format!("{what}-{ctx}"), child);
        }
    }

    /// What the payload run as `ctx` reached of the host.
    fn reached(
        &mut self,
        ctx: &str,
        log: &str,
        dmesg: &str,
        connected: &BTreeMap<&'static str, Vec<String>>,
    ) -> Vec<&'static str> {
        let mut got = Vec::new();
        let file = |name: String| self.victim.join(name).exists();
        let mut check = |attack: &'static str, hit: bool| {
            if hit {
                got.push(attack);
            }
        };
        check("write", file(format!("write-{ctx}")));
        check(
            "tree",
            self.kdir
                .join(format!("kmx-escape-{}-tree-{ctx}", self.token))
                .exists(),
        );
        check(
            "kmx-home",
            self.kmx_home
                .join(format!("tree-escape-kmx-home-{ctx}"))
                .exists(),
        );
        check(
            "out",
            self.user_home
                .join(format!("kmx-out/escape-out-{ctx}"))
                .exists(),
        );
        check(
            "home",
            self.user_home.join(format!("escape-home-{ctx}")).exists(),
        );
        for attack in [
            "proc-root",
            "remount",
            "nsenter",
            "unshare",
            "chroot",
            "suid",
            "fd",
            "symlink",
        ] {
            check(attack, file(format!("{attack}-{ctx}")));
        }
        check("dev", dmesg.contains(&format!("{} dev {ctx}", self.token)));
        check(
            "keyring",
            log.contains(&format!("KEYRING {ctx} {}", keyring_secret(&self.token))),
        );
        for attack in ["kill", "ptrace"] {
            let child = self.canaries.get_mut(&format!("{attack}-{ctx}")).unwrap();
            check(attack, child.try_wait().unwrap().is_some());
        }
        for (attack, said) in connected {
            check(attack, said.iter().any(|s| s.trim() == ctx));
        }
        got
    }

    /// Who connected to the listeners: each connection says its payload's context.
    fn connections(&self) -> BTreeMap<&'static str, Vec<String>> {
        use std::io::Read;
        fn said(mut s: impl Read) -> String {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        }
        let timeout = Some(std::time::Duration::from_secs(2));
        let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut tcp = vec![("tcp4", &self.tcp4)];
        tcp.extend(self.tcp6.as_ref().map(|l| ("tcp6", l)));
        for (name, l) in tcp {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(timeout).unwrap();
                out.entry(name).or_default().push(said(s));
            }
        }
        for (name, l) in [
            ("unix", &self.unix),
            ("unix-elsewhere", &self.unix_elsewhere),
            ("abstract", &self.abstract_),
        ] {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(timeout).unwrap();
                out.entry(name).or_default().push(said(s));
            }
        }
        out
    }
}

impl Host {
    /// The settings the payload changed, as the test found them.
    fn changed_knobs(&self) -> Vec<&'static str> {
        self.knobs
            .iter()
            .filter(|(_, p, v)| std::fs::read_to_string(p).is_ok_and(|now| now.trim() != v))
            .map(|k| k.0)
            .collect()
    }
    fn restore_knobs(&self) {
        for (_, p, v) in &self.knobs {
            let _ = std::fs::write(p, v);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in self.canaries.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.unix_path);
        self.restore_knobs();
        if let Ok(entries) = std::fs::read_dir(&self.kdir) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("kmx-escape-{}", self.token))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for pid in running("sleep 7311") {
            // SAFETY: signalling a process the payload left, found by its command line.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The processes whose command line contains `needle` (procps may be missing: /proc is read).
fn running(needle: &str) -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

fn dmesg() -> String {
    let out = Command::new("dmesg").output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the caller's session keyring holds under `kmx-escape-<token>`.
fn keyring_secret(token: &str) -> String {
    format!("KEYRING-SECRET-{token}")
}

/// Run kmx as a login's process might: a directory of the host open on descriptor 9 (as a
/// hook's caller might leave one), and a session keyring of its own holding a secret.
fn run_as_caller(k: &Kmx, args: &[&str], dir: &Path, token: &str) -> Run {
    let fd = std::fs::File::open(dir).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let ring = std::ffi::CString::new("kmx-escape-session").unwrap();
    let kind = std::ffi::CString::new("user").unwrap();
    let name = std::ffi::CString::new(format!("kmx-escape-{token}")).unwrap();
    let secret = keyring_secret(token);
    let mut cmd = k.command(args);
    // SAFETY: dup2, fcntl and the keyring system calls are async-signal-safe; the strings
    // were made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
            const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
            libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, ring.as_ptr());
            libc::syscall(
                libc::SYS_add_key,
                kind.as_ptr(),
                name.as_ptr(),
                secret.as_ptr(),
                secret.len(),
                KEY_SPEC_SESSION_KEYRING,
            );
            // dup2 onto itself keeps close-on-exec: clear it then.
            let done = match raw {
                9 => libc::fcntl(9, libc::F_SETFD, 0),
                _ => libc::dup2(raw, 9),
            };
            match done {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        });
    }
    let out = cmd.output().unwrap();
    Run {
        cmd: format!("kmx {}", args.join(" ")),
        out,
    }
}

#[test]
fn no_payload_escapes_the_sandbox_and_each_succeeds_under_open() {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip_or_fail("the escape suite runs kmx as root, as the kernel hooks do");
        return;
    }
    // Everything the payload aims at lies outside /tmp, which each step gets privately.
    let parent = PathBuf::from("/var/tmp");
    let Some(k) = Kmx::with_trees_in(&parent) else {
        return;
    };
    let (release, _, kdir) = k.tree_of("arm64");
    let work = k.dir().join("host");
    let mut host = Host::new(&k, &work, &kdir);
    let mut report = Vec::new();
    for mode in ["strict", "open"] {
        let ctxs: Vec<String> = [
            "conf-build",
            "conf-dry-run",
            "conf-add",
            "pre",
            "make",
            "post",
        ]
        .iter()
        .map(|c| format!("{mode}-{c}"))
        .collect();
        for c in &ctxs {
            host.canaries_for(c);
        }
        let sandbox = ["--sandbox", mode];
        let sysrq_before = dmesg().matches("sysrq: HELP").count();
        // One run of kmx on a fresh source for `kind`, with the mode's --sandbox.
        let run = |host: &Host, kind: &str, args: &[&str]| {
            let src = host.source(k.dir(), mode, kind);
            let src = src.to_str().unwrap();
            let build = ["build", src, "-t", "arm64", "-k", &release];
            let words = match kind {
                "add" => vec!["add", src],
                _ => build.to_vec(),
            };
            let all = [&words[..], args, &sandbox[..]].concat();
            run_as_caller(&k, &all, &host.victim, &host.token)
        };
        // build: dkms.conf at planning, then PRE_BUILD, MAKE, POST_BUILD.
        let build = run(&host, "build", &[]);
        assert!(
            build.stderr().contains("1 built, 0 skipped, 0 failed"),
            "{mode}: {}\n{}",
            build.stdout(),
            build.stderr()
        );
        // The version says the dkms.conf payload ran to its end; the log, the steps'.
        assert!(build.stderr().contains("esc 1.0+ran"), "{}", build.stderr());
        let logs = k.dir().join("kmx-out/logs");
        let log: String = std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        for step in ["pre", "make", "post"] {
            assert!(
                log.contains(&format!("PAYLOAD-RAN {mode}-{step}")),
                "{mode}-{step} never ran: {log}"
            );
        }
        let dry = run(&host, "dry-run", &["--dry-run"]).ok();
        assert!(dry.stdout().contains("esc 1.0+ran"), "{}", dry.stdout());
        run(&host, "add", &[]).ok();
        let status = k.run(&["status", "--format", "dkms"]).ok();
        assert!(status.stdout().contains("1.0+ran"), "{}", status.stdout());
        k.run(&["remove", "esc", "--all"]);

        let connected = host.connections();
        let dmesg = dmesg();
        let sysrq_after = dmesg.matches("sysrq: HELP").count();
        for ctx in &ctxs {
            let got = host.reached(ctx, &log, &dmesg, &connected);
            let applicable: Vec<&str> = ATTACKS
                .iter()
                .copied()
                .filter(|a| *a != "symlink" || ctx.ends_with("-post"))
                // What a step prints lands in the log the test reads; a dkms.conf's not.
                .filter(|a| *a != "keyring" || !ctx.contains("-conf-"))
                .filter(|a| *a != "tcp6" || host.tcp6.is_some())
                .filter(|a| {
                    !["sys", "proc-sys"].contains(a) || host.knobs.iter().any(|k| k.0 == *a)
                })
                .filter(|a| *a != "sysrq" || Path::new("/proc/sysrq-trigger").exists())
                .filter(|a| !host.impossible.contains(a))
                .collect();
            // A changed setting does not say which context changed it: it counts for each.
            let mut got = got;
            got.extend(host.changed_knobs());
            if sysrq_after > sysrq_before {
                got.push("sysrq");
            }
            report.push(format!("{ctx}: reached {got:?}"));
            match mode {
                "strict" => assert!(
                    got.is_empty(),
                    "{ctx} escaped: {got:?}\n{}",
                    report.join("\n")
                ),
                _ => {
                    let missed: Vec<&&str> =
                        applicable.iter().filter(|a| !got.contains(a)).collect();
                    assert!(
                        missed.is_empty(),
                        "{ctx}: under --sandbox open these never reached the host, so the check cannot see them: {missed:?}\n{}",
                        report.join("\n")
                    );
                }
            }
        }
        if mode == "strict" {
            let left = running("sleep 7311");
            assert!(
                left.is_empty(),
                "a strict step left a process running: {left:?}"
            );
        }
        // Each mode aims at the setting as it was.
        host.restore_knobs();
    }
    eprintln!("{}", report.join("\n"));
}

/// A dkms.conf that never ends (and leaves a process in the background) stops the run with
/// an error naming it, and nothing it started is left running.
#[test]
fn a_dkms_conf_that_never_ends_stops_the_run_and_leaves_nothing_running() {
    let Some(k) = Kmx::with_trees() else { return };
    let forever = k.dir().join("forever");
    write(
        &forever.join("dkms.conf"),
        "PACKAGE_NAME=forever\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=hello\n\
         setsid bash -c 'while :; do sleep 1; done' &\nwhile :; do :; done\n",
    );
    let run = k
        .run(&[
            "build",
            forever.to_str().unwrap(),
            "-t",
            "arm64",
            "--dry-run",
        ])
        .expect(2);
    assert!(
        run.stderr()
            .contains("forever/dkms.conf: bash did not finish evaluating it within 10 s"),
        "{}",
        run.stderr()
    );
    // The namespace's processes are killed with it; the kernel reaps them a moment later.
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        processes_mentioning("while :", k.dir()).is_empty()
    });
    let left = processes_mentioning("while :", k.dir());
    assert!(gone, "left running: {left:?}");
}

/// As an unprivileged user kmx makes the same sandbox in a user namespace: a dkms.conf and
/// a PRE_BUILD cannot delete the user's own file (outside /tmp) or reach the network, and
/// the same steps do both under `--sandbox open`. Where the kernel lets the user make no
/// user namespace (a chroot, or user namespaces disabled), kmx must say it builds without
/// a sandbox.
#[test]
fn the_sandbox_contains_an_unprivileged_users_build_too() {
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("this test runs kmx as nobody, so it runs as root");
        return;
    }
    let Some(k) = Kmx::with_trees_in(Path::new("/var/tmp")) else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let keep = k.dir().join("keep");
    let src = hello_source(
        k.dir(),
        "userland",
        &format!(
            "PACKAGE_NAME=userland\nPRE_BUILD=pre.sh\n\
             rm -f {keep} && echo 'dkms.conf: deleted it'\n\
             (echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo 'dkms.conf: connected' || echo 'dkms.conf: no network'\n",
            keep = keep.display()
        ),
    );
    write(
        &src.join("pre.sh"),
        &format!(
            "#!/bin/bash\nrm -f {keep} && echo 'step: deleted it'\n\
             (echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo 'step: connected' || echo 'step: no network'\n",
            keep = keep.display()
        ),
    );
    std::fs::set_permissions(src.join("pre.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The fetched trees may lie where nobody cannot read them (under /root): the test gets
    // its own copy of the arm64 tree (its -common half and kbuild too), registered alone.
    let (release, _, real) = k.tree_of("arm64");
    let usr = real.parent().unwrap().parent().unwrap();
    let copy = k.dir().join("trees-copy/usr");
    std::fs::create_dir_all(copy.join("lib")).unwrap();
    let cp = |from: &Path, to: &Path| {
        assert!(
            Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(to)
                .status()
                .unwrap()
                .success()
        );
    };
    cp(&usr.join("src"), &copy);
    for e in std::fs::read_dir(usr.join("lib")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("linux-kbuild-") {
            cp(&e.path(), &copy.join("lib"));
        }
    }
    let kdir = copy.join("src").join(real.file_name().unwrap());
    let reg_path = k.home.join("trees/registry.json");
    let mut reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reg_path).unwrap()).unwrap();
    reg["trees"] = serde_json::json!([{
        "target": "arm64",
        "release": release,
        "kdir": kdir,
        "origin": "test copy",
    }]);
    std::fs::write(&reg_path, serde_json::to_vec_pretty(&reg).unwrap()).unwrap();
    // And its own copy of kmx (the build's may lie under /root too).
    let kmx = k.dir().join("kmx-for-nobody");
    std::fs::copy(env!("CARGO_BIN_EXE_kmx"), &kmx).unwrap();
    let nobody = |args: &[&str]| {
        write(&keep, "a host file of the user\n");
        for (cmd, args) in [
            ("chown", ["-R", "65534:65534"]),
            ("chmod", ["-R", "u+rwX,go+rX"]),
        ] {
            let ok = Command::new(cmd).args(args).arg(k.dir()).status().unwrap();
            assert!(ok.success(), "{cmd} failed");
        }
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&kmx)
            .args(["build", src.to_str().unwrap(), "-t", "arm64", "--force"])
            .args(args)
            .current_dir(k.dir())
            .env("KMX_HOME", &k.home)
            .env("HOME", k.dir())
            .env("XDG_CONFIG_HOME", k.dir().join("xdg"))
            .env_remove("KMX_CONFIG_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert!(err.contains("1 built, 0 skipped, 0 failed"), "{err}");
        let log = k
            .dir()
            .join(format!("kmx-out/logs/userland-1.0-{release}-arm64.log"));
        (err, std::fs::read_to_string(log).unwrap())
    };
    let userns = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["unshare", "--user", "--map-root-user", "true"])
        .output()
        .unwrap();
    let (err, log) = nobody(&[]);
    if !userns.status.success() {
        // No user namespace for nobody here: kmx says so, and cannot protect anything.
        assert!(err.contains("cells run without the sandbox"), "{err}");
        eprintln!(
            "NOTE: no user namespace for an unprivileged user here ({}): checked that kmx says so",
            String::from_utf8_lossy(&userns.stderr).trim()
        );
        return;
    }
    assert!(!err.contains("cells run without the sandbox"), "{err}");
    assert!(
        keep.is_file(),
        "an unprivileged build deleted the user's file"
    );
    assert!(
        listener.accept().is_err(),
        "an unprivileged build reached the network"
    );
    for said in [
        "dkms.conf: no network",
        "step: no network",
        "Read-only file system",
    ] {
        assert!(log.contains(said), "{said}: {log}");
    }
    // The same steps under --sandbox open: what they do, the checks above see.
    let (_, log) = nobody(&["--sandbox", "open"]);
    assert!(
        !keep.exists(),
        "under --sandbox open the step could not delete: {log}"
    );
    assert!(
        listener.accept().is_ok(),
        "under --sandbox open no connection arrived: {log}"
    );
    for said in [
        "dkms.conf: deleted it",
        "dkms.conf: connected",
        "step: connected",
    ] {
        assert!(log.contains(said), "{said}: {log}");
    }
}

/// The evaluation's own files are the package's to replace: a dump swapped for a FIFO that
/// never ends or a link to /dev/zero must neither hang kmx nor fill its memory; kmx says the
/// file did not finish evaluating (exit 2).
#[test]
fn a_dkms_conf_that_swaps_its_dump_for_a_fifo_or_dev_zero_is_refused() {
    let Some(k) = Kmx::with_trees() else { return };
    for (name, swap) in [
        ("fifo", "rm -f /tmp/kmx/dump; mkfifo /tmp/kmx/dump"),
        ("zero", "rm -f /tmp/kmx/dump; ln -s /dev/zero /tmp/kmx/dump"),
    ] {
        let src = hello_source(
            k.dir(),
            &format!("swap-{name}"),
            &format!("trap '{swap}' EXIT\n"),
        );
        let mut child = k
            .command(&["build", src.to_str().unwrap(), "-t", "arm64", "--dry-run"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A bounded wait on the condition (kmx has ended), not a stopwatch on its speed.
        let ended = (0..600).find_map(|_| {
            let status = child.try_wait().unwrap();
            if status.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            status
        });
        let Some(status) = ended else {
            let _ = child.kill();
            panic!("{name}: kmx still runs after a minute");
        };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("bash stopped before the end of the file"),
            "{name}: {err}"
        );
    }
}
