use std::path::Path;

use http::StatusCode;

use super::*;
use crate::policy::{ClientPattern, Location, ServiceName, Who};

// === helpers ===

fn grant(id: &str, rate: Option<&str>, daily: Option<u32>) -> Grant {
    Grant {
        id: id.into(),
        who: vec![Who::Anyone],
        clients: vec![ClientPattern::Any],
        service: ServiceName::parse("svc").unwrap(),
        allow: Vec::new(),
        rate: rate.map(|r| Rate::parse(r).unwrap()),
        daily,
        at: Location::file(Path::new("tenants/acme.toml")),
    }
}

/// 2024-03-01T00:00:00Z, a UTC midnight.
const MIDNIGHT: u64 = 1_709_251_200;
/// Some time in the middle of that day.
const NOON: u64 = MIDNIGHT + 12 * 3600;

fn rate_refusal(r: Result<(), Refusal>) -> u64 {
    match r {
        Err(Refusal::Rate { retry_after, .. }) => retry_after,
        other => panic!("expected a rate refusal, got {other:?}"),
    }
}

fn advance(secs: u64) -> impl std::future::Future<Output = ()> {
    tokio::time::advance(Duration::from_secs(secs))
}

// === rate ===

#[tokio::test(start_paused = true)]
async fn rate_admits_a_burst_of_n_then_one_per_interval() {
    let limiter = Limiter::new();
    let g = grant("g", Some("3/min"), None);
    let take = || limiter.take_at("acme", "alice", &g, Instant::now(), NOON);
    for i in 0..3 {
        take().unwrap_or_else(|e| panic!("request {i}: {e:?}"));
    }
    // The fourth waits for one interval (60 s / 3).
    assert_eq!(rate_refusal(take()), 20);
    advance(19).await;
    assert_eq!(rate_refusal(take()), 1);
    advance(1).await;
    take().unwrap();
    assert_eq!(rate_refusal(take()), 20);
    // After a whole idle period the bucket is full again: a burst of 3.
    advance(60).await;
    for _ in 0..3 {
        take().unwrap();
    }
    assert_eq!(rate_refusal(take()), 20);
}

