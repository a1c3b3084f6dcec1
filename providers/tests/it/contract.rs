use std::collections::BTreeMap;

use bytes::Bytes;
use cloudsync_domain::ProviderPath;
use cloudsync_providers::{ByteStream, ProviderError, StorageProvider};
use futures::{StreamExt, TryStreamExt};

use crate::servers::{Server, TestProvider};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        contract!(@server local, Local, $($name),*);
        contract!(@server s3, S3, $($name),*);
        contract!(@server s3_sigv4, S3Sigv4, $($name),*);
        contract!(@server webdav, Webdav, $($name),*);
        contract!(@server sftp, Sftp, $($name),*);
        contract!(@server azblob, Azblob, $($name),*);
    };
    (@server $module:ident, $server:ident, $($name:ident),*) => {
        mod $module {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() {
                   let provider = super::TestProvider::new(super::Server::$server).await;
                   super::$name(&provider).await;
                   provider.cleanup();
               } )*
        }
    };
}

contract!(
    written_files_read_back_with_unicode_and_spaces,
    ranged_reads_return_exactly_the_range,
    nested_listing_of_thousands_of_files,
    a_large_file_streams_in_and_out_without_buffering,
    rename_moves_and_never_overwrites,
    delete_removes_and_is_idempotent,
    missing_paths_are_not_found,
    bad_credentials_are_refused,
    the_change_feed_reports_outside_changes_where_there_is_one,
    ranged_writes_patch_a_file_where_they_are_offered,
    writes_in_place_change_only_their_ranges_where_they_are_offered,
    replace_moves_over_a_file_in_one_step,
    unsynced_writes_replace_only_what_was_expected,
    only_abandoned_writes_are_removed,
    conditional_writes_replace_only_the_expected_version,
);

fn p(raw: &str) -> ProviderPath {
    ProviderPath::parse(raw).expect("valid path")
}

fn once(data: impl Into<Bytes>) -> ByteStream {
    futures::stream::iter([Ok::<_, ProviderError>(data.into())]).boxed()
}

async fn read_all(provider: &dyn StorageProvider, path: &ProviderPath, range: std::ops::Range<u64>) -> Vec<u8> {
    let stream = provider.read(path, range).await.expect("read opens");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("read completes");
    chunks.concat()
}

async fn written_files_read_back_with_unicode_and_spaces(t: &TestProvider) {
    let provider = &*t.provider;
    let path = p("folder with spaces/zażółć gęślą ✓/file name.txt");
    let written = provider.write(&path, once("hello, world")).await.expect("write");
    assert_eq!(written, 12);
    let entry = provider.stat(&path).await.expect("stat");
    assert_eq!(entry.path, path);
    assert_eq!(entry.size, 12);
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, b"hello, world");
    // Overwriting replaces the content.
    provider.write(&path, once("second")).await.expect("overwrite");
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, b"second");
    let listed: Vec<_> = provider.list(&ProviderPath::root()).try_collect().await.expect("list");
    assert_eq!(listed.iter().map(|e| e.path.clone()).collect::<Vec<_>>(), vec![path]);
    assert_eq!(listed[0].size, 6);
}

async fn ranged_reads_return_exactly_the_range(t: &TestProvider) {
    let provider = &*t.provider;
    let content: Vec<u8> = (0..1_000_000_u32).map(|i| (i % 251) as u8).collect();
    let path = p("ranges/data.bin");
    provider.write(&path, once(content.clone())).await.expect("write");
    assert_eq!(read_all(provider, &path, 1000..5000).await, &content[1000..5000]);
    assert_eq!(read_all(provider, &path, 999_990..2_000_000).await, &content[999_990..]);
    assert!(read_all(provider, &path, 2_000_000..3_000_000).await.is_empty());
}

