//! Decisions against in-memory policy: tool access, origin precedence, tenant isolation and the
//! explain trace.

use std::path::PathBuf;

use behalf::policy::{
    Client, Decision, Deny, GrantCheck, PolicySet, SourceFile, Sources, Target, ToolDecision,
    ToolName,
};
use behalf::principal::{GroupId, Principal, TenantId, UserId};
use http::Method;

fn policy(services: &[(&str, &str)], tenants: &[(&str, &str)]) -> PolicySet {
    let base = tempfile::tempdir().unwrap();
    let sources = Sources {
        settings: None,
        services: services
            .iter()
            .map(|(n, t)| SourceFile::new(format!("services/{n}.toml"), *t))
            .collect(),
        tenants: tenants
            .iter()
            .map(|(n, t)| SourceFile::new(format!("tenants/{n}.toml"), *t))
            .collect(),
        tests: Vec::new(),
        base: PathBuf::from(base.path()),
    };
    PolicySet::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"))
}

fn who(tenant: &str, user: &str, groups: &[&str]) -> Principal {
    Principal::new(
        TenantId::parse(tenant).unwrap(),
        UserId::parse(user).unwrap(),
        groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
    )
}

const WILD: &str = r#"[service]
name = "wild"
origins = ["https://*.example.com"]
credential = { name = "wild_token", scope = "tenant" }
inject = { header = "X-Key", template = "{credential}" }
allow_wildcard_origins = true
"#;

const EXACT: &str = r#"[service]
name = "exact"
origins = ["https://api.example.com"]
credential = { name = "exact_token", scope = "user" }
inject = { basic = { username = "x" } }
"#;

const ACME: &str = r#"[tenant]
name = "acme"

[[tool_access]]
who = ["group:eng"]
tools = ["deploy"]

[[tool_access]]
who = ["user:zoe"]
tools = ["echo"]

[[grant]]
id = "wild"
who = ["*"]
clients = ["*"]
service = "wild"
allow = ["GET /**"]

[[grant]]
id = "exact-read"
who = ["group:eng"]
clients = ["proxy"]
service = "exact"
allow = ["GET /v1/*"]

[[grant]]
id = "exact-write"
who = ["user:zoe"]
clients = ["tool:deploy"]
service = "exact"
allow = ["PUT /v1/*"]
"#;

const GLOBEX: &str = r#"[tenant]
name = "globex"

[[grant]]
id = "everything"
who = ["*"]
clients = ["*"]
service = "exact"
allow = ["GET /**", "PUT /**"]
"#;

fn set() -> PolicySet {
    policy(
        &[("wild", WILD), ("exact", EXACT)],
        &[("acme", ACME), ("globex", GLOBEX)],
    )
}

fn decide<'p>(
    p: &'p PolicySet,
    who: &Principal,
    client: &str,
    method: Method,
    url: &str,
) -> Decision<'p> {
    p.decide(
        who,
        &Client::parse(client).unwrap(),
        &method,
        &Target::parse(url).unwrap(),
    )
}

#[test]
fn exact_origin_wins_over_a_wildcard() {
    let p = set();
    let eng = who("acme", "ann", &["eng"]);
    match decide(
        &p,
        &eng,
        "proxy",
        Method::GET,
        "https://api.example.com/v1/x",
    ) {
        Decision::Allow(a) => {
            assert_eq!(a.grant.id, "exact-read");
            assert_eq!(a.credential().unwrap().to_string(), "user:exact_token");
        }
        Decision::Deny(d) => panic!("denied: {d}"),
    }
    match decide(
        &p,
        &eng,
        "proxy",
        Method::GET,
        "https://other.example.com/v1/x",
    ) {
        Decision::Allow(a) => assert_eq!(a.service.name.as_str(), "wild"),
        Decision::Deny(d) => panic!("denied: {d}"),
    }
    // The wildcard covers one label only.
    assert!(matches!(
        decide(&p, &eng, "proxy", Method::GET, "https://a.b.example.com/"),
        Decision::Deny(Deny::NoService { .. })
    ));
}

