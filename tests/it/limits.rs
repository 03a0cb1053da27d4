//! Per-grant limits (issue 10): a grant's `rate` and `daily` budget, counted for each (tenant,
//! user, grant), enforced right after the decision is Allow. A limited request is 429
//! `rate_limited` with `Retry-After`, reaches no upstream, loads no credential, and is audited
//! as a denial naming the grant.

use behalf::egress::{Call, EgressError, Placeholders, body};
use behalf::policy::{Client, PolicySet, SourceFile, Sources};
use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

/// Two limited grants on routes no other acme grant covers (so they are the ones that match).
const LIMITED: &str = r#"
[[grant]]
id = "limited-github"
who = ["group:eng"]
clients = ["proxy"]
service = "github"
allow = ["GET /repos/limited/**"]
rate = "3/min"

[[grant]]
id = "daily-github"
who = ["group:eng"]
clients = ["proxy"]
service = "github"
allow = ["GET /repos/daily/**"]
daily = 2

[[grant]]
id = "crowd-public"
who = ["*"]
clients = ["proxy"]
service = "public"
allow = ["GET /crowd/**"]
rate = "1000/s"
"#;

const LIMITED_URL: &str = "https://api.github.test/repos/limited/web";
const DAILY_URL: &str = "https://api.github.test/repos/daily/web";

async fn limited_harness() -> Harness {
    Harness::start_with(Config {
        acme_extra: LIMITED.into(),
        spy_secrets: true,
        ..Config::default()
    })
    .await
}

/// `Retry-After` as whole seconds (panics unless present and numeric).
fn retry_after(resp: &Resp) -> u64 {
    let value = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {resp:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_fourth_request_in_a_minute_is_429_and_other_users_keep_theirs() {
    let h = limited_harness().await;
    let spy = h.spy.clone().unwrap();

    for i in 0..3 {
        let resp = h.send(get(LIMITED_URL, Some(&h.alice))).await;
        assert_eq!(resp.status, 200, "alice's request {i}: {resp:?}");
    }
    assert_eq!(h.upstream.requests().len(), 3);
    let resp = h.send(get(LIMITED_URL, Some(&h.alice))).await;
    resp.assert_error(429, "rate_limited");
    // 3/min: the next token comes one interval (20 s) after the first request.
    let wait = retry_after(&resp);
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    let error = &resp.json()["error"];
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("limited-github") && message.contains("3/min"),
        "{message}"
    );
    assert!(
        error["hint"].as_str().unwrap().contains("Retry-After"),
        "{error}"
    );
    // Nothing went out for it, and no credential was loaded for it.
    assert_eq!(
        h.upstream.requests().len(),
        3,
        "the 4th reached the upstream"
    );
    assert_eq!(spy.gets(), ["acme/alice/github_token"; 3]);

    // Not across users: bob, under the same grant, still has his three.
    h.upstream.clear();
    for i in 0..3 {
        let resp = h.send(get(LIMITED_URL, Some(&h.bob))).await;
        assert_eq!(resp.status, 200, "bob's request {i}: {resp:?}");
    }
    for seen in h.upstream.requests() {
        assert_eq!(seen.header("authorization"), bearer(BOB_GITHUB));
    }
    h.send(get(LIMITED_URL, Some(&h.bob)))
        .await
        .assert_error(429, "rate_limited");
    // Nor across grants: alice's other grant for the same service is untouched.
    let resp = h
        .send(get(
            "https://api.github.test/repos/acme/web",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(h.upstream.requests().len(), 4);

    let gh = "https://api.github.test";
    let allowed = |user: &str| {
        format!("{user} allow limited-github user:github_token 200 GET {gh}/repos/limited/web")
    };
    let refused = |user: &str| format!("{user} deny rate_limited - 429 GET {gh}/repos/limited/web");
    let mut expected: Vec<String> = Vec::new();
    for user in ["alice", "bob"] {
        expected.extend(std::iter::repeat_n(allowed(user), 3));
        expected.push(refused(user));
    }
    expected.push(format!(
        "alice allow eng-github user:github_token 200 GET {gh}/repos/acme/web"
    ));
    assert_eq!(h.audit_summary(expected.len()).await, expected);
    let records = h.audit_records();
    let denials: Vec<_> = records.iter().filter(|r| r.decision == "deny").collect();
    assert_eq!(denials.len(), 2);
    for r in denials {
        assert_eq!(r.grant.as_deref(), Some("limited-github"));
        assert_eq!(r.reason.as_deref(), Some("rate_limited"));
        assert_eq!(r.status, Some(429));
        assert_eq!(r.credential, None);
    }
    h.assert_audit_clean(&[]);

    // Counted for /metrics, by tenant and service, never by user.
    let mut registry = prometheus_client::registry::Registry::with_prefix("behalf");
    h.egress.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "behalf_rate_limited_total{tenant=\"acme\",service=\"github\"} 2"),
        "{text}"
    );
    assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_daily_budget_is_refused_until_utc_midnight() {
    let h = limited_harness().await;
    for _ in 0..2 {
        let resp = h.send(get(DAILY_URL, Some(&h.alice))).await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    for _ in 0..3 {
        let resp = h.send(get(DAILY_URL, Some(&h.alice))).await;
        resp.assert_error(429, "rate_limited");
        let wait = retry_after(&resp);
        assert!((1..=86_400).contains(&wait), "Retry-After {wait}");
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("daily-github") && message.contains("2 request(s) per UTC day"),
            "{message}"
        );
    }
    assert_eq!(h.upstream.requests().len(), 2);
    // bob's budget is his own.
    let resp = h.send(get(DAILY_URL, Some(&h.bob))).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        h.spy.as_ref().unwrap().gets(),
        [
            "acme/alice/github_token",
            "acme/alice/github_token",
            "acme/bob/github_token"
        ]
    );
    let records = h.wait_audit(6).await;
    let reasons: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.user.as_deref().unwrap(),
                r.decision.as_str(),
                r.grant.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("alice", "allow", Some("daily-github")),
            ("alice", "allow", Some("daily-github")),
            ("alice", "deny", Some("daily-github")),
            ("alice", "deny", Some("daily-github")),
            ("alice", "deny", Some("daily-github")),
            ("bob", "allow", Some("daily-github")),
        ]
    );
}

