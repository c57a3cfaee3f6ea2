//! JSON documents from files: a `.json` file holding one object or an array of objects, or a `.ndjson`
//! (also `.jsonl`) file holding one object per line. Each document comes back with a label saying where
//! it was found, so later errors about its content can point at it.

use std::fs;
use std::path::Path;

use serde_json::Value;

use super::ImportError;
use crate::hsds::catalog::TABLES;

/// Reads the JSON objects of a `.json`, `.ndjson` or `.jsonl` file, in file order.
///
/// Each object is labelled `line N` (1-based) in a line-delimited file, `item N` (1-based) in an array,
/// and `document` when a `.json` file holds a single object. A `.json` file may also hold a saved page of an
/// HSDS list (its `contents` are the documents) or HSDS's tabular form in JSON (each row a line naming its
/// table). Blank lines are ignored. Anything that is not
/// an object, or not JSON, is an error naming the file and, where known, the line.
pub fn read_json_documents(path: &Path) -> Result<Vec<(String, Value)>, ImportError> {
    let file = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let extension = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let bytes = fs::read(path).map_err(|e| ImportError::new(&file, e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ImportError::new(&file, "not valid UTF-8 text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match extension.as_str() {
        "json" => parse_json(&file, text),
        "ndjson" | "jsonl" => parse_lines(&file, text),
        _ => Err(ImportError::new(file, "expected a .json, .ndjson or .jsonl file")),
    }
}

fn parse_json(file: &str, text: &str) -> Result<Vec<(String, Value)>, ImportError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ImportError::new(file, format!("not valid JSON: {e}")).at_line(e.line() as u64))?;
    match value {
        Value::Object(mut map) if is_page(&map) => objects(file, "contents item", map.remove("contents")),
        Value::Object(map) if is_tabular(&map) => tabular_rows(file, map),
        Value::Object(_) => Ok(vec![("document".to_owned(), value)]),
        array @ Value::Array(_) => objects(file, "item", Some(array)),
        _ => Err(ImportError::new(file, "expected a JSON object or an array of objects")),
    }
}

/// The objects of a JSON array, labelled `{label} N` (1-based).
fn objects(file: &str, label: &str, array: Option<Value>) -> Result<Vec<(String, Value)>, ImportError> {
    let Some(Value::Array(items)) = array else {
        return Err(ImportError::new(file, "expected an array of objects"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let label = format!("{label} {}", index + 1);
            if item.is_object() {
                Ok((label, item))
            } else {
                Err(ImportError::new(file, format!("{label} is not a JSON object")))
            }
        })
        .collect()
}

/// A page of an HSDS list as the API serves it (`GET /services` saved to a file): its `contents` are the
/// documents. No HSDS object has a `contents` and a `total_items` field.
fn is_page(map: &serde_json::Map<String, Value>) -> bool {
    map.contains_key("total_items") && map.get("contents").is_some_and(Value::is_array)
}

/// The tabular form in JSON (`{"services.csv": [row, ...], ...}`, as HSDS's `tabular.json` example): every
/// key names a table's CSV file of a data package.
fn is_tabular(map: &serde_json::Map<String, Value>) -> bool {
    !map.is_empty() && map.iter().all(|(key, rows)| key.ends_with(".csv") && rows.is_array())
}

/// Each row of the tabular form as a line naming its table, `{"table": "service", "data": {...}}`, labelled
/// `{file} row N`; a key that is no HSDS table's file is an error.
fn tabular_rows(file: &str, map: serde_json::Map<String, Value>) -> Result<Vec<(String, Value)>, ImportError> {
    let mut lines = Vec::new();
    for (csv_file, rows) in map {
        let Some(table) = TABLES.iter().find(|t| t.csv_file == csv_file) else {
            return Err(ImportError::new(file, format!("{csv_file} is not the file of an HSDS table")));
        };
        for (label, mut row) in objects(file, &format!("{csv_file} row"), Some(rows))? {
            // A cell's value as its CSV cell would read: a number in a text column is its text (HSDS's own
            // example gives an organization identifier as 1234567).
            for (name, value) in row.as_object_mut().into_iter().flatten() {
                if (value.is_number() || value.is_boolean()) && table.field(name).is_some_and(|f| !f.ty.is_typed()) {
                    *value = Value::String(value.to_string());
                }
            }
            lines.push((label, serde_json::json!({ "table": table.name, "data": row })));
        }
    }
    Ok(lines)
}

fn parse_lines(file: &str, text: &str) -> Result<Vec<(String, Value)>, ImportError> {
    let mut documents = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| ImportError::new(file, format!("not valid JSON: {e}")).at_line(number))?;
        if !value.is_object() {
            return Err(ImportError::new(file, "expected a JSON object").at_line(number));
        }
        documents.push((format!("line {number}"), value));
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write test file");
        path
    }

    #[test]
    fn reads_an_object_an_array_and_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = read_json_documents(&write(dir.path(), "one.json", r#"{"id":"a"}"#)).expect("object");
        assert_eq!(one, vec![("document".to_owned(), serde_json::json!({"id": "a"}))]);

        let many = read_json_documents(&write(dir.path(), "many.json", r#"[{"id":"a"},{"id":"b"}]"#)).expect("array");
        assert_eq!(many.iter().map(|(label, _)| label.as_str()).collect::<Vec<_>>(), ["item 1", "item 2"]);

        let lines = read_json_documents(&write(dir.path(), "rows.ndjson", "{\"id\":\"a\"}\n\n  \n{\"id\":\"b\"}\n"))
            .expect("lines");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].0, "line 4");
        assert_eq!(lines[1].1["id"], "b");
    }

    #[test]
    fn reads_a_saved_list_page_and_the_tabular_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = r#"{"total_items": 2, "total_pages": 1, "page_number": 1, "contents": [{"id":"a"},{"id":"b"}]}"#;
        let items = read_json_documents(&write(dir.path(), "list.json", page)).expect("page");
        assert_eq!(
            items.iter().map(|(label, _)| label.as_str()).collect::<Vec<_>>(),
            ["contents item 1", "contents item 2"]
        );

        let tabular = r#"{"services.csv": [{"id":"s", "minimum_age": 3}], "phones.csv": [{"id":"p", "number": 5550100}, {"id":"q"}]}"#;
        let lines = read_json_documents(&write(dir.path(), "tabular.json", tabular)).expect("tabular");
        let tables: Vec<(&str, &str)> =
            lines.iter().map(|(label, line)| (label.as_str(), line["table"].as_str().unwrap_or_default())).collect();
        assert_eq!(
            tables,
            [("services.csv row 1", "service"), ("phones.csv row 1", "phone"), ("phones.csv row 2", "phone")]
        );
        // A number in a text column reads as its text, as in a CSV cell; a number column's stays a number.
        assert_eq!(lines[0].1["data"], serde_json::json!({"id": "s", "minimum_age": 3}));
        assert_eq!(lines[1].1["data"], serde_json::json!({"id": "p", "number": "5550100"}));

        let err = read_json_documents(&write(dir.path(), "odd.json", r#"{"widgets.csv": []}"#)).unwrap_err();
        assert_eq!(err.to_string(), "odd.json: widgets.csv is not the file of an HSDS table");
    }

    #[test]
    fn errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_json_documents(&write(dir.path(), "rows.ndjson", "{\"id\":\"a\"}\n{\"id\":\n")).unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("rows.ndjson", Some(2)));

        let err = read_json_documents(&write(dir.path(), "rows.jsonl", "{}\n[1]\n")).unwrap_err();
        assert_eq!(err.to_string(), "rows.jsonl line 2: expected a JSON object");

        let err = read_json_documents(&write(dir.path(), "bad.json", "[{},\n 3]")).unwrap_err();
        assert_eq!(err.to_string(), "bad.json: item 2 is not a JSON object");

        let err = read_json_documents(&write(dir.path(), "broken.json", "{\n\"a\": }")).unwrap_err();
        assert_eq!(err.line, Some(2));
    }
}

