//! The one record every connection ends in (PRODUCT.md §2.7): logged once, counted once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::inbound::forward::End;
use crate::inbound::outcome::{Action, Reason};
use crate::policy::MtlsMode;
use crate::tls::client_hello::ClientHello;
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
    pub to_app: u64,
    pub to_client: u64,
    /// How the byte copying ended, for connections that reached the app.
    pub end: Option<End>,
    pub sniff_time: Option<Duration>,
    pub duration: Duration,
    /// What TLS brought, for connections that began with a ClientHello. Boxed: the record
    /// lives as long as its connection, and a plaintext connection idling for hours should not
    /// carry room for TLS details.
    pub tls: Option<Box<TlsRecord>>,
}

/// The TLS side of a record.
#[derive(Debug, Clone, Default)]
pub struct TlsRecord {
    pub sni: Option<String>,
    /// ALPN protocol IDs as offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// Size of the ClientHello read while classifying.
    pub client_hello_bytes: usize,
    /// The ALPN protocol selected when peerguard terminated TLS.
    pub negotiated_alpn: Option<Vec<u8>>,
    pub peer: Option<SpiffeId>,
    pub handshake_time: Option<Duration>,
}

impl Record {
    /// A connection that is refused for `reason` unless what follows says otherwise.
    pub fn refused(source: SocketAddr, workload_port: u16, reason: Reason) -> Self {
        Record {
            source,
            workload_port,
            mode: None,
            policy: None,
            action: Action::Refuse,
            reason,
            to_app: 0,
            to_client: 0,
            end: None,
            sniff_time: None,
            duration: Duration::ZERO,
            tls: None,
        }
    }

    /// Keeps what the ClientHello (of `size` bytes) offered, for the log and the metrics.
    pub fn note_hello(&mut self, hello: ClientHello, size: usize) -> &mut TlsRecord {
        self.tls.insert(Box::new(TlsRecord {
            sni: hello.sni,
            alpn: hello.alpn,
            client_hello_bytes: size,
            ..TlsRecord::default()
        }))
    }

    /// Writes the access-log line (target `peerguard::access`).
    pub fn log(&self) {
        let tls = self.tls.as_deref();
        let alpn = tls.map(|t| join_alpns(&t.alpn)).unwrap_or_default();
        tracing::info!(
            target: "peerguard::access",
            source = %self.source,
            port = self.workload_port,
            mode = %self.mode.map_or("-", MtlsMode::as_str),
            policy = %self.policy.as_deref().unwrap_or("-"),
            action = %self.action.as_str(),
            reason = %self.reason.as_str(),
            sni = %tls.and_then(|t| t.sni.as_deref()).unwrap_or("-"),
            alpn = %if alpn.is_empty() { "-" } else { alpn.as_str() },
            negotiated_alpn = %tls.and_then(|t| t.negotiated_alpn.as_deref()).map(String::from_utf8_lossy).unwrap_or("-".into()),
            peer = %tls.and_then(|t| t.peer.as_ref()).map_or_else(|| "-".to_string(), ToString::to_string),
            bytes_to_app = self.to_app,
            bytes_to_client = self.to_client,
            end = %self.end.map_or("-", End::as_str),
            client_hello_bytes = tls.map_or(0, |t| t.client_hello_bytes),
            sniff_ms = self.sniff_time.map_or(0.0, millis),
            handshake_ms = tls.and_then(|t| t.handshake_time).map_or(0.0, millis),
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