#[tokio::test(start_paused = true)]
async fn refused_requests_take_nothing() {
    let limiter = Limiter::new();
    let g = grant("g", Some("1/s"), None);
    let take = || limiter.take_at("acme", "alice", &g, Instant::now(), NOON);
    take().unwrap();
    for _ in 0..100 {
        assert_eq!(rate_refusal(take()), 1);
    }
    advance(1).await;
    take().unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_after_rounds_up_to_whole_seconds() {
    let limiter = Limiter::new();
    // 7/s does not divide a second: the interval is 142_857_142 ns.
    let g = grant("g", Some("7/s"), None);
    let take = || limiter.take_at("acme", "alice", &g, Instant::now(), NOON);
    for _ in 0..7 {
        take().unwrap();
    }
    assert_eq!(rate_refusal(take()), 1);
    tokio::time::advance(Duration::from_millis(143)).await;
    take().unwrap();
    assert!(take().is_err());

    let hourly = grant("h", Some("2/h"), None);
    let take = || limiter.take_at("acme", "alice", &hourly, Instant::now(), NOON);
    take().unwrap();
    take().unwrap();
    assert_eq!(rate_refusal(take()), 1800);
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(rate_refusal(take()), 1799, "1798.5 s rounds up");
}

#[tokio::test(start_paused = true)]
async fn keys_are_tenant_user_and_grant() {
    let limiter = Limiter::new();
    let g = grant("g", Some("1/min"), None);
    let other = grant("other", Some("1/min"), None);
    let take = |tenant: &str, user: &str, g: &Grant| {
        limiter.take_at(tenant, user, g, Instant::now(), NOON)
    };
    take("acme", "alice", &g).unwrap();
    assert!(take("acme", "alice", &g).is_err());
    // Another user, the same user under another grant, the same name in another tenant.
    take("acme", "bob", &g).unwrap();
    take("acme", "alice", &other).unwrap();
    take("globex", "alice", &g).unwrap();
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    take("ab", "c", &g).unwrap();
    take("a", "bc", &g).unwrap();
    assert_eq!(limiter.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn grants_without_limits_track_nothing() {
    let limiter = Limiter::new();
    let g = grant("g", None, None);
    for user in 0..1000 {
        limiter
            .take_at("acme", &format!("u{user}"), &g, Instant::now(), NOON)
            .unwrap();
    }
    assert!(limiter.is_empty());
}

// === daily ===

#[tokio::test(start_paused = true)]
async fn daily_budget_is_spent_then_resets_at_utc_midnight() {
    let limiter = Limiter::new();
    let g = grant("g", None, Some(2));
    let late = MIDNIGHT + 86_400 - 10;
    let take = |unix| limiter.take_at("acme", "alice", &g, Instant::now(), unix);
    take(late).unwrap();
    take(late).unwrap();
    assert_eq!(
        take(late),
        Err(Refusal::Daily {
            budget: 2,
            retry_after: 10
        })
    );
    assert_eq!(take(late + 9).unwrap_err().retry_after(), 1);
    // Monotonic time alone does not reset it.
    advance(3600).await;
    assert!(take(late + 9).is_err());
    // The next UTC day does.
    take(MIDNIGHT + 86_400).unwrap();
    take(MIDNIGHT + 86_400 + 1).unwrap();
    assert_eq!(
        take(MIDNIGHT + 86_400 + 2).unwrap_err().retry_after(),
        86_398
    );
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_stepped_back_does_not_reset_the_day() {
    let limiter = Limiter::new();
    let g = grant("g", None, Some(1));
    let take = |unix| limiter.take_at("acme", "alice", &g, Instant::now(), unix);
    take(MIDNIGHT + 5).unwrap();
    // Back across midnight: still the later day, still spent.
    let r = take(MIDNIGHT - 5).unwrap_err();
    assert_eq!(r.retry_after(), 86_405);
}

#[tokio::test(start_paused = true)]
async fn rate_and_daily_count_only_admitted_requests() {
    let limiter = Limiter::new();
    let g = grant("g", Some("2/s"), Some(3));
    let take = || limiter.take_at("acme", "alice", &g, Instant::now(), NOON);
    take().unwrap();
    take().unwrap();
    // Refused by the rate: the daily budget is not charged.
    for _ in 0..5 {
        assert!(matches!(take(), Err(Refusal::Rate { .. })));
    }
    advance(1).await;
    take().unwrap();
    // The budget is now spent; the rate would pass, the day does not.
    assert!(matches!(take(), Err(Refusal::Daily { budget: 3, .. })));
    advance(5).await;
    let r = take().unwrap_err();
    assert!(matches!(r, Refusal::Daily { .. }), "{r:?}");
    assert_eq!(r.retry_after(), 12 * 3600);
}

// === memory ===

#[tokio::test(start_paused = true)]
async fn idle_buckets_are_swept_so_many_users_stay_under_the_cap() {
    let limiter = Limiter::with_max_keys(512);
    let g = grant("g", Some("1000/s"), None);
    for user in 0..10_000 {
        // Each bucket is full again 1 ms after its one request.
        tokio::time::advance(Duration::from_millis(1)).await;
        limiter
            .take_at("acme", &format!("user{user}"), &g, Instant::now(), NOON)
            .unwrap_or_else(|e| panic!("user{user}: {e:?}"));
        assert!(limiter.len() <= limiter.max_keys());
    }
    assert!(limiter.len() <= 512, "{}", limiter.len());
}

#[tokio::test(start_paused = true)]
async fn busy_keys_are_kept_and_new_keys_refused_at_the_cap() {
    let limiter = Limiter::with_max_keys(64);
    let g = grant("g", Some("1/h"), None);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for user in 0..1000 {
        let user = format!("user{user}");
        match limiter.take_at("acme", &user, &g, Instant::now(), NOON) {
            Ok(()) => admitted.push(user),
            Err(Refusal::Full { retry_after }) => {
                assert_eq!(retry_after, 1);
                refused += 1;
            }
            Err(other) => panic!("{user}: {other:?}"),
        }
    }
    assert_eq!(admitted.len(), 64, "every shard fills to its share");
    assert_eq!(refused, 1000 - 64);
    assert_eq!(limiter.len(), 64);
    // Users already tracked keep their own buckets (refused by rate, not by the cap).
    for user in &admitted {
        let r = limiter.take_at("acme", user, &g, Instant::now(), NOON);
        assert_eq!(rate_refusal(r), 3600);
    }
    // Once their buckets refill they are idle, swept, and new users get in.
    advance(3600).await;
    limiter
        .take_at("acme", "newcomer", &g, Instant::now(), NOON)
        .unwrap();
    assert!(limiter.len() < 64, "{}", limiter.len());
}

#[tokio::test(start_paused = true)]
async fn a_spent_daily_budget_is_never_evicted_within_its_day() {
    let limiter = Limiter::with_max_keys(16);
    let g = grant("g", None, Some(1));
    let mut admitted = Vec::new();
    for user in 0..200 {
        let user = format!("user{user}");
        if limiter
            .take_at("acme", &user, &g, Instant::now(), NOON)
            .is_ok()
        {
            admitted.push(user);
        }
    }
    assert_eq!(admitted.len(), 16);
    // Hours later (many sweeps due), the same day: nobody's budget came back.
    advance(6 * 3600).await;
    for user in &admitted {
        let r = limiter.take_at("acme", user, &g, Instant::now(), NOON + 6 * 3600);
        assert!(matches!(r, Err(Refusal::Daily { .. })), "{user}: {r:?}");
    }
    // The next day the entries are idle and swept for new users.
    limiter
        .take_at("acme", "newcomer", &g, Instant::now(), MIDNIGHT + 86_400)
        .unwrap();
}

// === the pipeline error ===

#[test]
fn refusals_render_as_429_with_retry_after() {
    let g = grant("eng-github", Some("3/min"), Some(100));
    let rate = Refusal::Rate {
        rate: g.rate.unwrap(),
        retry_after: 20,
    }
    .into_error(&g);
    assert_eq!(
        rate.to_string(),
        "grant `eng-github` allows each user 3 request(s) per minute (rate = \"3/min\"); this \
         user has used them"
    );
    for proxy in [true, false] {
        let resp = rate.to_response(proxy);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "20");
    }
    assert_eq!(rate.code(), "rate_limited");
    assert!(rate.hint().contains("retry after 20 s"), "{}", rate.hint());

    let daily = Refusal::Daily {
        budget: 100,
        retry_after: 7,
    }
    .into_error(&g);
    assert!(daily.to_string().contains("100 request(s) per UTC day"));
    assert_eq!(daily.to_response(false).headers()["retry-after"], "7");
    let full = Refusal::Full { retry_after: 1 }.into_error(&g);
    assert!(full.to_string().contains("tracking as many users"));
    assert_eq!(full.to_response(true).headers()["retry-after"], "1");
}

#[tokio::test(start_paused = true)]
async fn take_keys_on_the_verified_principal() {
    use crate::principal::{TenantId, UserId};
    let limiter = Limiter::new();
    let g = grant("g", Some("1/min"), None);
    let alice = Principal::new(
        TenantId::parse("acme").unwrap(),
        UserId::parse("alice").unwrap(),
        Vec::new(),
    );
    limiter.take(&alice, &g).unwrap();
    let e = limiter.take(&alice, &g).unwrap_err();
    assert!(matches!(
        e,
        EgressError::RateLimited {
            retry_after: 60,
            ..
        }
    ));
    assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
}
