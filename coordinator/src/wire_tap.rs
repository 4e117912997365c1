//! An optional audit recorder of everything clients send: the decrypted bytes of every TLS
//! connection (HTTP/2 frames carrying the gRPC messages), kept in memory per connection with the
//! identity from the client certificate.
//!
//! Off unless [`crate::Coordinator::tap_connections`] is called. It exists so that privacy
//! audits and the end-to-end tests can check what store nodes really send (no delta above the
//! clip norm, no raw metric value, no image data), byte for byte, after decryption and before
//! any parsing by the coordinator.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::peer_from_der;

/// Shared handle to the recorded connections.
#[derive(Clone, Debug, Default)]
pub struct WireTap {
    connections: Arc<Mutex<Vec<Arc<TappedConnection>>>>,
}

/// One recorded connection.
#[derive(Debug)]
pub struct TappedConnection {
    /// `"node/store-1"`, `"admin/ops"`, or `"unknown"` when the certificate carries no identity.
    pub peer: String,
    received: Mutex<Vec<u8>>,
}

impl TappedConnection {
    /// Every byte the client sent on this connection so far (decrypted).
    pub fn received(&self) -> Vec<u8> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl WireTap {
    /// Every connection recorded so far, in accept order.
    pub fn connections(&self) -> Vec<Arc<TappedConnection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn open(&self, peer: String) -> Arc<TappedConnection> {
        let connection = Arc::new(TappedConnection {
            peer,
            received: Mutex::new(Vec::new()),
        });
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&connection));
        connection
    }
}

/// A server-side TLS stream that copies what it reads into a [`TappedConnection`] when tapping.
#[derive(Debug)]
pub struct TappableStream {
    inner: TlsStream<TcpStream>,
    record: Option<Arc<TappedConnection>>,
}

impl TappableStream {
    pub fn new(inner: TlsStream<TcpStream>, tap: Option<&WireTap>) -> Self {
        let record = tap.map(|tap| {
            let peer = inner
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| peer_from_der(leaf.as_ref()))
                .map_or_else(
                    || "unknown".to_owned(),
                    |p| format!("{}/{}", p.role, p.name),
                );
            tap.open(peer)
        });
        Self { inner, record }
    }
}

impl AsyncRead for TappableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(record)) = (&polled, &this.record) {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                record
                    .received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(new);
            }
        }
        polled
    }
}

impl AsyncWrite for TappableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for TappableStream {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
