//! A minimal DER reader for the one thing kmx needs from a module's PKCS#7 signature: the
//! first SignerInfo's issuer common name, serial number and digest algorithm (what kmod's
//! `modinfo` shows). Definite lengths only (DER; the kernel's sign-file writes DER).
//! Below the module reader (which keeps the signer for `modinfo`) and the signature check
//! ([`super::signing`]), which both read it.

use std::fmt;

/// The parts of a PKCS#7 module signature the kernel's `pkcs7_verify` uses, and the digest
/// of the signed bytes (the module before its signature), computed while the file was in
/// memory so that checking it needs no second read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedMessage {
    /// The signer's issuer Name, DER-encoded as in the certificate (tag included).
    pub issuer: Vec<u8>,
    /// The signer's serial number: the INTEGER's content bytes.
    pub serial: Vec<u8>,
    /// A CMS subjectKeyIdentifier signer id instead of issuer and serial.
    pub subject_key_id: Option<Vec<u8>>,
    /// Digest algorithm OID (content bytes).
    pub digest_oid: Vec<u8>,
    /// Signature algorithm OID (content bytes), e.g. rsaEncryption.
    pub signature_oid: Vec<u8>,
    /// The signed attributes re-tagged as a SET (what is signed when they are present).
    pub signed_attrs: Option<Vec<u8>>,
    /// The messageDigest attribute, when signed attributes are present.
    pub message_digest: Option<Vec<u8>>,
    pub signature: Vec<u8>,
    /// Certificates carried in the message (DER), usually none for module signatures.
    pub certificates: Vec<Vec<u8>>,
    /// The digest of the signed module bytes with `digest_oid`; `None` when kmx does not
    /// implement that digest.
    pub content_digest: Option<Vec<u8>>,
}

pub struct SignerInfo {
    pub signer: String,
    pub key_id: Vec<u8>,
    pub hash_algo: String,
    pub message: SignedMessage,
}

#[derive(Debug)]
pub struct DerError(pub &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const CONTEXT_0: u8 = 0xA0;
const CONTEXT_0_PRIMITIVE: u8 = 0x80;
const CONTEXT_1: u8 = 0xA1;
/// 1.2.840.113549.1.7.2
const OID_SIGNED_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
/// 2.5.4.3
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 1.2.840.113549.1.9.4
const OID_MESSAGE_DIGEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04];

