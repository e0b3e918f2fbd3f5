//! `PolicySet`: the validated documents of one load, and the era decision per workload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::policy::authorization::model::AuthorizationPolicy;
use crate::policy::authorization::Authorizer;
use crate::policy::destination_rule::DestinationRule;
use crate::policy::error::{Concern, PolicyError, PolicyWarning};
use crate::policy::legacy::LegacyView;
use crate::policy::legacy_policy::LegacyPolicy;
use crate::policy::node::child_path;
use crate::policy::parse::{parse_text, ApiObject, Document, Parsed};
use crate::policy::peer_authentication::{PeerAuthentication, HTTP_ALPN_ANNOTATION};
use crate::policy::protocol::{self, PortProtocol, ProtocolOverrides};
use crate::policy::resolve::Levels;
use crate::policy::service::Service;
use crate::policy::{MtlsMode, PortPolicy, Workload};

/// Validated policy documents; immutable, so a snapshot can be shared and swapped whole.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    peer_authentications: Vec<PeerAuthentication>,
    authorization_policies: Vec<AuthorizationPolicy>,
    legacy_policies: Vec<LegacyPolicy>,
    services: Vec<Service>,
    destination_rules: Vec<DestinationRule>,
}

/// The result of a successful load.
#[derive(Debug)]
pub struct Loaded {
    pub set: PolicySet,
    /// For the caller to log: the policy is used regardless.
    pub warnings: Vec<PolicyWarning>,
    /// The files read, in the order read (for messages and for watching).
    pub files: Vec<PathBuf>,
    /// Documents of kinds peerguard does not read.
    pub skipped_documents: usize,
}

