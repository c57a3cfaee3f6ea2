//! What hsda's fuzz targets share: one Tokio runtime, scratch folders (in memory-backed `/dev/shm` where
//! there is one, so that SQLite's fsync on every commit costs nothing) and fresh, migrated SQLite stores.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hsda::store::Db;

/// The runtime every target drives hsda's async code on (one thread: libFuzzer runs one input at a time).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime"))
}

/// A new empty folder, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder =
        tempfile::Builder::new().prefix("hsda-fuzz-").tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") });
    builder.expect("a scratch folder")
}

/// A migrated, empty SQLite store in `dir`: a copy of a template migrated once per process, which is much
/// cheaper than running the migrations for every input.
pub async fn fresh_store(dir: &Path) -> Db {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    if TEMPLATE.get().is_none() {
        let template_dir = scratch_dir();
        let file = template_dir.path().join("template.db");
        let migrated = template_dir.path().join("migrated.db");
        let db = Db::connect(&sqlite_url(&migrated)).await.expect("migrate the template store");
        db.close().await;
        drop(db);
        // A snapshot of the migrated store in one self-contained file. Copying the migrated file itself raced
        // its last connection's close (the group committer's, on its own thread): a file caught half-way
        // through that close's checkpoint opened as "database disk image is malformed".
        let source = rusqlite::Connection::open(&migrated).expect("open the migrated store");
        source.execute("VACUUM INTO ?1", [file.to_str().expect("a UTF-8 path")]).expect("snapshot the template store");
        drop(source);
        let _ = TEMPLATE.set((template_dir, file));
    }
    let (_, template) = TEMPLATE.get().expect("set above");
    let file = dir.join("hsda.db");
    std::fs::copy(template, &file).expect("copy the template store");
    Db::connect(&sqlite_url(&file)).await.expect("open a fresh store")
}

/// The `sqlite://` URL of a database file.
pub fn sqlite_url(file: &Path) -> String {
    format!("sqlite://{}", file.display())
}
