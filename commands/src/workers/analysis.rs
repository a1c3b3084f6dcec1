//! The content pipeline's models, run after a file version's text is known, from what that one read
//! left (the extracted text in the chunk store), never by reading the file again. The text model
//! embeds the file's name and the passages of its text; a rename embeds only the new name and keeps
//! the passages' vectors of the same version. Results are sealed with the owner's key in the chunk
//! store and named by `FileAnalyzed` in the file's content stream, so a rebuild never runs a model.

use chrono::Utc;
use cloudsync_content::format_of;
use cloudsync_domain::events::{AnalysisOutcome, FileAnalyzed, SealedSecret, VectorsRef};
use cloudsync_domain::file::{File, FileCommand};
use cloudsync_domain::{FileId, UserId};
use cloudsync_ml::{Models, TextEmbedder, codec, name_words, passages};
use tokio_util::sync::CancellationToken;

use crate::{CommandError, Commands};

/// The models' part of the pipeline's checkpoint name: a new model (or version) walks every file.
pub(crate) fn models_tag(models: &Models) -> String {
    let mut tag = String::new();
    if models.text().is_some() {
        tag.push_str(&format!("+{}-v{}", TextEmbedder::MODEL, TextEmbedder::VERSION));
    }
    if let Some(labeler) = models.labels() {
        tag.push_str(&format!("+{}-v{}", labeler.model(), cloudsync_ml::LABELS_VERSION));
    }
    tag
}

fn storage(err: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(format!("the chunk store: {err}"))
}

impl Commands {
    /// Runs the text model over the current version and name of a file if it has not run over
    /// them, and records what it made. A file whose text is still to be read waits for it.
    ///
    /// # Errors
    /// The log or the chunk store failed (a model's failure is recorded, not returned).
    pub(crate) async fn analyze(&self, file_id: FileId, models: &Models, cancel: &CancellationToken) -> Result<(), CommandError> {
        if models.text().is_none() {
            return Ok(());
        }
        let (file, version) = self.file_with_content(file_id).await?;
        let Some((facts, path)) = file.needs_analysis(TextEmbedder::MODEL, TextEmbedder::VERSION) else {
            return Ok(());
        };
        // A file the extractor reads waits for its text: that reading's event brings it back here.
        if format_of(path.name(), &facts.mime_type).is_some() && !file.read_for_text() {
            return Ok(());
        }
        let (owner, facts, name) = (facts.owner_id, facts.clone(), name_words(path.name()));
        // Only the name changed: the passages' vectors of this version are kept.
        let earlier = match file
            .analysis(TextEmbedder::MODEL)
            .filter(|a| a.model_version == TextEmbedder::VERSION && a.outcome == AnalysisOutcome::Analyzed)
            .and_then(|a| a.vectors.as_ref())
        {
            Some(kept) => self.stored_vectors(owner, &kept.reference).await?,
            None => None,
        };
        let mut event = FileAnalyzed::of(
            &facts,
            &facts.checksum,
            TextEmbedder::MODEL,
            TextEmbedder::VERSION,
            file.name_revision(),
            Utc::now(),
        );
        let embedded = match earlier {
            Some(mut vectors) if !vectors.is_empty() => models.embed(vec![name]).await.map(|mut named| {
                vectors[0] = named.swap_remove(0);
                vectors
            }),
            _ => {
                let text = match file.text_reference() {
                    Some(reference) => self.extracted_text(owner, reference).await?,
                    None => None,
                };
                let mut texts = vec![name];
                texts.extend(passages(text.as_deref().unwrap_or_default()).into_iter().map(|p| p.text));
                models.embed(texts).await
            }
        };
        let mut lease = None;
        match embedded {
            Ok(vectors) => {
                let Some(held) = self.content_lease(file_id, cancel).await? else {
                    return Ok(());
                };
                lease = Some(held);
                event.vectors = Some(VectorsRef {
                    reference: self.store_vectors(owner, &vectors).await?,
                    count: u32::try_from(vectors.len()).unwrap_or(u32::MAX),
                    dims: u32::try_from(TextEmbedder::DIMS).unwrap_or(u32::MAX),
                });
            }
            Err(error) => {
                tracing::warn!(file = %file_id, error = %error, "The text model failed on a file; it stays findable by words.");
                event.outcome = AnalysisOutcome::Failed;
                event.reason = Some(error.to_string());
            }
        }
        let recorded = self.record_analysis(&file, version, event).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        recorded
    }

    /// Appends a model's result to the file's content stream (at `version`, the stream's version
    /// `file` was loaded at), if the file still wants it.
    pub(crate) async fn record_analysis(&self, file: &File, version: i64, event: FileAnalyzed) -> Result<(), CommandError> {
        self.record_content(file, version, FileCommand::RecordAnalysis(event)).await
    }

    /// Seals `vectors` with `owner`'s data key and keeps them in the chunk store; returns their
    /// reference.
    async fn store_vectors(&self, owner: UserId, vectors: &[Vec<f32>]) -> Result<String, CommandError> {
        self.store_sealed(owner, &codec::encode(TextEmbedder::DIMS, vectors)).await
    }

    /// The vectors kept under `reference` for `owner`; `None` once the account is erased or they
    /// were collected (a store that does not answer is an error, not `None`).
    ///
    /// # Errors
    /// Vectors that are there but cannot be opened or decoded (tampered), or an unreachable store.
    pub async fn stored_vectors(&self, owner: UserId, reference: &str) -> Result<Option<Vec<Vec<f32>>>, CommandError> {
        let Some(chunks) = self.chunks_to_open(owner).await? else {
            // The account was erased: nothing to read.
            return Ok(None);
        };
        let bytes = match cloudsync_chunks::get_content(&chunks, reference).await {
            Ok(bytes) => bytes,
            // Collected (its file or account is gone): nothing to read.
            Err(cloudsync_chunks::StoreError::Missing(_)) => return Ok(None),
            // Unreachable or damaged: the caller tries again rather than forgetting the vectors.
            Err(err) => return Err(storage(err)),
        };
        let sealed: SealedSecret = serde_json::from_slice(&bytes).map_err(storage)?;
        let Some(plain) = self.vault.open_if_kept(owner, &sealed).await? else {
            return Ok(None);
        };
        codec::decode(&plain).map(Some).map_err(storage)
    }
}
