//! TLS for client connections (rustls): loading the certificate and key, and the handshake.

use crate::config::TlsFiles;
use crate::context::{NodeCtx, NodeError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Builds the acceptor from PEM files, with errors that name the file.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, NodeError> {
    let err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        NodeError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err("cannot read certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("bad certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(err("no certificate in", &files.cert, &"empty file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err("cannot read key", &files.key, &e))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err("certificate and key do not fit", &files.cert, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the handshake (bounded by the login timeout), then the session.
pub async fn serve(acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr, ctx: Arc<NodeCtx>) {
    match tokio::time::timeout(ctx.config.login_timeout(), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => crate::actors::session::run(tls, peer, ctx).await,
        Ok(Err(e)) => tracing::info!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::info!(peer = %peer, "TLS handshake timed out"),
    }
}
