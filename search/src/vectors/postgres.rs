//! The vector index on PostgreSQL with pgvector: each vector a row with its owner, under an HNSW
//! index on cosine distance; files and the checkpoint in tables beside it, written in one transaction
//! per batch. A query asks for the owner's nearest vectors with pgvector's iterative index scan (so
//! the owner filter does not starve the approximate search of rows), then keeps each file's best.

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use cloudsync_domain::{FileId, UserId};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{FileVectors, Near, VectorBatch, VectorIndex, best_per_file, moved_on};
use crate::{SearchError, SearchResult};

/// Rows asked for per file wanted: a file has several vectors (its name's, its passages').
const ROWS_PER_FILE: usize = 8;

fn db(err: sqlx::Error) -> SearchError {
    SearchError::Index(format!("the vector index (pgvector): {err}"))
}

/// pgvector's text form of a vector (`[0.1,-2,…]`); `f32`'s `Display` gives back the same number.
fn literal(vector: &[f32]) -> String {
    let mut out = String::with_capacity(vector.len() * 12 + 2);
    out.push('[');
    for (i, x) in vector.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}

fn parse_literal(text: &str) -> SearchResult<Vec<f32>> {
    text.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| f32::from_str(x.trim()).map_err(|_| SearchError::Index(format!("pgvector returned a malformed number {x:?}"))))
        .collect()
}

/// The scale [`VectorIndex`]: PostgreSQL with the `vector` extension (pgvector 0.8 or later).
pub struct PgVectors {
    pool: PgPool,
    dims: usize,
}

impl PgVectors {
    /// Connects to `url` and makes the tables and the HNSW index for vectors of `dims` numbers.
    ///
    /// # Errors
    /// The server is unreachable or has no pgvector.
    pub async fn open(url: &str, dims: usize) -> SearchResult<Self> {
        let pool = PgPoolOptions::new().max_connections(8).connect(url).await.map_err(db)?;
        let schema = [
            "CREATE EXTENSION IF NOT EXISTS vector".to_owned(),
            "CREATE TABLE IF NOT EXISTS vector_files (file_id uuid PRIMARY KEY, owner_id uuid NOT NULL, provider_id uuid NOT NULL, checksum text NOT NULL)".to_owned(),
            "CREATE INDEX IF NOT EXISTS vector_files_owner ON vector_files (owner_id)".to_owned(),
            "CREATE INDEX IF NOT EXISTS vector_files_provider ON vector_files (provider_id)".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS vectors (file_id uuid NOT NULL, ord integer NOT NULL, owner_id uuid NOT NULL, \
                 embedding vector({dims}) NOT NULL, PRIMARY KEY (file_id, ord))"
            ),
            "CREATE INDEX IF NOT EXISTS vectors_owner ON vectors (owner_id)".to_owned(),
            "CREATE INDEX IF NOT EXISTS vectors_nearest ON vectors USING hnsw (embedding vector_cosine_ops)".to_owned(),
            "CREATE TABLE IF NOT EXISTS vector_checkpoint (id integer PRIMARY KEY CHECK (id = 0), position bigint NOT NULL)".to_owned(),
            "INSERT INTO vector_checkpoint (id, position) VALUES (0, 0) ON CONFLICT (id) DO NOTHING".to_owned(),
        ];
        // Two servers opening one database at once would race to create the same objects.
        let mut tx = pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7170817)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for statement in &schema {
            sqlx::query(statement).execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Self { pool, dims })
    }
}

