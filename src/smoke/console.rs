//! Reading a guest's console log back into per-module verdicts. Pure: text in, facts out.
//!
//! The log interleaves three writers: QEMU's own messages (its stderr), the kernel's console
//! (only urgent messages: the guest boots with `quiet`) and `/init`'s markers (see
//! [`super::guest`]). Verdicts come from the markers and from the kernel log section `/init`
//! prints after each `insmod` (`dmesg -c`), which holds everything the kernel said while
//! the module loaded, whatever its level. When a module never got a `KMX-RESULT` (the guest
//! hung or died while loading it), the urgent console lines after its `KMX-BEGIN` are all
//! there is.

/// The guest's last line: every module was tried.
pub const DONE: &str = "KMX-DONE";

/// What the console says about one module (by index in the load order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleLog {
    pub begun: bool,
    /// `insmod`'s exit status, when it returned.
    pub status: Option<i32>,
    /// What insmod printed.
    pub insmod: Vec<String>,
    /// Kernel log lines printed while it loaded (timestamps removed).
    pub kernel: Vec<String>,
}

/// Everything parsed from one console log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Console {
    /// `/init` ran: the release the guest kernel reported.
    pub booted: Option<String>,
    /// `/init` finished every module.
    pub done: bool,
    /// The kernel printed anything at all (it started).
    pub kernel_started: bool,
    pub modules: Vec<ModuleLog>,
    /// Lines that are neither markers nor kernel log lines (QEMU's messages among them).
    pub other: Vec<String>,
    /// Kernel console lines seen before `/init` ran (panics, boot errors).
    pub boot_kernel: Vec<String>,
}

/// Strip a kernel log timestamp (`[    2.640618] `) from a line, if it has one.
pub fn strip_timestamp(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, text) = rest.split_once(']')?;
    let stamp = stamp.trim();
    let ok = !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.');
    ok.then(|| text.strip_prefix(' ').unwrap_or(text))
}

/// Lines that say the kernel crashed (x86, arm and arm64 wordings).
pub fn is_crash_line(line: &str) -> bool {
    const MARKERS: [&str; 9] = [
        "BUG: ",
        // arm with software PAN: a NULL access is a "page domain fault".
        "Unhandled fault:",
        "Oops",
        "Unable to handle kernel",
        "general protection fault",
        "Internal error:",
        "Kernel panic",
        "kernel BUG at",
        "stack-protector:",
    ];
    MARKERS.iter().any(|m| line.contains(m))
}

pub fn parse(log: &str, modules: usize) -> Console {
    let mut c = Console {
        modules: vec![ModuleLog::default(); modules],
        ..Console::default()
    };
    // The module whose dmesg section we are in, and the one being loaded.
    let mut in_dmesg: Option<usize> = None;
    let mut current: Option<usize> = None;
    let index = |word: &str| word.parse::<usize>().ok().filter(|i| *i < modules);
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        let mut words = line.splitn(3, ' ');
        let marker = words.next().unwrap_or("");
        let arg = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        match marker {
            "KMX-BOOTED" => {
                c.booted = Some(arg.to_string());
                c.kernel_started = true;
                continue;
            }
            DONE => {
                c.done = true;
                in_dmesg = None;
                current = None;
                continue;
            }
            "KMX-BEGIN" | "KMX-INSMOD" | "KMX-RESULT" | "KMX-DMESG" | "KMX-END" => {
                if let Some(i) = index(arg) {
                    let m = &mut c.modules[i];
                    match marker {
                        "KMX-BEGIN" => {
                            m.begun = true;
                            current = Some(i);
                        }
                        "KMX-INSMOD" => m.insmod.push(rest.to_string()),
                        "KMX-RESULT" => m.status = rest.trim().parse().ok(),
                        "KMX-DMESG" => {
                            // The section replaces console lines collected while it loaded.
                            m.kernel.clear();
                            in_dmesg = Some(i);
                        }
                        _ => {
                            in_dmesg = None;
                            current = None;
                        }
                    }
                    continue;
                }
            }
            _ => {}
        }
        match strip_timestamp(line) {
            Some(text) => {
                c.kernel_started = true;
                if let Some(i) = in_dmesg.or(current) {
                    c.modules[i].kernel.push(text.to_string());
                } else if c.booted.is_none() {
                    c.boot_kernel.push(text.to_string());
                }
            }
            None => {
                if line.contains("Kernel panic") || line.starts_with("Linux version") {
                    c.kernel_started = true;
                }
                if !line.trim().is_empty() {
                    c.other.push(line.to_string());
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.017335] CPU0: Spectre v2: firmware did not set auxiliary control register IBE bit\r
KMX-BOOTED 6.1.0-50-armmp
KMX-BEGIN 0
KMX-RESULT 0 0
KMX-DMESG 0
[    2.640618] hello: loading out-of-tree module taints kernel.
[    2.647707] hello: hello, world (built by kmx)
KMX-END 0
KMX-BEGIN 1
[    2.700000] bad: version magic '6.1.0-50-armmp SMP mod_unload modversionz ARMv7 p2v8 ' should be '6.1.0-50-armmp SMP mod_unload modversions ARMv7 p2v8 '
KMX-INSMOD 1 insmod: can't insert '/m/001.ko': invalid module format
KMX-RESULT 1 1
KMX-DMESG 1
[    2.700000] bad: version magic '6.1.0-50-armmp SMP mod_unload modversionz ARMv7 p2v8 ' should be '6.1.0-50-armmp SMP mod_unload modversions ARMv7 p2v8 '
KMX-END 1
KMX-BEGIN 2
[    2.800000] Unable to handle kernel NULL pointer dereference at virtual address 00000000
";

    #[test]
    fn markers_and_kernel_sections_become_module_logs() {
        let c = parse(LOG, 3);
        assert_eq!(c.booted.as_deref(), Some("6.1.0-50-armmp"));
        assert!(!c.done);
        assert_eq!(c.boot_kernel.len(), 1);
        assert_eq!(c.modules[0].status, Some(0));
        assert_eq!(
            c.modules[0].kernel,
            [
                "hello: loading out-of-tree module taints kernel.",
                "hello: hello, world (built by kmx)"
            ]
        );
        // The console copy of the refusal is replaced by the dmesg section: no duplicate.
        assert_eq!(c.modules[1].kernel.len(), 1);
        assert_eq!(
            c.modules[1].insmod,
            ["insmod: can't insert '/m/001.ko': invalid module format"]
        );
        assert_eq!(c.modules[1].status, Some(1));
        assert!(c.modules[2].begun && c.modules[2].status.is_none());
        assert!(is_crash_line(&c.modules[2].kernel[0]));
    }

    #[test]
    fn timestamps_are_recognized_strictly() {
        assert_eq!(strip_timestamp("[   12.5] x: y"), Some("x: y"));
        assert_eq!(strip_timestamp("[ok] x"), None);
        assert_eq!(strip_timestamp("qemu-system-arm: bad"), None);
    }
}
