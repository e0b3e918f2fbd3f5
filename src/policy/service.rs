//! Kubernetes `Service` (`v1`): which workloads it selects, how its ports map to workload ports,
//! what protocol each port declares (`appProtocol`, name), and the Istio 0.3
//! `auth.istio.io/<service-port>` annotation.

use std::collections::BTreeMap;

use crate::policy::document::{parse_labels, FieldWarning, Meta};
use crate::policy::error::{Concern, Problem};
use crate::policy::legacy_policy::PortSelector;
use crate::policy::node::{parse_port, FieldResult, Node};
use crate::policy::MtlsMode;

const AUTH_ANNOTATION_PREFIX: &str = "auth.istio.io/";

/// Every field of Kubernetes' ServiceSpec, read or not (`topologyKeys` as older servers print
/// it): a Service is a core kind, and `kubectl get -o yaml` output must load as is.
const SERVICE_SPEC_FIELDS: &[&str] = &[
    "ports",
    "selector",
    "clusterIP",
    "clusterIPs",
    "type",
    "externalIPs",
    "sessionAffinity",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "ipFamilies",
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
    "trafficDistribution",
    "topologyKeys",
];

/// Every field of Kubernetes' ServicePort.
const SERVICE_PORT_FIELDS: &[&str] = &["name", "protocol", "appProtocol", "port", "targetPort", "nodePort"];

/// One validated Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    pub meta: Meta,
    /// `spec.selector`; empty selects no pod (Kubernetes' rule for selector-less Services).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// Istio 0.3 annotations with an opinion, by *workload* port (`INHERIT` has none).
    pub annotated: BTreeMap<u16, MtlsMode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePort {
    pub port: u16,
    pub name: Option<String>,
    /// The workload port; `None` for a named targetPort, which needs the pod spec to map.
    pub target: Option<u16>,
    /// `appProtocol`, as written; it beats the name when Istio reads the port's protocol.
    pub app_protocol: Option<String>,
}

impl Service {
    pub fn parse(root: &Node, meta: Meta, warnings: &mut Vec<FieldWarning>) -> FieldResult<Self> {
        let spec = root.get("spec")?;
        if let Some(spec) = &spec {
            spec.known_fields(SERVICE_SPEC_FIELDS)?;
        }
        let (selector, ports) = match &spec {
            Some(spec) => (
                match spec.get("selector")? {
                    Some(selector) => parse_labels(&selector)?,
                    None => BTreeMap::new(),
                },
                match spec.get("ports")? {
                    Some(ports) => parse_ports(&ports, warnings)?,
                    None => Vec::new(),
                },
            ),
            None => (BTreeMap::new(), Vec::new()),
        };
        let mut annotated = BTreeMap::new();
        if let Some(annotations) = root.require("metadata")?.get("annotations")? {
            for (key, value) in annotations.entries()? {
                let Some(port) = key.strip_prefix(AUTH_ANNOTATION_PREFIX) else {
                    continue;
                };
                let service_port = parse_port(port).ok_or_else(|| {
                    value.error(Problem::BadPort {
                        value: format!("{port:?}"),
                    })
                })?;
                let opinion = value.one_of(
                    &[
                        ("MUTUAL_TLS", Some(MtlsMode::Strict)),
                        ("NONE", Some(MtlsMode::Disable)),
                        ("INHERIT", None),
                    ],
                    "NONE, MUTUAL_TLS, INHERIT",
                )?;
                let Some(mode) = opinion else { continue };
                match ports.iter().find(|p| p.port == service_port) {
                    // A named targetPort was already warned about; it maps to nothing.
                    Some(ServicePort {
                        target: Some(target), ..
                    }) => {
                        annotated.insert(*target, mode);
                    }
                    Some(_) => {}
                    None => warnings.push(FieldWarning {
                        path: value.path.clone(),
                        concern: Concern::AnnotationPortNotInService { port: service_port },
                    }),
                }
            }
        }
        Ok(Service {
            meta,
            selector,
            ports,
            annotated,
        })
    }

    /// Whether this Service's pods include the workload: same namespace, non-empty selector.
    pub fn selects(&self, workload: &crate::policy::Workload) -> bool {
        self.meta.namespace == workload.namespace
            && !self.selector.is_empty()
            && crate::policy::document::selects(&self.selector, &workload.labels)
    }

