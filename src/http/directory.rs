//! The HSDS API: lists, search and documents of every table (reads, public by default), and hsda's
//! writes — `PUT` (create or replace, children included), `PATCH` (JSON merge patch) and `DELETE`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Caller, JsonBody, Params};
use crate::hsds::catalog::{Table, table_by_plural};
use crate::hsds::document::{self, etag};
use crate::hsds::validate::FieldError;
use crate::store::compile::list_form;
use crate::store::keys::Scope;
use crate::store::read::{ListQuery, Listed, Shape};
use crate::store::write::{Op, WriteOptions, WriteOutcome};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{plural}", get(list).post(search))
        .route("/{plural}/{id}", get(fetch).put(put).patch(patch).delete(remove).post(post_to_row))
}

const MAX_PER_PAGE: u64 = 1000;
const DEFAULT_PER_PAGE: u64 = 50;
/// A `minimal=true` list's page when none is asked for: every service (of up to this many).
const MINIMAL_PAGE: u64 = 100_000;

fn table_of(plural: &str) -> Result<&'static Table, ApiError> {
    table_by_plural(plural).ok_or_else(|| ApiError::NotFound(format!("/{plural}")))
}

/// Parsed list parameters.
struct ListParams {
    query: ListQuery,
    page: u64,
    per_page: u64,
    ndjson: bool,
    full: bool,
    minimal: bool,
    full_service: bool,
}

impl ListParams {
    fn shape(&self) -> Shape {
        match (self.minimal, self.full) {
            (true, _) => Shape::Minimal,
            (false, true) => Shape::Full,
            (false, false) => Shape::List,
        }
    }
}

fn parse_bool(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" || v == "1" || v.is_empty() => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(_) => Err(ApiError::parameter(name, "must be true or false")),
    }
}

fn parse_uint(params: &HashMap<String, String>, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::parameter(name, format!("must be an integer from {min} to {max}"))),
        },
    }
}

fn parse_uuid_param(params: &HashMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => {
            // Stored ids are lowercase: so is the filter.
            crate::hsds::validate::parse_uuid(v)
                .map(|_| Some(path_id(v)))
                .ok_or_else(|| ApiError::parameter(name, "must be a UUID (8-4-4-4-12 hex digits)"))
        }
    }
}

/// Accepts RFC 3339 date-times and plain dates (`2024-05-01` = its midnight UTC).
pub fn parse_timestamp(name: &str, v: &str) -> Result<String, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v.trim()) {
        return Ok(crate::store::timestamp_text(t.with_timezone(&chrono::Utc)));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        if let Some(t) = t {
            return Ok(crate::store::timestamp_text(t));
        }
    }
    Err(ApiError::parameter(name, "must be an RFC 3339 date-time such as 2024-05-01T00:00:00Z, or a date"))
}