async fn nested_listing_of_thousands_of_files(t: &TestProvider) {
    let provider = &*t.provider;
    let count = 2000;
    let paths: Vec<ProviderPath> = (0..count)
        .map(|i| p(&format!("tree/d{}/e{}/file-{i:04}.txt", i % 10, i % 7)))
        .collect();
    futures::stream::iter(paths.iter().cloned())
        .map(|path| async move { provider.write(&path, once(format!("content of {path}"))).await.map(|_| ()) })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
        .expect("writes");
    provider.write(&p("outside/not-listed.txt"), once("x")).await.expect("write");
    let listed: BTreeMap<ProviderPath, u64> = provider
        .list(&p("tree"))
        .map_ok(|e| (e.path, e.size))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), count);
    for path in &paths {
        assert_eq!(listed.get(path), Some(&(format!("content of {path}").len() as u64)), "{path}");
    }
    let one_folder: Vec<_> = provider.list(&p("tree/d3/e3")).try_collect().await.expect("list");
    assert!(!one_folder.is_empty() && one_folder.iter().all(|e| e.path.is_within(&p("tree/d3/e3"))));
}

/// Size of the large-file test: 200 MiB under CI, smaller when iterating locally.
fn large_size() -> u64 {
    let default = if std::env::var("CI").is_ok_and(|v| v == "true") { 200 } else { 24 };
    std::env::var("CLOUDSYNC_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        * 1024
        * 1024
}

/// A deterministic stream of `size` bytes in 1 MiB chunks, generated as it is read.
fn generated(size: u64) -> ByteStream {
    const CHUNK: u64 = 1024 * 1024;
    futures::stream::unfold(0_u64, move |at| async move {
        if at >= size {
            return None;
        }
        let len = (size - at).min(CHUNK);
        let seed = blake3::hash(&at.to_le_bytes());
        let mut chunk = vec![0_u8; usize::try_from(len).expect("chunk fits")];
        blake3::Hasher::new_keyed(seed.as_bytes()).finalize_xof().fill(&mut chunk);
        Some((Ok(Bytes::from(chunk)), at + len))
    })
    .boxed()
}

async fn a_large_file_streams_in_and_out_without_buffering(t: &TestProvider) {
    let provider = &*t.provider;
    let size = large_size();
    let path = p("large/blob.bin");
    let expected = {
        let mut hasher = blake3::Hasher::new();
        let mut stream = generated(size);
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk.expect("chunk"));
        }
        hasher.finalize()
    };
    assert_eq!(provider.write(&path, generated(size)).await.expect("streamed write"), size);
    assert_eq!(provider.stat(&path).await.expect("stat").size, size);
    let mut hasher = blake3::Hasher::new();
    let mut stream = provider.read(&path, 0..size).await.expect("read");
    let mut largest = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        largest = largest.max(chunk.len());
        hasher.update(&chunk);
    }
    assert_eq!(hasher.finalize(), expected);
    assert!(
        largest <= 16 * 1024 * 1024,
        "a read chunk of {largest} bytes: the read is not streamed"
    );
}

async fn rename_moves_and_never_overwrites(t: &TestProvider) {
    let provider = &*t.provider;
    provider.write(&p("a/one.txt"), once("one")).await.expect("write");
    provider.write(&p("a/two.txt"), once("two")).await.expect("write");
    provider.rename(&p("a/one.txt"), &p("b/c/uno.txt")).await.expect("rename");
    assert_eq!(read_all(provider, &p("b/c/uno.txt"), 0..100).await, b"one");
    assert!(matches!(provider.stat(&p("a/one.txt")).await, Err(ProviderError::NotFound(_))));
    let refused = provider.rename(&p("a/two.txt"), &p("b/c/uno.txt")).await;
    assert!(matches!(refused, Err(ProviderError::AlreadyExists(_))), "{refused:?}");
    assert_eq!(read_all(provider, &p("b/c/uno.txt"), 0..100).await, b"one");
    assert_eq!(read_all(provider, &p("a/two.txt"), 0..100).await, b"two");
    let missing = provider.rename(&p("a/nope.txt"), &p("b/nope.txt")).await;
    assert!(matches!(missing, Err(ProviderError::NotFound(_))), "{missing:?}");
}

