//! The module version magic: the string every `.ko` carries in `.modinfo` and the kernel
//! compares before loading it. This module owns composing the string a kernel configuration
//! produces (mirroring include/linux/vermagic.h and arch/*/include/asm/vermagic.h exactly,
//! trailing spaces included) and explaining how two strings differ. It does no I/O: the
//! caller supplies the release and, for CONFIG_RANDSTRUCT kernels, the layout hash.

use std::collections::BTreeSet;

use super::kconfig::KConfig;

pub use crate::modfile::Vermagic;

/// The vermagic a kernel built from `config` stamps on its modules.
///
/// `randstruct_hash` is `RANDSTRUCT_HASHED_SEED` from the tree's
/// include/generated/randstruct_hash.h; it is only read when the configuration enables
/// structure layout randomisation, and then the caller must supply it (without it the string
/// ends in the bare `RANDSTRUCT_` prefix, which no kernel produces).
pub fn expected(release: &str, config: &KConfig, randstruct_hash: Option<&str>) -> Vermagic {
    let on = |name: &str| config.builtin(name);
    let mut flags = String::new();
    if on("CONFIG_SMP") {
        flags.push_str("SMP ");
    }
    // CONFIG_PREEMPT_BUILD appeared in 5.16; before it CONFIG_PREEMPT chose "preempt ", and
    // since then CONFIG_PREEMPT selects PREEMPT_BUILD, so either symbol means the same.
    if on("CONFIG_PREEMPT_BUILD") || on("CONFIG_PREEMPT") {
        flags.push_str("preempt ");
    } else if on("CONFIG_PREEMPT_RT") {
        flags.push_str("preempt_rt ");
    }
    if on("CONFIG_MODULE_UNLOAD") {
        flags.push_str("mod_unload ");
    }
    if on("CONFIG_MODVERSIONS") {
        flags.push_str("modversions ");
    }
    flags.push_str(&arch_part(config));
    // 5.19+ define RANDSTRUCT for CONFIG_RANDSTRUCT (gcc plugin or clang); older kernels had
    // only the gcc plugin, tagged RANDSTRUCT_PLUGIN_ (hash from randomize_layout_hash.h).
    let randstruct = if on("CONFIG_RANDSTRUCT") {
        Some("RANDSTRUCT_")
    } else if on("CONFIG_GCC_PLUGIN_RANDSTRUCT") {
        Some("RANDSTRUCT_PLUGIN_")
    } else {
        None
    };
    if let Some(prefix) = randstruct {
        flags.push_str(prefix);
        flags.push_str(randstruct_hash.unwrap_or_default());
    }
    Vermagic {
        release: release.to_string(),
        flags,
    }
}

/// True when the configuration randomises structure layout, so the vermagic needs the hash.
pub fn needs_randstruct_hash(config: &KConfig) -> bool {
    config.builtin("CONFIG_RANDSTRUCT") || config.builtin("CONFIG_GCC_PLUGIN_RANDSTRUCT")
}

