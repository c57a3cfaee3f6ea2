//! The HSDS API over real stores: the example data package served exactly as the official compiled
//! schemas say, writes with nested children, references, ETags, cascades and the events they emit.

use serde_json::{Value, json};

use crate::helpers::hsds_dir;
use crate::store_test;

const ORG: &str = "d9d5e0f5-d3ce-4f73-9a2f-4dd0ecc6c610";
const SERVICE: &str = "ac148810-d857-441c-9679-408f346de14b";

/// The official compiled schema `name`, built once per test binary (building one is slow).
fn validator(name: &str) -> Option<std::sync::Arc<jsonschema::Validator>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(name) {
        return Some(v.clone());
    }
    let path = hsds_dir()?.join("schema/compiled").join(format!("{name}.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let v = Arc::new(jsonschema::validator_for(&schema).expect("compiled schema compiles"));
    cache.lock().unwrap().insert(name.to_string(), v.clone());
    Some(v)
}

fn assert_valid(name: &str, instance: &Value) {
    let Some(v) = validator(name) else { return };
    let errors: Vec<String> = v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "not a valid {name}: {errors:#?}\n{instance:#}");
}

fn assert_page(page: &Value) {
    for key in ["total_items", "total_pages", "page_number", "size", "first_page", "last_page", "empty", "contents"] {
        assert!(page.get(key).is_some(), "page lacks {key}: {page}");
    }
}

store_test!(example_package_is_served_per_the_compiled_schemas, |app| async move {
    if app.import_example().await.is_none() {
        return;
    }
    let service = app.get_json(&format!("/services/{SERVICE}")).await;
    assert_valid("service", &service);
    assert_eq!(service["id"], SERVICE);
    assert!(!service["phones"].as_array().unwrap().is_empty(), "phones nested: {service:#}");

    let list = app.get_json("/services").await;
    assert_page(&list);
    assert_eq!(list["total_items"], 1);
    for item in list["contents"].as_array().unwrap() {
        assert_valid("service_list", item);
    }
    let full = app.get_json("/services?full=true").await;
    for item in full["contents"].as_array().unwrap() {
        assert_valid("service", item);
    }

    let org = app.get_json(&format!("/organizations/{ORG}")).await;
    assert_valid("organization", &org);
    let orgs = app.get_json("/organizations").await;
    for item in orgs["contents"].as_array().unwrap() {
        assert_valid("organization_list", item);
    }
    let sals = app.get_json("/service_at_locations").await;
    assert!(sals["total_items"].as_u64().unwrap() >= 1);
    for item in sals["contents"].as_array().unwrap() {
        assert_valid("service_at_location_list", item);
        let id = item["id"].as_str().unwrap();
        let sal = app.get_json(&format!("/service_at_locations/{id}")).await;
        assert_valid("service_at_location", &sal);
    }
    for path in ["/taxonomies", "/taxonomy_terms", "/phones", "/locations", "/addresses", "/schedules", "/attributes"] {
        let page = app.get_json(path).await;
        assert_page(&page);
        assert!(page["total_items"].as_u64().unwrap() >= 1, "{path} has the example row");
    }
});

// Lists of the tables HSDS gives no list of (phones, capacities...) serve each row as its own GET does, with
// what it nests: a capacity's `unit`, which HSDS requires, a phone's languages. Paged and as NDJSON.
store_test!(every_other_tables_list_serves_rows_as_their_get_does, |app| async move {
    if app.import_example().await.is_none() {
        return;
    }
    let mut compared = 0;
    for table in hsda::hsds::catalog::TABLES.iter().filter(|t| !t.is_root()) {
        let plural = table.plural;
        let page = app.get_json(&format!("/{plural}?per_page=1000")).await;
        let lines = app.get(&format!("/{plural}?format=ndjson")).await.text().await.unwrap();
        let streamed: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(page["contents"].as_array().unwrap(), &streamed, "/{plural}: paged and streamed alike");
        for item in &streamed {
            let id = item["id"].as_str().unwrap();
            assert_eq!(item, &app.get_json(&format!("/{plural}/{id}")).await, "/{plural}/{id}");
            compared += 1;
        }
    }
    assert!(compared >= 20, "{compared} rows compared");
    // The example's capacity names a unit it does not hold; one that does lists it nested.
    let (unit, capacity) = ("0e0e0000-0000-4000-8000-000000000001", "0e0e0000-0000-4000-8000-000000000002");
    app.put_ok(&format!("/units/{unit}"), &json!({"name": "Bed"})).await;
    let body = json!({"service_id": SERVICE, "unit_id": unit, "available": 3, "updated": "2024-01-01T00:00:00Z"});
    app.put_ok(&format!("/service_capacities/{capacity}"), &body).await;
    let capacities = app.get_json(&format!("/service_capacities?service_id={SERVICE}&per_page=1000")).await;
    let listed = capacities["contents"].as_array().unwrap().iter().find(|c| c["id"] == capacity).cloned();
    assert_eq!(listed.as_ref().map(|c| &c["unit"]["name"]), Some(&json!("Bed")), "{capacities}");
    // Streamed in batches of 200 (each after the last row of the one before): every row once, in list order.
    let phones: Vec<Value> = (0..450)
        .map(|n| json!({"id": format!("0e0e0000-0000-4000-8000-1{n:011}"), "number": format!("555-{n:04}")}))
        .collect();
    app.put_ok(&format!("/services/{SERVICE}"), &json!({"name": "Many phones", "status": "active", "phones": phones}))
        .await;
    let page = app.get_json("/phones?per_page=1000").await;
    let lines = app.get("/phones?format=ndjson").await.text().await.unwrap();
    let streamed: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(streamed.len() >= 450, "{}", streamed.len());
    assert_eq!(page["contents"].as_array().unwrap(), &streamed);
});

// A word typed without its accents finds it, and with them finds it too, on both stores; names sort by
// their letters (`Éclair` among the e's). Rows a hsda before the folding wrote are folded at migration.
store_test!(search_folds_latin_accents_on_both_stores, |app| async move {
    let id = |n: u32| format!("0f0f0000-0000-4000-8000-{n:012}");
    let hindi = "सामुदायिक खाद्य बैंक";
    for (n, name) in
        [(1, "Zebra Pantry"), (2, "Éclair Café"), (3, "Apple Niño Educación"), (4, "Ebony Hall"), (5, hindi)]
    {
        app.put_ok(&format!("/organizations/{}", id(n)), &json!({"name": name, "description": "d"})).await;
    }
    let names = |page: Value| -> Vec<String> {
        page["contents"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_owned()).collect()
    };
    let found = |q: &'static str| {
        let app = &app;
        async move { names(app.get_json(&format!("/organizations?search={q}")).await) }
    };
    for q in ["cafe", "caf%C3%A9", "CAFÉ", "eclair"] {
        assert_eq!(found(q).await, ["Éclair Café"], "{q}");
    }
    assert_eq!(found("educacion%20nino").await, ["Apple Niño Educación"]);
    // Other scripts' marks stay in their words: a virama joins letters (PostgreSQL found nothing split there).
    for q in ["%E0%A4%96%E0%A4%BE%E0%A4%A6%E0%A5%8D%E0%A4%AF", "%E0%A4%AC%E0%A5%88%E0%A4%82%E0%A4%95"] {
        assert_eq!(found(q).await, [hindi], "{q}");
    }
    let all = names(app.get_json("/organizations").await);
    assert_eq!(all, ["Apple Niño Educación", "Ebony Hall", "Éclair Café", "Zebra Pantry", hindi]);

    // As an earlier hsda stored them: unfolded, at schema version 15. Migrating folds them.
    let pool = sqlx::AnyPool::connect(&app.database_url).await.unwrap();
    sqlx::query("UPDATE records SET search_text = 'Éclair Café', sort_key = 'éclair café' WHERE id = $1")
        .bind(id(2))
        .execute(&pool)
        .await
        .unwrap();
    forget_migration_17(&pool).await;
    sqlx::query("UPDATE meta SET value = '15' WHERE key = 'schema_version'").execute(&pool).await.unwrap();
    app.db.migrate().await.unwrap();
    let (sort_key, search_text): (String, String) =
        sqlx::query_as("SELECT sort_key, search_text FROM records WHERE id = $1")
            .bind(id(2))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sort_key, "eclair cafe");
    // SQLite's full-text index folds by itself: its text is left as indexed.
    let sqlite = app.db.backend() == hsda::store::Backend::Sqlite;
    assert_eq!(search_text, if sqlite { "Éclair Café" } else { "Eclair Cafe" });
    assert_eq!(found("cafe").await, ["Éclair Café"]);
    assert_eq!(names(app.get_json("/organizations").await), all);
});

fn org_body(id: &str, name: &str) -> Value {
    json!({ "id": id, "name": name, "description": format!("{name} helps people.") })
}

fn service_body(id: &str, org: &str, name: &str) -> Value {
    json!({
        "id": id, "organization_id": org, "name": name, "status": "active",
        "description": "Hot meals and groceries for families",
        "phones": [ { "id": "00000000-0000-4000-8000-0000000000a1", "number": "555-0100" } ],
        "schedules": [ { "id": "00000000-0000-4000-8000-0000000000b1", "freq": "WEEKLY", "byday": "MO,TU", "opens_at": "09:00", "closes_at": "17:00" } ]
    })
}

const O1: &str = "00000000-0000-4000-8000-000000000001";
const S1: &str = "00000000-0000-4000-8000-000000000011";

