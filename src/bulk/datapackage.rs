//! HSDS tabular data packages: a `datapackage.json` descriptor plus one CSV file per table, in a folder or
//! a `.zip`. Reading finds each table's file through the descriptor (falling back to the catalog's file
//! name), checks every column against the catalog and converts each cell to JSON by the column's type.
//! Writing produces a package of every catalog table, rows sorted by id, with a descriptor of our own.
//!
//! A cell cannot tell an empty string from no value: both are an empty cell. It is read as no value, but in
//! a column of required text, whose only empty value is `""`: so a directory holding `""` there imports
//! its own export back, and an optional field holding `""` comes back `null` (the NDJSON form keeps it).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Number, Value, json};

use super::{ImportError, SourceRow};
use crate::hsds::catalog::{self, Field, FieldType, TABLES, Table};

/// The descriptor's file name, at the root of the package.
const DESCRIPTOR: &str = "datapackage.json";

/// Reads an HSDS tabular data package into flat rows, table by table in catalog order, each table's rows
/// in file order.
///
/// `path` is a folder holding `datapackage.json` and the CSV files, that descriptor itself, or a `.zip` of
/// the same (whose files may sit under one top folder). A table the package does not carry is empty. An
/// empty cell leaves its field out of the row; a row whose cells are all empty is skipped. A column the
/// catalog does not know, a resource that is not an HSDS table, a CSV file of no table or a cell that
/// does not fit its column's type is an error naming file, line and field.
pub fn read_datapackage(path: &Path) -> Result<Vec<SourceRow>, ImportError> {
    let mut source = Source::open(path)?;
    let declared = match source.read(DESCRIPTOR)? {
        Some(bytes) => declared_paths(&bytes)?,
        None => HashMap::new(),
    };

    let mut rows = Vec::new();
    let mut claimed = HashSet::new();
    for table in TABLES {
        let (file, bytes) = match declared.get(table.name) {
            Some(file) => {
                let bytes = source.read(file)?.ok_or_else(|| {
                    ImportError::new(DESCRIPTOR, format!("resource {} points at {file}, which is missing", table.name))
                })?;
                (file.as_str(), bytes)
            }
            None => match source.read(table.csv_file)? {
                Some(bytes) => (table.csv_file, bytes),
                None => continue,
            },
        };
        claimed.insert(file.to_owned());
        read_table(table, file, &bytes, &mut rows)?;
    }

    for file in source.top_level_csv_files()? {
        let known = TABLES.iter().any(|t| t.csv_file == file);
        if !claimed.contains(&file) && !known {
            return Err(ImportError::new(file, "no HSDS table is stored in a file of this name"));
        }
    }
    Ok(rows)
}

