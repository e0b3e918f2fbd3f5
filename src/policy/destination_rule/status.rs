//! STATUS: whether the client's TLS and the server's mode agree (docs/tls-check.md), after Istio
//! 1.4's `EvaluateTLSState`, except that with auto mTLS off a client without TLS settings is
//! judged as the plaintext it sends (Istio 1.4 said OK there, and the traffic failed).

use serde::Serialize;

use super::model::ClientTls;
use crate::policy::MtlsMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsStatus {
    Ok,
    Conflict,
    /// No rule sets TLS and auto mTLS picks what the server accepts.
    Auto,
}

impl TlsStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsStatus::Ok => "OK",
            TlsStatus::Conflict => "CONFLICT",
            TlsStatus::Auto => "AUTO",
        }
    }
}

/// The STATUS of one Service port.
pub fn status(server: MtlsMode, client: Option<ClientTls>, auto_mtls: bool) -> TlsStatus {
    let client = match client {
        Some(client) => client,
        None if auto_mtls => return TlsStatus::Auto,
        None => ClientTls::Disable,
    };
    let agree = matches!(
        (server, client),
        (MtlsMode::Strict, ClientTls::IstioMutual)
            | (MtlsMode::Permissive, ClientTls::IstioMutual | ClientTls::Disable)
            | (MtlsMode::Disable, ClientTls::Disable)
    );
    if agree {
        TlsStatus::Ok
    } else {
        TlsStatus::Conflict
    }
}
