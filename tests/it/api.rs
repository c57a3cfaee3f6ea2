//! The API as a demanding client sees it: metadata and the OpenAPI document, CORS, body limits and content
//! types, problem+json for unknown things, a create/read/list/patch/delete cycle with its events for every
//! HSDS table, the HSDS query parameters, the event feed, merge patches and concurrent conditional writes.

use std::collections::{BTreeSet, HashSet};

use hsda::hsds::catalog::{FieldType, TABLES, Table};
use serde_json::{Map, Value, json};

use crate::helpers::TestApp;
use crate::store_test;

const ORG: &str = "10000000-0000-4000-8000-000000000001";
const SERVICE: &str = "10000000-0000-4000-8000-000000000002";
const LOCATION: &str = "10000000-0000-4000-8000-000000000003";
const SAL: &str = "10000000-0000-4000-8000-000000000004";
const TAXONOMY: &str = "10000000-0000-4000-8000-000000000005";
const TERM: &str = "10000000-0000-4000-8000-000000000006";
const UNIT: &str = "10000000-0000-4000-8000-000000000007";
const PROGRAM: &str = "10000000-0000-4000-8000-000000000008";
const CONTACT: &str = "10000000-0000-4000-8000-000000000009";
const PHONE: &str = "10000000-0000-4000-8000-00000000000a";

fn types_of(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_string()).collect()
}

fn ids_of(page: &Value) -> HashSet<String> {
    page["contents"].as_array().expect("contents").iter().map(|i| i["id"].as_str().expect("id").to_string()).collect()
}

async fn assert_problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.expect("problem json");
    assert_eq!(body["status"], status, "{body}");
    body
}

store_test!(metadata_openapi_and_cors, |app| async move {
    let root = app.get_json("/").await;
    assert_eq!(root["version"], "3.1", "{root}");
    assert!(root["profile"].as_str().is_some_and(|p| p.starts_with("http")), "{root}");
    let openapi_url = root["openapi_url"].as_str().expect("openapi_url");
    assert!(openapi_url.ends_with("/openapi.json"), "{root}");

    let doc: Value = app.client.get(openapi_url).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "OpenAPI 3.1");
    for t in TABLES {
        let list = format!("/{}", t.plural);
        assert!(doc["paths"][&list]["get"].is_object(), "paths has {list}");
        let one = format!("/{}/{{id}}", t.plural);
        for method in ["get", "put", "patch", "delete"] {
            assert!(doc["paths"][&one][method].is_object(), "paths has {method} {one}");
        }
    }
    assert!(doc["paths"]["/services"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["search"].is_object());
    let org_params = doc["paths"]["/organizations/{id}"]["get"]["parameters"].as_array().unwrap();
    assert!(org_params.iter().any(|p| p["name"] == "full_service"), "{org_params:?}");
    let catalog = app.get_json("/event-types").await;
    let types: Vec<&str> =
        catalog["event_types"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        types.len(),
        TABLES.len() * 3 + hsda::events::OPERATIONAL.len() + hsda::events::SYSTEM_MESSAGES.len(),
        "HSDS and operational types, and the digest and verification messages"
    );
    for entry in catalog["event_types"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let system = matches!(name, "webhook.digest" | "webhook.verification");
        assert_eq!(entry["subscribable"], !system, "{name}");
        assert!(entry["schema"]["type"] == "object", "{name} has a payload schema");
    }
    let webhooks = doc["webhooks"].as_object().expect("webhooks key");
    for t in &types {
        assert!(webhooks.contains_key(*t), "webhooks lists {t}");
    }
    assert_eq!(webhooks.len(), types.len());
    // The catalog is what its OpenAPI response schema says.
    let catalog_schema =
        &doc["paths"]["/event-types"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    let validator = jsonschema::validator_for(catalog_schema).expect("a schema for /event-types");
    let errors: Vec<String> = validator.iter_errors(&catalog).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");

    let r = app.client.get(app.url("/services")).header("origin", "https://example.org").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // A browser's preflight for a write with a key: `*` would not cover Authorization, so it is named.
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(&format!("/organizations/{ORG}")))
        .header("origin", "https://example.org")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization, content-type, if-match")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let allowed = r.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("if-match"), "{allowed}");
});