store_test!(put_with_children_writes_rows_and_events_in_one_go, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let before = app.db.last_sequence().await.unwrap();
    let r = app.put(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("etag").is_some());
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["phones"][0]["service_id"], S1, "back reference filled in");
    assert_eq!(doc["organization"]["name"], "Food Bank");

    let events = app.events_after(before).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"service.created"), "{types:?}");
    assert!(types.contains(&"phone.created"), "{types:?}");
    assert!(types.contains(&"schedule.created"), "{types:?}");
    assert!(types.contains(&"organization.updated"), "the organization embeds its services: {types:?}");
    let seqs: Vec<i64> = events.iter().map(|e| e["sequence"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (before + 1..=before + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "gap-free sequence");
    let created = events.iter().find(|e| e["type"] == "service.created").unwrap();
    assert_eq!(created["data"]["phones"][0]["number"], "555-0100", "snapshot carries the compiled service");

    // The same PUT again changes nothing and emits nothing.
    let last = app.db.last_sequence().await.unwrap();
    let r = app.put(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.db.last_sequence().await.unwrap(), last, "idempotent PUT emits no event");

    // Changing a phone through its own path updates the service and the organization.
    let phone = "00000000-0000-4000-8000-0000000000a1";
    let r = app.patch(&format!("/phones/{phone}"), &json!({"number": "555-0199"})).await;
    assert_eq!(r.status(), 200);
    let events = app.events_after(last).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "phone.updated").count(), 1, "{types:?}");
    assert!(types.contains(&"service.updated"), "{types:?}");
    let service_event = events.iter().find(|e| e["type"] == "service.updated").unwrap();
    assert_eq!(service_event["data"]["phones"][0]["number"], "555-0199");
});

store_test!(bad_references_and_fields_are_422_with_pointers_and_write_nothing, |app| async move {
    let before = app.db.last_sequence().await.unwrap();
    let r = app.put(&format!("/services/{S1}"), &service_body(S1, O1, "Orphan")).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/organization_id", "{problem}");

    let mut body = service_body(S1, O1, "Bad");
    body["status"] = json!("open");
    body["phones"][0]["number"] = json!(5);
    let problem: Value = app.put(&format!("/services/{S1}"), &body).await.json().await.unwrap();
    let pointers: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert!(pointers.contains(&"/status"), "{problem}");
    assert!(pointers.contains(&"/phones/0/number"), "{problem}");

    let r = app
        .client
        .put(app.url(&format!("/services/{S1}")))
        .bearer_auth(&app.publish_key)
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app.put("/services/not-a-uuid", &json!({"name": "x"})).await;
    assert_eq!(r.status(), 422);
    assert_eq!(app.get(&format!("/services/{S1}")).await.status(), 404);
    assert_eq!(app.db.last_sequence().await.unwrap(), before, "nothing written, no event");
});

store_test!(writes_need_a_publishing_key, |app| async move {
    let url = app.url(&format!("/organizations/{O1}"));
    let r = app.client.put(&url).json(&org_body(O1, "x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.client.put(&url).bearer_auth(&app.subscribe_key).json(&org_body(O1, "x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = app.client.put(&url).bearer_auth("hsda_admin_wrong").json(&org_body(O1, "x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.client.put(&url).bearer_auth(&app.admin_key).json(&org_body(O1, "x")).send().await.unwrap();
    assert_eq!(r.status(), 201);
});

store_test!(if_match_guards_concurrent_writers, |app| async move {
    let url = format!("/organizations/{O1}");
    app.put_ok(&url, &org_body(O1, "First")).await;
    let etag = app.get(&url).await.headers()["etag"].to_str().unwrap().to_string();
    let write = |name: &'static str, tag: String| {
        app.client
            .put(app.url(&url))
            .bearer_auth(&app.publish_key)
            .header("if-match", tag)
            .json(&org_body(O1, name))
            .send()
    };
    assert_eq!(write("Second", etag.clone()).await.unwrap().status(), 200);
    assert_eq!(write("Third", etag).await.unwrap().status(), 412, "stale ETag");
    assert_eq!(app.get_json(&url).await["name"], "Second");
    let r = app
        .client
        .get(app.url(&url))
        .header("if-none-match", app.get(&url).await.headers()["etag"].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // RFC 9110: If-None-Match compares weakly, If-Match strongly; a list matches if any tag does.
    let current = app.get(&url).await.headers()["etag"].to_str().unwrap().to_string();
    let get_with = |value: String| app.client.get(app.url(&url)).header("if-none-match", value).send();
    assert_eq!(get_with(format!("W/{current}")).await.unwrap().status(), 304, "weak comparison");
    assert_eq!(get_with(format!("\"other\", {current}")).await.unwrap().status(), 304, "a list");
    assert_eq!(get_with("*".into()).await.unwrap().status(), 304);
    assert_eq!(write("Weak", format!("W/{current}")).await.unwrap().status(), 412, "a weak tag never matches");
    assert_eq!(write("Listed", format!("\"other\", {current}")).await.unwrap().status(), 200, "a list");
    // If-None-Match on a PUT: `*` creates only; a tag refuses to replace that version.
    let put_unless = |target: String, value: &'static str| {
        app.client
            .put(app.url(&target))
            .bearer_auth(&app.publish_key)
            .header("if-none-match", value)
            .json(&json!({"name": "Only if new", "description": "d"}))
            .send()
    };
    assert_eq!(put_unless(url.clone(), "*").await.unwrap().status(), 412, "exists already");
    assert_eq!(
        put_unless("/organizations/00000000-0000-4000-8000-0000000000c2".to_string(), "*").await.unwrap().status(),
        201,
        "new"
    );
    assert_eq!(app.get_json(&url).await["name"], "Listed");

    // A list page has a weak ETag of its own: 304 until anything on it changes.
    let page = app.get("/organizations?per_page=5").await;
    let tag = page.headers()["etag"].to_str().unwrap().to_string();
    assert!(tag.starts_with("W/\""), "{tag}");
    let list_with =
        |value: String| app.client.get(app.url("/organizations?per_page=5")).header("if-none-match", value).send();
    let r = list_with(tag.clone()).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["etag"].to_str().unwrap()), (304, tag.as_str()));
    let strong_twin = tag.trim_start_matches("W/").to_string();
    assert_eq!(list_with(strong_twin).await.unwrap().status(), 304, "weak comparison ignores W/ on either side");
    assert_eq!(
        write("Changed", app.get(&url).await.headers()["etag"].to_str().unwrap().to_string()).await.unwrap().status(),
        200
    );
    let r = list_with(tag.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "the page changed");
    assert_ne!(r.headers()["etag"].to_str().unwrap(), tag);
});

store_test!(deleting_cascades_details_and_refuses_referenced_entities, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Pantry")).await;
    let r = app.delete(&format!("/organizations/{O1}")).await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(problem["referenced_by"][0].as_str().unwrap().starts_with("service"), "{problem}");

    let before = app.db.last_sequence().await.unwrap();
    assert_eq!(app.delete(&format!("/services/{S1}")).await.status(), 204);
    assert_eq!(
        app.get("/phones/00000000-0000-4000-8000-0000000000a1").await.status(),
        404,
        "phone went with its service"
    );
    let events = app.events_after(before).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in ["service.deleted", "phone.deleted", "schedule.deleted", "organization.updated"] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    let tombstone = events.iter().find(|e| e["type"] == "service.deleted").unwrap();
    assert_eq!(tombstone["data"], json!({"id": S1, "deleted": true}));
    assert_eq!(app.delete(&format!("/services/{S1}")).await.status(), 404);
    assert_eq!(app.delete(&format!("/organizations/{O1}")).await.status(), 204);
});

store_test!(search_follows_renames_and_deletes_and_ignores_other_changes, |app| async move {
    let found = |q: &'static str| {
        let app = &app;
        async move { app.get_json(&format!("/services?search={q}")).await["total_items"].as_i64().unwrap() }
    };
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Riverside Pantry")).await;
    assert_eq!((found("riverside").await, found("hilltop").await), (1, 0));
    // A change that leaves the service's words alone (a phone inside it) leaves its search entry alone.
    let mut body = service_body(S1, O1, "Riverside Pantry");
    body["phones"][0]["number"] = json!("555-0199");
    app.put_ok(&format!("/services/{S1}"), &body).await;
    assert_eq!((found("riverside").await, found("pantry").await), (1, 1));
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Hilltop Kitchen")).await;
    assert_eq!((found("riverside").await, found("hilltop").await), (0, 1), "a rename is searchable at once");
    assert_eq!(found("groceries").await, 1, "the description's words stay");
    assert_eq!(app.delete(&format!("/services/{S1}")).await.status(), 204);
    assert_eq!((found("hilltop").await, found("groceries").await), (0, 0));
    search_index_matches_the_records(&app).await;
});

/// On SQLite: FTS5 compares its index with the content of `records` (rank 1: the external content too), and
/// no change is left queued for it (every transaction applies its queue before committing).
async fn search_index_matches_the_records(app: &crate::helpers::TestApp) {
    if app.database_url.starts_with("sqlite") {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&app.database_url).await.expect("connect to the test database");
        sqlx::query("INSERT INTO records_fts (records_fts, rank) VALUES ('integrity-check', 1)")
            .execute(&pool)
            .await
            .expect("the full-text index matches the records");
        let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records_fts_queue").fetch_one(&pool).await.unwrap();
        assert_eq!(queued, 0, "search-index changes left queued after their commit");
        pool.close().await;
    }
}

store_test!(search_stays_right_when_writes_share_a_transaction, |app| async move {
    // 45 writers at once, so writes share group transactions: each of 15 organizations is created, renamed and
    // deleted or renamed again, in whatever order the group commits them; every fifth write is refused (a
    // service of a missing organization), which rolls its group back and runs it again with a savepoint around
    // each write, so the refused one's queued index changes roll back with it. The search index must follow
    // the committed rows exactly.
    let id = |i: usize| format!("00000000-0000-4000-8000-{:012}", 2000 + i);
    let missing_org = "00000000-0000-4000-8000-999999999999";
    futures::future::join_all((0..15).map(|i| {
        let app = &app;
        async move {
            app.put_ok(&format!("/organizations/{}", id(i)), &org_body(&id(i), &format!("Marigold {i}"))).await;
        }
    }))
    .await;
    let (transactions_before, _) = app.db.group_commit_stats();
    let answers = futures::future::join_all((0..45).map(|n| {
        let app = &app;
        async move {
            let i = n % 15;
            if n % 5 == 0 {
                let r =
                    app.put(&format!("/services/{}", id(100 + n)), &service_body(&id(100 + n), missing_org, "x")).await;
                return r.status().as_u16();
            }
            match n / 15 {
                0 => app.put(&format!("/organizations/{}", id(i)), &org_body(&id(i), &format!("Heliotrope {i}"))).await,
                _ if i % 2 == 0 => app.delete(&format!("/organizations/{}", id(i))).await,
                _ => app.put(&format!("/organizations/{}", id(i)), &org_body(&id(i), &format!("Zinnia {i}"))).await,
            }
            .status()
            .as_u16()
        }
    }))
    .await;
    assert!(answers.iter().enumerate().all(|(n, s)| if n % 5 == 0 { *s == 422 } else { *s < 300 || *s == 404 }));
    let (transactions_after, _) = app.db.group_commit_stats();
    assert!(transactions_after - transactions_before < 36, "36 accepted writes shared no transaction");
    let mut live: Vec<String> = Vec::new();
    for i in 0..15 {
        let r = app.get(&format!("/organizations/{}", id(i))).await;
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            live.push(v["name"].as_str().unwrap().split(' ').next().unwrap().to_lowercase());
        }
    }
    for word in ["marigold", "heliotrope", "zinnia"] {
        let found = app.get_json(&format!("/organizations?search={word}&per_page=50")).await["total_items"].as_u64();
        let expected = live.iter().filter(|w| *w == word).count() as u64;
        assert_eq!(found, Some(expected), "organizations named {word}*: {live:?}");
    }
    search_index_matches_the_records(&app).await;
});

