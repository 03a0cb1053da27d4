//! Policy decision speed. Target: one decision against a generated policy of 100 services and
//! 2,000 grants in under 2 µs median.
//!
//! `cargo bench --bench policy`

use std::hint::black_box;
use std::path::PathBuf;

use behalf::policy::{Client, PolicySet, SourceFile, Sources, Target};
use behalf::principal::{GroupId, Principal, TenantId, UserId};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;

const SERVICES: usize = 100;
const TENANTS: usize = 10;
/// Grants per tenant per service; SERVICES * TENANTS * GRANTS_PER_SERVICE = 2,000.
const GRANTS_PER_SERVICE: usize = 2;

/// 100 services, 10 tenants, 2,000 grants of 4 routes each, with groups, users and clients.
fn large_policy() -> PolicySet {
    let services = (0..SERVICES)
        .map(|s| {
            SourceFile::new(
                format!("services/svc{s}.toml"),
                format!(
                    "[service]\nname = \"svc{s}\"\norigins = [\"https://api{s}.example.com\", \
                     \"https://api{s}.example.com:8443\"]\n\
                     credential = {{ name = \"token{s}\", scope = \"user\" }}\n\
                     inject = {{ header = \"Authorization\", template = \"Bearer {{credential}}\" }}\n"
                ),
            )
        })
        .collect();
    let tenants = (0..TENANTS)
        .map(|t| {
            let mut text = format!("[tenant]\nname = \"t{t}\"\n");
            for s in 0..SERVICES {
                for g in 0..GRANTS_PER_SERVICE {
                    text.push_str(&format!(
                        "\n[[grant]]\nid = \"g{s}-{g}\"\nwho = [\"group:team{g}\", \"user:owner{s}\"]\n\
                         clients = [\"tool:tool{g}\", \"proxy\"]\nservice = \"svc{s}\"\n\
                         allow = [\"GET /orgs/t{t}/repos/*/issues\", \"POST /orgs/t{t}/repos/*/issues\", \
                         \"GET /orgs/t{t}/team{g}/**\", \"DELETE /orgs/t{t}/repos/*/labels/*\"]\n"
                    ));
                }
            }
            SourceFile::new(format!("tenants/t{t}.toml"), text)
        })
        .collect();
    let sources = Sources {
        settings: None,
        services,
        tenants,
        tests: Vec::new(),
        base: PathBuf::from("."),
    };
    let policy = PolicySet::from_sources(&sources).expect("the generated policy is valid");
    let grants: usize = policy.tenants().iter().map(|t| t.grants.len()).sum();
    assert_eq!((policy.services().len(), grants), (100, 2000));
    policy
}

fn principal(tenant: &str, user: &str, groups: &[&str]) -> Principal {
    Principal::new(
        TenantId::parse(tenant).unwrap(),
        UserId::parse(user).unwrap(),
        groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
    )
}

fn bench(c: &mut Criterion) {
    let large = large_policy();
    let bob = principal("t7", "bob", &["team1", "other"]);
    let client = Client::parse("tool:tool1").unwrap();
    // The last grant for the service matches, behind a `**` route.
    let allow = Target::parse("https://api57.example.com/orgs/t7/team1/a/b/c").unwrap();
    // Every grant and route is tried before the deny.
    let deny = Target::parse("https://api57.example.com/orgs/t7/repos/web/pulls").unwrap();

    c.bench_function("decide/large/allow", |b| {
        b.iter(|| {
            black_box(large.decide(
                black_box(&bob),
                black_box(&client),
                &Method::GET,
                black_box(&allow),
            ))
        })
    });
    c.bench_function("decide/large/deny", |b| {
        b.iter(|| {
            black_box(large.decide(
                black_box(&bob),
                black_box(&client),
                &Method::GET,
                black_box(&deny),
            ))
        })
    });
    c.bench_function("decide/large/normalise+allow", |b| {
        b.iter(|| {
            let target = Target::parse(black_box(
                "https://API57.example.com:443//orgs/t7/./team1/a/b/c?page=2",
            ))
            .unwrap();
            black_box(large.decide(&bob, &client, &Method::GET, &target).clone());
        })
    });

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let small = PolicySet::load(std::path::Path::new(shipped)).expect("shipped policy is valid");
    let alice = principal("acme", "alice", &["engineering"]);
    let tool = Client::parse("tool:github_issues").unwrap();
    let issue = Target::parse("https://api.github.com/repos/acme/web/issues").unwrap();
    c.bench_function("decide/small/allow", |b| {
        b.iter(|| black_box(small.decide(black_box(&alice), &tool, &Method::POST, &issue)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
