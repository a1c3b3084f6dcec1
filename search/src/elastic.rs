//! The scale index: Elasticsearch 8 through its documented REST API (index creation with mappings,
//! `_bulk`, `_mget`, `_search` with `bool`/`term`/`match_phrase`/`prefix`/`fuzzy`/`range` queries and
//! `terms` aggregations, `_delete_by_query`, `_aliases`), with reqwest. The mappings target
//! Elasticsearch 8.15; the index has one shard, so `terms` counts are exact. Terms are made by
//! [`crate::analysis`] and indexed with the built-in `whitespace` analyzer, as on tantivy; the
//! checkpoint is a document of the index (`cloudsync-checkpoint`) written after each batch's
//! documents, refreshed with them.

use async_trait::async_trait;
use cloudsync_domain::FileId;
use serde_json::{Value, json};

use crate::analysis::{stemmed, terms};
use crate::doc::{ancestors, folder_filter, ranked};
use crate::highlight::highlights;
use crate::query::{Clause, FUZZY_FROM, Field, Word};
use crate::{Batch, Facets, Hit, SearchDoc, SearchError, SearchIndex, SearchRequest, SearchResult, SearchResults, size_bucket};

const CHECKPOINT_ID: &str = "cloudsync-checkpoint";
/// Distinct values a facet reports at most.
const FACET_SIZE: usize = 1000;

/// The settings and mappings of a CloudSync index.
pub(crate) fn index_body() -> Value {
    let text = json!({"type": "text", "analyzer": "whitespace"});
    let keyword = json!({"type": "keyword"});
    json!({
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {
            "dynamic": false,
            "properties": {
                "owner": keyword, "provider": keyword, "dirs": keyword,
                "source": {"type": "text", "index": false},
                "name": text, "path": text, "content": text, "stems": text,
                "ext": keyword, "mime": keyword, "kind": keyword, "lang": keyword,
                "size_bucket": keyword, "year": keyword,
                "size": {"type": "long"}, "modified": {"type": "long"},
                "labels": keyword, "label_words": text, "taken": {"type": "long"},
                "checkpoint": {"type": "long"}
            }
        }
    })
}

/// One Elasticsearch index (or alias).
#[derive(Clone)]
pub struct ElasticIndex {
    http: reqwest::Client,
    base: String,
    index: String,
}

impl ElasticIndex {
    /// The index (or alias) `index` on the cluster at `base` (`http://host:9200`).
    pub fn new(http: reqwest::Client, base: &str, index: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            index: index.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.index
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> SearchResult<(u16, Value)> {
        call(&self.http, method, &format!("{}/{path}", self.base), body).await
    }

    pub(crate) async fn bulk(&self, lines: Vec<Value>) -> SearchResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut body = String::new();
        for line in lines {
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let response = self
            .http
            .post(format!("{}/_bulk", self.base))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let value: Value = response.json().await?;
        if status >= 300 {
            return Err(SearchError::Server(format!("_bulk answered {status}: {}", brief(&value))));
        }
        // A delete of a missing document is `not_found`, not an error; anything with an `error` is.
        let failed: Vec<&Value> = value["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_object()?.values().next())
            .filter(|op| op.get("error").is_some())
            .collect();
        match failed.first() {
            Some(op) => Err(SearchError::Server(format!(
                "{} of the batch failed, the first: {}",
                failed.len(),
                brief(&op["error"])
            ))),
            None => Ok(()),
        }
    }
}

pub(crate) async fn call(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) -> SearchResult<(u16, Value)> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, value))
}

fn brief(value: &Value) -> String {
    let text = value.to_string();
    text.chars().take(300).collect()
}

