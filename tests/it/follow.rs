//! Following another hsda (`serve --follow URL`): the follower ends with the source's rows, applies each of
//! the source's changes once (also after a stop, and with two processes following one source), hears of
//! changes through the feed's long poll, and two directories following each other settle.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Store, TestApp, eventually};

const ORG: &str = "0a1b2c3d-0000-4000-8000-000000000001";
const SERVICE: &str = "0a1b2c3d-0000-4000-8000-000000000002";
const PHONE: &str = "0a1b2c3d-0000-4000-8000-000000000003";
const PHONE_2: &str = "0a1b2c3d-0000-4000-8000-000000000004";
const SERVICE_2: &str = "0a1b2c3d-0000-4000-8000-000000000005";

/// A server over a fresh database of `store` following `source`.
async fn follower_of(store: Store, source: &TestApp) -> TestApp {
    let url = source.base.clone();
    TestApp::spawn_with(store, |c| c.follow = vec![url]).await.expect("follower")
}

/// Waits until `follower` has applied everything `source` has logged.
async fn caught_up(follower: &TestApp, source: &TestApp) {
    let last = source.db.last_sequence().await.expect("last sequence");
    eventually("the follower catches up", Duration::from_secs(30), || async {
        let at = follower.db.follow_cursor(&source.base).await.map_err(|e| e.to_string())?;
        // (At or past: a directory that follows the follower back writes on meanwhile.)
        if at >= last { Ok(()) } else { Err(format!("at {at} of {last}")) }
    })
    .await;
}

/// Every event `app` logged, as an admin reads the feed.
async fn all_events(app: &TestApp) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let page = app.events_after(all.len() as i64).await;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Every row of every table as `app` serves it, by table and id.
async fn directory(app: &TestApp) -> Vec<(String, Vec<Value>)> {
    let mut all = Vec::new();
    for table in hsda::hsds::catalog::TABLES {
        let text = app.get(&format!("/{}?format=ndjson", table.plural)).await.text().await.expect("ndjson");
        let mut rows: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
        rows.sort_by_key(|row| row["id"].as_str().unwrap_or_default().to_string());
        all.push((table.plural.to_string(), rows));
    }
    all
}

async fn assert_same_directory(follower: &TestApp, source: &TestApp) {
    let (mine, theirs) = (directory(follower).await, directory(source).await);
    for ((table, mine), (_, theirs)) in mine.iter().zip(&theirs) {
        assert_eq!(mine.len(), theirs.len(), "{table}: as many rows on the follower as on the source");
        for (a, b) in mine.iter().zip(theirs) {
            assert_eq!(a, b, "{table}: the follower serves the row as the source does");
        }
    }
    assert!(theirs.iter().map(|(_, rows)| rows.len()).sum::<usize>() > 20, "the comparison covers many rows");
}

