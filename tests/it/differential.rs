//! Differential test: `kmx verify`'s verdict against the real kernel's, on a catalogue of
//! module variants (built from small sources with plain make, then patched, or taken from
//! the kernel's own signed modules and tampered with), one per check verify makes.
//!
//! Each target's real Debian kernel is booted ONCE under QEMU (`kmx smoke`, all targets in
//! parallel) and loads every variant; the ones judged as under `module.sig_enforce=1` are
//! loaded after that switch is turned on in the same boot (`--enforced`). Agreement means:
//! verify passed or warned ⇔ the kernel loaded it; verify failed ⇔ the kernel refused it,
//! for the reason verify gave (its failing check ⇔ the kernel's message). A module whose
//! init declines is a run-time outcome verify cannot see: it is listed as such, and verify
//! must not have failed it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The targets booted: arm64 and amd64, and armhf for the ARM CPU-level variants.
const BOOTED: [&str; 3] = ["amd64", "arm64", "armhf"];

/// What a variant is designed to be, as both sides should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The kernel loads it; verify passes.
    Pass,
    /// The kernel loads it; verify warns, through `check`.
    Warn(&'static str),
    /// The kernel refuses it saying `kernel`; verify fails it through `check`.
    Fail {
        check: &'static str,
        kernel: &'static str,
    },
    /// Only run time can tell: its init declines (the kernel refuses it with `kernel`);
    /// verify must not fail it.
    Runtime { kernel: &'static str },
}

struct Variant {
    /// The module's name (unique in the boot).
    name: String,
    file: PathBuf,
    /// Judged as under `module.sig_enforce=1`.
    enforced: bool,
    what: String,
    expect: Expect,
}

fn source(name: &str, license: &str, body: &str, extra: &str) -> String {
    format!(
        "// SPDX-License-Identifier: GPL-2.0\n#include <linux/module.h>\n#include <linux/ktime.h>\n#include <crypto/internal/cipher.h>\n{extra}\nstatic int __init {name}_init(void)\n{{\n{body}\n}}\nmodule_init({name}_init);\nMODULE_LICENSE(\"{license}\");\n"
    )
}

fn plain(name: &str) -> String {
    source(
        name,
        "GPL",
        &format!("\tpr_info(\"{name}: loaded\\n\");\n\treturn 0;"),
        "",
    )
}

/// The name every copy of [`BASE`] is built with, long enough for any variant's name.
const BASE: &str = "dv_base_name_to_replace";

/// The source modules, built once per target: (name, source). Most variants are copies of
/// `BASE` renamed (the kernel needs a distinct name per module in one boot): one build of
/// five small modules per target keeps the test quick.
fn sources() -> Vec<(String, String)> {
    vec![
        (BASE.into(), plain(BASE)),
        (
            "dv_gplsymbol".into(),
            source(
                "dv_gplsymbol",
                "GPL",
                "\tpr_info(\"dv_gplsymbol: %lld\\n\", ktime_get());\n\treturn 0;",
                "",
            ),
        ),
        (
            "dv_ns".into(),
            source(
                "dv_ns",
                "GPL",
                "\tpr_info(\"dv_ns: %px\\n\", crypto_cipher_setkey);\n\treturn 0;",
                "MODULE_IMPORT_NS(CRYPTO_INTERNAL);",
            ),
        ),
        (
            "dv_depends".into(),
            source(
                "dv_depends",
                "GPL",
                "\tpr_info(\"dv_depends: loaded\\n\");\n\treturn 0;",
                "MODULE_DESCRIPTION(\"a description long enough to make room in .modinfo for a depends= entry\");",
            ),
        ),
        (
            "dv_init".into(),
            source(
                "dv_init",
                "GPL",
                "\tpr_info(\"dv_init: declining\\n\");\n\treturn -ENODEV;",
                "",
            ),
        ),
    ]
}

/// A copy of `from` whose module name (`.modinfo` name= and the `struct module` in
/// `.gnu.linkonce.this_module`) is `to` (not longer than the original).
pub(crate) fn renamed(from: &Path, old: &str, to: &str, dir: &Path) -> PathBuf {
    assert!(to.len() <= old.len());
    let file = dir.join(format!("{to}.ko"));
    let mut bytes = std::fs::read(from).unwrap();
    let mut padded = to.as_bytes().to_vec();
    padded.resize(old.len(), 0);
    let mut old_name = format!("name={old}").into_bytes();
    let mut new_name = b"name=".to_vec();
    new_name.extend_from_slice(&padded);
    replace_in(&mut bytes, ".modinfo", &old_name, &new_name);
    old_name = old.as_bytes().to_vec();
    old_name.push(0);
    padded.push(0);
    replace_in(&mut bytes, ".gnu.linkonce.this_module", &old_name, &padded);
    std::fs::write(&file, bytes).unwrap();
    file
}

// ---------------------------------------------------------------------------------------------
// Patching ELF files in place (all four targets are little-endian).

struct Section {
    name: String,
    offset: usize,
    size: usize,
    /// File offset of the section header.
    header: usize,
    /// File offset of the section's name in the section name table.
    name_at: usize,
}

fn sections(bytes: &[u8]) -> (bool, Vec<Section>) {
    let elf = goblin::elf::Elf::parse(bytes).unwrap();
    let shoff = elf.header.e_shoff as usize;
    let entsize = elf.header.e_shentsize as usize;
    let strtab = &elf.section_headers[elf.header.e_shstrndx as usize];
    let list = elf
        .section_headers
        .iter()
        .enumerate()
        .map(|(i, sh)| Section {
            name: elf.shdr_strtab.get_at(sh.sh_name).unwrap_or("").to_string(),
            offset: sh.sh_offset as usize,
            size: sh.sh_size as usize,
            header: shoff + i * entsize,
            name_at: strtab.sh_offset as usize + sh.sh_name,
        })
        .collect();
    (elf.is_64, list)
}

fn section<'a>(list: &'a [Section], name: &str) -> &'a Section {
    list.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no section {name}"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn patch(file: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(file).unwrap();
    f(&mut bytes);
    std::fs::write(file, bytes).unwrap();
}

