//! Validation of single HSDS rows against the table catalog. A row is the flat JSON object of one table's
//! own scalar fields; this module checks that required fields are present, that every value has the type
//! and format its field declares, and that no field is unknown to the table. Each problem is reported as a
//! [`FieldError`] located by a JSON pointer, so callers that validate nested documents can point into them.
//! Whether referenced rows exist is the store's concern, not this module's.

use chrono::{DateTime, NaiveDate};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use uuid::Uuid;

use super::catalog::{FieldType, Table};

/// One problem with one value, located by an RFC 6901 JSON pointer (`/phones/0/number`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where the offending value is (or should be), relative to the validated document.
    pub pointer: String,
    /// A short sentence saying what was expected (`must be a UUID`, `is required`).
    pub detail: String,
}

impl FieldError {
    /// An error at `pointer` with the given detail.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: pointer.into(), detail: detail.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.detail)
    }
}

/// Checks one flat row of `table` and returns every problem found, in catalog field order followed by
/// unknown fields in row order. An empty vector means the row is valid.
///
/// Pointers are `base_pointer` followed by the escaped field name: validating a phone at `/phones/0`
/// reports a missing number at `/phones/0/number`. Use `""` for a row that is the whole document.
///
/// Keys naming one of the table's nested objects (`phones` on a service) are accepted and left alone:
/// nested rows are validated separately. `null` is accepted for every field that is not required.
pub fn validate_row(table: &Table, row: &Map<String, Value>, base_pointer: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for field in table.fields {
        match row.get(field.name) {
            None | Some(Value::Null) => {
                if field.required {
                    errors.push(FieldError::new(pointer_join(base_pointer, field.name), "is required"));
                }
            }
            Some(value) => {
                if let Err(detail) = check_value(field.ty, value) {
                    errors.push(FieldError::new(pointer_join(base_pointer, field.name), detail));
                }
            }
        }
    }
    for key in row.keys() {
        if table.field(key).is_none() && !table.nested.iter().any(|n| n.key == key) {
            errors.push(FieldError::new(pointer_join(base_pointer, key), "unknown field"));
        }
    }
    errors
}

/// Checks one non-null value against a field type; the error is the detail sentence for a [`FieldError`].
pub fn check_value(ty: FieldType, value: &Value) -> Result<(), String> {
    // No text PostgreSQL stores (an import reads cells past the HTTP layer's own check).
    if value.as_str().is_some_and(|s| s.contains('\0')) {
        return Err("must not contain the NUL character (U+0000)".into());
    }
    let ok = match ty {
        FieldType::Uuid => value.as_str().and_then(parse_uuid).is_some(),
        FieldType::Text => value.is_string(),
        FieldType::Uri => value.as_str().is_some_and(is_absolute_uri),
        FieldType::Email => value.as_str().is_some_and(is_email),
        FieldType::Number => value.is_number(),
        FieldType::Integer => is_integer(value),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Date => value.as_str().is_some_and(is_date),
        FieldType::DateTime => value.as_str().is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok()),
        FieldType::Time => value.as_str().is_some_and(is_time),
        FieldType::Enum(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
    };
    if ok { Ok(()) } else { Err(expectation(ty)) }
}

/// The sentence saying what a value of this type must look like.
fn expectation(ty: FieldType) -> String {
    match ty {
        FieldType::Uuid => "must be a UUID".into(),
        FieldType::Text => "must be a string".into(),
        FieldType::Uri => "must be an absolute URI".into(),
        FieldType::Email => "must be an email address".into(),
        FieldType::Number => "must be a number".into(),
        FieldType::Integer => "must be an integer".into(),
        FieldType::Boolean => "must be true or false".into(),
        FieldType::Date => "must be a date (YYYY-MM-DD)".into(),
        FieldType::DateTime => "must be an RFC 3339 date-time".into(),
        FieldType::Time => "must be a time (HH:MM or HH:MM:SS, optionally with Z or a UTC offset)".into(),
        FieldType::Enum(allowed) => format!("must be one of: {}", allowed.join(", ")),
    }
}

/// Writes every UUID of `row` (its id and references) in lowercase, as ids are stored and compared: a UUID
/// is the same whatever the case of its hex digits (RFC 9562), so `PUT` of `ABC...` and of `abc...` must
/// name one row. Values that are not UUIDs are left for validation to refuse.
pub fn normalize_uuids(table: &Table, row: &mut Map<String, Value>) {
    for field in table.fields.iter().filter(|f| matches!(f.ty, FieldType::Uuid)) {
        if let Some(Value::String(s)) = row.get_mut(field.name)
            && let std::borrow::Cow::Owned(lowercase) = canonical_id(s)
        {
            *s = lowercase;
        }
    }
}

