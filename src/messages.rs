//! Every message a user can meet from the typed error kinds and reasons, as one table of
//! value -> exact text (as the `just` project pins its errors): a change of wording is a
//! visible diff here. Each kind also has a `match` without a wildcard below, so a new
//! variant does not compile until it has a row.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::manifest::BadField;
use crate::config::profile::BadSource;
use crate::lifecycle::dkms::{Notice, Refusal};
use crate::sandbox::Unavailable;
use crate::state::store::BadOrigin;
use crate::verify::certs::{ImageError, XzError};
use crate::verify::checks::{KeysUnknown, Mismatch};
use crate::verify::decompress::{Compression, Corruption, DecompressError};

fn io(kind: std::io::ErrorKind) -> Arc<std::io::Error> {
    Arc::new(std::io::Error::from(kind))
}

/// (what it is, the value rendered, the exact text).
fn table() -> Vec<(&'static str, String, &'static str)> {
    let mut rows: Vec<(&'static str, String, &'static str)> = Vec::new();
    let mut row = |what, value: &dyn std::fmt::Display, text| {
        rows.push((what, value.to_string(), text));
    };

    // The sandbox (`kmx doctor`, a build's warning, a toolchain root's compiler probe).
    for (value, text) in [
        (
            Unavailable::NoBubblewrap,
            "bwrap not found (install bubblewrap)",
        ),
        (
            Unavailable::Create {
                what: "a temporary directory",
                source: io(std::io::ErrorKind::PermissionDenied),
            },
            "cannot create a temporary directory: permission denied",
        ),
        (
            Unavailable::Run {
                bwrap: PathBuf::from("/usr/bin/bwrap"),
                source: io(std::io::ErrorKind::NotFound),
            },
            "cannot run /usr/bin/bwrap: entity not found",
        ),
        (
            Unavailable::Refused {
                said: "bwrap: No permissions to create new namespace".into(),
            },
            "bwrap: No permissions to create new namespace",
        ),
    ] {
        covered_unavailable(&value);
        row("sandbox", &value, text);
    }

    // A compressed module (`kmx verify`'s read check, a build's own check).
    for (value, text) in [
        (Corruption::Truncated, "truncated stream"),
        (Corruption::Lzma2Status(3), "LZMA2 invalid status 3"),
        (Corruption::Empty, "empty stream"),
        (Corruption::OutOfMemory, "out of memory"),
        (
            Corruption::Decoder("invalid gzip header".into()),
            "invalid gzip header",
        ),
    ] {
        covered_corruption(&value);
        row("corruption", &value, text);
    }
    for (value, text) in [
        (
            DecompressError::Corrupt {
                format: Compression::Xz,
                detail: Corruption::Truncated,
            },
            "corrupt xz stream: truncated stream",
        ),
        (
            DecompressError::TooLarge {
                format: Compression::Zstd,
                limit: 268435456,
            },
            "zstd stream decompresses to more than 268435456 bytes",
        ),
    ] {
        covered_decompress(&value);
        row("decompress", &value, text);
    }

    // A kernel image's built-in certificates (`kmx verify` of a signed module).
    for (value, text) in [
        (XzError::TruncatedStreamHeader, "truncated xz stream header"),
        (XzError::TruncatedBlock, "truncated xz block"),
        (XzError::NoBlock, "xz stream has no block"),
        (XzError::TruncatedBlockHeader, "truncated xz block header"),
        (XzError::BadFilter, "bad xz filter"),
        (
            XzError::TruncatedFilterProperties,
            "truncated xz filter properties",
        ),
        (
            XzError::NotLzma2,
            "xz block does not end with the LZMA2 filter",
        ),
        (
            XzError::Corrupt { decoder: None },
            "corrupt xz stream: empty",
        ),
        (
            XzError::Corrupt {
                decoder: Some("LZMA2 invalid status 3".into()),
            },
            "corrupt xz stream: LZMA2 invalid status 3",
        ),
        (
            XzError::UnsupportedFilter(0x0a),
            "xz filter 0xa is not supported",
        ),
        (XzError::TruncatedVarint, "truncated xz varint"),
        (XzError::VarintTooLong, "xz varint too long"),
    ] {
        covered_xz(&value);
        row("xz", &value, text);
    }
    for (value, text) in [
        (
            ImageError::Decompress(DecompressError::Corrupt {
                format: Compression::Gzip,
                detail: Corruption::Empty,
            }),
            "corrupt gzip stream: empty stream",
        ),
        (ImageError::Xz(XzError::NoBlock), "xz stream has no block"),
        (
            ImageError::NoCompressedKernel,
            "no compressed kernel inside the image",
        ),
    ] {
        covered_image(&value);
        row("image", &value, text);
    }

    // Why a signature was not checked (`kmx verify`: "...; the signature was not checked: X").
    for (value, text) in [
        (KeysUnknown::NotAsked, "not asked for"),
        (
            KeysUnknown::NoCertificate {
                release: "6.1.0-50-arm64".into(),
            },
            "kmx has no certificate of kernel 6.1.0-50-arm64 (fetch its image with `kmx kernels fetch --with-image`, or pass --cert FILE)",
        ),
        (
            KeysUnknown::Image(
                crate::Error::failed(
                    "found no built-in certificates (system_certificate_list) in the kernel image",
                )
                .at("/k/vmlinuz")
                .hint("pass the kernel's signing certificate with --cert FILE"),
            ),
            "/k/vmlinuz: found no built-in certificates (system_certificate_list) in the kernel image\n  hint: pass the kernel's signing certificate with --cert FILE",
        ),
    ] {
        covered_keys(&value);
        row("keys", &value, text);
    }

    // Why the kernel refuses a module's CRCs (`kmx verify`, `kmx compat`'s reasons).
    for (value, text) in [
        (
            Mismatch::Disagrees {
                symbol: "module_layout",
                module_crc: 0xb47ce167,
                kernel_crc: 0x0c1ad2e4,
                exporter: "vmlinux",
            },
            "disagrees about version of symbol module_layout (module 0xb47ce167, vmlinux 0x0c1ad2e4)",
        ),
        (
            Mismatch::NoVersion {
                symbol: "module_layout",
                empty: true,
            },
            "no symbol version for module_layout: __versions is empty (built against a tree without Module.symvers?); the kernel refuses it",
        ),
        (
            Mismatch::NoVersion {
                symbol: "printk",
                empty: false,
            },
            "no symbol version for printk: the module uses it without a CRC in __versions; the kernel refuses it",
        ),
    ] {
        covered_mismatch(&value);
        row("modversions", &value, text);
    }

    // A module's names and places (dkms.conf, kmx.toml, a tarball, install), after the
    // field and its value.
    for (value, text) in [
        (BadField::Nul, "contains a NUL byte"),
        (
            BadField::NotPlainName,
            "must be a plain file name (no `/`, not starting with `.`)",
        ),
        (
            BadField::ObjectSuffix,
            "must not end in .o or .ko: name the module without its suffix",
        ),
        (
            BadField::Absolute,
            "must be relative to the build directory",
        ),
        (
            BadField::LeavesBuildDir,
            "must not contain `..`: it would leave the build directory",
        ),
        (
            BadField::DestOutsideTrees,
            "does not start with /kernel, /updates or /extra",
        ),
        (
            BadField::ClimbsOut,
            "climbs out with `..`: it would leave /lib/modules/<kver>",
        ),
    ] {
        covered_field(&value);
        row("module field", &value, text);
    }

    // A target profile's [[kernels.source]] (after `targets/x.toml:LINE:COL: `).
    for (value, text) in [
        (
            BadSource::NoKernel,
            "a kernel source needs `arch` and `flavour` (or a [debian] table to take them from)",
        ),
        (
            BadSource::NoKeyring {
                url: "http://apt.example/debian".into(),
            },
            "the kernel source http://apt.example/debian needs `keyring`: the file its archive is signed with",
        ),
        (
            BadSource::Name { name: "a b".into() },
            "`name = \"a b\"` must be a plain word: it names a directory",
        ),
    ] {
        covered_source(&value);
        row("kernel source", &value, text);
    }

    // A built record of the state store (`kmx status`, `install`, ...).
    row(
        "state record",
        &BadOrigin("tarball".into()),
        "origin \"tarball\" is neither `build` nor `tarball <file name>`",
    );

    // What `kmx dkms` refuses, in DKMS 3.0.10's words (its exit code: Refusal::code).
    let made = || crate::Error::failed("make failed: exit status 2").at("/var/lib/kmx/log");
    let conf = || crate::Error::config("/usr/src/hello-1.0/dkms.conf", "MAKE[0] is empty");
    for (value, text) in [
        (
            Refusal::Unspecified,
            "error: Arguments <module> and <module-version> are not specified.\n  hint: usage as DKMS's: dkms ACTION [MODULE/VERSION] [-m MODULE] [-v VERSION] [-k KERNEL[/ARCH]] [-a ARCH] [--all]",
        ),
        (
            Refusal::AlreadyAdded {
                module: "hello".into(),
                version: "1.0".into(),
            },
            "Error! DKMS tree already contains: hello-1.0\nYou cannot add the same module/version combo more than once.",
        ),
        (
            Refusal::NoSource {
                dir: "/usr/src/hello-1.0".into(),
            },
            "Error! Could not find module source directory.\nDirectory: /usr/src/hello-1.0 does not exist (or has no dkms.conf).",
        ),
        (
            Refusal::BadConf { error: conf() },
            "Error! Bad conf file: /usr/src/hello-1.0/dkms.conf: MAKE[0] is empty",
        ),
        (
            Refusal::NotAdded {
                module: "hello".into(),
                version: "1.0".into(),
                source: None,
            },
            "Error! The module/version combo: hello-1.0 is not located in the DKMS tree.",
        ),
        (
            Refusal::NotAdded {
                module: "hello".into(),
                version: "1.0".into(),
                source: Some("/usr/src/hello-1.0".into()),
            },
            "Error! The module/version combo: hello-1.0 is not located in the DKMS tree (and /usr/src/hello-1.0 has no dkms.conf).",
        ),
        (
            Refusal::NoHeaders {
                release: "6.1.0-57-amd64".into(),
            },
            "Error! Your kernel headers for kernel 6.1.0-57-amd64 cannot be found at /lib/modules/6.1.0-57-amd64/build or /lib/modules/6.1.0-57-amd64/source.\nPlease install the linux-headers-6.1.0-57-amd64 package (apt-get install linux-headers-6.1.0-57-amd64).",
        ),
        (
            Refusal::AlreadyBuilt {
                release: "6.1.0-57-amd64".into(),
            },
            "Error! This module/version has already been built on: 6.1.0-57-amd64\nUse `dkms remove` (or --force) before building again.",
        ),
        (
            Refusal::Excluded {
                module: "hello".into(),
                reason: r#"BUILD_EXCLUSIVE_ARCH="^mips" does not match x86_64 (target amd64)"#
                    .into(),
            },
            "Error! The dkms.conf for module hello includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch/config (BUILD_EXCLUSIVE_ARCH=\"^mips\" does not match x86_64 (target amd64)).\nThis indicates that it should not be built.",
        ),
        (
            Refusal::BuildFailed {
                release: "6.1.0-57-amd64".into(),
                target: "amd64".into(),
                error: made(),
            },
            "error: /var/lib/kmx/log: make failed: exit status 2\nError! Bad return status for module build on kernel: 6.1.0-57-amd64 (amd64)",
        ),
        (
            Refusal::BadBuildConf { error: conf() },
            "error: /usr/src/hello-1.0/dkms.conf: MAKE[0] is empty",
        ),
        (
            Refusal::NoKernel {
                dir: "/lib/modules/6.1.0-99-amd64".into(),
            },
            "Error! The directory /lib/modules/6.1.0-99-amd64 doesn't exist.\nYou cannot install a module onto a non-existant kernel.",
        ),
        (
            Refusal::AlreadyInstalled {
                release: "6.1.0-57-amd64".into(),
                target: "amd64".into(),
            },
            "Error! This module/version combo is already installed for kernel 6.1.0-57-amd64 (amd64).",
        ),
        (
            Refusal::InstallAborted {
                error: crate::Error::failed("depmod failed").hint("run depmod -a"),
            },
            "error: depmod failed\n  hint: run depmod -a\nError! Installation aborted.",
        ),
        (
            Refusal::AutoinstallFailed,
            "Error! One or more modules failed to install during autoinstall.\nRefer to previous errors for more information.",
        ),
    ] {
        covered_refusal(&value);
        row("dkms refusal", &value, text);
    }
    for (value, text) in [
        (
            Notice::NotInstalled {
                module: "hello".into(),
                version: "1.0".into(),
                release: "6.1.0-57-amd64".into(),
            },
            "Module hello 1.0 is not installed for kernel 6.1.0-57-amd64. Skipping...",
        ),
        (
            Notice::NotBuilt {
                module: "hello".into(),
                version: "1.0".into(),
                release: "6.1.0-57-amd64".into(),
            },
            "Module hello 1.0 is not built for kernel 6.1.0-57-amd64. Skipping...",
        ),
        (
            Notice::Deleting {
                module: "hello".into(),
                version: "1.0".into(),
            },
            "Deleting module hello-1.0 completely from the DKMS tree.",
        ),
    ] {
        covered_notice(&value);
        row("dkms notice", &value, text);
    }
    rows
}

