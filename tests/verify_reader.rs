//! The module reader against real modules (Debian 6.1 builds for the four targets, real
//! signed Debian modules, their xz/zstd/gzip copies) and against the hand-broken corpus in
//! tests/data/broken/ (regenerate it with its make.py), each broken file pinned to its exact
//! error message. Expected values come from kmod: `modinfo`, `modprobe --dump-modversions`,
//! `modprobe --show-exports`, and binutils' `readelf -A`.

use std::path::{Path, PathBuf};

use kmx::config::arch::{ElfClass, Endian, machine};
use kmx::verify::{Compression, Module, SymbolVersion, VersionsFormat};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn read(rel: &str) -> Module {
    let path = data(rel);
    match Module::read(&path) {
        Ok(m) => m,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn read_err(rel: &str) -> String {
    match Module::read(&data(rel)) {
        Ok(m) => panic!("{rel}: expected an error, got {m:#?}"),
        Err(e) => e.to_string(),
    }
}

fn crcs(m: &Module) -> Vec<(u32, &str)> {
    m.versions
        .iter()
        .map(|SymbolVersion { name, crc }| (*crc, name.as_str()))
        .collect()
}

#[test]
fn amd64_hello_matches_modinfo() {
    let m = read("modules/amd64/hello.ko");
    assert_eq!(m.identity.class, ElfClass::Elf64);
    assert_eq!(m.identity.endian, Endian::Little);
    assert_eq!(m.identity.machine, machine::EM_X86_64);
    assert_eq!(
        m.vermagic(),
        Some("6.1.0-50-amd64 SMP preempt mod_unload modversions ")
    );
    assert_eq!(m.name(), Some("hello"));
    assert_eq!(m.depends(), Vec::<String>::new());
    assert_eq!(m.modinfo_get("depends"), Some(""));
    assert_eq!(m.modinfo_get("retpoline"), Some("Y"));
    // modinfo shows "parm: greeting:int", built from the raw parmtype= entry.
    assert_eq!(
        m.modinfo_all("parmtype").collect::<Vec<_>>(),
        ["greeting:int"]
    );
    assert_eq!(m.versions_format, VersionsFormat::Classic);
    assert_eq!(
        crcs(&m),
        [
            (0xbdfb6dbb, "__fentry__"),
            (0x92997ed8, "_printk"),
            (0x5b8239ca, "__x86_return_thunk"),
            (0x7d675181, "param_ops_int"),
            (0xbce1a965, "module_layout"),
        ]
    );
    assert!(m.has_this_module);
    assert_eq!(
        m.undefined,
        [
            "__fentry__",
            "_printk",
            "__x86_return_thunk",
            "param_ops_int"
        ]
    );
    assert!(m.exported.is_empty());
    assert_eq!(m.signature, None);
    assert_eq!(m.arm_cpu_arch, None);
    assert_eq!(m.compression, None);
}

#[test]
fn i386_hello_matches_modinfo() {
    let m = read("modules/i386/hello.ko");
    assert_eq!(m.identity.to_string(), "ELF32 LSB i386 (3)");
    assert_eq!(
        m.vermagic(),
        Some("6.1.0-50-686-pae SMP preempt mod_unload modversions 686 ")
    );
    assert_eq!(
        crcs(&m),
        [
            (0xbdfb6dbb, "__fentry__"),
            (0x070f7896, "_printk"),
            (0x1a8b1c03, "param_ops_int"),
            (0x64fba84a, "module_layout"),
        ]
    );
    assert_eq!(m.undefined.len(), 3);
}

#[test]
fn arm64_hello_matches_modinfo() {
    let m = read("modules/arm64/hello.ko");
    assert_eq!(m.identity.to_string(), "ELF64 LSB AArch64 (183)");
    assert_eq!(
        m.vermagic(),
        Some("6.1.0-50-arm64 SMP mod_unload modversions aarch64")
    );
    assert_eq!(
        crcs(&m),
        [
            (0x92997ed8, "_printk"),
            (0xa1a31ea5, "param_ops_int"),
            (0xb47ce167, "module_layout"),
        ]
    );
    assert_eq!(m.arm_cpu_arch, None);
}

#[test]
fn armhf_hello_matches_modinfo_and_readelf() {
    let m = read("modules/armhf/hello.ko");
    assert_eq!(m.identity.to_string(), "ELF32 LSB ARM (40)");
    assert_eq!(m.e_flags, 0x0500_0000);
    assert_eq!(
        m.vermagic(),
        Some("6.1.0-50-armmp SMP mod_unload modversions ARMv7 p2v8 ")
    );
    assert_eq!(m.versions.len(), 5);
    assert_eq!(m.versions.last().map(|v| v.crc), Some(0x8c1823f3));
    // readelf -A: "Tag_CPU_arch: v7", which is value 10.
    assert_eq!(m.arm_cpu_arch, Some(10));
}

#[test]
fn compressed_copies_read_the_same_as_the_plain_file() {
    let plain = read("modules/amd64/hello.ko");
    for (ext, format) in [
        ("xz", Compression::Xz),
        ("zst", Compression::Zstd),
        ("gz", Compression::Gzip),
    ] {
        let m = read(&format!("modules/amd64/hello.ko.{ext}"));
        assert_eq!(m.compression, Some(format), "{ext}");
        assert_eq!(
            Module {
                compression: None,
                ..m
            },
            plain,
            "{ext}"
        );
    }
}

#[test]
fn compression_is_detected_by_content_not_name() {
    let bytes = std::fs::read(data("modules/amd64/hello.ko.zst")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let misnamed = dir.path().join("hello.ko");
    std::fs::write(&misnamed, bytes).unwrap();
    let m = Module::read(&misnamed).unwrap();
    assert_eq!(m.compression, Some(Compression::Zstd));
    assert_eq!(m.name(), Some("hello"));
}

#[test]
fn signed_debian_module_matches_modinfo() {
    // modinfo -F signer / sig_key / sig_hashalgo / sig_id on Debian's crc7.ko (6.1.0-50-arm64).
    let m = read("modules/arm64/crc7-signed.ko");
    let sig = m.signature.as_ref().expect("signed");
    assert_eq!(sig.signer, "Build time autogenerated kernel key");
    assert_eq!(
        sig.key_id,
        "58:68:F6:C6:14:69:70:B8:51:D2:88:C3:80:1A:46:27:8A:33:BF:78"
    );
    assert_eq!(sig.hash_algo, "sha256");
    assert_eq!(sig.id_type, "PKCS#7");
    assert_eq!(
        m.vermagic(),
        Some("6.1.0-50-arm64 SMP mod_unload modversions aarch64")
    );
    assert_eq!(m.modinfo_get("intree"), Some("Y"));
    assert_eq!(crcs(&m), [(0xb47ce167, "module_layout")]);
    // modprobe --show-exports
    let mut exported = m.exported.clone();
    exported.sort();
    assert_eq!(exported, ["crc7_be", "crc7_be_syndrome_table"]);
}

#[test]
fn module_with_dependencies_and_exports() {
    let m = read("modules/arm64/acpi_mdio-signed.ko");
    assert_eq!(m.name(), Some("acpi_mdio"));
    assert_eq!(m.depends(), ["libphy", "fwnode_mdio"]);
    assert_eq!(m.exported, ["__acpi_mdiobus_register"]);
    assert_eq!(m.versions.len(), 9);
    assert_eq!(m.undefined.len(), 8);
    assert!(m.signature.is_some());
}

#[test]
fn read_is_usable_from_many_threads() {
    use rayon::prelude::*;
    let files = [
        "modules/amd64/hello.ko",
        "modules/amd64/hello.ko.xz",
        "modules/i386/hello.ko",
        "modules/arm64/crc7-signed.ko",
        "modules/armhf/hello.ko",
    ];
    let names: Vec<String> = (0..64)
        .into_par_iter()
        .map(|i| {
            let m = Module::read(&data(files[i % files.len()])).unwrap();
            m.name().unwrap_or_default().to_string()
        })
        .collect();
    // Every fifth read is crc7 (i % 5 == 3: 13 of 64), the rest are hello.
    assert_eq!(names.iter().filter(|n| *n == "crc7").count(), 13);
    assert_eq!(names.iter().filter(|n| *n == "hello").count(), 51);
}

// ---------------------------------------------------------------------------------------------
// The hand-broken corpus: one file per error, each message pinned.

#[test]
fn broken_files_each_give_their_own_error() {
    let cases = [
        ("empty.ko", "not an ELF file: the file is empty"),
        ("bad-magic.ko", "not an ELF file: bad magic bytes"),
        (
            "bad-class.ko",
            "unsupported ELF class 3 (expected 1 for ELF32 or 2 for ELF64)",
        ),
        (
            "bad-encoding.ko",
            "unsupported ELF data encoding 0 (expected 1 for little-endian or 2 for big-endian)",
        ),
        ("exec.ko", "not a kernel module: ELF type is EXEC"),
        (
            "bad-shentsize.ko",
            "section header entry size is 40 bytes, expected 64",
        ),
        (
            "shoff-past-end.ko",
            "section header table (34 entries at offset 5848) extends past the end of the file (5912 bytes)",
        ),
        (
            "section-past-end.ko",
            "section 11 (.modinfo) at offset 5912 with size 126 extends past the end of the file (5912 bytes)",
        ),
        ("no-modinfo.ko", "not a kernel module: no .modinfo section"),
        (
            "versions-size.ko",
            "__versions size 319 is not a multiple of 64",
        ),
        (
            "versions-unterminated.ko",
            "__versions entry 1 has a name that is not NUL-terminated",
        ),
        (
            "signature-truncated.ko",
            "malformed module signature: the file ends with the signature magic but has only 8 bytes before it",
        ),
        (
            "signature-too-long.ko",
            "malformed module signature: signature (16777215 bytes), signer (0) and key id (0) do not fit in the 5769 bytes before the descriptor",
        ),
    ];
    for (file, want) in cases {
        assert_eq!(read_err(&format!("broken/{file}")), want, "{file}");
    }
}

#[test]
fn lying_compressed_streams_are_corrupt_not_crashes() {
    let xz = read_err("broken/lying.ko.xz");
    assert!(xz.starts_with("corrupt xz stream: "), "{xz}");
    let gz = read_err("broken/lying.ko.gz");
    assert!(gz.starts_with("corrupt gzip stream: "), "{gz}");
}

#[test]
fn unterminated_last_modinfo_string_is_tolerated_like_kmod() {
    // kmod's kmod_elf_get_strings NUL-terminates the last string itself; so do we.
    let m = read("broken/modinfo-unterminated.ko");
    let plain = read("modules/amd64/hello.ko");
    assert_eq!(m.modinfo, plain.modinfo);
}

#[test]
fn read_error_converts_into_the_crate_error_with_the_path() {
    let path = data("broken/exec.ko");
    let err = Module::read(&path).unwrap_err().into_error(&path);
    assert_eq!(
        err.to_string(),
        format!("{}: not a kernel module: ELF type is EXEC", path.display())
    );
    assert_eq!(err.code(), kmx::error::exit::FAILED);
    let missing = data("broken/no-such-file.ko");
    let err = Module::read(&missing).unwrap_err().into_error(&missing);
    assert_eq!(err.code(), kmx::error::exit::ENVIRONMENT);
    assert!(
        err.to_string()
            .ends_with("cannot open: No such file or directory (os error 2)")
    );
}

/// Cut a real module at every section boundary (and just before and after): each cut is an
/// error (never a panic), and the error says what is missing.
#[test]
fn truncation_at_every_section_boundary_is_an_error() {
    for fixture in [
        "modules/amd64/hello.ko",
        "modules/i386/hello.ko",
        "modules/armhf/hello.ko",
        "modules/arm64/crc7-signed.ko",
    ] {
        let bytes = std::fs::read(data(fixture)).unwrap();
        let mut cuts = section_boundaries(&bytes);
        cuts.extend([0, 1, 4, 15, 16, 51, 52, 63, 64]);
        cuts.sort();
        cuts.dedup();
        let full = Module::parse(&bytes).unwrap();
        for cut in cuts.into_iter().filter(|&c| c < bytes.len()) {
            let msg = match Module::parse(&bytes[..cut]) {
                Err(e) => e.to_string(),
                // A cut that only removes the signature leaves a valid unsigned module.
                Ok(m) if full.signature.is_some() => {
                    assert_eq!(m.signature, None, "{fixture} cut at {cut}");
                    continue;
                }
                Ok(_) => panic!("{fixture} cut at {cut} parsed"),
            };
            let ok = msg.starts_with("not an ELF file")
                || msg.starts_with("section header table (")
                || msg.contains("extends past the end of the file");
            assert!(ok, "{fixture} cut at {cut}: {msg}");
        }
    }
}

/// Start and end offsets of every section, plus the section table's, read with plain
/// arithmetic (ELF little-endian, both classes).
fn section_boundaries(b: &[u8]) -> Vec<usize> {
    let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let le32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let le64 = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let is64 = b[4] == 2;
    let (shoff, shnum) = if is64 {
        (le64(0x28), le16(0x3C))
    } else {
        (le32(0x20), le16(0x30))
    };
    let entsize = if is64 { 64 } else { 40 };
    let mut out = vec![shoff, shoff + shnum * entsize];
    for i in 0..shnum {
        let h = shoff + i * entsize;
        let (off, size) = if is64 {
            (le64(h + 24), le64(h + 32))
        } else {
            (le32(h + 16), le32(h + 20))
        };
        if le32(h + 4) != 8 && size > 0 {
            out.extend([off, off + size - 1, off + size]);
        }
    }
    out
}

/// A FIFO without a writer (`mkfifo x.ko`) used to hang the reader in open(2), and with it
/// `kmx verify` and the build's check: now it reads as an empty file, at once.
#[test]
fn a_fifo_without_a_writer_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.ko");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Module::read(&path).map(|_| ()).map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("reading a FIFO hung");
    assert!(got.is_err(), "{got:?}");
}
