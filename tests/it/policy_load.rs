//! Load-time errors of the policy layer (DESIGN.md, "Policy files" → "Load-time errors"):
//! every class of problem is reported with the exact `file:line:column` of the offending key
//! or value and a message saying what was expected; one load reports every problem.
//!
//! Expected lines and columns are counted by hand from the TOML literals below (1-based,
//! columns in characters, pointing at the first character of the key or of the value, which
//! for a string is its opening quote).

use std::path::{Path, PathBuf};

use behalf::policy::{
    Client, Decision, Deny, Diagnostic, LoadError, PolicySet, Severity, SourceFile, Sources, Target,
};
use behalf::principal::{GroupId, Principal, TenantId, UserId};
use http::Method;
use tempfile::TempDir;

const SETTINGS: &str = "policies/behalf.toml";
const GITHUB: &str = "policies/services/github.toml";
const ACME: &str = "policies/tenants/acme.toml";

/// A valid service, so that tenant files have something to grant.
const GITHUB_SERVICE: &str = r#"[service]
name = "github"
origins = ["https://api.github.com"]
credential = { name = "github_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#;

/// A policy set under construction, always with a fresh, empty base directory (so that no
/// `tools/` dir exists unless a test creates one).
struct Policy {
    base: TempDir,
    settings: Option<SourceFile>,
    services: Vec<SourceFile>,
    tenants: Vec<SourceFile>,
}

impl Policy {
    fn new() -> Self {
        Self {
            base: TempDir::new().expect("temp dir"),
            settings: None,
            services: Vec::new(),
            tenants: Vec::new(),
        }
    }

    fn settings(mut self, text: &str) -> Self {
        self.settings = Some(SourceFile::new(SETTINGS, text));
        self
    }

    fn service(mut self, path: &str, text: &str) -> Self {
        self.services.push(SourceFile::new(path, text));
        self
    }

    fn tenant(mut self, path: &str, text: &str) -> Self {
        self.tenants.push(SourceFile::new(path, text));
        self
    }

    /// Creates `base/tools/<name>/tool.toml`.
    fn tool(self, name: &str) -> Self {
        let dir = self.base.path().join("tools").join(name);
        std::fs::create_dir_all(&dir).expect("create tool dir");
        std::fs::write(
            dir.join("tool.toml"),
            format!(
                "name = \"{name}\"\ndescription = \"test tool\"\ncomponent = \"{name}.wasm\"\n"
            ),
        )
        .expect("write tool.toml");
        self
    }

    fn sources(&self) -> Sources {
        Sources {
            settings: self.settings.clone(),
            services: self.services.clone(),
            tenants: self.tenants.clone(),
            tests: vec![],
            base: self.base.path().to_path_buf(),
        }
    }

    fn load(&self) -> Result<PolicySet, LoadError> {
        PolicySet::from_sources(&self.sources())
    }

    fn load_ok(&self) -> PolicySet {
        match self.load() {
            Ok(p) => p,
            Err(e) => panic!("expected the policy to load, got:\n{e}"),
        }
    }

    fn load_err(&self) -> Vec<Diagnostic> {
        match self.load() {
            Ok(p) => panic!(
                "expected the policy to be rejected; it loaded with warnings {:?}",
                p.warnings()
            ),
            Err(e) => e.diagnostics,
        }
    }
}

/// One expected diagnostic: file, line, column and a phrase its message must contain.
type Expect<'a> = (&'a str, usize, usize, &'a str);

fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}\n")).collect()
}