store_test!(bodies_paths_and_ids_are_refused_in_problem_json, |app| async move {
    let before = app.db.last_sequence().await.unwrap();
    let url = app.url(&format!("/organizations/{ORG}"));
    // A valid document padded past the 4 MiB limit.
    let big = json!({"id": ORG, "name": "Big", "description": "x".repeat(4 * 1024 * 1024 + 10)});
    let r = app.client.put(&url).bearer_auth(&app.publish_key).json(&big).send().await.unwrap();
    assert_eq!(r.headers()["connection"], "close", "the unread rest of the body ends the connection");
    assert_problem(r, 413).await;

    // The NUL character is valid JSON but no text either store keeps (PostgreSQL refuses it): named, never a 500.
    let nul = json!({"id": ORG, "name": "a\u{0}b", "description": "d"});
    let r = app.client.put(&url).bearer_auth(&app.publish_key).json(&nul).send().await.unwrap();
    crate::helpers::assert_problem_at(r, 422, "/name").await;
    for path in ["/services/%00", "/organizations?postcode=%00", "/phones/abc%00"] {
        assert_problem(app.get(path).await, 400).await;
    }
    // A parameter given twice is not one of its values taken silently.
    let r = app.get("/services?per_page=1&per_page=2").await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "per_page", "{problem}");

    let r = app
        .client
        .put(&url)
        .bearer_auth(&app.publish_key)
        .header("content-type", "text/plain")
        .body(json!({"id": ORG, "name": "n", "description": "d"}).to_string())
        .send()
        .await
        .unwrap();
    assert_problem(r, 415).await;
    // A JSON Patch is not the merge patch PATCH takes.
    let r = app
        .client
        .patch(&url)
        .bearer_auth(&app.publish_key)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/name", "value": "n"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_problem(r, 415).await;
    assert_eq!(app.db.last_sequence().await.unwrap(), before, "nothing written");
    assert_eq!(app.get(&format!("/organizations/{ORG}")).await.status(), 404);

    assert_problem(app.get("/no-such-things").await, 404).await;
    assert_problem(app.get("/a/b/c").await, 404).await;
    assert_problem(app.get(&format!("/services/{SERVICE}")).await, 404).await;
    assert_problem(app.get("/phones/00000000-0000-4000-8000-00000000dead").await, 404).await;
    assert_problem(app.get("/events/evt_nothing").await, 404).await;
});

/// The parents every table's rows can point at.
async fn fixtures(app: &TestApp) {
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Food Bank", "description": "Feeds people"})).await;
    app.put_ok(&format!("/programs/{PROGRAM}"), &json!({"organization_id": ORG, "name": "Meals", "description": "d"}))
        .await;
    app.put_ok(
        &format!("/services/{SERVICE}"),
        &json!({"organization_id": ORG, "program_id": PROGRAM, "name": "Pantry", "status": "active"}),
    )
    .await;
    app.put_ok(&format!("/locations/{LOCATION}"), &json!({"location_type": "physical", "name": "Hall"})).await;
    app.put_ok(&format!("/service_at_locations/{SAL}"), &json!({"service_id": SERVICE, "location_id": LOCATION})).await;
    app.put_ok(&format!("/taxonomies/{TAXONOMY}"), &json!({"name": "Needs", "description": "d"})).await;
    app.put_ok(
        &format!("/taxonomy_terms/{TERM}"),
        &json!({"name": "Food", "description": "d", "taxonomy_id": TAXONOMY}),
    )
    .await;
    app.put_ok(&format!("/units/{UNIT}"), &json!({"name": "Bed"})).await;
    app.put_ok(&format!("/contacts/{CONTACT}"), &json!({"service_id": SERVICE, "name": "Ann"})).await;
    app.put_ok(&format!("/phones/{PHONE}"), &json!({"service_id": SERVICE, "number": "555-0100"})).await;
}

fn sample(ty: FieldType) -> Value {
    match ty {
        FieldType::Uuid => json!("10000000-0000-4000-8000-0000000000ff"),
        FieldType::Text => json!("sample"),
        FieldType::Uri => json!("https://example.org/x"),
        FieldType::Email => json!("a@example.org"),
        FieldType::Number | FieldType::Integer => json!(3),
        FieldType::Boolean => json!(true),
        FieldType::Date => json!("2024-05-01"),
        FieldType::DateTime => json!("2024-05-01T10:00:00Z"),
        FieldType::Time => json!("09:00"),
        FieldType::Enum(values) => json!(values[0]),
    }
}

