//! The write side below the API, on SQLite: runs of a pair of local folders, carried out by
//! [`Commands::run_job`] in the test's own task, with the target wrapped in a provider that fails or
//! changes on purpose in the middle of a step; and second factors on a clock the test moves (`mfa`).

mod faulty;
mod mfa;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudsync_chunks::ProviderStore;
use cloudsync_commands::{Commands, MasterKey, SyncSettings, Vault};
use cloudsync_domain::merge::{ConflictPolicy, SyncMode};
use cloudsync_domain::sync_job::{JobPhase, SyncJob};
use cloudsync_domain::sync_pair::SyncEndpoint;
use cloudsync_domain::sync_pair::SyncPair;
use cloudsync_domain::{Email, ProviderId, ProviderPath, SyncJobId, SyncPairId, UserId};
use cloudsync_eventstore::Database;
use tokio_util::sync::CancellationToken;

use faulty::{Faults, Faulty};

/// Two local folders of one user, a two-way pair of them, and the target's faults.
struct Setup {
    _dir: tempfile::TempDir,
    commands: Commands,
    user: UserId,
    source: PathBuf,
    target: PathBuf,
    pair: SyncPairId,
    first_run: SyncJobId,
    faults: Arc<Faults>,
}

async fn setup(files: &[(&str, &[u8])]) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    std::fs::create_dir_all(&target).expect("mkdir");
    for (path, content) in files {
        write(&source, path, content);
    }
    let db = Database::connect(&format!("sqlite://{}", dir.path().join("cloudsync.db").display()), true)
        .await
        .expect("database");
    let vault = Vault::new(MasterKey::generate().0, db.pool.clone());
    let chunks = ProviderStore::in_folder(&dir.path().join("chunks")).expect("chunk store");
    let faults = Arc::new(Faults::default());
    let target_id = Arc::new(std::sync::OnceLock::<ProviderId>::new());
    let (layer_faults, layer_target) = (Arc::clone(&faults), Arc::clone(&target_id));
    let commands = Commands::new(db.events, vault)
        .with_chunks(Arc::new(chunks), MasterKey::generate().0)
        .with_provider_layer(Arc::new(move |id, provider| {
            if layer_target.get() == Some(&id) {
                Arc::new(Faulty::new(provider, Arc::clone(&layer_faults)))
            } else {
                provider
            }
        }));
    let (user, _) = commands
        .register(Email::parse("sync@example.org").expect("address"), "!no-password".into())
        .await
        .expect("register");
    let connect = async |root: &Path| {
        let connected = commands
            .connect_provider(user, "local", &serde_json::json!({ "root": root }))
            .await
            .expect("connect");
        connected.provider_id
    };
    let (from, to) = (connect(&source).await, connect(&target).await);
    target_id.set(to).expect("set once");
    faults.set_root(&target);
    let (pair, first_run, _) = commands.sync_folders(user, settings(from, to), true).await.expect("pair");
    Setup {
        _dir: dir,
        commands,
        user,
        source,
        target,
        pair,
        first_run: first_run.expect("a first run"),
        faults,
    }
}

fn settings(source: ProviderId, target: ProviderId) -> SyncSettings {
    SyncSettings {
        source: SyncEndpoint {
            provider_id: source,
            path: ProviderPath::root(),
        },
        target: SyncEndpoint {
            provider_id: target,
            path: ProviderPath::root(),
        },
        mode: SyncMode::TwoWay,
        policy: ConflictPolicy::KeepBoth,
        max_delete_percent: 100,
        schedule: None,
        realtime: false,
        keep_versions: 10,
        keep_days: 30,
    }
}

fn write(root: &Path, path: &str, content: &[u8]) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
    std::fs::write(full, content).expect("write");
}

/// Every file below `root`, temporary ones included (relative path → content).
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|entry| entry.expect("entry"))
        .filter(|entry| entry.file_type().is_file())
        .map(|entry| {
            let relative = entry.path().strip_prefix(root).expect("below root");
            (relative.to_string_lossy().into_owned(), std::fs::read(entry.path()).expect("read"))
        })
        .collect()
}

