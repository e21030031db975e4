//! TLS on kci's listener (issue 16): rustls with the `ring` provider,
//! TLS 1.2 and 1.3, HTTP/1.1. The certificate and key come from PEM files
//! (`[server] tls_cert`, `tls_key`) and are read again on `SIGHUP`, so a
//! renewed certificate takes effect without a restart (a failed reload
//! keeps the one in use). With `[server] client_ca`, clients present a
//! certificate issued by that CA: always (`client_auth = "required"`) or
//! when they have one (`"optional"`); its SHA-256 fingerprint is what a
//! token can be bound to.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// The files TLS is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The CA's revocation list (PEM), read with the rest.
    pub client_crl: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// The settings they come from, as errors name them.
    pub names: TlsNames,
    /// Offer HTTP/1.1 by ALPN (the web listener; not SMTP).
    pub http: bool,
}

/// The config settings of a listener's TLS files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsNames {
    pub cert: &'static str,
    pub key: &'static str,
    pub client_ca: &'static str,
    pub client_crl: &'static str,
}

impl TlsNames {
    /// `[server]`'s.
    pub const SERVER: TlsNames = TlsNames {
        cert: "server.tls_cert",
        key: "server.tls_key",
        client_ca: "server.client_ca",
        client_crl: "server.client_crl",
    };
    /// `[server.public]`'s.
    pub const PUBLIC: TlsNames = TlsNames {
        cert: "server.public.tls_cert",
        key: "server.public.tls_key",
        client_ca: "",
        client_crl: "",
    };
    /// `[keys.smtp_tls]`'s.
    pub const SMTP: TlsNames = TlsNames {
        cert: "keys.smtp_tls.cert",
        key: "keys.smtp_tls.key",
        client_ca: "keys.smtp_tls.client_ca",
        client_crl: "keys.smtp_tls.client_crl",
    };
}

/// The client certificate a connection presented: the SHA-256 of its DER,
/// lower-case hex (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub String);

/// The listener's TLS, reloadable.
pub struct Tls {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files)?));
        Ok(Tls {
            files,
            acceptor: RwLock::new(acceptor),
        })
    }

    /// Reads the files again; on error the TLS in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.files)?));
        match self.acceptor.write() {
            Ok(mut a) => *a = acceptor,
            Err(poisoned) => *poisoned.into_inner() = acceptor,
        }
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.acceptor.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let names = files.names;
    let chain = certs(&files.cert, names.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{} {}: {e}", names.key, files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca, names.client_ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{} {}: {e}", names.client_ca, ca.display()))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if let Some(crl) = &files.client_crl {
                use rustls::pki_types::CertificateRevocationListDer;
                let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(crl)
                    .map_err(|e| format!("{} {}: {e}", names.client_crl, crl.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("{} {}: {e}", names.client_crl, crl.display()))?;
                if crls.is_empty() {
                    return Err(format!(
                        "{} {}: no PEM revocation list in it",
                        names.client_crl,
                        crl.display()
                    ));
                }
                verifier = verifier.with_crls(crls);
            }
            let verifier = match files.client_auth {
                ClientAuth::Required => verifier.build(),
                ClientAuth::Optional => verifier.allow_unauthenticated().build(),
            }
            .map_err(|e| format!("{} {}: {e}", names.client_ca, ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {} do not make a pair: {e}", names.cert, names.key))?;
    if files.http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(config)
}

/// The fingerprint of the certificate the client presented, if any.
pub fn client_cert(conn: &rustls::ServerConnection) -> Option<ClientCert> {
    let cert = conn.peer_certificates()?.first()?;
    Some(ClientCert(crate::model::sha256_hex(cert.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_must_come_in_pairs_and_be_readable() {
        // (config, error naming)
        for (toml, want) in [
            ("", None),
            (
                "tls_cert = \"/x.crt\"\n",
                Some("server.tls_cert: needs server.tls_key"),
            ),
            (
                "tls_key = \"/x.key\"\n",
                Some("server.tls_key: needs server.tls_cert"),
            ),
            ("client_ca = \"/ca.crt\"\n", Some("server.client_ca: needs")),
        ] {
            let server: crate::config::ServerConfig = toml::from_str(toml).unwrap();
            match (server.tls_files(), want) {
                (Ok(None), None) => {}
                (Err(e), Some(w)) => assert!(e.starts_with(w), "{e}"),
                (got, _) => panic!("{toml:?}: {got:?}"),
            }
        }
        let missing = Tls::load(TlsFiles {
            cert: "/nonexistent/kci.crt".into(),
            key: "/nonexistent/kci.key".into(),
            client_ca: None,
            client_crl: None,
            client_auth: ClientAuth::Required,
            names: TlsNames::SERVER,
            http: true,
        });
        let Err(e) = missing else {
            panic!("loaded a missing file")
        };
        assert!(e.starts_with("server.tls_cert /nonexistent/kci.crt"), "{e}");
    }
}
