//! `behalf policy check|explain|test|diff`, run as the real binary against the shipped example
//! policy set (`policies/`) and against broken copies of it in temporary directories.
//!
//! Exit codes (DESIGN.md "CLI"): 0 ok, 1 a negative answer (deny, failed policy test),
//! 2 usage / bad input, 64 bad configuration.

use crate::support::copy_dir;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OK: i32 = 0;
const NEGATIVE: i32 = 1;
const USAGE: i32 = 2;
const CONFIG: i32 = 64;

/// The crate root, which holds the shipped `policies/`.
fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The result of one run of the binary.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts the exit code, showing the whole run when it differs.
    fn expect_code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(want),
            "`behalf {}` exited {:?}, expected {want}\n{self}",
            self.args.join(" "),
            self.code
        );
        self
    }

    fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// The first stdout line containing every needle.
    fn stdout_line_with(&self, needles: &[&str]) -> &str {
        self.stdout
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no stdout line contains all of {needles:?}\n{self}"))
    }

    /// The last non-empty line of a stream.
    fn last_line(text: &str) -> &str {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- command: behalf {}\n--- exit: {:?}\n--- stdout:\n{}--- stderr:\n{}---",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `behalf ARGS` in `cwd`, with logging at its default level.
fn behalf_in(cwd: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .args(args)
        .current_dir(cwd)
        .env_remove("BEHALF_LOG")
        .output()
        .expect("run the behalf binary");
    Run {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}

/// Runs `behalf ARGS` in the crate root, where `policies` is the shipped set.
fn behalf(args: &[&str]) -> Run {
    behalf_in(crate_root(), args)
}

/// A temp dir holding a copy of the shipped policies as `<tmp>/<name>`.
fn copy_of_policies(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&crate_root().join("policies"), &dir);
    (tmp, dir)
}

/// Replaces the single occurrence of `from` in a file; panics if it is not there exactly once,
/// so that a change to the shipped examples shows up here rather than as a confusing failure.
fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{} should contain {from:?} exactly once",
        file.display()
    );
    fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// The 1-based `line:column` (column in characters) where `needle` starts in a file; it must
/// occur exactly once.
fn locate(file: &Path, needle: &str) -> String {
    let text = fs::read_to_string(file).unwrap();
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{} should contain {needle:?} exactly once",
        file.display()
    );
    let offset = text.find(needle).unwrap();
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    format!("{line}:{column}")
}

/// The names listed (two-space indent) in the section of `policy check` output whose heading
/// starts with `heading`.
fn section_names<'a>(stdout: &'a str, heading: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// Parses a `N passed, M failed` line.
fn tally(line: &str) -> Option<(usize, usize)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Lines of stderr that report an error (not a warning).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(": error: ")).collect()
}

// ---------------------------------------------------------------------------------------------
// policy check

#[test]
fn check_accepts_the_shipped_policies_and_summarises_them() {
    let run = behalf(&["policy", "check", "policies"]);
    run.expect_code(OK).stdout_has("policy is valid");
    assert!(
        error_lines(&run.stderr).is_empty(),
        "a valid set prints no errors\n{run}"
    );

    let services = section_names(&run.stdout, "services (");
    assert_eq!(
        services,
        ["github", "google_calendar", "slack", "weather"],
        "services\n{run}"
    );
    let tenants = section_names(&run.stdout, "tenants (");
    assert_eq!(tenants, ["acme", "globex"], "tenants\n{run}");

    // Each grant is listed under its tenant with its service.
    run.stdout_line_with(&["eng-github", "github", "POST /repos/acme/*/issues"]);
    run.stdout_line_with(&["carol-slack", "slack"]);
}

#[test]
fn check_defaults_to_the_policies_flag() {
    let default = behalf(&["policy", "check"]);
    default.expect_code(OK);
    let flagged = behalf(&["--policies", "policies", "policy", "check"]);
    flagged.expect_code(OK);
    assert_eq!(default.stdout, flagged.stdout);
}

