//! One connection, start to finish, as the spec reads: resolve the port's mode -> classify the
//! first bytes -> decide -> terminate, forward or refuse -> one record. Each stage returns its
//! piece; [`DataPath::stages`] puts them together, so one function says why a connection ended.

// The stages are plain fns returning async blocks on purpose (see `DataPath::serve`): an
// `async fn` would keep its arguments twice in every connection's state.
#![allow(clippy::manual_async_fn)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::Limits;
use crate::inbound::classify::{classify, Classified, ClassifyError, SniffLimits, Sniffed};
use crate::inbound::cut::Cut;
use crate::inbound::decide::{decide, reads_first_bytes};
use crate::inbound::forward::{forward, Endpoint};
use crate::inbound::terminate::terminate;
use crate::metrics::Metrics;
use crate::net;
use crate::outcome::client_text::LogStyle;
use crate::outcome::record::{Ended, Record, TlsRecord};
use crate::outcome::{Action, Opening, Reason, Transferred};
use crate::policy::authorization::{Authorizer, ConnectionFacts, Verdict};
use crate::policy::AppProtocol;
use crate::store::{PortMode, Store};
use crate::strict_audit::StrictAudit;
use crate::tls::identity::SpiffeId;

/// What every connection handler shares: the live policy and credentials, the limits, and the
/// signal that cuts what a drain leaves open.
pub struct DataPath {
    pub store: Arc<Store>,
    pub limits: Limits,
    /// How the access log writes what clients sent.
    pub log_style: LogStyle,
    /// Set when the drain deadline has passed: open connections end at once.
    pub cut: Arc<Cut>,
    /// What STRICT would have done to each finished connection.
    pub audit: Arc<StrictAudit>,
    /// Counts connections as they open and end.
    pub metrics: Arc<Metrics>,
}

