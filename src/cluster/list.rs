//! One complete list of everything the policy of a workload depends on, for `peerguard check
//! --kubeconfig`: the same resources, versions and validation as the proxy's watches, so the
//! answer is what the proxy would do with the cluster as it is now.

use std::path::Path;

use kube::api::{Api, DynamicObject, ListParams};

use super::cache::Held;
use super::failure::Failure;
use super::resources::Target;
use super::{connect, ConnectError};
use crate::policy::{ApiObject, Loaded, PolicyError, PolicySet, PolicyWarning, Workload};

/// What one list of the cluster gave.
#[derive(Debug)]
pub struct ClusterList {
    pub api_server: String,
    pub loaded: Loaded,
    /// Warnings on the objects in force.
    pub warnings: Vec<PolicyWarning>,
    /// Objects skipped as invalid: `PeerAuthentication foo/bad (kubernetes, resourceVersion 7): spec...`.
    pub invalid: Vec<String>,
    /// Resources the API server does not serve (CRD not installed), read as empty.
    pub not_installed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{api_server}: {message}")]
    Request { api_server: String, message: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Lists every watched resource once.
pub async fn list_once(kubeconfig: Option<&Path>, workload: &Workload) -> Result<ClusterList, ListError> {
    let (client, api_server) = connect(kubeconfig).await?;
    let failed = |error: &kube::Error, verb: &str, target: &Target| {
        let message = match Failure::of_request(error, verb, target) {
            Failure::Unreachable(message) | Failure::Forbidden(message) | Failure::Refused(message) => message,
            Failure::NotServed | Failure::Gone => error.to_string(),
        };
        ListError::Request {
            api_server: api_server.clone(),
            message: format!("{verb} {}: {message}", target.describe()),
        }
    };
    let mut objects: Vec<ApiObject> = Vec::new();
    let (mut invalid, mut not_installed) = (Vec::new(), Vec::new());
    for target in Target::all_for(workload) {
        let version = match target.kind.served_version(&client).await {
            Ok(Some(version)) => version,
            Ok(None) => {
                not_installed.push(target.kind.resource_name());
                continue;
            }
            Err(error) => return Err(failed(&error, "get", &target)),
        };
        let resource = target.kind.api_resource(version);
        let api: Api<DynamicObject> = match &target.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|error| failed(&error, "list", &target))?;
        for object in &list.items {
            let held = Held::read(object, &resource);
            match held.object {
                Ok(object) => objects.push(object),
                Err(error) => invalid.push(error),
            }
        }
    }
    not_installed.dedup();
    let warnings = objects.iter().flat_map(|o| o.warnings().iter().cloned()).collect();
    Ok(ClusterList {
        loaded: PolicySet::from_objects(&objects)?,
        api_server,
        warnings,
        invalid,
        not_installed,
    })
}
