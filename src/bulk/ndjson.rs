//! JSON documents from files: a `.json` file holding one object or an array of objects, or a `.ndjson`
//! (also `.jsonl`) file holding one object per line. Each document comes back with a label saying where
//! it was found, so later errors about its content can point at it.

use std::fs;
use std::path::Path;

use serde_json::Value;

use super::ImportError;

/// Reads the JSON objects of a `.json`, `.ndjson` or `.jsonl` file, in file order.
///
/// Each object is labelled `line N` (1-based) in a line-delimited file, `item N` (1-based) in an array,
/// and `document` when a `.json` file holds a single object. Blank lines are ignored. Anything that is not
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
        Value::Object(_) => Ok(vec![("document".to_owned(), value)]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let label = format!("item {}", index + 1);
                if item.is_object() {
                    Ok((label, item))
                } else {
                    Err(ImportError::new(file, format!("{label} is not a JSON object")))
                }
            })
            .collect(),
        _ => Err(ImportError::new(file, "expected a JSON object or an array of objects")),
    }
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
