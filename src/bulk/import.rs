//! `hsda import`: reads a data package or JSON documents, validates every row (naming file, line and
//! field of the first problems), then writes everything in one transaction with its events.

use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::read_datapackage;
use crate::hsds::catalog::{Table, table};
use crate::hsds::document::flatten;
use crate::hsds::validate::validate_row;
use crate::store::Db;
use crate::store::write::WriteError;

pub use crate::store::write::{ImportRows, LabelledRows};

/// Reads and validates `path`: a folder or .zip data package, a .json file (one document or an array) or
/// a .ndjson file (one document per line).
pub fn read_path(path: &Path) -> anyhow::Result<ImportRows> {
    let name = path.to_string_lossy().to_lowercase();
    let mut rows: LabelledRows = Vec::new();
    let mut copies: LabelledRows = Vec::new();
    let mut child_sets = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    if name.ends_with(".json") || name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        let docs = super::ndjson::read_json_documents(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let documents = rows_of_documents(docs, &mut problems);
        (rows, copies, child_sets) = (documents.rows, documents.copies, documents.child_sets);
    } else {
        let source = read_datapackage(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut first_seen = FirstSeen::default();
        for mut r in source {
            let label = format!("{} line {}", r.file, r.line);
            crate::hsds::validate::normalize_uuids(r.table, &mut r.data);
            if let Some(Value::String(id)) = r.data.get("id")
                && let Some(first) = first_seen.again(r.table, id, &format!("line {}", r.line))
            {
                problems.push(format!("{label}: id {id} already at {first}"));
                continue;
            }
            for e in validate_row(r.table, &r.data, "") {
                problems.push(format!("{label}, field {}: {}", e.pointer.trim_start_matches('/'), e.detail));
            }
            rows.push((r.table, r.data, label));
        }
    }
    if !problems.is_empty() {
        let shown = problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ");
        bail!("{} problem(s), nothing was imported:\n  {shown}", problems.len());
    }
    // References are checked once all rows are in (`Db::import`), so the copies may come last.
    Ok(ImportRows { rows, copies, child_sets })
}

/// The rows of JSON documents, each labelled with where it was found; what is wrong with them goes to
/// `problems`. A document is either a line as `hsda export --format ndjson` writes it, `{"table": "phone",
/// "data": {...}}`, whose `data` is an object of that table (nesting what a `PUT` of it may nest), or a bare
/// HSDS object, whose table is guessed from its fields (files of other tools, and hsda's exports from
/// before its lines named their table, name none). The nested arrays a document gives replace its row's
/// children there, as a `PUT` of it would (`ImportRows::child_sets`). Rows come in document order, so a later document's row replaces an earlier one's
/// (`hsda export` writes a row on a line of its own after the documents when they do not hold it as it is).
pub(crate) fn rows_of_documents(docs: Vec<(String, Value)>, problems: &mut Vec<String>) -> ImportRows {
    let mut rows: LabelledRows = Vec::new();
    // Related rows' copies (a capacity's unit, shared by many services) are imported too, once each, only where
    // no document gives the row itself, and only where the directory does not hold it yet.
    let mut copies: LabelledRows = Vec::new();
    let mut child_sets = Vec::new();
    let referenced = Referenced::in_documents(docs.iter().map(|(_, doc)| typed_line(doc).map_or(doc, |(_, d)| d)));
    let mut first_seen = FirstSeen::default();
    for (label, line) in &docs {
        let (table, doc) = match typed_line(line) {
            Some((Ok(table), doc)) => (table, doc),
            Some((Err(problem), _)) => {
                problems.push(format!("{label}: {problem}"));
                continue;
            }
            None => match document_table(line, &referenced) {
                Some(table) => (table, line),
                None => {
                    problems.push(format!(
                        "{label}: cannot tell which HSDS object this is (name its table as \
                        {{\"table\": \"service\", \"data\": {{...}}}}, or give it an id and the fields of a service, \
                        organization, location, service_at_location, taxonomy or taxonomy_term)"
                    ));
                    continue;
                }
            },
        };
        if let Some(id) = doc.get("id").and_then(Value::as_str)
            && let Some(first) = first_seen.again(table, id, label)
        {
            problems.push(format!("{label}: id {id} already at {first}"));
            continue;
        }
        let labelled = |r: crate::hsds::document::FlatRow| {
            let at = if r.pointer.is_empty() { String::new() } else { format!(" at {}", r.pointer) };
            (r.table, r.row, format!("{label}{at}"))
        };
        match flatten(table, doc, "") {
            Ok(flat) => {
                copies.extend(flat.related.into_iter().flat_map(|r| r.body.all_rows()).map(labelled));
                rows.extend(flat.rows.into_iter().map(labelled));
                child_sets.extend(flat.child_sets);
            }
            Err(errors) => {
                problems.extend(errors.into_iter().map(|e| format!("{label}, field {}: {}", e.pointer, e.detail)))
            }
        }
    }
    let copies = fold_copies_into_rows(&mut rows, copies);
    ImportRows { rows, copies, child_sets }
}

/// Folds each related copy of a row the documents give (the official examples show one phone under a service
/// and again under its organization) into that row, and each further copy of a row into its first copy: the
/// copy adds only the links the row lacks (the phone's to the organization), as a `PUT` of the document
/// links a row it creates (`Op::CreateIfAbsent`). Returns the copies of rows no document gives.
fn fold_copies_into_rows(rows: &mut LabelledRows, copies: LabelledRows) -> LabelledRows {
    use crate::store::compile::id_of;
    enum Given {
        Row(usize),
        Copy(usize),
    }
    // The last row with an id is the one an import keeps.
    let mut given: std::collections::HashMap<(&str, String), Given> =
        rows.iter().enumerate().filter_map(|(i, (t, row, _))| Some(((t.name, id_of(row)?), Given::Row(i)))).collect();
    let mut kept: LabelledRows = Vec::new();
    for (table, copy, label) in copies {
        let Some(id) = id_of(&copy) else { continue };
        let into = match given.get(&(table.name, id.clone())) {
            Some(Given::Row(i)) => &mut rows[*i].1,
            Some(Given::Copy(i)) => &mut kept[*i].1,
            None => {
                given.insert((table.name, id), Given::Copy(kept.len()));
                kept.push((table, copy, label));
                continue;
            }
        };
        // Only its links: the row as given says what its own fields are (one it leaves out, it clears).
        for (field, value) in copy {
            if table.field(&field).is_some_and(|f| f.references.is_some()) {
                into.entry(field).or_insert(value);
            }
        }
    }
    kept
}

/// A line that names its table, `{"table": "phone", "data": {...}}`: the table (or why it is no table of
/// HSDS) and the object. `None` for anything else, a bare HSDS object (no HSDS object has a `table` field).
fn typed_line(line: &Value) -> Option<(Result<&'static Table, String>, &Value)> {
    let name = line.get("table")?.as_str()?;
    let data = line.get("data").filter(|d| d.is_object())?;
    let table = match table(name) {
        _ if line.as_object().is_some_and(|m| m.len() > 2) => {
            Err("a line naming its table has only `table` and `data`".to_string())
        }
        Some(table) => Ok(table),
        None => Err(format!("no HSDS table is called {name:?}")),
    };
    Some((table, data))
}

/// Where each row of the input was first given, by table and id. A second row with the same id used to win
/// silently over the first; it is a problem of the input instead, naming both places.
#[derive(Default)]
struct FirstSeen(std::collections::HashMap<(&'static str, String), String>);

impl FirstSeen {
    /// Notes that `table`'s row `id` is given at `place`; where it was given first when that was elsewhere.
    fn again(&mut self, table: &'static Table, id: &str, place: &str) -> Option<String> {
        let id = crate::hsds::validate::canonical_id(id).into_owned();
        match self.0.entry((table.name, id)) {
            std::collections::hash_map::Entry::Occupied(first) => Some(first.get().clone()),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(place.to_string());
                None
            }
        }
    }
}

/// Fields only an organization has (of those that share `id`, `name`, `description` and `uri` with it).
const ORGANIZATION_ONLY: [&str; 17] = [
    "alternate_name",
    "email",
    "website",
    "additional_websites",
    "tax_status",
    "tax_id",
    "year_incorporated",
    "legal_status",
    "logo",
    "parent_organization_id",
    "funding",
    "contacts",
    "phones",
    "locations",
    "programs",
    "organization_identifiers",
    "attributes",
];

/// Fields only a taxonomy term has.
const TERM_ONLY: [&str; 7] =
    ["code", "parent_id", "taxonomy", "taxonomy_detail", "language", "taxonomy_id", "term_uri"];

/// The ids other documents of the same file point at as taxonomies and as taxonomy terms: what tells a bare
/// `{id, name, description}` taxonomy or term from an organization.
#[derive(Default)]
struct Referenced {
    taxonomies: std::collections::HashSet<String>,
    terms: std::collections::HashSet<String>,
}

impl Referenced {
    fn in_documents<'a>(docs: impl Iterator<Item = &'a Value>) -> Referenced {
        let mut found = Referenced::default();
        for doc in docs {
            found.walk(doc, TERM_ONLY.iter().any(|k| doc.get(*k).is_some()));
        }
        found
    }

    /// Every `taxonomy_id` and `taxonomy_term_id` anywhere in `value`; and a term's `parent_id` (a term).
    fn walk(&mut self, value: &Value, is_term: bool) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("taxonomy_id", Some(id)) => drop(self.taxonomies.insert(id.to_string())),
                        ("taxonomy_term_id", Some(id)) => drop(self.terms.insert(id.to_string())),
                        ("parent_id", Some(id)) if is_term => drop(self.terms.insert(id.to_string())),
                        _ => self.walk(v, false),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.walk(v, false)),
            _ => {}
        }
    }
}

