//! `hsda export`: the directory as a tabular data package (every table, one CSV each) or as NDJSON. Each
//! NDJSON line names its table, `{"table": "service", "data": {...}}`: first the compiled documents
//! (taxonomies and their terms, which no root document holds whole, then organizations, locations, and
//! services with everything they nest), then every row those documents do not hold as the directory does
//! (a phone of nothing, an unused unit, a meta_table_description, a location's attribute...), as a flat row
//! of its table. `hsda import` of the file gives the same directory, as the data package does.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;

use crate::hsds::catalog::{TABLES, Table, table};
use crate::hsds::document::keeps_last_modified;
use crate::store::Db;
use crate::store::compile::{Row, id_of};
use crate::store::read::{ListQuery, Shape};

/// Writes every row of every table as a data package; returns a one-line report.
pub async fn export_datapackage(db: &Db, out: &Path) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for t in TABLES {
        let mut stream = std::pin::pin!(db.stream_rows(t));
        while let Some(row) = stream.next().await {
            rows.push((t, row?));
        }
    }
    let count = rows.len();
    super::write_datapackage(out, rows).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!("exported {count} rows to {}", out.display()))
}

/// Writes the compiled documents, then the rows they do not hold, one JSON object per line, each naming its
/// table. `-` is standard output.
pub async fn export_ndjson(db: &Db, out: &Path) -> anyhow::Result<String> {
    let sink: Box<dyn Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?)
    };
    let mut writer = std::io::BufWriter::new(sink);
    // What an import of the lines would make of them, by the importer's own reading of each line as it is
    // written (the documents themselves are not kept): checked below against every row the directory holds.
    let mut imported: HashMap<(&str, String), Row> = HashMap::new();
    let mut ignored = Vec::new();
    let mut documents = 0usize;
    // Taxonomies and terms first (no root document holds them whole; services' attributes point at terms),
    // then organizations (without their service list) and locations, then services: the order a reader
    // that resolves references line by line needs.
    for name in ["taxonomy", "taxonomy_term", "organization", "location", "service"] {
        let Some(t) = table(name) else { continue };
        let mut stream = std::pin::pin!(db.stream(t, ListQuery::default(), Shape::Full));
        while let Some(listed) = stream.next().await {
            // As `GET` shows it: a root's whole document, another table's row with what it nests (metadata).
            let mut doc = listed?.value;
            if let Some(map) = doc.as_object_mut() {
                map.remove("services");
            }
            let line = json!({ "table": t.name, "data": doc });
            serde_json::to_writer(&mut writer, &line)?;
            writer.write_all(b"\n")?;
            documents += 1;
            // A later line's row replaces an earlier one's on import; a related row's copy (a capacity's
            // unit) counts only where no line gives the row itself.
            let read = super::import::rows_of_documents(vec![(String::new(), line)], &mut ignored);
            for (t, row, _) in read.rows {
                imported.insert((t.name, id_of(&row).unwrap_or_default()), row);
            }
            for (t, row, _) in read.copies {
                imported.entry((t.name, id_of(&row).unwrap_or_default())).or_insert(row);
            }
        }
    }
    // A row the lines miss, or give otherwise, follows on a line of its own.
    let mut rows = 0usize;
    for t in TABLES {
        let mut stream = std::pin::pin!(db.stream_rows(t));
        while let Some(row) = stream.next().await {
            let row = row?;
            let as_imported = imported.remove(&(t.name, id_of(&row).unwrap_or_default()));
            if as_imported.is_some_and(|imported| same_row(t, &imported, &row)) {
                continue;
            }
            serde_json::to_writer(&mut writer, &json!({ "table": t.name, "data": row }))?;
            writer.write_all(b"\n")?;
            rows += 1;
        }
    }
    writer.flush()?;
    Ok(format!("exported {documents} documents and {rows} rows they do not hold to {}", out.display()))
}

/// Whether an imported row is the stored one. hsda keeps a service's `last_modified` itself (an import
/// stamps its own time), so that one is not compared.
fn same_row(t: &Table, imported: &Row, stored: &Row) -> bool {
    if !keeps_last_modified(t) {
        return imported == stored;
    }
    let without = |row: &Row| {
        let mut row = row.clone();
        row.remove("last_modified");
        row
    };
    without(imported) == without(stored)
}
