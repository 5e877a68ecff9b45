//! Module signatures checked the way the kernel's `module_sig_check` and `pkcs7_verify`
//! check them: the digest of the module (its bytes before the appended signature) must be
//! the one the signer signed, with a key the kernel trusts.
//!
//! What this owns: the trusted certificates ([`Keyring`], parsed once), the digests module
//! signing uses, and one verdict per signature ([`verify`]). What it must not do: I/O (the
//! certificates come from [`crate::verify::certs`] or `--cert` files, already read), or
//! decide pass/fail (that follows the kernel's configuration, in `checks::signature`).
//!
//! The kernel's outcomes (kernel/module/signing.c, crypto/asymmetric_keys/pkcs7_*.c):
//! - the key is found and the signature matches: accepted;
//! - the key is found and the signature does not match (the module was changed after
//!   signing): `-EKEYREJECTED`, "Key was rejected by service", refused even without
//!   enforcement;
//! - no trusted key matches the signer: `-ENOKEY`, tolerated (tainted) unless signatures are
//!   enforced;
//! - a digest or key type the kernel lacks: `-ENOPKG`, tolerated likewise.
//!
//! Keys: RSA (RSASSA-PKCS1-v1_5, what Debian's 6.1 kernels sign with) and ECDSA on NIST P-256
//! and P-384 (the kernel's `ecdsa-nist-p256`/`ecdsa-nist-p384`; Debian's 6.12 kernels sign
//! with a P-384 key). For ECDSA the signature is the DER `ECDSA-Sig-Value` (x962 encoding)
//! over the same digest RSA signs: of the signed attributes when present, else of the
//! module. A signature whose algorithm is not the key's is rejected, as
//! `public_key_verify_signature` does.
//!
//! Crates: x509-cert (RustCrypto) parses certificates, rsa (RustCrypto, pure Rust, constant
//! time) checks RSASSA-PKCS1-v1_5, p256 and p384 (RustCrypto, pure Rust) check ECDSA; the
//! PKCS#7 message itself is read by the module reader's small DER reader, which already
//! existed for `modinfo`'s fields.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::Pkcs1v15Sign;
use sha2::Digest;
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

use super::pkcs7::{SignedMessage, ecdsa_sig_value};

/// 1.2.840.113549.1.1.1, and the sha*WithRSAEncryption OIDs (1.2.840.113549.1.1.{11,12,13,14})
/// that sign-file also writes as the signature algorithm.
const RSA_OID_PREFIX: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
/// id-ecPublicKey, 1.2.840.10045.2.1: an elliptic-curve key, its curve in the parameters.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// prime256v1 (NIST P-256), 1.2.840.10045.3.1.7.
const P256_OID: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// secp384r1 (NIST P-384), 1.3.132.0.34.
const P384_OID: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
/// ecdsa-with-*, 1.2.840.10045.4: ecdsa-with-SHA1 (.4.1) and ecdsa-with-SHA{224,256,384,512}
/// (.4.3.{1,2,3,4}), what sign-file writes as the signature algorithm of an ECDSA key.
const ECDSA_SIG_OID_PREFIX: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04];

/// The digests module signing uses (CONFIG_MODULE_SIG_SHA*), by OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &[u8]) -> Option<Hash> {
        match oid.strip_prefix(NIST_HASH)? {
            [1] => Some(Hash::Sha256),
            [2] => Some(Hash::Sha384),
            [3] => Some(Hash::Sha512),
            [4] => Some(Hash::Sha224),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha224 => sha2::Sha224::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn scheme(self) -> Pkcs1v15Sign {
        match self {
            Hash::Sha224 => Pkcs1v15Sign::new::<sha2::Sha224>(),
            Hash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }
}

/// A public key kmx can check signatures with.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa(rsa::PublicKey),
    /// ecdsa-nist-p256.
    P256(p256::ecdsa::VerifyingKey),
    /// ecdsa-nist-p384.
    P384(p384::ecdsa::VerifyingKey),
}

/// Why a signature's algorithm does not fit its key.
enum Rejected {
    /// The kernel rejects it (`-EKEYREJECTED`).
    Bad(String),
    /// kmx cannot tell (an algorithm it lacks).
    Unchecked(String),
}

