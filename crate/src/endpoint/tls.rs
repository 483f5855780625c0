//! TLS for an endpoint: the rustls configuration for its `ssl` mode, and the wording of a
//! rejected server certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{EndpointConfig, SslMode};
use crate::error::pg_error_text;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only (`prefer`, `require` without `ssl_ca`).
    None,
    /// The chain up to a trusted CA, host name not checked (`verify-ca`, `require` with `ssl_ca`).
    Chain,
    /// Chain and host name (`verify-full`).
    Full,
}

fn check_for(mode: SslMode, has_ca: bool) -> Check {
    match mode {
        SslMode::Disable | SslMode::Prefer => Check::None,
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        SslMode::Require if has_ca => Check::Chain,
        SslMode::Require => Check::None,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::Full,
    }
}

pub(super) fn tls_config(config: &EndpointConfig) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?.dangerous();
    let ca_pem = config.ssl_ca.as_deref();
    let builder = match check_for(config.ssl, ca_pem.is_some()) {
        Check::None => builder.with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
        check => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider).build().map_err(|e| e.to_string())?;
            if check == Check::Full {
                builder.with_custom_certificate_verifier(webpki)
            } else {
                builder.with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
        }
    };
    match (config.ssl_cert.as_deref(), config.ssl_key.as_deref()) {
        (Some(cert_pem), Some(key_pem)) => {
            let certs =
                rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("ssl_cert: {e}"))?;
            if certs.is_empty() {
                return Err("ssl_cert: no certificate found in PEM".into());
            }
            // Never echo the key's text: only say what is wrong with it.
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .map_err(|_| "ssl_key: unreadable PEM".to_string())?
                .ok_or_else(|| "ssl_key: no private key found in PEM".to_string())?;
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("ssl_cert / ssl_key: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("ssl_cert and ssl_key must be given together".into()),
    }
}

fn roots(ca_pem: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("ssl_ca: {e}"))?;
                store.add(cert).map_err(|e| format!("ssl_ca: {e}"))?;
            }
            if store.is_empty() {
                return Err("ssl_ca: no certificate found in PEM".into());
            }
        }
    }
    Ok(store)
}

/// Text of a failed connection attempt; a rejected server certificate gets a hint at its
/// likely cause, since rustls names some of them only by variant (`UnknownIssuer`).
pub(super) fn connect_error_text(err: &tokio_postgres::Error, config: &EndpointConfig) -> String {
    let text = pg_error_text(err);
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // An io::Error's `source()` skips the error it wraps, so look inside it.
        let inner = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|e| e as &(dyn std::error::Error + 'static));
        for candidate in [Some(cause), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(cert_err)) = candidate.downcast_ref::<rustls::Error>() {
                let hint = certificate_hint(cert_err, config);
                return format!("server certificate rejected (ssl={}): {text}{hint}", config.ssl.as_str());
            }
        }
        source = cause.source();
    }
    text
}

fn certificate_hint(err: &CertificateError, config: &EndpointConfig) -> String {
    match err {
        CertificateError::UnknownIssuer if config.ssl_ca.is_some() => " (it is not signed by a CA in ssl_ca)".to_string(),
        CertificateError::UnknownIssuer => {
            " (it is not signed by a public CA; set ssl_ca to the CA that signed the server's certificate)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            " (host name '{}' is not in the certificate; connect by a name it lists, or use ssl=verify-ca to skip the host name check)",
            config.host
        ),
        _ => String::new(),
    }
}

/// `prefer`, and `require` without `ssl_ca`: encrypted, but any certificate is accepted
/// (libpq's meaning).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full chain check, with only the host-name mismatch forgiven.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
