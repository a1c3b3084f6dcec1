//! The embedded vector index: a SQLite database in the data dir holds every file's record and
//! vectors (little-endian `f32`s), and the checkpoint, written in one transaction per batch. A
//! query scans the asking owner's vectors, which are kept in memory once read, within a budget, the
//! least recently asked going first (each batch forgets the owners it touched): one owner's files are what a query may see, so no other user's vectors
//! are ever read for it, and the scan is exact.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cloudsync_domain::{FileId, UserId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{FileVectors, Near, VectorBatch, VectorIndex, best_per_file, moved_on};
use crate::{SearchError, SearchResult};

const SCHEMA: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS vector_files (file_id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, provider_id TEXT NOT NULL, checksum TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS vector_files_owner ON vector_files (owner_id)",
    "CREATE INDEX IF NOT EXISTS vector_files_provider ON vector_files (provider_id)",
    "CREATE TABLE IF NOT EXISTS vectors (file_id TEXT NOT NULL, ord INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (file_id, ord))",
    "CREATE TABLE IF NOT EXISTS vector_checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), position INTEGER NOT NULL)",
    "INSERT INTO vector_checkpoint (id, position) VALUES (0, 0) ON CONFLICT (id) DO NOTHING",
];

/// One owner's vectors, as a query scans them.
struct OwnerVectors {
    files: Vec<FileId>,
    /// For each vector, its file's index in `files`.
    owners: Vec<u32>,
    dims: usize,
    data: Vec<f32>,
}

/// The embedded [`VectorIndex`]: `<data_dir>/vectors/vectors.sqlite`.
pub struct SqliteVectors {
    pool: SqlitePool,
    /// The owners' vectors read lately, within [`CACHE_BYTES`].
    cache: Mutex<Cache>,
}

/// What a query's scan has at hand: the owners' vectors read lately (the least recently asked go
/// first when they pass [`CACHE_BYTES`]), and how many batches have been applied (a read that a
/// batch overtook is not kept).
#[derive(Default)]
struct Cache {
    owners: HashMap<UserId, (Arc<OwnerVectors>, u64)>,
    generation: u64,
    clock: u64,
    bytes: usize,
}

/// The memory the cached vectors may take (about 170,000 vectors of 384 numbers).
const CACHE_BYTES: usize = 256 << 20;

impl Cache {
    fn get(&mut self, owner: UserId) -> Option<Arc<OwnerVectors>> {
        self.clock += 1;
        let clock = self.clock;
        self.owners.get_mut(&owner).map(|(set, used)| {
            *used = clock;
            Arc::clone(set)
        })
    }

    fn remove(&mut self, owner: UserId) {
        if let Some((set, _)) = self.owners.remove(&owner) {
            self.bytes -= set.data.len() * 4;
        }
    }

    fn insert(&mut self, owner: UserId, set: Arc<OwnerVectors>) {
        self.remove(owner);
        let size = set.data.len() * 4;
        while self.bytes + size > CACHE_BYTES {
            let Some(oldest) = self.owners.iter().min_by_key(|(_, (_, used))| *used).map(|(o, _)| *o) else {
                break;
            };
            self.remove(oldest);
        }
        // One owner larger than the budget is scanned from the database each time instead.
        if size <= CACHE_BYTES {
            self.clock += 1;
            self.bytes += size;
            self.owners.insert(owner, (set, self.clock));
        }
    }
}

fn db(err: sqlx::Error) -> SearchError {
    SearchError::Index(format!("the vector index: {err}"))
}

fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|n| f32::from_le_bytes([n[0], n[1], n[2], n[3]]))
        .collect()
}

fn parse<T: FromStr>(value: &str) -> SearchResult<T> {
    value
        .parse()
        .map_err(|_| SearchError::Index(format!("the vector index holds a malformed id {value:?}")))
}

impl SqliteVectors {
    /// Opens (creating) the index in `dir`.
    ///
    /// # Errors
    /// The folder or the database cannot be made or opened.
    pub async fn open(dir: &Path) -> SearchResult<Self> {
        std::fs::create_dir_all(dir).map_err(|err| SearchError::Index(format!("the vector index folder: {err}")))?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("vectors.sqlite"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(db)?;
        }
        Ok(Self {
            pool,
            cache: Mutex::new(Cache::default()),
        })
    }

