//! The vector index on Elasticsearch 8: one document per file (`file-<id>`: owner, provider,
//! checksum) and one per vector (`vec-<id>-<ord>`: a `dense_vector` with cosine similarity, its file
//! and owner), and the checkpoint, in an index of their own. A query is a top-level `knn` search
//! filtered to the owner's vectors; each file keeps its best vector's score (Elasticsearch scores a
//! cosine `c` as `(1 + c) / 2`, turned back here).

use std::collections::HashMap;

use async_trait::async_trait;
use cloudsync_domain::{FileId, ProviderId, UserId};
use serde_json::{Value, json};

use super::{FileVectors, Near, VectorBatch, VectorIndex, best_per_file, moved_on};
use crate::elastic::ElasticIndex;
use crate::{SearchError, SearchResult};

const CHECKPOINT_ID: &str = "cloudsync-vectors-checkpoint";
/// Vectors asked for per file wanted (a file has its name's and its passages').
const ROWS_PER_FILE: usize = 8;
/// The most vectors one file's read returns (the pipeline keeps at most 49).
const MAX_VECTORS: usize = 1000;

fn failed(what: &str, status: u16, value: &Value) -> SearchError {
    let text: String = value.to_string().chars().take(300).collect();
    SearchError::Server(format!("{what} answered {status}: {text}"))
}

fn parse<T: std::str::FromStr>(value: &Value) -> SearchResult<T> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SearchError::Index(format!("the vector index holds a malformed id {value}")))
}

/// The scale [`VectorIndex`] on Elasticsearch 8 (`dense_vector` and `knn`).
pub struct ElasticVectors {
    es: ElasticIndex,
    dims: usize,
}

impl ElasticVectors {
    /// The index `index` on the cluster at `base`, made (with its mappings) when missing, for
    /// vectors of `dims` numbers.
    ///
    /// # Errors
    /// The cluster is unreachable or refuses the index.
    pub async fn open(base: &str, index: &str, dims: usize) -> SearchResult<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|err| SearchError::Server(err.to_string()))?;
        let es = ElasticIndex::new(http, base, index);
        let keyword = json!({"type": "keyword"});
        let body = json!({
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic": false,
                "properties": {
                    "kind": keyword, "file": keyword, "owner": keyword, "provider": keyword, "checksum": keyword,
                    "ord": {"type": "integer"}, "checkpoint": {"type": "long"},
                    "vector": {"type": "dense_vector", "dims": dims, "index": true, "similarity": "cosine"}
                }
            }
        });
        let (status, value) = es.call(reqwest::Method::PUT, index, Some(body)).await?;
        let exists = value["error"]["type"].as_str() == Some("resource_already_exists_exception");
        if status >= 300 && !exists {
            return Err(failed("creating the vector index", status, &value));
        }
        Ok(Self { es, dims })
    }

    async fn delete_where(&self, query: Value) -> SearchResult<()> {
        let (status, value) = self
            .es
            .call(
                reqwest::Method::POST,
                &format!("{}/_delete_by_query?refresh=true&conflicts=proceed", self.es.name()),
                Some(json!({ "query": query })),
            )
            .await?;
        if status >= 300 {
            return Err(failed("_delete_by_query", status, &value));
        }
        Ok(())
    }

    async fn search(&self, body: Value) -> SearchResult<Value> {
        let (status, value) = self
            .es
            .call(reqwest::Method::POST, &format!("{}/_search", self.es.name()), Some(body))
            .await?;
        if status >= 300 {
            return Err(failed("_search", status, &value));
        }
        Ok(value)
    }
}

fn hits(value: &Value) -> impl Iterator<Item = &Value> {
    value["hits"]["hits"].as_array().into_iter().flatten()
}