impl PublicKey {
    /// The key of a certificate's SubjectPublicKeyInfo; `None` for key types kmx lacks.
    fn from_spki(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Option<PublicKey> {
        let algorithm = spki.algorithm.oid.as_bytes();
        let bytes = spki.subject_public_key.as_bytes()?;
        if algorithm.starts_with(RSA_OID_PREFIX) {
            return rsa::PublicKey::from_pkcs1_der(bytes)
                .ok()
                .map(PublicKey::Rsa);
        }
        if algorithm != EC_PUBLIC_KEY_OID {
            return None;
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()?
            .decode_as::<x509_cert::der::asn1::ObjectIdentifier>()
            .ok()?;
        match curve.as_bytes() {
            P256_OID => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .ok()
                .map(PublicKey::P256),
            P384_OID => p384::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .ok()
                .map(PublicKey::P384),
            _ => None,
        }
    }

    /// Whether a signature made with the algorithm `signature_oid` can be this key's. An
    /// ECDSA key with an RSA signature is what the kernel rejects (`-EKEYREJECTED`); an RSA
    /// key with any other signature stays unchecked, as kmx always said.
    fn fits(&self, signature_oid: &[u8]) -> Result<(), Rejected> {
        match self {
            PublicKey::Rsa(_) if signature_oid.starts_with(RSA_OID_PREFIX) => Ok(()),
            PublicKey::Rsa(_) => Err(Rejected::Unchecked(
                "its signature algorithm is not RSA".to_string(),
            )),
            PublicKey::P256(_) | PublicKey::P384(_)
                if signature_oid.starts_with(ECDSA_SIG_OID_PREFIX) =>
            {
                Ok(())
            }
            PublicKey::P256(_) | PublicKey::P384(_)
                if signature_oid.starts_with(RSA_OID_PREFIX) =>
            {
                Err(Rejected::Bad(
                    "the signature is RSA but the key is ECDSA".to_string(),
                ))
            }
            PublicKey::P256(_) | PublicKey::P384(_) => Err(Rejected::Unchecked(
                "its signature algorithm is not one kmx implements".to_string(),
            )),
        }
    }

    /// Whether `signature` is this key's over `digest` (made with `hash`): PKCS#1 v1.5 for
    /// RSA, a DER `ECDSA-Sig-Value` for ECDSA (the digest taken as the kernel does, its
    /// leftmost bits when longer than the curve's order).
    fn verify(&self, hash: Hash, digest: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa(key) => key.verify(hash.scheme(), digest, signature).is_ok(),
            PublicKey::P256(key) => ecdsa_sig_value(signature)
                .and_then(|(r, s)| fixed_scalars(r, s, 32))
                .and_then(|rs| p256::ecdsa::Signature::from_slice(&rs).ok())
                .is_some_and(|sig| key.verify_prehash(digest, &sig).is_ok()),
            PublicKey::P384(key) => ecdsa_sig_value(signature)
                .and_then(|(r, s)| fixed_scalars(r, s, 48))
                .and_then(|rs| p384::ecdsa::Signature::from_slice(&rs).ok())
                .is_some_and(|sig| key.verify_prehash(digest, &sig).is_ok()),
        }
    }
}

/// `r || s`, each left-padded to the curve's `size` bytes (what `Signature::from_slice`
/// takes, and refuses when zero or not below the order); `None` for an integer longer than
/// that (out of range).
fn fixed_scalars(r: &[u8], s: &[u8], size: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 2 * size];
    for (i, x) in [r, s].into_iter().enumerate() {
        if x.len() > size {
            return None;
        }
        let end = (i + 1) * size;
        out[end - x.len()..end].copy_from_slice(x);
    }
    Some(out)
}

/// The digest of `data` with the algorithm `oid` names; `None` for digests kmx lacks.
pub fn digest(oid: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    Hash::from_oid(oid).map(|h| h.digest(data))
}

/// One trusted certificate, reduced to what matching and checking a signer needs.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Issuer Name, DER.
    pub issuer: Vec<u8>,
    /// Serial number INTEGER content bytes.
    pub serial: Vec<u8>,
    /// Subject Name, DER.
    pub subject: Vec<u8>,
    pub subject_key_id: Option<Vec<u8>>,
    /// The subject's common name, for messages.
    pub name: String,
    /// The key (RSA, ECDSA P-256 or P-384); `None` for other key types (kmx cannot check
    /// those).
    key: Option<PublicKey>,
    /// The certificate, DER (what the cache stores).
    pub der: Vec<u8>,
    /// The hash of [`Verified`] entries with this key, its certificate already absorbed:
    /// each module's entry then hashes only its own digest and signature.
    entry_prefix: sha2::Sha256,
}

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct CertError(String);

