//! One SQL text per operation for both backends; values are bound in each backend's own types
//! (PostgreSQL: UUID, TIMESTAMPTZ, JSONB; SQLite: hyphenated text, RFC 3339 text, JSON text).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Postgres, Sqlite};
use uuid::Uuid;

use crate::ops::{Op, Table};

/// A value to bind.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Uuid(Uuid),
    OptUuid(Option<Uuid>),
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Ts(DateTime<Utc>),
    Json(Value),
}

pub(crate) type PgQuery<'q> = Query<'q, Postgres, PgArguments>;
pub(crate) type SqliteQuery<'q> = Query<'q, Sqlite, SqliteArguments<'q>>;

/// SQLite's form of a timestamp: fixed-width RFC 3339, so text order is time order.
pub(crate) fn sqlite_ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn bind_pg(query: PgQuery<'_>, value: Val) -> PgQuery<'_> {
    match value {
        Val::Uuid(v) => query.bind(v),
        Val::OptUuid(v) => query.bind(v),
        Val::Text(v) => query.bind(v),
        Val::OptText(v) => query.bind(v),
        Val::Int(v) => query.bind(v),
        Val::OptInt(v) => query.bind(v),
        Val::Bool(v) => query.bind(v),
        Val::Ts(v) => query.bind(v),
        Val::Json(v) => query.bind(sqlx::types::Json(v)),
    }
}

pub(crate) fn bind_sqlite(query: SqliteQuery<'_>, value: Val) -> SqliteQuery<'_> {
    match value {
        Val::Uuid(v) => query.bind(v.to_string()),
        Val::OptUuid(v) => query.bind(v.map(|u| u.to_string())),
        Val::Text(v) => query.bind(v),
        Val::OptText(v) => query.bind(v),
        Val::Int(v) => query.bind(v),
        Val::OptInt(v) => query.bind(v),
        Val::Bool(v) => query.bind(v),
        Val::Ts(v) => query.bind(sqlite_ts(v)),
        Val::Json(v) => query.bind(v.to_string()),
    }
}

/// The statement and values that carry out `op`.
pub(crate) fn statement(op: &Op) -> (&'static str, Vec<Val>) {
    use Val as V;
    match op.clone() {
        Op::UpsertUser { id, email, at } => (
            "INSERT INTO users (id, email, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, updated_at = excluded.updated_at",
            vec![V::Uuid(id), V::Text(email), V::Ts(at)],
        ),
        Op::EraseUser { id, table } => (
            match table {
                Table::Users => "DELETE FROM users WHERE id = $1",
                Table::Providers => "DELETE FROM providers WHERE user_id = $1",
                Table::Files => "DELETE FROM files WHERE user_id = $1",
                Table::SyncOperations => "DELETE FROM sync_operations WHERE user_id = $1",
                Table::SyncPairs => "DELETE FROM sync_pairs WHERE user_id = $1",
                Table::SyncConflicts => "DELETE FROM sync_conflicts WHERE user_id = $1",
                Table::FileVersions => "DELETE FROM file_versions WHERE user_id = $1",
                Table::DeletedFiles => "DELETE FROM deleted_files WHERE user_id = $1",
            },
            vec![V::Uuid(id)],
        ),
        Op::SetUserRoles { id, roles, at } => (
            "UPDATE users SET roles = $2, updated_at = $3 WHERE id = $1",
            vec![V::Uuid(id), V::Text(roles), V::Ts(at)],
        ),
        Op::SetUserPlan { id, quota_bytes, tier, at } => (
            "UPDATE users SET quota_bytes = $2, tier = $3, updated_at = $4 WHERE id = $1",
            vec![V::Uuid(id), V::OptInt(quota_bytes), V::Text(tier), V::Ts(at)],
        ),
        Op::InsertProvider {
            id,
            user_id,
            kind,
            display_name,
            config,
            at,
        } => (
            "INSERT INTO providers (id, user_id, kind, display_name, config, status, connected_at) \
             VALUES ($1, $2, $3, $4, $5, 'connected', $6) ON CONFLICT (id) DO NOTHING",
            vec![
                V::Uuid(id),
                V::Uuid(user_id),
                V::Text(kind),
                V::Text(display_name),
                V::Json(config),
                V::Ts(at),
            ],
        ),
        Op::DisconnectProvider { id, at } => (
            "UPDATE providers SET status = 'disconnected', disconnected_at = $2 WHERE id = $1",
            vec![V::Uuid(id), V::Ts(at)],
        ),
        Op::SetProviderSchedule { id, schedule, realtime } => (
            "UPDATE providers SET scan_schedule = $2, realtime = $3 WHERE id = $1",
            vec![V::Uuid(id), V::OptText(schedule), V::Bool(realtime)],
        ),
        Op::RemoveProviderFiles { provider_id } => ("DELETE FROM files WHERE provider_id = $1", vec![V::Uuid(provider_id)]),
        Op::InsertFile {
            id,
            user_id,
            provider_id,
            path,
            name,
            size_bytes,
            mime_type,
            checksum,
            modified_at,
            at,
        } => (
            "INSERT INTO files (id, user_id, provider_id, path, name, size_bytes, mime_type, checksum, modified_at, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) ON CONFLICT (id) DO NOTHING",
            vec![
                V::Uuid(id),
                V::Uuid(user_id),
                V::Uuid(provider_id),
                V::Text(path),
                V::Text(name),
                V::Int(size_bytes),
                V::Text(mime_type),
                V::Text(checksum),
                V::Ts(modified_at),
                V::Ts(at),
            ],
        ),
        Op::MoveFile { id, path, name, at } => (
            "UPDATE files SET path = $2, name = $3, updated_at = $4 WHERE id = $1",
            vec![V::Uuid(id), V::Text(path), V::Text(name), V::Ts(at)],
        ),
        Op::ChangeFile {
            id,
            size_bytes,
            checksum,
            modified_at,
            at,
        } => (
            // What the analysis learnt is of a version: a new one drops it (a touch keeps it).
            "UPDATE files SET size_bytes = $2, checksum = $3, modified_at = $4, updated_at = $5, \
             metadata = CASE WHEN checksum = $3 THEN metadata ELSE '{}' END, \
             labels = CASE WHEN checksum = $3 THEN labels ELSE '[]' END WHERE id = $1",
            vec![V::Uuid(id), V::Int(size_bytes), V::Text(checksum), V::Ts(modified_at), V::Ts(at)],
        ),
        Op::DeleteFile { id } => ("DELETE FROM files WHERE id = $1", vec![V::Uuid(id)]),
        Op::SetFileMetadata { id, checksum, metadata } => (
            "UPDATE files SET metadata = $2 WHERE id = $1 AND checksum = $3",
            vec![V::Uuid(id), V::Json(metadata), V::Text(checksum)],
        ),
        Op::SetFileLabels { id, checksum, labels } => (
            "UPDATE files SET labels = $2 WHERE id = $1 AND checksum = $3",
            vec![
                V::Uuid(id),
                V::Text(serde_json::to_string(&labels).unwrap_or_else(|_| "[]".into())),
                V::Text(checksum),
            ],
        ),
        Op::InsertSyncOperation {
            id,
            user_id,
            kind,
            provider_id,
            details,
            at,
        } => (
            "INSERT INTO sync_operations (id, user_id, kind, provider_id, status, details, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6) ON CONFLICT (id) DO NOTHING",
            vec![
                V::Uuid(id),
                V::Uuid(user_id),
                V::Text(kind),
                V::OptUuid(provider_id),
                V::Json(details),
                V::Ts(at),
            ],
        ),
        Op::SyncOperationHeld { id, held, at } => (
            "UPDATE sync_operations SET paused = $2, held = $3, updated_at = $4 WHERE id = $1",
            vec![
                V::Uuid(id),
                V::Bool(held.is_some()),
                V::OptText(held.map(|h| h.to_string())),
                V::Ts(at),
            ],
        ),
        Op::SyncOperationRetrying {
            id,
            retries,
            reason,
            retry_at,
            at,
        } => (
            "UPDATE sync_operations SET retries = $2, retry_reason = $3, retry_at = $4, updated_at = $5 WHERE id = $1",
            vec![V::Uuid(id), V::Int(retries), V::Text(reason), V::Ts(retry_at), V::Ts(at)],
        ),
        Op::InsertSyncPair {
            id,
            user_id,
            source_provider_id,
            source_path,
            target_provider_id,
            target_path,
            mode,
            conflict_policy,
            max_delete_percent,
            schedule,
            realtime,
            keep_versions,
            keep_days,
            at,
        } => (
            "INSERT INTO sync_pairs (id, user_id, source_provider_id, source_path, target_provider_id, target_path, mode, \
             conflict_policy, max_delete_percent, schedule, realtime, keep_versions, keep_days, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $14, $12, $12) ON CONFLICT (id) DO NOTHING",
            vec![
                V::Uuid(id),
                V::Uuid(user_id),
                V::Uuid(source_provider_id),
                V::Text(source_path),
                V::Uuid(target_provider_id),
                V::Text(target_path),
                V::Text(mode.to_owned()),
                V::Text(conflict_policy.to_owned()),
                V::Int(max_delete_percent),
                V::OptText(schedule),
                V::Bool(realtime),
                V::Ts(at),
                V::Int(keep_versions),
                V::Int(keep_days),
            ],
        ),
        Op::UpsertConflict {
            pair_id,
            path,
            user_id,
            kind,
            source,
            target,
            at,
        } => (
            "INSERT INTO sync_conflicts (pair_id, path, user_id, kind, source_checksum, source_size, target_checksum, target_size, \
             detected_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (pair_id, path) DO UPDATE SET \
             kind = excluded.kind, source_checksum = excluded.source_checksum, source_size = excluded.source_size, \
             target_checksum = excluded.target_checksum, target_size = excluded.target_size, updated_at = excluded.updated_at",
            vec![
                V::Uuid(pair_id),
                V::Text(path),
                V::Uuid(user_id),
                V::Text(kind.to_owned()),
                V::OptText(source.as_ref().map(|s| s.0.clone())),
                V::OptInt(source.map(|s| s.1)),
                V::OptText(target.as_ref().map(|t| t.0.clone())),
                V::OptInt(target.map(|t| t.1)),
                V::Ts(at),
            ],
        ),
        Op::ResolveConflict {
            pair_id,
            path,
            resolution,
            at,
        } => (
            "UPDATE sync_conflicts SET resolution = $3, updated_at = $4 WHERE pair_id = $1 AND path = $2",
            vec![V::Uuid(pair_id), V::Text(path), V::Text(resolution.to_owned()), V::Ts(at)],
        ),
        Op::InsertFileVersion {
            id,
            pair_id,
            user_id,
            provider_id,
            path,
            side,
            checksum,
            size_bytes,
            modified_at,
            reason,
            at,
        } => (
            "INSERT INTO file_versions (id, pair_id, user_id, provider_id, path, side, checksum, size_bytes, modified_at, reason, kept_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
            vec![
                V::Uuid(id),
                V::Uuid(pair_id),
                V::Uuid(user_id),
                V::Uuid(provider_id),
                V::Text(path),
                V::Text(side.to_owned()),
                V::Text(checksum),
                V::Int(size_bytes),
                V::Ts(modified_at),
                V::Text(reason.to_owned()),
                V::Ts(at),
            ],
        ),
        Op::DeleteFileVersion { id } => ("DELETE FROM file_versions WHERE id = $1", vec![V::Uuid(id)]),
        Op::InsertDeletedFile {
            file_id,
            user_id,
            provider_id,
            path,
            checksum,
            size_bytes,
            modified_at,
            reason,
            at,
        } => (
            "INSERT INTO deleted_files (file_id, user_id, provider_id, path, checksum, size_bytes, modified_at, reason, deleted_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (file_id) DO NOTHING",
            vec![
                V::Uuid(file_id),
                V::Uuid(user_id),
                V::Uuid(provider_id),
                V::Text(path),
                V::Text(checksum),
                V::Int(size_bytes),
                V::Ts(modified_at),
                V::Text(reason),
                V::Ts(at),
            ],
        ),
        Op::ForgetDeletedFile { file_id } => ("DELETE FROM deleted_files WHERE file_id = $1", vec![V::Uuid(file_id)]),
        Op::ClearConflict { pair_id, path } => (
            "DELETE FROM sync_conflicts WHERE pair_id = $1 AND path = $2",
            vec![V::Uuid(pair_id), V::Text(path)],
        ),
        Op::SyncPairRun { id, operation_id, at } => (
            "UPDATE sync_pairs SET last_operation_id = $2, updated_at = $3 WHERE id = $1",
            vec![V::Uuid(id), V::Uuid(operation_id), V::Ts(at)],
        ),
        Op::SyncOperationStatus {
            id,
            status,
            error,
            ended,
            at,
        } => (
            "UPDATE sync_operations SET status = $2, error = COALESCE($3, error), updated_at = $4, \
             completed_at = CASE WHEN $5 THEN $4 ELSE completed_at END WHERE id = $1",
            vec![
                V::Uuid(id),
                V::Text(status.to_owned()),
                V::OptText(error),
                V::Ts(at),
                V::Bool(ended),
            ],
        ),
        Op::SyncOperationPaused { id, paused, at } => (
            "UPDATE sync_operations SET paused = $2, updated_at = $3 WHERE id = $1",
            vec![V::Uuid(id), V::Bool(paused), V::Ts(at)],
        ),
        Op::SyncOperationProgress {
            id,
            files_done,
            bytes_done,
            files_total,
            bytes_total,
            bytes_written,
            at,
        } => (
            "UPDATE sync_operations SET files_done = $2, bytes_done = $3, files_total = COALESCE($4, files_total), \
             bytes_total = COALESCE($5, bytes_total), updated_at = $6, bytes_written = COALESCE($7, bytes_written) WHERE id = $1",
            vec![
                V::Uuid(id),
                V::Int(files_done),
                V::Int(bytes_done),
                V::OptInt(files_total),
                V::OptInt(bytes_total),
                V::Ts(at),
                V::OptInt(bytes_written),
            ],
        ),
    }
}

/// The row counts one run of like operations is cut into, largest first: a few statement texts
/// per operation, so the prepared-statement caches stay small.
pub(crate) const RUN_SIZES: [usize; 5] = [256, 32, 8, 2, 1];

/// How a joined statement writes its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    /// `$1, $2, …` numbered across the whole statement (PostgreSQL).
    Numbered,
    /// `?` each, which takes the next value bound. SQLite resolves a named parameter by walking
    /// the statement's list of names, so binding thousands of `$n` costs time quadratic in their
    /// number; `?` costs nothing to look up.
    Positional,
}

/// A statement joined from a run of like operations.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Combined {
    pub text: String,
    /// Which of each row's values are bound, in order, for each row in turn.
    pub order: Vec<usize>,
}

