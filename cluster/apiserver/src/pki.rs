//! The cluster's TLS material, generated on first start into `<data-dir>/tls/`: a CA, the API
//! server's serving certificate, and the admin client certificate written into
//! `<data-dir>/kubeconfig.yaml`. Later starts reuse it; the serving certificate is reissued when
//! the requested names change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("failed to access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a certificate failed.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// Building the TLS configuration failed.
    #[error("tls configuration error: {0}")]
    Tls(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn cert_error(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

/// The cluster's certificates and keys (PEM).
pub struct Pki {
    /// CA certificate.
    pub ca_cert: String,
    ca_key: String,
    /// API server certificate.
    pub server_cert: String,
    /// API server key.
    pub server_key: String,
    /// Admin client certificate (CN kelson-admin, O system:masters).
    pub admin_cert: String,
    /// Admin client key.
    pub admin_key: String,
}

impl Pki {
    /// Loads the material from `<data_dir>/tls`, creating what is missing.
    ///
    /// # Errors
    /// On I/O or certificate errors.
    pub fn load_or_create(data_dir: &Path, server_names: &[String]) -> Result<Self> {
        let dir = data_dir.join("tls");
        let (ca_cert, ca_key) = match (read(&dir.join("ca.crt"))?, read(&dir.join("ca.key"))?) {
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                let key = KeyPair::generate().map_err(cert_error)?;
                let mut params =
                    CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
                params.distinguished_name = name("kelson-ca", &[]);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                params.not_after = rcgen::date_time_ymd(2036, 1, 1);
                let cert = params.self_signed(&key).map_err(cert_error)?;
                write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
                write(&dir.join("ca.crt"), &cert.pem(), false)?;
                (cert.pem(), key.serialize_pem())
            }
        };
        let mut pki = Self {
            ca_cert,
            ca_key,
            server_cert: String::new(),
            server_key: String::new(),
            admin_cert: String::new(),
            admin_key: String::new(),
        };
        let names = server_names.join(",");
        let same_names = read(&dir.join("server.names"))?.is_some_and(|n| n == names);
        match (
            read(&dir.join("server.crt"))?,
            read(&dir.join("server.key"))?,
        ) {
            (Some(cert), Some(key)) if same_names => {
                (pki.server_cert, pki.server_key) = (cert, key)
            }
            _ => {
                let (cert, key) = pki.issue("kube-apiserver", &[], server_names, true)?;
                write(&dir.join("server.key"), &key, true)?;
                write(&dir.join("server.crt"), &cert, false)?;
                write(&dir.join("server.names"), &names, false)?;
                (pki.server_cert, pki.server_key) = (cert, key);
            }
        }
        match (read(&dir.join("admin.crt"))?, read(&dir.join("admin.key"))?) {
            (Some(cert), Some(key)) => (pki.admin_cert, pki.admin_key) = (cert, key),
            _ => {
                let (cert, key) = pki.issue("kelson-admin", &["system:masters"], &[], false)?;
                write(&dir.join("admin.key"), &key, true)?;
                write(&dir.join("admin.crt"), &cert, false)?;
                (pki.admin_cert, pki.admin_key) = (cert, key);
            }
        }
        Ok(pki)
    }

    /// The API server's client certificate for kubelets (CN kube-apiserver-kubelet-client,
    /// O system:masters), from `<data_dir>/tls`, created when missing.
    ///
    /// # Errors
    /// On I/O or certificate errors.
    pub fn kubelet_client(&self, data_dir: &Path) -> Result<(String, String)> {
        let dir = data_dir.join("tls");
        let (cert_path, key_path) = (
            dir.join("kubelet-client.crt"),
            dir.join("kubelet-client.key"),
        );
        if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
            return Ok((cert, key));
        }
        let (cert, key) = self.issue(
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            false,
        )?;
        write(&key_path, &key, true)?;
        write(&cert_path, &cert, false)?;
        Ok((cert, key))
    }

    /// Issues a certificate signed by the CA; returns (certificate, key) PEM.
    ///
    /// # Errors
    /// On certificate errors.
    pub fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        names: &[String],
        server: bool,
    ) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&self.ca_key).map_err(cert_error)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert, ca_key).map_err(cert_error)?;
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        params.distinguished_name = name(common_name, organizations);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(cert_error),
            })
            .collect::<Result<_>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The rustls configuration of the API listener: our serving certificate; client
    /// certificates signed by our CA are verified when presented, and optional otherwise (bearer
    /// tokens and public endpoints need none).
    ///
    /// # Errors
    /// When the material does not parse.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert.as_bytes()) {
            roots
                .add(cert.map_err(cert_error)?)
                .map_err(|e| Error::Tls(e.to_string()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(cert_error)?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).map_err(cert_error)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A kubeconfig for the admin user against `server_url`.
    #[must_use]
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\nusers:\n- name: kelson-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kelson\n  context:\n    cluster: kelson\n    user: kelson-admin\ncurrent-context: kelson\n",
            b64(&self.ca_cert),
            b64(&self.admin_cert),
            b64(&self.admin_key)
        )
    }
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    for organization in organizations {
        name.push(DnType::OrganizationName, *organization);
    }
    name
}

/// Writes a file atomically (for kubeconfig and address files).
///
/// # Errors
/// On I/O errors.
pub fn write_file(path: &Path, text: &str, private: bool) -> Result<()> {
    write(path, text, private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_created_once_and_client_certs_carry_groups() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = Pki::load_or_create(dir.path(), &names).unwrap();
        let second = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.ca_cert, second.ca_cert);
        assert_eq!(first.server_cert, second.server_cert);
        let der = CertificateDer::from_pem_slice(first.admin_cert.as_bytes()).unwrap();
        let user = crate::auth::user_from_certificate(&der).unwrap();
        assert_eq!(user.name, "kelson-admin");
        assert!(user.groups.contains(&"system:masters".to_owned()));
        first.server_config().unwrap();
        let renamed = Pki::load_or_create(dir.path(), &["other".to_owned()]).unwrap();
        assert_ne!(renamed.server_cert, first.server_cert);
        assert_eq!(renamed.ca_cert, first.ca_cert);
    }
}