store_test!(search_filters_and_paging_combine, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let o2 = "00000000-0000-4000-8000-000000000002";
    app.put_ok(&format!("/organizations/{o2}"), &org_body(o2, "Legal Aid Society")).await;
    for i in 0..7 {
        let id = format!("00000000-0000-4000-8000-1000000000{i:02}");
        let (org, name) = if i < 5 { (O1, format!("Pantry {i}")) } else { (o2, format!("Tenant rights clinic {i}")) };
        let mut body = json!({"id": id, "organization_id": org, "name": name, "status": "active"});
        if i < 5 {
            body["description"] = json!("free groceries");
        }
        app.put_ok(&format!("/services/{id}"), &body).await;
    }
    let page = app.get_json("/services?search=groceries&per_page=2&page=3").await;
    assert_eq!(page["total_items"], 5);
    assert_eq!(page["total_pages"], 3);
    assert_eq!(page["size"], 1);
    assert_eq!(page["last_page"], true);
    assert_eq!(page["first_page"], false);
    let page = app.get_json(&format!("/services?organization_id={o2}&search=clinic")).await;
    assert_eq!(page["total_items"], 2);
    let page = app.get_json(&format!("/services?organization_id={o2}&search=groceries")).await;
    assert_eq!(page["total_items"], 0, "filters are ANDed");
    assert_eq!(page["empty"], true);
    let beyond = app.get_json("/services?page=9").await;
    assert_eq!(beyond["size"], 0);
    for bad in [
        "page=0",
        "per_page=0",
        "per_page=100000",
        "page=x",
        "organization_id=nope",
        "format=xml",
        "modified_after=yesterday",
    ] {
        let r = app.get(&format!("/services?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let ndjson = app.get("/services?format=ndjson&search=pantry").await;
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let text = ndjson.text().await.unwrap();
    assert_eq!(text.lines().count(), 5);
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    let post = app.post_json("/services", &json!({"search": "clinic"})).await;
    assert_eq!(post["total_items"], 2);
    // Where the body and the query string both name a parameter, the query string wins.
    let both = app.post_json("/services?search=pantry&per_page=2", &json!({"search": "clinic", "per_page": 1})).await;
    assert_eq!((both["total_items"].as_i64(), both["size"].as_i64()), (Some(5), Some(2)), "{both}");
    // A search body names only this list's parameters, each of its type (numbers may come as text).
    let typed = app.post_json("/services", &json!({"search": "clinic", "per_page": "1", "page": 2})).await;
    assert_eq!((typed["total_items"].as_i64(), typed["page_number"].as_i64()), (Some(2), Some(2)), "{typed}");
    // Every filter a GET of that list reads, whatever the list (a phone list reads `service_id` too).
    let phones = app.post_json("/phones", &json!({"service_id": "00000000-0000-4000-8000-000000000999"})).await;
    assert_eq!(phones["total_items"], 0, "{phones}");
    for (body, pointer) in [
        (json!({"serch": "clinic"}), "/serch"),
        (json!({"search": ["clinic"]}), "/search"),
        (json!({"search": 5}), "/search"),
        (json!({"per_page": {"n": 1}}), "/per_page"),
    ] {
        let r = app.client.post(app.url("/services")).json(&body).send().await.unwrap();
        crate::helpers::assert_problem_at(r, 422, pointer).await;
    }
    // A form is not JSON: said so (415), not read as malformed JSON.
    let form = app.client.post(app.url("/services")).header("content-type", "application/x-www-form-urlencoded");
    let r = form.body("search=clinic").send().await.unwrap();
    assert_eq!(r.status(), 415);
});

store_test!(modified_after_includes_the_boundary, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let list = app.get_json("/organizations?per_page=1").await;
    assert_eq!(list["total_items"], 1);
    let events = app.events_after(0).await;
    let at = events.last().unwrap()["occurred_at"].as_str().unwrap().to_string();
    let same = app.get_json(&format!("/organizations?modified_after={at}")).await;
    assert_eq!(same["total_items"], 1, "on or after");
    let later = chrono::DateTime::parse_from_rfc3339(&at).unwrap() + chrono::Duration::microseconds(1);
    let after =
        app.get_json(&format!("/organizations?modified_after={}", later.to_rfc3339().replace('+', "%2B"))).await;
    assert_eq!(after["total_items"], 0);
});

store_test!(generated_directory_is_served_per_the_compiled_schemas, |app| async move {
    let opts = hsda::generate::GenerateOptions { services: 40, seed: 7, ..Default::default() };
    let rows: Vec<_> =
        hsda::generate::generate(&opts).enumerate().map(|(i, (t, row))| (t, row, format!("row {i}"))).collect();
    let progress = |_: &str, _: u64, _: u64| {};
    app.db.import(rows, true, &progress).await.expect("generated data imports strictly");
    for (list_path, list_schema, detail_schema) in [
        ("/services?per_page=40", "service_list", "service"),
        ("/organizations?per_page=40", "organization_list", "organization"),
        ("/service_at_locations?per_page=100", "service_at_location_list", "service_at_location"),
    ] {
        let page = app.get_json(list_path).await;
        assert!(page["total_items"].as_u64().unwrap() > 0, "{list_path}");
        let plural = list_path.split('?').next().unwrap();
        for item in page["contents"].as_array().unwrap() {
            assert_valid(list_schema, item);
            let doc = app.get_json(&format!("{plural}/{}", item["id"].as_str().unwrap())).await;
            assert_valid(detail_schema, &doc);
        }
    }
    let full = app.get_json("/services?full=true&per_page=10").await;
    for item in full["contents"].as_array().unwrap() {
        assert_valid("service", item);
    }
    let term = app.get_json("/taxonomy_terms?per_page=1").await["contents"][0]["id"].as_str().unwrap().to_string();
    let tagged = app.get_json(&format!("/services?taxonomy_term_id={term}&per_page=100")).await;
    let every = app.get_json("/services?per_page=100").await;
    assert!(tagged["total_items"].as_u64().unwrap() <= every["total_items"].as_u64().unwrap());
    // The import is one transaction: its search entries are applied once, before it commits.
    search_index_matches_the_records(&app).await;
});

store_test!(concurrent_writes_share_commits_and_a_refused_one_fails_alone, |app| async move {
    // 60 writers at once: every third PUTs a service of an organization that does not exist. The writes share
    // transactions (group commit); each refused one must roll back alone and leave its neighbours intact.
    let before = app.db.last_sequence().await.unwrap();
    let (transactions_before, _) = app.db.group_commit_stats();
    let id = |i: usize| format!("00000000-0000-4000-8000-{:012}", 1000 + i);
    let missing_org = "00000000-0000-4000-8000-999999999999";
    let answers = futures::future::join_all((0..60).map(|i| {
        let app = &app;
        async move {
            let r = if i % 3 == 0 {
                app.put(&format!("/services/{}", id(i)), &service_body(&id(i), missing_org, "Orphan")).await
            } else {
                app.put(&format!("/organizations/{}", id(i)), &org_body(&id(i), &format!("Org {i}"))).await
            };
            (i, r.status().as_u16(), r.text().await.unwrap())
        }
    }))
    .await;
    for (i, status, body) in &answers {
        if i % 3 == 0 {
            assert_eq!(*status, 422, "write {i}: {body}");
            assert!(body.contains("/organization_id"), "write {i}: {body}");
        } else {
            assert_eq!(*status, 201, "write {i}: {body}");
        }
    }
    let (transactions_after, _) = app.db.group_commit_stats();
    assert!(
        transactions_after - transactions_before < 40,
        "40 accepted writes took {} transactions: none were grouped",
        transactions_after - transactions_before
    );

    // Exactly one `organization.created` per accepted write, nothing of the refused ones, no gap.
    let events = app.events_after(before).await;
    let sequences: Vec<i64> = events.iter().map(|e| e["sequence"].as_i64().unwrap()).collect();
    assert_eq!(sequences, (before + 1..=before + 40).collect::<Vec<_>>(), "gap-free, in order");
    let mut created: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "organization.created")
        .map(|e| e["object_id"].as_str().unwrap().to_string())
        .collect();
    created.sort();
    let expected: Vec<String> = (0..60).filter(|i| i % 3 != 0).map(id).collect();
    assert_eq!(created, expected);
    // A refused write left no row behind: once its organization exists, the same PUT creates (201).
    app.put_ok(&format!("/organizations/{missing_org}"), &org_body(missing_org, "Late")).await;
    for i in (0..60).filter(|i| i % 3 == 0) {
        let r = app.put(&format!("/services/{}", id(i)), &service_body(&id(i), missing_org, "Orphan")).await;
        assert_eq!(r.status(), 201, "refused write {i} left a row behind");
    }
});

store_test!(concurrent_puts_creating_the_same_id_all_succeed, |app| async move {
    // Eight clients PUT the same new organization at once, for ten ids: one creates, the others replace,
    // never a 500 (on PostgreSQL the losers of the insert race used to fail on the unique key).
    for n in 0..10 {
        let id = format!("00000000-0000-4000-8000-0000000c{n:04}");
        let body = json!({ "name": "Raced", "description": "eight writers at once" });
        let path = format!("/organizations/{id}");
        let answers = futures::future::join_all((0..8).map(|_| app.put(&path, &body))).await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        // Created or replaced is decided inside each write's transaction: one 201, the rest 200.
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "PUT {id}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 7, "PUT {id}: {statuses:?}");
        let created = app.events_after(0).await;
        let created = created.iter().filter(|e| e["type"] == "organization.created" && e["object_id"] == id.as_str());
        assert_eq!(created.count(), 1, "one organization.created for {id}");
    }
});

