//! A scanned tree's worth of domain events, for the benchmarks that need a large log (the event
//! store's rebuild, exports).

use anyhow::Context as _;
use cloudsync_eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use serde_json::json;
use uuid::Uuid;

/// Appends `count` domain events of a scanned tree, a thousand to an append: about 80 % files
/// discovered, then changes, moves and removals of files still there. Returns how many files are left.
pub async fn append_tree(store: &dyn EventStore, count: u64) -> anyhow::Result<usize> {
    use cloudsync_domain::DomainEvent;
    use cloudsync_domain::events::{FileChanged, FileDiscovered, FileMoved, FileRemoved, ProviderConnected, UserRegistered};
    use cloudsync_domain::ids::{FileId, ProviderId, UserId};
    use cloudsync_domain::values::{ProviderKind, ProviderPath};

    let now = chrono::Utc::now();
    let owner = UserId::from_uuid(Uuid::now_v7());
    let provider = ProviderId::from_uuid(Uuid::now_v7());
    let path = |text: String| ProviderPath::parse(&text).context("a benchmark path");
    let encode = |event: DomainEvent| {
        let encoded = event.encode();
        NewEvent {
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            payload: encoded.payload,
            metadata: EventMetadata::new(Some(owner.as_uuid())),
        }
    };
    let mut pending = vec![
        (
            owner.stream(),
            encode(DomainEvent::UserRegistered(UserRegistered {
                user_id: owner,
                email: "bench@example.org".into(),
                password_hash: String::new(),
                registered_at: now,
            })),
        ),
        (
            provider.stream(),
            encode(DomainEvent::ProviderConnected(ProviderConnected {
                provider_id: provider,
                owner_id: owner,
                kind: ProviderKind::Local,
                display_name: "bench".into(),
                config: json!({ "root": "/bench" }).into(),
                secrets: None,
                credentials_expire_at: None,
                connected_at: now,
            })),
        ),
    ];
    // Each file and its path now; the files not removed.
    let mut files: Vec<(FileId, String)> = Vec::new();
    let mut live: Vec<usize> = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        usize::try_from(rng % n.max(1) as u64).unwrap_or(0)
    };
    let mut written = 0_u64;
    let mut n = 0_u64;
    while written + (pending.len() as u64) < count {
        let slot = n % 1000;
        n += 1;
        let (stream, event) = if slot < 800 || live.len() < 100 {
            let id = FileId::from_uuid(Uuid::now_v7());
            let name = format!("scan/{}/file-{n}.dat", n % 97);
            files.push((id, name.clone()));
            live.push(files.len() - 1);
            let event = DomainEvent::FileDiscovered(FileDiscovered {
                file_id: id,
                provider_id: provider,
                owner_id: owner,
                path: path(name)?,
                size_bytes: n * 37,
                modified_at: now,
                mime_type: "application/octet-stream".into(),
                checksum: format!("{:064x}", n),
                job_id: None,
                etag: None,
            });
            (id.stream(), event)
        } else {
            let pick = next(live.len());
            let index = live[pick];
            let (id, name) = &mut files[index];
            let event = if slot < 900 {
                DomainEvent::FileChanged(FileChanged {
                    file_id: *id,
                    provider_id: provider,
                    owner_id: owner,
                    path: path(name.clone())?,
                    size_bytes: n * 41,
                    modified_at: now,
                    checksum: format!("{:064x}", n),
                    etag: None,
                    job_id: None,
                })
            } else if slot < 960 {
                let to = format!("moved/{n}.dat");
                let event = DomainEvent::FileMoved(FileMoved {
                    file_id: *id,
                    provider_id: provider,
                    owner_id: owner,
                    from: path(name.clone())?,
                    to: path(to.clone())?,
                    moved_at: now,
                });
                *name = to;
                event
            } else {
                live.swap_remove(pick);
                DomainEvent::FileRemoved(FileRemoved {
                    file_id: *id,
                    provider_id: provider,
                    owner_id: owner,
                    path: path(name.clone())?,
                    job_id: None,
                })
            };
            (id.stream(), event)
        };
        pending.push((stream, encode(event)));
        if pending.len() == 1000 {
            written += append_pending(store, &mut pending).await?;
        }
    }
    written += append_pending(store, &mut pending).await?;
    anyhow::ensure!(written == count, "appended {written} of {count} events");
    Ok(live.len())
}

/// Appends what `append_tree` has gathered, each event to its stream with `Any`.
async fn append_pending(store: &dyn EventStore, pending: &mut Vec<(String, NewEvent)>) -> anyhow::Result<u64> {
    let count = pending.len() as u64;
    let batches = pending
        .drain(..)
        .map(|(stream, event)| StreamAppend {
            stream,
            expected: ExpectedVersion::Any,
            events: vec![event],
        })
        .collect();
    store.append(batches).await.context("append a thousand domain events")?;
    Ok(count)
}
