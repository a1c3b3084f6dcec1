//! The content pipeline: reads each new or changed file version once, streaming, and records what it
//! learnt as events. Like the job runner it follows the log from a checkpoint of its own (one per
//! extractor version, so a new version walks every file again), runs a bounded number of reads at a
//! time beside the job runner's slots (so it never starves sync), and moves its checkpoint only past
//! files it has finished. A file its provider would not serve (after a few quick tries) waits in
//! `content_retries` and is read again with a growing delay, across restarts; past [`Retries::limit`]
//! its reading is recorded as failed, with the reason. Whether a file still needs reading is decided by the file's own stream
//! ([`File::needs_extraction`]), so a replay after a crash reads nothing twice. After each read the
//! configured models run over what it left (`analysis.rs`); the checkpoint names their versions
//! too, so a new model walks every file and runs only itself.
//!
//! Extracted text is the owner's personal data: it is sealed with their data key and kept in the
//! chunk store (under a use lease, so the collector cannot take it before the event names it); the
//! event holds only its reference. Erasing the account makes it unreadable; once the file is
//! deleted, changed or its owner erased, the collector lets it go.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use cloudsync_content::image::{ImageReading, READER, READER_VERSION};
use cloudsync_content::{EXTRACTOR, EXTRACTOR_VERSION, Extraction, Extractor, Format, detect_language, format_of};
use cloudsync_domain::events::{
    AnalysisOutcome, ExtractionOutcome, FileAnalyzed, FileContentExtracted, ImageFacts, ImageLabel, SealedSecret, TextRef,
};
use cloudsync_domain::file::{File, FileCommand, content_stream};
use cloudsync_domain::{Aggregate, DomainEvent, FileId, UserId};
use cloudsync_eventstore::{DbPool, on_pool, subscribe};
use cloudsync_ml::{LABELS_VERSION, Models};
use cloudsync_providers::ProviderError;
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::leases::db_error;
use crate::core::Context;
use crate::{CommandError, Commands};

/// How often a read that the provider failed is tried.
const READ_ATTEMPTS: u32 = 4;
/// Labels kept of a picture at most, and the least probability one needs.
const TOP_LABELS: usize = 5;
const MIN_LABEL_SCORE: f32 = 0.1;

/// How often a result is appended again after another writer of the content stream came first.
const RECORD_TRIES: u32 = 5;

/// The pipeline's checkpoint, per extractor version and set of models.
fn checkpoint_name(models: &Models, extractor: &Extractor) -> String {
    format!(
        "content-{EXTRACTOR}-v{EXTRACTOR_VERSION}{}+{READER}-v{READER_VERSION}{}",
        if extractor.ocr.is_some() { "+ocr" } else { "" },
        super::analysis::models_tag(models)
    )
}

/// Follows the log and reads what needs reading; owned by the server.
#[derive(Clone)]
pub struct ContentPipeline {
    commands: Commands,
    pool: DbPool,
    extractor: Arc<Extractor>,
    models: Models,
    concurrency: usize,
    poll: Duration,
    retries: Retries,
}

/// When a file its provider would not serve is read again: after `first`, then twice as long each
/// time (at most six hours), `limit` times; then its reading is recorded as failed, with the reason.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    pub first: Duration,
    pub limit: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(60),
            limit: 8,
        }
    }
}

impl Retries {
    fn after(&self, attempts: u32) -> Duration {
        self.first
            .saturating_mul(1 << attempts.saturating_sub(1).min(20))
            .min(Duration::from_secs(6 * 3600))
    }
}

/// Why a file's reading did not end in a recorded result.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The provider would not serve the file (after a few quick tries): this counts towards
    /// [`Retries::limit`]. The reason names the kind of failure only, never the path.
    Unserved(String),
    /// Something of ours failed (the log, the chunk store): tried again, not counted.
    Ours(CommandError),
}

