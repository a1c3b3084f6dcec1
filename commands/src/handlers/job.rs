//! Job commands: requesting a scan or an export, and cancelling, pausing or resuming any job.

use chrono::Utc;
use cloudsync_domain::events::ExportRequest;
use cloudsync_domain::provider::ProviderConnection;
use cloudsync_domain::sync_job::{JobKind, SyncJob, SyncJobCommand};
use cloudsync_domain::{Aggregate, ProviderId, SyncJobId, UserId};
use uuid::Uuid;

use crate::core::Context;
use crate::{CommandError, Commands};

impl Commands {
    /// Starts a rescan of one of `user`'s providers; the job runner (or whoever calls
    /// [`Commands::run_job`]) carries it out.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown, disconnected or someone else's providers.
    pub async fn request_scan(&self, user: UserId, provider_id: ProviderId) -> Result<(SyncJobId, i64), CommandError> {
        // An erased account's providers are not scanned again.
        self.user(user).await?.ok_or(CommandError::NotFound("provider"))?;
        let (provider, _) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
        provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
        let job_id = SyncJobId::from_uuid(Uuid::new_v4());
        let created = SyncJob::default().handle(SyncJobCommand::Create {
            job_id,
            owner_id: user,
            kind: JobKind::Scan { provider_id },
            at: Utc::now(),
        })?;
        let position = self.append(job_id.stream(), 0, &created, &Context::new(Some(user))).await?;
        Ok((job_id, position))
    }

    /// Starts an analytics export owned by `user` (the caller checks that they may export); the
    /// job runner writes it into the export folder of the process that runs it.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for an empty window.
    pub async fn request_export(&self, user: UserId, request: ExportRequest) -> Result<(SyncJobId, i64), CommandError> {
        if let (Some(since), Some(until)) = (request.since, request.until)
            && since >= until
        {
            return Err(CommandError::Invalid("since must be before until".into()));
        }
        let job_id = SyncJobId::from_uuid(Uuid::new_v4());
        let created = SyncJob::default().handle(SyncJobCommand::Create {
            job_id,
            owner_id: user,
            kind: JobKind::Export(request),
            at: Utc::now(),
        })?;
        let position = self.append(job_id.stream(), 0, &created, &Context::new(Some(user))).await?;
        Ok((job_id, position))
    }

    /// Cancels one of `user`'s jobs.
    ///
    /// # Errors
    /// Not found, or a job that has already ended.
    pub async fn cancel_job(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Cancel { by: user, at: Utc::now() })
            .await
    }

    /// Pauses one of `user`'s jobs at its next step.
    ///
    /// # Errors
    /// Not found, or a job that has already ended.
    pub async fn pause_job(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Pause { by: user, at: Utc::now() })
            .await
    }

    /// Resumes one of `user`'s paused jobs.
    ///
    /// # Errors
    /// Not found, a job that has already ended, or a run held for approval.
    pub async fn resume_job(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Resume { by: user, at: Utc::now() })
            .await
    }

    /// Applies `user`'s command to one of their jobs; returns the last position (0 when the command
    /// changed nothing).
    pub(crate) async fn act_on_job(&self, user: UserId, job_id: SyncJobId, command: SyncJobCommand) -> Result<i64, CommandError> {
        let (job, version) = self.load::<SyncJob>(&job_id.stream()).await?;
        let events = job.handle(command)?;
        if events.is_empty() {
            return Ok(0);
        }
        self.append(job_id.stream(), version, &events, &Context::new(Some(user))).await
    }

    /// Applies a job command on behalf of the job runner; returns the job's new version.
    pub(crate) async fn job_step(
        &self,
        job_id: SyncJobId,
        version: i64,
        job: &mut SyncJob,
        command: SyncJobCommand,
        ctx: &Context,
    ) -> Result<i64, CommandError> {
        let events = job.handle(command)?;
        if events.is_empty() {
            return Ok(version);
        }
        self.append(job_id.stream(), version, &events, ctx).await?;
        events.iter().for_each(|e| job.apply(e));
        Ok(version + i64::try_from(events.len()).unwrap_or(1))
    }
}
