//! `AuthorizationPolicy` (`security.istio.io/v1` and `/v1beta1`): reading and validating one,
//! as Istio's `ValidateAuthorizationPolicy` (pkg/config/validation/validation.go) and
//! `ValidateAttribute` (pkg/config/security/security.go) do.
//!
//! Every field of a `source`, an `operation` and every `when` entry becomes one `Condition`, so
//! that the rest of the engine sees one shape: a rule is `from` (any entry) AND `to` (any entry)
//! AND every `when`, and an entry is every one of its conditions.

use std::collections::BTreeMap;

use crate::policy::authorization::address::Cidr;
use crate::policy::document::{parse_labels, FieldWarning, Meta, SELECTOR_FIELDS};
use crate::policy::error::{Concern, Problem};
use crate::policy::node::{child_path, FieldError, FieldResult, Node};

/// The annotation that makes a policy dry-run (evaluated and reported, never enforced).
pub(crate) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    /// Only records; never decides.
    Audit,
    /// An external provider decides; peerguard has none, so its rules act as DENY rules.
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// What a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribute {
    /// The peer's SPIFFE ID without `spiffe://`.
    Principal,
    Namespace,
    /// `ns/sa`, or a bare `sa` in the policy's namespace.
    ServiceAccount,
    TrustDomain,
    /// `ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip`: at L4 all are the client address.
    SourceIp,
    DestinationIp,
    /// The workload port.
    DestinationPort,
    Sni,
    /// Needs an HTTP request (`methods`, `paths`, `hosts`, `requestPrincipals`, `request.*`).
    HttpOnly,
}

/// One field: any of `values` (when there are some) and none of `not_values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub attribute: Attribute,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
    /// Where it was written, for warnings.
    pub path: String,
}

/// A `from.source` or a `to.operation`: all of its conditions.
pub(crate) type Entry = Vec<Condition>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// `None`: any source.
    pub from: Option<Vec<Entry>>,
    /// `None`: any operation.
    pub to: Option<Vec<Entry>>,
    pub when: Vec<Condition>,
}

/// One validated AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthorizationPolicy {
    pub meta: Meta,
    /// `spec.selector.matchLabels`; empty: every workload of the namespace (of the mesh, in
    /// the root namespace).
    pub selector: BTreeMap<String, String>,
    /// `targetRef`/`targetRefs`: for gateways and waypoints, so a sidecar ignores the policy.
    pub targeted: bool,
    pub action: Action,
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

const SPEC_FIELDS: &[&str] = &["selector", "rules", "action", "provider", "targetRef", "targetRefs"];
const TARGET_REF_FIELDS: &[&str] = &["group", "kind", "name", "namespace"];

/// `source` fields: name, attribute, whether it is a `not*` form.
const SOURCE: [(&str, Attribute, bool); 14] = [
    ("principals", Attribute::Principal, false),
    ("notPrincipals", Attribute::Principal, true),
    ("requestPrincipals", Attribute::HttpOnly, false),
    ("notRequestPrincipals", Attribute::HttpOnly, true),
    ("namespaces", Attribute::Namespace, false),
    ("notNamespaces", Attribute::Namespace, true),
    ("serviceAccounts", Attribute::ServiceAccount, false),
    ("notServiceAccounts", Attribute::ServiceAccount, true),
    ("trustDomains", Attribute::TrustDomain, false),
    ("notTrustDomains", Attribute::TrustDomain, true),
    ("ipBlocks", Attribute::SourceIp, false),
    ("notIpBlocks", Attribute::SourceIp, true),
    ("remoteIpBlocks", Attribute::SourceIp, false),
    ("notRemoteIpBlocks", Attribute::SourceIp, true),
];

const OPERATION: [(&str, Attribute, bool); 8] = [
    ("hosts", Attribute::HttpOnly, false),
    ("notHosts", Attribute::HttpOnly, true),
    ("ports", Attribute::DestinationPort, false),
    ("notPorts", Attribute::DestinationPort, true),
    ("methods", Attribute::HttpOnly, false),
    ("notMethods", Attribute::HttpOnly, true),
    ("paths", Attribute::HttpOnly, false),
    ("notPaths", Attribute::HttpOnly, true),
];

/// Source fields Istio refuses on a CUSTOM policy (its provider sees no peer identity).
const NOT_WITH_CUSTOM: [&str; 10] = [
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
];