#[async_trait]
impl VectorIndex for ElasticVectors {
    async fn records(&self, ids: &[FileId]) -> SearchResult<Vec<FileVectors>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = json!({"ids": ids.iter().map(|id| format!("file-{id}")).collect::<Vec<_>>()});
        let (status, value) = self
            .es
            .call(reqwest::Method::POST, &format!("{}/_mget", self.es.name()), Some(body))
            .await?;
        if status >= 300 {
            return Err(failed("_mget", status, &value));
        }
        value["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["found"] == true)
            .map(|d| {
                let s = &d["_source"];
                Ok(FileVectors {
                    file_id: parse(&s["file"])?,
                    owner_id: parse(&s["owner"])?,
                    provider_id: parse::<ProviderId>(&s["provider"])?,
                    checksum: s["checksum"].as_str().unwrap_or_default().to_owned(),
                    vectors: None,
                })
            })
            .collect()
    }

    async fn apply(&self, batch: VectorBatch) -> SearchResult<()> {
        // Elasticsearch has no transaction to hold the checkpoint in: this check narrows the window
        // in which a rebuild and a live projector could cross, but does not close it.
        let at = self.checkpoint().await?;
        if at != batch.from {
            return Err(moved_on(batch.from));
        }
        for (field, values) in [
            ("owner", batch.erased.iter().map(ToString::to_string).collect::<Vec<_>>()),
            ("provider", batch.removed_providers.iter().map(ToString::to_string).collect()),
            ("file", batch.deletes.iter().map(ToString::to_string).collect()),
        ] {
            if !values.is_empty() {
                self.delete_where(json!({"terms": {field: values}})).await?;
            }
        }
        let replaced: Vec<String> = batch
            .upserts
            .iter()
            .filter(|f| f.vectors.is_some())
            .map(|f| f.file_id.to_string())
            .collect();
        if !replaced.is_empty() {
            self.delete_where(json!({"bool": {"filter": [{"term": {"kind": "vector"}}, {"terms": {"file": replaced}}]}}))
                .await?;
        }
        let mut lines = Vec::new();
        for file in &batch.upserts {
            let (id, owner, provider) = (file.file_id.to_string(), file.owner_id.to_string(), file.provider_id.to_string());
            lines.push(json!({"index": {"_index": self.es.name(), "_id": format!("file-{id}")}}));
            lines.push(json!({"kind": "file", "file": id, "owner": owner, "provider": provider, "checksum": file.checksum}));
            for (ord, vector) in file.vectors.iter().flatten().enumerate().filter(|(_, v)| v.len() == self.dims) {
                lines.push(json!({"index": {"_index": self.es.name(), "_id": format!("vec-{id}-{ord}")}}));
                lines.push(json!({"kind": "vector", "file": id, "owner": owner, "provider": provider, "ord": ord, "vector": vector}));
            }
        }
        self.es.bulk(lines).await?;
        // Only once the vectors are in does the checkpoint move (and the refresh shows both).
        let (status, value) = self
            .es
            .call(
                reqwest::Method::PUT,
                &format!("{}/_doc/{CHECKPOINT_ID}?refresh=true", self.es.name()),
                Some(json!({"kind": "checkpoint", "checkpoint": batch.checkpoint})),
            )
            .await?;
        if status >= 300 {
            return Err(failed("saving the checkpoint", status, &value));
        }
        Ok(())
    }

    async fn checkpoint(&self) -> SearchResult<i64> {
        let (status, value) = self
            .es
            .call(reqwest::Method::GET, &format!("{}/_doc/{CHECKPOINT_ID}", self.es.name()), None)
            .await?;
        match status {
            404 => Ok(0),
            s if s >= 300 => Err(failed("reading the checkpoint", status, &value)),
            _ => Ok(value["_source"]["checkpoint"].as_i64().unwrap_or(0)),
        }
    }

    async fn nearest(&self, owner: UserId, query: &[f32], limit: usize, except: Option<FileId>) -> SearchResult<Vec<Near>> {
        if query.len() != self.dims || limit == 0 {
            return Ok(Vec::new());
        }
        let k = limit.saturating_mul(ROWS_PER_FILE);
        let mut filter = vec![json!({"term": {"kind": "vector"}}), json!({"term": {"owner": owner.to_string()}})];
        if let Some(except) = except {
            filter.push(json!({"bool": {"must_not": [{"term": {"file": except.to_string()}}]}}));
        }
        let body = json!({
            "knn": {"field": "vector", "query_vector": query, "k": k, "num_candidates": k.max(100) * 2,
                    "filter": {"bool": {"filter": filter}}},
            "size": k,
            "_source": ["file"],
        });
        let value = self.search(body).await?;
        let mut found = Vec::new();
        for hit in hits(&value) {
            let file: FileId = parse(&hit["_source"]["file"])?;
            found.push((file, hit["_score"].as_f64().unwrap_or(0.0).mul_add(2.0, -1.0) as f32));
        }
        let near = best_per_file(found, limit);
        Ok(near)
    }