async fn delete_removes_and_is_idempotent(t: &TestProvider) {
    let provider = &*t.provider;
    provider.write(&p("d/x.txt"), once("x")).await.expect("write");
    provider.delete(&p("d/x.txt")).await.expect("delete");
    assert!(matches!(provider.stat(&p("d/x.txt")).await, Err(ProviderError::NotFound(_))));
    provider.delete(&p("d/x.txt")).await.expect("deleting again is fine");
    let listed: Vec<_> = provider.list(&ProviderPath::root()).try_collect().await.expect("list");
    assert!(listed.is_empty(), "{listed:?}");
}

async fn missing_paths_are_not_found(t: &TestProvider) {
    let provider = &*t.provider;
    let missing = p("no/such/file.txt");
    assert!(matches!(provider.stat(&missing).await, Err(ProviderError::NotFound(_))));
    assert!(matches!(
        provider.read(&missing, 0..10).await.err(),
        Some(ProviderError::NotFound(_))
    ));
}

async fn bad_credentials_are_refused(t: &TestProvider) {
    let refused = match t.kind {
        cloudsync_domain::ProviderKind::Local => {
            // A local root must exist; a folder outside the root cannot be reached through a link.
            let dir = t.local_dir().expect("local");
            assert!(matches!(
                t.with("root", "/no/such/folder/cloudsync").err(),
                Some(ProviderError::Invalid(_))
            ));
            let outside = dir.with_extension("outside");
            std::fs::create_dir_all(&outside).expect("mkdir");
            std::fs::write(outside.join("secret.txt"), "secret").expect("write");
            std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");
            let provider = &*t.provider;
            assert!(matches!(
                provider.stat(&p("link/secret.txt")).await,
                Err(ProviderError::PermissionDenied(_))
            ));
            assert!(matches!(
                provider.read(&p("link/secret.txt"), 0..10).await.err(),
                Some(ProviderError::PermissionDenied(_))
            ));
            assert!(matches!(
                provider.write(&p("link/new.txt"), once("x")).await,
                Err(ProviderError::PermissionDenied(_))
            ));
            assert!(matches!(
                provider.delete(&p("link/secret.txt")).await,
                Err(ProviderError::PermissionDenied(_))
            ));
            let listed: Vec<_> = provider.list(&ProviderPath::root()).try_collect().await.expect("list");
            assert!(listed.is_empty(), "symlinked folders are not followed: {listed:?}");
            assert!(outside.join("secret.txt").exists() && !outside.join("new.txt").exists());
            std::fs::remove_dir_all(outside).ok();
            return;
        }
        cloudsync_domain::ProviderKind::S3 if t.server == Server::S3Sigv4 => {
            let refused = t.with("secret_access_key", "wrong-secret").expect("opens").check().await;
            assert!(
                matches!(refused, Err(ProviderError::PermissionDenied(_))),
                "a wrong secret: {refused:?}"
            );
            let refused = t.with("access_key_id", "nobody").expect("opens").check().await;
            assert!(
                matches!(refused, Err(ProviderError::PermissionDenied(_))),
                "an unknown key: {refused:?}"
            );
            t.with("bucket", "cloudsync-no-such-bucket").expect("opens").check().await
        }
        // moto accepts any signature; an unknown bucket must still fail the round trip.
        cloudsync_domain::ProviderKind::S3 => t.with("bucket", "cloudsync-no-such-bucket").expect("opens").check().await,
        cloudsync_domain::ProviderKind::Webdav => t.with("password", "wrong password").expect("opens").check().await,
        cloudsync_domain::ProviderKind::Sftp => {
            let dir = std::env::temp_dir().join(format!("cloudsync-badkey-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).expect("dir");
            let key = dir.join("id_ed25519");
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .expect("ssh-keygen");
            assert!(made.success());
            let result = t.with("key", key.to_str().expect("utf-8")).expect("opens").check().await;
            std::fs::remove_dir_all(dir).ok();
            result
        }
        cloudsync_domain::ProviderKind::Azblob => {
            t.with(
                "account_key",
                "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==",
            )
            .expect("opens")
            .check()
            .await
        }
        other => panic!("no server for {other:?}"),
    };
    assert!(refused.is_err(), "a bad configuration passed the round trip");
}

async fn the_change_feed_reports_outside_changes_where_there_is_one(t: &TestProvider) {
    if let Some(dir) = t.local_dir() {
        std::fs::create_dir_all(dir.join("inbox")).expect("mkdir");
    }
    let feed = t.provider.changes().expect("the feed starts");
    let Some(dir) = t.local_dir() else {
        assert!(feed.is_none(), "{:?} has no change feed through OpenDAL", t.kind);
        return;
    };
    let mut feed = feed.expect("local folders have a change feed");
    // A change made outside CloudSync, below the root; a temporary file of CloudSync's own is not reported.
    std::fs::write(dir.join("inbox/.x.cloudsync-0000000000000001.tmp"), "partial").expect("write");
    std::fs::write(dir.join("inbox/new file.txt"), "from elsewhere").expect("write");
    let expected = p("inbox/new file.txt");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let change = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("the change is reported in time")
            .expect("the feed is open");
        let path = change.path.expect("a known path");
        assert!(!path.name().ends_with(".tmp"), "temporary files are not reported: {path}");
        if path == expected {
            break;
        }
    }
}

async fn ranged_writes_patch_a_file_where_they_are_offered(t: &TestProvider) {
    let provider = &*t.provider;
    let path = p("patched/data.bin");
    let original: Vec<u8> = (0..100_000_u32).map(|i| (i % 251) as u8).collect();
    provider.write(&path, once(original.clone())).await.expect("write");
    let ranges = vec![(10_u64, Bytes::from_static(b"ABCDE")), (99_990, Bytes::from_static(b"end, longer"))];
    let mut expected = original.clone();
    expected[10..15].copy_from_slice(b"ABCDE");
    expected.truncate(99_990);
    expected.extend_from_slice(b"end, longer");
    let checksum = blake3::hash(&expected).to_hex().to_string();
    if !provider.patches() {
        assert!(matches!(
            provider.patch(&path, 100_001, ranges, &checksum).await,
            Err(ProviderError::Unsupported(_))
        ));
        assert_eq!(
            read_all(provider, &path, 0..u64::MAX).await,
            original,
            "a refused patch changes nothing"
        );
        return;
    }
    // A checksum that the result would not have: refused, nothing changed.
    let wrong = blake3::hash(b"something else").to_hex().to_string();
    assert!(matches!(
        provider.patch(&path, 100_001, ranges.clone(), &wrong).await,
        Err(ProviderError::Invalid(_))
    ));
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, original);
    let written = provider.patch(&path, 100_001, ranges, &checksum).await.expect("patched");
    assert_eq!(written, 16);
    assert_eq!(expected.len(), 100_001);
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, expected);
    // Shrinking truncates; a missing file is not found and nothing is created.
    let short = blake3::hash(&expected[..20]).to_hex().to_string();
    provider.patch(&path, 20, Vec::new(), &short).await.expect("truncated");
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, expected[..20].to_vec());
    assert!(matches!(
        provider.patch(&p("nowhere.bin"), 5, Vec::new(), &short).await,
        Err(ProviderError::NotFound(_))
    ));
    let listed: Vec<_> = provider.list(&ProviderPath::root()).try_collect().await.expect("list");
    assert_eq!(listed.len(), 1, "no temporary file is left: {listed:?}");
}