fn parse_list_params(table: &Table, params: &HashMap<String, String>) -> Result<ListParams, ApiError> {
    // HSDS defines `minimal` for services only; elsewhere an `{id, last_modified}` item would fail the list's
    // schema (which requires the other fields), so the parameter changes nothing there.
    let minimal = parse_bool(params, "minimal")? && table.name == "service";
    // HSDS asks a minimal list to "aim to return all services within one call": unless a page size is
    // asked for, it is one page of up to 100 000 (an id and a time each, read as such: `Shape::Minimal`).
    // A page size asked for has the one limit every list has.
    let per_page_default = if minimal { MINIMAL_PAGE } else { DEFAULT_PER_PAGE };
    let format = params.get("format").map(String::as_str).unwrap_or("json");
    let ndjson = match format {
        "json" => false,
        "ndjson" => true,
        _ => return Err(ApiError::parameter("format", "must be json or ndjson")),
    };
    let proximity = match params.get("proximity") {
        None => None,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(m) if m.is_finite() && m >= 0.0 => Some(m),
            _ => return Err(ApiError::parameter("proximity", "must be a distance in metres")),
        },
    };
    let postcode = params.get("postcode").filter(|p| !p.trim().is_empty()).cloned();
    if proximity.is_some() && postcode.is_none() {
        return Err(ApiError::parameter("proximity", "needs a postcode to measure from"));
    }
    let search = params.get("search").filter(|s| !s.trim().is_empty()).cloned();
    let modified_after = match params.get("modified_after") {
        Some(v) if !v.is_empty() => Some(parse_timestamp("modified_after", v)?),
        _ => None,
    };
    Ok(ListParams {
        query: ListQuery {
            search,
            organization_id: parse_uuid_param(params, "organization_id")?,
            taxonomy_term_id: parse_uuid_param(params, "taxonomy_term_id")?,
            taxonomy_id: parse_uuid_param(params, "taxonomy_id")?,
            service_id: parse_uuid_param(params, "service_id")?,
            location_id: parse_uuid_param(params, "location_id")?,
            parent_id: parse_uuid_param(params, "parent_id")?,
            top_only: parse_bool(params, "top_only")?,
            modified_after,
            postcode,
            proximity,
        },
        page: parse_uint(params, "page", 1, 1, u32::MAX as u64)?,
        per_page: parse_uint(params, "per_page", per_page_default, 1, MAX_PER_PAGE)?,
        ndjson,
        // Organizations "with full service information" are full organizations: it implies `full`.
        full: parse_bool(params, "full")? || (table.name == "organization" && parse_bool(params, "full_service")?),
        minimal,
        full_service: parse_bool(params, "full_service")?,
    })
}

/// How one listed row is shown, per `full`, `minimal` and `full_service`.
fn present(table: &'static Table, listed: Listed, p: &ListParams) -> Value {
    if p.minimal {
        let last_modified = listed.value.get("last_modified").filter(|v| !v.is_null()).cloned();
        let last_modified = last_modified.unwrap_or(Value::String(listed.modified_at));
        return json!({ "id": listed.id, "last_modified": last_modified });
    }
    if !table.is_root() {
        return listed.value;
    }
    if p.full {
        return view_document(table, listed.value, p.full_service || table.name != "organization");
    }
    list_form(&listed.value)
}

/// A stored root document as served: an organization's services in list form unless `full_service`.
fn view_document(table: &'static Table, mut doc: Value, full_service: bool) -> Value {
    if table.name == "organization"
        && !full_service
        && let Some(services) = doc.get_mut("services").and_then(Value::as_array_mut)
    {
        {
            for s in services.iter_mut() {
                *s = list_form(s);
            }
        }
    }
    doc
}

async fn list(
    State(state): State<AppState>,
    Path(plural): Path<String>,
    Params(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read_access(&headers).await?;
    let table = table_of(&plural)?;
    let p = parse_list_params(table, &params)?;
    respond_list(state, table, p, Some(&headers)).await
}

/// `POST` on a list path: the same search, with parameters from the query string and/or a JSON object body.
async fn search(
    State(state): State<AppState>,
    Path(plural): Path<String>,
    Params(mut params): Params,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    state.check_read_access(&headers).await?;
    let table = table_of(&plural)?;
    // The same answers as a write's body: 413 past the limit, 415 for what is not JSON (a form, say).
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::BadRequest(format!("could not read the request body: {e}")),
    })?;
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    if !body.is_empty() && essence.is_some_and(|e| e != "application/json" && !e.ends_with("+json")) {
        return Err(ApiError::UnsupportedMediaType);
    }
    if !body.is_empty() {
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()))
        })?;
        super::extract::refuse_nul(&value)?;
        let Value::Object(map) = value else {
            return Err(ApiError::invalid("", "must be a JSON object of search parameters"));
        };
        check_search_body(&map)?;
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s,
                Value::Null => continue,
                other => other.to_string(),
            };
            // The query string wins where both name one (as the OpenAPI says).
            params.entry(k).or_insert(text);
        }
    }
    let p = parse_list_params(table, &params)?;
    respond_list(state, table, p, None).await
}

