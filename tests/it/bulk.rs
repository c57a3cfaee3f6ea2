//! Bulk exchange over real stores: the official example package survives import and export cell by cell,
//! zips import like folders, a bad cell is named and writes nothing, NDJSON round-trips the directory, and
//! `strict_references` refuses what a lenient import only warns about.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use hsda::bulk::export::{export_datapackage, export_ndjson};
use hsda::bulk::import::{ImportOptions, import_path};
use serde_json::{Value, json};

use crate::helpers::{Store, TestApp, hsds_dir};
use crate::store_test;

const SERVICE: &str = "ac148810-d857-441c-9679-408f346de14b";

fn example() -> Option<PathBuf> {
    Some(hsds_dir()?.join("examples/csv"))
}

/// A CSV file as id -> (column -> cell), keeping non-empty cells only.
type Cells = BTreeMap<String, BTreeMap<String, String>>;

fn read_cells(path: &Path) -> Cells {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = reader.headers().expect("header").clone();
    let mut out = Cells::new();
    for record in reader.records() {
        let record = record.expect("record");
        let row: BTreeMap<String, String> = headers
            .iter()
            .zip(record.iter())
            .filter(|(_, cell)| !cell.is_empty())
            .map(|(h, c)| (h.to_string(), c.to_string()))
            .collect();
        let id = row.get("id").cloned().expect("row id");
        assert!(out.insert(id, row).is_none(), "duplicate id in {}", path.display());
    }
    out
}

/// `cells` without services' `last_modified`: hsda keeps it (the time its copy changed: the import), so
/// it differs from the package's by design.
fn but_last_modified(mut cells: Cells) -> Cells {
    for row in cells.values_mut() {
        row.remove("last_modified");
    }
    cells
}

/// A document without `last_modified` anywhere in it (see [`but_last_modified`]).
fn forget_last_modified(mut value: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("last_modified");
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

fn csv_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    names.sort();
    names
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn zip_dir(from: &Path, out: &Path) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).expect("create zip"));
    let options = zip::write::SimpleFileOptions::default();
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        zip.start_file(entry.file_name().to_string_lossy(), options).expect("entry");
        zip.write_all(&std::fs::read(entry.path()).expect("read")).expect("write");
    }
    zip.finish().expect("finish zip");
}

async fn total(app: &TestApp, path: &str) -> u64 {
    app.get_json(path).await["total_items"].as_u64().expect("total_items")
}

store_test!(example_package_round_trips_cell_by_cell, |app| async move {
    let Some(example) = example() else { return };
    let started = hsda::store::now_text();
    let report = import_path(&app.db, &example, ImportOptions::default()).await.expect("import");
    assert!(report.starts_with("imported "), "{report}");
    let out = tempfile::tempdir().unwrap();
    export_datapackage(&app.db, out.path()).await.expect("export");
    assert!(out.path().join("datapackage.json").is_file());
    let exported = csv_files(out.path());
    for file in csv_files(&example) {
        assert!(exported.contains(&file), "{file} exported");
        let original = read_cells(&example.join(&file));
        let roundtrip = read_cells(&out.path().join(&file));
        assert!(!original.is_empty(), "{file} has rows");
        if file == "services.csv" {
            for row in roundtrip.values() {
                assert!(row["last_modified"] >= started, "the time of the import: {row:?}");
            }
        }
        assert_eq!(but_last_modified(roundtrip), but_last_modified(original), "{file} survives import and export");
    }
    // Tables the example lacks are exported empty.
    for file in exported.iter().filter(|f| !example.join(f).exists()) {
        assert!(read_cells(&out.path().join(file)).is_empty(), "{file}");
    }
});