#[test]
fn check_reports_every_error_with_its_location_and_a_count() {
    let (tmp, dir) = copy_of_policies("broken");
    let acme = dir.join("tenants/acme.toml");
    let globex = dir.join("tenants/globex.toml");
    let status = dir.join("services/status.toml");

    // Three independent problems in three files; none of them makes another object vanish,
    // so there is exactly one error each.
    // 1. An unknown field in a grant.
    edit(
        &acme,
        "allow = [\"GET /data/2.5/weather\"]\n",
        "allow = [\"GET /data/2.5/weather\"]\nexpires = \"1d\"\n",
    );
    // 2. A grant naming a service that does not exist.
    edit(&globex, "service = \"slack\"", "service = \"slak\"");
    // 3. A (new, unreferenced) service whose origin has a path.
    fs::write(
        &status,
        "[service]\nname = \"status\"\norigins = [\"https://status.example/v1\"]\n",
    )
    .unwrap();

    let expected = [
        format!(
            "broken/tenants/acme.toml:{}: error: ",
            locate(&acme, "expires")
        ),
        format!(
            "broken/tenants/globex.toml:{}: error: ",
            locate(&globex, "\"slak\"")
        ),
        format!(
            "broken/services/status.toml:{}: error: ",
            locate(&status, "\"https://status.example/v1\"")
        ),
    ];

    // A relative path is echoed as given.
    let run = behalf_in(tmp.path(), &["policy", "check", "broken"]);
    run.expect_code(CONFIG);
    for (prefix, what) in expected.iter().zip(["expires", "slak", "/v1"]) {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(prefix.as_str()))
            .unwrap_or_else(|| panic!("stderr lacks a line starting {prefix:?}\n{run}"));
        assert!(line.contains(what), "{line:?} should mention {what:?}");
    }
    assert_eq!(error_lines(&run.stderr).len(), 3, "exactly 3 errors\n{run}");
    assert_eq!(
        Run::last_line(&run.stderr),
        "policy is invalid: 3 errors",
        "{run}"
    );
    assert!(
        !run.stdout.contains("policy is valid"),
        "an invalid set is not summarised as valid\n{run}"
    );

    // An absolute path is echoed as given too.
    let abs = dir.display().to_string();
    let run = behalf(&["policy", "check", &abs]);
    run.expect_code(CONFIG);
    for prefix in &expected {
        let prefix = format!("{}/{}", tmp.path().display(), prefix);
        assert!(
            run.stderr.lines().any(|l| l.starts_with(&prefix)),
            "stderr lacks a line starting {prefix:?}\n{run}"
        );
    }
    assert_eq!(
        Run::last_line(&run.stderr),
        "policy is invalid: 3 errors",
        "{run}"
    );
}

/// The breakages DESIGN.md lists, in service files that grants refer to.
fn break_services_and_a_grant(dir: &Path) -> [String; 3] {
    let slack = dir.join("services/slack.toml");
    let weather = dir.join("services/weather.toml");
    let acme = dir.join("tenants/acme.toml");
    edit(&slack, "inject = {", "scrub_respones = true\ninject = {");
    edit(
        &weather,
        "\"https://api.weather.example\"",
        "\"https://api.weather.example/v1\"",
    );
    edit(
        &acme,
        "service = \"github\"\nallow = [\"GET /repos/acme/*/issues\"",
        "service = \"gitlab\"\nallow = [\"GET /repos/acme/*/issues\"",
    );
    [
        format!(
            "broken/services/slack.toml:{}: error: unknown field `scrub_respones`",
            locate(&slack, "scrub_respones")
        ),
        format!(
            "broken/services/weather.toml:{}: error: ",
            locate(&weather, "\"https://api.weather.example/v1\"")
        ),
        format!(
            "broken/tenants/acme.toml:{}: error: ",
            locate(&acme, "\"gitlab\"")
        ),
    ]
}

#[test]
fn check_names_broken_services_and_counts_what_it_prints() {
    let (tmp, dir) = copy_of_policies("broken");
    let expected = break_services_and_a_grant(&dir);
    let run = behalf_in(tmp.path(), &["policy", "check", "broken"]);
    run.expect_code(CONFIG);
    for prefix in &expected {
        assert!(
            run.stderr.lines().any(|l| l.starts_with(prefix.as_str())),
            "stderr lacks a line starting {prefix:?}\n{run}"
        );
    }
    // However many errors there are, the closing count agrees with the lines printed.
    let n = error_lines(&run.stderr).len();
    assert_eq!(
        Run::last_line(&run.stderr),
        format!("policy is invalid: {n} errors"),
        "{run}"
    );
}

