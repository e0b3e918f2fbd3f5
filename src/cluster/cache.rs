//! What the source holds: per watched resource its objects (in force, or skipped as invalid)
//! and how its watch is doing, and whether the API server answers. Every change is published
//! at once as a new policy generation, once every resource has been listed completely.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;

use super::failure::Failure;
use super::resources::Target;
use crate::metrics::Metrics;
use crate::policy::{read_api_object, ApiObject, PolicySet};
use crate::store::{ClusterStatus, ObjectStatus, ResourceStatus, SourceStatus, Store, WatchState};
use crate::tls::identity::unix_seconds;

/// One object as last seen.
#[derive(Debug, Clone)]
pub struct Held {
    /// `PeerAuthentication foo/finance`.
    pub identity: String,
    pub resource_version: String,
    /// `Err`: skipped, and why (field and problem).
    pub object: Result<ApiObject, String>,
}

impl Held {
    /// Validates one object exactly as a file's document is validated.
    pub fn read(object: &DynamicObject, resource: &ApiResource) -> Held {
        let identity = identity(object, resource);
        let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
        let source = format!("kubernetes, resourceVersion {resource_version}");
        let read = object_json(object, resource).and_then(|value| match read_api_object(&value, &source) {
            Ok(Some(object)) => Ok(object),
            Ok(None) => Err(format!(
                "{identity} ({source}): apiVersion/kind is not one peerguard reads"
            )),
            Err(e) => Err(e.to_string()),
        });
        Held {
            identity,
            resource_version,
            object: read,
        }
    }
}

/// One watched resource.
#[derive(Debug)]
struct Watched {
    target: Target,
    /// `peerauthentications.security.istio.io/v1` once the served version is known.
    resource: String,
    state: WatchState,
    /// Listed completely at least once (or found not installed): it counts towards the policy.
    listed: bool,
    error: Option<String>,
    resource_version: Option<String>,
    /// By `namespace/name`.
    objects: BTreeMap<String, Held>,
    /// While a (re-)list is under way: what it has brought so far, swapped in when it is done.
    relisting: Option<BTreeMap<String, Held>>,
}

#[derive(Debug)]
struct Inner {
    api_server: String,
    watched: Vec<Watched>,
    reachable: bool,
    unreachable_since: Option<SystemTime>,
    outages: u64,
    last_error: Option<String>,
}