/// Writes rows as an HSDS tabular data package: a folder, or a `.zip` when `out` ends in `.zip`.
///
/// Every catalog table gets a CSV file (named by the catalog, header in catalog field order, a header
/// alone when the table has no rows), so a package written over an older one never leaves stale tables
/// behind. Rows are sorted by id. Numbers are written as JSON writes them, so reading the package back
/// gives the same values; an empty string reads back as an absent field. A field the catalog does not
/// know, or a nested array or object, is an error.
pub fn write_datapackage(
    out: &Path,
    rows: impl IntoIterator<Item = (&'static Table, Map<String, Value>)>,
) -> anyhow::Result<()> {
    let mut by_table: Vec<Vec<Map<String, Value>>> = vec![Vec::new(); TABLES.len()];
    for (table, data) in rows {
        let index = TABLES
            .iter()
            .position(|t| t.name == table.name)
            .ok_or_else(|| anyhow!("{} is not a catalog table", table.name))?;
        by_table[index].push(data);
    }

    let descriptor = serde_json::to_vec_pretty(&descriptor())?;
    let mut files = vec![(DESCRIPTOR.to_owned(), descriptor)];
    for (table, rows) in TABLES.iter().zip(&mut by_table) {
        rows.sort_by(|a, b| row_id(a).cmp(row_id(b)));
        let csv = table_csv(table, rows).with_context(|| format!("writing {}", table.csv_file))?;
        files.push((table.csv_file.to_owned(), csv));
    }

    if has_extension(out, "zip") {
        write_zip(out, &files).with_context(|| format!("writing {}", out.display()))
    } else {
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        for (name, bytes) in &files {
            let path = out.join(name);
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Where a package's files are read from.
enum Source {
    Folder(PathBuf),
    Zip {
        archive: zip::ZipArchive<fs::File>,
        /// The folder inside the archive that holds the package (`""` or `"export/"`).
        prefix: String,
        /// The archive's path, for error messages.
        label: String,
    },
}

impl Source {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let label = path.display().to_string();
        if path.is_dir() {
            return Ok(Source::Folder(path.to_owned()));
        }
        if !path.is_file() {
            return Err(ImportError::new(label, "no such file or folder"));
        }
        if path.file_name().is_some_and(|name| name == DESCRIPTOR) {
            let folder = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
            return Ok(Source::Folder(folder));
        }
        if !has_extension(path, "zip") {
            return Err(ImportError::new(label, "expected a folder, a datapackage.json or a .zip"));
        }
        let file = fs::File::open(path).map_err(|e| ImportError::new(&label, e.to_string()))?;
        let archive =
            zip::ZipArchive::new(file).map_err(|e| ImportError::new(&label, format!("not a readable zip: {e}")))?;
        let prefix = zip_prefix(archive.file_names()).map_err(|message| ImportError::new(&label, message))?;
        Ok(Source::Zip { archive, prefix, label })
    }

    /// The bytes of a file of the package, `None` when there is no such file.
    fn read(&mut self, relative: &str) -> Result<Option<Vec<u8>>, ImportError> {
        check_relative(relative)?;
        match self {
            Source::Folder(folder) => {
                let path = folder.join(relative);
                if !path.is_file() {
                    return Ok(None);
                }
                fs::read(&path).map(Some).map_err(|e| ImportError::new(relative, e.to_string()))
            }
            Source::Zip { archive, prefix, label } => {
                let mut entry = match archive.by_name(&format!("{prefix}{relative}")) {
                    Ok(entry) => entry,
                    Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                    Err(e) => {
                        return Err(ImportError::new(format!("{label}: {relative}"), e.to_string()));
                    }
                };
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(|e| ImportError::new(relative, e.to_string()))?;
                Ok(Some(bytes))
            }
        }
    }

    /// The names of the CSV files directly in the package's folder.
    fn top_level_csv_files(&self) -> Result<Vec<String>, ImportError> {
        let names: Vec<String> = match self {
            Source::Folder(folder) => {
                let listing =
                    fs::read_dir(folder).map_err(|e| ImportError::new(folder.display().to_string(), e.to_string()))?;
                let mut names = Vec::new();
                for entry in listing {
                    let entry = entry.map_err(|e| ImportError::new(folder.display().to_string(), e.to_string()))?;
                    if entry.file_type().is_ok_and(|t| t.is_file()) {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                names
            }
            Source::Zip { archive, prefix, .. } => archive
                .file_names()
                .filter_map(|name| name.strip_prefix(prefix.as_str()))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_owned)
                .collect(),
        };
        Ok(names.into_iter().filter(|name| has_extension(Path::new(name), "csv")).collect())
    }
}

/// The folder inside a zip that holds the package: where `datapackage.json` is (at the root or one folder
/// down), else the single top folder every entry shares, else the root.
fn zip_prefix<'a>(names: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let names: Vec<&str> = names.filter(|n| !n.starts_with("__MACOSX/")).collect();
    if names.contains(&DESCRIPTOR) {
        return Ok(String::new());
    }
    let descriptors: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.matches('/').count() == 1 && n.ends_with(&format!("/{DESCRIPTOR}")))
        .collect();
    match descriptors.as_slice() {
        [one] => Ok(one[..one.len() - DESCRIPTOR.len()].to_owned()),
        [] => {
            let tops: HashSet<&str> = names.iter().filter_map(|n| n.split_once('/').map(|(top, _)| top)).collect();
            let all_nested = names.iter().all(|n| n.contains('/'));
            match tops.into_iter().collect::<Vec<_>>().as_slice() {
                [top] if all_nested => Ok(format!("{top}/")),
                _ => Ok(String::new()),
            }
        }
        _ => Err(format!("holds several {DESCRIPTOR} files: {}", descriptors.join(", "))),
    }
}

/// Refuses resource paths that could leave the package.
fn check_relative(relative: &str) -> Result<(), ImportError> {
    let escapes = relative.starts_with('/')
        || relative.contains('\\')
        || relative.contains("://")
        || relative.split('/').any(|part| part == "..");
    if escapes {
        return Err(ImportError::new(DESCRIPTOR, format!("resource path {relative} is not a file inside the package")));
    }
    Ok(())
}

/// The file of each table the descriptor declares, by catalog table name.
fn declared_paths(bytes: &[u8]) -> Result<HashMap<&'static str, String>, ImportError> {
    let bytes = strip_bom(bytes);
    let descriptor: Value = serde_json::from_slice(bytes)
        .map_err(|e| ImportError::new(DESCRIPTOR, format!("not valid JSON: {e}")).at_line(e.line() as u64))?;
    let resources = match descriptor.get("resources") {
        None => return Ok(HashMap::new()),
        Some(Value::Array(resources)) => resources,
        Some(_) => return Err(ImportError::new(DESCRIPTOR, "resources must be an array")),
    };

    let mut declared = HashMap::new();
    for (index, resource) in resources.iter().enumerate() {
        let Some(name) = resource.get("name").and_then(Value::as_str) else {
            return Err(ImportError::new(DESCRIPTOR, format!("resource {} has no name", index + 1)));
        };
        let table = catalog::table(name)
            .or_else(|| catalog::table_by_plural(name))
            .ok_or_else(|| ImportError::new(DESCRIPTOR, format!("resource {name} is not an HSDS 3.1 table")))?;
        let path = match resource.get("path") {
            Some(Value::String(path)) => path.clone(),
            None => table.csv_file.to_owned(),
            Some(_) => {
                return Err(ImportError::new(
                    DESCRIPTOR,
                    format!("resource {name}: only a single file path is supported"),
                ));
            }
        };
        if declared.insert(table.name, path).is_some() {
            return Err(ImportError::new(DESCRIPTOR, format!("table {} is declared twice", table.name)));
        }
    }
    Ok(declared)
}

/// Parses one table's CSV file, appending its rows.
fn read_table(table: &'static Table, file: &str, bytes: &[u8], rows: &mut Vec<SourceRow>) -> Result<(), ImportError> {
    let bytes = strip_bom(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes);
    let mut record = csv::StringRecord::new();
    if !reader.read_record(&mut record).map_err(|e| csv_error(file, e))? {
        return Ok(());
    }

    let mut columns: Vec<&'static Field> = Vec::with_capacity(record.len());
    for name in record.iter() {
        let name = name.trim();
        let field = table.field(name).ok_or_else(|| {
            ImportError::new(file, format!("unknown column: the {} table has no such field", table.name))
                .at_line(1)
                .in_field(name)
        })?;
        if columns.iter().any(|c| c.name == field.name) {
            return Err(ImportError::new(file, "column appears twice").at_line(1).in_field(name));
        }
        columns.push(field);
    }

    let mut lines = LineCounter { offset: 0, line: 1 };
    while reader.read_record(&mut record).map_err(|e| csv_error(file, e))? {
        // The csv crate's own line count lags on CRLF files; count the line breaks before the record.
        let start = record.position().map_or(0, csv::Position::byte);
        let line = lines.advance(bytes, start);
        let mut data = Map::new();
        for (field, cell) in columns.iter().zip(record.iter()) {
            let value = parse_cell(field.ty, cell)
                .map_err(|message| ImportError::new(file, message).at_line(line).in_field(field.name))?;
            if let Some(value) = value {
                data.insert(field.name.to_owned(), value);
            }
        }
        if !data.is_empty() {
            // An empty cell is no value, but a required text cannot be without one: there it is the empty
            // text (the only value it can hold, and what a package of a directory holding it says).
            for field in columns.iter().filter(|f| f.required && f.ty == FieldType::Text) {
                data.entry(field.name).or_insert_with(|| Value::String(String::new()));
            }
            rows.push(SourceRow { table, data, file: file.to_owned(), line });
        }
    }
    Ok(())
}

/// The 1-based line number at a byte offset, counted forward as records are read.
struct LineCounter {
    offset: usize,
    line: u64,
}

impl LineCounter {
    fn advance(&mut self, bytes: &[u8], to: u64) -> u64 {
        let mut to = usize::try_from(to).unwrap_or(usize::MAX).min(bytes.len());
        // A record's reported start can sit on the line break that ends the one before it.
        while matches!(bytes.get(to), Some(b'\r' | b'\n')) {
            to += 1;
        }
        if let Some(skipped) = bytes.get(self.offset..to) {
            self.line += skipped.iter().filter(|&&b| b == b'\n').count() as u64;
            self.offset = to;
        }
        self.line
    }
}

fn csv_error(file: &str, err: csv::Error) -> ImportError {
    let line = err.position().map(csv::Position::line);
    let message = match err.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("row has {len} cells but the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 text".to_owned(),
        _ => err.to_string(),
    };
    let error = ImportError::new(file, message);
    match line {
        Some(line) => error.at_line(line),
        None => error,
    }
}

/// Converts one non-empty cell by its column's type; `None` for an empty cell. Text-like types keep the
/// cell exactly as written.
fn parse_cell(ty: FieldType, cell: &str) -> Result<Option<Value>, String> {
    if cell.is_empty() {
        return Ok(None);
    }
    let trimmed = cell.trim();
    let numeric = ty.is_typed();
    if numeric && trimmed.is_empty() {
        return Ok(None);
    }
    let value = match ty {
        FieldType::Number => Value::Number(parse_number(trimmed).ok_or("must be a number")?),
        FieldType::Integer => Value::Number(parse_integer(trimmed).ok_or("must be a whole number")?),
        FieldType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err("must be true or false".to_owned()),
        },
        _ => Value::String(cell.to_owned()),
    };
    Ok(Some(value))
}

