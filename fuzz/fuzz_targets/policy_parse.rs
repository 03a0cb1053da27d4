//! Policy files (`behalf.toml`, `services/*.toml`, `tenants/*.toml`) through the loader, in
//! memory: `PolicySet::from_sources` must report problems, never panic.
//!
//! The first byte picks which file the rest is: 0 settings, 1 a service (with a valid tenant
//! beside it), 2 a tenant (with a valid service beside it), 3 a service and a tenant split at
//! the first `\n---\n`.
#![no_main]

use std::path::PathBuf;

use behalf::policy::{PolicySet, SourceFile, Sources};
use libfuzzer_sys::fuzz_target;

const SERVICE: &str = r#"
[service]
name = "github"
origins = ["https://api.github.com"]
credential = { scope = "user", name = "github_token" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#;

const TENANT: &str = r#"
[tenant]
name = "acme"

[[grant]]
id = "eng-github"
who = ["group:eng"]
clients = ["proxy"]
service = "github"
allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues"]
"#;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut sources = Sources {
        base: PathBuf::from("/nonexistent-behalf-fuzz"),
        ..Sources::default()
    };
    let service = |t: &str| SourceFile::new("policies/services/fuzz.toml", t);
    let tenant = |t: &str| SourceFile::new("policies/tenants/fuzz.toml", t);
    match mode % 4 {
        0 => {
            sources.settings = Some(SourceFile::new("policies/behalf.toml", text));
            sources.services.push(service(SERVICE));
            sources.tenants.push(tenant(TENANT));
        }
        1 => {
            sources.services.push(service(text));
            sources.tenants.push(tenant(TENANT));
        }
        2 => {
            sources.services.push(service(SERVICE));
            sources.tenants.push(tenant(text));
        }
        _ => {
            let (s, t) = text.split_once("\n---\n").unwrap_or((text, ""));
            sources.services.push(service(s));
            sources.tenants.push(tenant(t));
        }
    }
    match PolicySet::from_sources(&sources) {
        Ok(set) => {
            // Everything a loaded set exposes must be usable.
            for s in set.services() {
                let _ = s.name.to_string();
            }
            let _ = set.tenants().len();
        }
        Err(e) => {
            // Rendering every diagnostic (line/column from spans) must not panic either.
            let _ = e.to_string();
        }
    }
});