impl TrustedKey {
    /// Parse one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<TrustedKey, CertError> {
        let cert = Certificate::from_der(der).map_err(|e| CertError(e.to_string()))?;
        let tbs = cert.tbs_certificate();
        let enc = |e: x509_cert::der::Error| CertError(e.to_string());
        let spki = tbs.subject_public_key_info();
        let key = PublicKey::from_spki(spki);
        let subject_key_id = tbs
            .get_extension::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, skid)| skid.0.as_bytes().to_vec());
        let name = tbs
            .subject()
            .iter_rdn()
            .flat_map(|rdn| rdn.iter())
            .find(|atv| atv.oid == x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3"))
            .and_then(|atv| {
                atv.value
                    .decode_as::<String>()
                    .ok()
                    .or_else(|| Some(String::from_utf8_lossy(atv.value.value()).into_owned()))
            })
            .unwrap_or_default();
        Ok(TrustedKey {
            issuer: tbs.issuer().to_der().map_err(enc)?,
            serial: tbs.serial_number().as_bytes().to_vec(),
            subject: tbs.subject().to_der().map_err(enc)?,
            subject_key_id,
            name,
            key,
            der: der.to_vec(),
            entry_prefix: {
                let mut h = sha2::Sha256::new();
                h.update((der.len() as u64).to_le_bytes());
                h.update(der);
                h
            },
        })
    }

    fn matches(&self, message: &SignedMessage) -> bool {
        match &message.subject_key_id {
            Some(id) => self.subject_key_id.as_deref() == Some(id.as_slice()),
            None => self.issuer == message.issuer && same_integer(&self.serial, &message.serial),
        }
    }
}

/// Serial numbers compared as integers (a leading zero byte keeps a positive sign).
fn same_integer(a: &[u8], b: &[u8]) -> bool {
    let strip = |x: &[u8]| -> Vec<u8> {
        let start = x.iter().position(|&b| b != 0).unwrap_or(x.len());
        x[start..].to_vec()
    };
    strip(a) == strip(b)
}

/// The certificates a kernel trusts for modules (its built-in keyring, plus any the user
/// enrolled and named with `--cert`), and where they came from.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    pub keys: Vec<TrustedKey>,
    /// Where the keys came from, for messages: "the kernel image's 2 built-in certificates".
    pub source: String,
    /// Signatures already found good with these keys (see [`Verified`]).
    pub verified: std::sync::Arc<Verified>,
}

impl Keyring {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What identifies this set of keys: a digest of their certificates, in order.
    pub fn id(&self) -> [u8; 16] {
        let mut h = sha2::Sha256::new();
        for k in &self.keys {
            h.update((k.der.len() as u64).to_le_bytes());
            h.update(&k.der);
        }
        first16(&h.finalize())
    }
}

/// Signatures found good before, so that a run over a whole module tree does not redo
/// thousands of RSA operations (the cost of checking a signature; hashing the module is
/// cheap). An entry is a digest of the signer's certificate, the signed digest and the
/// signature bytes: the same entry means the same mathematical check, so the verdict is
/// the same. Only good verdicts are remembered. Loaded and saved by
/// [`crate::verify::certs`]; shared by every thread of a run.
#[derive(Debug, Default)]
pub struct Verified {
    pub known: std::collections::HashSet<[u8; 16], crate::kernel::symvers::FxBuildHasher>,
    pub found: std::sync::Mutex<Vec<[u8; 16]>>,
}

impl Verified {
    /// The digest of the key's certificate, the signed digest and the signature, each
    /// preceded by its length.
    fn entry(key: &TrustedKey, signed_digest: &[u8], signature: &[u8]) -> [u8; 16] {
        let mut h = key.entry_prefix.clone();
        for part in [signed_digest, signature] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        first16(&h.finalize())
    }

    fn remember(&self, entry: [u8; 16]) {
        if let Ok(mut found) = self.found.lock() {
            found.push(entry);
        }
    }
}