impl DataPath {
    /// Serves one accepted connection to its end, then writes its record: the access log line,
    /// the metrics and the STRICT audit; the connection's place under the cap is given back
    /// last. Debug lines inside it carry a span naming the connection.
    ///
    /// This and the stages below are plain fns returning async blocks rather than `async fn`s:
    /// an async fn keeps its arguments twice in its state (as arguments, and as the locals they
    /// are moved into), and an idle connection is as big as its task.
    pub fn serve(self: Arc<Self>, accepted: Accepted) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let _active = self.metrics.connection_opened();
            let record = match &accepted.target {
                Ok(target) => {
                    let who = Who {
                        source: &accepted.source,
                        target,
                    };
                    self.serve_target(accepted.client, &who).await
                }
                Err(own_port) => Record::new(
                    accepted.source,
                    *own_port,
                    None,
                    Ended::refused(Reason::OwnPort),
                    Duration::ZERO,
                ),
            };
            record.log(self.log_style);
            self.metrics.connection_ended(&record);
            self.audit.record(&record);
            drop(accepted.permit);
        }
    }

    /// One connection whose app is at `who.target.app` (the workload port is its port), to its
    /// record.
    fn serve_target<'a>(&'a self, client: TcpStream, who: &'a Who<'a>) -> impl Future<Output = Record> + 'a {
        async move {
            let started = Instant::now();
            let workload_port = who.target.app.port();
            let policy = self.store.policy();
            let port = policy.port(workload_port);
            let span = tracing::debug_span!("connection", source = %who.source, port = workload_port, mode = port.policy.mode.as_str());
            let stages = self.stages(client, who, &policy.authorizer, port).instrument(span);
            // A connection that is forwarding sees the cut itself and ends with its bytes
            // counted; one still before the app (sniffing, handshaking, connecting) ends here.
            let ended = self
                .cut
                .unless_cut(stages)
                .await
                .unwrap_or_else(|| Ended::refused(Reason::Drained));
            let applied = Some((port.policy.mode, port.label.clone()));
            Record::new(*who.source, workload_port, applied, ended, started.elapsed())
        }
    }

    /// classify -> decide -> refuse, or authorize then forward, or terminate then authorize
    /// then forward.
    fn stages<'a>(
        &'a self,
        mut client: TcpStream,
        who: &'a Who<'a>,
        authorizer: &'a Authorizer,
        port: &'a PortMode,
    ) -> impl Future<Output = Ended> + 'a {
        async move {
            let mode = port.policy.mode;
            // In a block of its own so that the classification's storage ends here: only its
            // small pieces stay in this future's state while the connection forwards.
            let (decision, read_opening, sniff_time, prefix, mut tls) = {
                let classified = if reads_first_bytes(mode) {
                    match classify(&mut client, self.sniff_limits()).await {
                        Ok(classified) => classified,
                        Err(ClassifyError::ClosedEarly) => return Ended::refused(Reason::ClientClosedEarly),
                        Err(ClassifyError::Io(_)) => return Ended::refused(Reason::ClientIoError),
                    }
                } else {
                    Classified::not_read()
                };
                let decision = decide(mode, &classified.sniffed, port.policy.http_alpn);
                let read_opening = classified.sniffed.opening();
                let (sniff_time, prefix, tls) = split(classified);
                (decision, read_opening, sniff_time, prefix, tls)
            };
            let mut authorization = None;
            let reached_app = match (decision.action, tls.as_deref_mut()) {
                (Action::Refuse, _) => {
                    reset(&client);
                    Err(decision.reason)
                }
                // No identity: plaintext, the app's own TLS, or anything on a DISABLE port.
                (Action::Passthrough, tls) => {
                    authorization = who.authorize(authorizer, None, tls.and_then(|t| t.sni.as_deref()), &client);
                    if denied(&authorization) {
                        reset(&client);
                        Err(Reason::DeniedByPolicy)
                    } else {
                        self.forward_to_app(client, prefix, &who.target.app).await
                    }
                }
                // Boxed: a terminated connection's state (the TLS stream, its authorization) is
                // larger than a passed-through one's, and a task is as big as its largest state;
                // only terminated connections should pay for it.
                (Action::Terminate, Some(tls)) => {
                    let peer = Peer { who, authorizer };
                    let terminate = self.terminate_then_forward(client, prefix, tls, port.protocol.protocol, peer);
                    let (reached_app, verdict) = Box::pin(terminate).await;
                    authorization = verdict;
                    reached_app
                }
                // decide() terminates only a parsed ClientHello; anything else cannot be handshaken.
                (Action::Terminate, None) => Err(Reason::HandshakeFailed),
            };
            // A port that forwards before reading (DISABLE) learns how the client opened from
            // the copy loop.
            let opening = match (&reached_app, read_opening) {
                (Ok(transfer), Opening::Unseen) => transfer.opening,
                _ => read_opening,
            };
            match reached_app {
                Ok(transfer) => Ended {
                    action: decision.action,
                    reason: decision.reason,
                    opening,
                    sniff_time,
                    tls,
                    transfer: Some(transfer),
                    authorization,
                },
                Err(reason) => Ended {
                    opening,
                    sniff_time,
                    tls,
                    authorization,
                    ..Ended::refused(reason)
                },
            }
        }
    }

    fn sniff_limits(&self) -> SniffLimits {
        SniffLimits {
            max_client_hello: self.limits.max_client_hello,
            timeout: self.limits.sniff_timeout,
        }
    }

    /// The mTLS handshake with the configuration that fits the client's ALPN list and the app's
    /// protocol (what it found goes into `tls`), then the peer's authorization, then the
    /// decrypted stream to the app.
    fn terminate_then_forward<'a>(
        &'a self,
        client: TcpStream,
        prefix: Vec<u8>,
        tls: &'a mut TlsRecord,
        protocol: AppProtocol,
        peer: Peer<'a>,
    ) -> impl Future<Output = (Result<Transferred, Reason>, Option<Box<Verdict>>)> + 'a {
        async move {
            // In a block of its own so that the handshake's results, once taken apart, leave
            // this future's state: only the stream and the verdict stay while it forwards.
            let (stream, verdict) = {
                let credentials = self.store.tls();
                let started = Instant::now();
                // Boxed, and so freed once done: the handshake's state is large, and in place
                // it would make the connection as big for its whole life.
                let handshake = Box::pin(terminate(
                    client,
                    prefix,
                    &tls.alpn,
                    protocol,
                    &credentials.acceptors,
                    self.limits.handshake_timeout,
                ))
                .await;
                drop(credentials);
                tls.resumption_declined = handshake.declined;
                let terminated = match handshake.result {
                    Ok(terminated) => terminated,
                    Err(reason) => return (Err(reason), None),
                };
                tls.handshake_time = Some(started.elapsed());
                tls.resumed = terminated.peer.resumed;
                tls.negotiated_alpn = terminated.alpn;
                let tcp = terminated.stream.tcp();
                let verdict = peer
                    .who
                    .authorize(peer.authorizer, Some(&terminated.peer.id), tls.sni.as_deref(), tcp);
                tls.peer = Some(terminated.peer.id);
                if denied(&verdict) {
                    reset(tcp);
                    return (Err(Reason::DeniedByPolicy), verdict);
                }
                (terminated.stream, verdict)
            };
            (
                self.forward_to_app(stream, Vec::new(), &peer.who.target.app).await,
                verdict,
            )
        }
    }

    /// Connects to the app, replays `prefix`, then copies both ways until done or cut.
    fn forward_to_app<'a, C: Endpoint + 'a>(
        &'a self,
        mut client: C,
        prefix: Vec<u8>,
        app: &'a SocketAddr,
    ) -> impl Future<Output = Result<Transferred, Reason>> + 'a {
        async move {
            let source = net::upstream_source(app.ip());
            let mut upstream = net::connect_upstream(*app, source, self.limits.connect_timeout)
                .await
                .map_err(|e| {
                    tracing::debug!(%app, error = %e, "connecting to the app failed");
                    Reason::UpstreamConnectFailed
                })?;
            replay(&mut upstream, &prefix).await?;
            let replayed = prefix.len() as u64;
            let replayed_first = prefix.first().copied();
            drop(prefix);
            let transferred = forward(
                &mut client,
                &mut upstream,
                self.limits.idle_timeout,
                &self.cut,
                replayed_first,
            )
            .await;
            Ok(Transferred {
                to_app: replayed + transferred.to_app,
                ..transferred
            })
        }
    }
}

