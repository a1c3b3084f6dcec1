//! What each event does to the read models, as plain data: a pure function from an event to row
//! operations, which the runner then executes on whichever backend is configured.

use chrono::{DateTime, Utc};
use cloudsync_domain::DomainEvent;
use cloudsync_domain::events::Resolution;
use cloudsync_domain::merge::{Action, ConflictKind};
use cloudsync_domain::sync_job::{JobKind, JobPhase};
use serde_json::Value;
use uuid::Uuid;

/// The read-model tables, one projector each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Users,
    Providers,
    Files,
    SyncOperations,
    SyncPairs,
    SyncConflicts,
    FileVersions,
    DeletedFiles,
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Users,
        Table::Providers,
        Table::Files,
        Table::SyncOperations,
        Table::SyncPairs,
        Table::SyncConflicts,
        Table::FileVersions,
        Table::DeletedFiles,
    ];

    /// The table's name, which is also its projector's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Providers => "providers",
            Self::Files => "files",
            Self::SyncOperations => "sync_operations",
            Self::SyncPairs => "sync_pairs",
            Self::SyncConflicts => "sync_conflicts",
            Self::FileVersions => "file_versions",
            Self::DeletedFiles => "deleted_files",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One change to one read-model row.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    UpsertUser {
        id: Uuid,
        email: String,
        at: DateTime<Utc>,
    },
    /// Removes every row of an erased user from one table.
    EraseUser {
        id: Uuid,
        table: Table,
    },
    SetUserRoles {
        id: Uuid,
        roles: String,
        at: DateTime<Utc>,
    },
    SetUserPlan {
        id: Uuid,
        quota_bytes: Option<i64>,
        tier: String,
        at: DateTime<Utc>,
    },
    InsertProvider {
        id: Uuid,
        user_id: Uuid,
        kind: String,
        display_name: String,
        config: Value,
        at: DateTime<Utc>,
    },
    DisconnectProvider {
        id: Uuid,
        at: DateTime<Utc>,
    },
    SetProviderSchedule {
        id: Uuid,
        schedule: Option<String>,
        realtime: bool,
    },
    /// A disconnected provider's files leave the `files` view (their events stay).
    RemoveProviderFiles {
        provider_id: Uuid,
    },
    InsertFile {
        id: Uuid,
        user_id: Uuid,
        provider_id: Uuid,
        path: String,
        name: String,
        size_bytes: i64,
        mime_type: String,
        checksum: String,
        modified_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    MoveFile {
        id: Uuid,
        path: String,
        name: String,
        at: DateTime<Utc>,
    },
    ChangeFile {
        id: Uuid,
        size_bytes: i64,
        checksum: String,
        modified_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    DeleteFile {
        id: Uuid,
    },
    /// What the analysis learnt of the file's current version (`{"image": {…}}`); a changed file's
    /// goes with [`Op::ChangeFile`].
    SetFileMetadata {
        id: Uuid,
        /// The version it is of: a row that has moved on to another is left alone.
        checksum: String,
        metadata: Value,
    },
    /// An image classifier's labels of a version of the file, the likeliest first.
    SetFileLabels {
        id: Uuid,
        checksum: String,
        labels: Vec<String>,
    },
    InsertSyncOperation {
        id: Uuid,
        user_id: Uuid,
        kind: String,
        provider_id: Option<Uuid>,
        /// For a sync run: its pair.
        details: Value,
        at: DateTime<Utc>,
    },
    /// A sync run held by the max-delete rail (`held`: what it would delete), or let go.
    SyncOperationHeld {
        id: Uuid,
        held: Option<Value>,
        at: DateTime<Utc>,
    },
    SyncOperationRetrying {
        id: Uuid,
        retries: i64,
        reason: String,
        retry_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    InsertSyncPair {
        id: Uuid,
        user_id: Uuid,
        source_provider_id: Uuid,
        source_path: String,
        target_provider_id: Uuid,
        target_path: String,
        mode: &'static str,
        conflict_policy: &'static str,
        max_delete_percent: i64,
        schedule: Option<String>,
        realtime: bool,
        keep_versions: i64,
        keep_days: i64,
        at: DateTime<Utc>,
    },
    SyncPairRun {
        id: Uuid,
        operation_id: Uuid,
        at: DateTime<Utc>,
    },
    UpsertConflict {
        pair_id: Uuid,
        path: String,
        user_id: Uuid,
        kind: &'static str,
        source: Option<(String, i64)>,
        target: Option<(String, i64)>,
        at: DateTime<Utc>,
    },
    ResolveConflict {
        pair_id: Uuid,
        path: String,
        resolution: &'static str,
        at: DateTime<Utc>,
    },
    ClearConflict {
        pair_id: Uuid,
        path: String,
    },
    InsertFileVersion {
        id: Uuid,
        pair_id: Uuid,
        user_id: Uuid,
        provider_id: Uuid,
        path: String,
        side: &'static str,
        checksum: String,
        size_bytes: i64,
        modified_at: DateTime<Utc>,
        reason: &'static str,
        at: DateTime<Utc>,
    },
    DeleteFileVersion {
        id: Uuid,
    },
    InsertDeletedFile {
        file_id: Uuid,
        user_id: Uuid,
        provider_id: Uuid,
        path: String,
        checksum: String,
        size_bytes: i64,
        modified_at: DateTime<Utc>,
        reason: String,
        at: DateTime<Utc>,
    },
    ForgetDeletedFile {
        file_id: Uuid,
    },
    SyncOperationStatus {
        id: Uuid,
        status: &'static str,
        error: Option<String>,
        ended: bool,
        at: DateTime<Utc>,
    },
    SyncOperationPaused {
        id: Uuid,
        paused: bool,
        at: DateTime<Utc>,
    },
    SyncOperationProgress {
        id: Uuid,
        files_done: i64,
        bytes_done: i64,
        files_total: Option<i64>,
        bytes_total: Option<i64>,
        bytes_written: Option<i64>,
        at: DateTime<Utc>,
    },
}

impl Op {
    /// The user a row is written for, for the operations that create rows (none is created for an
    /// erased account).
    pub fn creates_for(&self) -> Option<Uuid> {
        match self {
            Self::UpsertUser { id, .. } => Some(*id),
            Self::InsertProvider { user_id, .. }
            | Self::InsertFile { user_id, .. }
            | Self::InsertSyncOperation { user_id, .. }
            | Self::InsertSyncPair { user_id, .. }
            | Self::UpsertConflict { user_id, .. }
            | Self::InsertFileVersion { user_id, .. }
            | Self::InsertDeletedFile { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }

    pub fn table(&self) -> Table {
        match self {
            Self::EraseUser { table, .. } => *table,
            Self::UpsertUser { .. } | Self::SetUserRoles { .. } | Self::SetUserPlan { .. } => Table::Users,
            Self::InsertProvider { .. } | Self::DisconnectProvider { .. } | Self::SetProviderSchedule { .. } => Table::Providers,
            Self::RemoveProviderFiles { .. }
            | Self::InsertFile { .. }
            | Self::MoveFile { .. }
            | Self::ChangeFile { .. }
            | Self::DeleteFile { .. }
            | Self::SetFileMetadata { .. }
            | Self::SetFileLabels { .. } => Table::Files,
            Self::InsertSyncOperation { .. }
            | Self::SyncOperationStatus { .. }
            | Self::SyncOperationPaused { .. }
            | Self::SyncOperationProgress { .. }
            | Self::SyncOperationHeld { .. }
            | Self::SyncOperationRetrying { .. } => Table::SyncOperations,
            Self::InsertSyncPair { .. } | Self::SyncPairRun { .. } => Table::SyncPairs,
            Self::UpsertConflict { .. } | Self::ResolveConflict { .. } | Self::ClearConflict { .. } => Table::SyncConflicts,
            Self::InsertFileVersion { .. } | Self::DeleteFileVersion { .. } => Table::FileVersions,
            Self::InsertDeletedFile { .. } | Self::ForgetDeletedFile { .. } => Table::DeletedFiles,
        }
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The row operations an event causes. `at` is the event's own time, so a rebuild writes exactly
/// what the live projector wrote.
pub fn ops_for(event: &DomainEvent, at: DateTime<Utc>) -> Vec<Op> {
    use DomainEvent as E;
    match event {
        E::UserRegistered(e) => vec![Op::UpsertUser {
            id: e.user_id.as_uuid(),
            email: e.email.to_column(),
            at,
        }],
        // The write side keeps these: the read models hold no password material.
        E::UserDeleted(e) => Table::ALL
            .iter()
            .map(|table| Op::EraseUser {
                id: e.user_id.as_uuid(),
                table: *table,
            })
            .collect(),
        E::UserRoleGranted(e) => vec![Op::SetUserRoles {
            id: e.user_id.as_uuid(),
            roles: e.roles.join(","),
            at,
        }],
        E::UserRoleRevoked(e) => vec![Op::SetUserRoles {
            id: e.user_id.as_uuid(),
            roles: e.roles.join(","),
            at,
        }],
        E::UserPlanSet(e) => vec![Op::SetUserPlan {
            id: e.user_id.as_uuid(),
            quota_bytes: e.quota_bytes.map(int),
            tier: e.tier.clone(),
            at,
        }],
        E::EmailClaimed(_)
        | E::UserPasswordChanged(_)
        | E::PasswordResetRequested(_)
        | E::TotpEnrollmentBegun(_)
        | E::TotpEnabled(_)
        | E::TotpDisabled(_)
        | E::MfaCodeUsed(_)
        | E::ApiTokenCreated(_)
        | E::ApiTokenRevoked(_)
        | E::IpAllowlistSet(_)
        | E::ExternalIdentityLinked(_)
        | E::EmailReleased(_)
        | E::SmsFactorEnabled(_)
        | E::SmsFactorDisabled(_)
        | E::PasskeyRegistered(_)
        | E::PasskeyUpdated(_)
        | E::PasskeyRemoved(_) => Vec::new(),
        E::ProviderConnected(e) => vec![Op::InsertProvider {
            id: e.provider_id.as_uuid(),
            user_id: e.owner_id.as_uuid(),
            kind: e.kind.as_str().to_owned(),
            // Sealed values stay sealed here; readers open them with the owner's key.
            display_name: e.display_name.to_column(),
            config: e.config.to_json(),
            at,
        }],
        E::ProviderDisconnected(e) => vec![
            Op::DisconnectProvider {
                id: e.provider_id.as_uuid(),
                at,
            },
            Op::RemoveProviderFiles {
                provider_id: e.provider_id.as_uuid(),
            },
        ],
        E::ProviderCredentialsRenewed(_) | E::FileContentExtracted(_) => Vec::new(),
        E::FileAnalyzed(e) => match (&e.image, &e.labels) {
            (_, Some(labels)) => vec![Op::SetFileLabels {
                id: e.file_id.as_uuid(),
                checksum: e.checksum.clone(),
                labels: labels.iter().map(|l| l.label.clone()).collect(),
            }],
            (Some(image), None) => vec![Op::SetFileMetadata {
                id: e.file_id.as_uuid(),
                checksum: e.checksum.clone(),
                metadata: serde_json::json!({"image": {
                    "width": image.width,
                    "height": image.height,
                    "phash": image.phash,
                    "takenAt": image.taken_at,
                    "camera": image.camera,
                }}),
            }],
            (None, None) => Vec::new(),
        },
        E::ProviderScheduleSet(e) => vec![Op::SetProviderSchedule {
            id: e.provider_id.as_uuid(),
            schedule: e.schedule.as_ref().map(|s| s.as_str().to_owned()),
            realtime: e.realtime,
        }],
        E::FileDiscovered(e) => vec![Op::InsertFile {
            id: e.file_id.as_uuid(),
            user_id: e.owner_id.as_uuid(),
            provider_id: e.provider_id.as_uuid(),
            path: e.path.as_str().to_owned(),
            name: e.path.name().to_owned(),
            size_bytes: int(e.size_bytes),
            mime_type: e.mime_type.clone(),
            checksum: e.checksum.clone(),
            modified_at: e.modified_at,
            at,
        }],
        E::FileMoved(e) => vec![Op::MoveFile {
            id: e.file_id.as_uuid(),
            path: e.to.as_str().to_owned(),
            name: e.to.name().to_owned(),
            at,
        }],
        E::FileDeleted(e) => {
            let mut ops = vec![Op::DeleteFile { id: e.file_id.as_uuid() }];
            if let Some(kept) = &e.kept {
                ops.push(Op::InsertDeletedFile {
                    file_id: e.file_id.as_uuid(),
                    user_id: e.owner_id.as_uuid(),
                    provider_id: e.provider_id.as_uuid(),
                    path: e.path.as_str().to_owned(),
                    checksum: kept.checksum.clone(),
                    size_bytes: int(kept.size_bytes),
                    modified_at: kept.modified_at,
                    reason: kept.reason.clone(),
                    at: e.deleted_at,
                });
            }
            ops
        }
        E::DeletedFileRestored(e) => vec![Op::ForgetDeletedFile {
            file_id: e.file_id.as_uuid(),
        }],
        E::KeptContentReleased(e) => vec![Op::ForgetDeletedFile {
            file_id: e.file_id.as_uuid(),
        }],
        E::FileRemoved(e) => vec![Op::DeleteFile { id: e.file_id.as_uuid() }],
        E::FileChanged(e) => vec![Op::ChangeFile {
            id: e.file_id.as_uuid(),
            size_bytes: int(e.size_bytes),
            checksum: e.checksum.clone(),
            modified_at: e.modified_at,
            at,
        }],
        E::SyncJobCreated(e) => vec![Op::InsertSyncOperation {
            id: e.job_id.as_uuid(),
            user_id: e.owner_id.as_uuid(),
            kind: e.kind.name().to_owned(),
            provider_id: e.kind.provider_id().map(|p| p.as_uuid()),
            details: match &e.kind {
                JobKind::Sync { pair_id, .. } => serde_json::json!({ "pair_id": pair_id.as_uuid() }),
                JobKind::Scan { .. } => serde_json::json!({}),
                JobKind::Export(request) => serde_json::json!({
                    "what": request.what.as_str(),
                    "format": request.format.extension(),
                    "since": request.since,
                    "until": request.until,
                    "file": request.file_name(e.job_id),
                }),
            },
            at,
        }],
        E::SyncJobPhaseEntered(e) => vec![Op::SyncOperationStatus {
            id: e.job_id.as_uuid(),
            status: e.phase.as_str(),
            error: None,
            ended: e.phase.is_terminal(),
            at,
        }],
        E::SyncJobProgressed(e) => vec![Op::SyncOperationProgress {
            id: e.job_id.as_uuid(),
            files_done: int(e.files_done),
            bytes_done: int(e.bytes_done),
            files_total: e.files_total.map(int),
            bytes_total: e.bytes_total.map(int),
            bytes_written: e.bytes_written.map(int),
            at,
        }],
        E::SyncJobPaused(e) => vec![Op::SyncOperationPaused {
            id: e.job_id.as_uuid(),
            paused: true,
            at,
        }],
        E::SyncJobResumed(e) => vec![Op::SyncOperationPaused {
            id: e.job_id.as_uuid(),
            paused: false,
            at,
        }],
        E::SyncJobCompleted(e) => vec![status(e.job_id.as_uuid(), JobPhase::Completed, None, at)],
        E::SyncJobFailed(e) => vec![status(e.job_id.as_uuid(), JobPhase::Failed, e.reason.clone(), at)],
        E::SyncJobCancelled(e) => vec![status(e.job_id.as_uuid(), JobPhase::Cancelled, e.reason.clone(), at)],
        E::SyncJobHeld(e) => vec![Op::SyncOperationHeld {
            id: e.job_id.as_uuid(),
            held: Some(serde_json::json!({ "side": e.side.name(), "deletes": e.deletes })),
            at,
        }],
        E::SyncJobRetrying(e) => vec![Op::SyncOperationRetrying {
            id: e.job_id.as_uuid(),
            retries: i64::from(e.attempt),
            reason: e.reason.clone(),
            retry_at: e.retry_at,
            at,
        }],
        E::SyncJobApproved(e) => vec![Op::SyncOperationHeld {
            id: e.job_id.as_uuid(),
            held: None,
            at,
        }],
        E::SyncPairCreated(e) => vec![Op::InsertSyncPair {
            id: e.pair_id.as_uuid(),
            user_id: e.owner_id.as_uuid(),
            source_provider_id: e.source.provider_id.as_uuid(),
            source_path: e.source.path.as_str().to_owned(),
            target_provider_id: e.target.provider_id.as_uuid(),
            target_path: e.target.path.as_str().to_owned(),
            mode: e.mode.as_str(),
            conflict_policy: e.policy.as_str(),
            max_delete_percent: i64::from(e.max_delete_percent),
            schedule: e.schedule.as_ref().map(|s| s.as_str().to_owned()),
            realtime: e.realtime,
            keep_versions: i64::from(e.keep_versions),
            keep_days: i64::from(e.keep_days),
            at,
        }],
        E::SyncRunRequested(e) => vec![Op::SyncPairRun {
            id: e.pair_id.as_uuid(),
            operation_id: e.job_id.as_uuid(),
            at,
        }],
        // Of the decisions, only conflicts left for the owner have a read model; the merge base is
        // the sync engine's own state, read from the pair's stream, and closes conflicts.
        E::SyncDecisionRecorded(e) => e
            .decision
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Unresolved {
                    path,
                    kind,
                    source,
                    target,
                } => Some(Op::UpsertConflict {
                    pair_id: e.pair_id.as_uuid(),
                    path: path.as_str().to_owned(),
                    user_id: e.owner_id.as_uuid(),
                    kind: match kind {
                        ConflictKind::BothModified => "BOTH_MODIFIED",
                        ConflictKind::BothCreated => "BOTH_CREATED",
                        ConflictKind::BothRenamed => "BOTH_RENAMED",
                    },
                    source: source.as_ref().map(|v| (v.checksum.clone(), int(v.size))),
                    target: target.as_ref().map(|v| (v.checksum.clone(), int(v.size))),
                    at,
                }),
                _ => None,
            })
            .collect(),
        E::SyncConflictResolved(e) => vec![Op::ResolveConflict {
            pair_id: e.pair_id.as_uuid(),
            path: e.path.as_str().to_owned(),
            resolution: match e.resolution {
                Resolution::Source => "SOURCE",
                Resolution::Target => "TARGET",
                Resolution::Both => "BOTH",
                Resolution::Merged { .. } => "MERGED",
            },
            at,
        }],
        E::SyncBaseAdvanced(e) => e
            .changes
            .iter()
            .map(|change| Op::ClearConflict {
                pair_id: e.pair_id.as_uuid(),
                path: change.path.as_str().to_owned(),
            })
            .collect(),
        E::FileVersionKept(e) => vec![Op::InsertFileVersion {
            id: e.version_id,
            pair_id: e.pair_id.as_uuid(),
            user_id: e.owner_id.as_uuid(),
            provider_id: e.provider_id.as_uuid(),
            path: e.provider_path.as_str().to_owned(),
            side: e.side.name(),
            checksum: e.version.checksum.clone(),
            size_bytes: int(e.version.size),
            modified_at: e.version.modified_at,
            reason: e.reason.as_str(),
            at: e.at,
        }],
        E::FileVersionsPruned(e) => e.version_ids.iter().map(|id| Op::DeleteFileVersion { id: *id }).collect(),
        E::FileVersionRestored(_) | E::FilePatchStarted(_) | E::FilePatchSettled(_) => Vec::new(),
    }
}

fn status(id: Uuid, phase: JobPhase, error: Option<String>, at: DateTime<Utc>) -> Op {
    Op::SyncOperationStatus {
        id,
        status: phase.as_str(),
        error,
        ended: true,
        at,
    }
}

#[cfg(test)]
mod tests {
    use cloudsync_domain::events::FileMoved;
    use cloudsync_domain::{FileId, ProviderId, ProviderPath, UserId};

    use super::*;

    #[test]
    fn a_move_updates_path_and_name_of_the_files_row() {
        let at = DateTime::UNIX_EPOCH;
        let event = DomainEvent::FileMoved(FileMoved {
            file_id: FileId::from_uuid(Uuid::from_u128(1)),
            provider_id: ProviderId::from_uuid(Uuid::from_u128(2)),
            owner_id: UserId::from_uuid(Uuid::from_u128(3)),
            from: ProviderPath::parse("a/x.txt").expect("path"),
            to: ProviderPath::parse("b/c/x.txt").expect("path"),
            moved_at: at,
        });
        let ops = ops_for(&event, at);
        assert_eq!(
            ops,
            vec![Op::MoveFile {
                id: Uuid::from_u128(1),
                path: "b/c/x.txt".into(),
                name: "x.txt".into(),
                at
            }]
        );
        assert_eq!(ops[0].table(), Table::Files);
    }

    #[test]
    fn table_names_round_trip() {
        for table in Table::ALL {
            assert_eq!(Table::parse(table.name()), Some(table));
        }
        assert_eq!(Table::parse("nope"), None);
    }
}
