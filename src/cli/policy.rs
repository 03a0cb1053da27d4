//! `behalf policy check|explain|test|diff`: the policy author's and reviewer's tools.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::exit;
use crate::policy;
use crate::policy::testing::{self, Outcome};
use crate::policy::{
    Client, Decision, Diagnostics, GrantCheck, Inject, PolicySet, Service, Sources, target,
};
use crate::principal::Principal;

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load and validate a policy set and print a summary; exit 64 listing every error.
    Check {
        /// The policies directory (defaults to --policies).
        dir: Option<PathBuf>,
    },
    /// Show the decision for one request and why: the grant that matched, or why each
    /// candidate did not. Exit 0 on allow, 1 on deny, 2 on bad input.
    Explain(ExplainArgs),
    /// Run the policy test cases in DIR/tests/*.toml; exit 1 if any fails.
    Test {
        /// The policies directory (defaults to --policies).
        dir: Option<PathBuf>,
    },
    /// Compare two policy sets for review: which principals gain or lose which access, and
    /// which service and trust settings changed (`!` marks the security-relevant ones).
    /// Exit 0 when they give the same access and settings, 1 when they differ, 64 if either
    /// does not load.
    Diff(DiffArgs),
}

/// Arguments of `behalf policy diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The policies directory before the change.
    old: PathBuf,
    /// The policies directory after the change.
    new: PathBuf,
    /// Print the differences as JSON (one object: summary, tenants, services, settings).
    #[arg(long)]
    json: bool,
}

/// Arguments of `behalf policy explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The caller's tenant.
    #[arg(long)]
    tenant: String,
    /// The caller's user id.
    #[arg(long)]
    user: String,
    /// A group the caller belongs to (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// Who sends the request: `proxy` or `tool:NAME`.
    #[arg(long)]
    client: String,
    /// The HTTP method, e.g. GET.
    method: String,
    /// The absolute URL, e.g. https://api.github.com/repos/acme/web/issues.
    url: String,
}

/// Runs a policy subcommand.
pub fn run(cmd: PolicyCommand, policies: &Path) -> u8 {
    match cmd {
        PolicyCommand::Check { dir } => check(dir.as_deref().unwrap_or(policies)),
        PolicyCommand::Explain(args) => explain(&args, policies),
        PolicyCommand::Test { dir } => test(dir.as_deref().unwrap_or(policies)),
        PolicyCommand::Diff(args) => diff(&args),
    }
}

fn diff(args: &DiffArgs) -> u8 {
    // Load both before giving up, so that one run reports every error in either.
    let (old, new) = match (PolicySet::load(&args.old), PolicySet::load(&args.new)) {
        (Ok(old), Ok(new)) => (old, new),
        (old, new) => {
            for e in [old.err(), new.err()].into_iter().flatten() {
                eprintln!("{e}");
            }
            return exit::CONFIG;
        }
    };
    // Two copies side by side share a tools dir: say each warning once.
    let mut warned = BTreeSet::new();
    for w in old.warnings().iter().chain(new.warnings()) {
        if warned.insert(w.to_string()) {
            eprintln!("{w}");
        }
    }
    let diff = policy::diff::diff(&old, &new);
    let text = if args.json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            old: String,
            new: String,
            differences: bool,
            summary: policy::diff::Summary,
            #[serde(flatten)]
            diff: &'a policy::diff::Diff,
        }
        let report = Report {
            old: args.old.display().to_string(),
            new: args.new.display().to_string(),
            differences: !diff.is_empty(),
            summary: diff.summary(),
            diff: &diff,
        };
        match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("error: cannot write the report as JSON: {e}");
                return exit::INTERNAL;
            }
        }
    } else {
        diff.to_string()
    };
    // A reader that stops early (`| head`) is not a failure; the exit code still answers.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the report: {e}");
        return exit::INTERNAL;
    }
    if diff.is_empty() {
        exit::OK
    } else {
        exit::NEGATIVE
    }
}

