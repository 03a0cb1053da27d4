//! Tool manifests: `tools_dir/<name>/tool.toml`, one per tool, the tool's name being its
//! directory's name.
//!
//! A manifest names the component file, describes the tool for a model, gives the JSON Schema
//! its input must satisfy, says whether it gets a private state directory, and may lower the
//! limits of `behalf.toml` (never raise them: the operator's limits are ceilings).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::settings::Limits;
use crate::policy::{Diagnostics, Location, SourceFile, ToolName};

/// One tool's manifest, validated.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The tool's name (its directory's name).
    pub name: ToolName,
    /// What the tool does, for the model choosing it.
    pub description: String,
    /// The component file.
    pub component: PathBuf,
    /// The JSON Schema of the input.
    pub input_schema: serde_json::Value,
    /// Whether the tool gets a private state directory per (tenant, user, tool).
    pub state: bool,
    /// The limits for one invocation.
    pub limits: ToolLimits,
    /// The manifest file.
    pub path: PathBuf,
}

/// The limits of one invocation of a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// Linear memory, per memory.
    pub memory: u64,
    /// Wall-clock deadline.
    pub timeout: Duration,
    /// Size quota of the state directory.
    pub state_quota: u64,
    /// Largest stdout.
    pub output: u64,
    /// Most stderr kept.
    pub log: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    description: String,
    component: Spanned<String>,
    #[serde(default)]
    input_schema: Option<Spanned<toml::Table>>,
    #[serde(default)]
    state: bool,
    #[serde(default)]
    limits: Option<Spanned<RawLimits>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default, deserialize_with = "opt_size")]
    memory: Option<u64>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_size")]
    state_quota: Option<u64>,
    #[serde(default, deserialize_with = "opt_size")]
    output: Option<u64>,
}

fn opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    crate::policy::units::size(d).map(Some)
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::policy::units::duration(d).map(Some)
}

/// Reads every tool under `tools_dir`: each subdirectory holding a `tool.toml`. Directories
/// without one (build output, say) are skipped. All problems are collected into `diags`.
pub fn read_all(tools_dir: &Path, ceilings: &Limits, diags: &mut Diagnostics) -> Vec<Manifest> {
    let mut manifests: Vec<Manifest> = Vec::new();
    let entries = match std::fs::read_dir(tools_dir) {
        Ok(e) => e,
        Err(e) => {
            diags.error(
                Location::file(tools_dir),
                format!("cannot read the tools dir (`tools_dir`): {e}"),
            );
            return manifests;
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("tool.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        if let Some(m) = read(&dir, ceilings, diags) {
            if let Some(first) = manifests.iter().find(|o| o.name == m.name) {
                diags.error(
                    Location::file(&m.path),
                    format!(
                        "duplicate tool `{}`: also defined by {}",
                        m.name,
                        first.path.display()
                    ),
                );
                continue;
            }
            manifests.push(m);
        }
    }
    manifests
}

/// Reads one tool directory's manifest.
fn read(dir: &Path, ceilings: &Limits, diags: &mut Diagnostics) -> Option<Manifest> {
    let path = dir.join("tool.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            diags.error(Location::file(&path), format!("cannot read: {e}"));
            return None;
        }
    };
    let file = SourceFile::new(&path, text);
    let raw: RawManifest = match toml::from_str(&file.text) {
        Ok(r) => r,
        Err(e) => {
            diags.toml(&file, &e);
            return None;
        }
    };
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match ToolName::parse(&dir_name) {
        Ok(n) => Some(n),
        Err(e) => {
            diags.error(
                Location::file(dir),
                format!("the directory name is the tool's name: {e}"),
            );
            None
        }
    };
    if raw.name.get_ref() != &dir_name {
        diags.error(
            file.at(raw.name.span()),
            format!(
                "the tool's name must be its directory's name: `{}` is in `{dir_name}/`; rename \
                 one of them",
                raw.name.get_ref()
            ),
        );
    }
    let component = dir.join(raw.component.get_ref());
    if raw.component.get_ref().contains(['/', '\\']) || !component.is_file() {
        diags.error(
            file.at(raw.component.span()),
            format!(
                "component `{}` must be a file in the tool's directory ({} not found)",
                raw.component.get_ref(),
                component.display()
            ),
        );
    }
    let input_schema = match &raw.input_schema {
        None => serde_json::json!({ "type": "object" }),
        Some(table) => match serde_json::to_value(table.get_ref()) {
            Ok(v) => {
                if let Err(e) = jsonschema::validator_for(&v) {
                    diags.error(
                        file.at(table.span()),
                        format!("input_schema is not a valid JSON Schema: {e}"),
                    );
                }
                v
            }
            Err(e) => {
                diags.error(file.at(table.span()), format!("input_schema: {e}"));
                serde_json::Value::Null
            }
        },
    };
    let limits = limits(&raw, &file, ceilings, diags);
    Some(Manifest {
        name: name?,
        description: raw.description,
        component,
        input_schema,
        state: raw.state,
        limits,
        path,
    })
}

/// The manifest's limits, each at most the `behalf.toml` ceiling.
fn limits(
    raw: &RawManifest,
    file: &SourceFile,
    ceilings: &Limits,
    diags: &mut Diagnostics,
) -> ToolLimits {
    let mut limits = ToolLimits {
        memory: ceilings.tool_memory,
        timeout: ceilings.tool_timeout,
        state_quota: ceilings.tool_state_quota,
        output: ceilings.tool_output,
        log: ceilings.tool_log,
    };
    let Some(raw_limits) = &raw.limits else {
        return limits;
    };
    let at = file.at(raw_limits.span());
    let l = raw_limits.get_ref();
    let mut over = |what: &str, asked: String, ceiling: String| {
        diags.error(
            at.clone(),
            format!(
                "limits.{what} = {asked} is above behalf.toml's [limits] ceiling ({ceiling}); \
                 lower it here or raise it there"
            ),
        );
    };
    if let Some(m) = l.memory {
        if m > ceilings.tool_memory {
            over("memory", m.to_string(), ceilings.tool_memory.to_string());
        }
        limits.memory = m.min(ceilings.tool_memory);
    }
    if let Some(t) = l.timeout {
        if t > ceilings.tool_timeout {
            over(
                "timeout",
                format!("{t:?}"),
                format!("{:?}", ceilings.tool_timeout),
            );
        }
        limits.timeout = t.min(ceilings.tool_timeout);
    }
    if let Some(q) = l.state_quota {
        if q > ceilings.tool_state_quota {
            over(
                "state_quota",
                q.to_string(),
                ceilings.tool_state_quota.to_string(),
            );
        }
        limits.state_quota = q.min(ceilings.tool_state_quota);
    }
    if let Some(o) = l.output {
        if o > ceilings.tool_output {
            over("output", o.to_string(), ceilings.tool_output.to_string());
        }
        limits.output = o.min(ceilings.tool_output);
    }
    limits
}
