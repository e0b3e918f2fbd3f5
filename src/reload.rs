//! When to reload the policy and the certificates from their files, and when the workload's
//! labels changed (docs/operating.md#reload); the store does the loading, validating and
//! publishing.
//!
//! Every [`POLL_INTERVAL`] the watcher takes a fingerprint of what the files *contain* (read
//! through symlinks) and reloads what changed; `SIGHUP` reloads both at once, changed or not.
//! Polling contents rather than watching inodes is what makes Kubernetes' atomic `..data`
//! symlink swap (ConfigMap and Secret volumes) just work: the visible file names never change,
//! only what they resolve to. A load that fails keeps the last good snapshot, is logged with
//! its precise error and counted; it is not retried until the files change again.
//!
//! The downward-API labels file (`--labels-file`) is watched the same way whatever the policy
//! source: `kubectl label pod` rewrites it while the pod runs, and every port is resolved again
//! for the new labels.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::config::{read_labels_file, CertSource};
use crate::store::Store;
use crate::tls::credentials::{CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};

/// How often the files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The files a certificate source reads.
fn certificate_files(source: &CertSource) -> Vec<PathBuf> {
    match source {
        CertSource::Dir(dir) => [CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE]
            .map(|f| dir.join(f))
            .to_vec(),
        CertSource::Files { cert, key, ca } => vec![cert.clone(), key.clone(), ca.clone()],
        // The certificate and key live in memory; only the mesh roots are a file.
        CertSource::MeshCa(ca) => vec![ca.root_cert.clone()],
    }
}

/// Hashes of what the policy and certificate files contained when last loaded (or tried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    policy: u64,
    certificates: u64,
    labels: u64,
}

impl Fingerprints {
    /// Take them before the first load, so that a change racing the load is seen by the next
    /// poll rather than lost.
    pub fn of(policy: Option<&Path>, certs: &CertSource, labels: Option<&Path>) -> Self {
        let of_path = |path: Option<&Path>| path.map_or(0, |path| fingerprint(&[path.to_path_buf()]));
        Fingerprints {
            policy: of_path(policy),
            certificates: fingerprint(&certificate_files(certs)),
            labels: of_path(labels),
        }
    }
}

/// Watches the policy, certificate and labels files and has the store reload what changed.
pub struct Reloader {
    store: Arc<Store>,
    /// `--labels-file`, if the labels come from one.
    labels_file: Option<PathBuf>,
    seen: Mutex<Fingerprints>,
}

impl Reloader {
    /// `loaded`: the fingerprints taken before the store's first load (and the labels' read).
    pub fn new(store: Arc<Store>, loaded: Fingerprints, labels_file: Option<PathBuf>) -> Self {
        Reloader {
            store,
            labels_file,
            seen: Mutex::new(loaded),
        }
    }

    /// Reloads whatever changed since the last look; everything when `forced` (SIGHUP).
    pub fn check(&self, forced: bool) {
        let now = Fingerprints::of(
            self.store.policy_path(),
            self.store.certificate_source(),
            self.labels_file.as_deref(),
        );
        let before = std::mem::replace(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner), now);
        if forced || now.policy != before.policy {
            self.store.reload_policy_files();
        }
        if forced || now.certificates != before.certificates {
            self.store.reload_certificate_files();
        }
        if forced || now.labels != before.labels {
            self.reload_labels();
        }
    }

    /// Re-reads the labels file; one that cannot be read or parsed keeps the labels in use.
    fn reload_labels(&self) {
        let Some(path) = &self.labels_file else {
            return;
        };
        match read_labels_file(path) {
            Ok(labels) if labels == self.store.policy().workload.labels => {}
            Ok(labels) => {
                let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::info!(labels = %text.join(","), "workload labels changed");
                self.store.relabel(labels);
            }
            Err(e) => tracing::error!(error = %e, "labels file unreadable; the labels in use stay"),
        }
    }

    /// Polls the files and listens for SIGHUP until `shutdown` turns true. Installs the SIGHUP
    /// handler before returning the task, so that a SIGHUP as soon as the proxy says it serves
    /// reloads rather than kills it (the default action).
    pub fn watch(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot watch SIGHUP; reloads follow file changes only"))
            .ok();
        self.poll_and_listen(hangup, shutdown)
    }

    async fn poll_and_listen(self: Arc<Self>, mut hangup: Option<Signal>, mut shutdown: watch::Receiver<bool>) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = poll.tick() => false,
                () = next_signal(&mut hangup) => {
                    tracing::info!("SIGHUP: reloading policy and certificates");
                    true
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            // File reads block; keep them off the runtime's worker threads.
            let reloader = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.check(forced)).await {
                tracing::error!(error = %e, "reload check did not finish");
            }
        }
    }
}

/// The next delivery of `signal`; never, when it could not be installed or has ended.
async fn next_signal(signal: &mut Option<Signal>) {
    if let Some(s) = signal {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

/// A hash of what `paths` contain: a file's bytes, a directory's visible entries (names not
/// starting with `.`, so Kubernetes' `..data` internals are seen only through the visible
/// symlinks) and their bytes. A path that cannot be read hashes as its error kind, so its
/// appearing or disappearing is a change too.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for path in paths {
        path.hash(&mut hasher);
        if path.is_dir() {
            match visible_entries(path) {
                Ok(entries) => {
                    for entry in entries {
                        entry.hash(&mut hasher);
                        hash_contents(&entry, &mut hasher);
                    }
                }
                Err(e) => e.kind().hash(&mut hasher),
            }
        } else {
            hash_contents(path, &mut hasher);
        }
    }
    hasher.finish()
}

fn visible_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

fn hash_contents(path: &Path, hasher: &mut DefaultHasher) {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return e.kind().hash(hasher),
    };
    let mut chunk = [0u8; 8192];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => chunk[..n].hash(hasher),
            // A directory inside a policy directory, or a read error: its kind marks it.
            Err(e) => return e.kind().hash(hasher),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peerguard-reload-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_kubernetes_data_symlink_swap_changes_the_fingerprint() {
        let dir = temp_dir("swap");
        std::fs::create_dir(dir.join("..v1")).unwrap();
        std::fs::create_dir(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v1/policy.yaml"), "v1").unwrap();
        std::fs::write(dir.join("..v2/policy.yaml"), "v2").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
        let before = fingerprint(std::slice::from_ref(&dir));
        assert_eq!(before, fingerprint(std::slice::from_ref(&dir)), "nothing changed");

        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_ne!(before, fingerprint(std::slice::from_ref(&dir)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_appearing_in_a_policy_directory_changes_the_fingerprint() {
        let dir = temp_dir("appear");
        let before = fingerprint(std::slice::from_ref(&dir));
        std::fs::write(dir.join("extra.yaml"), "").unwrap();
        assert_ne!(before, fingerprint(std::slice::from_ref(&dir)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