impl AuthorizationPolicy {
    pub fn parse(root: &Node, meta: Meta, warnings: &mut Vec<FieldWarning>) -> FieldResult<Self> {
        let metadata = root.require("metadata")?;
        let dry_run_node = match metadata.get("annotations")? {
            Some(annotations) => annotations.get(DRY_RUN_ANNOTATION)?,
            None => None,
        };
        let spec = root.get("spec")?;
        let empty = serde_yaml_ng::Value::Null;
        let spec = spec.unwrap_or_else(|| Node {
            value: &empty,
            path: "spec".into(),
        });
        spec.known_fields(SPEC_FIELDS)?;
        let action = match spec.get("action")? {
            Some(action) => action.one_of(
                &[
                    ("ALLOW", Action::Allow),
                    ("DENY", Action::Deny),
                    ("AUDIT", Action::Audit),
                    ("CUSTOM", Action::Custom),
                ],
                "ALLOW, DENY, AUDIT, CUSTOM",
            )?,
            None => Action::Allow,
        };
        let dry_run = match dry_run_node {
            Some(node) if matches!(action, Action::Audit | Action::Custom) => {
                return Err(node.error(Problem::DryRunOnAction {
                    action: action.as_str(),
                }))
            }
            Some(node) => parse_bool(&node)?,
            None => false,
        };
        let selector_node = spec.get("selector")?;
        let selector = match &selector_node {
            Some(selector) => {
                selector.known_fields(SELECTOR_FIELDS)?;
                match selector.get("matchLabels")? {
                    Some(labels) => parse_labels(&labels)?,
                    None => BTreeMap::new(),
                }
            }
            None => BTreeMap::new(),
        };
        let targeted = parse_target_refs(&spec, selector_node.is_some(), warnings)?;
        let rules_node = spec.get("rules")?;
        check_provider(&spec, action, rules_node.is_some())?;
        if action == Action::Deny && rules_node.is_none() {
            return Err(spec.error(Problem::RulesRequired {
                action: action.as_str(),
            }));
        }
        if action == Action::Custom {
            warnings.push(FieldWarning {
                path: child_path(&spec.path, "action"),
                concern: Concern::CustomActsAsDeny,
            });
        }
        let rules = match &rules_node {
            Some(rules) => rules
                .items()?
                .iter()
                .map(|rule| parse_rule(rule, action, warnings))
                .collect::<FieldResult<_>>()?,
            None => Vec::new(),
        };
        Ok(AuthorizationPolicy {
            meta,
            selector,
            targeted,
            action,
            dry_run,
            rules,
        })
    }
}

/// Go's `strconv.ParseBool`, which Istio reads the dry-run annotation with.
fn parse_bool(node: &Node) -> FieldResult<bool> {
    node.one_of(
        &[
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("true", true),
            ("True", true),
            ("0", false),
            ("f", false),
            ("F", false),
            ("FALSE", false),
            ("false", false),
            ("False", false),
        ],
        "a boolean (true, True, TRUE, t, T, 1 or their false forms)",
    )
}

/// Whether the policy names a gateway or waypoint (and so does not apply to a sidecar).
fn parse_target_refs(spec: &Node, has_selector: bool, warnings: &mut Vec<FieldWarning>) -> FieldResult<bool> {
    let mut refs = Vec::new();
    if let Some(target_ref) = spec.get("targetRef")? {
        refs.push(target_ref);
    }
    if let Some(target_refs) = spec.get("targetRefs")? {
        refs.extend(target_refs.items()?);
    }
    for target_ref in &refs {
        target_ref.known_fields(TARGET_REF_FIELDS)?;
    }
    let Some(first) = refs.first() else {
        return Ok(false);
    };
    if has_selector {
        return Err(spec.error(Problem::SelectorWithTargetRef));
    }
    warnings.push(FieldWarning {
        path: first.path.clone(),
        concern: Concern::TargetRefIgnored,
    });
    Ok(true)
}

/// A provider belongs to CUSTOM and CUSTOM needs one, and rules.
fn check_provider(spec: &Node, action: Action, has_rules: bool) -> FieldResult<()> {
    let provider = spec.get("provider")?;
    if let Some(provider) = &provider {
        provider.known_fields(&["name"])?;
    }
    match (action, &provider) {
        (Action::Custom, _) if !has_rules => Err(spec.error(Problem::RulesRequired {
            action: action.as_str(),
        })),
        (Action::Custom, None) => Err(FieldError {
            path: child_path(&spec.path, "provider"),
            problem: Problem::Missing,
        }),
        (Action::Custom, Some(provider)) => {
            let name = provider.require("name")?;
            if name.text()?.is_empty() {
                return Err(name.error(Problem::EmptyValue));
            }
            Ok(())
        }
        (_, Some(provider)) => Err(provider.error(Problem::ProviderWithoutCustom {
            action: action.as_str(),
        })),
        (_, None) => Ok(()),
    }
}