fn document(doc: &SearchDoc) -> SearchResult<Value> {
    let mut body = json!({
        "owner": doc.owner_id.to_string(),
        "provider": doc.provider_id.to_string(),
        "dirs": ancestors(&doc.path),
        "source": serde_json::to_string(doc).map_err(|err| SearchError::Index(err.to_string()))?,
        "name": terms(doc.name(), true),
        "path": terms(doc.folder(), true),
        "ext": doc.extension(),
        "mime": doc.mime_type.to_lowercase(),
        "kind": doc.kind(),
        "lang": doc.language(),
        "size_bucket": size_bucket(doc.size),
        "year": doc.year(),
        "size": doc.size,
        "modified": doc.modified_at.timestamp(),
    });
    if !doc.labels().is_empty() {
        body["labels"] = json!(doc.labels());
        body["label_words"] = json!(doc.labels().iter().map(|l| terms(l, false)).collect::<Vec<_>>());
    }
    if let Some(taken) = doc.taken() {
        body["taken"] = json!(taken);
    }
    if let Some(text) = doc.text() {
        body["content"] = Value::String(terms(text, false));
        if let Some(stems) = stemmed(text, doc.language()) {
            body["stems"] = Value::String(stems);
        }
    }
    Ok(body)
}

fn term(field: &str, value: &str, boost: f32) -> Value {
    json!({"term": {field: {"value": value, "boost": boost}}})
}

fn phrase(field: &str, words: &[String], boost: f32) -> Value {
    if words.len() == 1 {
        return term(field, &words[0], boost);
    }
    json!({"match_phrase": {field: {"query": words.join(" "), "boost": boost}}})
}

fn fuzzy(field: &str, value: &str, boost: f32) -> Value {
    json!({"fuzzy": {field: {"value": value, "fuzziness": 1, "transpositions": true, "prefix_length": 0, "boost": boost}}})
}

fn any_of(queries: Vec<Value>) -> Value {
    json!({"bool": {"should": queries, "minimum_should_match": 1}})
}

fn word_query(w: &Word) -> Value {
    let mut should = Vec::new();
    if let [one] = w.plain.as_slice() {
        should.push(term("content", one, 1.0));
        should.push(term("path", one, 1.5));
        should.push(term("label_words", one, 1.2));
        for stem in &w.stems {
            should.push(term("stems", stem, 0.8));
        }
        if one.chars().count() >= FUZZY_FROM {
            should.push(fuzzy("content", one, 0.3));
        }
    } else {
        should.push(phrase("content", &w.plain, 1.0));
        should.push(phrase("path", &w.plain, 1.5));
        should.push(phrase("label_words", &w.plain, 1.2));
    }
    if let [one] = w.name.as_slice() {
        should.push(term("name", one, 4.0));
        should.push(json!({"prefix": {"name": {"value": one, "boost": 2.0}}}));
        if one.chars().count() >= FUZZY_FROM {
            should.push(fuzzy("name", one, 1.0));
        }
    } else {
        should.push(phrase("name", &w.name, 4.0));
    }
    any_of(should)
}

fn clause_query(clause: &Clause) -> Value {
    match clause {
        Clause::Word(w) => word_query(w),
        Clause::Phrase { plain, name } => any_of(vec![
            phrase("content", plain, 1.0),
            phrase("path", plain, 1.5),
            phrase("label_words", plain, 1.2),
            phrase("name", name, 4.0),
        ]),
    }
}

fn field_name(field: Field) -> &'static str {
    match field {
        Field::Extension => "ext",
        Field::Kind => "kind",
        Field::Language => "lang",
        Field::Mime => "mime",
        Field::PathPrefix => "dirs",
    }
}

fn filter_value(field: Field, value: &str) -> String {
    if field == Field::PathPrefix {
        folder_filter(value)
    } else {
        value.to_owned()
    }
}

fn range(field: &str, low: Option<Value>, high: Option<Value>) -> Value {
    let mut bounds = serde_json::Map::new();
    if let Some(low) = low {
        bounds.insert("gte".into(), low);
    }
    if let Some(high) = high {
        bounds.insert("lte".into(), high);
    }
    json!({"range": {field: bounds}})
}