impl Setup {
    /// Runs `job` to its end here and returns how it ended, with the reason of a failure.
    async fn run(&self, job: SyncJobId) -> (JobPhase, String) {
        self.commands.run_job(job, &CancellationToken::new()).await.expect("the run ends");
        let (state, _) = self.commands.load::<SyncJob>(&job.stream()).await.expect("job");
        let events = self.commands.store().read_stream(&job.stream()).await.expect("the job's events");
        let last = events.last().expect("events");
        let reason = last.payload["reason"].as_str().unwrap_or_default().to_owned();
        (state.phase().expect("a phase"), reason)
    }

    async fn run_again(&self) -> (JobPhase, String) {
        let (job, _) = self.commands.request_sync(self.user, self.pair).await.expect("a run");
        self.run(job).await
    }
}

#[tokio::test]
async fn a_run_copies_both_ways_and_the_next_has_nothing_to_do() {
    let s = setup(&[("a.txt", b"alpha"), ("sub/b.txt", b"beta")]).await;
    write(&s.target, "c.txt", b"gamma");
    assert_eq!(s.run(s.first_run).await.0, JobPhase::Completed);
    assert_eq!(tree(&s.source), tree(&s.target));
    assert_eq!(tree(&s.source).len(), 3);
    let writes = s.faults.writes();
    assert!(writes >= 2, "the target took a.txt and sub/b.txt: {writes} writes");
    assert_eq!(s.run_again().await.0, JobPhase::Completed);
    assert_eq!(s.faults.writes(), writes, "nothing changed, so nothing is written");
}

#[tokio::test]
async fn a_write_that_breaks_midway_fails_the_run_and_the_next_run_finishes_it() {
    let large: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
    let mut files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("small/{i}.txt"), format!("file {i}").into_bytes()))
        .collect();
    files.push(("large.bin".into(), large.clone()));
    let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (p.as_str(), c.as_slice())).collect();
    let s = setup(&borrowed).await;
    // The target's connection drops 64 KiB into any file it is sent.
    s.faults.break_streams_after(64 * 1024);
    let (phase, reason) = s.run(s.first_run).await;
    assert_eq!(phase, JobPhase::Failed, "one change could not be made");
    assert!(reason.starts_with("1 of 21 changes could not be made"), "{reason}");
    assert!(reason.contains("the connection dropped"), "{reason}");
    let on_target = tree(&s.target);
    assert!(!on_target.contains_key("large.bin"), "a broken write leaves nothing in place");
    assert!(
        on_target
            .keys()
            .all(|path| path.starts_with("small/") || path.contains(".cloudsync")),
        "{:?}",
        on_target.keys()
    );
    for (path, content) in &files[..20] {
        assert_eq!(on_target.get(path), Some(content), "{path} was copied before the failure");
    }
    // The next run carries on from what the first recorded: only the broken file is sent again.
    s.faults.heal();
    let before = s.faults.writes();
    assert_eq!(s.run_again().await.0, JobPhase::Completed);
    assert_eq!(s.faults.writes() - before, 1, "only large.bin is written again");
    let on_target = tree(&s.target);
    assert_eq!(on_target.get("large.bin"), Some(&large));
    assert_eq!(on_target, tree(&s.source), "no temporary file is left either");
}

