//! The engines under test, each fed the same records and asked the same queries in its own syntax:
//! CloudSync's `SearchIndex` on tantivy and on the Elasticsearch API server, SQLite FTS5 (bm25) and
//! PostgreSQL full-text search (`tsvector` with a GIN index, `ts_rank`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{TimeZone as _, Utc};
use cloudsync_domain::{FileId, ProviderId, UserId};
use cloudsync_search::{Batch, Content, Filters, SearchDoc, SearchIndex, SearchRequest, kind_of, query, size_bucket};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, QueryBuilder, SqlitePool};
use uuid::Uuid;

use crate::corpus::{Query, Record, Text};

/// Records per write (the search projector's batches are of this order).
pub const BATCH: usize = 5000;

/// What an engine answered: how many matched, and the records of the page in rank order.
pub struct Answer {
    pub total: u64,
    pub top: Vec<usize>,
}

pub enum Target {
    Ours {
        label: &'static str,
        index: Arc<dyn SearchIndex>,
        owner: UserId,
        providers: Vec<ProviderId>,
        /// Where tantivy keeps it, or the Elasticsearch index name and URL.
        place: Place,
    },
    Fts5 {
        pool: SqlitePool,
        file: PathBuf,
    },
    Postgres {
        pool: PgPool,
        admin: PgPool,
        database: String,
    },
}

pub enum Place {
    Folder(PathBuf),
    Elastic {
        base: String,
        index: String,
        http: reqwest::Client,
    },
}

fn file_id(at: usize) -> FileId {
    FileId::from_uuid(Uuid::from_u128(at as u128 + 1))
}

fn record_of(id: FileId) -> usize {
    (id.as_uuid().as_u128() - 1) as usize
}

impl Target {
    pub async fn tantivy(folder: &Path) -> anyhow::Result<Self> {
        let index = cloudsync_search::TantivyIndex::open(folder)?;
        Ok(Self::ours("tantivy", Arc::new(index), Place::Folder(folder.to_owned())))
    }

    pub async fn elastic(base: &str) -> anyhow::Result<Self> {
        let engine = cloudsync_search::Engine::elastic(base, &format!("cloudsync-bench-{}", Uuid::now_v7().simple()))?;
        let (name, index) = engine.create().await?;
        let http = reqwest::Client::new();
        Ok(Self::ours(
            "Elasticsearch API (noida-db)",
            index,
            Place::Elastic {
                base: base.trim_end_matches('/').to_owned(),
                index: name,
                http,
            },
        ))
    }

    fn ours(label: &'static str, index: Arc<dyn SearchIndex>, place: Place) -> Self {
        Self::Ours {
            label,
            index,
            owner: UserId::from_uuid(Uuid::from_u128(7)),
            providers: (0..5).map(|p| ProviderId::from_uuid(Uuid::from_u128(100 + p))).collect(),
            place,
        }
    }

