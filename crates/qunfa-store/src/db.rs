//! One portable SQL layer over two backends: embedded SQLite (rusqlite) and
//! PostgreSQL (the synchronous `postgres` client). Store code writes SQL once
//! with `?` placeholders; this module rewrites them to `$n` for PostgreSQL,
//! caches prepared statements per connection, and converts values both ways.
//!
//! Everything here blocks: async callers run it on a blocking thread.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::StoreError;

/// A value bound to or read from SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a `&[Value]` from expressions.
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($v:expr),+ $(,)?) => { &[$($crate::db::Value::from($v)),+] as &[$crate::db::Value] };
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn i64(&self, i: usize) -> i64 {
        match &self.0[i] {
            Value::Int(v) => *v,
            Value::Real(v) => *v as i64,
            _ => 0,
        }
    }
    pub fn f64(&self, i: usize) -> f64 {
        match &self.0[i] {
            Value::Real(v) => *v,
            Value::Int(v) => *v as f64,
            _ => 0.0,
        }
    }
    pub fn opt_i64(&self, i: usize) -> Option<i64> {
        match &self.0[i] {
            Value::Null => None,
            _ => Some(self.i64(i)),
        }
    }
    pub fn str(&self, i: usize) -> &str {
        match &self.0[i] {
            Value::Text(s) => s,
            _ => "",
        }
    }
    pub fn opt_str(&self, i: usize) -> Option<&str> {
        match &self.0[i] {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn string(&self, i: usize) -> String {
        self.str(i).to_owned()
    }
    pub fn opt_string(&self, i: usize) -> Option<String> {
        self.opt_str(i).map(str::to_owned)
    }
    pub fn blob(&self, i: usize) -> &[u8] {
        match &self.0[i] {
            Value::Blob(b) => b,
            Value::Text(s) => s.as_bytes(),
            _ => &[],
        }
    }
    pub fn opt_blob(&self, i: usize) -> Option<&[u8]> {
        match &self.0[i] {
            Value::Null => None,
            _ => Some(self.blob(i)),
        }
    }
}

/// Which database is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Real(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::Blob(v) => v.to_sql(ty, out),
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// An open connection of either backend.
// A pool holds a handful of these; their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres { client: postgres::Client, statements: HashMap<String, postgres::Statement> },
}

impl Conn {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Runs a statement; returns the number of rows changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(sqlite_value)))?;
                Ok(n as u64)
            }
            Conn::Postgres { client, statements } => {
                let stmt = pg_prepare(client, statements, sql)?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                Ok(client.execute(&stmt, &refs)?)
            }
        }
    }

    /// Runs a query and returns every row.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut out = Vec::new();
        self.for_each_row(sql, params, &mut |row| {
            out.push(row);
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs a query and hands each row to `f` as it arrives, without holding
    /// the whole result (for scans of millions of rows).
    pub fn for_each_row(
        &mut self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n_cols = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(sqlite_value)))?;
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(n_cols);
                    for i in 0..n_cols {
                        values.push(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                            rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                            rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        });
                    }
                    f(Row(values))?;
                }
                Ok(())
            }
            Conn::Postgres { client, statements } => {
                use postgres::fallible_iterator::FallibleIterator;
                let stmt = pg_prepare(client, statements, sql)?;
                let mut rows = client.query_raw(&stmt, params.iter().map(|v| v as &(dyn ToSql + Sync)))?;
                while let Some(row) = rows.next()? {
                    f(pg_row(&row)?)?;
                }
                Ok(())
            }
        }
    }

    pub fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or(StoreError::NotFound)
    }

    /// Runs several statements without parameters.
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres { client, .. } => client.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Inserts many rows into `table` as fast as the backend allows:
    /// multi-row prepared statements reused in the open transaction (SQLite:
    /// 512 parameters per statement; PostgreSQL: 1,000 rows). `conflict` is
    /// appended (e.g. `ON CONFLICT DO NOTHING`). The caller keeps the rows, so
    /// they can be freed on the thread that made them. Returns the rows
    /// actually inserted.
    pub fn bulk_insert_borrowed(
        &mut self,
        table: &str,
        columns: &[&str],
        conflict: &str,
        rows: &[Vec<Value>],
    ) -> Result<u64, StoreError> {
        let rows_per_stmt = match self {
            Conn::Sqlite(_) => (512 / columns.len()).max(1),
            Conn::Postgres { .. } => 1000,
        };
        let mut n = 0;
        for chunk in rows.chunks(rows_per_stmt) {
            let sql = insert_sql(table, columns, chunk.len(), conflict, matches!(self, Conn::Sqlite(_)));
            n += match self {
                Conn::Sqlite(c) => c
                    .prepare_cached(&sql)?
                    .execute(rusqlite::params_from_iter(chunk.iter().flatten().map(sqlite_value)))?
                    as u64,
                Conn::Postgres { client, statements } => {
                    let stmt = pg_prepare(client, statements, &sql)?;
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        chunk.iter().flatten().map(|v| v as &(dyn ToSql + Sync)).collect();
                    client.execute(&stmt, &refs)?
                }
            };
        }
        Ok(n)
    }

    /// [`Conn::bulk_insert_borrowed`] for rows made on the fly; they are
    /// buffered a few thousand at a time.
    pub fn bulk_insert(
        &mut self,
        table: &str,
        columns: &[&str],
        conflict: &str,
        rows: &mut dyn Iterator<Item = Vec<Value>>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut buffer: Vec<Vec<Value>> = Vec::with_capacity(4096);
        loop {
            buffer.extend((&mut *rows).take(4096));
            if buffer.is_empty() {
                return Ok(n);
            }
            n += self.bulk_insert_borrowed(table, columns, conflict, &buffer)?;
            buffer.clear();
        }
    }
}