/// Guesses the HSDS object of a compiled JSON document by its fields, and for a bare `{id, name,
/// description}` by what the file's other documents point at it as. One that nothing points at reads, when
/// it lists its `metadata` (as compiled documents do) without any organization list (a compiled organization
/// always has them), as a taxonomy if it has a `uri` and as a term if not; as an organization otherwise.
fn document_table(doc: &Value, referenced: &Referenced) -> Option<&'static Table> {
    let has = |k: &str| doc.get(k).is_some();
    let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
    let name = if has("status") || has("service_at_locations") {
        "service"
    } else if has("location_type") || has("addresses") {
        "location"
    } else if (has("service_id") || has("service")) && (has("location_id") || has("location")) {
        "service_at_location"
    } else if TERM_ONLY.iter().any(|k| has(k)) || referenced.terms.contains(id) {
        "taxonomy_term"
    } else if !ORGANIZATION_ONLY.iter().any(|k| has(k)) && (has("version") || referenced.taxonomies.contains(id)) {
        "taxonomy"
    } else if has("metadata") && has("uri") && !ORGANIZATION_ONLY.iter().any(|k| has(k)) {
        // Compiled (it lists its metadata), not an organization, and with a `uri`, which a term does not
        // have (its own is `term_uri`): a taxonomy nothing in the file points at.
        "taxonomy"
    } else if has("metadata") && !ORGANIZATION_ONLY.iter().any(|k| has(k)) {
        // A compiled document (it lists its metadata) without any of the arrays a compiled organization always
        // has (`hsda export` wrote a bare term so before its lines named their table): a term nothing in the
        // file points at.
        "taxonomy_term"
    } else if has("name") && has("description") {
        "organization"
    } else {
        return None;
    };
    table(name)
}

