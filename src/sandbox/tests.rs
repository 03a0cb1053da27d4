//! Unit tests of the compiled-component cache and the tool registry's load errors.

use std::path::{Path, PathBuf};

use super::manifest;
use super::*;
use crate::policy::settings::Limits;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tools")
        .join(name)
}

/// A component is compiled once; the second load comes from behalf's own artifact, a changed
/// engine setting or a damaged artifact means a fresh compile (never a stale or broken load).
#[test]
fn compiled_components_are_cached_by_component_and_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let wasm = fixture("echo").join("echo.wasm");
    let engine = engine(16 << 20).unwrap();

    let (_, cached) = load_component(&engine, &wasm, &cache).unwrap();
    assert!(!cached, "the first load compiles");
    let artifacts: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(artifacts.len(), 1, "one artifact per component and engine");
    let (_, cached) = load_component(&engine, &wasm, &cache).unwrap();
    assert!(cached, "the second load uses the artifact");

    // Another engine configuration (a different memory reservation) has another key.
    let other = super::engine(32 << 20).unwrap();
    let (_, cached) = load_component(&other, &wasm, &cache).unwrap();
    assert!(
        !cached,
        "a different engine never loads another engine's artifact"
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);

    // A damaged artifact is recompiled and replaced, not trusted.
    let artifact = cache.join(format!(
        "{}.cwasm",
        cache_key(&engine, &std::fs::read(&wasm).unwrap())
    ));
    std::fs::write(&artifact, b"not an artifact").unwrap();
    let (_, cached) = load_component(&engine, &wasm, &cache).unwrap();
    assert!(!cached);
    let (_, cached) = load_component(&engine, &wasm, &cache).unwrap();
    assert!(cached, "the replacement artifact is used next time");
}

/// A core module or garbage is refused with a message saying what to build.
#[test]
fn a_non_component_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.wasm");
    // A valid core module header (version 1), not a component.
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let engine = engine(16 << 20).unwrap();
    let err = load_component(&engine, &path, &tmp.path().join("cache"))
        .err()
        .unwrap();
    assert!(err.contains("wasm32-wasip2"), "{err}");
}

fn tool_dir(root: &Path, name: &str, manifest: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tool.toml"), manifest).unwrap();
    std::fs::copy(fixture("echo").join("echo.wasm"), dir.join("t.wasm")).unwrap();
    dir
}

fn load(root: &Path) -> (Vec<Manifest>, Vec<String>) {
    let mut diags = Diagnostics::default();
    let manifests = manifest::read_all(root, &Limits::default(), &mut diags);
    let messages = diags
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect();
    (manifests, messages)
}

const GOOD: &str = r#"name = "NAME"
description = "d"
component = "t.wasm"
"#;

#[test]
fn manifests_load_and_skip_directories_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    tool_dir(tmp.path(), "good", &GOOD.replace("NAME", "good"));
    std::fs::create_dir_all(tmp.path().join("target/release")).unwrap();
    let (manifests, errors) = load(tmp.path());
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(manifests.len(), 1);
    let m = &manifests[0];
    assert_eq!(m.name.as_str(), "good");
    assert_eq!(m.input_schema, serde_json::json!({"type": "object"}));
    assert_eq!(m.limits.memory, Limits::default().tool_memory);
    assert!(!m.state);
}

/// Each mistake is an error naming the file, line and column and what to do.
#[test]
fn manifest_errors_name_file_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "mismatch",
            "name = \"other\"\ndescription = \"d\"\ncomponent = \"t.wasm\"\n",
            "mismatch/tool.toml:1:8: error: the tool's name must be its directory's name: `other` is in `mismatch/`",
        ),
        (
            "unknown",
            "name = \"unknown\"\ndescription = \"d\"\ncomponent = \"t.wasm\"\nstate = false\nsecret = 1\n",
            "unknown/tool.toml:5:1: error: unknown field `secret`",
        ),
        (
            "missing",
            "name = \"missing\"\ndescription = \"d\"\ncomponent = \"nope.wasm\"\n",
            "missing/tool.toml:3:13: error: component `nope.wasm` must be a file in the tool's directory",
        ),
        (
            "escape",
            "name = \"escape\"\ndescription = \"d\"\ncomponent = \"../good/t.wasm\"\n",
            "escape/tool.toml:3:13: error: component `../good/t.wasm` must be a file in the tool's directory",
        ),
        (
            "ceiling",
            "name = \"ceiling\"\ndescription = \"d\"\ncomponent = \"t.wasm\"\n[limits]\nmemory = \"1GiB\"\n",
            "error: limits.memory = 1073741824 is above behalf.toml's [limits] ceiling (67108864)",
        ),
        (
            "schema",
            "name = \"schema\"\ndescription = \"d\"\ncomponent = \"t.wasm\"\n[input_schema]\ntype = \"no-such-type\"\n",
            "schema/tool.toml:4:1: error: input_schema is not a valid JSON Schema",
        ),
        (
            "Upper",
            "name = \"Upper\"\ndescription = \"d\"\ncomponent = \"t.wasm\"\n",
            "Upper: error: the directory name is the tool's name",
        ),
    ];
    for (dir, manifest, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        tool_dir(tmp.path(), dir, manifest);
        let (_, errors) = load(tmp.path());
        let root = format!("{}/", tmp.path().display());
        let errors: Vec<String> = errors.iter().map(|e| e.replace(&root, "")).collect();
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{dir}: expected an error containing\n  {expected}\ngot\n  {errors:#?}"
        );
    }
}