/// A service file with an error must not make every grant naming it report "names unknown
/// service" as well: the service is defined, just invalid.
#[test]
fn check_does_not_cascade_from_an_invalid_service() {
    let (tmp, dir) = copy_of_policies("broken");
    break_services_and_a_grant(&dir);
    let run = behalf_in(tmp.path(), &["policy", "check", "broken"]);
    run.expect_code(CONFIG);
    assert_eq!(
        Run::last_line(&run.stderr),
        "policy is invalid: 3 errors",
        "{run}"
    );
}

#[test]
fn check_on_a_missing_directory_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["policy", "check", "no-such-dir"][..],
        &["--policies", "no-such-dir", "policy", "check"][..],
        &["policy", "test", "no-such-dir"][..],
    ] {
        let run = behalf_in(tmp.path(), args);
        run.expect_code(CONFIG)
            .stderr_has("no-such-dir")
            .stderr_has("policies directory not found")
            // says what a policies directory is and how to pass one
            .stderr_has("behalf.toml")
            .stderr_has("--policies");
        assert!(run.stdout.is_empty(), "nothing on stdout\n{run}");
    }
}

// ---------------------------------------------------------------------------------------------
// policy test

#[test]
fn test_passes_on_the_shipped_cases() {
    let run = behalf(&["policy", "test", "policies"]);
    run.expect_code(OK);
    let last = Run::last_line(&run.stdout);
    let (passed, failed) =
        tally(last).unwrap_or_else(|| panic!("last line {last:?} is not a tally\n{run}"));
    assert_eq!(last, format!("{passed} passed, 0 failed"), "{run}");
    assert!(passed > 0, "the shipped set has test cases\n{run}");
    assert_eq!(failed, 0);
    let ok_lines = run.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok_lines, passed, "one `ok` line per passing case\n{run}");
    assert!(!run.stdout.contains("FAIL"), "{run}");
}

#[test]
fn test_reports_a_flipped_expectation_with_the_deciding_grant() {
    let (tmp, dir) = copy_of_policies("flipped");
    let cases = dir.join("tests/acme.toml");
    let name = "alice (engineering) can file an acme issue through the tool";
    let case_at = locate(&cases, &format!("[[case]]\nname = \"{name}\""));
    // Flip the case from allow to deny (dropping its credential, which only applies to allow).
    let text = fs::read_to_string(&cases).unwrap();
    let start = text.find(name).unwrap();
    let from = "expect = \"allow\"\ncredential = \"user:github_token\"\n";
    let offset = start + text[start..].find(from).unwrap();
    let flipped = format!(
        "{}expect = \"deny\"\n{}",
        &text[..offset],
        &text[offset + from.len()..]
    );
    fs::write(&cases, flipped).unwrap();
    let grant_at = locate(
        &dir.join("tenants/acme.toml"),
        "[[grant]]\nid = \"eng-github\"",
    );

    let shipped = behalf(&["policy", "test", "policies"]);
    let (total, _) = tally(Run::last_line(&shipped.stdout)).unwrap();

    let run = behalf_in(tmp.path(), &["policy", "test", "flipped"]);
    run.expect_code(NEGATIVE);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let fail = lines
        .iter()
        .position(|l| l.starts_with("FAIL") && l.contains(name))
        .unwrap_or_else(|| panic!("no FAIL line for the flipped case\n{run}"));
    assert!(
        lines[fail].contains(&format!("flipped/tests/acme.toml:{case_at}")),
        "the FAIL line names the case's file:line\n{run}"
    );
    let expected = lines[fail + 1].trim_start();
    let actual = lines.get(fail + 2).map_or("", |l| l.trim_start());
    assert!(expected.starts_with("expected:"), "{run}");
    assert!(expected.contains("deny"), "{run}");
    assert!(actual.starts_with("actual:"), "{run}");
    assert!(actual.contains("allow"), "{run}");
    assert!(
        actual.contains("eng-github"),
        "actual names the grant\n{run}"
    );
    assert!(
        actual.contains(&format!("flipped/tenants/acme.toml:{grant_at}")),
        "actual names where the deciding grant is written\n{run}"
    );
    assert!(actual.contains("user:github_token"), "{run}");

    assert_eq!(run.stdout.matches("FAIL").count(), 1, "{run}");
    assert_eq!(
        Run::last_line(&run.stdout),
        format!("{} passed, 1 failed", total - 1),
        "{run}"
    );
}

