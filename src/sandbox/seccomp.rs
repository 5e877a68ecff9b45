//! The sandbox's system-call filter, handed to bubblewrap (`--seccomp FD`): what the rest of
//! the confinement leaves open and a build never needs.
//!
//! - `socket(AF_UNIX, ...)`: a Unix socket of the host is reachable wherever it lies (a
//!   read-only mount does not stop `connect`), and behind some is root (a container
//!   manager's API, a database). `/run` and `/tmp` are private, but sockets live elsewhere
//!   too. `socketpair` stays allowed: it reaches nothing.
//! - `keyctl`, `add_key`, `request_key`: the kernel's keyrings are not namespaced by the
//!   mount or PID namespaces; the caller's session keyring (a login's) would be readable.
//! - every system call of another ABI than the host's own (32-bit calls on a 64-bit kernel,
//!   x32): they would reach `socketcall` and the rest unfiltered.
//!
//! The program is classic BPF, a dozen instructions, written here: the kernel's format is
//! stable, and the one well-kept Rust compiler for such filters covers x86_64 and aarch64
//! only, while kmx also runs on the Raspberry Pi's 32-bit ARM.

/// One BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// `struct seccomp_data` offsets: nr, arch, args[0] (its low 32 bits, little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;

/// The host's ABI: its audit architecture, the x32 bit to refuse (x86_64 only), and the
/// numbers of `socket`, `keyctl`, `add_key`, `request_key` (and `socketcall` where the ABI
/// has one).
struct Abi {
    arch: u32,
    x32_bit: Option<u32>,
    socket: u32,
    denied: &'static [u32],
}

#[cfg(target_arch = "x86_64")]
const ABI: Option<Abi> = Some(Abi {
    arch: 0xC000_003E,
    x32_bit: Some(0x4000_0000),
    socket: 41,
    denied: &[250, 248, 249],
});
#[cfg(target_arch = "aarch64")]
const ABI: Option<Abi> = Some(Abi {
    arch: 0xC000_00B7,
    x32_bit: None,
    socket: 198,
    denied: &[219, 217, 218],
});
#[cfg(target_arch = "arm")]
const ABI: Option<Abi> = Some(Abi {
    arch: 0x4000_0028,
    x32_bit: None,
    socket: 281,
    denied: &[311, 309, 310],
});
#[cfg(target_arch = "x86")]
const ABI: Option<Abi> = Some(Abi {
    arch: 0x4000_0003,
    x32_bit: None,
    socket: 359,
    // keyctl, add_key, request_key, socketcall (which has socket inside it).
    denied: &[288, 286, 287, 102],
});
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "x86"
)))]
const ABI: Option<Abi> = None;

/// The filter as the kernel reads it (`struct sock_filter[]`, native byte order), or `None`
/// where kmx knows no system call numbers for the host. `unix`: refuse Unix sockets too
/// (not for a step that keeps the network: distcc's pump and icecc talk to a local daemon).
pub fn program(unix: bool) -> Option<Vec<u8>> {
    let abi = ABI.as_ref()?;
    let deny = |errno: i32| Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: RET_ERRNO | errno as u32,
    };
    let allow = Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: RET_ALLOW,
    };
    let ld = |k| Insn {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k,
    };
    // The tail every check jumps to: [.., allow, deny EACCES].
    let mut body: Vec<Insn> = vec![ld(NR)];
    if let Some(bit) = abi.x32_bit {
        body.push(Insn {
            code: JGE_K,
            jt: 0xff, // patched: to deny
            jf: 0,
            k: bit,
        });
    }
    for &nr in abi.denied {
        body.push(Insn {
            code: JEQ_K,
            jt: 0xff, // patched: to deny
            jf: 0,
            k: nr,
        });
    }
    if unix {
        body.push(Insn {
            code: JEQ_K,
            jt: 0,
            jf: 0xfe, // patched: to allow
            k: abi.socket,
        });
        body.push(ld(ARG0));
        body.push(Insn {
            code: JEQ_K,
            jt: 0xff, // patched: to deny
            jf: 0xfe, // patched: to allow
            k: libc::AF_UNIX as u32,
        });
    }
    let mut prog = vec![
        ld(ARCH),
        // Another ABI: refused whole.
        Insn {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: abi.arch,
        },
        deny(libc::EPERM),
    ];
    let start = prog.len();
    prog.extend(body);
    let allow_at = prog.len();
    prog.push(allow);
    let deny_at = prog.len();
    prog.push(deny(libc::EACCES));
    for (i, insn) in prog
        .iter_mut()
        .enumerate()
        .skip(start)
        .take(allow_at - start)
    {
        let to = |target: usize| (target - i - 1) as u8;
        if insn.jt == 0xff {
            insn.jt = to(deny_at);
        }
        if insn.jf == 0xfe {
            insn.jf = to(allow_at);
        }
    }
    let mut bytes = Vec::with_capacity(prog.len() * 8);
    for insn in prog {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the program as the kernel would on one system call.
    fn verdict(bytes: &[u8], arch: u32, nr: u32, arg0: u32) -> u32 {
        let insns: Vec<(u16, u8, u8, u32)> = bytes
            .chunks(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = insns[pc];
            pc += 1;
            match code {
                LD_W_ABS => {
                    acc = match k {
                        NR => nr,
                        ARCH => arch,
                        ARG0 => arg0,
                        _ => panic!("load of offset {k}"),
                    }
                }
                JEQ_K => pc += if acc == k { jt } else { jf } as usize,
                JGE_K => pc += if acc >= k { jt } else { jf } as usize,
                RET_K => return k,
                _ => panic!("opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_refuses_unix_sockets_keyrings_and_other_abis_and_allows_the_rest() {
        let Some(abi) = ABI.as_ref() else { return };
        let eacces = RET_ERRNO | libc::EACCES as u32;
        let unix = libc::AF_UNIX as u32;
        let inet = libc::AF_INET as u32;
        let strict = program(true).unwrap();
        let network = program(false).unwrap();
        assert_eq!(verdict(&strict, abi.arch, abi.socket, unix), eacces);
        assert_eq!(verdict(&strict, abi.arch, abi.socket, inet), RET_ALLOW);
        assert_eq!(verdict(&network, abi.arch, abi.socket, unix), RET_ALLOW);
        for &nr in abi.denied {
            assert_eq!(verdict(&strict, abi.arch, nr, 0), eacces);
            assert_eq!(verdict(&network, abi.arch, nr, 0), eacces);
        }
        // read(2) and friends: allowed whatever their first argument.
        for nr in [0, 1, 3, 59, 63] {
            if nr != abi.socket && !abi.denied.contains(&nr) {
                assert_eq!(verdict(&strict, abi.arch, nr, unix), RET_ALLOW);
            }
        }
        assert_eq!(
            verdict(&strict, abi.arch ^ 1, abi.socket, inet),
            RET_ERRNO | libc::EPERM as u32
        );
        if let Some(bit) = abi.x32_bit {
            assert_eq!(verdict(&strict, abi.arch, bit | abi.socket, unix), eacces);
        }
    }
}
