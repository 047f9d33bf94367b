//! Storage of qunfa: the database is the source of truth and the queue.
//!
//! [`Store`] offers domain operations (workspaces, keys, contacts, tags,
//! departments, broadcasts, the delivery queue, the inbox and the audit log)
//! written once against the portable SQL layer in [`db`], which runs them on
//! embedded SQLite or on PostgreSQL. Every call blocks; async code runs it on a
//! blocking thread. Every state change appends to the audit chain in the same
//! transaction.

pub mod abtest;
pub mod approvals;
pub mod audience;
pub mod audit;
pub mod broadcasts;
pub mod channels;
pub mod compat;
pub mod console;
pub mod contacts;
pub mod db;
pub mod engagement;
pub mod events;
pub mod evidence;
pub mod inbox;
pub mod json;
pub mod measure;
pub mod media;
pub mod members;
pub mod queue;
pub mod recall;
pub mod safety;
pub mod schedule;
pub mod security;
pub mod segments;
pub mod tags;
pub mod workspaces;

use qunfa_core::Code;

pub use db::{Backend, Conn, Db, DbLocation, Row, Value};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row in this workspace.
    #[error("not found")]
    NotFound,
    /// A rule refused the change; nothing was written.
    #[error("{code:?}: {message}")]
    Rejected { code: Code, message: String, details: Vec<String> },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", pg_detail(.0))]
    Postgres(#[from] postgres::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

/// A PostgreSQL error with the server's message ("db error" alone says nothing).
fn pg_detail(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl StoreError {
    pub fn rejected(code: Code, message: impl Into<String>) -> Self {
        StoreError::Rejected { code, message: message.into(), details: Vec::new() }
    }

    /// Whether this is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            StoreError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    /// Whether the transaction lost a race the database resolves by
    /// aborting one side (a PostgreSQL deadlock or serialization failure):
    /// running it again at once is right.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.code().is_some_and(|c| c.code() == "40P01" || c.code() == "40001"),
            _ => false,
        }
    }

    /// Whether the database is unreachable or busy (worth retrying later).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked | rusqlite::ErrorCode::DiskFull
            ),
            // Connection exceptions (08), insufficient resources such as a full
            // disk (53), operator intervention such as a server shutting down (57).
            StoreError::Postgres(e) => {
                e.is_closed()
                    || e.as_db_error().is_none()
                    || e.code().is_some_and(|c| ["08", "53", "57"].iter().any(|class| c.code().starts_with(class)))
            }
            _ => false,
        }
    }
}

/// A migration: its version, its SQL, and code to run after the SQL.
type Migration = (i64, &'static str, Option<fn(&mut Conn) -> Result<(), StoreError>>);

const SQLITE_MIGRATIONS: &[Migration] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql"), None),
    (2, include_str!("../migrations/sqlite/0002_member_sets.sql"), Some(move_memberships_to_bitmaps)),
    (3, include_str!("../migrations/sqlite/0003_delivery.sql"), None),
    (4, include_str!("../migrations/sqlite/0004_channels.sql"), None),
    (5, include_str!("../migrations/sqlite/0005_safety.sql"), None),
    (6, include_str!("../migrations/sqlite/0006_workflow.sql"), None),
    (7, include_str!("../migrations/sqlite/0007_schedule.sql"), None),
    (8, include_str!("../migrations/sqlite/0008_recall.sql"), None),
    (9, include_str!("../migrations/sqlite/0009_rules.sql"), None),
    (10, include_str!("../migrations/sqlite/0010_measure.sql"), None),
    (11, include_str!("../migrations/sqlite/0011_compat.sql"), None),
    (12, include_str!("../migrations/sqlite/0012_console.sql"), None),
    (13, include_str!("../migrations/sqlite/0013_compat_dedup.sql"), None),
    (14, include_str!("../migrations/sqlite/0014_measure_sets.sql"), Some(build_measure_sets)),
];
const POSTGRES_MIGRATIONS: &[Migration] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql"), None),
    (2, include_str!("../migrations/postgres/0002_member_sets.sql"), Some(move_memberships_to_bitmaps)),
    (3, include_str!("../migrations/postgres/0003_delivery.sql"), None),
    (4, include_str!("../migrations/postgres/0004_channels.sql"), None),
    (5, include_str!("../migrations/postgres/0005_safety.sql"), None),
    (6, include_str!("../migrations/postgres/0006_workflow.sql"), None),
    (7, include_str!("../migrations/postgres/0007_schedule.sql"), None),
    (8, include_str!("../migrations/postgres/0008_recall.sql"), None),
    (9, include_str!("../migrations/postgres/0009_rules.sql"), None),
    (10, include_str!("../migrations/postgres/0010_measure.sql"), None),
    (11, include_str!("../migrations/postgres/0011_compat.sql"), None),
    (12, include_str!("../migrations/postgres/0012_console.sql"), None),
    (13, include_str!("../migrations/postgres/0013_compat_dedup.sql"), None),
    (14, include_str!("../migrations/postgres/0014_measure_sets.sql"), Some(build_measure_sets)),
];

/// Version 14: the engagement sets of every broadcast, from its records.
fn build_measure_sets(c: &mut Conn) -> Result<(), StoreError> {
    let ids: Vec<i64> =
        c.query("SELECT DISTINCT broadcast_id FROM deliveries", params![])?.iter().map(|r| r.i64(0)).collect();
    for id in ids {
        engagement::rebuild(c, id)?;
    }
    Ok(())
}