#[test]
fn a_grant_in_one_tenant_never_serves_another() {
    let p = set();
    // globex grants everything on `exact` to everyone in globex; acme's zoe gets none of it.
    let zoe = who("acme", "zoe", &[]);
    assert!(matches!(
        decide(
            &p,
            &zoe,
            "proxy",
            Method::GET,
            "https://api.example.com/v1/x"
        ),
        Decision::Deny(Deny::ClientNotGranted { .. })
    ));
    let carol = who("globex", "carol", &["eng"]);
    match decide(
        &p,
        &carol,
        "tool:deploy",
        Method::PUT,
        "https://api.example.com/v1/x",
    ) {
        Decision::Allow(a) => assert_eq!(a.grant.id, "everything"),
        Decision::Deny(d) => panic!("denied: {d}"),
    }
    // A globex member named like an acme grantee gains nothing in acme.
    let zoe_elsewhere = who("globex", "zoe", &[]);
    assert!(matches!(
        p.decide_tool(&zoe_elsewhere, &ToolName::parse("echo").unwrap()),
        ToolDecision::Deny(_)
    ));
}

#[test]
fn deny_names_the_furthest_check_reached() {
    let p = set();
    let ann = who("acme", "ann", &["eng"]);
    let d = |client, method, url| match decide(&p, &ann, client, method, url) {
        Decision::Deny(d) => d.kind(),
        Decision::Allow(a) => panic!("allowed by {}", a.grant.id),
    };
    assert_eq!(
        d("proxy", Method::PUT, "https://api.example.com/v1/x"),
        "route_not_granted"
    );
    assert_eq!(
        d("tool:deploy", Method::GET, "https://api.example.com/v1/x"),
        "client_not_granted"
    );
    assert_eq!(
        d("proxy", Method::GET, "https://nowhere.test/"),
        "no_service"
    );
    let stranger = who("initech", "ann", &["eng"]);
    assert!(matches!(
        decide(
            &p,
            &stranger,
            "proxy",
            Method::GET,
            "https://api.example.com/v1/x"
        ),
        Decision::Deny(Deny::NoTenantPolicy { .. })
    ));
    let nobody = who("acme", "nobody", &[]);
    assert!(matches!(
        decide(
            &p,
            &nobody,
            "proxy",
            Method::GET,
            "https://api.example.com/v1/x"
        ),
        Decision::Deny(Deny::NotGrantee { .. })
    ));
}

#[test]
fn methods_are_exact() {
    let p = set();
    let ann = who("acme", "ann", &["eng"]);
    for m in [
        Method::HEAD,
        Method::POST,
        Method::from_bytes(b"get").unwrap(),
    ] {
        assert!(
            matches!(
                decide(&p, &ann, "proxy", m.clone(), "https://api.example.com/v1/x"),
                Decision::Deny(_)
            ),
            "{m}"
        );
    }
}

#[test]
fn explain_traces_every_candidate() {
    let p = set();
    let zoe = who("acme", "zoe", &["eng"]);
    let e = p.explain(
        &zoe,
        &Client::parse("tool:deploy").unwrap(),
        &Method::PUT,
        &Target::parse("https://api.example.com/v1/x").unwrap(),
    );
    let trace: Vec<(&str, GrantCheck)> = e
        .candidates
        .iter()
        .map(|(g, c)| (g.id.as_str(), *c))
        .collect();
    assert_eq!(
        trace,
        [
            ("exact-read", GrantCheck::ClientNotListed),
            ("exact-write", GrantCheck::Matched)
        ]
    );
    assert!(matches!(e.decision, Decision::Allow(_)));
    assert_eq!(e.service.unwrap().name.as_str(), "exact");
}

#[test]
fn tool_access_is_decided_per_principal() {
    let p = set();
    let deploy = ToolName::parse("deploy").unwrap();
    let echo = ToolName::parse("echo").unwrap();
    assert!(matches!(
        p.decide_tool(&who("acme", "ann", &["eng"]), &deploy),
        ToolDecision::Allow(_)
    ));
    assert!(matches!(
        p.decide_tool(&who("acme", "ann", &["eng"]), &echo),
        ToolDecision::Deny(_)
    ));
    assert!(matches!(
        p.decide_tool(&who("acme", "zoe", &[]), &echo),
        ToolDecision::Allow(_)
    ));
    assert!(matches!(
        p.decide_tool(&who("globex", "ann", &["eng"]), &deploy),
        ToolDecision::Deny(_)
    ));
}