async fn writes_in_place_change_only_their_ranges_where_they_are_offered(t: &TestProvider) {
    let provider = &*t.provider;
    let path = p("in-place/data.bin");
    let original: Vec<u8> = (0..100_000_u32).map(|i| (i % 251) as u8).collect();
    provider.write(&path, once(original.clone())).await.expect("write");
    let ranges = vec![(10_u64, Bytes::from_static(b"ABCDE")), (99_990, Bytes::from_static(b"end, longer"))];
    if !provider.writes_in_place() {
        assert!(matches!(
            provider.write_in_place(&path, 100_001, ranges).await,
            Err(ProviderError::Unsupported(_))
        ));
        assert_eq!(read_all(provider, &path, 0..u64::MAX).await, original, "nothing changed");
        return;
    }
    let mut expected = original.clone();
    expected[10..15].copy_from_slice(b"ABCDE");
    expected.truncate(99_990);
    expected.extend_from_slice(b"end, longer");
    assert_eq!(provider.write_in_place(&path, 100_001, ranges).await.expect("written"), 16);
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, expected);
    // Cut to a size, with nothing written; a missing file is not found and nothing is created.
    provider.write_in_place(&path, 20, Vec::new()).await.expect("cut");
    assert_eq!(read_all(provider, &path, 0..u64::MAX).await, expected[..20].to_vec());
    assert!(provider.write_in_place(&p("in-place/nowhere.bin"), 5, Vec::new()).await.is_err());
    let listed: Vec<_> = provider.list(&ProviderPath::root()).try_collect().await.expect("list");
    assert_eq!(listed.len(), 1, "no other file: {listed:?}");
}

