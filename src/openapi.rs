//! hsda's OpenAPI 3.1 document, generated from the catalog: the HSDS read paths and parameters, hsda's
//! writes, the event feed, and every event type under the top-level `webhooks` key.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::hsds::catalog::{TABLES, Table};
use crate::hsds::schema::object_schema;

fn param(name: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

/// The query parameters of a list path, as the OpenAPI document lists them.
pub(crate) fn list_parameters(table: &Table) -> Vec<Value> {
    let mut out = vec![
        param("page", json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}), "Page number, from 1."),
        param("per_page", json!({"type": "integer", "minimum": 1, "maximum": 1000}), "Items per page (default 50)."),
        param(
            "format",
            json!({"type": "string", "enum": ["json", "ndjson"]}),
            "ndjson streams every match, one object per line, without paging.",
        ),
        param(
            "search",
            json!({"type": "string"}),
            "Full-text search over names and descriptions (all words must match). Results come best match first (BM25 on SQLite, ts_rank on PostgreSQL: the words more often, in shorter texts), then by name.",
        ),
        param(
            "modified_after",
            json!({"type": "string", "format": "date-time"}),
            "Only items changed at or after this time: when this hsda stored the latest change to the document or anything it embeds (a service's last_modified is that time: hsda keeps it; neither a writer's nor an imported package's value is kept). Under concurrent writers these times follow the order the writes began, not the order they committed: to miss nothing, poll with some overlap, or follow GET /events, whose sequence is gap-free.",
        ),
    ];
    if table.is_root() {
        out.push(param(
            "organization_id",
            json!({"type": "string", "format": "uuid"}),
            "Only items of this organization.",
        ));
        out.push(param(
            "taxonomy_term_id",
            json!({"type": "string", "format": "uuid"}),
            "Only items tagged with this taxonomy term.",
        ));
        out.push(param(
            "taxonomy_id",
            json!({"type": "string", "format": "uuid"}),
            "Only items tagged with a term of this taxonomy.",
        ));
        out.push(param("full", json!({"type": "boolean"}), "Fully nested documents instead of list items."));
    }
    match table.name {
        "service" => {
            out.push(param("minimal", json!({"type": "boolean"}), "Only id and last_modified of each service; all of them in one page (up to 100 000) unless per_page (at most 1000) is given."))
        }
        "organization" => out.push(param("full_service", json!({"type": "boolean"}), "Nest each service fully.")),
        "service_at_location" => {
            out.push(param("postcode", json!({"type": "string"}), "Only locations with this postcode."));
            out.push(param(
                "proximity",
                json!({"type": "number"}),
                "With postcode: within this many metres of the postcode's centroid.",
            ));
        }
        "taxonomy_term" => {
            out.push(param("taxonomy_id", json!({"type": "string", "format": "uuid"}), "Only terms of this taxonomy."));
            out.push(param("top_only", json!({"type": "boolean"}), "Only terms without a parent."));
            out.push(param("parent_id", json!({"type": "string", "format": "uuid"}), "Only children of this term."));
        }
        _ => {}
    }
    out
}

fn problem_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

/// The `data` of an HSDS event as delivered: the object (a tombstone for a deletion) to a full-payload
/// subscription, where to read it to a `payload: thin` one. Exactly one form matches any payload: a thin one
/// has no other fields, and no HSDS table has an `object` field, the thin form's mark.
fn event_data_schema(object: &str, action: &str) -> Value {
    let full = if action == "deleted" {
        crate::hsds::schema::tombstone_schema()
    } else {
        json!({ "$ref": format!("#/components/schemas/{object}"), "not": { "required": ["object"] } })
    };
    let mut thin = crate::events::thin_schema();
    thin["properties"]["object"] = json!({ "const": object });
    json!({ "oneOf": [full, thin] })
}

/// The `data` of an operational event as delivered: about the subscription, or where to read it (thin). The
/// subscription's form requires only its `id`, so a thin one matches it too: any of the two, not one of them.
fn operational_data_schema() -> Value {
    let mut thin = crate::events::thin_schema();
    thin["properties"]["object"] = json!({ "const": "webhook" });
    json!({ "anyOf": [crate::events::operational_schema(), thin] })
}