/// `sql`, which carries out one operation with `width` values, rewritten to carry out `rows` of them
/// in one statement, where that does exactly what `rows` statements in a row would: an `INSERT` of
/// one `VALUES` tuple that does not update on conflict (`DO NOTHING` keeps the first row, as running
/// them in order does) becomes one multi-row `INSERT`; a `DELETE … WHERE column = $1` becomes one
/// `IN` list; an `UPDATE … WHERE …` becomes one `UPDATE … FROM (VALUES …)`, which is the same only
/// when no two of the rows update the same row: the caller cuts runs where [`update_key`] repeats.
/// `None` for any other statement.
pub(crate) fn combined(sql: &str, width: usize, rows: usize, style: Placeholders) -> Option<Combined> {
    let (head, tuple, tail) = if let Some(head) = sql.strip_suffix(" = $1")
        && head.starts_with("DELETE FROM ")
        && !head.contains('$')
        && width == 1
    {
        (format!("{head} IN ("), "$1".to_owned(), ")".to_owned())
    } else if sql.starts_with("INSERT INTO ") && !sql.contains("DO UPDATE") {
        let open = sql.find(" VALUES (")? + " VALUES ".len();
        let close = open + sql[open..].find(')')?;
        (sql[..open].to_owned(), sql[open..=close].to_owned(), sql[close + 1..].to_owned())
    } else if let Some(update) = sql.strip_prefix("UPDATE ")
        && let Some(at) = update.find(" WHERE ")
    {
        // Each `$n` of the statement becomes column n of the joined row it is updated from.
        let (column, names) = match style {
            Placeholders::Numbered => (
                "v.c",
                format!(" AS v({})", (1..=width).map(|n| format!("c{n}")).collect::<Vec<_>>().join(", ")),
            ),
            Placeholders::Positional => ("v.column", " AS v".to_owned()),
        };
        let (set, condition) = (&update[..at], &update[at + " WHERE ".len()..]);
        // Rows are told apart by what the WHERE reads; an update that changes one of those columns
        // could be followed by one that finds the row only after it, so it is never joined.
        if assigned(set).any(|column| condition.split(" AND ").any(|c| c.trim_start().starts_with(&format!("{column} ")))) {
            return None;
        }
        let all: Vec<String> = (1..=width).map(|n| format!("${n}")).collect();
        (
            format!("UPDATE {} FROM (VALUES ", by_column(set, width, column)?),
            format!("({})", all.join(", ")),
            format!("){names} WHERE {}", by_column(condition, width, column)?),
        )
    } else {
        return None;
    };
    // The tuple's text between its placeholders, and which value each placeholder takes.
    let mut pieces = vec![String::new()];
    let mut order = Vec::new();
    for part in placeholders(&tuple) {
        match part {
            Part::Text(text) => pieces.last_mut()?.push_str(text),
            Part::Value(n) => {
                order.push(n.checked_sub(1).filter(|i| *i < width)?);
                pieces.push(String::new());
            }
        }
    }
    let mut text = head;
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        for (piece, index) in pieces.iter().zip(order.iter().map(Some).chain([None])) {
            text.push_str(piece);
            match (index, style) {
                (Some(index), Placeholders::Numbered) => text.push_str(&format!("${}", row * width + index + 1)),
                (Some(_), Placeholders::Positional) => text.push('?'),
                (None, _) => {}
            }
        }
    }
    text.push_str(&tail);
    let order = match style {
        Placeholders::Numbered => (0..width).collect(),
        Placeholders::Positional => order,
    };
    Some(Combined { text, order })
}