/// Properties: what is written as JSON lines or a JSON array reads back the same, labelled by its real line
/// or item; arbitrary bytes give documents or an error naming the file, never a panic.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::hsds::strategies::json_object;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn json_lines_read_back_with_their_line_numbers(
            documents in vec((json_object(), 0usize..3, any::<bool>()), 0..8),
            bom in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut text = String::from(if bom { "\u{feff}" } else { "" });
            let mut expected = Vec::new();
            let mut line = 1;
            for (document, blanks, crlf) in &documents {
                for _ in 0..*blanks {
                    text += if *crlf { " \r\n" } else { "\n" };
                    line += 1;
                }
                text += &Value::Object(document.clone()).to_string();
                text += if *crlf { "\r\n" } else { "\n" };
                expected.push((format!("line {line}"), Value::Object(document.clone())));
                line += 1;
            }
            let path = dir.path().join("rows.ndjson");
            fs::write(&path, &text).expect("write");
            prop_assert_eq!(read_json_documents(&path).expect("reads"), expected);
        }

        #[test]
        fn a_json_array_reads_back_item_by_item(documents in vec(json_object(), 0..6)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("many.json");
            let array = Value::Array(documents.iter().cloned().map(Value::Object).collect());
            fs::write(&path, serde_json::to_string_pretty(&array).expect("json")).expect("write");
            let read = read_json_documents(&path).expect("reads");
            let expected: Vec<(String, Value)> = documents
                .into_iter()
                .enumerate()
                .map(|(i, d): (usize, Map<String, Value>)| (format!("item {}", i + 1), Value::Object(d)))
                .collect();
            prop_assert_eq!(read, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop_oneof![vec(any::<u8>(), 0..256), "[{}\\[\\]\":,a0-9 \n\r]{0,80}".prop_map(String::into_bytes)],
            extension in prop::sample::select(vec!["json", "ndjson", "jsonl", "txt"]),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(format!("input.{extension}"));
            fs::write(&path, &bytes).expect("write");
            match read_json_documents(&path) {
                Ok(documents) => prop_assert!(documents.iter().all(|(_, d)| d.is_object())),
                Err(error) => {
                    prop_assert_eq!(&error.file, &format!("input.{extension}"));
                    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                    prop_assert!(error.line.is_none_or(|l| (1..=lines).contains(&l)), "{error}");
                }
            }
        }
    }
}