fn first16(digest: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// What checking one signature found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A trusted key signed exactly these bytes.
    Good { key: String },
    /// A trusted key matches the signer but the signature is not over these bytes: the
    /// module changed after signing (or the signature is corrupt). `-EKEYREJECTED`.
    Bad { key: String, why: String },
    /// No trusted key matches the signer. `-ENOKEY`.
    UnknownKey,
    /// kmx cannot check it (digest or key type it lacks); the kernel may: `-ENOPKG` there
    /// only when the kernel lacks it too.
    Unchecked { why: String },
}

/// Check `message` against `keyring` as `pkcs7_verify` + `pkcs7_validate_trust` do: the
/// signer is found by issuer and serial (or subject key id) among the trusted keys; a
/// certificate the message carries for the signer is used to check the signature and must
/// itself be trusted (be one of the keys, or be signed by one).
pub fn verify(message: &SignedMessage, keyring: &Keyring) -> Verdict {
    let Some(hash) = Hash::from_oid(&message.digest_oid) else {
        return Verdict::Unchecked {
            why: "its digest algorithm is not one kmx implements".to_string(),
        };
    };
    let Some(content) = &message.content_digest else {
        return Verdict::Unchecked {
            why: "its digest was not computed".to_string(),
        };
    };
    // The key: a trusted one matching the signer, else a certificate in the message that
    // a trusted key signed.
    let carried: Vec<TrustedKey> = message
        .certificates
        .iter()
        .filter_map(|der| TrustedKey::from_der(der).ok())
        .collect();
    let signer = keyring
        .keys
        .iter()
        .find(|k| k.matches(message))
        .or_else(|| carried.iter().find(|k| k.matches(message)));
    let Some(signer) = signer else {
        return Verdict::UnknownKey;
    };
    let trusted = keyring.keys.iter().any(|k| std::ptr::eq(k, signer))
        || keyring.keys.iter().any(|k| issued_by(signer, k));
    let Some(key) = &signer.key else {
        return Verdict::Unchecked {
            why: format!(
                "the key of \"{}\" is not an RSA, ECDSA P-256 or ECDSA P-384 key",
                signer.name
            ),
        };
    };
    match key.fits(&message.signature_oid) {
        Ok(()) => {}
        Err(Rejected::Unchecked(why)) => return Verdict::Unchecked { why },
        Err(Rejected::Bad(why)) => {
            return Verdict::Bad {
                key: signer.name.clone(),
                why,
            };
        }
    }
    // With signed attributes, the signature covers them, and their messageDigest must be
    // the content's digest (pkcs7_digest).
    let signed_digest = match (&message.signed_attrs, &message.message_digest) {
        (Some(attrs), Some(md)) => {
            if md != content {
                return Verdict::Bad {
                    key: signer.name.clone(),
                    why: "the digest of the module is not the one signed (messageDigest)"
                        .to_string(),
                };
            }
            hash.digest(attrs)
        }
        (Some(_), None) => {
            return Verdict::Bad {
                key: signer.name.clone(),
                why: "the signed attributes have no messageDigest".to_string(),
            };
        }
        (None, _) => content.clone(),
    };
    let entry = Verified::entry(signer, &signed_digest, &message.signature);
    let known = keyring.verified.known.contains(&entry);
    if !known && !key.verify(hash, &signed_digest, &message.signature) {
        return Verdict::Bad {
            key: signer.name.clone(),
            why: "the signature does not match the module's digest".to_string(),
        };
    }
    if !known {
        keyring.verified.remember(entry);
    }
    if !trusted {
        return Verdict::UnknownKey;
    }
    Verdict::Good {
        key: signer.name.clone(),
    }
}

