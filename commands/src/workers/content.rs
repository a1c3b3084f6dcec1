//! The content pipeline: reads each new or changed file version once, streaming, and records what it
//! learnt as events. Like the job runner it follows the log from a checkpoint of its own (one per
//! extractor version, so a new version walks every file again), runs a bounded number of reads at a
//! time beside the job runner's slots (so it never starves sync), and moves its checkpoint only past
//! files it has finished. Whether a file still needs reading is decided by the file's own stream
//! ([`File::needs_extraction`]), so a replay after a crash reads nothing twice.
//!
//! Extracted text is the owner's personal data: it is sealed with their data key and kept in the
//! chunk store (under a use lease, so the collector cannot take it before the event names it); the
//! event holds only its reference. Erasing the account makes it unreadable; once the file is
//! deleted, changed or its owner erased, the collector lets it go.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use cloudsync_content::{EXTRACTOR, EXTRACTOR_VERSION, Extraction, Extractor, detect_language, format_of};
use cloudsync_domain::events::{ExtractionOutcome, FileContentExtracted, SealedSecret, TextRef};
use cloudsync_domain::file::{File, FileCommand, content_stream};
use cloudsync_domain::{Aggregate, DomainEvent, FileId, UserId};
use cloudsync_eventstore::{DbPool, on_pool, subscribe};
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::leases::db_error;
use crate::core::Context;
use crate::{CommandError, Commands};

/// How often a read that the provider failed is tried.
const READ_ATTEMPTS: u32 = 4;

/// The pipeline's checkpoint, per extractor version.
fn checkpoint_name() -> String {
    format!("content-{EXTRACTOR}-v{EXTRACTOR_VERSION}")
}

/// Follows the log and reads what needs reading; owned by the server.
pub struct ContentPipeline {
    commands: Commands,
    pool: DbPool,
    extractor: Arc<Extractor>,
    concurrency: usize,
    poll: Duration,
}

impl ContentPipeline {
    pub fn new(commands: Commands, pool: DbPool, extractor: Extractor, concurrency: usize) -> Self {
        Self {
            commands,
            pool,
            extractor: Arc::new(extractor),
            concurrency: concurrency.max(1),
            poll: Duration::from_millis(500),
        }
    }

    /// Follows the log until `shutdown`, then waits for the reads in progress (each is bounded by
    /// the extractor's time limit).
    ///
    /// # Errors
    /// When the checkpoint cannot be read.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CommandError> {
        let name = checkpoint_name();
        let load = "SELECT position FROM worker_checkpoints WHERE name = $1";
        let start: i64 = on_pool!(&self.pool, |p| sqlx::query_scalar(load).bind(&name).fetch_optional(p).await)
            .map_err(db_error)?
            .unwrap_or(0);
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), start, self.poll));
        let mut running: JoinSet<i64> = JoinSet::new();
        let mut in_flight: BTreeSet<i64> = BTreeSet::new();
        let (mut seen, mut saved) = (start, start);
        loop {
            // At most `concurrency` reads at once: the log waits while all are busy.
            let full = running.len() >= self.concurrency;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(position) = done {
                        in_flight.remove(&position);
                    }
                }
                next = events.next(), if !full => match next {
                    Some(Ok(event)) => {
                        seen = event.position;
                        if matches!(event.event_type.as_str(), "FileDiscovered" | "FileChanged") {
                            let file = event.payload.get("file_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<FileId>().ok());
                            if let Some(file) = file {
                                in_flight.insert(event.position);
                                let (commands, extractor, cancel, position) =
                                    (self.commands.clone(), Arc::clone(&self.extractor), shutdown.child_token(), event.position);
                                running.spawn(async move {
                                    if let Err(error) = commands.extract_content(file, &extractor, &cancel).await {
                                        tracing::warn!(file = %file, error = %error, "The file's content could not be read; it stays findable by name.");
                                    }
                                    position
                                });
                            }
                        }
                    }
                    Some(Err(error)) => tracing::warn!(error = %error, "The content pipeline could not read the log; retrying."),
                    None => break,
                },
            }
            let checkpoint = in_flight.first().map_or(seen, |first| first - 1);
            if checkpoint != saved {
                let save = "INSERT INTO worker_checkpoints (name, position) VALUES ($1, $2) \
                            ON CONFLICT (name) DO UPDATE SET position = excluded.position";
                match on_pool!(&self.pool, |p| sqlx::query(save)
                    .bind(&name)
                    .bind(checkpoint)
                    .execute(p)
                    .await
                    .map(drop))
                {
                    Ok(()) => saved = checkpoint,
                    Err(error) => tracing::warn!(error = %error, "The content pipeline could not save its checkpoint."),
                }
            }
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }
}

