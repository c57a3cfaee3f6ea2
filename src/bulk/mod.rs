//! Bulk exchange of HSDS data as flat rows. This module turns an HSDS tabular data package (a folder or a
//! `.zip` holding `datapackage.json` and one CSV per table) into [`SourceRow`]s typed by the catalog, and
//! writes rows back out as such a package; [`ndjson`] reads JSON documents from `.json`/`.ndjson` files.
//! It knows files and cell types only: whether the rows make a consistent directory is for `hsds` to say.

mod datapackage;
pub mod ndjson;

use std::fmt;

use serde_json::{Map, Value};

use crate::hsds::catalog::Table;

pub use datapackage::{read_datapackage, write_datapackage};
pub use ndjson::read_json_documents;

/// One flat row of one HSDS table, as read from a file.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub table: &'static Table,
    /// The row's non-empty cells, converted to JSON by the catalog type of their column.
    pub data: Map<String, Value>,
    /// The file the row came from, as named inside the package (`services.csv`).
    pub file: String,
    /// The 1-based line of the file where the row starts (the header is line 1).
    pub line: u64,
}

/// Why some input could not be read, pointing at the file, and where known the line and field.
///
/// Displays as `services.csv line 3, field minimum_age: must be a number`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub file: String,
    pub line: Option<u64>,
    pub field: Option<String>,
    pub message: String,
}

impl ImportError {
    /// An error about a whole file.
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            field: None,
            message: message.into(),
        }
    }

    /// The same error, pinned to a line of the file.
    pub fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// The same error, pinned to a field (column).
    pub fn in_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ImportError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_error_names_file_line_and_field() {
        let err = ImportError::new("services.csv", "must be a number")
            .at_line(3)
            .in_field("minimum_age");
        assert_eq!(
            err.to_string(),
            "services.csv line 3, field minimum_age: must be a number"
        );
        assert_eq!(
            ImportError::new("x.zip", "not a zip").to_string(),
            "x.zip: not a zip"
        );
    }
}
