//! The cursors of followed directories (see [`crate::follow`]): how far each source's event log is applied
//! here. Only the write that applies a source's changes moves its cursor ([`move_follow_cursor`]), inside
//! its own transaction.

use super::Db;
use super::sql::Conn;
use super::write::{FollowMark, WriteError};

/// A followed source as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowCursor {
    pub source: String,
    /// The last sequence of the source's log applied here (0: none yet).
    pub after_sequence: i64,
    /// When it last moved.
    pub updated_at: String,
}

impl Db {
    /// How far `source`'s log is applied here (0 when nothing is yet).
    pub async fn follow_cursor(&self, source: &str) -> sqlx::Result<i64> {
        let found: Option<(i64,)> = sqlx::query_as("SELECT after_sequence FROM follow_cursors WHERE source = $1")
            .bind(source)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.map_or(0, |(after,)| after))
    }

    /// Every source this directory has applied changes of, by source.
    pub async fn follow_cursors(&self) -> sqlx::Result<Vec<FollowCursor>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT source, after_sequence, updated_at FROM follow_cursors ORDER BY source")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(source, after_sequence, updated_at)| FollowCursor { source, after_sequence, updated_at })
            .collect())
    }
}

/// Moves `mark.source`'s cursor from `mark.from` to `mark.to`, first thing in the write that applies those
/// changes: the row stays locked (PostgreSQL) or the write lock held (SQLite) until that write commits, so a
/// second process applying the same changes waits here, then finds the cursor moved and gives up.
pub(crate) async fn move_follow_cursor(conn: &mut Conn<'_>, mark: &FollowMark, now: &str) -> Result<(), WriteError> {
    let moved = conn
        .execute(
            "UPDATE follow_cursors SET after_sequence = $1, updated_at = $2 WHERE source = $3 AND after_sequence = $4",
            &[mark.to.into(), now.into(), (&mark.source).into(), mark.from.into()],
        )
        .await?;
    let moved = moved == 1
        || (mark.from == 0
            && conn
                .execute(
                    "INSERT INTO follow_cursors (source, after_sequence, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (source) DO NOTHING",
                    &[(&mark.source).into(), mark.to.into(), now.into()],
                )
                .await?
                == 1);
    if moved { Ok(()) } else { Err(WriteError::FollowCursorMoved(mark.source.clone())) }
}
