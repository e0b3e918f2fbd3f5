//! `Authorizer`: the policies that apply to one workload, compiled and in evaluation order;
//! `Verdict`: what one connection gets, and which policy and rule decided it.

use std::sync::Arc;

use serde::Serialize;

use crate::policy::authorization::compile::CompiledPolicy;
use crate::policy::authorization::model::{Action, AuthorizationPolicy};
use crate::policy::authorization::ConnectionFacts;
use crate::policy::document::selects;
use crate::policy::Workload;

/// The compiled AuthorizationPolicies of one workload for one policy generation.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    /// Enforced CUSTOM (acting as DENY) then DENY policies: any match denies.
    deny: Vec<CompiledPolicy>,
    /// Enforced ALLOW policies: when there are some, a connection must match one.
    allow: Vec<CompiledPolicy>,
    /// AUDIT policies: they only record.
    audit: Vec<CompiledPolicy>,
    /// Dry-run DENY policies.
    shadow_deny: Vec<CompiledPolicy>,
    /// Dry-run ALLOW policies.
    shadow_allow: Vec<CompiledPolicy>,
}

/// A policy and the index of its rule (in `spec.rules`) that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decider {
    /// `namespace/name`.
    pub policy: Arc<str>,
    pub rule: usize,
}

/// Why a connection got its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictReason {
    /// A DENY (or CUSTOM) rule matched.
    DeniedByPolicy,
    /// An ALLOW rule matched.
    AllowedByPolicy,
    /// No enforced ALLOW policy applies to the workload, and no DENY matched.
    NoAllowPolicy,
    /// ALLOW policies apply and none of their rules matched.
    NoAllowMatched,
}

impl VerdictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictReason::DeniedByPolicy => "denied_by_policy",
            VerdictReason::AllowedByPolicy => "allowed_by_policy",
            VerdictReason::NoAllowPolicy => "no_allow_policy",
            VerdictReason::NoAllowMatched => "no_allow_matched",
        }
    }
}

/// What the dry-run policies of one action would have decided (Istio's shadow engines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub allowed: bool,
    /// The dry-run policy whose rule matched; `None` when none did.
    pub decider: Option<Decider>,
}

/// The answer for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// `None` when no policy decided (`reason` says why).
    pub decider: Option<Decider>,
    pub reason: VerdictReason,
    /// The dry-run DENY policies' result, when there are some.
    pub shadow_deny: Option<Shadow>,
    /// The dry-run ALLOW policies' result, when there are some.
    pub shadow_allow: Option<Shadow>,
    /// The first AUDIT rule that matched: the connection is to be recorded.
    pub audit: Option<Decider>,
}

/// One policy in force for the workload, as `/config_dump` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyInForce {
    pub policy: Arc<str>,
    pub action: Action,
    pub dry_run: bool,
}

impl Authorizer {
    /// Selects and compiles the policies that apply to `workload` (docs/authorization.md): those of the
    /// root namespace and of the workload's namespace accumulate; no selector applies to the
    /// whole namespace (the whole mesh in the root namespace), and a selector matches in every
    /// namespace when the policy is in the root namespace. Policies with `targetRef(s)` are
    /// not for sidecars. Order: root namespace first, then oldest, then by name.
    pub(crate) fn new(policies: &[AuthorizationPolicy], workload: &Workload, trust_domain: &str) -> Self {
        let mut applicable: Vec<&AuthorizationPolicy> = policies
            .iter()
            .filter(|policy| {
                let namespace = &policy.meta.namespace;
                (*namespace == workload.root_namespace || *namespace == workload.namespace)
                    && !policy.targeted
                    && selects(&policy.selector, &workload.labels)
            })
            .collect();
        applicable.sort_by_key(|policy| {
            (
                policy.meta.namespace != workload.root_namespace,
                policy.meta.precedence(),
            )
        });
        let mut authorizer = Authorizer::default();
        // CUSTOM goes first, as in Istio's filter chain; then DENY.
        for action in [Action::Custom, Action::Deny, Action::Allow, Action::Audit] {
            for policy in applicable.iter().filter(|policy| policy.action == action) {
                let compiled = CompiledPolicy::new(policy, trust_domain);
                let list = match (action, policy.dry_run) {
                    (Action::Custom | Action::Deny, false) => &mut authorizer.deny,
                    (Action::Deny, true) => &mut authorizer.shadow_deny,
                    (Action::Allow, false) => &mut authorizer.allow,
                    (Action::Allow, true) => &mut authorizer.shadow_allow,
                    // Validation refuses dry-run on AUDIT and CUSTOM.
                    (Action::Audit, _) | (Action::Custom, true) => &mut authorizer.audit,
                };
                list.push(compiled);
            }
        }
        authorizer
    }

    /// The verdict for one connection: any matching DENY denies; then, if enforced ALLOW
    /// policies apply, one of their rules must match. Dry-run and AUDIT policies are evaluated
    /// beside, never deciding.
    pub fn verdict(&self, facts: &ConnectionFacts) -> Verdict {
        let (allowed, decider, reason) = if let Some(decider) = first_match(&self.deny, facts) {
            (false, Some(decider), VerdictReason::DeniedByPolicy)
        } else if self.allow.is_empty() {
            (true, None, VerdictReason::NoAllowPolicy)
        } else {
            match first_match(&self.allow, facts) {
                Some(decider) => (true, Some(decider), VerdictReason::AllowedByPolicy),
                None => (false, None, VerdictReason::NoAllowMatched),
            }
        };
        let shadow_deny = (!self.shadow_deny.is_empty()).then(|| {
            let decider = first_match(&self.shadow_deny, facts);
            Shadow {
                allowed: decider.is_none(),
                decider,
            }
        });
        let shadow_allow = (!self.shadow_allow.is_empty()).then(|| {
            let decider = first_match(&self.shadow_allow, facts);
            Shadow {
                allowed: decider.is_some(),
                decider,
            }
        });
        Verdict {
            allowed,
            decider,
            reason,
            shadow_deny,
            shadow_allow,
            audit: first_match(&self.audit, facts),
        }
    }

    /// No policy applies to the workload: every connection is allowed and nothing is recorded,
    /// so the data path skips authorizing altogether.
    pub fn is_empty(&self) -> bool {
        [
            &self.deny,
            &self.allow,
            &self.audit,
            &self.shadow_deny,
            &self.shadow_allow,
        ]
        .iter()
        .all(|policies| policies.is_empty())
    }

    /// The policies in force for the workload, in evaluation order.
    pub fn policies(&self) -> impl Iterator<Item = PolicyInForce> + '_ {
        [
            &self.deny,
            &self.allow,
            &self.audit,
            &self.shadow_deny,
            &self.shadow_allow,
        ]
        .into_iter()
        .flatten()
        .map(|policy| PolicyInForce {
            policy: policy.label.clone(),
            action: policy.action,
            dry_run: policy.dry_run,
        })
    }
}

fn first_match(policies: &[CompiledPolicy], facts: &ConnectionFacts) -> Option<Decider> {
    policies.iter().find_map(|policy| {
        policy.matching_rule(facts).map(|rule| Decider {
            policy: policy.label.clone(),
            rule,
        })
    })
}

impl Verdict {
    /// The dry-run results, DENY then ALLOW.
    pub fn dry_run(&self) -> impl Iterator<Item = &Shadow> {
        self.shadow_deny.iter().chain(self.shadow_allow.iter())
    }
}
