//! A throwaway certificate authority and an HTTPS server for the emulators.
//!
//! The emulators speak real TLS so the operator's client (which only trusts configured roots and
//! checks names) is exercised exactly as in production; tests trust the CA through a PEM file.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

use axum_server::tls_rustls::RustlsConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;
use url::Url;

/// Names every emulator certificate is valid for: clients check IP SANs when given an IP URL.
pub const SERVER_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

pub use idp_bridge::install_crypto_provider;

/// A certificate and its private key, PEM-encoded, issued by a [`TestCa`].
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// An in-memory CA, fresh per instance; nothing it signs is trusted outside the test that made it.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    server: IssuedCert,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "idp-bridge test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generate CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign CA");
        let server = issue(&issuer, &SERVER_SANS);
        Self { issuer, server }
    }

    /// The CA certificate, for client trust stores.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn write_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.cert_pem())
    }

    /// A new server leaf for other names (e.g. a local control plane's serving certificate).
    pub fn issue_server_cert(&self, sans: &[&str]) -> IssuedCert {
        issue(&self.issuer, sans)
    }

    /// The emulators' server configuration (leaf for [`SERVER_SANS`], ALPN h2 and http/1.1).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        install_crypto_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key_der.clone()));
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.server.cert_der.clone()], key)
            .expect("leaf and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

fn issue(issuer: &CertifiedIssuer<'static, KeyPair>, sans: &[&str]) -> IssuedCert {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    params.distinguished_name.push(DnType::CommonName, "idp-bridge emulator");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("generate leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().clone(), key_der: key.serialize_der() }
}

/// A running HTTPS server; dropping it stops the server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// `https://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> Url {
        Url::parse(&format!("https://{}/", self.addr)).expect("socket address makes a URL")
    }

    /// Stops at once: open connections are dropped and the listener closes, so new connections
    /// are refused (from the runtime's next turn, as the listener lives in a task).
    pub fn shutdown(&self) {
        self.handle.shutdown();
        self.task.abort();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `router` over TLS on an ephemeral port of 127.0.0.1.
pub async fn serve_tls(router: axum::Router, ca: &TestCa) -> std::io::Result<ServerHandle> {
    spawn_tls(router, ca)
}

/// [`serve_tls`] for synchronous callers inside a Tokio runtime context.
pub(super) fn spawn_tls(router: axum::Router, ca: &TestCa) -> std::io::Result<ServerHandle> {
    // Bind synchronously so the port is known and already accepting when this returns.
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(ca.server_config()))?.handle(handle.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(router.into_make_service()).await {
            tracing::warn!(error = %e, "emulator server stopped");
        }
    });
    Ok(ServerHandle { addr, handle, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_builds_and_pem_is_a_certificate() {
        let ca = TestCa::new();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let config = ca.server_config();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let extra = ca.issue_server_cert(&["kube.local"]);
        assert!(extra.key_pem.contains("PRIVATE KEY"));
    }
}
