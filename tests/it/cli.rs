//! The `hsda` binary as scripts use it: migrate, keys, generate, import and export over one SQLite file,
//! with a server started in-process over the same file to check what the commands did.

use std::path::Path;
use std::process::Output;

use hsda::config::Config;
use hsda::startup::Application;
use serde_json::{Value, json};

/// Runs the real binary with `args` (and extra environment), bounded in time.
async fn hsda(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hsda"));
    command.args(args).env_remove("HSDA_DATABASE_URL").env_remove("HSDA_CONFIG").kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("hsda {args:?} took over a minute"))
        .expect("run hsda")
}

fn ok(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("hsda.db").display())
}

/// A server over `url`, stopped when the returned guard drops.
struct Server {
    base: String,
    token: tokio_util::sync::CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn serve(url: &str) -> Server {
    let config = Config { database_url: url.into(), bind: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let app = Application::build(config).await.expect("build");
    let base = format!("http://{}", app.local_addr());
    let token = app.shutdown_token();
    tokio::spawn(app.run());
    Server { base, token }
}

/// Runs `hsda serve` over `url` until it answers `/health`, stops it and returns what it printed.
async fn serve_output(url: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hsda"));
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--database-url", url])
        .env_remove("HSDA_DATABASE_URL")
        .env_remove("HSDA_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start hsda serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    let run = async {
        let base = loop {
            let line = lines.next_line().await.unwrap().unwrap_or_else(|| panic!("no address printed: {printed}"));
            printed += &format!("{line}\n");
            if let Some(base) = line.strip_prefix("hsda listening on ") {
                break base.to_string();
            }
        };
        // Everything is printed before the server starts answering: once it answers, it has said it all.
        crate::helpers::eventually("hsda serve answers", std::time::Duration::from_secs(30), || async {
            let health = reqwest::get(format!("{base}/health")).await.map_err(|e| e.to_string())?;
            health.status().is_success().then_some(()).ok_or_else(|| health.status().to_string())
        })
        .await;
        child.start_kill().expect("stop hsda serve");
        while let Some(line) = lines.next_line().await.unwrap() {
            printed += &format!("{line}\n");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), run).await.expect("hsda serve within a minute");
    printed
}

#[tokio::test]
async fn serve_makes_a_starter_admin_key_only_while_the_database_has_no_live_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let banner = "admin API key (shown once): ";
    let starter_key = |printed: &str| printed.lines().find_map(|l| l.strip_prefix(banner)).map(str::to_string);
    let first = serve_output(&url).await;
    let key = starter_key(&first).unwrap_or_else(|| panic!("a new database gets an admin key: {first}"));
    let db = hsda::store::Db::connect(&url).await.unwrap();
    let principal = db.authenticate(&key).await.unwrap().expect("the printed key works");
    assert_eq!((principal.scope, principal.tenant.as_str()), (hsda::store::keys::Scope::Admin, "default"));

    let second = serve_output(&url).await;
    assert_eq!(starter_key(&second), None, "a live key exists: no second one, nothing in the logs: {second}");
    let listed = ok(&hsda(&["--database-url", &url, "keys", "list"], &[]).await, "keys list");
    assert_eq!(listed.lines().count(), 2, "header and the one starter key: {listed}");

    // Revoked keys count as none: a database nobody can administer gets a new starter key.
    assert!(db.revoke_key(&principal.key_id).await.unwrap());
    let third = serve_output(&url).await;
    let new_key = starter_key(&third).unwrap_or_else(|| panic!("only a revoked key was left: {third}"));
    assert_ne!(new_key, key);
}

#[tokio::test]
async fn migrate_then_a_created_key_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = ok(&hsda(&["migrate", "--database-url", &url], &[]).await, "migrate");
    assert!(dir.path().join("hsda.db").is_file(), "migrate created the database: {out}");

    let out = ok(
        &hsda(&["--database-url", &url, "keys", "create", "--scope", "publish", "--tenant", "t1"], &[]).await,
        "keys",
    );
    let key = out.lines().last().expect("a last line").trim().to_string();
    assert!(!key.is_empty() && !key.contains(' '), "the key alone on the last line: {out:?}");