#[async_trait]
impl VectorIndex for PgVectors {
    async fn records(&self, ids: &[FileId]) -> SearchResult<Vec<FileVectors>> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let rows = sqlx::query("SELECT file_id, owner_id, provider_id, checksum FROM vector_files WHERE file_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(FileVectors {
                    file_id: FileId::from_uuid(row.try_get(0).map_err(db)?),
                    owner_id: UserId::from_uuid(row.try_get(1).map_err(db)?),
                    provider_id: cloudsync_domain::ProviderId::from_uuid(row.try_get(2).map_err(db)?),
                    checksum: row.try_get(3).map_err(db)?,
                    vectors: None,
                })
            })
            .collect()
    }

    async fn apply(&self, batch: VectorBatch) -> SearchResult<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let deleted: Vec<Uuid> = batch.deletes.iter().map(|id| id.as_uuid()).collect();
        sqlx::query("DELETE FROM vectors WHERE file_id = ANY($1)")
            .bind(&deleted)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM vector_files WHERE file_id = ANY($1)")
            .bind(&deleted)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for file in &batch.upserts {
            sqlx::query(
                "INSERT INTO vector_files (file_id, owner_id, provider_id, checksum) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (file_id) DO UPDATE SET owner_id = excluded.owner_id, provider_id = excluded.provider_id, checksum = excluded.checksum",
            )
            .bind(file.file_id.as_uuid())
            .bind(file.owner_id.as_uuid())
            .bind(file.provider_id.as_uuid())
            .bind(&file.checksum)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(vectors) = &file.vectors {
                sqlx::query("DELETE FROM vectors WHERE file_id = $1")
                    .bind(file.file_id.as_uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for (ord, vector) in vectors.iter().enumerate().filter(|(_, v)| v.len() == self.dims) {
                    sqlx::query("INSERT INTO vectors (file_id, ord, owner_id, embedding) VALUES ($1, $2, $3, $4::vector)")
                        .bind(file.file_id.as_uuid())
                        .bind(i32::try_from(ord).unwrap_or(i32::MAX))
                        .bind(file.owner_id.as_uuid())
                        .bind(literal(vector))
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
            }
        }
        let erased: Vec<Uuid> = batch.erased.iter().map(|id| id.as_uuid()).collect();
        let removed: Vec<Uuid> = batch.removed_providers.iter().map(|id| id.as_uuid()).collect();
        sqlx::query(
            "DELETE FROM vectors WHERE owner_id = ANY($1) \
             OR file_id IN (SELECT file_id FROM vector_files WHERE provider_id = ANY($2))",
        )
        .bind(&erased)
        .bind(&removed)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("DELETE FROM vector_files WHERE owner_id = ANY($1) OR provider_id = ANY($2)")
            .bind(&erased)
            .bind(&removed)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // The checkpoint row is locked from here to the commit: two projectors on one page take
        // turns, and the second finds the position moved.
        let moved = sqlx::query("UPDATE vector_checkpoint SET position = $1 WHERE id = 0 AND position = $2")
            .bind(batch.checkpoint)
            .bind(batch.from)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if moved.rows_affected() == 0 {
            tx.rollback().await.map_err(db)?;
            return Err(moved_on(batch.from));
        }
        tx.commit().await.map_err(db)
    }

    async fn checkpoint(&self) -> SearchResult<i64> {
        sqlx::query_scalar("SELECT position FROM vector_checkpoint WHERE id = 0")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn nearest(&self, owner: UserId, query: &[f32], limit: usize, except: Option<FileId>) -> SearchResult<Vec<Near>> {
        if query.len() != self.dims || limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        // pgvector 0.8: go on scanning the index until enough rows pass the owner filter.
        sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let rows = sqlx::query(
            "SELECT file_id, 1 - (embedding <=> $1::vector) AS score FROM vectors \
             WHERE owner_id = $2 AND file_id IS DISTINCT FROM $3 \
             ORDER BY embedding <=> $1::vector LIMIT $4",
        )
        .bind(literal(query))
        .bind(owner.as_uuid())
        .bind(except.map(|f| f.as_uuid()))
        .bind(i64::try_from(limit.saturating_mul(ROWS_PER_FILE)).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            let score: f64 = row.try_get(1).map_err(db)?;
            hits.push((FileId::from_uuid(row.try_get(0).map_err(db)?), score as f32));
        }
        // Relaxed order: rows come only about nearest first.
        let near = best_per_file(hits, limit);
        Ok(near)
    }

    async fn vectors(&self, owner: UserId, file: FileId) -> SearchResult<Vec<Vec<f32>>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT embedding::text FROM vectors WHERE file_id = $1 AND owner_id = $2 ORDER BY ord")
            .bind(file.as_uuid())
            .bind(owner.as_uuid())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(|text| parse_literal(text)).collect()
    }

    async fn vectors_of(&self, owner: UserId, files: &[FileId]) -> SearchResult<HashMap<FileId, Vec<Vec<f32>>>> {
        let ids: Vec<Uuid> = files.iter().map(FileId::as_uuid).collect();
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT file_id, embedding::text FROM vectors WHERE owner_id = $1 AND file_id = ANY($2) ORDER BY file_id, ord")
                .bind(owner.as_uuid())
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        let mut found: HashMap<FileId, Vec<Vec<f32>>> = HashMap::new();
        for (file, text) in rows {
            found.entry(FileId::from_uuid(file)).or_default().push(parse_literal(&text)?);
        }
        Ok(found)
    }

    async fn embedded_files(&self, owner: UserId) -> SearchResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT file_id) FROM vectors WHERE owner_id = $1")
            .bind(owner.as_uuid())
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn files_with_vectors(&self, owner: UserId, limit: usize) -> SearchResult<Vec<FileId>> {
        let rows: Vec<Uuid> = sqlx::query_scalar("SELECT DISTINCT file_id FROM vectors WHERE owner_id = $1 ORDER BY file_id LIMIT $2")
            .bind(owner.as_uuid())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.into_iter().map(FileId::from_uuid).collect())
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
        tx.commit().await.map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::{literal, parse_literal};

    #[test]
    fn vectors_survive_their_text_form() {
        let vector = vec![0.1f32, -2.5, 1e-7, 0.333_333_34];
        assert_eq!(parse_literal(&literal(&vector)).expect("parses"), vector);
    }
}