/// The source's writes of every kind: the official example package (every table), then a PUT with nested
/// children, a PATCH, a DELETE of a child and one of a service with what it owns.
async fn write_a_bit_of_everything(source: &TestApp) -> Option<()> {
    source.import_example().await?;
    source
        .put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Riverside Food Bank", "description": "Food"}))
        .await;
    let service = json!({"name": "Pantry", "status": "active", "organization_id": ORG,
        "phones": [{"id": PHONE, "number": "555-0100"}, {"id": PHONE_2, "number": "555-0101"}]});
    source.put_ok(&format!("/services/{SERVICE}"), &service).await;
    let second = json!({"name": "Meals", "status": "active", "organization_id": ORG});
    source.put_ok(&format!("/services/{SERVICE_2}"), &second).await;
    let r = source.patch(&format!("/services/{SERVICE}"), &json!({"description": "Groceries weekly"})).await;
    assert!(r.status().is_success(), "PATCH: {}", r.status());
    assert_eq!(source.delete(&format!("/phones/{PHONE_2}")).await.status(), 204);
    assert_eq!(source.delete(&format!("/services/{SERVICE_2}")).await.status(), 204);
    // An import that moves a contact's phone (with its language) to the service and drops the contact: the
    // source logs the contact's delete before the phone's move, and the phone keeps its language.
    let (contact, phone, language) = (
        "0a1b2c3d-0000-4000-8000-000000000006",
        "0a1b2c3d-0000-4000-8000-000000000007",
        "0a1b2c3d-0000-4000-8000-000000000008",
    );
    let with_contact = json!({"name": "Pantry", "status": "active", "organization_id": ORG, "description": "Groceries weekly",
        "contacts": [{"id": contact, "name": "Desk", "phones": [{"id": phone, "number": "555-0102",
            "languages": [{"id": language, "name": "English"}]}]}]});
    source.put_ok(&format!("/services/{SERVICE}"), &with_contact).await;
    let moved = json!({"id": SERVICE, "name": "Pantry", "status": "active", "organization_id": ORG,
        "description": "Groceries weekly", "contacts": [],
        "phones": [{"id": PHONE, "number": "555-0100"}, {"id": phone, "number": "555-0102",
            "languages": [{"id": language, "name": "English"}]}]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("service.json");
    std::fs::write(&file, moved.to_string()).unwrap();
    hsda::bulk::import::import_path(&source.db, &file, Default::default()).await.expect("import");
    assert_eq!(source.get_json(&format!("/languages/{language}")).await["phone_id"], phone);
    Some(())
}

async fn a_follower_ends_with_the_sources_directory(store: Store) {
    let Some(source) = TestApp::spawn(store).await else { return };
    if write_a_bit_of_everything(&source).await.is_none() {
        return;
    }
    let follower = follower_of(store, &source).await;
    caught_up(&follower, &source).await;
    assert_same_directory(&follower, &source).await;

    // Its own events tell its subscribers of each change, with the origin the source gave it.
    let source_origin = source.events_after(0).await[0]["origin"].clone();
    // A document's update caused by a change inside it says so; a follower takes no own fields from it.
    let inside = all_events(&source).await;
    let inside: Vec<&Value> = inside.iter().filter(|e| e["changed_inside_only"] == true).collect();
    assert!(!inside.is_empty() && inside.iter().all(|e| e["type"].as_str().unwrap().ends_with(".updated")));
    let events = all_events(&follower).await;
    assert!(events.iter().any(|e| e["type"] == "phone.deleted" && e["object_id"] == PHONE_2), "the delete");
    assert!(events.iter().all(|e| e["origin"] == source_origin), "every change here is the source's");

    // Once caught up, a change reaches it without a poll interval (the feed's long poll answers at commit).
    let started = Instant::now();
    source.put_ok(&format!("/phones/{PHONE}"), &json!({"number": "555-0199", "service_id": SERVICE})).await;
    eventually("the follower hears of the new number", Duration::from_secs(10), || async {
        let phone = follower.get_json(&format!("/phones/{PHONE}")).await;
        if phone["number"] == "555-0199" { Ok(()) } else { Err(phone.to_string()) }
    })
    .await;
    eprintln!("a change reached the follower {:?} after the write was sent", started.elapsed());

    // A row deleted here first (an operator's own edit) does not stop the source's delete of it from applying.
    assert_eq!(follower.delete(&format!("/phones/{PHONE}")).await.status(), 204);
    assert_eq!(source.delete(&format!("/phones/{PHONE}")).await.status(), 204);
    caught_up(&follower, &source).await;

    // The operator sees how it goes.
    let status = follower.get_as(&follower.admin_key, "/follow").await;
    let source_status = &status["sources"][0];
    assert_eq!(source_status["source"], source.base.as_str(), "{status}");
    assert_eq!(source_status["state"], "following", "{status}");
    assert_eq!(source_status["after_sequence"], source.db.last_sequence().await.unwrap(), "{status}");
    assert_eq!(follower.get_as(&follower.publish_key, "/follow").await["status"], 403, "admins only");
}
crate::each_store!(a_follower_ends_with_the_sources_directory);

/// Stopped, it picks up at its stored cursor: each of the source's changes is applied once.
async fn a_follower_that_was_away_applies_each_change_once(store: Store) {
    let Some(source) = TestApp::spawn(store).await else { return };
    source
        .put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Riverside Food Bank", "description": "Food"}))
        .await;
    // A row created and deleted before the stop: were the cursor not kept, the restart would replay both.
    let gone = json!({"name": "Gone", "status": "active", "organization_id": ORG});
    source.put_ok(&format!("/services/{SERVICE}"), &gone).await;
    assert_eq!(source.delete(&format!("/services/{SERVICE}")).await.status(), 204);
    let mut follower = follower_of(store, &source).await;
    caught_up(&follower, &source).await;
    follower.stop().await;
    for i in 0..20 {
        let id = format!("0a1b2c3d-0000-4000-8000-0000000001{i:02}");
        let body = json!({"name": format!("Service {i}"), "status": "active", "organization_id": ORG});
        source.put_ok(&format!("/services/{id}"), &body).await;
    }
    let url = follower.database_url.clone();
    let source_url = source.base.clone();
    let follower = TestApp::spawn_with(store, |c| {
        c.database_url = url;
        c.follow = vec![source_url];
    })
    .await
    .expect("follower again");
    caught_up(&follower, &source).await;
    assert_same_directory_of_services(&follower, &source).await;
    let events = all_events(&follower).await;
    let created = events.iter().filter(|e| e["type"] == "service.created").count();
    assert_eq!(created, 21, "each service created here once");
    assert_eq!(events.iter().filter(|e| e["type"] == "service.deleted").count(), 1);
}
crate::each_store!(a_follower_that_was_away_applies_each_change_once);

async fn assert_same_directory_of_services(follower: &TestApp, source: &TestApp) {
    let list = |app: &TestApp| {
        let url = app.url("/services?format=ndjson");
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let (mine, theirs) = (list(follower).await, list(source).await);
    assert_eq!(mine.lines().count(), 20);
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&mine), sorted(&theirs));
}

/// Two processes on one PostgreSQL database, both following the source: each change is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_following_one_source_apply_each_change_once() {
    let Some(source) = TestApp::spawn(Store::Postgres).await else { return };
    source
        .put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Riverside Food Bank", "description": "Food"}))
        .await;
    let first = follower_of(Store::Postgres, &source).await;
    let (url, source_url) = (first.database_url.clone(), source.base.clone());
    let second = TestApp::spawn_with(Store::Postgres, |c| {
        c.database_url = url;
        c.follow = vec![source_url];
    })
    .await
    .expect("second process");
    for i in 0..40 {
        let id = format!("0a1b2c3d-0000-4000-8000-0000000002{i:02}");
        let body = json!({"name": format!("Service {i}"), "status": "active", "organization_id": ORG});
        source.put_ok(&format!("/services/{id}"), &body).await;
    }
    caught_up(&first, &source).await;
    let events = all_events(&second).await;
    let created = events.iter().filter(|e| e["type"] == "service.created").count();
    assert_eq!(created, 40, "each service created once over both processes");
    let organizations = events.iter().filter(|e| e["type"] == "organization.created").count();
    assert_eq!(organizations, 1);
    // Each of the source's events was applied by one of the two (the other found the cursor moved).
    let applied = |app: &TestApp| {
        let (client, url, key) = (app.client.clone(), app.url("/follow"), app.admin_key.clone());
        async move {
            let status: Value = client.get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap();
            status["sources"][0]["events_applied"].as_i64().expect("events_applied")
        }
    };
    // (Counted after each write commits: the cursor can be there a moment before the count.)
    let last = source.db.last_sequence().await.unwrap();
    eventually("every event counted once", Duration::from_secs(10), || async {
        let (by_first, by_second) = (applied(&first).await, applied(&second).await);
        assert!(by_first + by_second <= last, "applied twice: {by_first} + {by_second} of {last}");
        if by_first + by_second == last { Ok(()) } else { Err(format!("{by_first} + {by_second} of {last}")) }
    })
    .await;
}