store_test!(a_zip_imports_like_the_folder, |app| async move {
    let Some(example) = example() else { return };
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("example.zip");
    zip_dir(&example, &zip);
    import_path(&app.db, &zip, ImportOptions::default()).await.expect("zip imports");
    let from_zip = dir.path().join("from-zip");
    export_datapackage(&app.db, &from_zip).await.unwrap();

    let store = if app.db.backend() == hsda::store::Backend::Sqlite { Store::Sqlite } else { Store::Postgres };
    let folder_app = TestApp::spawn(store).await.expect("second store");
    import_path(&folder_app.db, &example, ImportOptions::default()).await.expect("folder imports");
    let from_folder = dir.path().join("from-folder");
    export_datapackage(&folder_app.db, &from_folder).await.unwrap();
    for file in csv_files(&from_folder) {
        assert_eq!(
            but_last_modified(read_cells(&from_zip.join(&file))),
            but_last_modified(read_cells(&from_folder.join(&file))),
            "{file}"
        );
    }
    assert_eq!(
        forget_last_modified(app.get_json(&format!("/services/{SERVICE}")).await),
        forget_last_modified(folder_app.get_json(&format!("/services/{SERVICE}")).await)
    );
});

store_test!(one_bad_cell_names_file_line_and_field_and_writes_nothing, |app| async move {
    let Some(example) = example() else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example, dir.path());
    let services = dir.path().join("services.csv");
    let mut reader = csv::Reader::from_path(&services).unwrap();
    let headers = reader.headers().unwrap().clone();
    let column = headers.iter().position(|h| h == "minimum_age").expect("minimum_age column");
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&headers).unwrap();
    for record in reader.records() {
        let mut cells: Vec<String> = record.unwrap().iter().map(str::to_string).collect();
        cells[column] = "twelve".into();
        writer.write_record(&cells).unwrap();
    }
    std::fs::write(&services, writer.into_inner().unwrap()).unwrap();

    let err = import_path(&app.db, dir.path(), ImportOptions::default()).await.expect_err("bad cell refused");
    let message = format!("{err:#}");
    assert!(message.contains("services.csv line 2, field minimum_age"), "{message}");
    assert!(message.contains("nothing was imported") || message.contains("must be a number"), "{message}");
    assert_eq!(app.db.last_sequence().await.unwrap(), 0, "event log still empty");
    assert!(app.events_after(0).await.is_empty());
    assert_eq!(total(&app, "/services").await, 0);
    assert_eq!(total(&app, "/organizations").await, 0);
});

/// Every row of every table as `GET /{table}/{id}` shows it (services without `last_modified`: see
/// [`but_last_modified`]), by table and id.
async fn every_row(app: &TestApp) -> BTreeMap<(String, String), Value> {
    let mut rows = BTreeMap::new();
    for t in hsda::hsds::catalog::TABLES {
        let page = app.get_json(&format!("/{}?per_page=1000", t.plural)).await;
        assert!(page["total_pages"].as_u64().unwrap() <= 1, "{} fits on one page", t.plural);
        for item in page["contents"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            let row = forget_last_modified(app.get_json(&format!("/{}/{id}", t.plural)).await);
            rows.insert((t.name.to_string(), id.to_string()), row);
        }
    }
    rows
}

