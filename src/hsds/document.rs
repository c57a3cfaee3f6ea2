//! Facts hsda derives from HSDS documents: their ETag, sort key, full-text search text, coordinates and
//! the facets that list filters and webhook filters match on; and the flattening of a nested HSDS JSON
//! body (a service with its phones, schedules ...) into the rows the store writes.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::catalog::{NestedKind, ROOTS, Table};
use super::validate::{FieldError, validate_row};

/// A strong ETag of a representation: a hash of its JSON text.
pub fn etag(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    format!("\"{}\"", hex::encode(&digest[..12]))
}

/// What marks the ETag of an organization served with its services in full (`full_service=true`).
const FULL_SERVICE_MARK: &str = "-full_service";

/// The ETag of an organization's representation with its services in full: the document's tag, marked, so
/// that a cache never takes one representation for the other (RFC 9110 8.8.1), while a write's `If-Match`
/// may name either (both say which state of the document the client saw).
pub fn full_service_etag(tag: &str) -> String {
    format!("{}{FULL_SERVICE_MARK}\"", tag.strip_suffix('"').unwrap_or(tag))
}

/// Whether a precondition header's list of ETags (`"a", W/"b"` or `*`) names `current` (RFC 9110 13.1):
/// weakly, tags match whatever their `W/` (on either side); strongly (a write's `If-Match`), a weak tag never
/// matches, and a representation's variant tag counts as its document's.
pub fn etag_listed(list: &str, current: &str, weak: bool) -> bool {
    fn opaque(tag: &str) -> &str {
        tag.strip_prefix("W/").unwrap_or(tag)
    }
    fn document_tag(tag: &str) -> String {
        match tag.strip_suffix(&format!("{FULL_SERVICE_MARK}\"")) {
            Some(base) => format!("{base}\""),
            None => tag.to_string(),
        }
    }
    list.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || if weak {
                opaque(tag) == opaque(current)
            } else {
                document_tag(tag) == current && !current.starts_with("W/")
            }
    })
}

/// Whether hsda keeps `table`'s `last_modified` itself (HSDS gives services one): it is the time of the
/// latest change to the document as served — the row or anything it embeds — so that a partner comparing
/// it finds exactly what changed, as `modified_after` does. A writer's own value is not kept.
pub fn keeps_last_modified(table: &Table) -> bool {
    table.field("last_modified").is_some()
}

/// The `last_modified` of a stored document's JSON text, read without building the rest of it.
pub fn last_modified_of(doc: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Stamped {
        last_modified: Option<String>,
    }
    serde_json::from_str::<Stamped>(doc).ok()?.last_modified
}

/// Sets a document's `last_modified` to `at` where hsda keeps it (see [`keeps_last_modified`]).
pub fn stamp_last_modified(table: &Table, doc: &mut Value, at: &str) {
    if keeps_last_modified(table)
        && let Some(map) = doc.as_object_mut()
    {
        map.insert("last_modified".into(), Value::String(at.to_string()));
    }
}

/// The key lists are ordered by: the lower-cased name where the table has one, then the id.
pub fn sort_key(table: &Table, doc: &Value) -> String {
    let name = match table.name {
        "service_at_location" => doc.pointer("/service/name").or_else(|| doc.get("description")),
        _ => doc.get("name"),
    };
    let name = name.and_then(Value::as_str).unwrap_or("").trim().to_lowercase();
    // Folded as search words are (a name search ranks names holding the words first), and so `Éclair`
    // sorts among the e's.
    fold_diacritics(&name).chars().take(200).collect()
}

