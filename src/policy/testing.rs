//! Policy test cases (`tests/*.toml`), run by `behalf policy test`: each case states a principal,
//! a client and a request, and the decision (and optionally the credential) it expects.

use serde::Deserialize;
use toml::Spanned;

use super::PolicySet;
use super::decide::Decision;
use super::load::Document;
use super::service::CredentialRef;
use super::source::{Diagnostics, Location, SourceFile};
use super::target::{Target, parse_request_line};
use super::tenant::Client;
use crate::principal::Principal;

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The request is allowed.
    Allow,
    /// The request is denied.
    Deny,
}

/// One parsed test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// Where `[[case]]` is written.
    pub at: Location,
    /// The caller.
    pub principal: Principal,
    /// The client.
    pub client: Client,
    /// The method.
    pub method: http::Method,
    /// The normalised target.
    pub target: Target,
    /// Allow or deny.
    pub expect: Expect,
    /// For allow: the credential that must be injected (`user:NAME`, `tenant:NAME`, or `none`).
    pub credential: Option<Option<CredentialRef>>,
    /// For deny: the kind of missing rule (`Deny::kind`), if stated.
    pub reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(rename = "as")]
    who: Spanned<RawAs>,
    client: Spanned<String>,
    request: Spanned<String>,
    expect: Expect,
    credential: Option<Spanned<String>>,
    reason: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAs {
    tenant: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
}

const REASONS: &[&str] = &[
    "no_service",
    "no_tenant_policy",
    "no_grant_for_service",
    "not_grantee",
    "client_not_granted",
    "route_not_granted",
];

/// Parses every case in the test files, recording problems in `diags`.
pub fn parse_cases(files: &[SourceFile], diags: &mut Diagnostics) -> Vec<Case> {
    let mut cases = Vec::new();
    for file in files {
        let Some(doc) = Document::parse(file, &["case"], diags) else {
            continue;
        };
        for (at, raw) in doc.items::<RawCase>("case", diags) {
            if let Some(case) = Case::validate(raw, at, file, diags) {
                cases.push(case);
            }
        }
    }
    cases
}

impl Case {
    fn validate(
        raw: RawCase,
        at: Location,
        file: &SourceFile,
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let who = raw.who.get_ref();
        let principal = Principal::parse(&who.tenant, &who.user, &who.groups)
            .map_err(|e| diags.error(file.at(raw.who.span()), e.to_string()))
            .ok();
        let client = Client::parse(raw.client.get_ref())
            .map_err(|e| diags.error(file.at(raw.client.span()), e))
            .ok();
        let request = parse_request_line(raw.request.get_ref())
            .map_err(|e| {
                diags.error(
                    file.at(raw.request.span()),
                    format!("{e}; write `METHOD https://host/path`"),
                )
            })
            .ok();
        let credential = match &raw.credential {
            None => None,
            Some(c) if c.get_ref() == "none" => Some(None),
            Some(c) => match CredentialRef::parse(c.get_ref()) {
                Ok(r) => Some(Some(r)),
                Err(e) => {
                    diags.error(file.at(c.span()), format!("{e}, or `none`"));
                    return None;
                }
            },
        };
        if let Some(r) = &raw.reason
            && !REASONS.contains(&r.get_ref().as_str())
        {
            diags.error(
                file.at(r.span()),
                format!(
                    "unknown reason `{}`, expected one of: {}",
                    r.get_ref(),
                    REASONS.join(", ")
                ),
            );
            return None;
        }
        if raw.expect == Expect::Deny
            && let Some(c) = &raw.credential
        {
            diags.error(
                file.at(c.span()),
                "`credential` only applies to expect = \"allow\" (a denied request injects nothing)",
            );
            return None;
        }
        if raw.expect == Expect::Allow
            && let Some(r) = &raw.reason
        {
            diags.error(
                file.at(r.span()),
                "`reason` only applies to expect = \"deny\"",
            );
            return None;
        }
        let (method, target) = request?;
        Some(Self {
            name: raw.name,
            at,
            principal: principal?,
            client: client?,
            method,
            target,
            expect: raw.expect,
            credential,
            reason: raw.reason.map(Spanned::into_inner),
        })
    }
}

/// The result of running one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the case passed.
    pub passed: bool,
    /// What happened, e.g. `allow by grant eng-github (policies/tenants/acme.toml:12:1),
    /// credential user:github_token`.
    pub actual: String,
    /// What was expected.
    pub expected: String,
}

impl Case {
    /// Runs the case against a policy set.
    pub fn run(&self, policy: &PolicySet) -> Outcome {
        let decision = policy.decide(&self.principal, &self.client, &self.method, &self.target);
        let mut expected = match self.expect {
            Expect::Allow => "allow".to_owned(),
            Expect::Deny => "deny".to_owned(),
        };
        if let Some(c) = &self.credential {
            expected.push_str(&format!(", credential {}", describe_credential(c.as_ref())));
        }
        if let Some(r) = &self.reason {
            expected.push_str(&format!(" ({r})"));
        }
        let (passed, actual) = match &decision {
            Decision::Allow(a) => {
                let credential = a.credential();
                let passed = self.expect == Expect::Allow
                    && self
                        .credential
                        .as_ref()
                        .is_none_or(|want| want.as_ref() == credential);
                let actual = format!(
                    "allow by grant `{}` ({}), credential {}",
                    a.grant.id,
                    a.grant.at,
                    describe_credential(credential)
                );
                (passed, actual)
            }
            Decision::Deny(d) => {
                let passed = self.expect == Expect::Deny
                    && self.reason.as_deref().is_none_or(|r| r == d.kind());
                (passed, format!("deny ({}): {d}", d.kind()))
            }
        };
        Outcome {
            passed,
            actual,
            expected,
        }
    }
}

fn describe_credential(c: Option<&CredentialRef>) -> String {
    c.map_or_else(|| "none".to_owned(), ToString::to_string)
}
