//! Reads of the directory: one row or document by id, and filtered, paged or streamed lists. Root tables
//! answer from their stored compiled documents; other tables compile their row on the fly.

use futures::Stream;
use futures::StreamExt;
use serde_json::Value;

use super::compile::{Form, compile_many, load_rows, parse_row};
use super::sql::Conn;
use super::{Backend, Db};
use crate::hsds::catalog::Table;

/// The representation `GET /{table}/{id}` serves (before view options such as `full_service`), which
/// ETags are computed from.
pub(crate) async fn representation(
    conn: &mut Conn<'_>,
    table: &'static Table,
    id: &str,
) -> sqlx::Result<Option<Value>> {
    if table.is_root() {
        let doc: Option<(Option<String>,)> = conn
            .fetch_optional("SELECT doc FROM records WHERE kind = $1 AND id = $2", &[table.name.into(), id.into()])
            .await?;
        return Ok(doc.and_then(|(d,)| d).and_then(|d| serde_json::from_str(&d).ok()));
    }
    let rows = load_rows(conn, table.name, &[id.to_string()]).await?;
    match rows.into_values().next() {
        Some(row) => Ok(compile_many(conn, table, vec![row], Form::Nested).await?.pop()),
        None => Ok(None),
    }
}

/// Filters of a list request, all combined with AND.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub search: Option<String>,
    pub organization_id: Option<String>,
    pub taxonomy_term_id: Option<String>,
    pub taxonomy_id: Option<String>,
    pub service_id: Option<String>,
    pub location_id: Option<String>,
    pub parent_id: Option<String>,
    pub top_only: bool,
    /// Normalised timestamp text (`YYYY-MM-DDTHH:MM:SS.ffffffZ`).
    pub modified_after: Option<String>,
    pub postcode: Option<String>,
    /// Metres from the postcode's centroid.
    pub proximity: Option<f64>,
}

/// What a list row yields: the stored document (roots), or the row as `GET` serves it (see `as_served`).
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub modified_at: String,
    pub value: Value,
}

#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Float(f64),
    Int(i64),
}

struct Sql {
    text: String,
    params: Vec<Param>,
    /// With a free-text search: how well a row matches, lower first (lists are ordered by it).
    rank: Option<String>,
    /// A `WITH` clause the statement starts with.
    with: String,
}

impl Sql {
    fn push(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn query(&self, prefix: &str, suffix: &str) -> (String, Vec<Param>) {
        (format!("{}{prefix} {} {suffix}", self.with, self.text), self.params.clone())
    }

    /// The list order: best match first when searching, then by name (the sort key) and id.
    fn order(&self) -> String {
        match &self.rank {
            Some(rank) => format!("{rank}, r.sort_key, r.id"),
            None => "r.sort_key, r.id".into(),
        }
    }
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    params: &'q [Param],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for p in params {
        q = match p {
            Param::Text(s) => q.bind(s.as_str()),
            Param::Float(f) => q.bind(*f),
            Param::Int(i) => q.bind(*i),
        };
    }
    q
}

/// What a list shows of each root: its list form, its whole document, or (`minimal=true`) only its
/// `last_modified`. Other tables' rows are shown as `GET` shows them whatever is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    List,
    Full,
    Minimal,
}

/// The column a list reads. A minimal list takes `last_modified` out of the document in the database, so a
/// list of every service does not carry each whole document to hsda to keep one field of it.
fn column_for(table: &Table, shape: Shape, backend: Backend) -> &'static str {
    match (table.is_root(), shape, backend) {
        (false, _, _) => "r.data",
        (true, Shape::Full, _) => "COALESCE(r.doc, r.data)",
        (true, Shape::List, _) => "COALESCE(r.summary, r.doc, r.data)",
        (true, Shape::Minimal, Backend::Sqlite) => {
            "json_object('last_modified', json_extract(COALESCE(r.doc, r.data), '$.last_modified'))"
        }
        (true, Shape::Minimal, Backend::Postgres) => {
            "CAST(json_build_object('last_modified', CAST(COALESCE(r.doc, r.data) AS json) ->> 'last_modified') AS TEXT)"
        }
    }
}

/// Words of a free-text search, lower-cased, Latin diacritics folded as the indexed text's are
/// ([`crate::hsds::document::fold_diacritics`]); punctuation separates words, as both engines tokenise. A
/// combining mark is part of its word: in Indic scripts a virama joins letters (`खाद्य`), and split there
/// the word matched nothing on PostgreSQL, whose index holds it whole.
pub fn search_words(search: &str) -> Vec<String> {
    use unicode_normalization::char::is_combining_mark;
    let folded = crate::hsds::document::fold_diacritics(search);
    let separates = |c: char| !c.is_alphanumeric() && !is_combining_mark(c);
    folded.split(separates).filter(|w| !w.is_empty()).map(str::to_lowercase).take(16).collect()
}

