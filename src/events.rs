//! The event catalog: which event types exist and what their payloads look like. An event type is
//! `{table}.{created|updated|deleted}` for every HSDS table; the payload is the compiled object (a
//! tombstone for deletions).

use serde_json::{Value, json};

use crate::hsds::catalog::{FieldType, TABLES, Table, table};
use crate::hsds::schema::{object_schema, tombstone_schema};

pub const ACTIONS: [&str; 3] = ["created", "updated", "deleted"];

/// Events about subscriptions themselves, delivered only to subscriptions of the same tenant.
pub const OPERATIONAL: [(&str, &str); 4] = [
    ("webhook.ping", "Sent once to a new subscription's target (not written to the event log)."),
    ("webhook.failing", "A subscription's deliveries started failing."),
    ("webhook.recovered", "A failing subscription's target succeeded again."),
    ("webhook.disabled", "A subscription was disabled (410 Gone from its target, or failing for too long)."),
];

/// Messages hsda sends that are not events of the log and cannot be subscribed to: they arrive because of how
/// a subscription is set up (a `schedule`, `verify: true`).
pub const SYSTEM_MESSAGES: [(&str, &str); 2] = [
    (
        "webhook.digest",
        "A scheduled subscription's digest: every wanted event since the previous digest, sent instead of the \
         events one by one (none when nothing changed). Not subscribable: it follows from `schedule`.",
    ),
    (
        "webhook.verification",
        "The challenge sent to a `verify: true` subscription's target before anything else; the target answers \
         2xx with the JSON body {\"challenge\": \"<same>\"}. Not subscribable: it follows from `verify`.",
    ),
];

/// Every HSDS event type name, in catalog order (operational `webhook.*` types are in [`OPERATIONAL`]).
pub fn event_types() -> Vec<String> {
    TABLES.iter().flat_map(|t| ACTIONS.iter().map(move |a| format!("{}.{a}", t.name))).collect()
}

/// A made-up object of `table` as an `action` event of it carries, valid against that event type's payload
/// schema (every required field, a `sample` marker): what `POST /webhooks/{id}/test` sends when not given a
/// real object. A deletion's is a tombstone.
pub fn sample_object(table: &Table, action: &str, id: &str, now: &str) -> Value {
    if action == "deleted" {
        return json!({ "id": id, "deleted": true, "sample": true });
    }
    let mut object = serde_json::Map::new();
    for field in table.fields.iter().filter(|f| f.required) {
        let value = match field.ty {
            FieldType::Uuid if field.name == "id" => json!(id),
            FieldType::Uuid => json!(uuid::Uuid::new_v4().to_string()),
            FieldType::Text if field.name == "name" => json!(format!("Sample {}", table.name)),
            FieldType::Text => json!(format!("Sample {}", field.name.replace('_', " "))),
            FieldType::Uri => json!("https://example.org/sample"),
            FieldType::Email => json!("sample@example.org"),
            FieldType::Number | FieldType::Integer => json!(0),
            FieldType::Boolean => json!(false),
            FieldType::Date => json!(now.get(..10).unwrap_or("2024-01-01")),
            FieldType::DateTime => json!(now),
            FieldType::Time => json!("09:00"),
            FieldType::Enum(values) => json!(values.first().copied().unwrap_or_default()),
        };
        object.insert(field.name.to_string(), value);
    }
    object.insert("sample".into(), json!(true));
    Value::Object(object)
}

/// Whether `pattern` names a known type, `table.*`, or `*`.
pub fn is_known_pattern(pattern: &str) -> bool {
    if pattern == "*" || pattern == "webhook.*" || OPERATIONAL.iter().any(|(name, _)| *name == pattern) {
        return true;
    }
    match pattern.split_once('.') {
        Some((table, "*")) => TABLES.iter().any(|t| t.name == table),
        Some((table, action)) => TABLES.iter().any(|t| t.name == table) && ACTIONS.contains(&action),
        None => false,
    }
}

/// The schema of a `created`/`updated` event's `data`: the compiled object, and for the roots that hold more
/// than their own rows (`store::compile`), that too: an organization's `services`, a service_at_location's
/// `service`.
fn payload_schema(t: &Table) -> Value {
    let mut schema = object_schema(t, 2);
    let service = || table("service").map(|s| object_schema(s, 1));
    let extra = match t.name {
        "organization" => service().map(|s| ("services", json!({ "type": "array", "items": s }))),
        "service_at_location" => service().map(|s| ("service", s)),
        _ => None,
    };
    if let (Some((key, extra)), Some(properties)) = (extra, schema["properties"].as_object_mut()) {
        properties.insert(key.to_string(), extra);
    }
    schema
}

