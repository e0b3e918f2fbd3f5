//! One connection, start to finish, as the spec reads: resolve the port's mode -> classify the
//! first bytes -> decide -> terminate, forward or refuse -> one record. Each stage returns its
//! piece; [`DataPath::stages`] puts them together, so one function says why a connection ended.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::Limits;
use crate::inbound::classify::{classify, Classified, ClassifyError, SniffLimits, Sniffed};
use crate::inbound::cut::Cut;
use crate::inbound::decide::{decide, reads_first_bytes};
use crate::inbound::forward::{forward, Endpoint};
use crate::inbound::terminate::terminate;
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
}

impl DataPath {
    /// Serves one accepted connection whose app is at `app` (the workload port is its port)
    /// and returns its record. Debug lines inside it carry a span naming the connection.
    pub async fn serve(&self, client: TcpStream, source: SocketAddr, target: Target) -> Record {
        let started = Instant::now();
        let app = target.app;
        let policy = self.store.policy();
        let port = policy.port(app.port());
        let span = tracing::debug_span!("connection", %source, port = app.port(), mode = port.policy.mode.as_str());
        let who = Who {
            source,
            target,
            authorizer: &policy.authorizer,
        };
        let stages = self.stages(client, who, port).instrument(span);
        tokio::pin!(stages);
        let ended = tokio::select! {
            ended = &mut stages => ended,
            // A connection that is forwarding sees the cut itself and ends with its bytes
            // counted: polled once more now, it does (in the poll that woke this branch it may
            // have come first). One still before the app (sniffing, handshaking, connecting)
            // stays pending and ends here.
            () = self.cut.wait() => match poll_once(stages.as_mut()).await {
                Some(ended) => ended,
                None => Ended::refused(Reason::Drained),
            },
        };
        let applied = Some((port.policy.mode, port.label.clone()));
        Record::new(source, app.port(), applied, ended, started.elapsed())
    }

    /// classify -> decide -> refuse, or authorize then forward, or terminate then authorize
    /// then forward.
    async fn stages(&self, mut client: TcpStream, who: Who<'_>, port: &PortMode) -> Ended {
        let app = who.target.app;
        let mode = port.policy.mode;
        let classified = if reads_first_bytes(mode) {
            match classify(&mut client, self.sniff_limits()).await {
                Ok(classified) => classified,
                Err(ClassifyError::ClosedEarly) => return Ended::refused(Reason::ClientClosedEarly),
                Err(ClassifyError::Io(_)) => return Ended::refused(Reason::ClientIoError),
            }
        } else {
            Classified::not_read()
        };
        // Taken apart here so that only its small pieces stay in this future's state while the
        // connection forwards: an idle connection is as big as what its task holds.
        let decision = decide(mode, &classified.sniffed, port.policy.http_alpn);
        let read_opening = classified.sniffed.opening();
        let (sniff_time, prefix, mut tls) = split(classified);
        let mut authorization = None;
        let reached_app = match (decision.action, tls.as_deref_mut()) {
            (Action::Refuse, _) => {
                reset(&client);
                Err(decision.reason)
            }
            // No identity: plaintext, the app's own TLS, or anything on a DISABLE port.
            (Action::Passthrough, tls) => {
                authorization = who.authorize(None, tls.and_then(|t| t.sni.as_deref()), &client);
                if denied(&authorization) {
                    reset(&client);
                    Err(Reason::DeniedByPolicy)
                } else {
                    self.forward_to_app(client, prefix, app).await
                }
            }
            // Boxed: the handshake and the TLS stream are large, and a task is as big as its
            // largest state; only terminated connections should pay for them.
            (Action::Terminate, Some(tls)) => {
                let terminate = self.terminate_then_forward(client, prefix, tls, port.protocol.protocol, &who);
                let (reached_app, verdict) = Box::pin(terminate).await;
                authorization = verdict;
                reached_app
            }
            // decide() terminates only a parsed ClientHello; anything else cannot be handshaken.
            (Action::Terminate, None) => Err(Reason::HandshakeFailed),
        };
        // A port that forwards before reading (DISABLE) learns how the client opened from the
        // copy loop.
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

    fn sniff_limits(&self) -> SniffLimits {
        SniffLimits {
            max_client_hello: self.limits.max_client_hello,
            timeout: self.limits.sniff_timeout,
        }
    }

    /// The mTLS handshake with the configuration that fits the client's ALPN list and the app's
    /// protocol (what it found goes into `tls`), then the peer's authorization, then the
    /// decrypted stream to the app.
    async fn terminate_then_forward(
        &self,
        client: TcpStream,
        prefix: Vec<u8>,
        tls: &mut TlsRecord,
        protocol: AppProtocol,
        who: &Who<'_>,
    ) -> (Result<Transferred, Reason>, Option<Box<Verdict>>) {
        let credentials = self.store.tls();
        let started = Instant::now();
        let handshake = terminate(
            client,
            prefix,
            &tls.alpn,
            protocol,
            &credentials.acceptors,
            self.limits.handshake_timeout,
        )
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
        let tcp = terminated.stream.get_ref().0.get_ref();
        let verdict = who.authorize(Some(&terminated.peer.id), tls.sni.as_deref(), tcp);
        tls.peer = Some(terminated.peer.id);
        if denied(&verdict) {
            reset(tcp);
            return (Err(Reason::DeniedByPolicy), verdict);
        }
        (
            self.forward_to_app(terminated.stream, Vec::new(), who.target.app).await,
            verdict,
        )
    }

    /// Connects to the app, replays `prefix`, then copies both ways until done or cut.
    async fn forward_to_app<C: Endpoint>(
        &self,
        mut client: C,
        prefix: Vec<u8>,
        app: SocketAddr,
    ) -> Result<Transferred, Reason> {
        let source = net::upstream_source(app.ip());
        let mut upstream = net::connect_upstream(app, source, self.limits.connect_timeout)
            .await
            .map_err(|e| {
                tracing::debug!(%app, error = %e, "connecting to the app failed");
                Reason::UpstreamConnectFailed
            })?;
        replay(&mut upstream, &prefix).await?;
        let replayed = prefix.len() as u64;
        drop(prefix);
        let transferred = forward(
            &mut client,
            &mut upstream,
            self.limits.idle_timeout,
            std::pin::pin!(self.cut.wait()),
        )
        .await;
        Ok(Transferred {
            to_app: replayed + transferred.to_app,
            ..transferred
        })
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

/// Who a connection is from and to, for authorization.
struct Who<'a> {
    source: SocketAddr,
    target: Target,
    authorizer: &'a Authorizer,
}

impl Who<'_> {
    /// The verdict for a peer (`None`: no identity) that sent `sni`; `None` when no
    /// AuthorizationPolicy applies to the workload (nothing to decide or record).
    fn authorize(&self, peer: Option<&SpiffeId>, sni: Option<&str>, client: &TcpStream) -> Option<Box<Verdict>> {
        if self.authorizer.is_empty() {
            return None;
        }
        // A wildcard listener's address is the socket's; asked only here, where it matters.
        let destination_ip = self
            .target
            .destination
            .or_else(|| client.local_addr().ok().map(|local| local.ip()));
        let verdict = self.authorizer.verdict(&ConnectionFacts {
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

/// Polls `future` once: its output if it is ready now.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
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