/// `cert` is signed by `issuer`'s key (RSA or ECDSA, SHA-2).
fn issued_by(cert: &TrustedKey, issuer: &TrustedKey) -> bool {
    if cert.issuer != issuer.subject {
        return false;
    }
    let Some(key) = &issuer.key else {
        return false;
    };
    let Ok(parsed) = Certificate::from_der(&cert.der) else {
        return false;
    };
    let Ok(tbs) = parsed.tbs_certificate().to_der() else {
        return false;
    };
    // sha{256,384,512,224}WithRSAEncryption: 1.2.840.113549.1.1.{11,12,13,14};
    // ecdsa-with-SHA{224,256,384,512}: 1.2.840.10045.4.3.{1,2,3,4}.
    let oid = parsed.signature_algorithm().oid;
    let oid = oid.as_bytes();
    let hash = match (
        oid.strip_prefix(RSA_OID_PREFIX),
        oid.strip_prefix(ECDSA_SIG_OID_PREFIX),
    ) {
        (Some([11]), _) | (_, Some([3, 2])) => Hash::Sha256,
        (Some([12]), _) | (_, Some([3, 3])) => Hash::Sha384,
        (Some([13]), _) | (_, Some([3, 4])) => Hash::Sha512,
        (Some([14]), _) | (_, Some([3, 1])) => Hash::Sha224,
        _ => return false,
    };
    let Some(sig) = parsed.signature().as_bytes() else {
        return false;
    };
    key.fits(oid).is_ok() && key.verify(hash, &hash.digest(&tbs), sig)
}

/// Every X.509 certificate stored whole in `data` (a kernel image's `system_certificate_list`,
/// a DER file, or several DER certificates back to back), in order. Candidates are found
/// by their DER prefix (`SEQUENCE { SEQUENCE {`, long-form lengths) and kept when they
/// parse as certificates.
pub fn scan_certificates(data: &[u8]) -> Vec<Vec<u8>> {
    scan_located(data).into_iter().map(|(_, der)| der).collect()
}

/// The certificates of a kernel's `system_certificate_list` in a decompressed kernel: a
/// run of certificates back to back followed, after alignment padding, by
/// `system_certificate_list_size` (a `.long` or `.quad` holding the run's length; see
/// certs/system_certificates.S). Certificates elsewhere (an Authenticode signature's, a
/// regulatory database key) are not the module keyring and are left out.
pub fn scan_keyring(data: &[u8]) -> Vec<Vec<u8>> {
    let found = scan_located(data);
    let mut out = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let start = found[i].0;
        let mut end = start + found[i].1.len();
        let mut j = i + 1;
        while j < found.len() && found[j].0 == end {
            end += found[j].1.len();
            j += 1;
        }
        let len = (end - start) as u64;
        // The size follows after alignment padding (zeros; arm64 aligns to 256 bytes).
        let size_follows = (end.div_ceil(4) * 4..end.saturating_add(4096))
            .step_by(4)
            .map(|at| {
                data.get(at..at + 4).map_or(0, |b| {
                    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                })
            })
            .find(|&v| v != 0)
            == Some(len);
        if size_follows {
            out.extend(found[i..j].iter().map(|(_, der)| der.clone()));
        }
        i = j;
    }
    out
}

