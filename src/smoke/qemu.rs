//! The QEMU command line for a target's `[boot]` profile. No process is started here.

use std::path::Path;
use std::process::Command;

use crate::config::profile::Boot;
use crate::error::{Error, Result};
use crate::kernel::registry::BootFiles;

/// Kernel arguments kmx always passes before the profile's `append`: the console the log is
/// read from, power off (not reboot: QEMU runs with `-no-reboot`) on panic, and only urgent
/// messages on the console (the rest is read with dmesg).
pub fn kernel_args(boot: &Boot) -> String {
    let mut args = format!("console={} panic=-1 quiet", boot.console);
    if !boot.append.trim().is_empty() {
        args.push(' ');
        args.push_str(boot.append.trim());
    }
    args
}

/// The QEMU command booting `files` with `initramfs`; an error when the profile names a
/// device tree the kernel's image package does not have.
pub fn command(boot: &Boot, files: &BootFiles, initramfs: &Path) -> Result<Command> {
    let mut cmd = Command::new(&boot.qemu);
    cmd.args(["-M", &boot.machine, "-cpu", &boot.cpu])
        .args([
            "-m",
            &boot.memory.to_string(),
            "-smp",
            &boot.smp.to_string(),
        ])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&files.image)
        .arg("-initrd")
        .arg(initramfs);
    if let Some(dtb) = &boot.dtb {
        let file = files.dtbs.as_ref().map(|d| d.join(dtb));
        match file.filter(|f| f.is_file()) {
            Some(f) => {
                cmd.arg("-dtb").arg(f);
            }
            None => {
                return Err(Error::env(format!(
                    "the kernel's device tree {dtb} is not among its fetched boot files{}",
                    files
                        .dtbs
                        .as_ref()
                        .map(|d| format!(" ({})", d.display()))
                        .unwrap_or_default()
                ))
                .hint("fetch the image with its device trees: kmx kernels fetch --with-image; check [boot] dtb against the image package's usr/lib/linux-image-<release>/"));
            }
        }
    }
    cmd.args(["-append", &kernel_args(boot)])
        .args(&boot.qemu_args);
    Ok(cmd)
}

/// The Debian package that provides a QEMU system emulator, for hints.
pub fn package_of(qemu: &str) -> &'static str {
    match qemu.rsplit('/').next().unwrap_or(qemu) {
        "qemu-system-x86_64" | "qemu-system-i386" => "qemu-system-x86",
        "qemu-system-arm" | "qemu-system-aarch64" => "qemu-system-arm",
        "qemu-system-ppc" | "qemu-system-ppc64" => "qemu-system-ppc",
        "qemu-system-riscv64" | "qemu-system-riscv32" => "qemu-system-misc",
        _ => "qemu-system",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_profile_and_fixed_arguments() {
        let boot = Boot {
            qemu: "qemu-system-arm".into(),
            machine: "virt,highmem=off".into(),
            cpu: "cortex-a15".into(),
            console: "ttyAMA0".into(),
            memory: 512,
            smp: 1,
            dtb: None,
            append: "loglevel=7".into(),
            qemu_args: vec![],
        };
        let files = BootFiles {
            image: "/b/vmlinuz".into(),
            modules_dir: "/b/modules".into(),
            busybox: "/b/busybox".into(),
            dtbs: None,
        };
        let cmd = command(&boot, &files, Path::new("/w/initramfs.cpio")).unwrap();
        assert_eq!(
            crate::process::display(&cmd),
            "qemu-system-arm -M virt,highmem=off -cpu cortex-a15 -m 512 -smp 1 -nodefaults -display none -serial stdio -no-reboot -kernel /b/vmlinuz -initrd /w/initramfs.cpio -append 'console=ttyAMA0 panic=-1 quiet loglevel=7'"
        );
        assert_eq!(package_of("qemu-system-aarch64"), "qemu-system-arm");
    }
}
