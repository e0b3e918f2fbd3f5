//! The Kubernetes API as a policy source (`--policy-source kubernetes`, docs/kubernetes.md).
//!
//! Objects go through the same reading and validation as a file's documents
//! (`policy::read_api_object`) and into the same store (`Store::publish_policy`), so a policy
//! from the cluster means exactly what the same documents mean in a file. What a cluster needs
//! and a file does not: an invalid object is skipped and named while the rest applies; a kind
//! whose CRD is not installed is an empty set; an outage keeps the last good policy.
//!
//! - `resources`: what is watched, in which namespaces, and which version is served.
//! - `watch`: one resource's watch (kube-runtime's watcher) with retries.
//! - `cache`: the objects held, the source's status, publishing.
//! - `failure`: what a failed request means (outage, missing permission, not served).
//! - `list`: one complete list of everything, for `peerguard check`.

mod cache;
mod failure;
mod list;
mod resources;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::sync::watch as signal;

pub use list::{list_once, ClusterList, ListError};

use crate::config::KubernetesSource;
use crate::metrics::Metrics;
use crate::policy::Workload;
use crate::store::Store;
use cache::Cache;
use resources::Target;

/// Why no client for the API server could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "not inside a Kubernetes pod ({0}): the in-cluster configuration needs KUBERNETES_SERVICE_HOST and the \
         service-account token; give --kubeconfig FILE outside a cluster"
    )]
    InCluster(kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A client for the API server from `--kubeconfig` (its current context) or the in-cluster
/// configuration, and the server's URL for messages.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<(Client, String), ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| ConnectError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::incluster().map_err(ConnectError::InCluster)?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(ConnectError::Client)?;
    Ok((client, url))
}

/// Starts watching everything the policy of `workload` depends on, publishing into `store`
/// until `stop` turns true. Returns at once; the first complete list becomes generation 1.
pub async fn start(
    source: &KubernetesSource,
    workload: &Workload,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    stop: signal::Receiver<bool>,
) -> Result<(), ConnectError> {
    let (client, api_server) = connect(source.kubeconfig.as_deref()).await?;
    tracing::info!(
        api_server = %api_server,
        namespace = %workload.namespace,
        root_namespace = %workload.root_namespace,
        "policy source: the Kubernetes API; waiting for the first complete list"
    );
    let targets = Target::all_for(workload);
    let cache = Arc::new(Cache::new(api_server, targets.clone(), store, metrics));
    for (index, target) in targets.into_iter().enumerate() {
        let task = watch::follow(cache.clone(), index, target, client.clone(), source.retry_max);
        tokio::spawn(until_stopped(task, stop.clone()));
    }
    let probe = watch::probe_during_outages(cache, client, source.retry_max);
    tokio::spawn(until_stopped(probe, stop));
    Ok(())
}

async fn until_stopped(task: impl std::future::Future<Output = ()>, mut stop: signal::Receiver<bool>) {
    tokio::select! {
        () = task => {}
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {}
    }
}
