//! Architecture vocabulary shared by every part of kmx: the ELF identity a target's modules
//! must carry (derived from the toolchain's GNU triple, never typed twice) and the kernel's
//! own ARCH names.
//!
//! This module is pure: no I/O.

use std::fmt;

use serde::Serialize;
use target_lexicon::{Architecture, Endianness, PointerWidth, Triple};

/// ELF machine numbers (e_machine) of the architectures kmx knows by name.
pub mod machine {
    pub const EM_386: u16 = 3;
    pub const EM_ARM: u16 = 40;
    pub const EM_X86_64: u16 = 62;
    pub const EM_AARCH64: u16 = 183;
    pub const EM_PPC: u16 = 20;
    pub const EM_PPC64: u16 = 21;
    pub const EM_S390: u16 = 22;
    pub const EM_MIPS: u16 = 8;
    pub const EM_RISCV: u16 = 243;
    pub const EM_LOONGARCH: u16 = 258;

    /// A short human name for an ELF machine number.
    pub fn name(m: u16) -> &'static str {
        match m {
            EM_386 => "i386",
            EM_ARM => "ARM",
            EM_X86_64 => "x86-64",
            EM_AARCH64 => "AArch64",
            EM_PPC => "PowerPC",
            EM_PPC64 => "PowerPC64",
            EM_S390 => "S/390",
            EM_MIPS => "MIPS",
            EM_RISCV => "RISC-V",
            EM_LOONGARCH => "LoongArch",
            _ => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ElfClass {
    Elf32,
    Elf64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    Little,
    Big,
}

/// What the ELF header of every module built for a target must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ElfIdentity {
    pub class: ElfClass,
    pub endian: Endian,
    pub machine: u16,
}

impl ElfIdentity {
    /// Derive the identity from a GNU triple. `None` for architectures kmx has no ELF machine
    /// number for (the caller names the file that asked for it).
    pub fn from_triple(triple: &Triple) -> Option<ElfIdentity> {
        use machine::*;
        let machine = match triple.architecture {
            Architecture::X86_32(_) => EM_386,
            Architecture::X86_64 | Architecture::X86_64h => EM_X86_64,
            Architecture::Arm(_) => EM_ARM,
            Architecture::Aarch64(_) => EM_AARCH64,
            Architecture::Powerpc => EM_PPC,
            Architecture::Powerpc64 | Architecture::Powerpc64le => EM_PPC64,
            Architecture::S390x => EM_S390,
            Architecture::Mips32(_) | Architecture::Mips64(_) => EM_MIPS,
            Architecture::Riscv32(_) | Architecture::Riscv64(_) => EM_RISCV,
            Architecture::LoongArch64 => EM_LOONGARCH,
            _ => return None,
        };
        let class = match triple.pointer_width().ok()? {
            PointerWidth::U64 => ElfClass::Elf64,
            _ => ElfClass::Elf32,
        };
        let endian = match triple.endianness().ok()? {
            Endianness::Little => Endian::Little,
            Endianness::Big => Endian::Big,
        };
        Some(ElfIdentity {
            class,
            endian,
            machine,
        })
    }
}

impl fmt::Display for ElfIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ElfClass::Elf32 => "ELF32",
            ElfClass::Elf64 => "ELF64",
        };
        let endian = match self.endian {
            Endian::Little => "LSB",
            Endian::Big => "MSB",
        };
        write!(
            f,
            "{class} {endian} {} ({})",
            machine::name(self.machine),
            self.machine
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn id(triple: &str) -> ElfIdentity {
        ElfIdentity::from_triple(&Triple::from_str(triple).unwrap()).unwrap()
    }

    #[test]
    fn identities_of_the_four_debian_targets() {
        assert_eq!(id("x86_64-linux-gnu").to_string(), "ELF64 LSB x86-64 (62)");
        assert_eq!(id("i686-linux-gnu").to_string(), "ELF32 LSB i386 (3)");
        assert_eq!(
            id("aarch64-linux-gnu").to_string(),
            "ELF64 LSB AArch64 (183)"
        );
        assert_eq!(id("arm-linux-gnueabihf").to_string(), "ELF32 LSB ARM (40)");
        assert_eq!(id("powerpc64-linux-gnu").endian, Endian::Big);
    }
}