/// How to import.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Refuse references to rows that exist neither in the directory nor in the import.
    pub strict_references: bool,
}

/// Imports `path` into `db`; returns a report (first line: counts; then warnings, if any).
pub async fn import_path(db: &Db, path: &Path, options: ImportOptions) -> anyhow::Result<String> {
    let show_progress = options.progress;
    let rows = read_path(path).with_context(|| format!("reading {}", path.display()))?;
    let count = rows.len();
    let bar = if show_progress { ProgressBar::new(count as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let progress = |phase: &str, done: u64, total: u64| {
        bar.set_message(phase.to_string());
        bar.set_length(total);
        bar.set_position(done);
    };
    let outcome = match db.import(rows, options.strict_references, &progress).await {
        Ok(o) => o,
        Err(WriteError::Invalid(errors)) => {
            bar.abandon();
            let shown = errors.iter().take(20).map(|e| format!("{}: {}", e.pointer, e.detail)).collect::<Vec<_>>();
            // (with --strict-references only)
            bail!("{} problem(s), nothing was imported:\n  {}", errors.len(), shown.join("\n  "));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("writing the import")),
    };
    bar.finish_and_clear();
    let removed = match outcome.rows_removed {
        0 => String::new(),
        n => format!(", {n} removed as their documents left them out"),
    };
    let mut report = format!(
        "imported {count} rows ({} changed{removed}) and appended {} events in {:.1}s",
        outcome.rows_changed,
        outcome.events,
        started.elapsed().as_secs_f64()
    );
    if !outcome.warnings.is_empty() {
        report += &format!(
            "\nwarning: {} reference(s) point at rows that are not in the directory (imported as they are; \
             --strict-references refuses them):",
            outcome.warnings.len()
        );
        for w in outcome.warnings.iter().take(20) {
            report += &format!("\n  {}: {}", w.pointer, w.detail);
        }
    }
    Ok(report)
}

/// Loads generated demo data into an empty directory (does nothing when services exist already).
pub async fn load_demo(db: &Db, services: usize) -> anyhow::Result<()> {
    let service = table("service").context("catalog has services")?;
    let (existing, _) = db.list(service, &Default::default(), 1, 1, crate::store::read::Shape::List).await?;
    if existing > 0 {
        return Ok(());
    }
    let opts = crate::generate::GenerateOptions { services, ..Default::default() };
    let rows: LabelledRows = crate::generate::generate(&opts)
        .enumerate()
        .map(|(i, (t, row))| (t, row, format!("generated row {i}")))
        .collect();
    let progress = |_: &str, _: u64, _: u64| {};
    db.import(rows, true, &progress).await.map_err(|e| anyhow::anyhow!("loading demo data: {e}"))?;
    Ok(())
}
