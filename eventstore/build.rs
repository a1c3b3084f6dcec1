//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding a migration would not
//! rebuild the crate (a reused target directory would run the old set). Besides watching the
//! folders, the set's names and sizes become an environment value of the crate's compilation, so
//! the crate is rebuilt whenever the set differs from the one it was built with, even when a target
//! directory is shared by several checkouts whose files have older modification times.
use std::path::Path;

fn main() {
    let mut stamp = Vec::new();
    for backend in ["postgres", "sqlite"] {
        let folder = Path::new("../migrations").join(backend);
        println!("cargo:rerun-if-changed={}", folder.display());
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        let mut files: Vec<(String, u64)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
            .collect();
        files.sort();
        for (name, size) in files {
            println!("cargo:rerun-if-changed={}", folder.join(&name).display());
            stamp.push(format!("{backend}/{name}:{size}"));
        }
    }
    println!("cargo:rustc-env=CLOUDSYNC_MIGRATIONS={}", stamp.join(","));
}