/// `INSERT INTO table (columns) VALUES (?, …), … conflict` for `n_rows` rows.
/// Full chunks share one text, so the statement caches see few distinct ones.
///
/// On SQLite a plain insert is `INSERT OR FAIL`: a multi-row `INSERT` that may
/// abort half-way otherwise keeps a statement journal (a copy of every page it
/// touches) to undo its own rows; callers roll the whole transaction back on
/// any error, so that copy is pure cost.
fn insert_sql(table: &str, columns: &[&str], n_rows: usize, conflict: &str, sqlite: bool) -> String {
    let marks = format!("({})", vec!["?"; columns.len()].join(", "));
    let verb = if sqlite && conflict.is_empty() { "INSERT OR FAIL" } else { "INSERT" };
    format!(
        "{verb} INTO {table} ({}) VALUES {} {conflict}",
        columns.join(", "),
        vec![marks.as_str(); n_rows].join(", ")
    )
}

fn sqlite_value(v: &Value) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::ValueRef;
    rusqlite::types::ToSqlOutput::Borrowed(match v {
        Value::Null => ValueRef::Null,
        Value::Int(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

/// Rewrites `?` placeholders to `$1, $2, …`, leaving quoted text alone.
pub fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut in_quote = false;
    for ch in sql.chars() {
        match ch {
            '\'' => {
                in_quote = !in_quote;
                out.push(ch);
            }
            '?' if !in_quote => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(ch),
        }
    }
    out
}

fn pg_prepare(
    client: &mut postgres::Client,
    statements: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, StoreError> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    // Multi-row inserts make many distinct statements; keep the cache bounded.
    if statements.len() > 512 {
        statements.clear();
    }
    let stmt = client.prepare(&pg_placeholders(sql))?;
    statements.insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

fn pg_row(row: &postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int),
            Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
            Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
            Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map_or(Value::Null, Value::Real),
            Type::FLOAT4 => row.try_get::<_, Option<f32>>(i)?.map_or(Value::Null, |v| Value::Real(v.into())),
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map_or(Value::Null, Value::Blob),
            _ => row.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text),
        };
        values.push(v);
    }
    Ok(Row(values))
}

/// Settings of every SQLite connection. WAL with `synchronous = FULL`: a
/// commit is durable (fsynced) before it returns. 16 KiB pages and a large
/// page cache suit the bulk paths (import, fan-out). Checkpoints run on a
/// background thread ([`sqlite_checkpointer`]) rather than inside whichever
/// commit crosses SQLite's threshold, so no request waits for the WAL to be
/// copied into the database file.
const SQLITE_PRAGMAS: &str = "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
     PRAGMA foreign_keys = ON; PRAGMA cache_size = -1048576; PRAGMA temp_store = MEMORY;
     PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;";

/// WAL frames after which the checkpointer insists (waits for readers).
const WAL_RESTART_FRAMES: i64 = 8192;

/// Checkpoints the WAL every 200 ms on its own connection for as long as the
/// pool lives (its `Drop` stops and joins this thread). A PASSIVE checkpoint never blocks readers or writers; when the
/// WAL has grown past [`WAL_RESTART_FRAMES`] anyway (long readers), a RESTART
/// checkpoint waits for them so the WAL starts over. On exit it leaves the
/// WAL to SQLite, which checkpoints when the last connection closes.
fn sqlite_checkpointer(path: PathBuf, stop: std::sync::mpsc::Receiver<()>) {
    let mut conn: Option<rusqlite::Connection> = None;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(200)) {
        if conn.is_none() {
            conn = rusqlite::Connection::open(&path).ok();
            if let Some(c) = &conn {
                let _ = c.busy_timeout(Duration::from_millis(200));
            }
        }
        let Some(c) = &conn else { continue };
        let frames =
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
        match frames {
            Ok((log, done)) if log > WAL_RESTART_FRAMES && done < log => {
                if let Err(error) = c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::debug!(%error, "WAL restart deferred");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "WAL checkpoint deferred"),
        }
    }
}