/// Asserts that `diags` are exactly `expected`, in order, all with `severity`.
fn assert_diags(diags: &[Diagnostic], severity: Severity, expected: &[Expect<'_>]) {
    let all = render(diags);
    assert_eq!(
        diags.len(),
        expected.len(),
        "expected {} diagnostic(s), got:\n{all}",
        expected.len()
    );
    for (d, &(file, line, column, phrase)) in diags.iter().zip(expected) {
        assert_eq!(d.severity, severity, "severity of `{d}`; all:\n{all}");
        assert_eq!(
            (d.at.file.as_path(), d.at.line, d.at.column),
            (Path::new(file), line, column),
            "location of `{d}`; all:\n{all}"
        );
        assert!(
            d.message.contains(phrase),
            "message of `{d}` should contain {phrase:?}; all:\n{all}"
        );
    }
}

fn assert_errors(policy: &Policy, expected: &[Expect<'_>]) {
    assert_diags(&policy.load_err(), Severity::Error, expected);
}

fn principal(tenant: &str, user: &str, groups: &[&str]) -> Principal {
    Principal::new(
        TenantId::parse(tenant).unwrap(),
        UserId::parse(user).unwrap(),
        groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
    )
}

// === a valid policy ===

#[test]
fn valid_minimal_policy_loads_and_allows_a_matching_request() {
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).tenant(
        ACME,
        r#"[tenant]
name = "acme"

[[grant]]
id = "eng-github"
who = ["group:engineering", "user:alice"]
clients = ["proxy"]
service = "github"
allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues"]
"#,
    );
    let set = policy.load_ok();
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());

    let bob = principal("acme", "bob", &["engineering"]);
    let target = Target::parse("https://api.github.com/repos/acme/web/issues").unwrap();
    match set.decide(&bob, &Client::Proxy, &Method::GET, &target) {
        Decision::Allow(allow) => {
            assert_eq!(allow.grant.id, "eng-github");
            assert_eq!(allow.service.name.as_str(), "github");
            assert_eq!(allow.credential().unwrap().to_string(), "user:github_token");
        }
        Decision::Deny(d) => panic!("expected allow, got deny: {d}"),
    }

    // The same request with a method no route allows, and from someone not named, is denied.
    let post = Target::parse("https://api.github.com/repos/acme/web").unwrap();
    match set.decide(&bob, &Client::Proxy, &Method::POST, &post) {
        Decision::Deny(d) => assert_eq!(d.kind(), "route_not_granted", "{d}"),
        Decision::Allow(_) => panic!("POST /repos/acme/web must be denied"),
    }
    let eve = principal("acme", "eve", &["sales"]);
    match set.decide(&eve, &Client::Proxy, &Method::GET, &target) {
        Decision::Deny(d) => assert!(matches!(d, Deny::NotGrantee { .. }), "{d}"),
        Decision::Allow(_) => panic!("eve is not a grantee"),
    }
}

// === 1. unknown fields ===

#[test]
fn unknown_field_in_service_table() {
    let policy = Policy::new().service(
        GITHUB,
        r#"[service]
name = "github"
origins = ["https://api.github.com"]
scrub_response = false
"#,
    );
    assert_errors(&policy, &[(GITHUB, 4, 1, "unknown field `scrub_response`")]);
}

#[test]
fn unknown_field_in_grant() {
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).tenant(
        ACME,
        r#"[tenant]
name = "acme"

[[grant]]
id = "g1"
who = ["*"]
clients = ["proxy"]
service = "github"
allow = ["GET /**"]
method = "GET"
"#,
    );
    assert_errors(&policy, &[(ACME, 10, 1, "unknown field `method`")]);
}

#[test]
fn unknown_top_level_key_in_settings() {
    let policy = Policy::new().settings(
        r#"dev = false
tool_dir = "tools"
"#,
    );
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(SETTINGS, 2, 1, "unknown key `tool_dir`")],
    );
    // ...and it says what was expected.
    assert!(diags[0].message.contains("tools_dir"), "{}", diags[0]);
}

#[test]
fn unknown_field_in_limits() {
    let policy = Policy::new().settings(
        r#"[limits]
tool_timeout = "10s"
max_body = "1MiB"
"#,
    );
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(SETTINGS, 3, 1, "unknown field `max_body`")],
    );
    assert!(
        diags[0].message.contains("max_request_body"),
        "{}",
        diags[0]
    );
}

