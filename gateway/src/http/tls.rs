//! HTTPS and WSS with rustls: `tls_cert` and `tls_key` (PEM files) make the server speak TLS on its
//! port, TLS 1.3 only unless `tls_min_version = "1.2"`. Handshakes run in tasks of their own (at
//! most 10 s each), so a slow or silent client never holds up the others; connections that fail
//! their handshake are dropped with a debug line.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS settings from its certificate chain and key (PEM), accepting TLS 1.3 only, or
/// TLS 1.2 as well when `min_version` is `"1.2"`.
///
/// # Errors
/// Unreadable or malformed files, a key that does not match the certificate, or another version.
pub fn server_config(cert: &Path, key: &Path, min_version: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls_cert: {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls_cert: {} is not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("tls_cert: {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("tls_key: {} is not a PEM private key", key.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        "1.3" => &[&rustls::version::TLS13],
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        other => anyhow::bail!("tls_min_version must be 1.3 or 1.2, not {other:?}"),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls_cert and tls_key do not go together")?;
    // HTTP/1.1 only (the server is built without HTTP/2): a client that offers h2 as well is told
    // http/1.1 rather than agreeing on a protocol the server would then refuse.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections have finished their TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` (in a task of its own until the returned listener is dropped).
    ///
    /// # Errors
    /// The listener has no local address.
    pub fn new(mut listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (sender, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = sender.closed() => return,
                    // axum's accept, which waits out an accept error (too many open files) itself.
                    accepted = axum::serve::Listener::accept(&mut listener) => accepted,
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(peer = %peer, error = %error, "A TLS handshake failed."),
                        Err(_) => tracing::debug!(peer = %peer, "A TLS handshake took too long."),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The acceptor only ends with this listener; until then, nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Tells browsers to come back over HTTPS only (a layer of the router when TLS is on).
pub(crate) async fn strict_transport(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        axum::http::HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    response
}
