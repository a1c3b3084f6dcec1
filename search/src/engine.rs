//! Which index is live, and rebuilding one while the live one answers. On tantivy each index is a
//! folder `index-<uuidv7>` under the data dir's `search/`, and the file `CURRENT` names the live
//! one (replaced atomically); on Elasticsearch each is an index `<alias>-<uuidv7>` and the alias
//! points at the live one (moved in one `_aliases` call). A rebuild fills a new index from the log,
//! then swaps; a running server notices and moves over.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::elastic::{ElasticIndex, call, index_body};
use crate::{SearchError, SearchIndex, SearchResult, TantivyIndex};

const CURRENT: &str = "CURRENT";
/// How often a server looks for a swap made by another process.
const RECHECK: Duration = Duration::from_secs(1);

/// Where the indexes live.
#[derive(Clone)]
pub enum Engine {
    Tantivy {
        root: PathBuf,
    },
    Elastic {
        http: reqwest::Client,
        base: String,
        alias: String,
    },
}

fn generation() -> String {
    format!("index-{}", uuid::Uuid::now_v7().simple())
}

fn io(path: &Path, err: std::io::Error) -> SearchError {
    SearchError::Index(format!("{}: {err}", path.display()))
}

impl Engine {
    /// The embedded engine: indexes in `root` (the data dir's `search/`).
    pub fn tantivy(root: PathBuf) -> Self {
        Self::Tantivy { root }
    }

    /// The Elasticsearch cluster at `url`, its live index named by the alias `alias`.
    ///
    /// # Errors
    /// An HTTP client that cannot be built.
    pub fn elastic(url: &str, alias: &str) -> SearchResult<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Self::Elastic {
            http,
            base: url.trim_end_matches('/').to_owned(),
            alias: alias.to_owned(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Tantivy { root } => format!("tantivy in {}", root.display()),
            Self::Elastic { base, alias, .. } => format!("Elasticsearch at {base}, alias {alias}"),
        }
    }

    /// The name of the live index, if there is one yet.
    pub async fn current(&self) -> SearchResult<Option<String>> {
        match self {
            Self::Tantivy { root } => match std::fs::read_to_string(root.join(CURRENT)) {
                Ok(name) => Ok(Some(name.trim().to_owned())),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(io(&root.join(CURRENT), err)),
            },
            Self::Elastic { http, base, alias } => {
                let (status, value) = call(http, reqwest::Method::GET, &format!("{base}/_alias/{alias}"), None).await?;
                match status {
                    404 => Ok(None),
                    s if s >= 300 => Err(SearchError::Server(format!("reading the alias {alias} answered {status}"))),
                    _ => Ok(value.as_object().and_then(|o| o.keys().next().cloned())),
                }
            }
        }
    }

    /// A new, empty index (not live yet), with its name.
    ///
    /// # Errors
    /// The index cannot be created.
    pub async fn create(&self) -> SearchResult<(String, Arc<dyn SearchIndex>)> {
        let name = generation();
        match self {
            Self::Tantivy { root } => Ok((name.clone(), Arc::new(TantivyIndex::open(&root.join(&name))?))),
            Self::Elastic { http, base, alias } => {
                let name = format!("{alias}-{}", &name["index-".len()..]);
                let (status, value) = call(http, reqwest::Method::PUT, &format!("{base}/{name}"), Some(index_body())).await?;
                if status >= 300 {
                    return Err(SearchError::Server(format!("creating the index {name} answered {status}: {value}")));
                }
                Ok((name.clone(), Arc::new(ElasticIndex::new(http.clone(), base, &name))))
            }
        }
    }

    /// Makes the index `name` the live one. Older indexes are deleted (on tantivy, those before it
    /// in time; a process still using one keeps reading its open files until it moves over).
    ///
    /// # Errors
    /// The swap could not be made (the old index then stays live).
    pub async fn swap(&self, name: &str) -> SearchResult<()> {
        match self {
            Self::Tantivy { root } => {
                let temporary = root.join(".CURRENT.tmp");
                std::fs::write(&temporary, name).map_err(|err| io(&temporary, err))?;
                std::fs::File::open(&temporary)
                    .and_then(|f| f.sync_all())
                    .map_err(|err| io(&temporary, err))?;
                std::fs::rename(&temporary, root.join(CURRENT)).map_err(|err| io(root, err))?;
                std::fs::File::open(root).and_then(|f| f.sync_all()).map_err(|err| io(root, err))?;
                self.remove_older(name);
                Ok(())
            }
            Self::Elastic { http, base, alias } => {
                let old = self.current().await?;
                let mut actions = vec![json!({"add": {"index": name, "alias": alias}})];
                if let Some(old) = &old {
                    actions.insert(0, json!({"remove": {"index": old, "alias": alias}}));
                }
                let (status, value) = call(
                    http,
                    reqwest::Method::POST,
                    &format!("{base}/_aliases"),
                    Some(json!({"actions": actions})),
                )
                .await?;
                if status >= 300 {
                    return Err(SearchError::Server(format!("moving the alias {alias} answered {status}: {value}")));
                }
                if let Some(old) = old.filter(|o| o != name) {
                    let (status, _) = call(http, reqwest::Method::DELETE, &format!("{base}/{old}"), None).await?;
                    if status >= 300 && status != 404 {
                        tracing::warn!(index = %old, status, "The replaced search index could not be deleted.");
                    }
                }
                Ok(())
            }
        }
    }