/// Where the database is.
#[derive(Debug, Clone)]
pub enum DbLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl DbLocation {
    /// Picks the backend from a database URL: `postgres://` or `postgresql://`
    /// is PostgreSQL, `sqlite://PATH` or a plain path is SQLite.
    pub fn parse(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbLocation::Postgres(url.to_owned())
        } else {
            DbLocation::Sqlite(PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(url)))
        }
    }
}

struct PoolInner {
    idle: Mutex<(Vec<Conn>, usize)>,
    available: Condvar,
    /// SQLite has one writer: writers queue here instead of spinning on SQLITE_BUSY.
    sqlite_writer: Mutex<()>,
    /// Writers of urgent traffic (transactional and chat messages) waiting or
    /// writing now; the delivery engine commits early while there are any.
    urgent: std::sync::atomic::AtomicUsize,
    /// When this process last queued urgent work (milliseconds since `epoch`
    /// plus one; 0: none since the last claim of urgent work).
    urgent_queued: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
    /// The SQLite checkpointer thread and the sender that stops it.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.checkpointer.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            drop(stop);
            let _ = thread.join();
        }
        let conns = std::mem::take(&mut self.idle.get_mut().unwrap_or_else(|e| e.into_inner()).0);
        if conns.iter().any(|c| matches!(c, Conn::Postgres { .. })) {
            // `postgres::Client` closes by blocking on its own runtime, which
            // panics when the last pool handle is dropped inside an async task.
            // Closing on a plain thread works from anywhere.
            let _ = std::thread::spawn(move || drop(conns)).join();
        }
    }
}

/// Urgent writes in progress: see [`Db::urgent`].
pub struct UrgentGuard {
    inner: Arc<PoolInner>,
}

impl Drop for UrgentGuard {
    fn drop(&mut self) {
        self.inner.urgent.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A small blocking connection pool with transaction helpers.
#[derive(Clone)]
pub struct Db {
    location: Arc<DbLocation>,
    backend: Backend,
    max_conns: usize,
    inner: Arc<PoolInner>,
}

/// A connection checked out of the pool; returned on drop.
pub struct PooledConn {
    conn: Option<Conn>,
    inner: Arc<PoolInner>,
}

impl std::ops::Deref for PooledConn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("connection present until drop")
    }
}
impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connection present until drop")
    }
}
impl Conn {
    /// Whether the connection is gone (a PostgreSQL server that restarted or
    /// dropped it); the pool replaces such a connection instead of reusing it.
    fn is_broken(&self) -> bool {
        match self {
            Conn::Sqlite(_) => false,
            Conn::Postgres { client, .. } => client.is_closed(),
        }
    }
}

/// Closes a broken connection off the caller's thread (a `postgres::Client`
/// blocks on its own runtime when dropped).
fn discard(conn: Conn) {
    let _ = std::thread::Builder::new().name("qunfa-conn-close".into()).spawn(move || drop(conn));
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if conn.is_broken() {
                // The server dropped this one; after a restart or failover it
                // dropped the idle ones too, which only show it when used.
                // Replace them all rather than fail one request per connection.
                let stale = std::mem::take(&mut idle.0);
                idle.1 -= 1 + stale.len();
                drop(idle);
                discard(conn);
                stale.into_iter().for_each(discard);
            } else {
                idle.0.push(conn);
            }
            self.inner.available.notify_one();
        }
    }
}

