//! Compiled documents: a row with the rows it nests, in the HSDS JSON form. Root documents (service,
//! organization, location, service_at_location) are compiled on every write that touches them and kept in
//! `records.doc`, so reads are one lookup and events carry the document as it stood after the change.
//!
//! Shape rules, shared by the API and the events:
//! - a `Many` nested key (`service.phones`) holds the compiled child rows, ordered by id;
//! - a `One` nested key (`service.organization`) holds the related row's own fields only, so a change deep
//!   inside an organization does not ripple into every service's document — except
//!   `service_at_location.location`, which is the compiled location (its addresses matter to its users);
//! - an organization root also lists its `services` (compiled, without their `organization`), and a
//!   service_at_location root its `service` (compiled, without its `service_at_locations`).

use std::collections::{BTreeMap, HashMap};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::placeholders;
use super::sql::{Arg, Conn};
use crate::hsds::catalog::{NestedKind, Table, table};

pub type Row = Map<String, Value>;

const CHUNK: usize = 500;

/// Loads the rows of `kind` with these ids (missing ids are skipped), keyed by id.
pub(crate) async fn load_rows(conn: &mut Conn<'_>, kind: &str, ids: &[String]) -> sqlx::Result<HashMap<String, Row>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let sql = format!("SELECT id, data FROM records WHERE kind = $1 AND id IN ({})", placeholders(1, chunk.len()));
        let args: Vec<Arg> = std::iter::once(kind.into()).chain(chunk.iter().map(Arg::from)).collect();
        for (id, data) in conn.fetch_all::<(String, String)>(&sql, &args).await? {
            out.insert(id, parse_row(&data));
        }
    }
    Ok(out)
}

/// Loads, for each `(kind, field)` pair, the rows of `kind` whose reference `field` points at one of
/// `parent_ids`, as (parent id, row) ordered by row id — all pairs in one query per chunk of parents.
pub(crate) async fn load_children_of_kinds(
    conn: &mut Conn<'_>,
    pairs: &[(&'static str, &'static str)],
    parent_ids: &[String],
) -> sqlx::Result<HashMap<(&'static str, &'static str), Vec<(String, Row)>>> {
    let mut out: HashMap<(&'static str, &'static str), Vec<(String, Row)>> = HashMap::new();
    if pairs.is_empty() || parent_ids.is_empty() {
        return Ok(out);
    }
    let mut kinds: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for chunk in parent_ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT f.kind, f.field, f.target_id, r.data FROM record_refs f JOIN records r ON r.rid = f.rid \
             WHERE f.target_id IN ({}) AND f.kind IN ({}) ORDER BY f.id",
            placeholders(0, chunk.len()),
            placeholders(chunk.len(), kinds.len())
        );
        let args: Vec<Arg> = chunk.iter().map(Arg::from).chain(kinds.iter().map(|k| Arg::from(*k))).collect();
        for (kind, field, parent, data) in conn.fetch_all::<(String, String, String, String)>(&sql, &args).await? {
            // Only the asked-for pairs: a row may point at the parent through a field that does not nest it.
            if let Some(pair) = pairs.iter().find(|(k, f)| *k == kind && *f == field) {
                out.entry(*pair).or_default().push((parent, parse_row(&data)));
            }
        }
    }
    Ok(out)
}

pub(crate) fn parse_row(text: &str) -> Row {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Row::new(),
    }
}

/// How a document is being compiled: as a top-level root document or nested inside another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Root,
    Nested,
}

