//! The models against their files (installed by `scripts/models` into `CLOUDSYNC_TEST_MODELS`).

mod text;

use std::path::PathBuf;

/// The models directory the tests load from. Under `CI=true` a missing model fails the test run;
/// elsewhere the tests that need it say so and pass (run `scripts/models` to get it).
pub fn models_dir(model: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CLOUDSYNC_TEST_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/cloudsync/models")))?
        .join(model);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the model {model} is not in {} (scripts/models installs it)",
        dir.display()
    );
    eprintln!("skipped: the model {model} is not in {} (run scripts/models)", dir.display());
    None
}
