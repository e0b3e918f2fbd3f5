//! Both sides of a Service port, for `tls-check`: the server's mode from the Service's workload
//! (§1, through the same `PolicySet::resolve` as `check` and the proxy) and the client's TLS
//! from the DestinationRules.

use super::model::CLUSTER_DOMAIN;
use super::resolve::{client_rule, ClientRule, Lookup};
use super::status::{status, TlsStatus};
use crate::policy::service::Service;
use crate::policy::{PolicySet, PortPolicy, ProtocolOverrides, Workload};

/// What `tls-check` asks: who the client is and which Service ports.
#[derive(Debug, Clone)]
pub struct TlsQuery {
    pub client_namespace: String,
    pub root_namespace: String,
    pub auto_mtls: bool,
    /// `None`: every Service port of the set.
    pub host: Option<String>,
    /// `None`: every port of the host.
    pub port: Option<u16>,
}

/// One Service port, both sides and whether they agree.
#[derive(Debug, Clone)]
pub struct TlsPair {
    pub host: String,
    pub port: u16,
    /// The workload port the Service sends it to; `None` for a named `targetPort`.
    pub target: Option<u16>,
    pub server: PortPolicy,
    pub client: Option<ClientRule>,
    pub status: TlsStatus,
}

/// The query names a host or port that no Service in the set has.
#[derive(Debug, thiserror::Error)]
#[error("no Service in the policy set has {0} (hosts are `name.namespace.svc.{CLUSTER_DOMAIN}`)")]
pub struct UnknownServicePort(pub String);

impl PolicySet {
    /// Every Service port the query names, sorted by host then port.
    pub fn tls_check(&self, query: &TlsQuery) -> Result<Vec<TlsPair>, UnknownServicePort> {
        let mut pairs: Vec<TlsPair> = self
            .services()
            .iter()
            .filter(|service| query.host.as_deref().is_none_or(|host| host == fqdn(service)))
            .flat_map(|service| {
                service
                    .ports
                    .iter()
                    .filter(|port| query.port.is_none_or(|p| p == port.port))
                    .map(move |port| self.pair(query, service, port.port, port.target))
            })
            .collect();
        if pairs.is_empty() && query.host.is_some() {
            let mut asked = query.host.clone().unwrap_or_default();
            if let Some(port) = query.port {
                asked = format!("{asked}:{port}");
            }
            return Err(UnknownServicePort(asked));
        }
        pairs.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        Ok(pairs)
    }

    fn pair(&self, query: &TlsQuery, service: &Service, port: u16, target: Option<u16>) -> TlsPair {
        let host = fqdn(service);
        let workload = Workload {
            namespace: service.meta.namespace.clone(),
            labels: service.selector.clone(),
            root_namespace: query.root_namespace.clone(),
        };
        // A named targetPort needs the pod spec to map: resolve a port no policy names.
        let workload_port = target.unwrap_or_else(|| {
            self.resolve_ports(&workload, &ProtocolOverrides::default())
                .unnamed_port
        });
        let server = self.resolve(&workload, workload_port);
        let client = client_rule(
            self.destination_rules(),
            &Lookup {
                client_namespace: &query.client_namespace,
                host: &host,
                service_namespace: &service.meta.namespace,
                root_namespace: &query.root_namespace,
                port,
            },
        );
        let status = status(server.mode, client.as_ref().and_then(|c| c.tls), query.auto_mtls);
        TlsPair {
            host,
            port,
            target,
            server,
            client,
            status,
        }
    }
}

fn fqdn(service: &Service) -> String {
    format!("{}.{}.svc.{CLUSTER_DOMAIN}", service.meta.name, service.meta.namespace)
}