/// The whole document; `server` is the base URL clients reached us at.
pub fn document(server: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Page".into(),
        json!({ "type": "object", "required": ["total_items", "total_pages", "page_number", "size", "first_page", "last_page", "empty", "contents"],
            "properties": { "total_items": {"type": "integer"}, "total_pages": {"type": "integer"}, "page_number": {"type": "integer"},
            "size": {"type": "integer"}, "first_page": {"type": "boolean"}, "last_page": {"type": "boolean"}, "empty": {"type": "boolean"},
            "contents": {"type": "array", "items": {}} } }),
    );
    schemas.insert(
        "Problem".into(),
        json!({ "type": "object", "description": "RFC 9457 problem details.", "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "properties": {"pointer": {"type": "string"}, "parameter": {"type": "string"}, "detail": {"type": "string"}}}},
            "referenced_by": {"type": "array", "items": {"type": "string"}, "description": "A refused delete (409): the rows that still refer to what was to be deleted, as `kind id`."} } }),
    );
    schemas.insert(
        "Event".into(),
        json!({ "type": "object", "required": ["id", "sequence", "type", "occurred_at", "object", "object_id", "origin", "data"],
            "description": "An event of the log. In an unfiltered `GET /events`, another tenant's operational `webhook.*` event appears as a stand-in: `type` `webhook.redacted`, its `sequence`, `object` `webhook`, and null for every other field.",
            "properties": {
            "id": {"type": ["string", "null"], "description": "evt_...; null only in a webhook.redacted stand-in"}, "sequence": {"type": "integer"}, "type": {"type": "string"},
            "occurred_at": {"type": ["string", "null"], "format": "date-time"},
            "object": {"type": "string"}, "object_id": {"type": ["string", "null"]}, "origin": {"type": ["string", "null"]},
            "changed_inside_only": {"type": ["boolean", "null"], "description": "true on a document's `updated` event that a change to a row inside it caused (a new phone of the service), the document's own row unchanged: its `data` shows the document as it now is, but nothing of its own fields changed. A follower takes no own fields from such an event."},
            "data": {"type": ["object", "null"]} } }),
    );
    schemas.insert(
        "service_minimal".into(),
        json!({ "type": "object", "description": "A service as `minimal=true` lists it.",
            "properties": { "id": {"type": "string", "format": "uuid"}, "last_modified": {"type": "string", "format": "date-time"} },
            "required": ["id", "last_modified"], "additionalProperties": false }),
    );
    for t in TABLES {
        let name = t.name.to_string();
        schemas.insert(name.clone(), object_schema(t, 2));
        let item_ref = json!({ "$ref": format!("#/components/schemas/{name}") });
        // `minimal=true` lists services as `{id, last_modified}`, which the full schema (name, status
        // required) refuses: a list item is one or the other.
        let list_item = match t.name {
            "service" => json!({ "oneOf": [item_ref, {"$ref": "#/components/schemas/service_minimal"}] }),
            _ => item_ref.clone(),
        };
        let page = json!({ "allOf": [ {"$ref": "#/components/schemas/Page"}, {"type": "object", "properties": {"contents": {"type": "array", "items": list_item}}} ] });
        let list_op = |method: &str| {
            let mut op = json!({
                "operationId": format!("{method}{}", t.plural),
                "summary": format!("List or search {}", t.plural),
                "tags": [t.name],
                "parameters": list_parameters(t),
                "responses": {
                    "200": { "description": "A page of results (or application/x-ndjson with format=ndjson).",
                        "content": { "application/json": { "schema": page }, "application/x-ndjson": { "schema": list_item } } },
                    "400": problem_response("A parameter is invalid.")
                }
            });
            if method == "search" {
                // The same parameters as a JSON object; where both name one, the query string wins.
                let properties: Map<String, Value> = list_parameters(t)
                    .iter()
                    .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["schema"].clone())))
                    .collect();
                op["requestBody"] = json!({ "required": false, "description": "Search parameters as a JSON object (the query string wins where both name one).",
                    "content": { "application/json": { "schema": { "type": "object", "properties": properties } } } });
            }
            op
        };
        paths.insert(format!("/{}", t.plural), json!({ "get": list_op("list"), "post": list_op("search") }));
        let id_param =
            json!({ "name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"} });
        let if_match = json!({ "name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Write only if the row exists with one of these ETags (a list, or *; strong comparison: a W/ tag never matches)." });
        let if_none_match = json!({ "name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Reads: 304 when the ETag is one of these (weak comparison; * for any). Writes: refused (412) when the row exists with one of these ETags, or at all for * (PUT with * creates only)." });
        let write_responses = |ok: &str| {
            json!({
                ok: { "description": "The stored object.", "content": { "application/json": { "schema": item_ref } } },
                "401": problem_response("No valid API key."),
                "403": problem_response("The key's scope does not allow writes."),
                "412": problem_response("An If-Match or If-None-Match precondition failed."),
                "422": problem_response("The body breaks HSDS rules; errors[].pointer names each field.")
            })
        };
        let mut put_responses = write_responses("200");
        put_responses["201"] = put_responses["200"].clone();
        paths.insert(
            format!("/{}/{{id}}", t.plural),
            json!({
                "parameters": [id_param],
                "get": { "operationId": format!("get_{}", t.name), "tags": [t.name], "summary": format!("One {}", t.name),
                    "parameters": if t.name == "organization" {
                        json!([if_none_match.clone(), param("full_service", json!({"type": "boolean"}), "Embed each service whole, not only its summary.")])
                    } else {
                        json!([if_none_match.clone()])
                    },
                    "responses": { "200": { "description": "The object.", "headers": {"ETag": {"schema": {"type": "string"}}}, "content": { "application/json": { "schema": item_ref } } },
                                   "304": { "description": "Not modified: If-None-Match named the current ETag." },
                                   "404": problem_response("No such object.") } },
                "put": { "operationId": format!("put_{}", t.name), "tags": [t.name], "summary": format!("Create or replace a {} (nested children included)", t.name),
                    "description": "Nested child arrays (phones, schedules, ...) replace that set of children when present and leave it alone when absent. An organization's `services` are upserted but never deleted for being left out. A related object (`organization`, `program`, a capacity's `unit`, an attribute's `taxonomy_term`, a link's `location` and `service`) fills in the field holding its id and creates that row when it does not exist yet; an existing one is never edited this way. A service's `last_modified` is kept by hsda; a value sent is not kept.",
                    "security": [{"bearer": []}], "parameters": [if_match.clone(), if_none_match.clone()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": item_ref } } },
                    "responses": put_responses },
                "patch": { "operationId": format!("patch_{}", t.name), "tags": [t.name], "summary": format!("Change a {} with a JSON merge patch (RFC 7386)", t.name),
                    "description": "Merged into the document as GET returns it, as it stands when the write commits: concurrent patches each apply to what the one before left. A list of children set to null (`{\"phones\": null}`) removes them all, as `[]` does; a list left out stays. 412 only for the client's own If-Match or If-None-Match.",
                    "security": [{"bearer": []}], "parameters": [if_match.clone(), if_none_match.clone()],
                    "requestBody": { "required": true, "content": { "application/merge-patch+json": { "schema": {"type": "object"} }, "application/json": { "schema": {"type": "object"} } } },
                    "responses": write_responses("200") },
                "delete": { "operationId": format!("delete_{}", t.name), "tags": [t.name], "summary": format!("Delete a {} and the details it owns", t.name),
                    "security": [{"bearer": []}], "parameters": [if_match, if_none_match],
                    "responses": { "204": {"description": "Deleted."}, "404": problem_response("No such object."),
                                   "409": problem_response("Other entities still reference it.") } }
            }),
        );
    }
    paths.insert("/".into(), json!({ "get": { "operationId": "getAPIMetaInformation", "summary": "API metadata",
        "responses": { "200": { "description": "Version, profile and OpenAPI URL.", "content": { "application/json": { "schema": {
            "type": "object", "properties": { "version": {"type": "string"}, "profile": {"type": "string"}, "openapi_url": {"type": "string"} } } } } } } } }));
    paths.insert("/events".into(), json!({ "get": { "operationId": "listEvents", "summary": "The event feed, oldest first",
        "parameters": [ param("after", json!({"type": "integer", "minimum": 0}), "Only events with a greater sequence. A cursor past the newest event (one from another directory, or from before a restore) is a 400 naming the newest sequence."),
                        param("types", json!({"type": "string"}), "Comma-separated types or patterns (service.*, *); may be repeated."),
                        param("limit", json!({"type": "integer", "minimum": 1, "maximum": 1000}), "At most this many (default 100)."),
                        param("wait", json!({"type": "integer", "minimum": 0, "maximum": 30}), "Seconds to wait for a change when there is none after `after` yet (a long poll, default 0): the answer comes as soon as one commits (one committed through another process on the same PostgreSQL database: within a second), or empty when the time is up. A cursor past the newest event is a 400 at once. Followers of this directory ask with it.") ],
        "description": "Sequence numbers have no gaps. An operational `webhook.*` event of another tenant (visible only to its own tenant's keys and to admins) appears in its place as `{\"sequence\", \"type\": \"webhook.redacted\", \"object\": \"webhook\"}` (every other field null), so a reader can tell the log has no gaps; a `types` filter leaves out what it does not match.",
        "responses": { "200": { "description": "Events and the cursor to continue from.", "content": { "application/json": { "schema": {
            "type": "object", "properties": { "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "next_after": {"type": "integer", "description": "Continue from here: the last sequence read, past the events a types filter left out"} } } } } },
            "400": problem_response("A parameter is invalid.") } } }));
    paths.insert("/events/{id}".into(), json!({ "get": { "operationId": "getEvent", "summary": "One event",
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": {"type": "string"} }],
        "responses": { "200": { "description": "The event.", "content": { "application/json": { "schema": {"$ref": "#/components/schemas/Event"} } } },
                       "404": problem_response("No such event.") } } }));
    paths.insert(
        "/event-types".into(),
        json!({ "get": { "operationId": "listEventTypes", "summary": "The event catalog with payload schemas",
        "responses": { "200": { "description": "Every event type.", "content": { "application/json": { "schema": {
            "type": "object", "required": ["event_types"], "properties": { "event_types": { "type": "array", "items": {
                "type": "object", "required": ["name", "object", "description", "schema", "subscribable"],
                "properties": {
                    "name": {"type": "string", "description": "The event type, e.g. `service.updated`."},
                    "object": {"type": "string", "description": "The HSDS table (or `webhook`) the event is about."},
                    "description": {"type": "string"},
                    "schema": {"type": "object", "description": "JSON Schema of the event's `data` in a full payload."},
                    "thin_schema": {"type": "object", "description": "JSON Schema of `data` in a thin payload."},
                    "subscribable": {"type": "boolean", "description": "False for messages hsda sends on its own (a digest, a challenge)."}
                } } } } } } } } } } }),
    );
    paths.insert(
        "/webhooks/{id}/verify".into(),
        json!({ "post": { "operationId": "verifyWebhook", "summary": "Send a pending subscription its verification challenge now",
        "description": "A subscription created with `verify: true` starts `pending`: its events (the `webhook.ping` among them) are \
            held, not dropped, until the target proves it wants them. hsda POSTs, signed like any delivery, \
            `{\"id\", \"sequence\": 0, \"type\": \"webhook.verification\", \"timestamp\", \"challenge\": \"<random>\", \"data\": {\"id\", \"url\", \"challenge\"}}`; \
            the target must answer 2xx with the JSON body `{\"challenge\": \"<the same value>\"}`. On success the subscription \
            becomes `active` and the held deliveries flow (in sequence order only for `ordered: true` subscriptions; \
            otherwise up to `max_concurrency` at once, so the ping may arrive after a held event); otherwise it stays `pending` with `verification_error` and \
            `last_failure_at` set. The worker sends the first challenge at creation (and again when the URL changes); \
            this endpoint retries it and answers with the subscription plus `verification: {success, error}`.",
        "security": [{"bearer": []}],
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": {"type": "string"} }],
        "responses": { "200": { "description": "The subscription after the attempt, with `verification`.", "content": { "application/json": { "schema": {
                           "allOf": [ {"$ref": "#/components/schemas/Subscription"}, { "type": "object", "required": ["verification"], "properties": {
                               "verification": { "type": "object", "required": ["success"], "properties": { "success": {"type": "boolean"}, "error": {"type": ["string", "null"]} } } } } ] } } } },
                       "404": problem_response("No such subscription (or not yours)."),
                       "409": problem_response("The subscription is not pending verification.") } } }),
    );
    paths.insert("/health".into(), json!({ "get": { "operationId": "health", "summary": "Liveness and database reachability",
        "responses": { "200": { "description": "`status` is `ok`, or `degraded` while writes fail with a database fault (locked, disk full, unreachable): `fault` has its `kind`, `detail`, `since`, `last_seen` and `failures`; `last_fault` is the previous one, with `recovered_at`.",
                                "content": { "application/json": { "schema": health_schema() } } },
                       "503": { "description": "`status: unavailable`: the database does not answer.", "content": { "application/json": { "schema": health_schema() } } } } } }));
    paths.insert("/openapi.json".into(), json!({ "get": { "operationId": "openapi", "summary": "This document",
        "responses": { "200": { "description": "The OpenAPI 3.1 document of this server (its `servers` URL is this server's).", "content": { "application/json": { "schema": {"type": "object"} } } } } } }));

    paths.insert("/metrics".into(), json!({ "get": { "operationId": "metrics", "summary": "Operational metrics for Prometheus (admin key)",
        "description": "OpenMetrics text: `hsda_delivery_attempts_total{outcome, error_class}`, `hsda_delivery_attempt_duration_seconds`, `hsda_deliveries_in_flight`, `hsda_http_requests_total{method, route, status}`, `hsda_http_request_duration_seconds`, `hsda_event_sequence`, `hsda_deliveries_open`, `hsda_subscriptions{status}`, `hsda_write_transactions_total`, `hsda_writes_total`, `hsda_write_groups_rerun_one_at_a_time_total`, `hsda_write_groups_rerun_guarded_total`, `hsda_store_degraded`. Counters are per process.",
        "security": [{"bearer": []}],
        "responses": { "200": { "description": "The metrics.", "content": { "application/openmetrics-text": { "schema": {"type": "string"} } } },
                       "403": problem_response("The key is not an admin key.") } } }));
    paths.insert("/follow".into(), json!({ "get": { "operationId": "following", "summary": "The directories this one follows, and how that goes (admin key)",
        "description": "Each source given with `serve --follow URL` (`HSDA_FOLLOW`): every change in its event log is applied here, in order, exactly once, with the source's time and origin, and this directory's own events (and webhooks) tell of it. `state` is `starting`, `catching_up` (changes are waiting at the source), `following` (caught up; the next change arrives through the feed's long poll), `failing` (see `last_error`, the last failure, kept after a recovery; retried with pauses growing to a minute) or `elsewhere` (another process on this database applied the source's latest changes first, or a cursor stored in the database that this process does not follow: another process's, or a source no longer configured).",
        "security": [{"bearer": []}],
        "responses": { "200": { "description": "Every source.", "content": { "application/json": { "schema": {
            "type": "object", "required": ["sources"], "properties": { "sources": { "type": "array", "items": {
                "type": "object", "required": ["source", "state", "after_sequence", "events_applied"],
                "properties": {
                    "source": {"type": "string", "description": "The source's base URL."},
                    "state": {"type": "string", "enum": ["starting", "catching_up", "following", "failing", "elsewhere"]},
                    "after_sequence": {"type": "integer", "description": "The last sequence of the source's log applied here."},
                    "events_applied": {"type": "integer", "description": "Events of the source this process applied since it started (those that changed nothing here included)."},
                    "last_contact_at": {"type": ["string", "null"], "format": "date-time"},
                    "last_error": {"type": ["string", "null"]},
                    "last_error_at": {"type": ["string", "null"], "format": "date-time"}
                } } } } } } } },
                       "403": problem_response("The key is not an admin key.") } } }));
    add_webhook_paths(&mut paths, &mut schemas);
    add_common_errors(&mut paths);

    let mut webhooks = Map::new();
    for (name, description) in crate::events::OPERATIONAL {
        webhooks.insert(name.to_string(), json!({ "post": {
            "summary": description,
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "properties": {
                "id": {"type": "string"}, "type": {"const": name}, "timestamp": {"type": "string", "format": "date-time"},
                "data": operational_data_schema() } } } } },
            "responses": { "2XX": { "description": "Accepted by the subscriber." } } } }));
    }
    for (name, description) in crate::events::SYSTEM_MESSAGES {
        let mut properties = json!({
            "id": {"type": "string"}, "type": {"const": name}, "timestamp": {"type": "string", "format": "date-time"},
            "data": crate::events::system_message_data_schema(name) });
        if name == crate::webhook::worker::VERIFICATION_TYPE {
            properties["challenge"] = json!({"type": "string", "description": "Echo it: {\"challenge\": \"<same>\"}"});
        } else {
            properties["sequence"] = json!({"type": "integer", "description": "The last event the digest covers."});
        }
        webhooks.insert(name.to_string(), json!({ "post": {
            "summary": description,
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "properties": properties } } } },
            "responses": { "2XX": { "description": "Accepted by the subscriber." } } } }));
    }
    for event_type in crate::events::event_types() {
        let (object, action) = event_type.split_once('.').unwrap_or_default();
        webhooks.insert(
            event_type.clone(),
            json!({ "post": {
            "summary": format!("{event_type} delivered to a subscriber"),
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "properties": {
                "id": {"type": "string"}, "sequence": {"type": "integer"}, "type": {"const": event_type},
                "timestamp": {"type": "string", "format": "date-time"},
                "data": event_data_schema(object, action) } } } } },
            "responses": { "2XX": { "description": "Accepted by the subscriber." } } } }),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "hsda", "version": env!("CARGO_PKG_VERSION"),
                  "description": "An HSDS 3.1 directory with writes, an event feed and webhooks." },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [ { "url": server } ],
        "paths": paths,
        "webhooks": webhooks,
        "components": { "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "An hsda API key." } } }
    })
}

