//! Loading the policy a process runs with: a file, a directory, or none at all (every port
//! PERMISSIVE); and every warning that load gives for one workload, for the caller to report
//! its way (the proxy logs them, `check` prints them).

use std::path::Path;

use super::{Loaded, PolicyError, PolicySet, PolicyWarning, Workload};

impl Loaded {
    /// `PolicySet::load(path)`, or the empty set when there is no path.
    pub fn from_path(path: Option<&Path>) -> Result<Loaded, PolicyError> {
        match path {
            Some(path) => PolicySet::load(path),
            None => Ok(Loaded {
                set: PolicySet::empty(),
                warnings: Vec::new(),
                files: Vec::new(),
                skipped_documents: 0,
            }),
        }
    }

    /// The load's own warnings, then those that depend on `workload`.
    pub fn warnings_for(&self, workload: &Workload) -> Vec<PolicyWarning> {
        let mut warnings = self.warnings.clone();
        warnings.extend(self.set.warnings_for(workload));
        warnings
    }
}