#[test]
fn test_reports_a_wrong_deny_reason() {
    let (tmp, dir) = copy_of_policies("reason");
    let cases = dir.join("tests/globex.toml");
    edit(
        &cases,
        "reason = \"no_grant_for_service\"",
        "reason = \"not_grantee\"",
    );
    let run = behalf_in(tmp.path(), &["policy", "test", "reason"]);
    run.expect_code(NEGATIVE);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let fail = lines
        .iter()
        .position(|l| l.starts_with("FAIL") && l.contains("globex has no weather grant"))
        .unwrap_or_else(|| panic!("no FAIL line\n{run}"));
    assert!(lines[fail + 1].contains("not_grantee"), "{run}");
    assert!(lines[fail + 2].contains("no_grant_for_service"), "{run}");
    assert!(Run::last_line(&run.stdout).ends_with(" passed, 1 failed"));
}

// ---------------------------------------------------------------------------------------------
// policy explain

const ALICE_FILES_AN_ISSUE: &[&str] = &[
    "explain",
    "--tenant",
    "acme",
    "--user",
    "alice",
    "--group",
    "engineering",
    "--client",
    "tool:github_issues",
    "POST",
    "https://api.github.com/repos/acme/web/issues",
];

fn with_prefix(prefix: &[&'static str], rest: &[&'static str]) -> Vec<&'static str> {
    prefix.iter().chain(rest).copied().collect()
}

fn grant_at(id: &str) -> String {
    let file = crate_root().join("policies/tenants/acme.toml");
    format!(
        "policies/tenants/acme.toml:{}",
        locate(&file, &format!("[[grant]]\nid = \"{id}\""))
    )
}

#[test]
fn explain_allow_names_the_grant_its_location_and_the_credential() {
    // --policies before the subcommand, after it, and left at its default all agree.
    let before = behalf(&with_prefix(
        &["--policies", "policies", "policy"],
        ALICE_FILES_AN_ISSUE,
    ));
    let mut after_args = with_prefix(&["policy"], ALICE_FILES_AN_ISSUE);
    after_args.extend(["--policies", "policies"]);
    let after = behalf(&after_args);
    let default = behalf(&with_prefix(&["policy"], ALICE_FILES_AN_ISSUE));

    for run in [&before, &after, &default] {
        run.expect_code(OK);
        let decision = run.stdout_line_with(&["ALLOW"]);
        assert!(decision.contains("eng-github"), "{run}");
        assert!(decision.contains(&grant_at("eng-github")), "{run}");
        assert!(decision.contains("policies/tenants/acme.toml:"), "{run}");
        run.stdout_line_with(&["credential", "user:github_token"]);
        assert!(!run.stdout.contains("DENY"), "{run}");
    }
    assert_eq!(before.stdout, after.stdout);
    assert_eq!(before.stdout, default.stdout);
}

#[test]
fn explain_deny_gives_the_reason_and_why_each_candidate_failed() {
    // dave (support) via the github tool: one grant is for another group, the other only
    // admits the proxy.
    let run = behalf(&[
        "policy",
        "explain",
        "--tenant",
        "acme",
        "--user",
        "dave",
        "--group",
        "support",
        "--client",
        "tool:github_issues",
        "POST",
        "https://api.github.com/repos/acme/web/issues",
    ]);
    run.expect_code(NEGATIVE);
    run.stdout_line_with(&["DENY", "client_not_granted"]);
    let eng = grant_at("eng-github");
    let support = grant_at("support-github-read");
    run.stdout_line_with(&["eng-github", &eng, "who = [group:engineering]"]);
    run.stdout_line_with(&[
        "support-github-read",
        &support,
        "clients = [proxy]",
        "tool:github_issues",
    ]);
    assert!(!run.stdout.contains("ALLOW"), "{run}");

    // alice outside the granted routes: the route is what is missing.
    let run = behalf(&[
        "policy",
        "explain",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--group",
        "engineering",
        "--client",
        "tool:github_issues",
        "GET",
        "https://api.github.com/repos/globex/secret/issues",
    ]);
    run.expect_code(NEGATIVE);
    run.stdout_line_with(&["DENY", "route_not_granted"]);
    run.stdout_line_with(&[
        "eng-github",
        &eng,
        "has no route for GET /repos/globex/secret/issues",
    ]);
    run.stdout_line_with(&["support-github-read", &support, "who = [group:support]"]);

    // An origin no service claims.
    let run = behalf(&[
        "policy",
        "explain",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--client",
        "proxy",
        "GET",
        "https://api.github.com.evil.example/repos/acme/web",
    ]);
    run.expect_code(NEGATIVE);
    run.stdout_line_with(&["DENY", "no_service"]);
}

