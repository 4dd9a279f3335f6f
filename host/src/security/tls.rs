//! Throwaway certificates for `concord dev --tls` and for tests: a CA made
//! on the spot and one certificate, signed by it, that every local node
//! presents (to clients as a server, to peers as a member). Production
//! clusters bring their own CA and a certificate per node.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{Error, Result};

/// Where [`write_dev_certificates`] put its files.
#[derive(Clone, Debug)]
pub struct DevCertificates {
    /// The CA certificate: clients pass it as `--tls-ca`.
    pub ca: PathBuf,
    /// The nodes' certificate.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
}

/// PEM of a new CA and of a node certificate for `names` (host names or IP
/// addresses), signed by it: `(ca, cert, key)`.
pub fn make_certificates(names: &[&str]) -> Result<(String, String, String)> {
    let fail = |e: rcgen::Error| Error::Internal(format!("cannot make certificates: {e}"));
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Concord throwaway CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let mut node = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).map_err(fail)?;
    node.distinguished_name.push(DnType::CommonName, "Concord node");
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let node_key = KeyPair::generate().map_err(fail)?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let node_cert = node.signed_by(&node_key, &issuer).map_err(fail)?;
    Ok((ca_cert.pem(), node_cert.pem(), node_key.serialize_pem()))
}

/// Writes a throwaway CA and a node certificate for 127.0.0.1 and
/// localhost into `dir`.
pub fn write_dev_certificates(dir: &Path) -> Result<DevCertificates> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let (ca, cert, key) = make_certificates(&["127.0.0.1", "localhost"])?;
    let out = DevCertificates { ca: dir.join("ca.pem"), cert: dir.join("node.pem"), key: dir.join("node-key.pem") };
    for (path, pem) in [(&out.ca, &ca), (&out.cert, &cert)] {
        std::fs::write(path, pem).map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
    }
    super::keys::write_private(&out.key, key.as_bytes())?;
    Ok(out)
}