/// The values of an `UPDATE`'s `WHERE` clause (indices into its values), which say which row it
/// updates; `None` for any other statement.
pub(crate) fn update_key(sql: &str) -> Option<Vec<usize>> {
    let update = sql.strip_prefix("UPDATE ")?;
    let condition = &update[update.find(" WHERE ")?..];
    Some(
        placeholders(condition)
            .filter_map(|part| match part {
                Part::Value(n) => n.checked_sub(1),
                Part::Text(_) => None,
            })
            .collect(),
    )
}

/// The columns an `UPDATE`'s `SET` clause assigns (each `name = ` at its start or after a comma).
fn assigned(set: &str) -> impl Iterator<Item = &str> {
    let set = set.split_once(" SET ").map_or(set, |(_, set)| set);
    set.split(", ")
        .filter_map(|part| part.split_once(" = ").map(|(name, _)| name.trim()))
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// A statement's text, cut at its `$n` placeholders.
enum Part<'a> {
    Text(&'a str),
    Value(usize),
}

fn placeholders(sql: &str) -> impl Iterator<Item = Part<'_>> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if let Some(after) = rest.strip_prefix('$') {
            let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            let n = after[..digits].parse().unwrap_or(0);
            rest = &after[digits..];
            return Some(Part::Value(n));
        }
        let end = rest.find('$').unwrap_or(rest.len());
        let (text, tail) = rest.split_at(end);
        rest = tail;
        Some(Part::Text(text))
    })
}

