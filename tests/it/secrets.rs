//! The secret store: the file backend's encryption, binding, locking and crash safety; the
//! `env` and `dir` backends; master key configuration; and `behalf secret ...` as the real
//! binary. Every value used here is a canary that must never show up outside `get`.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::copy_dir;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use behalf::policy::settings::{Backend, Settings};
use behalf::principal::TenantId;
use behalf::secrets::file::{DEV_KEY_FILE, MasterKey, STORE_FILE};
use behalf::secrets::{
    FileStore, OAuth2Credentials, Secret, SecretError, SecretId, SecretStore, open_store_with_env,
};
use behalf::state::StateDir;
use serde_json::Value;

const OK: i32 = 0;
const NEGATIVE: i32 = 1;
const USAGE: i32 = 2;
const CONFIG: i32 = 64;

fn id(s: &str) -> SecretId {
    SecretId::parse(s).unwrap()
}

fn get(store: &dyn SecretStore, s: &str) -> Result<Option<Secret>, SecretError> {
    let i = id(s);
    store.get(&i.namespace, &i.name)
}

fn value(store: &dyn SecretStore, s: &str) -> Vec<u8> {
    get(store, s)
        .unwrap()
        .unwrap_or_else(|| panic!("{s} missing"))
        .expose()
        .to_vec()
}

fn set(store: &dyn SecretStore, s: &str, v: &str) {
    store.set(&id(s), &Secret::from_text(v)).unwrap();
}

/// Settings with defaults under `base`, in or out of development mode.
fn settings(base: &Path, dev: bool) -> Settings {
    let mut s = Settings::defaults(base);
    s.dev = dev;
    s
}

fn no_env() -> Vec<(OsString, OsString)> {
    Vec::new()
}

fn key_env(key: [u8; 32]) -> Vec<(OsString, OsString)> {
    vec![("BEHALF_MASTER_KEY".into(), BASE64.encode(key).into())]
}

/// A temp dir with an opened state dir `<tmp>/state`.
fn state() -> (tempfile::TempDir, StateDir) {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::open(&tmp.path().join("state")).unwrap();
    (tmp, state)
}

fn file_store(state: &StateDir, key: u8) -> FileStore {
    FileStore::open(state.join(STORE_FILE), &MasterKey::new([key; 32])).unwrap()
}

/// Edits the store file's JSON in place.
fn edit_store(state: &StateDir, f: impl FnOnce(&mut Value)) {
    let path = state.join(STORE_FILE);
    let mut doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    f(&mut doc);
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

/// The store record for `tenant`/`user`/`name`.
fn record<'a>(doc: &'a mut Value, tenant: &str, user: Option<&str>, name: &str) -> &'a mut Value {
    doc["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| {
            r["tenant"] == tenant
                && r.get("user").and_then(Value::as_str) == user
                && r["name"] == name
        })
        .unwrap_or_else(|| panic!("no record {tenant}/{user:?}/{name}"))
}

// ---------------------------------------------------------------------------------------------
// file backend

#[test]
fn file_round_trip_set_get_list_disable_enable_rm() {
    let (tmp, state) = state();
    let store = open_store_with_env(&settings(tmp.path(), true), &state, no_env()).unwrap();
    assert_eq!(store.backend(), "file");
    set(&*store, "acme/alice/github_token", "alice-gh");
    set(&*store, "acme/deploy_key", "acme-deploy");
    assert_eq!(value(&*store, "acme/alice/github_token"), b"alice-gh");

    let list = store.list(None).unwrap();
    let names: Vec<String> = list.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(names, ["acme/deploy_key", "acme/alice/github_token"]);
    assert!(list.iter().all(|i| i.enabled && i.updated.is_some()));

    store
        .set_enabled(&id("acme/alice/github_token"), false)
        .unwrap();
    let err = get(&*store, "acme/alice/github_token").unwrap_err();
    assert!(matches!(err, SecretError::Disabled { .. }), "{err}");
    assert!(!store.list(None).unwrap()[1].enabled);
    // Still stored: enabling brings back the same value.
    store
        .set_enabled(&id("acme/alice/github_token"), true)
        .unwrap();
    assert_eq!(value(&*store, "acme/alice/github_token"), b"alice-gh");

    store.remove(&id("acme/alice/github_token")).unwrap();
    assert!(get(&*store, "acme/alice/github_token").unwrap().is_none());
    for e in [
        store.remove(&id("acme/alice/github_token")).unwrap_err(),
        store.set_enabled(&id("acme/nope"), true).unwrap_err(),
    ] {
        assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
    }

    // A fresh open (another process, later) reads the same store.
    let again = open_store_with_env(&settings(tmp.path(), true), &state, no_env()).unwrap();
    assert_eq!(value(&*again, "acme/deploy_key"), b"acme-deploy");
    assert_eq!(again.list(None).unwrap().len(), 1);
}