fn parse_integer(text: &str) -> Option<Number> {
    text.parse::<i64>().map(Number::from).or_else(|_| text.parse::<u64>().map(Number::from)).ok()
}

/// Whole numbers stay integers (`12` -> 12); anything else finite becomes a float (`1.5` -> 1.5).
fn parse_number(text: &str) -> Option<Number> {
    parse_integer(text).or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64))
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn has_extension(path: &Path, extension: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension))
}

fn row_id(row: &Map<String, Value>) -> &str {
    row.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// One table as CSV: the catalog's fields as header, then the rows.
fn table_csv(table: &Table, rows: &[Map<String, Value>]) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    writer.write_record(table.fields.iter().map(|f| f.name))?;
    for row in rows {
        if let Some(unknown) = row.keys().find(|key| table.field(key).is_none()) {
            bail!("row {}: the {} table has no field {unknown}", row_id(row), table.name);
        }
        let mut cells = Vec::with_capacity(table.fields.len());
        for field in table.fields {
            let cell = match row.get(field.name) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(number)) => number.to_string(),
                Some(Value::Bool(flag)) => flag.to_string(),
                Some(Value::Array(_) | Value::Object(_)) => {
                    bail!("row {}: field {} holds a nested value, not a cell", row_id(row), field.name)
                }
            };
            cells.push(cell);
        }
        writer.write_record(&cells)?;
    }
    writer.into_inner().map_err(|e| anyhow!("{}", e.error()))
}