// === 2. duplicate service names ===

const GITHUB2: &str = "policies/services/github2.toml";

const GITHUB2_SERVICE: &str = r#"[service]
name = "github"
origins = ["https://uploads.github.com"]
"#;

/// The error is reported, once, in the second file and names the first definition. Its
/// position is checked by `duplicate_service_name_points_at_the_name`.
#[test]
fn duplicate_service_names_across_files() {
    let policy = Policy::new()
        .service(GITHUB, GITHUB_SERVICE)
        .service(GITHUB2, GITHUB2_SERVICE);
    let diags = policy.load_err();
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = &diags[0];
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.at.file, Path::new(GITHUB2), "{d}");
    assert!(d.message.contains("duplicate service name `github`"), "{d}");
    assert!(
        d.message.contains(GITHUB),
        "names the first definition: {d}"
    );
}

#[test]
fn duplicate_service_name_points_at_the_name() {
    let policy = Policy::new()
        .service(GITHUB, GITHUB_SERVICE)
        .service(GITHUB2, GITHUB2_SERVICE);
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(GITHUB2, 2, 8, "duplicate service name `github`")],
    );
    assert!(
        diags[0].message.contains(&format!("{GITHUB}:2:8")),
        "the first definition is also named by its `name`: {}",
        diags[0]
    );
}

// === 3. duplicate grant ids ===

#[test]
fn duplicate_grant_ids_within_a_tenant() {
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).tenant(
        ACME,
        r#"[tenant]
name = "acme"

[[grant]]
id = "eng"
who = ["*"]
clients = ["proxy"]
service = "github"
allow = ["GET /**"]

[[grant]]
id = "eng"
who = ["*"]
clients = ["proxy"]
service = "github"
allow = ["POST /**"]
"#,
    );
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(ACME, 12, 6, "duplicate grant id `eng`")],
    );
    assert!(
        diags[0].message.contains(&format!("{ACME}:4:")),
        "names the first grant: {}",
        diags[0]
    );
}

// === 4. two services claiming one origin ===

#[test]
fn two_services_claiming_the_same_origin() {
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).service(
        "policies/services/mirror.toml",
        r#"[service]
name = "mirror"
origins = ["https://status.github.com", "https://api.github.com"]
"#,
    );
    assert_errors(
        &policy,
        &[(
            "policies/services/mirror.toml",
            3,
            41,
            "`https://api.github.com` is already claimed by service `github`",
        )],
    );
}

#[test]
fn explicit_default_port_is_the_same_origin() {
    let policy = Policy::new()
        .service(
            "policies/services/a.toml",
            r#"[service]
name = "a"
origins = ["https://x.com"]
"#,
        )
        .service(
            "policies/services/b.toml",
            r#"[service]
name = "b"
origins = ["https://x.com:443"]
"#,
        );
    assert_errors(
        &policy,
        &[(
            "policies/services/b.toml",
            3,
            12,
            "already claimed by service `a`",
        )],
    );

    // A different port is a different origin.
    let policy = Policy::new()
        .service(
            "policies/services/a.toml",
            r#"[service]
name = "a"
origins = ["https://x.com"]
"#,
        )
        .service(
            "policies/services/b.toml",
            r#"[service]
name = "b"
origins = ["https://x.com:8443"]
"#,
        );
    policy.load_ok();

    // Hosts are compared after lowercasing and trailing-dot removal.
    let policy = Policy::new()
        .service(
            "policies/services/a.toml",
            r#"[service]
name = "a"
origins = ["https://x.com"]
"#,
        )
        .service(
            "policies/services/b.toml",
            r#"[service]
name = "b"
origins = ["https://X.COM."]
"#,
        );
    assert_errors(
        &policy,
        &[(
            "policies/services/b.toml",
            3,
            12,
            "already claimed by service `a`",
        )],
    );
}

// === 5. a grant naming an unknown service ===