fn scan_located(data: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(rel) = memfind(data.get(at..).unwrap_or_default(), &[0x30, 0x82]) {
        let start = at + rel;
        let len = match data.get(start + 2..start + 4) {
            Some(&[hi, lo]) => usize::from(hi) << 8 | usize::from(lo),
            _ => break,
        };
        let end = start + 4 + len;
        let plausible = len > 256
            && data.get(start + 4..start + 6) == Some(&[0x30, 0x82][..])
            && end <= data.len();
        if let Some(der) = data.get(start..end).filter(|_| plausible)
            && Certificate::from_der(der).is_ok()
        {
            out.push((start, der.to_vec()));
            at = end;
            continue;
        }
        at = start + 1;
    }
    out
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Certificates from a file the user gives: PEM (one or more `CERTIFICATE` blocks) or DER.
pub fn parse_cert_file(bytes: &[u8]) -> Result<Vec<TrustedKey>, CertError> {
    if bytes.starts_with(b"-----BEGIN") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs =
            Certificate::load_pem_chain(bytes).map_err(|e| CertError(format!("PEM: {e}")))?;
        if certs.is_empty() {
            return Err(CertError(
                "no CERTIFICATE block in the PEM file".to_string(),
            ));
        }
        return certs
            .iter()
            .map(|c| {
                c.to_der()
                    .map_err(|e| CertError(e.to_string()))
                    .and_then(|der| TrustedKey::from_der(&der))
            })
            .collect();
    }
    TrustedKey::from_der(bytes).map(|k| vec![k])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_by_oid() {
        let sha256 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 1];
        assert_eq!(
            digest(&sha256, b"abc").map(|d| d[..4].to_vec()),
            Some(vec![0xba, 0x78, 0x16, 0xbf])
        );
        assert_eq!(digest(&[0x2B, 0x0E, 0x03, 0x02, 0x1A], b"abc"), None);
    }

    #[test]
    fn serials_compare_as_integers() {
        assert!(same_integer(&[0, 0x80, 1], &[0x80, 1]));
        assert!(!same_integer(&[1], &[2]));
    }

    #[test]
    fn bad_certificates_are_errors_not_panics() {
        assert!(parse_cert_file(b"").is_err());
        assert!(
            parse_cert_file(
                b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
        assert!(parse_cert_file(&[0x30, 0x82, 0xFF, 0xFF, 0x30]).is_err());
        assert!(scan_certificates(&[0x30, 0x82, 0x01, 0x10, 0x30, 0x82]).is_empty());
    }

    fn repo_file(rel: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
    }

    fn keyring(certs: &[&str]) -> Keyring {
        Keyring {
            keys: certs
                .iter()
                .map(|c| TrustedKey::from_der(&repo_file(&format!("tests/fixtures/certs/{c}"))))
                .collect::<Result<_, _>>()
                .unwrap(),
            source: "test".to_string(),
            verified: Default::default(),
        }
    }

    /// The signature of a module (plain or compressed), its digest computed.
    fn message(module: &[u8]) -> SignedMessage {
        let module = super::super::module::Module::parse(module).unwrap();
        *module.signature.unwrap().message.unwrap()
    }

    /// The module without compression, and where its code starts and ends (its first
    /// executable section that is not empty: `.text`, or `.init.text` in a module that has
    /// only an init function).
    fn plain_with_text(rel: &str) -> (Vec<u8>, std::ops::Range<usize>) {
        let bytes = repo_file(rel);
        let plain = match super::super::decompress::Compression::detect(&bytes) {
            Some(format) => super::super::decompress::decompress_held(
                &bytes,
                format,
                super::super::decompress::DEFAULT_LIMIT,
            )
            .unwrap()
            .to_vec(),
            None => bytes,
        };
        let elf = goblin::elf::Elf::parse(&plain).unwrap();
        let text = elf
            .section_headers
            .iter()
            .find(|sh| {
                sh.is_executable()
                    && sh.sh_size > 0
                    && sh.sh_type == goblin::elf::section_header::SHT_PROGBITS
            })
            .unwrap();
        let range = text.sh_offset as usize..(text.sh_offset + text.sh_size) as usize;
        assert!(!range.is_empty());
        (plain, range)
    }

    const DEBIAN_612: &str = "tests/data/signing/pretimeout_panic-6.12.95+deb12-arm64.ko.xz";
    const DEBIAN_612_CERT: &str = "debian-6.12.95+deb12-arm64-signing-key.der";
    const KEY: &str = "Build time autogenerated kernel key";

    #[test]
    fn a_debian_612_module_verifies_with_its_kernels_p384_key() {
        let ring = keyring(&[DEBIAN_612_CERT]);
        assert!(matches!(ring.keys[0].key, Some(PublicKey::P384(_))));
        let msg = message(&repo_file(DEBIAN_612));
        assert!(msg.signature_oid.starts_with(ECDSA_SIG_OID_PREFIX));
        assert!(msg.signed_attrs.is_none());
        assert_eq!(
            verify(&msg, &ring),
            Verdict::Good {
                key: KEY.to_string()
            }
        );
        // Remembered; a second check of the same signature takes the cache and agrees.
        let found = ring.verified.found.lock().unwrap().clone();
        assert_eq!(found.len(), 1);
        let cached = Keyring {
            verified: std::sync::Arc::new(Verified {
                known: found.into_iter().collect(),
                ..Default::default()
            }),
            ..ring.clone()
        };
        assert_eq!(
            verify(&msg, &cached),
            Verdict::Good {
                key: KEY.to_string()
            }
        );
    }

    #[test]
    fn a_debian_612_module_with_one_byte_of_code_changed_is_bad() {
        let ring = keyring(&[DEBIAN_612_CERT]);
        let (mut plain, text) = plain_with_text(DEBIAN_612);
        assert!(matches!(
            verify(&message(&plain), &ring),
            Verdict::Good { .. }
        ));
        plain[text.start + text.len() / 2] ^= 0x01;
        assert_eq!(
            verify(&message(&plain), &ring),
            Verdict::Bad {
                key: KEY.to_string(),
                why: "the signature does not match the module's digest".to_string()
            }
        );
        assert!(ring.verified.found.lock().unwrap().len() <= 1);
    }

    #[test]
    fn a_changed_or_malformed_ecdsa_signature_is_bad() {
        let ring = keyring(&[DEBIAN_612_CERT]);
        let good = message(&repo_file(DEBIAN_612));
        let bad = |msg: &SignedMessage| matches!(verify(msg, &ring), Verdict::Bad { .. });
        // One bit of r; one of s; s = 0; not DER; trailing bytes; r longer than the order.
        let mut m = good.clone();
        m.signature[8] ^= 0x04;
        assert!(bad(&m));
        let mut m = good.clone();
        let last = m.signature.len() - 1;
        m.signature[last] ^= 0x01;
        assert!(bad(&m));
        let zero_s = vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00];
        assert_eq!(ecdsa_sig_value(&zero_s), Some((&[1u8][..], &[][..])));
        let mut m = good.clone();
        m.signature = zero_s;
        assert!(bad(&m));
        let mut m = good.clone();
        m.signature = good.signature[2..].to_vec();
        assert!(bad(&m));
        let mut m = good.clone();
        m.signature.push(0);
        assert!(bad(&m));
        let mut m = good.clone();
        m.signature = [
            &[0x30, 0x36, 0x02, 0x31, 0x01][..],
            &[0xFF; 48],
            &[0x02, 0x01, 0x01],
        ]
        .concat();
        assert!(bad(&m));
        // The ECDSA key with an RSA signature algorithm: the kernel rejects it.
        let mut m = good.clone();
        m.signature_oid = vec![0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 1];
        assert_eq!(
            verify(&m, &ring),
            Verdict::Bad {
                key: KEY.to_string(),
                why: "the signature is RSA but the key is ECDSA".to_string()
            }
        );
        assert!(ring.verified.found.lock().unwrap().is_empty());
    }

    #[test]
    fn an_ecdsa_signature_by_a_key_the_kernel_does_not_trust_is_unknown() {
        let msg = message(&repo_file(DEBIAN_612));
        // 6.1's RSA key, and another ECDSA key.
        let ring = keyring(&["debian-6.1.0-50-arm64-signing-key.der", "test-p256.der"]);
        assert_eq!(verify(&msg, &ring), Verdict::UnknownKey);
        // The certificate carried in the message but trusted by no key: checked, not trusted.
        let mut carried = msg.clone();
        carried.certificates = vec![repo_file(&format!(
            "tests/fixtures/certs/{DEBIAN_612_CERT}"
        ))];
        assert_eq!(verify(&carried, &ring), Verdict::UnknownKey);
        assert_eq!(
            verify(&carried, &keyring(&[DEBIAN_612_CERT])),
            Verdict::Good {
                key: KEY.to_string()
            }
        );
    }

    #[test]
    fn p256_signatures_made_by_openssl_as_sign_file_does_verify() {
        let ring = keyring(&["test-p256.der"]);
        assert!(matches!(ring.keys[0].key, Some(PublicKey::P256(_))));
        // Self-signed with ecdsa-with-SHA256: an ECDSA issuer is checked too.
        assert!(issued_by(&ring.keys[0], &ring.keys[0]));
        let p384 = keyring(&[DEBIAN_612_CERT]);
        assert!(issued_by(&p384.keys[0], &p384.keys[0]));
        let good = Verdict::Good {
            key: "kmx test P-256 key".to_string(),
        };
        for (rel, attrs) in [
            ("tests/data/signing/hello-i386-p256-signed.ko", false),
            ("tests/data/signing/hello-i386-p256-attrs-signed.ko", true),
        ] {
            let (mut plain, text) = plain_with_text(rel);
            let msg = message(&plain);
            assert_eq!(msg.signed_attrs.is_some(), attrs, "{rel}");
            assert_eq!(verify(&msg, &ring), good, "{rel}");
            plain[text.start] ^= 0x80;
            let changed = verify(&message(&plain), &ring);
            assert!(matches!(changed, Verdict::Bad { .. }), "{rel}: {changed:?}");
        }
    }
}