impl PolicySet {
    /// Loads a policy file, or every `*.yaml`/`*.yml`/`*.json` file of a directory.
    pub fn load(path: &Path) -> Result<Loaded, PolicyError> {
        let files = if path.is_dir() {
            policy_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut parsed = Parsed::default();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|source| PolicyError::Read {
                path: file.clone(),
                source,
            })?;
            parsed.extend(parse_text(&text, &file.display().to_string())?);
        }
        Self::from_parsed(parsed, files)
    }

    /// Parses the text of one file; `source` names it in messages (`.json` selects JSON).
    pub fn parse_str(text: &str, source: &str) -> Result<Loaded, PolicyError> {
        Self::from_parsed(parse_text(text, source)?, Vec::new())
    }

    /// The objects a cluster holds, each read by [`crate::policy::read_api_object`]; their
    /// warnings were the reader's to report. Objects are unique by kind, namespace and name in
    /// a cluster, so the duplicate check of files can only fail on a caller's mistake.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a ApiObject>) -> Result<Loaded, PolicyError> {
        let parsed = Parsed {
            documents: objects.into_iter().map(|object| object.document().clone()).collect(),
            ..Parsed::default()
        };
        Self::from_parsed(parsed, Vec::new())
    }

    /// No policy file at all: every port is PERMISSIVE.
    pub fn empty() -> Self {
        Self::default()
    }

    fn from_parsed(parsed: Parsed, files: Vec<PathBuf>) -> Result<Loaded, PolicyError> {
        let mut seen = BTreeMap::new();
        let mut set = PolicySet::default();
        for document in parsed.documents {
            let meta = document.meta();
            if let Some(first) = seen.insert(meta.key(), meta.origin.clone()) {
                return Err(PolicyError::Duplicate {
                    at: Box::new(meta.origin.clone()),
                    first: Box::new(first),
                });
            }
            match document {
                Document::PeerAuthentication(policy) => set.peer_authentications.push(policy),
                Document::Authorization(policy) => set.authorization_policies.push(policy),
                Document::Legacy(policy) => set.legacy_policies.push(policy),
                Document::Service(service) => set.services.push(service),
                Document::DestinationRule(rule) => set.destination_rules.push(rule),
            }
        }
        Ok(Loaded {
            set,
            warnings: parsed.warnings,
            files,
            skipped_documents: parsed.skipped,
        })
    }

    /// The mode of one workload port. A port no policy names gets the same answer as any other
    /// such port, so callers may cache per port.
    pub fn resolve(&self, workload: &Workload, port: u16) -> PortPolicy {
        let modern = Levels::select(&self.peer_authentications, workload);
        // A modern policy for the workload, at any level, silences every legacy document.
        if modern.apply() {
            return modern.resolve(port);
        }
        match LegacyView::select(&self.legacy_policies, &self.services, workload) {
            Some(legacy) => legacy.resolve(port),
            None => PortPolicy {
                port,
                mode: if self.describes_legacy_mesh() {
                    MtlsMode::Disable
                } else {
                    MtlsMode::Permissive
                },
                source: None,
                http_alpn: false,
            },
        }
    }

    /// Whether the set describes an Istio 1.1-1.4 mesh: legacy documents and no
    /// PeerAuthentication at all. There a workload no policy covers accepted plaintext only.
    fn describes_legacy_mesh(&self) -> bool {
        let legacy = !self.legacy_policies.is_empty() || self.services.iter().any(|s| !s.annotated.is_empty());
        legacy && self.peer_authentications.is_empty()
    }

    /// The app protocol of one workload port: `overrides` (`--app-protocol`) first, then the
    /// Services that select the workload. A port neither names is unknown.
    pub fn protocol(&self, workload: &Workload, port: u16, overrides: &ProtocolOverrides) -> PortProtocol {
        protocol::resolve(&self.services, workload, port, overrides)
    }

    /// The AuthorizationPolicies that apply to `workload`, compiled: make it once per policy
    /// generation and ask it `verdict` per connection. `trust_domain` is the mesh's: principals
    /// written in `cluster.local` are read in it.
    pub fn authorizer(&self, workload: &Workload, trust_domain: &str) -> Authorizer {
        Authorizer::new(&self.authorization_policies, workload, trust_domain)
    }

    pub(crate) fn services(&self) -> &[Service] {
        &self.services
    }

    pub(crate) fn destination_rules(&self) -> &[DestinationRule] {
        &self.destination_rules
    }

    /// Whether the set holds any AuthorizationPolicy at all.
    pub fn has_authorization_policies(&self) -> bool {
        !self.authorization_policies.is_empty()
    }

    /// Ports any applicable policy names, plus the workload ports of Services that select it
    /// and those `--app-protocol` names: every port whose mode or protocol may differ from the
    /// rest.
    pub fn known_ports(&self, workload: &Workload, overrides: &ProtocolOverrides) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = overrides.ports().collect();
        ports.extend(
            self.services
                .iter()
                .filter(|service| service.selects(workload))
                .flat_map(|service| service.ports.iter().filter_map(|port| port.target)),
        );
        let modern = Levels::select(&self.peer_authentications, workload);
        if modern.apply() {
            ports.extend(modern.known_ports());
        } else if let Some(legacy) = LegacyView::select(&self.legacy_policies, &self.services, workload) {
            ports.extend(legacy.known_ports());
        }
        ports
    }

    /// Warnings that depend on who the workload is: the HTTP ALPN annotation is not supported
    /// in the root namespace, which only the workload's configuration names; Services that
    /// select the workload and declare different protocols for one of its ports.
    pub fn warnings_for(&self, workload: &Workload) -> Vec<PolicyWarning> {
        let mut warnings: Vec<PolicyWarning> = self
            .peer_authentications
            .iter()
            .filter(|policy| policy.http_alpn.is_some() && policy.meta.namespace == workload.root_namespace)
            .map(|policy| PolicyWarning {
                at: policy.meta.origin.clone(),
                path: child_path("metadata.annotations", HTTP_ALPN_ANNOTATION),
                concern: Concern::AnnotationInRootNamespace {
                    root_namespace: workload.root_namespace.clone(),
                },
            })
            .collect();
        warnings.extend(protocol::conflicts(&self.services, workload));
        warnings
    }
}

/// The policy files of a directory: sorted, not recursive. Names starting with `.` are skipped,
/// which covers the `..data` symlinks and dot-directories of a mounted Kubernetes ConfigMap.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read_error = |source| PolicyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or_default();
        // `is_file` follows symlinks: ConfigMap keys are symlinks into `..data/`.
        if !name.starts_with('.') && matches!(extension, "yaml" | "yml" | "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