store_test!(ndjson_export_reimports_to_the_same_directory, |app| async move {
    let Some(example) = example() else { return };
    import_path(&app.db, &example, ImportOptions::default()).await.expect("import");
    // Rows no document holds, or holds otherwise: a taxonomy with nothing but a name and description and a
    // term nothing points at (no line of the file says what they are but their own), a unit only a capacity
    // shows, an unused unit, a phone of nothing and a meta_table_description.
    let id = |n: u32| format!("00000000-0000-4000-8000-00000000e{n:03}");
    let (term, unit, taxonomy, unused_unit, phone, table_description) = (id(1), id(2), id(4), id(5), id(6), id(7));
    app.put_ok(&format!("/taxonomy_terms/{term}"), &json!({"name": "Food", "description": "Food help"})).await;
    app.put_ok(&format!("/units/{unit}"), &json!({"name": "Bed"})).await;
    let capacity = json!({"service_id": SERVICE, "unit_id": unit, "available": 3, "updated": "2024-01-01T00:00:00Z"});
    app.put_ok(&format!("/service_capacities/{}", id(3)), &capacity).await;
    app.put_ok(&format!("/taxonomies/{taxonomy}"), &json!({"name": "Needs", "description": "What people need"})).await;
    app.put_ok(&format!("/units/{unused_unit}"), &json!({"name": "Seat"})).await;
    app.put_ok(&format!("/phones/{phone}"), &json!({"number": "555-0199"})).await;
    app.put_ok(
        &format!("/meta_table_descriptions/{table_description}"),
        &json!({"name": "services", "language": "en"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("directory.ndjson");
    let report = export_ndjson(&app.db, &file).await.expect("export");
    assert!(report.contains(" rows they do not hold"), "{report}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect();
    for line in &lines {
        let table = line["table"].as_str().unwrap_or_else(|| panic!("every line names its table: {line}"));
        assert!(hsda::hsds::catalog::table(table).is_some(), "{line}");
        assert!(line["data"].is_object() && line.as_object().unwrap().len() == 2, "{line}");
    }
    let line_of = |id: &str| lines.iter().find(|l| l["data"]["id"] == id).cloned();
    assert_eq!(line_of(&phone).unwrap()["table"], "phone", "a phone of nothing is a line of its own");
    assert_eq!(line_of(SERVICE).unwrap()["table"], "service", "services are whole documents");

    let store = if app.db.backend() == hsda::store::Backend::Sqlite { Store::Sqlite } else { Store::Postgres };
    let fresh = TestApp::spawn(store).await.expect("second store");
    import_path(&fresh.db, &file, ImportOptions::default()).await.expect("ndjson imports");
    let (original, copy) = (every_row(&app).await, every_row(&fresh).await);
    for table in ["taxonomy", "unit", "phone", "meta_table_description", "attribute", "metadata", "url"] {
        assert!(original.keys().any(|(t, _)| t == table), "the directory has a {table}");
    }
    for (key, row) in &original {
        assert_eq!(copy.get(key), Some(row), "{key:?} is the same after export and import");
    }
    assert_eq!(copy.len(), original.len(), "nothing more: {:?}", copy.keys().filter(|k| !original.contains_key(*k)));
    assert_eq!(fresh.get(&format!("/taxonomy_terms/{taxonomy}")).await.status(), 404, "a taxonomy stays a taxonomy");
    assert_eq!(fresh.get(&format!("/organizations/{term}")).await.status(), 404, "a term stays a term");

    // A line naming a table hsda does not know is refused, naming its line.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, format!("{}\n", json!({"table": "phonez", "data": {"id": phone}}))).unwrap();
    let err = import_path(&fresh.db, &bad, ImportOptions::default()).await.expect_err("an unknown table");
    assert!(format!("{err:#}").contains("line 1: no HSDS table is called \"phonez\""), "{err:#}");
});

store_test!(an_import_never_edits_through_a_copy_and_keeps_only_the_links_its_rows_give, |app| async move {
    let id = |n: u32| format!("00000000-0000-4000-8000-{:012}", 0xf00 + n);
    let (unit, service, location, phone) = (id(1), id(2), id(3), id(4));
    app.put_ok(&format!("/units/{unit}"), &json!({"name": "Bed"})).await;
    app.put_ok(&format!("/locations/{location}"), &json!({"location_type": "physical", "name": "Hall"})).await;
    app.put_ok(&format!("/services/{service}"), &json!({"name": "Shelter", "status": "active"})).await;
    app.put_ok(&format!("/phones/{phone}"), &json!({"number": "1", "service_id": service, "location_id": location}))
        .await;
    // A service document whose capacity shows the unit otherwise, and whose phone names no location.
    let doc = json!({"id": service, "name": "Shelter", "status": "active",
        "phones": [{"id": phone, "number": "2"}],
        "capacities": [{"id": id(5), "available": 1, "updated": "2024-01-01T00:00:00Z",
                        "unit": {"id": unit, "name": "Renamed"}}]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.ndjson");
    std::fs::write(&file, format!("{doc}\n")).unwrap();
    import_path(&app.db, &file, ImportOptions::default()).await.expect("imports");
    assert_eq!(app.get_json(&format!("/units/{unit}")).await["name"], "Bed", "a copy never edits an existing row");
    assert_eq!(app.get_json(&format!("/service_capacities/{}", id(5))).await["unit_id"], unit.as_str());
    let row = app.get_json(&format!("/phones/{phone}")).await;
    assert_eq!((row["number"].as_str(), row.get("location_id")), (Some("2"), None), "row-exact: {row}");
});

#[test]
fn the_official_full_documents_import_as_their_kinds() {
    let Some(hsds) = hsds_dir() else { return };
    for (file, kind) in [
        ("service_at_location_full.json", "service_at_location"),
        ("service_full.json", "service"),
        ("organization_full.json", "organization"),
        ("taxonomy_term.json", "taxonomy_term"),
    ] {
        let rows = hsda::bulk::import::read_path(&hsds.join("examples").join(file)).expect(file).rows;
        assert_eq!(rows[0].0.name, kind, "{file}");
        if kind == "service_at_location" {
            // Linked to the service and location it embeds, by their ids.
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(hsds.join("examples").join(file)).unwrap()).unwrap();
            assert_eq!(rows[0].1.get("service_id"), doc["service"].get("id"), "{file}");
            assert_eq!(rows[0].1.get("location_id"), doc["location"].get("id"), "{file}");
        }
    }
}

// A saved page of an HSDS list and the tabular form in JSON are HSDS JSON too: HSDS's own examples of both
// import (the tabular one row for row as its CSV twin reads).
store_test!(the_official_list_pages_and_tabular_json_import, |app| async move {
    let Some(hsds) = hsds_dir() else { return };
    let examples = hsds.join("examples");
    for (file, path) in [("service_list.json", "/services"), ("taxonomy_term_list.json", "/taxonomy_terms")] {
        let page: Value = serde_json::from_str(&std::fs::read_to_string(examples.join(file)).unwrap()).unwrap();
        import_path(&app.db, &examples.join(file), ImportOptions::default()).await.expect(file);
        for item in page["contents"].as_array().expect("contents") {
            let id = item["id"].as_str().expect("id");
            assert_eq!(app.get(&format!("{path}/{id}")).await.status(), 200, "{file}: {id}");
        }
    }
    let rows = hsda::bulk::import::read_path(&examples.join("tabular.json")).expect("tabular.json reads").rows;
    let csv = hsda::bulk::import::read_path(&examples.join("csv")).expect("csv reads").rows;
    let by_id = |rows: &[(&'static hsda::hsds::catalog::Table, serde_json::Map<String, Value>, String)]| {
        rows.iter().map(|(t, row, _)| ((t.name, row["id"].to_string()), row.clone())).collect::<BTreeMap<_, _>>()
    };
    let (tabular, csv) = (by_id(&rows), by_id(&csv));
    assert!(tabular.len() > 15, "{}", tabular.len());
    // The two examples differ a little (the CSV attribute has a label): each value the tabular row gives is
    // read as the CSV's, typed alike.
    let mut compared = 0;
    for (key, row) in &tabular {
        let Some(twin) = csv.get(key) else { continue };
        for (field, value) in row {
            assert_eq!(Some(value), twin.get(field), "{key:?} {field}");
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared} values compared");
    import_path(&app.db, &examples.join("tabular.json"), ImportOptions::default()).await.expect("tabular.json");
});

#[test]
fn hsda_exports_of_terms_and_taxonomies_read_back_as_such() {
    // Documents as `hsda export --format ndjson` wrote them before its lines named their table (other tools'
    // still look so), down to the fewest fields each kind may have: a bare `{id, name, description}` is told
    // by what the other lines point at it as.
    let id = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
    let bare = |n: u32| json!({"id": id(n), "name": format!("n{n}"), "description": "d"});
    let lines = [
        (bare(1), "taxonomy"),      // a term's taxonomy_id
        (bare(2), "taxonomy_term"), // a term's parent_id
        (
            json!({"id": id(3), "name": "n3", "description": "d", "parent_id": id(2), "taxonomy_id": id(1)}),
            "taxonomy_term",
        ),
        (bare(4), "taxonomy_term"), // an attribute's taxonomy_term_id, deep in a service
        (json!({"id": id(5), "name": "n5", "description": "d", "version": "1"}), "taxonomy"),
        (json!({"id": id(6), "name": "n6", "description": "d", "code": "C6"}), "taxonomy_term"),
        (bare(7), "organization"), // nothing points at it
        // As hsda compiles them: a term lists its metadata, an organization its arrays too.
        (json!({"id": id(12), "name": "n12", "description": "d", "metadata": []}), "taxonomy_term"),
        (json!({"id": id(13), "name": "n13", "description": "d", "metadata": [], "phones": []}), "organization"),
        // A compiled taxonomy nothing points at, with its `uri` (a term's is `term_uri`).
        (
            json!({"id": id(14), "name": "n14", "description": "d", "metadata": [], "uri": "https://t.example"}),
            "taxonomy",
        ),
        (json!({"id": id(8), "name": "n8", "description": "d", "uri": "https://o.example"}), "organization"),
        (
            json!({"id": id(9), "name": "n9", "description": "d", "uri": "https://o.example", "funding": []}),
            "organization",
        ),
        (
            json!({"id": id(10), "name": "s", "status": "active", "organization_id": id(7),
                   "attributes": [{"id": id(11), "link_id": id(10), "link_type": "service", "link_entity": "service",
                                   "taxonomy_term_id": id(4)}]}),
            "service",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("directory.ndjson");
    let text: String = lines.iter().map(|(doc, _)| format!("{doc}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let rows = hsda::bulk::import::read_path(&file).expect("reads").rows;
    for (doc, expected) in &lines {
        let row = rows.iter().find(|(_, row, _)| row.get("id") == doc.get("id")).expect("a row per line");
        assert_eq!(row.0.name, *expected, "{doc}");
    }
}

// A phone given under a service and again under its (new) organization is one phone of both, on import as
// on a PUT of the same document; the official full examples show every phone, contact and schedule so.
store_test!(a_row_shown_again_inside_a_related_object_keeps_both_links_on_import, |app| async move {
    let id = |n: u32| format!("0c0e0000-0000-4000-8000-{n:012}");
    let (service, org, phone) = (id(1), id(2), id(3));
    let document = json!({"id": service, "name": "s", "status": "active",
        "organization": {"id": org, "name": "o", "description": "d", "phones": [{"id": phone, "number": "1"}]},
        "phones": [{"id": phone, "number": "1"}]});
    let dir = tempfile::tempdir().unwrap();
    import_lines(&app, dir.path(), "one.ndjson", std::slice::from_ref(&document)).await;
    let row = app.get_json(&format!("/phones/{phone}")).await;
    assert_eq!((row["service_id"].as_str(), row["organization_id"].as_str()), (Some(&*service), Some(&*org)), "{row}");
    let organization = app.get_json(&format!("/organizations/{org}")).await;
    assert_eq!(organization["phones"][0]["id"], phone.as_str(), "{organization}");
    // A copy adds links only: an organization given on its own line without an email has none, whatever a
    // service's copy of it shows.
    let line = json!({"table": "organization", "data": {"id": org, "name": "o", "description": "d"}});
    let mut stale = document.clone();
    stale["organization"]["email"] = json!("old@example.org");
    import_lines(&app, dir.path(), "two.ndjson", &[line, stale]).await;
    let organization = app.get_json(&format!("/organizations/{org}")).await;
    assert!(organization.get("email").is_none(), "{organization}");

    let Some(hsds) = hsds_dir() else { return };
    let example = hsds.join("examples").join("service_full.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    import_path(&app.db, &example, ImportOptions::default()).await.expect("imports");
    let org = doc["organization"]["id"].as_str().unwrap();
    let stored = app.get_json(&format!("/organizations/{org}")).await;
    for field in ["phones", "contacts", "funding", "additional_websites"] {
        let ids = |v: &Value| -> BTreeSet<String> {
            v[field].as_array().into_iter().flatten().filter_map(|x| x["id"].as_str().map(str::to_owned)).collect()
        };
        assert!(!ids(&doc["organization"]).is_empty(), "the example's organization has {field}");
        assert_eq!(ids(&stored), ids(&doc["organization"]), "{field} of {stored}");
    }
});

store_test!(strict_references_refuse_what_lenient_imports_warn_about, |app| async move {
    let Some(example) = example() else { return };
    let strict = ImportOptions { strict_references: true, ..ImportOptions::default() };
    let err = import_path(&app.db, &example, strict).await.expect_err("the example has dangling references");
    let message = format!("{err:#}");
    assert!(message.contains("nothing was imported"), "{message}");
    // contacts.csv names an organization the package does not hold.
    assert!(message.contains("contacts.csv line 2, field organization_id"), "{message}");
    assert_eq!(app.db.last_sequence().await.unwrap(), 0, "nothing written");
    assert_eq!(total(&app, "/services").await, 0);

    let report = import_path(&app.db, &example, ImportOptions::default()).await.expect("lenient import");
    assert!(report.contains("warning:"), "{report}");
    assert!(report.contains("contacts.csv line 2, field organization_id"), "{report}");
    assert_eq!(total(&app, "/services").await, 1);
    assert!(app.db.last_sequence().await.unwrap() > 0);
});

store_test!(an_imported_service_is_last_modified_when_imported_and_a_round_trip_changes_nothing, |app| async move {
    let Some(example) = example() else { return };
    let started = hsda::store::now_text();
    import_path(&app.db, &example, ImportOptions::default()).await.expect("import");
    let service = app.get_json(&format!("/services/{SERVICE}")).await;
    let time = service["last_modified"].as_str().unwrap().to_string();
    assert!(time >= started, "the package's own time is not kept: {time}");
    // `modified_after` and the document agree.
    let since = app.get_json(&format!("/services?modified_after={time}")).await;
    assert_eq!(since["total_items"], 1, "{since}");
    // A GET, PUT back changes nothing: no event, the same time.
    let last = app.db.last_sequence().await.unwrap();
    let again = app.put_ok(&format!("/services/{SERVICE}"), &service).await;
    assert_eq!(app.db.last_sequence().await.unwrap(), last, "no change, no event");
    assert_eq!(again["last_modified"], time.as_str());
});

store_test!(a_row_given_twice_names_both_places_and_imports_nothing, |app| async move {
    let id = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("package");
    std::fs::create_dir(&package).unwrap();
    // The third service repeats the first one's id (in capitals, which name the same row).
    let services = format!(
        "id,name,status\n{},First,active\n{},Other,active\n{},Second,active\n",
        id(1),
        id(2),
        id(1).to_uppercase()
    );
    std::fs::write(package.join("services.csv"), services).unwrap();
    let err = import_path(&app.db, &package, ImportOptions::default()).await.expect_err("a repeated id is refused");
    let message = format!("{err:#}");
    assert!(message.contains(&format!("services.csv line 4: id {} already at line 2", id(1))), "{message}");
    assert!(message.contains("nothing was imported"), "{message}");

    // JSON documents: by line in NDJSON, by item in an array.
    let doc = |n: u32, name: &str| json!({"id": id(n), "name": name, "status": "active"});
    let ndjson = dir.path().join("twice.ndjson");
    std::fs::write(&ndjson, format!("{}\n{}\n{}\n", doc(1, "First"), doc(2, "Other"), doc(1, "Second"))).unwrap();
    let err = import_path(&app.db, &ndjson, ImportOptions::default()).await.expect_err("NDJSON refused");
    let message = format!("{err:#}");
    assert!(message.contains(&format!("line 3: id {} already at line 1", id(1))), "{message}");
    assert!(message.contains("twice.ndjson"), "the file is named: {message}");
    let array = dir.path().join("twice.json");
    std::fs::write(&array, json!([doc(1, "First"), doc(1, "Second")]).to_string()).unwrap();
    let err = import_path(&app.db, &array, ImportOptions::default()).await.expect_err("JSON array refused");
    let message = format!("{err:#}");
    assert!(message.contains(&format!("item 2: id {} already at item 1", id(1))), "{message}");

    assert_eq!(app.db.last_sequence().await.unwrap(), 0, "nothing written");
    assert_eq!(total(&app, "/services").await, 0);
});

// A lenient import keeps references to rows the directory lacks (with a warning); editing another field of such
// a row later must not be refused for the reference it already had, while a write that sets a missing one still
// is.
store_test!(a_row_imported_with_a_missing_reference_can_still_be_edited, |app| async move {
    let dir = tempfile::tempdir().unwrap();
    let (location, missing) = ("0b7e7e39-0000-4000-8000-000000000021", "0b7e7e39-0000-4000-8000-000000000022");
    let line = json!({"table": "location", "data": {"id": location, "name": "Civic Center",
        "location_type": "physical", "organization_id": missing}});
    let report = import_lines(&app, dir.path(), "dangling.ndjson", &[line]).await;
    assert!(report.contains(missing), "the missing organization is warned about: {report}");
    let path = format!("/locations/{location}");
    let r = app.patch(&path, &json!({"name": "Renamed Civic Center"})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let stored = app.get_json(&path).await;
    assert_eq!(stored["name"], "Renamed Civic Center");
    assert_eq!(stored["organization_id"], missing, "the reference stays");
    // A PUT of the whole row (its reference unchanged) that changes something is accepted too.
    let mut body = stored.clone();
    body["description"] = json!("Changed by a PUT");
    let r = app.put(&path, &body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // Setting a reference to a row that does not exist is still refused, naming the field.
    let r = app.patch(&path, &json!({"organization_id": "0b7e7e39-0000-4000-8000-000000000023"})).await;
    crate::helpers::assert_problem_at(r, 422, "/organization_id").await;
});

/// Writes `lines` (one JSON value each) to `name` in `dir` and imports it.
async fn import_lines(app: &TestApp, dir: &Path, name: &str, lines: &[Value]) -> String {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write ndjson");
    import_path(&app.db, &path, ImportOptions::default()).await.expect("import")
}

// A document's nested arrays say what its row nests, as a PUT of it would: a re-import of a service without
// a phone or schedule it had removes them (with their events), and a child the import gives elsewhere stays.
// A root an import's document removes (a service_at_location its service left out) is told to subscribers
// filtering by what its document held (the service's organization), as a PUT's removal is.
store_test!(a_root_an_import_removes_matches_what_its_document_held, |app| async move {
    let dir = tempfile::tempdir().unwrap();
    let id = |n: u32| format!("0d0d0000-0000-4000-8000-{n:012}");
    let (org, location, service, link) = (id(1), id(2), id(3), id(4));
    let lines = |links: Value| {
        [
            json!({"table": "organization", "data": {"id": org, "name": "Org", "description": "d"}}),
            json!({"table": "location", "data": {"id": location, "name": "Hall", "location_type": "physical"}}),
            json!({"table": "service", "data": {"id": service, "name": "Meals", "status": "active",
                "organization_id": org, "service_at_locations": links}}),
        ]
    };
    import_lines(&app, dir.path(), "first.ndjson", &lines(json!([{"id": link, "location_id": location}]))).await;
    assert_eq!(app.get(&format!("/service_at_locations/{link}")).await.status(), 200);
    import_lines(&app, dir.path(), "second.ndjson", &lines(json!([]))).await;
    assert_eq!(app.get(&format!("/service_at_locations/{link}")).await.status(), 404);
    let pool = sqlx::AnyPool::connect(&app.database_url).await.unwrap();
    let facets: String = sqlx::query_scalar("SELECT facets FROM events WHERE type = 'service_at_location.deleted'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(facets.contains(&org) && facets.contains(&location), "{facets}");
});

store_test!(an_imported_document_replaces_the_children_its_arrays_give, |app| async move {
    let dir = tempfile::tempdir().unwrap();
    let (org, service) = ("0b7e7e39-0000-4000-8000-000000000001", "0b7e7e39-0000-4000-8000-000000000002");
    let [p1, p2, p3, schedule] = [
        "0b7e7e39-0000-4000-8000-0000000000a1",
        "0b7e7e39-0000-4000-8000-0000000000a2",
        "0b7e7e39-0000-4000-8000-0000000000a3",
        "0b7e7e39-0000-4000-8000-0000000000b1",
    ];
    let organization = json!({"table": "organization", "data": {"id": org, "name": "Org", "description": "d"}});
    let document = |phones: Value, schedules: Value| {
        json!({"table": "service", "data": {"id": service, "name": "Meals", "status": "active",
            "organization_id": org, "phones": phones, "schedules": schedules}})
    };
    let first = document(
        json!([{"id": p1, "number": "555-0001"}, {"id": p2, "number": "555-0002"}, {"id": p3, "number": "555-0003"}]),
        json!([{"id": schedule, "description": "weekdays"}]),
    );
    import_lines(&app, dir.path(), "first.ndjson", &[organization.clone(), first]).await;
    assert_eq!(app.get_json(&format!("/services/{service}")).await["phones"].as_array().map(Vec::len), Some(3));
    let after = app.events_after(0).await.last().and_then(|e| e["sequence"].as_i64()).expect("events");

    // p3 is left out of the service's phones but given on a line of its own, still the service's: the import
    // gives it, so it stays as given.
    let second = document(json!([{"id": p1, "number": "555-0001"}]), json!([]));
    let moved = json!({"table": "phone", "data": {"id": p3, "number": "555-0003", "service_id": service}});
    let report = import_lines(&app, dir.path(), "second.ndjson", &[organization, second, moved]).await;
    assert!(
        report.starts_with("imported ") && report.contains(", 2 removed as their documents left them out"),
        "{report}"
    );
    let stored = app.get_json(&format!("/services/{service}")).await;
    let phones: Vec<&str> = stored["phones"].as_array().unwrap().iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(phones, [p1, p3], "{stored}");
    assert_eq!(stored["schedules"], json!([]), "{stored}");
    assert_eq!(app.get(&format!("/phones/{p2}")).await.status(), 404, "left out: removed");
    assert_eq!(app.get(&format!("/schedules/{schedule}")).await.status(), 404, "left out: removed");
    assert_eq!(app.get_json(&format!("/phones/{p3}")).await["service_id"], service, "given elsewhere: kept");
    // Each removal is an event, as a PUT's would be, and the service's document change too.
    let types: Vec<(String, String)> = app
        .events_after(after)
        .await
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["object_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for expected in [("phone.deleted", p2), ("schedule.deleted", schedule), ("service.updated", service)] {
        assert!(types.iter().any(|(t, id)| t == expected.0 && id == expected.1), "{expected:?} in {types:?}");
    }
    let tombstone = app.events_after(after).await.into_iter().find(|e| e["type"] == "phone.deleted").expect("event");
    assert_eq!(tombstone["data"], json!({"id": p2, "deleted": true}));
});

// A data package cannot tell an empty cell from a missing one. A required text holding "" (schema-valid) is
// exported as an empty cell and read back as "", its only empty value, so the package imports back; an
// optional "" comes back as no value.
store_test!(a_required_text_left_empty_survives_a_data_package, |app| async move {
    let organization = "0b7e7e39-0000-4000-8000-000000000011";
    let body = json!({"name": "", "description": "d", "alternate_name": ""});
    let r = app.put(&format!("/organizations/{organization}"), &body).await;
    assert!(r.status().is_success(), "{}", r.status());
    let dir = tempfile::tempdir().unwrap();
    export_datapackage(&app.db, dir.path()).await.expect("export");
    let store = if app.db.backend() == hsda::store::Backend::Sqlite { Store::Sqlite } else { Store::Postgres };
    let copy = TestApp::spawn(store).await.expect("second store");
    import_path(&copy.db, dir.path(), ImportOptions::default()).await.expect("the export imports back");
    let stored = copy.get_json(&format!("/organizations/{organization}")).await;
    assert_eq!(stored["name"], "", "{stored}");
    assert_eq!(stored["alternate_name"], Value::Null, "{stored}");
});
