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
    assert_eq!(stdout.matches("✓ ").count(), 8, "{stdout}");
    assert!(!stdout.contains("✗ "), "{stdout}");
    // The transcript names credentials only by a short prefix, never in full.
    for secret in [
        "ghp_demo_ALICE_0a1b2c3d4e5f",
        "xoxb-demo-GLOBEX-bot-3d4e5f6a",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}
