//! A path-aware walk over a generic YAML value.
//!
//! Documents are parsed into a `serde_yaml_ng::Value` first and walked by hand (rather than
//! deserialized into structs) so that every error can name the exact field path, e.g.
//! `spec.portLevelMtls.8080.mode` or `metadata.annotations["auth.istio.io/8000"]`.

use serde_yaml_ng::{Mapping, Value};

use crate::policy::error::Problem;

/// A problem at a field path; the caller adds which document it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub problem: Problem,
}

pub(crate) type FieldResult<T> = Result<T, FieldError>;

/// One value and the path that leads to it from the document root.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    pub value: &'a Value,
    pub path: String,
}

impl<'a> Node<'a> {
    pub fn root(value: &'a Value) -> Self {
        Node {
            value,
            path: String::new(),
        }
    }

    pub fn error(&self, problem: Problem) -> FieldError {
        FieldError {
            path: self.path.clone(),
            problem,
        }
    }

    fn wrong_type(&self, expected: &'static str) -> FieldError {
        self.error(Problem::WrongType {
            expected,
            found: describe(self.value),
        })
    }

    /// The child at `key`, absent when the key is missing or its value is `null`.
    /// `self` must be a mapping (or `null`, which has no children).
    pub fn get(&self, key: &str) -> FieldResult<Option<Node<'a>>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(name, _)| name == key)
            .map(|(_, node)| node)
            .filter(|node| !node.value.is_null()))
    }

    /// Whether `key` is present at all, even with a `null` value (`- mtls:` means something).
    pub fn has(&self, key: &str) -> FieldResult<bool> {
        Ok(self.entries()?.iter().any(|(name, _)| name == key))
    }

    /// The child at `key`, which must be present.
    pub fn require(&self, key: &str) -> FieldResult<Node<'a>> {
        self.get(key)?.ok_or_else(|| FieldError {
            path: child_path(&self.path, key),
            problem: Problem::Missing,
        })
    }

    /// A mapping's entries with their keys as text (`null` has none). Numeric keys, as in
    /// `portLevelMtls: {8080: ...}`, come out as their decimal text.
    pub fn entries(&self) -> FieldResult<Vec<(String, Node<'a>)>> {
        let mapping: &Mapping = match self.value {
            Value::Mapping(mapping) => mapping,
            Value::Null => return Ok(Vec::new()),
            _ => return Err(self.wrong_type("a map")),
        };
        mapping
            .iter()
            .map(|(key, value)| {
                let key = match key {
                    Value::String(text) => text.clone(),
                    Value::Number(number) => number.to_string(),
                    other => {
                        return Err(self.error(Problem::WrongType {
                            expected: "a text or number key",
                            found: describe(other),
                        }))
                    }
                };
                let path = child_path(&self.path, &key);
                Ok((key, Node { value, path }))
            })
            .collect()
    }

    /// Refuses a key of this mapping that `known` does not list: a typo in a security policy
    /// must not be read as "not set" (docs/policy.md#validation). The error names the key's path and the
    /// nearest known name. `null` has no keys.
    pub fn known_fields(&self, known: &[&'static str]) -> FieldResult<()> {
        for (key, node) in self.entries()? {
            if !known.contains(&key.as_str()) {
                return Err(node.error(Problem::UnknownField {
                    field: key.clone(),
                    suggestion: nearest(&key, known)
                        .map(|name| format!("; did you mean `{name}`?"))
                        .unwrap_or_default(),
                }));
            }
        }
        Ok(())
    }

    /// A sequence's items (`null` has none).
    pub fn items(&self) -> FieldResult<Vec<Node<'a>>> {
        match self.value {
            Value::Sequence(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(index, value)| Node {
                    value,
                    path: format!("{}[{index}]", self.path),
                })
                .collect()),
            Value::Null => Ok(Vec::new()),
            _ => Err(self.wrong_type("a list")),
        }
    }

    pub fn text(&self) -> FieldResult<&'a str> {
        match self.value {
            Value::String(text) => Ok(text),
            _ => Err(self.wrong_type("text")),
        }
    }

    /// A port number, given as a number or as decimal text (map keys are often quoted).
    pub fn port(&self) -> FieldResult<u16> {
        match self.value {
            Value::Number(number) => number
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n != 0)
                .ok_or_else(|| {
                    self.error(Problem::BadPort {
                        value: number.to_string(),
                    })
                }),
            Value::String(text) => parse_port(text).ok_or_else(|| {
                self.error(Problem::BadPort {
                    value: format!("{text:?}"),
                })
            }),
            _ => Err(self.wrong_type("a port number")),
        }
    }

    /// Text that must be one of `allowed` (exactly, case-sensitive).
    pub fn one_of<T: Copy>(&self, choices: &[(&str, T)], allowed: &'static str) -> FieldResult<T> {
        let not_one_of = || {
            self.error(Problem::NotOneOf {
                value: describe(self.value),
                allowed,
            })
        };
        let text = match self.value {
            Value::String(text) => text,
            _ => return Err(not_one_of()),
        };
        choices
            .iter()
            .find(|(name, _)| name == text)
            .map(|&(_, value)| value)
            .ok_or_else(not_one_of)
    }
}

