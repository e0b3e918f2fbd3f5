//! The one record every connection ends in (PRODUCT.md §2.7): logged once, counted once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::inbound::forward::End;
use crate::inbound::outcome::{Action, Reason};
use crate::policy::MtlsMode;
use crate::tls::identity::SpiffeId;

/// Everything known about one finished connection.
#[derive(Debug, Clone)]
pub struct Record {
    pub source: SocketAddr,
    pub workload_port: u16,
    /// `None` when the connection was refused before a mode applied (its own port).
    pub mode: Option<MtlsMode>,
    /// Which policy set the mode, pre-formatted once per policy generation.
    pub policy: Option<Arc<str>>,
    pub action: Action,
    pub reason: Reason,
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    /// The ALPN protocol selected when peerguard terminated TLS.
    pub negotiated_alpn: Option<Vec<u8>>,
    pub peer: Option<SpiffeId>,
    pub to_app: u64,
    pub to_client: u64,
    /// How the byte copying ended, for connections that reached the app.
    pub end: Option<End>,
    /// Size of the ClientHello read while classifying (TLS connections).
    pub client_hello_bytes: Option<usize>,
    pub sniff_time: Option<Duration>,
    pub handshake_time: Option<Duration>,
    pub duration: Duration,
}

impl Record {
    /// A record for a connection that has only just been accepted: refused, nothing moved.
    pub fn new(source: SocketAddr, workload_port: u16) -> Self {
        Record {
            source,
            workload_port,
            mode: None,
            policy: None,
            action: Action::Refuse,
            reason: Reason::OwnPort,
            sni: None,
            alpn: Vec::new(),
            negotiated_alpn: None,
            peer: None,
            to_app: 0,
            to_client: 0,
            end: None,
            client_hello_bytes: None,
            sniff_time: None,
            handshake_time: None,
            duration: Duration::ZERO,
        }
    }

    /// Writes the access-log line (target `peerguard::access`).
    pub fn log(&self) {
        let alpn = join_alpns(&self.alpn);
        tracing::info!(
            target: "peerguard::access",
            source = %self.source,
            port = self.workload_port,
            mode = %self.mode.map_or("-", MtlsMode::as_str),
            policy = %self.policy.as_deref().unwrap_or("-"),
            action = %self.action.as_str(),
            reason = %self.reason.as_str(),
            sni = %self.sni.as_deref().unwrap_or("-"),
            alpn = %if alpn.is_empty() { "-" } else { alpn.as_str() },
            negotiated_alpn = %self.negotiated_alpn.as_deref().map(String::from_utf8_lossy).unwrap_or("-".into()),
            peer = %self.peer.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
            bytes_to_app = self.to_app,
            bytes_to_client = self.to_client,
            end = %self.end.map_or("-", End::as_str),
            client_hello_bytes = self.client_hello_bytes.unwrap_or(0),
            sniff_ms = self.sniff_time.map_or(0.0, millis),
            handshake_ms = self.handshake_time.map_or(0.0, millis),
            duration_ms = millis(self.duration),
            "connection"
        );
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `h2,http/1.1`: ALPN IDs as the client offered them, lossy where not UTF-8.
pub fn join_alpns(alpns: &[Vec<u8>]) -> String {
    alpns
        .iter()
        .map(|p| String::from_utf8_lossy(p))
        .collect::<Vec<_>>()
        .join(",")
}