/// A minimal valid body for `table`: its required fields, and a reference to an existing parent.
fn minimal_body(table: &Table) -> Map<String, Value> {
    let mut body = Map::new();
    for f in table.fields.iter().filter(|f| f.required && f.name != "id") {
        body.insert(f.name.into(), sample(f.ty));
    }
    for f in table.reference_fields() {
        let target = match f.references {
            Some("*") => SERVICE,
            Some("organization") if table.name != "organization" => ORG,
            Some("service") => SERVICE,
            Some("location") => LOCATION,
            Some("service_at_location") if table.name != "service_at_location" => SAL,
            Some("taxonomy") => TAXONOMY,
            Some("taxonomy_term") if table.name != "taxonomy_term" => TERM,
            Some("unit") => UNIT,
            Some("program") => PROGRAM,
            Some("contact") => CONTACT,
            Some("phone") => PHONE,
            _ => continue,
        };
        body.insert(f.name.into(), json!(target));
    }
    if table.name == "metadata" {
        body.insert("resource_type".into(), json!("service"));
    }
    body
}

store_test!(every_table_has_a_create_read_list_patch_delete_cycle_with_events, |app| async move {
    fixtures(&app).await;
    for (n, table) in TABLES.iter().enumerate() {
        let id = format!("20000000-0000-4000-8000-{n:012}");
        let path = format!("/{}/{id}", table.plural);
        let body = Value::Object(minimal_body(table));
        let before = app.db.last_sequence().await.unwrap();

        let r = app.put(&path, &body).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 201, "PUT {path} {body}: {text}");
        let created = app.events_after(before).await;
        let mine = |events: &[Value], action: &str| {
            events.iter().filter(|e| e["type"] == format!("{}.{action}", table.name) && e["object_id"] == id).count()
        };
        assert_eq!(mine(&created, "created"), 1, "{} created: {:?}", table.name, types_of(&created));

        let doc = app.get_json(&path).await;
        assert_eq!(doc["id"], id.as_str());
        for (k, v) in body.as_object().unwrap() {
            assert_eq!(&doc[k], v, "{}.{k} read back", table.name);
        }
        let page = app.get_json(&format!("/{}?per_page=1000", table.plural)).await;
        assert!(ids_of(&page).contains(&id), "{} listed", table.name);

        // Change (or set) the first free-text field.
        let field = table
            .fields
            .iter()
            .find(|f| f.ty == FieldType::Text)
            .unwrap_or_else(|| panic!("{} has a text field", table.name));
        let mark = app.db.last_sequence().await.unwrap();
        let r = app.patch(&path, &json!({ field.name: "patched value" })).await;
        assert_eq!(r.status(), 200, "PATCH {path}: {}", r.text().await.unwrap());
        assert_eq!(app.get_json(&path).await[field.name], "patched value");
        let updated = app.events_after(mark).await;
        assert_eq!(mine(&updated, "updated"), 1, "{} updated: {:?}", table.name, types_of(&updated));

        let mark = app.db.last_sequence().await.unwrap();
        let r = app.delete(&path).await;
        assert_eq!(r.status(), 204, "DELETE {path}: {}", r.text().await.unwrap());
        assert_eq!(app.get(&path).await.status(), 404);
        let deleted = app.events_after(mark).await;
        assert_eq!(mine(&deleted, "deleted"), 1, "{} deleted: {:?}", table.name, types_of(&deleted));
        let tombstone = deleted.iter().find(|e| e["type"] == format!("{}.deleted", table.name)).unwrap();
        assert_eq!(tombstone["data"]["id"], id.as_str());
    }
});

