//! One watched resource: find the version the API server serves, then follow it with kube's
//! watcher (list, then watch from the list's resourceVersion; a watch that ends resumes from
//! the last resourceVersion seen, bookmarks included; 410 Gone lists again), feeding the cache.
//! Failed requests are retried with a capped exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::Client;

use super::cache::Cache;
use super::failure::Failure;
use super::resources::Target;

/// The first wait after a failure (kube-runtime's default), doubled per failure up to the
/// configured maximum.
const FIRST_RETRY: Duration = Duration::from_millis(800);

/// Capped exponential backoff between retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_RETRY.min(max),
            max,
        }
    }

    pub fn reset(&mut self) {
        *self = Backoff::new(self.max);
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// Follows target `index` of `cache` for as long as the task runs.
pub async fn follow(cache: Arc<Cache>, index: usize, target: Target, client: Client, retry_max: Duration) {
    let mut backoff = Backoff::new(retry_max);
    loop {
        let version = match target.kind.served_version(&client).await {
            Ok(Some(version)) => version,
            Ok(None) => {
                cache.not_installed(index);
                // Looked for again now and then, quietly: the CRD may be installed later.
                tokio::time::sleep(retry_max).await;
                continue;
            }
            Err(error) => {
                cache.failed(index, Failure::of_request(&error, "get", &target));
                backoff.wait().await;
                continue;
            }
        };
        let resource = target.kind.api_resource(version);
        cache.serving(index, &resource);
        let api: Api<DynamicObject> = match &target.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    backoff.reset();
                    cache.apply(index, &resource, event);
                }
                Err(error) => match Failure::of_watch(&error, &target) {
                    // The watcher lists again on its next poll; no reason to wait.
                    Failure::Gone => cache.failed(index, Failure::Gone),
                    // The CRD went away: back to looking for a served version.
                    Failure::NotServed => {
                        cache.not_installed(index);
                        break;
                    }
                    failure => {
                        cache.failed(index, failure);
                        backoff.wait().await;
                    }
                },
            }
        }
    }
}

/// While an outage is under way, asks the API server for its version now and then: a watch that
/// resumes quietly yields no event, so this is what tells that the server answers again.
pub async fn probe_during_outages(cache: Arc<Cache>, client: Client, retry_max: Duration) {
    let mut backoff = Backoff::new(retry_max);
    loop {
        backoff.wait().await;
        if !cache.is_unreachable() {
            backoff.reset();
            continue;
        }
        match client.apiserver_version().await {
            Err(kube::Error::HyperError(_) | kube::Error::Service(_)) => {}
            // Any answer, even an error status, means the server is reachable.
            _ => cache.reached(),
        }
    }
}
