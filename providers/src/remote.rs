//! Every remote kind through Apache OpenDAL: one operator per connection, with a retry layer
//! (exponential backoff with jitter for temporary failures: timeouts, throttling, 5xx) and a timeout
//! layer. Writes stream in chunks (multipart where the service has it), so a large file is never held
//! in memory.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{Operator, services};
use serde_json::{Map, Value};

use crate::{ByteStream, Entry, ProviderError, StorageProvider};

/// Write chunk: S3 multipart parts must be at least 5 MiB.
const WRITE_CHUNK: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct RemoteProvider {
    kind: ProviderKind,
    op: Operator,
    /// The same operator with a short retry budget, for `check`.
    probe: Operator,
    /// OpenDAL's WebDAV writer sends a file in one request from one buffer; uploads stream through
    /// this instead (one PUT whose body is the stream), so a large file never sits in memory.
    webdav: Option<WebdavUpload>,
    /// SFTP's own session, for ranged writes.
    sftp: Option<Arc<crate::sftp::SftpDirect>>,
}

#[derive(Clone)]
struct WebdavUpload {
    client: reqwest::Client,
    /// Endpoint and root, ending in `/`.
    base: String,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// Percent-encodes one path component for a URL.
fn encode_component(component: &str) -> String {
    let mut encoded = String::with_capacity(component.len());
    for byte in component.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl WebdavUpload {
    fn new(config: &Map<String, Value>) -> Self {
        let text = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_owned);
        let endpoint = text("endpoint").unwrap_or_default();
        let root: Vec<String> = text("root")
            .unwrap_or_default()
            .split('/')
            .filter(|p| !p.is_empty())
            .map(encode_component)
            .collect();
        let mut base = endpoint.trim_end_matches('/').to_owned();
        base.push('/');
        for part in root {
            base.push_str(&part);
            base.push('/');
        }
        Self {
            client: reqwest::Client::new(),
            base,
            username: text("username"),
            password: text("password"),
            token: text("token"),
        }
    }

    async fn put(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        let url = format!(
            "{}{}",
            self.base,
            path.components().map(encode_component).collect::<Vec<_>>().join("/")
        );
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = std::sync::Arc::clone(&written);
        let body = data.inspect_ok(move |chunk| {
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        });
        let mut request = self.client.put(url).body(reqwest::Body::wrap_stream(body));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        } else if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        let response = request.send().await.map_err(|err| {
            if err.is_timeout() || err.is_connect() {
                ProviderError::Temporary(err.to_string())
            } else {
                ProviderError::Other(err.to_string())
            }
        })?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(written.load(std::sync::atomic::Ordering::Relaxed)),
            401 | 403 => Err(ProviderError::PermissionDenied(format!("PUT {path}: HTTP {status}"))),
            404 | 409 => Err(ProviderError::NotFound(format!(
                "PUT {path}: the folder does not exist (HTTP {status})"
            ))),
            429 | 500..=599 => Err(ProviderError::Temporary(format!("PUT {path}: HTTP {status}"))),
            _ => Err(ProviderError::Other(format!("PUT {path}: HTTP {status}"))),
        }
    }
}

/// The configuration keys each kind accepts (OpenDAL's own names); anything else is refused, so a
/// typo is an error rather than a silently ignored setting.
fn allowed_keys(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::S3 => &[
            "endpoint",
            "bucket",
            "region",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "root",
            "enable_virtual_host_style",
        ],
        ProviderKind::Webdav => &["endpoint", "username", "password", "token", "root"],
        ProviderKind::Sftp => &["endpoint", "user", "key", "root", "known_hosts_strategy"],
        ProviderKind::Azblob => &["endpoint", "container", "account_name", "account_key", "sas_token", "root"],
        ProviderKind::Gdrive => &["access_token", "refresh_token", "client_id", "client_secret", "root"],
        ProviderKind::Dropbox => &["access_token", "refresh_token", "client_id", "client_secret", "root"],
        ProviderKind::Onedrive => &["access_token", "refresh_token", "client_id", "client_secret", "root"],
        ProviderKind::Local => &["root"],
    }
}

fn required_keys(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::S3 => &["bucket"],
        ProviderKind::Webdav | ProviderKind::Sftp => &["endpoint"],
        ProviderKind::Azblob => &["container"],
        _ => &[],
    }
}