/// The ids of the services a filtered list page shows.
async fn service_ids(app: &crate::helpers::TestApp, query: &str) -> Vec<String> {
    let page = app.get_json(&format!("/services?{query}&per_page=50")).await;
    page["contents"].as_array().expect("contents").iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

store_test!(filters_follow_a_document_as_it_changes_and_goes, |app| async move {
    let o2 = "00000000-0000-4000-8000-000000000002";
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    app.put_ok(&format!("/organizations/{o2}"), &org_body(o2, "Legal Aid Society")).await;
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    assert_eq!(service_ids(&app, &format!("organization_id={O1}")).await, [S1]);

    // A root matches a filter on its own id (not stored as a facet of itself).
    let page = app.get_json(&format!("/organizations?organization_id={O1}")).await;
    assert_eq!(page["total_items"], 1);
    assert_eq!(page["contents"][0]["id"], O1);
    assert_eq!(service_ids(&app, &format!("service_id={S1}")).await, [S1]);

    // Moving the service: the old organization's filter loses it, the new one's finds it.
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, o2, "Community Pantry")).await;
    assert!(service_ids(&app, &format!("organization_id={O1}")).await.is_empty());
    assert_eq!(service_ids(&app, &format!("organization_id={o2}")).await, [S1]);
    // An update that changes no facet keeps them.
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, o2, "Community Pantry, renamed")).await;
    assert_eq!(service_ids(&app, &format!("organization_id={o2}")).await, [S1]);

    // Deleted and created again under the first organization: nothing of its old facets is left behind.
    assert_eq!(app.delete(&format!("/services/{S1}")).await.status(), 204);
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    assert!(service_ids(&app, &format!("organization_id={o2}")).await.is_empty());
    assert_eq!(service_ids(&app, &format!("organization_id={O1}")).await, [S1]);
});

/// Takes back what migration 17 added (the column; its table is made only if missing).
async fn forget_migration_17(pool: &sqlx::AnyPool) {
    sqlx::query("ALTER TABLE events DROP COLUMN changed_inside_only").execute(pool).await.unwrap();
}

/// Takes back what migrations 10 to 17 added, so that a store set back to an earlier schema version looks like
/// one written then (SQLite cannot add a column only if it is missing, so a migration cannot run twice).
async fn forget_migrations_from_10(pool: &sqlx::AnyPool) {
    forget_migration_17(pool).await;
    for index in [
        "deliveries_unordered_claimable_at",
        "deliveries_in_order_queue",
        "subscriptions_receiving_in_order",
        "deliveries_open_by_subscription_claimable_at",
    ] {
        sqlx::query(&format!("DROP INDEX {index}")).execute(pool).await.unwrap();
    }
    sqlx::query("ALTER TABLE deliveries DROP COLUMN in_order").execute(pool).await.unwrap();
    sqlx::query("ALTER TABLE deliveries DROP COLUMN manual_attempts").execute(pool).await.unwrap();
    sqlx::query("ALTER TABLE deliveries DROP COLUMN manual_due").execute(pool).await.unwrap();
    sqlx::query("ALTER TABLE deliveries DROP COLUMN lease_holder").execute(pool).await.unwrap();
    sqlx::query("ALTER TABLE subscriptions DROP COLUMN verification_holder").execute(pool).await.unwrap();
    sqlx::query("DROP TABLE IF EXISTS live_workers").execute(pool).await.unwrap();
    sqlx::query("ALTER TABLE subscriptions DROP COLUMN disabled_after_sequence").execute(pool).await.unwrap();
    sqlx::query("ALTER TABLE subscriptions DROP COLUMN all_tenants").execute(pool).await.unwrap();
}

store_test!(upgrading_a_store_drops_stored_self_facets_and_filters_still_match, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    // A store written before migration 6 held every root's own id as a facet of itself.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.database_url).await.expect("connect to the test database");
    sqlx::query(
        "INSERT INTO record_facets (kind, facet, value, id) VALUES ('organization', 'organization_id', $1, $1)",
    )
    .bind(O1)
    .execute(&pool)
    .await
    .unwrap();
    forget_migrations_from_10(&pool).await;
    sqlx::query("UPDATE meta SET value = '5' WHERE key = 'schema_version'").execute(&pool).await.unwrap();
    let upgraded = hsda::store::Db::connect(&app.database_url).await.expect("migrate to the current schema");
    upgraded.close().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM record_facets WHERE facet = kind || '_id' AND value = id")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "self facets are gone");
    let version: String =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'").fetch_one(&pool).await.unwrap();
    assert_eq!(version, "17", "migrated to the latest schema");
    pool.close().await;
    let page = app.get_json(&format!("/organizations?organization_id={O1}")).await;
    assert_eq!(page["total_items"], 1);
    // On SQLite the full-text index written before migration 9 (by triggers) goes on under the queue.
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Tool Library")).await;
    assert_eq!(app.get_json("/organizations?search=library").await["total_items"], 1);
    assert_eq!(app.get_json("/organizations?search=food").await["total_items"], 0);
    search_index_matches_the_records(&app).await;
});