    let server = serve(&url).await;
    let client = reqwest::Client::new();
    let path = format!("{}/organizations/00000000-0000-4000-8000-000000000001", server.base);
    let body = json!({"name": "Food Bank", "description": "Feeds people"});
    let r = client.put(&path).bearer_auth("hsda_publish_not_a_key").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.put(&path).bearer_auth(&key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn the_database_url_and_the_key_flags_have_environment_twins() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let env = [("HSDA_DATABASE_URL", url.as_str()), ("HSDA_SCOPE", "admin"), ("HSDA_TENANT", "ops")];
    let out = ok(&hsda(&["keys", "create"], &env).await, "keys via env");
    let key = out.lines().last().unwrap().trim().to_string();
    assert!(dir.path().join("hsda.db").is_file(), "HSDA_DATABASE_URL was used");
    let db = hsda::store::Db::connect(&url).await.unwrap();
    let principal = db.authenticate(&key).await.unwrap().expect("the key is in that database");
    assert_eq!(principal.scope, hsda::store::keys::Scope::Admin);
    assert_eq!(principal.tenant, "ops");
}

#[tokio::test]
async fn keys_are_listed_without_their_secrets_and_revoked_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let create = |tenant: &'static str| {
        let url = url.clone();
        async move {
            let args = ["--database-url", &url, "keys", "create", "--scope", "publish", "--tenant", tenant];
            let out = ok(&hsda(&args, &[]).await, "keys create");
            out.lines().last().unwrap().trim().to_string()
        }
    };
    let (first, second) = (create("t1").await, create("t2").await);
    let listed = ok(&hsda(&["--database-url", &url, "keys", "list"], &[]).await, "keys list");
    assert!(!listed.contains(&first) && !listed.contains(&second), "no secret is shown: {listed}");
    let rows: Vec<Vec<&str>> = listed.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!((rows[0][1], rows[0][2], rows[0][5]), ("t1", "publish", "-"), "{listed}");
    assert!(first.starts_with(rows[0][3]), "the prefix tells the key: {listed}");
    let only_t2 = ok(&hsda(&["--database-url", &url, "keys", "list", "--tenant", "t2"], &[]).await, "list t2");
    assert_eq!(only_t2.lines().count(), 2, "{only_t2}");
    // `hsda keys list | head -1`: a reader that goes away early is no error (and no panic).
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hsda"));
    command.args(["--database-url", &url, "keys", "list"]).env_remove("HSDA_DATABASE_URL").env_remove("HSDA_CONFIG");
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let done =
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success() && !stderr.contains("panicked"), "{}: {stderr}", done.status);

    let server = serve(&url).await;
    let client = reqwest::Client::new();
    let path = format!("{}/organizations/00000000-0000-4000-8000-000000000001", server.base);
    let body = json!({"name": "Food Bank", "description": "Feeds people"});
    let r = client.put(&path).bearer_auth(&first).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "the key works before it is revoked (and is now in the server's cache)");
    let id = rows[0][0];
    ok(&hsda(&["--database-url", &url, "keys", "revoke", id], &[]).await, "keys revoke");
    let again = hsda(&["--database-url", &url, "keys", "revoke", id], &[]).await;
    assert!(!again.status.success(), "revoking twice is an error");
    let listed = ok(&hsda(&["--database-url", &url, "keys", "list", "--tenant", "t1"], &[]).await, "keys list");
    assert_ne!(listed.lines().nth(1).unwrap().split('\t').nth(5), Some("-"), "shown revoked: {listed}");
    // The running server trusted the key it had seen for a few seconds; then it refuses it.
    let limit = hsda::store::keys::KEY_CACHE_TTL + std::time::Duration::from_secs(5);
    crate::helpers::eventually("a revoked key is refused", limit, || async {
        let r = client.put(&path).bearer_auth(&first).json(&body).send().await.unwrap();
        (r.status() == 401).then_some(()).ok_or_else(|| format!("it still gets {}", r.status()))
    })
    .await;
    let r = client.put(&path).bearer_auth(&second).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "the other key still works: {}", r.status());
}