/// The `__versions` record of `symbol`: its offset.
fn version_record(bytes: &[u8], symbol: &str) -> usize {
    let (is64, list) = sections(bytes);
    let v = section(&list, "__versions");
    let name_at = if is64 { 8 } else { 4 };
    let mut wanted = symbol.as_bytes().to_vec();
    wanted.push(0);
    (v.offset..v.offset + v.size)
        .step_by(64)
        .find(|r| bytes[r + name_at..].starts_with(&wanted))
        .unwrap_or_else(|| panic!("no {symbol} in __versions"))
}

fn wrong_crc(bytes: &mut [u8]) {
    let r = version_record(bytes, "_printk");
    bytes[r] ^= 0x5a;
}

/// Replace `from` by `to` (same length) inside section `name`.
fn replace_in(bytes: &mut [u8], name: &str, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let (_, list) = sections(bytes);
    let s = section(&list, name);
    let at = s.offset
        + find(&bytes[s.offset..s.offset + s.size], from)
            .unwrap_or_else(|| panic!("{name} has no {}", String::from_utf8_lossy(from)));
    bytes[at..at + to.len()].copy_from_slice(to);
}

/// Rewrite `.modinfo` (same size): `depends=` names `depends`, the description shrinks.
fn set_depends(bytes: &mut [u8], depends: &str) {
    let (_, list) = sections(bytes);
    let s = section(&list, ".modinfo");
    let raw = &bytes[s.offset..s.offset + s.size];
    let mut out = Vec::new();
    for entry in raw.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let e = String::from_utf8_lossy(entry).into_owned();
        let e = if e.starts_with("depends=") {
            format!("depends={depends}")
        } else if e.starts_with("description=") {
            "description=x".to_string()
        } else {
            e
        };
        out.extend_from_slice(e.as_bytes());
        out.push(0);
    }
    assert!(out.len() <= s.size, "no room in .modinfo");
    out.resize(s.size, 0);
    bytes[s.offset..s.offset + s.size].copy_from_slice(&out);
}

