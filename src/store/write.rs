//! The one write path: upserts and deletes of HSDS rows, applied in a single transaction together with
//! the events they cause. A write (1) changes rows and their reference index, (2) checks every reference,
//! (3) recompiles the root documents that embed what changed and (4) appends the events with the next
//! gap-free sequence numbers, all before the commit. A failure at any step rolls everything back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::{Value, json};
use sqlx::{Any, Transaction};

use super::compile::{Form, Row, compile_many, id_of, load_rows, parse_row};
use super::events::{Appended, Batch, Event, NewEvent, append_events};
use super::sql::{Arg, Conn};
use super::{Backend, Db, now_text};
use crate::hsds::catalog::{Field, NestedKind, TABLES, Table, table};
use crate::hsds::document;
use crate::hsds::validate::FieldError;

/// One change to apply.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or replace a row with these fields (`pointer` locates the row in the request, for errors).
    Upsert { table: &'static Table, row: Row, pointer: String },
    /// Delete a row and the details it owns.
    Delete { table: &'static Table, id: String },
    /// Make the `table` rows whose `field` points at `parent_id` exactly the ids in `keep` (deleting others).
    KeepChildren {
        table: &'static Table,
        field: &'static str,
        parent: &'static str,
        parent_id: String,
        keep: Vec<String>,
    },
    /// Apply `ops` only when no `table` row `id` exists yet: a related row's copy in another row's body
    /// creates it, never edits it.
    CreateIfAbsent { table: &'static Table, id: String, ops: Vec<Op> },
    /// Apply a JSON merge patch (RFC 7386) to the row's representation as it stands inside the write, under
    /// its lock: concurrent patches of one row each apply to what the one before left, none fails for it.
    MergePatch { table: &'static Table, id: String, patch: Value },
}

impl Op {
    /// The operations that write a flattened body: its rows, the child sets it replaces, and the related rows
    /// it creates if absent.
    pub fn all_of(flat: document::Flattened) -> Vec<Op> {
        let mut ops: Vec<Op> =
            flat.rows.into_iter().map(|r| Op::Upsert { table: r.table, row: r.row, pointer: r.pointer }).collect();
        ops.extend(flat.child_sets.into_iter().map(|c| Op::KeepChildren {
            table: c.table,
            field: c.field,
            parent: c.parent,
            parent_id: c.parent_id,
            keep: c.keep,
        }));
        ops.extend(flat.related.into_iter().map(Op::copied));
        ops
    }

    /// A related row's copy: created with what it nests when the row is absent. Each of its rows is created
    /// only if absent too, and it replaces no child set: a row it shares with the body or another copy (the
    /// official example shows one phone under the service, its organization and its location) is written
    /// by the body, or by the first copy, alone.
    fn copied(related: document::Related) -> Op {
        // The first row is the related row itself, which the outer check already found absent.
        let rows = related.body.rows.into_iter().enumerate().map(|(i, r)| {
            let upsert = Op::Upsert { table: r.table, row: r.row.clone(), pointer: r.pointer };
            match i {
                0 => upsert,
                _ => Op::CreateIfAbsent { table: r.table, id: id_of(&r.row).unwrap_or_default(), ops: vec![upsert] },
            }
        });
        let ops = rows.chain(related.body.related.into_iter().map(Op::copied)).collect();
        Op::CreateIfAbsent { table: related.table, id: related.id, ops }
    }
}

/// Why a write was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the request does not satisfy HSDS rules")]
    Invalid(Vec<FieldError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("the representation changed since it was read")]
    PreconditionFailed,
    #[error("{message}")]
    Conflict { message: String, referenced_by: Vec<String> },
    /// A followed source's cursor is not where the write expected it ([`FollowMark`]).
    #[error("the cursor of {0} moved: its changes are being applied by another process")]
    FollowCursorMoved(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `If-Match`: the ETags (a comma-separated list, or `*`) the caller accepts for (table, id); the write
    /// fails unless the row exists with one of them (strong comparison: a weak `W/` tag never matches).
    pub if_match: Option<(&'static Table, String, String)>,
    /// `If-None-Match`: the write fails if (table, id) exists with one of these ETags (weak comparison), or
    /// at all for `*` (create only).
    pub if_none_match: Option<(&'static Table, String, String)>,
    /// The instance where this change was made, when it comes from another hsda; defaults to this one.
    pub origin: Option<String>,
    /// Keep the `modified_at` time given here instead of now (imports of older data keep their times).
    pub at: Option<String>,
    /// A change of another hsda this one follows ([`crate::follow`]), and where it moves that source's cursor.
    pub followed: Option<Box<FollowMark>>,
    /// The row the caller answers with (a PUT's or PATCH's own): when the write leaves it as it was, its
    /// representation is read in the write's transaction right after it (before the writes grouped after
    /// it) and handed back in [`WriteOutcome::documents`] like a changed row's. Read after the commit
    /// instead, a DELETE committed in between made a PUT answer 404.
    pub answer: Option<(&'static Table, String)>,
}

/// Where a followed source's changes are applied up to: the write that applies that source's events after
/// sequence `from` up to `to` moves the source's stored cursor from `from` to `to` in its own transaction, so
/// an event is applied exactly once however the process stops. A cursor found elsewhere than `from` (another
/// process following the same source got there first) fails the write with [`WriteError::FollowCursorMoved`].
///
/// Such a write mirrors what the source already decided: a delete of a row that is not here is done already,
/// and references are not checked (the source checked them, and a row it names may come in a later page of
/// its log).
#[derive(Debug, Clone)]
pub struct FollowMark {
    pub source: String,
    pub from: i64,
    pub to: i64,
}

/// What a write did.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// Sequence numbers of the appended events (empty when nothing changed).
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    pub events: usize,
    pub rows_changed: usize,
    /// Of `rows_changed`, the rows it removed (an import's document leaving out a child it had).
    pub rows_removed: usize,
    /// The rows this write created (table, id), as opposed to replaced or deleted.
    pub created: Vec<(&'static str, String)>,
    /// Problems accepted by a lenient import (references to rows the package does not contain).
    pub warnings: Vec<FieldError>,
    /// (table, id, representation) of every row and root document this write left changed, as
    /// `GET /{table}/{id}` would now serve it (not filled by bulk imports).
    pub documents: Vec<(&'static str, String, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }
}

/// A row this write changed, with what it held before and after.
struct Touched {
    table: &'static Table,
    id: String,
    action: Action,
    before: Option<Row>,
    after: Option<Row>,
    pointer: String,
}

impl Db {
    /// Starts a write transaction (serialised in-process on SQLite). Every multi-statement write uses it.
    pub(crate) async fn begin_write(
        &self,
    ) -> sqlx::Result<(Transaction<'static, Any>, Option<tokio::sync::OwnedMutexGuard<()>>)> {
        let guard = self.lock_for_write().await?;
        // IMMEDIATE takes SQLite's write lock at BEGIN, so a transaction that reads first never fails to
        // upgrade later because another process (an import, say) committed in between.
        let tx = match self.backend {
            super::Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            super::Backend::Postgres => self.pool.begin().await?,
        };
        Ok((tx, guard))
    }

    /// Takes this process's SQLite write lock (`None` on PostgreSQL). It is waited for no longer than
    /// SQLite's busy timeout: while another process holds the file's lock, each queued writer would otherwise
    /// wait its turn and then the whole timeout again.
    pub(crate) async fn lock_for_write(&self) -> sqlx::Result<Option<tokio::sync::OwnedMutexGuard<()>>> {
        match &self.write_lock {
            Some(lock) => match tokio::time::timeout(self.busy_timeout, lock.clone().lock_owned()).await {
                Ok(guard) => Ok(Some(guard)),
                Err(_) => Err(super::fault::write_lock_timeout()),
            },
            None => Ok(None),
        }
    }

    /// Applies `ops` and their events in one transaction, shared with whatever other writes are waiting at
    /// the same moment (see [`super::group_commit`]); the outcome is this write's alone.
    pub async fn apply(&self, ops: Vec<Op>, options: WriteOptions) -> Result<WriteOutcome, WriteError> {
        let result = super::group_commit::submit(self, ops, options).await;
        self.observe_write(&result);
        result
    }

    /// Records a store fault (or the end of one) from the outcome of a write.
    fn observe_write<T>(&self, result: &Result<T, WriteError>) {
        match result {
            Ok(_) => self.condition.committed(),
            Err(WriteError::Database(e)) => {
                self.condition.failed(e);
            }
            Err(_) => {}
        }
    }

    /// Applies `ops` inside `tx` and returns their events, not yet appended: the caller appends every
    /// write's events of one transaction just before committing it, so the counter row is held briefly.
    pub(crate) async fn apply_in(
        &self,
        tx: &mut Conn<'_>,
        ops: Vec<Op>,
        options: &WriteOptions,
    ) -> Result<PendingWrite, WriteError> {
        let mut known = Known::prefetch(tx, self.backend, ops.iter()).await?;
        let staged = self.stage_in(tx, ops, options, &mut known).await?;
        let finished = finish_staged(tx, self.backend, vec![staged]).await?;
        Ok(finished.and_then(|mut f| f.pop()).expect("one write staged, one finished"))
    }

    /// Writes the rows of `ops` inside `tx` and checks their references, leaving the documents that embed
    /// them to [`finish_staged`], which compiles those of several staged writes together. `known` is what the
    /// transaction knows of rows already (see [`Known`]); the write keeps it up to date.
    pub(crate) async fn stage_in(
        &self,
        tx: &mut Conn<'_>,
        ops: Vec<Op>,
        options: &WriteOptions,
        known: &mut Known,
    ) -> Result<Staged, WriteError> {
        let origin = options.origin.clone().unwrap_or_else(|| self.instance_id().to_string());
        // Both preconditions name the row the request is about, as a merge patch does: it is locked and read
        // once, before the write takes its time.
        let named = options.if_match.iter().chain(&options.if_none_match).next();
        let patched = match ops.as_slice() {
            [Op::MergePatch { table, id, .. }] => Some((*table, id.as_str())),
            _ => None,
        };
        let mut documents_locked = false;
        if self.backend == super::Backend::Postgres
            && let Some((table, id)) = named.map(|(t, id, _)| (*t, id.as_str())).or(patched)
        {
            // Concurrent writers of this row queue here, so each compares against (and merges into) what the
            // one before it committed (SQLite writers are already serialised by the write lock). An existing
            // row is only ever locked under the document lock (see `Writer::lock_documents`); a row that does
            // not exist yet has nothing to lock (a concurrent creator's unique insert makes one run again).
            let exists: Option<(i64,)> = tx
                .fetch_optional("SELECT rid FROM records WHERE kind = $1 AND id = $2", &[table.name.into(), id.into()])
                .await?;
            if exists.is_some() {
                lock_documents(tx).await?;
                documents_locked = true;
                // What the group read before the lock may have changed since (see `Known`).
                known.forget_unlocked_reads();
                tx.execute(
                    "SELECT rid FROM records WHERE kind = $1 AND id = $2 FOR UPDATE",
                    &[table.name.into(), id.into()],
                )
                .await?;
            }
        }
        if let Some((table, id, _)) = named {
            let current = super::read::representation(tx, table, id).await?.map(|v| document::etag(&v));
            // If-Match: the row must exist with one of the tags (strong comparison).
            if let Some((_, _, wanted)) = &options.if_match
                && !current.as_deref().is_some_and(|c| document::etag_listed(wanted, c, false))
            {
                return Err(WriteError::PreconditionFailed);
            }
            // If-None-Match: refused when the row exists with one of the tags (weak comparison), or at all (`*`).
            if let (Some((_, _, refused)), Some(current)) = (&options.if_none_match, &current)
                && document::etag_listed(refused, current, true)
            {
                return Err(WriteError::PreconditionFailed);
            }
        }
        // Taken once the row's lock is held: a write that waited for another one's commit is not dated
        // before it.
        let now = options.at.clone().unwrap_or_else(now_text);
        let mut writer = Writer {
            conn: tx,
            origin: &origin,
            now: &now,
            touched: Vec::new(),
            bulk: false,
            concurrent: self.backend == Backend::Postgres,
            documents_locked,
            deleted_docs: HashMap::new(),
            known,
            documents_at_insert: ops.len() == 1,
            inserted_docs: HashMap::new(),
            mirror: options.followed.is_some(),
        };
        if let Some(mark) = &options.followed {
            // Documents first, as every writer takes them (a followed write does anyway: it may delete), then the
            // cursor: the other order could deadlock with a group whose earlier write holds the documents.
            writer.lock_documents().await?;
            super::follow::move_follow_cursor(writer.conn, mark, &now_text()).await?;
        }
        for op in ops {
            writer.apply_op(op).await?;
        }
        if !writer.mirror {
            writer.check_references().await?;
        }
        let Writer { touched, deleted_docs, documents_locked, inserted_docs, .. } = writer;
        let links = touched
            .iter()
            .flat_map(|t| {
                let values = nesting_links(t.table).flat_map(move |field| {
                    [&t.before, &t.after].into_iter().flatten().filter_map(|row| row.get(field.name)?.as_str())
                });
                std::iter::once(t.id.as_str()).chain(values).map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        let answer = options.answer.clone();
        Ok(Staged { touched, links, deleted_docs, documents_locked, inserted_docs, origin, now, answer })
    }
}

/// A write whose rows are written and checked, its documents not yet compiled (see [`Db::stage_in`]).
pub(crate) struct Staged {
    touched: Vec<Touched>,
    /// The ids of the rows it touched and of the rows they are nested in (see [`Staged::nests_under`]).
    links: HashSet<String>,
    deleted_docs: HashMap<(&'static str, String), Value>,
    documents_locked: bool,
    /// See `Writer::inserted_docs`.
    inserted_docs: HashMap<Root, InsertedDoc>,
    origin: String,
    now: String,
    /// [`WriteOptions::answer`], read when the write is finished.
    answer: Option<(&'static Table, String)>,
}

impl Staged {
    /// Whether this write changed no row.
    pub(crate) fn changed_nothing(&self) -> bool {
        self.touched.is_empty()
    }

    /// Whether this write touched the `table` row `id`.
    fn touches(&self, table: &str, id: &str) -> bool {
        self.touched.iter().any(|t| t.table.name == table && t.id == id)
    }

    /// Whether this write touched a row nested in the row `id` (of any table), or named `id` itself.
    fn nests_under(&self, id: &str) -> bool {
        self.links.contains(id)
    }

    /// Whether a write of `ops` may be staged after this one and both finished together (see
    /// [`finish_staged`]): it names none of the rows this one touched (so each write's own rows read back
    /// as it wrote them), and reads no stored document, which this one's may have left out of date until
    /// the finish: no precondition, merge patch, or delete (a deleted root's document gives its events'
    /// facets), also none through a child set whose deletes can reach a root. Nor does it write a row
    /// nested in a row this one touched or nested in: the two would reach one document, which
    /// [`finish_staged`] refuses to compile once for both (finishing this one first is cheaper than that).
    pub(crate) fn may_precede(&self, ops: &[Op], options: &WriteOptions) -> bool {
        fn reads_documents(op: &Op) -> bool {
            match op {
                Op::Upsert { .. } => false,
                Op::Delete { .. } | Op::MergePatch { .. } => true,
                Op::KeepChildren { table, .. } => deletes_may_reach_a_root(table),
                Op::CreateIfAbsent { ops, .. } => ops.iter().any(reads_documents),
            }
        }
        fn names_a_touched_row(staged: &Staged, op: &Op) -> bool {
            match op {
                Op::Upsert { table, row, .. } => {
                    id_of(row).is_some_and(|id| staged.touches(table.name, &id))
                        || nesting_links(table).any(|field| {
                            row.get(field.name).and_then(Value::as_str).is_some_and(|p| staged.nests_under(p))
                        })
                }
                Op::Delete { table, id } | Op::MergePatch { table, id, .. } => staged.touches(table.name, id),
                Op::KeepChildren { parent_id, .. } => staged.touched.iter().any(|t| t.id == *parent_id),
                Op::CreateIfAbsent { table, id, ops } => {
                    staged.touches(table.name, id) || ops.iter().any(|op| names_a_touched_row(staged, op))
                }
            }
        }
        options.if_match.is_none()
            && options.if_none_match.is_none()
            && !ops.iter().any(|op| reads_documents(op) || names_a_touched_row(self, op))
    }
}

/// Whether deleting a `table` row can delete a root with it (a service_at_location goes with its service).
fn deletes_may_reach_a_root(table: &'static Table) -> bool {
    let mut pending = vec![table];
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some(t) = pending.pop() {
        if !seen.insert(t.name) {
            continue;
        }
        if t.is_root() {
            return true;
        }
        for child in TABLES {
            let owned = child
                .reference_fields()
                .any(|f| (f.references == Some(t.name) || f.references == Some("*")) && t.owns(child, f));
            if owned {
                pending.push(child);
            }
        }
    }
    false
}

/// A write applied inside a transaction whose events still have to be appended.
pub(crate) struct PendingWrite {
    pub rows_changed: usize,
    pub created: Vec<(&'static str, String)>,
    pub events: Vec<NewEvent>,
    pub origin: String,
    pub now: String,
    /// The representation of [`WriteOptions::answer`] when this write left it unchanged (read by
    /// [`finish_staged`]; a changed row's is its event's data).
    pub answer: Option<(&'static str, String, Value)>,
}

impl PendingWrite {
    /// Appends the events (taking their sequence numbers) and tells what the write did; with `keep_events`,
    /// also returns the events as appended (for dispatching them in the same transaction).
    pub(crate) async fn append(
        self,
        conn: &mut Conn<'_>,
        keep_events: bool,
    ) -> sqlx::Result<(WriteOutcome, Vec<Event>)> {
        let appended = append_events(conn, &self.events, &self.origin, &self.now).await?;
        Ok(self.appended(appended, keep_events))
    }

    /// The events to append, as one batch of a group's (see [`super::events::append_batches`]).
    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch { events: &self.events, origin: &self.origin, occurred_at: &self.now }
    }

    /// What the write did, its events having been appended as `appended`; with `keep_events`, also the
    /// events as appended (for dispatching them in the same transaction).
    pub(crate) fn appended(self, appended: Appended, keep_events: bool) -> (WriteOutcome, Vec<Event>) {
        let mut outcome = WriteOutcome {
            rows_changed: self.rows_changed,
            created: self.created,
            documents: self.answer.into_iter().collect(),
            ..WriteOutcome::default()
        };
        if self.events.is_empty() {
            return (outcome, Vec::new());
        }
        outcome.events = self.events.len();
        outcome.first_sequence = Some(appended.first);
        outcome.last_sequence = Some(appended.last);
        // What each changed row reads as now is its event's data: handed back, so the caller need not read it.
        let document = |e: &NewEvent| !e.event_type.ends_with(".deleted") && !e.data.is_null();
        if keep_events {
            outcome.documents.extend(
                self.events.iter().filter(|e| document(e)).map(|e| (e.object, e.object_id.clone(), e.data.clone())),
            );
            return (outcome, appended.into_events(self.events, &self.origin, &self.now));
        }
        outcome.documents.extend(self.events.into_iter().filter(document).map(|e| (e.object, e.object_id, e.data)));
        (outcome, Vec::new())
    }
}

struct Writer<'a, 'c> {
    conn: &'a mut Conn<'c>,
    origin: &'a str,
    now: &'a str,
    touched: Vec<Touched>,
    /// Bulk imports keep only (table, id, action) of touched rows, to bound memory.
    bulk: bool,
    /// PostgreSQL: other transactions write at the same time (its committers, other processes), so existing
    /// rows change under the document lock (see `lock_documents`).
    concurrent: bool,
    /// This transaction holds the document lock.
    documents_locked: bool,
    /// The stored documents of the roots this write deleted: their events, and those of the rows deleted
    /// with them, match subscriptions' filters as the roots' events did while they lived.
    deleted_docs: HashMap<(&'static str, String), Value>,
    /// Rows and tombstones known without asking the store.
    known: &'a mut Known,
    /// Whether a new root gets its document with its insert: when the write is that row alone, nothing is
    /// nested in it yet (created with nested rows, it would get a document rewritten at once).
    documents_at_insert: bool,
    /// The documents new roots got with their insert; compiled again at the end of the write,
    /// they are only written if they came out different.
    inserted_docs: HashMap<Root, InsertedDoc>,
    /// It applies a followed source's change ([`FollowMark`]).
    mirror: bool,
}

/// A stored row: its `rid` and its `data` as JSON text.
type StoredRow = (i64, String);

/// What a transaction knows of rows (and, on SQLite, tombstones) without asking the store: read for a group's
/// writes in one statement per table before they run ([`Known::prefetch`]), and kept up to date by the writes
/// themselves, so a write of a new organization costs its insert alone, not a read of the row and a delete
/// of its tombstone too. Rows it does not hold are read from the store.
///
/// On PostgreSQL other transactions change rows meanwhile. A row read as absent may be created by another
/// transaction before this one inserts it: the insert then fails as a unique violation and the write runs
/// again, as after a read just before. A row read as present is read again once the document lock is taken
/// (as `Writer::upsert` always did), and taking that lock forgets everything read before it: only this
/// transaction's own writes, whose rows it holds locked, stay known.
#[derive(Default)]
pub(crate) struct Known {
    /// (kind, id) -> (rid, data) of the row, or `None` for no row; and whether this transaction wrote it.
    rows: HashMap<(String, String), (Option<StoredRow>, bool)>,
    /// (kind, id) -> whether a tombstone exists; and whether this transaction wrote it.
    tombstones: HashMap<(String, String), (bool, bool)>,
}

impl Known {
    /// Reads what the store holds of every row `ops` write, and on SQLite of their tombstones (a PostgreSQL
    /// insert deletes its row's tombstone whatever was read: see `Writer::upsert`): one statement per table.
    pub(crate) async fn prefetch<'o>(
        conn: &mut Conn<'_>,
        backend: Backend,
        ops: impl Iterator<Item = &'o Op>,
    ) -> sqlx::Result<Known> {
        fn named(op: &Op, out: &mut BTreeMap<&'static str, BTreeSet<String>>) {
            match op {
                Op::Upsert { table, row, .. } => {
                    if let Some(id) = id_of(row) {
                        out.entry(table.name).or_default().insert(id);
                    }
                }
                Op::CreateIfAbsent { table, id, ops } => {
                    out.entry(table.name).or_default().insert(id.clone());
                    ops.iter().for_each(|op| named(op, out));
                }
                Op::Delete { .. } | Op::KeepChildren { .. } | Op::MergePatch { .. } => {}
            }
        }
        let mut wanted: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        ops.for_each(|op| named(op, &mut wanted));
        let mut known = Known::default();
        for (kind, ids) in wanted {
            let ids: Vec<String> = ids.into_iter().collect();
            for chunk in ids.chunks(500) {
                let list = super::placeholders(1, chunk.len());
                let mut sql = format!("SELECT 'row', id, rid, data FROM records WHERE kind = $1 AND id IN ({list})");
                if backend == Backend::Sqlite {
                    sql += &format!(
                        " UNION ALL SELECT 'tombstone', id, 0, NULL FROM tombstones WHERE kind = $1 AND id IN ({list})"
                    );
                }
                let args: Vec<Arg> = std::iter::once(kind.into()).chain(chunk.iter().map(Arg::from)).collect();
                let found: Vec<(String, String, i64, Option<String>)> = conn.fetch_all(&sql, &args).await?;
                for id in chunk {
                    known.rows.insert((kind.to_string(), id.clone()), (None, false));
                    if backend == Backend::Sqlite {
                        known.tombstones.insert((kind.to_string(), id.clone()), (false, false));
                    }
                }
                for (what, id, rid, data) in found {
                    let key = (kind.to_string(), id);
                    match (what.as_str(), data) {
                        ("row", Some(data)) => drop(known.rows.insert(key, (Some((rid, data)), false))),
                        _ => drop(known.tombstones.insert(key, (true, false))),
                    }
                }
            }
        }
        Ok(known)
    }

    /// The row, if known: `Some(None)` for a row known not to exist.
    fn row(&self, kind: &str, id: &str) -> Option<Option<StoredRow>> {
        self.rows.get(&(kind.to_string(), id.to_string())).map(|(row, _)| row.clone())
    }

    /// Whether a tombstone exists, if known.
    fn tombstone(&self, kind: &str, id: &str) -> Option<bool> {
        self.tombstones.get(&(kind.to_string(), id.to_string())).map(|(exists, _)| *exists)
    }

    fn wrote_row(&mut self, kind: &str, id: &str, row: Option<StoredRow>) {
        self.rows.insert((kind.to_string(), id.to_string()), (row, true));
    }

    fn wrote_tombstone(&mut self, kind: &str, id: &str, exists: bool) {
        self.tombstones.insert((kind.to_string(), id.to_string()), (exists, true));
    }

    /// Forgets what was read before the document lock was taken (see above).
    fn forget_unlocked_reads(&mut self) {
        self.rows.retain(|_, (_, ours)| *ours);
        self.tombstones.retain(|_, (_, ours)| *ours);
    }
}

impl Writer<'_, '_> {
    async fn apply_op(&mut self, op: Op) -> Result<(), WriteError> {
        match op {
            Op::MergePatch { table, id, patch } => {
                for op in self.merged(table, &id, &patch).await? {
                    Box::pin(self.apply_op(op)).await?;
                }
                Ok(())
            }
            Op::CreateIfAbsent { table, id, ops } => {
                if !self.exists(table.name, &id).await? {
                    for op in ops {
                        Box::pin(self.apply_op(op)).await?;
                    }
                } else if self.created_here(&id) {
                    // Created earlier in this write (a phone the body gives, shown again under its location in
                    // a copy): one row, the copy adding only the fields it lacks (its link to the location).
                    for op in ops {
                        match op {
                            Op::Upsert { table, row, pointer } => self.add_missing_fields(table, row, pointer).await?,
                            other => Box::pin(self.apply_op(other)).await?,
                        }
                    }
                }
                Ok(())
            }
            Op::Upsert { table, row, pointer } => self.upsert(table, row, pointer).await,
            Op::Delete { table, id } => {
                // Whether it is there is read under the lock: of two DELETEs of one row, one deletes it (204)
                // and the other finds it gone (404), rather than both answering 204 on PostgreSQL.
                self.lock_documents().await?;
                if !self.exists(table.name, &id).await? {
                    if self.mirror {
                        return Ok(()); // gone already (with a row the source deleted before it, say)
                    }
                    return Err(WriteError::NotFound(format!("{} {id}", table.name)));
                }
                self.delete_cascade(table, id).await
            }
            Op::KeepChildren { table, field, parent, parent_id, keep } => {
                // A parent this write created has no children but its own; an existing one's are read under
                // the lock.
                if !self.created_here(&parent_id) {
                    self.lock_documents().await?;
                }
                let existing: Vec<(String,)> = self
                    .conn
                    .fetch_all(
                        "SELECT id FROM record_refs WHERE target_id = $1 AND kind = $2 AND field = $3",
                        &[(&parent_id).into(), table.name.into(), field.into()],
                    )
                    .await?;
                let keep: HashSet<String> = keep.into_iter().collect();
                for (id,) in existing.into_iter().filter(|(id,)| !keep.contains(id)) {
                    let stored = load_rows(self.conn, table.name, std::slice::from_ref(&id)).await?;
                    let Some(mut row) = stored.into_values().next() else { continue };
                    if table.field(field).is_some_and(|f| !table.points_into(f, &row, parent)) {
                        continue; // another table's row with this id holds it
                    }
                    if self.has_other_parent(table, field, &row).await? {
                        // Also another row's child (a phone of a service and of its location): left out here, it
                        // only leaves this parent.
                        row.remove(field);
                        self.upsert(table, row, String::new()).await?;
                    } else {
                        self.delete_cascade(table, id).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Adds to a row this write created the fields `row` gives that it lacks (see `Op::CreateIfAbsent`).
    async fn add_missing_fields(&mut self, table: &'static Table, row: Row, pointer: String) -> Result<(), WriteError> {
        let Some(id) = id_of(&row) else { return Ok(()) };
        let written =
            self.touched.iter().find(|t| t.table.name == table.name && t.id == id).and_then(|t| t.after.clone());
        let Some(mut merged) = written else { return Ok(()) };
        let before = merged.len();
        for (key, value) in row {
            merged.entry(key).or_insert(value);
        }
        if merged.len() == before {
            return Ok(());
        }
        self.upsert(table, merged, pointer).await
    }

    /// Whether a `table` row is also the child of another existing row than the one it links to through
    /// `field` (a link to a row that is gone, which lenient imports allow, does not count).
    async fn has_other_parent(&mut self, table: &'static Table, field: &str, row: &Row) -> sqlx::Result<bool> {
        if table.is_link() {
            return Ok(false);
        }
        for link in parent_links(table).filter(|f| f.name != field) {
            if let (Some(target), Some(kind)) = (row.get(link.name).and_then(Value::as_str), link.references)
                && self.exists(kind, target).await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether this write created the row `id` (of any table).
    fn created_here(&self, id: &str) -> bool {
        self.touched.iter().any(|t| t.id == id && t.action == Action::Created)
    }

    /// The operations that write `patch` merged into the `table` row `id` as it reads now.
    async fn merged(&mut self, table: &'static Table, id: &str, patch: &Value) -> Result<Vec<Op>, WriteError> {
        // The row changes under the document lock, so the representation read now is the one the patch applies
        // to. (A patch alone in its write took it before the write took its time: see `Db::stage_in`.)
        self.lock_documents().await?;
        let Some(mut current) = super::read::representation(self.conn, table, id).await? else {
            return Err(WriteError::NotFound(format!("{} {id}", table.name)));
        };
        // A patch cannot edit a related row through this one (`{"organization": {"name": "X"}}`): said plainly,
        // rather than as the fields such a partial copy lacks.
        for nested in table.nested.iter().filter(|n| n.kind == NestedKind::One) {
            let Some(object) = patch.get(nested.key).and_then(Value::as_object) else { continue };
            let linked = table.forward_reference(nested).and_then(|f| current.get(f.name)).and_then(Value::as_str);
            let named = object.get("id").and_then(Value::as_str);
            // Sending back the copy as GET showed it changes nothing, and is no edit.
            let shown = current.get(nested.key);
            let edits = object
                .iter()
                .any(|(key, value)| key != "id" && !value.is_null() && shown.and_then(|s| s.get(key)) != Some(value));
            if edits && (named.is_none() || named.is_some_and(|n| linked.is_some_and(|l| l.eq_ignore_ascii_case(n)))) {
                let plural = table_of(nested.table).map_or(nested.table, |t| t.plural);
                return Err(WriteError::Invalid(vec![FieldError::new(
                    format!("/{}", nested.key),
                    format!("a linked {} is edited at /{plural}/{{id}}, not through this row", nested.table),
                )]));
            }
        }
        // What the document only shows of other rows goes first: an organization's stored services are not
        // written back, nor a service's copy of its organization, but a patch that gives them is taken.
        document::strip_copies(table, &mut current);
        // `"phones": null` removes the member, and a body without it would keep the stored phones (a missing
        // list leaves the children as they are): null means none left, as `[]` does.
        let mut patch = patch.clone();
        if let Some(members) = patch.as_object_mut() {
            for nested in table.nested.iter().filter(|n| n.kind == NestedKind::Many) {
                if let Some(value) = members.get_mut(nested.key).filter(|v| v.is_null()) {
                    *value = Value::Array(Vec::new());
                }
            }
        }
        crate::hsds::merge_patch::merge_patch(&mut current, &patch);
        // `"id": null` cannot remove the id: the row keeps it. (Another id is refused before the write.)
        if let Some(map) = current.as_object_mut()
            && map.get("id").and_then(Value::as_str).is_none_or(|kept| !kept.eq_ignore_ascii_case(id))
        {
            map.insert("id".into(), Value::String(id.to_string()));
        }
        let flat = document::flatten(table, &current, "").map_err(WriteError::Invalid)?;
        Ok(Op::all_of(flat))
    }

    /// Where other transactions may write at the same time (PostgreSQL), waits for and holds until the end
    /// of the transaction the store-wide lock under which existing documents are changed and compiled.
    ///
    /// Without it, two writers of one service's phones each compiled the service from rows that did not yet
    /// hold the other's phone; the later commit stored a document without the earlier phone, and a PATCH
    /// of the service then deleted that phone as left out. Locking each document's row before compiling
    /// it instead deadlocked: an organization embeds its services and a service its organization, so
    /// writers took the two rows in either order. It is taken before any existing row is locked, updated or
    /// deleted (an upsert, a delete, a child set, a precondition, a patch), before references to existing
    /// documents are checked, and before the documents to compile are looked for; so existing rows only ever
    /// change under it, one transaction at a time. Writes that only create rows none of which is or points at
    /// an existing document (a new organization) never take it: nothing else can see them yet.
    /// Returns whether the lock was taken just now (what was read before it may be out of date).
    async fn lock_documents(&mut self) -> sqlx::Result<bool> {
        if !self.concurrent || self.documents_locked {
            return Ok(false);
        }
        lock_documents(self.conn).await?;
        self.documents_locked = true;
        self.known.forget_unlocked_reads();
        Ok(true)
    }

    async fn exists(&mut self, kind: &str, id: &str) -> sqlx::Result<bool> {
        if let Some(row) = self.known.row(kind, id) {
            return Ok(row.is_some());
        }
        let found: Option<(i64,)> = self
            .conn
            .fetch_optional("SELECT rid FROM records WHERE kind = $1 AND id = $2", &[kind.into(), id.into()])
            .await?;
        Ok(found.is_some())
    }

    async fn upsert(&mut self, table: &'static Table, mut row: Row, pointer: String) -> Result<(), WriteError> {
        if document::keeps_last_modified(table) {
            // Set on the document when it is compiled (a GET, edit and PUT back then changes nothing). An
            // imported package's value is not kept either: this directory's copy changed when it was imported,
            // and `modified_after`, the events and thin payloads all say so.
            row.remove("last_modified");
        }
        let Some(id) = id_of(&row) else {
            return Err(WriteError::Invalid(vec![FieldError::new(format!("{pointer}/id"), "is required")]));
        };
        let read_before = "SELECT rid, data FROM records WHERE kind = $1 AND id = $2";
        let mut before: Option<(i64, String)> = match self.known.row(table.name, &id) {
            Some(row) => row,
            None => self.conn.fetch_optional(read_before, &[table.name.into(), (&id).into()]).await?,
        };
        if before.is_some() && self.lock_documents().await? {
            // An existing row is locked by the update below: the document lock goes first, and the row is read
            // again under it.
            before = self.conn.fetch_optional(read_before, &[table.name.into(), (&id).into()]).await?;
        }
        let before_row = before.as_ref().map(|(_, data)| parse_row(data));
        if let Some(stored) = &before_row
            && !self.bulk
            && !pointer.is_empty()
            && table.is_detail()
        {
            // A detail nested in a body (a phone in a location's) is that parent's child, and stays the child of
            // the other rows it links to (its service) unless the body names them otherwise.
            for field in parent_links(table) {
                if !row.contains_key(field.name)
                    && let Some(link) = stored.get(field.name)
                {
                    row.insert(field.name.to_string(), link.clone());
                }
            }
        }
        if before_row.as_ref() == Some(&row) {
            return Ok(());
        }
        let row_value = Value::Object(row.clone());
        let data = row_value.to_string();
        // A root's document is stored at the end of the write (a new one's with its insert when the write is
        // that row alone, see `lone_document`), with its search text; taken from the row now, it
        // already is what the document gives (but for a service_at_location, whose text also comes from its
        // service and location), so storing the document leaves it alone and SQLite's full-text trigger
        // (migration 7) does not write the entry twice. (PostgreSQL's CPU per write did not change.)
        let from_row = || (document::sort_key(table, &row_value), document::search_text(table, &row_value));
        let rid: i64 = match &before {
            Some((rid, _)) => {
                let (sort_key, search_text) = from_row();
                self.conn
                    .execute(
                        "UPDATE records SET data = $1, sort_key = $2, search_text = $3, modified_at = $4, origin = $5 \
                         WHERE rid = $6",
                        &[
                            (&data).into(),
                            (&sort_key).into(),
                            (&search_text).into(),
                            self.now.into(),
                            self.origin.into(),
                            (*rid).into(),
                        ],
                    )
                    .await?;
                self.conn.execute("DELETE FROM record_refs WHERE rid = $1", &[(*rid).into()]).await?;
                *rid
            }
            None => {
                // A new root written alone gets its document in the insert (see `lone_document`).
                let lone = match self.documents_at_insert {
                    true => super::compile::lone_document(table, &row).map(|mut doc| {
                        document::stamp_last_modified(table, &mut doc, self.now);
                        DocColumns::of(table, &doc)
                    }),
                    false => None,
                };
                const PLAIN: &str = "INSERT INTO records (kind, id, data, sort_key, search_text, modified_at, origin) \
                                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING rid";
                // Coordinates as in `store_docs`: a flag and a plain f64, never a NULL f64.
                const WITH_DOC: &str = "INSERT INTO records (kind, id, data, sort_key, search_text, modified_at, \
                                        origin, doc, summary, latitude, longitude) VALUES ($1, $2, $3, $4, $5, $6, \
                                        $7, $8, $9, CASE WHEN $10 THEN $11 ELSE NULL END, \
                                        CASE WHEN $12 THEN $13 ELSE NULL END) RETURNING rid";
                let insert = if lone.is_some() { WITH_DOC } else { PLAIN };
                // A new row's tombstone goes. On PostgreSQL always, in the insert's own statement (the group does
                // not read tombstones there): another transaction may create and delete a row of that id at any
                // time before this insert. SQLite has one writer, so what the group read of it holds.
                let sql = match self.concurrent {
                    true => format!("WITH gone AS (DELETE FROM tombstones WHERE kind = $1 AND id = $2) {insert}"),
                    false => {
                        if self.known.tombstone(table.name, &id) != Some(false) {
                            self.conn
                                .execute(
                                    "DELETE FROM tombstones WHERE kind = $1 AND id = $2",
                                    &[table.name.into(), (&id).into()],
                                )
                                .await?;
                        }
                        insert.to_string()
                    }
                };
                if !self.bulk {
                    self.known.wrote_tombstone(table.name, &id, false);
                }
                let (sort_key, search_text) = match &lone {
                    Some(lone) => (lone.sort_key.clone(), lone.search_text.clone()),
                    None => from_row(),
                };
                let mut args: Vec<Arg> = vec![
                    table.name.into(),
                    (&id).into(),
                    (&data).into(),
                    (&sort_key).into(),
                    (&search_text).into(),
                    self.now.into(),
                    self.origin.into(),
                ];
                if let Some(lone) = &lone {
                    let (latitude, longitude) = lone.coordinates;
                    args.extend([
                        Arg::from(&lone.text),
                        (&lone.summary).into(),
                        latitude.is_some().into(),
                        latitude.unwrap_or(0.0).into(),
                        longitude.is_some().into(),
                        longitude.unwrap_or(0.0).into(),
                    ]);
                }
                let (rid,): (i64,) = self.conn.fetch_one(&sql, &args).await?;
                if let Some(lone) = lone {
                    self.inserted_docs
                        .insert((table.name, id.clone()), InsertedDoc { text: lone.text, at: self.now.to_string() });
                }
                rid
            }
        };
        if !self.bulk {
            self.known.wrote_row(table.name, &id, Some((rid, data)));
        }
        // Every reference of the row in one statement.
        let refs: Vec<(&str, &str)> =
            table.reference_fields().filter_map(|field| Some((row.get(field.name)?.as_str()?, field.name))).collect();
        if !refs.is_empty() {
            let values: Vec<String> =
                super::row_placeholders(4, refs.len(), 2).into_iter().map(|p| format!("({p}, $1, $2, $3)")).collect();
            let sql = format!(
                "INSERT INTO record_refs (target_id, field, kind, id, rid) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut args: Vec<Arg> = vec![table.name.into(), (&id).into(), rid.into()];
            for (target, field) in &refs {
                args.extend([Arg::from(*target), Arg::from(*field)]);
            }
            self.conn.execute(&sql, &args).await?;
        }
        let action = if before.is_some() { Action::Updated } else { Action::Created };
        if self.bulk {
            self.touched.push(Touched { table, id, action, before: None, after: None, pointer });
            return Ok(());
        }
        self.record_touch(Touched { table, id, action, before: before_row, after: Some(row), pointer });
        Ok(())
    }

    /// Remembers a touched row; a row touched twice in one write keeps its first `before`.
    fn record_touch(&mut self, touched: Touched) {
        if let Some(existing) =
            self.touched.iter_mut().find(|t| t.table.name == touched.table.name && t.id == touched.id)
        {
            existing.action = match (existing.action, touched.action) {
                (Action::Created, Action::Deleted) | (Action::Deleted, Action::Created) => touched.action,
                (Action::Created, _) => Action::Created,
                (_, action) => action,
            };
            existing.after = touched.after;
            existing.pointer = touched.pointer;
            // The row as it stood before the write: the first touch's, unless that one did not read it (an
            // import's upsert), as the events' identity needs it.
            existing.before = existing.before.take().or(touched.before);
        } else {
            self.touched.push(touched);
        }
    }

    /// Deletes a row and, first, the detail rows it owns; refuses when other entities still point at it.
    async fn delete_cascade(&mut self, table: &'static Table, id: String) -> Result<(), WriteError> {
        // What is deleted with the row, and what keeps it, is read under the lock.
        self.lock_documents().await?;
        let mut order: Vec<(&'static Table, String)> = Vec::new();
        let mut pending = vec![(table, id.clone())];
        let mut seen: HashSet<(String, String)> = HashSet::new();
        // (the row it keeps from going, the row that points at it)
        let mut blockers: Vec<(String, String)> = Vec::new();
        while let Some((t, row_id)) = pending.pop() {
            if !seen.insert((t.name.to_string(), row_id.clone())) {
                continue;
            }
            order.push((t, row_id.clone()));
            if self.mirror {
                // The source logged every row its delete took or unlinked, each in an event of its own; decided
                // again here, against rows as they stand mid-way through its log, it could take more.
                continue;
            }
            let referrers: Vec<(String, String, String)> = self
                .conn
                .fetch_all("SELECT kind, field, id FROM record_refs WHERE target_id = $1", &[(&row_id).into()])
                .await?;
            for (kind, field, child_id) in referrers {
                let Some(child) = table_of(&kind) else { continue };
                let Some(child_field) = child.field(&field) else { continue };
                let points_here = match child_field.references {
                    Some("*") => {
                        // Ids are unique per table only: the attribute may be another table's row's.
                        let row = load_rows(self.conn, child.name, std::slice::from_ref(&child_id)).await?;
                        row.values().next().is_some_and(|row| child.points_into(child_field, row, t.name))
                    }
                    references => references == Some(t.name),
                };
                if !points_here {
                    continue;
                }
                if t.owns(child, child_field) {
                    pending.push((child, child_id));
                } else {
                    blockers.push((row_id.clone(), format!("{kind} {child_id} ({field})")));
                }
            }
        }
        // A row that would go only as the child of a going row stays when it is also the child of one that
        // stays (a phone of the deleted location that is its service's too), with what it owns: it is
        // unlinked from the rows that go, as a child set that leaves it out does. A link row goes with
        // either end.
        let mut by_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (t, row_id) in order.iter().skip(1) {
            by_kind.entry(t.name).or_default().push(row_id.clone());
        }
        let mut rows: HashMap<String, Row> = HashMap::new();
        for (kind, ids) in by_kind {
            rows.extend(load_rows(self.conn, kind, &ids).await?);
        }
        let mut going: HashSet<String> = order.iter().map(|(_, row_id)| row_id.clone()).collect();
        // The parents that can keep a row: those in the cascade (should they stay) and those that exist.
        let mut alive = going.clone();
        for (t, row_id) in order.iter().skip(1) {
            let Some(row) = rows.get(row_id) else { continue };
            for link in parent_links(t) {
                if let (Some(target), Some(kind)) = (row.get(link.name).and_then(Value::as_str), link.references)
                    && !alive.contains(target)
                    && self.exists(kind, target).await?
                {
                    alive.insert(target.to_string());
                }
            }
        }
        loop {
            let stays: Vec<String> = order
                .iter()
                .skip(1)
                .filter(|(t, row_id)| {
                    going.contains(row_id)
                        && !t.is_link()
                        && rows.get(row_id).is_some_and(|row| {
                            parent_links(t).any(|f| {
                                row.get(f.name)
                                    .and_then(Value::as_str)
                                    .is_some_and(|p| !going.contains(p) && alive.contains(p))
                            })
                        })
                })
                .map(|(_, row_id)| row_id.clone())
                .collect();
            if stays.is_empty() {
                break;
            }
            going.retain(|row_id| !stays.contains(row_id));
        }
        // Rows deleted in this same cascade do not block it, nor do rows pointing at one that stays.
        let deleting: HashSet<String> =
            order.iter().filter(|(_, i)| going.contains(i)).map(|(t, i)| format!("{} {i}", t.name)).collect();
        let mut blockers: Vec<String> = blockers
            .into_iter()
            .filter(|(target, referrer)| {
                going.contains(target) && !deleting.iter().any(|d| referrer.starts_with(d.as_str()))
            })
            .map(|(_, referrer)| referrer)
            .collect();
        if !blockers.is_empty() {
            blockers.sort();
            blockers.dedup();
            return Err(WriteError::Conflict {
                message: format!(
                    "{} {id} is still referenced by {} row(s); delete or re-point them first",
                    table.name,
                    blockers.len()
                ),
                referenced_by: blockers,
            });
        }
        for (t, row_id) in order.iter().skip(1).filter(|(_, row_id)| !going.contains(row_id)) {
            let Some(mut row) = rows.get(row_id).cloned() else { continue };
            let gone: Vec<&str> = parent_links(t)
                .filter(|f| row.get(f.name).and_then(Value::as_str).is_some_and(|p| going.contains(p)))
                .map(|f| f.name)
                .collect();
            if !gone.is_empty() {
                gone.iter().for_each(|field| drop(row.remove(*field)));
                self.upsert(t, row, String::new()).await?;
            }
        }
        for (t, row_id) in order.into_iter().rev().filter(|(_, row_id)| going.contains(row_id)) {
            let before: Option<(i64, String, Option<String>)> = self
                .conn
                .fetch_optional(
                    "SELECT rid, data, doc FROM records WHERE kind = $1 AND id = $2",
                    &[t.name.into(), (&row_id).into()],
                )
                .await?;
            let Some((rid, data, doc)) = before else { continue };
            self.conn.execute("DELETE FROM record_refs WHERE rid = $1", &[rid.into()]).await?;
            if t.is_root() {
                let gone = doc.as_deref().map(|text| stored_facets_of_text(t, &row_id, text)).unwrap_or_default();
                self.delete_facets(t, &row_id, gone.iter()).await?;
                // Kept in imports too: a root an import's document removes (a service_at_location its service
                // left out) is told to the subscribers filtering by what its document held (few are).
                if let Some(doc) = doc.as_deref().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
                    self.deleted_docs.insert((t.name, row_id.clone()), doc);
                }
            }
            self.conn.execute("DELETE FROM records WHERE rid = $1", &[rid.into()]).await?;
            self.conn
                .execute(
                    "INSERT INTO tombstones (kind, id, deleted_at, origin) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (kind, id) DO UPDATE SET deleted_at = excluded.deleted_at, origin = excluded.origin",
                    &[t.name.into(), (&row_id).into(), self.now.into(), self.origin.into()],
                )
                .await?;
            if !self.bulk {
                self.known.wrote_row(t.name, &row_id, None);
                self.known.wrote_tombstone(t.name, &row_id, true);
            }
            self.record_touch(Touched {
                table: t,
                id: row_id,
                action: Action::Deleted,
                before: Some(parse_row(&data)),
                after: None,
                pointer: String::new(),
            });
        }
        Ok(())
    }

    /// Every reference a write sets must name an existing row of the referenced table. A reference the row
    /// already had is not checked again: a lenient import may have stored one to a row its package lacked
    /// (with a warning), and a change of another field of that row must not be refused for it.
    async fn check_references(&mut self) -> Result<(), WriteError> {
        // (kind, id) -> pointers that need it
        let mut wanted: HashMap<&'static str, HashMap<String, Vec<String>>> = HashMap::new();
        for t in &self.touched {
            let Some(after) = &t.after else { continue };
            for field in t.table.reference_fields() {
                let Some(target) = t.table.checked_reference(field) else { continue };
                let value = after.get(field.name).and_then(Value::as_str);
                let kept = t.before.as_ref().and_then(|before| before.get(field.name)?.as_str());
                if value.is_some() && value == kept {
                    continue;
                }
                if let Some(value) = value {
                    wanted
                        .entry(target)
                        .or_default()
                        .entry(value.to_string())
                        .or_default()
                        .push(format!("{}/{}", t.pointer, field.name));
                }
            }
        }
        if wanted.values().any(|ids| ids.keys().any(|id| !self.created_here(id))) {
            // A row this write points at and did not create may be being deleted (or its document written):
            // checked under the lock.
            self.lock_documents().await?;
        }
        let mut errors = Vec::new();
        for (kind, ids) in wanted {
            let keys: Vec<String> = ids.keys().cloned().collect();
            let found = load_ids(self.conn, kind, &keys).await?;
            for (id, pointers) in ids {
                if !found.contains(&id) {
                    for pointer in pointers {
                        errors.push(FieldError::new(pointer, format!("no {kind} has the id {id}")));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            errors.sort_by(|a, b| a.pointer.cmp(&b.pointer));
            Err(WriteError::Invalid(errors))
        }
    }

    /// Stores root documents of `table` and what lists and filters need of them. A `fresh` one (created in this transaction: a deleted row's facets went with it)
    /// has no facets to delete first. One statement per chunk of documents, not per document.
    async fn store_docs(&mut self, table: &'static Table, docs: &[DocToStore<'_>]) -> sqlx::Result<()> {
        let mut previous: HashMap<String, String> = HashMap::new();
        let old: Vec<String> = docs.iter().filter(|d| !d.fresh).map(|d| d.id.to_string()).collect();
        for chunk in old.chunks(500) {
            let sql = format!(
                "SELECT id, doc FROM records WHERE kind = $1 AND id IN ({})",
                super::placeholders(1, chunk.len())
            );
            let args: Vec<Arg> = std::iter::once(table.name.into()).chain(chunk.iter().map(Arg::from)).collect();
            let found: Vec<(String, Option<String>)> = self.conn.fetch_all(&sql, &args).await?;
            previous.extend(found.into_iter().filter_map(|(id, doc)| Some((id, doc?))));
        }
        // Coordinates are bound as plain f64 with a has-value flag, never as `Option<f64>`: sqlx 0.8's Any
        // driver sends a NULL f64 as a float4 parameter on PostgreSQL, the prepared statement keeps that
        // type, and the next real coordinate on that connection then fails ("incorrect binary data format").
        const PER_ROW: usize = 10;
        // A new root's document its insert stored as it came out now is not written again.
        let changed: Vec<(&DocToStore, DocColumns)> = docs
            .iter()
            .map(|d| (d, DocColumns::of(table, d.doc)))
            .filter(|(d, columns)| d.inserted.is_none_or(|stored| stored.text != columns.text || stored.at != d.now))
            .collect();
        for chunk in changed.chunks(100) {
            let values: Vec<String> =
                super::row_placeholders(2, chunk.len(), PER_ROW).into_iter().map(|p| format!("({p})")).collect();
            let sql = format!(
                "WITH v (id, doc, search_text, sort_key, modified_at, has_lat, lat, has_lon, lon, summary) AS \
                 (VALUES {}) UPDATE records SET doc = v.doc, search_text = v.search_text, sort_key = v.sort_key, \
                 modified_at = v.modified_at, latitude = CASE WHEN v.has_lat THEN v.lat ELSE NULL END, \
                 longitude = CASE WHEN v.has_lon THEN v.lon ELSE NULL END, summary = v.summary \
                 FROM v WHERE records.kind = $1 AND records.id = v.id",
                values.join(", ")
            );
            let mut args: Vec<Arg> = Vec::with_capacity(1 + PER_ROW * chunk.len());
            args.push(table.name.into());
            for (d, columns) in chunk {
                let (latitude, longitude) = columns.coordinates;
                args.extend([
                    Arg::from(d.id),
                    (&columns.text).into(),
                    (&columns.search_text).into(),
                    (&columns.sort_key).into(),
                    d.now.into(),
                    latitude.is_some().into(),
                    latitude.unwrap_or(0.0).into(),
                    longitude.is_some().into(),
                    longitude.unwrap_or(0.0).into(),
                    (&columns.summary).into(),
                ]);
            }
            self.conn.execute(&sql, &args).await?;
        }
        // Only the facets that changed are written: most updates change none, and each facet is a page of a
        // random-keyed index.
        let mut new_facets: Vec<(&str, String, String)> = Vec::new();
        for d in docs {
            let mut facets = stored_facets(table, d.id, d.facets.clone());
            let before = previous.get(d.id).map(|text| stored_facets_of_text(table, d.id, text)).unwrap_or_default();
            if !d.fresh {
                self.delete_facets(table, d.id, before.difference(&facets)).await?;
                facets.retain(|f| !before.contains(f));
            }
            new_facets.extend(facets.into_iter().map(|(facet, value)| (d.id, facet, value)));
        }
        for chunk in new_facets.chunks(200) {
            let values: Vec<String> =
                super::row_placeholders(2, chunk.len(), 3).into_iter().map(|p| format!("($1, {p})")).collect();
            let sql = format!(
                "INSERT INTO record_facets (kind, id, facet, value) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut args: Vec<Arg> = vec![table.name.into()];
            for (id, facet, value) in chunk {
                args.extend([Arg::from(*id), Arg::from(facet), Arg::from(value)]);
            }
            self.conn.execute(&sql, &args).await?;
        }
        Ok(())
    }

    async fn delete_facets(
        &mut self,
        table: &Table,
        id: &str,
        facets: impl Iterator<Item = &(String, String)>,
    ) -> sqlx::Result<()> {
        for (facet, value) in facets {
            self.conn
                .execute(
                    "DELETE FROM record_facets WHERE kind = $1 AND facet = $2 AND value = $3 AND id = $4",
                    &[table.name.into(), facet.into(), value.into(), id.into()],
                )
                .await?;
        }
        Ok(())
    }

    /// The root documents that contain each of the `starts` rows (before or after its change), itself
    /// included: one set per row. The walks of all rows go together, one level at a time, with one read of
    /// references (and of unknown rows, per table) per level: a group of new organizations costs one read,
    /// not one each.
    ///
    /// A walk goes up the embedding relation: a row is embedded in the row its back reference points at
    /// (`phone.service_id` -> that service), and — only when the row itself changed, not something inside
    /// it — in the rows that nest it as a `One` (`service.organization`, `attribute.taxonomy_term`). An
    /// organization root also embeds its services and a service_at_location root its service.
    ///
    /// Each walk also tells which roots hold the row (reached only up through back references: the row is
    /// one of theirs, as a phone is its service's and its organization's) and, for each root, the roots on
    /// the way to it (a phone of a service reaches the organization through that service). A root reached
    /// sideways only shows the row (a service shows its organization's own fields): the row is not its.
    async fn embedding_walks_of(&mut self, starts: &[&Touched]) -> sqlx::Result<Vec<Walk>> {
        // A walk's first row is a node of its own (its rows are the write's before and after, and it changed
        // itself); any other row is one node, whichever walks reach it.
        #[derive(Clone, PartialEq, Eq, Hash)]
        enum Node {
            Start(usize),
            Row(&'static str, String),
        }
        // Each node's edges: the row it leads to, and whether that row nests it (up) or shows it (sideways).
        let mut edges: HashMap<Node, Vec<(&'static Table, String, bool)>> = HashMap::new();
        let mut frontier: Vec<(Node, &'static Table, String, Vec<Row>)> = starts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (Node::Start(i), t.table, t.id.clone(), t.before.iter().chain(t.after.iter()).cloned().collect())
            })
            .collect();
        while !frontier.is_empty() {
            let mut unknown: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
            for (_, t, id, rows) in &frontier {
                if rows.is_empty() {
                    unknown.entry(t.name).or_default().push(id.clone());
                }
            }
            let mut loaded: HashMap<(&'static str, String), Row> = HashMap::new();
            for (kind, ids) in unknown {
                loaded.extend(load_rows(self.conn, kind, &ids).await?.into_iter().map(|(id, row)| ((kind, id), row)));
            }
            let ids: Vec<String> =
                frontier.iter().map(|(_, _, id, _)| id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
            let referrers = referrers_of(self.conn, &ids).await?;
            let mut next: Vec<(Node, &'static Table, String, Vec<Row>)> = Vec::new();
            for (node, t, id, rows) in std::mem::take(&mut frontier) {
                let own_change = matches!(node, Node::Start(_));
                let rows = match rows.is_empty() {
                    true => loaded.get(&(t.name, id.clone())).cloned().into_iter().collect(),
                    false => rows,
                };
                let mut out: Vec<(&'static Table, String, bool)> = Vec::new();
                // Up through back references: the parents that nest this row in a `Many` key.
                for field in t.reference_fields() {
                    for row in &rows {
                        let Some(target_id) = row.get(field.name).and_then(Value::as_str) else { continue };
                        let parents: Vec<&'static Table> = match field.references {
                            Some("*") => match parent_table_of(self.conn, target_id, t, field, row).await? {
                                Some(p) => vec![p],
                                // Gone already: a root deleted earlier in this write (its cascade deletes the
                                // row after it), known by the document kept for its events.
                                None => self
                                    .deleted_docs
                                    .keys()
                                    .filter(|(_, id)| id == target_id)
                                    .filter_map(|(kind, _)| table_of(kind))
                                    .filter(|parent| {
                                        nests(parent, t, field.name) && t.points_into(field, row, parent.name)
                                    })
                                    .collect(),
                            },
                            Some(name) => table_of(name).into_iter().collect(),
                            None => vec![],
                        };
                        for parent in parents {
                            let nests_here = parent.nested.iter().any(|n| {
                                n.kind == NestedKind::Many
                                    && n.table == t.name
                                    && parent.back_reference(n).map(|f| f.name) == Some(field.name)
                            });
                            let root_extra = parent.name == "organization" && t.name == "service";
                            if nests_here || root_extra {
                                out.push((parent, target_id.to_string(), true));
                            }
                        }
                    }
                }
                // Sideways: rows that nest this one as a `One` see its own fields only.
                for (kind, field, referrer_id) in referrers.get(&id).into_iter().flatten() {
                    let Some(referrer) = table_of(kind) else { continue };
                    let nests_one = referrer.nested.iter().any(|n| {
                        n.kind == NestedKind::One
                            && n.table == t.name
                            && referrer.forward_reference(n).map(|f| f.name) == Some(field.as_str())
                    });
                    let full_location = referrer.name == "service_at_location" && t.name == "location";
                    let service_in_link = referrer.name == "service_at_location" && t.name == "service";
                    if (nests_one && (own_change || full_location)) || service_in_link {
                        out.push((referrer, referrer_id.clone(), false));
                    }
                }
                for (parent, parent_id, _) in &out {
                    let reached = Node::Row(parent.name, parent_id.clone());
                    if !edges.contains_key(&reached) && !next.iter().any(|(n, ..)| *n == reached) {
                        next.push((reached, parent, parent_id.clone(), Vec::new()));
                    }
                }
                edges.insert(node, out);
            }
            frontier = next;
        }
        // Each row's roots: every row its walk reaches. The roots on the way that count are those before the
        // first sideways step (the row is inside them; past a sideways step it is only shown): a phone of a
        // location is news of the location to the service linked there, but not news of that service to its
        // organization. A row is gone through again when reached up for the first time, or with such roots
        // it was not yet reached with: holders and the roots on the way are then complete whatever the order.
        // Each pass adds to a row's sets, so the walk ends.
        let walks = (0..starts.len())
            .map(|i| {
                let mut walk = Walk::default();
                let mut seen: HashSet<Root> = HashSet::new();
                let mut reached_up: HashSet<Root> = HashSet::new();
                let mut with: HashMap<Root, BTreeSet<Root>> = HashMap::new();
                let start = (Node::Start(i), starts[i].table, starts[i].id.clone(), true, Vec::<Root>::new());
                let mut stack = vec![start];
                while let Some((node, t, id, up, mut inside)) = stack.pop() {
                    let here: Root = (t.name, id);
                    // Back to a document the row is already inside (a service's links show the service that
                    // holds them): nothing new, and its roots on the way must not grow by the detour.
                    if inside.contains(&here) {
                        continue;
                    }
                    let first = seen.insert(here.clone());
                    let first_up = up && reached_up.insert(here.clone());
                    let known = with.entry(here.clone()).or_default();
                    let new_roots = inside.iter().any(|root| !known.contains(root));
                    if !(first || first_up || new_roots) {
                        continue;
                    }
                    known.extend(inside.iter().cloned());
                    if t.is_root() {
                        walk.roots.insert(here.clone());
                        if up {
                            walk.holders.insert(here.clone());
                        }
                        walk.via.entry(here.clone()).or_default().extend(inside.iter().cloned());
                        if up {
                            inside.push(here.clone());
                        }
                    }
                    // A link shows its service without the service's links: a change that came up through one
                    // link changes nothing the service's other links show.
                    let through_a_link = t.name == "service"
                        && up
                        && inside.iter().rev().nth(1).is_some_and(|root| root.0 == "service_at_location");
                    for (parent, parent_id, nests) in edges.get(&node).into_iter().flatten() {
                        if through_a_link && !*nests && parent.name == "service_at_location" {
                            continue;
                        }
                        let next = Node::Row(parent.name, parent_id.clone());
                        stack.push((next, parent, parent_id.clone(), up && *nests, inside.clone()));
                    }
                }
                walk.rows = seen;
                walk
            })
            .collect();
        Ok(walks)
    }
}

/// Whether a row one write's event shows (the touched row itself, or a root it reaches), compiled once for the
/// whole batch, would show another write's change too: another write's walk went through it. Then it would
/// not be its state right after its own write. (A batch of one write never meets itself.)
fn two_writes_meet(starts: &[&Touched], walks: &[Walk], write_of: &[usize]) -> bool {
    if write_of.iter().all(|&i| i == write_of[0]) {
        return false;
    }
    let mut first_visitor: HashMap<&Root, usize> = HashMap::new();
    let mut shared: HashSet<&Root> = HashSet::new();
    for (walk, &i) in walks.iter().zip(write_of) {
        for row in &walk.rows {
            if *first_visitor.entry(row).or_insert(i) != i {
                shared.insert(row);
            }
        }
    }
    starts.iter().zip(walks).any(|(t, walk)| {
        shared.contains(&(t.table.name, t.id.clone())) || walk.roots.iter().any(|root| shared.contains(root))
    })
}

/// A root document, or any row: (table, id).
type Root = (&'static str, String);

/// Where a touched row's walk up the documents went: the roots it reached, and every row on the way (the row
/// itself included), whose compiled forms may show it.
#[derive(Default)]
struct Walk {
    roots: BTreeSet<Root>,
    rows: HashSet<Root>,
    /// The roots the row is one of the rows of (the row itself, if a root, included).
    holders: BTreeSet<Root>,
    /// For each root reached, the roots the row is inside on the way to it (before any sideways step).
    via: RootsOnTheWay,
}

/// For each root a walk reached, the roots it went through to get there.
type RootsOnTheWay = HashMap<Root, BTreeSet<Root>>;

/// A root document to store (see [`Writer::store_docs`]).
struct DocToStore<'a> {
    id: &'a str,
    doc: &'a Value,
    facets: &'a Facets,
    fresh: bool,
    now: &'a str,
    /// The document text and time its row's insert already stored (see `lone_document`), if any.
    inserted: Option<&'a InsertedDoc>,
}

/// A new root's document as its insert stored it (see `lone_document`), and the time it carries.
struct InsertedDoc {
    text: String,
    at: String,
}

/// What a root's row stores of its document besides the text: its list form, search text, sort key and
/// coordinates.
struct DocColumns {
    text: String,
    summary: String,
    search_text: String,
    sort_key: String,
    coordinates: (Option<f64>, Option<f64>),
}

impl DocColumns {
    fn of(table: &Table, doc: &Value) -> DocColumns {
        DocColumns {
            text: doc.to_string(),
            summary: super::compile::list_form(doc).to_string(),
            search_text: document::search_text(table, doc),
            sort_key: document::sort_key(table, doc),
            coordinates: document::coordinates(table, doc),
        }
    }
}

/// Recompiles the root documents the `staged` writes touched or that embed what they touched, stores them and
/// builds each write's events. Writes staged one after the other in one transaction finish together: each
/// document once, and each step one statement for all of them rather than one per write.
///
/// That is only right when no two of them reach the same document: an event carries its document as it
/// stood right after its own write (CONTRACT.md 5), and a document compiled once for two writes would show
/// the second's change in the first's event. So when two writes reach one document, nothing is stored and
/// the answer is `None`: the caller rolls them back and applies them one by one.
pub(crate) async fn finish_staged(
    conn: &mut Conn<'_>,
    backend: Backend,
    staged: Vec<Staged>,
) -> Result<Option<Vec<PendingWrite>>, WriteError> {
    let mut writer = Writer {
        conn,
        origin: "",
        now: "",
        touched: Vec::new(),
        bulk: false,
        concurrent: backend == Backend::Postgres,
        documents_locked: staged.iter().any(|s| s.documents_locked),
        deleted_docs: staged.iter().flat_map(|s| s.deleted_docs.iter().map(|(k, v)| (k.clone(), v.clone()))).collect(),
        known: &mut Known::default(),
        documents_at_insert: false,
        inserted_docs: HashMap::new(),
        mirror: false,
    };
    let inserted: HashMap<&Root, &InsertedDoc> = staged.iter().flat_map(|s| &s.inserted_docs).collect();
    // Every touched row of every write, and the write it belongs to.
    let starts: Vec<&Touched> = staged.iter().flat_map(|s| &s.touched).collect();
    let write_of: Vec<usize> = staged.iter().enumerate().flat_map(|(i, s)| s.touched.iter().map(move |_| i)).collect();
    let mut walks = writer.embedding_walks_of(&starts).await?;
    let created: HashSet<Root> =
        starts.iter().filter(|t| t.action == Action::Created).map(|t| (t.table.name, t.id.clone())).collect();
    let existing_roots = walks.iter().flat_map(|w| &w.roots).any(|root| !created.contains(root));
    if existing_roots && writer.lock_documents().await? {
        // A document that already existed is compiled from rows other transactions may be changing: the
        // documents to compile are looked for again under the lock (a link committed meanwhile adds one).
        walks = writer.embedding_walks_of(&starts).await?;
    }
    if two_writes_meet(&starts, &walks, &write_of) {
        return Ok(None);
    }
    let holders_of: Vec<BTreeSet<Root>> = walks.iter_mut().map(|w| std::mem::take(&mut w.holders)).collect();
    let via_of: Vec<RootsOnTheWay> = walks.iter_mut().map(|w| std::mem::take(&mut w.via)).collect();
    let mut roots_of: Vec<BTreeSet<Root>> = walks.into_iter().map(|w| w.roots).collect();
    // A write does not reach the roots a later write of the batch created: they did not exist after it (a
    // new organization's walk would otherwise announce a service created after it under the organization).
    let mut created_by: HashMap<Root, usize> = HashMap::new();
    for (t, &i) in starts.iter().zip(&write_of) {
        if t.action == Action::Created {
            created_by.entry((t.table.name, t.id.clone())).or_insert(i);
        }
    }
    for (roots, &i) in roots_of.iter_mut().zip(&write_of) {
        roots.retain(|root| created_by.get(root).is_none_or(|&by| by <= i));
    }
    // A root lives on unless the last write that touched it deleted it.
    let mut last_action: HashMap<Root, Action> = HashMap::new();
    for t in &starts {
        last_action.insert((t.table.name, t.id.clone()), t.action);
    }
    // Each root is dated by the last write that reaches it.
    let mut now_of: HashMap<&Root, &str> = HashMap::new();
    for (roots, &i) in roots_of.iter().zip(&write_of) {
        for root in roots {
            now_of.insert(root, &staged[i].now);
        }
    }
    let all_roots: BTreeSet<&Root> =
        roots_of.iter().flatten().filter(|root| last_action.get(*root) != Some(&Action::Deleted)).collect();
    // Each recompiled root's document, compiled and stored table by table.
    let mut docs: HashMap<Root, Value> = HashMap::new();
    for root_table in super::compile::ROOT_ORDER.iter().filter_map(|name| table(name)) {
        let ids: Vec<&String> = all_roots.iter().filter(|(k, _)| *k == root_table.name).map(|(_, id)| id).collect();
        if ids.is_empty() {
            continue;
        }
        // Roots these writes wrote are compiled from the rows they hold (the last one's); only the others are
        // read.
        let mut rows: Vec<Row> = Vec::with_capacity(ids.len());
        let mut unknown: Vec<String> = Vec::new();
        for id in ids {
            match starts
                .iter()
                .rev()
                .find(|t| t.table.name == root_table.name && t.id == *id)
                .and_then(|t| t.after.clone())
            {
                Some(row) => rows.push(row),
                None => unknown.push(id.clone()),
            }
        }
        rows.extend(load_rows(writer.conn, root_table.name, &unknown).await?.into_values());
        let mut compiled = compile_many(writer.conn, root_table, rows, Form::Root).await?;
        let mut entries: Vec<(String, Facets, &str)> = Vec::with_capacity(compiled.len());
        for doc in &mut compiled {
            let Some(id) = doc.get("id").and_then(Value::as_str).map(str::to_string) else { continue };
            let key = (root_table.name, id.clone());
            let now = now_of.get(&key).copied().unwrap_or_else(|| staged[staged.len() - 1].now.as_str());
            document::stamp_last_modified(root_table, doc, now);
            entries.push((id, document::facets(root_table, doc), now));
        }
        let compiled: Vec<Value> =
            compiled.into_iter().filter(|doc| doc.get("id").and_then(Value::as_str).is_some()).collect();
        let to_store: Vec<DocToStore> = entries
            .iter()
            .zip(&compiled)
            .map(|((id, facets, now), doc)| DocToStore {
                id,
                doc,
                facets,
                fresh: created.contains(&(root_table.name, id.clone())),
                now,
                inserted: inserted.get(&(root_table.name, id.clone())).copied(),
            })
            .collect();
        writer.store_docs(root_table, &to_store).await?;
        drop(to_store);
        for ((id, _, _), doc) in entries.into_iter().zip(compiled) {
            docs.insert((root_table.name, id), doc);
        }
    }
    // The event data of touched rows that are not roots and still exist, compiled per table for all writes.
    let mut nested: HashMap<usize, Value> = HashMap::new();
    let mut by_table: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (i, t) in starts.iter().enumerate() {
        if t.after.is_some() && !t.table.is_root() {
            by_table.entry(t.table.name).or_default().push(i);
        }
    }
    for (name, indexes) in by_table {
        let Some(t) = table(name) else { continue };
        // A row two writes touched (one named it, a child set of the other unlinked it) is compiled once per
        // write: a compile gives each id its nested rows once.
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        for i in indexes {
            match rounds.iter_mut().find(|round| round.iter().all(|&j| starts[j].id != starts[i].id)) {
                Some(round) => round.push(i),
                None => rounds.push(vec![i]),
            }
        }
        for round in rounds {
            let rows: Vec<Row> = round.iter().filter_map(|&i| starts[i].after.clone()).collect();
            let compiled = compile_many(writer.conn, t, rows, Form::Nested).await?;
            nested.extend(round.into_iter().zip(compiled));
        }
    }
    let mut finished = Vec::with_capacity(staged.len());
    let mut first = 0;
    for s in &staged {
        let range = first..first + s.touched.len();
        first = range.end;
        let mut events: Vec<NewEvent> = Vec::new();
        let mut announced: HashSet<Root> = HashSet::new();
        let mut reached: BTreeSet<&Root> = BTreeSet::new();
        // A root document's event matches its root's identity (its id, what it references itself, the terms
        // and locations it carries itself: `document::identity_facets`) and what this write touched inside
        // it: each touched row as it stood before and after (its id and what it referenced; a root row its
        // identity) and the identity of the roots on the way up from that row to this one (a phone of a
        // service is news of that service, its terms and locations, to its organization). Not everything the
        // document names at any depth: an organization lists every service and their phones, and a
        // subscriber filtering by one service must hear of the organization's update that this service's
        // change made, not of every update of its organization. The facets stored for list filters stay deep.
        // Each root's identity, derived once for this write (a service with many links reaches each of them
        // from every row it touched).
        let mut identities: HashMap<&Root, Facets> = HashMap::new();
        for root in range.clone().flat_map(|i| &roots_of[i]) {
            identities.entry(root).or_insert_with(|| {
                let doc = docs.get(root).or_else(|| s.deleted_docs.get(root));
                document::identity_facets(root.0, &root.1, doc)
            });
        }
        let identity = |root: &Root| identities.get(root).into_iter().flatten();
        let mut touched_inside: HashMap<Root, Facets> = HashMap::new();
        for i in range.clone() {
            let t = starts[i];
            let key = (t.table.name, t.id.clone());
            let mut row = BTreeSet::from([(format!("{}_id", t.table.name), t.id.clone())]);
            for state in [&t.before, &t.after].into_iter().flatten() {
                row.extend(document::row_facets(t.table, state));
            }
            if t.table.is_root() {
                row.extend(identity(&key).cloned());
            }
            for root in roots_of[i].iter().filter(|root| **root != key) {
                let inside = touched_inside.entry(root.clone()).or_default();
                inside.extend(row.iter().cloned());
                let on_the_way = via_of[i].get(root).into_iter().flatten().filter(|q| roots_of[i].contains(*q));
                on_the_way.for_each(|q| inside.extend(identity(q).cloned()));
            }
        }
        // What was touched inside a touched root was touched inside the roots that hold it too (the rows a
        // deleted service took with it are news of its organization: their walks end at the service, gone).
        // Until nothing grows: a deleted link's rows reach the service, the service's reach the organization,
        // in whatever order the rows came.
        loop {
            let mut grew = false;
            for i in range.clone().filter(|&i| starts[i].table.is_root()) {
                let key = (starts[i].table.name, starts[i].id.clone());
                let Some(inside) = touched_inside.get(&key).cloned() else { continue };
                for holder in holders_of[i].iter().filter(|h| **h != key && roots_of[i].contains(*h)) {
                    let theirs = touched_inside.entry(holder.clone()).or_default();
                    let before = theirs.len();
                    theirs.extend(inside.iter().cloned());
                    grew |= theirs.len() > before;
                }
            }
            if !grew {
                break;
            }
        }
        for i in range {
            let t = starts[i];
            let roots = &roots_of[i];
            reached.extend(roots.iter());
            let key = (t.table.name, t.id.clone());
            // A root's event matches its own identity (it holds itself: the loop below), a deleted one's as its
            // document held it.
            let (data, mut facets) = match (&t.after, t.table.is_root()) {
                (Some(_), true) => (docs.get(&key).cloned().unwrap_or_default(), Facets::new()),
                (None, true) if s.deleted_docs.contains_key(&key) => {
                    (json!({ "id": t.id, "deleted": true }), Facets::new())
                }
                (after, _) => {
                    let data = match after {
                        None => json!({ "id": t.id, "deleted": true }),
                        Some(_) => nested.remove(&i).unwrap_or(Value::Null),
                    };
                    let facets = document::facets(t.table, &data);
                    (data, facets)
                }
            };
            if let Some(before) = &t.before {
                facets.extend(document::facets(t.table, &Value::Object(before.clone())));
            }
            // A row's event matches the identity of the roots it is a row of; not of those that only show it
            // (renaming an organization is not news of each of its services, whose documents show its name).
            for root in roots.iter().filter(|root| holders_of[i].contains(*root)) {
                facets.extend(identity(root).cloned());
            }
            if t.table.is_root() {
                facets.extend(touched_inside.get(&key).into_iter().flatten().cloned());
                announced.insert(key.clone());
            }
            events.push(NewEvent {
                event_type: format!("{}.{}", t.table.name, t.action.as_str()),
                object: t.table.name,
                object_id: t.id.clone(),
                data,
                facets,
                changed_inside_only: false,
            });
        }
        // The documents this write changed without touching their own row get an `updated` event.
        for root in reached {
            if announced.contains(root) {
                continue;
            }
            let Some(doc) = docs.get(root) else { continue };
            let mut facets = document::identity_facets(root.0, &root.1, Some(doc));
            facets.extend(touched_inside.get(root).into_iter().flatten().cloned());
            events.push(NewEvent {
                event_type: format!("{}.updated", root.0),
                object: root.0,
                object_id: root.1.clone(),
                data: doc.clone(),
                facets,
                changed_inside_only: true,
            });
        }
        let created =
            s.touched.iter().filter(|t| t.action == Action::Created).map(|t| (t.table.name, t.id.clone())).collect();
        finished.push((s.touched.len(), created, events));
    }
    let mut pending = Vec::with_capacity(staged.len());
    for (s, (rows_changed, created, events)) in staged.into_iter().zip(finished) {
        // The row a caller answers with, where this write left it unchanged: read here, in the write's
        // transaction and before any write after it (see `WriteOptions::answer`).
        let answer = match s.answer {
            Some((table, id)) if !events.iter().any(|e| e.object == table.name && e.object_id == id) => {
                super::read::representation(writer.conn, table, &id).await?.map(|doc| (table.name, id, doc))
            }
            _ => None,
        };
        pending.push(PendingWrite { rows_changed, created, events, origin: s.origin, now: s.now, answer });
    }
    Ok(Some(pending))
}

/// Who points at each of `ids`: (kind, field, id) of every reference to it.
async fn referrers_of(
    conn: &mut Conn<'_>,
    ids: &[String],
) -> sqlx::Result<HashMap<String, Vec<(String, String, String)>>> {
    let mut out: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT target_id, kind, field, id FROM record_refs WHERE target_id IN ({})",
            super::placeholders(0, chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(Arg::from).collect();
        let found: Vec<(String, String, String, String)> = conn.fetch_all(&sql, &args).await?;
        for (target, kind, field, id) in found {
            out.entry(target).or_default().push((kind, field, id));
        }
    }
    Ok(out)
}

/// Rows to import, each with a label saying where it came from ("services.csv line 3").
pub type LabelledRows = Vec<(&'static Table, Row, String)>;

/// What an import writes: its `rows`, and the `copies` of related rows its documents embed (a capacity's unit
/// in a service document), each created only where the directory does not hold the row yet, as a write
/// takes them (`Op::copied`).
#[derive(Default)]
pub struct ImportRows {
    pub rows: LabelledRows,
    pub copies: LabelledRows,
    /// The nested arrays the documents give (a service's `phones`): as a `PUT` of the document would, they
    /// replace the parent's children, except children the import gives elsewhere.
    pub child_sets: Vec<document::ChildSet>,
}

impl From<LabelledRows> for ImportRows {
    fn from(rows: LabelledRows) -> Self {
        ImportRows { rows, copies: Vec::new(), child_sets: Vec::new() }
    }
}

impl ImportRows {
    pub fn len(&self) -> usize {
        self.rows.len() + self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The PostgreSQL transaction lock under which existing documents change (see `Writer::lock_documents`);
/// taken again by a transaction that holds it, it is only counted once more.
pub(crate) async fn lock_documents(conn: &mut Conn<'_>) -> sqlx::Result<()> {
    /// "hsdadocs" in ASCII: a key no other advisory lock of this database is likely to use.
    const DOCUMENTS: i64 = 0x6873_6461_646f_6373;
    conn.execute("SELECT pg_advisory_xact_lock($1)", &[DOCUMENTS.into()]).await.map(drop)
}

/// The fields of `table` through which a row of another table nests it (`phone.service_id`, `location_id`...).
/// The fields through which a `table` row is nested in another: its parent links, and links to a row of any
/// table (an attribute's or a metadata row's), which always nest it there.
fn nesting_links(table: &'static Table) -> impl Iterator<Item = &'static crate::hsds::catalog::Field> {
    table.reference_fields().filter(move |f| f.references == Some("*") || parent_links(table).any(|p| p.name == f.name))
}

fn parent_links(table: &'static Table) -> impl Iterator<Item = &'static crate::hsds::catalog::Field> {
    table.reference_fields().filter(move |f| f.references.and_then(table_of).is_some_and(|p| p.nests_through(table, f)))
}

fn table_of(name: &str) -> Option<&'static Table> {
    table(name)
}

/// A document's `(facet, value)` pairs (see [`document::facets`]).
type Facets = BTreeSet<(String, String)>;

/// The facets `record_facets` holds for a root document: all of its [`document::facets`] but the root's own
/// id, which list filters match on the id itself (see `store::read`). The facets to delete are derived from
/// the stored document the same way, so a change to what counts as a facet must come with a migration that
/// rebuilds `record_facets`.
fn stored_facets(table: &Table, id: &str, mut facets: Facets) -> Facets {
    let own = format!("{}_id", table.name);
    facets.retain(|(facet, value)| !(*facet == own && value == id));
    facets
}

/// [`stored_facets`] of a document as stored (its JSON text).
fn stored_facets_of_text(table: &Table, id: &str, doc: &str) -> Facets {
    serde_json::from_str::<Value>(doc)
        .map(|doc| stored_facets(table, id, document::facets(table, &doc)))
        .unwrap_or_default()
}

/// Whether `parent` nests `child` rows through the child's back reference `field`.
fn nests(parent: &Table, child: &Table, field: &str) -> bool {
    parent.nested.iter().any(|n| n.table == child.name && parent.back_reference(n).map(|f| f.name) == Some(field))
}

/// The table of the row with this id that `row` points at through the polymorphic `field`
/// (`attribute.link_id`): only tables that nest `child` rows through `field`, and the one `row` names if it
/// does (`link_entity`), can be the parent; each is probed on its `(kind, id)` key (there is no index on the
/// id alone: it would cost a random page write on every insert to save this rare read).
async fn parent_table_of(
    conn: &mut Conn<'_>,
    id: &str,
    child: &Table,
    field: &Field,
    row: &Row,
) -> sqlx::Result<Option<&'static Table>> {
    let candidates: Vec<&'static Table> = TABLES
        .iter()
        .filter(|parent| nests(parent, child, field.name) && child.points_into(field, row, parent.name))
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut args: Vec<Arg> = vec![id.into()];
    args.extend(candidates.iter().map(|t| Arg::from(t.name)));
    let sql = format!(
        "SELECT kind FROM records WHERE id = $1 AND kind IN ({}) LIMIT 1",
        super::placeholders(1, candidates.len())
    );
    let kind: Option<(String,)> = conn.fetch_optional(&sql, &args).await?;
    Ok(kind.and_then(|(k,)| table(&k)))
}

async fn load_ids(conn: &mut Conn<'_>, kind: &str, ids: &[String]) -> sqlx::Result<HashSet<String>> {
    Ok(load_rows(conn, kind, ids).await?.into_keys().collect())
}

/// Progress of a bulk import, reported as (phase, done, total).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Send + Sync);

impl Db {
    /// Writes many rows in ONE transaction (all or nothing) and appends their events: one per row, then one
    /// `.updated` per root document whose compiled form changed. Referenced rows must come first or exist.
    ///
    /// With `strict_references` a reference to a row that exists neither in the store nor in the import
    /// fails the import; without, it is imported as is and reported in [`WriteOutcome::warnings`] (the
    /// official HSDS example package itself has such references).
    pub async fn import(
        &self,
        rows: impl Into<ImportRows>,
        strict_references: bool,
        progress: Progress<'_>,
    ) -> Result<WriteOutcome, WriteError> {
        let result = self.import_in_tx(rows.into(), strict_references, progress).await;
        self.observe_write(&result);
        result
    }

    async fn import_in_tx(
        &self,
        ImportRows { rows, copies, child_sets }: ImportRows,
        strict_references: bool,
        progress: Progress<'_>,
    ) -> Result<WriteOutcome, WriteError> {
        let (mut tx, _guard) = self.begin_write().await?;
        let origin = self.instance_id().to_string();
        let now = now_text();
        let total = (rows.len() + copies.len()) as u64;
        let mut conn = Conn::from(&mut *tx);
        let concurrent = self.backend == Backend::Postgres;
        if concurrent {
            // An import rewrites the documents of whatever it touches: all of it under the document lock.
            lock_documents(&mut conn).await?;
        }
        let mut writer = Writer {
            conn: &mut conn,
            origin: &origin,
            now: &now,
            touched: Vec::new(),
            bulk: true,
            concurrent,
            documents_locked: concurrent,
            deleted_docs: HashMap::new(),
            known: &mut Known::default(),
            documents_at_insert: false,
            inserted_docs: HashMap::new(),
            mirror: false,
        };
        // The rows the import gives (a copy only where it creates the row): no child set removes them.
        let mut given: HashSet<(&'static str, String)> =
            rows.iter().filter_map(|(t, row, _)| Some((t.name, id_of(row)?))).collect();
        let copies = copies.into_iter().map(|row| (row, true));
        for (i, ((table, row, pointer), copy)) in rows.into_iter().map(|row| (row, false)).chain(copies).enumerate() {
            if copy && let Some(id) = id_of(&row) {
                if writer.exists(table.name, &id).await? {
                    continue;
                }
                given.insert((table.name, id));
            }
            writer.upsert(table, row, pointer).await?;
            if i % 1000 == 0 {
                progress("rows", i as u64, total);
            }
        }
        progress("rows", total, total);
        writer.replace_child_sets(child_sets, &given).await?;
        let dangling = writer.dangling_references().await?;
        if strict_references && !dangling.is_empty() {
            return Err(WriteError::Invalid(dangling));
        }
        let mut outcome = writer.finish_bulk(progress).await?;
        outcome.warnings = dangling;
        apply_queued_search(&mut conn, self.backend).await?;
        tx.commit().await?;
        if let Some(last) = outcome.last_sequence {
            self.events_appended(last);
        }
        self.notify_changed();
        Ok(outcome)
    }
}

impl Writer<'_, '_> {
    /// Removes from each of `sets` the children of its parent that neither the set nor any other part of the
    /// import (`given`) holds, as [`Op::KeepChildren`] does for a `PUT`. The children parents have are read per
    /// table and field, 500 parents a statement; only a set with children leaving costs more.
    async fn replace_child_sets(
        &mut self,
        sets: Vec<document::ChildSet>,
        given: &HashSet<(&'static str, String)>,
    ) -> Result<(), WriteError> {
        let mut by_link: BTreeMap<(&'static str, &'static str), Vec<document::ChildSet>> = BTreeMap::new();
        for set in sets {
            by_link.entry((set.table.name, set.field)).or_default().push(set);
        }
        for ((kind, field), sets) in by_link {
            let parents: BTreeSet<&str> = sets.iter().map(|set| set.parent_id.as_str()).collect();
            let parents: Vec<&str> = parents.into_iter().collect();
            let mut children: HashMap<String, Vec<String>> = HashMap::new();
            for chunk in parents.chunks(500) {
                let sql = format!(
                    "SELECT target_id, id FROM record_refs WHERE kind = $1 AND field = $2 AND target_id IN ({}) \
                     ORDER BY target_id, id",
                    super::placeholders(2, chunk.len())
                );
                let args: Vec<Arg> = [kind, field].into_iter().chain(chunk.iter().copied()).map(Arg::from).collect();
                let found: Vec<(String, String)> = self.conn.fetch_all(&sql, &args).await?;
                for (parent, child) in found {
                    children.entry(parent).or_default().push(child);
                }
            }
            for set in sets {
                let existing = children.get(&set.parent_id).map(Vec::as_slice).unwrap_or_default();
                let leaving = |id: &String| !set.keep.contains(id) && !given.contains(&(kind, id.clone()));
                if !existing.iter().any(leaving) {
                    continue;
                }
                let keep = existing.iter().filter(|id| !leaving(id)).cloned().collect();
                let op = Op::KeepChildren {
                    table: set.table,
                    field: set.field,
                    parent: set.parent,
                    parent_id: set.parent_id,
                    keep,
                };
                self.apply_op(op).await?;
            }
        }
        Ok(())
    }

    /// References of imported rows to rows that do not exist.
    async fn dangling_references(&mut self) -> Result<Vec<FieldError>, WriteError> {
        let pointers: HashMap<(&str, &str), &str> =
            self.touched.iter().map(|t| ((t.table.name, t.id.as_str()), t.pointer.as_str())).collect();
        let mut errors = Vec::new();
        for t in TABLES {
            for field in t.reference_fields() {
                let Some(target) = t.checked_reference(field) else { continue };
                let missing: Vec<(String, String)> = self
                    .conn
                    .fetch_all(
                        "SELECT f.id, f.target_id FROM record_refs f WHERE f.kind = $1 AND f.field = $2 \
                         AND NOT EXISTS (SELECT 1 FROM records r WHERE r.kind = $3 AND r.id = f.target_id) LIMIT 1000",
                        &[t.name.into(), field.name.into(), target.into()],
                    )
                    .await?;
                for (id, target_id) in missing {
                    // Only rows of this import are reported; older dangling rows were accepted before.
                    let Some(at) = pointers.get(&(t.name, id.as_str())) else { continue };
                    errors.push(FieldError::new(
                        format!("{at}, field {}", field.name),
                        format!("no {target} has the id {target_id}"),
                    ));
                }
            }
        }
        Ok(errors)
    }

    async fn finish_bulk(mut self, progress: Progress<'_>) -> Result<WriteOutcome, WriteError> {
        let touched = std::mem::take(&mut self.touched);
        let rows_removed = touched.iter().filter(|t| t.action == Action::Deleted).count();
        let mut outcome = WriteOutcome { rows_changed: touched.len(), rows_removed, ..WriteOutcome::default() };
        let touched_roots: HashSet<(&'static str, String)> =
            touched.iter().filter(|t| t.table.is_root()).map(|t| (t.table.name, t.id.clone())).collect();
        // Rows a document's child set removed (`replace_child_sets`): a tombstone each, matching the
        // identity the row had.
        let deleted: Vec<NewEvent> = touched
            .iter()
            .filter(|t| t.action == Action::Deleted)
            .map(|t| {
                let before = t.before.clone().map(Value::Object).unwrap_or(Value::Null);
                let mut facets = document::facets(t.table, &before);
                // A root matches what its document held (its organization, its terms), as a PUT's removal does.
                if let Some(doc) = self.deleted_docs.get(&(t.table.name, t.id.clone())) {
                    facets.extend(document::facets(t.table, doc));
                }
                NewEvent {
                    event_type: format!("{}.deleted", t.table.name),
                    object: t.table.name,
                    object_id: t.id.clone(),
                    facets,
                    data: json!({ "id": t.id, "deleted": true }),
                    changed_inside_only: false,
                }
            })
            .collect();
        self.append(deleted, &mut outcome).await?;
        // Row events of non-root rows, compiled in batches per table.
        for t in TABLES.iter().filter(|t| !t.is_root()) {
            let mine: Vec<&Touched> = touched.iter().filter(|x| x.table.name == t.name).collect();
            for chunk in mine.chunks(500) {
                let ids: Vec<String> = chunk.iter().map(|x| x.id.clone()).collect();
                let rows = load_rows(self.conn, t.name, &ids).await?;
                let compiled = compile_many(self.conn, t, rows.into_values().collect(), Form::Nested).await?;
                let by_id: HashMap<String, Value> =
                    compiled.into_iter().filter_map(|v| Some((v.get("id")?.as_str()?.to_string(), v))).collect();
                let events = chunk
                    .iter()
                    .filter_map(|x| {
                        let data = by_id.get(&x.id)?.clone();
                        Some(NewEvent {
                            event_type: format!("{}.{}", t.name, x.action.as_str()),
                            object: t.name,
                            object_id: x.id.clone(),
                            facets: document::facets(t, &data),
                            data,
                            changed_inside_only: false,
                        })
                    })
                    .collect();
                self.append(events, &mut outcome).await?;
            }
        }
        // Every root document is recompiled; those whose document changed get their event.
        let actions: HashMap<(&'static str, String), Action> =
            touched.iter().map(|t| ((t.table.name, t.id.clone()), t.action)).collect();
        for t in super::compile::ROOT_ORDER.iter().filter_map(|name| table(name)) {
            let all: Vec<(String, Option<String>)> = self
                .conn
                .fetch_all("SELECT id, doc FROM records WHERE kind = $1 ORDER BY id", &[t.name.into()])
                .await?;
            let total = all.len() as u64;
            for (n, chunk) in all.chunks(500).enumerate() {
                let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
                let old: HashMap<&str, Option<&String>> =
                    chunk.iter().map(|(id, doc)| (id.as_str(), doc.as_ref())).collect();
                let rows = load_rows(self.conn, t.name, &ids).await?;
                let compiled = compile_many(self.conn, t, rows.into_values().collect(), Form::Root).await?;
                let mut events = Vec::new();
                // The events whose document changed: stored together below.
                let mut changed: Vec<usize> = Vec::new();
                for mut doc in compiled {
                    let Some(id) = doc.get("id").and_then(Value::as_str).map(str::to_string) else { continue };
                    let old_doc = old.get(id.as_str()).copied().flatten();
                    // Compared with the time it already has: only a document that changed gets the time of
                    // this import.
                    let stamp = document::keeps_last_modified(t);
                    if stamp {
                        let kept = old_doc.and_then(|d| document::last_modified_of(d));
                        document::stamp_last_modified(t, &mut doc, kept.as_deref().unwrap_or(self.now));
                    }
                    let text = doc.to_string();
                    let unchanged = old_doc.is_some_and(|d| *d == text);
                    if stamp && !unchanged {
                        document::stamp_last_modified(t, &mut doc, self.now);
                    }
                    let key = (t.name, id.clone());
                    if unchanged && !touched_roots.contains(&key) {
                        continue;
                    }
                    if !unchanged {
                        changed.push(events.len());
                    }
                    let action = actions.get(&key).copied().unwrap_or(Action::Updated);
                    // Its event matches by its identity before and after, and by what changed inside it (a
                    // write's by the rows it touched): a subscriber filtering by a term hears of the service
                    // that lost it, one filtering by a service of the organization update that changed it.
                    let mut facets = document::identity_facets(t.name, &id, Some(&doc));
                    // (An unchanged document: nothing changed inside it, and its identity is the same.)
                    if !unchanged {
                        let old = old_doc.and_then(|d| serde_json::from_str::<Value>(d).ok());
                        facets.extend(document::changed_inside(t.name, old.as_ref(), &doc));
                        if let Some(old) = &old {
                            facets.extend(document::identity_facets(t.name, &id, Some(old)));
                        }
                    }
                    events.push(NewEvent {
                        event_type: format!("{}.{}", t.name, action.as_str()),
                        object: t.name,
                        object_id: id,
                        facets,
                        data: doc,
                        // A root the import gave no row of changed through the rows inside it only.
                        changed_inside_only: !actions.contains_key(&key),
                    });
                }
                let now = self.now;
                let stored: Vec<Facets> = changed.iter().map(|&i| document::facets(t, &events[i].data)).collect();
                let to_store: Vec<DocToStore> = changed
                    .iter()
                    .zip(&stored)
                    .map(|(&i, facets)| {
                        let e = &events[i];
                        DocToStore { id: &e.object_id, doc: &e.data, facets, fresh: false, now, inserted: None }
                    })
                    .collect();
                self.store_docs(t, &to_store).await?;
                drop(to_store);
                self.append(events, &mut outcome).await?;
                progress(t.name, ((n + 1) * 500).min(all.len()) as u64, total);
            }
        }
        Ok(outcome)
    }

    async fn append(&mut self, events: Vec<NewEvent>, outcome: &mut WriteOutcome) -> sqlx::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let count = events.len();
        let appended = append_events(self.conn, &events, self.origin, self.now).await?;
        outcome.first_sequence.get_or_insert(appended.first);
        outcome.last_sequence = Some(appended.last);
        outcome.events += count;
        Ok(())
    }
}

/// Brings SQLite's full-text index up to date with the changes this transaction queued (migration 9): every
/// transaction that writes `records` runs it just before its COMMIT, so FTS5 does its index work once per
/// transaction instead of at every statement savepoint after a change. Only each row's net change is applied
/// (its first queued op if that removes the old entry, its last if that adds the new one), in row order:
/// FTS5 also writes its pending entries out whenever the row id goes backwards, which the queue's own order
/// (renames of older rows between new ones) would make it do again and again. (PostgreSQL's tsvector is a
/// generated column, kept by the row itself.)
pub(crate) async fn apply_queued_search(conn: &mut Conn<'_>, backend: Backend) -> sqlx::Result<()> {
    if backend != Backend::Sqlite {
        return Ok(());
    }
    // Most transactions (attempt batches, subscription changes) queue nothing: one lookup, no FTS5 work.
    let queued: Option<(i64,)> = conn.fetch_optional("SELECT 1 FROM records_fts_queue LIMIT 1", &[]).await?;
    if queued.is_none() {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO records_fts (records_fts, rowid, search_text) \
         SELECT op, rid, search_text FROM ( \
             SELECT op, rid, search_text, seq, \
                 row_number() OVER (PARTITION BY rid ORDER BY seq) AS first, \
                 row_number() OVER (PARTITION BY rid ORDER BY seq DESC) AS last \
             FROM records_fts_queue) \
         WHERE (first = 1 AND op = 'delete') OR (last = 1 AND op IS NULL) \
         ORDER BY rid, seq",
        &[],
    )
    .await?;
    conn.execute("DELETE FROM records_fts_queue", &[]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{Op, WriteOptions};
    use crate::hsds::catalog::{Table, table};
    use crate::hsds::document;
    use crate::store::compile::{Form, compile_many, load_rows};
    use crate::store::sql::Conn;
    use crate::store::tests::on_fresh_postgres;
    use crate::store::{Backend, Db};

    /// Adds a trigger that counts every write of a root's document after its row's insert.
    async fn count_document_rewrites(db: &Db) {
        let statements: &[&str] = match db.backend {
            Backend::Sqlite => &[
                "CREATE TABLE doc_rewrites (kind TEXT NOT NULL)",
                "CREATE TRIGGER doc_rewritten AFTER UPDATE OF doc ON records \
                 BEGIN INSERT INTO doc_rewrites VALUES (NEW.kind); END",
            ],
            Backend::Postgres => &[
                "CREATE TABLE doc_rewrites (kind TEXT NOT NULL)",
                "CREATE FUNCTION count_doc_rewrite() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO doc_rewrites VALUES (NEW.kind); RETURN NEW; END $$",
                "CREATE TRIGGER doc_rewritten AFTER UPDATE OF doc ON records \
                 FOR EACH ROW EXECUTE FUNCTION count_doc_rewrite()",
            ],
        };
        for sql in statements {
            sqlx::query(sql).execute(&db.pool).await.expect(sql);
        }
    }

    async fn document_rewrites(db: &Db) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM doc_rewrites").fetch_one(&db.pool).await.expect("count")
    }

    /// The stored document text of a root, and the text compiling its rows now gives (dated as stored).
    async fn stored_and_compiled(db: &Db, table: &'static Table, id: &str) -> (String, String) {
        let (stored,): (String,) = sqlx::query_as("SELECT doc FROM records WHERE kind = $1 AND id = $2")
            .bind(table.name)
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .expect("a stored document");
        let mut pooled = db.pool.acquire().await.expect("a connection");
        let mut conn = Conn::from(&mut *pooled);
        let rows = load_rows(&mut conn, table.name, &[id.to_string()]).await.expect("rows");
        let mut compiled =
            compile_many(&mut conn, table, rows.into_values().collect(), Form::Root).await.expect("compile");
        let mut doc = compiled.pop().expect("one document");
        if let Some(at) = document::last_modified_of(&stored) {
            document::stamp_last_modified(table, &mut doc, &at);
        }
        (stored, doc.to_string())
    }

    async fn write(db: &Db, table: &'static Table, body: Value) {
        let flat = document::flatten(table, &body, "").expect("a valid body");
        db.apply(Op::all_of(flat), WriteOptions::default()).await.expect("the write");
    }

    /// A new root with nothing nested in it gets its document with its insert, exactly as compiling it gives,
    /// and it is not written a second time; one created with rows nested in it gets the compiled document too.
    async fn a_new_root_gets_its_document_with_its_insert(database_url: &str) {
        let db = Db::connect(database_url).await.expect("connect");
        count_document_rewrites(&db).await;
        let (organization, location) = (table("organization").unwrap(), table("location").unwrap());
        let (alone, placed) = ("00000000-0000-4000-8000-0000000000b1", "00000000-0000-4000-8000-0000000000b2");
        write(&db, organization, json!({"id": alone, "name": "Alone", "description": "d"})).await;
        write(&db, location, json!({"id": placed, "name": "A place", "location_type": "physical"})).await;
        assert_eq!(document_rewrites(&db).await, 0, "documents stored with their inserts");
        for (table, id) in [(organization, alone), (location, placed)] {
            let (stored, compiled) = stored_and_compiled(&db, table, id).await;
            assert_eq!(stored, compiled, "{} {id}", table.name);
        }

        let (parent, phone) = ("00000000-0000-4000-8000-0000000000b3", "00000000-0000-4000-8000-0000000000b4");
        let body =
            json!({"id": parent, "name": "Parent", "description": "d", "phones": [{"id": phone, "number": "555"}]});
        write(&db, organization, body).await;
        assert_eq!(document_rewrites(&db).await, 1, "the document is written again with its phone");
        let (stored, compiled) = stored_and_compiled(&db, organization, parent).await;
        assert_eq!(stored, compiled);
        let stored: Value = serde_json::from_str(&stored).expect("JSON");
        assert_eq!(stored["phones"][0]["id"], phone, "{stored:#}");
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_root_gets_its_document_with_its_insert_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        a_new_root_gets_its_document_with_its_insert(&format!("sqlite://{}", dir.path().join("lone.db").display()))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_root_gets_its_document_with_its_insert_postgres() {
        on_fresh_postgres(|url| async move { a_new_root_gets_its_document_with_its_insert(&url).await }).await;
    }
}
