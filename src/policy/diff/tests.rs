use std::path::PathBuf;

use super::*;
use crate::policy::{SourceFile, Sources};

/// A policy set from in-memory files: `behalf.toml` (if any), services and tenants by name.
fn set(settings: Option<&str>, services: &[(&str, &str)], tenants: &[(&str, &str)]) -> PolicySet {
    let sources = Sources {
        settings: settings.map(|t| SourceFile::new("policies/behalf.toml", t)),
        services: services
            .iter()
            .map(|(n, t)| SourceFile::new(format!("policies/services/{n}.toml"), *t))
            .collect(),
        tenants: tenants
            .iter()
            .map(|(n, t)| SourceFile::new(format!("policies/tenants/{n}.toml"), *t))
            .collect(),
        tests: Vec::new(),
        // Nothing is read from here: the tools dir under it is absent (a warning only).
        base: PathBuf::from("/nonexistent/behalf-diff-tests"),
    };
    PolicySet::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"))
}

const GITHUB: &str = r#"[service]
name = "github"
origins = ["https://api.github.com"]
credential = { name = "github_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#;

const STATUS: &str = r#"[service]
name = "status"
origins = ["https://status.example"]
"#;

const ACME: &str = r#"[tenant]
name = "acme"

[[tool_access]]
who = ["group:engineering"]
tools = ["github_issues", "slack_post"]

[[tool_access]]
who = ["*"]
tools = ["echo"]

[[grant]]
id = "eng-github"
who = ["group:engineering"]
clients = ["tool:github_issues", "proxy"]
service = "github"
allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues"]

[[grant]]
id = "status"
who = ["*"]
clients = ["proxy"]
service = "status"
allow = ["GET /**"]
"#;

/// The base set: github and status, tenant acme as above.
fn base() -> PolicySet {
    with_acme(ACME)
}

fn with_acme(acme: &str) -> PolicySet {
    set(
        None,
        &[("github", GITHUB), ("status", STATUS)],
        &[("acme", acme)],
    )
}

/// `ACME` with `from` replaced (exactly once) by `to`.
fn acme_with(from: &str, to: &str) -> PolicySet {
    assert_eq!(
        ACME.matches(from).count(),
        1,
        "ACME should hold {from:?} once"
    );
    with_acme(&ACME.replacen(from, to, 1))
}

fn github_with(from: &str, to: &str) -> PolicySet {
    assert_eq!(
        GITHUB.matches(from).count(),
        1,
        "GITHUB should hold {from:?} once"
    );
    let github = GITHUB.replacen(from, to, 1);
    set(
        None,
        &[("github", &github), ("status", STATUS)],
        &[("acme", ACME)],
    )
}

/// Every change as `marker text`, in report order.
fn lines(d: &Diff) -> Vec<String> {
    d.changes().map(|c| format!("{} {c}", c.marker())).collect()
}

fn only_change(d: &Diff) -> &Change {
    let all: Vec<&Change> = d.changes().collect();
    assert_eq!(all.len(), 1, "expected one change, got {:#?}", lines(d));
    all[0]
}

// === grants ===

#[test]
fn identical_sets_have_no_differences() {
    let d = diff(&base(), &base());
    assert!(d.is_empty(), "{d:#?}");
    assert_eq!(d, Diff::default());
    assert_eq!(d.summary(), Summary::default());
    assert_eq!(d.to_string(), "no differences\n");
}

#[test]
fn grant_order_and_entry_order_are_not_differences() {
    let reordered = acme_with(
        r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues"]"#,
        r#"allow = ["POST /repos/acme/*/issues", "GET /repos/acme/**"]"#,
    );
    assert!(diff(&base(), &reordered).is_empty());
}

#[test]
fn a_gained_and_a_lost_route_are_named_with_their_grant() {
    let new = acme_with(
        r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues"]"#,
        r#"allow = ["GET /repos/acme/**", "GET /user"]"#,
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        ["+ route GET /user", "- route POST /repos/acme/*/issues"]
    );
    let grant = &d.tenants[0].grants[0];
    assert_eq!(
        (grant.id.as_str(), grant.status),
        ("eng-github", Status::Changed)
    );
    assert_eq!(grant.changes[0].class, Class::Gain);
    assert_eq!(grant.changes[1].class, Class::Loss);
    assert_eq!(
        d.summary(),
        Summary {
            gains: 1,
            losses: 1,
            ..Summary::default()
        }
    );
    let text = d.to_string();
    assert!(
        text.starts_with(
            "tenant acme\n  ~ grant eng-github: group:engineering via tool:github_issues, proxy \
             → github\n      + route GET /user\n      - route POST /repos/acme/*/issues\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("\n1 gain, 1 loss, 0 security-relevant changes\n"),
        "{text}"
    );

    // And the other way round.
    let back = diff(&new, &base());
    assert_eq!(
        lines(&back),
        ["+ route POST /repos/acme/*/issues", "- route GET /user"]
    );
}

#[test]
fn who_and_clients_added_and_removed() {
    let new = acme_with(
        "who = [\"group:engineering\"]\nclients = [\"tool:github_issues\", \"proxy\"]",
        "who = [\"user:dave\"]\nclients = [\"tool:github_issues\"]",
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        [
            "+ who user:dave",
            "- who group:engineering",
            "- client proxy",
        ]
    );
    let classes: Vec<Class> = d.changes().map(|c| c.class).collect();
    assert_eq!(classes, [Class::Gain, Class::Loss, Class::Loss]);
}

#[test]
fn grants_added_and_removed_whole() {
    let extra = "\n[[grant]]\nid = \"eng-pulls\"\nwho = [\"group:engineering\"]\nclients = \
                 [\"tool:github_issues\"]\nservice = \"github\"\nallow = [\"POST \
                 /repos/acme/*/pulls\"]\nrate = \"60/min\"\n";
    let new = with_acme(&format!("{ACME}{extra}"));
    let d = diff(&base(), &new);
    let c = only_change(&d);
    assert_eq!((c.class, c.status), (Class::Gain, Status::Added));
    assert_eq!(
        c.to_string(),
        "grant eng-pulls: group:engineering via tool:github_issues → github  POST \
         /repos/acme/*/pulls  (rate 60/min)"
    );
    assert!(d.to_string().contains("\n  + grant eng-pulls: "), "{d}");

    let d = diff(&new, &base());
    let c = only_change(&d);
    assert_eq!((c.class, c.status), (Class::Loss, Status::Removed));
    assert!(d.to_string().contains("\n  - grant eng-pulls: "), "{d}");
}

#[test]
fn a_renamed_grant_changes_no_access() {
    let new = acme_with("id = \"eng-github\"", "id = \"engineering-github\"");
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        [
            "- grant eng-github: group:engineering via tool:github_issues, proxy → github  GET \
             /repos/acme/**, POST /repos/acme/*/issues   (access unchanged: still granted by \
             engineering-github)",
            "+ grant engineering-github: group:engineering via tool:github_issues, proxy → \
             github  GET /repos/acme/**, POST /repos/acme/*/issues   (access unchanged: \
             already granted by eng-github)",
        ]
    );
    assert!(d.changes().all(|c| c.class == Class::Other));
    assert_eq!(
        d.summary().to_string(),
        "0 gains, 0 losses, 0 security-relevant changes, 2 other changes"
    );
}

#[test]
fn a_route_inside_a_granted_pattern_changes_no_access() {
    // GET /repos/acme/** already allows GET /repos/acme/web/pulls.
    let new = acme_with(
        r#""POST /repos/acme/*/issues"]"#,
        r#""POST /repos/acme/*/issues", "GET /repos/acme/web/pulls"]"#,
    );
    let c = only_change(&diff(&base(), &new)).clone();
    assert_eq!(c.class, Class::Other);
    assert_eq!(c.unchanged_by, ["eng-github"]);

    // Moving a route to a grant for `*` keeps it for everyone it was granted to...
    let moved = acme_with(r#"allow = ["GET /**"]"#, r#"allow = ["GET /**", "GET /a"]"#);
    assert_eq!(only_change(&diff(&base(), &moved)).class, Class::Other);
    // ...and a user added where `*` was granted already had it...
    let new = acme_with(
        "id = \"status\"\nwho = [\"*\"]",
        "id = \"status\"\nwho = [\"*\", \"user:erin\"]",
    );
    assert_eq!(only_change(&diff(&base(), &new)).unchanged_by, ["status"]);
    // ...but a grant for a group does not cover a user: membership is not known here.
    let dave = "\n[[grant]]\nid = \"dave\"\nwho = [\"user:dave\"]\nclients = [\"proxy\"]\nservice \
                = \"github\"\nallow = [\"GET /repos/acme/**\"]\n";
    let d = diff(&base(), &with_acme(&format!("{ACME}{dave}")));
    assert_eq!(only_change(&d).class, Class::Gain);
    assert!(only_change(&d).unchanged_by.is_empty());
}

#[test]
fn a_grant_moved_to_another_service_is_removed_and_added() {
    let new = acme_with("service = \"status\"", "service = \"github\"");
    let d = diff(&base(), &new);
    let grants = &d.tenants[0].grants;
    assert_eq!(grants.len(), 2);
    assert_eq!(
        (grants[0].status, grants[0].service.as_str()),
        (Status::Removed, "status")
    );
    assert_eq!(
        (grants[1].status, grants[1].service.as_str()),
        (Status::Added, "github")
    );
}

#[test]
fn limits_are_changes_of_their_own() {
    let new = acme_with(
        r#"allow = ["GET /**"]"#,
        "allow = [\"GET /**\"]\nrate = \"10/s\"\ndaily = 1000",
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        ["~ rate unlimited → 10/s", "~ daily unlimited → 1000"]
    );
    assert!(d.changes().all(|c| c.class == Class::Other));

    // A grant renamed and rate-limited is not the same access: requests count differently.
    let new = acme_with(
        "id = \"status\"\nwho = [\"*\"]\nclients = [\"proxy\"]\nservice = \"status\"\nallow = \
         [\"GET /**\"]",
        "id = \"status-limited\"\nwho = [\"*\"]\nclients = [\"proxy\"]\nservice = \
         \"status\"\nallow = [\"GET /**\"]\nrate = \"1/s\"",
    );
    let d = diff(&base(), &new);
    assert_eq!(
        d.changes().map(|c| c.class).collect::<Vec<_>>(),
        [Class::Loss, Class::Gain],
        "{:#?}",
        lines(&d)
    );
    assert!(
        lines(&d)[1].ends_with("GET /**  (rate 1/s)"),
        "{:#?}",
        lines(&d)
    );
}

#[test]
fn a_new_tenant_gains_everything_it_grants() {
    let globex = "[tenant]\nname = \"globex\"\n\n[[tool_access]]\nwho = [\"user:carol\"]\ntools \
                  = [\"echo\"]\n\n[[grant]]\nid = \"carol\"\nwho = [\"user:carol\"]\nclients = \
                  [\"proxy\"]\nservice = \"status\"\nallow = [\"GET /**\"]\n";
    let new = set(
        None,
        &[("github", GITHUB), ("status", STATUS)],
        &[("acme", ACME), ("globex", globex)],
    );
    let d = diff(&base(), &new);
    assert_eq!(d.tenants.len(), 1);
    assert_eq!(d.tenants[0].status, Status::Added);
    assert_eq!(
        lines(&d),
        [
            "+ grant carol: user:carol via proxy → status  GET /**",
            "+ tool_access: user:carol gains tool echo",
        ]
    );
    assert!(d.to_string().starts_with("tenant globex (new)\n"), "{d}");
    assert_eq!(diff(&new, &base()).summary().losses, 2);
}

// === tool access ===

#[test]
fn tool_access_gained_and_lost_per_who_and_tool() {
    let new = acme_with(
        "who = [\"group:engineering\"]\ntools = [\"github_issues\", \"slack_post\"]",
        "who = [\"group:engineering\", \"user:dave\"]\ntools = [\"github_issues\"]",
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        [
            "+ tool_access: user:dave gains tool github_issues",
            "- tool_access: group:engineering loses tool slack_post",
        ]
    );
    assert_eq!(
        d.to_string().lines().nth(1),
        Some("  + tool_access: user:dave gains tool github_issues")
    );

    // A tool `*` has is not lost by anyone who had it too.
    let new = acme_with("tools = [\"echo\"]", "tools = [\"echo\", \"slack_post\"]");
    let d = diff(&base(), &new);
    assert_eq!(lines(&d), ["+ tool_access: * gains tool slack_post"]);
    let narrowed = diff(&new, &base());
    let c = only_change(&narrowed);
    assert_eq!(
        c.class,
        Class::Loss,
        "* loses it, so the unnamed members do"
    );
}

#[test]
fn tool_access_moved_under_star_changes_no_access() {
    let new_text = ACME
        .replacen(
            "tools = [\"github_issues\", \"slack_post\"]",
            "tools = [\"github_issues\"]",
            1,
        )
        .replacen(
            "tools = [\"echo\"]",
            "tools = [\"echo\", \"slack_post\"]",
            1,
        );
    let d = diff(&base(), &with_acme(&new_text));
    assert_eq!(
        lines(&d),
        [
            "+ tool_access: * gains tool slack_post",
            "- tool_access: group:engineering loses tool slack_post   (access unchanged: * \
             still has it)",
        ]
    );
    assert_eq!(d.summary().losses, 0);
}

// === services ===

#[test]
fn service_flags_weakening_a_guard_are_security_relevant() {
    let cases = [
        (
            "allow_private_ips = true",
            "! allow_private_ips turned on (SSRF guard off)",
        ),
        (
            "allow_wildcard_origins = true",
            "! allow_wildcard_origins turned on (the credential goes to every host a `*.` origin \
             matches)",
        ),
        (
            "allow_plaintext = true",
            "! allow_plaintext turned on (the credential may cross the network unencrypted)",
        ),
        (
            "scrub_responses = false",
            "! scrub_responses turned off (credentials echoed in responses are no longer \
             scrubbed)",
        ),
    ];
    for (line, expected) in cases {
        let new = github_with("inject = {", &format!("{line}\ninject = {{"));
        let d = diff(&base(), &new);
        assert_eq!(lines(&d), [expected], "{line}");
        assert_eq!(d.summary().security, 1);
        assert_eq!(d.services[0].service, "github");
        // Turning the guard back on is a change, not a security-relevant one.
        let back = diff(&new, &base());
        assert_eq!(only_change(&back).class, Class::Other, "{line}");
        assert_eq!(only_change(&back).marker(), '~');
    }
    let d = diff(
        &base(),
        &github_with("inject = {", "allow_private_ips = true\ninject = {"),
    );
    assert!(
        d.to_string()
            .contains("service github\n  ! allow_private_ips turned on (SSRF guard off)\n"),
        "{d}"
    );
}

#[test]
fn origins_added_and_removed() {
    // A new origin of a service that injects is a new place the credential goes.
    let new = github_with(
        r#"["https://api.github.com"]"#,
        r#"["https://api.github.com", "https://uploads.github.com"]"#,
    );
    let d = diff(&base(), &new);
    let c = only_change(&d);
    assert_eq!(c.class, Class::Security);
    assert_eq!(
        c.to_string(),
        "new origin https://uploads.github.com receives user:github_token"
    );
    assert_eq!(only_change(&diff(&new, &base())).class, Class::Loss);

    // On a service with no credential it is a gain of reach.
    let status = STATUS.replace(
        r#"["https://status.example"]"#,
        r#"["https://status.example", "https://status2.example"]"#,
    );
    let new = set(
        None,
        &[("github", GITHUB), ("status", &status)],
        &[("acme", ACME)],
    );
    let d = diff(&base(), &new);
    assert_eq!(lines(&d), ["+ origin https://status2.example"]);
    assert_eq!(only_change(&d).class, Class::Gain);
}

#[test]
fn a_service_starting_to_inject_a_credential_is_security_relevant() {
    let status = format!(
        "{STATUS}credential = {{ name = \"status_key\", scope = \"tenant\" }}\ninject = {{ query \
         = \"key\" }}\n"
    );
    let new = set(
        None,
        &[("github", GITHUB), ("status", &status)],
        &[("acme", ACME)],
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        ["! starts injecting tenant:status_key by query parameter key"]
    );
    assert_eq!(
        lines(&diff(&new, &base())),
        ["~ stops injecting tenant:status_key"]
    );
}

#[test]
fn credential_and_inject_changes() {
    // A per-user credential turned into one the whole tenant shares.
    let new = github_with(r#"scope = "user""#, r#"scope = "tenant""#);
    let c = only_change(&diff(&base(), &new)).clone();
    assert_eq!(c.class, Class::Security);
    assert_eq!(
        c.to_string(),
        "credential user:github_token → tenant:github_token (one credential, shared by the \
         whole tenant)"
    );
    assert_eq!(only_change(&diff(&new, &base())).class, Class::Other);

    let new = github_with("Bearer {credential}", "token {credential}");
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        [
            "~ inject header authorization = \"Bearer {credential}\" → header authorization = \
             \"token {credential}\""
        ]
    );

    // An OAuth2 token endpoint receives the credential: a new one is security-relevant.
    let oauth = |token_url: &str| {
        format!(
            "[service]\nname = \"cal\"\norigins = [\"https://cal.example\"]\ncredential = {{ name = \
             \"cal\", scope = \"user\" }}\n\n[service.inject.oauth2]\ntoken_url = \
             \"{token_url}\"\ngrant = \"client_credentials\"\n"
        )
    };
    // A detail the one-line description leaves out is still reported.
    let body = oauth("https://auth.example/token") + "client_auth = \"body\"\n";
    let a = set(None, &[("cal", &oauth("https://auth.example/token"))], &[]);
    let d = diff(&a, &set(None, &[("cal", &body)], &[]));
    assert_eq!(
        lines(&d),
        [
            "~ inject oauth2 (client_credentials grant at https://auth.example/token): settings \
             changed"
        ]
    );
    let b = set(None, &[("cal", &oauth("https://evil.example/token"))], &[]);
    let c = only_change(&diff(&a, &b)).clone();
    assert_eq!(c.class, Class::Security);
    assert!(
        c.to_string()
            .ends_with("(the credential is now sent to https://evil.example)"),
        "{c}"
    );
}

#[test]
fn services_added_and_removed() {
    let hooks = "[service]\nname = \"hooks\"\norigins = [\"https://hooks.example\"]\ncredential \
                 = { name = \"hook\", scope = \"tenant\" }\ninject = { header = \"X-Hook\", \
                 template = \"{credential}\" }\nallow_private_ips = true\n";
    let new = set(
        None,
        &[("github", GITHUB), ("status", STATUS), ("hooks", hooks)],
        &[("acme", ACME)],
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        [
            "! service added: https://hooks.example; injects tenant:hook by header x-hook = \
             \"{credential}\"",
            "! allow_private_ips = true (SSRF guard off)",
        ]
    );
    assert_eq!(d.services[0].status, Status::Added);
    assert!(d.to_string().contains("service hooks (new)\n"), "{d}");

    let d = diff(&new, &base());
    let c = only_change(&d);
    assert_eq!((c.class, c.status), (Class::Other, Status::Removed));
    assert!(
        c.to_string()
            .starts_with("service removed (was https://hooks.example;")
    );

    // A new service without a credential is another change.
    let plain = "[service]\nname = \"plain\"\norigins = [\"https://plain.example\"]\n";
    let new = set(
        None,
        &[("github", GITHUB), ("status", STATUS), ("plain", plain)],
        &[("acme", ACME)],
    );
    let d = diff(&base(), &new);
    assert_eq!(
        lines(&d),
        ["+ service added: https://plain.example; no credential"]
    );
    assert_eq!(only_change(&d).class, Class::Other);
}

// === settings ===

#[test]
fn dev_mode_and_issuers() {
    let issuer = |tenants: &str| {
        format!(
            "[[identity.issuer]]\nname = \"corp\"\nalgorithms = [\"EdDSA\"]\njwks_file = \
             \"keys/corp.jwks.json\"\nissuer = \"https://idp.example\"\naudience = \
             \"behalf\"\ntenants = {tenants}\n"
        )
    };
    let plain = set(Some(""), &[], &[]);
    let dev = set(Some("dev = true\n"), &[], &[]);
    let d = diff(&plain, &dev);
    assert_eq!(only_change(&d).class, Class::Security);
    assert!(
        d.to_string()
            .starts_with("settings (behalf.toml)\n  ! dev turned on"),
        "{d}"
    );
    assert_eq!(only_change(&diff(&dev, &plain)).class, Class::Other);

    let one = set(Some(&issuer(r#"["acme"]"#)), &[], &[]);
    let two = set(Some(&issuer(r#"["acme", "globex"]"#)), &[], &[]);
    assert_eq!(
        lines(&diff(&plain, &one)),
        ["! issuer corp trusted, for tenant acme"]
    );
    assert_eq!(
        lines(&diff(&one, &two)),
        ["! issuer corp may now speak for tenant globex"]
    );
    assert_eq!(
        lines(&diff(&two, &one)),
        ["- issuer corp no longer speaks for tenant globex"]
    );
    assert_eq!(
        lines(&diff(&one, &plain)),
        ["- issuer corp no longer trusted"]
    );
}

// === route patterns ===

#[test]
fn path_covers_is_sound_and_conservative() {
    let covers = |g: &str, s: &str| path_covers(&segments(g), &segments(s));
    assert!(covers("/repos/acme/**", "/repos/acme/*/issues"));
    assert!(covers("/repos/acme/**", "/repos/acme"));
    assert!(covers("/repos/*/issues", "/repos/web/issues"));
    assert!(covers("/repos/*/issues", "/repos/*/issues"));
    assert!(covers("/**", "/a/**/b"));
    assert!(covers("/a/b/", "/a/b"));
    assert!(!covers("/repos/*/issues", "/repos/**/issues"));
    assert!(!covers("/repos/acme/*", "/repos/acme/**"));
    assert!(!covers("/repos/acme/**", "/repos/acmecorp"));
    assert!(!covers("/a/*", "/a"));
    // Equal sets it cannot prove: reported as a change, never hidden.
    assert!(!covers("/**/*", "/*/**"));

    let route = |s: &str| Route::parse(s).unwrap();
    assert!(route_covers(
        &route("GET /repos/**"),
        &route("GET /repos/a")
    ));
    assert!(!route_covers(
        &route("GET /repos/**"),
        &route("POST /repos/a")
    ));
}

// === output ===

#[test]
fn summary_counts_and_plurals() {
    let s = Summary {
        gains: 3,
        losses: 2,
        security: 1,
        other: 0,
    };
    assert_eq!(
        s.to_string(),
        "3 gains, 2 losses, 1 security-relevant change"
    );
    let s = Summary {
        gains: 1,
        losses: 1,
        security: 2,
        other: 1,
    };
    assert_eq!(
        s.to_string(),
        "1 gain, 1 loss, 2 security-relevant changes, 1 other change"
    );
}

#[test]
fn json_carries_kind_class_status_and_text() {
    let new = acme_with(
        r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues"]"#,
        r#"allow = ["GET /repos/acme/**", "GET /user"]"#,
    );
    let d = diff(&base(), &new);
    let json = serde_json::to_value(&d).unwrap();
    let change = &json["tenants"][0]["grants"][0]["changes"][0];
    assert_eq!(change["kind"], "route");
    assert_eq!(change["route"], "GET /user");
    assert_eq!(change["class"], "gain");
    assert_eq!(change["status"], "added");
    assert_eq!(change["text"], "route GET /user");
    assert!(change.get("unchanged_by").is_none());
    assert_eq!(json["tenants"][0]["grants"][0]["id"], "eng-github");
    assert_eq!(json["tenants"][0]["grants"][0]["status"], "changed");
    assert_eq!(
        serde_json::to_value(d.summary()).unwrap(),
        serde_json::json!({"gains": 1, "losses": 1, "security": 0, "other": 0})
    );
}
