//! The one record every connection ends in (PRODUCT.md §2.7): logged once, counted once.

use std::fmt;
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
        // Fields are Display wrappers, formatted only if the access log is enabled at all.
        let tls = self.tls.as_deref();
        tracing::info!(
            target: "peerguard::access",
            source = %self.source,
            port = self.workload_port,
            mode = %self.mode.map_or("-", MtlsMode::as_str),
            policy = %OrDash(self.policy.as_deref()),
            action = %self.action.as_str(),
            reason = %self.reason.as_str(),
            sni = %OrDash(tls.and_then(|t| t.sni.as_deref())),
            alpn = %AlpnList(tls.map_or(&[][..], |t| &t.alpn)),
            negotiated_alpn = %AlpnList(tls.and_then(|t| t.negotiated_alpn.as_ref()).map_or(&[][..], std::slice::from_ref)),
            peer = %OrDash(tls.and_then(|t| t.peer.as_ref())),
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

/// `h2,http/1.1`: ALPN IDs in the client's order, lossy where not UTF-8; `-` for none.
struct AlpnList<'a>(&'a [Vec<u8>]);

impl fmt::Display for AlpnList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, protocol) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&String::from_utf8_lossy(protocol))?;
        }
        Ok(())
    }
}

/// A value, or `-` when there is none, as every absent access-log field reads.
struct OrDash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}