/// A SQLite file from before migration 9 (its triggers wrote the full-text index directly), changed by such an
/// hsda, then opened by this one: the index written the old way goes on under the queue.
#[tokio::test]
async fn a_sqlite_store_indexed_by_the_old_triggers_keeps_its_search_through_migration_9() {
    let Some(mut old) = crate::helpers::TestApp::spawn(crate::helpers::Store::Sqlite).await else { return };
    old.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    old.stop().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&old.database_url).await.expect("connect to the test database");
    // Back to schema 8: no queue, and the triggers of migrations 1 and 7 (6 had dropped `records_by_id`).
    for sql in [
        "DROP TRIGGER records_fts_insert",
        "DROP TRIGGER records_fts_delete",
        "DROP TRIGGER records_fts_update",
        "DROP TABLE records_fts_queue",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    sqlx::raw_sql(include_str!("../../src/store/migrations/1_records_sqlite.sql")).execute(&pool).await.unwrap();
    sqlx::raw_sql(include_str!("../../src/store/migrations/7_search_text_unchanged_sqlite.sql"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DROP INDEX records_by_id").execute(&pool).await.unwrap();
    forget_migrations_from_10(&pool).await;
    sqlx::query("UPDATE meta SET value = '8' WHERE key = 'schema_version'").execute(&pool).await.unwrap();
    // A change made at schema 8: its trigger rewrites the index entry at once.
    sqlx::query("UPDATE records SET search_text = 'Seed Library' WHERE kind = 'organization' AND id = $1")
        .bind(O1)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let url = old.database_url.clone();
    let app = crate::helpers::TestApp::spawn_with(crate::helpers::Store::Sqlite, |c| c.database_url = url)
        .await
        .expect("the schema-8 file opens");
    let found = |q: &'static str| {
        let app = &app;
        async move { app.get_json(&format!("/organizations?search={q}")).await["total_items"].as_i64().unwrap() }
    };
    assert_eq!((found("library").await, found("food").await), (1, 0), "what schema 8 indexed");
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Tool Shed")).await;
    assert_eq!((found("shed").await, found("library").await, found("food").await), (1, 0, 0));
    search_index_matches_the_records(&app).await;
}

/// A database whose schema is newer than this build knows is refused, not written to.
#[tokio::test]
async fn a_store_from_a_newer_hsda_is_refused() {
    for store in [crate::helpers::Store::Sqlite, crate::helpers::Store::Postgres] {
        let Some((url, _dir)) = crate::helpers::fresh_database(store).await else { continue };
        hsda::store::Db::connect(&url).await.expect("a fresh store").close().await;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("connect to the test database");
        sqlx::query("UPDATE meta SET value = '99' WHERE key = 'schema_version'").execute(&pool).await.unwrap();
        pool.close().await;
        let refused = hsda::store::Db::connect(&url).await.err().expect("a schema from the future is refused");
        assert!(format!("{refused:#}").contains("schema version is 99"), "{refused:#}");
    }
}

/// PostgreSQL keeps a connection's plan of a prepared statement; planned on an empty table, a lookup by key is
/// a sequential scan for good. As the log grows past its first thresholds, the store refreshes the planner's
/// statistics itself instead of waiting for autovacuum.
#[tokio::test]
async fn a_growing_postgres_directory_gets_fresh_planner_statistics() {
    let Some(app) = crate::helpers::TestApp::spawn(crate::helpers::Store::Postgres).await else { return };
    let analyzed = || async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&app.database_url).await.expect("connect to the test database");
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_user_tables WHERE relname = 'records' AND last_analyze IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n == 1
    };
    assert!(!analyzed().await, "a new store has not been analyzed by hsda yet");
    let writes = futures::future::join_all((0..210).map(|i| {
        let app = &app;
        async move {
            let id = format!("00000000-0000-4000-8000-{:012}", 5000 + i);
            app.put_ok(&format!("/organizations/{id}"), &org_body(&id, &format!("Org {i}"))).await;
        }
    }));
    writes.await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !analyzed().await {
        assert!(std::time::Instant::now() < deadline, "no ANALYZE of records after 210 writes");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Several stores opening one new SQLite file at once (as processes starting together would): each migration
/// runs once, in one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_one_sqlite_file_at_once_all_open_it() {
    let Some((url, _dir)) = crate::helpers::fresh_database(crate::helpers::Store::Sqlite).await else { return };
    let opened = futures::future::join_all((0..4).map(|_| hsda::store::Db::connect(&url))).await;
    for db in opened {
        db.expect("every one opens the file").close().await;
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let version: String =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'").fetch_one(&pool).await.unwrap();
    assert_eq!(version, "17");
    let triggers: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'records_fts_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(triggers, 3);
    pool.close().await;
}

store_test!(ids_are_the_same_whatever_the_case_of_their_hex_digits, |app| async move {
    // RFC 9562: a UUID's hex digits are case-insensitive. One row, stored in lowercase, whichever is sent.
    let upper = "46481C31-8C5D-4E61-B145-9CA50CD94B9E";
    let lower = upper.to_ascii_lowercase();
    let r = app
        .client
        .put(app.url(&format!("/organizations/{upper}")))
        .bearer_auth(&app.publish_key)
        .json(&json!({"id": upper, "name": "Upper", "description": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .client
        .put(app.url(&format!("/organizations/{lower}")))
        .bearer_auth(&app.publish_key)
        .json(&json!({"name": "Lower", "description": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the same organization, replaced");
    let shown = app.get_json(&format!("/organizations/{upper}")).await;
    assert_eq!((shown["id"].as_str(), shown["name"].as_str()), (Some(lower.as_str()), Some("Lower")));
    // A reference in capitals points at the same row, and list filters compare the same way.
    let service = format!("/services/{}", "7E57C0DE-0000-4000-8000-000000000001");
    app.put_ok(&service, &json!({"name": "S", "status": "active", "organization_id": upper})).await;
    let listed = app.get_json(&format!("/services?organization_id={upper}")).await;
    assert_eq!(listed["total_items"], 1, "{listed}");
    assert_eq!(listed["contents"][0]["organization_id"], lower.as_str());
    assert_eq!(app.get_json("/organizations").await["total_items"], 1);
    // Nested children written all in capitals stay (their back references and ids match case aside), and
    // writing the same body again keeps them.
    let phone = "7E57C0DE-0000-4000-8000-0000000000F1";
    let body = json!({"id": upper, "name": "Upper", "description": "d",
                      "phones": [{"id": phone, "organization_id": upper, "number": "1"}]});
    for _ in 0..2 {
        app.put_ok(&format!("/organizations/{upper}"), &body).await;
        let shown = app.get_json(&format!("/organizations/{lower}")).await;
        let phones = shown["phones"].as_array().unwrap();
        assert_eq!(phones.len(), 1, "{shown}");
        assert_eq!(phones[0]["id"], phone.to_ascii_lowercase());
    }
    assert!(app.events_after(0).await.iter().all(|e| e["type"] != "phone.deleted"), "no phone was deleted");
});

store_test!(nulls_are_absent_and_one_body_names_each_row_once, |app| async move {
    // HSDS fields are typed and never nullable: a null is an absent field, never served back as null.
    let service = "7E57C0DE-0000-4000-8000-0000000000A1".to_ascii_lowercase();
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let body = json!({"name": "Null test", "status": "active", "organization_id": O1,
                      "alternate_name": null, "email": null, "minimum_age": null});
    app.put_ok(&format!("/services/{service}"), &body).await;
    let shown = app.get_json(&format!("/services/{service}")).await;
    for field in ["alternate_name", "email", "minimum_age"] {
        assert!(shown.get(field).is_none_or(|v| !v.is_null()), "{field} in {shown}");
    }
    // The same phone twice with different numbers: one would be lost silently, so the body is refused.
    let phone = "7e57c0de-0000-4000-8000-0000000000a2";
    let twice = json!({"name": "Twice", "status": "active", "organization_id": O1,
                       "phones": [{"id": phone, "number": "1"}, {"id": phone, "number": "2"}]});
    let r = app.put(&format!("/services/{service}"), &twice).await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/phones/1/number", "{problem}");
    assert_eq!(app.get_json(&format!("/services/{service}")).await["name"], "Null test", "nothing written");
    // Twice the same, it is one row.
    let same = json!({"name": "Same", "status": "active", "organization_id": O1,
                      "phones": [{"id": phone, "number": "1"}, {"id": phone, "number": "1"}]});
    app.put_ok(&format!("/services/{service}"), &same).await;
    assert_eq!(app.get_json(&format!("/services/{service}")).await["phones"].as_array().unwrap().len(), 1);
});

store_test!(the_official_full_service_example_keeps_every_row_it_repeats, |app| async move {
    // The example shows one phone under the service and again under its contact, one contact under the
    // service and under its service_at_location: each is one row, linked to every place it appears.
    let Some(hsds) = crate::helpers::hsds_dir() else { return };
    let text = std::fs::read_to_string(hsds.join("examples/service_full.json")).unwrap();
    let example: Value = serde_json::from_str(&text).unwrap();
    let id = example["id"].as_str().unwrap();
    let r = app.put(&format!("/services/{id}"), &example).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let shown = app.get_json(&format!("/services/{id}")).await;
    for list in ["phones", "contacts", "schedules", "service_areas", "languages"] {
        let want = example[list].as_array().map_or(0, Vec::len);
        let got = shown[list].as_array().map_or(0, Vec::len);
        assert_eq!(got, want, "{list}: {shown}");
    }
    let phone = example["phones"][0]["id"].as_str().unwrap();
    let row = app.get_json(&format!("/phones/{phone}")).await;
    assert_eq!(row["service_id"], id, "{row}");
    assert!(row["contact_id"].is_string(), "linked to its contact too: {row}");
});

store_test!(every_official_example_is_taken_whole_and_served_as_the_compiled_schemas_require, |app| async move {
    // The examples embed the rows they link to (`organization`, `program`, each capacity's `unit`, each
    // attribute's `taxonomy_term` with its `taxonomy_detail`, each link's `location`) without the fields that
    // hold their ids, and name hierarchy parents (`parent_organization_id`, `parent_id`) that no example holds.
    let Some(hsds) = crate::helpers::hsds_dir() else { return };
    let example = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(hsds.join("examples").join(name)).unwrap()).unwrap()
    };
    let service = example("service_full.json");
    app.put_ok(&format!("/services/{SERVICE}"), &service).await;
    let shown = app.get_json(&format!("/services/{SERVICE}")).await;
    assert_valid("service", &shown);
    assert_eq!(shown["organization"]["name"], service["organization"]["name"], "{shown}");
    assert_eq!(shown["program"]["name"], service["program"]["name"]);
    assert_eq!(shown["capacities"][0]["unit"], service["capacities"][0]["unit"]);
    let term = &shown["attributes"][0]["taxonomy_term"];
    assert_eq!(term["parent_id"], service["attributes"][0]["taxonomy_term"]["parent_id"]);
    let taxonomy = &service["attributes"][0]["taxonomy_term"]["taxonomy_detail"];
    assert_eq!(term["taxonomy_id"], taxonomy["id"], "{term}");
    assert_eq!(
        app.get_json(&format!("/taxonomies/{}", taxonomy["id"].as_str().unwrap())).await["name"],
        taxonomy["name"]
    );
    assert_eq!(
        shown["service_at_locations"][0]["location"]["name"],
        service["service_at_locations"][0]["location"]["name"]
    );
    // A row the example shows in several places (one phone under the service, its contact, its location and
    // its organization) is one row linked to each of them.
    let location = &service["service_at_locations"][0]["location"];
    for list in ["phones", "contacts", "schedules", "languages"] {
        let count = |doc: &Value| doc[list].as_array().map_or(0, Vec::len);
        assert_eq!(count(&shown["service_at_locations"][0]["location"]), count(location), "location {list}: {shown}");
    }
    // The organization came with its own children (as its copy in the service showed them).
    let org = app.get_json(&format!("/organizations/{ORG}")).await;
    assert_valid("organization", &org);
    assert_eq!(org["programs"][0]["id"], service["program"]["id"]);

    for (name, path, schema) in [
        ("organization_full.json", "organizations", Some("organization")),
        ("service_at_location_full.json", "service_at_locations", Some("service_at_location")),
        ("location.json", "locations", None),
        ("taxonomy.json", "taxonomies", None),
        ("taxonomy_term.json", "taxonomy_terms", None),
    ] {
        let body = example(name);
        let id = body["id"].as_str().unwrap();
        let r = app.put(&format!("/{path}/{id}"), &body).await;
        assert!(r.status().is_success(), "{name}: {}", r.text().await.unwrap());
        if let Some(schema) = schema {
            assert_valid(schema, &app.get_json(&format!("/{path}/{id}")).await);
        }
    }
    // Writing the location (or the organization) again keeps the rows it shares with the service.
    let again = app.get_json(&format!("/services/{SERVICE}")).await;
    let ids = |doc: &Value, list: &str| -> Vec<Value> {
        doc[list].as_array().into_iter().flatten().map(|row| row["id"].clone()).collect()
    };
    for list in ["phones", "contacts", "schedules"] {
        assert_eq!(ids(&again, list), ids(&shown, list), "{list} after the other examples (their fields may differ)");
        assert!(!ids(&again, list).is_empty(), "{list}");
    }
    let link = app.get_json("/service_at_locations/e94c9f38-1e8f-4564-91d4-d53501ab1765").await;
    assert_eq!(link["service"]["id"], SERVICE, "the link's service comes from the service it embeds: {link}");
    assert_valid("service", &app.get_json(&format!("/services/{SERVICE}")).await);
});

/// `writers` tasks, each `rounds` times creating a child row (`PUT` of `create(w, i)`: path and body, 201) and
/// then patching its parent (`patch(w, i)`, 200), all at once. Then every answer was the one expected, the
/// parent (`GET parent`) lists every child under `key`, and no `deleted` event was written.
async fn race_children_against_patches(
    app: &std::sync::Arc<crate::helpers::TestApp>,
    (writers, rounds): (usize, usize),
    create: fn(usize, usize) -> (String, Value),
    patch: fn(usize, usize) -> (String, Value),
    (parent, key, deleted): (&str, &str, &str),
) {
    let last = app.db.last_sequence().await.unwrap();
    let tasks = (0..writers).map(|w| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            for i in 0..rounds {
                let (path, body) = create(w, i);
                let r = app.put(&path, &body).await;
                if r.status() != 201 {
                    refused.push(format!("PUT {path}: {}", r.status()));
                }
                let (path, body) = patch(w, i);
                let r = app.patch(&path, &body).await;
                if r.status() != 200 {
                    refused.push(format!("PATCH {path}: {} {}", r.status(), r.text().await.unwrap_or_default()));
                }
            }
            refused
        })
    });
    let refused: Vec<String> = futures::future::join_all(tasks).await.into_iter().flat_map(|r| r.unwrap()).collect();
    assert!(refused.is_empty(), "{refused:#?}");
    let children = app.get_json(parent).await[key].as_array().unwrap().len();
    assert_eq!(children, writers * rounds, "every one of {parent}'s {key} is there");
    let deletes = app.events_after(last).await.into_iter().filter(|e| e["type"] == deleted).count();
    assert_eq!(deletes, 0, "no write deleted one of {parent}'s {key}");
}

store_test!(concurrent_writes_of_one_service_and_its_phones_lose_nothing_and_never_conflict, |app| async move {
    // Six writers each add phones to one service through /phones and PATCH the service's description in
    // between, without If-Match. Each PATCH merges with what the writes before it left: none is refused, and
    // none deletes a phone it did not see (on PostgreSQL a document compiled before another committer's phone
    // had committed once dropped it, and the next PATCH deleted the phone as left out).
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let mut service = service_body(S1, O1, "Pantry");
    service.as_object_mut().unwrap().remove("phones");
    app.put_ok(&format!("/services/{S1}"), &service).await;
    let (writers, rounds) = (6, 12);
    let app = std::sync::Arc::new(app);
    race_children_against_patches(
        &app,
        (writers, rounds),
        |w, i| {
            (
                format!("/phones/00000000-0000-4000-8000-0000000d{w:02}{i:02}"),
                json!({"number": "555", "service_id": S1}),
            )
        },
        |w, i| (format!("/services/{S1}"), json!({"description": format!("{w}/{i}")})),
        (&format!("/services/{S1}"), "phones", "phone.deleted"),
    )
    .await;

    // One level down: languages added to one phone while its number is PATCHed (the patch's merged phone
    // lists its languages, and replaces that set).
    const PHONE: &str = "00000000-0000-4000-8000-0000000d0000";
    race_children_against_patches(
        &app,
        (writers, rounds),
        |w, i| {
            (
                format!("/languages/00000000-0000-4000-8000-0000000e{w:02}{i:02}"),
                json!({"name": "Urdu", "phone_id": PHONE}),
            )
        },
        |w, i| (format!("/phones/{PHONE}"), json!({"number": format!("555-{w}{i}")})),
        (&format!("/phones/{PHONE}"), "languages", "language.deleted"),
    )
    .await;
});

store_test!(a_related_copy_creates_a_missing_row_and_never_edits_an_existing_one, |app| async move {
    let (unit, new_unit, service) = (
        "00000000-0000-4000-8000-00000000c0a1",
        "00000000-0000-4000-8000-00000000c0a2",
        "00000000-0000-4000-8000-00000000c0a3",
    );
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Org", "description": "d"})).await;
    app.put_ok(&format!("/units/{unit}"), &json!({"name": "Bed"})).await;
    let capacity =
        |id: &str, unit: Value| json!({"id": id, "available": 3, "updated": "2024-01-01T00:00:00Z", "unit": unit});
    let body = json!({"name": "Shelter", "status": "active", "organization_id": ORG, "capacities": [
        capacity("00000000-0000-4000-8000-00000000c0b1", json!({"id": unit, "name": "Renamed"})),
        capacity("00000000-0000-4000-8000-00000000c0b2", json!({"id": new_unit, "name": "Cot"})),
        capacity("00000000-0000-4000-8000-00000000c0b3", json!({"id": new_unit, "name": "Cot"})),
    ]});
    let last = app.db.last_sequence().await.unwrap();
    app.put_ok(&format!("/services/{service}"), &body).await;
    assert_eq!(app.get_json(&format!("/units/{unit}")).await["name"], "Bed", "an existing row is not edited");
    assert_eq!(app.get_json(&format!("/units/{new_unit}")).await["name"], "Cot", "a missing one is created");
    let types: Vec<String> =
        app.events_after(last).await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types.iter().filter(|t| *t == "unit.created").count(), 1, "{types:?}");
    assert!(!types.contains(&"unit.updated".to_string()), "{types:?}");
    let shown = app.get_json(&format!("/services/{service}")).await;
    assert_valid("service", &shown);
    let units: Vec<&Value> = shown["capacities"].as_array().unwrap().iter().map(|c| &c["unit_id"]).collect();
    assert_eq!(units, [unit, new_unit, new_unit]);

    // A capacity must have its unit; a copy must agree with the link it sits beside.
    let without = json!({"name": "S", "status": "active", "capacities": [
        {"id": "00000000-0000-4000-8000-00000000c0b4", "available": 1, "updated": "2024-01-01T00:00:00Z"}]});
    crate::helpers::assert_problem_at(
        app.put(&format!("/services/{service}"), &without).await,
        422,
        "/capacities/0/unit_id",
    )
    .await;
    let mut disagreeing = capacity("00000000-0000-4000-8000-00000000c0b5", json!({"id": new_unit}));
    disagreeing["unit_id"] = json!(unit);
    let body = json!({"name": "S", "status": "active", "capacities": [disagreeing]});
    crate::helpers::assert_problem_at(
        app.put(&format!("/services/{service}"), &body).await,
        422,
        "/capacities/0/unit/id",
    )
    .await;
    // A copy of a missing row that cannot stand on its own is refused where it is, and nothing is written.
    let body = json!({"name": "S", "status": "active",
                      "organization": {"id": "00000000-0000-4000-8000-00000000c0a4", "name": "No description"}});
    crate::helpers::assert_problem_at(
        app.put(&format!("/services/{service}"), &body).await,
        422,
        "/organization/description",
    )
    .await;
    assert_eq!(app.get_json(&format!("/services/{service}")).await["name"], "Shelter");

    // A PATCH of the link moves it: the stored copy beside it is a view, not the patch's.
    let other = "00000000-0000-4000-8000-00000000c0a5";
    app.put_ok(&format!("/organizations/{other}"), &json!({"name": "Other", "description": "d"})).await;
    let r = app.patch(&format!("/services/{service}"), &json!({"organization_id": other})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(app.get_json(&format!("/services/{service}")).await["organization"]["name"], "Other");
    for edit in [json!({"organization": {"name": "X"}}), json!({"organization": {"id": other, "name": "X"}})] {
        let r = app.patch(&format!("/services/{service}"), &edit).await;
        let problem = crate::helpers::assert_problem_at(r, 422, "/organization").await;
        assert!(problem.to_string().contains("/organizations/{id}"), "{problem}");
    }
    assert_eq!(app.get_json(&format!("/organizations/{other}")).await["name"], "Other");
    // Sending back the copy as GET shows it is no edit.
    let shown = app.get_json(&format!("/services/{service}")).await;
    let echo = json!({"organization": shown["organization"], "description": "echoed"});
    let r = app.patch(&format!("/services/{service}"), &echo).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A detail's PATCH keeps its link and drops the stored copy beside it; `"id": null` keeps the id.
    let capacity_path = "/service_capacities/00000000-0000-4000-8000-00000000c0b2";
    let r = app.patch(capacity_path, &json!({"available": 7, "id": null})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let patched = app.get_json(capacity_path).await;
    assert_eq!((patched["available"].as_i64(), patched["unit_id"].as_str()), (Some(7), Some(new_unit)), "{patched}");
    assert_eq!(app.get_json(&format!("/units/{new_unit}")).await["name"], "Cot");
    crate::helpers::assert_problem_at(app.patch(capacity_path, &json!({"id": unit})).await, 422, "/id").await;

    // A hierarchy's parent may live outside the directory.
    let term = json!({"name": "Food", "description": "d", "parent_id": "00000000-0000-4000-8000-00000000c0a6"});
    app.put_ok("/taxonomy_terms/00000000-0000-4000-8000-00000000c0a7", &term).await;

    // A unit in use is kept: the capacities measured in it are the service's, not the unit's.
    let r = app.delete(&format!("/units/{unit}")).await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(problem.to_string().contains("00000000-0000-4000-8000-00000000c0b1"), "{problem}");
    assert_eq!(app.get_json(&format!("/services/{service}")).await["capacities"].as_array().unwrap().len(), 3);
    assert_eq!(app.delete(&format!("/services/{service}")).await.status(), 204);
    assert_eq!(app.delete(&format!("/units/{unit}")).await.status(), 204, "free once its capacities went");

    // Deleting a term or a location removes the rows that only link to it (an attribute, a
    // service_at_location), and leaves the service.
    let (term, location, link, attribute) = (
        "00000000-0000-4000-8000-00000000c0c1",
        "00000000-0000-4000-8000-00000000c0c2",
        "00000000-0000-4000-8000-00000000c0c3",
        "00000000-0000-4000-8000-00000000c0c4",
    );
    app.put_tagged_and_located_service(service, term, location, attribute, link).await;
    assert_eq!(app.delete(&format!("/taxonomy_terms/{term}")).await.status(), 204);
    assert_eq!(app.delete(&format!("/locations/{location}")).await.status(), 204);
    assert_eq!(app.get(&format!("/attributes/{attribute}")).await.status(), 404);
    assert_eq!(app.get(&format!("/service_at_locations/{link}")).await.status(), 404);
    let shown = app.get_json(&format!("/services/{service}")).await;
    assert_eq!(
        (shown["attributes"].as_array().unwrap().len(), shown["service_at_locations"].as_array().unwrap().len()),
        (0, 0)
    );

    // A phone of both a service and a location: the location's body keeps its link to the service, and
    // leaving it out of the location's phones only unlinks it there; left out by its last parent, it goes.
    let (hall, phone) = ("00000000-0000-4000-8000-00000000c0d1", "00000000-0000-4000-8000-00000000c0d2");
    app.put_ok(&format!("/locations/{hall}"), &json!({"location_type": "physical", "name": "Hall"})).await;
    app.put_ok(&format!("/phones/{phone}"), &json!({"number": "1", "service_id": service})).await;
    let body = json!({"location_type": "physical", "name": "Hall", "phones": [{"id": phone, "number": "2"}]});
    app.put_ok(&format!("/locations/{hall}"), &body).await;
    let row = app.get_json(&format!("/phones/{phone}")).await;
    let links =
        |row: &Value| (row["service_id"].as_str().map(str::to_string), row["location_id"].as_str().map(str::to_string));
    assert_eq!(links(&row), (Some(service.to_string()), Some(hall.to_string())), "{row}");
    assert_eq!(row["number"], "2");
    let body = json!({"location_type": "physical", "name": "Hall", "phones": []});
    app.put_ok(&format!("/locations/{hall}"), &body).await;
    let row = app.get_json(&format!("/phones/{phone}")).await;
    assert_eq!(links(&row), (Some(service.to_string()), None), "{row}");
    // Deleting the location takes its own phones, and only unlinks one its service keeps.
    let (own, language) = ("00000000-0000-4000-8000-00000000c0d3", "00000000-0000-4000-8000-00000000c0d4");
    let body = json!({"location_type": "physical", "name": "Hall", "phones": [
        {"id": phone, "number": "2", "languages": [{"id": language, "name": "Urdu"}]}, {"id": own, "number": "3"}]});
    app.put_ok(&format!("/locations/{hall}"), &body).await;
    assert_eq!(app.delete(&format!("/locations/{hall}")).await.status(), 204);
    assert_eq!(app.get(&format!("/phones/{own}")).await.status(), 404);
    let row = app.get_json(&format!("/phones/{phone}")).await;
    assert_eq!(links(&row), (Some(service.to_string()), None), "{row}");
    assert_eq!(app.get_json(&format!("/languages/{language}")).await["phone_id"], phone, "what the phone owns stays");
    let body = json!({"name": "Pantry", "status": "active", "phones": []});
    app.put_ok(&format!("/services/{service}"), &body).await;
    assert_eq!(app.get(&format!("/phones/{phone}")).await.status(), 404, "no parent left");

    // A link to a row that is gone (a lenient import keeps one) is no parent: the phone goes.
    let imported = "00000000-0000-4000-8000-00000000c0d5";
    let row = json!({"id": imported, "number": "4", "service_id": service,
                     "location_id": "00000000-0000-4000-8000-00000000c0d6"});
    let rows =
        vec![(hsda::hsds::catalog::table("phone").unwrap(), row.as_object().unwrap().clone(), "test".to_string())];
    app.db.import(rows, false, &|_: &str, _: u64, _: u64| {}).await.expect("a lenient import");
    app.put_ok(&format!("/services/{service}"), &body).await;
    assert_eq!(app.get(&format!("/phones/{imported}")).await.status(), 404, "no parent left that exists");
});

store_test!(hsda_keeps_a_services_last_modified_as_the_time_of_its_latest_change, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let mut body = service_body(S1, O1, "Community Pantry");
    body["last_modified"] = json!("2001-01-01T00:00:00Z");
    let created = app.put_ok(&format!("/services/{S1}"), &body).await;
    let events = app.events_after(0).await;
    let write_time = events.last().unwrap()["occurred_at"].as_str().unwrap().to_string();
    assert_eq!(created["last_modified"], write_time.as_str(), "the writer's value is not kept");
    assert_valid("service", &created);
    let org = app.get_json(&format!("/organizations/{O1}?full_service=true")).await;
    let listed = app.get_json("/organizations?full_service=true").await;
    assert_eq!(listed["contents"][0]["services"][0]["last_modified"], write_time.as_str(), "full_service implies full");
    assert_eq!(org["services"][0]["last_modified"], write_time.as_str(), "embedded copies agree");

    // A GET, edit-nothing, PUT back is no change: no event, the same time.
    let last = app.db.last_sequence().await.unwrap();
    let same = app.put_ok(&format!("/services/{S1}"), &created).await;
    assert_eq!(app.db.last_sequence().await.unwrap(), last, "nothing changed");
    assert_eq!(same["last_modified"], created["last_modified"]);

    // A change to something the service embeds (its phone, through the phone's own path) moves it, and
    // `modified_after` at that time finds the service.
    let phone = "00000000-0000-4000-8000-0000000000a1";
    assert_eq!(app.patch(&format!("/phones/{phone}"), &json!({"number": "555-0199"})).await.status(), 200);
    let changed = app.get_json(&format!("/services/{S1}")).await;
    let moved = changed["last_modified"].as_str().unwrap().to_string();
    assert!(moved > write_time, "{moved} after {write_time}");
    let event = app.events_after(last).await.into_iter().find(|e| e["type"] == "service.updated").unwrap();
    assert_eq!(event["data"]["last_modified"], moved.as_str(), "the event carries the document as served");
    assert_eq!(event["occurred_at"], moved.as_str());
    let since = app.get_json(&format!("/services?modified_after={moved}")).await;
    assert_eq!(since["total_items"], 1);
    let minimal = app.get_json("/services?minimal=true").await;
    assert_eq!(minimal["contents"][0]["last_modified"], moved.as_str());

    // The data package export carries the document's time, though the row never held it.
    let out = tempfile::tempdir().unwrap();
    hsda::bulk::export::export_datapackage(&app.db, out.path()).await.expect("export");
    let csv = std::fs::read_to_string(out.path().join("services.csv")).unwrap();
    assert!(csv.contains(&moved), "{csv}");
});

store_test!(an_organization_body_upserts_its_services_and_never_deletes_one_it_leaves_out, |app| async move {
    const S2: &str = "00000000-0000-4000-8000-000000000012";
    let mut body = org_body(O1, "Food Bank");
    let mut service = service_body(S1, O1, "Community Pantry");
    service.as_object_mut().unwrap().remove("organization_id");
    body["services"] = json!([service]);
    let r = app.put(&format!("/organizations/{O1}"), &body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let stored = app.get_json(&format!("/services/{S1}")).await;
    assert_eq!(stored["organization_id"], O1, "the back reference is filled in");
    assert_eq!(stored["phones"][0]["number"], "555-0100", "the service's own children come too");
    let types: Vec<String> =
        app.events_after(0).await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert!(types.iter().any(|t| t == "service.created"), "{types:?}");
    assert!(types.iter().any(|t| t == "phone.created"), "{types:?}");

    // What a GET serves, PUT back, changes nothing.
    let last = app.db.last_sequence().await.unwrap();
    let served = app.get_json(&format!("/organizations/{O1}")).await;
    assert_eq!(served["services"][0]["id"], S1);
    assert_eq!(app.put(&format!("/organizations/{O1}"), &served).await.status(), 200);
    assert_eq!(app.db.last_sequence().await.unwrap(), last, "a round trip is no change");

    // Services left out (or an empty list) are not deleted: they are entities of their own.
    app.put_ok(
        &format!("/organizations/{O1}"),
        &json!({"id": O1, "name": "Food Bank", "description": "x", "services": []}),
    )
    .await;
    assert_eq!(app.get(&format!("/services/{S1}")).await.status(), 200);

    // A service naming another organization is refused where it says so, and nothing is written.
    let mut wrong = org_body(O1, "Food Bank");
    wrong["services"] =
        json!([{ "id": S2, "name": "Elsewhere", "organization_id": "00000000-0000-4000-8000-000000000099" }]);
    let r = app.put(&format!("/organizations/{O1}"), &wrong).await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/services/0/organization_id", "{problem}");
    assert_eq!(app.get(&format!("/services/{S2}")).await.status(), 404);

    // A merge patch that gives services upserts them too.
    let r = app
        .patch(
            &format!("/organizations/{O1}"),
            &json!({"services": [{ "id": S2, "name": "Second Pantry", "status": "active" }]}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(app.get_json(&format!("/services/{S2}")).await["organization_id"], O1);
    assert_eq!(app.get_json("/services").await["total_items"], 2, "the first service is still there");
});

store_test!(search_results_come_best_match_first, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let service = |n: u32, name: &str, description: &str| {
        json!({ "id": format!("00000000-0000-4000-8000-0000000001{n:02}"), "organization_id": O1, "name": name,
                "status": "active", "description": description })
    };
    // By name, the weak match comes first ("Aardvark" < "Zebra"); by relevance, last.
    let weak = service(
        1,
        "Aardvark Legal Aid",
        "Lawyers for tenants; also some housing questions, among many other legal matters of every kind",
    );
    let strong = service(2, "Zebra Housing", "Housing search, housing vouchers and emergency housing");
    let other = service(3, "Midway Pantry", "Groceries");
    for body in [&weak, &strong, &other] {
        app.put_ok(&format!("/services/{}", body["id"].as_str().unwrap()), body).await;
    }
    let ids = |page: &Value| -> Vec<String> {
        page["contents"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    };
    let found = app.get_json("/services?search=housing").await;
    assert_eq!(found["total_items"], 2);
    assert_eq!(ids(&found), [strong["id"].as_str().unwrap(), weak["id"].as_str().unwrap()], "{found}");
    // Paging keeps the ranking: one per page.
    let first = app.get_json("/services?search=housing&per_page=1&page=1").await;
    let second = app.get_json("/services?search=housing&per_page=1&page=2").await;
    assert_eq!([ids(&first), ids(&second)].concat(), ids(&found));
    // So do the ndjson stream and POST search.
    let ndjson = app.get("/services?search=housing&format=ndjson").await.text().await.unwrap();
    let streamed: Vec<String> =
        ndjson.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(streamed, ids(&found));
    // Where no name holds the word, the text that holds it more often comes first (same length here).
    let once = service(4, "Alpha Kitchen", "meals served daily right here");
    let often = service(5, "Beta Kitchen", "meals meals meals meals meals");
    for body in [&once, &often] {
        app.put_ok(&format!("/services/{}", body["id"].as_str().unwrap()), body).await;
    }
    let meals = app.get_json("/services?search=meals").await;
    assert_eq!(ids(&meals), [often["id"].as_str().unwrap(), once["id"].as_str().unwrap()], "{meals}");
    // Without a search, lists stay in name order.
    let all = app.get_json("/services").await;
    assert_eq!(ids(&all)[0], weak["id"].as_str().unwrap());
});

store_test!(concurrent_patches_without_if_match_all_apply, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    let phone = "00000000-0000-4000-8000-0000000000a1";
    // Eight patches of the same phone at once: every one must land, none may be refused.
    let patches = (0..8).map(|i| {
        let app = &app;
        async move {
            let r = app.patch(&format!("/phones/{phone}"), &json!({ "extension": i })).await;
            (r.status(), r.text().await.unwrap())
        }
    });
    for (status, body) in futures::future::join_all(patches).await {
        assert_eq!(status, 200, "{body}");
    }
    let before = app.db.last_sequence().await.unwrap();
    assert_eq!(app.events_after(0).await.iter().filter(|e| e["type"] == "phone.updated").count(), 8, "{before}");
    // The client's own If-Match still fails at once when stale.
    let r = app
        .client
        .patch(app.url(&format!("/phones/{phone}")))
        .bearer_auth(&app.publish_key)
        .header("if-match", "\"stale\"")
        .json(&json!({"number": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
});

// Ids are unique per table only: a phone may have the id of a service. The service's attribute (its
// `link_entity` says `service`) is not the phone's, in what either shows, in what a phone's empty list
// replaces, nor in what deleting the phone takes with it.
store_test!(an_attribute_is_only_of_the_table_it_names, |app| async move {
    let term = "00000000-0000-4000-8000-0000000000c1";
    let attribute = "00000000-0000-4000-8000-0000000000c2";
    app.put_ok(&format!("/taxonomy_terms/{term}"), &json!({"name": "Food", "description": "Food help"})).await;
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let mut service = service_body(S1, O1, "Community Pantry");
    service["attributes"] = json!([{"id": attribute, "taxonomy_term_id": term, "label": "of the service"}]);
    service["phones"] = json!([]);
    app.put_ok(&format!("/services/{S1}"), &service).await;
    // A phone of that service, with the service's id.
    app.put_ok(&format!("/phones/{S1}"), &json!({"number": "555-0100", "service_id": S1})).await;
    let attributes_of = async |path: String| app.get_json(&path).await["attributes"].clone();
    assert_eq!(attributes_of(format!("/phones/{S1}")).await, json!([]), "the phone has no attribute");
    let shown = app.get_json(&format!("/services/{S1}")).await;
    assert_eq!(shown["attributes"][0]["id"], attribute, "{shown}");
    assert_eq!(shown["phones"][0]["attributes"], json!([]), "{shown}");

    app.put_ok(&format!("/phones/{S1}"), &json!({"number": "555-0101", "service_id": S1, "attributes": []})).await;
    assert_eq!(app.delete(&format!("/phones/{S1}")).await.status(), 204);
    let shown = app.get_json(&format!("/services/{S1}")).await;
    assert_eq!(shown["attributes"][0]["id"], attribute, "the service keeps its attribute: {shown}");
    assert_eq!(app.get(&format!("/attributes/{attribute}")).await.status(), 200);
});

// In a merge patch `null` removes a member; for a list of children that leaves none, as `[]` does (a body
// without the list would keep them).
store_test!(a_patch_that_nulls_a_list_of_children_removes_them, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    let r = app.patch(&format!("/services/{S1}"), &json!({"phones": null})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let shown = app.get_json(&format!("/services/{S1}")).await;
    assert_eq!(shown["phones"], json!([]), "{shown}");
    assert_eq!(shown["schedules"].as_array().map(Vec::len), Some(1), "the other children stay: {shown}");
    assert_eq!(app.get("/phones/00000000-0000-4000-8000-0000000000a1").await.status(), 404);
});

// Eight clients PUT the same new service of an existing organization at once, while other writes of that
// organization's services share their groups, for ten ids: never a 500 or a 503. (An acceptance run saw both
// once on PostgreSQL, in a burst like this while a subscription was disabled and enabled; not reproduced
// here so far. Suspected: a write that inserted the new row before it took the document lock, waiting for
// it while the lock's holder inserts the same row; see the session 14 note.)
store_test!(concurrent_puts_creating_the_same_service_of_one_organization_all_succeed, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    for n in 0..10 {
        let id = format!("00000000-0000-4000-8000-0000000d{n:04}");
        let path = format!("/services/{id}");
        let body = json!({"name": "Raced", "status": "active", "organization_id": O1});
        let app = &app;
        let racers = (0..8).map(|_| app.put(&path, &body));
        let others = (0..8).map(|i| {
            let other = format!("00000000-0000-4000-8000-0000000e{n:02}{i:02}");
            let body = json!({"name": "Beside", "status": "active", "organization_id": O1});
            async move { app.put(&format!("/services/{other}"), &body).await }
        });
        let (raced, beside) =
            futures::future::join(futures::future::join_all(racers), futures::future::join_all(others)).await;
        let statuses: Vec<u16> = raced.iter().chain(&beside).map(|r| r.status().as_u16()).collect();
        assert!(statuses.iter().all(|s| *s == 200 || *s == 201), "PUT {id}: {statuses:?}");
    }
});

store_test!(each_of_racing_puts_of_one_row_answers_with_its_own_body, |app| async move {
    // A PUT answers with the row as it left it: a PUT that finds the row already as it says (it changes
    // nothing) and is grouped with a PUT that changes it must not answer with the other one's body.
    let app = &app;
    let path = format!("/organizations/{O1}");
    app.put_ok(&path, &org_body(O1, "Name A")).await;
    for round in 0..6 {
        let puts = (0..8).map(|i| {
            let name = if (i + round) % 2 == 0 { "Name A" } else { "Name B" };
            let path = path.clone();
            async move { (name, app.put(&path, &org_body(O1, name)).await) }
        });
        for (name, answer) in futures::future::join_all(puts).await {
            assert_eq!(answer.status(), 200);
            let body: Value = answer.json().await.expect("JSON");
            assert_eq!(body["name"], name, "round {round}: {body}");
        }
    }
});

store_test!(puts_and_deletes_of_one_row_racing_each_other_all_succeed, |app| async move {
    // A PUT creates or replaces: whatever DELETE of the same id runs beside it, it answers 200 or 201, never
    // 404 (its row, left unchanged, deleted before it was read back) nor 500 (an insert that kept losing to
    // the other PUTs on PostgreSQL). Each DELETE finds the row or says it was not there.
    let app = &app;
    for n in 0..4 {
        let path = format!("/phones/00000000-0000-4000-8000-0000000f{n:04}");
        let body = json!({"number": "555-0100"});
        let writers = (0..8).map(|i| {
            let (path, body) = (path.clone(), body.clone());
            async move {
                let mut answers = Vec::new();
                for _ in 0..6 {
                    let r = if i % 2 == 0 { app.put(&path, &body).await } else { app.delete(&path).await };
                    answers.push((if i % 2 == 0 { "PUT" } else { "DELETE" }, r.status().as_u16()));
                }
                answers
            }
        });
        let answers: Vec<(&str, u16)> = futures::future::join_all(writers).await.into_iter().flatten().collect();
        let wrong: Vec<_> = answers
            .iter()
            .filter(|(method, status)| match *method {
                "PUT" => !matches!(status, 200 | 201),
                _ => !matches!(status, 204 | 404),
            })
            .collect();
        assert!(wrong.is_empty(), "{path}: {wrong:?} of {answers:?}");
    }
});

// A metadata row or an attribute nested in a service is the service's, whatever table its type field names:
// given as a location's (the official service example's metadata is), it was stored as one and vanished from
// the service it was written in.
store_test!(a_polymorphic_child_nested_in_a_row_is_that_rows, |app| async move {
    let term = "00000000-0000-4000-8000-0000000000c1";
    app.put_ok(&format!("/taxonomy_terms/{term}"), &json!({"name": "Food", "description": "Food help"})).await;
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    let mut service = service_body(S1, O1, "Community Pantry");
    service["metadata"] = json!([{"id": "00000000-0000-4000-8000-0000000000c3", "resource_type": "location",
        "last_action_date": "2011-01-01", "last_action_type": "update", "field_name": "name",
        "previous_value": "a", "replacement_value": "b", "updated_by": "Ann"}]);
    service["attributes"] = json!([{"id": "00000000-0000-4000-8000-0000000000c4", "taxonomy_term_id": term, "link_entity": "organization"}]);
    let written = app.put_ok(&format!("/services/{S1}"), &service).await;
    for shown in [written, app.get_json(&format!("/services/{S1}")).await] {
        assert_eq!(shown["metadata"][0]["resource_type"], "service", "{shown}");
        assert_eq!(shown["attributes"][0]["link_entity"], "service", "{shown}");
    }
    let tagged = app.get_json(&format!("/services?taxonomy_term_id={term}")).await;
    assert_eq!(tagged["total_items"], 1, "found by its term: {tagged}");
});

// An organization served with its services in full is another representation: a cache holding one must not
// be told (304) it holds the other. A write may still be conditional on either tag.
store_test!(an_organization_with_its_services_in_full_has_an_etag_of_its_own, |app| async move {
    app.put_ok(&format!("/organizations/{O1}"), &org_body(O1, "Food Bank")).await;
    app.put_ok(&format!("/services/{S1}"), &service_body(S1, O1, "Community Pantry")).await;
    let tag_of = async |path: String| app.get(&path).await.headers()["etag"].to_str().unwrap().to_string();
    let compact = tag_of(format!("/organizations/{O1}")).await;
    let full = tag_of(format!("/organizations/{O1}?full_service=true")).await;
    assert_ne!(compact, full);
    let path = app.url(&format!("/organizations/{O1}?full_service=true"));
    let r = app.client.get(&path).header("if-none-match", &compact).send().await.unwrap();
    assert_eq!(r.status(), 200, "not the representation the cache holds");
    let r = app.client.get(&path).header("if-none-match", &full).send().await.unwrap();
    assert_eq!(r.status(), 304);
    let r = app
        .client
        .patch(app.url(&format!("/organizations/{O1}")))
        .bearer_auth(&app.publish_key)
        .header("content-type", "application/merge-patch+json")
        .header("if-match", &full)
        .body(json!({"description": "Groceries"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the full representation's tag names the organization as it was");
});

// Of DELETEs of one row racing each other, one deletes it and says so (204, one event); the others find it
// gone (404). On PostgreSQL each answered 204 when it looked before the document lock.
store_test!(of_racing_deletes_of_one_row_one_deletes_it, |app| async move {
    let app = &app;
    for n in 0..5 {
        let path = format!("/phones/00000000-0000-4000-8000-0000000d{n:04}");
        app.put_ok(&path, &json!({"number": "555-0100"})).await;
        let statuses: Vec<u16> = futures::future::join_all((0..6).map(|_| app.delete(&path)))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 204).count(), 1, "{path}: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 204 || *s == 404), "{path}: {statuses:?}");
    }
    let deleted = app.events_after(0).await.iter().filter(|e| e["type"] == "phone.deleted").count();
    assert_eq!(deleted, 5);
});