impl Db {
    /// Opens a pool. Nothing connects until the first checkout.
    pub fn open(location: DbLocation, max_conns: usize) -> Self {
        let backend = match location {
            DbLocation::Sqlite(_) => Backend::Sqlite,
            DbLocation::Postgres(_) => Backend::Postgres,
        };
        let inner = Arc::new(PoolInner {
            idle: Mutex::new((Vec::new(), 0)),
            available: Condvar::new(),
            sqlite_writer: Mutex::new(()),
            urgent: std::sync::atomic::AtomicUsize::new(0),
            urgent_queued: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            checkpointer: Mutex::new(None),
        });
        if let DbLocation::Sqlite(path) = &location {
            let path = path.clone();
            let (stop, stopped) = std::sync::mpsc::channel();
            match std::thread::Builder::new()
                .name("qunfa-checkpoint".into())
                .spawn(move || sqlite_checkpointer(path, stopped))
            {
                Ok(thread) => *inner.checkpointer.lock().unwrap_or_else(|e| e.into_inner()) = Some((stop, thread)),
                Err(error) => {
                    tracing::warn!(%error, "no background WAL checkpointer: the WAL is checkpointed when the database closes")
                }
            }
        }
        Self { location: Arc::new(location), backend, max_conns: max_conns.max(1), inner }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        match &*self.location {
            DbLocation::Sqlite(path) => {
                let c = rusqlite::Connection::open(path)?;
                c.busy_timeout(Duration::from_secs(10))?;
                c.set_prepared_statement_cache_capacity(256);
                c.execute_batch(SQLITE_PRAGMAS)?;
                Ok(Conn::Sqlite(c))
            }
            DbLocation::Postgres(url) => {
                let client = postgres::Client::connect(url, postgres::NoTls)?;
                Ok(Conn::Postgres { client, statements: HashMap::new() })
            }
        }
    }

    /// Checks a connection out, opening one when the pool is not full.
    ///
    /// # Errors
    /// When a new connection cannot be opened.
    pub fn conn(&self) -> Result<PooledConn, StoreError> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(conn) = idle.0.pop() {
                if conn.is_broken() {
                    idle.1 -= 1;
                    discard(conn);
                    continue;
                }
                return Ok(PooledConn { conn: Some(conn), inner: self.inner.clone() });
            }
            if idle.1 < self.max_conns {
                idle.1 += 1;
                drop(idle);
                return match self.connect() {
                    Ok(conn) => Ok(PooledConn { conn: Some(conn), inner: self.inner.clone() }),
                    Err(e) => {
                        self.inner.idle.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
                        Err(e)
                    }
                };
            }
            let (guard, _) =
                self.inner.available.wait_timeout(idle, Duration::from_secs(30)).unwrap_or_else(|e| e.into_inner());
            idle = guard;
        }
    }

    /// Marks the writes made while the guard lives as urgent traffic: bulk
    /// writers that check [`Db::urgent_waiting`] between batches commit early
    /// and let them in.
    pub fn urgent(&self) -> UrgentGuard {
        self.inner.urgent.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        UrgentGuard { inner: self.inner.clone() }
    }

    /// Whether urgent writers are waiting (see [`Db::urgent`]).
    pub fn urgent_waiting(&self) -> bool {
        self.inner.urgent.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Notes that urgent work was just queued, so a bulk step in flight
    /// commits after its current batch and the next step claims it.
    pub fn note_urgent_queued(&self) {
        let ms = self.inner.epoch.elapsed().as_millis() as u64 + 1;
        self.inner.urgent_queued.store(ms, std::sync::atomic::Ordering::Release);
    }

    /// Notes that a step claimed urgent work.
    pub fn clear_urgent_queued(&self) {
        self.inner.urgent_queued.store(0, std::sync::atomic::Ordering::Release);
    }

    /// Whether a bulk step should commit now: urgent writers wait, or urgent
    /// work was queued (in the last second) and not yet claimed here.
    pub fn urgent_pending(&self) -> bool {
        if self.urgent_waiting() {
            return true;
        }
        let at = self.inner.urgent_queued.load(std::sync::atomic::Ordering::Acquire);
        at != 0 && self.inner.epoch.elapsed().as_millis() as u64 + 1 - at < 1_000
    }

    /// Runs `f` in a write transaction; commits when it returns `Ok`, rolls
    /// back otherwise.
    ///
    /// # Errors
    /// `f`'s error, or the database's.
    pub fn write<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _writer = match self.backend {
            Backend::Sqlite => Some(self.inner.sqlite_writer.lock().unwrap_or_else(|e| e.into_inner())),
            Backend::Postgres => None,
        };
        let mut conn = self.conn()?;
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        conn.batch(begin)?;
        match f(&mut conn) {
            Ok(v) => match conn.batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    Err(e)
                }
            },
            Err(e) => {
                if let Err(rollback) = conn.batch("ROLLBACK") {
                    tracing::warn!(%rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }

    /// Runs `f` for reading (a consistent snapshot on both backends).
    ///
    /// # Errors
    /// `f`'s error, or the database's.
    pub fn read<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        match self.backend {
            // A single autocommit statement is already a snapshot; a multi-statement
            // read takes a deferred transaction so it sees one state.
            Backend::Sqlite => conn.batch("BEGIN DEFERRED")?,
            Backend::Postgres => conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?,
        }
        let result = f(&mut conn);
        let _ = conn.batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(pg_placeholders("SELECT ? , '?' , ?"), "SELECT $1 , '?' , $2");
    }
}
