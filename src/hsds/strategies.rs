//! proptest strategies shared by the property tests of the domain and bulk modules: arbitrary JSON whose
//! keys and strings are often the catalog's own (field names, enum values, UUIDs, dates), and values that
//! are valid for a catalog field type.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

use super::catalog::{FieldType, TABLES, Table};

/// Any catalog table.
pub fn any_table() -> impl Strategy<Value = &'static Table> {
    (0..TABLES.len()).prop_map(|i| &TABLES[i])
}

/// Every field name and nested key of the catalog, so that generated objects hit real fields often.
fn catalog_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> =
        TABLES.iter().flat_map(|t| t.fields.iter().map(|f| f.name).chain(t.nested.iter().map(|n| n.key))).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Every enum value of the catalog.
fn enum_values() -> Vec<&'static str> {
    let mut values: Vec<&'static str> = TABLES
        .iter()
        .flat_map(|t| t.fields.iter())
        .filter_map(|f| match f.ty {
            FieldType::Enum(values) => Some(values.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// An object key: a catalog field or nested key, a plain name, one that needs escaping in a JSON pointer
/// (`~`, `/`), the empty key, or any string.
pub fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(catalog_keys()).prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
        1 => "[a~/0-1]{0,4}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// A string that is often almost or exactly what some field type wants.
pub fn plausible_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        "[0-9a-fA-Z{}-]{30,40}",
        "[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?",
        "[0-9]{1,2}:[0-9]{2}(:[0-9]{2})?(Z|z|[+-][0-9]{1,2}(:[0-9]{2})?)?",
        "[a-z+.-]{0,6}:[a-z/.]{0,10}( x)?",
        "[a-z.@ ]{0,6}@[a-z.@]{0,10}",
        proptest::sample::select(enum_values()).prop_map(str::to_owned),
    ]
    .boxed()
}

/// A JSON number: integers of either sign and width, and finite floats.
pub fn json_number() -> BoxedStrategy<Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
        (-1000i64..1000).prop_map(|n| Number::from_f64(n as f64).unwrap_or_else(|| Number::from(n))),
    ]
    .boxed()
}

/// A JSON scalar.
pub fn json_scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number().prop_map(Value::Number),
        plausible_string().prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels deep.
pub fn json_value() -> BoxedStrategy<Value> {
    json_scalar()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                btree_map(json_key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Any JSON object, nested a few levels deep.
pub fn json_object() -> BoxedStrategy<Map<String, Value>> {
    btree_map(json_key(), json_value(), 0..8).prop_map(|m| m.into_iter().collect()).boxed()
}

/// A value that `validate::check_value` accepts for `ty`.
pub fn valid_value(ty: FieldType) -> BoxedStrategy<Value> {
    match ty {
        FieldType::Uuid => any::<u128>().prop_map(|n| Value::String(uuid::Uuid::from_u128(n).to_string())).boxed(),
        FieldType::Text => any::<String>().prop_map(Value::String).boxed(),
        FieldType::Uri => "https?://[a-z]{1,10}\\.org/[a-z0-9/]{0,10}".prop_map(Value::String).boxed(),
        FieldType::Email => "[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,4}".prop_map(Value::String).boxed(),
        FieldType::Number => json_number().prop_map(Value::Number).boxed(),
        FieldType::Integer => {
            prop_oneof![any::<i64>().prop_map(Value::from), any::<u64>().prop_map(Value::from)].boxed()
        }
        FieldType::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
        FieldType::Date => (1900i32..2100, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| Value::String(format!("{y:04}-{m:02}-{d:02}")))
            .boxed(),
        FieldType::DateTime => (0i64..4_102_444_800, 0u32..1_000_000)
            .prop_map(|(secs, micros)| {
                let at = chrono::DateTime::from_timestamp(secs, micros * 1000).unwrap_or_default();
                Value::String(at.to_rfc3339())
            })
            .boxed(),
        FieldType::Time => (0u32..24, 0u32..60, proptest::option::of(0u32..60))
            .prop_map(|(h, m, s)| match s {
                Some(s) => Value::String(format!("{h:02}:{m:02}:{s:02}")),
                None => Value::String(format!("{h:02}:{m:02}")),
            })
            .boxed(),
        FieldType::Enum(values) => proptest::sample::select(values).prop_map(|v| Value::String(v.to_owned())).boxed(),
    }
}

/// A row of `table` with every required field and some optional ones, each holding a valid value.
pub fn valid_row(table: &'static Table) -> BoxedStrategy<Map<String, Value>> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = table
        .fields
        .iter()
        .map(|field| {
            let value = valid_value(field.ty).prop_map(move |v| (field.name.to_owned(), v));
            if field.required { value.prop_map(Some).boxed() } else { proptest::option::of(value).boxed() }
        })
        .collect();
    fields.prop_map(|cells| cells.into_iter().flatten().collect()).boxed()
}