/// `id` as stored: a UUID in lowercase; anything else as given (it names no row).
pub fn canonical_id(id: &str) -> std::borrow::Cow<'_, str> {
    match parse_uuid(id) {
        Some(_) if id.bytes().any(|b| b.is_ascii_uppercase()) => id.to_ascii_lowercase().into(),
        _ => id.into(),
    }
}

/// Parses a UUID in its hyphenated form (`8-4-4-4-12` hex digits, any version); other spellings the
/// `uuid` crate accepts (bare hex, braces, `urn:uuid:`) are refused.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// Appends one reference token to a JSON pointer, escaping `~` and `/` as RFC 6901 requires.
pub fn pointer_join(base: &str, token: &str) -> String {
    let escaped = token.replace('~', "~0").replace('/', "~1");
    format!("{base}/{escaped}")
}

/// A scheme (a letter, then letters, digits, `+`, `-` or `.`), a colon and a non-empty rest, with no
/// whitespace anywhere.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut scheme_chars = scheme.chars();
    scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Exactly one `@`, a non-empty local part, and a domain of at least two non-empty dot-separated labels.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
        && !s.chars().any(char::is_whitespace)
}

/// An integral JSON number; `3.0` counts, as in JSON Schema.
fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0),
        _ => false,
    }
}

