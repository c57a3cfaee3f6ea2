//! The connection the write path runs its statements on: a pooled sqlx connection (PostgreSQL, and SQLite
//! outside the group committer), or — for SQLite's group committer — one rusqlite connection driven on a
//! blocking thread.
//!
//! Why two: sqlx runs every SQLite statement on the connection's own worker thread, so each statement is
//! a hand-off between threads and back. A directory write is a dozen statements, and profiles of the write
//! path showed about 40 % of all cycles in those wake-ups. The committer instead runs a whole group of
//! writes on one thread with no hand-off at all. Both run the same SQL text (`$N` placeholders, given to
//! SQLite as `?N` by [`numbered`] so that `$N` takes the N-th argument as with sqlx), so the write path is
//! written once.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

/// One bound value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    Real(f64),
    Bool(bool),
    /// A NULL text (PostgreSQL types each parameter by what is bound to it).
    Null,
    /// A NULL integer.
    NullInt,
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Arg::Null, Arg::Text)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Arg::NullInt, Arg::Int)
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Arg::Real(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match *self {
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Int(i) => ToSqlOutput::from(i),
            Arg::Real(f) => ToSqlOutput::from(f),
            Arg::Bool(b) => ToSqlOutput::from(b),
            Arg::Null | Arg::NullInt => ToSqlOutput::Owned(rusqlite::types::Value::Null),
        })
    }
}

/// A column value the write path reads.
pub(crate) trait Cell: Sized {
    fn from_pooled(row: &AnyRow, i: usize) -> sqlx::Result<Self>;
    fn from_direct(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
}

macro_rules! cell {
    ($($t:ty),*) => {$(
        impl Cell for $t {
            fn from_pooled(row: &AnyRow, i: usize) -> sqlx::Result<Self> {
                row.try_get(i)
            }
            fn from_direct(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
                row.get(i)
            }
        }
    )*};
}
cell!(i64, String, Option<String>, Option<i64>);

/// A row the write path reads: a tuple of [`Cell`]s.
pub(crate) trait FromCells: Sized {
    fn from_pooled(row: &AnyRow) -> sqlx::Result<Self>;
    fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

macro_rules! tuple {
    ($($t:ident $i:tt),*) => {
        impl<$($t: Cell),*> FromCells for ($($t,)*) {
            fn from_pooled(row: &AnyRow) -> sqlx::Result<Self> {
                Ok(($($t::from_pooled(row, $i)?,)*))
            }
            fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($($t::from_direct(row, $i)?,)*))
            }
        }
    };
}
tuple!(A 0);
tuple!(A 0, B 1);
tuple!(A 0, B 1, C 2);
tuple!(A 0, B 1, C 2, D 3);
tuple!(A 0, B 1, C 2, D 3, E 4);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);

/// Where the write path's statements run.
pub(crate) enum Conn<'c> {
    Pooled(&'c mut AnyConnection),
    Direct(&'c mut rusqlite::Connection),
}

impl<'c> From<&'c mut AnyConnection> for Conn<'c> {
    fn from(conn: &'c mut AnyConnection) -> Self {
        Conn::Pooled(conn)
    }
}

impl Conn<'_> {
    /// Runs a statement that returns no rows; returns the number of rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<u64> {
        match self {
            Conn::Pooled(conn) => Ok(pooled(sql, args).execute(&mut **conn).await?.rows_affected()),
            Conn::Direct(conn) => direct_execute(conn, sql, args).map_err(from_rusqlite),
        }
    }

    /// Every row of a query.
    pub async fn fetch_all<R: FromCells>(&mut self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<Vec<R>> {
        match self {
            Conn::Pooled(conn) => {
                let rows = pooled(sql, args).fetch_all(&mut **conn).await?;
                rows.iter().map(R::from_pooled).collect()
            }
            Conn::Direct(conn) => direct_query(conn, sql, args, usize::MAX).map_err(from_rusqlite),
        }
    }

    /// The first row of a query, if any.
    pub async fn fetch_optional<R: FromCells>(&mut self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<Option<R>> {
        match self {
            Conn::Pooled(conn) => match pooled(sql, args).fetch_optional(&mut **conn).await? {
                Some(row) => R::from_pooled(&row).map(Some),
                None => Ok(None),
            },
            Conn::Direct(conn) => Ok(direct_query(conn, sql, args, 1).map_err(from_rusqlite)?.pop()),
        }
    }

    /// The first row of a query, which must exist.
    pub async fn fetch_one<R: FromCells>(&mut self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<R> {
        self.fetch_optional(sql, args).await?.ok_or(sqlx::Error::RowNotFound)
    }
}

fn pooled<'q>(sql: &'q str, args: &[Arg<'q>]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match *arg {
            Arg::Text(s) => query.bind(s),
            Arg::Int(i) => query.bind(i),
            Arg::Real(f) => query.bind(f),
            Arg::Bool(b) => query.bind(b),
            Arg::Null => query.bind(None::<String>),
            Arg::NullInt => query.bind(None::<i64>),
        };
    }
    query
}