impl RemoteProvider {
    /// # Errors
    /// Unknown, missing or non-string keys, or a configuration OpenDAL refuses.
    pub fn open(kind: ProviderKind, config: &Map<String, Value>) -> Result<Self, ProviderError> {
        // Installs OpenDAL's HTTP transport once per process (later calls do nothing).
        opendal::install_default();
        let allowed = allowed_keys(kind);
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in config {
            if !allowed.contains(&key.as_str()) {
                return Err(ProviderError::Invalid(format!(
                    "unknown {} setting {key:?} (accepted: {})",
                    kind.as_str(),
                    allowed.join(", ")
                )));
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => return Err(ProviderError::Invalid(format!("{key} must be a string"))),
            };
            pairs.push((key.clone(), text));
        }
        for key in required_keys(kind) {
            if !config.contains_key(*key) {
                return Err(ProviderError::Invalid(format!("{} needs {key:?}", kind.as_str())));
            }
        }
        let op = match kind {
            ProviderKind::S3 => {
                if !config.contains_key("region") {
                    pairs.push(("region".into(), "us-east-1".into()));
                }
                // Never pick up credentials from this machine's environment or ~/.aws.
                pairs.push(("disable_config_load".into(), "true".into()));
                Operator::from_iter::<services::S3>(pairs)?
            }
            ProviderKind::Webdav => Operator::from_iter::<services::Webdav>(pairs)?,
            ProviderKind::Sftp => {
                if !config.contains_key("known_hosts_strategy") {
                    pairs.push(("known_hosts_strategy".into(), "accept".into()));
                }
                Operator::from_iter::<services::Sftp>(pairs)?
            }
            ProviderKind::Azblob => Operator::from_iter::<services::Azblob>(pairs)?,
            ProviderKind::Gdrive => Operator::from_iter::<services::Gdrive>(pairs)?,
            ProviderKind::Dropbox => Operator::from_iter::<services::Dropbox>(pairs)?,
            ProviderKind::Onedrive => Operator::from_iter::<services::Onedrive>(pairs)?,
            ProviderKind::Local => return Err(ProviderError::Invalid("local folders are not remote".into())),
        };
        let op = op.layer(
            TimeoutLayer::new()
                .with_timeout(Duration::from_secs(60))
                .with_io_timeout(Duration::from_secs(30)),
        );
        // Checking the settings retries little: an unreachable endpoint or refused credentials
        // should be reported in seconds, not after a throttling budget.
        let probe = op.clone().layer(
            RetryLayer::new()
                .with_jitter()
                .with_max_times(2)
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1)),
        );
        let op = op.layer(
            // Ten retries, as rclone's `--low-level-retries`: a throttling server may refuse a good
            // share of requests for a while (the fault test refuses one in three).
            RetryLayer::new()
                .with_jitter()
                .with_max_times(10)
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5)),
        );
        let webdav = (kind == ProviderKind::Webdav).then(|| WebdavUpload::new(config));
        let sftp = (kind == ProviderKind::Sftp).then(|| Arc::new(crate::sftp::SftpDirect::new(config)));
        Ok(Self {
            kind,
            op,
            probe,
            webdav,
            sftp,
        })
    }

    fn entry(path: ProviderPath, meta: &opendal::Metadata) -> Entry {
        let modified_at = meta.last_modified().map(|t| DateTime::<Utc>::from(SystemTime::from(t)));
        let etag = meta.etag().map(str::to_owned).or_else(|| meta.content_md5().map(str::to_owned));
        Entry {
            path,
            size: meta.content_length(),
            modified_at,
            etag,
        }
    }

    /// Moves `from` to `to`, creating `to`'s folders, over any file there: WebDAV moves with
    /// `Overwrite: T`, SFTP renames with the `posix-rename` extension, object stores (which have no
    /// rename) copy the object whole, then delete the original.
    async fn move_over(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        let capability = self.op.info().capability();
        if capability.create_dir && !to.parent().is_root() {
            self.op.create_dir(&folder_path(&to.parent())).await?;
        }
        if capability.rename {
            self.op.rename(from.as_str(), to.as_str()).await?;
        } else if capability.copy {
            self.op.copy(from.as_str(), to.as_str()).await?;
            self.op.delete(from.as_str()).await?;
        } else {
            return Err(ProviderError::Unsupported(format!(
                "{} can neither rename nor copy",
                self.kind.as_str()
            )));
        }
        Ok(())
    }
}

/// Streams `data` through an upload, publishing it when complete and aborting it on failure;
/// returns the bytes written.
async fn upload(mut writer: opendal::Writer, mut data: ByteStream) -> Result<u64, ProviderError> {
    let mut written = 0_u64;
    let result: Result<(), ProviderError> = async {
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            writer.write(chunk).await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            writer.close().await?;
            Ok(written)
        }
        Err(err) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, "Could not abort a failed upload.");
            }
            Err(err)
        }
    }
}

fn folder_path(folder: &ProviderPath) -> String {
    if folder.is_root() {
        "/".to_owned()
    } else {
        format!("{}/", folder.as_str())
    }
}

fn not_found(path: &ProviderPath) -> impl Fn(ProviderError) -> ProviderError + '_ {
    move |err| match err {
        ProviderError::NotFound(_) => ProviderError::NotFound(path.to_string()),
        other => other,
    }
}

