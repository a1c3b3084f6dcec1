//! The `SyncJob` aggregate and its state machine:
//! pending → scanning → planning → transferring → completed | failed | cancelled, with paused/resumed.
//! A scan-only job goes pending → scanning → completed.

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{DomainEvent, SyncJobCreated, SyncJobFinished, SyncJobHeld, SyncJobPhaseEntered, SyncJobProgressed, SyncJobRetrying};
pub use crate::events::{JobKind, JobPhase};
use crate::ids::{SyncJobId, UserId};
use crate::merge::Side;

#[derive(Debug, Default, Clone)]
pub struct SyncJob {
    created: Option<SyncJobCreated>,
    phase: Option<JobPhase>,
    paused: bool,
    /// Stopped by the max-delete rail until the owner approves.
    held: bool,
    approved: bool,
    /// Attempts that stopped short and are retried.
    retries: u32,
}

#[derive(Debug, Clone)]
pub enum SyncJobCommand {
    Create {
        job_id: SyncJobId,
        owner_id: UserId,
        kind: JobKind,
        at: DateTime<Utc>,
    },
    EnterPhase {
        phase: JobPhase,
        at: DateTime<Utc>,
    },
    RecordProgress {
        files_done: u64,
        bytes_done: u64,
        files_total: Option<u64>,
        bytes_total: Option<u64>,
        bytes_written: Option<u64>,
        at: DateTime<Utc>,
    },
    Pause {
        by: UserId,
        at: DateTime<Utc>,
    },
    Resume {
        by: UserId,
        at: DateTime<Utc>,
    },
    Cancel {
        by: UserId,
        at: DateTime<Utc>,
    },
    /// The plan deletes more of `side` than the pair allows: wait for the owner's approval.
    Hold {
        side: Side,
        deletes: u64,
        at: DateTime<Utc>,
    },
    /// The owner lets a held run go on, deletes included.
    Approve {
        by: UserId,
        at: DateTime<Utc>,
    },
    Complete {
        at: DateTime<Utc>,
    },
    Fail {
        reason: String,
        at: DateTime<Utc>,
    },
    /// Attempt `attempt` stopped short (its run failed, or its worker went away): try again from the
    /// last recorded step at `retry_at`.
    Retry {
        attempt: u32,
        reason: String,
        retry_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

impl SyncJob {
    pub fn phase(&self) -> Option<JobPhase> {
        self.phase
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether the run waits for approval of its deletes.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether the owner approved the run's deletes beyond the pair's limit.
    pub fn deletes_approved(&self) -> bool {
        self.approved
    }

    /// How many attempts stopped short and were retried.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    pub fn kind(&self) -> Option<&JobKind> {
        self.created.as_ref().map(|c| &c.kind)
    }

    pub fn owner(&self) -> Option<UserId> {
        self.created.as_ref().map(|c| c.owner_id)
    }

    fn running(&self) -> Result<(SyncJobId, JobPhase), DomainError> {
        let (Some(created), Some(phase)) = (&self.created, self.phase) else {
            return Err(DomainError::NotFound("sync job"));
        };
        if phase.is_terminal() {
            return Err(DomainError::InvalidState(format!("the job has already ended ({})", phase.as_str())));
        }
        Ok((created.job_id, phase))
    }

    fn owned_by(&self, user: UserId) -> Result<(), DomainError> {
        match &self.created {
            Some(created) if created.owner_id == user => Ok(()),
            _ => Err(DomainError::NotFound("sync job")),
        }
    }

    fn allowed(&self, from: JobPhase, to: JobPhase) -> bool {
        // An export writes its file from the start: it neither scans nor plans.
        if matches!(self.kind(), Some(JobKind::Export(_))) {
            return matches!(
                (from, to),
                (JobPhase::Pending, JobPhase::Transferring) | (JobPhase::Transferring, JobPhase::Completed)
            );
        }
        let scan_only = matches!(self.kind(), Some(JobKind::Scan { .. }));
        matches!(
            (from, to),
            (JobPhase::Pending, JobPhase::Scanning)
                | (JobPhase::Scanning, JobPhase::Planning)
                | (JobPhase::Planning, JobPhase::Transferring)
                | (JobPhase::Planning | JobPhase::Transferring, JobPhase::Completed)
        ) || (scan_only && from == JobPhase::Scanning && to == JobPhase::Completed)
    }
}

fn finished(job_id: SyncJobId, at: DateTime<Utc>, reason: Option<String>) -> SyncJobFinished {
    SyncJobFinished { job_id, at, reason }
}

impl Aggregate for SyncJob {
    type Command = SyncJobCommand;
    type Event = DomainEvent;

    fn handle(&self, command: SyncJobCommand) -> Result<Vec<DomainEvent>, DomainError> {
        use SyncJobCommand as C;
        let event = match command {
            C::Create {
                job_id,
                owner_id,
                kind,
                at,
            } => {
                if self.created.is_some() {
                    return Err(DomainError::AlreadyExists("sync job"));
                }
                DomainEvent::SyncJobCreated(SyncJobCreated {
                    job_id,
                    owner_id,
                    kind,
                    created_at: at,
                })
            }
            C::EnterPhase { phase, at } => {
                let (job_id, from) = self.running()?;
                if self.paused {
                    return Err(DomainError::InvalidState("the job is paused".into()));
                }
                if phase == JobPhase::Completed {
                    return self.handle(C::Complete { at });
                }
                if !self.allowed(from, phase) {
                    return Err(DomainError::InvalidState(format!(
                        "cannot go from {} to {}",
                        from.as_str(),
                        phase.as_str()
                    )));
                }
                DomainEvent::SyncJobPhaseEntered(SyncJobPhaseEntered { job_id, phase, at })
            }
            C::RecordProgress {
                files_done,
                bytes_done,
                files_total,
                bytes_total,
                bytes_written,
                at,
            } => {
                let (job_id, phase) = self.running()?;
                if phase == JobPhase::Pending {
                    return Err(DomainError::InvalidState("the job has not started".into()));
                }
                DomainEvent::SyncJobProgressed(SyncJobProgressed {
                    job_id,
                    files_done,
                    bytes_done,
                    files_total,
                    bytes_total,
                    bytes_written,
                    at,
                })
            }
            C::Pause { by, at } => {
                self.owned_by(by)?;
                let (job_id, _) = self.running()?;
                if self.paused {
                    return Ok(Vec::new());
                }
                DomainEvent::SyncJobPaused(finished(job_id, at, None))
            }
            C::Resume { by, at } => {
                self.owned_by(by)?;
                let (job_id, _) = self.running()?;
                if self.held {
                    return Err(DomainError::InvalidState(
                        "the run waits for approval of its deletes: approve it, or cancel it".into(),
                    ));
                }
                if !self.paused {
                    return Ok(Vec::new());
                }
                DomainEvent::SyncJobResumed(finished(job_id, at, None))
            }
            C::Cancel { by, at } => {
                self.owned_by(by)?;
                let (job_id, _) = self.running()?;
                DomainEvent::SyncJobCancelled(finished(job_id, at, Some(format!("cancelled by user {by}"))))
            }
            C::Hold { side, deletes, at } => {
                let (job_id, _) = self.running()?;
                if self.approved {
                    return Ok(Vec::new());
                }
                if self.held {
                    return Err(DomainError::InvalidState("the run already waits for approval".into()));
                }
                DomainEvent::SyncJobHeld(SyncJobHeld { job_id, side, deletes, at })
            }
            C::Approve { by, at } => {
                self.owned_by(by)?;
                let (job_id, _) = self.running()?;
                if !self.held {
                    return Err(DomainError::InvalidState("the run does not wait for approval".into()));
                }
                DomainEvent::SyncJobApproved(finished(job_id, at, None))
            }
            C::Complete { at } => {
                let (job_id, from) = self.running()?;
                if self.paused || !self.allowed(from, JobPhase::Completed) {
                    return Err(DomainError::InvalidState(format!("cannot complete from {}", from.as_str())));
                }
                DomainEvent::SyncJobCompleted(finished(job_id, at, None))
            }
            C::Fail { reason, at } => {
                let (job_id, _) = self.running()?;
                DomainEvent::SyncJobFailed(finished(job_id, at, Some(reason)))
            }
            C::Retry {
                attempt,
                reason,
                retry_at,
                at,
            } => {
                let (job_id, _) = self.running()?;
                // Each attempt stops once: a second report of the same one (two workers that both
                // saw it stop) changes nothing.
                if attempt <= self.retries {
                    return Ok(Vec::new());
                }
                DomainEvent::SyncJobRetrying(SyncJobRetrying {
                    job_id,
                    attempt,
                    reason,
                    retry_at,
                    at,
                })
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::SyncJobCreated(e) => {
                self.created = Some(e.clone());
                self.phase = Some(JobPhase::Pending);
            }
            DomainEvent::SyncJobPhaseEntered(e) => self.phase = Some(e.phase),
            DomainEvent::SyncJobPaused(_) => self.paused = true,
            DomainEvent::SyncJobResumed(_) => self.paused = false,
            DomainEvent::SyncJobHeld(_) => (self.paused, self.held) = (true, true),
            DomainEvent::SyncJobApproved(_) => (self.paused, self.held, self.approved) = (false, false, true),
            DomainEvent::SyncJobCompleted(_) => self.phase = Some(JobPhase::Completed),
            DomainEvent::SyncJobFailed(_) => self.phase = Some(JobPhase::Failed),
            DomainEvent::SyncJobCancelled(_) => self.phase = Some(JobPhase::Cancelled),
            DomainEvent::SyncJobRetrying(e) => self.retries = e.attempt,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::testing::given;

    const T: DateTime<Utc> = DateTime::UNIX_EPOCH;

    fn owner() -> UserId {
        UserId::from_uuid(Uuid::from_u128(1))
    }

    /// Given the history produced by `commands`, run `last` and return its outcome.
    fn check(commands: Vec<SyncJobCommand>, last: SyncJobCommand) -> Result<Vec<DomainEvent>, DomainError> {
        let scan = JobKind::Scan {
            provider_id: crate::ids::ProviderId::from_uuid(Uuid::from_u128(6)),
        };
        check_kind(scan, commands, last)
    }

    fn check_kind(kind: JobKind, commands: Vec<SyncJobCommand>, last: SyncJobCommand) -> Result<Vec<DomainEvent>, DomainError> {
        let mut history = Vec::new();
        let create = SyncJobCommand::Create {
            job_id: SyncJobId::from_uuid(Uuid::from_u128(5)),
            owner_id: owner(),
            kind,
            at: T,
        };
        for command in std::iter::once(create).chain(commands) {
            let events = given::<SyncJob>(history.clone()).when(command).events();
            history.extend(events);
        }
        given::<SyncJob>(history).when(last).decided()
    }

    fn phase(p: JobPhase) -> SyncJobCommand {
        SyncJobCommand::EnterPhase { phase: p, at: T }
    }

    #[test]
    fn a_scan_runs_pending_scanning_completed() {
        let events = check(vec![phase(JobPhase::Scanning)], SyncJobCommand::Complete { at: T }).expect("accepted");
        assert!(matches!(events.as_slice(), [DomainEvent::SyncJobCompleted(_)]));
    }

    #[test]
    fn an_export_runs_pending_transferring_completed_and_neither_scans_nor_plans() {
        let export = || {
            JobKind::Export(crate::events::ExportRequest {
                what: crate::events::ExportSubject::Events,
                format: crate::events::ExportFormat::Parquet,
                since: None,
                until: None,
            })
        };
        let events = check_kind(export(), vec![phase(JobPhase::Transferring)], SyncJobCommand::Complete { at: T }).expect("accepted");
        assert!(matches!(events.as_slice(), [DomainEvent::SyncJobCompleted(_)]));
        assert!(check_kind(export(), vec![], phase(JobPhase::Scanning)).is_err());
        assert!(check_kind(export(), vec![], SyncJobCommand::Complete { at: T }).is_err());
        assert!(check_kind(export(), vec![phase(JobPhase::Transferring)], phase(JobPhase::Planning)).is_err());
    }

    #[test]
    fn phases_cannot_be_skipped_or_reversed() {
        assert!(matches!(
            check(vec![], phase(JobPhase::Transferring)),
            Err(DomainError::InvalidState(_))
        ));
        assert!(matches!(
            check(vec![], SyncJobCommand::Complete { at: T }),
            Err(DomainError::InvalidState(_))
        ));
        assert!(matches!(
            check(
                vec![phase(JobPhase::Scanning), phase(JobPhase::Planning)],
                phase(JobPhase::Scanning)
            ),
            Err(DomainError::InvalidState(_))
        ));
        assert!(
            check(
                vec![phase(JobPhase::Scanning), phase(JobPhase::Planning)],
                phase(JobPhase::Transferring)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_paused_job_refuses_progress_until_resumed() {
        let pause = SyncJobCommand::Pause { by: owner(), at: T };
        assert!(matches!(
            check(vec![phase(JobPhase::Scanning), pause], phase(JobPhase::Planning)),
            Err(DomainError::InvalidState(_))
        ));
        let pause = SyncJobCommand::Pause { by: owner(), at: T };
        let resume = SyncJobCommand::Resume { by: owner(), at: T };
        assert!(check(vec![phase(JobPhase::Scanning), pause, resume], phase(JobPhase::Planning)).is_ok());
    }

    #[test]
    fn a_held_run_waits_for_the_owners_approval_not_a_resume() {
        let started = || vec![phase(JobPhase::Scanning), phase(JobPhase::Planning)];
        let hold = || SyncJobCommand::Hold {
            side: Side::Target,
            deletes: 40,
            at: T,
        };
        let held = || started().into_iter().chain([hold()]).collect::<Vec<_>>();
        assert!(matches!(check(started(), hold()).as_deref(), Ok([DomainEvent::SyncJobHeld(_)])));
        // Held: no progress, no plain resume, no approval by someone else.
        assert!(matches!(
            check(held(), phase(JobPhase::Transferring)),
            Err(DomainError::InvalidState(_))
        ));
        assert!(matches!(
            check(held(), SyncJobCommand::Resume { by: owner(), at: T }),
            Err(DomainError::InvalidState(_))
        ));
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        assert_eq!(
            check(held(), SyncJobCommand::Approve { by: mallory, at: T }).err(),
            Some(DomainError::NotFound("sync job"))
        );
        // Approved: it goes on, and the rail does not stop it again (a resumed run plans again).
        let approved = || {
            held()
                .into_iter()
                .chain([SyncJobCommand::Approve { by: owner(), at: T }])
                .collect::<Vec<_>>()
        };
        assert!(check(approved(), phase(JobPhase::Transferring)).is_ok());
        assert_eq!(check(approved(), hold()).ok(), Some(Vec::new()));
        // Nothing to approve on a job that is not held.
        assert!(matches!(
            check(started(), SyncJobCommand::Approve { by: owner(), at: T }),
            Err(DomainError::InvalidState(_))
        ));
    }

    #[test]
    fn an_ended_job_accepts_nothing() {
        let ended = || {
            vec![
                phase(JobPhase::Scanning),
                SyncJobCommand::Fail {
                    reason: "disk gone".into(),
                    at: T,
                },
            ]
        };
        assert!(matches!(
            check(ended(), SyncJobCommand::Complete { at: T }),
            Err(DomainError::InvalidState(_))
        ));
        assert!(matches!(
            check(ended(), SyncJobCommand::Cancel { by: owner(), at: T }),
            Err(DomainError::InvalidState(_))
        ));
    }

    #[test]
    fn each_attempt_stops_once_and_an_ended_job_is_not_retried() {
        let retry = |attempt| SyncJobCommand::Retry {
            attempt,
            reason: "provider unreachable".into(),
            retry_at: T,
            at: T,
        };
        assert!(matches!(
            check(vec![phase(JobPhase::Scanning)], retry(1)).as_deref(),
            Ok([DomainEvent::SyncJobRetrying(SyncJobRetrying { attempt: 1, .. })])
        ));
        assert_eq!(check(vec![phase(JobPhase::Scanning), retry(1)], retry(1)).ok(), Some(Vec::new()));
        assert!(matches!(
            check(vec![phase(JobPhase::Scanning), retry(1)], retry(2)).as_deref(),
            Ok([DomainEvent::SyncJobRetrying(SyncJobRetrying { attempt: 2, .. })])
        ));
        let failed = SyncJobCommand::Fail {
            reason: "gave up".into(),
            at: T,
        };
        assert!(matches!(
            check(vec![phase(JobPhase::Scanning), failed], retry(1)),
            Err(DomainError::InvalidState(_))
        ));
    }

    #[test]
    fn only_the_owner_can_cancel() {
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        assert_eq!(
            check(vec![], SyncJobCommand::Cancel { by: mallory, at: T }).err(),
            Some(DomainError::NotFound("sync job"))
        );
        assert!(matches!(
            check(vec![], SyncJobCommand::Cancel { by: owner(), at: T }).as_deref(),
            Ok([DomainEvent::SyncJobCancelled(_)])
        ));
    }
}
