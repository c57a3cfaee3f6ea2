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
        let db = Db::connect(&sqlite_url(&file)).await.expect("migrate the template store");
        db.close().await;
        drop(db);
        // The group committer's own connection closes on its thread once the last handle is gone; until the
        // last connection has closed (and SQLite has folded the WAL into the file and removed it), the file
        // alone may be a checkpoint's half-copied pages ("database disk image is malformed" when copied).
        let wal = template_dir.path().join("template.db-wal");
        for _ in 0..1000 {
            if !wal.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!wal.exists(), "the template store's connections close within 10 s");
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