/// `text` with the diacritics of Latin letters taken off (`Café Niño` -> `Cafe Nino`), so that a search for
/// a word typed without its accents finds it: SQLite's full-text index does this itself (FTS5's
/// `remove_diacritics`), PostgreSQL's `simple` configuration does not, so hsda folds the text it indexes and
/// the words it searches for on both. Letters of other scripts keep their marks (in many, a mark changes
/// the letter, not its accent).
pub fn fold_diacritics(text: &str) -> std::borrow::Cow<'_, str> {
    use unicode_normalization::char::{decompose_canonical, is_combining_mark};
    // Latin-1 Supplement to Latin Extended-B, and Latin Extended Additional (Vietnamese): the precomposed
    // letters. A mark written after its letter (`e` + U+0301, as some systems store text) comes off too.
    let precomposed = |c: char| matches!(c, '\u{C0}'..='\u{24F}' | '\u{1E00}'..='\u{1EFF}');
    if !text.chars().any(|c| precomposed(c) || is_combining_mark(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    // Whether the last letter written is a Latin one, whose marks come off.
    let mut after_latin = false;
    for c in text.chars() {
        if precomposed(c) {
            decompose_canonical(c, |part| {
                if !is_combining_mark(part) {
                    out.push(part);
                }
            });
            after_latin = true;
        } else if is_combining_mark(c) && after_latin {
            continue;
        } else {
            out.push(c);
            after_latin = c.is_ascii_alphabetic();
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The words full-text search matches: names, alternate names and descriptions (and a
/// service_at_location's service and location names), with Latin diacritics folded ([`fold_diacritics`]).
pub fn search_text(table: &Table, doc: &Value) -> String {
    let mut sources = vec![doc];
    if table.name == "service_at_location" {
        sources.extend(doc.get("service"));
        sources.extend(doc.get("location"));
    }
    let parts: Vec<&str> = sources
        .iter()
        .flat_map(|v| {
            ["name", "alternate_name", "description", "code"].into_iter().filter_map(|key| v.get(key)?.as_str())
        })
        .collect();
    fold_diacritics(&parts.join(" ")).into_owned()
}

/// Latitude and longitude of a location, or of a service_at_location's location.
pub fn coordinates(table: &Table, doc: &Value) -> (Option<f64>, Option<f64>) {
    let location = match table.name {
        "location" => Some(doc),
        "service_at_location" => doc.get("location"),
        _ => None,
    };
    let get = |key: &str| location.and_then(|l| l.get(key)).and_then(Value::as_f64);
    (get("latitude"), get("longitude"))
}

const FACET_KEYS: [&str; 6] =
    ["organization_id", "service_id", "location_id", "service_at_location_id", "taxonomy_term_id", "taxonomy_id"];

/// The `(facet, value)` pairs of a document: every id it mentions under a facet key, its own id as
/// `{table}_id`, and every postcode of its addresses (as `postcode`, normalised).
pub fn facets(table: &Table, doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    if let Some(id) = doc.get("id").and_then(Value::as_str) {
        out.insert((format!("{}_id", table.name), id.to_string()));
    }
    collect_facets(doc, &mut out);
    out
}

/// The `(facet, value)` pairs of one flat row (no nested rows): its own id as `{table}_id` and the ids it
/// references itself under a facet key.
pub fn row_facets(table: &Table, row: &Map<String, Value>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    if let Some(id) = row.get("id").and_then(Value::as_str) {
        out.insert((format!("{}_id", table.name), id.to_string()));
    }
    out.extend(references(row));
    out
}

/// What changed inside root document `kind` from `old` to `new`, as facets: for every nested object (one with
/// an `id`) that is new, gone or different in its own fields (a child's change does not make its parent
/// different; a child added or removed does, as the parent's list of ids changes), its own id (under `{kind}_id`, where its key names a facet kind), the ids it references
/// itself, and the identity of the objects it is inside: the objects holding it in their lists, up to the
/// first that only shows it as a one-to-one member (a location's phone is inside the location, not inside
/// a service whose link shows that location). An import knows its documents, not the rows it touched: this
/// stands in for the rows a write touched and the roots on the way from them (`store::write`).
pub fn changed_inside(kind: &str, old: Option<&Value>, new: &Value) -> BTreeSet<(String, String)> {
    let (mut before, mut after) = (HashMap::new(), HashMap::new());
    if let Some(old) = old {
        nested_objects(old, kind, &[], &mut before);
    }
    nested_objects(new, kind, &[], &mut after);
    let mut out = BTreeSet::new();
    for (these, others) in [(&before, &after), (&after, &before)] {
        for (id, nested) in these {
            if others.get(id).is_some_and(|other: &Nested| other.own == nested.own) {
                continue;
            }
            if FACET_KEYS.contains(&format!("{}_id", nested.kind).as_str()) {
                out.insert((format!("{}_id", nested.kind), id.to_string()));
            }
            // A changed document (a service inside its organization) is news of its identity, as a write's
            // touched root is: its terms and locations, as each copy shows them.
            if ROOTS.contains(&nested.kind.as_str()) {
                for copy in std::iter::once(nested).chain(others.get(id)) {
                    out.extend(identity_facets(&copy.kind, id, Some(copy.full)));
                }
            }
            out.extend(nested.own.as_object().into_iter().flat_map(references));
            let holders = nested.inside.iter().chain(others.get(id).into_iter().flat_map(|o| &o.inside));
            for (holder_kind, holder_id, holder) in holders {
                out.extend(identity_facets(holder_kind, holder_id, Some(holder)));
            }
        }
    }
    out
}

/// An object with an id inside a document: its kind (its key, singular), its own fields (children with ids
/// stand as their ids), and the objects that hold it, with their kinds and ids.
struct Nested<'v> {
    kind: String,
    full: &'v Value,
    own: Value,
    inside: Vec<(String, &'v str, &'v Value)>,
}

/// Every object with an id below the top of `value` (of kind `kind`), by id, as [`Nested`]. `inside` are the
/// objects holding `value` in their lists.
fn nested_objects<'v>(
    value: &'v Value,
    kind: &str,
    inside: &[(String, &'v str, &'v Value)],
    out: &mut HashMap<&'v str, Nested<'v>>,
) {
    let Value::Object(map) = value else { return };
    let id = map.get("id").and_then(Value::as_str);
    // What `value`'s list members are inside: `value` itself (when it is a document: a phone's attributes are
    // not inside the phone as a filter sees it) and what holds it.
    let mut holding: Vec<(String, &'v str, &'v Value)> = inside.to_vec();
    if let Some(id) = id
        && ROOTS.contains(&kind)
    {
        holding.push((kind.to_string(), id, value));
    }
    for (key, child) in map {
        let singular = key.strip_suffix('s').unwrap_or(key);
        match child {
            Value::Array(items) => {
                for item in items {
                    note_nested(item, singular, &holding, out);
                    nested_objects(item, singular, &holding, out);
                }
            }
            // A one-to-one member is shown, not held: nothing above counts as holding it.
            Value::Object(_) => {
                note_nested(child, key, &[], out);
                nested_objects(child, key, &[], out);
            }
            _ => {}
        }
    }
}

/// Records `value` (of kind `kind`, held by `inside`) if it has an id; an object seen twice (an organization
/// lists its locations, and its services' links show them again) is held by what holds either copy.
fn note_nested<'v>(
    value: &'v Value,
    kind: &str,
    inside: &[(String, &'v str, &'v Value)],
    out: &mut HashMap<&'v str, Nested<'v>>,
) {
    let Some(id) = value.get("id").and_then(Value::as_str) else { return };
    let entry = out.entry(id).or_insert_with(|| Nested {
        kind: kind.to_string(),
        full: value,
        own: own_fields(value),
        inside: Vec::new(),
    });
    entry.inside.extend(inside.iter().cloned());
}

/// An object's own fields: its children that have ids stand as those ids, and its `last_modified` is left
/// out (a service embedded in its organization is stamped anew when the organization's rename changes the
/// service's own document: that is not a change of the service).
fn own_fields(value: &Value) -> Value {
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).map(|id| Value::String(id.to_string()));
    let Value::Object(map) = value else { return value.clone() };
    let own = map
        .iter()
        .filter(|(key, _)| *key != "last_modified")
        .map(|(key, v)| {
            let v = match v {
                Value::Object(_) => id_of(v).unwrap_or_else(|| v.clone()),
                Value::Array(items) => {
                    Value::Array(items.iter().map(|item| id_of(item).unwrap_or_else(|| item.clone())).collect())
                }
                other => other.clone(),
            };
            (key.clone(), v)
        })
        .collect();
    Value::Object(own)
}

/// The ids an object references itself, at its top level, under a facet key.
fn references(map: &Map<String, Value>) -> impl Iterator<Item = (String, String)> + '_ {
    map.iter().filter_map(|(key, value)| match value {
        Value::String(s) if FACET_KEYS.contains(&key.as_str()) => Some((key.clone(), s.clone())),
        _ => None,
    })
}