/// MODULE_ARCH_VERMAGIC of arch/<arch>/include/asm/vermagic.h (asm-generic: empty).
fn arch_part(config: &KConfig) -> String {
    let on = |name: &str| config.builtin(name);
    let first = |table| first_set(config, table);
    match config.kernel_arch() {
        Some("x86") if on("CONFIG_X86_32") => first(X86_32_FAMILIES).unwrap_or("").to_string(),
        Some("arm") => {
            let mut s = format!("ARMv{} ", arm_arch(config));
            if on("CONFIG_THUMB2_KERNEL") {
                s.push_str("thumb2 ");
            }
            if on("CONFIG_ARM_PATCH_PHYS_VIRT") {
                s.push_str("p2v8 ");
            }
            s
        }
        Some("arm64") => "aarch64".to_string(),
        Some("riscv") => "riscv".to_string(),
        Some("powerpc") => {
            let mut s = String::new();
            if on("CONFIG_MPROFILE_KERNEL") {
                s.push_str("mprofile-kernel ");
            }
            if on("CONFIG_RELOCATABLE") {
                s.push_str("relocatable ");
            }
            s
        }
        Some("mips") => format!(
            "{}{}",
            first(MIPS_FAMILIES).unwrap_or(""),
            kernel_type(config)
        ),
        Some("loongarch") => format!("LOONGARCH {}", kernel_type(config)),
        Some("sh") => {
            let family = first(&[
                ("CONFIG_CPU_SH2", "SH2"),
                ("CONFIG_CPU_SH3", "SH3"),
                ("CONFIG_CPU_SH4", "SH4"),
            ])
            .unwrap_or("");
            let endian = if on("CONFIG_CPU_LITTLE_ENDIAN") {
                "LE"
            } else {
                "BE"
            };
            format!("{family}{endian} ")
        }
        Some("ia64") => {
            // "ia64" "gcc-" __GNUC__ "." __GNUC_MINOR__, no separating space.
            let v: u32 = config
                .get("CONFIG_GCC_VERSION")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            format!("ia64gcc-{}.{}", v / 10000, v / 100 % 100)
        }
        // x86_64, s390 and everything else use asm-generic's empty MODULE_ARCH_VERMAGIC.
        _ => String::new(),
    }
}

/// __LINUX_ARM_ARCH__ as arch/arm/Makefile sets it: its `arch-$(CONFIG_CPU_32vN)` lines run
/// from v7M down to v3 and the last enabled one wins, so the oldest enabled version counts.
/// (CPU_32v6K only counts together with CPU_32v6, which already gives 6.)
fn arm_arch(config: &KConfig) -> &'static str {
    let table = [
        ("CONFIG_CPU_32v3", "3"),
        ("CONFIG_CPU_32v4", "4"),
        ("CONFIG_CPU_32v4T", "4"),
        ("CONFIG_CPU_32v5", "5"),
        ("CONFIG_CPU_32v6", "6"),
        ("CONFIG_CPU_32v7", "7"),
        ("CONFIG_CPU_32v7M", "7"),
    ];
    // With no CPU_32v* the macro stays unexpanded and __stringify yields its name.
    first_set(config, &table).unwrap_or("__LINUX_ARM_ARCH__")
}

