//! What SFTP can do that OpenDAL does not offer: ranged writes. A session of its own (OpenSSH's
//! client, as OpenDAL uses) writes ranges over the file where it lies (`write_in_place`, for the
//! sync engine's writes in place, which keep what they overwrite first), or copies the old file to a
//! temporary name on the server (the `copy-data` extension, OpenSSH 9.0 and later), writes the
//! changed ranges into the copy, reads the copy back to check it has the planned content, and
//! renames it over the file (`posix-rename`). Only the changed ranges travel to the server.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cloudsync_domain::ProviderPath;
use openssh::{KnownHosts, SessionBuilder};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use serde_json::{Map, Value};
use tokio::io::AsyncSeekExt;
use tokio::sync::Mutex;

use crate::ProviderError;

/// How much is read back at once to check a patched file.
const READ_BACK: u32 = 256 * 1024;

fn error(err: SftpError) -> ProviderError {
    let message = err.to_string();
    match &err {
        SftpError::SftpError(SftpErrorKind::NoSuchFile, _) => ProviderError::NotFound(message),
        SftpError::SftpError(SftpErrorKind::PermDenied, _) => ProviderError::PermissionDenied(message),
        SftpError::UnsupportedExtension(_) | SftpError::UnsupportedSftpProtocol { .. } => ProviderError::Unsupported(message),
        _ => ProviderError::Other(message),
    }
}

/// An SFTP server's own session, opened on first use and kept.
pub(crate) struct SftpDirect {
    endpoint: String,
    user: Option<String>,
    key: Option<String>,
    known_hosts: KnownHosts,
    root: PathBuf,
    session: Mutex<Option<Arc<Sftp>>>,
}

impl SftpDirect {
    /// From the provider's settings (checked by the caller).
    pub(crate) fn new(config: &Map<String, Value>) -> Self {
        let text = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_owned);
        let known_hosts = match text("known_hosts_strategy").as_deref() {
            Some("strict") => KnownHosts::Strict,
            Some("add") => KnownHosts::Add,
            _ => KnownHosts::Accept,
        };
        Self {
            endpoint: text("endpoint").unwrap_or_default(),
            user: text("user"),
            key: text("key"),
            known_hosts,
            root: PathBuf::from(text("root").unwrap_or_default()),
            session: Mutex::new(None),
        }
    }

    async fn sftp(&self) -> Result<Arc<Sftp>, ProviderError> {
        let mut session = self.session.lock().await;
        if let Some(sftp) = session.as_ref() {
            return Ok(Arc::clone(sftp));
        }
        let mut builder = SessionBuilder::default();
        if let Some(user) = &self.user {
            builder.user(user.clone());
        }
        if let Some(key) = &self.key {
            builder.keyfile(key);
        }
        builder.known_hosts_check(self.known_hosts.clone());
        let ssh = builder
            .connect(&self.endpoint)
            .await
            .map_err(|err| ProviderError::Temporary(format!("ssh: {err}")))?;
        let sftp = Arc::new(Sftp::from_session(ssh, SftpOptions::default()).await.map_err(error)?);
        *session = Some(Arc::clone(&sftp));
        Ok(sftp)
    }

    fn full(&self, path: &ProviderPath) -> PathBuf {
        self.root.join(path.as_str())
    }

    /// See [`crate::StorageProvider::write_in_place`].
    pub(crate) async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>) -> Result<u64, ProviderError> {
        let sftp = self.sftp().await?;
        let mut file = sftp.options().write(true).open(self.full(path)).await.map_err(error)?;
        let written = write_ranges(&mut file, &ranges, size).await?;
        file.close().await.map_err(error)?;
        Ok(written)
    }

    /// See [`crate::StorageProvider::patch`].
    pub(crate) async fn patch(
        &self,
        path: &ProviderPath,
        size: u64,
        ranges: Vec<(u64, Bytes)>,
        checksum: &str,
    ) -> Result<u64, ProviderError> {
        let sftp = self.sftp().await?;
        if !sftp.support_copy() {
            return Err(ProviderError::Unsupported(
                "this SFTP server cannot copy data itself (copy-data)".into(),
            ));
        }
        let target = self.full(path);
        let temp = target.with_file_name(format!(".cloudsync-patch-{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut source = sftp.open(&target).await.map_err(error)?;
        let patched = async {
            let mut copy = sftp
                .options()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&temp)
                .await
                .map_err(error)?;
            // The server copies the unchanged bytes; only the ranges cross the network.
            source.copy_all_to(&mut copy).await.map_err(error)?;
            let written = write_ranges(&mut copy, &ranges, size).await?;
            // Only the planned content replaces the file.
            copy.seek(SeekFrom::Start(0)).await?;
            let mut hasher = blake3::Hasher::new();
            let mut buffer = BytesMut::new();
            while let Some(read) = copy.read(READ_BACK, buffer).await.map_err(error)? {
                hasher.update(&read);
                buffer = read;
                buffer.clear();
            }
            copy.close().await.map_err(error)?;
            if hasher.finalize().to_hex().as_str() != checksum {
                return Err(ProviderError::Invalid(
                    "the patched file does not have the planned content (the old file was not the expected version)".into(),
                ));
            }
            sftp.fs().rename(&temp, &target).await.map_err(error)?;
            Ok(written)
        }
        .await;
        drop(source);
        if patched.is_err() {
            let _ = sftp.fs().remove_file(&temp).await;
        }
        patched
    }
}

/// Writes `ranges` into `file` where they lie, cuts or extends it to `size`, and syncs it where the
/// server can; returns the bytes written.
async fn write_ranges(file: &mut openssh_sftp_client::file::File, ranges: &[(u64, Bytes)], size: u64) -> Result<u64, ProviderError> {
    let mut written = 0;
    for (offset, bytes) in ranges {
        file.seek(SeekFrom::Start(*offset)).await?;
        file.write_all(bytes).await.map_err(error)?;
        written += bytes.len() as u64;
    }
    file.set_len(size).await.map_err(error)?;
    file.sync_all().await.or_else(|err| match err {
        // fsync@openssh.com is optional.
        SftpError::UnsupportedExtension(_) => Ok(()),
        err => Err(error(err)),
    })?;
    Ok(written)
}
