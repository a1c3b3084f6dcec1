//! Issue 16: the search projector keeps its checkpoint with the index. The server is killed
//! (SIGKILL) at random points while it indexes a scan and the contents the pipeline reads, and started
//! again each time; the index then holds every file exactly once, by name and by contents.

use std::time::{Duration, Instant};

use super::sync::{LOG, connect, gql, kill, login, random_from_clock, register, serve};

const FILES: usize = 3000;

fn total(addr: &str, token: &str, query: &str) -> u64 {
    let data = gql(
        addr,
        token,
        "query($q: String!) { searchFiles(query: $q, first: 1) { total } }",
        serde_json::json!({ "q": query }),
    );
    data["searchFiles"]["total"].as_u64().expect("total")
}

#[test]
fn a_killed_search_projector_resumes_without_losing_or_doubling_a_document() {
    let data = std::env::temp_dir().join(format!("cloudsync-search-kill-{}", uuid::Uuid::new_v4().simple()));
    let root = data.with_extension("files");
    for i in 0..FILES {
        let path = root.join(format!("dir{}/note-{i}-zebra.txt", i % 30));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("quokka number {i}\n")).expect("write");
    }
    LOG.set(data.with_extension("log")).ok();

    let (server, addr) = serve(&data);
    let mut token = register(&addr);
    connect(&addr, &token, &root, None);

    let (seed, mut random) = random_from_clock();
    let (mut server, mut addr) = (server, addr);
    let (mut kills, mut seen) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        // The kill lands at a random point of the indexing: waiting is what this test is about.
        let delay = 100 + random(900);
        std::thread::sleep(Duration::from_millis(delay));
        kill(server);
        kills.push(delay);
        (server, addr) = serve(&data);
        token = login(&addr);
        let (names, contents) = (total(&addr, &token, "zebra"), total(&addr, &token, "quokka"));
        assert!(
            names <= FILES as u64 && contents <= FILES as u64,
            "after kills at {kills:?} ms (seed {seed}) the index holds more documents than files: {names} by name, {contents} by contents"
        );
        seen.push((names, contents));
    }
    assert!(
        seen.iter()
            .any(|&(names, contents)| names < FILES as u64 || contents < FILES as u64),
        "no kill landed before the index was complete (kills after {kills:?} ms, found {seen:?})"
    );

    // Then it finishes, with every file exactly once.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (names, contents) = (total(&addr, &token, "zebra"), total(&addr, &token, "quokka"));
        assert!(
            names <= FILES as u64 && contents <= FILES as u64,
            "after kills at {kills:?} ms (seed {seed}): {names} by name, {contents} by contents, of {FILES} files"
        );
        if names == FILES as u64 && contents == FILES as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after kills at {kills:?} ms (seed {seed}) the index stopped at {names} by name and {contents} by contents, of {FILES}"
        );
        // The server is another process with nothing this test could wait on: it asks again.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        total(&addr, &token, "ext:txt"),
        FILES as u64,
        "kills after {kills:?} ms (seed {seed})"
    );
    assert_eq!(total(&addr, &token, "note 1234 zebra"), 1, "kills after {kills:?} ms (seed {seed})");
    kill(server);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&root);
}