store_test!(taxonomy_term_parameters, |app| async move {
    let tx2 = "30000000-0000-4000-8000-000000000002";
    app.put_ok(&format!("/taxonomies/{TAXONOMY}"), &json!({"name": "Needs", "description": "d"})).await;
    app.put_ok(&format!("/taxonomies/{tx2}"), &json!({"name": "Other", "description": "d"})).await;
    let top = "30000000-0000-4000-8000-000000000010";
    let child_a = "30000000-0000-4000-8000-000000000011";
    let child_b = "30000000-0000-4000-8000-000000000012";
    let other = "30000000-0000-4000-8000-000000000013";
    let term = |name: &str, parent: Option<&str>, taxonomy: &str| {
        let mut v = json!({"name": name, "description": "d", "taxonomy_id": taxonomy});
        if let Some(p) = parent {
            v["parent_id"] = json!(p);
        }
        v
    };
    app.put_ok(&format!("/taxonomy_terms/{top}"), &term("Food", None, TAXONOMY)).await;
    app.put_ok(&format!("/taxonomy_terms/{child_a}"), &term("Groceries", Some(top), TAXONOMY)).await;
    app.put_ok(&format!("/taxonomy_terms/{child_b}"), &term("Meals", Some(top), TAXONOMY)).await;
    app.put_ok(&format!("/taxonomy_terms/{other}"), &term("Housing", None, tx2)).await;

    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    assert_eq!(ids_of(&app.get_json("/taxonomy_terms?top_only=true").await), set(&[top, other]));
    assert_eq!(ids_of(&app.get_json(&format!("/taxonomy_terms?parent_id={top}")).await), set(&[child_a, child_b]));
    assert_eq!(
        ids_of(&app.get_json(&format!("/taxonomy_terms?taxonomy_id={TAXONOMY}")).await),
        set(&[top, child_a, child_b])
    );
    assert_eq!(ids_of(&app.get_json(&format!("/taxonomy_terms?taxonomy_id={tx2}")).await), set(&[other]));
    assert_eq!(ids_of(&app.get_json(&format!("/taxonomy_terms?taxonomy_id={tx2}&top_only=true")).await), set(&[other]));
    assert_eq!(app.get_json(&format!("/taxonomy_terms?taxonomy_id={tx2}&parent_id={top}")).await["total_items"], 0);
});

store_test!(service_at_locations_by_postcode_and_proximity, |app| async move {
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Food Bank", "description": "d"})).await;
    // Here; ~1 km north (0.009 degrees of latitude); ~50 km north (0.45 degrees).
    let places = [("AB1 2CD", 51.5, "Here"), ("AB1 9ZZ", 51.509, "Near"), ("XY9 9XY", 51.95, "Far")];
    let mut sals = Vec::new();
    for (i, (postcode, lat, name)) in places.iter().enumerate() {
        let loc = format!("40000000-0000-4000-8000-00000000001{i}");
        let svc = format!("40000000-0000-4000-8000-00000000002{i}");
        let sal = format!("40000000-0000-4000-8000-00000000003{i}");
        app.put_ok(
            &format!("/locations/{loc}"),
            &json!({"location_type": "physical", "name": name, "latitude": lat, "longitude": -0.1,
                "addresses": [{"id": format!("40000000-0000-4000-8000-00000000004{i}"), "address_1": "1 High St",
                    "city": "Town", "state_province": "Shire", "postal_code": postcode, "country": "GB",
                    "address_type": "physical"}]}),
        )
        .await;
        app.put_ok(
            &format!("/services/{svc}"),
            &json!({"organization_id": ORG, "name": format!("{name} pantry"), "status": "active"}),
        )
        .await;
        app.put_ok(&format!("/service_at_locations/{sal}"), &json!({"service_id": svc, "location_id": loc})).await;
        sals.push(sal);
    }
    let set = |idx: &[usize]| idx.iter().map(|i| sals[*i].clone()).collect::<HashSet<_>>();
    assert_eq!(ids_of(&app.get_json("/service_at_locations?postcode=AB1%202CD").await), set(&[0]));
    assert_eq!(ids_of(&app.get_json("/service_at_locations?postcode=ab12cd").await), set(&[0]), "normalised");
    assert_eq!(ids_of(&app.get_json("/service_at_locations?postcode=XY99XY").await), set(&[2]));
    assert_eq!(ids_of(&app.get_json("/service_at_locations?postcode=AB12CD&proximity=500").await), set(&[0]));
    assert_eq!(ids_of(&app.get_json("/service_at_locations?postcode=AB12CD&proximity=2000").await), set(&[0, 1]));
    assert_eq!(ids_of(&app.get_json("/service_at_locations?postcode=AB12CD&proximity=60000").await), set(&[0, 1, 2]));
    assert_eq!(app.get_json("/service_at_locations?postcode=ZZ11ZZ&proximity=60000").await["total_items"], 0);
    assert_eq!(app.get("/service_at_locations?proximity=100").await.status(), 400, "proximity needs a postcode");
});

