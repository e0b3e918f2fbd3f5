//! A small HTTP/1.1 server for the admin, health and metrics endpoints: GET only, one request per
//! connection, a bounded request head, no request body read, a bounded number of connections,
//! and a deadline on each, so a slow or hostile client cannot hold the probe port hostage.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// hyper's smallest read buffer, and far more than `GET /stats/prometheus` with a few
/// headers needs.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole exchange, response included, must finish within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Probes and scrapes come one at a time; more than this at once is not a probe.
const MAX_CONNECTIONS: usize = 32;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Answers one GET request by its path.
pub type Routes = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// A route's answer: most are computed from in-memory state at once; an app probe has to ask
/// the app first.
pub enum Answer {
    Now(Response<Full<Bytes>>),
    Later(Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>),
}

impl From<Response<Full<Bytes>>> for Answer {
    fn from(response: Response<Full<Bytes>>) -> Self {
        Answer::Now(response)
    }
}

/// Serves `routes` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, routes: Routes, mut shutdown: watch::Receiver<bool>) {
    let cap = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "admin/health accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Over the cap, close at once rather than queue: a probe will retry.
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = answer(&routes, &request);
                async move {
                    Ok::<_, Infallible>(match answer {
                        Answer::Now(response) => response,
                        Answer::Later(response) => response.await,
                    })
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                tracing::debug!(error = %e, "admin/health connection failed");
            }
            drop(permit);
        });
    }
}

fn answer(routes: &Routes, request: &Request<Incoming>) -> Answer {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served\n".into()).into();
    }
    routes(request.uri().path())
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

pub fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn not_found(path: &str) -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n"))
}