#[tokio::test]
async fn a_file_changed_on_the_target_during_a_run_is_never_overwritten() {
    let s = setup(&[("report.txt", b"first draft")]).await;
    assert_eq!(s.run(s.first_run).await.0, JobPhase::Completed);
    // The source changes; while the run is about to put that change on the target, someone edits
    // the target's copy too (after the run listed it).
    write(&s.source, "report.txt", b"second draft, from the source");
    s.faults
        .edit_before_write("report.txt", b"edited on the target while the run was going on");
    let (phase, reason) = s.run_again().await;
    assert_eq!(phase, JobPhase::Failed, "the step was skipped, for the next run to take up");
    assert!(reason.contains("report.txt"), "{reason}");
    assert_eq!(
        std::fs::read(s.target.join("report.txt")).expect("read"),
        b"edited on the target while the run was going on",
        "the edit made during the run survives"
    );
    // The next run sees both changes: a conflict, and with KEEP_BOTH both versions survive on
    // both sides.
    assert_eq!(s.run_again().await.0, JobPhase::Completed);
    for side in [&s.source, &s.target] {
        let contents: Vec<Vec<u8>> = tree(side).into_values().collect();
        assert!(contents.contains(&b"second draft, from the source".to_vec()), "{side:?}");
        assert!(
            contents.contains(&b"edited on the target while the run was going on".to_vec()),
            "{side:?}"
        );
    }
    assert_eq!(tree(&s.source), tree(&s.target));
}

#[tokio::test]
async fn a_write_in_place_that_breaks_midway_is_undone_and_the_next_run_writes_it() {
    let old: Vec<u8> = (0..3_000_000_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let s = setup(&[("large.bin", &old)]).await;
    assert_eq!(s.run(s.first_run).await.0, JobPhase::Completed);
    // Two edits far apart, and the file grows: the write in place breaks after the first edit,
    // with the file already longer.
    let mut new = old.clone();
    new[100_000..104_096].fill(1);
    new[2_000_000..2_004_096].fill(2);
    new.extend_from_slice(&[3; 100_000]);
    write(&s.source, "large.bin", &new);
    s.faults.break_streams_after(5_000);
    let (phase, reason) = s.run_again().await;
    assert_eq!(phase, JobPhase::Failed, "{reason}");
    assert!(reason.contains("the connection dropped"), "{reason}");
    assert_eq!(
        std::fs::read(s.target.join("large.bin")).expect("read"),
        old,
        "the half-written file got its old bytes and size back"
    );
    // The connection is still broken when the run puts the old bytes back, so that write is cut
    // short too (what it wrote put the file back all the same): the write stays pending, and the
    // next run settles it first.
    s.faults.heal();
    assert_eq!(s.run_again().await.0, JobPhase::Completed);
    assert_eq!(tree(&s.target), tree(&s.source));
    let events = s.commands.store().read_stream(&s.pair.stream()).await.expect("events");
    let settled: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "FilePatchSettled")
        .filter_map(|e| e.payload["outcome"].as_str())
        .collect();
    assert_eq!(settled, ["UNDONE", "WRITTEN"]);
    let kept = events
        .iter()
        .rev()
        .find(|e| e.event_type == "FileVersionKept")
        .expect("the replaced version is kept");
    assert_eq!(kept.payload["version"]["checksum"], blake3::hash(&old).to_hex().as_str());
    assert!(
        kept.payload["base"].is_string(),
        "kept as what the write destroyed: {}",
        kept.payload
    );
}

#[tokio::test]
async fn a_pair_loaded_again_sees_what_another_process_appended() {
    let s = setup(&[("a.txt", b"a")]).await;
    assert_eq!(s.run(s.first_run).await.0, JobPhase::Completed);
    let (before, version) = s.commands.load::<SyncPair>(&s.pair.stream()).await.expect("pair");
    // Another process, with its own store on the same database, starts a run of the pair.
    let url = format!("sqlite://{}", s._dir.path().join("cloudsync.db").display());
    let db = Database::connect(&url, true).await.expect("database");
    let other = Commands::new(db.events, Vault::new(MasterKey::generate().0, db.pool.clone()));
    let (job, _) = other.request_sync(s.user, s.pair).await.expect("a run");
    let (after, newer) = s.commands.load::<SyncPair>(&s.pair.stream()).await.expect("pair");
    assert!(newer > version, "{newer} after {version}");
    assert_eq!(after.last_run(), Some(job), "the pair held in memory caught up with the log");
    assert_ne!(before.last_run(), Some(job));
    assert_eq!(after.base(), before.base());
}