store_test!(organization_nesting_and_minimal_services, |app| async move {
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Food Bank", "description": "d"})).await;
    app.put_ok(
        &format!("/services/{SERVICE}"),
        &json!({"organization_id": ORG, "name": "Pantry", "status": "active",
            "phones": [{"id": PHONE, "number": "555-0100"}]}),
    )
    .await;
    let full = app.get_json(&format!("/organizations/{ORG}?full_service=true")).await;
    let service = &full["services"][0];
    assert_eq!(service["id"], SERVICE, "{full:#}");
    assert_eq!(service["phones"][0]["number"], "555-0100", "full services nest their phones: {full:#}");
    let listed = app.get_json(&format!("/organizations/{ORG}")).await;
    let item = &listed["services"][0];
    assert_eq!(item["id"], SERVICE);
    assert_eq!(item["name"], "Pantry");
    assert!(item.get("phones").is_none(), "list items do not nest: {listed:#}");

    let minimal = app.get_json("/services?minimal=true").await;
    assert_eq!(minimal["total_items"], 1);
    let item = minimal["contents"][0].as_object().unwrap();
    let keys: BTreeSet<&str> = item.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["id", "last_modified"]), "{item:?}");
    assert_eq!(item["id"], SERVICE);
    let service = app.get_json(&format!("/services/{SERVICE}")).await;
    assert_eq!(item["last_modified"], service["last_modified"], "{item:?}");
    assert!(item["last_modified"].is_string());
    // The served OpenAPI describes both forms of a list page's items.
    let openapi = app.get_json("/openapi.json").await;
    let page = "/paths/~1services/get/responses/200/content/application~1json/schema";
    let errors = crate::helpers::openapi_violations(&openapi, page, &minimal);
    assert!(errors.is_empty(), "a minimal page as the OpenAPI says: {errors:?} in {minimal}");
    let whole = app.get_json("/services").await;
    let errors = crate::helpers::openapi_violations(&openapi, page, &whole);
    assert!(errors.is_empty(), "a page of list items as the OpenAPI says: {errors:?} in {whole}");
    // "Aim to return all services within one call": more than a default page, in one, unless per_page asks.
    for i in 0..60 {
        let id = format!("51000000-0000-4000-8000-{i:012}");
        app.put_ok(
            &format!("/services/{id}"),
            &json!({"organization_id": ORG, "name": format!("S{i}"), "status": "active"}),
        )
        .await;
    }
    let all = app.get_json("/services?minimal=true").await;
    assert_eq!((all["total_items"].as_u64(), all["total_pages"].as_u64()), (Some(61), Some(1)), "{all}");
    assert_eq!(all["contents"].as_array().map(Vec::len), Some(61));
    // A page size asked for has every list's limit (the OpenAPI's maximum).
    assert_eq!(app.get("/services?minimal=true&per_page=1001").await.status(), 400);
    let paged = app.get_json("/services?minimal=true&per_page=10&page=7").await;
    assert_eq!((paged["size"].as_u64(), paged["total_pages"].as_u64()), (Some(1), Some(7)), "{paged}");
    assert_eq!(app.get_json("/services").await["size"], 50, "other lists keep their default page");
    // HSDS gives `minimal` to services only: organizations stay whole list items (their schema needs a name).
    let organizations = app.get_json("/organizations?minimal=true").await;
    assert_eq!(organizations["contents"][0]["name"], "Food Bank", "{organizations}");
});

