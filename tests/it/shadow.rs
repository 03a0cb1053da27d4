//! Shadow policies (issue 10): a candidate policy set is decided beside the active one for
//! every request; where the two differ the audit record says `shadow: would_allow` or
//! `would_deny`. The shadow never changes an outcome, never loads or injects a credential and
//! never reaches the upstream.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use behalf::audit;
use behalf::policy::PolicySet;

use crate::support::*;

const GITHUB: &str = "https://api.github.test";

/// acme's github grant in the harness policy.
const ACTIVE_ALLOW: &str =
    r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues", "GET /user"]"#;
/// The candidate: no repos, but orgs.
const SHADOW_ALLOW: &str = r#"allow = ["GET /user", "GET /orgs/**"]"#;

/// A copy of the harness policies in `<tmp>/shadow` with acme's github grant replaced by
/// [`SHADOW_ALLOW`], loaded and set as the shadow.
fn set_shadow(h: &Harness) -> PathBuf {
    let dir = h.tmp.path().join("shadow");
    copy_dir(&h.policies, &dir);
    let acme = dir.join("tenants/acme.toml");
    let text = std::fs::read_to_string(&acme).unwrap();
    assert!(text.contains(ACTIVE_ALLOW));
    std::fs::write(&acme, text.replace(ACTIVE_ALLOW, SHADOW_ALLOW)).unwrap();
    let shadow = PolicySet::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    h.egress.set_shadow(Some(Arc::new(shadow)));
    dir
}

async fn shadowed_harness() -> Harness {
    let h = Harness::start_with(Config {
        spy_secrets: true,
        ..Config::default()
    })
    .await;
    set_shadow(&h);
    h
}