#[test]
fn explain_rejects_bad_input_as_usage() {
    let base =
        |tenant: &'static str, client: &'static str, method: &'static str, url: &'static str| {
            vec![
                "policy", "explain", "--tenant", tenant, "--user", "alice", "--client", client,
                method, url,
            ]
        };
    let good_url = "https://api.github.com/repos/acme/web";
    let cases = [
        ("tenant with a path", base("../x", "proxy", "GET", good_url)),
        (
            "encoded slash",
            base(
                "acme",
                "proxy",
                "GET",
                "https://api.github.com/repos/acme%2fweb/issues",
            ),
        ),
        ("lower-case method", base("acme", "proxy", "get", good_url)),
        ("unknown client", base("acme", "bogus", "GET", good_url)),
        (
            "relative URL",
            base("acme", "proxy", "GET", "/repos/acme/web"),
        ),
    ];
    for (what, args) in cases {
        let run = behalf(&args);
        assert_eq!(run.code, Some(USAGE), "{what}\n{run}");
        assert!(run.stdout.is_empty(), "{what}: nothing on stdout\n{run}");
        assert!(
            run.stderr.lines().any(|l| l.starts_with("error: ")),
            "{what}: an error line on stderr\n{run}"
        );
    }
    // Missing required arguments are usage errors too (clap).
    let run = behalf(&["policy", "explain", "--tenant", "acme", "GET", good_url]);
    run.expect_code(USAGE);
}

#[test]
fn explain_with_a_missing_policies_dir_is_a_configuration_error() {
    let mut args = vec!["--policies", "no-such-dir", "policy"];
    args.extend_from_slice(ALICE_FILES_AN_ISSUE);
    let run = behalf(&args);
    run.expect_code(CONFIG)
        .stderr_has("no-such-dir")
        .stderr_has("policies directory not found");
    assert!(run.stdout.is_empty(), "{run}");
}

// ---------------------------------------------------------------------------------------------
// help

#[test]
fn help_lists_the_policy_subcommands() {
    let run = behalf(&["--help"]);
    run.expect_code(OK)
        .stdout_has("policy")
        .stdout_has("--policies");

    let run = behalf(&["policy", "--help"]);
    run.expect_code(OK);
    for sub in ["check", "explain", "test"] {
        run.stdout_has(sub);
    }

    let run = behalf(&["policy", "explain", "--help"]);
    run.expect_code(OK)
        .stdout_has("--tenant")
        .stdout_has("--client");

    // No subcommand is a usage error.
    behalf(&[]).expect_code(USAGE);
    behalf(&["policy"]).expect_code(USAGE);
}

// ---------------------------------------------------------------------------------------------
// test files are part of the policy set

#[test]
fn check_rejects_an_invalid_test_file() {
    let (tmp, dir) = copy_of_policies("badtest");
    let cases = dir.join("tests/globex.toml");
    let at = locate(&cases, "\"deny\"\nreason = \"no_tenant_policy\"");
    edit(
        &cases,
        "expect = \"deny\"\nreason = \"no_tenant_policy\"",
        "expect = \"dney\"\nreason = \"no_tenant_policy\"",
    );
    for cmd in ["check", "test"] {
        let run = behalf_in(tmp.path(), &["policy", cmd, "badtest"]);
        run.expect_code(CONFIG);
        assert!(
            run.stderr
                .contains(&format!("badtest/tests/globex.toml:{at}: error:")),
            "{run}"
        );
        assert!(run.stderr.contains("policy is invalid: 1 error"), "{run}");
    }
}