/// The problem answers any operation can give, added where an operation does not list them already: a bad
/// parameter or malformed body (400), an invalid key, or none where one is needed (401), an object that
/// does not exist (404, on paths with an id), and on deletes an `If-Match` that does not match (412).
fn add_common_errors(paths: &mut Map<String, Value>) {
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else { continue };
        for (method, operation) in operations.iter_mut() {
            let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            let mut add = |status: &str, description: &str| {
                responses.entry(status).or_insert_with(|| problem_response(description));
            };
            add("400", "A parameter or the body is malformed.");
            add("401", "The API key is not valid, or the operation needs one.");
            if path.contains('{') {
                add("404", "No such object.");
            }
            if method == "delete" {
                add("412", "An If-Match or If-None-Match precondition failed.");
            }
        }
    }
}

/// A page of hsda's own lists (the HSDS Page envelope) whose `contents` are `item`s.
fn page_of(item: Value) -> Value {
    json!({ "allOf": [ {"$ref": "#/components/schemas/Page"}, {"type": "object", "properties": {"contents": {"type": "array", "items": item}}} ] })
}

/// What `GET /health` answers.
fn health_schema() -> Value {
    let fault = json!({ "type": "object", "properties": {
        "kind": {"type": "string", "enum": ["busy", "unavailable", "storage_full"]}, "detail": {"type": "string"},
        "since": {"type": "string", "format": "date-time"}, "last_seen": {"type": "string", "format": "date-time"},
        "failures": {"type": "integer"}, "recovered_at": {"type": "string", "format": "date-time"} } });
    json!({ "type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
        "database": {"type": "string", "enum": ["answers", "does not answer"]},
        "fault": fault.clone(), "last_fault": fault } })
}