/// The value paired with the first symbol of `table` that `config` builds in.
fn first_set(config: &KConfig, table: &[(&str, &'static str)]) -> Option<&'static str> {
    table
        .iter()
        .find(|(symbol, _)| config.builtin(symbol))
        .map(|&(_, value)| value)
}

/// MODULE_KERNEL_TYPE of mips and loongarch.
fn kernel_type(config: &KConfig) -> &'static str {
    if config.builtin("CONFIG_32BIT") {
        "32BIT "
    } else if config.builtin("CONFIG_64BIT") {
        "64BIT "
    } else {
        ""
    }
}

/// MODULE_PROC_FAMILY of arch/x86/include/asm/vermagic.h, in its #elif order.
const X86_32_FAMILIES: &[(&str, &str)] = &[
    ("CONFIG_M486SX", "486SX "),
    ("CONFIG_M486", "486 "),
    ("CONFIG_M586", "586 "),
    ("CONFIG_M586TSC", "586TSC "),
    ("CONFIG_M586MMX", "586MMX "),
    ("CONFIG_MCORE2", "CORE2 "),
    ("CONFIG_MATOM", "ATOM "),
    ("CONFIG_M686", "686 "),
    ("CONFIG_MPENTIUMII", "PENTIUMII "),
    ("CONFIG_MPENTIUMIII", "PENTIUMIII "),
    ("CONFIG_MPENTIUMM", "PENTIUMM "),
    ("CONFIG_MPENTIUM4", "PENTIUM4 "),
    ("CONFIG_MK6", "K6 "),
    ("CONFIG_MK7", "K7 "),
    ("CONFIG_MK8", "K8 "),
    ("CONFIG_MELAN", "ELAN "),
    ("CONFIG_MCRUSOE", "CRUSOE "),
    ("CONFIG_MEFFICEON", "EFFICEON "),
    ("CONFIG_MWINCHIPC6", "WINCHIPC6 "),
    ("CONFIG_MWINCHIP3D", "WINCHIP3D "),
    ("CONFIG_MCYRIXIII", "CYRIXIII "),
    ("CONFIG_MVIAC3_2", "VIAC3-2 "),
    ("CONFIG_MVIAC7", "VIAC7 "),
    ("CONFIG_MGEODEGX1", "GEODEGX1 "),
    ("CONFIG_MGEODE_LX", "GEODE "),
];

/// MODULE_PROC_FAMILY of arch/mips/include/asm/vermagic.h, in its #elif order.
const MIPS_FAMILIES: &[(&str, &str)] = &[
    ("CONFIG_CPU_BMIPS", "BMIPS "),
    ("CONFIG_CPU_MIPS32_R1", "MIPS32_R1 "),
    ("CONFIG_CPU_MIPS32_R2", "MIPS32_R2 "),
    ("CONFIG_CPU_MIPS32_R5", "MIPS32_R5 "),
    ("CONFIG_CPU_MIPS32_R6", "MIPS32_R6 "),
    ("CONFIG_CPU_MIPS64_R1", "MIPS64_R1 "),
    ("CONFIG_CPU_MIPS64_R2", "MIPS64_R2 "),
    ("CONFIG_CPU_MIPS64_R5", "MIPS64_R5 "),
    ("CONFIG_CPU_MIPS64_R6", "MIPS64_R6 "),
    ("CONFIG_CPU_R3000", "R3000 "),
    ("CONFIG_CPU_R4300", "R4300 "),
    ("CONFIG_CPU_R4X00", "R4X00 "),
    ("CONFIG_CPU_TX49XX", "TX49XX "),
    ("CONFIG_CPU_R5000", "R5000 "),
    ("CONFIG_CPU_R5500", "R5500 "),
    ("CONFIG_CPU_NEVADA", "NEVADA "),
    ("CONFIG_CPU_R10000", "R10000 "),
    ("CONFIG_CPU_RM7000", "RM7000 "),
    ("CONFIG_CPU_SB1", "SB1 "),
    ("CONFIG_CPU_LOONGSON32", "LOONGSON32 "),
    ("CONFIG_CPU_LOONGSON2EF", "LOONGSON2EF "),
    ("CONFIG_CPU_LOONGSON64", "LOONGSON64 "),
    ("CONFIG_CPU_CAVIUM_OCTEON", "OCTEON "),
    ("CONFIG_CPU_P5600", "P5600 "),
];

/// Explain, one line per difference, why `module` does not match `kernel`: the release
/// first ("release A, kernel B"), then every flag token present in only one of them
/// ("modversions: module no, kernel yes"). Empty when the strings are identical.
pub fn explain_difference(module: &Vermagic, kernel: &Vermagic) -> Vec<String> {
    let mut out = Vec::new();
    if module.release != kernel.release {
        out.push(format!(
            "release {}, kernel {}",
            module.release, kernel.release
        ));
    }
    let (m, k) = (module.tokens(), kernel.tokens());
    let yes = |b: bool| if b { "yes" } else { "no" };
    // Kernel's tokens in its order first, then the module's extras in its order.
    let order = kernel
        .flags
        .split_whitespace()
        .chain(module.flags.split_whitespace());
    let mut seen = BTreeSet::new();
    for token in order {
        if seen.insert(token) && m.contains(token) != k.contains(token) {
            out.push(format!(
                "{token}: module {}, kernel {}",
                yes(m.contains(token)),
                yes(k.contains(token))
            ));
        }
    }
    if m == k && module.flags != kernel.flags {
        out.push(format!(
            "flags differ in order or spacing: module {:?}, kernel {:?}",
            module.flags, kernel.flags
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(s: &str) -> Vermagic {
        Vermagic::parse(s).unwrap()
    }

    #[test]
    fn parse_and_display_round_trip_keeping_trailing_space() {
        let s = "6.1.0-50-amd64 SMP preempt mod_unload modversions ";
        let v = vm(s);
        assert_eq!(v.release, "6.1.0-50-amd64");
        assert_eq!(v.flags, "SMP preempt mod_unload modversions ");
        assert_eq!(v.to_string(), s);
        assert_eq!(vm("6.1 ").flags, "");
        assert_eq!(Vermagic::parse("6.1.0"), None);
        assert_eq!(Vermagic::parse(" SMP"), None);
    }

    fn flags(config: &str) -> String {
        expected("r", &KConfig::parse(config), Some("abc")).flags
    }

    #[test]
    fn arch_parts() {
        assert_eq!(flags("CONFIG_X86=y\nCONFIG_X86_64=y\nCONFIG_SMP=y"), "SMP ");
        assert_eq!(
            flags("CONFIG_X86=y\nCONFIG_X86_32=y\nCONFIG_MPENTIUM4=y"),
            "PENTIUM4 "
        );
        // armhf multiplatform selects both v6K and v7 without v6: ARMv7.
        assert_eq!(
            flags("CONFIG_ARM=y\nCONFIG_CPU_32v6K=y\nCONFIG_CPU_32v7=y\nCONFIG_THUMB2_KERNEL=y"),
            "ARMv7 thumb2 "
        );
        // A v6+v7 multiplatform kernel is compiled for the oldest: ARMv6.
        assert_eq!(
            flags("CONFIG_ARM=y\nCONFIG_CPU_32v6=y\nCONFIG_CPU_32v7=y"),
            "ARMv6 "
        );
        assert_eq!(flags("CONFIG_RISCV=y"), "riscv");
        assert_eq!(flags("CONFIG_PPC=y\nCONFIG_RELOCATABLE=y"), "relocatable ");
        assert_eq!(
            flags("CONFIG_MIPS=y\nCONFIG_CPU_MIPS32_R2=y\nCONFIG_32BIT=y"),
            "MIPS32_R2 32BIT "
        );
        assert_eq!(
            flags("CONFIG_LOONGARCH=y\nCONFIG_64BIT=y"),
            "LOONGARCH 64BIT "
        );
        assert_eq!(flags("CONFIG_S390=y\nCONFIG_MODVERSIONS=y"), "modversions ");
    }

    #[test]
    fn preempt_variants_and_randstruct() {
        assert_eq!(
            flags("CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_RT=y"),
            "preempt "
        );
        assert_eq!(flags("CONFIG_PREEMPT_RT=y"), "preempt_rt ");
        assert_eq!(flags("CONFIG_PREEMPT=y"), "preempt ");
        assert_eq!(flags("CONFIG_PREEMPT_VOLUNTARY_BUILD=y"), "");
        assert_eq!(
            flags("CONFIG_ARM64=y\nCONFIG_RANDSTRUCT=y"),
            "aarch64RANDSTRUCT_abc"
        );
        assert_eq!(
            flags("CONFIG_GCC_PLUGIN_RANDSTRUCT=y"),
            "RANDSTRUCT_PLUGIN_abc"
        );
    }

    #[test]
    fn explains_each_differing_token() {
        let module = vm("6.1.0-49-arm64 SMP preempt mod_unload aarch64");
        let kernel = vm("6.1.0-50-arm64 SMP mod_unload modversions aarch64");
        assert_eq!(
            explain_difference(&module, &kernel),
            [
                "release 6.1.0-49-arm64, kernel 6.1.0-50-arm64",
                "modversions: module no, kernel yes",
                "preempt: module yes, kernel no",
            ]
        );
        let armv6 = vm("6.1.0-50-armmp SMP ARMv6 p2v8 ");
        let armv7 = vm("6.1.0-50-armmp SMP ARMv7 p2v8 ");
        assert_eq!(
            explain_difference(&armv6, &armv7),
            [
                "ARMv7: module no, kernel yes",
                "ARMv6: module yes, kernel no"
            ]
        );
        assert!(explain_difference(&armv7, &armv7).is_empty());
        assert_eq!(
            explain_difference(&vm("r SMP aarch64 "), &vm("r SMP aarch64")),
            ["flags differ in order or spacing: module \"SMP aarch64 \", kernel \"SMP aarch64\""]
        );
    }
}