/// Every parameter a list reads (`parse_list_params`), with the JSON type a search body may give it besides
/// text (as in a query string).
const LIST_PARAMETERS: [(&str, &str); 17] = [
    ("search", "string"),
    ("page", "integer"),
    ("per_page", "integer"),
    ("format", "string"),
    ("modified_after", "string"),
    ("organization_id", "string"),
    ("taxonomy_term_id", "string"),
    ("taxonomy_id", "string"),
    ("service_id", "string"),
    ("location_id", "string"),
    ("parent_id", "string"),
    ("top_only", "boolean"),
    ("postcode", "string"),
    ("proximity", "number"),
    ("full", "boolean"),
    ("minimal", "boolean"),
    ("full_service", "boolean"),
];

/// A search body names only parameters a list reads, each with a value of its type (a number or a boolean may
/// also come as text, as in a query string): a misspelt name would otherwise be ignored and widen the search.
fn check_search_body(body: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (name, value) in body {
        let pointer = crate::hsds::validate::pointer_join("", name);
        let Some((_, expected)) = LIST_PARAMETERS.iter().find(|(known, _)| known == name) else {
            let names: Vec<&str> = LIST_PARAMETERS.iter().map(|(name, _)| *name).collect();
            errors.push(FieldError::new(pointer, format!("is not a search parameter ({})", names.join(", "))));
            continue;
        };
        let fits = matches!(
            (*expected, value),
            (_, Value::Null | Value::String(_))
                | ("integer" | "number", Value::Number(_))
                | ("boolean", Value::Bool(_))
        );
        if !fits {
            errors.push(FieldError::new(pointer, format!("must be a {expected}")));
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(ApiError::Invalid(errors)),
    }
}

/// A list page; for a `GET` (`conditional`: its headers) with a weak ETag of the page, and 304 when
/// `If-None-Match` names it.
async fn respond_list(
    state: AppState,
    table: &'static Table,
    p: ListParams,
    conditional: Option<&HeaderMap>,
) -> Result<Response, ApiError> {
    if p.ndjson {
        let stream = state.db.stream(table, p.query.clone(), p.shape()).map(move |row| match row {
            Ok(listed) => {
                let mut line = present(table, listed, &p).to_string();
                line.push('\n');
                Ok::<_, std::io::Error>(axum::body::Bytes::from(line))
            }
            Err(e) => {
                tracing::error!(error = ?e, "ndjson stream failed");
                Err(std::io::Error::other("database error"))
            }
        });
        let mut response = Body::from_stream(stream).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        return Ok(response);
    }
    let (total, rows) = state.db.list(table, &p.query, p.page, p.per_page, p.shape()).await?;
    let contents: Vec<Value> = rows.into_iter().map(|r| present(table, r, &p)).collect();
    let page = page_envelope(total, p.page, p.per_page, contents);
    let Some(headers) = conditional else { return Ok(axum::Json(page).into_response()) };
    // Weak: the same page may be serialised with other bytes (key order), and it means "the same contents".
    let tag = format!("W/{}", etag(&page));
    Ok(not_modified(headers, &tag).unwrap_or_else(|| with_etag(StatusCode::OK, page, &tag)))
}

/// A 304 when the request's `If-None-Match` names `tag` (weak comparison, RFC 9110 13.1.2: `W/"x"` matches
/// `"x"`; `*` matches whatever exists).
pub(super) fn not_modified(headers: &HeaderMap, tag: &str) -> Option<Response> {
    let listed = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())?;
    document::etag_listed(listed, tag, true).then(|| {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, header_value(tag));
        r
    })
}

