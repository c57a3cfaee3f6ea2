//! Database faults, with the real `hsda` binary: PostgreSQL restarted and stopped under load (a private
//! cluster, never the shared server), the SQLite file locked by another process, the disk full (a small
//! tmpfs). Each asserts that the fault is reported — a problem+json 503 or 507 with Retry-After, a log line,
//! `/health` — that reads keep working where the store allows, that nothing committed is lost, and that hsda
//! recovers by itself once the fault ends. Tests that need root, tmpfs or the PostgreSQL binaries print why
//! they are skipped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::real_server::{RealServer, free_port};
use crate::receiver::Receiver;

/// What one write got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

impl Answer {
    /// The request reached hsda and came back 2xx.
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Asserts this is the problem+json of a database fault of `kind`, with `status` and Retry-After.
    fn assert_fault(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["fault"], kind, "{self:?}");
        assert!(self.body["detail"].as_str().is_some_and(|d| d.len() > 20), "a clear detail: {self:?}");
        assert!(self.retry_after.as_deref().is_some_and(|v| v.parse::<u64>().is_ok()), "Retry-After: {self:?}");
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (status, content_type, retry_after) =
        (r.status().as_u16(), header("content-type").unwrap_or_default(), header("retry-after"));
    let body = r.json().await.unwrap_or(Value::Null);
    Answer { status, content_type, retry_after, body }
}

fn org_id(prefix: u32, n: usize) -> String {
    format!("00000000-0000-4000-{prefix:04}-{n:012}")
}

async fn put_org(
    client: &reqwest::Client,
    hsda: &RealServer,
    key: &str,
    id: &str,
    description: &str,
) -> Option<Answer> {
    let body = json!({ "name": format!("Org {id}"), "description": description });
    let r = client.put(hsda.url(&format!("/organizations/{id}"))).bearer_auth(key).json(&body).send().await;
    match r {
        Ok(r) => Some(answer(r).await),
        Err(_) => None,
    }
}

async fn get(client: &reqwest::Client, hsda: &RealServer, key: &str, path: &str) -> Answer {
    answer(client.get(hsda.url(path)).bearer_auth(key).send().await.expect("GET")).await
}