fn collect_facets(value: &Value, out: &mut BTreeSet<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::String(s) if FACET_KEYS.contains(&key.as_str()) => {
                        out.insert((key.clone(), s.clone()));
                    }
                    Value::String(s) if key == "postal_code" => {
                        out.insert(("postcode".into(), normalize_postcode(s)));
                    }
                    Value::Object(_) | Value::Array(_) => {
                        if let Some(id) = v.get("id").and_then(Value::as_str) {
                            // A nested one-to-one object names its own kind by its key (`organization`).
                            let facet = format!("{key}_id");
                            if FACET_KEYS.contains(&facet.as_str()) {
                                out.insert((facet, id.to_string()));
                            }
                        }
                        collect_facets(v, out);
                    }
                    _ => {}
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_facets(v, out)),
        _ => {}
    }
}

/// A root's identity, which its own events and those of the rows it holds match: its own id, its top-level
/// references, the locations it is linked to and the taxonomy terms it is tagged with itself (its own
/// `attributes`, not those of what it embeds: a phone of one service must not match the terms of the
/// organization's other services).
pub fn identity_facets(kind: &str, id: &str, doc: Option<&Value>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    out.insert((format!("{kind}_id"), id.to_string()));
    if let Some(doc) = doc {
        for key in ["organization_id", "service_id", "location_id"] {
            if let Some(s) = doc.get(key).and_then(Value::as_str) {
                out.insert((key.to_string(), s.to_string()));
            }
        }
        // A service is at the locations it links to (so a phone of it matches their location_id even when the
        // service and its links are being deleted, and no service_at_location root is left to say so).
        for link in doc.get("service_at_locations").and_then(Value::as_array).into_iter().flatten() {
            if let Some(location) = link.get("location_id").and_then(Value::as_str) {
                out.insert(("location_id".to_string(), location.to_string()));
            }
        }
        for attribute in doc.get("attributes").and_then(Value::as_array).into_iter().flatten() {
            let term = attribute
                .get("taxonomy_term_id")
                .and_then(Value::as_str)
                .or_else(|| attribute.get("taxonomy_term").and_then(|t| t.get("id")).and_then(Value::as_str));
            if let Some(term) = term {
                out.insert(("taxonomy_term_id".to_string(), term.to_string()));
            }
        }
    }
    out
}

/// Postcodes compare without spaces and case: "sw1a 1aa" equals "SW1A1AA".
pub fn normalize_postcode(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_uppercase).collect()
}

/// One row of a flattened document, with the JSON pointer of where it sat in the body.
#[derive(Debug, Clone)]
pub struct FlatRow {
    pub table: &'static Table,
    pub row: Map<String, Value>,
    pub pointer: String,
}

/// A nested array that was present in the body: its rows replace the parent's existing children.
#[derive(Debug, Clone)]
pub struct ChildSet {
    pub table: &'static Table,
    pub field: &'static str,
    /// The parent's table: a polymorphic `field` (`attribute.link_id`) may hold the same id for rows of others.
    pub parent: &'static str,
    pub parent_id: String,
    pub keep: Vec<String>,
}

