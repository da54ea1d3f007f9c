//! The certificates of a TLS test server: a certificate authority made for it, and a server
//! certificate for `127.0.0.1` and `localhost` that the authority signs.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The PEM files written by [`generate`].
pub(crate) struct TlsFiles {
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
}

/// Writes `ca.pem`, `server-cert.pem` and `server-key.pem` into `dir`, which it creates.
pub(crate) fn generate(dir: &Path) -> Result<TlsFiles, String> {
    let error = |what: &str, error: rcgen::Error| format!("cannot make the {what}: {error}");
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| error("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(rcgen::DnType::CommonName, "parallel test CA");
    let ca_key = KeyPair::generate().map_err(|e| error("CA key", e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| error("CA", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let mut server = CertificateParams::new(names).map_err(|e| error("server certificate", e))?;
    server.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(|e| error("server key", e))?;
    let server_cert =
        server.signed_by(&server_key, &issuer).map_err(|e| error("server certificate", e))?;

    let files = TlsFiles {
        server_cert: dir.join("server-cert.pem"),
        server_key: dir.join("server-key.pem"),
    };
    let write = |path: &Path, text: String| {
        fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&dir.join("ca.pem"), ca_cert.pem())?;
    write(&files.server_cert, server_cert.pem())?;
    write(&files.server_key, server_key.serialize_pem())?;
    Ok(files)
}