#[test]
fn every_message_reads_as_pinned() {
    let rows = table();
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}:\n  got:  {got}\n  want: {want}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(rows.len(), 61, "a row was added or lost");
}

// One `match` per kind, without a wildcard: a new variant needs a row above.

fn covered_unavailable(e: &Unavailable) {
    match e {
        Unavailable::NoBubblewrap
        | Unavailable::Create { .. }
        | Unavailable::Run { .. }
        | Unavailable::Refused { .. } => {}
    }
}

fn covered_corruption(e: &Corruption) {
    match e {
        Corruption::Truncated
        | Corruption::Lzma2Status(_)
        | Corruption::Empty
        | Corruption::OutOfMemory
        | Corruption::Decoder(_) => {}
    }
}

fn covered_decompress(e: &DecompressError) {
    match e {
        DecompressError::Corrupt { .. } | DecompressError::TooLarge { .. } => {}
    }
}

fn covered_xz(e: &XzError) {
    match e {
        XzError::TruncatedStreamHeader
        | XzError::TruncatedBlock
        | XzError::NoBlock
        | XzError::TruncatedBlockHeader
        | XzError::BadFilter
        | XzError::TruncatedFilterProperties
        | XzError::NotLzma2
        | XzError::Corrupt { .. }
        | XzError::UnsupportedFilter(_)
        | XzError::TruncatedVarint
        | XzError::VarintTooLong => {}
    }
}