fn write_zip(out: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let file = fs::File::create(out)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        zip.start_file(name.as_str(), options)?;
        zip.write_all(bytes)?;
    }
    zip.finish()?;
    Ok(())
}

/// Our descriptor of a package holding every catalog table.
fn descriptor() -> Value {
    json!({
        "profile": "tabular-data-package",
        "name": "hsds-directory",
        "title": "HSDS 3.1 directory data written by hsda",
        "resources": TABLES.iter().map(resource).collect::<Vec<_>>(),
    })
}

fn resource(table: &Table) -> Value {
    let mut schema = Map::new();
    schema.insert("fields".into(), table.fields.iter().map(field_schema).collect());
    schema.insert("primaryKey".into(), "id".into());
    let foreign_keys: Vec<Value> = table
        .reference_fields()
        .filter_map(|field| {
            let target = catalog::table(field.references?)?;
            Some(json!({ "fields": field.name, "reference": { "resource": target.name, "fields": "id" } }))
        })
        .collect();
    if !foreign_keys.is_empty() {
        schema.insert("foreignKeys".into(), foreign_keys.into());
    }
    json!({
        "name": table.name,
        "path": table.csv_file,
        "profile": "tabular-data-resource",
        "format": "csv",
        "mediatype": "text/csv",
        "encoding": "utf-8",
        "schema": schema,
    })
}

