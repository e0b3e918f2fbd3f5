//! A real HTTP/1.1 application: hyper's HTTP/1 server and nothing else, as most apps behind a
//! sidecar are. It answers every request `200` with the version it was asked in. Like any
//! HTTP/1.1-only server it cannot answer HTTP/2's connection preface (`PRI * HTTP/2.0`) with
//! anything but an error, which is what a client sees when a proxy negotiates `h2` for it.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub struct HttpApp {
    pub addr: SocketAddr,
    answered: Arc<AtomicUsize>,
}

impl HttpApp {
    pub async fn start() -> HttpApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP app");
        let addr = listener.local_addr().expect("HTTP app addr");
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        count.fetch_add(1, Ordering::Relaxed);
                        let body = format!(
                            "HTTP/1.1 app: {} {} as {:?}\n",
                            request.method(),
                            request.uri(),
                            request.version()
                        );
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        HttpApp { addr, answered }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}