impl From<CommandError> for ReadError {
    fn from(error: CommandError) -> Self {
        Self::Ours(error)
    }
}

/// What a read that ended was: one the log asked for (at this position), or a retry.
enum Done {
    Log(i64, FileId, Result<(), ReadError>),
    Retry(FileId, Result<(), ReadError>),
}

impl ContentPipeline {
    pub fn new(commands: Commands, pool: DbPool, extractor: Extractor, concurrency: usize) -> Self {
        Self {
            commands,
            pool,
            extractor: Arc::new(extractor),
            models: Models::none(),
            concurrency: concurrency.max(1),
            poll: Duration::from_millis(500),
            retries: Retries::default(),
        }
    }

    /// Runs these models too, over what each read leaves.
    #[must_use]
    pub fn with_models(mut self, models: Models) -> Self {
        self.models = models;
        self
    }

    #[must_use]
    pub fn with_retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    fn read(&self, running: &mut JoinSet<Done>, file: FileId, position: Option<i64>, shutdown: &CancellationToken) {
        let (commands, extractor, cancel) = (self.commands.clone(), Arc::clone(&self.extractor), shutdown.child_token());
        let models = self.models.clone();
        running.spawn(async move {
            let result = match commands.extract_content(file, &extractor, &models, &cancel).await {
                Ok(()) => commands.analyze(file, &models, &cancel).await.map_err(ReadError::from),
                Err(error) => Err(error),
            };
            match position {
                Some(position) => Done::Log(position, file, result),
                None => Done::Retry(file, result),
            }
        });
    }