/// Tag_CPU_arch (6) = 10 (ARMv7) in `.ARM.attributes` becomes `level`.
fn set_cpu_arch(bytes: &mut [u8], level: u8) {
    let (_, list) = sections(bytes);
    let s = section(&list, ".ARM.attributes");
    let body = &bytes[s.offset..s.offset + s.size];
    let aeabi = find(body, b"aeabi\0").unwrap();
    let rel = find(&body[aeabi..], &[0x06, 0x0A]).unwrap();
    bytes[s.offset + aeabi + rel + 1] = level;
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The catalogue for one target, built and patched in `dir`.
fn catalogue(
    target: &str,
    kdir: &Path,
    vermagic: &str,
    modules_dir: &Path,
    other_class: (&str, &Path),
    dir: &Path,
    key: &Path,
) -> Vec<Variant> {
    std::fs::create_dir_all(dir).unwrap();
    let all = sources();
    let mut kbuild = String::from("obj-m :=");
    for (name, text) in &all {
        std::fs::write(dir.join(format!("{name}.c")), text).unwrap();
        kbuild.push_str(&format!(" {name}.o"));
    }
    std::fs::write(dir.join("Kbuild"), kbuild + "\n").unwrap();
    plain_make(target, kdir, dir);

    // Every plain variant: a renamed copy of BASE; dv_unknown and dv_gpl of dv_gplsymbol.
    let base = dir.join(format!("{BASE}.ko"));
    let plain_names: Vec<String> = [
        "dv_ok",
        "dv_rel",
        "dv_crc",
        "dv_missing",
        "dv_empty",
        "dv_none",
        "dv_machine",
        "dv_class",
        "dv_armv8",
        "dv_armv5",
        "dv_xz",
        "dv_zst_crc",
        "dv_wrongkey",
        "dv_enf_unsigned",
        "dv_enf_wrongkey",
    ]
    .iter()
    .map(|n| n.to_string())
    .chain((0..5).map(|i| format!("dv_tok{i}")))
    .collect();
    for n in &plain_names {
        renamed(&base, BASE, n, dir);
    }
    let gplsym = dir.join("dv_gplsymbol.ko");
    renamed(&gplsym, "dv_gplsymbol", "dv_unknown", dir);
    renamed(&gplsym, "dv_gplsymbol", "dv_gpl", dir);
    let ko = |n: &str| dir.join(format!("{n}.ko"));
    let mut v = Vec::new();
    let mut add = |name: &str, file: PathBuf, enforced: bool, what: &str, expect: Expect| {
        v.push(Variant {
            name: name.to_string(),
            file,
            enforced,
            what: what.to_string(),
            expect,
        })
    };
    add(
        "dv_ok",
        ko("dv_ok"),
        false,
        "unsigned, built against the tree",
        Expect::Warn("signature"),
    );

    // vermagic: the release alone (the kernel ignores it when __versions is there)...
    // (another release of the same length: the last digit before the flavour changed)
    let release = vermagic.split(' ').next().unwrap();
    let other_release = {
        let cut = release.find('-').unwrap_or(release.len());
        let at = release[..cut].rfind(|c: char| c.is_ascii_digit()).unwrap();
        let digit = release.as_bytes()[at] - b'0';
        let mut r = release.as_bytes().to_vec();
        r[at] = b'0' + (digit + 1) % 10;
        String::from_utf8(r).unwrap()
    };
    patch(&ko("dv_rel"), |b| {
        replace_in(
            b,
            ".modinfo",
            format!("vermagic={release} ").as_bytes(),
            format!("vermagic={other_release} ").as_bytes(),
        )
    });
    add(
        "dv_rel",
        ko("dv_rel"),
        false,
        "vermagic: other release",
        Expect::Warn("vermagic"),
    );
    // ...and each flag token.
    let tokens: Vec<&str> = vermagic.split_whitespace().skip(1).collect();
    assert!(tokens.len() <= 5, "{vermagic}");
    for (i, token) in tokens.iter().enumerate() {
        let name = format!("dv_tok{i}");
        let mut changed = token.as_bytes().to_vec();
        changed[0] = if changed[0].is_ascii_uppercase() {
            changed[0].to_ascii_lowercase()
        } else {
            changed[0].to_ascii_uppercase()
        };
        let at_end = vermagic.ends_with(token);
        let (from, to) = if at_end {
            (
                format!(" {token}"),
                format!(" {}", String::from_utf8_lossy(&changed)),
            )
        } else {
            (
                format!(" {token} "),
                format!(" {} ", String::from_utf8_lossy(&changed)),
            )
        };
        patch(&ko(&name), |b| {
            replace_in(b, ".modinfo", from.as_bytes(), to.as_bytes())
        });
        add(
            &name,
            ko(&name),
            false,
            &format!("vermagic: token {token}"),
            Expect::Fail {
                check: "vermagic",
                kernel: "version magic",
            },
        );
    }

    // modversions.
    patch(&ko("dv_crc"), |b| wrong_crc(b));
    add(
        "dv_crc",
        ko("dv_crc"),
        false,
        "modversions: wrong CRC of _printk",
        Expect::Fail {
            check: "modversions",
            kernel: "disagrees about version of symbol _printk",
        },
    );
    patch(&ko("dv_missing"), |b| {
        let r = version_record(b, "_printk");
        let at = r + if b[4] == 2 { 8 } else { 4 };
        b[at + 6] = b'X';
    });
    add(
        "dv_missing",
        ko("dv_missing"),
        false,
        "modversions: no entry for _printk",
        Expect::Fail {
            check: "modversions",
            kernel: "no symbol version for _printk",
        },
    );
    patch(&ko("dv_empty"), |b| {
        let (is64, list) = sections(b);
        let h = section(&list, "__versions").header;
        let at = h + if is64 { 32 } else { 20 };
        let width = if is64 { 8 } else { 4 };
        b[at..at + width].fill(0);
    });
    add(
        "dv_empty",
        ko("dv_empty"),
        false,
        "modversions: empty __versions",
        Expect::Fail {
            check: "modversions",
            kernel: "no symbol version for module_layout",
        },
    );
    patch(&ko("dv_none"), |b| {
        let (_, list) = sections(b);
        let at = section(&list, "__versions").name_at;
        b[at + 9] = b'z';
    });
    add(
        "dv_none",
        ko("dv_none"),
        false,
        "modversions: no __versions (forced load)",
        Expect::Warn("modversions"),
    );

    // symbols.
    patch(&ko("dv_unknown"), |b| {
        replace_in(b, ".strtab", b"\0ktime_get\0", b"\0ktime_gex\0")
    });
    add(
        "dv_unknown",
        ko("dv_unknown"),
        false,
        "symbols: unresolved ktime_gex",
        Expect::Fail {
            check: "symbols",
            kernel: "Unknown symbol ktime_gex",
        },
    );
    patch(&ko("dv_gpl"), |b| {
        replace_in(b, ".modinfo", b"license=GPL\0", b"license=MIT\0")
    });
    add(
        "dv_gpl",
        ko("dv_gpl"),
        false,
        "symbols: GPL-only ktime_get, license MIT",
        Expect::Fail {
            check: "symbols",
            kernel: "Unknown symbol ktime_get",
        },
    );
    patch(&ko("dv_ns"), |b| {
        replace_in(
            b,
            ".modinfo",
            b"import_ns=CRYPTO_INTERNAL",
            b"import_ns=CRYPTO_INTERNAX",
        )
    });
    add(
        "dv_ns",
        ko("dv_ns"),
        false,
        "symbols: namespace CRYPTO_INTERNAL not imported",
        Expect::Fail {
            check: "symbols",
            kernel: "does not import it",
        },
    );

    // ELF identity.
    patch(&ko("dv_machine"), |b| {
        let m = u16::from_le_bytes([b[18], b[19]]);
        let other: u16 = if m == 62 { 183 } else { 62 };
        b[18..20].copy_from_slice(&other.to_le_bytes());
    });
    add(
        "dv_machine",
        ko("dv_machine"),
        false,
        "identity: foreign e_machine",
        Expect::Fail {
            check: "identity",
            kernel: "Invalid architecture in ELF header",
        },
    );
    // The other ELF class: a real module of a target of the other class (the kernel
    // does not look at EI_CLASS itself: flipping that byte alone is not refused, so a
    // genuine other-class module is the variant that matters).
    // Unsigned (its signature would not survive the edit) and stamped with this kernel's
    // release, so that it goes to this kernel and only its ELF header is wrong.
    let foreign = dir.join(format!("{}.ko", other_class.0));
    let mut bytes = std::fs::read(other_class.1).unwrap();
    let magic = b"~Module signature appended~\n";
    if bytes.ends_with(magic) {
        let n = bytes.len() - magic.len();
        let sig_len = u32::from_be_bytes(bytes[n - 4..n].try_into().unwrap()) as usize;
        bytes.truncate(n - 12 - sig_len);
    }
    let release = vermagic.split(' ').next().unwrap();
    let at = find(&bytes, b"vermagic=").unwrap() + "vermagic=".len();
    assert_eq!(bytes[at + release.len()], b' ');
    bytes[at..at + release.len()].copy_from_slice(release.as_bytes());
    std::fs::write(&foreign, bytes).unwrap();
    add(
        other_class.0,
        foreign,
        false,
        "identity: a module of the other ELF class",
        Expect::Fail {
            check: "identity",
            kernel: "Invalid architecture in ELF header",
        },
    );
    if target == "armhf" {
        patch(&ko("dv_armv8"), |b| set_cpu_arch(b, 14));
        add(
            "dv_armv8",
            ko("dv_armv8"),
            false,
            "identity: built for ARMv8 (Tag_CPU_arch 14)",
            Expect::Warn("identity"),
        );
        patch(&ko("dv_armv5"), |b| set_cpu_arch(b, 5));
        add(
            "dv_armv5",
            ko("dv_armv5"),
            false,
            "identity: built for ARMv5TE (Tag_CPU_arch 5)",
            Expect::Warn("identity"),
        );
    }

    // Compressed.
    run(Command::new("xz")
        .args(["--check=crc32", "--lzma2=dict=1MiB", "-k", "-f"])
        .arg(ko("dv_xz")));
    add(
        "dv_xz",
        dir.join("dv_xz.ko.xz"),
        false,
        "compressed: xz, good",
        Expect::Warn("signature"),
    );
    patch(&ko("dv_zst_crc"), |b| wrong_crc(b));
    run(Command::new("zstd")
        .args(["-q", "-f", "-k"])
        .arg(ko("dv_zst_crc")));
    add(
        "dv_zst_crc",
        dir.join("dv_zst_crc.ko.zst"),
        false,
        "compressed: zstd, wrong CRC",
        Expect::Fail {
            check: "modversions",
            kernel: "disagrees about version of symbol _printk",
        },
    );

    // depends= naming a module that exists nowhere (the kernel never reads depends=).
    patch(&ko("dv_depends"), |b| set_depends(b, "kmx_ghost"));
    add(
        "dv_depends",
        ko("dv_depends"),
        false,
        "depends=kmx_ghost (no such module)",
        Expect::Warn("depends"),
    );

    // Signatures: the kernel's own signed modules, one tampered with; a key it lacks.
    let good = dir.join("crc-itu-t.ko");
    std::fs::copy(modules_dir.join("kernel/lib/crc-itu-t.ko"), &good).unwrap();
    add(
        "crc_itu_t",
        good,
        false,
        "signed by the kernel's key",
        Expect::Pass,
    );
    let tampered = dir.join("crc7.ko");
    std::fs::copy(modules_dir.join("kernel/lib/crc7.ko"), &tampered).unwrap();
    patch(&tampered, |b| {
        let at = find(b, b"description=").unwrap() + "description=".len();
        b[at] ^= 0x20;
    });
    add(
        "crc7",
        tampered,
        false,
        "signed, .modinfo changed after signing",
        Expect::Fail {
            check: "signature",
            kernel: "Key was rejected by service",
        },
    );
    let sign_file = kdir.join("scripts/sign-file");
    for n in ["dv_wrongkey", "dv_enf_wrongkey"] {
        run(Command::new(&sign_file)
            .arg("sha256")
            .arg(key)
            .arg(key)
            .arg(ko(n)));
    }
    add(
        "dv_wrongkey",
        ko("dv_wrongkey"),
        false,
        "signed with a key the kernel lacks",
        Expect::Warn("signature"),
    );
    add(
        "dv_init",
        ko("dv_init"),
        false,
        "init returns -ENODEV",
        Expect::Runtime {
            kernel: "No such device",
        },
    );
    add(
        "dv_enf_unsigned",
        ko("dv_enf_unsigned"),
        true,
        "sig_enforce: unsigned",
        Expect::Fail {
            check: "signature",
            kernel: "Loading of unsigned module is rejected",
        },
    );
    add(
        "dv_enf_wrongkey",
        ko("dv_enf_wrongkey"),
        true,
        "sig_enforce: key the kernel lacks",
        Expect::Fail {
            check: "signature",
            kernel: "Loading of module with unavailable key is rejected",
        },
    );
    v
}

/// kmx verify's JSON verdicts by module file.
fn verify(
    k: &Kmx,
    target: &str,
    files: &[&Path],
    extra: &[&str],
) -> BTreeMap<PathBuf, serde_json::Value> {
    let mut args = vec!["verify", "--json", "--target", target];
    args.extend(extra);
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let run = k.run(&args);
    assert!(run.code() == 0 || run.code() == 1, "{}", run.stderr());
    run.json()["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (PathBuf::from(m["path"].as_str().unwrap()), m.clone()))
        .collect()
}

#[test]
fn verify_agrees_with_the_real_kernels_on_every_variant() {
    let Some(k) = Kmx::with_trees() else { return };
    let reg = std::fs::read_to_string(k.home.join("trees/registry.json")).unwrap();
    let registry: serde_json::Value = serde_json::from_str(&reg).unwrap();
    if !reg.contains("\"image\"") {
        skip_or_fail(
            "fetched trees have no kernel images (QEMU boots them): run `./dev test`, or `kmx kernels fetch --with-image`",
        );
        return;
    }
    let tmp = k.dir().join("differential");
    std::fs::create_dir_all(&tmp).unwrap();
    // A key no kernel has.
    let key = tmp.join("key.pem");
    run(Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch", "-x509",
        ])
        .args([
            "-subj",
            "/CN=kmx differential test key",
            "-newkey",
            "rsa:2048",
            "-outform",
            "PEM",
        ])
        .arg("-out")
        .arg(&key)
        .arg("-keyout")
        .arg(&key));

    let modules_dir_of = |target: &str| -> PathBuf {
        PathBuf::from(
            registry["trees"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["target"] == target)
                .unwrap_or_else(|| panic!("no tree of {target}"))["boot"]["modules_dir"]
                .as_str()
                .unwrap(),
        )
    };
    // A real module of a target of the other ELF class, with a name no other variant has.
    let elf32 = modules_dir_of("armhf").join("kernel/lib/crc4.ko");
    let elf64 = modules_dir_of("amd64").join("kernel/lib/crc8.ko");
    // Build every target's catalogue in parallel.
    let catalogues: Vec<(String, Vec<Variant>)> = std::thread::scope(|s| {
        let handles: Vec<_> = BOOTED
            .iter()
            .map(|&target| {
                let (_, vermagic, kdir) = k.tree_of(target);
                let modules_dir = modules_dir_of(target);
                let other_class: (&str, &Path) = if target == "armhf" {
                    ("crc8", &elf64)
                } else {
                    ("crc4", &elf32)
                };
                let dir = tmp.join(target);
                let key = &key;
                s.spawn(move || {
                    (
                        target.to_string(),
                        catalogue(
                            target,
                            &kdir,
                            &vermagic,
                            &modules_dir,
                            other_class,
                            &dir,
                            key,
                        ),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // One boot per kernel, all in parallel, every variant loaded.
    let mut args: Vec<String> = vec![
        "smoke".into(),
        "--json".into(),
        "--timeout".into(),
        "150".into(),
    ];
    for (target, variants) in &catalogues {
        args.push("--target".into());
        args.push(target.clone());
        for v in variants {
            if v.enforced {
                args.push("--enforced".into());
            }
            args.push(v.file.display().to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let booted = k.run(&args);
    let reports = booted.json();

    let mut table = String::new();
    let mut disagreements = Vec::new();
    // Every check verify reported on any module, and those it failed or warned on where the
    // kernel agreed: read from verify's verdicts, not from this test's expectations.
    let mut made = std::collections::BTreeSet::new();
    let mut covered = std::collections::BTreeSet::new();
    for (target, variants) in &catalogues {
        let report = reports["boots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["target"] == target.as_str())
            .unwrap_or_else(|| panic!("no boot of {target}: {reports:#}"));
        assert_eq!(report["status"], "booted", "{target}: {report:#}");
        // The kernel's own words, read from the raw console, not through kmx's parser.
        let console = std::fs::read_to_string(report["console_log"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{target}: console log: {e}: {report:#}"));
        let normal: Vec<&Path> = variants
            .iter()
            .filter(|v| !v.enforced)
            .map(|v| v.file.as_path())
            .collect();
        let enforced: Vec<&Path> = variants
            .iter()
            .filter(|v| v.enforced)
            .map(|v| v.file.as_path())
            .collect();
        let mut verdicts = verify(&k, target, &normal, &[]);
        verdicts.extend(verify(&k, target, &enforced, &["--sig-enforce"]));
        for v in variants {
            let m = report["modules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == v.name.as_str() && m["dependency"] == false)
                .unwrap_or_else(|| panic!("{target}: {} not loaded: {report:#}", v.name));
            let outcome = m["outcome"].as_str().unwrap();
            let message = m["message"].as_str().unwrap_or("");
            let kernel_text = format!("{message} {} {}", m["kernel_log"], m["insmod_output"]);
            let verdict = &verdicts[&v.file];
            let status = verdict["status"].as_str().unwrap();
            let failing: Vec<&str> = verdict["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["status"] == status)
                .map(|c| c["check"].as_str().unwrap())
                .collect();
            made.extend(
                verdict["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["check"].as_str().unwrap().to_string()),
            );
            let reason = verdict["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["status"] == status)
                .and_then(|c| c["summary"].as_str())
                .unwrap_or("");
            let agree = match v.expect {
                Expect::Pass => status == "pass" && outcome == "loaded",
                Expect::Warn(check) => {
                    status == "warn" && failing.contains(&check) && outcome == "loaded"
                }
                Expect::Fail { check, kernel } => {
                    status == "fail"
                        && failing.contains(&check)
                        && outcome == "refused"
                        && kernel_text.contains(kernel)
                        && console.contains(kernel)
                }
                Expect::Runtime { kernel } => {
                    status != "fail"
                        && outcome == "refused"
                        && kernel_text.contains(kernel)
                        && console.contains(kernel)
                }
            };
            if agree && status != "pass" {
                covered.extend(failing.iter().map(|c| c.to_string()));
            }
            let runtime = matches!(v.expect, Expect::Runtime { .. });
            table.push_str(&format!(
                "| {target} | {} | {} | {status} ({}) | {outcome}{} | {} |\n",
                v.name,
                v.what,
                failing.join(","),
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                },
                if !agree {
                    "DISAGREE"
                } else if runtime {
                    "run time only"
                } else {
                    "agree"
                }
            ));
            if !agree {
                disagreements.push(format!(
                    "{target} {}: verify {status} {failing:?} \"{reason}\"; kernel {outcome}: {kernel_text}",
                    v.name
                ));
            }
        }
    }
    eprintln!(
        "| target | module | variant | kmx verify | kernel | |\n|---|---|---|---|---|---|\n{table}"
    );
    assert!(
        disagreements.is_empty(),
        "verify and the kernel disagree:\n{}",
        disagreements.join("\n")
    );
    // Every check verify makes was seen failing or warning, with the kernel agreeing.
    assert!(made.len() >= 6, "verify reported only {made:?}");
    let uncovered: Vec<&String> = made.difference(&covered).collect();
    assert!(
        uncovered.is_empty(),
        "no variant where verify's {uncovered:?} check failed or warned and the kernel agreed (covered: {covered:?})"
    );
    assert!(catalogues.iter().all(|(_, v)| v.len() >= 15));
}

/// The real-package corpus, short: four real Debian 12 `*-dkms` packages (vpoll, ddcci with
/// its cross-module exports, tp-smapi's x86-only code, acpi-call's BUILD_EXCLUSIVE_CONFIG)
/// built for a 64-bit x86 and a 32-bit ARM target by Debian's own DKMS and by kmx
/// (`benches/dkms-corpus.sh`, which runs all four targets and more packages): every cell
/// agrees, built, skipped or failed, with the tree's vermagic on every module.
/// Needs root (DKMS's cells run in private mount namespaces), Debian's dkms and apt
/// (`./dev test` installs them).
#[test]
fn real_dkms_and_kmx_agree_on_a_corpus_subset() {
    let Some(home) = fetched_home() else { return };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(
            "the corpus runs DKMS in mount namespaces: as root (CI and `./dev test` as root run it)",
        );
        return;
    }
    if !Path::new("/usr/sbin/dkms").is_file() {
        skip_or_fail("Debian's dkms is not installed: `./dev test` installs it");
        return;
    }
    let packages = [
        "vpoll-dkms",
        "ddcci-dkms",
        "tp-smapi-dkms",
        "acpi-call-dkms",
    ];
    let targets = ["amd64", "armhf"];
    let (ok, text) = run_bench(
        "dkms-corpus.sh",
        &[
            "--packages",
            &packages.join(","),
            "--targets",
            &targets.join(","),
        ],
        &[
            ("KMX", env!("CARGO_BIN_EXE_kmx").as_ref()),
            ("KMX_HOME", home.as_os_str()),
        ],
    );
    assert!(ok, "{text}");
    let cells = packages.len() * targets.len();
    assert!(
        text.contains(&format!(
            "{} packages x {} targets = {cells} cells",
            packages.len(),
            targets.len()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("cells: {cells} agree, 0 differ")),
        "{text}"
    );
    // Not a vacuous agreement: both sides built modules.
    let built = |who: &str| -> usize {
        let line = text
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("no {who} line: {text}"));
        line.split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(built("DKMS:") >= cells / 2, "{text}");
    assert!(built("kmx:") >= cells / 2, "{text}");
}