#[test]
fn grant_naming_an_unknown_service() {
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).tenant(
        ACME,
        r#"[tenant]
name = "acme"

[[grant]]
id = "g1"
who = ["*"]
clients = ["proxy"]
service = "gitlab"
allow = ["GET /**"]
"#,
    );
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(ACME, 8, 11, "grant `g1` names unknown service `gitlab`")],
    );
    assert!(
        diags[0].message.contains("known services: github"),
        "{}",
        diags[0]
    );
}

// === 6. tenant boundaries ===

#[test]
fn tenant_file_granting_to_another_tenant() {
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).tenant(
        ACME,
        r#"[tenant]
name = "acme"

[[grant]]
id = "g1"
who = ["user:globex/bob"]
clients = ["proxy"]
service = "github"
allow = ["GET /**"]
"#,
    );
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(ACME, 6, 8, "names tenant `globex`")],
    );
    assert!(
        diags[0].message.contains("only grant to its own members"),
        "{}",
        diags[0]
    );

    // Naming one's own tenant explicitly is fine.
    let policy = Policy::new().service(GITHUB, GITHUB_SERVICE).tenant(
        ACME,
        r#"[tenant]
name = "acme"

[[grant]]
id = "g1"
who = ["user:acme/bob"]
clients = ["proxy"]
service = "github"
allow = ["GET /**"]
"#,
    );
    policy.load_ok();
}

#[test]
fn tenant_name_must_match_file_name() {
    let policy = Policy::new().tenant(
        ACME,
        r#"[tenant]
name = "globex"
"#,
    );
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(ACME, 2, 8, "declares tenant `globex` but is named")],
    );
    assert!(
        diags[0].message.contains("tenants/globex.toml"),
        "{}",
        diags[0]
    );
}

// === 7. malformed origins ===

#[test]
fn origins_with_path_userinfo_or_bad_port() {
    let file = "policies/services/bad.toml";
    let policy = Policy::new().service(
        file,
        r#"[service]
name = "bad"
origins = [
  "https://x.com/api",
  "https://user:pw@y.com",
  "https://z.com:0",
  "https://z.com:70000",
  "https://z.com:abc",
]
"#,
    );
    assert_errors(
        &policy,
        &[
            (file, 4, 3, "must not have a path"),
            (file, 5, 3, "must not contain userinfo"),
            (file, 6, 3, "port `0` is not a number from 1 to 65535"),
            (file, 7, 3, "port `70000` is not a number from 1 to 65535"),
            (file, 8, 3, "port `abc` is not a number from 1 to 65535"),
        ],
    );
}

// === 8. credentials on plaintext and wildcard origins ===

const INTRANET: &str = "policies/services/intranet.toml";

fn credentialed_service(origin: &str, extra: &str) -> String {
    format!(
        r#"[service]
name = "intranet"
origins = ["{origin}"]
credential = {{ name = "token", scope = "tenant" }}
inject = {{ header = "Authorization", template = "Bearer {{credential}}" }}
{extra}"#
    )
}

#[test]
fn plaintext_origin_with_credential_needs_allow_plaintext() {
    let text = credentialed_service("http://intranet.example", "");
    let policy = Policy::new().service(INTRANET, &text);
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(INTRANET, 3, 12, "is plain http")],
    );
    assert!(
        diags[0].message.contains("allow_plaintext = true"),
        "{}",
        diags[0]
    );

    let text = credentialed_service("http://intranet.example", "allow_plaintext = true\n");
    let set = Policy::new().service(INTRANET, &text).load_ok();
    assert!(set.services()[0].allow_plaintext);

    // Without a credential, plain http needs nothing.
    let policy = Policy::new().service(
        INTRANET,
        r#"[service]
name = "intranet"
origins = ["http://intranet.example"]
"#,
    );
    policy.load_ok();
}

