//! JSON Schemas of HSDS objects, generated from the catalog: used by `GET /event-types`, the OpenAPI
//! document and clients that want to validate what hsda sends.

use serde_json::{Map, Value, json};

use super::catalog::{FieldType, NestedKind, Table, table};

/// The schema of a scalar field type.
pub fn field_schema(ty: FieldType) -> Value {
    match ty {
        FieldType::Uuid => json!({ "type": "string", "format": "uuid" }),
        FieldType::Text => json!({ "type": "string" }),
        FieldType::Uri => json!({ "type": "string", "format": "uri" }),
        FieldType::Email => json!({ "type": "string", "format": "email" }),
        FieldType::Number => json!({ "type": "number" }),
        FieldType::Integer => json!({ "type": "integer" }),
        FieldType::Boolean => json!({ "type": "boolean" }),
        FieldType::Date => json!({ "type": "string", "format": "date" }),
        FieldType::DateTime => json!({ "type": "string", "format": "date-time" }),
        FieldType::Time => json!({ "type": "string", "pattern": "^\\d{2}:\\d{2}(:\\d{2})?" }),
        FieldType::Enum(values) => json!({ "type": "string", "enum": values }),
    }
}

/// The schema of a row of `table` with its nested objects down to `depth` levels.
pub fn object_schema(t: &Table, depth: usize) -> Value {
    let mut properties = Map::new();
    for f in t.fields {
        let mut s = field_schema(f.ty);
        if !f.required {
            // Optional fields may be sent as null.
            if let Some(t) = s.get("type").cloned() {
                s["type"] = json!([t, "null"]);
            }
        }
        properties.insert(f.name.to_string(), s);
    }
    if depth > 0 {
        for n in t.nested {
            let Some(child) = table(n.table) else { continue };
            let child_schema = object_schema(child, if n.kind == NestedKind::One { 0 } else { depth - 1 });
            let s = match n.kind {
                NestedKind::Many => json!({ "type": "array", "items": child_schema }),
                NestedKind::One => child_schema,
            };
            properties.insert(n.key.to_string(), s);
        }
    }
    let required: Vec<&str> = t.fields.iter().filter(|f| f.required).map(|f| f.name).collect();
    json!({ "type": "object", "title": t.name, "properties": properties, "required": required })
}

/// The tombstone a `*.deleted` event carries.
pub fn tombstone_schema() -> Value {
    json!({
        "type": "object",
        "properties": { "id": { "type": "string" }, "deleted": { "const": true } },
        "required": ["id", "deleted"]
    })
}
