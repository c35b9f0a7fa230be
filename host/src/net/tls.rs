//! TLS for the server (`[tls]`) and for `plugboard send --tls`, with rustls.
//!
//! Both sides are built once, from PEM files loaded with rustls-pki-types,
//! and use the ring provider explicitly, so that nothing depends on which
//! provider a dependency happens to enable. A TLS listener serves TLS only:
//! a plain client's bytes fail the handshake and it gets at most a TLS
//! alert, never anything it could read as a reply. With `client_ca`, a
//! client must also present a certificate that CA issued (mutual TLS).
//!
//! The handshake runs inside the connection's task, under the frame
//! timeout: a client that opens a socket and stalls mid-handshake holds its
//! place no longer than one that stalls mid-message.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsSettings;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's acceptor, from `[tls]`. Errors name the key and the file.
pub fn acceptor(settings: &TlsSettings) -> anyhow::Result<TlsAcceptor> {
    let certs = load_certs(&settings.cert).context("`tls.cert`")?;
    let key = load_key(&settings.key).context("`tls.key`")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(ca).context("`tls.client_ca`")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .context("`tls.client_ca`")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).context(
        "`tls.cert` and `tls.key` do not make a usable server certificate \
         (do they match? a self-signed certificate marked as a CA is refused)",
    )?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How `send` connects over TLS.
pub struct ClientTls {
    connector: TlsConnector,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca`, or else the system's roots;
    /// presents `identity` (certificate chain and key files) when given.
    pub fn new(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let roots = match ca {
            Some(ca) => load_roots(ca).context("--ca")?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    load_certs(cert).context("--cert")?,
                    load_key(key).context("--key")?,
                )
                .context("--cert and --key do not make a usable client certificate")?,
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The handshake with the server at `host` (a name or an IP address,
    /// which its certificate must name), over `stream`.
    pub async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a valid server name"))?;
        self.connector
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS handshake with {host} failed"))
    }
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| {
        format!(
            "cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM) from {}",
            path.display()
        )
    })
}

fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    anyhow::ensure!(
        added > 0,
        "no usable system CA certificates (give the server's CA with --ca)"
    );
    Ok(roots)
}
