//! Issue 19: a write in place (a 1% change of a 200 MiB file, written as only the bytes that
//! differ) killed at random points: each time the next run finds the file at the old or the new
//! version, or half-written and puts it back, and completes; every version kept on the way, each
//! only the bytes its change destroyed, restores byte for byte.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cloudsync;
use super::sync::{LOG, connect, gql, kill, random_from_clock, register, serve};

const SIZE: usize = 200 * 1024 * 1024;
const EDIT: usize = 4096;
/// Kills after the first (unkilled) change.
const KILLS: usize = 20;

fn hash(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path).expect("open")).expect("hashed");
    hasher.finalize().to_hex().to_string()
}

/// Changes 1% of the file in scattered 4 KiB blocks (deterministic in `round`).
fn change(path: &Path, round: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    let blocks = SIZE / 100 / EDIT;
    let mut state = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..blocks {
        let at = next() % (SIZE - EDIT) as u64;
        let bytes: Vec<u8> = (0..EDIT).map(|_| next() as u8).collect();
        file.write_all_at(&bytes, at).expect("edit");
    }
}

fn sync_once(data: &Path, pair: &str) -> std::process::Output {
    cloudsync(data).args(["sync", pair]).output().expect("sync")
}

#[test]
fn a_write_in_place_killed_at_random_points_leaves_the_old_or_the_new_file_and_every_version_restores() {
    let data = std::env::temp_dir().join(format!("cloudsync-patch-{}", uuid::Uuid::new_v4().simple()));
    let (a, b) = (data.with_extension("a"), data.with_extension("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let file = |side: &Path| side.join("big.bin");
    let mut noise = vec![0_u8; SIZE];
    for (i, block) in noise.chunks_mut(32).enumerate() {
        block.copy_from_slice(&blake3::hash(&(i as u64).to_le_bytes()).as_bytes()[..block.len()]);
    }
    std::fs::write(file(&a), &noise).expect("write");
    drop(noise);
    LOG.set(data.with_extension("log")).ok();

    let (server, addr) = serve(&data);
    let token = register(&addr);
    // The target takes 250 requests a second: each range written in place is one, so the write
    // of a change (about 500 ranges) lasts long enough for kills to land inside it.
    let (source, target) = (connect(&addr, &token, &a, None), connect(&addr, &token, &b, Some(250)));
    let pair = gql(
        &addr,
        &token,
        "mutation($s: ID!, $t: ID!) { createSyncPair(input: { source: { providerId: $s, path: \"\" }, target: { providerId: $t, path: \"\" }, keepVersions: 100 }) { id } }",
        serde_json::json!({ "s": source, "t": target }),
    );
    let pair_id = pair["createSyncPair"]["id"].as_str().expect("pair").to_owned();
    kill(server);
    let first = sync_once(&data, &pair_id);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let mut history = vec![hash(&file(&a))];
    assert_eq!(hash(&file(&b)), history[0], "the first run copies the file whole");

    // The first change, not killed: how long a run takes.
    change(&file(&a), 1);
    let started = Instant::now();
    let run = sync_once(&data, &pair_id);
    let took = started.elapsed();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    history.push(hash(&file(&a)));
    assert_eq!(hash(&file(&b)), history[1]);
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    let written: u64 = printed
        .split(" bytes written")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes written in {printed:?}"));
    assert!(
        written <= (SIZE / 100 * 2) as u64,
        "only the bytes that differ are written ({written} bytes): {printed}"
    );

    let (seed, mut random) = random_from_clock();
    let (mut old_seen, mut new_seen, mut halfway) = (0, 0, 0);
    let mut kills = Vec::new();
    for round in 0..KILLS as u64 {
        let old = history.last().cloned().expect("a version");
        change(&file(&a), round + 2);
        let new = hash(&file(&a));
        let mut killed = cloudsync(&data)
            .args(["sync", &pair_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sync");
        // The kill lands at a random point of the run: waiting is what this test is about.
        let delay = random(u64::try_from(took.as_millis()).unwrap_or(5_000).max(100));
        std::thread::sleep(Duration::from_millis(delay));
        let _ = killed.kill();
        killed.wait().expect("reaped");
        kills.push(delay);
        let found = hash(&file(&b));
        if found == old {
            old_seen += 1;
        } else if found == new {
            new_seen += 1;
        } else {
            halfway += 1;
        }
        let again = sync_once(&data, &pair_id);
        assert!(
            again.status.success(),
            "round {round}, killed after {delay} ms (seed {seed}): {}{}",
            String::from_utf8_lossy(&again.stdout),
            String::from_utf8_lossy(&again.stderr)
        );
        assert_eq!(
            hash(&file(&b)),
            new,
            "round {round}, killed after {delay} ms (seed {seed}): the next run completes the change"
        );
        history.push(new);
    }
    assert!(
        halfway >= 3,
        "kills inside the write: {halfway} (before it {old_seen}, after it {new_seen}; kills after {kills:?} ms, seed {seed})"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&b)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "big.bin")
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left: {leftovers:?}");

    // Every replaced version was kept, as what its change destroyed, and restores byte for byte.
    let (server, addr) = serve(&data);
    let token = super::sync::login(&addr);
    let versions = gql(
        &addr,
        &token,
        "query($p: ID!) { fileVersions(providerId: $p, path: \"big.bin\") { id checksum } }",
        serde_json::json!({ "p": target }),
    )["fileVersions"]
        .as_array()
        .cloned()
        .expect("versions");
    let kept: Vec<String> = versions
        .iter()
        .map(|v| v["checksum"].as_str().expect("checksum").to_owned())
        .collect();
    for earlier in &history[..history.len() - 1] {
        assert!(kept.contains(earlier), "version {earlier} is kept: {kept:?}");
    }
    let chunks = dir_size(&data.join("chunks"));
    assert!(
        chunks < (SIZE / 100 * 3 * history.len()) as u64,
        "{} versions take {chunks} bytes in the chunk store: about what their changes destroyed, not copies",
        history.len() - 1
    );
    eprintln!(
        "kills: {halfway} inside the write, {old_seen} before it, {new_seen} after it (after {kills:?} ms, seed {seed}); \
         {} versions in {chunks} bytes of the chunk store; a change wrote {written} bytes",
        history.len() - 1
    );
    for version in &versions {
        let (id, checksum) = (version["id"].as_str().expect("id"), version["checksum"].as_str().expect("checksum"));
        let restored = gql(
            &addr,
            &token,
            "mutation($v: ID!) { restoreFileVersion(versionId: $v) { side operation { id } } }",
            serde_json::json!({ "v": id }),
        );
        let side = restored["restoreFileVersion"]["side"].as_str().expect("side");
        let on = if side == "target" { file(&b) } else { file(&a) };
        assert_eq!(hash(&on), checksum, "version {id} restores byte for byte");
        if let Some(operation) = restored["restoreFileVersion"]["operation"]["id"].as_str() {
            let outcome = super::sync::ended(&addr, &token, operation, Duration::from_secs(300), "the run after a restore");
            assert_eq!(outcome["status"], "completed", "{outcome}");
        }
    }
    kill(server);
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
    let _ = std::fs::remove_dir_all(&data);
}

fn dir_size(root: &Path) -> u64 {
    walk(root).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
