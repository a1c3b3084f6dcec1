//! File commands: moving and deleting indexed files on their provider, then recording it.

use std::collections::HashSet;

use chrono::Utc;
use cloudsync_domain::file::{File, FileCommand};
use cloudsync_domain::{Aggregate, FileId, ProviderPath, UserId};

use crate::core::{Context, storage_error};
use crate::{CommandError, Commands};

/// One file that `move_files` moved.
#[derive(Debug, Clone)]
pub struct Moved {
    pub file_id: FileId,
    pub to: ProviderPath,
}

impl Commands {
    /// Loads every file and checks that each is `user`'s and live; nothing changes when one is not.
    async fn live_files(&self, user: UserId, ids: &[FileId]) -> Result<Vec<(FileId, File, i64)>, CommandError> {
        if ids.is_empty() {
            return Err(CommandError::Invalid("no file ids given".into()));
        }
        if ids.len() > 1000 {
            return Err(CommandError::Invalid("at most 1000 files per request".into()));
        }
        let mut seen = HashSet::new();
        let mut files = Vec::new();
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            let (file, version) = self.load::<File>(&id.stream()).await?;
            if file.live_for(user).is_none() {
                return Err(CommandError::NotFound("file"));
            }
            files.push((id, file, version));
        }
        Ok(files)
    }

    /// Moves files into `folder` (relative to each file's provider root), keeping their names: the real
    /// file moves first, then `FileMoved` is recorded. Every id is checked before anything changes.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] when any id is unknown or not the caller's; conflicts when a
    /// destination is taken (files moved before it stay moved and recorded).
    pub async fn move_files(&self, user: UserId, ids: &[FileId], folder: &ProviderPath) -> Result<(Vec<Moved>, i64), CommandError> {
        let files = self.live_files(user, ids).await?;
        let mut plans = Vec::new();
        for (id, file, version) in files {
            let (facts, from) = file.live_for(user).ok_or(CommandError::NotFound("file"))?;
            let to = file.move_target(user, folder)?;
            let provider = self.provider(user, facts.provider_id).await.map_err(file_not_found)?;
            plans.push((id, file.clone(), version, from.clone(), to, provider));
        }
        let ctx = Context::new(Some(user));
        let mut moved = Vec::new();
        let mut position = self.store.head().await?;
        for (id, file, version, from, to, provider) in plans {
            let events = file.handle(FileCommand::Move {
                by: user,
                folder: folder.clone(),
                at: Utc::now(),
            })?;
            if events.is_empty() {
                moved.push(Moved { file_id: id, to });
                continue;
            }
            provider.rename(&from, &to).await.map_err(storage_error)?;
            match self.append(id.stream(), version, &events, &ctx).await {
                Ok(p) => position = p,
                Err(err) => {
                    // Put the file back so the provider and the log agree.
                    if let Err(undo) = provider.rename(&to, &from).await {
                        tracing::error!(file = %id, error = %undo, "Could not undo a move whose event was refused.");
                    }
                    return Err(err);
                }
            }
            moved.push(Moved { file_id: id, to });
        }
        Ok((moved, position))
    }

    /// Deletes files from their providers and records `FileDeleted`. Every id is checked first.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] when any id is unknown or not the caller's.
    pub async fn delete_files(&self, user: UserId, ids: &[FileId]) -> Result<(Vec<FileId>, i64), CommandError> {
        let files = self.live_files(user, ids).await?;
        let mut plans = Vec::new();
        for (id, file, version) in files {
            let (facts, path) = file.live_for(user).ok_or(CommandError::NotFound("file"))?;
            let provider = self.provider(user, facts.provider_id).await.map_err(file_not_found)?;
            plans.push((id, file.clone(), version, path.clone(), provider));
        }
        let ctx = Context::new(Some(user));
        let mut deleted = Vec::new();
        let mut position = self.store.head().await?;
        for (id, file, version, path, provider) in plans {
            let events = file.handle(FileCommand::Delete {
                by: user,
                at: Utc::now(),
                kept: None,
            })?;
            provider.delete(&path).await.map_err(storage_error)?;
            position = self.append(id.stream(), version, &events, &ctx).await?;
            deleted.push(id);
        }
        Ok((deleted, position))
    }
}

/// A file's provider that is gone or unusable makes the file unreachable, as if unknown.
fn file_not_found(error: CommandError) -> CommandError {
    match error {
        CommandError::NotFound(_) => CommandError::NotFound("file"),
        other => other,
    }
}