/// Each follows the other: a change made on either reaches the other once and does not come back.
async fn two_directories_following_each_other_settle(store: Store) {
    // The second one's address is taken first, so that the first can follow it before it serves.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let second_url = format!("http://127.0.0.1:{port}");
    let Some(first) = TestApp::spawn_with(store, |c| c.follow = vec![second_url.clone()]).await else { return };
    let first_url = first.base.clone();
    let second = TestApp::spawn_with(store, |c| {
        c.bind = format!("127.0.0.1:{port}").parse().unwrap();
        c.follow = vec![first_url];
    })
    .await
    .expect("second");
    first.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Draft", "description": "d"})).await;
    // Changed again at once: the second's copy of the first change must not come back over the second one.
    first.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Made on the first", "description": "d"})).await;
    let service = json!({"name": "Made on the second", "status": "active", "organization_id": ORG});
    // The organization reaches the second before its service can be written there (maybe still as the draft).
    // The service's write also tells of the organization (its document gained a service), with the
    // organization's own fields as the second has them then: the first takes none of them
    // (`changed_inside_only`), so the draft name does not come back there.
    eventually("the organization reaches the second", Duration::from_secs(30), || async {
        let r = second.get(&format!("/organizations/{ORG}")).await;
        if r.status() == 200 { Ok(()) } else { Err(r.status().to_string()) }
    })
    .await;
    second.put_ok(&format!("/services/{SERVICE}"), &service).await;
    eventually("the service reaches the first", Duration::from_secs(30), || async {
        let r = first.get(&format!("/services/{SERVICE}")).await;
        if r.status() == 200 { Ok(()) } else { Err(r.status().to_string()) }
    })
    .await;
    caught_up(&first, &second).await;
    caught_up(&second, &first).await;
    // Settled: no change bounces between them.
    let before = (first.db.last_sequence().await.unwrap(), second.db.last_sequence().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = (first.db.last_sequence().await.unwrap(), second.db.last_sequence().await.unwrap());
    assert_eq!(before, after, "no change comes back");
    let (mine, theirs) =
        (first.get_json(&format!("/services/{SERVICE}")).await, second.get_json(&format!("/services/{SERVICE}")).await);
    assert_eq!((&mine["name"], &mine["organization"]), (&theirs["name"], &theirs["organization"]));
    let events = all_events(&first).await;
    assert_eq!(events.iter().filter(|e| e["type"] == "service.created").count(), 1);
    assert_eq!(events.iter().filter(|e| e["type"] == "organization.created").count(), 1);
    let names: Vec<&Value> = events
        .iter()
        .filter(|e| e["object_id"] == ORG && e["type"] == "organization.updated")
        .map(|e| &e["data"]["name"])
        .collect();
    // The rename, and the service's arrival inside it; never the draft name again.
    assert!(names.iter().all(|n| *n == "Made on the first"), "{names:?}");
    assert_eq!(second.get_json(&format!("/organizations/{ORG}")).await["name"], "Made on the first");

    // Different rows of one document changed at the same moment, one at each: the service renamed at the
    // first, a phone of it added at the second. The phone's write tells of the service too (its document
    // changed inside), with the old name: the first must keep its rename.
    for round in 0..5 {
        let name = format!("Renamed at the first, round {round}");
        let phone = format!("0a1b2c3d-0000-4000-8000-0000000003{round:02}");
        let (service_path, phone_path) = (format!("/services/{SERVICE}"), format!("/phones/{phone}"));
        let (rename_body, phone_body) =
            (json!({"name": name}), json!({"number": format!("555-01{round:02}"), "service_id": SERVICE}));
        let (renamed, _) =
            tokio::join!(first.patch(&service_path, &rename_body), second.put_ok(&phone_path, &phone_body));
        assert_eq!(renamed.status(), 200);
        caught_up(&first, &second).await;
        caught_up(&second, &first).await;
        let (mine, theirs) = (
            first.get_json(&format!("/services/{SERVICE}")).await,
            second.get_json(&format!("/services/{SERVICE}")).await,
        );
        assert_eq!(mine["name"], name.as_str(), "round {round}: the first keeps its rename");
        // Alike but for `last_modified`: each dates the document by the change that reached it last (README).
        let without_time = |mut doc: Value| {
            doc.as_object_mut().unwrap().remove("last_modified");
            doc
        };
        assert_eq!(without_time(mine), without_time(theirs), "round {round}: both end alike");
    }
}
crate::each_store!(two_directories_following_each_other_settle);

/// A source that wants a key: the follower says why it cannot follow, and follows with the key.
async fn a_source_that_refuses_the_follower_is_shown_failing(store: Store) {
    let Some(source) = TestApp::spawn_with(store, |c| c.require_key_for_reads = true).await else { return };
    source
        .put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Riverside Food Bank", "description": "Food"}))
        .await;
    let refused = follower_of(store, &source).await;
    let status = eventually("the refusal shows", Duration::from_secs(10), || async {
        let status = refused.get_as(&refused.admin_key, "/follow").await;
        match status["sources"][0]["state"] == "failing" {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await;
    let error = status["sources"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("401"), "{status}");
    assert_eq!(refused.get(&format!("/organizations/{ORG}")).await.status(), 404);

    let (url, key) = (source.base.clone(), source.admin_key.clone());
    let keyed = TestApp::spawn_with(store, |c| {
        c.follow = vec![url];
        c.follow_key = Some(hsda::config::Secret::new(key));
    })
    .await
    .expect("follower with a key");
    caught_up(&keyed, &source).await;
    assert_eq!(keyed.get(&format!("/organizations/{ORG}")).await.status(), 200);
}
crate::each_store!(a_source_that_refuses_the_follower_is_shown_failing);

/// `wait`: a feed request with nothing new answers when the next change commits, or empty at the end.
async fn the_feed_waits_for_the_next_change_when_asked(store: Store) {
    let Some(app) = TestApp::spawn(store).await else { return };
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Riverside Food Bank", "description": "Food"})).await;
    let last = app.db.last_sequence().await.unwrap();

    let started = Instant::now();
    let empty = app.get_json(&format!("/events?after={last}&wait=1")).await;
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["next_after"], last);
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited: {:?}", started.elapsed());

    let url = app.url(&format!("/events?after={last}&wait=20"));
    let waiting = tokio::spawn(app.client.get(url).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Renamed", "description": "Food"})).await;
    let page: Value = waiting.await.unwrap().unwrap().json().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "answered at the commit, not at the end of the wait");
    assert_eq!(page["events"][0]["type"], "organization.updated", "{page}");

    // A cursor past the newest event is refused at once, not at the end of the wait.
    let started = Instant::now();
    let r = app.get(&format!("/events?after={}&wait=10", last + 1000)).await;
    assert_eq!(r.status(), 400);
    assert!(started.elapsed() < Duration::from_secs(5), "refused before the wait: {:?}", started.elapsed());

    for bad in ["31", "-1", "soon"] {
        let r = app.get(&format!("/events?after={last}&wait={bad}")).await;
        assert_eq!(r.status(), 400, "wait={bad}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["parameter"], "wait", "{problem}");
    }
}
crate::each_store!(the_feed_waits_for_the_next_change_when_asked);

/// A source that answers "nothing new" at once whatever `wait` says (an older hsda ignores the parameter, a
/// proxy may cut a long poll short) is not asked again and again without a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_does_not_wait_is_not_asked_in_a_busy_loop() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let feed = axum::Router::new().route(
        "/events",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({"events": [], "next_after": 0}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, feed).await });
    let Some(follower) = TestApp::spawn_with(Store::Sqlite, |c| c.follow = vec![url]).await else { return };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = asked.load(Ordering::Relaxed);
    // About one request a second (and the first, without `wait`); without the pause, thousands.
    assert!((2..=8).contains(&asked), "{asked} requests in 3 s");
    let status = follower.get_as(&follower.admin_key, "/follow").await;
    assert_eq!(status["sources"][0]["state"], "following", "{status}");
}