/// The record for `path`, the only one.
fn record_for(h: &Harness, path: &str) -> audit::Record {
    let mut records: Vec<_> = h
        .audit_records()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    records.remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_that_would_deny_changes_nothing_but_the_record() {
    let h = shadowed_harness().await;
    let resp = h
        .send(get(&format!("{GITHUB}/repos/acme/web"), Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    h.wait_audit(1).await;
    let record = record_for(&h, "/repos/acme/web");
    assert_eq!(record.decision, "allow");
    assert_eq!(record.grant.as_deref(), Some("eng-github"));
    assert_eq!(record.shadow.as_deref(), Some("would_deny"));
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_that_would_allow_neither_sends_nor_reads_a_credential() {
    let h = shadowed_harness().await;
    let spy = h.spy.clone().unwrap();
    let resp = h
        .send(get(&format!("{GITHUB}/orgs/acme"), Some(&h.alice)))
        .await;
    resp.assert_error(403, "egress_denied");
    h.upstream
        .assert_untouched("a request only the shadow allows");
    assert_eq!(spy.gets(), Vec::<String>::new(), "no secret read for it");

    let record = record_for(&h, "/orgs/acme");
    assert_eq!(record.decision, "deny");
    assert_eq!(record.grant, None);
    assert_eq!(record.credential, None);
    assert_eq!(record.shadow.as_deref(), Some("would_allow"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_decision_leaves_no_shadow_field() {
    let h = shadowed_harness().await;
    // Both allow.
    let resp = h.send(get(&format!("{GITHUB}/user"), Some(&h.alice))).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Both deny.
    h.send(get(&format!("{GITHUB}/repos/acme/web"), Some(&h.carol)))
        .await
        .assert_error(403, "egress_denied");

    h.wait_audit(2).await;
    assert_eq!(record_for(&h, "/user").shadow, None);
    assert_eq!(record_for(&h, "/repos/acme/web").shadow, None);
    let text = h.audit_text();
    assert!(!text.contains("\"shadow\""), "{text}");

    // Without a shadow, nothing is shadowed.
    h.egress.set_shadow(None);
    h.send(get(&format!("{GITHUB}/orgs/acme"), Some(&h.alice)))
        .await
        .assert_error(403, "egress_denied");
    assert_eq!(record_for(&h, "/orgs/acme").shadow, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_with_shadow_records_verifies_in_the_library_and_the_cli() {
    let h = shadowed_harness().await;
    for path in ["/repos/acme/web", "/orgs/acme", "/user"] {
        h.send(get(&format!("{GITHUB}{path}"), Some(&h.alice)))
            .await;
    }
    let records = h.wait_audit(3).await;
    let shadows: Vec<_> = records
        .iter()
        .map(|r| (r.path.as_str(), r.shadow.as_deref()))
        .collect();
    assert_eq!(
        shadows,
        [
            ("/repos/acme/web", Some("would_deny")),
            ("/orgs/acme", Some("would_allow")),
            ("/user", None),
        ]
    );
    h.egress.audit().sync().unwrap();

    let key = audit::read_key(&h.state).unwrap();
    audit::verify(&h.audit_dir(), &key).unwrap_or_else(|e| panic!("{e}"));

    let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .arg("--policies")
        .arg(&h.policies)
        .arg("--state")
        .arg(h.state.path())
        .args(["audit", "verify"])
        .env_remove("BEHALF_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("audit log verified"), "{stdout}");
}

/// `behalf serve --shadow DIR` with a broken shadow stops before binding, like a broken
/// active set: exit 64, naming the file, line and column.
#[test]
fn serve_with_a_broken_shadow_exits_64_naming_the_place() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shadow = tmp.path().join("shadow");
    copy_dir(&root.join("policies"), &shadow);
    let acme = shadow.join("tenants/acme.toml");
    let mut text = std::fs::read_to_string(&acme).unwrap();
    let line = text.lines().count() + 1;
    text.push_str("this is not toml\n");
    std::fs::write(&acme, text).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--state")
        .arg(tmp.path().join("state"))
        .args(["serve", "--api", "127.0.0.1:0", "--proxy", "127.0.0.1:0"])
        .arg("--shadow")
        .arg(&shadow)
        .current_dir(root)
        .env("BEHALF_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let place = format!("acme.toml:{line}:");
    assert!(stderr.contains(&place), "expected {place} in: {stderr}");
}

/// The shadow reloads with the active set; a broken shadow is reported in the reload status
/// but neither holds back the active set nor drops the last good shadow.
#[tokio::test(flavor = "multi_thread")]
async fn the_shadow_reloads_and_a_broken_one_keeps_the_last_good() {
    use behalf::reload::Reloader;

    use crate::support::tools::ToolHarness;

    let h = ToolHarness::start().await;
    let shadow = h.tmp.path().join("shadow");
    copy_dir(&h.policies, &shadow);
    let reloader = Reloader::new(
        h.policies.clone(),
        h.sidecar.state.clone(),
        h.sidecar.egress.clone(),
        h.sidecar.sandbox.clone(),
    )
    .with_shadow(Some(shadow.clone()));
    let egress = &h.sidecar.egress;
    assert!(egress.shadow().is_none());

    let generation = reloader.reload().unwrap();
    let good = egress.shadow().expect("the shadow is loaded by a reload");
    assert_eq!(reloader.status().last_error, None);

    let acme = shadow.join("tenants/acme.toml");
    let text = std::fs::read_to_string(&acme).unwrap();
    std::fs::write(&acme, format!("{text}\nthis is not toml\n")).unwrap();
    assert_eq!(
        reloader.reload(),
        Ok(generation + 1),
        "the active set reloads anyway"
    );
    let error = reloader
        .status()
        .last_error
        .expect("the shadow error is reported");
    assert!(
        error.starts_with("shadow: ") && error.contains("acme.toml:"),
        "{error}"
    );
    assert!(
        Arc::ptr_eq(&good, &egress.shadow().unwrap()),
        "the last good shadow stays"
    );

    std::fs::write(&acme, text).unwrap();
    assert_eq!(reloader.reload(), Ok(generation + 2));
    assert_eq!(reloader.status().last_error, None);
    assert!(!Arc::ptr_eq(&good, &egress.shadow().unwrap()));
}

/// The shadow is never asked whether to open a tunnel: a CONNECT only the shadow would admit
/// is refused, and its record has no `shadow` field.
#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_never_widens_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    let dir = h.tmp.path().join("shadow-connect");
    copy_dir(&h.policies, &dir);
    let globex = dir.join("tenants/globex.toml");
    let text = std::fs::read_to_string(&globex).unwrap();
    let grant = "\n[[grant]]\nid = \"carol-jira\"\nwho = [\"user:carol\"]\nclients = [\"proxy\"]\n\
                 service = \"jira\"\nallow = [\"GET /**\"]\n";
    std::fs::write(&globex, format!("{text}{grant}")).unwrap();
    let shadow = PolicySet::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let carol = Harness::principal("globex", "carol", &[]);
    let jira = behalf::policy::Origin::parse("https://jira.test").unwrap();
    let proxy = behalf::policy::Client::Proxy;
    assert!(shadow.admits_origin(&carol, &proxy, &jira).is_ok());
    assert!(
        h.egress
            .policy()
            .admits_origin(&carol, &proxy, &jira)
            .is_err()
    );
    h.egress.set_shadow(Some(Arc::new(shadow)));

    let mut tcp = tokio::net::TcpStream::connect(h.proxy_addr).await.unwrap();
    let req = format!(
        "CONNECT jira.test:443 HTTP/1.1\r\nHost: jira.test:443\r\nProxy-Authorization: Bearer {}\r\n\r\n",
        h.carol
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("the proxy closed mid-head"));
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    h.upstream
        .assert_untouched("a CONNECT only the shadow admits");

    let records = h.wait_audit(1).await;
    let connect = records
        .iter()
        .find(|r| r.method == "CONNECT")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(connect.decision, "deny");
    assert_eq!(connect.shadow, None);
}