impl Commands {
    /// Reads the current version of a file once, if the extractor has not read it yet, and records
    /// what it found. Formats the extractor does not read are not read at all.
    ///
    /// # Errors
    /// The provider, the chunk store or the log failed (the next start tries again).
    pub async fn extract_content(&self, file_id: FileId, extractor: &Extractor, cancel: &CancellationToken) -> Result<(), CommandError> {
        let (file, version) = self.file_with_content(file_id).await?;
        let Some((facts, path)) = file.needs_extraction(EXTRACTOR, EXTRACTOR_VERSION) else {
            return Ok(());
        };
        let Some(format) = format_of(path.name(), &facts.mime_type) else {
            return Ok(());
        };
        let (owner, facts, path) = (facts.owner_id, facts.clone(), path.clone());
        let provider = self.provider(owner, facts.provider_id).await?;
        let read_to = facts.size_bytes.min(extractor.limits.max_input_bytes);
        // A provider that fails to serve the file (a network error) is not the file's fault: the
        // read is tried again a few times, and otherwise nothing is recorded.
        let mut attempt = 0;
        let extraction = loop {
            attempt += 1;
            let broken = Arc::new(AtomicBool::new(false));
            let outcome = match provider.read(&path, 0..read_to).await {
                Ok(stream) => {
                    let flag = Arc::clone(&broken);
                    let stream = stream.map_err(move |err| {
                        flag.store(true, Ordering::SeqCst);
                        std::io::Error::other(err)
                    });
                    let extraction = extractor
                        .run(format, facts.size_bytes, tokio_util::io::StreamReader::new(stream))
                        .await;
                    (!broken.load(Ordering::SeqCst)).then_some(extraction)
                }
                Err(cloudsync_providers::ProviderError::NotFound(_)) => return Ok(()),
                Err(_) => None,
            };
            match outcome {
                Some(extraction) => break extraction,
                None if attempt < READ_ATTEMPTS => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
                None => return Err(CommandError::Storage(format!("{path} could not be read from its provider"))),
            }
        };
        let mut event = FileContentExtracted {
            file_id,
            provider_id: facts.provider_id,
            owner_id: owner,
            checksum: facts.checksum.clone(),
            extractor: EXTRACTOR.to_owned(),
            extractor_version: EXTRACTOR_VERSION,
            outcome: ExtractionOutcome::Extracted,
            reason: None,
            text: None,
            language: None,
            at: Utc::now(),
        };
        let mut lease = None;
        match extraction {
            Extraction::Text { text, truncated } => {
                event.language = detect_language(&text);
                if truncated {
                    event.reason = Some(format!("the text was cut at {} bytes", extractor.limits.max_text_bytes));
                }
                if !text.trim().is_empty() {
                    let Some(held) = self
                        .chunk_lease(format!("content-{file_id}-{}", Uuid::now_v7().simple()), cancel)
                        .await?
                    else {
                        return Ok(());
                    };
                    lease = Some(held);
                    event.text = Some(TextRef {
                        reference: self.store_text(owner, &text).await?,
                        bytes: text.len() as u64,
                        truncated,
                    });
                }
            }
            Extraction::Unsupported => event.outcome = ExtractionOutcome::Unsupported,
            Extraction::Failed { reason } => {
                tracing::info!(file = %file_id, reason = %reason, "A file's text could not be extracted; it stays findable by name.");
                event.outcome = ExtractionOutcome::Failed;
                event.reason = Some(reason);
            }
        }
        let events = file.handle(FileCommand::RecordExtraction(event))?;
        let result = if events.is_empty() {
            Ok(())
        } else {
            match self
                .append(content_stream(file_id), version, &events, &Context::new(Some(owner)))
                .await
            {
                Ok(_) => Ok(()),
                // Another reader recorded this version first.
                Err(CommandError::Conflict(_)) => Ok(()),
                Err(err) => Err(err),
            }
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
        result
    }

    /// A file with what the pipeline learnt about it, and the version of its content stream.
    ///
    /// # Errors
    /// The log cannot be read or decoded.
    pub(crate) async fn file_with_content(&self, file_id: FileId) -> Result<(File, i64), CommandError> {
        let (mut file, _) = self.load::<File>(&file_id.stream()).await?;
        let recorded = self.store().read_stream(&content_stream(file_id)).await?;
        let version = recorded.last().map_or(0, |e| e.stream_version);
        for event in &recorded {
            file.apply(&DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)?);
        }
        Ok((file, version))
    }

    /// Seals `text` with `owner`'s data key and keeps it in the chunk store; returns its reference.
    async fn store_text(&self, owner: UserId, text: &str) -> Result<String, CommandError> {
        let chunks = self
            .chunks()
            .cloned()
            .ok_or_else(|| CommandError::Invalid("no chunk store is configured".into()))?;
        let sealed = self.vault.seal(owner, text.as_bytes()).await?;
        let bytes = serde_json::to_vec(&sealed).map_err(|err| CommandError::Storage(err.to_string()))?;
        cloudsync_chunks::put_content(&*chunks, &bytes)
            .await
            .map_err(|err| CommandError::Storage(format!("the chunk store: {err}")))
    }

    /// The extracted text kept under `reference` for `owner`; `None` once the account is erased
    /// (its key is gone) or the text was collected.
    ///
    /// # Errors
    /// A text that is there but cannot be opened (tampered), or an unreachable store.
    pub async fn extracted_text(&self, owner: UserId, reference: &str) -> Result<Option<String>, CommandError> {
        let chunks = self
            .chunks()
            .cloned()
            .ok_or_else(|| CommandError::Invalid("no chunk store is configured".into()))?;
        let Ok(bytes) = cloudsync_chunks::get_content(&*chunks, reference).await else {
            return Ok(None);
        };
        let sealed: SealedSecret =
            serde_json::from_slice(&bytes).map_err(|err| CommandError::Storage(format!("a kept text is malformed: {err}")))?;
        Ok(self
            .vault
            .open_if_kept(owner, &sealed)
            .await?
            .map(|plain| String::from_utf8_lossy(&plain).into_owned()))
    }
}