#[test]
fn wildcard_origin_with_credential_needs_allow_wildcard_origins() {
    let text = credentialed_service("https://*.example.com", "");
    let policy = Policy::new().service(INTRANET, &text);
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[(INTRANET, 3, 12, "is a wildcard")],
    );
    assert!(
        diags[0].message.contains("allow_wildcard_origins = true"),
        "{}",
        diags[0]
    );

    let text = credentialed_service("https://*.example.com", "allow_wildcard_origins = true\n");
    let set = Policy::new().service(INTRANET, &text).load_ok();
    assert!(set.services()[0].allow_wildcard_origins);
}

// === 9. templates and header names ===

fn service_with_inject(inject: &str) -> String {
    format!(
        r#"[service]
name = "github"
origins = ["https://api.github.com"]
credential = {{ name = "github_token", scope = "user" }}
{inject}
"#
    )
}

#[test]
fn invalid_templates() {
    // `inject = { header = "Authorization", template = "` puts the template at column 49.
    for (template, phrase) in [
        ("Bearer token", "must contain `{credential}` exactly once"),
        (
            "{credential} {credential}",
            "must contain `{credential}` exactly once and no other",
        ),
        ("Bearer {credential}}", "no other `{` or `}`"),
        ("Bearer {{credential}", "no other `{` or `}`"),
        ("Bearer {token}", "must contain `{credential}` exactly once"),
    ] {
        let inject = format!(r#"inject = {{ header = "Authorization", template = "{template}" }}"#);
        let policy = Policy::new().service(GITHUB, &service_with_inject(&inject));
        let diags = policy.load_err();
        assert_diags(&diags, Severity::Error, &[(GITHUB, 5, 49, phrase)]);
        assert!(
            diags[0].message.contains(template),
            "quotes the template: {}",
            diags[0]
        );
    }
}

#[test]
fn invalid_placeholder_template() {
    let policy = Policy::new().service(
        GITHUB,
        &service_with_inject(
            r#"inject = { placeholder = { header = "Authorization", template = "Bearer {credential}" } }"#,
        ),
    );
    assert_errors(
        &policy,
        &[(GITHUB, 5, 65, "must contain `{placeholder}` exactly once")],
    );
}

#[test]
fn invalid_header_name() {
    let policy = Policy::new().service(
        GITHUB,
        &service_with_inject(
            r#"inject = { header = "Bad Header", template = "Bearer {credential}" }"#,
        ),
    );
    assert_errors(
        &policy,
        &[(
            GITHUB,
            5,
            21,
            "`Bad Header` is not a valid HTTP header name",
        )],
    );
}

// === 10. tool access naming unknown tools ===

const TOOLS_TENANT: &str = r#"[tenant]
name = "acme"

[[tool_access]]
who = ["*"]
tools = ["echo", "missing"]

[[grant]]
id = "g1"
who = ["*"]
clients = ["tool:echo", "tool:ghost"]
service = "github"
allow = ["GET /**"]
"#;

#[test]
fn unknown_tool_is_an_error_when_the_tools_dir_exists() {
    let policy = Policy::new()
        .tool("echo")
        .service(GITHUB, GITHUB_SERVICE)
        .tenant(ACME, TOOLS_TENANT);
    let diags = policy.load_err();
    assert_diags(
        &diags,
        Severity::Error,
        &[
            (ACME, 6, 18, "unknown tool `missing`"),
            (ACME, 11, 25, "unknown tool `ghost`"),
        ],
    );
}

#[test]
fn unknown_tool_is_a_warning_when_the_tools_dir_is_absent() {
    let policy = Policy::new()
        .service(GITHUB, GITHUB_SERVICE)
        .tenant(ACME, TOOLS_TENANT);
    assert!(!policy.base.path().join("tools").exists());
    let set = policy.load_ok();
    // One warning for the whole set, naming the tools dir itself (not a tenant file).
    let expected_dir: PathBuf = policy.base.path().join("tools");
    assert_eq!(set.warnings().len(), 1, "{:?}", set.warnings());
    let w = &set.warnings()[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.at.file, expected_dir, "{w}");
    assert!(w.message.contains("not found"), "{w}");
    assert!(
        w.to_string()
            .starts_with(&format!("{}: warning:", expected_dir.display())),
        "{w}"
    );
}

// === 11. TOML syntax errors ===

#[test]
fn toml_syntax_error_reports_its_line() {
    let policy = Policy::new().service(
        GITHUB,
        r#"[service]
name = "github"
origins = ["https://api.github.com"]
scrub_responses = yes
"#,
    );
    let diags = policy.load_err();
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = &diags[0];
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        (d.at.file.as_path(), d.at.line, d.at.column),
        (Path::new(GITHUB), 4, 19),
        "{d}"
    );
    assert!(d.message.contains("must be quoted"), "{d}");
}