fn build(request: &SearchRequest) -> Value {
    let f = &request.filters;
    let q = &request.query;
    let mut filter = vec![json!({"term": {"owner": request.owner.to_string()}})];
    if !f.providers.is_empty() {
        filter.push(json!({"terms": {"provider": f.providers.iter().map(ToString::to_string).collect::<Vec<_>>()}}));
    }
    if let Some(prefix) = &f.path_prefix {
        filter.push(json!({"term": {"dirs": folder_filter(prefix)}}));
    }
    if let Some(files) = &f.files {
        filter.push(json!({"ids": {"values": files.iter().map(ToString::to_string).collect::<Vec<_>>()}}));
    }
    for (field, values) in [
        ("ext", &f.extensions),
        ("mime", &f.mime_types),
        ("kind", &f.kinds),
        ("lang", &f.languages),
    ] {
        if !values.is_empty() {
            filter.push(json!({"terms": {field: values.iter().map(|v| v.to_lowercase()).collect::<Vec<_>>()}}));
        }
    }
    if !f.labels.is_empty() {
        filter.push(json!({"terms": {"labels": f.labels}}));
    }
    if f.taken_after.is_some() || f.taken_before.is_some() {
        filter.push(range(
            "taken",
            f.taken_after.map(|t| json!(t.timestamp())),
            f.taken_before.map(|t| json!(t.timestamp())),
        ));
    }
    if f.min_size.is_some() || f.max_size.is_some() {
        filter.push(range("size", f.min_size.map(|v| json!(v)), f.max_size.map(|v| json!(v))));
    }
    if f.modified_after.is_some() || f.modified_before.is_some() {
        filter.push(range(
            "modified",
            f.modified_after.map(|t| json!(t.timestamp())),
            f.modified_before.map(|t| json!(t.timestamp())),
        ));
    }
    for (field, values) in &q.filters {
        filter.push(json!({"terms": {field_name(*field): values.iter().map(|v| filter_value(*field, v)).collect::<Vec<_>>()}}));
    }
    let mut must: Vec<Value> = q
        .must
        .iter()
        .map(|group| any_of(group.iter().map(clause_query).collect()))
        .collect();
    if must.is_empty() {
        must.push(json!({"match_all": {}}));
    }
    let mut must_not: Vec<Value> = q.must_not.iter().map(clause_query).collect();
    for (field, value) in &q.excluded {
        must_not.push(json!({"term": {field_name(*field): filter_value(*field, value)}}));
    }
    json!({"bool": {"filter": filter, "must": must, "must_not": must_not}})
}

const FACETS: [&str; 7] = ["provider", "ext", "kind", "size_bucket", "year", "lang", "labels"];

fn source(value: &Value) -> SearchResult<SearchDoc> {
    let json = value["_source"]["source"].as_str().unwrap_or_default();
    serde_json::from_str(json).map_err(|err| SearchError::Index(format!("a stored document does not parse: {err}")))
}

#[async_trait]
impl SearchIndex for ElasticIndex {
    async fn get(&self, ids: &[FileId]) -> SearchResult<Vec<SearchDoc>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = json!({"ids": ids.iter().map(ToString::to_string).collect::<Vec<_>>()});
        let (status, value) = self
            .call(reqwest::Method::POST, &format!("{}/_mget?_source=source", self.index), Some(body))
            .await?;
        if status >= 300 {
            return Err(SearchError::Server(format!("_mget answered {status}: {}", brief(&value))));
        }
        value["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["found"] == true)
            .map(source)
            .collect()
    }