/// Compiles rows of one table with everything they nest; batched: one query per nested table, whatever
/// the number of rows.
pub(crate) fn compile_many<'a, 'c>(
    conn: &'a mut Conn<'c>,
    table: &'static Table,
    rows: Vec<Row>,
    form: Form,
) -> BoxFuture<'a, sqlx::Result<Vec<Value>>> {
    Box::pin(async move {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().filter_map(id_of).collect();
        // Every `Many` child of every row in one query (a write touching an organization would otherwise ask
        // once per nested table, mostly for nothing).
        let mut many: Vec<(&'static str, &'static str)> = table
            .nested
            .iter()
            .filter(|n| n.kind == NestedKind::Many)
            .filter_map(|n| Some((n.table, table.back_reference(n)?.name)))
            .collect();
        // An organization root's services come in the same query.
        if form == Form::Root && table.name == "organization" {
            many.push(ORGANIZATION_SERVICES);
        }
        let mut children_of = load_children_of_kinds(conn, &many, &ids).await?;
        // nested key -> parent id -> value, filled in the catalog's order
        let mut nested_values: Vec<(&'static str, HashMap<String, Value>)> = Vec::new();
        for nested in table.nested {
            let Some(child_table) = crate::hsds::catalog::table(nested.table) else { continue };
            let mut by_parent: HashMap<String, Value> = HashMap::new();
            match nested.kind {
                NestedKind::Many => {
                    let Some(back) = table.back_reference(nested) else { continue };
                    let children = children_of.remove(&(child_table.name, back.name)).unwrap_or_default();
                    // A polymorphic child of another table's row with the same id is not this row's.
                    let children: Vec<(String, Row)> = children
                        .into_iter()
                        .filter(|(_, row)| child_table.points_into(back, row, table.name))
                        .collect();
                    let (parents, child_rows): (Vec<String>, Vec<Row>) = children.into_iter().unzip();
                    let compiled = compile_many(conn, child_table, child_rows, Form::Nested).await?;
                    let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                    for (parent, value) in parents.into_iter().zip(compiled) {
                        grouped.entry(parent).or_default().push(value);
                    }
                    for id in &ids {
                        by_parent.insert(id.clone(), Value::Array(grouped.remove(id).unwrap_or_default()));
                    }
                }
                NestedKind::One => {
                    let Some(forward) = table.forward_reference(nested) else { continue };
                    let wanted: Vec<String> =
                        rows.iter().filter_map(|r| r.get(forward.name)?.as_str().map(str::to_string)).collect();
                    let mut related = load_rows(conn, child_table.name, &wanted).await?;
                    let full_location = table.name == "service_at_location" && nested.key == "location";
                    let mut compiled_related: HashMap<String, Value> = HashMap::new();
                    if full_location {
                        let related_rows: Vec<Row> = related.drain().map(|(_, r)| r).collect();
                        for value in compile_many(conn, child_table, related_rows, Form::Nested).await? {
                            if let Some(id) = value.get("id").and_then(Value::as_str) {
                                compiled_related.insert(id.to_string(), value.clone());
                            }
                        }
                    } else {
                        compiled_related = related.into_iter().map(|(id, r)| (id, Value::Object(r))).collect();
                    }
                    for row in &rows {
                        let (Some(id), Some(target)) = (id_of(row), row.get(forward.name).and_then(Value::as_str))
                        else {
                            continue;
                        };
                        if let Some(value) = compiled_related.get(target) {
                            by_parent.insert(id, value.clone());
                        }
                    }
                }
            }
            nested_values.push((nested.key, by_parent));
        }

        let extra = if form == Form::Root { root_extra(conn, table, &ids, &mut children_of).await? } else { None };

        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            let id = id_of(&row).unwrap_or_default();
            for (key, values) in &mut nested_values {
                if let Some(value) = values.remove(&id) {
                    row.insert((*key).to_string(), value);
                }
            }
            if let Some((key, values)) = &extra {
                let value = values.get(&id).cloned().unwrap_or(if *key == "services" {
                    Value::Array(Vec::new())
                } else {
                    Value::Null
                });
                if !value.is_null() {
                    row.insert((*key).to_string(), value);
                }
            }
            out.push(Value::Object(row));
        }
        Ok(out)
    })
}

/// The root document [`compile_many`] gives a new `table` row that nothing is nested in yet, compiled without
/// the store: its own fields, an empty array for each `Many` key (an organization's `services` too). `None`
/// where the document would hold a row it points at (a service's organization, a service_at_location's
/// service), which only the store has. A write stores this document with the new row's insert, so a root
/// created alone costs one row version, not an insert and then a rewrite of every index for its document.
pub(crate) fn lone_document(table: &'static Table, row: &Row) -> Option<Value> {
    if !table.is_root() || table.name == "service_at_location" {
        return None;
    }
    let mut doc = row.clone();
    for nested in table.nested {
        match nested.kind {
            NestedKind::Many => {
                if table.back_reference(nested).is_some() && crate::hsds::catalog::table(nested.table).is_some() {
                    doc.insert(nested.key.to_string(), Value::Array(Vec::new()));
                }
            }
            NestedKind::One => {
                let points =
                    table.forward_reference(nested).is_some_and(|f| row.get(f.name).is_some_and(Value::is_string));
                if points && crate::hsds::catalog::table(nested.table).is_some() {
                    return None;
                }
            }
        }
    }
    if table.name == "organization" {
        doc.insert("services".to_string(), Value::Array(Vec::new()));
    }
    Some(Value::Object(doc))
}