/// The HSDS Page envelope.
pub fn page_envelope(total: u64, page: u64, per_page: u64, contents: Vec<Value>) -> Value {
    let total_pages = total.div_ceil(per_page.max(1));
    json!({
        "total_items": total,
        "total_pages": total_pages,
        "page_number": page,
        "size": contents.len(),
        "first_page": page == 1,
        "last_page": page >= total_pages,
        "empty": contents.is_empty(),
        "contents": contents,
    })
}

async fn fetch(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    Params(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_read_access(&headers).await?;
    let table = table_of(&plural)?;
    let id = path_id(&id);
    let full_service = parse_bool(&params, "full_service")?;
    let Some(doc) = state.db.get(table, &id).await? else {
        return Err(ApiError::NotFound(format!("{} {id}", table.name)));
    };
    let mut tag = etag(&doc);
    // An organization with its services in full is another representation of it, with a tag of its own.
    if table.name == "organization" && full_service {
        tag = document::full_service_etag(&tag);
    }
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    let view = if table.is_root() { view_document(table, doc, full_service) } else { doc };
    Ok(with_etag(StatusCode::OK, view, &tag))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

pub(super) fn with_etag(status: StatusCode, body: Value, tag: &str) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert(header::ETAG, header_value(tag));
    r
}

/// A precondition header as given, for `table/id` (the write compares it: see `document::etag_listed`).
fn precondition(
    name: header::HeaderName,
    table: &'static Table,
    id: &str,
    headers: &HeaderMap,
) -> Option<(&'static Table, String, String)> {
    // A list may come on several lines of the header.
    let lines: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::trim).collect();
    (!lines.is_empty()).then(|| (table, id.to_string(), lines.join(", ")))
}

/// Turns a body for `table/id` into write operations: the rows, the replaced child sets, the related copies.
fn body_to_ops(table: &'static Table, id: &str, mut body: Value) -> Result<Vec<Op>, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::invalid("", "must be a JSON object"));
    };
    match map.get("id") {
        None | Some(Value::Null) => drop(map.insert("id".into(), Value::String(id.to_string()))),
        Some(given) => check_id_in_body(given, id)?,
    }
    let flat = document::flatten(table, &body, "").map_err(ApiError::Invalid)?;
    Ok(Op::all_of(flat))
}

/// A body's `id` must be the path's (case aside: ids are stored in lowercase).
fn check_id_in_body(given: &Value, id: &str) -> Result<(), ApiError> {
    match given.as_str() {
        Some(given) if given.eq_ignore_ascii_case(id) => Ok(()),
        _ => Err(ApiError::invalid("/id", format!("must equal the id in the path, {id}"))),
    }
}

/// The id in a path as stored (UUIDs in lowercase).
fn path_id(id: &str) -> String {
    crate::hsds::validate::canonical_id(id).into_owned()
}

fn check_id(id: &str) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(id).map(|_| ()).map_err(|_| ApiError::invalid("/id", "the id in the path must be a UUID"))
}

/// `POST /{table}/{id}`: no such method for a row (rows are written with PUT), so 405 with what is allowed;
/// but a path that names no table is 404, as for every other method.
async fn post_to_row(Path((plural, _)): Path<(String, String)>) -> Result<Response, ApiError> {
    table_of(&plural)?;
    let allow = [(header::ALLOW, HeaderValue::from_static("GET,HEAD,PUT,PATCH,DELETE"))];
    Ok((StatusCode::METHOD_NOT_ALLOWED, allow).into_response())
}