    async fn apply(&self, batch: Batch) -> SearchResult<()> {
        for (field, values) in [
            ("owner", batch.erased.iter().map(ToString::to_string).collect::<Vec<_>>()),
            ("provider", batch.removed_providers.iter().map(ToString::to_string).collect()),
        ] {
            if values.is_empty() {
                continue;
            }
            let body = json!({"query": {"terms": {field: values}}});
            let (status, value) = self
                .call(
                    reqwest::Method::POST,
                    &format!("{}/_delete_by_query?refresh=true&conflicts=proceed", self.index),
                    Some(body),
                )
                .await?;
            if status >= 300 {
                return Err(SearchError::Server(format!(
                    "_delete_by_query answered {status}: {}",
                    brief(&value)
                )));
            }
        }
        let mut lines = Vec::new();
        for id in &batch.deletes {
            lines.push(json!({"delete": {"_index": self.index, "_id": id.to_string()}}));
        }
        for doc in &batch.upserts {
            lines.push(json!({"index": {"_index": self.index, "_id": doc.file_id.to_string()}}));
            lines.push(document(doc)?);
        }
        self.bulk(lines).await?;
        // Only once the documents are in does the checkpoint move (and the refresh shows both).
        let (status, value) = self
            .call(
                reqwest::Method::PUT,
                &format!("{}/_doc/{CHECKPOINT_ID}?refresh=true", self.index),
                Some(json!({"checkpoint": batch.checkpoint})),
            )
            .await?;
        if status >= 300 {
            return Err(SearchError::Server(format!(
                "saving the checkpoint answered {status}: {}",
                brief(&value)
            )));
        }
        Ok(())
    }

    async fn checkpoint(&self) -> SearchResult<i64> {
        let (status, value) = self
            .call(reqwest::Method::GET, &format!("{}/_doc/{CHECKPOINT_ID}", self.index), None)
            .await?;
        match status {
            404 => Ok(0),
            s if s >= 300 => Err(SearchError::Server(format!(
                "reading the checkpoint answered {status}: {}",
                brief(&value)
            ))),
            _ => Ok(value["_source"]["checkpoint"].as_i64().unwrap_or(0)),
        }
    }

    async fn search(&self, request: &SearchRequest) -> SearchResult<SearchResults> {
        let aggs: serde_json::Map<String, Value> = FACETS
            .iter()
            .map(|f| ((*f).to_owned(), json!({"terms": {"field": f, "size": FACET_SIZE}})))
            .collect();
        let body = json!({
            "query": build(request),
            "from": request.offset,
            "size": request.limit,
            "track_total_hits": true,
            "_source": ["source"],
            "aggs": aggs,
        });
        let (status, value) = self
            .call(reqwest::Method::POST, &format!("{}/_search", self.index), Some(body))
            .await?;
        if status >= 300 {
            return Err(SearchError::Server(format!("_search answered {status}: {}", brief(&value))));
        }
        let mut hits = Vec::new();
        for hit in value["hits"]["hits"].as_array().into_iter().flatten() {
            let doc = source(hit)?;
            hits.push(Hit {
                file_id: doc.file_id,
                score: hit["_score"].as_f64().unwrap_or(0.0) as f32,
                highlights: highlights(&doc, &request.query),
            });
        }
        let facet = |name: &str| {
            ranked(
                value["aggregations"][name]["buckets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        let key = match &b["key"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (key, b["doc_count"].as_u64().unwrap_or(0))
                    })
                    .collect(),
            )
        };
        Ok(SearchResults {
            total: value["hits"]["total"]["value"].as_u64().unwrap_or(0),
            hits,
            facets: Facets {
                providers: facet("provider"),
                extensions: facet("ext"),
                kinds: facet("kind"),
                size_buckets: facet("size_bucket"),
                years: facet("year"),
                languages: facet("lang"),
                labels: facet("labels"),
            },
        })
    }

    async fn count(&self) -> SearchResult<u64> {
        let body = json!({"query": {"exists": {"field": "owner"}}});
        let (status, value) = self
            .call(reqwest::Method::POST, &format!("{}/_count", self.index), Some(body))
            .await?;
        if status >= 300 {
            return Err(SearchError::Server(format!("_count answered {status}: {}", brief(&value))));
        }
        Ok(value["count"].as_u64().unwrap_or(0))
    }
}