    fn forget(&self, owner: Option<UserId>) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.generation += 1;
        match owner {
            Some(owner) => cache.remove(owner),
            None => {
                *cache = Cache {
                    generation: cache.generation,
                    ..Cache::default()
                }
            }
        }
    }

    async fn owner_vectors(&self, owner: UserId) -> SearchResult<Arc<OwnerVectors>> {
        let generation = {
            let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(found) = cache.get(owner) {
                return Ok(found);
            }
            cache.generation
        };
        let rows = sqlx::query(
            "SELECT v.file_id, v.vector FROM vectors v JOIN vector_files f ON f.file_id = v.file_id \
             WHERE f.owner_id = ?1 ORDER BY v.file_id, v.ord",
        )
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut set = OwnerVectors {
            files: Vec::new(),
            owners: Vec::with_capacity(rows.len()),
            dims: 0,
            data: Vec::new(),
        };
        for row in rows {
            let file: FileId = parse(row.try_get::<&str, _>(0).map_err(db)?)?;
            let vector = from_bytes(row.try_get::<&[u8], _>(1).map_err(db)?);
            if set.dims == 0 {
                set.dims = vector.len();
            }
            if vector.len() != set.dims {
                continue;
            }
            if set.files.last() != Some(&file) {
                set.files.push(file);
            }
            set.owners.push(u32::try_from(set.files.len() - 1).unwrap_or(u32::MAX));
            set.data.extend_from_slice(&vector);
        }
        let set = Arc::new(set);
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.generation == generation {
            cache.insert(owner, Arc::clone(&set));
        }
        Ok(set)
    }
}