/// The whole event log as an admin reads it; asserts its sequences are 1, 2, 3, ... without a gap.
async fn gap_free_log(client: &reqwest::Client, hsda: &RealServer, key: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        let page = get(client, hsda, key, &format!("/events?after={after}&limit=1000")).await;
        assert_eq!(page.status, 200, "{page:?}");
        let events = page.body["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        after = page.body["next_after"].as_i64().expect("next_after");
        all.extend(events);
    }
    let sequences: Vec<i64> = all.iter().map(|e| e["sequence"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
    assert_eq!(sequences, expected, "the event log has no gap");
    all
}

/// Asserts every id in `acknowledged` has its `organization.created` event and reads back with 200.
async fn assert_kept(client: &reqwest::Client, hsda: &RealServer, key: &str, acknowledged: &[String]) {
    let log = gap_free_log(client, hsda, key).await;
    let created: HashSet<&str> =
        log.iter().filter(|e| e["type"] == "organization.created").filter_map(|e| e["object_id"].as_str()).collect();
    for id in acknowledged {
        assert!(created.contains(id.as_str()), "acknowledged write {id} has its event");
        assert_eq!(get(client, hsda, key, &format!("/organizations/{id}")).await.status, 200, "{id} reads back");
    }
}

/// Subscribes `url` to `organization.created`.
async fn subscribe_to_created(client: &reqwest::Client, hsda: &RealServer, key: &str, url: &str) {
    let sub = client
        .post(hsda.url("/webhooks"))
        .bearer_auth(key)
        .json(&json!({ "url": url, "events": ["organization.created"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 201);
}

async fn health(client: &reqwest::Client, hsda: &RealServer) -> (u16, Value) {
    let r = client.get(hsda.url("/health")).send().await.expect("GET /health");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn admin_key(database_url: &str) -> String {
    let db = hsda::store::Db::connect(database_url).await.expect("connect");
    let key = db.create_key("acme", hsda::store::keys::Scope::Admin).await.expect("key").secret;
    db.close().await;
    key
}

// ---------------------------------------------------------------------------------------------------------
// SQLite file locked by another process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_fails_writes_cleanly_and_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hsda.db").display());
    let key = admin_key(&url).await;
    let hsda = RealServer::start_for_test(&url, &[("HSDA_BUSY_TIMEOUT_MS", "1000")]).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let id = org_id(1, n);
        assert!(put_org(&client, &hsda, &key, &id, "before the lock").await.unwrap().ok());
        acknowledged.push(id);
    }

    // This test process is the other process: it takes the database's write lock and holds it.
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();

    // Six writers at once: each fails after about the busy timeout (1 s), not one after the other.
    let refused: Vec<String> = (0..6).map(|n| org_id(2, n)).collect();
    let answers = futures::future::join_all(refused.iter().map(|id| {
        let (client, hsda, key) = (&client, &hsda, &key);
        async move {
            let started = Instant::now();
            let a = put_org(client, hsda, key, id, "during the lock").await.expect("an answer");
            (a, started.elapsed())
        }
    }))
    .await;
    for (a, took) in &answers {
        a.assert_fault(503, "busy");
        assert!(*took < Duration::from_millis(3500), "a write waits about the busy timeout, not in a queue: {took:?}");
    }

    // Reads go on beside the lock.
    assert_eq!(get(&client, &hsda, &key, &format!("/organizations/{}", acknowledged[0])).await.status, 200);
    assert_eq!(get(&client, &hsda, &key, "/events?after=0").await.status, 200);
    let (status, h) = health(&client, &hsda).await;
    assert_eq!((status, &h["status"], &h["fault"]["kind"]), (200, &json!("degraded"), &json!("busy")), "{h}");
    let log = hsda.log();
    assert!(log.contains("database fault") && log.contains("busy"), "the fault is logged:\n{log}");

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);

    // A refused write changed nothing; sent again, each succeeds, and hsda reports the fault over.
    for id in &refused {
        assert_eq!(get(&client, &hsda, &key, &format!("/organizations/{id}")).await.status, 404, "{id} not written");
        let a = put_org(&client, &hsda, &key, id, "after the lock").await.unwrap();
        assert!(a.ok(), "{a:?}");
        acknowledged.push(id.clone());
    }
    let (status, h) = health(&client, &hsda).await;
    assert_eq!((status, &h["status"], &h["last_fault"]["kind"]), (200, &json!("ok"), &json!("busy")), "{h}");
    assert_kept(&client, &hsda, &key, &acknowledged).await;
}

// ---------------------------------------------------------------------------------------------------------
// Disk full

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { mount, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Writes `path` in 64 KiB blocks until the file system refuses (bounded by `limit` bytes).
fn fill(path: &Path, limit: usize) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler file");
    let block = vec![0x5a_u8; 64 * 1024];
    let mut written = 0;
    while written < limit {
        match file.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n,
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_refuses_writes_keeps_reads_and_recovers() {
    let tmpfs = match Tmpfs::mount("8m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: the disk-full test needs to mount a small tmpfs (root): {why}");
            return;
        }
    };
    let db_path = tmpfs.mount.join("hsda.db");
    let url = format!("sqlite://{}", db_path.display());
    let key = admin_key(&url).await;
    let rx = Receiver::start().await;
    let hsda = RealServer::start_for_test(&url, &[]).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    subscribe_to_created(&client, &hsda, &key, &rx.url).await;
    let description = "x".repeat(3000);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let id = org_id(3, n);
        let a = put_org(&client, &hsda, &key, &id, &description).await.unwrap();
        assert!(a.ok(), "{a:?}");
        acknowledged.push(id);
    }

    // Fill the disk, then keep writing until a write is refused.
    let filler = tmpfs.mount.join("filler");
    let filled = fill(&filler, 16 << 20);
    assert!(filled > 0, "the filler wrote something");
    let mut refusal = None;
    for n in 0..400 {
        let id = org_id(4, n);
        let a = put_org(&client, &hsda, &key, &id, &description).await.expect("an answer");
        if a.ok() {
            acknowledged.push(id);
        } else {
            refusal = Some((id, a));
            break;
        }
    }
    let (refused_id, refusal) = refusal.expect("a write is refused once the disk is full");
    refusal.assert_fault(507, "storage_full");
    let after_fill = acknowledged.len() - 20;

    // Reads go on; /health and the log say what is wrong.
    assert_eq!(get(&client, &hsda, &key, &format!("/organizations/{}", acknowledged[0])).await.status, 200);
    assert_eq!(get(&client, &hsda, &key, "/events?after=0&limit=5").await.status, 200);
    assert_eq!(get(&client, &hsda, &key, &format!("/organizations/{refused_id}")).await.status, 404);
    let (status, h) = health(&client, &hsda).await;
    assert_eq!(status, 200, "{h}");
    assert!(h["fault"]["kind"] == "storage_full" || h["last_fault"]["kind"] == "storage_full", "{h}");
    let log = hsda.log();
    assert!(log.contains("database fault") && log.contains("storage_full"), "the fault is logged:\n{log}");

    // Space comes back: writes go on without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    let mut tries = 0;
    for _ in 0..50 {
        tries += 1;
        let a = put_org(&client, &hsda, &key, &refused_id, &description).await.expect("an answer");
        if a.ok() {
            recovered = true;
            break;
        }
        a.assert_fault(507, "storage_full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes succeed once space is freed");
    eprintln!(
        "disk full: {filled} filler bytes, then {after_fill} writes acknowledged before the first 507; \
         after freeing, write {tries} succeeded"
    );
    acknowledged.push(refused_id);
    for n in 0..5 {
        let id = org_id(5, n);
        let a = put_org(&client, &hsda, &key, &id, &description).await.unwrap();
        assert!(a.ok(), "{a:?}");
        acknowledged.push(id);
    }
    let (_, h) = health(&client, &hsda).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_kept(&client, &hsda, &key, &acknowledged).await;
    let want: HashSet<&str> = acknowledged.iter().map(String::as_str).collect();
    rx.wait_for("every acknowledged organization.created", |r| {
        let seen = Receiver::object_ids(r, "organization.created");
        want.iter().all(|id| seen.contains(*id))
    })
    .await;

    // The file is sound.
    drop(hsda);
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
    assert_eq!(check, "ok");
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL restarted

/// A private PostgreSQL cluster in a temporary directory on a free port (run as the `postgres` user when
/// the test runs as root, since initdb refuses root), stopped on drop.
struct Cluster {
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    dir: tempfile::TempDir,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Cluster {
    fn start() -> Result<Cluster, String> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            return Err(format!("{PG_BIN}/initdb is not installed"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        if root {
            let out = Command::new("chown").arg("postgres:").arg(dir.path()).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("chown to postgres: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        let cluster =
            Cluster { data: dir.path().join("data"), port: free_port().expect("a free port"), as_postgres: root, dir };
        let data = cluster.data.display().to_string();
        cluster.pg("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-N"])?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    fn pg(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = format!("{PG_BIN}/{tool}");
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        } else {
            Command::new(&program)
        };
        let out = command.args(args).output().map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `pg_ctl start|stop|restart`, waiting until done; `stop` and `restart` disconnect clients at once.
    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let data = self.data.display().to_string();
        let log = self.dir.path().join("postgres.log").display().to_string();
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        self.pg("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-m", "fast", "-w", "-t", "60", action])
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// Writes `ids` one after the other, sending each again until it is acknowledged (PUT is idempotent);
/// returns every answer that was not 2xx. Bounded: each write gives up after 60 s.
async fn write_all(client: &reqwest::Client, hsda: &RealServer, key: &str, ids: &[String]) -> Vec<Answer> {
    let mut refusals = Vec::new();
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match put_org(client, hsda, key, id, "written while PostgreSQL restarts").await {
                Some(a) if a.ok() => break,
                Some(a) => refusals.push(a),
                None => {}
            }
            assert!(Instant::now() < deadline, "write {id} never succeeded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    refusals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_and_outage_are_reported_and_survived() {
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: the PostgreSQL restart test needs a private cluster: {why}");
            return;
        }
    };
    let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres")).await.expect("connect to the cluster");
    sqlx::query("CREATE DATABASE hsda_test_restart").execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    let url = cluster.url("hsda_test_restart");
    let key = admin_key(&url).await;
    let rx = Receiver::start().await;
    let hsda =
        RealServer::start_for_test(&url, &[("HSDA_BUSY_TIMEOUT_MS", "2000"), ("HSDA_DELIVERY_TIMEOUT_SECONDS", "2")])
            .await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    subscribe_to_created(&client, &hsda, &key, &rx.url).await;

    // Four writers; PostgreSQL restarts (disconnecting everyone) while they write and deliveries go out.
    let batches: Vec<Vec<String>> = (0..4).map(|w| (0..30).map(|n| org_id(10 + w, n)).collect()).collect();
    let writers = futures::future::join_all(batches.iter().map(|ids| write_all(&client, &hsda, &key, ids)));
    let restart = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.pg_ctl("restart").expect("restart PostgreSQL");
    };
    let (refusals, ()) = tokio::join!(writers, restart);
    // A write caught by the restart is refused as unavailable (never a 500); sent again, it succeeds.
    let refused: Vec<&Answer> = refusals.iter().flatten().collect();
    for a in &refused {
        a.assert_fault(503, "unavailable");
    }
    eprintln!("PostgreSQL restarted under 4 writers: {} answers were 503 (sent again and acknowledged)", refused.len());

    // Stopped: hsda says so (503 for reads and writes: this store cannot serve either), then comes back alone.
    cluster.pg_ctl("stop").expect("stop PostgreSQL");
    let down = org_id(20, 0);
    put_org(&client, &hsda, &key, &down, "while PostgreSQL is down")
        .await
        .expect("an answer")
        .assert_fault(503, "unavailable");
    get(&client, &hsda, &key, "/organizations").await.assert_fault(503, "unavailable");
    let (status, h) = health(&client, &hsda).await;
    assert_eq!((status, &h["status"]), (503, &json!("unavailable")), "{h}");
    assert_eq!(h["fault"]["kind"], "unavailable", "{h}");
    let log = hsda.log();
    assert!(log.contains("database fault") && log.contains("unavailable"), "the fault is logged:\n{log}");
    cluster.pg_ctl("start").expect("start PostgreSQL");
    let mut acknowledged: Vec<String> = batches.concat();
    write_all(&client, &hsda, &key, std::slice::from_ref(&down)).await;
    acknowledged.push(down);
    let (status, h) = health(&client, &hsda).await;
    assert_eq!((status, &h["status"], &h["last_fault"]["kind"]), (200, &json!("ok"), &json!("unavailable")), "{h}");

    assert_kept(&client, &hsda, &key, &acknowledged).await;
    let want: HashSet<&str> = acknowledged.iter().map(String::as_str).collect();
    // A delivery whose result could not be recorded during the restart is sent again when its lease runs out
    // (delivery timeout + 15 s).
    rx.wait_for_within("every organization.created", Duration::from_secs(60), |r| {
        let seen = Receiver::object_ids(r, "organization.created");
        want.iter().all(|id| seen.contains(*id))
    })
    .await;
}