fn check(dir: &Path) -> u8 {
    let policy = match super::load_policy(dir) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let cases = match load_cases(dir) {
        Ok(cases) => cases,
        Err(code) => return code,
    };
    let settings = policy.settings();
    println!(
        "{}: policy is valid{}",
        dir.display(),
        if settings.dev {
            " (dev = true: development mode is on)"
        } else {
            ""
        }
    );
    println!("\nservices ({}):", policy.services().len());
    for s in policy.services() {
        println!("  {:<12} {}", s.name, describe_service(s));
    }
    let tenants = policy.tenants();
    let grants: usize = tenants.iter().map(|t| t.grants.len()).sum();
    println!("\ntenants ({}), grants ({grants}):", tenants.len());
    let mut tools = BTreeSet::new();
    for t in &tenants {
        println!(
            "  {:<12} {} grant{}, {} tool access rule{}",
            t.name,
            t.grants.len(),
            plural(t.grants.len()),
            t.tool_access.len(),
            plural(t.tool_access.len())
        );
        for g in &t.grants {
            let routes: Vec<String> = g.allow.iter().map(ToString::to_string).collect();
            println!(
                "    grant {:<22} {} → {}",
                g.id,
                g.service,
                routes.join(", ")
            );
        }
        tools.extend(t.tool_refs.iter().map(|(name, _)| name.as_str().to_owned()));
    }
    let tools: Vec<String> = tools.into_iter().collect();
    println!(
        "\ntools referenced ({}): {}",
        tools.len(),
        if tools.is_empty() {
            "(none)".to_owned()
        } else {
            tools.join(", ")
        }
    );
    println!("issuers configured: {}", settings.issuers.len());
    println!(
        "policy test cases: {} (run them with `behalf policy test`)",
        cases.len()
    );
    exit::OK
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn describe_service(s: &Service) -> String {
    let origins: Vec<String> = s.origins.iter().map(ToString::to_string).collect();
    let how = match (&s.credential, &s.inject) {
        (Some(c), Some(i)) => format!("injects {c} by {}", describe_inject(i)),
        _ => "no credential".to_owned(),
    };
    format!("{}  ({how})", origins.join(" "))
}

fn describe_inject(i: &Inject) -> String {
    match i {
        Inject::Header { name, .. } => format!("header {name}"),
        Inject::Basic { .. } => "HTTP Basic".to_owned(),
        Inject::Query { param } => format!("query parameter {param}"),
        Inject::Placeholder { name, .. } => format!("placeholder in header {name}"),
        Inject::AwsSigv4 {
            region, service, ..
        } => format!("AWS SigV4 ({service}, {region})"),
        Inject::OAuth2(o) => format!(
            "OAuth2 access token ({} grant at {})",
            o.grant.as_str(),
            o.token_url
        ),
        Inject::Hmac(h) => format!("HMAC signature in header {}", h.header),
    }
}

fn explain(args: &ExplainArgs, policies: &Path) -> u8 {
    let principal =
        Principal::parse(&args.tenant, &args.user, &args.groups).map_err(|e| e.to_string());
    let parsed = principal.and_then(|p| {
        let client = Client::parse(&args.client)?;
        let method = target::parse_method(&args.method).map_err(|e| e.to_string())?;
        let target = target::Target::parse(&args.url).map_err(|e| e.to_string())?;
        Ok((p, client, method, target))
    });
    let (principal, client, method, target) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let policy = match super::load_policy(policies) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let explanation = policy.explain(&principal, &client, &method, &target);
    println!("request:   {method} {target}");
    println!(
        "as:        tenant {} user {} groups [{}] via {client}",
        principal.tenant,
        principal.user,
        principal
            .groups
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    match explanation.service {
        Some(s) => println!("service:   {} ({})", s.name, s.defined_at),
        None => println!("service:   none claims {}", target.origin),
    }
    if !explanation.candidates.is_empty() {
        println!("grants considered:");
    }
    for (grant, check) in &explanation.candidates {
        let why = match check {
            GrantCheck::Matched => "matched".to_owned(),
            GrantCheck::NotGrantee => format!(
                "who = [{}] names neither this user nor their groups",
                join(&grant.who)
            ),
            GrantCheck::ClientNotListed => {
                format!(
                    "clients = [{}] does not admit {client}",
                    join(&grant.clients)
                )
            }
            GrantCheck::NoRoute => format!(
                "allow = [{}] has no route for {method} {}",
                join(&grant.allow),
                target.path
            ),
        };
        let mark = if *check == GrantCheck::Matched {
            "✓"
        } else {
            "✗"
        };
        println!("  {mark} {} ({}): {why}", grant.id, grant.at);
    }
    match &explanation.decision {
        Decision::Allow(a) => {
            println!("decision:  ALLOW by grant {} ({})", a.grant.id, a.grant.at);
            match (a.credential(), &a.service.inject) {
                (Some(c), Some(i)) => {
                    println!("credential: {c} (injected by {})", describe_inject(i));
                }
                _ => println!("credential: none (the service injects nothing)"),
            }
            exit::OK
        }
        Decision::Deny(d) => {
            println!("decision:  DENY ({}): {d}", d.kind());
            exit::NEGATIVE
        }
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `DIR/tests/*.toml`, printing every problem on failure.
fn load_cases(dir: &Path) -> Result<Vec<testing::Case>, u8> {
    let mut diags = Diagnostics::default();
    let sources = Sources::read(dir, &mut diags);
    let cases = testing::parse_cases(&sources.tests, &mut diags);
    if diags.has_errors() {
        let diagnostics = diags.into_sorted();
        eprintln!("{}", crate::policy::LoadError { diagnostics });
        return Err(exit::CONFIG);
    }
    Ok(cases)
}

fn test(dir: &Path) -> u8 {
    let policy = match super::load_policy(dir) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let cases = match load_cases(dir) {
        Ok(cases) => cases,
        Err(code) => return code,
    };
    if cases.is_empty() {
        // A test run that tests nothing must not look like a pass.
        eprintln!(
            "error: no policy test cases found in {}; add [[case]] entries to tests/*.toml",
            dir.join("tests").display()
        );
        println!("0 passed, 0 failed");
        return exit::NEGATIVE;
    }
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        let Outcome {
            passed: ok,
            actual,
            expected,
        } = case.run(&policy);
        if ok {
            passed += 1;
            println!("ok    {}", case.name);
        } else {
            failed += 1;
            println!("FAIL  {} ({})", case.name, case.at);
            println!("        expected: {expected}");
            println!("        actual:   {actual}");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        exit::OK
    } else {
        exit::NEGATIVE
    }
}