#[async_trait]
impl StorageProvider for RemoteProvider {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    async fn check(&self) -> Result<(), ProviderError> {
        Ok(self.probe.check().await?)
    }

    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>> {
        let op = self.op.clone();
        let dir = folder_path(folder);
        futures::stream::once(async move { op.lister_with(&dir).recursive(true).await })
            .map_ok(|lister| lister.map_err(ProviderError::from))
            .map_err(ProviderError::from)
            .try_flatten()
            .try_filter_map(|entry| async move {
                if entry.metadata().is_dir() || entry.path().ends_with('/') {
                    return Ok(None);
                }
                match ProviderPath::parse(entry.path()) {
                    Ok(path) if !path.is_root() => Ok(Some(Self::entry(path, entry.metadata()))),
                    _ => {
                        tracing::warn!(path = entry.path(), "Skipped an entry whose name CloudSync cannot represent.");
                        Ok(None)
                    }
                }
            })
            .boxed()
    }

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        let meta = self
            .op
            .stat(path.as_str())
            .await
            .map_err(ProviderError::from)
            .map_err(not_found(path))?;
        if meta.is_dir() {
            return Err(ProviderError::Invalid(format!("{path} is a folder")));
        }
        Ok(Self::entry(path.clone(), &meta))
    }

    async fn read(&self, path: &ProviderPath, range: Range<u64>) -> Result<ByteStream, ProviderError> {
        let size = self.stat(path).await?.size;
        let range = range.start.min(size)..range.end.min(size);
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let reader = self
            .op
            .reader_with(path.as_str())
            .await
            .map_err(ProviderError::from)
            .map_err(not_found(path))?;
        let stream = reader.into_bytes_stream(range).await?;
        Ok(stream.map_err(ProviderError::from).boxed())
    }

    async fn write(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        if path.is_root() {
            return Err(ProviderError::Invalid("cannot write to the root itself".into()));
        }
        if let Some(webdav) = &self.webdav {
            // A PUT needs its collection, the root's included (a new provider's root may not exist
            // yet).
            self.op.create_dir(&folder_path(&path.parent())).await?;
            return webdav.put(path, data).await;
        }
        let writer = self.op.writer_with(path.as_str()).chunk(WRITE_CHUNK).await?;
        upload(writer, data).await
    }

    async fn write_if(&self, path: &ProviderPath, data: ByteStream, expected: Option<&str>) -> Result<u64, ProviderError> {
        // Checked first everywhere (a server that ignores the conditions still refuses what it
        // can see has changed), then, where the store takes them, checked again as it publishes.
        crate::unchanged(self.stat(path).await, path, expected)?;
        let capability = self.op.info().capability();
        let conditional = self.webdav.is_none()
            && match expected {
                Some(_) => capability.write_with_if_match,
                None => capability.write_with_if_not_exists,
            };
        if !conditional || path.is_root() {
            return self.write(path, data).await;
        }
        let writer = self.op.writer_with(path.as_str()).chunk(WRITE_CHUNK);
        let writer = match expected {
            Some(tag) => writer.if_match(tag).await?,
            None => writer.if_not_exists(true).await?,
        };
        match upload(writer, data).await {
            // Gone meanwhile, where a version was expected: changed too.
            Err(ProviderError::NotFound(_)) => Err(ProviderError::AlreadyExists(format!("{path} changed"))),
            other => other,
        }
    }

    async fn delete(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        match self.op.delete(path.as_str()).await {
            Err(err) if err.kind() != opendal::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    async fn replace(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.stat(from).await?;
        self.move_over(from, to).await
    }

    /// SFTP servers that copy data themselves take ranged writes.
    fn patches(&self) -> bool {
        self.sftp.is_some()
    }

    async fn patch(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, bytes::Bytes)>, checksum: &str) -> Result<u64, ProviderError> {
        match &self.sftp {
            Some(sftp) => sftp.patch(path, size, ranges, checksum).await,
            None => Err(ProviderError::Unsupported(format!("{path}: ranged writes"))),
        }
    }

    /// SFTP opens a file for writing at an offset.
    fn writes_in_place(&self) -> bool {
        self.sftp.is_some()
    }

    async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, bytes::Bytes)>) -> Result<u64, ProviderError> {
        match &self.sftp {
            Some(sftp) => sftp.write_in_place(path, size, ranges).await,
            None => Err(ProviderError::Unsupported(format!("{path}: writes in place"))),
        }
    }

    async fn rename(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.stat(from).await?;
        match self.op.stat(to.as_str()).await {
            Ok(_) => return Err(ProviderError::AlreadyExists(to.to_string())),
            Err(err) if err.kind() == opendal::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        self.move_over(from, to).await
    }

    async fn remove_abandoned_writes(&self, folder: &ProviderPath) -> Result<u64, ProviderError> {
        let temporaries: Vec<Entry> = self
            .list(folder)
            .try_filter(|entry| futures::future::ready(crate::is_temporary(entry.path.name())))
            .try_collect()
            .await
            .or_else(|err| match err {
                ProviderError::NotFound(_) => Ok(Vec::new()),
                other => Err(other),
            })?;
        let mut removed = 0;
        for entry in temporaries {
            // Some listings carry no modification time: the file's own metadata does.
            let modified = match entry.modified_at {
                Some(at) => Some(at),
                None => self.stat(&entry.path).await.ok().and_then(|e| e.modified_at),
            };
            if modified.is_some_and(crate::stale) {
                self.delete(&entry.path).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn create_folder(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        if path.is_root() {
            return Ok(());
        }
        if self.op.info().capability().create_dir {
            self.op.create_dir(&folder_path(path)).await?;
        }
        Ok(())
    }
}
