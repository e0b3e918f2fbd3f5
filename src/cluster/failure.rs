//! What a failed request to the API server means for the source: an outage, a permission the
//! service account lacks (and which one), a resource that is not served, or another answer.

use kube::core::ErrorResponse;
use kube::runtime::watcher;

use super::resources::Target;

/// One failed request, sorted by what the source does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer (refused, reset, timed out, TLS): an outage; the last good policy stays.
    Unreachable(String),
    /// 403: the message names the verb, the resource and the namespace.
    Forbidden(String),
    /// 404 on a list: the resource is not served any more (its CRD was removed).
    NotServed,
    /// 410 Gone: the resourceVersion is too old; the watcher lists again.
    Gone,
    /// Any other answer.
    Refused(String),
}

impl Failure {
    /// A failed `verb` (`get` for discovery, `list`, `watch`) on `target`.
    pub fn of_request(error: &kube::Error, verb: &str, target: &Target) -> Failure {
        match error {
            kube::Error::Api(response) => Failure::of_answer(response, verb, target),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                Failure::Unreachable(error.to_string())
            }
            other => Failure::Refused(other.to_string()),
        }
    }

    /// What the watcher reported, with the verb its stage used.
    pub fn of_watch(error: &watcher::Error, target: &Target) -> Failure {
        match error {
            watcher::Error::InitialListFailed(e) => Failure::of_request(e, "list", target),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                Failure::of_request(e, "watch", target)
            }
            watcher::Error::WatchError(response) => Failure::of_answer(response, "watch", target),
            watcher::Error::NoResourceVersion => Failure::Refused(error.to_string()),
        }
    }

    fn of_answer(response: &ErrorResponse, verb: &str, target: &Target) -> Failure {
        match response.code {
            403 => Failure::Forbidden(forbidden(response, verb, target)),
            404 if verb == "list" => Failure::NotServed,
            410 => Failure::Gone,
            code => Failure::Refused(format!("{verb} {}: {code} {}", target.describe(), response.message)),
        }
    }
}

/// `the service account may not list peerauthentications.security.istio.io in namespace foo`,
/// with what RBAC must grant and what the API server said.
fn forbidden(response: &ErrorResponse, verb: &str, target: &Target) -> String {
    let scope = match &target.namespace {
        Some(namespace) => format!("in namespace {namespace} (a Role there)"),
        None => "cluster-wide (a ClusterRole)".to_string(),
    };
    format!(
        "403 Forbidden: the service account may not {verb} {} {scope}; grant get, list and watch on it \
         (docker/rbac.yaml); the API server said: {}",
        target.kind.resource_name(),
        response.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::resources::WATCHED;

    fn answer(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(ErrorResponse {
            status: "Failure".into(),
            message: message.into(),
            reason: String::new(),
            code,
        })
    }

    #[test]
    fn a_403_names_the_verb_the_resource_and_the_namespace() {
        let target = Target {
            kind: &WATCHED[0],
            namespace: Some("foo".into()),
        };
        let Failure::Forbidden(message) = Failure::of_request(&answer(403, "nope"), "watch", &target) else {
            panic!("not forbidden");
        };
        assert_eq!(
            message,
            "403 Forbidden: the service account may not watch peerauthentications.security.istio.io in \
             namespace foo (a Role there); grant get, list and watch on it (docker/rbac.yaml); the API server \
             said: nope"
        );
        let mesh = Target {
            kind: &WATCHED[3],
            namespace: None,
        };
        let Failure::Forbidden(message) = Failure::of_request(&answer(403, "no"), "list", &mesh) else {
            panic!("not forbidden");
        };
        assert!(message.contains("may not list meshpolicies.authentication.istio.io cluster-wide (a ClusterRole)"));
    }

    #[test]
    fn a_404_on_a_list_is_a_resource_not_served_and_410_is_gone() {
        let target = Target {
            kind: &WATCHED[2],
            namespace: Some("foo".into()),
        };
        assert_eq!(
            Failure::of_request(&answer(404, ""), "list", &target),
            Failure::NotServed
        );
        assert_eq!(
            Failure::of_watch(
                &watcher::Error::WatchError(ErrorResponse {
                    status: "Failure".into(),
                    message: "too old resource version".into(),
                    reason: "Expired".into(),
                    code: 410,
                }),
                &target
            ),
            Failure::Gone
        );
        assert!(matches!(
            Failure::of_request(&answer(500, "etcd"), "list", &target),
            Failure::Refused(message) if message == "list policies.authentication.istio.io in namespace foo: 500 etcd"
        ));
    }
}
