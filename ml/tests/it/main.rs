//! The models against their files (installed by `scripts/models` into `CLOUDSYNC_TEST_MODELS`).

mod labels;
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

/// A photograph of scikit-image's sample data (`scripts/sample-photos` into `CLOUDSYNC_TEST_PHOTOS`),
/// as RGB bytes with its size; like [`models_dir`], missing only outside CI.
pub fn photo(name: &str) -> Option<(Vec<u8>, u32, u32)> {
    let path = std::env::var_os("CLOUDSYNC_TEST_PHOTOS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/cloudsync/photos")))?
        .join(name);
    let Ok(picture) = image::open(&path) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the photograph {} is missing (scripts/sample-photos unpacks it)",
            path.display()
        );
        eprintln!("skipped: the photograph {} is missing (run scripts/sample-photos)", path.display());
        return None;
    };
    let picture = picture.to_rgb8();
    let (width, height) = picture.dimensions();
    Some((picture.into_raw(), width, height))
}