/// What the rest of a connection needs from its classification: the sniff time, the bytes to
/// replay, and what the ClientHello offered. The ClientHello itself is not kept.
fn split(classified: Classified) -> (Option<Duration>, Vec<u8>, Option<Box<TlsRecord>>) {
    let tls = match classified.sniffed {
        Sniffed::Tls(hello) => Some(TlsRecord::offered(hello, classified.prefix.len())),
        _ => None,
    };
    (classified.elapsed, classified.prefix, tls)
}

/// Writes the bytes read while classifying to the app, first.
async fn replay<W: AsyncWrite + Unpin>(upstream: &mut W, prefix: &[u8]) -> Result<(), Reason> {
    if prefix.is_empty() {
        return Ok(());
    }
    upstream.write_all(prefix).await.map_err(|e| {
        tracing::debug!(error = %e, "replaying the first bytes to the app failed");
        Reason::UpstreamReplayFailed
    })
}

/// Where a connection goes, and the address it was sent to.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The app; the workload port is its port.
    pub app: SocketAddr,
    /// The destination the client dialled: the original destination, or the listener's
    /// address; `None` for a wildcard listener (asked of the socket only when needed).
    pub destination: Option<IpAddr>,
}

/// A connection as the accept loop hands it over.
pub struct Accepted {
    pub client: TcpStream,
    pub source: SocketAddr,
    /// Where it goes, or `Err(port)` when its original destination is peerguard itself.
    pub target: Result<Target, u16>,
    /// Its place under the connection cap, held until its record is written.
    pub permit: OwnedSemaphorePermit,
}

/// Who a connection is from and to, for authorization.
struct Who<'a> {
    source: &'a SocketAddr,
    target: &'a Target,
}

/// What a terminated connection's authorization needs, once its peer is known.
#[derive(Clone, Copy)]
struct Peer<'a> {
    who: &'a Who<'a>,
    authorizer: &'a Authorizer,
}

impl Who<'_> {
    /// The verdict for a peer (`None`: no identity) that sent `sni`; `None` when no
    /// AuthorizationPolicy applies to the workload (nothing to decide or record).
    fn authorize(
        &self,
        authorizer: &Authorizer,
        peer: Option<&SpiffeId>,
        sni: Option<&str>,
        client: &TcpStream,
    ) -> Option<Box<Verdict>> {
        if authorizer.is_empty() {
            return None;
        }
        // A wildcard listener's address is the socket's; asked only here, where it matters.
        let destination_ip = self
            .target
            .destination
            .or_else(|| client.local_addr().ok().map(|local| local.ip()));
        let verdict = authorizer.verdict(&ConnectionFacts {
            peer,
            source_ip: Some(self.source.ip()),
            destination_ip,
            port: self.target.app.port(),
            sni,
        });
        Some(Box::new(verdict))
    }
}

fn denied(verdict: &Option<Box<Verdict>>) -> bool {
    verdict.as_ref().is_some_and(|verdict| !verdict.allowed)
}

/// Closes a refused connection with a reset rather than a FIN, as Envoy does when no filter
/// chain matches: the client learns at once that nothing is there (curl exits 56), instead of
/// seeing an empty but orderly reply.
fn reset(client: &TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_replay_is_its_own_reason() {
        let (mut proxy_side, app_side) = tokio::io::duplex(64);
        drop(app_side);
        assert_eq!(
            replay(&mut proxy_side, b"GET / HTTP/1.1\r\n").await,
            Err(Reason::UpstreamReplayFailed)
        );
        assert_eq!(
            replay(&mut proxy_side, b"").await,
            Ok(()),
            "nothing to replay, nothing to fail"
        );
    }
}