/// Version 2: memberships move from one row per contact to bitmaps.
fn move_memberships_to_bitmaps(c: &mut Conn) -> Result<(), StoreError> {
    members::migrate_rows(c, "contact_tags", "tag_id", members::SetKind::Tag)?;
    members::migrate_rows(c, "contact_departments", "department_id", members::SetKind::Department)?;
    c.batch("DROP TABLE contact_tags; DROP TABLE contact_departments;")
}

/// The store: a pool over one database.
#[derive(Clone)]
pub struct Store {
    pub db: Db,
    /// The audience indexes of this process (see [`audience`]).
    pub audiences: std::sync::Arc<audience::Audiences>,
}

impl Store {
    /// Opens the database and applies pending migrations.
    ///
    /// # Errors
    /// When the database cannot be reached or a migration fails.
    pub fn open(location: DbLocation, max_conns: usize) -> Result<Self, StoreError> {
        if let DbLocation::Sqlite(path) = &location {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Migration(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let store = Store { db: Db::open(location, max_conns), audiences: Default::default() };
        store.migrate()?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let migrations = match self.backend() {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        self.db.write(|c| {
            if c.backend() == Backend::Postgres {
                // Serialise migrations of several nodes starting at once.
                c.batch("SELECT pg_advisory_xact_lock(727274)")?;
            }
            c.batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )?;
            let applied: Vec<i64> =
                c.query("SELECT version FROM schema_migrations", params![])?.iter().map(|r| r.i64(0)).collect();
            for (version, sql, after) in migrations {
                if !applied.contains(version) {
                    c.batch(sql).map_err(|e| StoreError::Migration(format!("version {version}: {e}")))?;
                    if let Some(after) = after {
                        after(c).map_err(|e| StoreError::Migration(format!("version {version}: {e}")))?;
                    }
                    c.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        params![*version, now_millis()],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// A health probe: one round trip to the database.
    ///
    /// # Errors
    /// When the database does not answer.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.db.conn()?.query("SELECT 1", params![])?;
        Ok(())
    }

    /// Reads a server-level setting.
    ///
    /// # Errors
    /// Database errors.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self.db.conn()?.query_opt("SELECT value FROM server_settings WHERE key = ?", params![key])?;
        Ok(row.map(|r| r.string(0)))
    }

    /// Writes a server-level setting unless it is set already; returns the value in force.
    ///
    /// # Errors
    /// Database errors.
    pub fn setting_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.db.write(|c| {
            c.execute(
                "INSERT INTO server_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )?;
            Ok(c.query_one("SELECT value FROM server_settings WHERE key = ?", params![key])?.string(0))
        })
    }

    /// Replaces a server-level setting.
    ///
    /// # Errors
    /// Database errors.
    pub fn setting_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute(
                "INSERT INTO server_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
    }
}

/// The wall clock in Unix milliseconds. Only edges call this; rules take `now`.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A fresh random secret: `prefix` and 32 hex characters of 128 random bits.
pub fn new_secret(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// How secrets are stored: hex SHA-256. Secrets are 128 random bits, so a fast
/// hash is enough; a slow password hash would not add anything.
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Public id of a contact: the workspace id in the high 32 bits and the dense
/// index in the low ones, so an id names one contact across the whole server.
pub fn contact_public_id(workspace_id: i64, idx: u32) -> i64 {
    (workspace_id << 32) | i64::from(idx)
}

/// The dense index of a public contact id, if it belongs to `workspace_id`.
pub fn contact_idx_of(workspace_id: i64, public_id: i64) -> Option<u32> {
    if public_id >> 32 == workspace_id {
        Some((public_id & 0xFFFF_FFFF) as u32)
    } else {
        None
    }
}

pub mod test_support {
    //! Fresh databases for tests: a temporary SQLite file, or a new database
    //! on the PostgreSQL server named by `QUNFA_TEST_POSTGRES_URL`.

    use crate::DbLocation;

    /// A database that lives as long as this value (SQLite: a temp dir;
    /// PostgreSQL: a database dropped with the value, so test runs do not
    /// leave one behind per test on a developer's server).
    pub struct TestDb {
        pub location: DbLocation,
        pub url: String,
        _dir: Option<tempfile_dir::Dir>,
        _pg: Option<PgDatabase>,
    }

    /// A test database on a PostgreSQL server: (admin URL, name).
    struct PgDatabase(String, String);

    impl Drop for PgDatabase {
        fn drop(&mut self) {
            let (admin, name) = (self.0.clone(), self.1.clone());
            // A plain thread: the blocking client cannot run inside an async runtime.
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            })
            .join();
        }
    }

    mod tempfile_dir {
        /// A temporary directory removed on drop.
        pub struct Dir(pub std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// A fresh, empty SQLite database in a temporary directory.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(crate::new_secret("qunfa-test-"));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("qunfa.db");
        TestDb {
            url: path.display().to_string(),
            location: DbLocation::Sqlite(path),
            _dir: Some(tempfile_dir::Dir(dir)),
            _pg: None,
        }
    }

    /// A fresh, empty PostgreSQL database.
    ///
    /// # Panics
    /// When `QUNFA_TEST_POSTGRES_URL` is unset (start one with
    /// `scripts/pg-start.sh`) or the server refuses.
    pub fn postgres() -> TestDb {
        let admin = std::env::var("QUNFA_TEST_POSTGRES_URL").expect(
            "QUNFA_TEST_POSTGRES_URL is not set: run `export QUNFA_TEST_POSTGRES_URL=$(scripts/pg-start.sh)` (or use scripts/test.sh)",
        );
        let name = crate::new_secret("qunfa_t_");
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to the test PostgreSQL");
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create test database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        TestDb { location: DbLocation::Postgres(url.clone()), url, _dir: None, _pg: Some(PgDatabase(admin, name)) }
    }
}
