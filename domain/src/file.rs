//! The `File` aggregate: one file on one provider, from discovery to deletion. Users move and delete
//! files; rescans record what changed outside CloudSync (changed in place, moved, removed).

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{
    DeletedFileRestored, DomainEvent, FileAnalyzed, FileChanged, FileContentExtracted, FileDeleted, FileDiscovered, FileMoved, FileRemoved,
    KeptContent, KeptContentReleased,
};
use crate::ids::SyncJobId;
use crate::ids::UserId;
use crate::values::ProviderPath;

/// The stream of what the content pipeline learnt about a file (`content-<uuid>`), apart from the
/// file's own, so reading a file never conflicts with a scan deciding about it. The [`File`]
/// aggregate folds both.
pub fn content_stream(file: crate::ids::FileId) -> String {
    format!("content-{}", file.as_uuid())
}

#[derive(Debug, Default, Clone)]
pub struct File {
    discovered: Option<FileDiscovered>,
    path: Option<ProviderPath>,
    deleted: bool,
    /// The content pipeline's last reading of the file's text.
    extracted: Option<FileContentExtracted>,
    /// How many times the file's name has changed (a move to another folder keeping the name does
    /// not count): models that read the name run again when it moves on.
    name_revision: u32,
    /// Each model's last run over the file.
    analyses: Vec<FileAnalyzed>,
    /// The content kept when the file was deleted, with when, until it is restored or released.
    kept: Option<(KeptContent, DateTime<Utc>)>,
}

#[derive(Clone)]
pub enum FileCommand {
    Discover(FileDiscovered),
    /// Move into `folder`, keeping the name.
    Move {
        by: UserId,
        folder: ProviderPath,
        at: DateTime<Utc>,
    },
    Delete {
        by: UserId,
        at: DateTime<Utc>,
        /// The content, stored in the chunk store before the file was deleted, to keep restorable.
        kept: Option<KeptContent>,
    },
    /// The kept content of a deleted file was written back to where it was.
    RestoreKept {
        by: UserId,
        at: DateTime<Utc>,
    },
    /// Lets go of the kept content when it was kept more than `days` before `now`.
    ReleaseKept {
        now: DateTime<Utc>,
        days: u32,
    },
    /// A rescan saw new content or metadata at the file's path.
    RecordChange {
        by: UserId,
        size_bytes: u64,
        modified_at: DateTime<Utc>,
        checksum: String,
        etag: Option<String>,
        job_id: Option<SyncJobId>,
    },
    /// A rescan found the file at another path (same content).
    RecordMove {
        by: UserId,
        to: ProviderPath,
        at: DateTime<Utc>,
    },
    /// A rescan no longer found the file.
    RecordRemoval {
        by: UserId,
        job_id: Option<SyncJobId>,
    },
    /// The content pipeline read a version of the file. Recorded only while that version is still
    /// the file's and was not read by this extractor version already.
    RecordExtraction(FileContentExtracted),
    /// A model ran over a version of the file. Recorded only while that version (and name) is
    /// still the file's and this model version has not run over it already.
    RecordAnalysis(FileAnalyzed),
}

impl File {
    /// The file's current facts, if it exists, is not deleted and belongs to `user`.
    pub fn live_for(&self, user: UserId) -> Option<(&FileDiscovered, &ProviderPath)> {
        match (&self.discovered, &self.path) {
            (Some(d), Some(path)) if d.owner_id == user && !self.deleted => Some((d, path)),
            _ => None,
        }
    }

    /// The move of a live file of `user` to `to`; nothing when it is already there.
    fn moved(&self, user: UserId, to: ProviderPath, at: DateTime<Utc>) -> Result<Vec<DomainEvent>, DomainError> {
        let (facts, from) = self.live_for(user).ok_or(DomainError::NotFound("file"))?;
        if &to == from {
            return Ok(Vec::new());
        }
        Ok(vec![DomainEvent::FileMoved(FileMoved {
            file_id: facts.file_id,
            provider_id: facts.provider_id,
            owner_id: user,
            from: from.clone(),
            to,
            moved_at: at,
        })])
    }

