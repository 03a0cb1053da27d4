//! Reading a policies directory: files in a fixed order, TOML parsed with spans, each section
//! and each array entry deserialised on its own so that one run reports every problem.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::source::{Diagnostics, Location, SourceFile};

/// The files of a policy set, read but not yet parsed.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `behalf.toml`, if present.
    pub settings: Option<SourceFile>,
    /// `services/*.toml`, sorted by name.
    pub services: Vec<SourceFile>,
    /// `tenants/*.toml`, sorted by name.
    pub tenants: Vec<SourceFile>,
    /// `tests/*.toml`, sorted by name.
    pub tests: Vec<SourceFile>,
    /// The directory relative paths in `behalf.toml` are resolved against (the policies dir's
    /// parent).
    pub base: PathBuf,
}

impl Sources {
    /// Reads a policies directory. Missing subdirectories are empty; an unreadable file is an
    /// error naming it.
    pub fn read(dir: &Path, diags: &mut Diagnostics) -> Self {
        // Absolute first, so that `.`, `..` and `foo/.` have the parent the user means.
        let base = std::path::absolute(dir)
            .ok()
            .and_then(|d| d.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let mut sources = Self {
            base,
            ..Self::default()
        };
        if !dir.is_dir() {
            diags.error(
                Location::file(dir),
                "policies directory not found; pass the directory that holds behalf.toml, \
                 services/ and tenants/ (e.g. `--policies policies`)",
            );
            return sources;
        }
        let settings = dir.join("behalf.toml");
        if settings.exists() {
            sources.settings = read_file(&settings, diags);
        }
        sources.services = read_dir(&dir.join("services"), diags);
        sources.tenants = read_dir(&dir.join("tenants"), diags);
        sources.tests = read_dir(&dir.join("tests"), diags);
        sources
    }
}

fn read_file(path: &Path, diags: &mut Diagnostics) -> Option<SourceFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(SourceFile::new(path, text)),
        Err(e) => {
            diags.error(Location::file(path), format!("cannot read file: {e}"));
            None
        }
    }
}

fn read_dir(dir: &Path, diags: &mut Diagnostics) -> Vec<SourceFile> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            diags.error(Location::file(dir), format!("cannot read directory: {e}"));
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| read_file(p, diags)).collect()
}

/// A parsed TOML table whose keys have been checked against the allowed set.
pub(crate) struct Document<'a> {
    file: &'a SourceFile,
    table: DeTable<'a>,
    span: std::ops::Range<usize>,
}

impl<'a> Document<'a> {
    /// Parses a whole file, reporting every syntax error and every unknown top-level key.
    pub(crate) fn parse(
        file: &'a SourceFile,
        allowed: &[&str],
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let (table, errors) = DeTable::parse_recoverable(&file.text);
        if !errors.is_empty() {
            for e in &errors {
                diags.toml(file, e);
            }
            return None;
        }
        let span = table.span();
        let doc = Self {
            file,
            table: table.into_inner(),
            span,
        };
        doc.check_keys(allowed, "", diags);
        Some(doc)
    }

    fn check_keys(&self, allowed: &[&str], prefix: &str, diags: &mut Diagnostics) {
        for (key, _) in self.table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                diags.error(
                    self.file.at(key.span()),
                    format!(
                        "unknown key `{prefix}{}`, expected one of: {}",
                        key.get_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn value(&self, key: &str) -> Option<&Spanned<DeValue<'a>>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    /// Where `key` is written, or the start of the table when it is absent.
    pub(crate) fn key_at(&self, key: &str) -> Location {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map_or_else(
                || self.file.at(self.span.clone()),
                |(k, _)| self.file.at(k.span()),
            )
    }

    /// Deserialises one key's value; `None` if absent or invalid (the problem is recorded).
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str, diags: &mut Diagnostics) -> Option<T> {
        de_item(self.file, self.value(key)?.clone(), diags)
    }

    /// A nested table whose keys are checked against `allowed`.
    pub(crate) fn table(
        &self,
        key: &str,
        allowed: &[&str],
        diags: &mut Diagnostics,
    ) -> Option<Document<'a>> {
        let value = self.value(key)?;
        let DeValue::Table(table) = value.get_ref() else {
            diags.error(
                self.file.at(value.span()),
                format!("`{key}` must be a table (`[{key}]`)"),
            );
            return None;
        };
        let doc = Document {
            file: self.file,
            table: table.clone(),
            span: value.span(),
        };
        doc.check_keys(allowed, &format!("{key}."), diags);
        Some(doc)
    }

    /// Each entry of an array of tables (`[[grant]]`), deserialised on its own, with the
    /// location of the entry.
    pub(crate) fn items<T: DeserializeOwned>(
        &self,
        key: &str,
        diags: &mut Diagnostics,
    ) -> Vec<(Location, T)> {
        let Some(value) = self.value(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            diags.error(
                self.file.at(value.span()),
                format!("`{key}` must be an array of tables (`[[{key}]]`)"),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                let at = self.file.at(item.span());
                de_item(self.file, item.clone(), diags).map(|v| (at, v))
            })
            .collect()
    }
}

/// Deserialises one spanned value, recording a failure with its location.
pub(crate) fn de_item<T: DeserializeOwned>(
    file: &SourceFile,
    value: Spanned<DeValue<'_>>,
    diags: &mut Diagnostics,
) -> Option<T> {
    let span = value.span();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(e) => {
            if e.span().is_some() {
                diags.toml(file, &e);
            } else {
                diags.error(file.at(span), e.message().trim_end().to_owned());
            }
            None
        }
    }
}