/// `text` with each `$n` written `{column}n`; `None` if one is past `width`.
fn by_column(text: &str, width: usize, column: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    for part in placeholders(text) {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Value(n) if (1..=width).contains(&n) => out.push_str(&format!("{column}{n}")),
            Part::Value(_) => return None,
        }
    }
    Some(out)
}

/// Why a read model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Runs a query on either backend with the same SQL and values, mapping each row with the same code
/// (the row types differ, so the body is expanded once per backend).
macro_rules! fetch_all {
    ($pool:expr, $sql:expr, $vals:expr, |$row:ident| $body:expr) => {{
        match $pool {
            cloudsync_eventstore::DbPool::Postgres(pool) => $crate::sql::fetch_all!(@rows pool, bind_pg, $sql, $vals, |$row| $body),
            cloudsync_eventstore::DbPool::Sqlite(pool) => {
                $crate::sql::fetch_all!(@rows pool, bind_sqlite, $sql, $vals, |$row| $body)
            }
        }
    }};
    (@rows $pool:ident, $bind:ident, $sql:expr, $vals:expr, |$row:ident| $body:expr) => {{
        use sqlx::Row as _;
        let mut query = sqlx::query($sql);
        for value in $vals {
            query = $crate::sql::$bind(query, value);
        }
        let rows = query.fetch_all($pool).await?;
        rows.iter()
            .map(|$row| $body)
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err($crate::sql::QueryError::from)
    }};
}
pub(crate) use fetch_all;

