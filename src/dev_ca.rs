//! `peerguard dev-ca`: the development mesh CA (`certs`) served as Istio's gRPC certificate
//! service, so that `peerguard run --ca-address` (and the demo's `--mesh-ca` mode) gets its
//! certificate through the same path as from istiod.
//!
//! Not istiod: it cannot review a Kubernetes token, so it signs the one SPIFFE ID a CSR asks
//! for after checking only that a bearer token is present (and equal to `--token-file`, when
//! given).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tonic::{Request, Response, Status};

use crate::certs::DevCa;
use crate::cli::DevCaArgs;
use crate::mesh_ca::proto::{self, IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService};
use crate::mesh_ca::CLUSTER_ID_KEY;

/// The names the CA endpoint's certificate carries: Istio's service name, and loopback.
const SERVING_NAMES: [&str; 3] = ["istiod.istio-system.svc", "localhost", "127.0.0.1"];
/// How long the CA endpoint's own certificate is valid.
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The development CA as a `CreateCertificate` service.
pub struct DevCaService {
    ca: DevCa,
    /// The longest lifetime issued; also the lifetime when the request asks for none.
    max_validity: Duration,
    /// The bearer token callers must present, if set; any non-empty token otherwise.
    token: Option<String>,
}

impl DevCaService {
    pub fn new(ca: DevCa, max_validity: Duration, token: Option<String>) -> Self {
        DevCaService {
            ca,
            max_validity,
            token,
        }
    }

    fn answer(&self, request: &Request<IstioCertificateRequest>) -> Result<IstioCertificateResponse, Status> {
        let metadata = request.metadata();
        let token = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Status::unauthenticated("no `authorization: Bearer <token>` metadata"))?;
        if self.token.as_deref().is_some_and(|expected| expected != token) {
            return Err(Status::unauthenticated(
                "the bearer token is not the one this CA accepts",
            ));
        }
        let body = request.get_ref();
        let asked = u64::try_from(body.validity_duration).unwrap_or(0);
        let validity = match asked {
            0 => self.max_validity,
            seconds => Duration::from_secs(seconds).min(self.max_validity),
        };
        let (leaf, id) = self
            .ca
            .sign_csr(&body.csr, validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cluster = metadata.get(CLUSTER_ID_KEY).and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::info!(spiffe_id = %id, cluster_id = cluster, validity = ?validity, "issued a workload certificate");
        Ok(IstioCertificateResponse {
            cert_chain: vec![leaf, self.ca.cert_pem().to_owned()],
        })
    }

    /// Serves this CA with TLS on `listener` until `shutdown` resolves, with a certificate of
    /// its own for Istio's service name and loopback.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let serving = self.ca.issue_server(&SERVING_NAMES, SERVING_VALIDITY)?;
        proto::serve_tls(Arc::new(self), listener, &serving.cert_pem, &serving.key_pem, shutdown).await?;
        Ok(())
    }
}

impl IstioCertificateService for DevCaService {
    fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> impl Future<Output = Result<Response<IstioCertificateResponse>, Status>> + Send {
        let answer = self.answer(&request).map(Response::new);
        if let Err(status) = &answer {
            tracing::warn!(
                code = crate::mesh_ca::code_name(status.code()),
                message = status.message(),
                "refused a certificate request"
            );
        }
        std::future::ready(answer)
    }
}

/// `peerguard dev-ca`: serve until Ctrl-C or SIGTERM.
pub fn run(args: &DevCaArgs) -> anyhow::Result<()> {
    let ca = DevCa::load_or_create(&args.ca_dir)?;
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener =
            crate::net::bind_listener(args.listen).with_context(|| format!("listening on {}", args.listen))?;
        let bound: SocketAddr = listener.local_addr()?;
        let root = args.ca_dir.join(crate::certs::CA_CERT_FILE);
        println!(
            "development mesh CA serving istio.v1.auth.IstioCertificateService on {bound} (Ctrl-C stops it)\n\
             its root, for --ca-root-cert: {}\n\
             peerguard run --ca-address {bound} --ca-root-cert {} --ca-token-file FILE --service-account SA ...",
            root.display(),
            root.display()
        );
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        DevCaService::new(ca, args.max_validity, token)
            .serve(listener, stop)
            .await
    })
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
    Ok(token.to_owned())
}
