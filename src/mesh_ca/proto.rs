//! Istio's certificate service, `istio.v1.auth.IstioCertificateService` (istio/api
//! `security/v1alpha1/ca.proto`), declared by hand with prost derives so that building needs no
//! `protoc`: the two messages, the client call, and the server side for a CA written in Rust
//! (`peerguard dev-ca` and the tests' CA). cert-manager's istio-csr serves the same service.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The service's full name, as gRPC routes it.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// The one method peerguard calls.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `IstioCertificateRequest`; the field numbers are the .proto's (2 is unused there).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// The PEM-encoded CSR.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// The lifetime asked for, in seconds; the CA may shorten it.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque metadata for the CA (Istio reads `ClusterID` and impersonation keys from it).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `IstioCertificateResponse`: the chain, leaf first, each entry PEM.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// Calls `CreateCertificate` on `channel`.
pub async fn create_certificate(
    channel: tonic::transport::Channel,
    request: Request<IstioCertificateRequest>,
) -> Result<Response<IstioCertificateResponse>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
    grpc.unary(request, path, ProstCodec::default()).await
}

/// What a CA implements to be served by [`IstioCertificateServer`].
pub trait IstioCertificateService: Send + Sync + 'static {
    fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> impl Future<Output = Result<Response<IstioCertificateResponse>, Status>> + Send;
}

/// A CA as a tonic service: routes `CreateCertificate` to it and answers `UNIMPLEMENTED` for
/// anything else, as a generated server would.
pub struct IstioCertificateServer<T> {
    ca: Arc<T>,
}

impl<T> IstioCertificateServer<T> {
    pub fn new(ca: Arc<T>) -> Self {
        IstioCertificateServer { ca }
    }
}

impl<T> Clone for IstioCertificateServer<T> {
    fn clone(&self) -> Self {
        IstioCertificateServer { ca: self.ca.clone() }
    }
}

impl<T> NamedService for IstioCertificateServer<T> {
    const NAME: &'static str = SERVICE;
}

/// One `CreateCertificate` call handed to the CA.
struct CreateCertificate<T>(Arc<T>);

impl<T: IstioCertificateService> UnaryService<IstioCertificateRequest> for CreateCertificate<T> {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let ca = self.0.clone();
        Box::pin(async move { ca.create_certificate(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for IstioCertificateServer<T>
where
    T: IstioCertificateService,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CREATE_CERTIFICATE {
            return Box::pin(async { Ok(Status::unimplemented("only CreateCertificate is served").into_http()) });
        }
        let method = CreateCertificate(self.ca.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// Serves `ca` over gRPC with TLS (`cert_pem`, `key_pem`: the CA endpoint's own certificate)
/// on `listener` until `shutdown` resolves: what a CA written in Rust needs to be dialled as
/// istiod is.
pub async fn serve_tls<T: IstioCertificateService>(
    ca: Arc<T>,
    listener: tokio::net::TcpListener,
    cert_pem: &str,
    key_pem: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use tonic::transport::{Identity, Server, ServerTlsConfig};
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))?
        .serve_with_incoming_shutdown(
            IstioCertificateServer::new(ca),
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}
