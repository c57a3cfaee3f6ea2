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

// Found by reading the code behind schemathesis' huge `page` numbers: `(page - 1) * per_page` overflowed
// (a panic in debug builds, a negative OFFSET and a 500 on PostgreSQL in release builds).
store_test!(fuzz_huge_subscription_pages_are_refused_or_empty, |app| async move {
    let huge = app.get_as(&app.subscribe_key, format!("/webhooks?page={}&per_page=1000", u64::MAX)).await;
    assert_eq!(huge["status"], 400, "{huge}");
    assert_eq!(huge["errors"][0]["parameter"], "page", "{huge}");
    let last = app.get_as(&app.subscribe_key, format!("/webhooks?page={}&per_page=1000", u32::MAX)).await;
    assert_eq!(last["contents"], serde_json::json!([]), "{last}");
    assert_eq!(last["page_number"], u32::MAX, "{last}");
});