async fn put(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    headers: HeaderMap,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // An unknown path is 404 whoever asks; only a path that exists is guarded by scope.
    let table = table_of(&plural)?;
    caller.require(&[Scope::Publish])?;
    let id = path_id(&id);
    check_id(&id)?;
    let ops = body_to_ops(table, &id, body)?;
    let options = WriteOptions {
        if_match: precondition(header::IF_MATCH, table, &id, &headers),
        if_none_match: precondition(header::IF_NONE_MATCH, table, &id, &headers),
        answer: Some((table, id.clone())),
        ..WriteOptions::default()
    };
    // Created or replaced is decided inside the write's transaction, so two racing PUTs of a new id get one
    // 201 and one 200; the row answered with is read there too, so a DELETE right after cannot make it a 404.
    let mut outcome = state.db.apply(ops, options).await?;
    let created = outcome.created.iter().any(|(kind, created)| *kind == table.name && *created == id);
    let mut r = written(table, &id, if created { StatusCode::CREATED } else { StatusCode::OK }, &mut outcome)?;
    if created {
        let location = state.location(&format!("/{}/{id}", table.plural));
        r.headers_mut().insert(header::LOCATION, header_value(&location));
    }
    Ok(r)
}

/// The answer to a write: the row as the write left it, which the write hands back (its event's data, or
/// read in its transaction when it left the row unchanged: see `WriteOptions::answer`).
fn written(
    table: &'static Table,
    id: &str,
    status: StatusCode,
    outcome: &mut WriteOutcome,
) -> Result<Response, ApiError> {
    let mine = outcome.documents.iter().position(|(t, i, _)| *t == table.name && i == id);
    let doc = match mine {
        Some(at) => outcome.documents.swap_remove(at).2,
        None => return Err(ApiError::NotFound(format!("{} {id}", table.name))),
    };
    let tag = etag(&doc);
    // The same view a plain GET serves.
    let view = if table.is_root() { view_document(table, doc, false) } else { doc };
    Ok(with_etag(status, view, &tag))
}

async fn patch(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    headers: HeaderMap,
    caller: Caller,
    JsonBody(patch): JsonBody,
) -> Result<Response, ApiError> {
    let table = table_of(&plural)?;
    caller.require(&[Scope::Publish])?;
    let id = path_id(&id);
    let Some(members) = patch.as_object() else {
        return Err(ApiError::invalid("", "a merge patch must be a JSON object"));
    };
    if let Some(given) = members.get("id").filter(|v| !v.is_null()) {
        check_id_in_body(given, &id)?;
    }
    let options = WriteOptions {
        if_match: precondition(header::IF_MATCH, table, &id, &headers),
        if_none_match: precondition(header::IF_NONE_MATCH, table, &id, &headers),
        answer: Some((table, id.clone())),
        ..WriteOptions::default()
    };
    // Merged inside the write, under the row's lock: a concurrent change is merged with, never lost or refused.
    let mut outcome = state.db.apply(vec![Op::MergePatch { table, id: id.clone(), patch }], options).await?;
    written(table, &id, StatusCode::OK, &mut outcome)
}

async fn remove(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    headers: HeaderMap,
    caller: Caller,
) -> Result<Response, ApiError> {
    let table = table_of(&plural)?;
    caller.require(&[Scope::Publish])?;
    let id = path_id(&id);
    let options = WriteOptions {
        if_match: precondition(header::IF_MATCH, table, &id, &headers),
        if_none_match: precondition(header::IF_NONE_MATCH, table, &id, &headers),
        ..WriteOptions::default()
    };
    state.db.apply(vec![Op::Delete { table, id }], options).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use crate::hsds::catalog::TABLES;

    /// A search body takes every parameter the OpenAPI document lists for any list, with the type it gives:
    /// a parameter added to the document but not to `LIST_PARAMETERS` would be refused in a body.
    #[test]
    fn search_bodies_take_every_documented_list_parameter() {
        for table in TABLES {
            for parameter in crate::openapi::list_parameters(table) {
                let name = parameter["name"].as_str().expect("a name");
                let known = super::LIST_PARAMETERS.iter().find(|(known, _)| *known == name);
                let (_, kind) = known.unwrap_or_else(|| panic!("{name} ({}) is not in LIST_PARAMETERS", table.name));
                assert_eq!(parameter["schema"]["type"].as_str(), Some(*kind), "{name}");
            }
        }
    }
}