#[test]
fn namespaces_are_isolated() {
    let (_tmp, state) = state();
    let store = file_store(&state, 1);
    set(&store, "acme/alice/github_token", "alice");
    set(&store, "acme/bob/github_token", "bob");
    set(&store, "acme/github_token", "tenant");
    set(&store, "globex/alice/github_token", "globex-alice");
    assert_eq!(value(&store, "acme/alice/github_token"), b"alice");
    assert_eq!(value(&store, "acme/bob/github_token"), b"bob");
    assert_eq!(value(&store, "acme/github_token"), b"tenant");
    assert_eq!(value(&store, "globex/alice/github_token"), b"globex-alice");
    assert!(get(&store, "acme/carol/github_token").unwrap().is_none());
    assert!(get(&store, "globex/github_token").unwrap().is_none());
    // Removing one leaves the others.
    store.remove(&id("acme/github_token")).unwrap();
    assert_eq!(value(&store, "acme/alice/github_token"), b"alice");
    let acme = TenantId::parse("acme").unwrap();
    assert_eq!(store.list(Some(&acme)).unwrap().len(), 2);
}

#[test]
fn a_record_moved_to_another_namespace_fails_to_decrypt() {
    let (_tmp, state) = state();
    {
        let store = file_store(&state, 1);
        set(&store, "acme/alice/github_token", "CANARY-alice-moved");
        set(&store, "acme/deploy_key", "CANARY-tenant-moved");
        set(&store, "acme/alice/other", "CANARY-renamed");
        set(&store, "acme/alice/off", "CANARY-disabled");
        store.set_enabled(&id("acme/alice/off"), false).unwrap();
    }
    edit_store(&state, |doc| {
        // alice's token relabelled as bob's; the tenant key relabelled as alice's;
        // a record renamed; a disabled record re-enabled by editing the flag.
        record(doc, "acme", Some("alice"), "github_token")["user"] = "bob".into();
        record(doc, "acme", None, "deploy_key")["user"] = "alice".into();
        record(doc, "acme", Some("alice"), "other")["name"] = "renamed".into();
        record(doc, "acme", Some("alice"), "off")["enabled"] = true.into();
    });
    let store = file_store(&state, 1);
    for moved in [
        "acme/bob/github_token",
        "acme/alice/deploy_key",
        "acme/alice/renamed",
        "acme/alice/off",
    ] {
        let err = get(&store, moved).unwrap_err();
        assert!(
            matches!(err, SecretError::Tampered { .. }),
            "{moved}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(moved) && msg.contains(STORE_FILE), "{msg}");
        assert!(!msg.contains("CANARY"), "{msg}");
    }
    // Enabling a tampered record fails too, rather than re-sealing it under the new label.
    assert!(matches!(
        store.set_enabled(&id("acme/bob/github_token"), false),
        Err(SecretError::Tampered { .. })
    ));
}

#[test]
fn a_wrong_master_key_is_a_clear_error_naming_the_file() {
    let (tmp, state) = state();
    let s = settings(tmp.path(), false);
    let store = open_store_with_env(&s, &state, key_env([1; 32])).unwrap();
    set(&*store, "acme/alice/github_token", "CANARY-wrong-key");
    drop(store);

    let err = open_store_with_env(&s, &state, key_env([2; 32])).unwrap_err();
    assert!(matches!(err, SecretError::WrongKey { .. }), "{err}");
    assert!(err.is_config());
    let msg = err.to_string();
    let file = state.join(STORE_FILE).display().to_string();
    assert!(msg.contains(&format!("cannot decrypt {file}")), "{msg}");
    assert!(msg.contains("wrong master key"), "{msg}");

    // The right key still works.
    let store = open_store_with_env(&s, &state, key_env([1; 32])).unwrap();
    assert_eq!(
        value(&*store, "acme/alice/github_token"),
        b"CANARY-wrong-key"
    );
}

#[test]
fn a_leftover_temp_file_leaves_the_store_readable_and_writable() {
    let (_tmp, state) = state();
    let store = file_store(&state, 1);
    set(&store, "acme/alice/github_token", "before-crash");
    let good = fs::read(state.join(STORE_FILE)).unwrap();
    // What a writer killed mid-write leaves: a half-written temp file beside the store.
    let torn = state.join(&format!(".{STORE_FILE}.tmp-00112233deadbeef"));
    fs::write(&torn, &good[..good.len() / 2]).unwrap();
    let garbage = state.join(&format!(".{STORE_FILE}.tmp-ffffffffffffffff"));
    fs::write(&garbage, b"\x00\x01garbage").unwrap();

    let reopened = file_store(&state, 1);
    assert_eq!(value(&reopened, "acme/alice/github_token"), b"before-crash");
    set(&reopened, "acme/bob/github_token", "after-crash");
    assert_eq!(value(&reopened, "acme/alice/github_token"), b"before-crash");
    assert_eq!(value(&reopened, "acme/bob/github_token"), b"after-crash");
    assert!(
        !torn.exists() && !garbage.exists(),
        "the next writer cleans up"
    );
    // The other instance sees the new file.
    assert_eq!(value(&store, "acme/bob/github_token"), b"after-crash");
}

#[test]
fn concurrent_writers_in_one_process_lose_nothing() {
    let (_tmp, state) = state();
    std::thread::scope(|scope| {
        for w in 0..4 {
            let state = &state;
            scope.spawn(move || {
                // Each thread has its own store, hence its own lock file handle.
                let store = file_store(state, 1);
                for i in 0..10 {
                    set(&store, &format!("acme/w{w}-{i}"), "v");
                }
            });
        }
    });
    assert_eq!(file_store(&state, 1).list(None).unwrap().len(), 40);
}

#[test]
fn a_corrupt_store_is_a_clear_error() {
    let (_tmp, state) = state();
    fs::write(state.join(STORE_FILE), b"{ not json").unwrap();
    let err = FileStore::open(state.join(STORE_FILE), &MasterKey::new([1; 32])).unwrap_err();
    assert!(
        matches!(err, SecretError::Corrupt { .. }) && err.is_config(),
        "{err}"
    );
    assert!(err.to_string().contains(STORE_FILE), "{err}");

    // Root ignores permissions, so make the store unreadable by putting a directory there.
    fs::remove_file(state.join(STORE_FILE)).unwrap();
    fs::create_dir(state.join(STORE_FILE)).unwrap();
    let err = FileStore::open(state.join(STORE_FILE), &MasterKey::new([1; 32])).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// master key configuration

#[test]
fn without_dev_a_missing_master_key_names_what_to_set() {
    let (tmp, state) = state();
    let err = open_store_with_env(&settings(tmp.path(), false), &state, no_env()).unwrap_err();
    assert!(matches!(err, SecretError::NoMasterKey { .. }) && err.is_config());
    let msg = err.to_string();
    assert!(
        msg.contains("BEHALF_MASTER_KEY") && msg.contains("master_key_file"),
        "{msg}"
    );
    assert!(
        !state.join(DEV_KEY_FILE).exists(),
        "no key is generated outside dev mode"
    );

    // A custom variable name is the one named.
    let mut s = settings(tmp.path(), false);
    s.secrets.master_key_env = "MY_KEY".into();
    let msg = open_store_with_env(&s, &state, key_env([1; 32]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("set MY_KEY"), "{msg}");

    // A malformed key is named by its source and never quoted.
    let bad = vec![(
        OsString::from("BEHALF_MASTER_KEY"),
        OsString::from("CANARY-not-base64!"),
    )];
    let msg = open_store_with_env(&settings(tmp.path(), false), &state, bad)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("env var BEHALF_MASTER_KEY") && msg.contains("base64"),
        "{msg}"
    );
    assert!(!msg.contains("CANARY"), "{msg}");
}

#[test]
fn dev_mode_generates_a_key_and_a_lost_key_names_both_files() {
    let (tmp, state) = state();
    let s = settings(tmp.path(), true);
    let store = open_store_with_env(&s, &state, no_env()).unwrap();
    set(&*store, "acme/alice/github_token", "dev");
    drop(store);
    assert_eq!(fs::read(state.join(DEV_KEY_FILE)).unwrap().len(), 32);
    assert_eq!(
        value(
            &*open_store_with_env(&s, &state, no_env()).unwrap(),
            "acme/alice/github_token"
        ),
        b"dev"
    );

    fs::remove_file(state.join(DEV_KEY_FILE)).unwrap();
    let err = open_store_with_env(&s, &state, no_env()).unwrap_err();
    assert!(matches!(err, SecretError::KeyMissing { .. }) && err.is_config());
    let msg = err.to_string();
    for file in [STORE_FILE, DEV_KEY_FILE] {
        assert!(
            msg.contains(&state.join(file).display().to_string()),
            "{msg}"
        );
    }
    assert!(
        !state.join(DEV_KEY_FILE).exists(),
        "a new key is not generated over the store"
    );

    // An unreadable key (a directory where the file should be: root ignores permissions) is an
    // error naming the file, not a panic and not a fresh key.
    fs::create_dir(state.join(DEV_KEY_FILE)).unwrap();
    let msg = open_store_with_env(&s, &state, no_env())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(DEV_KEY_FILE), "{msg}");
    fs::remove_dir(state.join(DEV_KEY_FILE)).unwrap();

    // Outside dev mode, an existing store without a key names the store and the variable.
    let msg = open_store_with_env(&settings(tmp.path(), false), &state, no_env())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(STORE_FILE) && msg.contains("BEHALF_MASTER_KEY"),
        "{msg}"
    );
}

