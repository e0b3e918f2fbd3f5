//! The one record every connection ends in (docs/connections.md#reasons): logged once, counted
//! once.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::outcome::client_text::{ClientList, ClientText, LogStyle};
use crate::outcome::{Action, End, Opening, Reason, Transferred};
use crate::policy::authorization::{Decider, Verdict};
use crate::policy::MtlsMode;
use crate::tls::client_hello::ClientHello;
use crate::tls::identity::SpiffeId;
use crate::tls::sessions::Declined;

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
    /// How the client opened the connection: what STRICT would have judged it by.
    pub opening: Opening,
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
    /// The AuthorizationPolicy verdict, when policies apply to the workload. Boxed for the same
    /// reason as `tls`.
    pub authorization: Option<Box<Verdict>>,
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
    /// The handshake resumed an earlier session (its certificate verified back then).
    pub resumed: bool,
    /// A resumption the client asked for and was refused, so it had a full handshake.
    pub resumption_declined: Option<Declined>,
    pub handshake_time: Option<Duration>,
}

/// What a connection's stages came to: each stage returns its piece, and the connection puts
/// them together here, in one place.
#[derive(Debug, Clone)]
pub struct Ended {
    pub action: Action,
    pub reason: Reason,
    pub opening: Opening,
    /// Time spent waiting for and reading the first bytes, when they were read.
    pub sniff_time: Option<Duration>,
    pub tls: Option<Box<TlsRecord>>,
    /// What crossed the proxy, for connections that reached the app.
    pub transfer: Option<Transferred>,
    pub authorization: Option<Box<Verdict>>,
}

impl Ended {
    /// Refused for `reason` before anything was read or sent.
    pub fn refused(reason: Reason) -> Self {
        Ended {
            action: Action::Refuse,
            reason,
            opening: Opening::Unseen,
            sniff_time: None,
            tls: None,
            transfer: None,
            authorization: None,
        }
    }
}

impl TlsRecord {
    /// What a ClientHello of `size` bytes offered.
    pub fn offered(hello: ClientHello, size: usize) -> Box<Self> {
        Box::new(TlsRecord {
            sni: hello.sni,
            alpn: hello.alpn,
            client_hello_bytes: size,
            ..TlsRecord::default()
        })
    }
}

impl Record {
    /// The record of a connection to `workload_port` from `source`, whose `mode` was set by
    /// `policy` (both `None` when refused before a mode applied), that `ended` so after
    /// `duration`.
    pub fn new(
        source: SocketAddr,
        workload_port: u16,
        applied: Option<(MtlsMode, Arc<str>)>,
        ended: Ended,
        duration: Duration,
    ) -> Self {
        let (mode, policy) = applied.unzip();
        let transfer = ended.transfer;
        Record {
            source,
            workload_port,
            mode,
            policy,
            action: ended.action,
            reason: ended.reason,
            opening: ended.opening,
            to_app: transfer.map_or(0, |t| t.to_app),
            to_client: transfer.map_or(0, |t| t.to_client),
            end: transfer.map(|t| t.end),
            sniff_time: ended.sniff_time,
            duration,
            tls: ended.tls,
            authorization: ended.authorization,
        }
    }

    /// Writes the access-log line (target `peerguard::access`) in `style`.
    pub fn log(&self, style: LogStyle) {
        // Fields are Display wrappers, formatted only if the access log is enabled at all.
        // What the client sent (SNI, ALPN) is escaped: it must not forge lines or fields.
        let tls = self.tls.as_deref();
        let authz = self.authorization.as_deref();
        let sni = tls.and_then(|t| t.sni.as_deref()).map(|sni| ClientText {
            bytes: sni.as_bytes(),
            style,
        });
        tracing::info!(
            target: "peerguard::access",
            source = %self.source,
            port = self.workload_port,
            mode = %self.mode.map_or("-", MtlsMode::as_str),
            policy = %OrDash(self.policy.as_deref()),
            action = %self.action.as_str(),
            reason = %self.reason.as_str(),
            sni = %OrDash(sni),
            alpn = %ClientList { items: tls.map_or(&[][..], |t| &t.alpn), style },
            negotiated_alpn = %OrDash(tls.and_then(|t| t.negotiated_alpn.as_deref()).map(String::from_utf8_lossy)),
            peer = %OrDash(tls.and_then(|t| t.peer.as_ref())),
            resumed = tls.is_some_and(|t| t.resumed),
            resumption_declined = %tls.and_then(|t| t.resumption_declined).map_or("-", Declined::as_str),
            authz = %authz.map_or("-", |v| if v.allowed { "allow" } else { "deny" }),
            authz_policy = %OrDash(authz.and_then(|v| v.decider.as_ref()).map(DeciderText)),
            authz_reason = %authz.map_or("-", |v| v.reason.as_str()),
            authz_dry_run = %OrDash(authz.filter(|v| v.dry_run().next().is_some()).map(DryRunText)),
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

/// `namespace/name#rule`: the policy and rule that decided.
struct DeciderText<'a>(&'a Decider);

impl fmt::Display for DeciderText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.0.policy, self.0.rule)
    }
}