fn covered_image(e: &ImageError) {
    match e {
        ImageError::Decompress(_) | ImageError::Xz(_) | ImageError::NoCompressedKernel => {}
    }
}

fn covered_keys(e: &KeysUnknown) {
    match e {
        KeysUnknown::NotAsked | KeysUnknown::NoCertificate { .. } | KeysUnknown::Image(_) => {}
    }
}

fn covered_mismatch(e: &Mismatch) {
    match e {
        Mismatch::Disagrees { .. } | Mismatch::NoVersion { .. } => {}
    }
}

fn covered_field(e: &BadField) {
    match e {
        BadField::Nul
        | BadField::NotPlainName
        | BadField::ObjectSuffix
        | BadField::Absolute
        | BadField::LeavesBuildDir
        | BadField::DestOutsideTrees
        | BadField::ClimbsOut => {}
    }
}

fn covered_source(e: &BadSource) {
    match e {
        BadSource::NoKernel | BadSource::NoKeyring { .. } | BadSource::Name { .. } => {}
    }
}

fn covered_refusal(e: &Refusal) {
    match e {
        Refusal::Unspecified
        | Refusal::AlreadyAdded { .. }
        | Refusal::NoSource { .. }
        | Refusal::BadConf { .. }
        | Refusal::NotAdded { .. }
        | Refusal::NoHeaders { .. }
        | Refusal::AlreadyBuilt { .. }
        | Refusal::Excluded { .. }
        | Refusal::BuildFailed { .. }
        | Refusal::BadBuildConf { .. }
        | Refusal::NoKernel { .. }
        | Refusal::AlreadyInstalled { .. }
        | Refusal::InstallAborted { .. }
        | Refusal::AutoinstallFailed => {}
    }
}

fn covered_notice(e: &Notice) {
    match e {
        Notice::NotInstalled { .. } | Notice::NotBuilt { .. } | Notice::Deleting { .. } => {}
    }
}
