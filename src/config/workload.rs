//! Who the workload is (docs/policy.md#the-workload): `--labels k=v,...` or the downward-API
//! labels file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::WorkloadArgs;
use crate::policy::Workload;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("--labels: {text:?} is not key=value")]
    BadLabel { text: String },
    #[error("--labels: {text:?} has an empty key")]
    EmptyLabelKey { text: String },
    #[error("cannot read the labels file {}: {source}", path.display())]
    ReadLabelsFile { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {problem} (expected key=\"value\")", path.display())]
    BadLabelsLine {
        path: PathBuf,
        /// 1-based, as editors count.
        line: usize,
        problem: &'static str,
    },
}

/// The workload from `--namespace`, `--labels` or `--labels-file`, and `--root-namespace`:
/// `run` and `check` read it the same way, and fail the same way.
pub fn workload_from(args: &WorkloadArgs) -> Result<Workload, WorkloadError> {
    let labels = match &args.labels_file {
        Some(path) => read_labels_file(path)?,
        None => parse_label_args(&args.labels)?,
    };
    Ok(Workload {
        namespace: args.namespace.clone(),
        labels,
        root_namespace: args.root_namespace.clone(),
    })
}

/// The labels of a downward-API labels file; read at start and again whenever it changes
/// (labels can change while the pod runs).
pub fn read_labels_file(path: &Path) -> Result<BTreeMap<String, String>, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::ReadLabelsFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_labels_file(&text).map_err(|(line, problem)| WorkloadError::BadLabelsLine {
        path: path.to_path_buf(),
        line,
        problem,
    })
}

fn parse_label_args(args: &[String]) -> Result<BTreeMap<String, String>, WorkloadError> {
    args.iter()
        .filter(|text| !text.is_empty())
        .map(|text| {
            let (key, value) = text
                .split_once('=')
                .ok_or_else(|| WorkloadError::BadLabel { text: text.clone() })?;
            if key.is_empty() {
                return Err(WorkloadError::EmptyLabelKey { text: text.clone() });
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// The downward API writes one `key="value"` per line, the value quoted as Go's `%q` does.
fn parse_labels_file(text: &str) -> Result<BTreeMap<String, String>, (usize, &'static str)> {
    let mut labels = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |problem| (index + 1, problem);
        let (key, quoted) = line.split_once('=').ok_or(at("no `=`"))?;
        if key.is_empty() {
            return Err(at("empty key"));
        }
        let value = unquote(quoted).map_err(at)?;
        labels.insert(key.to_string(), value);
    }
    Ok(labels)
}

/// Undoes Go's `strconv.Quote`: `\"`, `\\`, `\a\b\f\n\r\t\v`, `\xNN`, `\uNNNN`, `\UNNNNNNNN`.
fn unquote(quoted: &str) -> Result<String, &'static str> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or("the value is not in double quotes")?;
    let mut value = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            return Err("an unescaped quote inside the value");
        }
        if c != '\\' {
            value.push(c);
            continue;
        }
        let escaped = match chars.next().ok_or("a dangling backslash")? {
            '"' => '"',
            '\\' => '\\',
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            'x' => hex_char(&mut chars, 2)?,
            'u' => hex_char(&mut chars, 4)?,
            'U' => hex_char(&mut chars, 8)?,
            _ => return Err("an unknown escape"),
        };
        value.push(escaped);
    }
    Ok(value)
}

fn hex_char(chars: &mut std::str::Chars, digits: usize) -> Result<char, &'static str> {
    let hex: String = chars.take(digits).collect();
    if hex.len() != digits {
        return Err("a short hex escape");
    }
    u32::from_str_radix(&hex, 16)
        .ok()
        .and_then(char::from_u32)
        .ok_or("a bad hex escape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments_are_key_value_pairs() {
        let labels = parse_label_args(&["app=finance".into(), "version=v1=x".into()]).unwrap();
        assert_eq!(labels["app"], "finance");
        assert_eq!(labels["version"], "v1=x");
        assert!(matches!(
            parse_label_args(&["app".into()]),
            Err(WorkloadError::BadLabel { .. })
        ));
        assert!(matches!(
            parse_label_args(&["=x".into()]),
            Err(WorkloadError::EmptyLabelKey { .. })
        ));
    }

    #[test]
    fn the_downward_api_labels_file_is_read_with_go_escapes() {
        let labels = parse_labels_file(
            "app=\"httpbin\"\npod-template-hash=\"5f6b\"\n\nnote=\"a \\\"b\\\" \\\\ \\x41\\u00e9\"\n",
        )
        .unwrap();
        assert_eq!(labels["app"], "httpbin");
        assert_eq!(labels["pod-template-hash"], "5f6b");
        assert_eq!(labels["note"], "a \"b\" \\ Aé");
    }

    #[test]
    fn a_bad_labels_line_names_its_number() {
        assert_eq!(
            parse_labels_file("app=\"x\"\nversion=v1\n"),
            Err((2, "the value is not in double quotes"))
        );
        assert_eq!(parse_labels_file("app\n"), Err((1, "no `=`")));
        assert_eq!(parse_labels_file("a=\"\\q\"\n"), Err((1, "an unknown escape")));
    }
}