/// The catalog served by `GET /event-types`: each type with a description and its payload schema.
pub fn catalog() -> Value {
    let mut out = Vec::new();
    for t in TABLES {
        for action in ACTIONS {
            let schema = if action == "deleted" { tombstone_schema() } else { payload_schema(t) };
            let description = match action {
                "created" => format!("{} was created; data is the new object.", a_or_an(t.name)),
                "updated" if t.is_root() => format!(
                    "{} or something it embeds changed; data is the whole document right after the change.",
                    a_or_an(t.name)
                ),
                "updated" => format!("{} changed; data is the object right after the change.", a_or_an(t.name)),
                _ => format!("{} was deleted; data is a tombstone with its id.", a_or_an(t.name)),
            };
            out.push(json!({
                "name": format!("{}.{action}", t.name),
                "object": t.name,
                "description": description,
                "schema": schema,
                "thin_schema": thin_schema(),
            }));
        }
    }
    for (name, description) in OPERATIONAL {
        let schema = if name == "webhook.ping" { ping_schema() } else { operational_schema() };
        out.push(json!({
            "name": name,
            "object": "webhook",
            "description": description,
            "schema": schema,
            "thin_schema": thin_schema(),
        }));
    }
    for entry in &mut out {
        entry["subscribable"] = json!(true);
    }
    for (name, description) in SYSTEM_MESSAGES {
        out.push(json!({
            "name": name,
            "object": "webhook",
            "description": description,
            "subscribable": false,
            "schema": system_message_data_schema(name),
        }));
    }
    json!({ "event_types": out })
}

/// The `data` of a [`SYSTEM_MESSAGES`] entry.
pub fn system_message_data_schema(name: &str) -> Value {
    match name {
        "webhook.digest" => json!({
            "type": "object",
            "properties": {
                "since": { "type": "string", "format": "date-time", "description": "Where the previous digest \
                    ended (or the schedule began); earlier when an event in it was written before then and committed \
                    after (its timestamp is when its write began): every event's timestamp is at or after since." },
                "until": { "type": "string", "format": "date-time", "description": "When this digest was made; \
                    events committed later are in the next one." },
                "events": {
                    "type": "array",
                    "description": "The events covered, oldest first, each as it would have been delivered alone \
                        (id, sequence, type, timestamp, data; data full or thin as the subscription asks).",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": { "type": "string" }, "sequence": { "type": "integer" }, "type": { "type": "string" },
                            "timestamp": { "type": "string", "format": "date-time" }, "data": { "type": "object" }
                        },
                        "required": ["id", "sequence", "type", "timestamp", "data"]
                    }
                }
            },
            "required": ["since", "until", "events"]
        }),
        _ => json!({
            "type": "object",
            "properties": {
                "id": { "type": "string", "description": "The subscription's id." },
                "url": { "type": "string" },
                "challenge": { "type": "string", "description": "Also at the top level of the body." }
            },
            "required": ["id", "url", "challenge"]
        }),
    }
}

/// "An accessibility", "A service", "A unit": the article a table's name takes (the one `u` among them
/// sounds like "you").
fn a_or_an(name: &str) -> String {
    let article = if name.starts_with(['a', 'e', 'i', 'o']) { "An" } else { "A" };
    format!("{article} {name}")
}

/// The `data` of any event delivered to a `payload: thin` subscription: where to read the object.
pub fn thin_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "object": { "type": "string" }, "id": { "type": "string" },
            "url": { "type": "string", "description": "Where to GET the object now." },
            "last_modified": { "type": "string", "format": "date-time", "description": "When the event occurred." }
        },
        "required": ["object", "id", "url", "last_modified"],
        "additionalProperties": false
    })
}

/// The `data` of a `webhook.ping`: the subscription it greets.
fn ping_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": { "type": "string", "description": "The subscription's id." }, "url": { "type": "string" },
            "events": { "type": "array", "items": { "type": "string" } }, "message": { "type": "string" },
            "sample": { "type": "boolean", "description": "Present (true) on a test ping." }
        },
        "required": ["id", "url", "events"]
    })
}

/// The payload of operational events: the subscription's id, target, status and latest error.
pub fn operational_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": { "type": "string" }, "tenant": { "type": "string", "description": "The tenant that owns the subscription." },
            "url": { "type": "string" }, "status": { "type": "string" },
            "disabled_reason": { "type": ["string", "null"] }, "consecutive_failures": { "type": "integer" },
            "last_error": { "type": ["string", "null"] }
        },
        "required": ["id"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_samples_are_valid_payloads_of_their_event_types() {
        for table in TABLES {
            for action in ACTIONS {
                let schema = if action == "deleted" { tombstone_schema() } else { object_schema(table, 2) };
                let validator = jsonschema::validator_for(&schema).expect("the payload schema compiles");
                let sample =
                    sample_object(table, action, "0b7c3b8e-6f3e-4c1a-9a51-2b0f0e1d2c3a", "2024-05-01T12:00:00Z");
                let errors: Vec<String> = validator.iter_errors(&sample).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}.{action}: {errors:?} in {sample}", table.name);
            }
        }
    }

    #[test]
    fn patterns_are_checked_against_the_catalog() {
        assert!(is_known_pattern("*"));
        assert!(is_known_pattern("service.*"));
        assert!(is_known_pattern("phone.deleted"));
        assert!(!is_known_pattern("servce.*"));
        assert!(!is_known_pattern("service.renamed"));
        assert!(!is_known_pattern("service"));
        assert!(is_known_pattern("webhook.disabled"));
        assert!(is_known_pattern("webhook.*"));
        assert_eq!(event_types().len(), 72);
    }

    #[test]
    fn descriptions_read_as_english() {
        let catalog = catalog();
        let description = |name: &str| {
            let types = catalog["event_types"].as_array().unwrap();
            types.iter().find(|t| t["name"] == name).unwrap()["description"].as_str().unwrap().to_string()
        };
        assert!(description("accessibility.created").starts_with("An accessibility was"));
        assert!(description("organization.deleted").starts_with("An organization was"));
        assert!(description("unit.updated").starts_with("A unit changed"));
        assert!(description("service.updated").starts_with("A service or something it embeds"));
    }
}