    /// The live file's facts when its current version has not been read by `extractor` at
    /// `version` (the content pipeline then reads it).
    pub fn needs_extraction(&self, extractor: &str, version: u32) -> Option<(&FileDiscovered, &ProviderPath)> {
        let (facts, path) = self.live_for(self.discovered.as_ref()?.owner_id)?;
        let done = self
            .extracted
            .as_ref()
            .is_some_and(|e| e.checksum == facts.checksum && e.extractor == extractor && e.extractor_version >= version);
        (!done).then_some((facts, path))
    }

    /// The live file's facts when `model` at `version` has not run over its current version and
    /// name (the content pipeline then runs it).
    pub fn needs_analysis(&self, model: &str, version: u32) -> Option<(&FileDiscovered, &ProviderPath)> {
        self.wants_run(model, version, true)
    }

    /// Like [`Self::needs_analysis`], for models that do not read the name (a rename does not make
    /// them run again).
    pub fn needs_content_analysis(&self, model: &str, version: u32) -> Option<(&FileDiscovered, &ProviderPath)> {
        self.wants_run(model, version, false)
    }

    fn wants_run(&self, model: &str, version: u32, reads_name: bool) -> Option<(&FileDiscovered, &ProviderPath)> {
        let (facts, path) = self.live_for(self.discovered.as_ref()?.owner_id)?;
        let done = self.analyses.iter().any(|a| {
            a.model == model
                && a.checksum == facts.checksum
                && a.model_version >= version
                && (!reads_name || a.name_revision == self.name_revision)
        });
        (!done).then_some((facts, path))
    }

    /// `model`'s last run over the live file's current version, if any (perhaps over an older name).
    pub fn analysis(&self, model: &str) -> Option<&FileAnalyzed> {
        let (facts, _) = self.live_for(self.discovered.as_ref()?.owner_id)?;
        self.analyses.iter().find(|a| a.model == model && a.checksum == facts.checksum)
    }

    /// How many times the file's name has changed.
    pub fn name_revision(&self) -> u32 {
        self.name_revision
    }

    /// Whether the live file's current version has been read by some extractor (so its text, if it
    /// has any, is known).
    pub fn read_for_text(&self) -> bool {
        let Some((facts, _)) = self.discovered.as_ref().and_then(|d| self.live_for(d.owner_id)) else {
            return false;
        };
        self.extracted.as_ref().is_some_and(|e| e.checksum == facts.checksum)
    }

    /// Whose file it is (once discovered).
    pub fn owner(&self) -> Option<UserId> {
        self.discovered.as_ref().map(|d| d.owner_id)
    }

    /// Where the live file's current version's extracted text is kept, if anywhere.
    pub fn text_reference(&self) -> Option<&str> {
        let (facts, _) = self.live_for(self.discovered.as_ref()?.owner_id)?;
        let extracted = self.extracted.as_ref().filter(|e| e.checksum == facts.checksum)?;
        extracted.text.as_ref().map(|t| t.reference.as_str())
    }

    /// Everything kept in the chunk store for the live file's current version: its extracted text
    /// and each model's results (the garbage collector keeps these and lets the rest go).
    pub fn content_references(&self) -> Vec<&str> {
        let Some((facts, _)) = self.discovered.as_ref().and_then(|d| self.live_for(d.owner_id)) else {
            return Vec::new();
        };
        let vectors = self
            .analyses
            .iter()
            .filter(|a| a.checksum == facts.checksum)
            .filter_map(|a| a.vectors.as_ref().map(|v| v.reference.as_str()));
        self.text_reference().into_iter().chain(vectors).collect()
    }

    /// The content kept when the file was deleted, with when it was deleted, while it can be restored.
    pub fn kept(&self) -> Option<(&KeptContent, DateTime<Utc>)> {
        self.kept.as_ref().map(|(content, at)| (content, *at))
    }