fn field_schema(field: &Field) -> Value {
    let (kind, format) = match field.ty {
        FieldType::Uuid => ("string", Some("uuid")),
        FieldType::Uri => ("string", Some("uri")),
        FieldType::Email => ("string", Some("email")),
        FieldType::Text | FieldType::Enum(_) => ("string", None),
        FieldType::Number => ("number", None),
        FieldType::Integer => ("integer", None),
        FieldType::Boolean => ("boolean", None),
        FieldType::Date => ("date", None),
        FieldType::DateTime => ("datetime", None),
        FieldType::Time => ("time", None),
    };
    let mut schema = Map::new();
    schema.insert("name".into(), field.name.into());
    schema.insert("type".into(), kind.into());
    if let Some(format) = format {
        schema.insert("format".into(), format.into());
    }
    let mut constraints = Map::new();
    if field.required {
        constraints.insert("required".into(), true.into());
    }
    if let FieldType::Enum(values) = field.ty {
        constraints.insert("enum".into(), values.iter().copied().collect());
    }
    if !constraints.is_empty() {
        schema.insert("constraints".into(), constraints.into());
    }
    Value::Object(schema)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const EXAMPLE: &str = "/work/shared/hsds/examples/csv";

    fn example() -> Option<&'static Path> {
        let path = Path::new(EXAMPLE);
        if path.is_dir() {
            Some(path)
        } else {
            eprintln!("skipping: the HSDS example package is not at {EXAMPLE}");
            None
        }
    }

    /// Rows as comparable values: (table, data) in read order.
    fn plain(rows: &[SourceRow]) -> Vec<(&'static str, Map<String, Value>)> {
        rows.iter().map(|r| (r.table.name, r.data.clone())).collect()
    }

    /// A CSV file as its header and its rows keyed by id, each row a column -> cell map.
    fn csv_by_id(path: &Path) -> (Vec<String>, BTreeMap<String, BTreeMap<String, String>>) {
        let bytes = fs::read(path).expect("read csv");
        let mut reader = csv::Reader::from_reader(strip_bom(&bytes));
        let header: Vec<String> = reader.headers().expect("header").iter().map(str::to_owned).collect();
        let mut rows = BTreeMap::new();
        for record in reader.records() {
            let record = record.expect("record");
            let row: BTreeMap<String, String> = header.iter().cloned().zip(record.iter().map(str::to_owned)).collect();
            rows.insert(row["id"].clone(), row);
        }
        (header, rows)
    }

    fn package(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            fs::write(dir.path().join(name), text).expect("write package file");
        }
        dir
    }

    #[test]
    fn example_package_reads_a_row_from_every_file() {
        let Some(path) = example() else { return };
        let rows = read_datapackage(path).expect("example package reads");
        for entry in fs::read_dir(path).expect("list example") {
            let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
            if name.ends_with(".csv") {
                assert!(rows.iter().any(|r| r.file == name), "no rows from {name}");
            }
        }
        let service = rows.iter().find(|r| r.table.name == "service").expect("a service");
        assert_eq!(service.data["minimum_age"], json!(12));
        assert_eq!(service.data["last_modified"], json!("2023-03-15T10:30:45.123Z"));
        assert_eq!(service.line, 2);
    }

    #[test]
    fn example_package_round_trips() {
        let Some(path) = example() else { return };
        let original = read_datapackage(path).expect("example package reads");
        let out = tempfile::tempdir().expect("tempdir");
        write_datapackage(out.path(), original.iter().map(|r| (r.table, r.data.clone()))).expect("write");
        let again = read_datapackage(out.path()).expect("written package reads");
        assert_eq!(plain(&original), plain(&again));

        for entry in fs::read_dir(path).expect("list example") {
            let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
            if !name.ends_with(".csv") {
                continue;
            }
            let (old_header, old_rows) = csv_by_id(&path.join(&name));
            let (new_header, new_rows) = csv_by_id(&out.path().join(&name));
            // The writer always writes the catalog's full header; a column the original leaves out must be
            // empty in every written row.
            let old_set: HashSet<&String> = old_header.iter().collect();
            assert!(old_header.iter().all(|h| new_header.contains(h)), "{name}: columns lost");
            assert_eq!(old_rows.keys().collect::<Vec<_>>(), new_rows.keys().collect::<Vec<_>>(), "{name}: ids");
            for (id, new_row) in &new_rows {
                let mut expected = old_rows[id].clone();
                for column in new_header.iter().filter(|h| !old_set.contains(h)) {
                    expected.insert(column.clone(), String::new());
                }
                assert_eq!(&expected, new_row, "{name} row {id}");
            }
        }
    }

    #[test]
    fn written_descriptor_describes_every_table() {
        let out = tempfile::tempdir().expect("tempdir");
        write_datapackage(out.path(), std::iter::empty()).expect("write");
        let descriptor: Value =
            serde_json::from_slice(&fs::read(out.path().join(DESCRIPTOR)).expect("read")).expect("json");
        let resources = descriptor["resources"].as_array().expect("resources");
        assert_eq!(resources.len(), TABLES.len());
        let service = resources.iter().find(|r| r["name"] == "service").expect("service resource");
        assert_eq!(service["path"], "services.csv");
        assert_eq!(service["schema"]["primaryKey"], "id");
        let minimum_age =
            service["schema"]["fields"].as_array().expect("fields").iter().find(|f| f["name"] == "minimum_age");
        assert_eq!(minimum_age.expect("minimum_age")["type"], "number");
        let keys = service["schema"]["foreignKeys"].as_array().expect("foreign keys");
        assert!(keys.iter().any(|k| k["fields"] == "organization_id" && k["reference"]["resource"] == "organization"));
        let attribute = resources.iter().find(|r| r["name"] == "attribute").expect("attribute resource");
        let keys = attribute["schema"]["foreignKeys"].as_array().expect("foreign keys");
        assert!(keys.iter().all(|k| k["fields"] != "link_id"), "polymorphic link_id has no foreign key");
        assert!(read_datapackage(out.path()).expect("empty package reads").is_empty());
    }

    #[test]
    fn numbers_convert_and_write_back_unchanged() {
        let dir = package(&[(
            "locations.csv",
            "\u{feff}id,location_type,latitude,longitude\na,physical,12,1.5\nb,virtual,,\n",
        )]);
        let rows = read_datapackage(dir.path()).expect("reads");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].data["latitude"], json!(12));
        assert!(rows[0].data["latitude"].is_i64());
        assert_eq!(rows[0].data["longitude"], json!(1.5));
        assert!(!rows[1].data.contains_key("latitude"));

        let out = tempfile::tempdir().expect("tempdir");
        write_datapackage(out.path(), rows.iter().map(|r| (r.table, r.data.clone()))).expect("write");
        let text = fs::read_to_string(out.path().join("locations.csv")).expect("read");
        assert!(text.contains(",12,1.5,"), "{text}");
        assert_eq!(plain(&read_datapackage(out.path()).expect("reads back")), plain(&rows));
    }

    #[test]
    fn cell_conversions() {
        assert_eq!(parse_cell(FieldType::Integer, "7"), Ok(Some(json!(7))));
        assert!(parse_cell(FieldType::Integer, "7.5").is_err());
        assert_eq!(parse_cell(FieldType::Boolean, "1"), Ok(Some(json!(true))));
        assert_eq!(parse_cell(FieldType::Boolean, "FALSE"), Ok(Some(json!(false))));
        assert!(parse_cell(FieldType::Boolean, "yes").is_err());
        assert_eq!(parse_cell(FieldType::Date, "2005-1-1"), Ok(Some(json!("2005-1-1"))));
        assert_eq!(parse_cell(FieldType::Text, " padded "), Ok(Some(json!(" padded "))));
        assert!(parse_cell(FieldType::Number, "NaN").is_err());
        assert_eq!(parse_cell(FieldType::Number, ""), Ok(None));
    }

    #[test]
    fn a_bad_number_names_file_line_and_field() {
        let dir = package(&[(
            "services.csv",
            "id,name,status,description,minimum_age\na,A,active,\"two\nlines\",3\nb,B,active,x,twelve\n",
        )]);
        let err = read_datapackage(dir.path()).unwrap_err();
        assert_eq!(err.to_string(), "services.csv line 4, field minimum_age: must be a number");
    }

    #[test]
    fn an_unknown_column_is_refused() {
        let dir = package(&[("phones.csv", "id,number,colour\na,123,red\n")]);
        let err = read_datapackage(dir.path()).unwrap_err();
        assert_eq!((err.file.as_str(), err.line, err.field.as_deref()), ("phones.csv", Some(1), Some("colour")));
    }

    #[test]
    fn unknown_resources_and_files_are_refused() {
        let descriptor = r#"{"resources": [{"name": "widget", "path": "widgets.csv"}]}"#;
        let dir = package(&[(DESCRIPTOR, descriptor), ("widgets.csv", "id\na\n")]);
        let err = read_datapackage(dir.path()).unwrap_err();
        assert_eq!(err.file, DESCRIPTOR);
        assert!(err.message.contains("widget"), "{err}");

        let dir = package(&[("service.csv", "id\na\n")]);
        assert_eq!(read_datapackage(dir.path()).unwrap_err().file, "service.csv");
    }

    #[test]
    fn descriptor_paths_are_followed() {
        let descriptor = r#"{"resources": [{"name": "phone", "path": "data/phone-list.csv"}]}"#;
        let dir = package(&[(DESCRIPTOR, descriptor)]);
        fs::create_dir(dir.path().join("data")).expect("mkdir");
        fs::write(dir.path().join("data/phone-list.csv"), "id,number\np1,555\n").expect("write");
        let rows = read_datapackage(&dir.path().join(DESCRIPTOR)).expect("reads");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].table.name, rows[0].file.as_str()), ("phone", "data/phone-list.csv"));
        assert_eq!(rows[0].data["number"], "555");
    }

    #[test]
    fn zip_packages_read_and_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.zip");
        let mut zip = zip::ZipWriter::new(fs::File::create(&input).expect("create zip"));
        let options = zip::write::SimpleFileOptions::default();
        for (name, text) in [
            ("export/datapackage.json", r#"{"resources": [{"name": "organization", "path": "organizations.csv"}]}"#),
            ("export/organizations.csv", "id,name,description\no1,Org,Helps\n"),
            ("export/phones.csv", "id,organization_id,number\np1,o1,555\n"),
        ] {
            zip.start_file(name, options).expect("start entry");
            zip.write_all(text.as_bytes()).expect("write entry");
        }
        zip.finish().expect("finish zip");

        let rows = read_datapackage(&input).expect("zip reads");
        let tables: Vec<&str> = rows.iter().map(|r| r.table.name).collect();
        assert_eq!(tables, ["organization", "phone"]);

        let output = dir.path().join("out.zip");
        write_datapackage(&output, rows.iter().map(|r| (r.table, r.data.clone()))).expect("zip writes");
        assert_eq!(plain(&read_datapackage(&output).expect("written zip reads")), plain(&rows));
    }

    #[test]
    fn writing_refuses_unknown_fields() {
        let service = catalog::table("service").expect("service");
        let mut data = Map::new();
        data.insert("id".into(), json!("s1"));
        data.insert("colour".into(), json!("red"));
        let out = tempfile::tempdir().expect("tempdir");
        let err = write_datapackage(out.path(), [(service, data)]).unwrap_err();
        assert!(format!("{err:#}").contains("colour"), "{err:#}");
    }
}

