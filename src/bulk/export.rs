//! `hsda export`: the directory as a tabular data package (every table, one CSV each) or as NDJSON of the
//! compiled documents (taxonomies and their terms, which no root document holds whole, then organizations,
//! locations, and services with everything they nest).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use futures::StreamExt;

use crate::hsds::catalog::{TABLES, table};
use crate::store::Db;
use crate::store::read::ListQuery;

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

/// Writes the compiled root documents, one JSON object per line.
/// `-` is standard output.
pub async fn export_ndjson(db: &Db, out: &Path) -> anyhow::Result<String> {
    let sink: Box<dyn Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?)
    };
    let mut writer = std::io::BufWriter::new(sink);
    let mut count = 0usize;
    // Taxonomies and terms first (no root document holds them whole; services' attributes point at terms),
    // then organizations (without their service list) and locations, so that a re-import finds every
    // referenced row before the services that point at them.
    for name in ["taxonomy", "taxonomy_term", "organization", "location", "service"] {
        let Some(t) = table(name) else { continue };
        let mut stream = std::pin::pin!(db.stream(t, ListQuery::default(), true));
        while let Some(listed) = stream.next().await {
            let listed = listed?;
            let mut doc = listed.value;
            if !t.is_root() {
                // Read as `GET` shows it: with its metadata, which the list form leaves out (and which tells
                // a bare term from an organization on import).
                doc = db.get(t, &listed.id).await?.unwrap_or(doc);
            }
            if let Some(map) = doc.as_object_mut() {
                map.remove("services");
            }
            serde_json::to_writer(&mut writer, &doc)?;
            writer.write_all(b"\n")?;
            count += 1;
        }
    }
    writer.flush()?;
    Ok(format!("exported {count} documents to {}", out.display()))
}
