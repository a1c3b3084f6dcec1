//! The queries the gateway asks of the read models. Every query that returns a user's data takes the
//! user's id and filters on it, so another user's ids look exactly like ids that do not exist.

use chrono::{DateTime, Utc};
use cloudsync_domain::UserId;
use cloudsync_eventstore::DbPool;
use serde_json::Value;
use uuid::Uuid;

use crate::ops::Table;
pub use crate::sql::QueryError;
use crate::sql::{Val, fetch_all, fetch_page};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

/// A user as administrators see them.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    pub quota_bytes: Option<i64>,
    pub tier: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRow {
    pub id: Uuid,
    pub kind: String,
    pub display_name: String,
    pub config: Value,
    pub status: String,
    pub connected_at: DateTime<Utc>,
    pub disconnected_at: Option<DateTime<Utc>>,
    pub scan_schedule: Option<String>,
    pub realtime: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub path: String,
    pub name: String,
    pub size_bytes: i64,
    pub mime_type: String,
    pub checksum: String,
    pub modified_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What the analysis learnt of the current version (`{"image": {…}}`), `{}` until then.
    pub metadata: Value,
    /// What an image classifier saw in the picture, the likeliest first.
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncOperationRow {
    pub id: Uuid,
    pub kind: String,
    pub provider_id: Option<Uuid>,
    pub status: String,
    pub paused: bool,
    pub files_done: i64,
    pub bytes_done: i64,
    pub files_total: Option<i64>,
    pub bytes_total: Option<i64>,
    pub bytes_written: Option<i64>,
    pub error: Option<String>,
    /// For a sync run: `{pair_id}`.
    pub details: Value,
    /// For a sync run held by the max-delete rail: `{side, deletes}`.
    pub held: Option<Value>,
    /// Attempts that stopped short and were retried; why the last one stopped, and when the next
    /// was due.
    pub retries: i64,
    pub retry_reason: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConflictRow {
    pub path: String,
    pub kind: String,
    pub source: Option<(String, i64)>,
    pub target: Option<(String, i64)>,
    pub resolution: Option<String>,
    pub detected_at: DateTime<Utc>,
}

/// An earlier version of a file, kept by a sync pair.
#[derive(Debug, Clone, PartialEq)]
pub struct FileVersionRow {
    pub id: Uuid,
    pub pair_id: Uuid,
    pub provider_id: Uuid,
    pub path: String,
    pub side: String,
    pub checksum: String,
    pub size_bytes: i64,
    pub modified_at: DateTime<Utc>,
    pub reason: String,
    pub kept_at: DateTime<Utc>,
}

/// A file deleted with its content kept, restorable until its retention ends.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedFileRow {
    pub file_id: Uuid,
    pub provider_id: Uuid,
    pub path: String,
    pub checksum: String,
    pub size_bytes: i64,
    pub modified_at: DateTime<Utc>,
    pub reason: String,
    pub deleted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncPairRow {
    pub id: Uuid,
    pub source_provider_id: Uuid,
    pub source_path: String,
    pub target_provider_id: Uuid,
    pub target_path: String,
    pub mode: String,
    pub conflict_policy: String,
    pub max_delete_percent: i64,
    pub schedule: Option<String>,
    pub realtime: bool,
    pub keep_versions: i64,
    pub keep_days: i64,
    pub last_operation_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn uuid(text: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(text).map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

fn json(text: &str) -> Result<Value, sqlx::Error> {
    serde_json::from_str(text).map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_prefix(folder: &str) -> String {
    let mut escaped = String::with_capacity(folder.len() + 2);
    for c in folder.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push_str("/%");
    escaped
}

const FILE_COLUMNS: &str = "CAST(id AS TEXT) AS id, CAST(provider_id AS TEXT) AS provider_id, path, name, size_bytes, \
                            mime_type, checksum, modified_at, created_at, updated_at, CAST(metadata AS TEXT) AS metadata, labels";
/// The names of [`FILE_COLUMNS`]' values.
const FILE_NAMES: [&str; 12] = [
    "id",
    "provider_id",
    "path",
    "name",
    "size_bytes",
    "mime_type",
    "checksum",
    "modified_at",
    "created_at",
    "updated_at",
    "metadata",
    "labels",
];
const OPERATION_COLUMNS: &str = "CAST(id AS TEXT) AS id, kind, CAST(provider_id AS TEXT) AS provider_id, status, paused, \
                                 files_done, bytes_done, files_total, bytes_total, bytes_written, error, CAST(details AS TEXT) AS details, held, \
                                 CAST(retries AS BIGINT) AS retries, retry_reason, retry_at, created_at, updated_at, completed_at";
const PAIR_COLUMNS: &str = "CAST(id AS TEXT) AS id, CAST(source_provider_id AS TEXT) AS source_provider_id, source_path, \
                            CAST(target_provider_id AS TEXT) AS target_provider_id, target_path, mode, conflict_policy, \
                            CAST(max_delete_percent AS BIGINT) AS max_delete_percent, schedule, realtime, \
                            CAST(keep_versions AS BIGINT) AS keep_versions, CAST(keep_days AS BIGINT) AS keep_days, \
                            CAST(last_operation_id AS TEXT) AS last_operation_id, created_at, updated_at";
const PROVIDER_COLUMNS: &str = "CAST(id AS TEXT) AS id, kind, display_name, CAST(config AS TEXT) AS config, status, \
                                connected_at, disconnected_at, scan_schedule, realtime";

/// Whose files a file query covers: all of the user's providers, one of them, or those of one kind.
#[derive(Debug, Clone, Copy)]
pub enum Providers<'a> {
    All,
    Id(Uuid),
    /// A provider kind as the read model names it (`local`, `s3`, …).
    Kind(&'a str),
}

/// Read access to the read models.
#[derive(Clone)]
pub struct ReadModels {
    pool: DbPool,
}

macro_rules! file_row {
    ($row:ident) => {
        Ok(FileRow {
            id: uuid($row.try_get("id")?)?,
            provider_id: uuid($row.try_get("provider_id")?)?,
            path: $row.try_get("path")?,
            name: $row.try_get("name")?,
            size_bytes: $row.try_get("size_bytes")?,
            mime_type: $row.try_get("mime_type")?,
            checksum: $row.try_get("checksum")?,
            modified_at: $row.try_get("modified_at")?,
            created_at: $row.try_get("created_at")?,
            updated_at: $row.try_get("updated_at")?,
            metadata: json($row.try_get("metadata")?)?,
            labels: serde_json::from_str($row.try_get::<&str, _>("labels")?).unwrap_or_default(),
        })
    };
}

macro_rules! provider_row {
    ($row:ident) => {
        Ok(ProviderRow {
            id: uuid($row.try_get("id")?)?,
            kind: $row.try_get("kind")?,
            display_name: $row.try_get("display_name")?,
            config: json($row.try_get("config")?)?,
            status: $row.try_get("status")?,
            connected_at: $row.try_get("connected_at")?,
            disconnected_at: $row.try_get("disconnected_at")?,
            scan_schedule: $row.try_get("scan_schedule")?,
            realtime: $row.try_get("realtime")?,
        })
    };
}

macro_rules! operation_row {
    ($row:ident) => {{
        let provider_id: Option<String> = $row.try_get("provider_id")?;
        Ok(SyncOperationRow {
            id: uuid($row.try_get("id")?)?,
            kind: $row.try_get("kind")?,
            provider_id: provider_id.as_deref().map(uuid).transpose()?,
            status: $row.try_get("status")?,
            paused: $row.try_get("paused")?,
            files_done: $row.try_get("files_done")?,
            bytes_done: $row.try_get("bytes_done")?,
            files_total: $row.try_get("files_total")?,
            bytes_total: $row.try_get("bytes_total")?,
            bytes_written: $row.try_get("bytes_written")?,
            error: $row.try_get("error")?,
            details: json($row.try_get("details")?)?,
            held: $row.try_get::<Option<String>, _>("held")?.as_deref().map(json).transpose()?,
            retries: $row.try_get("retries")?,
            retry_reason: $row.try_get("retry_reason")?,
            retry_at: $row.try_get("retry_at")?,
            created_at: $row.try_get("created_at")?,
            updated_at: $row.try_get("updated_at")?,
            completed_at: $row.try_get("completed_at")?,
        })
    }};
}

impl ReadModels {
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }

    /// # Errors
    /// Database failures.
    pub async fn user(&self, id: UserId) -> Result<Option<UserRow>, QueryError> {
        let rows = fetch_all!(
            &self.pool,
            "SELECT CAST(id AS TEXT) AS id, email, created_at FROM users WHERE id = $1",
            [Val::Uuid(id.as_uuid())],
            |row| {
                Ok(UserRow {
                    id: uuid(row.try_get("id")?)?,
                    email: row.try_get("email")?,
                    created_at: row.try_get("created_at")?,
                })
            }
        )?;
        Ok(rows.into_iter().next())
    }

    /// Every user, oldest first, a page at a time (administrators only: no scoping).
    ///
    /// # Errors
    /// Database failures.
    pub async fn accounts(&self, limit: i64, offset: i64) -> Result<Vec<AccountRow>, QueryError> {
        fetch_all!(
            &self.pool,
            "SELECT CAST(id AS TEXT) AS id, email, roles, quota_bytes, tier, created_at FROM users \
             ORDER BY created_at, id LIMIT $1 OFFSET $2",
            [Val::Int(limit), Val::Int(offset)],
            |row| {
                let roles: String = row.try_get("roles")?;
                Ok(AccountRow {
                    id: uuid(row.try_get("id")?)?,
                    email: row.try_get("email")?,
                    roles: roles.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect(),
                    quota_bytes: row.try_get("quota_bytes")?,
                    tier: row.try_get("tier")?,
                    created_at: row.try_get("created_at")?,
                })
            }
        )
    }

    /// The user's providers, connected ones first, newest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn providers(&self, user: UserId) -> Result<Vec<ProviderRow>, QueryError> {
        let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE user_id = $1 ORDER BY status, connected_at DESC, id");
        fetch_all!(&self.pool, &sql, [Val::Uuid(user.as_uuid())], |row| provider_row!(row))
    }

    /// One of the user's providers.
    ///
    /// # Errors
    /// Database failures.
    pub async fn provider(&self, user: UserId, id: Uuid) -> Result<Option<ProviderRow>, QueryError> {
        let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE user_id = $1 AND id = $2");
        Ok(
            fetch_all!(&self.pool, &sql, [Val::Uuid(user.as_uuid()), Val::Uuid(id)], |row| provider_row!(
                row
            ))?
            .into_iter()
            .next(),
        )
    }

    /// The user's files, of the providers `providers` names and optionally inside one folder
    /// (recursively), by path.
    ///
    /// # Errors
    /// Database failures.
    pub async fn files(
        &self,
        user: UserId,
        providers: Providers<'_>,
        folder: Option<&str>,
        after: Option<(&str, Uuid)>,
        limit: i64,
    ) -> Result<Vec<FileRow>, QueryError> {
        let mut sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE user_id = $1");
        let mut values = vec![Val::Uuid(user.as_uuid())];
        match providers {
            Providers::All => {}
            Providers::Id(provider) => {
                values.push(Val::Uuid(provider));
                sql.push_str(&format!(" AND provider_id = ${}", values.len()));
            }
            Providers::Kind(kind) => {
                values.push(Val::Text(kind.to_owned()));
                sql.push_str(&format!(
                    " AND provider_id IN (SELECT id FROM providers WHERE user_id = $1 AND kind = ${})",
                    values.len()
                ));
            }
        }
        if let Some(folder) = folder.filter(|f| !f.is_empty()) {
            values.push(Val::Text(folder.to_owned()));
            values.push(Val::Text(like_prefix(folder)));
            sql.push_str(&format!(
                " AND (path = ${} OR path LIKE ${} ESCAPE '\\')",
                values.len() - 1,
                values.len()
            ));
        }
        // Keyset paging: the files after one (in path, then id order), however deep.
        if let Some((path, id)) = after {
            values.push(Val::Text(path.to_owned()));
            values.push(Val::Uuid(id));
            sql.push_str(&format!(
                " AND (path > ${p} OR (path = ${p} AND id > ${i}))",
                p = values.len() - 1,
                i = values.len()
            ));
        }
        values.push(Val::Int(limit));
        sql.push_str(&format!(" ORDER BY path, id LIMIT ${}", values.len()));
        fetch_page!(&self.pool, &sql, &FILE_NAMES, "path, id", values, |row| file_row!(row))
    }

    /// The user's files that have the same content as another of their files (same BLAKE3, on
    /// any of their providers; empty files and unhashed listings aside), as groups of at least two,
    /// the group that frees the most space first: at most `limit` groups, after the first `offset`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn exact_duplicates(&self, user: UserId, limit: i64, offset: i64) -> Result<Vec<Vec<FileRow>>, QueryError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE user_id = $1 AND checksum IN ( \
                 SELECT checksum FROM files WHERE user_id = $1 AND checksum <> '' AND size_bytes > 0 \
                 GROUP BY checksum HAVING count(*) > 1 \
                 ORDER BY (count(*) - 1) * max(size_bytes) DESC, checksum LIMIT $2 OFFSET $3) \
             ORDER BY checksum, modified_at, path, id"
        );
        let rows = fetch_all!(
            &self.pool,
            &sql,
            [Val::Uuid(user.as_uuid()), Val::Int(limit), Val::Int(offset)],
            |row| file_row!(row)
        )?;
        let mut groups: Vec<Vec<FileRow>> = Vec::new();
        for row in rows {
            match groups.last_mut() {
                Some(group) if group[0].checksum == row.checksum => group.push(row),
                _ => groups.push(vec![row]),
            }
        }
        groups.retain(|g| g.len() > 1);
        groups.sort_by(|a, b| {
            let freed = |g: &[FileRow]| (g.len() as i64 - 1) * g.iter().map(|f| f.size_bytes).max().unwrap_or(0);
            freed(b).cmp(&freed(a)).then_with(|| a[0].checksum.cmp(&b[0].checksum))
        });
        Ok(groups)
    }

    /// The user's pictures that the content pipeline has read (their `metadata` has an `image`).
    ///
    /// # Errors
    /// Database failures.
    pub async fn pictures(&self, user: UserId) -> Result<Vec<FileRow>, QueryError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE user_id = $1 AND CAST(metadata AS TEXT) LIKE '%\"image\"%' ORDER BY modified_at, path, id"
        );
        Ok(fetch_all!(&self.pool, &sql, [Val::Uuid(user.as_uuid())], |row| file_row!(row))?)
    }

    /// One of the user's files.
    ///
    /// # Errors
    /// Database failures.
    pub async fn file(&self, user: UserId, id: Uuid) -> Result<Option<FileRow>, QueryError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE user_id = $1 AND id = $2");
        Ok(
            fetch_all!(&self.pool, &sql, [Val::Uuid(user.as_uuid()), Val::Uuid(id)], |row| file_row!(row))?
                .into_iter()
                .next(),
        )
    }

    /// One of the user's sync operations (scan and sync jobs).
    ///
    /// # Errors
    /// Database failures.
    pub async fn sync_operation(&self, user: UserId, id: Uuid) -> Result<Option<SyncOperationRow>, QueryError> {
        let sql = format!("SELECT {OPERATION_COLUMNS} FROM sync_operations WHERE user_id = $1 AND id = $2");
        let rows = fetch_all!(&self.pool, &sql, [Val::Uuid(user.as_uuid()), Val::Uuid(id)], |row| operation_row!(
            row
        ))?;
        Ok(rows.into_iter().next())
    }

    /// Everybody's files (an export's: no scoping), a page at a time in the order of the table's
    /// key (the column, not its text: the primary key's index serves each page), each with its
    /// owner; `after` is the last id of the page before.
    ///
    /// # Errors
    /// Database failures.
    pub async fn all_files(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<(Uuid, FileRow)>, QueryError> {
        let sql =
            format!("SELECT {FILE_COLUMNS}, CAST(user_id AS TEXT) AS owner FROM files WHERE files.id > $1 ORDER BY files.id LIMIT $2");
        fetch_all!(
            &self.pool,
            &sql,
            [Val::Uuid(after.unwrap_or(Uuid::nil())), Val::Int(limit)],
            |row| {
                let owner = uuid(row.try_get("owner")?)?;
                file_row!(row).map(|file| (owner, file))
            }
        )
    }

    /// Everybody's sync operations (an export's: no scoping), as [`Self::all_files`].
    ///
    /// # Errors
    /// Database failures.
    pub async fn all_sync_operations(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<(Uuid, SyncOperationRow)>, QueryError> {
        let sql = format!(
            "SELECT {OPERATION_COLUMNS}, CAST(user_id AS TEXT) AS owner FROM sync_operations WHERE sync_operations.id > $1 ORDER BY sync_operations.id LIMIT $2"
        );
        fetch_all!(
            &self.pool,
            &sql,
            [Val::Uuid(after.unwrap_or(Uuid::nil())), Val::Int(limit)],
            |row| {
                let owner = uuid(row.try_get("owner")?)?;
                operation_row!(row).map(|operation: SyncOperationRow| (owner, operation))
            }
        )
    }

    /// The conflicts left for the user in one of their pairs, by path.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sync_conflicts(&self, user: UserId, pair: Uuid) -> Result<Vec<SyncConflictRow>, QueryError> {
        let sql = "SELECT path, kind, source_checksum, source_size, target_checksum, target_size, resolution, detected_at \
                   FROM sync_conflicts WHERE user_id = $1 AND pair_id = $2 ORDER BY path";
        fetch_all!(&self.pool, sql, [Val::Uuid(user.as_uuid()), Val::Uuid(pair)], |row| {
            let side = |checksum: Option<String>, size: Option<i64>| checksum.zip(size);
            Ok(SyncConflictRow {
                path: row.try_get("path")?,
                kind: row.try_get("kind")?,
                source: side(row.try_get("source_checksum")?, row.try_get("source_size")?),
                target: side(row.try_get("target_checksum")?, row.try_get("target_size")?),
                resolution: row.try_get("resolution")?,
                detected_at: row.try_get("detected_at")?,
            })
        })
    }

    /// The user's sync pairs (one, when `id` is given), oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sync_pairs(&self, user: UserId, id: Option<Uuid>) -> Result<Vec<SyncPairRow>, QueryError> {
        let sql = format!("SELECT {PAIR_COLUMNS} FROM sync_pairs WHERE user_id = $1 AND ($2 IS NULL OR id = $2) ORDER BY created_at, id");
        let vals = [Val::Uuid(user.as_uuid()), Val::OptUuid(id)];
        fetch_all!(&self.pool, &sql, vals, |row| {
            let last: Option<String> = row.try_get("last_operation_id")?;
            Ok(SyncPairRow {
                id: uuid(row.try_get("id")?)?,
                source_provider_id: uuid(row.try_get("source_provider_id")?)?,
                source_path: row.try_get("source_path")?,
                target_provider_id: uuid(row.try_get("target_provider_id")?)?,
                target_path: row.try_get("target_path")?,
                mode: row.try_get("mode")?,
                conflict_policy: row.try_get("conflict_policy")?,
                max_delete_percent: row.try_get("max_delete_percent")?,
                schedule: row.try_get("schedule")?,
                realtime: row.try_get("realtime")?,
                keep_versions: row.try_get("keep_versions")?,
                keep_days: row.try_get("keep_days")?,
                last_operation_id: last.as_deref().map(uuid).transpose()?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
    }

    /// The user's deleted files whose content is kept, the latest deleted first: `first` of them
    /// after skipping `offset`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn deleted_files(&self, user: UserId, first: i64, offset: i64) -> Result<Vec<DeletedFileRow>, QueryError> {
        let sql = "SELECT CAST(file_id AS TEXT) AS file_id, CAST(provider_id AS TEXT) AS provider_id, path, checksum, size_bytes, \
                   modified_at, reason, deleted_at FROM deleted_files WHERE user_id = $1 \
                   ORDER BY deleted_at DESC, file_id DESC LIMIT $2 OFFSET $3";
        let vals = [Val::Uuid(user.as_uuid()), Val::Int(first), Val::Int(offset)];
        fetch_all!(&self.pool, sql, vals, |row| {
            Ok(DeletedFileRow {
                file_id: uuid(row.try_get("file_id")?)?,
                provider_id: uuid(row.try_get("provider_id")?)?,
                path: row.try_get("path")?,
                checksum: row.try_get("checksum")?,
                size_bytes: row.try_get("size_bytes")?,
                modified_at: row.try_get("modified_at")?,
                reason: row.try_get("reason")?,
                deleted_at: row.try_get("deleted_at")?,
            })
        })
    }

    /// The earlier versions kept of the file at `path` on one of the user's providers, newest first
    /// (or the one version `id`, when given).
    ///
    /// # Errors
    /// Database failures.
    pub async fn file_versions(
        &self,
        user: UserId,
        provider: Option<Uuid>,
        path: Option<&str>,
        id: Option<Uuid>,
    ) -> Result<Vec<FileVersionRow>, QueryError> {
        let sql = "SELECT CAST(id AS TEXT) AS id, CAST(pair_id AS TEXT) AS pair_id, CAST(provider_id AS TEXT) AS provider_id, path, side, \
                   checksum, size_bytes, modified_at, reason, kept_at FROM file_versions \
                   WHERE user_id = $1 AND ($2 IS NULL OR provider_id = $2) AND ($3 IS NULL OR path = $3) AND ($4 IS NULL OR id = $4) \
                   ORDER BY kept_at DESC, id DESC LIMIT 1000";
        let vals = [
            Val::Uuid(user.as_uuid()),
            Val::OptUuid(provider),
            Val::OptText(path.map(str::to_owned)),
            Val::OptUuid(id),
        ];
        fetch_all!(&self.pool, sql, vals, |row| {
            Ok(FileVersionRow {
                id: uuid(row.try_get("id")?)?,
                pair_id: uuid(row.try_get("pair_id")?)?,
                provider_id: uuid(row.try_get("provider_id")?)?,
                path: row.try_get("path")?,
                side: row.try_get("side")?,
                checksum: row.try_get("checksum")?,
                size_bytes: row.try_get("size_bytes")?,
                modified_at: row.try_get("modified_at")?,
                reason: row.try_get("reason")?,
                kept_at: row.try_get("kept_at")?,
            })
        })
    }

    /// Every row of a read model, each column as text, ordered by id: for comparing a rebuilt read
    /// model with the live one.
    ///
    /// # Errors
    /// An unknown table or a database failure.
    pub async fn dump(&self, table: &str) -> Result<Vec<Vec<Option<String>>>, QueryError> {
        let table = Table::parse(table).ok_or_else(|| sqlx::Error::Protocol(format!("unknown read model {table:?}")))?;
        let columns: &[&str] = match table {
            Table::Users => &["id", "email", "created_at", "updated_at", "settings"],
            Table::Providers => &[
                "id",
                "user_id",
                "kind",
                "display_name",
                "config",
                "status",
                "connected_at",
                "disconnected_at",
                "scan_schedule",
                "realtime",
            ],
            Table::Files => &[
                "id",
                "user_id",
                "provider_id",
                "path",
                "name",
                "size_bytes",
                "mime_type",
                "checksum",
                "modified_at",
                "created_at",
                "updated_at",
                "metadata",
                "labels",
            ],
            Table::SyncOperations => &[
                "id",
                "user_id",
                "kind",
                "provider_id",
                "status",
                "paused",
                "files_done",
                "bytes_done",
                "files_total",
                "bytes_total",
                "bytes_written",
                "error",
                "details",
                "held",
                "retries",
                "retry_reason",
                "retry_at",
                "created_at",
                "updated_at",
                "completed_at",
            ],
            Table::SyncConflicts => &[
                "pair_id",
                "path",
                "user_id",
                "kind",
                "source_checksum",
                "source_size",
                "target_checksum",
                "target_size",
                "resolution",
                "detected_at",
                "updated_at",
            ],
            Table::SyncPairs => &[
                "id",
                "user_id",
                "source_provider_id",
                "source_path",
                "target_provider_id",
                "target_path",
                "mode",
                "conflict_policy",
                "max_delete_percent",
                "schedule",
                "realtime",
                "keep_versions",
                "keep_days",
                "last_operation_id",
                "created_at",
                "updated_at",
            ],
            Table::FileVersions => &[
                "id",
                "pair_id",
                "user_id",
                "provider_id",
                "path",
                "side",
                "checksum",
                "size_bytes",
                "modified_at",
                "reason",
                "kept_at",
            ],
            Table::DeletedFiles => &[
                "file_id",
                "user_id",
                "provider_id",
                "path",
                "checksum",
                "size_bytes",
                "modified_at",
                "reason",
                "deleted_at",
            ],
        };
        let select: Vec<String> = columns.iter().map(|c| format!("CAST({c} AS TEXT) AS {c}")).collect();
        // Every table's first two columns identify a row (an id, or a pair and a path).
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}, {}",
            select.join(", "),
            table.name(),
            columns[0],
            columns[1]
        );
        fetch_all!(&self.pool, &sql, Vec::<Val>::new(), |row| {
            (0..columns.len())
                .map(|i| row.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_the_names_of_file_columns() {
        let names: Vec<&str> = FILE_COLUMNS
            .split(',')
            .map(|column| column.rsplit(" AS ").next().unwrap_or(column).trim())
            .collect();
        assert_eq!(names, FILE_NAMES);
    }
}