#[test]
fn a_master_key_file_takes_raw_or_base64_and_a_lost_one_names_both_files() {
    let (tmp, state) = state();
    let key_file = tmp.path().join("master.b64");
    fs::write(&key_file, format!("{}\n", BASE64.encode([5u8; 32]))).unwrap();
    let mut s = settings(tmp.path(), false);
    s.secrets.master_key_file = Some(key_file.clone());
    let store = open_store_with_env(&s, &state, no_env()).unwrap();
    set(&*store, "acme/k", "v");
    drop(store);
    // The same key as 32 raw bytes opens the same store.
    fs::write(&key_file, [5u8; 32]).unwrap();
    assert_eq!(
        value(
            &*open_store_with_env(&s, &state, no_env()).unwrap(),
            "acme/k"
        ),
        b"v"
    );

    // Root ignores permissions, so make the key unreadable by putting a directory there.
    fs::remove_file(&key_file).unwrap();
    fs::create_dir(&key_file).unwrap();
    let err = open_store_with_env(&s, &state, no_env()).unwrap_err();
    assert!(
        matches!(err, SecretError::BadMasterKey { .. }) && err.is_config(),
        "{err}"
    );
    assert!(
        err.to_string().contains("master.b64: cannot read it"),
        "{err}"
    );

    fs::remove_dir(&key_file).unwrap();
    let err = open_store_with_env(&s, &state, no_env()).unwrap_err();
    assert!(matches!(err, SecretError::KeyMissing { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("master.b64") && msg.contains(STORE_FILE),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// env and dir backends

#[test]
fn env_backend_reads_variables_and_is_read_only() {
    let (tmp, state) = state();
    let mut s = settings(tmp.path(), false);
    s.secrets.backend = Backend::Env;
    let vars = vec![
        (
            "BEHALF_SECRET__acme__alice__github_token".into(),
            "alice-env".into(),
        ),
        (
            "BEHALF_SECRET__acme__github_token".into(),
            "tenant-env".into(),
        ),
        ("HOME".into(), "/root".into()),
    ];
    let store = open_store_with_env(&s, &state, vars).unwrap();
    assert_eq!(store.backend(), "env");
    assert_eq!(value(&*store, "acme/alice/github_token"), b"alice-env");
    assert_eq!(value(&*store, "acme/github_token"), b"tenant-env");
    assert!(get(&*store, "acme/bob/github_token").unwrap().is_none());
    assert_eq!(store.list(None).unwrap().len(), 2);
    for err in [
        store
            .set(&id("acme/x"), &Secret::from_text("v"))
            .unwrap_err(),
        store.remove(&id("acme/github_token")).unwrap_err(),
        store
            .set_enabled(&id("acme/github_token"), false)
            .unwrap_err(),
    ] {
        assert!(
            matches!(err, SecretError::ReadOnly { backend: "env" }),
            "{err}"
        );
        assert!(err.to_string().contains("read-only"));
    }
}

#[test]
fn dir_backend_reads_files_refuses_escapes_and_is_read_only() {
    let (tmp, state) = state();
    let root = tmp.path().join("mounted");
    fs::create_dir_all(root.join("acme/alice")).unwrap();
    fs::write(root.join("acme/alice/github_token"), "alice-dir").unwrap();
    fs::write(root.join("acme/deploy_key"), "tenant-dir\n").unwrap();
    fs::write(tmp.path().join("outside"), "CANARY-outside-root").unwrap();
    fs::create_dir_all(root.join("acme/bob")).unwrap();
    symlink(
        tmp.path().join("outside"),
        root.join("acme/bob/github_token"),
    )
    .unwrap();
    symlink(tmp.path(), root.join("globex")).unwrap();

    let mut s = settings(tmp.path(), false);
    s.secrets.backend = Backend::Dir;
    s.secrets.root = Some(root.clone());
    let store = open_store_with_env(&s, &state, no_env()).unwrap();
    assert_eq!(store.backend(), "dir");
    assert_eq!(value(&*store, "acme/alice/github_token"), b"alice-dir");
    assert_eq!(
        value(&*store, "acme/deploy_key"),
        b"tenant-dir\n",
        "not trimmed"
    );
    for escape in ["acme/bob/github_token", "globex/outside"] {
        let err = get(&*store, escape).unwrap_err();
        assert!(matches!(err, SecretError::Escape { .. }), "{escape}: {err}");
        assert!(!err.to_string().contains("CANARY"));
    }
    let names: Vec<String> = store
        .list(None)
        .unwrap()
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(names, ["acme/deploy_key", "acme/alice/github_token"]);
    assert!(matches!(
        store.set(&id("acme/x"), &Secret::from_text("v")),
        Err(SecretError::ReadOnly { backend: "dir" })
    ));
}

// ---------------------------------------------------------------------------------------------
// the canary never leaks

/// A tracing writer that appends to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes every tracing callsite interesting to some subscriber for the rest of the process.
///
/// tracing caches per callsite whether any subscriber wants it; a callsite first hit by a test
/// on another thread, with no subscriber, can be cached as "never" while a scoped
/// (`with_default`) subscriber is being installed here, and its events are then lost. A global
/// subscriber that wants everything (and writes nowhere) keeps every callsite enabled, so the
/// scoped capture below sees all events of its thread.
fn keep_all_callsites_enabled() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sink = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(std::io::sink)
            .finish();
        // Another test may have installed one first; it serves as well only if it wants
        // everything, which the assertion on the captured log below would catch.
        let _ = tracing::subscriber::set_global_default(sink);
    });
    tracing::callsite::rebuild_interest_cache();
}

#[test]
fn a_canary_never_appears_in_logs_errors_or_debug_output() {
    const CANARY: &str = "CANARY-7f3a9c1e-do-not-print";
    keep_all_callsites_enabled();
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let (tmp, state) = state();
    let mut seen: Vec<String> = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        let s = settings(tmp.path(), true);
        let store = open_store_with_env(&s, &state, no_env()).unwrap();
        set(&*store, "acme/alice/github_token", CANARY);
        let json = format!(r#"{{"client_id":"id","client_secret":"{CANARY}"}}"#);
        set(&*store, "acme/oauth", &json);
        seen.push(format!("{store:?}"));

        let again = open_store_with_env(&s, &state, no_env()).unwrap();
        let loaded = get(&*again, "acme/alice/github_token").unwrap().unwrap();
        assert_eq!(loaded.expose(), CANARY.as_bytes());
        seen.push(format!("{loaded:?} {:?}", Some(&loaded)));
        let oauth = OAuth2Credentials::parse(&get(&*again, "acme/oauth").unwrap().unwrap());
        seen.push(format!("{oauth:?}"));
        seen.push(format!("{:?}", again.list(None).unwrap()));

        // Errors produced around the value: disabled, tampered, wrong key, malformed JSON.
        again
            .set_enabled(&id("acme/alice/github_token"), false)
            .unwrap();
        let disabled = get(&*again, "acme/alice/github_token").unwrap_err();
        seen.push(format!("{disabled} {disabled:?}"));
        let bad_json = OAuth2Credentials::parse(&Secret::from_text(CANARY)).unwrap_err();
        seen.push(format!("{bad_json} {bad_json:?}"));
        let wrong = open_store_with_env(&settings(tmp.path(), false), &state, key_env([9; 32]))
            .unwrap_err();
        seen.push(format!("{wrong} {wrong:?}"));
        edit_store(&state, |doc| {
            record(doc, "acme", None, "oauth")["user"] = "bob".into();
        });
        let tampered = get(&*again, "acme/bob/oauth").unwrap_err();
        seen.push(format!("{tampered} {tampered:?}"));
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for event in ["secret stored", "secret loaded", "secret state changed"] {
        assert!(
            logs.contains(event),
            "the capture works: {event:?} missing from {logs}"
        );
    }
    assert!(logs.contains("acme/alice/github_token"), "{logs}");
    assert!(!logs.contains(CANARY), "log leaked the canary: {logs}");
    for s in &seen {
        assert!(!s.contains(CANARY), "leaked the canary: {s}");
    }
    let on_disk = fs::read(state.join(STORE_FILE)).unwrap();
    assert!(!String::from_utf8_lossy(&on_disk).contains(CANARY));
}

// ---------------------------------------------------------------------------------------------
// `behalf secret ...`, the real binary

/// A temp dir holding a copy of the shipped policies (`<tmp>/policies`) and the state dir
/// passed with `--state` (`<tmp>/state`).
struct Cli {
    tmp: tempfile::TempDir,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout:\n{}--- stderr:\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{self}");
        self
    }
}

impl Cli {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        copy_dir(&shipped, &tmp.path().join("policies"));
        Self { tmp }
    }

    /// Turns development mode off in the copied behalf.toml.
    fn production(self) -> Self {
        let file = self.policies().join("behalf.toml");
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| {
                if l.trim() == "dev = true" {
                    "dev = false"
                } else {
                    l
                }
            })
            .collect();
        assert!(
            lines.contains(&"dev = false"),
            "{} sets dev = true",
            file.display()
        );
        fs::write(&file, lines.join("\n")).unwrap();
        self
    }

    fn policies(&self) -> PathBuf {
        self.tmp.path().join("policies")
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_behalf"));
        cmd.arg("--policies")
            .arg(self.policies())
            .arg("--state")
            .arg(self.state())
            .args(args)
            .current_dir(self.tmp.path())
            .env_remove("BEHALF_MASTER_KEY")
            .env("BEHALF_LOG", "trace");
        cmd
    }

    fn run_with(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut child = self
            .command(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the behalf binary");
        // A run that fails on its arguments exits without reading stdin: a broken pipe then
        // is expected, and the exit code says what happened.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    fn run(&self, args: &[&str], stdin: &str) -> Run {
        self.run_with(args, stdin, &[])
    }

    /// Opens the store the binary wrote, with the dev key it generated.
    fn store(&self) -> FileStore {
        let state = StateDir::open(&self.state()).unwrap();
        let key: [u8; 32] = fs::read(state.join(DEV_KEY_FILE))
            .unwrap()
            .try_into()
            .unwrap();
        FileStore::open(state.join(STORE_FILE), &MasterKey::new(key)).unwrap()
    }
}