impl Db {
    /// One row or document, or `None`.
    pub async fn get(&self, table: &'static Table, id: &str) -> sqlx::Result<Option<Value>> {
        let mut conn = self.pool.acquire().await?;
        representation(&mut Conn::from(&mut *conn), table, id).await
    }

    async fn where_clause(&self, table: &'static Table, q: &ListQuery) -> sqlx::Result<Option<Sql>> {
        let mut sql = Sql { text: String::new(), params: Vec::new(), rank: None, with: String::new() };
        let kind = sql.push(Param::Text(table.name.to_string()));
        sql.text = format!("FROM records r WHERE r.kind = {kind}");
        if let Some(search) = &q.search {
            let words = search_words(search);
            if words.is_empty() {
                return Ok(None);
            }
            // Every word must match. Rows whose name holds more of the words come first (the same on both
            // stores), then those that match better (the words more often, in shorter texts: BM25 on SQLite,
            // `ts_rank` on PostgreSQL).
            let name_hits: Vec<String> = words
                .iter()
                .map(|w| {
                    // Words are alphanumeric (`search_words`): nothing in them is a LIKE wildcard.
                    let p = sql.push(Param::Text(format!("%{w}%")));
                    format!("CASE WHEN r.sort_key LIKE {p} THEN 1 ELSE 0 END")
                })
                .collect();
            let name_rank = format!("-({})", name_hits.join(" + "));
            match self.backend {
                Backend::Sqlite => {
                    let expr = words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" ");
                    let p = sql.push(Param::Text(expr));
                    // The full-text index is searched once, on its own, with each match's score, and joined to
                    // records afterwards: as a plain subquery SQLite folded it into the join and ran one
                    // full-text search per record of the kind (200 times slower on 10 000 services).
                    sql.with = format!(
                        "WITH m AS MATERIALIZED (SELECT rowid AS rid, bm25(records_fts) AS score FROM records_fts \
                         WHERE records_fts MATCH {p}) "
                    );
                    sql.text = format!("FROM records r JOIN m ON m.rid = r.rid WHERE r.kind = {kind}");
                    sql.rank = Some(format!("{name_rank}, m.score"));
                }
                Backend::Postgres => {
                    let p = sql.push(Param::Text(words.join(" ")));
                    sql.text += &format!(" AND r.search_vector @@ plainto_tsquery('simple', {p})");
                    sql.rank = Some(format!("{name_rank}, -ts_rank(r.search_vector, plainto_tsquery('simple', {p}))"));
                }
            }
        }
        let facet_filters = [
            ("organization_id", &q.organization_id),
            ("taxonomy_term_id", &q.taxonomy_term_id),
            ("taxonomy_id", &q.taxonomy_id),
            ("service_id", &q.service_id),
            ("location_id", &q.location_id),
        ];
        for (facet, value) in facet_filters {
            let Some(value) = value else { continue };
            if table.is_root() {
                let f = sql.push(Param::Text(facet.to_string()));
                let v = sql.push(Param::Text(value.clone()));
                // A root's own id is not stored as a facet of its own (see `store::write::stored_facets`).
                // (A UNION, not `r.id = v OR ...`: inside an OR, PostgreSQL checks the subquery row by row.)
                let itself = match facet == format!("{}_id", table.name) {
                    true => format!("SELECT {v} UNION ALL "),
                    false => String::new(),
                };
                sql.text += &format!(
                    " AND r.id IN ({itself}SELECT id FROM record_facets WHERE kind = {kind} AND facet = {f} AND value = {v})"
                );
            } else {
                let f = sql.push(Param::Text(facet.to_string()));
                let v = sql.push(Param::Text(value.clone()));
                sql.text +=
                    &format!(" AND r.rid IN (SELECT rid FROM record_refs WHERE field = {f} AND target_id = {v})");
            }
        }
        if let Some(parent) = &q.parent_id {
            let v = sql.push(Param::Text(parent.clone()));
            sql.text +=
                &format!(" AND r.rid IN (SELECT rid FROM record_refs WHERE field = 'parent_id' AND target_id = {v})");
        }
        if q.top_only {
            sql.text += " AND NOT EXISTS (SELECT 1 FROM record_refs f WHERE f.rid = r.rid AND f.field = 'parent_id')";
        }
        if let Some(after) = &q.modified_after {
            let v = sql.push(Param::Text(after.clone()));
            sql.text += &format!(" AND r.modified_at >= {v}");
        }
        if let Some(postcode) = &q.postcode {
            let postcode = crate::hsds::document::normalize_postcode(postcode);
            match q.proximity {
                None => {
                    let v = sql.push(Param::Text(postcode));
                    sql.text += &format!(
                        " AND r.id IN (SELECT id FROM record_facets WHERE kind = {kind} AND facet = 'postcode' AND value = {v})"
                    );
                }
                Some(metres) => {
                    let Some((lat, lon)) = self.postcode_centroid(&postcode).await? else { return Ok(None) };
                    // Equirectangular distance: exact enough at city scale and needs no trigonometry in SQL.
                    let a = sql.push(Param::Float(lat));
                    let b = sql.push(Param::Float(lon));
                    let c = sql.push(Param::Float(lat.to_radians().cos()));
                    let d = sql.push(Param::Float((metres / 111_320.0).powi(2)));
                    sql.text += &format!(
                        " AND r.latitude IS NOT NULL AND r.longitude IS NOT NULL AND \
                         ((r.latitude - {a}) * (r.latitude - {a}) + \
                          ((r.longitude - {b}) * {c}) * ((r.longitude - {b}) * {c})) <= {d}"
                    );
                }
            }
        }
        Ok(Some(sql))
    }

    /// The centroid of the locations hsda knows with this postcode (no external geocoder is consulted).
    async fn postcode_centroid(&self, postcode: &str) -> sqlx::Result<Option<(f64, f64)>> {
        let row: (Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT AVG(r.latitude), AVG(r.longitude) FROM records r WHERE r.kind = 'location' \
             AND r.latitude IS NOT NULL AND r.id IN \
             (SELECT id FROM record_facets WHERE kind = 'location' AND facet = 'postcode' AND value = $1)",
        )
        .bind(postcode)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0.zip(row.1))
    }

    /// One page of a list: the total count and the rows of page `page` (1-based).
    ///
    /// Root tables yield their whole documents when `full`, else their stored list form.
    pub async fn list(
        &self,
        table: &'static Table,
        q: &ListQuery,
        page: u64,
        per_page: u64,
        shape: Shape,
    ) -> sqlx::Result<(u64, Vec<Listed>)> {
        let Some(sql) = self.where_clause(table, q).await? else { return Ok((0, Vec::new())) };
        let (count_sql, params) = sql.query("SELECT COUNT(*)", "");
        let total: i64 = {
            let q = bind_all(sqlx::query(&count_sql), &params);
            use sqlx::Row;
            q.fetch_one(&self.pool).await?.try_get(0)?
        };
        let mut sql = sql;
        let limit = sql.push(Param::Int(per_page as i64));
        let offset = sql.push(Param::Int(((page.max(1) - 1) * per_page) as i64));
        let column = column_for(table, shape, self.backend);
        // The page is chosen on the index alone (skipped rows never load their documents), then only its
        // rows are read.
        let order = sql.order();
        let page_sql = match &sql.rank {
            None => {
                let (inner, _) = sql.query("SELECT r.rid", &format!("ORDER BY {order} LIMIT {limit} OFFSET {offset}"));
                format!("SELECT r.id, r.modified_at, {column} FROM records r WHERE r.rid IN ({inner}) ORDER BY {order}")
            }
            // The page keeps its rows' place (their row number in the ranked order), to be shown in it.
            Some(_) => {
                let (inner, _) = sql.query(
                    &format!("SELECT r.rid, ROW_NUMBER() OVER (ORDER BY {order}) AS place"),
                    &format!("ORDER BY {order} LIMIT {limit} OFFSET {offset}"),
                );
                format!(
                    "SELECT r.id, r.modified_at, {column} FROM records r JOIN ({inner}) page ON page.rid = r.rid \
                     ORDER BY page.place"
                )
            }
        };
        let params = sql.params.clone();
        let mut conn = self.pool.acquire().await?;
        let rows = bind_all(sqlx::query(&page_sql), &params).fetch_all(&mut *conn).await?;
        let page = rows.iter().map(listed).collect::<sqlx::Result<Vec<_>>>()?;
        Ok((total.max(0) as u64, as_served(&mut conn, table, page).await?))
    }

    /// Every matching row, in list order, without paging (for `format=ndjson` and exports). A root's rows
    /// come from one cursor; a table that is no root is read and compiled ([`as_served`]) 200 rows at a time,
    /// each batch on one connection held for it alone (a stream holding its cursor's connection while
    /// waiting for another to compile on could wait forever once as many streams as connections ran).
    pub fn stream(
        &self,
        table: &'static Table,
        q: ListQuery,
        shape: Shape,
    ) -> impl Stream<Item = sqlx::Result<Listed>> + Send + 'static {
        const BATCH: i64 = 200;
        let db = self.clone();
        async_stream::try_stream! {
            let Some(sql) = db.where_clause(table, &q).await? else { return };
            let select = format!("SELECT r.id, r.modified_at, {}", column_for(table, shape, db.backend));
            if table.is_root() {
                let (text, params) = sql.query(&select, &format!("ORDER BY {}", sql.order()));
                let mut rows = bind_all(sqlx::query(&text), &params).fetch(&db.pool);
                while let Some(row) = rows.next().await {
                    yield listed(&row?)?;
                }
                return;
            }
            // Each batch starts after the last row of the one before, by the list order (name, then id), so
            // no batch reads past the rows the others read; a search's order (by rank) is paged by offset.
            let order = sql.order();
            let select = format!("{select}, r.sort_key");
            let mut after: Option<(String, String)> = None;
            let mut offset = 0i64;
            loop {
                let mut params = sql.params.clone();
                let mut text = format!("{}{select} {}", sql.with, sql.text);
                if let Some((sort_key, id)) = after.take() {
                    params.extend([Param::Text(sort_key), Param::Text(id)]);
                    text += &format!(" AND (r.sort_key, r.id) > (${}, ${})", params.len() - 1, params.len());
                }
                params.extend([Param::Int(BATCH), Param::Int(offset)]);
                text += &format!(" ORDER BY {order} LIMIT ${} OFFSET ${}", params.len() - 1, params.len());
                let mut conn = db.pool.acquire().await?;
                let rows = bind_all(sqlx::query(&text), &params).fetch_all(&mut *conn).await?;
                if sql.rank.is_none() && let Some(last) = rows.last() {
                    use sqlx::Row;
                    after = Some((last.try_get(3)?, last.try_get(0)?));
                } else {
                    offset += BATCH;
                }
                let page = rows.iter().map(listed).collect::<sqlx::Result<Vec<_>>>()?;
                let full_batch = page.len() as i64 == BATCH;
                let served = as_served(&mut conn, table, page).await?;
                drop(conn);
                for row in served {
                    yield row;
                }
                if !full_batch {
                    break;
                }
            }
        }
    }
}