/// Properties: rows of any table written as a package read back unchanged and with the line each record
/// starts on; arbitrary bytes as a table's CSV file give rows or an error naming the file, never a panic.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::hsds::strategies::{any_table, valid_row};

    /// Rows of one table with a non-empty id each, text cells full of commas, quotes and line breaks.
    fn table_rows() -> impl Strategy<Value = (&'static Table, Vec<Map<String, Value>>)> {
        any_table().prop_flat_map(|table| {
            let row = (valid_row(table), "[a-z0-9-]{1,12}").prop_map(|(mut row, id)| {
                row.insert("id".into(), Value::String(id));
                // An empty cell reads back as an absent field, but in a column of required text.
                row.retain(|key, v| {
                    v.as_str() != Some("") || table.field(key).is_some_and(|f| f.required && f.ty == FieldType::Text)
                });
                row
            });
            (Just(table), vec(row, 0..6))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn written_rows_read_back_unchanged_at_their_lines((table, mut rows) in table_rows()) {
            let out = tempfile::tempdir().expect("tempdir");
            write_datapackage(out.path(), rows.iter().map(|r| (table, r.clone()))).expect("write");
            let read = read_datapackage(out.path()).expect("a written package reads");
            rows.sort_by(|a, b| row_id(a).cmp(row_id(b)));
            let data: Vec<&Map<String, Value>> = read.iter().map(|r| &r.data).collect();
            prop_assert_eq!(data, rows.iter().collect::<Vec<_>>());

            // Each record starts one line after the previous one ends: a cell's own line breaks count.
            let mut line = 2;
            for row in &read {
                prop_assert_eq!(row.line, line, "{}", row.file);
                prop_assert_eq!(row.file.as_str(), table.csv_file);
                let inner: usize = row.data.values().filter_map(Value::as_str).map(|s| s.matches('\n').count()).sum();
                line += 1 + inner as u64;
            }
        }

        #[test]
        fn arbitrary_csv_never_panics(
            table in any_table(),
            body in prop_oneof![
                vec(any::<u8>(), 0..256),
                "[a-z_,\"\r\n 0-9.]{0,120}".prop_map(String::into_bytes),
            ],
            header in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut bytes = Vec::new();
            if header {
                // A real header makes the body reach the cell parsers.
                bytes.extend(table.fields.iter().map(|f| f.name).collect::<Vec<_>>().join(",").into_bytes());
                bytes.push(b'\n');
            }
            bytes.extend(&body);
            fs::write(dir.path().join(table.csv_file), &bytes).expect("write");
            match read_datapackage(dir.path()) {
                Ok(rows) => {
                    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                    prop_assert!(rows.iter().all(|r| r.table.name == table.name && (2..=lines).contains(&r.line)));
                }
                Err(error) => prop_assert_eq!(error.file.as_str(), table.csv_file),
            }
        }
    }
}