/// The statement with `$N` placeholders written `?N`, which SQLite numbers N itself: binding is then by
/// position. (Looking up each `$N` by name is linear in the number of parameters, so quadratic for a
/// statement; with a multi-row insert of 450 parameters that was a seventh of a delivery-heavy run.)
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Binds `args` to a statement prepared from [`numbered`] SQL: parameter N takes the N-th argument.
fn bind(stmt: &mut rusqlite::Statement<'_>, args: &[Arg<'_>]) -> rusqlite::Result<()> {
    let count = stmt.parameter_count();
    if count > args.len() {
        return Err(rusqlite::Error::InvalidParameterCount(count, args.len()));
    }
    for (i, arg) in args.iter().enumerate().take(count) {
        stmt.raw_bind_parameter(i + 1, arg)?;
    }
    Ok(())
}

fn direct_execute(conn: &rusqlite::Connection, sql: &str, args: &[Arg<'_>]) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(&numbered(sql))?;
    bind(&mut stmt, args)?;
    Ok(stmt.raw_execute()? as u64)
}

fn direct_query<R: FromCells>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
    limit: usize,
) -> rusqlite::Result<Vec<R>> {
    let mut stmt = conn.prepare_cached(&numbered(sql))?;
    bind(&mut stmt, args)?;
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(row) = rows.next()?
    {
        out.push(R::from_direct(row)?);
    }
    Ok(out)
}

/// A rusqlite error as the sqlx error the rest of the store classifies: SQLite's own failures keep their
/// extended result code, so [`super::fault::classify`] tells a busy or full database alike on both paths.
pub(crate) fn from_rusqlite(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => super::fault::database_error(
            Some(failure.extended_code.to_string()),
            message.unwrap_or_else(|| failure.to_string()),
        ),
        rusqlite::Error::QueryReturnedNoRows => sqlx::Error::RowNotFound,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, c REAL)").expect("table");
        conn
    }

    #[tokio::test]
    async fn dollar_placeholders_take_their_numbered_argument_whatever_their_order() {
        let mut db = memory();
        let mut conn = Conn::Direct(&mut db);
        let n = conn.execute("INSERT INTO t (b, a, c) VALUES ($2, $1, $3)", &["x".into(), 7.into(), 1.5.into()]).await;
        assert_eq!(n.expect("insert"), 1);
        let row: (String, i64) = conn.fetch_one("SELECT a, b FROM t WHERE b = $1", &[7.into()]).await.expect("row");
        assert_eq!(row, ("x".to_string(), 7));
        let none: Option<(String,)> = conn.fetch_optional("SELECT a FROM t WHERE b = $1", &[8.into()]).await.unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn only_dollar_numbers_outside_quotes_become_numbered_parameters() {
        assert_eq!(numbered("SELECT $1, '$2', $ x, $10 FROM t"), "SELECT ?1, '$2', $ x, ?10 FROM t");
    }

    #[tokio::test]
    async fn a_missing_argument_is_an_error_not_a_null() {
        let mut db = memory();
        let mut conn = Conn::Direct(&mut db);
        let err = conn.execute("INSERT INTO t (a, b) VALUES ($1, $2)", &["x".into()]).await;
        assert!(err.is_err(), "{err:?}");
    }

    #[tokio::test]
    async fn sqlite_failures_keep_their_extended_code() {
        let mut db = memory();
        db.execute_batch("CREATE UNIQUE INDEX t_a ON t (a)").expect("index");
        let mut conn = Conn::Direct(&mut db);
        conn.execute("INSERT INTO t (a) VALUES ($1)", &["x".into()]).await.expect("first");
        let err = conn.execute("INSERT INTO t (a) VALUES ($1)", &["x".into()]).await.expect_err("duplicate");
        let sqlx::Error::Database(db_err) = err else { panic!("not a database error: {err:?}") };
        assert_eq!(db_err.code().as_deref(), Some("2067"), "SQLITE_CONSTRAINT_UNIQUE");
    }
}