    pub async fn fts5(folder: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(folder)?;
        let file = folder.join("fts5.db");
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::query(
            "CREATE TABLE files (id INTEGER PRIMARY KEY, provider INTEGER NOT NULL, path TEXT NOT NULL, ext TEXT NOT NULL,
                 kind TEXT NOT NULL, bucket TEXT NOT NULL, year TEXT NOT NULL, lang TEXT NOT NULL, size INTEGER NOT NULL,
                 modified INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE VIRTUAL TABLE fts USING fts5(name, path, content, tokenize = 'porter unicode61 remove_diacritics 2')")
            .execute(&pool)
            .await?;
        Ok(Self::Fts5 { pool, file })
    }

    pub async fn postgres(admin_url: &str) -> anyhow::Result<Self> {
        let admin = PgPoolOptions::new().max_connections(1).connect(admin_url).await?;
        let database = format!("cs_bench_search_{}", Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await?;
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{database}"),
            None => bail!("the PostgreSQL URL names no database: {admin_url}"),
        };
        // A generic plan of the prepared statements would not know the query's words and scans the
        // table; plan each execution for its own words, as an application tuned for this would.
        let options = url
            .parse::<sqlx::postgres::PgConnectOptions>()?
            .options([("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::query(
            "CREATE TABLE files (id bigint PRIMARY KEY, provider smallint NOT NULL, path text NOT NULL, ext text NOT NULL,
                 kind text NOT NULL, bucket text NOT NULL, year text NOT NULL, lang text NOT NULL, size bigint NOT NULL,
                 modified bigint NOT NULL, content text, doc tsvector NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX files_doc ON files USING gin (doc)")
            .execute(&pool)
            .await?;
        Ok(Self::Postgres { pool, admin, database })
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Ours { label, .. } => label,
            Self::Fts5 { .. } => "SQLite FTS5 (bm25)",
            Self::Postgres { .. } => "PostgreSQL tsvector + GIN",
        }
    }

    /// Writes `records[range]` in batches of [`BATCH`], each one durable transaction (commit).
    pub async fn index(&self, records: &[Record], range: std::ops::Range<usize>) -> anyhow::Result<()> {
        for start in range.clone().step_by(BATCH) {
            let end = (start + BATCH).min(range.end);
            let part = &records[start..end];
            match self {
                Self::Ours {
                    index, owner, providers, ..
                } => {
                    let upserts = part
                        .iter()
                        .enumerate()
                        .map(|(i, r)| search_doc(start + i, r, *owner, providers))
                        .collect();
                    index
                        .apply(Batch {
                            upserts,
                            checkpoint: end as i64,
                            ..Batch::default()
                        })
                        .await?;
                }
                Self::Fts5 { pool, .. } => {
                    let mut tx = pool.begin().await?;
                    for (i, r) in part.iter().enumerate() {
                        let id = (start + i) as i64;
                        let ext = r.extension();
                        sqlx::query("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                            .bind(id)
                            .bind(i64::from(r.provider))
                            .bind(&r.path)
                            .bind(&ext)
                            .bind(kind_of(r.mime, &ext))
                            .bind(size_bucket(r.size))
                            .bind(year(r.modified))
                            .bind(r.language.as_deref().unwrap_or(""))
                            .bind(r.size as i64)
                            .bind(r.modified)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("INSERT INTO fts (rowid, name, path, content) VALUES (?, ?, ?, ?)")
                            .bind(id)
                            .bind(r.name())
                            .bind(r.folder())
                            .bind(r.text.as_deref())
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                Self::Postgres { pool, .. } => {
                    let ext: Vec<String> = part.iter().map(Record::extension).collect();
                    sqlx::query(
                        "INSERT INTO files
                         SELECT id, provider, path, ext, kind, bucket, year, lang, size, modified, content,
                                setweight(to_tsvector('english', regexp_replace(name, '[-_.]', ' ', 'g')), 'A')
                                || setweight(to_tsvector('english', regexp_replace(folder, '[-_./]', ' ', 'g')), 'B')
                                || setweight(to_tsvector('english', coalesce(content, '')), 'D')
                         FROM unnest($1::bigint[], $2::smallint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[])
                              AS t(id, provider, path, ext, kind, bucket, year, lang, size, modified, content, name, folder)",
                    )
                    .bind((start..end).map(|i| i as i64).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| i16::from(r.provider)).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.path.clone()).collect::<Vec<_>>())
                    .bind(&ext)
                    .bind(
                        part.iter()
                            .zip(&ext)
                            .map(|(r, e)| kind_of(r.mime, e).to_owned())
                            .collect::<Vec<_>>(),
                    )
                    .bind(part.iter().map(|r| size_bucket(r.size).to_owned()).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| year(r.modified)).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.language.clone().unwrap_or_default()).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.size as i64).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.modified).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.text.as_deref().map(str::to_owned)).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.name().to_owned()).collect::<Vec<_>>())
                    .bind(part.iter().map(|r| r.folder().to_owned()).collect::<Vec<_>>())
                    .execute(pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Brings the index into the state queries should find it in, as part of indexing: on
    /// PostgreSQL `VACUUM ANALYZE` (moves the GIN index's pending list into the index, which every
    /// query would otherwise scan, and gives the planner statistics; autovacuum would do the same
    /// later). The other engines merge on their own.
    pub async fn settle(&self) -> anyhow::Result<()> {
        if let Self::Postgres { pool, .. } = self {
            sqlx::query("VACUUM ANALYZE files").execute(pool).await?;
        }
        Ok(())
    }

    /// What the index takes on disk (Elasticsearch: the store size its `_stats` reports).
    pub async fn size_bytes(&self) -> anyhow::Result<u64> {
        match self {
            Self::Ours {
                place: Place::Folder(folder),
                ..
            } => crate::common::folder_bytes(folder),
            Self::Ours {
                place: Place::Elastic { base, index, http },
                ..
            } => {
                let stats: serde_json::Value = http.get(format!("{base}/{index}/_stats")).send().await?.json().await?;
                stats
                    .pointer("/_all/primaries/store/size_in_bytes")
                    .or_else(|| stats.pointer("/_all/total/store/size_in_bytes"))
                    .and_then(serde_json::Value::as_u64)
                    .context("the server's _stats report no store size")
            }
            Self::Fts5 { pool, file } => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await?;
                Ok(std::fs::metadata(file)?.len())
            }
            Self::Postgres { pool, .. } => {
                let (bytes,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('files')").fetch_one(pool).await?;
                Ok(bytes as u64)
            }
        }
    }

    pub async fn run(&self, q: &Query) -> anyhow::Result<Answer> {
        match self {
            Self::Ours {
                index,
                owner,
                providers: _,
                ..
            } => {
                let mut text = ours_text(&q.text);
                if let Some(ext) = &q.extension {
                    text.push_str(&format!(" ext:{ext}"));
                }
                let request = SearchRequest {
                    owner: *owner,
                    query: query::parse(&text),
                    filters: Filters {
                        path_prefix: q.folder.clone(),
                        min_size: q.min_size,
                        ..Filters::default()
                    },
                    offset: q.offset,
                    limit: q.limit,
                };
                let results = index.search(&request).await?;
                Ok(Answer {
                    total: results.total,
                    top: results.hits.iter().map(|h| record_of(h.file_id)).collect(),
                })
            }
            Self::Fts5 { pool, .. } => {
                let matching = fts5_text(&q.text);
                let narrow = |b: &mut QueryBuilder<'_, sqlx::Sqlite>| {
                    b.push(" WHERE fts MATCH ").push_bind(matching.clone());
                    if let Some(ext) = &q.extension {
                        b.push(" AND f.ext = ").push_bind(ext.clone());
                    }
                    if let Some(folder) = &q.folder {
                        b.push(" AND f.path LIKE ").push_bind(format!("{folder}/%"));
                    }
                    if let Some(min) = q.min_size {
                        b.push(" AND f.size >= ").push_bind(min as i64);
                    }
                };
                let mut top = QueryBuilder::new("SELECT f.id FROM fts JOIN files f ON f.id = fts.rowid");
                narrow(&mut top);
                top.push(" ORDER BY bm25(fts, 4.0, 1.5, 1.0) LIMIT ")
                    .push_bind(q.limit as i64)
                    .push(" OFFSET ")
                    .push_bind(q.offset as i64);
                let ids: Vec<(i64,)> = top.build_query_as().fetch_all(pool).await?;
                let mut count = QueryBuilder::new("SELECT count(*) FROM fts JOIN files f ON f.id = fts.rowid");
                narrow(&mut count);
                let (total,): (i64,) = count.build_query_as().fetch_one(pool).await?;
                if q.facets {
                    let mut facets = QueryBuilder::new(
                        "WITH m AS MATERIALIZED (SELECT f.provider, f.ext, f.kind, f.bucket, f.year, f.lang FROM fts JOIN files f ON f.id = fts.rowid",
                    );
                    narrow(&mut facets);
                    facets.push(
                        ") SELECT 'provider', CAST(provider AS TEXT), count(*) FROM m GROUP BY 2
                         UNION ALL SELECT 'ext', ext, count(*) FROM m GROUP BY 2
                         UNION ALL SELECT 'kind', kind, count(*) FROM m GROUP BY 2
                         UNION ALL SELECT 'bucket', bucket, count(*) FROM m GROUP BY 2
                         UNION ALL SELECT 'year', year, count(*) FROM m GROUP BY 2
                         UNION ALL SELECT 'lang', lang, count(*) FROM m GROUP BY 2",
                    );
                    facets.build().fetch_all(pool).await?;
                }
                Ok(Answer {
                    total: total as u64,
                    top: ids.into_iter().map(|(id,)| id as usize).collect(),
                })
            }
            Self::Postgres { pool, .. } => {
                let (function, argument) = pg_tsquery(&q.text);
                let narrow = |b: &mut QueryBuilder<'_, sqlx::Postgres>| {
                    b.push(format!(" WHERE doc @@ {function}('english', "))
                        .push_bind(argument.clone())
                        .push(")");
                    if let Some(ext) = &q.extension {
                        b.push(" AND ext = ").push_bind(ext.clone());
                    }
                    if let Some(folder) = &q.folder {
                        b.push(" AND path LIKE ").push_bind(format!("{folder}/%"));
                    }
                    if let Some(min) = q.min_size {
                        b.push(" AND size >= ").push_bind(min as i64);
                    }
                };
                let mut top = QueryBuilder::new("SELECT id FROM files");
                narrow(&mut top);
                top.push(format!(" ORDER BY ts_rank(doc, {function}('english', "))
                    .push_bind(argument.clone())
                    .push(")) DESC LIMIT ")
                    .push_bind(q.limit as i64)
                    .push(" OFFSET ")
                    .push_bind(q.offset as i64);
                let ids: Vec<(i64,)> = top.build_query_as().fetch_all(pool).await?;
                let mut count = QueryBuilder::new("SELECT count(*) FROM files");
                narrow(&mut count);
                let (total,): (i64,) = count.build_query_as().fetch_one(pool).await?;
                if q.facets {
                    let mut facets = QueryBuilder::new("SELECT provider::text, ext, kind, bucket, year, lang, count(*) FROM files");
                    narrow(&mut facets);
                    facets.push(" GROUP BY GROUPING SETS ((provider), (ext), (kind), (bucket), (year), (lang))");
                    facets.build().fetch_all(pool).await?;
                }
                Ok(Answer {
                    total: total as u64,
                    top: ids.into_iter().map(|(id,)| id as usize).collect(),
                })
            }
        }
    }

    /// Removes what the engine stored (a temporary folder is removed by its owner).
    pub async fn drop_all(self) -> anyhow::Result<()> {
        match self {
            Self::Ours {
                place: Place::Elastic { base, index, http },
                ..
            } => {
                http.delete(format!("{base}/{index}")).send().await?;
            }
            Self::Postgres { pool, admin, database } => {
                pool.close().await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {database}")).execute(&admin).await?;
            }
            Self::Fts5 { pool, .. } => pool.close().await,
            Self::Ours { .. } => {}
        }
        Ok(())
    }
}

fn year(modified: i64) -> String {
    Utc.timestamp_opt(modified, 0)
        .single()
        .map_or_else(String::new, |t| t.format("%Y").to_string())
}

fn search_doc(at: usize, r: &Record, owner: UserId, providers: &[ProviderId]) -> SearchDoc {
    let checksum = format!("{at:064x}");
    SearchDoc {
        file_id: file_id(at),
        owner_id: owner,
        provider_id: providers[usize::from(r.provider)],
        path: r.path.clone(),
        size: r.size,
        modified_at: Utc.timestamp_opt(r.modified, 0).single().unwrap_or_default(),
        mime_type: r.mime.to_owned(),
        checksum: checksum.clone(),
        content: r.text.as_ref().map(|text| Content {
            checksum,
            text: text.to_string(),
            language: r.language.clone(),
        }),
        picture: None,
    }
}

/// CloudSync's query language.
pub fn ours_text(text: &Text) -> String {
    match text {
        Text::Words(words) => words.join(" "),
        Text::Prefix(prefix) => prefix.clone(),
        Text::Phrase(words) => format!("\"{}\"", words.join(" ")),
        Text::Or(a, b) => format!("{a} OR {b}"),
        Text::Not(a, b) => format!("{a} -{b}"),
    }
}

/// FTS5's query syntax (every word quoted, so that none is read as an operator).
pub fn fts5_text(text: &Text) -> String {
    let quoted = |w: &str| format!("\"{}\"", w.replace('"', ""));
    match text {
        Text::Words(words) => words.iter().map(|w| quoted(w)).collect::<Vec<_>>().join(" "),
        // Names only, as CloudSync matches prefixes.
        Text::Prefix(prefix) => format!("name : {}*", quoted(prefix)),
        Text::Phrase(words) => quoted(&words.join(" ")),
        Text::Or(a, b) => format!("{} OR {}", quoted(a), quoted(b)),
        Text::Not(a, b) => format!("{} NOT {}", quoted(a), quoted(b)),
    }
}

/// The PostgreSQL function and its argument (all words are plain ASCII letters and digits).
pub fn pg_tsquery(text: &Text) -> (&'static str, String) {
    match text {
        Text::Words(words) => ("plainto_tsquery", words.join(" ")),
        // Names only (weight A), as CloudSync matches prefixes.
        Text::Prefix(prefix) => ("to_tsquery", format!("{prefix}:*A")),
        Text::Phrase(words) => ("phraseto_tsquery", words.join(" ")),
        Text::Or(a, b) => ("to_tsquery", format!("{a} | {b}")),
        Text::Not(a, b) => ("to_tsquery", format!("{a} & !{b}")),
    }
}