store_test!(event_feed_pages_by_type_and_serves_single_events, |app| async move {
    app.put_ok(&format!("/organizations/{ORG}"), &json!({"name": "Food Bank", "description": "d"})).await;
    for i in 0..5 {
        let id = format!("50000000-0000-4000-8000-00000000000{i}");
        app.put_ok(
            &format!("/services/{id}"),
            &json!({"organization_id": ORG, "name": format!("S{i}"), "status": "active",
                "phones": [{"id": format!("50000000-0000-4000-8000-00000000010{i}"), "number": "1"}]}),
        )
        .await;
    }
    let all = app.events_after(0).await;
    let expected: Vec<Value> =
        all.iter().filter(|e| e["type"].as_str().unwrap().starts_with("service.")).cloned().collect();
    assert_eq!(expected.len(), 5, "{:?}", types_of(&all));
    assert!(all.len() > expected.len(), "other types are in the log too");

    let head = app.db.last_sequence().await.unwrap();
    let mut got = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let page = app.get_json(&format!("/events?types=service.*&after={after}&limit=2")).await;
        let events = page["events"].as_array().unwrap().clone();
        assert!(events.len() <= 2);
        let next = page["next_after"].as_i64().unwrap();
        if events.is_empty() {
            assert_eq!(next, head, "an empty page has read to the head of the log");
            break;
        }
        if events.len() == 2 {
            assert_eq!(next, events.last().unwrap()["sequence"].as_i64().unwrap(), "a full page stops at its last");
        } else {
            assert_eq!(next, head, "a short page read past what the filter left out, to the head");
        }
        after = next;
        got.extend(events);
    }
    assert_eq!(got, expected, "paging through service.* yields exactly the service events, in order");
    let after = expected.last().unwrap()["sequence"].as_i64().unwrap();
    // Past the last service event only other types remain (the last service's phone, its organization); the
    // cursor still moves on past them.
    let page = app.get_json(&format!("/events?types=service.*,organization.created&after={after}")).await;
    assert!(page["events"].as_array().unwrap().is_empty(), "{page}");
    assert_eq!(page["next_after"], head);
    let page = app.get_json(&format!("/events?types=phone.*,organization.*&after={after}")).await;
    assert_eq!(types_of(page["events"].as_array().unwrap()), vec!["phone.created", "organization.updated"]);

    let first = &expected[0];
    let one = app.get_json(&format!("/events/{}", first["id"].as_str().unwrap())).await;
    assert_eq!(&one, first);
    assert!(one["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(app.get("/events?types=nonsense").await.status(), 400);
    // At the head: nothing yet. Past it: a cursor from elsewhere, said so.
    let page = app.get_json(&format!("/events?after={head}")).await;
    assert_eq!((page["events"].as_array().map(Vec::len), &page["next_after"]), (Some(0), &json!(head)), "{page}");
    let r = app.get(&format!("/events?after={}", head + 1)).await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "after", "{problem}");
    assert_eq!(app.get("/events?limit=0").await.status(), 400);
});

store_test!(merge_patch_null_removes_a_field, |app| async move {
    app.put_ok(
        &format!("/organizations/{ORG}"),
        &json!({"name": "Food Bank", "description": "d", "email": "info@example.org", "website": "https://example.org"}),
    )
    .await;
    let r = app.patch(&format!("/organizations/{ORG}"), &json!({"email": null, "alternate_name": "FB"})).await;
    assert_eq!(r.status(), 200);
    let doc = app.get_json(&format!("/organizations/{ORG}")).await;
    assert!(doc.get("email").is_none_or(Value::is_null), "email removed: {doc:#}");
    assert_eq!(doc["alternate_name"], "FB");
    assert_eq!(doc["website"], "https://example.org", "untouched fields stay");
    let events = app.events_after(0).await;
    let last = events.iter().rev().find(|e| e["type"] == "organization.updated").unwrap();
    assert!(last["data"].get("email").is_none_or(Value::is_null), "the event snapshot lost it too");

    let r = app.patch(&format!("/organizations/{ORG}"), &json!({"name": null})).await;
    assert_eq!(r.status(), 422, "a required field cannot be removed");
});

