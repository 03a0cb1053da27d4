//! `behalf demo` is also a smoke test: it exits 0 only if every step's expectation held.

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end_and_every_expectation_holds() {
    let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .arg("demo")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run behalf demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("demo: every expectation held"), "{stdout}");
    assert!(!stdout.contains("✗ "), "{stdout}");
    // Each step of the story, in order, with the outcome it must show.
    let steps: &[(&str, &str)] = &[
        (
            "✓ alice (acme) asks the github_issues tool",
            "Bearer ghp_demo_ALI…`: alice's own token",
        ),
        (
            "✓ the API echoed alice's token back",
            "`[REDACTED by behalf]` where the token was",
        ),
        (
            "✓ bob (acme) asks the github_issues tool",
            "Bearer ghp_demo_BOB…`: bob's own token",
        ),
        (
            "✓ carol (globex) asks the same tool",
            "denied (no grant for service `github`",
        ),
        (
            "✓ carol posts to globex's Slack",
            "globex's bot token (scope tenant)",
        ),
        (
            "✓ acme narrows its Slack grant from all engineers to alice alone",
            "reloaded as policy generation 2; bob's next post is refused",
        ),
        (
            "✓ alice asks the calendar tool for her next events",
            "(1 exchange) and sent `Authorization: Bearer ya29.demo-ali…`",
        ),
        (
            "✓ bob asks for his calendar before connecting his Google account",
            "refused, nothing sent: the request is allowed, but credential `user:google` is not stored",
        ),
        (
            "✓ bob connects his Google account",
            "exchanged the code itself and stored his refresh token (`Connected`)",
        ),
        (
            "✓ alice asks again, and bob asks for his",
            "reused (still 1 exchange); bob's call carried the access token from his sign-in (no exchange)",
        ),
        (
            "✓ the calendar API revokes every access token",
            "refreshed it behind the tool's back and retried once",
        ),
        (
            "✓ bob disconnects his Google account",
            "revoked his refresh token at Google, deleted it",
        ),
        (
            "✓ hostile reads env and files",
            " 0 escaped; 16 requests denied by policy",
        ),
        ("✓ hostile spins forever", "504 tool_timeout"),
        (
            "✓ hostile allocates without bound",
            "memory limit of 64.0 MiB reached",
        ),
        ("✓ the sidecar is unharmed", "fresh instance"),
        (
            "lists acme/web's issues as alice",
            "alice's token injected, its echo scrubbed",
        ),
        (
            "✓ carol tries acme's issues through the proxy",
            "refused at CONNECT with 403",
        ),
        ("✓ a process without a valid identity token", "407"),
        (
            "✓ the audit log verifies and holds no secret",
            "HMAC-chained records",
        ),
    ];
    let mut rest: &str = &stdout;
    for (title, outcome) in steps {
        let at = rest
            .find(title)
            .unwrap_or_else(|| panic!("step `{title}` missing or out of order:\n{stdout}"));
        let step = &rest[at..];
        let end = step[title.len()..]
            .find("\n✓")
            .map_or(step.len(), |i| i + title.len());
        let step = &step[..end];
        assert!(
            step.contains(outcome),
            "step `{title}` should show `{outcome}`:\n{step}"
        );
        rest = &rest[at + title.len()..];
    }
    assert_eq!(stdout.matches("✓ ").count(), steps.len(), "{stdout}");
    // The transcript names credentials only by a short prefix, never in full.
    for secret in [
        "ghp_demo_ALICE_0a1b2c3d4e5f",
        "xoxb-demo-GLOBEX-bot-3d4e5f6a",
        "GOCSPX-demo-client-secret-5e6f",
        "1//demo-refresh-ALICE-7a8b9c",
        "ya29.demo-alice-1",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}