    /// Workload ports behind the service ports that `selectors` name (by number or name).
    pub fn workload_ports<'a>(&'a self, selectors: &'a [PortSelector]) -> impl Iterator<Item = u16> + 'a {
        self.ports
            .iter()
            .filter(|port| {
                selectors.iter().any(|selector| match selector {
                    PortSelector::Number(number) => port.port == *number,
                    PortSelector::Name(name) => port.name.as_deref() == Some(name),
                })
            })
            .filter_map(|port| port.target)
    }
}

fn parse_ports(node: &Node, warnings: &mut Vec<FieldWarning>) -> FieldResult<Vec<ServicePort>> {
    node.items()?
        .iter()
        .map(|item| {
            item.known_fields(SERVICE_PORT_FIELDS)?;
            let port = item.require("port")?.port()?;
            let text = |key: &str| item.get(key)?.map(|node| node.text().map(str::to_string)).transpose();
            let name = text("name")?;
            let app_protocol = text("appProtocol")?;
            // Kubernetes' default targetPort is the port itself.
            let target = match item.get("targetPort")? {
                None => Some(port),
                Some(target) if matches!(target.value, serde_yaml_ng::Value::Number(_)) => Some(target.port()?),
                Some(target) => {
                    warnings.push(FieldWarning {
                        path: target.path.clone(),
                        concern: Concern::NamedTargetPort {
                            name: target.text()?.to_string(),
                        },
                    });
                    None
                }
            };
            Ok(ServicePort {
                port,
                name,
                target,
                app_protocol,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::document::Kind;

    fn parse(yaml: &str) -> (FieldResult<Service>, Vec<FieldWarning>) {
        crate::policy::test_support::parse_one(Kind::Service, yaml, Service::parse)
    }

    const HTTPBIN: &str = "metadata:\n  name: httpbin\n  namespace: default\n  annotations: {auth.istio.io/8000: NONE, auth.istio.io/9000: INHERIT}\nspec:\n  selector: {app: httpbin}\n  ports:\n  - {name: http, port: 8000, targetPort: 80}\n  - {name: metrics, port: 9000}\n  - {name: grpc, port: 7000, targetPort: grpc-port}";

    #[test]
    fn annotations_apply_to_the_mapped_workload_port() {
        let (service, warnings) = parse(HTTPBIN);
        let service = service.unwrap();
        assert_eq!(service.annotated, BTreeMap::from([(80, MtlsMode::Disable)]));
        assert_eq!(
            service
                .workload_ports(&[PortSelector::Name("metrics".into())])
                .collect::<Vec<_>>(),
            [9000]
        );
        assert_eq!(
            warnings,
            [FieldWarning {
                path: "spec.ports[2].targetPort".into(),
                concern: Concern::NamedTargetPort {
                    name: "grpc-port".into()
                }
            }]
        );
    }

    #[test]
    fn app_protocol_is_read_as_written() {
        let (service, warnings) = parse(
            "metadata: {name: s, namespace: default}\nspec:\n  ports:\n  - {name: web, port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}\n  - {port: 81}",
        );
        let ports = service.unwrap().ports;
        assert_eq!(ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        assert_eq!(ports[1].app_protocol, None);
        assert!(warnings.is_empty());
        let (service, _) =
            parse("metadata: {name: s, namespace: default}\nspec: {ports: [{port: 80, appProtocol: 2}]}");
        assert_eq!(service.unwrap_err().path, "spec.ports[0].appProtocol");
    }

    #[test]
    fn an_annotation_value_must_be_none_mutual_tls_or_inherit() {
        let (service, _) =
            parse("metadata: {name: s, namespace: default, annotations: {auth.istio.io/80: mutual_tls}}");
        let error = service.unwrap_err();
        assert_eq!(error.path, "metadata.annotations[\"auth.istio.io/80\"]");
        assert_eq!(
            error.problem,
            Problem::NotOneOf {
                value: "\"mutual_tls\"".into(),
                allowed: "NONE, MUTUAL_TLS, INHERIT"
            }
        );
    }

    #[test]
    fn an_annotation_for_a_port_the_service_lacks_is_a_warning() {
        let (service, warnings) =
            parse("metadata: {name: s, namespace: default, annotations: {auth.istio.io/81: NONE}}\nspec: {ports: [{port: 80}]}");
        assert!(service.unwrap().annotated.is_empty());
        assert_eq!(warnings[0].concern, Concern::AnnotationPortNotInService { port: 81 });
    }
}