store_test!(concurrent_patches_with_one_etag_let_exactly_one_through, |app| async move {
    let path = format!("/organizations/{ORG}");
    app.put_ok(&path, &json!({"name": "Food Bank", "description": "d"})).await;
    let etag = app.get(&path).await.headers()["etag"].to_str().unwrap().to_string();
    let before = app.db.last_sequence().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = app.client.clone();
        let url = app.url(&path);
        let key = app.publish_key.clone();
        let etag = etag.clone();
        tasks.push(tokio::spawn(async move {
            client
                .patch(url)
                .bearer_auth(key)
                .header("if-match", etag)
                .header("content-type", "application/merge-patch+json")
                .body(json!({"name": format!("Writer {i}")}).to_string())
                .send()
                .await
                .expect("PATCH")
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 412, 412, 412, 412, 412, 412, 412]);
    let events = app.events_after(before).await;
    assert_eq!(types_of(&events), vec!["organization.updated"], "one write, one event");
});

store_test!(a_write_answers_with_exactly_what_a_read_serves_next, |app| async move {
    fixtures(&app).await;
    let same_as_get = |path: String, r: reqwest::Response| {
        let app = &app;
        async move {
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let tag = r.headers()["etag"].to_str().unwrap().to_string();
            let body: Value = r.json().await.unwrap();
            let read = app.get(&path).await;
            assert_eq!(read.headers()["etag"].to_str().unwrap(), tag, "{path}: the ETag of the write's answer");
            assert_eq!(read.json::<Value>().await.unwrap(), body, "{path}: the body of the write's answer");
        }
    };
    // Roots (answered from their compiled document) and a detail row (compiled on the fly), created,
    // replaced, patched and re-put unchanged (nothing written: read back).
    let org = format!("/organizations/{ORG}");
    same_as_get(org.clone(), app.put(&org, &json!({"name": "Food Bank", "description": "Now bigger"})).await).await;
    same_as_get(org.clone(), app.put(&org, &json!({"name": "Food Bank", "description": "Now bigger"})).await).await;
    same_as_get(org.clone(), app.patch(&org, &json!({"email": "hi@example.org"})).await).await;
    let service = format!("/services/{SERVICE}");
    let body = json!({"organization_id": ORG, "name": "Pantry", "status": "active",
                      "phones": [{"id": "00000000-0000-4000-8000-0000000000f1", "number": "555-0199"}]});
    same_as_get(service.clone(), app.put(&service, &body).await).await;
    let phone = format!("/phones/{PHONE}");
    same_as_get(phone.clone(), app.put(&phone, &json!({"service_id": SERVICE, "number": "555-0101"})).await).await;
    let new_phone = "/phones/00000000-0000-4000-8000-0000000000f2".to_string();
    let created = app.put(&new_phone, &json!({"service_id": SERVICE, "number": "555-0102"})).await;
    assert_eq!(created.status(), 201);
    same_as_get(new_phone, created).await;
});

/// Errors axum itself gives (a method a path does not have, a body over the limit on an endpoint that reads
/// raw bytes) come as problem+json too, with their status and headers.
#[tokio::test]
async fn errors_from_the_framework_are_problems_too() {
    let Some(app) =
        crate::helpers::TestApp::spawn_with(crate::helpers::Store::Sqlite, |c| c.max_body_bytes = 4096).await
    else {
        return;
    };
    let r = app.client.put(app.url("/webhooks")).bearer_auth(&app.subscribe_key).send().await.unwrap();
    let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = assert_problem(r, 405).await;
    assert!(allow.contains("POST") && allow.contains("GET"), "Allow: {allow}");
    assert_eq!(body["title"], "Method Not Allowed", "{body}");

    let created: Value = app
        .post_as(&app.subscribe_key, "/webhooks", Some(&json!({"url": "http://127.0.0.1:9/x"})))
        .await
        .json()
        .await
        .unwrap();
    let huge = format!("{{\"grace_seconds\": 60, \"pad\": \"{}\"}}", "x".repeat(8192));
    let r = app
        .client
        .post(app.url(&format!("/webhooks/{}/rotate-secret", created["id"].as_str().unwrap())))
        .bearer_auth(&app.subscribe_key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;
}

store_test!(the_bearer_scheme_is_case_insensitive, |app| async move {
    let path = app.url("/organizations/10000000-0000-4000-8000-0000000000f1");
    let body = json!({"name": "Food Bank", "description": "x"});
    for (scheme, status) in [("bearer", 201), ("BEARER", 200), ("Basic", 401)] {
        let r = app
            .client
            .put(&path)
            .header("authorization", format!("{scheme} {}", app.publish_key))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{scheme}");
    }
});

store_test!(keys_are_listed_by_tenant_and_a_revoked_key_is_refused_at_once, |app| async move {
    let other = app.db.create_key("globex", hsda::store::keys::Scope::Publish).await.unwrap();
    let all = app.db.list_keys(None).await.unwrap();
    assert!(all.len() >= 4, "the app's three and globex's: {all:?}");
    let globex = app.db.list_keys(Some("globex")).await.unwrap();
    assert_eq!(globex.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [other.id.as_str()]);
    assert!(other.secret.starts_with(&globex[0].prefix) && globex[0].revoked_at.is_none());
    let path = format!("/organizations/{ORG}");
    let body = json!({"name": "Food Bank", "description": "Feeds people"});
    let r = app.client.put(app.url(&path)).bearer_auth(&other.secret).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(app.db.revoke_key(&other.id).await.unwrap());
    assert!(!app.db.revoke_key(&other.id).await.unwrap(), "already revoked");
    let r = app.client.put(app.url(&path)).bearer_auth(&other.secret).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401, "the revoking process forgets the key at once");
    // Said as a refused key, not as a missing one (RFC 6750's invalid_token).
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer error="invalid_token""#);
    let problem: Value = r.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("not valid"), "{problem}");
    let r = app.client.put(app.url(&path)).json(&body).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["www-authenticate"].to_str().unwrap()),
        (401, "Bearer"),
        "no key sent"
    );
    assert!(app.db.list_keys(Some("globex")).await.unwrap()[0].revoked_at.is_some());
});