    /// Files whose retry is due, at most `limit`.
    async fn due(&self, limit: usize) -> Result<Vec<FileId>, CommandError> {
        let query = "SELECT file_id FROM content_retries WHERE due_at <= $1 ORDER BY due_at LIMIT $2";
        let now = Utc::now().timestamp();
        let rows: Vec<String> = on_pool!(&self.pool, |p| sqlx::query_scalar(query)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(rows.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// A read that failed: it is tried again later, or, once the provider has refused it past the
    /// limit, recorded as failed. `fresh`: the log asked for this read (a new version, or the first
    /// time), so earlier refusals do not count.
    async fn failed(&self, file: FileId, error: &ReadError, fresh: bool) -> Result<(), CommandError> {
        let id = file.to_string();
        let load = "SELECT attempts FROM content_retries WHERE file_id = $1";
        let before: Option<i64> = on_pool!(&self.pool, |p| sqlx::query_scalar(load).bind(&id).fetch_optional(p).await).map_err(db_error)?;
        let before = if fresh {
            0
        } else {
            u32::try_from(before.unwrap_or(0)).unwrap_or(u32::MAX)
        };
        let (attempts, reason) = match error {
            ReadError::Unserved(reason) => (before.saturating_add(1), reason.clone()),
            ReadError::Ours(error) => (before, error.to_string()),
        };
        if matches!(error, ReadError::Unserved(_)) && attempts > self.retries.limit {
            tracing::warn!(file = %file, attempts, reason, "The file could not be read from its provider; its reading is recorded as failed.");
            match self
                .commands
                .record_unreadable(
                    file,
                    &self.extractor,
                    format!("its provider did not serve it in {attempts} rounds of reads ({reason})"),
                )
                .await
            {
                Ok(()) => return self.succeeded(file).await,
                // Tried again later, like any failure of ours.
                Err(error) => tracing::warn!(file = %file, error = %error, "The failed reading could not be recorded."),
            }
        } else {
            tracing::warn!(file = %file, attempts, reason, "The file could not be read; it is read again later and stays findable by name.");
        }
        let due = Utc::now().timestamp() + i64::try_from(self.retries.after(attempts.max(1)).as_secs()).unwrap_or(i64::MAX / 2);
        let save = "INSERT INTO content_retries (file_id, attempts, due_at, reason) VALUES ($1, $2, $3, $4) \
                    ON CONFLICT (file_id) DO UPDATE SET attempts = excluded.attempts, due_at = excluded.due_at, reason = excluded.reason";
        on_pool!(&self.pool, |p| sqlx::query(save)
            .bind(&id)
            .bind(i64::from(attempts))
            .bind(due)
            .bind(&reason)
            .execute(p)
            .await
            .map(drop))
        .map_err(db_error)
    }

    async fn succeeded(&self, file: FileId) -> Result<(), CommandError> {
        let forget = "DELETE FROM content_retries WHERE file_id = $1";
        on_pool!(&self.pool, |p| sqlx::query(forget)
            .bind(file.to_string())
            .execute(p)
            .await
            .map(drop))
        .map_err(db_error)
    }

    /// Follows the log until `shutdown`, then waits for the reads in progress (each is bounded by
    /// the extractor's time limit).
    ///
    /// # Errors
    /// When the checkpoint cannot be read.
    /// Runs the pipeline while this process holds the lease `content` (one process at a time reads
    /// files), standing by while another does, until `shutdown`.
    pub async fn lead(self, shutdown: CancellationToken) {
        let pool = self.pool.clone();
        super::leases::lead(pool, "content", shutdown, move |lead| {
            let pipeline = self.clone();
            Box::pin(async move {
                if let Err(error) = pipeline.run(lead.clone()).await {
                    tracing::error!(error = %error, "The content pipeline stopped; it starts again.");
                    tokio::select! {
                        () = lead.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            })
        })
        .await;
    }

    /// Runs the pipeline in this process until `shutdown` (see [`ContentPipeline::lead`]).
    ///
    /// # Errors
    /// The database failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CommandError> {
        let name = checkpoint_name(&self.models, &self.extractor);
        let load = "SELECT position FROM worker_checkpoints WHERE name = $1";
        let start: i64 = on_pool!(&self.pool, |p| sqlx::query_scalar(load).bind(&name).fetch_optional(p).await)
            .map_err(db_error)?
            .unwrap_or(0);
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), start, self.poll));
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut in_flight: BTreeSet<i64> = BTreeSet::new();
        // Files being read now (from the log or as a retry): a retry waits while one is.
        let mut reading: HashSet<FileId> = HashSet::new();
        let mut retry_check = tokio::time::interval(self.retries.first.clamp(Duration::from_millis(100), Duration::from_secs(30)));
        let (mut seen, mut saved) = (start, start);
        loop {
            // At most `concurrency` reads at once: the log waits while all are busy.
            let full = running.len() >= self.concurrency;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    let outcome = match done {
                        Ok(Done::Log(position, file, result)) => {
                            reading.remove(&file);
                            let kept = match &result {
                                Ok(()) => Ok(()),
                                Err(error) => self.failed(file, error, true).await,
                            };
                            // Until its failure is kept for a retry, the file holds the checkpoint
                            // back: a restart reads it again from the log.
                            if kept.is_ok() {
                                in_flight.remove(&position);
                            }
                            kept
                        }
                        Ok(Done::Retry(file, result)) => {
                            reading.remove(&file);
                            match result {
                                Ok(()) => self.succeeded(file).await,
                                Err(error) => self.failed(file, &error, false).await,
                            }
                        }
                        Err(error) => Err(CommandError::Storage(format!("a read stopped: {error}"))),
                    };
                    if let Err(error) = outcome {
                        tracing::warn!(error = %error, "The content pipeline could not keep track of a failed read.");
                    }
                }
                _ = retry_check.tick(), if !full => match self.due(self.concurrency - running.len()).await {
                    Ok(files) => {
                        for file in files {
                            if reading.insert(file) {
                                self.read(&mut running, file, None, &shutdown);
                            }
                        }
                    }
                    Err(error) => tracing::warn!(error = %error, "The content pipeline could not read its retries."),
                },
                next = events.next(), if !full => match next {
                    Some(Ok(event)) => {
                        seen = event.position;
                        if matches!(event.event_type.as_str(), "FileDiscovered" | "FileChanged" | "FileMoved") {
                            let file = event.payload.get("file_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<FileId>().ok());
                            if let Some(file) = file {
                                in_flight.insert(event.position);
                                reading.insert(file);
                                self.read(&mut running, file, Some(event.position), &shutdown);
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
    /// The provider would not serve the file, or the chunk store or the log failed.
    pub(crate) async fn extract_content(
        &self,
        file_id: FileId,
        extractor: &Extractor,
        models: &Models,
        cancel: &CancellationToken,
    ) -> Result<(), ReadError> {
        let (file, version) = self.file_with_content(file_id).await?;
        // A picture is read again for a new version of the image reader even when its text (none
        // yet) was read: one read serves both.
        let Some(format) = file
            .owner()
            .and_then(|owner| file.live_for(owner))
            .and_then(|(facts, path)| format_of(path.name(), &facts.mime_type))
        else {
            return Ok(());
        };
        let extractor_version = extractor.version_for(format);
        // A picture is read again for a new version of the image reader or of the classifier even
        // when its text was read: one read serves all three.
        let wanted = file.needs_extraction(EXTRACTOR, extractor_version).or_else(|| {
            file.needs_content_analysis(READER, READER_VERSION)
                .or_else(|| {
                    models
                        .labels()
                        .and_then(|labeler| file.needs_content_analysis(labeler.model(), LABELS_VERSION))
                })
                .filter(|_| format == Format::Image)
        });
        let Some((facts, path)) = wanted else {
            return Ok(());
        };
        let (owner, facts, path) = (facts.owner_id, facts.clone(), path.clone());
        let provider = self.provider(owner, facts.provider_id).await?;
        let read_to = facts.size_bytes.min(extractor.limits.max_input_bytes);
        // A provider that fails to serve the file (a network error) is not the file's fault: the
        // read is tried again a few times, and otherwise nothing is recorded.
        let mut attempt = 0;
        let mut last_error = String::from("the read broke off");
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
                Err(ProviderError::NotFound(_)) => return Ok(()),
                Err(error) => {
                    // The kind only: a provider's message may name the path.
                    last_error = match error {
                        ProviderError::PermissionDenied(_) => "permission denied",
                        ProviderError::Temporary(_) => "temporarily unavailable",
                        ProviderError::Invalid(_) | ProviderError::Unsupported(_) => "refused the read",
                        _ => "storage error",
                    }
                    .to_owned();
                    None
                }
            };
            match outcome {
                Some(extraction) => break extraction,
                None if attempt < READ_ATTEMPTS => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
                None => return Err(ReadError::Unserved(last_error)),
            }
        };
        let mut event = reading(file_id, &facts, extractor_version);
        let mut lease = None;
        let mut picture = None;
        let mut square = None;
        // Recognised text (OCR) is a picture's text, found and highlighted as any other.
        let text = match extraction {
            Extraction::Text { text, truncated } => Some((text, truncated)),
            Extraction::Image(mut reading) => {
                square = reading.square.take();
                let text = reading.text.take().filter(|text| !text.trim().is_empty());
                if text.is_none() {
                    event.outcome = ExtractionOutcome::Unsupported;
                }
                picture = Some(Ok(reading));
                text.map(|text| (text, false))
            }
            Extraction::Unsupported => {
                event.outcome = ExtractionOutcome::Unsupported;
                None
            }
            Extraction::Failed { reason } => {
                tracing::info!(file = %file_id, reason = %reason, "A file's text could not be extracted; it stays findable by name.");
                event.outcome = ExtractionOutcome::Failed;
                event.reason = Some(reason.clone());
                if format == Format::Image {
                    picture = Some(Err(reason));
                }
                None
            }
        };
        if let Some((text, truncated)) = text {
            event.language = detect_language(&text);
            if truncated {
                event.reason = Some(if extractor.ocr.is_some() && format.recognised() {
                    format!(
                        "the text was cut at {} bytes or at OCR's page or time limit",
                        extractor.limits.max_text_bytes
                    )
                } else {
                    format!("the text was cut at {} bytes", extractor.limits.max_text_bytes)
                });
            }
            if !text.trim().is_empty() {
                let Some(held) = self.content_lease(file_id, cancel).await? else {
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
        let result = self.record_reading(&file, version, event).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        result?;
        if let Some(picture) = picture {
            self.record_picture(file_id, &facts.checksum, picture).await?;
            self.record_labels(file_id, &facts.checksum, square, models).await?;
        }
        Ok(())
    }

    /// Records what the image classifier sees in the current version of a picture (its
    /// [`TOP_LABELS`] likeliest classes of at least [`MIN_LABEL_SCORE`]), from the square the
    /// extractor cut out of it; or why it could not.
    async fn record_labels(&self, file_id: FileId, checksum: &str, square: Option<String>, models: &Models) -> Result<(), CommandError> {
        let Some(model) = models.labels().map(|labeler| labeler.model()) else {
            return Ok(());
        };
        let (file, version) = self.file_with_content(file_id).await?;
        let Some((facts, _)) = file.needs_content_analysis(model, LABELS_VERSION) else {
            return Ok(());
        };
        let mut event = FileAnalyzed::of(facts, checksum, model, LABELS_VERSION, file.name_revision(), Utc::now());
        let side = cloudsync_content::image::SQUARE_SIDE;
        let pixels = square
            .and_then(|square| base64::engine::general_purpose::STANDARD.decode(square).ok())
            .filter(|rgb| rgb.len() == (side * side * 3) as usize);
        let labelled = match pixels {
            Some(rgb) => models.label(rgb, side, side, TOP_LABELS).await.map_err(|err| err.to_string()),
            None => Err("the picture could not be read".to_owned()),
        };
        match labelled {
            Ok(labels) => {
                // ImageNet names a few classes alike (two kinds of missile): one label each.
                let mut kept: Vec<ImageLabel> = Vec::new();
                for label in labels.into_iter().filter(|l| l.score >= MIN_LABEL_SCORE) {
                    match kept.iter_mut().find(|k| k.label == label.name) {
                        Some(same) => same.score += label.score,
                        None => kept.push(ImageLabel {
                            label: label.name,
                            score: label.score,
                        }),
                    }
                }
                event.labels = Some(kept);
            }
            Err(reason) => {
                event.outcome = AnalysisOutcome::Failed;
                event.reason = Some(reason);
            }
        }
        self.record_analysis(&file, version, event).await
    }

    /// Records what the image reader learnt of the current version of a picture (or why it could
    /// not), its position sealed with the owner's key.
    async fn record_picture(&self, file_id: FileId, checksum: &str, picture: Result<ImageReading, String>) -> Result<(), CommandError> {
        let (file, version) = self.file_with_content(file_id).await?;
        let Some((facts, _)) = file.needs_content_analysis(READER, READER_VERSION) else {
            return Ok(());
        };
        let owner = facts.owner_id;
        let mut event = FileAnalyzed::of(facts, checksum, READER, READER_VERSION, file.name_revision(), Utc::now());
        match picture {
            Ok(reading) => {
                let gps = match reading.gps {
                    Some(position) => {
                        let json = serde_json::to_vec(&position).map_err(|err| CommandError::Storage(err.to_string()))?;
                        Some(self.vault.seal(owner, &json).await?)
                    }
                    None => None,
                };
                event.image = Some(ImageFacts {
                    width: reading.width,
                    height: reading.height,
                    phash: reading.phash,
                    taken_at: reading.taken_at,
                    camera: reading.camera,
                    gps,
                });
            }
            Err(reason) => {
                event.outcome = AnalysisOutcome::Failed;
                event.reason = Some(reason);
            }
        }
        self.record_analysis(&file, version, event).await
    }

    /// Records that the current version of a file could not be read from its provider, with the
    /// reason (it is read again only when it changes or the extractor's version does).
    ///
    /// # Errors
    /// The log could not be read or written.
    pub async fn record_unreadable(&self, file_id: FileId, extractor: &Extractor, reason: String) -> Result<(), CommandError> {
        let (file, version) = self.file_with_content(file_id).await?;
        let extractor_version = file
            .owner()
            .and_then(|owner| file.live_for(owner))
            .and_then(|(facts, path)| format_of(path.name(), &facts.mime_type))
            .map_or(EXTRACTOR_VERSION, |format| extractor.version_for(format));
        let Some((facts, _)) = file.needs_extraction(EXTRACTOR, extractor_version) else {
            return Ok(());
        };
        let mut event = reading(file_id, facts, extractor_version);
        event.outcome = ExtractionOutcome::Failed;
        event.reason = Some(reason);
        self.record_reading(&file, version, event).await
    }

    async fn record_reading(&self, file: &File, version: i64, event: FileContentExtracted) -> Result<(), CommandError> {
        self.record_content(file, version, FileCommand::RecordExtraction(event)).await
    }

    /// Appends what the pipeline learnt (a reading or a model's result) to the file's content
    /// stream, if the file still wants it. The stream has several writers (the text's reading, each
    /// model, another read of the same file): when one came first, the file is loaded again and
    /// decides again on what it wrote, so nothing it still wants is dropped.
    pub(crate) async fn record_content(&self, file: &File, version: i64, command: FileCommand) -> Result<(), CommandError> {
        let (file_id, owner) = match &command {
            FileCommand::RecordExtraction(e) => (e.file_id, e.owner_id),
            FileCommand::RecordAnalysis(e) => (e.file_id, e.owner_id),
            _ => return Err(CommandError::Invalid("not a content command".into())),
        };
        let (mut file, mut version) = (file.clone(), version);
        for _ in 0..RECORD_TRIES {
            let events = file.handle(command.clone())?;
            if events.is_empty() {
                return Ok(());
            }
            match self
                .append(content_stream(file_id), version, &events, &Context::new(Some(owner)))
                .await
            {
                Ok(_) => return Ok(()),
                Err(CommandError::Conflict(_)) => (file, version) = self.file_with_content(file_id).await?,
                Err(err) => return Err(err),
            }
        }
        Err(CommandError::Conflict(format!(
            "the content stream of file {file_id} kept changing"
        )))
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
        self.store_sealed(owner, text.as_bytes()).await
    }

    /// Seals `plain` with `owner`'s data key and keeps it in the chunk store; returns its
    /// reference (extracted texts, a model's results).
    pub(crate) async fn store_sealed(&self, owner: UserId, plain: &[u8]) -> Result<String, CommandError> {
        let chunks = self
            .chunks_for(owner)
            .await?
            .ok_or_else(|| CommandError::Invalid("no chunk store is configured".into()))?;
        let sealed = self.vault.seal(owner, plain).await?;
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
        let Some(chunks) = self.chunks_to_open(owner).await? else {
            return Ok(None);
        };
        let Ok(bytes) = cloudsync_chunks::get_content(&chunks, reference).await else {
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

/// A reading of the file's current version by this extractor, as yet without its outcome.
fn reading(file_id: FileId, facts: &cloudsync_domain::events::FileDiscovered, extractor_version: u32) -> FileContentExtracted {
    FileContentExtracted {
        file_id,
        provider_id: facts.provider_id,
        owner_id: facts.owner_id,
        checksum: facts.checksum.clone(),
        extractor: EXTRACTOR.to_owned(),
        extractor_version,
        outcome: ExtractionOutcome::Extracted,
        reason: None,
        text: None,
        language: None,
        at: Utc::now(),
    }
}
