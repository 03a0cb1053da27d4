//! Policy source text and the diagnostics that point into it (`file:line:column`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One policy file's text, with the name it is reported under.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path shown in diagnostics (as given, usually relative to the working directory).
    pub path: PathBuf,
    /// The file's contents.
    pub text: String,
}

impl SourceFile {
    /// A source held in memory (tests, benchmarks, generated policy).
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// The 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// A location for a span in this file.
    pub fn at(&self, span: Range<usize>) -> Location {
        let (line, column) = self.line_col(span.start);
        Location {
            file: self.path.clone(),
            line,
            column,
        }
    }

    /// A location at the start of the file, for problems with the file as a whole.
    pub fn whole(&self) -> Location {
        Location {
            file: self.path.clone(),
            line: 1,
            column: 1,
        }
    }
}

/// A position in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line; 0 when the location is a whole file or directory.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    /// A location naming a file or directory as a whole (shown without line and column).
    pub fn file(path: &Path) -> Self {
        Self {
            file: path.to_owned(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The policy set is still loaded.
    Warning,
    /// The policy set is rejected.
    Error,
}

/// One problem found while loading policy, pointing at where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where.
    pub at: Location,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}: {level}: {}", self.at, self.message)
    }
}

/// Collects diagnostics so that one load reports every problem, not just the first.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records an error.
    pub fn error(&mut self, at: Location, message: impl Into<String>) {
        self.items.push(Diagnostic {
            severity: Severity::Error,
            at,
            message: message.into(),
        });
    }

    /// Records a warning.
    pub fn warning(&mut self, at: Location, message: impl Into<String>) {
        self.items.push(Diagnostic {
            severity: Severity::Warning,
            at,
            message: message.into(),
        });
    }

    /// Records a TOML syntax or shape error from the `toml` crate.
    pub fn toml(&mut self, file: &SourceFile, err: &toml::de::Error) {
        let at = err.span().map_or_else(|| file.whole(), |s| file.at(s));
        let message = err.message().trim_end().to_owned();
        self.error(at, message);
    }

    /// Whether any error (not warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// All diagnostics, sorted by file and position.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items
            .sort_by(|a, b| a.at.cmp(&b.at).then(b.severity.cmp(&a.severity)));
        self.items
    }
}
