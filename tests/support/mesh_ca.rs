//! A mesh CA for the tests: a real tonic gRPC server on loopback serving Istio's
//! `IstioCertificateService/CreateCertificate` with TLS, signing CSRs with an rcgen CA (the
//! test's `Pki`), that records what each caller sent and can be told to misbehave. It is not
//! istiod: it speaks the same wire protocol, which is what peerguard's client depends on.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerguard::certs::{csr_names, DevCa};
use peerguard::mesh_ca::proto::{self, IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService};
use peerguard::mesh_ca::CLUSTER_ID_KEY;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

use super::pki::{mesh_id, Pki, TestDir};

pub const TOKEN: &str = "test-projected-token";
pub const CLUSTER_ID: &str = "test-cluster";

/// How the CA answers the next requests.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Signs the CSR with the mesh CA for the lifetime asked.
    Sign,
    /// Returns a good mesh certificate, but for another service account.
    WrongIdentity,
    /// Signs the CSR with a CA the mesh does not trust.
    UntrustedChain,
    /// Accepts the call and never answers.
    Hang,
    /// Answers with this gRPC status.
    Refuse(Code, &'static str),
}

/// What one caller sent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The SANs of the CSR, as text.
    pub sans: Vec<String>,
    pub authorization: Option<String>,
    pub cluster_id: Option<String>,
    pub validity_duration: i64,
}

struct Signer {
    mesh: DevCa,
    foreign: DevCa,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
}

/// Whose certificate the CA's own TLS endpoint presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// One from the mesh CA, for 127.0.0.1 (what clients trust).
    Mesh,
    /// One from a CA the clients do not trust.
    Foreign,
}

pub struct TestCa {
    pub addr: SocketAddr,
    /// The mesh root, for `--ca-root-cert`.
    pub root_file: PathBuf,
    /// The projected token, for `--ca-token-file`.
    pub token_file: PathBuf,
    pub pki: Pki,
    signer: Arc<Signer>,
    endpoint: Endpoint,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    _dir: TestDir,
}

impl TestCa {
    pub async fn start() -> TestCa {
        Self::start_with(Endpoint::Mesh).await
    }

    pub async fn start_with(endpoint: Endpoint) -> TestCa {
        let pki = Pki::new();
        let dir = TestDir::new("mesh-ca");
        let root_file = dir.path().join("root-cert.pem");
        std::fs::write(&root_file, pki.mesh.cert_pem()).expect("write root");
        let token_file = dir.path().join("istio-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
        // The Pki's mesh CA signs, so that clients built from `pki` trust what it issues.
        let saved = dir.path().join("mesh-ca");
        pki.mesh.save(&saved).expect("save mesh CA");
        let signer = Arc::new(Signer {
            mesh: DevCa::load(&saved).expect("mesh CA"),
            foreign: DevCa::generate().expect("foreign CA"),
            behaviour: Mutex::new(Behaviour::Sign),
            seen: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind CA");
        let addr = listener.local_addr().expect("CA address");
        let mut ca = TestCa {
            addr,
            root_file,
            token_file,
            pki,
            signer,
            endpoint,
            running: None,
            _dir: dir,
        };
        ca.serve(listener);
        ca
    }

    fn serve(&mut self, listener: TcpListener) {
        let serving = match self.endpoint {
            Endpoint::Mesh => &self.signer.mesh,
            Endpoint::Foreign => &self.signer.foreign,
        }
        .issue_server(&["127.0.0.1", "localhost"], Duration::from_secs(3600))
        .expect("CA endpoint certificate");
        let (stop, stopped) = oneshot::channel::<()>();
        let signer = self.signer.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            proto::serve_tls(signer, listener, &serving.cert_pem, &serving.key_pem, shutdown)
                .await
                .expect("test CA serves");
        });
        self.running = Some((stop, task));
    }

    /// Takes the CA off the network: its port refuses connections until [`TestCa::restart`].
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            task.await.expect("test CA stops");
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind CA");
        self.serve(listener);
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.signer.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request the CA received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.signer.seen.lock().unwrap().clone()
    }

    /// The `peerguard run` flags that point at this CA as the workload `default/app`.
    pub fn run_flags(&self) -> Vec<String> {
        [
            "--ca-address",
            &self.addr.to_string(),
            "--ca-root-cert",
            &self.root_file.display().to_string(),
            "--ca-token-file",
            &self.token_file.display().to_string(),
            "--cluster-id",
            CLUSTER_ID,
            "--service-account",
            "app",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Signer {
    fn answer(&self, request: &Request<IstioCertificateRequest>) -> Result<IstioCertificateResponse, Status> {
        let body = request.get_ref();
        let header = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let sans = csr_names(&body.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.seen.lock().unwrap().push(Seen {
            sans,
            authorization: header("authorization"),
            cluster_id: header(CLUSTER_ID_KEY),
            validity_duration: body.validity_duration,
        });
        let validity = Duration::from_secs(u64::try_from(body.validity_duration).unwrap_or(0).max(1));
        let sign = |ca: &DevCa| {
            let (leaf, _) = ca
                .sign_csr(&body.csr, validity)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok(IstioCertificateResponse {
                cert_chain: vec![leaf, ca.cert_pem().to_owned()],
            })
        };
        match self.behaviour.lock().unwrap().clone() {
            Behaviour::Sign => sign(&self.mesh),
            Behaviour::UntrustedChain => sign(&self.foreign),
            Behaviour::WrongIdentity => {
                let other = self
                    .mesh
                    .issue_workload(&mesh_id("someone-else"), validity)
                    .expect("other identity");
                Ok(IstioCertificateResponse {
                    cert_chain: vec![other.cert_pem, other.root_pem],
                })
            }
            Behaviour::Refuse(code, message) => Err(Status::new(code, message)),
            Behaviour::Hang => unreachable!("answered before"),
        }
    }
}

impl IstioCertificateService for Signer {
    fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> impl Future<Output = Result<Response<IstioCertificateResponse>, Status>> + Send {
        let hang = matches!(*self.behaviour.lock().unwrap(), Behaviour::Hang);
        let answer = if hang {
            None
        } else {
            Some(self.answer(&request).map(Response::new))
        };
        async move {
            match answer {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        }
    }
}