/// The subscriptions API and delivery history.
fn add_webhook_paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    schemas.insert(
        "Subscription".into(),
        json!({ "type": "object", "properties": {
            "id": {"type": "string", "description": "sub_..."},
            "tenant": {"type": "string", "description": "The tenant of the key that made it (an admin key lists every tenant's)."},
            "url": {"type": "string", "format": "uri", "maxLength": 4096, "description": "http or https; no whitespace around it, no user name or password, no #fragment, no port 0; refused if it resolves to a private, loopback, link-local or metadata address (unless the operator allows it)."},
            "events": {"type": "array", "items": {"type": "string"}, "description": "Event types or patterns: service.updated, service.*, *"},
            "payload": {"type": "string", "enum": ["full", "thin"]},
            "filter": {"type": "object", "properties": {
                "organization_id": {"type": "string", "format": "uuid"}, "service_id": {"type": "string", "format": "uuid"},
                "location_id": {"type": "string", "format": "uuid"}, "taxonomy_term_id": {"type": "string", "format": "uuid"} },
                "additionalProperties": false,
                "description": "All given ids must match (AND). An event matches its object and its roots: the ids the object references itself (a service's organization_id, the terms of its own attributes, the locations of its own service_at_locations) and those of the documents it is part of, with what they reference themselves (a phone of service S matches S, S's terms and locations, and S's organization; a service matches its organization's own terms). A document's `updated` event caused by a change inside it also matches the changed rows and the documents the change was inside (the organization update a new phone of S makes matches S and S's terms and locations; a sibling service's change, a location's phone or the organization's own rename does not). A document that only shows another (a service shows its organization) is not one it is part of. Imports compare documents and do not add the documents holding a changed one."},
            "schedule": {"type": ["string", "null"], "description": "null (the default): each event is delivered as it happens. Otherwise digests: an ISO-8601 duration (`PT15M`, `PT1H`, `P1D`; at least the operator's minimum, 1 s by default) or a 5-field cron expression in UTC (`0 * * * *`), after which the events since the last digest are sent as one `webhook.digest` delivery (none when nothing happened). A digest holds at most 1 000 events: a longer backlog goes as several digests built one after the other, each with the `since` and `until` of its own events (each begins where the one before ends); unless `ordered`, they may arrive in any order: order them by their events' `sequence`."},
            "description": {"type": "string"},
            "secret": {"type": "string", "description": "whsec_... (hmac-sha256) or whsk_... (ed25519); returned only at creation and rotation"},
            "signing": {"type": "string", "enum": ["hmac-sha256", "ed25519"]},
            "public_key": {"type": "string", "description": "whpk_... for ed25519 subscriptions"},
            "previous_public_key": {"type": "string", "description": "During an ed25519 rotation's grace period: the old key's public half, which still signs"},
            "previous_secret_expires_at": {"type": "string", "format": "date-time", "description": "During a rotation's grace period: when the previous secret stops signing"},
            "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Deliveries of this subscription in flight at once, per hsda process (several processes on one PostgreSQL database each allow this many)."},
            "rate_limit_per_second": {"type": ["integer", "null"], "description": "Delivery starts per second, per hsda process (several processes on one PostgreSQL database each allow this many)."},
            "ordered": {"type": "boolean"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Static headers sent with every delivery. Names compare without case (one name once); content-type, content-length, content-encoding, user-agent, host, transfer-encoding and webhook-* are hsda's, and the hop-by-hop ones (connection, keep-alive, upgrade, te, trailer, expect, proxy-authorization, proxy-connection) the connection's: refused."},
            "metadata": {"type": "object", "description": "The owner's own notes, at most 16 KiB as JSON."},
            "verify": {"type": "boolean", "description": "Hold the subscription `pending` (its events held, not dropped) until the target echoes a signed `webhook.verification` challenge (see POST /webhooks/{id}/verify). Default false."},
            "all_tenants": {"type": "boolean", "readOnly": true, "description": "Made with an admin key: it hears the operational events (webhook.failing, webhook.recovered, webhook.disabled) of every tenant's subscriptions; others hear their own tenant's only."},
            "status": {"type": "string", "enum": ["pending", "active", "failing", "disabled"]},
            "last_success_at": {"type": ["string", "null"]}, "last_failure_at": {"type": ["string", "null"]},
            "consecutive_failures": {"type": "integer"}, "disabled_reason": {"type": ["string", "null"]},
            "next_digest_at": {"type": ["string", "null"], "description": "When a digest subscription next fires"},
            "verified_at": {"type": ["string", "null"], "description": "When the target echoed the verification challenge (verify: true)"},
            "verification_error": {"type": ["string", "null"], "description": "Why the last verification failed; null once verified"},
            "created_at": {"type": "string"}, "updated_at": {"type": "string"} },
            "required": ["url"] }),
    );
    // What hsda sets: a create refuses it, a PATCH takes it only unchanged (sent back as read).
    if let Some(properties) = schemas["Subscription"]["properties"].as_object_mut() {
        for name in crate::http::webhooks::READ_ONLY {
            if let Some(property) = properties.get_mut(name) {
                property["readOnly"] = Value::Bool(true);
            }
        }
    }
    let delivery_fields = json!({
            "id": {"type": "string", "description": "msg_...; sent as webhook-id, the same on every retry"},
            "subscription_id": {"type": "string"}, "event_id": {"type": "string"}, "event_sequence": {"type": "integer"},
            "event_type": {"type": "string"}, "object_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "retrying", "succeeded", "failed"]},
            "attempts": {"type": "integer"}, "next_attempt_at": {"type": ["string", "null"], "description": "When the next attempt is due: the retry schedule's next step (jittered), or a 429/503's Retry-After (seconds or HTTP date), capped at 24 hours"},
            "last_status_code": {"type": ["integer", "null"]}, "last_error": {"type": ["string", "null"]},
            "created_at": {"type": "string"}, "updated_at": {"type": "string"} });
    schemas.insert("Delivery".into(), json!({ "type": "object", "properties": delivery_fields.clone() }));
    // `GET /deliveries/{id}`: the same, with the payload and every attempt (`attempts` is the list there).
    let mut detail = delivery_fields;
    detail["attempt_count"] = json!({"type": "integer"});
    detail["payload"] = json!({"type": "object", "description": "The body sent, the same bytes on every attempt"});
    detail["attempts"] = json!({"type": "array", "items": {"type": "object", "properties": {
        "at": {"type": "string", "format": "date-time", "description": "When the request was sent (its answer came `duration_ms` later)."}, "status_code": {"type": ["integer", "null"]},
        "duration_ms": {"type": "integer"}, "error": {"type": ["string", "null"]},
        "error_class": {"type": ["string", "null"], "description": "timeout (no full answer in time), dns (the name did not resolve), connect (no connection could be made: refused, unreachable), tls, ssrf (the address is refused), http_status (a non-2xx answer), read (the connection was made but broke before a full answer: reset, closed, body cut), request (anything else)"},
        "response_body": {"type": ["string", "null"], "description": "The first 4 096 bytes"} } } });
    schemas.insert("DeliveryDetail".into(), json!({ "type": "object", "properties": detail }));
    let sub_ref = json!({"$ref": "#/components/schemas/Subscription"});
    let security = json!([{"bearer": []}]);
    let id_param = json!([{ "name": "id", "in": "path", "required": true, "schema": {"type": "string"} }]);
    let ok = |description: &str, schema: Value| json!({ "description": description, "content": { "application/json": { "schema": schema } } });
    let not_found = problem_response("Not found (or owned by another tenant).");
    paths.insert("/webhooks".into(), json!({
        "post": { "operationId": "createWebhook", "summary": "Subscribe a target URL to events (scope subscribe or admin)", "tags": ["webhooks"],
            "description": "The url's host must resolve, and to public addresses only: a name that does not resolve, or that resolves to a loopback, private, link-local, CGNAT, multicast or cloud-metadata address (IPv4, IPv6, IPv4-mapped, decimal or octal forms), is a 422 at /url unless the operator's allow-list (HSDA_ALLOW_TARGETS) covers it. The same check runs again at every delivery, after DNS resolution; redirects are not followed. A webhook.ping is sent at once (after the challenge, for verify: true).",
            "security": security, "requestBody": { "required": true, "content": { "application/json": { "schema": sub_ref } } },
            "responses": { "201": ok("The subscription, with its secret (shown only now).", sub_ref.clone()),
                           "422": problem_response("A field is invalid; errors[].pointer names it.") } },
        "get": { "operationId": "listWebhooks", "summary": "The caller's subscriptions (admin: all)", "tags": ["webhooks"], "security": security,
            "parameters": [ param("page", json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}), "Page, from 1."), param("per_page", json!({"type": "integer", "minimum": 1, "maximum": 1000}), "Items per page.") ],
            "responses": { "200": ok("A page of subscriptions.", page_of(sub_ref.clone())) } } }));
    let if_match_write = json!({ "name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Change only if the subscription's ETag is one of these (strong comparison), or * ." });
    let if_none_match_write = json!({ "name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Refused (412) if the subscription's ETag is one of these (weak comparison), or at all for * ." });
    let if_none_match_read = json!({ "name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "304 when the ETag is one of these (weak comparison)." });
    let with_etag_header = |mut response: Value| {
        response["headers"] = json!({"ETag": {"schema": {"type": "string"}}});
        response
    };
    paths.insert("/webhooks/{id}".into(), json!({ "parameters": id_param,
        "get": { "operationId": "getWebhook", "tags": ["webhooks"], "security": security,
            "description": "With an `ETag`: a hash of this representation, so it changes with the delivery counters too. `If-None-Match` naming it answers 304.",
            "parameters": [if_none_match_read.clone()],
            "responses": { "200": with_etag_header(ok("The subscription.", sub_ref.clone())), "304": {"description": "Not modified (If-None-Match)."}, "404": not_found } },
        "patch": { "operationId": "updateWebhook", "tags": ["webhooks"], "security": security, "summary": "Change fields; status: active or disabled", 
            "description": "A JSON merge patch (RFC 7386): fields left out stay as they are; filter, headers (names compared without case) and metadata merge into the current ones, a member set to null removing it; null for filter, headers, metadata, schedule or rate_limit_per_second clears it, and for description empties it. Disabling ends the subscription's open deliveries as `failed` (last_error: the subscription was disabled before this was delivered); nothing is sent to it while disabled. Every attempt that starts after the answer goes as the subscription is then: to its new url, signed with its new secret, not at all once disabled or deleted (only attempts already under way finish as they began; another hsda process on the same PostgreSQL sees the change within a second). A delivery's body stays as it was made: a new payload form applies to deliveries made after the change; so do new events and filter (a delivery already made for an event the subscription no longer wants still goes). A new `url` of a `verify: true` subscription must echo a challenge again.",
            "parameters": [if_match_write.clone(), if_none_match_write.clone()],
            "requestBody": { "content": { "application/json": { "schema": sub_ref } } },
            "responses": { "200": with_etag_header(ok("The subscription.", sub_ref.clone())), "404": not_found, "409": problem_response("Changed concurrently through other processes, again and again: try again."), "412": problem_response("An If-Match or If-None-Match precondition failed: it changed since that ETag was read."), "422": problem_response("A field is invalid.") } },
        "delete": { "operationId": "deleteWebhook", "tags": ["webhooks"], "security": security, "parameters": [if_match_write, if_none_match_write],
            "responses": { "204": {"description": "Deleted with its history."}, "404": not_found, "412": problem_response("An If-Match or If-None-Match precondition failed.") } } }));
    let attempt_result = json!({ "type": "object", "properties": {
        "webhook_id": {"type": "string", "description": "msg_test_...: the webhook-id the test request carried"},
        "status_code": {"type": ["integer", "null"], "description": "The target's answer; null when none came"},
        "response_body": {"type": ["string", "null"], "description": "The first 4 096 bytes"},
        "duration_ms": {"type": "integer"}, "error": {"type": ["string", "null"]},
        "error_class": {"type": ["string", "null"], "description": "timeout (no full answer in time), dns (the name did not resolve), connect (no connection could be made: refused, unreachable), tls, ssrf (the address is refused), http_status (a non-2xx answer), read (the connection was made but broke before a full answer: reset, closed, body cut), request (anything else)"},
        "success": {"type": "boolean", "description": "A 2xx answer"} },
        "required": ["webhook_id", "status_code", "duration_ms", "error", "success"] });
    let with_member = |name: &str, schema: Value| json!({ "allOf": [sub_ref.clone(), { "type": "object", "properties": { name: schema } }] });
    let answers: HashMap<&str, Value> = HashMap::from([
        (
            "/webhooks/{id}/test",
            json!({ "200": ok("The attempt: sent now, not recorded in the history.", attempt_result) }),
        ),
        (
            "/webhooks/{id}/rotate-secret",
            json!({ "200": ok("The subscription with its new secret (shown only now), and when the previous one stops signing.",
            with_member("previous_secret_expires_at", json!({"type": ["string", "null"], "format": "date-time"}))) }),
        ),
        (
            "/webhooks/{id}/replay",
            json!({ "202": ok("Queued.", json!({ "type": "object", "properties": { "requeued": {"type": "integer", "description": "Deliveries queued again"} }, "required": ["requeued"] })) }),
        ),
        (
            "/webhooks/{id}/enable",
            json!({ "200": ok("The subscription, and how many missed deliveries were queued (0 without replay_missed).",
            with_member("replayed", json!({"type": "integer"}))) }),
        ),
    ]);
    for (path, op, summary, body) in [
        (
            "/webhooks/{id}/test",
            "testWebhook",
            "Send a sample or real object now and report the attempt",
            json!({"event_type": {"type": "string"}, "object_id": {"type": "string"}}),
        ),
        (
            "/webhooks/{id}/rotate-secret",
            "rotateWebhookSecret",
            "New secret; the old one also signs until the grace period ends",
            json!({"grace_seconds": {"type": "integer", "default": 86400, "minimum": 0, "maximum": 604800},
                   "secret": {"type": "string", "description": "The new secret, in the form creation takes (whsec_... or whsk_...); generated if absent"}}),
        ),
        (
            "/webhooks/{id}/replay",
            "replayWebhook",
            "Re-queue the finished deliveries created in a time range (ones still pending or retrying are queued already and left as they are; answer: requeued)",
            json!({"since": {"type": "string", "format": "date-time", "description": "Required."}, "until": {"type": "string", "format": "date-time", "description": "Default: now; not before since."}, "only_failed": {"type": "boolean", "default": false, "description": "Only deliveries that failed; by default succeeded ones are sent again too."}}),
        ),
        (
            "/webhooks/{id}/enable",
            "enableWebhook",
            "Re-enable; with replay_missed, reopen the deliveries the latest disable ended and queue the events that occurred while disabled, or were dispatched after it (a change committed just before the disable), each once; an attempt that was already out at the target when the disable came may be sent again, with the same webhook-id (answer: replayed)",
            json!({"replay_missed": {"type": "boolean"}}),
        ),
    ] {
        let mut responses = json!({ "404": not_found, "409": problem_response("The subscription's state does not allow it: a replay or test of a disabled one (enable it, with replay_missed), an enable or test of one awaiting verification."), "413": problem_response("The body is larger than the configured limit."), "415": problem_response("The body is not application/json."), "422": problem_response("A field is invalid or unknown.") });
        if let (Some(all), Some(answer)) = (responses.as_object_mut(), answers.get(path).and_then(Value::as_object)) {
            all.extend(answer.clone());
        }
        paths.insert(path.into(), json!({ "parameters": id_param, "post": { "operationId": op, "summary": summary, "tags": ["webhooks"], "security": security,
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "properties": body, "additionalProperties": false } } } },
            "responses": responses } }));
    }
    paths.insert("/webhooks/{id}/deliveries".into(), json!({ "parameters": id_param, "get": { "operationId": "listDeliveries", "tags": ["webhooks"], "security": security,
        "summary": "Delivery history, newest first",
        "parameters": [ param("status", json!({"type": "string", "enum": ["pending", "succeeded", "failed", "retrying"]}), "Only deliveries in this state."),
                        param("event_type", json!({"type": "string"}), "Only this event type, or pattern (`service.*`, `*`); an unknown type is a 400."), param("object_id", json!({"type": "string"}), "Only events about this object."),
                        param("since", json!({"type": "string", "format": "date-time"}), "Created at or after."), param("until", json!({"type": "string", "format": "date-time"}), "Created before (not before `since`)."),
                        param("page", json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}), "Page, from 1."), param("per_page", json!({"type": "integer", "minimum": 1, "maximum": 1000}), "Items per page.") ],
        "responses": { "200": ok("A page of deliveries.", page_of(json!({"$ref": "#/components/schemas/Delivery"}))), "404": not_found } } }));
    paths.insert("/deliveries/{id}".into(), json!({ "parameters": id_param, "get": { "operationId": "getDelivery", "tags": ["webhooks"], "security": security,
        "responses": { "200": ok("The delivery with its payload and attempts.", json!({"$ref": "#/components/schemas/DeliveryDetail"})), "404": not_found } } }));
    paths.insert("/deliveries/{id}/retry".into(), json!({ "parameters": id_param, "post": { "operationId": "retryDelivery", "tags": ["webhooks"], "security": security,
        "summary": "Attempt this delivery again now",
        "description": "Queues the delivery to be sent at once (its next scheduled retry, if any, is brought forward). An attempt asked for is an extra one: it uses up no automatic retry, so should it fail the schedule goes on where it stood (and a delivery whose schedule was spent is failed again). An attempt already at the target is left to finish and no second copy is sent beside it; should that attempt fail, the retry goes at once rather than on the schedule.",
        "responses": { "202": ok("Queued.", json!({ "type": "object", "properties": { "id": {"type": "string"}, "status": {"const": "retrying"} }, "required": ["id", "status"] })), "404": not_found, "409": problem_response("Its subscription is disabled: enable it first (with replay_missed to send what it missed).") } } }));
}
