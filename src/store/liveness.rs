//! Which webhook workers sharing a PostgreSQL database are alive, so that the leases of one that died (a
//! `kill -9`, a lost machine) are given back at once instead of when they run out: the delivery timeout plus
//! 15 s for an attempt in flight, longer for a retry held until its time.
//!
//! Each worker holds a session-level advisory lock, keyed by its [`Db::lease_holder`], on a connection of its
//! own for as long as it runs, and lists itself in `live_workers`. PostgreSQL releases the lock when that
//! session ends, however the process ended. A listed worker whose lock another process can take is therefore
//! dead: that process gives back the dead one's leases and removes it from the list. Every worker looks at
//! its start and then every [`CHECK_EVERY`].
//!
//! Should a live worker lose its lock connection for a moment, another may give back its leases while it still
//! sends them: a delivery may then go out twice, which at-least-once delivery allows (receivers dedupe by
//! `webhook-id`). SQLite needs no lock: one process owns the file, and a start gives back every lease
//! ([`Db::release_leases_if_sole_worker`]).

use std::time::Duration;

use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;

use super::{Backend, Db, now_text};

/// How often a worker looks for dead ones (and checks its own lock connection).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The advisory lock key of a lease holder: the first eight bytes of its name's SHA-256.
fn lock_key(holder: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(holder.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

impl Db {
    /// PostgreSQL: holds this process's liveness lock, and gives back the leases of dead workers, until `stop`
    /// (then it leaves the list). Returns at once on SQLite.
    pub async fn keep_alive(&self, stop: CancellationToken) {
        if self.backend != Backend::Postgres {
            return;
        }
        let key = lock_key(&self.lease_holder);
        while !stop.is_cancelled() {
            let mut conn = match self.take_liveness_lock(key).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "could not take this worker's liveness lock; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(CHECK_EVERY) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            loop {
                match self.give_back_leases_of_dead_workers().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(leases = n, "gave back the leases of a worker that died"),
                    Err(e) => tracing::warn!(error = %e, "could not look for dead workers"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                    _ = stop.cancelled() => {
                        let _ = sqlx::query("DELETE FROM live_workers WHERE holder = $1")
                            .bind(&*self.lease_holder)
                            .execute(&mut conn)
                            .await;
                        return;
                    }
                }
                if sqlx::query("SELECT 1").execute(&mut conn).await.is_err() {
                    tracing::warn!("this worker's liveness connection was lost; taking the lock again");
                    break;
                }
            }
        }
    }

    /// A connection of its own (out of the pool) holding this worker's lock, the worker listed.
    async fn take_liveness_lock(&self, key: i64) -> sqlx::Result<AnyConnection> {
        let mut conn = self.pool.acquire().await?.detach();
        // The lock first: listed before it is held, a worker would look dead to the others.
        sqlx::query("SELECT pg_advisory_lock($1)::TEXT").bind(key).execute(&mut conn).await?;
        sqlx::query(
            "INSERT INTO live_workers (holder, lock_key, started_at) VALUES ($1, $2, $3) ON CONFLICT (holder) DO NOTHING",
        )
        .bind(&*self.lease_holder)
        .bind(key)
        .bind(now_text())
        .execute(&mut conn)
        .await?;
        Ok(conn)
    }

    /// Gives back the leases of every listed worker whose lock is free (it died) and unlists it; returns how
    /// many deliveries and challenges were given back.
    pub async fn give_back_leases_of_dead_workers(&self) -> sqlx::Result<u64> {
        let others: Vec<(String, i64)> = sqlx::query_as("SELECT holder, lock_key FROM live_workers WHERE holder <> $1")
            .bind(&*self.lease_holder)
            .fetch_all(&self.pool)
            .await?;
        if others.is_empty() {
            return Ok(0);
        }
        // One connection throughout: a session-level lock is released by the session that took it.
        let mut conn = self.pool.acquire().await?;
        let mut given_back = 0;
        for (holder, key) in others {
            let (dead,): (bool,) =
                sqlx::query_as("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
            if !dead {
                continue;
            }
            let released = async {
                let released = give_back(&mut conn, Holders::One(&holder)).await?;
                sqlx::query("DELETE FROM live_workers WHERE holder = $1").bind(&holder).execute(&mut *conn).await?;
                sqlx::Result::<u64>::Ok(released)
            }
            .await;
            sqlx::query("SELECT pg_advisory_unlock($1)::TEXT").bind(key).execute(&mut *conn).await?;
            given_back += released?;
        }
        if given_back > 0 {
            self.notify_changed();
        }
        Ok(given_back)
    }
}

/// Whose leases [`give_back`] gives back.
#[derive(Clone, Copy)]
enum Holders<'a> {
    /// A SQLite start: one process owns the file, so every lease found was left by a crashed run.
    All,
    /// A dead PostgreSQL worker.
    One(&'a str),
}

/// Gives back the leases `holders` took: their unfinished deliveries' and their verification challenges out,
/// which are due again now. Returns how many.
async fn give_back(conn: &mut AnyConnection, holders: Holders<'_>) -> sqlx::Result<u64> {
    let (deliveries, challenges) = match holders {
        // Leases taken before the holders were recorded (migration 10) have none.
        Holders::All => ("lease_until IS NOT NULL", "verification_holder IS NOT NULL"),
        Holders::One(_) => ("lease_holder = $1 AND lease_until IS NOT NULL", "verification_holder = $2"),
    };
    let release = format!(
        "UPDATE deliveries SET lease_until = NULL, lease_holder = NULL \
         WHERE {deliveries} AND status IN ('pending', 'retrying')"
    );
    let make_due = format!(
        "UPDATE subscriptions SET verification_due_at = $1, verification_holder = NULL \
         WHERE {challenges} AND status = 'pending' AND verification_due_at > $1"
    );
    let mut released = sqlx::query(&release);
    let mut due_again = sqlx::query(&make_due).bind(now_text());
    if let Holders::One(holder) = holders {
        released = released.bind(holder);
        due_again = due_again.bind(holder);
    }
    let released = released.execute(&mut *conn).await?;
    let due_again = due_again.execute(&mut *conn).await?;
    Ok(released.rows_affected() + due_again.rows_affected())
}

impl Db {
    /// SQLite: gives back every lease a crashed run left, at start-up (its claimed deliveries and challenges go
    /// again now rather than when their leases run out). On PostgreSQL other live processes may hold leases:
    /// those of a dead one are given back by [`Db::keep_alive`].
    pub async fn release_leases_if_sole_worker(&self) -> sqlx::Result<()> {
        if self.backend == Backend::Sqlite {
            let (mut tx, _guard) = self.begin_write().await?;
            give_back(&mut tx, Holders::All).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Db, lock_key, now_text};
    use crate::store::tests::on_fresh_postgres;

    async fn lease_of(db: &Db, holder: &str) -> Option<String> {
        sqlx::query_scalar("SELECT lease_until FROM deliveries WHERE id = $1")
            .bind(format!("msg_{holder}"))
            .fetch_one(&db.pool)
            .await
            .expect("the delivery")
    }

    /// A listed worker whose lock is free (its session ended) has its leases given back and is unlisted; one
    /// whose lock is held keeps them, until its session ends too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_dead_workers_leases_are_given_back_postgres() {
        on_fresh_postgres(|url| async move {
            let db = Db::connect(&url).await.expect("connect");
            let lease = "2999-01-01T00:00:00.000000Z";
            for holder in ["prc_alive", "prc_dead"] {
                sqlx::query("INSERT INTO live_workers (holder, lock_key, started_at) VALUES ($1, $2, $3)")
                    .bind(holder)
                    .bind(lock_key(holder))
                    .bind(now_text())
                    .execute(&db.pool)
                    .await
                    .expect("listed");
                sqlx::query(
                    "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, \
                     object_id, body, status, next_attempt_at, lease_until, lease_holder, created_at, updated_at) \
                     VALUES ($1, 'sub_x', 't', 'evt_x', 1, 'organization.created', 'o', '{}', 'pending', $2, $3, $4, \
                     $2, $2)",
                )
                .bind(format!("msg_{holder}"))
                .bind(now_text())
                .bind(lease)
                .bind(holder)
                .execute(&db.pool)
                .await
                .expect("a leased delivery");
            }
            let mut alive = db.pool.acquire().await.expect("a connection").detach();
            sqlx::query("SELECT pg_advisory_lock($1)::TEXT")
                .bind(lock_key("prc_alive"))
                .execute(&mut alive)
                .await
                .unwrap();

            assert_eq!(db.give_back_leases_of_dead_workers().await.unwrap(), 1);
            assert_eq!(lease_of(&db, "prc_dead").await, None, "the dead worker's lease is given back");
            assert_eq!(lease_of(&db, "prc_alive").await.as_deref(), Some(lease), "the live worker keeps its lease");
            let listed: Vec<String> =
                sqlx::query_scalar("SELECT holder FROM live_workers").fetch_all(&db.pool).await.unwrap();
            assert_eq!(listed, ["prc_alive"]);

            sqlx::Connection::close(alive).await.unwrap();
            // The server ends the session (and frees its lock) a moment after the client closed it.
            let mut given_back = 0;
            for _ in 0..50 {
                given_back = db.give_back_leases_of_dead_workers().await.unwrap();
                if given_back > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(given_back, 1, "its session ended: dead too");
            assert_eq!(lease_of(&db, "prc_alive").await, None);
            db.close().await;
        })
        .await;
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("prc_a"), super::lock_key("prc_a"));
        assert_ne!(super::lock_key("prc_a"), super::lock_key("prc_b"));
    }
}