/// Exactly `YYYY-MM-DD`, and a real calendar date.
fn is_date(s: &str) -> bool {
    let shape_ok = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    shape_ok && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// `HH:MM` or `HH:MM:SS`, optionally followed by `Z` or a `+HH:MM`/`-HH:MM` offset.
fn is_time(s: &str) -> bool {
    let clock = if let Some(clock) = s.strip_suffix(['Z', 'z']) {
        clock
    } else if let Some(at) = s.rfind(['+', '-']) {
        let (clock, offset) = s.split_at(at);
        if !is_clock(&offset[1..], 2, 23) {
            return false;
        }
        clock
    } else {
        s
    };
    is_clock(clock, 2, 23) || is_clock(clock, 3, 23)
}

/// `parts` colon-separated two-digit numbers: hours up to `max_hour`, then minutes and seconds up to 59.
fn is_clock(s: &str, parts: usize, max_hour: u32) -> bool {
    let fields: Vec<&str> = s.split(':').collect();
    fields.len() == parts
        && fields.iter().enumerate().all(|(i, f)| {
            let limit = if i == 0 { max_hour } else { 59 };
            f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit()) && f.parse::<u32>().is_ok_and(|n| n <= limit)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsds::catalog::table;
    use serde_json::json;

    const ID: &str = "3a19ff88-4620-4d17-9830-ac1d859eb5d5";

    #[test]
    fn the_nul_character_is_refused_where_it_is() {
        let errors =
            validate_row(table("service").unwrap(), &row(json!({"id": ID, "name": "a\u{0}b", "status": "active"})), "");
        assert_eq!(errors.iter().map(|e| e.pointer.as_str()).collect::<Vec<_>>(), ["/name"], "{errors:?}");
    }

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test row must be an object, got {other}"),
        }
    }

    fn errors(table_name: &str, value: Value) -> Vec<FieldError> {
        let table = table(table_name).expect("table in catalog");
        validate_row(table, &row(value), "")
    }

    fn details(ty: FieldType, value: Value) -> Result<(), String> {
        check_value(ty, &value)
    }

    #[test]
    fn a_complete_row_is_valid() {
        let errs = errors(
            "service",
            json!({
                "id": ID, "name": "Food bank", "status": "active", "organization_id": ID,
                "url": "https://example.org/food", "email": "help@example.org", "minimum_age": 18,
                "assured_date": "2024-02-29", "last_modified": "2024-09-25T14:23:06.5+01:00",
                "description": null, "phones": [], "organization": {}
            }),
        );
        assert_eq!(errs, vec![]);
    }

    #[test]
    fn required_fields_must_be_present_and_not_null() {
        let errs = errors("phone", json!({"id": ID, "number": null}));
        assert_eq!(errs, vec![FieldError::new("/number", "is required")]);
        let errs = errors("service", json!({"id": ID}));
        let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/name", "/status"]);
        assert!(errs.iter().all(|e| e.detail == "is required"));
    }

    #[test]
    fn pointers_start_from_the_base_pointer() {
        let table = table("phone").expect("phone");
        let errs = validate_row(table, &row(json!({"id": "nope"})), "/phones/0");
        assert_eq!(
            errs,
            vec![FieldError::new("/phones/0/id", "must be a UUID"), FieldError::new("/phones/0/number", "is required")]
        );
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(pointer_join("/a", "b/c~d"), "/a/b~1c~0d");
        assert_eq!(pointer_join("", "x"), "/x");
        let errs = errors("phone", json!({"id": ID, "number": "1", "odd/key~": 1}));
        assert_eq!(errs, vec![FieldError::new("/odd~1key~0", "unknown field")]);
    }

    #[test]
    fn unknown_fields_are_reported_but_nested_keys_are_not() {
        let errs = errors("phone", json!({"id": ID, "nubmer": "555", "number": "555", "languages": []}));
        assert_eq!(errs, vec![FieldError::new("/nubmer", "unknown field")]);
    }

    #[test]
    fn null_is_fine_for_optional_fields() {
        assert_eq!(errors("phone", json!({"id": ID, "number": "1", "extension": null, "service_id": null})), vec![]);
    }

    #[test]
    fn uuids_must_be_hyphenated() {
        assert!(parse_uuid(ID).is_some());
        assert!(parse_uuid("3A19FF88-4620-4D17-9830-AC1D859EB5D5").is_some());
        assert!(parse_uuid("00000000-0000-0000-0000-000000000000").is_some());
        assert!(parse_uuid("3a19ff8846204d179830ac1d859eb5d5").is_none());
        assert!(parse_uuid("{3a19ff88-4620-4d17-9830-ac1d859eb5d5}").is_none());
        assert!(parse_uuid("3a19ff88-4620-4d17-9830-ac1d859eb5dz").is_none());
        assert_eq!(details(FieldType::Uuid, json!(42)), Err("must be a UUID".into()));
    }

    #[test]
    fn text_must_be_a_string() {
        assert_eq!(details(FieldType::Text, json!("")), Ok(()));
        assert_eq!(details(FieldType::Text, json!(1)), Err("must be a string".into()));
        assert_eq!(details(FieldType::Text, json!(["a"])), Err("must be a string".into()));
    }

    #[test]
    fn uris_must_be_absolute() {
        for ok in ["https://example.org/a?b=c", "mailto:a@example.org", "urn:isbn:0451450523", "git+ssh://host/x"] {
            assert_eq!(details(FieldType::Uri, json!(ok)), Ok(()), "{ok}");
        }
        for bad in ["example.org", "/relative", "1http://x", "https:", "http://exa mple.org", ":x"] {
            assert_eq!(details(FieldType::Uri, json!(bad)), Err("must be an absolute URI".into()), "{bad}");
        }
    }

    #[test]
    fn emails_need_one_at_and_a_dotted_domain() {
        assert_eq!(details(FieldType::Email, json!("a.b@example.org")), Ok(()));
        for bad in ["example.org", "@example.org", "a@", "a@localhost", "a@b@example.org", "a@example.", "a b@x.org"] {
            assert_eq!(details(FieldType::Email, json!(bad)), Err("must be an email address".into()), "{bad}");
        }
    }

    #[test]
    fn numbers_and_integers() {
        assert_eq!(details(FieldType::Number, json!(1)), Ok(()));
        assert_eq!(details(FieldType::Number, json!(-1.5)), Ok(()));
        assert_eq!(details(FieldType::Number, json!("1")), Err("must be a number".into()));
        assert_eq!(details(FieldType::Integer, json!(7)), Ok(()));
        assert_eq!(details(FieldType::Integer, json!(u64::MAX)), Ok(()));
        assert_eq!(details(FieldType::Integer, json!(3.0)), Ok(()));
        assert_eq!(details(FieldType::Integer, json!(3.5)), Err("must be an integer".into()));
        assert_eq!(details(FieldType::Integer, json!("3")), Err("must be an integer".into()));
    }

    #[test]
    fn booleans() {
        assert_eq!(details(FieldType::Boolean, json!(false)), Ok(()));
        assert_eq!(details(FieldType::Boolean, json!("true")), Err("must be true or false".into()));
    }

    #[test]
    fn dates_must_be_real_calendar_days() {
        assert_eq!(details(FieldType::Date, json!("2024-02-29")), Ok(()));
        for bad in ["2023-02-29", "2024-13-01", "2024-1-01", "24-01-01", "2024-01-01T00:00:00Z", "+2024-01-01"] {
            assert_eq!(details(FieldType::Date, json!(bad)), Err("must be a date (YYYY-MM-DD)".into()), "{bad}");
        }
    }

    #[test]
    fn date_times_follow_rfc_3339() {
        for ok in ["2024-09-25T14:23:06Z", "2024-09-25T14:23:06.5+01:00"] {
            assert_eq!(details(FieldType::DateTime, json!(ok)), Ok(()), "{ok}");
        }
        for bad in ["2024-09-25", "2024-09-25T14:23:06", "25/09/2024 14:23"] {
            assert_eq!(details(FieldType::DateTime, json!(bad)), Err("must be an RFC 3339 date-time".into()), "{bad}");
        }
    }

    #[test]
    fn times_take_optional_seconds_and_offset() {
        for ok in ["09:00", "10:00:00", "23:59:59", "09:00Z", "09:00-05:00", "17:30:00+01:00"] {
            assert_eq!(details(FieldType::Time, json!(ok)), Ok(()), "{ok}");
        }
        for bad in ["9:00", "24:00", "09:60", "09:00:60", "09", "09:00+5", "09:00 Z", "09:00:00.5", "nine"] {
            assert!(details(FieldType::Time, json!(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn enums_list_the_allowed_values() {
        let errs = errors("service", json!({"id": ID, "name": "x", "status": "open"}));
        assert_eq!(
            errs,
            vec![FieldError::new("/status", "must be one of: active, inactive, defunct, temporarily closed")]
        );
        assert!(errors("service", json!({"id": ID, "name": "x", "status": "temporarily closed"})).is_empty());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errs = errors(
            "schedule",
            json!({"id": ID, "valid_from": "soon", "opens_at": "9am", "freq": "DAILY", "count": "2", "colour": "red"}),
        );
        let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/valid_from", "/count", "/freq", "/opens_at", "/colour"]);
    }

    /// Checks the catalog against the official HSDS JSON schemas, when they are available: every property
    /// is in the catalog with the same type (or as a nested key of the same kind), every catalog field is
    /// in the schema, and every required property is required (or, for nested objects, present).
    #[test]
    fn catalog_matches_official_schemas() {
        use crate::hsds::catalog::NestedKind;
        use std::path::PathBuf;

        let dir = std::env::var_os("HSDS_SCHEMA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/hsds/schema"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipping: no HSDS schema folder at {}", dir.display());
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no schemas in {}", dir.display());

        let mut problems = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).expect("readable schema");
            let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
            let name = schema["name"].as_str().expect("schema has a name");
            let Some(table) = table(name) else {
                problems.push(format!("{name}: no catalog table"));
                continue;
            };
            let properties = schema["properties"].as_object().expect("schema has properties");
            for (key, property) in properties {
                let nested_target = |r: &Value| r.as_str().map(|s| s.trim_end_matches(".json").to_owned());
                if property["type"] == "array" {
                    let target = nested_target(&property["items"]["$ref"]);
                    match table.nested(key) {
                        Some(n) if n.kind == NestedKind::Many && Some(n.table.to_owned()) == target => {}
                        other => problems.push(format!("{name}.{key}: array of {target:?}, catalog has {other:?}")),
                    }
                    continue;
                }
                if property.get("$ref").is_some() {
                    let target = nested_target(&property["$ref"]);
                    match table.nested(key) {
                        Some(n) if n.kind == NestedKind::One && Some(n.table.to_owned()) == target => {}
                        other => problems.push(format!("{name}.{key}: object {target:?}, catalog has {other:?}")),
                    }
                    continue;
                }
                let Some(field) = table.field(key) else {
                    problems.push(format!("{name}.{key}: scalar property missing from catalog"));
                    continue;
                };
                let expected = schema_family(property);
                if expected != catalog_family(field.ty) {
                    problems.push(format!("{name}.{key}: schema says {expected}, catalog says {:?}", field.ty));
                }
                if let (Some(values), FieldType::Enum(allowed)) = (property.get("enum"), field.ty) {
                    let values: Vec<&str> = values.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if values != allowed {
                        problems.push(format!("{name}.{key}: enum {values:?}, catalog has {allowed:?}"));
                    }
                }
            }
            for field in table.fields {
                if !properties.contains_key(field.name) {
                    problems.push(format!("{name}.{}: catalog field not in schema", field.name));
                }
            }
            for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let ok = match table.field(required) {
                    Some(field) => field.required,
                    // A required nested object (service_capacity.unit) cannot be flagged on a flat field.
                    None => table.nested(required).is_some(),
                };
                if !ok {
                    problems.push(format!("{name}.{required}: required in schema, not in catalog"));
                }
            }
        }
        assert!(problems.is_empty(), "catalog disagrees with the schemas:\n{}", problems.join("\n"));
    }

    /// The type family a schema property describes, read the way the HSDS schemas use `format`,
    /// `datapackage_type` and `enum`.
    fn schema_family(property: &Value) -> &'static str {
        let format = property["format"].as_str();
        let datapackage = property["datapackage_type"].as_str();
        if property.get("enum").is_some() {
            return "enum";
        }
        match (property["type"].as_str(), format, datapackage) {
            (_, Some("uuid"), _) => "uuid",
            (_, Some("uri"), _) => "uri",
            (_, Some("email"), _) => "email",
            (_, Some("date-time"), _) | (_, _, Some("datetime")) => "datetime",
            (_, _, Some("date")) => "date",
            (_, _, Some("time")) => "time",
            (Some("number"), _, _) => "number",
            (Some("integer"), _, _) => "integer",
            (Some("boolean"), _, _) => "boolean",
            _ => "text",
        }
    }

    fn catalog_family(ty: FieldType) -> &'static str {
        match ty {
            FieldType::Uuid => "uuid",
            FieldType::Text => "text",
            FieldType::Uri => "uri",
            FieldType::Email => "email",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Time => "time",
            FieldType::Enum(_) => "enum",
        }
    }
}

/// Properties over arbitrary JSON: validation never panics, and every error points into the row or names
/// a required field that is missing.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::hsds::strategies::{any_table, json_object, valid_row};

    /// Whether `error` points at a value of `input`, or says that a required field of `table` is absent
    /// (or null) where the pointer's parent is `input` itself.
    fn located(table: &Table, input: &Value, error: &FieldError) -> bool {
        if input.pointer(&error.pointer).is_some() {
            return true;
        }
        let name = error.pointer.strip_prefix('/').unwrap_or_default().replace("~1", "/").replace("~0", "~");
        error.detail == "is required" && table.field(&name).is_some_and(|f| f.required)
    }

    proptest! {
        #[test]
        fn every_error_points_into_the_row_or_names_a_missing_required_field(
            table in any_table(),
            row in json_object(),
        ) {
            let errors = validate_row(table, &row, "");
            let input = Value::Object(row.clone());
            for error in &errors {
                prop_assert!(located(table, &input, error), "{error} in {input}");
            }
            // One error for each unknown key and each bad value, none for nested keys.
            for (key, value) in &row {
                let expected = match table.field(key) {
                    Some(field) if value.is_null() => field.required,
                    Some(field) => check_value(field.ty, value).is_err(),
                    None => !table.nested.iter().any(|n| n.key == key),
                };
                let at = pointer_join("", key);
                prop_assert_eq!(errors.iter().filter(|e| e.pointer == at).count(), usize::from(expected), "key {:?}", key);
            }
        }

        #[test]
        fn a_base_pointer_only_prefixes_the_pointers(table in any_table(), row in json_object(), base in "(/[a-z0-9~]{1,5}){0,3}") {
            let bare = validate_row(table, &row, "");
            let based = validate_row(table, &row, &base);
            prop_assert_eq!(bare.len(), based.len());
            for (a, b) in bare.iter().zip(&based) {
                prop_assert_eq!(format!("{base}{}", a.pointer), b.pointer.clone());
                prop_assert_eq!(&a.detail, &b.detail);
            }
        }

        #[test]
        fn rows_of_valid_values_are_valid(row in any_table().prop_flat_map(|t| (Just(t), valid_row(t)))) {
            let (table, row) = row;
            prop_assert_eq!(validate_row(table, &row, ""), vec![]);
        }

        #[test]
        fn a_wrong_type_is_reported_at_its_field(
            row in any_table().prop_flat_map(|t| (Just(t), valid_row(t), 0..t.fields.len())),
        ) {
            let (table, mut row, index): (&Table, Map<String, Value>, usize) = row;
            let field = &table.fields[index];
            // An object is never a valid scalar.
            row.insert(field.name.to_owned(), serde_json::json!({"not": "a scalar"}));
            let errors = validate_row(table, &row, "");
            prop_assert_eq!(errors.len(), 1);
            prop_assert_eq!(&errors[0].pointer, &pointer_join("", field.name));
        }
    }
}