/// Behind a proxy the API is where the operator's `public_url` says, not at the `Host` a request came with:
/// `GET /` and the OpenAPI document's server say so (a client that follows `openapi_url` must reach it).
#[tokio::test]
async fn the_api_documents_name_the_configured_public_url() {
    let public = "https://directory.example.org/base";
    let Some(app) =
        crate::helpers::TestApp::spawn_with(crate::helpers::Store::Sqlite, |c| c.public_url = Some(public.into()))
            .await
    else {
        return;
    };
    let r = app.client.get(app.url("/")).header("host", "attacker.example").send().await.unwrap();
    let root: Value = r.json().await.unwrap();
    assert_eq!(root["openapi_url"], format!("{public}/openapi.json"), "{root}");
    let doc = app.get_json("/openapi.json").await;
    assert_eq!(doc["servers"][0]["url"], public, "{}", doc["servers"]);
    // What a write creates is located there too, the base path included.
    let id = "5d0f6f2e-0000-4000-8000-000000000001";
    let r = app.put(&format!("/organizations/{id}"), &json!({"name": "Org", "description": "d"})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], format!("{public}/organizations/{id}").as_str());
    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]});
    let r = app.post_as(&app.subscribe_key, "/webhooks", Some(&body)).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let sub: Value = r.json().await.unwrap();
    assert_eq!(location, format!("{public}/webhooks/{}", sub["id"].as_str().unwrap()));
    // Without one, the request's host tells (the address the server is reached at), and a location is a path.
    let Some(plain) = crate::helpers::TestApp::spawn(crate::helpers::Store::Sqlite).await else { return };
    let root = plain.get_json("/").await;
    assert_eq!(root["openapi_url"], plain.url("/openapi.json"), "{root}");
    let r = plain.put(&format!("/organizations/{id}"), &json!({"name": "Org", "description": "d"})).await;
    assert_eq!(r.headers()["location"], format!("/organizations/{id}").as_str());
}

// Every member of a root's event data is described by the schema `/event-types` publishes for it, those the
// roots hold beyond their own rows included (an organization's `services`, a service_at_location's `service`).
store_test!(root_event_payloads_are_described_member_by_member, |app| async move {
    let (org, service, location, sal) = (
        "6a1e0c3d-0000-4000-8000-000000000001",
        "6a1e0c3d-0000-4000-8000-000000000002",
        "6a1e0c3d-0000-4000-8000-000000000003",
        "6a1e0c3d-0000-4000-8000-000000000004",
    );
    app.put_ok(&format!("/organizations/{org}"), &json!({"name": "Org", "description": "d"})).await;
    let body = json!({"name": "Meals", "status": "active", "organization_id": org});
    app.put_ok(&format!("/services/{service}"), &body).await;
    app.put_ok(&format!("/locations/{location}"), &json!({"name": "Hall", "location_type": "physical"})).await;
    app.put_ok(&format!("/service_at_locations/{sal}"), &json!({"service_id": service, "location_id": location})).await;
    let catalog = app.get_json("/event-types").await;
    let schema_of = |name: &str| {
        catalog["event_types"].as_array().unwrap().iter().find(|t| t["name"] == name).expect(name)["schema"].clone()
    };
    let mut checked = BTreeSet::new();
    for event in app.events_after(0).await {
        let name = event["type"].as_str().unwrap().to_string();
        let expected = ["organization.updated", "service_at_location.created"];
        if !expected.contains(&name.as_str()) {
            continue;
        }
        let schema = schema_of(&name);
        let data = event["data"].as_object().unwrap();
        for key in data.keys() {
            assert!(schema["properties"].get(key).is_some(), "{name}: `{key}` is not in its schema");
        }
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&event["data"]).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let holds_more = match name.as_str() {
            "organization.updated" => data["services"].as_array().is_some_and(|s| !s.is_empty()),
            _ => data["service"].is_object(),
        };
        if holds_more {
            checked.insert(name);
        }
    }
    assert_eq!(checked.len(), 2, "both roots' extra members were seen: {checked:?}");
});
