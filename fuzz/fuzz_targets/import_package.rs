//! Fuzz target: the data-package importer (`hsda import`). The input is a mode byte, then either the raw
//! bytes of a `.zip`, or files separated by `0xFF` bytes (each file's first byte picks its name: the
//! descriptor, a table's CSV file or a stray file) laid out as a folder or zipped, or a `.ndjson`/`.json`
//! file. Everything is imported into a fresh SQLite store.
//!
//! Oracle: no panic; reading either succeeds or fails with a message; the import either succeeds with its
//! report or fails with a message and leaves the store without a single event (all or nothing); a failure
//! is never a database error, since everything must be refused before it reaches the database.

#![no_main]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hsda::bulk::import::{ImportOptions, import_path, read_path};
use hsda::hsds::catalog::TABLES;
use hsda::store::write::WriteError;
use hsda_fuzz::{fresh_store, runtime, scratch_dir};
use libfuzzer_sys::fuzz_target;

/// Where each file of a multi-file input goes: the descriptor, every table's CSV file, and a few that
/// belong to no table or sit elsewhere.
fn file_name(pick: u8) -> String {
    let extra = ["datapackage.json", "widgets.csv", "data/services.csv", "README.txt"];
    let index = usize::from(pick) % (TABLES.len() + extra.len());
    match TABLES.get(index) {
        Some(table) => table.csv_file.to_owned(),
        None => extra[index - TABLES.len()].to_owned(),
    }
}

/// The files of a multi-file input: `0xFF`-separated, each starting with its name byte.
fn files(data: &[u8]) -> Vec<(String, &[u8])> {
    data.split(|&b| b == 0xFF)
        .filter_map(|chunk| chunk.split_first().map(|(&pick, bytes)| (file_name(pick), bytes)))
        .collect()
}

fn write_folder(folder: &Path, data: &[u8]) {
    for (name, bytes) in files(data) {
        let path = folder.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create a package folder");
        }
        std::fs::write(path, bytes).expect("write a package file");
    }
}

fn write_zip(path: &Path, data: &[u8]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create the zip"));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files(data) {
        // A duplicate name is refused by the writer; the archive just keeps the first.
        if zip.start_file(name, options).is_ok() {
            zip.write_all(bytes).expect("write a zip entry");
        }
    }
    zip.finish().expect("finish the zip");
}

/// Lays the input out on disk and returns the path to import.
fn lay_out(dir: &Path, mode: u8, data: &[u8]) -> PathBuf {
    match mode % 5 {
        0 => {
            let path = dir.join("package.zip");
            std::fs::write(&path, data).expect("write the zip bytes");
            path
        }
        1 => {
            let path = dir.join("package");
            std::fs::create_dir(&path).expect("create the package folder");
            write_folder(&path, data);
            path
        }
        2 => {
            let path = dir.join("built.zip");
            write_zip(&path, data);
            path
        }
        3 => {
            let path = dir.join("documents.ndjson");
            std::fs::write(&path, data).expect("write the documents");
            path
        }
        _ => {
            let path = dir.join("documents.json");
            std::fs::write(&path, data).expect("write the documents");
            path
        }
    }
}

async fn check(dir: &Path, path: &Path) {
    if let Err(error) = read_path(path) {
        assert!(!format!("{error:#}").trim().is_empty(), "a read error without a message");
        return;
    }
    let db = fresh_store(dir).await;
    match import_path(&db, path, ImportOptions::default()).await {
        Ok(report) => assert!(report.starts_with("imported "), "unexpected report: {report}"),
        Err(error) => {
            let database = error.chain().any(|cause| matches!(cause.downcast_ref(), Some(WriteError::Database(_))));
            assert!(!database, "the import reached a database error: {error:#}");
            assert!(!format!("{error:#}").trim().is_empty(), "an import error without a message");
            let events = db.last_sequence().await.expect("read the event sequence");
            assert_eq!(events, 0, "a failed import left {events} events: {error:#}");
        }
    }
    db.close().await;
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dir = scratch_dir();
    let path = lay_out(dir.path(), mode, rest);
    runtime().block_on(check(dir.path(), &path));
});