/// A related row a body embeds as a copy (`service.organization`, `service_capacity.unit`,
/// `attribute.taxonomy_term`): the row it sits in links to it, and it is created from the copy when the
/// directory does not hold it yet. An existing one is never edited through another row's body: it is shared,
/// and has a path of its own.
#[derive(Debug)]
pub struct Related {
    pub table: &'static Table,
    pub id: String,
    /// The copy split into rows (its own children and related rows included).
    pub body: Flattened,
}

/// A body split into rows, parents before children.
#[derive(Debug, Default)]
pub struct Flattened {
    pub rows: Vec<FlatRow>,
    pub child_sets: Vec<ChildSet>,
    pub related: Vec<Related>,
}

impl Flattened {
    /// Every row: the body's own, then those of its related copies (and of theirs).
    pub fn all_rows(self) -> Vec<FlatRow> {
        let mut rows = self.rows;
        for related in self.related {
            rows.extend(related.body.all_rows());
        }
        rows
    }
}

/// Splits an HSDS JSON object of `table` (which may nest children, e.g. `service.phones`) into flat rows,
/// validating each. Children get their back reference filled in from the parent (a phone inside a service
/// gets its `service_id`); a child naming a different parent is an error. A related object
/// (`service.organization`, `attribute.taxonomy_term`) fills in the field that links to it (`organization_id`)
/// and is kept as a [`Related`] copy when it holds more than its id; so is a full service_at_location's
/// `service`. An organization's `services` are upserted with it, but never deleted for being left out.
pub fn flatten(table: &'static Table, body: &Value, pointer: &str) -> Result<Flattened, Vec<FieldError>> {
    let mut out = Flattened::default();
    let mut errors = Vec::new();
    flatten_into(table, body, pointer, &mut out, &mut errors);
    // One row may appear twice in a body: a compiled document shows a phone under its contact and again
    // under its service_at_location, each time with the back reference of where it sits. The occurrences
    // are one row, all their fields together; two values for one field would keep one silently: refused.
    let mut first: HashMap<(&str, String), usize> = HashMap::new();
    let mut keep = vec![true; out.rows.len()];
    for (i, kept) in keep.iter_mut().enumerate() {
        // A row without a valid id is refused already; two such are not one row.
        let id =
            out.rows[i].row.get("id").and_then(Value::as_str).filter(|id| super::validate::parse_uuid(id).is_some());
        let Some(id) = id.map(str::to_string) else { continue };
        let table = out.rows[i].table.name;
        let Some(&earlier) = first.get(&(table, id.clone())) else {
            first.insert((table, id), i);
            continue;
        };
        *kept = false;
        let later = std::mem::take(&mut out.rows[i].row);
        for (key, value) in later {
            match out.rows[earlier].row.get(&key) {
                Some(existing) if *existing != value => errors.push(FieldError::new(
                    format!("{}/{key}", out.rows[i].pointer),
                    format!("{table} {id} is also at {} with another {key}", out.rows[earlier].pointer),
                )),
                Some(_) => {}
                None => drop(out.rows[earlier].row.insert(key, value)),
            }
        }
    }
    let mut kept = keep.into_iter();
    out.rows.retain(|_| kept.next().unwrap_or(true));
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn flatten_into(table: &'static Table, body: &Value, pointer: &str, out: &mut Flattened, errors: &mut Vec<FieldError>) {
    let Some(map) = body.as_object() else {
        errors.push(FieldError::new(pointer, "must be a JSON object"));
        return;
    };
    let mut row = Map::new();
    let mut nested_bodies = Vec::new();
    let mut related = Vec::new();
    let mut services = None;
    for (key, value) in map {
        if let Some(nested) = table.nested(key) {
            match nested.kind {
                NestedKind::One => {
                    if let Some(related_table) = super::catalog::table(nested.table).filter(|_| !value.is_null()) {
                        related.push((key, related_table, value));
                    }
                }
                NestedKind::Many => nested_bodies.push((nested, value)),
            }
        } else if table.name == "organization" && key == "services" {
            services = Some(value).filter(|v| !v.is_null());
        } else if let Some(service) = service_of_link(table, key).filter(|_| !value.is_null()) {
            related.push((key, service, value));
        } else if value.is_null() {
            // A null field is an absent one: stored, it would be served as `null`, which the HSDS schemas
            // (typed, never nullable) refuse.
            continue;
        } else {
            row.insert(key.clone(), value.clone());
        }
    }
    super::validate::normalize_uuids(table, &mut row);
    for (key, related_table, value) in related {
        let at = super::validate::pointer_join(pointer, key);
        link_related(table, related_table, value, &at, &mut row, out, errors);
    }
    errors.extend(validate_row(table, &row, pointer));
    let id = row.get("id").and_then(Value::as_str).map(str::to_string);
    out.rows.push(FlatRow { table, row, pointer: pointer.to_string() });
    let Some(id) = id else { return };
    for (nested, value) in nested_bodies {
        if value.is_null() {
            continue;
        }
        let Some(child_table) = super::catalog::table(nested.table) else { continue };
        let Some(back) = table.back_reference(nested) else { continue };
        let child_pointer = format!("{pointer}/{}", nested.key);
        let Some(keep) = flatten_children(table, &id, child_table, back, value, &child_pointer, out, errors) else {
            continue;
        };
        out.child_sets.push(ChildSet {
            table: child_table,
            field: back.name,
            parent: table.name,
            parent_id: id.clone(),
            keep,
        });
    }
    // An organization's services are upserted with it, but they are entities of their own: one the body does
    // not list is left alone (a body that lists some services, or none, deletes nothing), unlike a phone.
    if let Some(value) = services
        && let Some(service) = super::catalog::table("service")
        && let Some(back) = service.field("organization_id")
    {
        flatten_children(table, &id, service, back, value, &format!("{pointer}/services"), out, errors);
    }
}

/// Links `row` (of `table`) to the related object `value` it embeds at `at`: the field holding the related
/// row's id is filled in from the object's (or must agree with it), and an object with more than its id is
/// kept as a copy to create the row from, should it not exist yet.
fn link_related(
    table: &'static Table,
    related_table: &'static Table,
    value: &Value,
    at: &str,
    row: &mut Map<String, Value>,
    out: &mut Flattened,
    errors: &mut Vec<FieldError>,
) {
    let Some(link) = table.link_to(related_table.name) else { return };
    let Some(object) = value.as_object() else {
        errors.push(FieldError::new(at, "must be a JSON object"));
        return;
    };
    let Some(related_id) = object.get("id").and_then(Value::as_str) else {
        errors.push(FieldError::new(
            format!("{at}/id"),
            format!(
                "is required: a related {} is linked by its id (and created from the object when absent); an \
                 existing one is edited at /{}/{{id}}, never through another row",
                related_table.name, related_table.plural
            ),
        ));
        return;
    };
    if let Err(detail) = super::validate::check_value(super::catalog::FieldType::Uuid, &object["id"]) {
        errors.push(FieldError::new(format!("{at}/id"), detail));
        return;
    }
    let related_id = super::validate::canonical_id(related_id).into_owned();
    match row.get(link.name) {
        None => drop(row.insert(link.name.to_string(), Value::String(related_id.clone()))),
        Some(Value::String(linked)) if *linked == related_id => {}
        // A bad id in the link field is reported there by the row's own validation.
        Some(Value::String(linked)) if super::validate::parse_uuid(linked).is_some() => {
            errors
                .push(FieldError::new(format!("{at}/id"), format!("must be {linked}, the {} of this row", link.name)));
            return;
        }
        Some(_) => return,
    }
    if object.iter().all(|(key, value)| key == "id" || value.is_null()) {
        return;
    }
    match flatten(related_table, value, at) {
        Ok(body) => out.related.push(Related { table: related_table, id: related_id, body }),
        Err(more) => errors.extend(more),
    }
}

/// Flattens the array `value` of `child_table` rows nested in the `table` row `id`, filling in (or checking)
/// each child's back reference `back`; returns the children's ids (`None` when `value` is not an array).
#[allow(clippy::too_many_arguments)]
fn flatten_children(
    table: &'static Table,
    id: &str,
    child_table: &'static Table,
    back: &'static super::catalog::Field,
    value: &Value,
    child_pointer: &str,
    out: &mut Flattened,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<String>> {
    let Some(items) = value.as_array() else {
        errors.push(FieldError::new(child_pointer, "must be an array"));
        return None;
    };
    let mut keep = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_pointer = format!("{child_pointer}/{i}");
        let mut item = item.clone();
        let mut filled_in = false;
        if let Some(obj) = item.as_object_mut() {
            match obj.get(back.name) {
                None | Some(Value::Null) => {
                    obj.insert(back.name.to_string(), Value::String(id.to_string()));
                    filled_in = true;
                }
                // Case aside: the child's ids are lowercased when it is flattened, as the parent's were.
                Some(Value::String(s)) if s.eq_ignore_ascii_case(id) => {}
                Some(_) => errors.push(FieldError::new(
                    format!("{item_pointer}/{}", back.name),
                    format!("must be {id}, the id of the {} it is nested in", table.name),
                )),
            }
            // A polymorphic child (an attribute, a metadata row) nested in a row is that row's: its type field
            // says the parent's table, as its id field holds the parent's id. Given as another table's, it was
            // stored as that table's and vanished from the document it was written in; a value that names no
            // table (the official examples' placeholder) is kept: it counts for any table.
            let type_field = match child_table.name {
                "attribute" => Some("link_entity"),
                "metadata" => Some("resource_type"),
                _ => None,
            };
            if let Some(type_field) = type_field.filter(|_| back.references == Some("*")) {
                let names_another_table = |given: &str| given != table.name && super::catalog::table(given).is_some();
                match obj.get(type_field) {
                    None | Some(Value::Null) => drop(obj.insert(type_field.into(), table.name.into())),
                    Some(Value::String(given)) if names_another_table(given) => {
                        obj.insert(type_field.into(), table.name.into());
                    }
                    _ => {}
                }
            }
            if let Some(child_id) = obj.get("id").and_then(Value::as_str) {
                keep.push(super::validate::canonical_id(child_id).into_owned());
            }
        }
        let before = errors.len();
        flatten_into(child_table, &item, &item_pointer, out, errors);
        if filled_in {
            // The back reference came from the parent's id: if that id is bad, it is reported where the
            // client wrote it, not again at a field the client never sent.
            let filled_pointer = format!("{item_pointer}/{}", back.name);
            let child_errors = errors.split_off(before);
            errors.extend(child_errors.into_iter().filter(|e| e.pointer != filled_pointer));
        }
    }
    Some(keep)
}

/// A full service_at_location document embeds its service (compiled, without the service's own
/// `service_at_locations`), though the table's JSON form has no such key: it links like a related object.
fn service_of_link(table: &Table, key: &str) -> Option<&'static Table> {
    (table.name == "service_at_location" && key == "service").then(|| super::catalog::table("service")).flatten()
}