async fn replace_moves_over_a_file_in_one_step(t: &TestProvider) {
    let provider = &*t.provider;
    let (new, old) = (p("swap/.new.tmp"), p("swap/data.txt"));
    provider.write(&old, once("old content")).await.expect("write");
    provider.write(&new, once("new content")).await.expect("write");
    provider.replace(&new, &old).await.expect("replaced");
    assert_eq!(read_all(provider, &old, 0..u64::MAX).await, b"new content");
    assert!(matches!(provider.stat(&new).await, Err(ProviderError::NotFound(_))));
    // Onto a path with no file, it is a move.
    provider.write(&new, once("moved")).await.expect("write");
    provider.replace(&new, &p("swap/deeper/moved.txt")).await.expect("moved");
    assert_eq!(read_all(provider, &p("swap/deeper/moved.txt"), 0..u64::MAX).await, b"moved");
    assert!(matches!(
        provider.replace(&p("swap/none"), &old).await,
        Err(ProviderError::NotFound(_))
    ));
    assert_eq!(
        read_all(provider, &old, 0..u64::MAX).await,
        b"new content",
        "a failed replace changes nothing"
    );
}

async fn unsynced_writes_replace_only_what_was_expected(t: &TestProvider) {
    let provider = &*t.provider;
    let (temp, file) = (p("guarded/.x.cloudsync-test.tmp"), p("guarded/data.txt"));
    provider.write(&file, once("listed")).await.expect("write");
    let listed = provider.stat(&file).await.expect("stat").tag();
    provider.write_unsynced(&temp, once("first copy")).await.expect("write");
    provider.flush(std::slice::from_ref(&temp)).await.expect("flushed");
    // Someone changed the file since it was listed: refused, nothing replaced.
    provider.write(&file, once("edited meanwhile, longer")).await.expect("write");
    assert!(matches!(
        provider.replace_if(&temp, &file, Some(&listed)).await,
        Err(ProviderError::AlreadyExists(_))
    ));
    assert_eq!(read_all(provider, &file, 0..u64::MAX).await, b"edited meanwhile, longer");
    let now = provider.stat(&file).await.expect("stat").tag();
    let replaced = provider.replace_if(&temp, &file, Some(&now)).await.expect("replaced");
    assert_eq!(replaced.tag(), provider.stat(&file).await.expect("stat").tag());
    assert_eq!(read_all(provider, &file, 0..u64::MAX).await, b"first copy");
    // Onto a path with no file, whatever was expected; several files are flushed at once.
    let (a, b) = (p("guarded/.a.cloudsync-test.tmp"), p("guarded/.b.cloudsync-test.tmp"));
    provider.write_unsynced(&a, once("a")).await.expect("write");
    provider.write_unsynced(&b, once("b")).await.expect("write");
    provider.flush(&[a.clone(), b.clone()]).await.expect("flushed");
    provider.replace_if(&a, &p("guarded/new/a.txt"), None).await.expect("moved");
    provider.replace_if(&b, &p("guarded/b.txt"), Some("whatever")).await.expect("moved");
    assert_eq!(read_all(provider, &p("guarded/new/a.txt"), 0..u64::MAX).await, b"a");
    assert_eq!(read_all(provider, &p("guarded/b.txt"), 0..u64::MAX).await, b"b");
}