/// The known name an unknown `field` most likely meant: one that differs only in case, else the
/// nearest by edit distance, if it is near enough to be a typo rather than another word.
fn nearest(field: &str, known: &[&'static str]) -> Option<&'static str> {
    if let Some(name) = known.iter().find(|name| name.eq_ignore_ascii_case(field)) {
        return Some(name);
    }
    let limit = (field.chars().count() / 3).max(2);
    known
        .iter()
        .map(|name| (edit_distance(field, name), *name))
        .filter(|&(distance, _)| distance <= limit)
        .min()
        .map(|(_, name)| name)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `1..=65535` in decimal, nothing else.
pub(crate) fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

/// `parent.key`, or `parent["key"]` when the key would not read unambiguously after a dot.
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// A value as an error message shows it: text quoted, scalars as written, containers by type.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_string(),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a map".to_string(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("test YAML parses")
    }

    #[test]
    fn paths_use_dots_for_plain_keys_and_brackets_for_the_rest() {
        assert_eq!(child_path("", "spec"), "spec");
        assert_eq!(child_path("spec.portLevelMtls", "8080"), "spec.portLevelMtls.8080");
        assert_eq!(
            child_path("metadata.annotations", "auth.istio.io/8000"),
            "metadata.annotations[\"auth.istio.io/8000\"]"
        );
    }

    #[test]
    fn missing_and_null_fields_are_absent() {
        let value = yaml("a: null\nb: 1");
        let root = Node::root(&value);
        assert!(root.get("a").unwrap().is_none());
        assert!(root.get("c").unwrap().is_none());
        assert_eq!(root.require("c").unwrap_err().path, "c");
        assert_eq!(root.require("b").unwrap().path, "b");
    }

    #[test]
    fn ports_accept_numbers_and_decimal_text_in_range() {
        let value = yaml("[8080, '443', 0, 65536, '08x', -1]");
        let items = Node::root(&value).items().unwrap();
        let ports: Vec<_> = items.iter().map(|node| node.port().ok()).collect();
        assert_eq!(ports, [Some(8080), Some(443), None, None, None, None]);
    }

    #[test]
    fn an_unknown_field_is_named_with_the_nearest_known_name() {
        let value = yaml("spec: {mtls: {mdoe: STRICT}, selectr: {}, portLevelMTLS: {}, zzz: 1}");
        let spec = Node::root(&value).require("spec").unwrap();
        let mtls = spec.require("mtls").unwrap();
        let unknown = |error: FieldError| (error.path, error.problem.to_string());
        assert_eq!(
            unknown(mtls.known_fields(&["mode"]).unwrap_err()),
            ("spec.mtls.mdoe".into(), "unknown field; did you mean `mode`?".into())
        );
        assert_eq!(
            nearest("selectr", &["selector", "mtls", "portLevelMtls"]),
            Some("selector")
        );
        assert_eq!(
            nearest("portLevelMTLS", &["selector", "mtls", "portLevelMtls"]),
            Some("portLevelMtls")
        );
        assert_eq!(nearest("zzz", &["selector", "mtls", "portLevelMtls"]), None);
        assert_eq!(
            unknown(spec.known_fields(&["mtls", "selector", "portLevelMtls"]).unwrap_err()),
            ("spec.selectr".into(), "unknown field; did you mean `selector`?".into())
        );
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("mdoe", "mode"), 2);
        assert_eq!(edit_distance("selectr", "selector"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_non_map_where_a_map_belongs_is_named_by_type() {
        let value = yaml("spec: [1]");
        let spec = Node::root(&value).require("spec").unwrap();
        assert_eq!(
            spec.get("mtls").unwrap_err(),
            FieldError {
                path: "spec".into(),
                problem: Problem::WrongType {
                    expected: "a map",
                    found: "a list".into()
                }
            }
        );
    }
}