/// One TLV read from the front of a buffer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// Read any element: its tag and contents.
    fn any(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        self.any_whole().map(|(tag, contents, _)| (tag, contents))
    }

    /// Read any element: its tag, contents and the whole encoding (tag and length too).
    fn any_whole(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), DerError> {
        let start = self.0;
        let (&tag, rest) = self.0.split_first().ok_or(DerError("truncated element"))?;
        if tag & 0x1F == 0x1F {
            return Err(DerError("high tag numbers are not supported"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            return Err(DerError("indefinite length (BER) is not supported"));
        } else {
            let n = usize::from(first & 0x7F);
            if n > 4 {
                return Err(DerError("length field too long"));
            }
            let (bytes, tail) = rest
                .split_at_checked(n)
                .ok_or(DerError("truncated length"))?;
            rest = tail;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let (contents, tail) = rest
            .split_at_checked(len)
            .ok_or(DerError("element extends past its container"))?;
        self.0 = tail;
        let whole = start
            .get(..start.len() - tail.len())
            .ok_or(DerError("element extends past its container"))?;
        Ok((tag, contents, whole))
    }

    /// Read an element that must have tag `tag`.
    fn element(&mut self, tag: u8, what: &'static str) -> Result<Reader<'a>, DerError> {
        let (found, contents) = self.any()?;
        if found != tag {
            return Err(DerError(what));
        }
        Ok(Reader(contents))
    }
}

/// The two INTEGERs of a DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`,
/// as unsigned big-endian bytes (leading zeros stripped); `None` when it is not one, or
/// an integer is negative.
pub fn ecdsa_sig_value(der: &[u8]) -> Option<(&[u8], &[u8])> {
    fn unsigned(int: &[u8]) -> Option<&[u8]> {
        if int.first()? & 0x80 != 0 {
            return None;
        }
        let start = int.iter().position(|&b| b != 0).unwrap_or(int.len());
        Some(&int[start..])
    }
    let mut outer = Reader(der);
    let mut seq = outer.element(SEQUENCE, "ECDSA-Sig-Value").ok()?;
    let r = seq.element(INTEGER, "r").ok()?;
    let s = seq.element(INTEGER, "s").ok()?;
    (seq.is_empty() && outer.is_empty()).then_some(())?;
    Some((unsigned(r.0)?, unsigned(s.0)?))
}

pub fn signer_info(der: &[u8]) -> Result<SignerInfo, DerError> {
    let mut content_info = Reader(der).element(SEQUENCE, "ContentInfo is not a SEQUENCE")?;
    let oid = content_info.element(OID, "ContentInfo has no content type")?;
    if oid.0 != OID_SIGNED_DATA {
        return Err(DerError("content type is not signedData"));
    }
    let mut explicit = content_info.element(CONTEXT_0, "signedData content is missing")?;
    let mut signed_data = explicit.element(SEQUENCE, "SignedData is not a SEQUENCE")?;
    signed_data.element(INTEGER, "SignedData has no version")?;
    signed_data.element(SET, "SignedData has no digestAlgorithms")?;
    signed_data.element(SEQUENCE, "SignedData has no contentInfo")?;
    // Optional certificates [0] and crls [1], then signerInfos.
    let mut certificates = Vec::new();
    while matches!(signed_data.peek_tag(), Some(CONTEXT_0 | CONTEXT_1)) {
        let (tag, contents) = signed_data.any()?;
        if tag == CONTEXT_0 {
            let mut certs = Reader(contents);
            while !certs.is_empty() {
                let (_, _, whole) = certs.any_whole()?;
                certificates.push(whole.to_vec());
            }
        }
    }
    let mut signer_infos = signed_data.element(SET, "SignedData has no signerInfos")?;
    let mut signer = signer_infos.element(SEQUENCE, "no SignerInfo")?;
    signer.element(INTEGER, "SignerInfo has no version")?;
    let (sid_tag, sid) = signer.any()?;
    let mut issuer_der = Vec::new();
    let mut serial_bytes = Vec::new();
    let mut subject_key_id = None;
    let (name, key_id) = match sid_tag {
        SEQUENCE => {
            let mut issuer_and_serial = Reader(sid);
            let (tag, issuer, whole) = issuer_and_serial.any_whole()?;
            if tag != SEQUENCE {
                return Err(DerError("issuer is not a Name"));
            }
            let serial = issuer_and_serial.element(INTEGER, "no serial number")?;
            issuer_der = whole.to_vec();
            serial_bytes = serial.0.to_vec();
            (common_name(Reader(issuer))?, strip_leading_zeros(serial.0))
        }
        // CMS subjectKeyIdentifier [0]: no issuer to name; the identifier is the key id.
        CONTEXT_0_PRIMITIVE => {
            subject_key_id = Some(sid.to_vec());
            (String::new(), sid.to_vec())
        }
        _ => return Err(DerError("SignerInfo has no signer identifier")),
    };
    let mut digest_algorithm = signer.element(SEQUENCE, "SignerInfo has no digestAlgorithm")?;
    let oid = digest_algorithm.element(OID, "digestAlgorithm has no OID")?;
    // Signed attributes [0] IMPLICIT SET OF Attribute: signed as a SET.
    let mut signed_attrs = None;
    let mut message_digest = None;
    if signer.peek_tag() == Some(CONTEXT_0) {
        let (_, contents, whole) = signer.any_whole()?;
        let mut set = whole.to_vec();
        if let Some(first) = set.first_mut() {
            *first = SET;
        }
        signed_attrs = Some(set);
        let mut attrs = Reader(contents);
        while !attrs.is_empty() {
            let mut attr = attrs.element(SEQUENCE, "signed attribute is not a SEQUENCE")?;
            let kind = attr.element(OID, "signed attribute has no type")?;
            let mut values = attr.element(SET, "signed attribute has no values")?;
            if kind.0 == OID_MESSAGE_DIGEST {
                let value = values.element(OCTET_STRING, "messageDigest is not an OCTET STRING")?;
                message_digest = Some(value.0.to_vec());
            }
        }
    }
    // The encrypted digest must be there too, or this is not a signature.
    let mut signature_algorithm =
        signer.element(SEQUENCE, "SignerInfo has no signature algorithm")?;
    let signature_oid = signature_algorithm.element(OID, "signature algorithm has no OID")?;
    let signature = signer.element(OCTET_STRING, "SignerInfo has no signature")?;
    Ok(SignerInfo {
        signer: name,
        key_id,
        hash_algo: digest_name(oid.0),
        message: SignedMessage {
            issuer: issuer_der,
            serial: serial_bytes,
            subject_key_id,
            digest_oid: oid.0.to_vec(),
            signature_oid: signature_oid.0.to_vec(),
            signed_attrs,
            message_digest,
            signature: signature.0.to_vec(),
            certificates,
            content_digest: None,
        },
    })
}

/// The first commonName in a Name (SEQUENCE OF SET OF {OID, value}); empty if none,
/// like kmod.
fn common_name(mut name: Reader) -> Result<String, DerError> {
    while !name.is_empty() {
        let mut rdn = name.element(SET, "Name entry is not a SET")?;
        while !rdn.is_empty() {
            let mut attr = rdn.element(SEQUENCE, "Name attribute is not a SEQUENCE")?;
            let oid = attr.element(OID, "Name attribute has no type")?;
            let (_, value) = attr.any()?;
            if oid.0 == OID_COMMON_NAME {
                return Ok(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    Ok(String::new())
}

/// An INTEGER's magnitude as OpenSSL's BN_bn2bin gives it (what kmod prints).
fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default().to_vec()
}

/// OpenSSL's short name for the digest OIDs module signing uses, else the dotted OID.
fn digest_name(oid: &[u8]) -> String {
    const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
    let name = match oid {
        [0x2B, 0x0E, 0x03, 0x02, 0x1A] => Some("sha1"),
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x02, 0x05] => Some("md5"),
        [0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x83, 0x11] => Some("sm3"),
        _ => match oid.strip_prefix(NIST_HASH) {
            Some([1]) => Some("sha256"),
            Some([2]) => Some("sha384"),
            Some([3]) => Some("sha512"),
            Some([4]) => Some("sha224"),
            Some([8]) => Some("sha3-256"),
            Some([9]) => Some("sha3-384"),
            Some([10]) => Some("sha3-512"),
            _ => None,
        },
    };
    name.map(str::to_string).unwrap_or_else(|| dotted(oid))
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value
            .saturating_mul(128)
            .saturating_add(u64::from(b & 0x7F));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_digests_like_openssl() {
        assert_eq!(
            digest_name(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 1]),
            "sha256"
        );
        assert_eq!(digest_name(&[0x2B, 0x0E, 0x03, 0x02, 0x1A]), "sha1");
        assert_eq!(digest_name(&[0x2A, 0x03]), "1.2.3");
    }

    #[test]
    fn rejects_lengths_past_the_buffer() {
        let err = signer_info(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF])
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "element extends past its container");
        let err = signer_info(&[0x30, 0x80]).err().unwrap();
        assert_eq!(err.to_string(), "indefinite length (BER) is not supported");
    }
}