/// [`fetch_all!`] for a page of rows, whose columns are `$columns` and whose order is `$order`. On
/// SQLite the page comes back as one row holding it as a JSON array ([`json_page`]), each element
/// mapped as a [`JsonRow`]: sqlx's SQLite driver hands each row over from its worker thread on its
/// own, which cost a page of 50 files some 50 thread wake-ups, more than the query itself.
macro_rules! fetch_page {
    ($pool:expr, $sql:expr, $columns:expr, $order:expr, $vals:expr, |$row:ident| $body:expr) => {{
        match $pool {
            cloudsync_eventstore::DbPool::Postgres(pool) => $crate::sql::fetch_all!(@rows pool, bind_pg, $sql, $vals, |$row| $body),
            cloudsync_eventstore::DbPool::Sqlite(pool) => {
                let sql = $crate::sql::json_page($sql, $columns, $order);
                let mut query = sqlx::query(&sql);
                for value in $vals {
                    query = $crate::sql::bind_sqlite(query, value);
                }
                let page: String = sqlx::Row::try_get(&query.fetch_one(pool).await?, 0)?;
                $crate::sql::JsonRow::parse(&page, $columns)?
                    .iter()
                    .map(|$row| $body)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err($crate::sql::QueryError::from)
            }
        }
    }};
}
pub(crate) use fetch_page;