#[test]
fn toml_syntax_errors_in_several_files_are_all_reported() {
    let policy = Policy::new()
        .service(
            GITHUB,
            r#"[service]
name = "github
origins = ["https://api.github.com"]
"#,
        )
        .tenant(
            ACME,
            r#"[tenant]
name = "acme"
[[grant]
"#,
        );
    let diags = policy.load_err();
    let lines: Vec<(&Path, usize)> = diags
        .iter()
        .map(|d| (d.at.file.as_path(), d.at.line))
        .collect();
    assert!(
        lines.contains(&(Path::new(GITHUB), 2)),
        "{}",
        render(&diags)
    );
    assert!(lines.contains(&(Path::new(ACME), 3)), "{}", render(&diags));
}

// === 12. every error in one run ===

#[test]
fn all_errors_in_one_run_sorted_by_file_then_line() {
    let policy = Policy::new()
        .settings(
            r#"dev = false
state_dir = "state"
tool_dir = "tools"

[limits]
max_body = "1MiB"
"#,
        )
        // Deliberately out of order: diagnostics are sorted, not reported in input order.
        .service(
            "policies/services/gitlab.toml",
            r#"[service]
name = "gitlab"
origins = ["https://gitlab.com"]
scrub = true
"#,
        )
        .service(
            GITHUB,
            r#"[service]
name = "github"
origins = ["https://api.github.com:0"]
"#,
        )
        .tenant(
            ACME,
            r#"[tenant]
name = "acme"

[[grant]]
id = "g1"
who = ["*"]
clients = ["proxy"]
service = "jira"
allow = ["GET /**"]

[[grant]]
id = "g2"
who = ["*"]
clients = ["proxy"]
service = "jira"
allow = ["GET /**"]
expires = "never"
"#,
        );
    let err = policy.load().unwrap_err();
    assert_diags(
        &err.diagnostics,
        Severity::Error,
        &[
            (SETTINGS, 3, 1, "unknown key `tool_dir`"),
            (SETTINGS, 6, 1, "unknown field `max_body`"),
            (GITHUB, 3, 12, "port `0`"),
            (
                "policies/services/gitlab.toml",
                4,
                1,
                "unknown field `scrub`",
            ),
            (ACME, 8, 11, "unknown service `jira`"),
            (ACME, 17, 1, "unknown field `expires`"),
        ],
    );
    assert!(
        err.to_string().ends_with("policy is invalid: 6 errors"),
        "{err}"
    );
}

// === problems found while writing these tests, now fixed ===

#[test]
fn missing_service_table_is_reported_even_after_other_errors() {
    let policy = Policy::new()
        .settings("bogus = 1\n")
        .service(GITHUB, "# the [service] table is missing\n");
    assert_errors(
        &policy,
        &[
            (SETTINGS, 1, 1, "unknown key `bogus`"),
            (GITHUB, 1, 1, "expected a `[service]` table"),
        ],
    );
}

#[test]
fn unknown_field_in_tenant_table_is_reported_once() {
    let policy = Policy::new().tenant(
        ACME,
        r#"[tenant]
name = "acme"
label = "Acme Corp"
"#,
    );
    assert_errors(&policy, &[(ACME, 3, 1, "unknown field `label`")]);
}