/// What the dry-run policies would have done, DENY's then ALLOW's: `deny:ns/name#0`,
/// `allow:-` (no dry-run rule matched), joined by `,`.
struct DryRunText<'a>(&'a Verdict);

impl fmt::Display for DryRunText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, shadow) in self.0.dry_run().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let verdict = if shadow.allowed { "allow" } else { "deny" };
            write!(f, "{verdict}:{}", OrDash(shadow.decider.as_ref().map(DeciderText)))?;
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;
    use crate::outcome::client_text::unescape;

    /// The access-log lines `record` writes in the text format.
    fn text_lines(record: &Record) -> Vec<String> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || SharedBuffer(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || record.log(LogStyle::Text));
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(str::to_owned).collect()
    }

    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `key=value` fields after the message, a quoted value read up to its unescaped quote.
    fn fields(line: &str) -> Vec<(String, String)> {
        let rest = &line[line.find(" connection ").expect("the access-log message") + 12..];
        let mut fields = Vec::new();
        let mut chars = rest.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                value.push(chars.next().unwrap());
                while let Some(c) = chars.next() {
                    value.push(c);
                    match c {
                        '\\' => value.push(chars.next().expect("an escape is complete")),
                        '"' => break,
                        _ => {}
                    }
                }
                assert!(
                    matches!(chars.next(), None | Some(' ')),
                    "a field ends at its quote: {line}"
                );
            } else {
                value = chars.by_ref().take_while(|c| *c != ' ').collect();
            }
            fields.push((key, value));
        }
        fields
    }

    fn unquote(value: &str) -> &str {
        value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .expect("a quoted value")
    }

    fn hostile_record(sni: Option<&str>, alpn: Vec<Vec<u8>>) -> Record {
        let ended = Ended {
            tls: Some(Box::new(TlsRecord {
                sni: sni.map(str::to_owned),
                alpn,
                ..TlsRecord::default()
            })),
            ..Ended::refused(Reason::PlaintextOnStrict)
        };
        Record::new("127.0.0.9:40000".parse().unwrap(), 8080, None, ended, Duration::ZERO)
    }

    /// One line; each field once; `alpn` and `sni` read back to what the client sent.
    fn assert_one_honest_line(record: &Record) {
        let lines = text_lines(record);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        let fields = fields(&lines[0]);
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        let expected = [
            "source",
            "port",
            "mode",
            "policy",
            "action",
            "reason",
            "sni",
            "alpn",
            "negotiated_alpn",
            "peer",
            "resumed",
            "resumption_declined",
            "authz",
            "authz_policy",
            "authz_reason",
            "authz_dry_run",
            "bytes_to_app",
            "bytes_to_client",
            "end",
            "client_hello_bytes",
            "sniff_ms",
            "handshake_ms",
            "duration_ms",
        ];
        assert_eq!(keys, expected, "{}", lines[0]);
        let value = |key: &str| &fields.iter().find(|(k, _)| k == key).unwrap().1;
        assert_eq!(value("reason"), "plaintext_on_strict");
        assert_eq!(value("peer"), "-");
        let tls = record.tls.as_deref().unwrap();
        match &tls.sni {
            Some(sni) => assert_eq!(unescape(unquote(value("sni"))).unwrap(), sni.as_bytes()),
            None => assert_eq!(value("sni"), "-"),
        }
        if tls.alpn.is_empty() {
            assert_eq!(value("alpn"), "-");
        } else {
            let entries: Vec<Vec<u8>> = unquote(value("alpn"))
                .split(',')
                .map(|entry| unescape(entry).unwrap())
                .collect();
            assert_eq!(entries, tls.alpn);
        }
    }

    #[test]
    fn a_hostile_alpn_or_sni_cannot_forge_lines_or_fields() {
        let forged_line = b"x\n2026-01-01T00:00:00Z INFO peerguard::access: connection action=terminate reason=mtls \
            peer=spiffe://cluster.local/ns/istio-system/sa/admin";
        for alpn in [
            forged_line.to_vec(),
            b"x reason=mtls peer=spiffe://cluster.local/ns/istio-system/sa/admin".to_vec(),
            b"quote\" back\\slash".to_vec(),
            b"\x1b[2J\x1b[31mred".to_vec(),
            b"\xff\xfe\x00".to_vec(),
            b"a,b".to_vec(),
        ] {
            assert_one_honest_line(&hostile_record(None, vec![alpn, b"h2".to_vec()]));
        }
        for sni in ["a\nb reason=mtls", "x\" peer=\"y", "\u{1b}[0m", "é.example"] {
            assert_one_honest_line(&hostile_record(Some(sni), Vec::new()));
        }
    }

    proptest! {
        #[test]
        fn any_alpn_bytes_give_one_line_that_reads_back(
            alpn in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..32), 0..4),
            sni in proptest::option::of(".{0,24}"),
        ) {
            assert_one_honest_line(&hostile_record(sni.as_deref(), alpn));
        }
    }
}
