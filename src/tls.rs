//! The process's one TLS crypto provider.
//!
//! Every TLS connection crossmesh makes or accepts goes through rustls: the kube
//! clients of member clusters (HTTPS API servers, client certificates) today, the
//! authenticated xDS port later. rustls picks its cryptography from a process-wide
//! [`rustls::crypto::CryptoProvider`]; when the build enables exactly one provider
//! feature it can guess, otherwise the first TLS handshake panics ("Could not
//! automatically determine the process-level CryptoProvider"). Whether a feature is
//! on depends on the whole dependency graph, and dev-dependencies change that graph
//! for test builds only, so guessing is how a release binary came to panic while
//! every test passed.
//!
//! crossmesh therefore names its provider, `ring`, here and installs it once at
//! start. Naming it in code also makes the build fail outright, instead of the
//! binary failing at run time, if a dependency change ever drops the feature.

use std::sync::Arc;

/// The provider crossmesh uses for every TLS connection.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install [`provider`] as the process default. Idempotent: a second call (or a
/// provider already installed by an embedding program) is left as it is.
pub fn install_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race between the check and the install; that
        // one installed the same provider, so the error is of no interest.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A TLS connection accepted by one of crossmesh's gRPC servers (the TLS xDS
/// port, the agent port), as tonic serves it, carrying `I`: what each request
/// learns about its connection (`Request::extensions`), fixed at accept time.
pub struct ServerTlsIo<I> {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    info: I,
}

impl<I> ServerTlsIo<I> {
    pub fn new(stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, info: I) -> Self {
        ServerTlsIo { stream, info }
    }
}

impl<I: Clone + Send + Sync + 'static> tonic::transport::server::Connected for ServerTlsIo<I> {
    type ConnectInfo = I;
    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<I: Unpin> tokio::io::AsyncRead for ServerTlsIo<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<I: Unpin> tokio::io::AsyncWrite for ServerTlsIo<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_ring_once() {
        install_default_provider();
        install_default_provider();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("installed");
        // ring's provider offers the TLS 1.3 AES-GCM suites; the same list as ours.
        assert_eq!(
            installed.cipher_suites.len(),
            provider().cipher_suites.len()
        );
    }
}

/// A tonic connector that dials `addr` over TCP and then TLS, checking the
/// server's certificate for `host` against `tls`'s roots (and presenting its
/// client certificate, if it has one). The agent's link to the hub and
/// `crossmesh workload-certs`' link to the TLS xDS port use it.
#[derive(Clone)]
pub struct TlsConnector {
    /// `HOST:PORT` to dial.
    pub addr: String,
    /// The name the server's certificate must carry.
    pub host: String,
    pub tls: Arc<rustls::ClientConfig>,
}

/// The stream a [`TlsConnector`] hands tonic.
pub type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

type TlsIoFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = TlsIoFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&me.addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(me.host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(me.tls.clone())
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