#[test]
fn contradictory_test_cases_are_rejected() {
    let (tmp, dir) = copy_of_policies("contra");
    let cases = dir.join("tests/globex.toml");
    edit(
        &cases,
        "expect = \"deny\"\nreason = \"no_tenant_policy\"",
        "expect = \"deny\"\ncredential = \"user:github_token\"",
    );
    let run = behalf_in(tmp.path(), &["policy", "test", "contra"]);
    run.expect_code(CONFIG);
    assert!(run.stderr.contains("`credential` only applies"), "{run}");

    let (tmp, dir) = copy_of_policies("contra2");
    edit(
        &dir.join("tests/globex.toml"),
        "expect = \"allow\"\ncredential = \"user:github_token\"",
        "expect = \"allow\"\nreason = \"not_grantee\"",
    );
    let run = behalf_in(tmp.path(), &["policy", "test", "contra2"]);
    run.expect_code(CONFIG);
    assert!(run.stderr.contains("`reason` only applies"), "{run}");
}

#[test]
fn a_test_run_with_no_cases_is_not_a_pass() {
    let (tmp, dir) = copy_of_policies("empty");
    fs::remove_dir_all(dir.join("tests")).unwrap();
    let run = behalf_in(tmp.path(), &["policy", "test", "empty"]);
    run.expect_code(NEGATIVE);
    assert!(run.stderr.contains("no policy test cases"), "{run}");
}

// ---------------------------------------------------------------------------------------------
// policy diff

/// A temp dir holding two copies of the shipped policies, `<tmp>/old` and `<tmp>/new`.
fn old_and_new() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    copy_dir(&crate_root().join("policies"), &old);
    copy_dir(&crate_root().join("policies"), &new);
    (tmp, old, new)
}

/// In NEW, eng-github trades `POST .../issues` for `POST .../pulls`.
fn trade_a_route(new: &Path) {
    edit(
        &new.join("tenants/acme.toml"),
        r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues", "GET /user"]"#,
        r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/pulls", "GET /user"]"#,
    );
}

#[test]
fn diff_names_a_gained_and_a_lost_route_under_their_grant() {
    let (tmp, _, new) = old_and_new();
    trade_a_route(&new);
    let run = behalf_in(tmp.path(), &["policy", "diff", "old", "new"]);
    run.expect_code(NEGATIVE);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"tenant acme"), "{run}");
    let grant = run.stdout_line_with(&["~ grant eng-github:", "→ github"]);
    assert!(
        grant.contains("group:engineering"),
        "the header says who\n{run}"
    );
    let gained = run.stdout_line_with(&["+ route POST /repos/acme/*/pulls"]);
    let lost = run.stdout_line_with(&["- route POST /repos/acme/*/issues"]);
    for line in [gained, lost] {
        assert!(
            line.starts_with("      "),
            "items sit under their grant\n{run}"
        );
    }
    assert_eq!(
        Run::last_line(&run.stdout),
        "1 gain, 1 loss, 0 security-relevant changes",
        "{run}"
    );
    assert!(error_lines(&run.stderr).is_empty(), "{run}");

    // The other way round, the same route is gained and the other lost.
    let run = behalf_in(tmp.path(), &["policy", "diff", "new", "old"]);
    run.expect_code(NEGATIVE);
    run.stdout_line_with(&["+ route POST /repos/acme/*/issues"]);
    run.stdout_line_with(&["- route POST /repos/acme/*/pulls"]);
}

#[test]
fn diff_of_identical_sets_exits_0_with_no_differences() {
    let run = behalf(&["policy", "diff", "policies", "policies"]);
    run.expect_code(OK);
    assert_eq!(run.stdout, "no differences\n", "{run}");

    let (tmp, _, _) = old_and_new();
    let run = behalf_in(tmp.path(), &["policy", "diff", "old", "new"]);
    run.expect_code(OK);
    assert_eq!(run.stdout, "no differences\n", "{run}");
}

