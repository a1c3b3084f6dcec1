//! The local-folder provider's storage access, confined to its root: every path is a
//! [`ProviderPath`] (no `..`, NUL or absolute escapes by construction) and every host path is checked
//! after resolution, so a symlink inside the root cannot lead outside it.

use std::io;
use std::path::{Path, PathBuf};

use cloudsync_domain::ProviderPath;

use crate::CommandError;

/// A local folder that a provider connection is confined to.
#[derive(Debug, Clone)]
pub struct LocalRoot {
    root: PathBuf,
}

impl LocalRoot {
    /// Opens a root given by the user: it must be an absolute path to an existing folder.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] when the path is relative, missing or not a folder.
    pub fn open(raw: &str) -> Result<Self, CommandError> {
        if raw.contains('\0') {
            return Err(CommandError::Invalid("the root contains a NUL byte".into()));
        }
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(CommandError::Invalid(format!("the root {raw:?} must be an absolute path")));
        }
        let root = std::fs::canonicalize(path)
            .map_err(|err| CommandError::Invalid(format!("the root {raw:?} cannot be opened: {err}")))?;
        if !root.is_dir() {
            return Err(CommandError::Invalid(format!("the root {raw:?} is not a folder")));
        }
        Ok(Self { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The host path of `path`, without touching the disk.
    pub fn host_path(&self, path: &ProviderPath) -> PathBuf {
        path.components().fold(self.root.clone(), |acc, part| acc.join(part))
    }

    /// Checks that `host` (which must exist) resolves inside the root.
    fn confined(&self, host: &Path) -> Result<(), CommandError> {
        let resolved = std::fs::canonicalize(host).map_err(|err| storage(host, &err))?;
        if resolved.starts_with(&self.root) {
            Ok(())
        } else {
            Err(CommandError::Invalid("the path leads outside the provider's root".into()))
        }
    }

    /// The host path of an existing regular file (not a symlink) inside the root.
    fn existing_file(&self, path: &ProviderPath) -> Result<PathBuf, CommandError> {
        let host = self.host_path(path);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(CommandError::Invalid(format!("{path} is a symbolic link")));
            }
            Ok(meta) if !meta.is_file() => return Err(CommandError::Invalid(format!("{path} is not a file"))),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(CommandError::NotFound("file")),
            Err(err) => return Err(storage(&host, &err)),
        }
        self.confined(host.parent().unwrap_or(&self.root))?;
        Ok(host)
    }

    /// Moves a file inside the root, creating the destination folder. Refuses to overwrite.
    ///
    /// # Errors
    /// Not found, a destination in the way, a path leading outside the root, or an I/O error.
    pub fn move_file(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), CommandError> {
        let source = self.existing_file(from)?;
        let target = self.host_path(to);
        let folder = target.parent().unwrap_or(&self.root).to_path_buf();
        // Check the part of the destination folder that exists before creating anything.
        let mut existing = folder.clone();
        while !existing.exists() {
            if !existing.pop() {
                break;
            }
        }
        self.confined(&existing)?;
        std::fs::create_dir_all(&folder).map_err(|err| storage(&folder, &err))?;
        self.confined(&folder)?;
        if std::fs::symlink_metadata(&target).is_ok() {
            return Err(CommandError::Conflict(format!("{to} already exists")));
        }
        std::fs::rename(&source, &target).map_err(|err| storage(&target, &err))
    }

    /// Deletes a file inside the root. A file that is already gone counts as deleted.
    ///
    /// # Errors
    /// A path leading outside the root, or an I/O error.
    pub fn delete_file(&self, path: &ProviderPath) -> Result<(), CommandError> {
        let host = match self.existing_file(path) {
            Ok(host) => host,
            Err(CommandError::NotFound(_)) => return Ok(()),
            Err(other) => return Err(other),
        };
        match std::fs::remove_file(&host) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(storage(&host, &err)),
            _ => Ok(()),
        }
    }
}

fn storage(path: &Path, err: &io::Error) -> CommandError {
    CommandError::Storage(format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cloudsync-local-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn p(raw: &str) -> ProviderPath {
        ProviderPath::parse(raw).expect("valid path")
    }

    #[test]
    fn relative_and_missing_roots_are_refused() {
        assert!(matches!(LocalRoot::open("relative/dir"), Err(CommandError::Invalid(_))));
        assert!(matches!(LocalRoot::open("/definitely/not/here/cloudsync"), Err(CommandError::Invalid(_))));
    }

    #[test]
    fn moves_stay_inside_the_root_and_never_overwrite() {
        let dir = temp();
        std::fs::write(dir.join("a.txt"), b"a").expect("write");
        std::fs::write(dir.join("b.txt"), b"b").expect("write");
        let root = LocalRoot::open(dir.to_str().expect("utf-8")).expect("root");
        root.move_file(&p("a.txt"), &p("sub/dir/a.txt")).expect("moved");
        assert_eq!(std::fs::read(dir.join("sub/dir/a.txt")).expect("read"), b"a");
        let refused = root.move_file(&p("b.txt"), &p("sub/dir/a.txt"));
        assert!(matches!(refused, Err(CommandError::Conflict(_))), "{refused:?}");
        assert_eq!(std::fs::read(dir.join("sub/dir/a.txt")).expect("read"), b"a");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let dir = temp();
        let outside = temp();
        std::fs::write(outside.join("secret.txt"), b"s").expect("write");
        std::os::unix::fs::symlink(&outside, dir.join("escape")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("link.txt")).expect("symlink");
        std::fs::write(dir.join("a.txt"), b"a").expect("write");
        let root = LocalRoot::open(dir.to_str().expect("utf-8")).expect("root");
        assert!(matches!(root.delete_file(&p("escape/secret.txt")), Err(CommandError::Invalid(_))));
        assert!(matches!(root.delete_file(&p("link.txt")), Err(CommandError::Invalid(_))));
        assert!(matches!(root.move_file(&p("a.txt"), &p("escape/a.txt")), Err(CommandError::Invalid(_))));
        assert!(outside.join("secret.txt").exists());
        assert!(dir.join("a.txt").exists());
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(outside).ok();
    }
}