    /// Where a move into `folder` would put the file.
    ///
    /// # Errors
    /// When the file is not live for `user`.
    pub fn move_target(&self, user: UserId, folder: &ProviderPath) -> Result<ProviderPath, DomainError> {
        let (_, path) = self.live_for(user).ok_or(DomainError::NotFound("file"))?;
        folder.join(path.name()).map_err(|err| DomainError::Invalid(err.to_string()))
    }
}

impl Aggregate for File {
    type Command = FileCommand;
    type Event = DomainEvent;

    fn handle(&self, command: FileCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match command {
            FileCommand::Discover(discovered) => {
                if self.discovered.is_some() {
                    return Err(DomainError::AlreadyExists("file"));
                }
                if discovered.path.is_root() {
                    return Err(DomainError::Invalid("a file cannot be the provider's root".into()));
                }
                Ok(vec![DomainEvent::FileDiscovered(discovered)])
            }
            FileCommand::Move { by, folder, at } => {
                let to = self.move_target(by, &folder)?;
                self.moved(by, to, at)
            }
            FileCommand::RecordChange {
                by,
                size_bytes,
                modified_at,
                checksum,
                etag,
                job_id,
            } => {
                let (facts, path) = self.live_for(by).ok_or(DomainError::NotFound("file"))?;
                if facts.size_bytes == size_bytes && facts.modified_at == modified_at && facts.checksum == checksum && facts.etag == etag {
                    return Ok(Vec::new());
                }
                Ok(vec![DomainEvent::FileChanged(FileChanged {
                    file_id: facts.file_id,
                    provider_id: facts.provider_id,
                    owner_id: by,
                    path: path.clone(),
                    size_bytes,
                    modified_at,
                    checksum,
                    etag,
                    job_id,
                })])
            }
            FileCommand::RecordMove { by, to, at } => {
                if to.is_root() {
                    return Err(DomainError::Invalid("a file cannot be the provider's root".into()));
                }
                self.moved(by, to, at)
            }
            FileCommand::RecordRemoval { by, job_id } => {
                let (facts, path) = self.live_for(by).ok_or(DomainError::NotFound("file"))?;
                Ok(vec![DomainEvent::FileRemoved(FileRemoved {
                    file_id: facts.file_id,
                    provider_id: facts.provider_id,
                    owner_id: by,
                    path: path.clone(),
                    job_id,
                })])
            }
            FileCommand::RecordExtraction(extracted) => {
                let Some((facts, _)) = self.needs_extraction(&extracted.extractor, extracted.extractor_version) else {
                    return Ok(Vec::new());
                };
                if facts.owner_id != extracted.owner_id {
                    return Err(DomainError::NotFound("file"));
                }
                if facts.checksum != extracted.checksum {
                    // The file changed while it was read: the new version will be read instead.
                    return Ok(Vec::new());
                }
                Ok(vec![DomainEvent::FileContentExtracted(extracted)])
            }
            FileCommand::RecordAnalysis(analyzed) => {
                let Some((facts, _)) = self.needs_analysis(&analyzed.model, analyzed.model_version) else {
                    return Ok(Vec::new());
                };
                if facts.owner_id != analyzed.owner_id {
                    return Err(DomainError::NotFound("file"));
                }
                if facts.checksum != analyzed.checksum || analyzed.name_revision != self.name_revision {
                    // The file changed or was renamed while the model ran: it runs again on the new one.
                    return Ok(Vec::new());
                }
                Ok(vec![DomainEvent::FileAnalyzed(analyzed)])
            }
            FileCommand::Delete { by, at, kept } => {
                let (facts, path) = self.live_for(by).ok_or(DomainError::NotFound("file"))?;
                if let Some(kept) = &kept
                    && (kept.checksum != facts.checksum || kept.size_bytes != facts.size_bytes)
                {
                    return Err(DomainError::InvalidState(format!("{path} changed since it was indexed")));
                }
                Ok(vec![DomainEvent::FileDeleted(FileDeleted {
                    file_id: facts.file_id,
                    provider_id: facts.provider_id,
                    owner_id: by,
                    path: path.clone(),
                    deleted_at: at,
                    kept,
                })])
            }
            FileCommand::RestoreKept { by, at } => {
                let (Some(facts), Some(path), Some(_)) = (&self.discovered, &self.path, &self.kept) else {
                    return Err(DomainError::NotFound("deleted file"));
                };
                if facts.owner_id != by {
                    return Err(DomainError::NotFound("deleted file"));
                }
                Ok(vec![DomainEvent::DeletedFileRestored(DeletedFileRestored {
                    file_id: facts.file_id,
                    provider_id: facts.provider_id,
                    owner_id: by,
                    path: path.clone(),
                    restored_at: at,
                })])
            }
            FileCommand::ReleaseKept { now, days } => match (&self.discovered, &self.kept) {
                (Some(facts), Some((_, deleted_at))) if *deleted_at + chrono::Duration::days(i64::from(days)) < now => {
                    Ok(vec![DomainEvent::KeptContentReleased(KeptContentReleased {
                        file_id: facts.file_id,
                        owner_id: facts.owner_id,
                        released_at: now,
                    })])
                }
                _ => Ok(Vec::new()),
            },
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::FileDiscovered(e) => {
                self.path = Some(e.path.clone());
                self.discovered = Some(e.clone());
            }
            DomainEvent::FileMoved(e) => {
                if e.from.name() != e.to.name() {
                    self.name_revision += 1;
                }
                self.path = Some(e.to.clone());
            }
            DomainEvent::FileChanged(e) => {
                if let Some(facts) = &mut self.discovered {
                    facts.size_bytes = e.size_bytes;
                    facts.modified_at = e.modified_at;
                    facts.checksum.clone_from(&e.checksum);
                    facts.etag.clone_from(&e.etag);
                }
            }
            DomainEvent::FileDeleted(e) => {
                self.deleted = true;
                self.kept = e.kept.clone().map(|kept| (kept, e.deleted_at));
            }
            DomainEvent::FileRemoved(_) => self.deleted = true,
            DomainEvent::DeletedFileRestored(_) | DomainEvent::KeptContentReleased(_) => self.kept = None,
            DomainEvent::FileContentExtracted(e) => self.extracted = Some(e.clone()),
            DomainEvent::FileAnalyzed(e) => {
                self.analyses.retain(|a| a.model != e.model);
                self.analyses.push(e.clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::ids::{FileId, ProviderId};
    use crate::testing::given;

    fn alice() -> UserId {
        UserId::from_uuid(Uuid::from_u128(1))
    }

    fn path(p: &str) -> ProviderPath {
        ProviderPath::parse(p).expect("valid path")
    }

    fn discovered() -> Vec<DomainEvent> {
        given::<File>([])
            .when(FileCommand::Discover(FileDiscovered {
                file_id: FileId::from_uuid(Uuid::from_u128(7)),
                provider_id: ProviderId::from_uuid(Uuid::from_u128(8)),
                owner_id: alice(),
                path: path("inbox/a.txt"),
                size_bytes: 3,
                modified_at: DateTime::UNIX_EPOCH,
                mime_type: "text/plain".into(),
                checksum: "00".into(),
                job_id: None,
                etag: None,
            }))
            .events()
    }

    fn extraction(checksum: &str, version: u32) -> FileContentExtracted {
        FileContentExtracted {
            file_id: FileId::from_uuid(Uuid::from_u128(7)),
            provider_id: ProviderId::from_uuid(Uuid::from_u128(8)),
            owner_id: alice(),
            checksum: checksum.into(),
            extractor: "text".into(),
            extractor_version: version,
            outcome: crate::events::ExtractionOutcome::Extracted,
            reason: None,
            text: None,
            language: None,
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_version_is_read_once_per_extractor_version_and_only_while_it_is_current() {
        let mut history = discovered();
        let file = |h: &[DomainEvent]| {
            let mut f = File::default();
            h.iter().for_each(|e| f.apply(e));
            f
        };
        assert!(file(&history).needs_extraction("text", 1).is_some());
        given::<File>(history.clone())
            .when(FileCommand::RecordExtraction(extraction("old", 1)))
            .then([]);
        let recorded = given::<File>(history.clone())
            .when(FileCommand::RecordExtraction(extraction("00", 1)))
            .events();
        assert_eq!(recorded, [DomainEvent::FileContentExtracted(extraction("00", 1))]);
        history.extend(recorded);
        assert!(file(&history).needs_extraction("text", 1).is_none(), "read once");
        assert!(
            file(&history).needs_extraction("text", 2).is_some(),
            "a new extractor version reads it again"
        );
        given::<File>(history.clone())
            .when(FileCommand::RecordExtraction(extraction("00", 1)))
            .then([]);
        history.extend(
            given::<File>(history.clone())
                .when(FileCommand::RecordChange {
                    by: alice(),
                    size_bytes: 4,
                    modified_at: DateTime::UNIX_EPOCH,
                    checksum: "11".into(),
                    etag: None,
                    job_id: None,
                })
                .events(),
        );
        assert!(file(&history).needs_extraction("text", 1).is_some(), "a changed file is read again");
        assert_eq!(file(&history).text_reference(), None);
    }

    fn analysis(checksum: &str, version: u32, name_revision: u32) -> FileAnalyzed {
        FileAnalyzed {
            file_id: FileId::from_uuid(Uuid::from_u128(7)),
            provider_id: ProviderId::from_uuid(Uuid::from_u128(8)),
            owner_id: alice(),
            checksum: checksum.into(),
            model: "minilm".into(),
            model_version: version,
            name_revision,
            outcome: crate::events::AnalysisOutcome::Analyzed,
            reason: None,
            vectors: None,
            image: None,
            labels: None,
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_model_runs_once_per_version_name_and_model_version() {
        let mut history = discovered();
        let file = |h: &[DomainEvent]| {
            let mut f = File::default();
            h.iter().for_each(|e| f.apply(e));
            f
        };
        assert!(file(&history).needs_analysis("minilm", 1).is_some());
        given::<File>(history.clone())
            .when(FileCommand::RecordAnalysis(analysis("old", 1, 0)))
            .then([]);
        let recorded = given::<File>(history.clone())
            .when(FileCommand::RecordAnalysis(analysis("00", 1, 0)))
            .events();
        assert_eq!(recorded, [DomainEvent::FileAnalyzed(analysis("00", 1, 0))]);
        history.extend(recorded);
        assert!(file(&history).needs_analysis("minilm", 1).is_none(), "run once");
        assert!(file(&history).needs_analysis("other", 1).is_some(), "each model runs on its own");
        assert!(
            file(&history).needs_analysis("minilm", 2).is_some(),
            "a new model version runs again"
        );
        // A move keeping the name changes nothing; a rename makes name-reading models run again.
        let moved = given::<File>(history.clone())
            .when(FileCommand::Move {
                by: alice(),
                folder: path("archive"),
                at: DateTime::UNIX_EPOCH,
            })
            .events();
        history.extend(moved);
        assert!(file(&history).needs_analysis("minilm", 1).is_none());
        history.push(DomainEvent::FileMoved(FileMoved {
            file_id: FileId::from_uuid(Uuid::from_u128(7)),
            provider_id: ProviderId::from_uuid(Uuid::from_u128(8)),
            owner_id: alice(),
            from: path("archive/a.txt"),
            to: path("archive/b.txt"),
            moved_at: DateTime::UNIX_EPOCH,
        }));
        assert_eq!(file(&history).name_revision(), 1);
        assert!(file(&history).needs_analysis("minilm", 1).is_some(), "renamed");
        assert!(
            file(&history).needs_content_analysis("minilm", 1).is_none(),
            "a model that does not read names does not run again"
        );
        assert!(file(&history).analysis("minilm").is_some(), "the old run is still there to reuse");
        given::<File>(history.clone())
            .when(FileCommand::RecordAnalysis(analysis("00", 1, 0)))
            .then([]);
        history.extend(
            given::<File>(history.clone())
                .when(FileCommand::RecordChange {
                    by: alice(),
                    size_bytes: 4,
                    modified_at: DateTime::UNIX_EPOCH,
                    checksum: "11".into(),
                    etag: None,
                    job_id: None,
                })
                .events(),
        );
        assert!(file(&history).analysis("minilm").is_none(), "a changed file's old run is not its");
        assert!(!file(&history).read_for_text());
    }

    #[test]
    fn given_discovered_when_moved_then_path_changes_and_name_is_kept() {
        let events = given::<File>(discovered())
            .when(FileCommand::Move {
                by: alice(),
                folder: path("archive/2024"),
                at: DateTime::UNIX_EPOCH,
            })
            .events();
        let [DomainEvent::FileMoved(moved)] = events.as_slice() else {
            panic!("expected one FileMoved, got {events:?}")
        };
        assert_eq!(moved.from, path("inbox/a.txt"));
        assert_eq!(moved.to, path("archive/2024/a.txt"));
    }

    #[test]
    fn given_discovered_when_moved_to_its_own_folder_then_nothing_happens() {
        given::<File>(discovered())
            .when(FileCommand::Move {
                by: alice(),
                folder: path("inbox"),
                at: DateTime::UNIX_EPOCH,
            })
            .then([]);
    }

    #[test]
    fn given_deleted_when_moved_or_deleted_then_not_found() {
        let mut history = discovered();
        history.extend(
            given::<File>(history.clone())
                .when(FileCommand::Delete {
                    by: alice(),
                    at: DateTime::UNIX_EPOCH,
                    kept: None,
                })
                .events(),
        );
        given::<File>(history.clone())
            .when(FileCommand::Move {
                by: alice(),
                folder: path("x"),
                at: DateTime::UNIX_EPOCH,
            })
            .then_error(DomainError::NotFound("file"));
        given::<File>(history)
            .when(FileCommand::Delete {
                by: alice(),
                at: DateTime::UNIX_EPOCH,
                kept: None,
            })
            .then_error(DomainError::NotFound("file"));
    }

    #[test]
    fn given_deleted_with_kept_content_then_restored_once_or_released_after_its_retention() {
        let history = discovered();
        let DomainEvent::FileDiscovered(facts) = &history[0] else {
            panic!("expected FileDiscovered")
        };
        let kept = KeptContent {
            manifest: "m".into(),
            checksum: facts.checksum.clone(),
            size_bytes: facts.size_bytes,
            modified_at: facts.modified_at,
            reason: "DUPLICATE".into(),
        };
        // Content that is not the file's current version is refused.
        given::<File>(history.clone())
            .when(FileCommand::Delete {
                by: alice(),
                at: DateTime::UNIX_EPOCH,
                kept: Some(KeptContent {
                    checksum: "other".into(),
                    ..kept.clone()
                }),
            })
            .then_error(DomainError::InvalidState("/inbox/a.txt changed since it was indexed".into()));
        let mut deleted = history.clone();
        deleted.extend(
            given::<File>(history)
                .when(FileCommand::Delete {
                    by: alice(),
                    at: DateTime::UNIX_EPOCH,
                    kept: Some(kept.clone()),
                })
                .events(),
        );
        assert_eq!(File::load(&deleted).kept().map(|(k, _)| k.clone()), Some(kept));
        let day = chrono::Duration::days(1);
        given::<File>(deleted.clone())
            .when(FileCommand::ReleaseKept {
                now: DateTime::UNIX_EPOCH + day * 30,
                days: 30,
            })
            .then([]);
        let released = given::<File>(deleted.clone())
            .when(FileCommand::ReleaseKept {
                now: DateTime::UNIX_EPOCH + day * 31,
                days: 30,
            })
            .events();
        assert!(matches!(released.as_slice(), [DomainEvent::KeptContentReleased(_)]));
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        given::<File>(deleted.clone())
            .when(FileCommand::RestoreKept {
                by: mallory,
                at: DateTime::UNIX_EPOCH,
            })
            .then_error(DomainError::NotFound("deleted file"));
        let restored = given::<File>(deleted.clone())
            .when(FileCommand::RestoreKept {
                by: alice(),
                at: DateTime::UNIX_EPOCH,
            })
            .events();
        assert!(matches!(restored.as_slice(), [DomainEvent::DeletedFileRestored(r)] if r.path == path("inbox/a.txt")));
        for after in [restored, released] {
            let mut history = deleted.clone();
            history.extend(after);
            given::<File>(history)
                .when(FileCommand::RestoreKept {
                    by: alice(),
                    at: DateTime::UNIX_EPOCH,
                })
                .then_error(DomainError::NotFound("deleted file"));
        }
    }

    #[test]
    fn given_someone_elses_file_when_touched_then_not_found() {
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        given::<File>(discovered())
            .when(FileCommand::Delete {
                by: mallory,
                at: DateTime::UNIX_EPOCH,
                kept: None,
            })
            .then_error(DomainError::NotFound("file"));
    }

    #[test]
    fn given_discovered_when_discovered_again_then_refused() {
        let history = discovered();
        let DomainEvent::FileDiscovered(again) = &history[0] else {
            panic!("expected FileDiscovered")
        };
        given::<File>(history.clone())
            .when(FileCommand::Discover(again.clone()))
            .then_error(DomainError::AlreadyExists("file"));
    }

    #[test]
    fn given_discovered_when_rescan_sees_the_same_facts_then_nothing_and_new_facts_then_changed() {
        let history = discovered();
        let file = || given::<File>(history.clone());
        let seen = |size_bytes, checksum: &str| FileCommand::RecordChange {
            by: alice(),
            size_bytes,
            modified_at: DateTime::UNIX_EPOCH,
            checksum: checksum.into(),
            etag: None,
            job_id: None,
        };
        file().when(seen(3, "00")).then([]);
        let changed = file().when(seen(4, "01")).events();
        let [DomainEvent::FileChanged(e)] = changed.as_slice() else {
            panic!("expected FileChanged, got {changed:?}")
        };
        assert_eq!((e.size_bytes, e.checksum.as_str(), e.path.as_str()), (4, "01", "inbox/a.txt"));
        // Once applied, the same facts are no change.
        let mut history = history.clone();
        history.extend(changed);
        given::<File>(history).when(seen(4, "01")).then([]);
    }

    #[test]
    fn given_discovered_when_rescan_finds_it_elsewhere_or_gone_then_moved_or_removed() {
        let history = discovered();
        let file = || given::<File>(history.clone());
        let moved = file()
            .when(FileCommand::RecordMove {
                by: alice(),
                to: path("elsewhere/b.txt"),
                at: DateTime::UNIX_EPOCH,
            })
            .events();
        assert!(
            matches!(moved.as_slice(), [DomainEvent::FileMoved(m)] if m.to == path("elsewhere/b.txt") && m.from == path("inbox/a.txt"))
        );
        let removed = file().when(FileCommand::RecordRemoval { by: alice(), job_id: None }).events();
        assert!(matches!(removed.as_slice(), [DomainEvent::FileRemoved(r)] if r.path == path("inbox/a.txt")));
        let mut history = history.clone();
        history.extend(removed);
        assert!(File::load(&history).live_for(alice()).is_none());
        given::<File>(history)
            .when(FileCommand::RecordRemoval { by: alice(), job_id: None })
            .then_error(DomainError::NotFound("file"));
    }
}