/// The state every watch task of one source shares; it publishes into the store.
pub struct Cache {
    inner: Mutex<Inner>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(api_server: String, targets: Vec<Target>, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        let watched = targets
            .into_iter()
            .map(|target| Watched {
                resource: target.kind.resource_name(),
                target,
                state: WatchState::Listing,
                listed: false,
                error: None,
                resource_version: None,
                objects: BTreeMap::new(),
                relisting: None,
            })
            .collect();
        metrics.kubernetes_reachable(true);
        let cache = Cache {
            inner: Mutex::new(Inner {
                api_server,
                watched,
                reachable: true,
                unreachable_since: None,
                outages: 0,
                last_error: None,
            }),
            store,
            metrics,
        };
        cache.report(&cache.lock());
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The served version of target `index` is known: its watch starts.
    pub fn serving(&self, index: usize, resource: &ApiResource) {
        let mut inner = self.lock();
        self.answered(&mut inner);
        let watched = &mut inner.watched[index];
        watched.resource = format!("{}/{}", watched.target.kind.resource_name(), resource.version);
        self.report(&inner);
    }

    /// One watcher event of target `index`.
    pub fn apply(&self, index: usize, resource: &ApiResource, event: Event<DynamicObject>) {
        let mut inner = self.lock();
        self.answered(&mut inner);
        let watched = &mut inner.watched[index];
        let changed = match event {
            Event::Init => {
                watched.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                let held = self.read(&object, resource, watched);
                watched
                    .relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&object), held);
                false
            }
            Event::InitDone => {
                let listed = watched.relisting.take().unwrap_or_default();
                // A list that brings what was held already (a re-list after 410 Gone with no
                // change meanwhile) makes no new generation.
                let versions = |objects: &BTreeMap<String, Held>| -> Vec<(String, String)> {
                    objects
                        .iter()
                        .map(|(key, held)| (key.clone(), held.resource_version.clone()))
                        .collect()
                };
                let changed = !watched.listed || versions(&listed) != versions(&watched.objects);
                watched.objects = listed;
                watched.state = WatchState::Watching;
                watched.error = None;
                if !watched.listed {
                    tracing::info!(
                        resource = %watched.resource,
                        namespace = watched.target.namespace.as_deref().unwrap_or("(cluster)"),
                        objects = watched.objects.len(),
                        "listed; watching for changes"
                    );
                }
                watched.listed = true;
                changed
            }
            Event::Apply(object) => {
                let held = self.read(&object, resource, watched);
                watched.resource_version = Some(held.resource_version.clone());
                watched.objects.insert(key(&object), held);
                watched.state = WatchState::Watching;
                watched.error = None;
                true
            }
            Event::Delete(object) => {
                watched.resource_version = object.metadata.resource_version.clone();
                watched.objects.remove(&key(&object));
                watched.state = WatchState::Watching;
                watched.error = None;
                true
            }
        };
        if changed {
            self.publish(&inner);
        }
        self.report(&inner);
    }

    /// Target `index` is not served (its CRD is not installed): an empty set, logged once.
    pub fn not_installed(&self, index: usize) {
        let mut inner = self.lock();
        self.answered(&mut inner);
        let watched = &mut inner.watched[index];
        if watched.state != WatchState::NotInstalled {
            tracing::info!(
                resource = %watched.target.kind.resource_name(),
                versions = %watched.target.kind.versions.join(", "),
                "the API server does not serve this resource (CRD not installed): read as no such objects"
            );
        }
        let had_objects = !watched.objects.is_empty() || !watched.listed;
        watched.state = WatchState::NotInstalled;
        watched.error = None;
        watched.objects.clear();
        watched.relisting = None;
        watched.listed = true;
        if had_objects {
            self.publish(&inner);
        }
        self.report(&inner);
    }

    /// A request of target `index` failed. The objects held stay in force.
    pub fn failed(&self, index: usize, failure: Failure) {
        let mut inner = self.lock();
        let message = match failure {
            Failure::Unreachable(message) => {
                self.unreachable(&mut inner, &message);
                message
            }
            Failure::Forbidden(message) => {
                self.answered(&mut inner);
                inner.watched[index].state = WatchState::Forbidden;
                message
            }
            Failure::Refused(message) => {
                self.answered(&mut inner);
                message
            }
            Failure::Gone => {
                self.answered(&mut inner);
                self.metrics.kubernetes_relisted();
                let watched = &inner.watched[index];
                tracing::info!(
                    target = %watched.target.describe(),
                    "410 Gone: the resourceVersion is too old; listing again"
                );
                self.report(&inner);
                return;
            }
            Failure::NotServed => {
                drop(inner);
                return self.not_installed(index);
            }
        };
        let watched = &mut inner.watched[index];
        if watched.error.as_deref() != Some(&message) {
            tracing::warn!(
                target = %watched.target.describe(),
                error = %message,
                "Kubernetes request failed; retrying, and the last good policy stays in force"
            );
        }
        watched.error = Some(message.clone());
        inner.last_error = Some(message);
        self.report(&inner);
    }

    /// The API server answered something: an outage, if any, is over.
    pub fn reached(&self) {
        let mut inner = self.lock();
        if !inner.reachable {
            self.answered(&mut inner);
            self.report(&inner);
        }
    }

    /// Whether an outage is under way.
    pub fn is_unreachable(&self) -> bool {
        !self.lock().reachable
    }

    fn answered(&self, inner: &mut Inner) {
        if inner.reachable {
            return;
        }
        inner.reachable = true;
        // What the outage made every watch report is over; a missing permission is not.
        for watched in &mut inner.watched {
            if watched.state != WatchState::Forbidden {
                watched.error = None;
            }
        }
        let down = inner
            .unreachable_since
            .take()
            .and_then(|since| since.elapsed().ok())
            .unwrap_or_default();
        self.metrics.kubernetes_reachable(true);
        tracing::info!(api_server = %inner.api_server, after = ?down, "Kubernetes API server reachable again");
    }

    fn unreachable(&self, inner: &mut Inner, message: &str) {
        if !inner.reachable {
            return;
        }
        inner.reachable = false;
        inner.unreachable_since = Some(SystemTime::now());
        inner.outages += 1;
        self.metrics.kubernetes_reachable(false);
        tracing::warn!(
            api_server = %inner.api_server,
            error = %message,
            generation = self.store.policy().generation,
            "Kubernetes API server unreachable; the last good policy stays in force"
        );
    }

    /// Validates one object; an invalid one is skipped, counted and named (once per version),
    /// and the rest applies.
    fn read(&self, object: &DynamicObject, resource: &ApiResource, watched: &Watched) -> Held {
        let held = Held::read(object, resource);
        let key = key(object);
        let seen = watched
            .objects
            .get(&key)
            .or_else(|| watched.relisting.as_ref()?.get(&key));
        let again = seen.is_some_and(|seen| seen.resource_version == held.resource_version);
        match &held.object {
            Ok(object) if !again => {
                for warning in object.warnings() {
                    tracing::warn!("policy: {warning}");
                }
            }
            Err(error) if !again => {
                self.metrics.kubernetes_invalid_object();
                tracing::warn!(
                    object = %held.identity,
                    resource_version = %held.resource_version,
                    error = %error,
                    "invalid object skipped; the rest of the policy applies"
                );
            }
            _ => {}
        }
        held
    }

    /// Puts the policy of every valid object in force, once every resource has been listed.
    fn publish(&self, inner: &Inner) {
        if !inner.watched.iter().all(|w| w.listed) {
            return;
        }
        let objects = inner
            .watched
            .iter()
            .flat_map(|w| w.objects.values())
            .filter_map(|held| held.object.as_ref().ok());
        match PolicySet::from_objects(objects) {
            Ok(loaded) => {
                let generation = self.store.publish_policy(loaded);
                let (valid, invalid) =
                    inner
                        .watched
                        .iter()
                        .flat_map(|w| w.objects.values())
                        .fold((0, 0), |(v, i), held| match held.object {
                            Ok(_) => (v + 1, i),
                            Err(_) => (v, i + 1),
                        });
                tracing::info!(
                    generation,
                    objects = valid,
                    invalid,
                    "policy from the Kubernetes API in force"
                );
            }
            Err(e) => {
                self.metrics.policy_reload_failed();
                tracing::error!(error = %e, "policy from the Kubernetes API refused; the last good policy stays in force");
            }
        }
    }

    /// Hands the store what `/config_dump` and readiness show.
    fn report(&self, inner: &Inner) {
        let resources = inner
            .watched
            .iter()
            .map(|w| ResourceStatus {
                resource: w.resource.clone(),
                namespace: w.target.namespace.clone(),
                state: w.state,
                resource_version: w.resource_version.clone(),
                error: w.error.clone(),
                objects: w
                    .objects
                    .values()
                    .map(|held| ObjectStatus {
                        object: held.identity.clone(),
                        resource_version: held.resource_version.clone(),
                        invalid: held.object.as_ref().err().cloned(),
                    })
                    .collect(),
            })
            .collect();
        self.store.set_source_status(SourceStatus::Kubernetes(ClusterStatus {
            api_server: inner.api_server.clone(),
            synced: inner.watched.iter().all(|w| w.listed),
            reachable: inner.reachable,
            unreachable_since_unix: inner.unreachable_since.map(unix_seconds),
            outages: inner.outages,
            last_error: inner.last_error.clone(),
            resources,
        }));
    }
}

fn key(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

/// `PeerAuthentication foo/finance`, `MeshPolicy default`.
fn identity(object: &DynamicObject, resource: &ApiResource) -> String {
    let name = object.metadata.name.as_deref().unwrap_or("(no name)");
    match object.metadata.namespace.as_deref() {
        Some(namespace) => format!("{} {namespace}/{name}", resource.kind),
        None => format!("{} {name}", resource.kind),
    }
}

/// The object as JSON, with `apiVersion` and `kind` filled in where a list left them out (the
/// API server omits them on the items of built-in lists).
fn object_json(object: &DynamicObject, resource: &ApiResource) -> Result<serde_json::Value, String> {
    let mut value = serde_json::to_value(object).map_err(|e| format!("{}: {e}", identity(object, resource)))?;
    if let Some(fields) = value.as_object_mut() {
        fields
            .entry("apiVersion")
            .or_insert_with(|| resource.api_version.clone().into());
        fields.entry("kind").or_insert_with(|| resource.kind.clone().into());
    }
    Ok(value)
}