/// Removes from a stored document what it only shows of other rows, everywhere in it, so that a merge patch
/// can be applied to it and the result written back: the copies of related rows (`organization` in a service,
/// `unit` in each capacity, a link's `service`), whose linking fields stay, and an organization's `services`.
/// What the patch itself gives of them is then the body's own.
pub fn strip_copies(table: &'static Table, doc: &mut Value) {
    let Some(map) = doc.as_object_mut() else { return };
    if table.name == "organization" {
        map.remove("services");
    }
    map.retain(|key, _| service_of_link(table, key).is_none());
    for nested in table.nested {
        match nested.kind {
            NestedKind::One => drop(map.remove(nested.key)),
            NestedKind::Many => {
                let Some(child) = super::catalog::table(nested.table) else { continue };
                for item in map.get_mut(nested.key).and_then(Value::as_array_mut).into_iter().flatten() {
                    strip_copies(child, item);
                }
            }
        }
    }
}

#[cfg(test)]
mod folding {
    use super::fold_diacritics;

    #[test]
    fn latin_diacritics_come_off_and_other_marks_stay() {
        assert_eq!(
            fold_diacritics("Café Niño, Educación à São Paulo; Đà Nẵng"),
            "Cafe Nino, Educacion a Sao Paulo; Đa Nang"
        );
        assert!(matches!(fold_diacritics("plain ascii"), std::borrow::Cow::Borrowed(_)), "nothing to fold: no copy");
        // Marks written after their letter, and a lower-cased dotted capital I (i + U+0307).
        assert_eq!(fold_diacritics("Cafe\u{301} n\u{303}o i\u{307}stanbul"), "Cafe no istanbul");
        // Other scripts' marks are part of their letters: Devanagari and Arabic keep theirs; so do letters
        // that are no accented base letter (ß, ø).
        for kept in ["हिन्दी", "مَدرسة", "Straße", "Søren"] {
            assert_eq!(fold_diacritics(kept), kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hsds::catalog::table;

    const SERVICE: &str = "ac148810-d857-441c-9679-408f346de14b";
    const ORG: &str = "d9d5e0f5-d3ce-4f73-9a2f-4dd0ecc6c610";

    #[test]
    fn flatten_fills_back_references_and_records_child_sets() {
        let body = json!({
            "id": SERVICE, "name": "Food", "status": "active", "organization_id": ORG,
            "organization": {"id": ORG, "name": "Copy", "description": "d"},
            "phones": [{"id": "5f3c1a2e-0000-4000-8000-000000000001", "number": "555"}]
        });
        let flat = flatten(table("service").unwrap(), &body, "").unwrap();
        assert_eq!(flat.rows.len(), 2);
        assert_eq!(flat.rows[1].row["service_id"], json!(SERVICE));
        assert_eq!(flat.rows[1].pointer, "/phones/0");
        assert!(!flat.rows[0].row.contains_key("organization"));
        assert_eq!(flat.child_sets.len(), 1);
        assert_eq!(flat.child_sets[0].keep, vec!["5f3c1a2e-0000-4000-8000-000000000001".to_string()]);
        // The organization is a related copy, kept apart from the body's own rows.
        assert_eq!(flat.related.len(), 1);
        assert_eq!((flat.related[0].table.name, flat.related[0].id.as_str()), ("organization", ORG));
        assert_eq!(flat.related[0].body.rows[0].row["name"], "Copy");
    }

    #[test]
    fn a_related_object_fills_in_its_link_or_must_agree_with_it() {
        const UNIT: &str = "8896b788-7b3e-11ef-8db9-7f3d040352b3";
        let capacity = table("service_capacity").unwrap();
        let body = json!({"id": SERVICE, "service_id": SERVICE, "available": 1, "updated": "2024-01-01T00:00:00Z",
                          "unit": {"id": UNIT.to_uppercase(), "name": "Bed"}});
        let flat = flatten(capacity, &body, "").unwrap();
        assert_eq!(flat.rows[0].row["unit_id"], UNIT, "filled in, as stored (lowercase)");
        assert_eq!(flat.related[0].body.rows[0].pointer, "/unit");
        // A bare id links without a copy to create.
        let link = json!({"id": SERVICE, "service_id": SERVICE, "available": 1, "updated": "2024-01-01T00:00:00Z",
                          "unit": {"id": UNIT}});
        let flat = flatten(capacity, &link, "").unwrap();
        assert_eq!(flat.rows[0].row["unit_id"], UNIT);
        assert!(flat.related.is_empty());
        // Neither the field nor the object: the unit is required (the compiled schema requires it).
        let mut none = link.clone();
        none.as_object_mut().unwrap().remove("unit");
        assert_eq!(flatten(capacity, &none, "").unwrap_err()[0].pointer, "/unit_id");
        // Both, disagreeing; an object without a usable id.
        let mut both = link.clone();
        both["unit_id"] = json!(ORG);
        let errors = flatten(capacity, &both, "").unwrap_err();
        assert_eq!(errors[0].pointer, "/unit/id");
        assert!(errors[0].detail.contains(ORG), "{}", errors[0].detail);
        for bad in [json!({"name": "Bed"}), json!({"id": "bed"}), json!("bed")] {
            let mut body = link.clone();
            body["unit"] = bad.clone();
            let errors = flatten(capacity, &body, "").unwrap_err();
            assert!(errors.iter().all(|e| e.pointer.starts_with("/unit")), "{bad}: {errors:?}");
        }
        // A copy's own errors point into it.
        let mut invalid = link.clone();
        invalid["unit"] = json!({"id": UNIT, "uri": "not a uri"});
        let pointers: Vec<String> =
            flatten(capacity, &invalid, "").unwrap_err().into_iter().map(|e| e.pointer).collect();
        assert_eq!(pointers, ["/unit/name", "/unit/uri"]);
    }

    #[test]
    fn strip_copies_keeps_the_links_and_drops_what_other_rows_show() {
        let mut doc = json!({
            "id": SERVICE, "organization_id": ORG, "organization": {"id": ORG},
            "capacities": [{"id": "c", "unit_id": "u", "unit": {"id": "u"}}],
            "attributes": [{"id": "a", "taxonomy_term_id": "t", "taxonomy_term": {"id": "t", "taxonomy_detail": {}}}]
        });
        strip_copies(table("service").unwrap(), &mut doc);
        assert_eq!(
            doc,
            json!({"id": SERVICE, "organization_id": ORG, "capacities": [{"id": "c", "unit_id": "u"}],
                   "attributes": [{"id": "a", "taxonomy_term_id": "t"}]})
        );
        let mut link = json!({"id": "l", "service_id": SERVICE, "service": {"id": SERVICE}, "location": {"id": "x"}});
        strip_copies(table("service_at_location").unwrap(), &mut link);
        assert_eq!(link, json!({"id": "l", "service_id": SERVICE}));
    }

    #[test]
    fn flatten_reports_nested_errors_by_pointer() {
        let body = json!({
            "id": SERVICE, "name": "Food", "status": "active",
            "phones": [{"id": "5f3c1a2e-0000-4000-8000-000000000001", "service_id": ORG, "number": "555"}]
        });
        let errors = flatten(table("service").unwrap(), &body, "").unwrap_err();
        assert_eq!(errors[0].pointer, "/phones/0/service_id");
    }

    #[test]
    fn a_bad_parent_id_is_reported_once_where_it_was_written() {
        let body = json!({
            "id": SERVICE, "name": "Food", "status": "active",
            "phones": [{"id": "not-a-uuid", "number": "555", "languages": [{"id": ORG, "name": "English"}]}]
        });
        let errors = flatten(table("service").unwrap(), &body, "").unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/phones/0/id"], "{errors:?}");

        let errors = flatten(table("service").unwrap(), &json!(["not", "an", "object"]), "").unwrap_err();
        assert_eq!(errors, vec![FieldError::new("", "must be a JSON object")]);
    }

    #[test]
    fn facets_collect_ids_and_postcodes() {
        let doc = json!({"id": "s1", "organization_id": "o1",
            "attributes": [{"taxonomy_term_id": "t1", "taxonomy_term": {"id": "t1", "taxonomy_id": "x1"}}],
            "service_at_locations": [{"location": {"id": "l1", "addresses": [{"postal_code": "sw1a 1aa"}]}}]});
        let f = facets(table("service").unwrap(), &doc);
        for pair in [
            ("service_id", "s1"),
            ("organization_id", "o1"),
            ("taxonomy_term_id", "t1"),
            ("taxonomy_id", "x1"),
            ("location_id", "l1"),
            ("postcode", "SW1A1AA"),
        ] {
            assert!(f.contains(&(pair.0.to_string(), pair.1.to_string())), "{pair:?} in {f:?}");
        }
    }

    #[test]
    fn what_changed_inside_a_document_names_the_changed_objects_and_the_way_to_them() {
        let old = json!({"id": "o1", "name": "Org", "services": [
            {"id": "s1", "organization_id": "o1", "phones": [{"id": "p1", "service_id": "s1", "number": "1"}]},
            {"id": "s2", "organization_id": "o1", "phones": [{"id": "p2", "service_id": "s2", "number": "2"}]}]});
        let mut new = old.clone();
        new["services"][1]["phones"][0]["number"] = json!("3");
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeSet<_>>();
        // The phone of s2 changed: s2 (and the organization) hold it; s1 and its phone are not named.
        let expected = pairs(&[("service_id", "s2"), ("organization_id", "o1")]);
        assert_eq!(changed_inside("organization", Some(&old), &new), expected);
        assert_eq!(changed_inside("organization", Some(&old), &old), BTreeSet::new());
        // A new document: everything in it is new.
        let all = changed_inside("organization", None, &new);
        assert!(all.contains(&("service_id".into(), "s1".into())) && all.contains(&("service_id".into(), "s2".into())));
        // A service gone from the list is named too.
        let mut fewer = old.clone();
        fewer["services"].as_array_mut().unwrap().remove(0);
        assert_eq!(
            changed_inside("organization", Some(&old), &fewer),
            pairs(&[("service_id", "s1"), ("organization_id", "o1")])
        );
        // The organization's own rename names nothing inside it.
        let mut renamed = old.clone();
        renamed["name"] = json!("Renamed");
        assert_eq!(changed_inside("organization", Some(&old), &renamed), BTreeSet::new());
        // A location's phone, shown again by a service's link: inside the location only, not the service.
        let located = json!({"id": "o1", "locations": [{"id": "l1", "phones": []}], "services": [{"id": "s1",
            "service_at_locations": [{"id": "k1", "service_id": "s1", "location": {"id": "l1", "phones": []}}]}]});
        let mut with_phone = located.clone();
        let phone = json!({"id": "p9", "location_id": "l1", "number": "1"});
        with_phone["locations"][0]["phones"] = json!([phone.clone()]);
        with_phone["services"][0]["service_at_locations"][0]["location"]["phones"] = json!([phone]);
        assert_eq!(
            changed_inside("organization", Some(&located), &with_phone),
            pairs(&[("location_id", "l1"), ("organization_id", "o1")])
        );
    }

    #[test]
    fn etag_changes_with_content() {
        assert_ne!(etag(&json!({"a": 1})), etag(&json!({"a": 2})));
        assert_eq!(etag(&json!({"a": 1})), etag(&json!({"a": 1})));
    }

    #[test]
    fn a_variant_has_a_tag_of_its_own_that_a_write_takes_as_its_documents() {
        let tag = etag(&json!({"a": 1}));
        let full = full_service_etag(&tag);
        assert_ne!(full, tag);
        assert!(full.starts_with('"') && full.ends_with("-full_service\""), "{full}");
        assert!(!etag_listed(&tag, &full, true), "a cache of one is not the other");
        assert!(!etag_listed(&full, &tag, true));
        assert!(etag_listed(&full, &tag, false), "If-Match with the variant's tag names the document");
        assert!(!etag_listed(&full_service_etag(&etag(&json!({"a": 2}))), &tag, false));
    }
}

/// Properties over arbitrary bodies: flattening never panics, every error points into the body (or names a
/// required field missing from an object of the body), and every flattened row comes from an object of it.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::hsds::catalog::{TABLES, table};
    use crate::hsds::strategies::{any_table, json_object, json_value, valid_row};

    /// A body of `table`: a valid row overlaid with arbitrary members, with one of its nested arrays holding
    /// valid child rows overlaid the same way.
    fn body(parent: &'static Table) -> BoxedStrategy<Value> {
        let overlay = |row: BoxedStrategy<Map<String, Value>>| {
            let bad_id = "[a-z0-9-]{0,12}".prop_map(|id| [("id".to_owned(), Value::String(id))].into_iter().collect());
            (row, prop_oneof![Just(Map::new()), json_object(), bad_id])
                .prop_map(|(mut row, extra)| {
                    row.extend(extra);
                    row
                })
                .boxed()
        };
        let many: Vec<_> = parent.nested.iter().filter(|n| n.kind == NestedKind::Many).collect();
        let root = overlay(valid_row(parent));
        if many.is_empty() {
            return root.prop_map(Value::Object).boxed();
        }
        let children = proptest::sample::select(many).prop_flat_map(move |nested| {
            let child = table(nested.table).unwrap_or(&TABLES[0]);
            (Just(nested.key), vec(overlay(valid_row(child)).prop_map(Value::Object), 0..3))
        });
        (root, proptest::option::of(children))
            .prop_map(|(mut row, children)| {
                if let Some((key, items)) = children {
                    row.insert(key.to_owned(), Value::Array(items));
                }
                Value::Object(row)
            })
            .boxed()
    }

    /// The pointer without its last reference token.
    fn parent_pointer(pointer: &str) -> &str {
        pointer.rsplit_once('/').map_or("", |(parent, _)| parent)
    }

    fn located(body: &Value, error: &FieldError) -> bool {
        body.pointer(&error.pointer).is_some()
            || (error.detail.starts_with("is required")
                && body.pointer(parent_pointer(&error.pointer)).is_some_and(Value::is_object))
    }

    proptest! {
        #[test]
        fn errors_point_into_the_body_and_rows_come_from_it(
            (table, body) in any_table().prop_flat_map(|t| (Just(t), body(t))),
        ) {
            match flatten(table, &body, "") {
                Ok(flat) => {
                    prop_assert_eq!(flat.rows[0].pointer.as_str(), "");
                    for row in &flat.rows {
                        prop_assert!(body.pointer(&row.pointer).is_some_and(Value::is_object), "{}", row.pointer);
                    }
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for error in &errors {
                        prop_assert!(located(&body, error), "{error} in {body}");
                    }
                }
            }
        }

        #[test]
        fn any_json_value_is_refused_or_flattened_without_panic(table in any_table(), body in json_value()) {
            if let Err(errors) = flatten(table, &body, "") {
                for error in &errors {
                    prop_assert!(located(&body, error), "{error} in {body}");
                }
            }
        }
    }
}
