//! The machine owner key (MOK) modules are signed with on the machine, as DKMS does it: a
//! key pair generated once (`HOME/keys/mok.key`, `mok.der`), or DKMS's own
//! (`/var/lib/dkms/mok.key`, `mok.pub`, DER) when DKMS already made one, so a machine moving
//! from DKMS to kmx keeps the key its firmware already trusts. The certificate must be
//! enrolled (`mokutil --import`) for Secure Boot to accept the modules; this module says so
//! but never enrolls anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Kind, Result};
use crate::install::SignKey;
use crate::process;

/// Where DKMS keeps its key pair (dkms's `prepare_mok`), relative to a root.
pub const DKMS_KEY: &str = "var/lib/dkms/mok.key";
pub const DKMS_CERT: &str = "var/lib/dkms/mok.pub";

/// Which key the machine signs with, and how it was found.
#[derive(Debug, Clone)]
pub enum MachineKey {
    /// kmx's own pair in its home (made by `kmx keys generate` or an earlier hook).
    Kmx(SignKey),
    /// DKMS's pair, reused.
    Dkms(SignKey),
    /// Generated now (first signed install on this machine).
    Generated(SignKey),
}

impl MachineKey {
    pub fn key(&self) -> &SignKey {
        match self {
            MachineKey::Kmx(k) | MachineKey::Dkms(k) | MachineKey::Generated(k) => k,
        }
    }

    /// What to tell the user: where the key is, and how to enroll it.
    pub fn describe(&self) -> String {
        let enroll = |k: &SignKey| {
            format!(
                "for Secure Boot to load them, enroll it once: `mokutil --import {}`, then reboot and confirm in the MOK manager",
                k.cert.display()
            )
        };
        match self {
            MachineKey::Kmx(k) => format!("signing with kmx's key {}", k.key.display()),
            MachineKey::Dkms(k) => format!(
                "signing with DKMS's key {} (certificate {}), which the firmware may already trust",
                k.key.display(),
                k.cert.display()
            ),
            MachineKey::Generated(k) => format!(
                "generated a machine owner key to sign modules with: {} (certificate {}); {}",
                k.key.display(),
                k.cert.display(),
                enroll(k)
            ),
        }
    }
}

/// kmx's pair in `keys_dir` when both files exist.
pub fn existing(keys_dir: &Path) -> Option<SignKey> {
    let (key, cert) = (keys_dir.join("mok.key"), keys_dir.join("mok.der"));
    (key.is_file() && cert.is_file()).then_some(SignKey { key, cert })
}

/// The key to sign with on the machine whose root is `root`: kmx's own pair in `keys_dir`,
/// else DKMS's in `ROOT/var/lib/dkms`, else a pair generated now in `keys_dir`.
pub fn machine_key(keys_dir: &Path, root: &Path) -> Result<MachineKey> {
    if let Some(k) = existing(keys_dir) {
        return Ok(MachineKey::Kmx(k));
    }
    let (key, cert) = (root.join(DKMS_KEY), root.join(DKMS_CERT));
    if key.is_file() && cert.is_file() {
        return Ok(MachineKey::Dkms(SignKey { key, cert }));
    }
    generate(keys_dir, "kmx module signing key", false).map(MachineKey::Generated)
}

/// The key for modules installed into `root` when none is configured, as DKMS finds one:
/// on this machine (root `/`) [`machine_key`] (kmx's own, DKMS's, or one generated now); in
/// an image root only the image's DKMS key, when it has one (`None` otherwise: kmx does
/// not make keys for images on its own).
pub fn for_root(keys_dir: &Path, root: &Path) -> Option<Result<MachineKey>> {
    if root == Path::new("/") {
        return Some(machine_key(keys_dir, root));
    }
    let (key, cert) = (root.join(DKMS_KEY), root.join(DKMS_CERT));
    (key.is_file() && cert.is_file()).then_some(Ok(MachineKey::Dkms(SignKey { key, cert })))
}

/// Generate a key pair (RSA 2048, X.509 for code signing, 100 years, as DKMS's) in `dir`
/// as `mok.key` (mode 0600) and `mok.der`. Refuses to replace a pair unless `force`.
pub fn generate(dir: &Path, cn: &str, force: bool) -> Result<SignKey> {
    let (key, cert) = (dir.join("mok.key"), dir.join("mok.der"));
    if !force && (key.exists() || cert.exists()) {
        return Err(Error::usage("a key pair is already there").at(dir).hint(
            "pass --force to replace it (modules signed with the old key will need re-signing)",
        ));
    }
    if cn.contains(['/', '=']) {
        return Err(Error::usage("--common-name must not contain `/` or `=`"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let tmp = crate::state::tmp::dir_in(dir)?;
    let (tkey, tcert): (PathBuf, PathBuf) =
        (tmp.path().join("mok.key"), tmp.path().join("mok.der"));
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "36500",
        "-outform", "DER",
    ])
    .arg("-subj")
    .arg(format!("/CN={cn}"))
    .args([
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "keyUsage=digitalSignature",
        "-addext",
        "extendedKeyUsage=codeSigning",
        "-addext",
        "subjectKeyIdentifier=hash",
    ])
    .arg("-keyout")
    .arg(&tkey)
    .arg("-out")
    .arg(&tcert);
    process::output(&mut cmd, Kind::Failed).map_err(|e| e.hint_if_missing("install openssl"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tkey, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("set permissions of", &tkey, e))?;
    }
    std::fs::rename(&tkey, &key).map_err(|e| Error::io("move into place", &key, e))?;
    std::fs::rename(&tcert, &cert).map_err(|e| Error::io("move into place", &cert, e))?;
    Ok(SignKey { key, cert })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkms_key_is_reused_then_kmx_generates_once_and_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, root) = (dir.path().join("keys"), dir.path().join("root"));
        std::fs::create_dir_all(root.join("var/lib/dkms")).unwrap();
        std::fs::write(root.join(DKMS_KEY), "k").unwrap();
        std::fs::write(root.join(DKMS_CERT), "c").unwrap();
        let k = machine_key(&keys, &root).unwrap();
        assert!(matches!(k, MachineKey::Dkms(_)), "{k:?}");
        assert_eq!(k.key().key, root.join(DKMS_KEY));
        assert!(!keys.exists(), "nothing generated when DKMS has a key");
        // In an image root: the image's DKMS key, and none made when it has none.
        assert!(matches!(
            for_root(&keys, &root),
            Some(Ok(MachineKey::Dkms(_)))
        ));
        let bare = dir.path().join("bare");
        assert!(for_root(&keys, &bare).is_none());
        // Without DKMS's key: generated once, then kept.
        std::fs::remove_file(root.join(DKMS_CERT)).unwrap();
        if which::which("openssl").is_err() {
            eprintln!("openssl missing: generation not exercised");
            return;
        }
        let g = machine_key(&keys, &root).unwrap();
        assert!(matches!(g, MachineKey::Generated(_)), "{g:?}");
        assert!(
            g.describe().contains("mokutil --import"),
            "{}",
            g.describe()
        );
        let again = machine_key(&keys, &root).unwrap();
        assert!(matches!(again, MachineKey::Kmx(_)), "{again:?}");
        assert_eq!(again.key().cert, g.key().cert);
    }
}