#[async_trait]
impl VectorIndex for SqliteVectors {
    async fn records(&self, ids: &[FileId]) -> SearchResult<Vec<FileVectors>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query("SELECT owner_id, provider_id, checksum FROM vector_files WHERE file_id = ?1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            if let Some(row) = row {
                out.push(FileVectors {
                    file_id: *id,
                    owner_id: parse(row.try_get::<&str, _>(0).map_err(db)?)?,
                    provider_id: parse(row.try_get::<&str, _>(1).map_err(db)?)?,
                    checksum: row.try_get::<String, _>(2).map_err(db)?,
                    vectors: None,
                });
            }
        }
        Ok(out)
    }

    async fn apply(&self, batch: VectorBatch) -> SearchResult<()> {
        let mut touched = Vec::new();
        let mut tx = self.pool.begin().await.map_err(db)?;
        for id in &batch.deletes {
            let id = id.to_string();
            let owner: Option<String> = sqlx::query_scalar("SELECT owner_id FROM vector_files WHERE file_id = ?1")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            touched.extend(owner.and_then(|o| o.parse::<UserId>().ok()));
            sqlx::query("DELETE FROM vectors WHERE file_id = ?1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("DELETE FROM vector_files WHERE file_id = ?1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for file in &batch.upserts {
            let id = file.file_id.to_string();
            sqlx::query(
                "INSERT INTO vector_files (file_id, owner_id, provider_id, checksum) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (file_id) DO UPDATE SET owner_id = excluded.owner_id, provider_id = excluded.provider_id, checksum = excluded.checksum",
            )
            .bind(&id)
            .bind(file.owner_id.to_string())
            .bind(file.provider_id.to_string())
            .bind(&file.checksum)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(vectors) = &file.vectors {
                touched.push(file.owner_id);
                sqlx::query("DELETE FROM vectors WHERE file_id = ?1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for (ord, vector) in vectors.iter().enumerate() {
                    sqlx::query("INSERT INTO vectors (file_id, ord, vector) VALUES (?1, ?2, ?3)")
                        .bind(&id)
                        .bind(i64::try_from(ord).unwrap_or(i64::MAX))
                        .bind(to_bytes(vector))
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
            }
        }
        for (column, ids) in [
            ("owner_id", batch.erased.iter().map(ToString::to_string).collect::<Vec<_>>()),
            ("provider_id", batch.removed_providers.iter().map(ToString::to_string).collect()),
        ] {
            for id in ids {
                let vectors = format!("DELETE FROM vectors WHERE file_id IN (SELECT file_id FROM vector_files WHERE {column} = ?1)");
                sqlx::query(&vectors).bind(&id).execute(&mut *tx).await.map_err(db)?;
                let files = format!("DELETE FROM vector_files WHERE {column} = ?1");
                sqlx::query(&files).bind(&id).execute(&mut *tx).await.map_err(db)?;
            }
        }
        let moved = sqlx::query("UPDATE vector_checkpoint SET position = ?1 WHERE id = 0 AND position = ?2")
            .bind(batch.checkpoint)
            .bind(batch.from)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if moved.rows_affected() == 0 {
            tx.rollback().await.map_err(db)?;
            return Err(moved_on(batch.from));
        }
        tx.commit().await.map_err(db)?;
        if !batch.erased.is_empty() || !batch.removed_providers.is_empty() {
            self.forget(None);
        }
        for owner in touched {
            self.forget(Some(owner));
        }
        Ok(())
    }

    async fn checkpoint(&self) -> SearchResult<i64> {
        sqlx::query_scalar("SELECT position FROM vector_checkpoint WHERE id = 0")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn nearest(&self, owner: UserId, query: &[f32], limit: usize, except: Option<FileId>) -> SearchResult<Vec<Near>> {
        let set = self.owner_vectors(owner).await?;
        if set.dims == 0 || set.dims != query.len() || limit == 0 {
            return Ok(Vec::new());
        }
        let query = query.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut best = vec![f32::MIN; set.files.len()];
            for (vector, &file) in set.data.chunks_exact(set.dims).zip(&set.owners) {
                let score: f32 = vector.iter().zip(&query).map(|(a, b)| a * b).sum();
                let slot = &mut best[file as usize];
                if score > *slot {
                    *slot = score;
                }
            }
            let hits = set.files.iter().copied().zip(best).filter(|(file, _)| Some(*file) != except);
            best_per_file(hits, limit)
        })
        .await
        .map_err(|err| SearchError::Index(format!("a vector query stopped: {err}")))
    }

    async fn vectors(&self, owner: UserId, file: FileId) -> SearchResult<Vec<Vec<f32>>> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT v.vector FROM vectors v JOIN vector_files f ON f.file_id = v.file_id \
             WHERE f.file_id = ?1 AND f.owner_id = ?2 ORDER BY v.ord",
        )
        .bind(file.to_string())
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(|bytes| from_bytes(bytes)).collect())
    }

    async fn vectors_of(&self, owner: UserId, files: &[FileId]) -> SearchResult<HashMap<FileId, Vec<Vec<f32>>>> {
        let set = self.owner_vectors(owner).await?;
        let wanted: HashSet<FileId> = files.iter().copied().collect();
        let mut found: HashMap<FileId, Vec<Vec<f32>>> = HashMap::new();
        if set.dims == 0 {
            return Ok(found);
        }
        for (vector, &file) in set.data.chunks_exact(set.dims).zip(&set.owners) {
            let id = set.files[file as usize];
            if wanted.contains(&id) {
                found.entry(id).or_default().push(vector.to_vec());
            }
        }
        Ok(found)
    }

    async fn embedded_files(&self, owner: UserId) -> SearchResult<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT v.file_id) FROM vectors v JOIN vector_files f ON f.file_id = v.file_id WHERE f.owner_id = ?1",
        )
        .bind(owner.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn files_with_vectors(&self, owner: UserId, limit: usize) -> SearchResult<Vec<FileId>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT f.file_id FROM vector_files f WHERE f.owner_id = ?1 \
             AND EXISTS (SELECT 1 FROM vectors v WHERE v.file_id = f.file_id) ORDER BY f.file_id LIMIT ?2",
        )
        .bind(owner.to_string())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|id| parse(id)).collect()
    }

    async fn reset(&self) -> SearchResult<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        for statement in [
            "DELETE FROM vectors",
            "DELETE FROM vector_files",
            "UPDATE vector_checkpoint SET position = 0 WHERE id = 0",
        ] {
            sqlx::query(statement).execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.forget(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cloudsync_domain::UserId;
    use uuid::Uuid;

    use super::{CACHE_BYTES, Cache, OwnerVectors};

    fn set(numbers: usize) -> Arc<OwnerVectors> {
        Arc::new(OwnerVectors {
            files: Vec::new(),
            owners: Vec::new(),
            dims: 1,
            data: vec![0.0; numbers],
        })
    }

    #[test]
    fn the_cache_keeps_to_its_budget_and_lets_the_least_recent_go() {
        let quarter = CACHE_BYTES / 4 / 4;
        let owners: Vec<UserId> = (0..5).map(|_| UserId::from_uuid(Uuid::now_v7())).collect();
        let mut cache = Cache::default();
        for owner in &owners[..4] {
            cache.insert(*owner, set(quarter));
        }
        assert!(cache.get(owners[0]).is_some(), "asked again: now the most recent");
        cache.insert(owners[4], set(quarter));
        assert!(cache.bytes <= CACHE_BYTES);
        assert!(cache.get(owners[1]).is_none(), "the least recently asked went");
        assert!(cache.get(owners[0]).is_some() && cache.get(owners[4]).is_some());
        cache.insert(owners[2], set(CACHE_BYTES));
        assert!(cache.get(owners[2]).is_none(), "one owner over the budget is not kept");
    }
}