#[tokio::test]
async fn generate_import_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let generated = dir.path().join("generated");
    let generated_arg = generated.to_string_lossy().into_owned();
    ok(&hsda(&["generate", "--services", "50", "--out", &generated_arg], &[]).await, "generate");
    assert!(generated.join("datapackage.json").is_file());
    let out = ok(&hsda(&["--database-url", &url, "import", "--quiet", &generated_arg], &[]).await, "import");
    assert!(out.contains("imported"), "{out}");

    let ndjson = dir.path().join("out.ndjson");
    // `--format` by its environment twin.
    let out = ok(
        &hsda(&["--database-url", &url, "export", &ndjson.to_string_lossy()], &[("HSDA_FORMAT", "ndjson")]).await,
        "export",
    );
    assert!(out.contains("exported"), "{out}");
    // `-` is standard output: the same lines, the report on standard error.
    let piped = hsda(&["--database-url", &url, "export", "--format", "ndjson", "-"], &[]).await;
    let stdout = ok(&piped, "export to -");
    assert_eq!(stdout, std::fs::read_to_string(&ndjson).unwrap(), "the same documents");
    assert!(String::from_utf8_lossy(&piped.stderr).contains("exported"));
    assert!(!dir.path().join("-").exists() && !std::path::Path::new("-").exists());
    let package = dir.path().join("package");
    ok(
        &hsda(&["--database-url", &url, "export", "--format", "datapackage", &package.to_string_lossy()], &[]).await,
        "export",
    );

    let server = serve(&url).await;
    let page: Value =
        reqwest::get(format!("{}/services?per_page=1000", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(page["total_items"], 50);
    let mut listed: Vec<String> =
        page["contents"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    listed.sort();

    // The NDJSON holds every service as a line of its table, besides organizations and locations.
    let mut exported: Vec<String> = std::fs::read_to_string(&ndjson)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|line| line["table"] == "service")
        .map(|line| {
            assert!(line["data"]["status"].is_string(), "a whole service: {line}");
            line["data"]["id"].as_str().unwrap().to_string()
        })
        .collect();
    exported.sort();
    assert_eq!(exported, listed);
    let services_csv = std::fs::read_to_string(package.join("services.csv")).unwrap();
    assert_eq!(services_csv.lines().count(), 51, "header and 50 services");

    // A second import of the same package changes nothing.
    let out = ok(&hsda(&["--database-url", &url, "import", "--quiet", &generated_arg], &[]).await, "re-import");
    assert!(out.contains("(0 changed)"), "{out}");
}

#[tokio::test]
async fn a_failed_import_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("services.csv"),
        "id,name,status,minimum_age\n00000000-0000-4000-8000-000000000001,A,active,old\n",
    )
    .unwrap();
    let output = hsda(&["--database-url", &url, "import", "--quiet", &bad.to_string_lossy()], &[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("services.csv line 2, field minimum_age"), "{stderr}");
}

/// A package (folder) in `dir` with one service of an organization the directory does not hold: refused by
/// strict imports only. Its path.
fn a_package_naming_a_missing_organization(dir: &std::path::Path) -> String {
    let package = dir.join("package");
    std::fs::create_dir(&package).unwrap();
    std::fs::write(
        package.join("services.csv"),
        "id,name,status,organization_id\n\
         00000000-0000-4000-8000-000000000001,A,active,00000000-0000-4000-8000-0000000000ff\n",
    )
    .unwrap();
    package.to_string_lossy().into_owned()
}

#[tokio::test]
async fn import_switches_take_boolish_values_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let path = a_package_naming_a_missing_organization(dir.path());
    let import = |strict: &'static str| {
        let (url, path) = (url.clone(), path.clone());
        async move {
            let env = [("HSDA_QUIET", "1"), ("HSDA_STRICT_REFERENCES", strict)];
            hsda(&["--database-url", &url, "import", &path], &env).await
        }
    };
    for strict in ["1", "yes", "TRUE"] {
        let refused = import(strict).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "HSDA_STRICT_REFERENCES={strict} is strict: {stderr}");
        assert!(stderr.contains("nothing was imported"), "HSDA_STRICT_REFERENCES={strict}: {stderr}");
    }
    let out = ok(&import("0").await, "HSDA_STRICT_REFERENCES=0");
    assert!(out.contains("imported") && out.contains("warning:"), "{out}");
    // The flag wins over its twin, and a bare switch still leaves PATH alone.
    let args = ["--database-url", &url, "import", "--strict-references=no", "--quiet", &path];
    ok(&hsda(&args, &[("HSDA_STRICT_REFERENCES", "yes")]).await, "--strict-references=no");
}