    async fn vectors(&self, owner: UserId, file: FileId) -> SearchResult<Vec<Vec<f32>>> {
        Ok(self.vectors_of(owner, &[file]).await?.remove(&file).unwrap_or_default())
    }

    async fn vectors_of(&self, owner: UserId, files: &[FileId]) -> SearchResult<HashMap<FileId, Vec<Vec<f32>>>> {
        let mut found: HashMap<FileId, Vec<(i64, Vec<f32>)>> = HashMap::new();
        // A file has at most MAX_VECTORS vectors, and a search returns at most 10,000 hits.
        for some in files.chunks(10_000 / MAX_VECTORS) {
            let body = json!({
                "query": {"bool": {"filter": [
                    {"term": {"kind": "vector"}},
                    {"terms": {"file": some.iter().map(ToString::to_string).collect::<Vec<_>>()}},
                    {"term": {"owner": owner.to_string()}}
                ]}},
                "size": some.len() * MAX_VECTORS,
                "_source": ["vector", "ord", "file"],
            });
            let value = self.search(body).await?;
            for hit in hits(&value) {
                let source = &hit["_source"];
                let file: FileId = parse(&source["file"])?;
                let vector = source["vector"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                    .collect();
                found.entry(file).or_default().push((source["ord"].as_i64().unwrap_or(0), vector));
            }
        }
        Ok(found
            .into_iter()
            .map(|(file, mut vectors)| {
                vectors.sort_by_key(|(ord, _)| *ord);
                (file, vectors.into_iter().map(|(_, v)| v).collect())
            })
            .collect())
    }

    async fn embedded_files(&self, owner: UserId) -> SearchResult<u64> {
        // Every embedded file has exactly one first vector.
        let body = json!({"query": {"bool": {"filter": [
            {"term": {"kind": "vector"}}, {"term": {"owner": owner.to_string()}}, {"term": {"ord": 0}}
        ]}}});
        let (status, value) = self
            .es
            .call(reqwest::Method::POST, &format!("{}/_count", self.es.name()), Some(body))
            .await?;
        if status >= 300 {
            return Err(failed("_count", status, &value));
        }
        Ok(value["count"].as_u64().unwrap_or(0))
    }

    async fn files_with_vectors(&self, owner: UserId, limit: usize) -> SearchResult<Vec<FileId>> {
        // Every embedded file has exactly one first vector.
        let body = json!({
            "query": {"bool": {"filter": [
                {"term": {"kind": "vector"}}, {"term": {"owner": owner.to_string()}}, {"term": {"ord": 0}}
            ]}},
            "size": limit.min(10_000),
            "sort": [{"file": "asc"}],
            "_source": ["file"],
        });
        let value = self.search(body).await?;
        let mut files: Vec<FileId> = hits(&value)
            .map(|hit| parse(&hit["_source"]["file"]))
            .collect::<SearchResult<_>>()?;
        files.sort();
        Ok(files)
    }

    async fn reset(&self) -> SearchResult<()> {
        self.delete_where(json!({"bool": {"must_not": [{"term": {"kind": "checkpoint"}}]}}))
            .await?;
        let (status, value) = self
            .es
            .call(
                reqwest::Method::PUT,
                &format!("{}/_doc/{CHECKPOINT_ID}?refresh=true", self.es.name()),
                Some(json!({"kind": "checkpoint", "checkpoint": 0})),
            )
            .await?;
        if status >= 300 {
            return Err(failed("resetting the checkpoint", status, &value));
        }
        Ok(())
    }
}
