//! `tls_server_config` as a rustls `ServerConfig` (ring provider): the
//! certificate and key, the five client auth types of Go's `crypto/tls`, the
//! protocol versions (rustls has TLS 1.2 and 1.3 only), and Go's cipher suite
//! and curve names mapped onto what rustls offers. exporter-toolkit's
//! semantics are kept wherever rustls can express them; what it cannot is
//! refused (TLS 1.0 and 1.1, `client_allowed_sans`) or, for a cipher suite
//! or curve rustls lacks, dropped with a warning.

use super::{error, Error, Materials, TlsSettings, TlsVersion};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use std::sync::Arc;

/// `client_auth_type`: Go's `tls.ClientAuthType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for (the default).
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, any certificate (not verified against a CA).
    RequireAnyClientCert,
    /// Not required; one that is sent must chain to the client CA.
    VerifyClientCertIfGiven,
    /// Required, and must chain to the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    /// Go's name; an empty one is `NoClientCert`, and `RequireClientCert` is
    /// the old name of `RequireAnyClientCert`, as in exporter-toolkit.
    pub fn parse(text: &str) -> Result<ClientAuth, Error> {
        Ok(match text {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            other => {
                return Err(error(format!(
                    "tls_server_config.client_auth_type: invalid value {other:?} (NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::NoClientCert => "NoClientCert",
            ClientAuth::RequestClientCert => "RequestClientCert",
            ClientAuth::RequireAnyClientCert => "RequireAnyClientCert",
            ClientAuth::VerifyClientCertIfGiven => "VerifyClientCertIfGiven",
            ClientAuth::RequireAndVerifyClientCert => "RequireAndVerifyClientCert",
        }
    }

    /// Whether a certificate sent is verified against the client CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }

    /// Whether a client must send a certificate.
    pub fn requires(self) -> bool {
        matches!(
            self,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// Go's TLS 1.3 suite names: accepted and ignored, as Go does (TLS 1.3
/// suites are not configurable there; rustls offers all three).
const GO_TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go's other (TLS 1.2) secure suite names; rustls implements the six
/// ECDHE AEAD ones, the others are dropped with a warning.
const GO_TLS12_SUITES: [&str; 14] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
];

/// exporter-toolkit's curve names.
const GO_CURVES: [&str; 4] = ["CurveP256", "CurveP384", "CurveP521", "X25519"];

/// Checks the cipher suite and curve names (an unknown one is an error, as
/// in exporter-toolkit).
pub(super) fn check_names(settings: &TlsSettings) -> Result<(), Error> {
    for name in settings.cipher_suites.iter().flatten() {
        if !GO_TLS13_SUITES.contains(&name.as_str()) && !GO_TLS12_SUITES.contains(&name.as_str()) {
            return Err(error(format!(
                "tls_server_config.cipher_suites: unknown cipher {name:?}"
            )));
        }
    }
    for name in settings.curves.iter().flatten() {
        if !GO_CURVES.contains(&name.as_str()) {
            return Err(error(format!(
                "tls_server_config.curve_preferences: unknown curve {name:?} ({})",
                GO_CURVES.join(", ")
            )));
        }
    }
    Ok(())
}

/// The ring provider, cut down to the listed cipher suites and curves;
/// the warnings for names rustls does not implement.
fn provider(settings: &TlsSettings) -> Result<(CryptoProvider, Vec<String>), Error> {
    let mut provider = rustls::crypto::ring::default_provider();
    let mut warnings = Vec::new();
    if let Some(names) = &settings.cipher_suites {
        let mut tls12 = Vec::new();
        for name in names {
            if GO_TLS13_SUITES.contains(&name.as_str()) {
                continue;
            }
            match provider
                .cipher_suites
                .iter()
                .find(|s| s.tls13().is_none() && format!("{:?}", s.suite()) == *name)
            {
                Some(suite) => tls12.push(*suite),
                None => warnings.push(format!(
                    "cipher suite {name} is not implemented by rustls: ignored"
                )),
            }
        }
        if tls12.is_empty() && settings.min_version == TlsVersion::Tls12 {
            return Err(error(
                "tls_server_config.cipher_suites: none of the TLS 1.2 suites listed is implemented by rustls (it has the ECDHE ones with AES-GCM or ChaCha20-Poly1305)",
            ));
        }
        let mut suites: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .copied()
            .collect();
        suites.extend(tls12);
        provider.cipher_suites = suites;
    }
    if let Some(names) = &settings.curves {
        let mut groups = Vec::new();
        for name in names {
            let group = match name.as_str() {
                "CurveP256" => Some(rustls::crypto::ring::kx_group::SECP256R1),
                "CurveP384" => Some(rustls::crypto::ring::kx_group::SECP384R1),
                "X25519" => Some(rustls::crypto::ring::kx_group::X25519),
                _ => None,
            };
            match group {
                Some(group) => groups.push(group),
                None => warnings.push(format!(
                    "curve {name} is not implemented by rustls (ring): ignored"
                )),
            }
        }
        if groups.is_empty() {
            return Err(error(
                "tls_server_config.curve_preferences: none of the curves listed is implemented by rustls (CurveP256, CurveP384, X25519)",
            ));
        }
        provider.kx_groups = groups;
    }
    Ok((provider, warnings))
}

/// The rustls configuration `settings` asks for, from the PEM texts read;
/// the warnings to log. ALPN offers `h2` when `http2` is on.
pub(super) fn server_config(
    settings: &TlsSettings,
    materials: &Materials,
    http2: bool,
) -> Result<(ServerConfig, Vec<String>), Error> {
    let (provider, warnings) = provider(settings)?;
    let provider = Arc::new(provider);
    let cert_name = settings.cert.describe("cert_file", "cert");
    let key_name = settings.key.describe("key_file", "key");

    let certs = CertificateDer::pem_slice_iter(&materials.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("tls_server_config: {cert_name}: {e}")))?;
    if certs.is_empty() {
        return Err(error(format!(
            "tls_server_config: {cert_name}: no PEM certificate found"
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&materials.key).map_err(|e| {
        error(format!(
            "tls_server_config: {key_name}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"
        ))
    })?;

    let verifier = client_verifier(settings, materials, &provider)?;
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| error(format!("tls_server_config: {e}")))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        error(format!(
            "tls_server_config: the certificate ({cert_name}) and key ({key_name}) do not go together: {e}"
        ))
    })?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((config, warnings))
}

/// The client certificate policy; `None` asks for no certificate.
fn client_verifier(
    settings: &TlsSettings,
    materials: &Materials,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, Error> {
    let auth = settings.client_auth;
    if auth == ClientAuth::NoClientCert {
        return Ok(None);
    }
    if !auth.verifies() {
        return Ok(Some(Arc::new(AnyClientCert {
            mandatory: auth.requires(),
            algorithms: provider.signature_verification_algorithms,
        })));
    }
    let ca_name = settings.client_ca.as_ref().map_or_else(
        || "client_ca".to_owned(),
        |ca| ca.describe("client_ca_file", "client_ca"),
    );
    let Some(pem) = &materials.client_ca else {
        return Err(error(format!(
            "tls_server_config: client_auth_type {} needs client_ca_file",
            auth.as_str()
        )));
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| error(format!("tls_server_config: {ca_name}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| error(format!("tls_server_config: {ca_name}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(error(format!(
            "tls_server_config: {ca_name}: no PEM certificate found"
        )));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if auth.requires() {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = builder
        .build()
        .map_err(|e| error(format!("tls_server_config: {ca_name}: {e}")))?;
    Ok(Some(verifier))
}

/// `RequestClientCert` and `RequireAnyClientCert`: any well-formed
/// certificate is taken, unverified (as Go does), and the client must still
/// prove it holds its key (the handshake signature is checked).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
