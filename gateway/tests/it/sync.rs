//! Issue 4: a sync run survives the process being killed at random points, and `cloudsync sync` runs
//! pairs from the command line.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Running, announced_address, cloudsync, post_as};

/// Every file below `root` (relative path → BLAKE3), temporary files included.
pub(super) fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(root).expect("inside").to_string_lossy().into_owned();
                out.insert(relative, blake3::hash(&std::fs::read(&path).expect("read")).to_hex().to_string());
            }
        }
    }
    out
}

/// Incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0_u64;
    while out.len() < len {
        out.extend_from_slice(blake3::hash(&[seed.to_le_bytes(), counter.to_le_bytes()].concat()).as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The servers' log, kept beside the data dir for a failing run's post-mortem.
fn log(data: &Path) -> Stdio {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .expect("log file");
    Stdio::from(file)
}

pub(super) fn serve(data: &Path) -> (Running, String) {
    let mut child = cloudsync(data)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log(data))
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let addr = announced_address(stdout);
    (running, addr)
}

/// Where the servers of the data dir `data` log.
pub(super) static LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

pub(super) fn gql(addr: &str, token: &str, query: &str, variables: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({ "query": query, "variables": variables });
    let sent = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .json(&body)
        .send();
    let response: serde_json::Value = match sent.and_then(reqwest::blocking::Response::json) {
        Ok(response) => response,
        Err(error) => {
            let log = LOG.get().and_then(|path| std::fs::read_to_string(path).ok()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{error}; the servers' log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    assert!(response.get("errors").is_none(), "{response}");
    response["data"].clone()
}

/// Connects a local folder; `rate` caps its requests per second (so that a run lasts long enough to
/// be killed in the middle).
pub(super) fn connect(addr: &str, token: &str, root: &Path, rate: Option<u32>) -> String {
    let mut settings = serde_json::json!({ "root": root });
    if let Some(rate) = rate {
        settings["max_requests_per_second"] = rate.into();
    }
    let data = gql(
        addr,
        token,
        "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id } }",
        serde_json::json!({ "c": settings }),
    );
    data["connectProvider"]["id"].as_str().expect("provider").to_owned()
}

/// The operation's state once it has ended. The server is another process with nothing this test
/// could wait on, so it asks every 100 ms.
pub(super) fn ended(addr: &str, token: &str, operation: &str, within: Duration, context: &str) -> serde_json::Value {
    let query = "query($o: ID!) { syncStatus(operationId: $o) { status filesDone error } }";
    let deadline = Instant::now() + within;
    loop {
        let now = gql(addr, token, query, serde_json::json!({ "o": operation }))["syncStatus"].clone();
        if matches!(now["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return now;
        }
        assert!(Instant::now() < deadline, "the operation did not end ({context}): {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Registers the test's user on a fresh server: its access token.
pub(super) fn register(addr: &str) -> String {
    signed_in(addr, "register")
}

/// Signs the test's user in with `mutation` (`register` or `login`): its access token.
fn signed_in(addr: &str, mutation: &str) -> String {
    let body = serde_json::json!({
        "query": format!("mutation {{ {mutation}(email: \"kill@example.org\", password: \"correct horse battery\") {{ accessToken }} }}")
    });
    let answer = post_as(addr, None, &body.to_string());
    answer["data"][mutation]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned()
}

/// A seed from the clock (printed by a failing test, to replay it) and numbers below a bound drawn from it.
pub(super) fn random_from_clock() -> (u64, impl FnMut(u64) -> u64) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut state = seed | 1;
    let random = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    (seed, random)
}

pub(super) fn login(addr: &str) -> String {
    signed_in(addr, "login")
}

pub(super) fn kill(server: Running) {
    let mut server = server;
    let _ = server.0.kill();
    let _ = server.0.wait();
}

#[test]
fn a_killed_sync_resumes_and_ends_with_both_sides_correct() {
    let data = std::env::temp_dir().join(format!("cloudsync-kill-{}", uuid::Uuid::new_v4().simple()));
    let (a, b, c) = (data.with_extension("a"), data.with_extension("b"), data.with_extension("c"));
    for (i, len) in (0..240).map(|i| (i, 8 * 1024 + i * 211)) {
        let path = a.join(format!("dir{}/file-{i}.bin", i % 12));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, noise(len, i as u64)).expect("write");
    }
    for i in 0..3 {
        std::fs::write(a.join(format!("large-{i}.bin")), noise(12 * 1024 * 1024, 1000 + i)).expect("write");
    }
    std::fs::create_dir_all(&b).expect("mkdir");
    std::fs::create_dir_all(&c).expect("mkdir");
    LOG.set(data.with_extension("log")).ok();

    let (server, addr) = serve(&data);
    let mut token = register(&addr);
    let (source, target, third) = (
        connect(&addr, &token, &a, None),
        connect(&addr, &token, &b, Some(150)),
        connect(&addr, &token, &c, None),
    );
    let pair = gql(
        &addr,
        &token,
        "mutation($s: ID!, $t: ID!) { syncFolders(source: { providerId: $s, path: \"\" }, target: { providerId: $t, path: \"\" }) { id pair { id } } }",
        serde_json::json!({ "s": source, "t": target }),
    );
    let pair_id = pair["syncFolders"]["pair"]["id"].as_str().expect("pair").to_owned();
    let operation = pair["syncFolders"]["id"].as_str().expect("run").to_owned();

    // Kill the server at random points of the run, and start it again each time.
    let (seed, mut random) = random_from_clock();
    let status = serde_json::json!({ "o": operation });
    let query = "query($o: ID!) { syncStatus(operationId: $o) { status filesDone error } }";
    let (mut server, mut addr) = (server, addr);
    let (mut kills, mut interrupted) = (Vec::new(), 0);
    for _ in 0..4 {
        // The kill lands at a random point of the run: waiting is what this test is about.
        let delay = 50 + random(700);
        std::thread::sleep(Duration::from_millis(delay));
        kill(server);
        kills.push(delay);
        (server, addr) = serve(&data);
        // Sessions live in the process's memory by default: a restart signs everyone out.
        token = login(&addr);
        // What the log said when the process died: a run that had not ended was interrupted.
        let seen = gql(&addr, &token, query, status.clone())["syncStatus"].clone();
        if !matches!(seen["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            interrupted += 1;
        }
    }
    let outcome = ended(
        &addr,
        &token,
        &operation,
        Duration::from_secs(120),
        &format!("kills after {kills:?} ms, seed {seed}"),
    );
    assert_eq!(outcome["status"], "completed", "kills after {kills:?} ms (seed {seed}): {outcome}");
    assert!(interrupted >= 1, "no kill landed during the run (kills after {kills:?} ms)");
    let (source_tree, target_tree) = (tree(&a), tree(&b));
    assert_eq!(source_tree.len(), 243, "the source is untouched");
    assert_eq!(
        target_tree, source_tree,
        "after kills at {kills:?} ms (seed {seed}) the target holds exactly the source: no partial, missing, extra or temporary file"
    );

    // The recorded base is what both sides hold: another run finds nothing to do.
    let again = gql(
        &addr,
        &token,
        "mutation($p: ID!) { runSync(pairId: $p) { id } }",
        serde_json::json!({ "p": pair_id }),
    );
    let again = again["runSync"]["id"].as_str().expect("run").to_owned();
    let idle = ended(&addr, &token, &again, Duration::from_secs(60), "the run after the resumed one");
    assert_eq!(idle["status"], "completed", "{idle}");
    assert_eq!(
        idle["filesDone"], 0,
        "the base agrees with both sides after the resumed run: {idle}"
    );
    kill(server);

    // The event log replays into the same read models.
    let rebuild = cloudsync(&data).args(["projections", "rebuild", "all"]).output().expect("rebuild");
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));

    // `cloudsync sync` with the server stopped: a run of the pair, then a new pair, with results.
    std::fs::write(a.join("added-later.txt"), "later").expect("write");
    let run = cloudsync(&data).args(["sync", &pair_id]).output().expect("sync");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("completed: 1 changes, 5 bytes brought across, 5 bytes written"),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    assert_eq!(std::fs::read(b.join("added-later.txt")).expect("copied"), b"later");

    // A `cloudsync sync` killed in the middle of its run: the next one carries that run on (the
    // killed process's job lease is let go at once: it was a process of this machine that is
    // gone), and ends with both sides equal.
    let more = |round: u64| {
        for i in 0..100 {
            let path = a.join(format!("more{}/more-{round}-{i}.bin", i % 5));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, noise(4096, 5000 + round * 100 + i)).expect("write");
        }
    };
    // The target is rate-limited (150 requests a second): 100 copies take a few seconds.
    let copied = |round: u64| {
        (0..5)
            .filter_map(|d| std::fs::read_dir(b.join(format!("more{d}"))).ok())
            .flatten()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&format!("more-{round}-")))
            })
            .count()
    };
    let until_copying = |round: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while copied(round) == 0 {
            assert!(Instant::now() < deadline, "{what} copied nothing within a minute");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let completed_run = |out: &std::process::Output| -> String {
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
        printed
            .split("Sync ")
            .nth(1)
            .and_then(|rest| rest.split(" completed").next())
            .unwrap_or_else(|| panic!("no completed run in {printed:?}"))
            .to_owned()
    };
    more(1);
    let mut interrupted_cli = cloudsync(&data)
        .args(["sync", &pair_id])
        .stdout(Stdio::null())
        .spawn()
        .expect("sync");
    until_copying(1, "the first `cloudsync sync`");
    interrupted_cli.kill().expect("SIGKILL");
    interrupted_cli.wait().expect("reaped");
    assert!(copied(1) < 100, "the run was killed before its end ({} of 100 copied)", copied(1));
    let carried = cloudsync(&data).args(["sync", &pair_id]).output().expect("sync");
    let printed = String::from_utf8_lossy(&carried.stdout).into_owned();
    let run = completed_run(&carried);
    assert!(
        printed.contains(&format!("Carrying on run {run} of this pair, which has not ended.")),
        "the interrupted run is carried on, not refused or started anew: {printed}"
    );
    assert_eq!(
        tree(&b),
        tree(&a),
        "after the carried-on run: no partial, missing or temporary file"
    );

    // Two at once: the second stands by while the first holds the run, and both see it end.
    more(2);
    let first = cloudsync(&data)
        .args(["sync", &pair_id])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sync");
    until_copying(2, "the first of two `cloudsync sync`s");
    let second = cloudsync(&data).args(["sync", &pair_id]).output().expect("sync");
    let first = first.wait_with_output().expect("first");
    let (first_run, second_run) = (completed_run(&first), completed_run(&second));
    assert_eq!(first_run, second_run, "one run, followed by both");
    assert!(String::from_utf8_lossy(&second.stdout).contains(&format!("Carrying on run {first_run}")));
    assert_eq!(tree(&b), tree(&a));
    let created = cloudsync(&data)
        .args([
            "sync",
            "--source",
            &format!("{source}:dir3"),
            "--target",
            &format!("{third}:copy"),
            "--mode",
            "mirror",
        ])
        .output()
        .expect("sync");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let printed = String::from_utf8_lossy(&created.stdout);
    assert!(
        printed.contains("Created sync pair") && printed.contains("completed: 20 changes"),
        "{printed}"
    );
    assert_eq!(tree(&c.join("copy")), tree(&a.join("dir3")));
    for bad in [
        vec!["sync", "--source", "nonsense", "--target", "x"],
        vec!["sync", "--source", &format!("{source}:../up"), "--target", &format!("{third}:")],
        vec![
            "sync",
            "--source",
            &format!("{source}:"),
            "--target",
            &format!("{third}:"),
            "--mode",
            "sideways",
        ],
        vec!["sync", "00000000-0000-0000-0000-000000000000"],
    ] {
        let refused = cloudsync(&data).args(&bad).output().expect("sync");
        assert!(!refused.status.success(), "{bad:?} was accepted");
    }
    for folder in [&data, &a, &b, &c] {
        std::fs::remove_dir_all(folder).ok();
    }
    std::fs::remove_file(data.with_extension("log")).ok();
}