fn parse_rule(rule: &Node, action: Action, warnings: &mut Vec<FieldWarning>) -> FieldResult<Rule> {
    if rule.value.is_null() {
        return Err(rule.error(Problem::Missing));
    }
    rule.known_fields(&["from", "to", "when"])?;
    let entries = |key: &str,
                   inner: &'static str,
                   fields: &[(&'static str, Attribute, bool)]|
     -> FieldResult<Option<Vec<Entry>>> {
        let Some(list) = rule.get(key)? else {
            return Ok(None);
        };
        let items = list.items()?;
        if items.is_empty() {
            return Err(list.error(Problem::EmptyList));
        }
        items
            .iter()
            .map(|item| {
                item.known_fields(&[inner])?;
                parse_entry(&item.require(inner)?, fields, action)
            })
            .collect::<FieldResult<_>>()
            .map(Some)
    };
    let rule = Rule {
        from: entries("from", "source", &SOURCE)?,
        to: entries("to", "operation", &OPERATION)?,
        when: match rule.get("when")? {
            Some(when) => when
                .items()?
                .iter()
                .map(|condition| parse_when(condition, action))
                .collect::<FieldResult<_>>()?,
            None => Vec::new(),
        },
    };
    warn_http_only(&rule, action, warnings);
    Ok(rule)
}

/// One `source` or `operation`: its present fields, each checked as Istio checks it.
fn parse_entry(entry: &Node, fields: &[(&'static str, Attribute, bool)], action: Action) -> FieldResult<Entry> {
    let known: Vec<&'static str> = fields.iter().map(|(name, _, _)| *name).collect();
    entry.known_fields(&known)?;
    let mut conditions = Vec::new();
    for &(name, attribute, negated) in fields {
        let Some(node) = entry.get(name)? else {
            continue;
        };
        if action == Action::Custom && NOT_WITH_CUSTOM.contains(&name) {
            return Err(node.error(Problem::NotWithCustom {
                field: name.to_string(),
            }));
        }
        let values = texts(&node)?;
        check_values(&node, attribute, &values)?;
        if values.is_empty() {
            continue;
        }
        let (values, not_values) = if negated {
            (Vec::new(), values)
        } else {
            (values, Vec::new())
        };
        conditions.push(Condition {
            attribute,
            values,
            not_values,
            path: node.path.clone(),
        });
    }
    if conditions.is_empty() {
        return Err(entry.error(Problem::EmptyEntry));
    }
    let identity = |attribute| conditions.iter().any(|c: &Condition| c.attribute == attribute);
    if identity(Attribute::ServiceAccount) && (identity(Attribute::Principal) || identity(Attribute::Namespace)) {
        return Err(entry.error(Problem::ServiceAccountsWithIdentity));
    }
    Ok(conditions)
}

/// A `when` entry: a supported key and at least one of `values`/`notValues`.
fn parse_when(condition: &Node, action: Action) -> FieldResult<Condition> {
    condition.known_fields(&["key", "values", "notValues"])?;
    let key_node = condition.require("key")?;
    let key = key_node.text()?;
    if key.is_empty() {
        return Err(key_node.error(Problem::EmptyValue));
    }
    let attribute = when_attribute(key).map_err(|why| {
        key_node.error(Problem::UnsupportedWhenKey {
            key: key.to_string(),
            why,
        })
    })?;
    if action == Action::Custom
        && (matches!(
            key,
            "source.namespace" | "source.serviceAccount" | "source.trustDomain" | "source.principal"
        ) || key.starts_with("request.auth."))
    {
        return Err(key_node.error(Problem::NotWithCustom { field: key.to_string() }));
    }
    let list = |name: &str| -> FieldResult<Vec<String>> {
        match condition.get(name)? {
            Some(node) => {
                let values = texts(&node)?;
                check_values(&node, attribute, &values)?;
                if attribute == Attribute::TrustDomain {
                    check_wildcards(&node, &values)?;
                }
                Ok(values)
            }
            None => Ok(Vec::new()),
        }
    };
    let values = list("values")?;
    let not_values = list("notValues")?;
    if values.is_empty() && not_values.is_empty() {
        return Err(condition.error(Problem::NeedsValues));
    }
    Ok(Condition {
        attribute,
        values,
        not_values,
        path: condition.path.clone(),
    })
}

/// What a `when` key compares, or why Istio refuses it.
fn when_attribute(key: &str) -> Result<Attribute, &'static str> {
    let map_key = |key: &str| {
        let open = key.find('[');
        match open {
            Some(open) if key.ends_with(']') && open > 0 && open + 2 < key.len() => Ok(Attribute::HttpOnly),
            _ => Err("should have the form a[b]"),
        }
    };
    match key {
        "source.ip" | "remote.ip" => Ok(Attribute::SourceIp),
        "source.namespace" => Ok(Attribute::Namespace),
        "source.principal" => Ok(Attribute::Principal),
        "source.serviceAccount" => Ok(Attribute::ServiceAccount),
        "source.trustDomain" => Ok(Attribute::TrustDomain),
        "destination.ip" => Ok(Attribute::DestinationIp),
        "destination.port" => Ok(Attribute::DestinationPort),
        "connection.sni" => Ok(Attribute::Sni),
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => Ok(Attribute::HttpOnly),
        "destination.namespace" => Err("it is replaced by the policy's metadata.namespace"),
        "destination.name" | "destination.user" => Err("it is deprecated: only supported in v1alpha1"),
        _ if key.starts_with("request.headers") || key.starts_with("request.auth.claims") => map_key(key),
        // Istio accepts these for Envoy filter metadata, which only HTTP filters set.
        _ if key.starts_with("experimental.envoy.filters.") => map_key(key),
        _ if key.starts_with("destination.labels") => Err("it is replaced by the workload selector"),
        _ => Err("it is not a key Istio knows"),
    }
}

/// A list of text values (`null` has none).
fn texts(node: &Node) -> FieldResult<Vec<String>> {
    node.items()?
        .iter()
        .map(|item| match &item.value {
            serde_yaml_ng::Value::Number(number) => Ok(number.to_string()),
            _ => item.text().map(str::to_string),
        })
        .collect()
}

/// The value checks Istio makes per attribute.
fn check_values(node: &Node, attribute: Attribute, values: &[String]) -> FieldResult<()> {
    for (index, value) in values.iter().enumerate() {
        let at = |problem| FieldError {
            path: format!("{}[{index}]", node.path),
            problem,
        };
        if value.is_empty() {
            return Err(at(Problem::EmptyValue));
        }
        match attribute {
            Attribute::SourceIp | Attribute::DestinationIp => {
                Cidr::parse(value).map_err(|reason| {
                    at(Problem::BadCidr {
                        value: value.clone(),
                        reason,
                    })
                })?;
            }
            Attribute::DestinationPort => {
                value.parse::<u16>().map_err(|_| {
                    at(Problem::BadAuthorizationPort {
                        value: format!("{value:?}"),
                    })
                })?;
            }
            Attribute::ServiceAccount => check_service_account(value).map_err(|reason| {
                at(Problem::BadServiceAccount {
                    value: value.clone(),
                    reason,
                })
            })?,
            Attribute::TrustDomain if value.contains('/') => {
                return Err(at(Problem::BadTrustDomain { value: value.clone() }))
            }
            _ => {}
        }
    }
    if attribute == Attribute::TrustDomain {
        check_wildcards(node, values)?;
    }
    Ok(())
}

/// Istio's `CheckWildcardValues`: one `*` at most, at the start or the end.
fn check_wildcards(node: &Node, values: &[String]) -> FieldResult<()> {
    for (index, value) in values.iter().enumerate() {
        let count = value.matches('*').count();
        if count > 1 || (count == 1 && !value.starts_with('*') && !value.ends_with('*')) {
            return Err(FieldError {
                path: format!("{}[{index}]", node.path),
                problem: Problem::BadWildcard { value: value.clone() },
            });
        }
    }
    Ok(())
}

/// Istio's `CheckServiceAccount`: `sa` or `ns/sa`, no wildcard.
fn check_service_account(value: &str) -> Result<(), &'static str> {
    if value.contains('*') {
        return Err("wildcards are not allowed");
    }
    if value.len() > 320 {
        return Err("longer than 320 characters");
    }
    match value.split_once('/') {
        None => Ok(()),
        Some((namespace, account)) if !namespace.is_empty() && !account.is_empty() && !account.contains('/') => Ok(()),
        Some(_) => Err("expected `serviceAccount` or `namespace/serviceAccount`"),
    }
}

/// HTTP-only fields on a TCP connection (docs/authorization.md): an ALLOW rule that holds one is
/// dropped whole; elsewhere only the field is.
fn warn_http_only(rule: &Rule, action: Action, warnings: &mut Vec<FieldWarning>) {
    for condition in rule.conditions().filter(|c| c.attribute == Attribute::HttpOnly) {
        warnings.push(FieldWarning {
            path: condition.path.clone(),
            concern: if action == Action::Allow {
                Concern::HttpOnlyRuleDropped
            } else {
                Concern::HttpOnlyFieldIgnored
            },
        });
    }
}

impl Rule {
    /// Whether any of the rule's conditions needs an HTTP request.
    pub fn needs_http(&self) -> bool {
        self.conditions().any(|c| c.attribute == Attribute::HttpOnly)
    }

    fn conditions(&self) -> impl Iterator<Item = &Condition> {
        self.from
            .iter()
            .chain(self.to.iter())
            .flatten()
            .flatten()
            .chain(self.when.iter())
    }
}
