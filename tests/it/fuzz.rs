//! Regressions of the input fuzzing suite (RELIABILITY.md, "Input fuzzing"): each test replays, over the
//! real server, an input that the property tests, the fuzz targets or schemathesis found mishandled.

use serde_json::Value;

use crate::store_test;

const LOCATION: &str = "5b1d1c35-5e8c-4d52-8a77-2f6b1c0f7a01";

// Found by the bulk reader's property test: serde_json's default float parser can miss the nearest double
// by one unit in the last place, so a number came back different from what was sent.
store_test!(fuzz_numbers_are_stored_exactly_as_sent, |app| async move {
    let latitude: f64 = 3.6834058463900964e78;
    let longitude: f64 = -9.257715463424434e167;
    let body = format!(r#"{{"location_type": "physical", "latitude": {latitude:e}, "longitude": {longitude:e}}}"#);
    let response = app
        .client
        .put(app.url(&format!("/locations/{LOCATION}")))
        .bearer_auth(&app.publish_key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 201);
    let location: Value = app.get_json(&format!("/locations/{LOCATION}")).await;
    assert_eq!(location["latitude"].as_f64().map(f64::to_bits), Some(latitude.to_bits()), "{location}");
    assert_eq!(location["longitude"].as_f64().map(f64::to_bits), Some(longitude.to_bits()), "{location}");
});

// Found reading the list handlers while preparing the schemathesis run (whose integer generator tries
// huge values): `(page - 1) * per_page` overflowed, a panic in debug builds and a negative OFFSET in
// release builds.
store_test!(fuzz_huge_subscription_pages_are_refused_or_empty, |app| async move {
    let huge = app.get_as(&app.subscribe_key, format!("/webhooks?page={}&per_page=1000", u64::MAX)).await;
    assert_eq!(huge["status"], 400, "{huge}");
    assert_eq!(huge["errors"][0]["parameter"], "page", "{huge}");
    let last = app.get_as(&app.subscribe_key, format!("/webhooks?page={}&per_page=1000", u32::MAX)).await;
    assert_eq!(last["contents"], serde_json::json!([]), "{last}");
    assert_eq!(last["page_number"], u32::MAX, "{last}");
});

// Found by schemathesis' status-code check: 400, 401 and 412 answers that the OpenAPI document did not list.
store_test!(fuzz_every_operation_documents_its_common_errors, |app| async move {
    let doc = app.get_json("/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            if !["get", "put", "post", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let responses = &operation["responses"];
            for status in ["400", "401"] {
                assert!(responses.get(status).is_some(), "{method} {path} does not document {status}");
            }
            if method == "delete" {
                assert!(responses.get("412").is_some(), "{method} {path} does not document 412");
            }
        }
    }
    // A bad key really is a 401, even on the public event feed, and an If-Match on a delete of nothing a 412.
    let bad_key = app.client.get(app.url("/events")).bearer_auth("not-a-key").send().await.expect("GET");
    assert_eq!(bad_key.status(), 401);
    let missing = "0b0a7b8e-7d1c-4f5e-9a3b-000000000000";
    let gone = app
        .client
        .delete(app.url(&format!("/phones/{missing}")))
        .bearer_auth(&app.publish_key)
        .header("if-match", "*")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(gone.status(), 412);
});