/// The services of an organization: (table, reference field).
const ORGANIZATION_SERVICES: (&str, &str) = ("service", "organization_id");

/// The part only a root document has: an organization's services, a service_at_location's service.
async fn root_extra(
    conn: &mut Conn<'_>,
    table: &'static Table,
    ids: &[String],
    loaded: &mut HashMap<(&'static str, &'static str), Vec<(String, Row)>>,
) -> sqlx::Result<Option<(&'static str, HashMap<String, Value>)>> {
    let service = table_static("service");
    match table.name {
        "organization" => {
            // Loaded with the nested children (see `compile_many`); absent means none.
            let children = loaded.remove(&ORGANIZATION_SERVICES).unwrap_or_default();
            let (parents, rows): (Vec<String>, Vec<Row>) = children.into_iter().unzip();
            let compiled = service_documents(conn, service, rows).await?;
            let mut grouped: HashMap<String, Vec<Value>> = HashMap::new();
            for (parent, mut value) in parents.into_iter().zip(compiled) {
                if let Some(map) = value.as_object_mut() {
                    map.remove("organization");
                }
                grouped.entry(parent).or_default().push(value);
            }
            Ok(Some(("services", grouped.into_iter().map(|(k, v)| (k, Value::Array(v))).collect())))
        }
        "service_at_location" => {
            let links = load_rows(conn, "service_at_location", ids).await?;
            let service_ids: Vec<String> =
                links.values().filter_map(|r| r.get("service_id")?.as_str().map(str::to_string)).collect();
            let services = load_rows(conn, "service", &service_ids).await?;
            let compiled = service_documents(conn, service, services.into_values().collect()).await?;
            let by_service: HashMap<String, Value> = compiled
                .into_iter()
                .filter_map(|mut v| {
                    v.as_object_mut()?.remove("service_at_locations");
                    Some((v.get("id")?.as_str()?.to_string(), v))
                })
                .collect();
            let mut out = HashMap::new();
            for (id, link) in links {
                if let Some(value) = link.get("service_id").and_then(Value::as_str).and_then(|s| by_service.get(s)) {
                    out.insert(id, value.clone());
                }
            }
            Ok(Some(("service", out)))
        }
        _ => Ok(None),
    }
}

/// The compiled documents of these service rows, in the same order: read from `records.doc` where stored
/// (writers refresh service documents before the organization and service_at_location documents that embed
/// them, see [`ROOT_ORDER`]), compiled where missing.
async fn service_documents(conn: &mut Conn<'_>, service: &'static Table, rows: Vec<Row>) -> sqlx::Result<Vec<Value>> {
    let ids: Vec<String> = rows.iter().filter_map(id_of).collect();
    let mut stored: HashMap<String, Value> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT id, doc FROM records WHERE kind = 'service' AND doc IS NOT NULL AND id IN ({})",
            placeholders(0, chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(Arg::from).collect();
        for (id, doc) in conn.fetch_all::<(String, String)>(&sql, &args).await? {
            if let Ok(value) = serde_json::from_str::<Value>(&doc) {
                stored.insert(id, value);
            }
        }
    }
    let missing: Vec<Row> =
        rows.iter().filter(|r| id_of(r).is_none_or(|id| !stored.contains_key(&id))).cloned().collect();
    for value in compile_many(conn, service, missing, Form::Nested).await? {
        if let Some(id) = value.get("id").and_then(Value::as_str) {
            stored.insert(id.to_string(), value.clone());
        }
    }
    Ok(rows.iter().filter_map(|r| stored.get(&id_of(r)?).cloned()).collect())
}

/// The order writers recompile root documents in: services before the organization and
/// service_at_location documents that embed them.
pub const ROOT_ORDER: [&str; 4] = ["location", "service", "organization", "service_at_location"];

fn table_static(name: &str) -> &'static Table {
    // The catalog is static and complete; names used here are checked by the catalog's tests.
    table(name).unwrap_or(&crate::hsds::catalog::TABLES[0])
}

pub(crate) fn id_of(row: &Row) -> Option<String> {
    row.get("id").and_then(Value::as_str).map(str::to_string)
}

/// The list form of a compiled document: nested arrays of objects removed, recursively.
pub fn list_form(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !matches!(v, Value::Array(items) if items.iter().any(Value::is_object)))
                .filter(|(_, v)| !matches!(v, Value::Array(items) if items.is_empty()))
                .map(|(k, v)| (k.clone(), list_form(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