/// SQLite: `sql` (a `SELECT` whose result columns are `columns`) as one row holding its rows as a
/// JSON array of arrays (each row's values in the order of `columns`), in `order` (SQLite 3.44's
/// ordered aggregates).
pub(crate) fn json_page(sql: &str, columns: &[&str], order: &str) -> String {
    format!(
        "SELECT json_group_array(json_array({}) ORDER BY {order}) FROM ({sql})",
        columns.join(", ")
    )
}

/// One row of a [`json_page`], read by column name like an sqlx row (`try_get`), each value as its
/// SQLite type gives it (text as a string, integers and reals as numbers, NULL as null).
pub(crate) struct JsonRow<'c> {
    columns: &'c [&'c str],
    values: Vec<Value>,
}

impl<'c> JsonRow<'c> {
    /// The rows of a page whose columns are `columns`.
    pub(crate) fn parse(page: &str, columns: &'c [&'c str]) -> Result<Vec<Self>, sqlx::Error> {
        let rows: Vec<Vec<Value>> = serde_json::from_str(page).map_err(|err| sqlx::Error::Decode(Box::new(err)))?;
        Ok(rows.into_iter().map(|values| Self { columns, values }).collect())
    }

    /// The value of `column`, as sqlx's `Row::try_get` would give it.
    pub(crate) fn try_get<'r, T, I>(&'r self, column: I) -> Result<T, sqlx::Error>
    where
        T: serde::Deserialize<'r>,
        I: AsRef<str>,
    {
        let column = column.as_ref();
        let value = self
            .columns
            .iter()
            .position(|c| *c == column)
            .and_then(|at| self.values.get(at))
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))?;
        T::deserialize(value).map_err(|err| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn page(pool: &cloudsync_eventstore::DbPool) -> Result<Vec<(String, i64, Option<String>)>, QueryError> {
        fetch_page!(
            pool,
            "SELECT k, n, note FROM page_test WHERE n <> $1 ORDER BY k LIMIT $2",
            &["k", "n", "note"],
            "k",
            [Val::Int(0), Val::Int(3)],
            |row| Ok((row.try_get("k")?, row.try_get("n")?, row.try_get::<Option<String>, _>("note")?))
        )
    }

    /// A page read in one piece (SQLite) gives what row-by-row reading (PostgreSQL) gives: every
    /// value as stored, in order, however awkward its text.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_page_reads_the_same_on_both_backends() {
        use cloudsync_eventstore::testing::TestDatabase;
        let rows = vec![
            ("3 last, left out by the limit".to_owned(), 7, None),
            (
                "1 \"quoted\", a\nnew line, a back\\slash".to_owned(),
                i64::MAX,
                Some(r#"{"json": "as text"}"#.to_owned()),
            ),
            ("2 é ünïcode 🙂".to_owned(), (1 << 53) + 1, None),
            ("2 zero, filtered out".to_owned(), 0, Some(String::new())),
            ("0 negative".to_owned(), -1, Some("'".to_owned())),
        ];
        for test in [TestDatabase::sqlite().await, TestDatabase::postgres().await] {
            let pool = &test.db.pool;
            cloudsync_eventstore::on_pool!(pool, |p| {
                sqlx::query("CREATE TABLE page_test (k TEXT NOT NULL, n BIGINT NOT NULL, note TEXT)")
                    .execute(p)
                    .await
                    .expect("table");
                for (k, n, note) in &rows {
                    sqlx::query("INSERT INTO page_test (k, n, note) VALUES ($1, $2, $3)")
                        .bind(k)
                        .bind(n)
                        .bind(note)
                        .execute(p)
                        .await
                        .expect("row");
                }
            });
            let mut expected: Vec<_> = rows.iter().filter(|(_, n, _)| *n != 0).cloned().collect();
            expected.sort();
            expected.truncate(3);
            assert_eq!(page(pool).await.expect("a page"), expected, "{}", test.db.backend());
            test.cleanup().await;
        }
    }

    fn joined(sql: &str, width: usize, rows: usize, style: Placeholders) -> Option<(String, Vec<usize>)> {
        combined(sql, width, rows, style).map(|c| (c.text, c.order))
    }

    #[test]
    fn runs_of_inserts_and_deletes_join_and_updates_do_not() {
        use Placeholders::{Numbered, Positional};
        let insert = "INSERT INTO t (a, b, c) VALUES ($1, $2, 'x', $2) ON CONFLICT (a) DO NOTHING";
        assert_eq!(
            joined(insert, 2, 3, Numbered),
            Some((
                "INSERT INTO t (a, b, c) VALUES ($1, $2, 'x', $2), ($3, $4, 'x', $4), ($5, $6, 'x', $6) ON CONFLICT (a) DO NOTHING".into(),
                vec![0, 1]
            ))
        );
        assert_eq!(
            joined(insert, 2, 2, Positional),
            Some((
                "INSERT INTO t (a, b, c) VALUES (?, ?, 'x', ?), (?, ?, 'x', ?) ON CONFLICT (a) DO NOTHING".into(),
                vec![0, 1, 1]
            ))
        );
        let permuted = "INSERT INTO t (a, b) VALUES ($2, $10, $1)";
        assert_eq!(
            joined(permuted, 10, 2, Numbered).map(|(text, _)| text).as_deref(),
            Some("INSERT INTO t (a, b) VALUES ($2, $10, $1), ($12, $20, $11)")
        );
        assert_eq!(joined(permuted, 10, 1, Positional).map(|(_, order)| order), Some(vec![1, 9, 0]));
        assert_eq!(
            joined("DELETE FROM files WHERE id = $1", 1, 3, Numbered),
            Some(("DELETE FROM files WHERE id IN ($1, $2, $3)".into(), vec![0]))
        );
        assert_eq!(
            joined("DELETE FROM files WHERE id = $1", 1, 2, Positional),
            Some(("DELETE FROM files WHERE id IN (?, ?)".into(), vec![0]))
        );
        // A placeholder past the values is refused rather than bound wrong.
        assert_eq!(joined("INSERT INTO t (a) VALUES ($3)", 2, 2, Numbered), None);
        assert_eq!(joined("DELETE FROM t WHERE a = $1 AND b = $2", 2, 2, Numbered), None);
        let update = "UPDATE t SET a = $2, b = CASE WHEN c = $3 THEN b ELSE '' END WHERE id = $1 AND c = $3";
        assert_eq!(
            joined(update, 3, 2, Numbered),
            Some((
                "UPDATE t SET a = v.c2, b = CASE WHEN c = v.c3 THEN b ELSE '' END FROM (VALUES ($1, $2, $3), ($4, $5, $6)) \
                 AS v(c1, c2, c3) WHERE id = v.c1 AND c = v.c3"
                    .into(),
                vec![0, 1, 2]
            ))
        );
        assert_eq!(
            joined(update, 3, 2, Positional).map(|(text, _)| text).as_deref(),
            Some(
                "UPDATE t SET a = v.column2, b = CASE WHEN c = v.column3 THEN b ELSE '' END FROM (VALUES (?, ?, ?), (?, ?, ?)) \
                 AS v WHERE id = v.column1 AND c = v.column3"
            )
        );
        assert_eq!(update_key(update), Some(vec![0, 2]));
        // An update of a column its WHERE reads is not joined.
        assert_eq!(
            joined("UPDATE t SET c = $2, a = COALESCE($3, a) WHERE id = $1 AND c = $3", 3, 2, Numbered),
            None
        );
        assert_eq!(update_key("DELETE FROM files WHERE id = $1"), None);
        assert_eq!(joined("UPDATE t SET a = $4 WHERE id = $1", 2, 2, Numbered), None);
        assert_eq!(
            joined(
                "INSERT INTO users (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = excluded.id",
                1,
                2,
                Numbered
            ),
            None
        );
    }
}