#[test]
fn a_bad_rate_is_a_load_error_naming_file_line_and_column() {
    let tenant = r#"[tenant]
name = "acme"

[[grant]]
id = "eng-github"
who = ["group:eng"]
clients = ["proxy"]
service = "github"
allow = ["GET /repos/acme/**"]
rate = "60 per minute"
daily = 0
"#;
    let base = tempfile::tempdir().unwrap();
    let sources = Sources {
        settings: None,
        services: vec![SourceFile::new(
            "policies/services/github.toml",
            "[service]\nname = \"github\"\norigins = [\"https://api.github.test\"]\n",
        )],
        tenants: vec![SourceFile::new("policies/tenants/acme.toml", tenant)],
        tests: vec![],
        base: base.path().to_owned(),
    };
    let err = PolicySet::from_sources(&sources).unwrap_err();
    let lines: Vec<String> = err.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "policies/tenants/acme.toml:10:8: error: `rate` `60 per minute` must be N/s, N/min \
             or N/h, e.g. \"60/min\"",
            "policies/tenants/acme.toml:11:9: error: `daily` 0 must be a number of requests per \
             UTC day, from 1 to 4294967295",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_users_stay_under_the_limiters_cap() {
    let h = limited_harness().await;
    let limiter = h.egress.limiter();
    assert!(limiter.is_empty());
    let users = 10_000;
    let mut tasks = tokio::task::JoinSet::new();
    let mut refused = 0;
    let mut next = 0;
    while next < users || !tasks.is_empty() {
        // At most 64 requests in flight.
        while next < users && tasks.len() < 64 {
            let egress = h.egress.clone();
            let user = format!("user{next}");
            next += 1;
            tasks.spawn(async move {
                let principal = Harness::principal("acme", &user, &[]);
                let placeholders = Placeholders::none();
                let call = Call {
                    principal: &principal,
                    client: Client::Proxy,
                    invocation: None,
                    placeholders: &placeholders,
                    tunnel: None,
                };
                let req = Request::get(format!("https://other.test/crowd/{user}"))
                    .body(body::empty())
                    .unwrap();
                match egress.handle(&call, req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        Ok(status)
                    }
                    Err(e) => Err(e),
                }
            });
        }
        match tasks.join_next().await.unwrap().unwrap() {
            Ok(status) => assert_eq!(status, 200),
            Err(EgressError::RateLimited { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(limiter.len() <= limiter.max_keys());
    }
    assert_eq!(refused, 0, "each user made one request");
    assert_eq!(h.upstream.requests().len(), users);
    // Buckets of "1000/s" are full again a millisecond after their one request, so sweeps
    // dropped most of them along the way.
    let left = limiter.len();
    assert!(left < users / 2, "{left} of {users} keys still tracked");
    assert_eq!(limiter.max_keys(), behalf::egress::limits::MAX_KEYS);
}