    fn remove_older(&self, name: &str) {
        let Self::Tantivy { root } = self else { return };
        let Ok(entries) = std::fs::read_dir(root) else { return };
        for entry in entries.flatten() {
            let folder = entry.file_name().to_string_lossy().into_owned();
            if folder.starts_with("index-")
                && folder.as_str() < name
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(folder, error = %error, "A replaced search index could not be deleted.");
            }
        }
    }

    /// Opens the live index, creating the first one when there is none.
    ///
    /// # Errors
    /// The index cannot be opened or created.
    pub async fn open(&self) -> SearchResult<(String, Arc<dyn SearchIndex>)> {
        match (self, self.current().await?) {
            (Self::Tantivy { root }, Some(name)) => match TantivyIndex::open(&root.join(&name)) {
                Ok(index) => Ok((name.clone(), Arc::new(index))),
                // Made by an earlier version: a new index takes its place and the projector fills
                // it from the log (the old one answers nothing meanwhile).
                Err(SearchError::Outdated(why)) => {
                    tracing::warn!(index = %name, reason = %why, "The search index predates this version's fields; a new one is built from the log.");
                    let (fresh, index) = self.create().await?;
                    drop(index);
                    self.swap(&fresh).await?;
                    Box::pin(self.open()).await
                }
                Err(err) => Err(err),
            },
            (Self::Elastic { http, base, alias }, Some(name)) => {
                // An index made by an earlier version learns the fields added since (mappings only
                // grow); its older documents get them when they change or at a rebuild.
                let body = index_body();
                let (status, value) = call(
                    http,
                    reqwest::Method::PUT,
                    &format!("{base}/{name}/_mapping"),
                    Some(body["mappings"].clone()),
                )
                .await?;
                if status >= 300 {
                    tracing::warn!(index = %name, status, answer = %value, "The search index's mappings could not be brought up to date.");
                }
                Ok((name, Arc::new(ElasticIndex::new(http.clone(), base, alias))))
            }
            (_, None) => {
                let (name, index) = self.create().await?;
                drop(index); // tantivy: free the writer's lock before opening the index again
                self.swap(&name).await?;
                Box::pin(self.open()).await
            }
        }
    }

    /// The bytes the live index takes on disk (tantivy only; `None` on Elasticsearch).
    pub async fn disk_bytes(&self) -> Option<u64> {
        match self {
            Self::Tantivy { root } => {
                let name = self.current().await.ok()??;
                let folder = root.join(name);
                let entries = std::fs::read_dir(folder).ok()?;
                Some(
                    entries
                        .flatten()
                        .filter_map(|e| e.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum(),
                )
            }
            Self::Elastic { .. } => None,
        }
    }
}

/// The live index of a running process, following swaps made elsewhere.
pub struct Search {
    engine: Engine,
    current: Mutex<(String, Arc<dyn SearchIndex>, Instant)>,
}

impl Search {
    /// Opens the engine's live index.
    ///
    /// # Errors
    /// The index cannot be opened or created.
    pub async fn open(engine: Engine) -> SearchResult<Arc<Self>> {
        let (name, index) = engine.open().await?;
        Ok(Arc::new(Self {
            engine,
            current: Mutex::new((name, index, Instant::now())),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The live index (moving over, at most once a second, if another process swapped it).
    pub async fn index(&self) -> Arc<dyn SearchIndex> {
        let due = {
            let guard = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.2.elapsed() >= RECHECK
        };
        if due {
            self.refresh().await;
        }
        let guard = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard.1)
    }

    /// Looks now for a swap made by another process (a rebuild) and moves over to it.
    pub async fn refresh(&self) {
        let name = {
            let guard = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.0.clone()
        };
        let Engine::Tantivy { root } = &self.engine else { return };
        let live = self.engine.current().await.ok().flatten();
        let mut moved = None;
        if let Some(live) = live
            && live != name
        {
            // The rebuild may still hold the new index's writer for a moment: try again later.
            match TantivyIndex::open(&root.join(&live)) {
                Ok(opened) => moved = Some((live, Arc::new(opened) as Arc<dyn SearchIndex>)),
                Err(error) => tracing::info!(index = %live, error = %error, "The rebuilt search index is not ready yet."),
            }
        }
        let mut guard = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.2 = Instant::now();
        if let Some((live, opened)) = moved {
            tracing::info!(index = %live, "Moved to the rebuilt search index.");
            *guard = (live, opened, Instant::now());
        }
    }
}