#[tokio::test]
async fn commands_that_read_refuse_a_database_that_does_not_exist_and_do_not_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let url = format!("sqlite://{}", missing.display());
    let out = dir.path().join("out.ndjson").to_string_lossy().into_owned();
    let package = dir.path().join("package").to_string_lossy().into_owned();
    let reads: [&[&str]; 4] = [
        &["export", "--format", "ndjson", &out],
        &["export", &package],
        &["keys", "list"],
        &["keys", "revoke", "key_0123456789abcdef0123456789abcdef"],
    ];
    for args in reads {
        let output = hsda(&[&["--database-url", url.as_str()], args].concat(), &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} fails");
        assert!(stderr.contains(&format!("no SQLite database at {}", missing.display())), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created the database");
    }
    assert!(!dir.path().join("out.ndjson").exists() && !dir.path().join("package").exists());
    // The commands that make a directory still create the file.
    ok(&hsda(&["--database-url", &url, "keys", "create", "--scope", "admin"], &[]).await, "keys create");
    assert!(missing.is_file());
    ok(&hsda(&["--database-url", &url, "export", "--format", "ndjson", &out], &[]).await, "export");
}

/// `args` after `--config FILE`.
fn with_config<'a>(file: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["--config", file][..], args].concat()
}

#[tokio::test]
async fn the_config_file_holds_every_commands_settings_under_their_flags_and_environment_twins() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let file = dir.path().join("hsda.toml");
    let settings = format!(
        "database_url = {url:?}\nquiet = true\nstrict_references = true\nformat = \"ndjson\"\n\
         scope = \"subscribe\"\ntenant = \"ops\"\nservices = 3\nout = {:?}\n",
        dir.path().join("generated").display().to_string()
    );
    std::fs::write(&file, settings).unwrap();
    let config = file.to_string_lossy().into_owned();

    let out = ok(&hsda(&with_config(&config, &["generate"]), &[]).await, "generate");
    assert!(out.contains("wrote 3 services"), "services and out from the file: {out}");
    let package = a_package_naming_a_missing_organization(dir.path());
    let refused = hsda(&with_config(&config, &["import", &package]), &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("nothing was imported"), "strict by the file: {stderr}");
    let lenient = [("HSDA_STRICT_REFERENCES", "0")];
    ok(&hsda(&with_config(&config, &["import", &package]), &lenient).await, "the twin wins over the file");

    let ndjson = dir.path().join("out");
    ok(&hsda(&with_config(&config, &["export", &ndjson.to_string_lossy()]), &[]).await, "export");
    let text = std::fs::read_to_string(&ndjson).expect("NDJSON, as the file says, is one file");
    serde_json::from_str::<Value>(text.lines().next().expect("a line")).expect("a JSON line");
    let package_out = dir.path().join("package-out");
    let args = ["export", "--format", "datapackage", &package_out.to_string_lossy()];
    ok(&hsda(&with_config(&config, &args), &[]).await, "the flag wins over the file");
    assert!(package_out.join("datapackage.json").is_file());

    let created = ok(&hsda(&with_config(&config, &["keys", "create"]), &[]).await, "keys create");
    assert!(created.contains("created subscribe key") && created.contains("for tenant ops"), "{created}");
    let listed = ok(&hsda(&with_config(&config, &["keys", "list"]), &[]).await, "keys list");
    assert!(listed.lines().skip(1).all(|l| l.split('\t').nth(1) == Some("ops")), "{listed}");

    // A key no command knows still fails every command, and is named.
    std::fs::write(&file, "quiet = true\nquite = true\n").unwrap();
    for args in [&["migrate"][..], &["keys", "list"]] {
        let refused = hsda(&with_config(&config, args), &[]).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("unknown field `quite`"), "{args:?}: {stderr}");
    }
}

/// A database that cannot be opened is named for what is wrong with it, not as a pool that timed out (the
/// pool retried the failing connection for its whole acquire timeout, 10 to 30 s, and said only that).
#[tokio::test]
async fn a_database_that_cannot_be_opened_is_named_for_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "this is a text file, not a database\n".repeat(200)).unwrap();
    let output = hsda(&["--database-url", &format!("sqlite://{}", junk.display()), "migrate"], &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not a database") && !stderr.contains("timed out"), "{stderr}");
    // A URL that names no file (each connection would have a database of its own in memory).
    for url in ["sqlite://", "sqlite:", "sqlite://?mode=rwc"] {
        let output = hsda(&["--database-url", url, "migrate"], &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("names no file"), "{url}: {stderr}");
    }
    // Nothing listens on port 1: refused, said as such.
    let output = hsda(&["--database-url", "postgres://postgres@127.0.0.1:1/none", "migrate"], &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.to_lowercase().contains("refused") && !stderr.contains("timed out"), "{stderr}");
    // A PostgreSQL database that does not exist, said once.
    let Some(url) = crate::helpers::postgres_url() else { return };
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let output = hsda(&["--database-url", &format!("{base}/hsda_no_such_database"), "migrate"], &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
}