#[test]
fn diff_marks_security_relevant_service_changes() {
    let (tmp, _, new) = old_and_new();
    let github = new.join("services/github.toml");
    edit(
        &github,
        r#"origins = ["https://api.github.com"]"#,
        "origins = [\"https://api.github.com\", \"https://uploads.github.com\"]\nallow_private_ips = true",
    );
    let run = behalf_in(tmp.path(), &["policy", "diff", "old", "new"]);
    run.expect_code(NEGATIVE);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let section = lines
        .iter()
        .position(|l| *l == "service github")
        .unwrap_or_else(|| panic!("no `service github` section\n{run}"));
    let body = &lines[section + 1..];
    assert!(
        body.contains(&"  ! new origin https://uploads.github.com receives user:github_token"),
        "{run}"
    );
    assert!(
        body.contains(&"  ! allow_private_ips turned on (SSRF guard off)"),
        "{run}"
    );
    assert_eq!(
        Run::last_line(&run.stdout),
        "0 gains, 0 losses, 2 security-relevant changes",
        "{run}"
    );
}

#[test]
fn diff_with_a_broken_new_set_is_a_configuration_error_naming_the_place() {
    let (tmp, _, new) = old_and_new();
    trade_a_route(&new);
    let github = new.join("services/github.toml");
    edit(
        &github,
        "\"https://api.github.com\"",
        "\"https://api.github.com/v3\"",
    );
    let at = locate(&github, "\"https://api.github.com/v3\"");
    let run = behalf_in(tmp.path(), &["policy", "diff", "old", "new"]);
    run.expect_code(CONFIG)
        .stderr_has(&format!("new/services/github.toml:{at}: error: "))
        .stderr_has("policy is invalid: 1 error");
    assert!(run.stdout.is_empty(), "nothing is compared\n{run}");
    assert!(!run.stderr.contains("old/"), "OLD is fine\n{run}");

    // A missing OLD is a configuration error too, and a broken NEW is still reported.
    let run = behalf_in(tmp.path(), &["policy", "diff", "no-such-dir", "new"]);
    run.expect_code(CONFIG)
        .stderr_has("no-such-dir")
        .stderr_has("policies directory not found")
        .stderr_has(&format!("new/services/github.toml:{at}: error: "));
}

#[test]
fn diff_json_parses_and_agrees_with_the_text() {
    let (tmp, _, new) = old_and_new();
    trade_a_route(&new);
    let run = behalf_in(tmp.path(), &["policy", "diff", "--json", "old", "new"]);
    run.expect_code(NEGATIVE);
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{run}"));
    assert_eq!(json["differences"], true, "{run}");
    assert_eq!(
        json["summary"],
        serde_json::json!({"gains": 1, "losses": 1, "security": 0, "other": 0}),
        "{run}"
    );
    let tenant = &json["tenants"][0];
    assert_eq!(tenant["tenant"], "acme", "{run}");
    let grant = &tenant["grants"][0];
    assert_eq!(grant["id"], "eng-github", "{run}");
    assert_eq!(grant["status"], "changed", "{run}");
    let changes: Vec<(String, String, String)> = grant["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("changes is a list\n{run}"))
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or_default().to_owned(),
                c["class"].as_str().unwrap_or_default().to_owned(),
                c["route"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let own = |kind: &str, class: &str, route: &str| {
        (kind.to_owned(), class.to_owned(), route.to_owned())
    };
    assert_eq!(
        changes,
        [
            own("route", "gain", "POST /repos/acme/*/pulls"),
            own("route", "loss", "POST /repos/acme/*/issues"),
        ],
        "{run}"
    );
    assert_eq!(json["services"], serde_json::json!([]), "{run}");

    let run = behalf_in(tmp.path(), &["policy", "diff", "--json", "old", "old"]);
    run.expect_code(OK);
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{run}"));
    assert_eq!(json["differences"], false, "{run}");
}

#[test]
fn diff_is_listed_in_help_and_needs_two_dirs() {
    let run = behalf(&["policy", "--help"]);
    run.expect_code(OK).stdout_has("diff");
    let run = behalf(&["policy", "diff", "--help"]);
    run.expect_code(OK)
        .stdout_has("OLD")
        .stdout_has("NEW")
        .stdout_has("--json");
    let run = behalf(&["policy", "diff", "policies"]);
    run.expect_code(USAGE);
    assert!(run.stdout.is_empty(), "{run}");
}