async fn only_abandoned_writes_are_removed(t: &TestProvider) {
    let provider = &*t.provider;
    // A write in progress (its process, 1, runs; and it is new), one a killed process left long ago
    // (no such process; two days old), and a file of the user's, as old.
    let (in_progress, left, mine) = (
        p("w/.a.txt.cloudsync-1-0000000000000001.tmp"),
        p("w/deep/.b.zst.cloudsync-4294967294-0000000000000002.tmp"),
        p("w/deep/c.txt"),
    );
    for path in [&in_progress, &left, &mine] {
        provider.write(path, once("content")).await.expect("write");
    }
    // Where the test reaches the server's own files, it ages two of them.
    let backing = match t.server {
        Server::Local => t.local_dir().map(std::path::Path::to_path_buf),
        Server::Sftp => t.config.get("root").and_then(|root| root.as_str()).map(std::path::PathBuf::from),
        _ => None,
    };
    if let Some(root) = &backing {
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 60 * 60);
        for path in [&left, &mine] {
            let file = std::fs::File::options()
                .write(true)
                .open(root.join(path.as_str()))
                .expect("server's file");
            file.set_modified(long_ago).expect("aged");
        }
    }
    let removed = provider.remove_abandoned_writes(&p("w")).await.expect("cleaned");
    let expected = u64::from(backing.is_some());
    assert_eq!(removed, expected, "{:?}", t.server);
    assert!(provider.stat(&mine).await.is_ok(), "a file of the user's is never removed");
    assert_eq!(provider.stat(&left).await.is_ok(), expected == 0, "the abandoned write");
    assert_eq!(
        provider.list(&p("w")).try_collect::<Vec<_>>().await.expect("list").len(),
        if t.server == Server::Local {
            1
        } else {
            3 - usize::from(expected == 1)
        },
        "local listings leave temporary files out"
    );
    assert!(provider.stat(&in_progress).await.is_ok(), "a write in progress is left alone");
    // A folder that does not exist holds nothing to remove.
    assert_eq!(provider.remove_abandoned_writes(&p("nowhere")).await.expect("cleaned"), 0);
}

async fn conditional_writes_replace_only_the_expected_version(t: &TestProvider) {
    let provider = &*t.provider;
    let file = p("cond/data.txt");
    // Only where nothing is, when nothing is expected.
    provider.write_if(&file, once("first"), None).await.expect("a new file");
    assert!(matches!(
        provider.write_if(&file, once("second"), None).await,
        Err(ProviderError::AlreadyExists(_))
    ));
    assert_eq!(read_all(provider, &file, 0..u64::MAX).await, b"first");
    let listed = provider.stat(&file).await.expect("stat").tag();
    // Someone wrote meanwhile: refused, their content stays.
    provider.write(&file, once("someone else's, longer")).await.expect("write");
    assert!(matches!(
        provider.write_if(&file, once("ours"), Some(&listed)).await,
        Err(ProviderError::AlreadyExists(_))
    ));
    assert_eq!(read_all(provider, &file, 0..u64::MAX).await, b"someone else's, longer");
    // Over the version expected.
    let now = provider.stat(&file).await.expect("stat").tag();
    provider
        .write_if(&file, once("ours"), Some(&now))
        .await
        .expect("over the expected version");
    assert_eq!(read_all(provider, &file, 0..u64::MAX).await, b"ours");
    // Gone meanwhile, where a version was expected: changed too, and nothing is written.
    let now = provider.stat(&file).await.expect("stat").tag();
    provider.delete(&file).await.expect("delete");
    assert!(matches!(
        provider.write_if(&file, once("late"), Some(&now)).await,
        Err(ProviderError::AlreadyExists(_))
    ));
    assert!(matches!(provider.stat(&file).await, Err(ProviderError::NotFound(_))));
}