#[test]
fn cli_manages_secrets_without_printing_values() {
    const CANARY: &str = "CANARY-cli-0b9e";
    let cli = Cli::new();
    let set = cli.run(
        &["secret", "set", "acme/alice/github_token"],
        &format!("{CANARY}\n"),
    );
    set.expect(OK);
    assert!(
        set.stdout
            .contains("stored acme/alice/github_token (scope user)"),
        "{set}"
    );
    cli.run(&["secret", "set", "globex/shared_key"], "g")
        .expect(OK);
    // One trailing newline was stripped, nothing else.
    assert_eq!(
        value(&cli.store(), "acme/alice/github_token"),
        CANARY.as_bytes()
    );

    let list = cli.run(&["secret", "list"], "");
    list.expect(OK);
    let line = list
        .stdout
        .lines()
        .find(|l| l.contains("acme/alice/github_token"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("user") && line.contains("enabled"), "{list}");
    assert!(list.stdout.contains("globex/shared_key"), "{list}");
    let acme = cli.run(&["secret", "list", "acme"], "");
    assert!(!acme.expect(OK).stdout.contains("globex"), "{acme}");

    cli.run(&["secret", "disable", "acme/alice/github_token"], "")
        .expect(OK);
    let list2 = cli.run(&["secret", "list", "acme"], "");
    assert!(list2.stdout.contains("disabled"), "{list2}");
    assert!(matches!(
        get(&cli.store(), "acme/alice/github_token"),
        Err(SecretError::Disabled { .. })
    ));
    cli.run(&["secret", "enable", "acme/alice/github_token"], "")
        .expect(OK);
    assert_eq!(
        value(&cli.store(), "acme/alice/github_token"),
        CANARY.as_bytes()
    );
    let rm = cli.run(&["secret", "rm", "acme/alice/github_token"], "");
    rm.expect(OK);
    let again = cli.run(&["secret", "rm", "acme/alice/github_token"], "");
    assert!(
        again
            .expect(NEGATIVE)
            .stderr
            .contains("no secret acme/alice/github_token")
    );
    cli.run(&["secret", "enable", "acme/nobody/x"], "")
        .expect(NEGATIVE);

    for run in [&set, &list, &acme, &list2, &rm, &again] {
        assert!(
            !run.stdout.contains(CANARY) && !run.stderr.contains(CANARY),
            "{run}"
        );
    }
}

#[test]
fn cli_usage_errors() {
    let cli = Cli::new();
    for (args, stdin, want) in [
        (&["secret", "set", "acme"][..], "v", "TENANT/NAME"),
        (&["secret", "set", "../etc/passwd"], "v", "tenant id"),
        (&["secret", "set", "acme/x"], "", "no value on stdin"),
        (&["secret", "set", "acme/x"], "\n", "no value on stdin"),
        (&["secret", "rm", "acme/a/b/c"], "", "TENANT/USER/NAME"),
        (&["secret", "list", "a/b"], "", "tenant id"),
    ] {
        let run = cli.run(args, stdin);
        run.expect(USAGE);
        assert!(run.stderr.contains(want), "{args:?}: {run}");
    }
    // The value is never taken from the command line.
    cli.run(&["secret", "set", "acme/x", "value"], "")
        .expect(USAGE);
    assert!(!cli.state().join(STORE_FILE).exists());
}

#[test]
fn cli_configuration_errors_exit_64() {
    let cli = Cli::new().production();
    let run = cli.run(&["secret", "set", "acme/x"], "v");
    run.expect(CONFIG);
    assert!(run.stderr.contains("BEHALF_MASTER_KEY"), "{run}");
    assert!(!cli.state().join(DEV_KEY_FILE).exists());

    let key = BASE64.encode([3u8; 32]);
    cli.run_with(
        &["secret", "set", "acme/x"],
        "v",
        &[("BEHALF_MASTER_KEY", &key)],
    )
    .expect(OK);
    let wrong = BASE64.encode([4u8; 32]);
    let run = cli.run_with(&["secret", "list"], "", &[("BEHALF_MASTER_KEY", &wrong)]);
    run.expect(CONFIG);
    assert!(
        run.stderr.contains("cannot decrypt") && run.stderr.contains(STORE_FILE),
        "{run}"
    );
    assert!(!run.stderr.contains(&wrong), "{run}");

    // A state dir others can read is refused.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(cli.state(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = cli.run_with(&["secret", "list"], "", &[("BEHALF_MASTER_KEY", &key)]);
    run.expect(CONFIG);
    assert!(run.stderr.contains("chmod 700"), "{run}");
}

#[test]
fn cli_dev_store_without_its_key_names_both_files() {
    let cli = Cli::new();
    cli.run(&["secret", "set", "acme/x"], "v").expect(OK);
    fs::remove_file(cli.state().join(DEV_KEY_FILE)).unwrap();
    let run = cli.run(&["secret", "list"], "");
    run.expect(CONFIG);
    assert!(
        run.stderr.contains(STORE_FILE) && run.stderr.contains(DEV_KEY_FILE),
        "{run}"
    );
}

#[test]
fn two_processes_writing_at_once_lose_no_update() {
    let cli = Cli::new();
    let cli = &cli;
    std::thread::scope(|scope| {
        for w in 0..2 {
            scope.spawn(move || {
                for i in 0..20 {
                    let name = format!("acme/w{w}-{i}");
                    cli.run(&["secret", "set", &name], &format!("value-{w}-{i}"))
                        .expect(OK);
                }
            });
        }
    });
    let list = cli.run(&["secret", "list", "acme"], "");
    list.expect(OK);
    let listed = list
        .stdout
        .lines()
        .filter(|l| l.starts_with("acme/w"))
        .count();
    assert_eq!(listed, 40, "{list}");
    let store = cli.store();
    for w in 0..2 {
        for i in 0..20 {
            assert_eq!(
                value(&store, &format!("acme/w{w}-{i}")),
                format!("value-{w}-{i}").as_bytes()
            );
        }
    }
}
