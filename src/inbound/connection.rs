//! One connection, start to finish, as the spec reads: resolve the port's mode -> classify the
//! first bytes -> decide -> terminate, forward or refuse -> one record.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Limits;
use crate::inbound::classify::{classify, ClassifyError, SniffLimits, Sniffed};
use crate::inbound::decide::decide;
use crate::inbound::forward::forward;
use crate::inbound::terminate::terminate;
use crate::net;
use crate::outcome::client_text::LogStyle;
use crate::outcome::record::Record;
use crate::outcome::{Action, Reason};
use crate::policy::{AppProtocol, MtlsMode};
use crate::store::Store;
use crate::tls::client_hello::ClientHello;

/// What every connection handler shares: the live policy and credentials and the limits.
pub struct DataPath {
    pub store: Arc<Store>,
    pub limits: Limits,
    /// How the access log writes what clients sent.
    pub log_style: LogStyle,
}

impl DataPath {
    fn sniff_limits(&self) -> SniffLimits {
        SniffLimits {
            max_client_hello: self.limits.max_client_hello,
            timeout: self.limits.sniff_timeout,
        }
    }

    /// Serves one accepted connection whose app is at `app` (the workload port is its port)
    /// and returns its record.
    pub async fn serve(&self, mut client: TcpStream, source: SocketAddr, app: SocketAddr) -> Record {
        let started = Instant::now();
        let mut record = Record::refused(source, app.port(), Reason::ClientClosedEarly);
        let policy = self.store.policy();
        let port = policy.port(app.port());
        record.mode = Some(port.policy.mode);
        record.policy = Some(port.label.clone());

        let (sniffed, prefix) = if port.policy.mode == MtlsMode::Disable {
            (Sniffed::NotRead, Vec::new())
        } else {
            match classify(&mut client, self.sniff_limits()).await {
                Ok(classified) => {
                    record.sniff_time = Some(classified.elapsed);
                    (classified.sniffed, classified.prefix)
                }
                Err(e) => {
                    record.reason = match e {
                        ClassifyError::ClosedEarly => Reason::ClientClosedEarly,
                        ClassifyError::Io(_) => Reason::ClientIoError,
                    };
                    record.duration = started.elapsed();
                    return record;
                }
            }
        };
        let decision = decide(port.policy.mode, &sniffed, port.policy.http_alpn);
        record.action = decision.action;
        record.reason = decision.reason;
        let hello = match sniffed {
            Sniffed::Tls(hello) => Some(hello),
            _ => None,
        };
        match (decision.action, hello) {
            (Action::Refuse, hello) => {
                if let Some(hello) = hello {
                    record.note_hello(hello, prefix.len());
                }
                reset(client);
            }
            (Action::Passthrough, hello) => {
                if let Some(hello) = hello {
                    record.note_hello(hello, prefix.len());
                }
                self.connect_and_forward(client, prefix, app, &mut record).await;
            }
            // Boxed: the handshake and the TLS stream are large, and a task is as big as its
            // largest state; only terminated connections should pay for them.
            (Action::Terminate, Some(hello)) => {
                let protocol = port.protocol.protocol;
                Box::pin(self.terminate_and_forward(client, prefix, hello, protocol, app, &mut record)).await
            }
            // decide() terminates only a parsed ClientHello; anything else cannot be handshaken.
            (Action::Terminate, None) => {
                record.action = Action::Refuse;
                record.reason = Reason::HandshakeFailed;
            }
        }
        record.duration = started.elapsed();
        record
    }

    /// The mTLS handshake with the configuration that fits the client's ALPN list and the app's
    /// protocol, then the decrypted stream to the app.
    async fn terminate_and_forward(
        &self,
        client: TcpStream,
        prefix: Vec<u8>,
        hello: ClientHello,
        protocol: AppProtocol,
        app: SocketAddr,
        record: &mut Record,
    ) {
        let tls = self.store.tls();
        let handshake_started = Instant::now();
        let hello_size = prefix.len();
        let handshake = terminate(
            client,
            prefix,
            &hello.alpn,
            protocol,
            &tls.acceptors,
            self.limits.handshake_timeout,
        )
        .await;
        drop(tls);
        let details = record.note_hello(hello, hello_size);
        details.resumption_declined = handshake.declined;
        match handshake.result {
            Ok(terminated) => {
                details.handshake_time = Some(handshake_started.elapsed());
                details.resumed = terminated.peer.resumed;
                details.peer = Some(terminated.peer.id);
                details.negotiated_alpn = terminated.alpn;
                self.connect_and_forward(terminated.stream, Vec::new(), app, record)
                    .await;
            }
            Err(reason) => {
                record.action = Action::Refuse;
                record.reason = reason;
            }
        }
    }

    /// Connects to the app, replays `prefix`, then copies both ways.
    async fn connect_and_forward<C>(&self, mut client: C, prefix: Vec<u8>, app: SocketAddr, record: &mut Record)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let source = net::upstream_source(app.ip());
        let mut upstream = match net::connect_upstream(app, source, self.limits.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%app, error = %e, "connecting to the app failed");
                record.action = Action::Refuse;
                record.reason = Reason::UpstreamConnectFailed;
                return;
            }
        };
        if !prefix.is_empty() {
            if let Err(e) = upstream.write_all(&prefix).await {
                tracing::debug!(%app, error = %e, "replaying the first bytes to the app failed");
                record.reason = Reason::UpstreamConnectFailed;
                record.action = Action::Refuse;
                return;
            }
        }
        let replayed = prefix.len() as u64;
        drop(prefix);
        let transferred = forward(&mut client, &mut upstream, self.limits.idle_timeout).await;
        record.to_app = replayed + transferred.to_app;
        record.to_client = transferred.to_client;
        record.end = Some(transferred.end);
    }
}

/// Closes a refused connection with a reset rather than a FIN, as Envoy does when no filter
/// chain matches: the client learns at once that nothing is there (curl exits 56), instead of
/// seeing an empty but orderly reply.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
}
