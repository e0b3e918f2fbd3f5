//! Loading: files, directories, ConfigMap layout, duplicates.

use std::fs;
use std::path::PathBuf;

use crate::policy::test_support::{peer, workload};
use crate::policy::{MtlsMode, PolicySet};

/// A fresh directory under the system temp dir (no tempfile crate); each test removes its own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerguard-policy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

#[test]
fn a_directory_loads_sorted_policy_files_and_skips_dot_names_and_others() {
    let dir = scratch("dir");
    fs::write(dir.join("b.yml"), peer("foo", "b", "{mtls: {mode: STRICT}}")).unwrap();
    fs::write(dir.join("a.yaml"), peer("foo", "a", "{mtls: {mode: DISABLE}}")).unwrap();
    fs::write(
        dir.join("c.json"),
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c", "namespace": "foo"}}"#,
    )
    .unwrap();
    fs::write(dir.join("notes.txt"), "not: [yaml").unwrap();
    fs::write(dir.join(".hidden.yaml"), "not: [yaml").unwrap();
    fs::create_dir(dir.join("..data")).unwrap();
    fs::write(dir.join("..data").join("x.yaml"), "not: [yaml").unwrap();

    let loaded = PolicySet::load(&dir).expect("the directory loads");
    let names: Vec<_> = loaded.files.iter().map(|f| f.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, ["a.yaml", "b.yml", "c.json"]);
    let policy = loaded.set.resolve(&workload("foo", &[]), 80);
    assert_eq!(policy.mode, MtlsMode::Disable, "a is the smaller name");
    fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_configmap_mount_is_read_through_its_symlinks() {
    let dir = scratch("configmap");
    let data = dir.join("..2024_01_01_00_00_00.1");
    fs::create_dir(&data).unwrap();
    fs::write(
        data.join("policy.yaml"),
        peer("foo", "default", "{mtls: {mode: STRICT}}"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();

    let loaded = PolicySet::load(&dir).expect("the ConfigMap loads");
    assert_eq!(loaded.files, [dir.join("policy.yaml")]);
    assert_eq!(loaded.set.resolve(&workload("foo", &[]), 80).mode, MtlsMode::Strict);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn duplicates_across_files_name_both_places() {
    let dir = scratch("duplicates");
    fs::write(dir.join("a.yaml"), peer("foo", "default", "{}")).unwrap();
    let second = format!("{}---\n{}", peer("foo", "other", "{}"), peer("foo", "default", "{}"));
    fs::write(dir.join("b.yaml"), second).unwrap();

    let message = PolicySet::load(&dir).expect_err("duplicates are refused").to_string();
    let a = dir.join("a.yaml").display().to_string();
    let b = dir.join("b.yaml").display().to_string();
    assert_eq!(
        message,
        format!(
            "{b}: document 1 (PeerAuthentication foo/default): has the same kind, namespace and name as \
             {a}: document 0 (PeerAuthentication foo/default)"
        )
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_same_name_in_another_namespace_or_kind_is_no_duplicate() {
    let text = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: default, namespace: foo}}\n",
        peer("foo", "default", "{}"),
        peer("bar", "default", "{}")
    );
    assert!(PolicySet::parse_str(&text, "p.yaml").is_ok());
}

#[test]
fn a_missing_file_is_a_read_error() {
    let message = PolicySet::load(std::path::Path::new("/nonexistent/policy.yaml"))
        .expect_err("no such file")
        .to_string();
    assert!(
        message.starts_with("cannot read /nonexistent/policy.yaml: "),
        "{message}"
    );
}

#[test]
fn no_policy_at_all_makes_every_port_permissive() {
    let policy = PolicySet::empty().resolve(&workload("foo", &[("app", "x")]), 8080);
    assert_eq!(
        (policy.mode, policy.source, policy.http_alpn),
        (MtlsMode::Permissive, None, false)
    );
}