/// One row of a list statement (`id, modified_at, data`).
fn listed(row: &sqlx::any::AnyRow) -> sqlx::Result<Listed> {
    use sqlx::Row;
    let data: String = row.try_get(2)?;
    Ok(Listed { id: row.try_get(0)?, modified_at: row.try_get(1)?, value: Value::Object(parse_row(&data)) })
}

/// Rows of a table that is no root as `GET /{table}/{id}` serves them, with what they nest (a capacity's
/// `unit`, which HSDS requires, a phone's languages): one compile for all of them. Roots' listed documents
/// are served as stored.
async fn as_served(
    conn: &mut sqlx::AnyConnection,
    table: &'static Table,
    mut listed: Vec<Listed>,
) -> sqlx::Result<Vec<Listed>> {
    if table.is_root() || listed.is_empty() {
        return Ok(listed);
    }
    let rows = listed.iter_mut().map(|l| match std::mem::take(&mut l.value) {
        Value::Object(row) => row,
        _ => Default::default(),
    });
    let rows: Vec<_> = rows.collect();
    let compiled = compile_many(&mut Conn::from(conn), table, rows, Form::Nested).await?;
    for (l, value) in listed.iter_mut().zip(compiled) {
        l.value = value;
    }
    Ok(listed)
}

impl Db {
    /// Every row of a table (its own fields), in id order.
    pub fn stream_rows(
        &self,
        table: &'static Table,
    ) -> impl Stream<Item = sqlx::Result<super::compile::Row>> + Send + 'static {
        let db = self.clone();
        async_stream::try_stream! {
            // hsda keeps `last_modified` on the document, not the row (see `document::keeps_last_modified`):
            // only such tables read their documents too.
            let keeps_last_modified = crate::hsds::document::keeps_last_modified(table);
            let sql = match keeps_last_modified {
                true => "SELECT data, doc FROM records WHERE kind = $1 ORDER BY id",
                false => "SELECT data, CAST(NULL AS TEXT) FROM records WHERE kind = $1 ORDER BY id",
            };
            let mut rows = sqlx::query_as::<_, (String, Option<String>)>(sql).bind(table.name).fetch(&db.pool);
            while let Some(row) = rows.next().await {
                let (data, doc) = row?;
                let mut row = parse_row(&data);
                if let Some(time) = doc.as_deref().and_then(crate::hsds::document::last_modified_of) {
                    row.insert("last_modified".into(), Value::String(time));
                }
                yield row;
            }
        }
    }
}
