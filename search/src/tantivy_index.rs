//! The embedded index: tantivy in a folder of the data dir. Terms come from [`crate::analysis`] and
//! are indexed with a whitespace tokenizer; each document also keeps its [`SearchDoc`] as JSON for
//! reading back and highlighting. A batch and its checkpoint (the commit's payload) are one commit.
//! Small segments are folded together by tantivy's log merge policy, but synchronously, right after
//! a commit and under the writer's lock, never in the background beside the next commit: a
//! background merge racing a commit's deletes once left a replaced document alive in the merged
//! segment (found by the kill test, one document twice). The writer deletes the files no commit
//! uses any more, so the folder does not grow under churn.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cloudsync_domain::FileId;
use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::columnar::StrColumn;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, PhraseQuery, Query as TantivyQuery, RangeQuery, TermQuery,
};
use tantivy::schema::{FAST, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};
use tantivy::{DocAddress, DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentReader, TantivyDocument, Term};

use crate::analysis::{stemmed, terms};
use crate::doc::{ancestors, folder_filter, ranked};
use crate::highlight::highlights;
use crate::query::{Clause, FUZZY_FROM, Field, Word};
use crate::{Batch, Facets, Filters, Hit, SearchDoc, SearchError, SearchIndex, SearchRequest, SearchResult, SearchResults, size_bucket};

const TOKENIZER: &str = "cloudsync_terms";
/// The writer's memory budget (tantivy's floor is 15 MB per thread).
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
struct Fields {
    id: tantivy::schema::Field,
    owner: tantivy::schema::Field,
    provider: tantivy::schema::Field,
    dirs: tantivy::schema::Field,
    source: tantivy::schema::Field,
    name: tantivy::schema::Field,
    path: tantivy::schema::Field,
    content: tantivy::schema::Field,
    stems: tantivy::schema::Field,
    ext: tantivy::schema::Field,
    mime: tantivy::schema::Field,
    kind: tantivy::schema::Field,
    lang: tantivy::schema::Field,
    bucket: tantivy::schema::Field,
    year: tantivy::schema::Field,
    size: tantivy::schema::Field,
    modified: tantivy::schema::Field,
    labels: tantivy::schema::Field,
    label_words: tantivy::schema::Field,
    taken: tantivy::schema::Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        owner: b.add_text_field("owner", STRING),
        provider: b.add_text_field("provider", STRING | FAST),
        dirs: b.add_text_field("dirs", STRING),
        source: b.add_text_field("source", STORED),
        name: b.add_text_field("name", text.clone()),
        path: b.add_text_field("path", text.clone()),
        content: b.add_text_field("content", text.clone()),
        stems: b.add_text_field("stems", text.clone()),
        ext: b.add_text_field("ext", STRING | FAST),
        mime: b.add_text_field("mime", STRING),
        kind: b.add_text_field("kind", STRING | FAST),
        lang: b.add_text_field("lang", STRING | FAST),
        bucket: b.add_text_field("size_bucket", STRING | FAST),
        year: b.add_text_field("year", STRING | FAST),
        size: b.add_u64_field("size", INDEXED | FAST),
        modified: b.add_i64_field("modified", INDEXED | FAST),
        labels: b.add_text_field("labels", STRING | FAST),
        label_words: b.add_text_field("label_words", text),
        taken: b.add_i64_field("taken", INDEXED | FAST),
    };
    (b.build(), fields)
}

struct Inner {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
}

/// The tantivy index in one folder.
#[derive(Clone)]
pub struct TantivyIndex {
    inner: Arc<Inner>,
}

/// How long opening an index waits for a writer's lock that another process holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl TantivyIndex {
    /// Opens the index in `folder`, creating it (and the folder) when there is none.
    ///
    /// # Errors
    /// An unusable folder, or one that another process is writing.
    pub fn open(folder: &Path) -> SearchResult<Self> {
        std::fs::create_dir_all(folder).map_err(|err| SearchError::Index(format!("{}: {err}", folder.display())))?;
        let (schema, fields) = schema();
        let dir = tantivy::directory::MmapDirectory::open(folder).map_err(|err| SearchError::Index(err.to_string()))?;
        let index = match Index::open_or_create(dir, schema) {
            Err(tantivy::TantivyError::SchemaError(why)) => return Err(SearchError::Outdated(why)),
            other => other?,
        };
        index
            .tokenizers()
            .register(TOKENIZER, TextAnalyzer::from(WhitespaceTokenizer::default()));
        // A process killed a moment ago may still hold the writer's lock through a child it was
        // starting (a forked child keeps the parent's files until it execs): wait a little for it.
        // Nothing tells when another process lets a file lock go, so this polls.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let writer = loop {
            match index.writer_with_num_threads(1, WRITER_MEMORY) {
                Err(tantivy::TantivyError::LockFailure(tantivy::directory::error::LockError::LockBusy, _))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other?,
            }
        };
        writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Self {
            inner: Arc::new(Inner {
                index,
                reader,
                writer: Mutex::new(writer),
                fields,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Inner) -> SearchResult<T> + Send + 'static) -> SearchResult<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|err| SearchError::Index(format!("the index worker stopped: {err}")))?
    }
}

fn to_document(f: &Fields, doc: &SearchDoc) -> SearchResult<TantivyDocument> {
    let mut d = TantivyDocument::default();
    d.add_text(f.id, doc.file_id.to_string());
    d.add_text(f.owner, doc.owner_id.to_string());
    d.add_text(f.provider, doc.provider_id.to_string());
    for dir in ancestors(&doc.path) {
        d.add_text(f.dirs, dir);
    }
    d.add_text(
        f.source,
        serde_json::to_string(doc).map_err(|err| SearchError::Index(err.to_string()))?,
    );
    d.add_text(f.name, terms(doc.name(), true));
    d.add_text(f.path, terms(doc.folder(), true));
    if let Some(text) = doc.text() {
        d.add_text(f.content, terms(text, false));
        if let Some(stems) = stemmed(text, doc.language()) {
            d.add_text(f.stems, stems);
        }
    }
    d.add_text(f.ext, doc.extension());
    d.add_text(f.mime, doc.mime_type.to_lowercase());
    d.add_text(f.kind, doc.kind());
    d.add_text(f.lang, doc.language());
    d.add_text(f.bucket, size_bucket(doc.size));
    d.add_text(f.year, doc.year());
    d.add_u64(f.size, doc.size);
    d.add_i64(f.modified, doc.modified_at.timestamp());
    for label in doc.labels() {
        d.add_text(f.labels, label);
        d.add_text(f.label_words, terms(label, false));
    }
    if let Some(taken) = doc.taken() {
        d.add_i64(f.taken, taken);
    }
    Ok(d)
}

fn source_of(searcher: &tantivy::Searcher, f: &Fields, at: DocAddress) -> SearchResult<SearchDoc> {
    let stored: TantivyDocument = searcher.doc(at)?;
    let json = stored.get_first(f.source).and_then(|v| v.as_str()).unwrap_or_default();
    serde_json::from_str(json).map_err(|err| SearchError::Index(format!("a stored document does not parse: {err}")))
}

fn term(field: tantivy::schema::Field, text: &str) -> Term {
    Term::from_field_text(field, text)
}

fn boxed(q: impl TantivyQuery) -> Box<dyn TantivyQuery> {
    Box::new(q)
}

fn term_query(field: tantivy::schema::Field, text: &str, boost: f32) -> Box<dyn TantivyQuery> {
    let q = boxed(TermQuery::new(term(field, text), IndexRecordOption::WithFreqs));
    if (boost - 1.0).abs() < f32::EPSILON {
        q
    } else {
        boxed(BoostQuery::new(q, boost))
    }
}

fn phrase(field: tantivy::schema::Field, words: &[String], boost: f32) -> Box<dyn TantivyQuery> {
    if words.len() == 1 {
        return term_query(field, &words[0], boost);
    }
    boxed(BoostQuery::new(
        boxed(PhraseQuery::new(words.iter().map(|w| term(field, w)).collect())),
        boost,
    ))
}

fn any_of(queries: Vec<Box<dyn TantivyQuery>>) -> Box<dyn TantivyQuery> {
    boxed(BooleanQuery::new(queries.into_iter().map(|q| (Occur::Should, q)).collect()))
}

fn word_query(f: &Fields, w: &Word) -> Box<dyn TantivyQuery> {
    let mut should = Vec::new();
    if let [one] = w.plain.as_slice() {
        should.push(term_query(f.content, one, 1.0));
        should.push(term_query(f.path, one, 1.5));
        should.push(term_query(f.label_words, one, 1.2));
        for stem in &w.stems {
            should.push(term_query(f.stems, stem, 0.8));
        }
        if one.chars().count() >= FUZZY_FROM {
            should.push(boxed(BoostQuery::new(
                boxed(FuzzyTermQuery::new(term(f.content, one), 1, true)),
                0.3,
            )));
        }
    } else {
        should.push(phrase(f.content, &w.plain, 1.0));
        should.push(phrase(f.path, &w.plain, 1.5));
        should.push(phrase(f.label_words, &w.plain, 1.2));
    }
    if let [one] = w.name.as_slice() {
        should.push(term_query(f.name, one, 4.0));
        should.push(boxed(BoostQuery::new(
            boxed(FuzzyTermQuery::new_prefix(term(f.name, one), 0, true)),
            2.0,
        )));
        if one.chars().count() >= FUZZY_FROM {
            should.push(boxed(BoostQuery::new(boxed(FuzzyTermQuery::new(term(f.name, one), 1, true)), 1.0)));
        }
    } else {
        should.push(phrase(f.name, &w.name, 4.0));
    }
    any_of(should)
}

fn clause_query(f: &Fields, clause: &Clause) -> Box<dyn TantivyQuery> {
    match clause {
        Clause::Word(w) => word_query(f, w),
        Clause::Phrase { plain, name } => any_of(vec![
            phrase(f.content, plain, 1.0),
            phrase(f.path, plain, 1.5),
            phrase(f.label_words, plain, 1.2),
            phrase(f.name, name, 4.0),
        ]),
    }
}

fn field_of(f: &Fields, field: Field) -> tantivy::schema::Field {
    match field {
        Field::Extension => f.ext,
        Field::Kind => f.kind,
        Field::Language => f.lang,
        Field::Mime => f.mime,
        Field::PathPrefix => f.dirs,
    }
}

fn filter_value(field: Field, value: &str) -> String {
    if field == Field::PathPrefix {
        folder_filter(value)
    } else {
        value.to_owned()
    }
}

fn one_of(field: tantivy::schema::Field, values: impl IntoIterator<Item = String>) -> Box<dyn TantivyQuery> {
    any_of(values.into_iter().map(|v| term_query(field, &v, 1.0)).collect())
}

fn filters_query(f: &Fields, filters: &Filters) -> Vec<Box<dyn TantivyQuery>> {
    let mut out = Vec::new();
    if !filters.providers.is_empty() {
        out.push(one_of(f.provider, filters.providers.iter().map(ToString::to_string)));
    }
    if let Some(prefix) = &filters.path_prefix {
        out.push(term_query(f.dirs, &folder_filter(prefix), 1.0));
    }
    if let Some(files) = &filters.files {
        out.push(one_of(f.id, files.iter().map(ToString::to_string)));
    }
    for (field, values) in [
        (f.ext, &filters.extensions),
        (f.mime, &filters.mime_types),
        (f.kind, &filters.kinds),
        (f.lang, &filters.languages),
    ] {
        if !values.is_empty() {
            out.push(one_of(field, values.iter().map(|v| v.to_lowercase())));
        }
    }
    if !filters.labels.is_empty() {
        out.push(one_of(f.labels, filters.labels.iter().cloned()));
    }
    if filters.taken_after.is_some() || filters.taken_before.is_some() {
        let low = filters
            .taken_after
            .map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_i64(f.taken, v.timestamp())));
        let high = filters
            .taken_before
            .map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_i64(f.taken, v.timestamp())));
        out.push(boxed(RangeQuery::new(low, high)));
    }
    if filters.min_size.is_some() || filters.max_size.is_some() {
        let low = filters
            .min_size
            .map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_u64(f.size, v)));
        let high = filters
            .max_size
            .map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_u64(f.size, v)));
        out.push(boxed(RangeQuery::new(low, high)));
    }
    if filters.modified_after.is_some() || filters.modified_before.is_some() {
        let low = filters.modified_after.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_i64(f.modified, v.timestamp()))
        });
        let high = filters.modified_before.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_i64(f.modified, v.timestamp()))
        });
        out.push(boxed(RangeQuery::new(low, high)));
    }
    out
}

fn build(f: &Fields, request: &SearchRequest) -> Box<dyn TantivyQuery> {
    let q = &request.query;
    // Filters narrow; they do not score.
    let mut filters = vec![term_query(f.owner, &request.owner.to_string(), 1.0)];
    filters.extend(filters_query(f, &request.filters));
    for (field, values) in &q.filters {
        filters.push(one_of(field_of(f, *field), values.iter().map(|v| filter_value(*field, v))));
    }
    let mut clauses: Vec<(Occur, Box<dyn TantivyQuery>)> = vec![(
        Occur::Must,
        boxed(ConstScoreQuery::new(boxed(BooleanQuery::intersection(filters)), 0.0)),
    )];
    for group in &q.must {
        clauses.push((Occur::Must, any_of(group.iter().map(|c| clause_query(f, c)).collect())));
    }
    if q.must.is_empty() {
        clauses.push((Occur::Must, boxed(ConstScoreQuery::new(boxed(AllQuery), 1.0))));
    }
    for clause in &q.must_not {
        clauses.push((Occur::MustNot, clause_query(f, clause)));
    }
    for (field, value) in &q.excluded {
        clauses.push((Occur::MustNot, term_query(field_of(f, *field), &filter_value(*field, value), 1.0)));
    }
    boxed(BooleanQuery::new(clauses))
}

/// Exact counts of the matching documents by the facet fields.
struct FacetCollector;

const FACETS: [&str; 7] = ["provider", "ext", "kind", "size_bucket", "year", "lang", "labels"];

struct FacetSegment {
    columns: Vec<Option<StrColumn>>,
    counts: Vec<Vec<u64>>,
}

impl Collector for FacetCollector {
    type Fruit = Vec<HashMap<String, u64>>;
    type Child = FacetSegment;

    fn for_segment(&self, _: u32, segment: &SegmentReader) -> tantivy::Result<FacetSegment> {
        let mut columns = Vec::new();
        let mut counts = Vec::new();
        for name in FACETS {
            let column = segment.fast_fields().str(name)?;
            counts.push(vec![0; column.as_ref().map_or(0, |c| c.dictionary().num_terms())]);
            columns.push(column);
        }
        Ok(FacetSegment { columns, counts })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut merged: Vec<HashMap<String, u64>> = vec![HashMap::new(); FACETS.len()];
        for fruit in fruits {
            for (into, from) in merged.iter_mut().zip(fruit) {
                for (value, count) in from {
                    *into.entry(value).or_default() += count;
                }
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for FacetSegment {
    type Fruit = Vec<HashMap<String, u64>>;

    fn collect(&mut self, doc: DocId, _: Score) {
        for (column, counts) in self.columns.iter().zip(self.counts.iter_mut()) {
            if let Some(column) = column {
                for ord in column.term_ords(doc) {
                    if let Some(count) = usize::try_from(ord).ok().and_then(|o| counts.get_mut(o)) {
                        *count += 1;
                    }
                }
            }
        }
    }

    fn harvest(self) -> Self::Fruit {
        let mut out = Vec::new();
        for (column, counts) in self.columns.iter().zip(self.counts) {
            let mut map = HashMap::new();
            if let Some(column) = column {
                let mut value = String::new();
                for (ord, count) in counts.into_iter().enumerate() {
                    value.clear();
                    if count > 0 && column.ord_to_str(ord as u64, &mut value).unwrap_or(false) {
                        map.insert(value.clone(), count);
                    }
                }
            }
            out.push(map);
        }
        out
    }
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    async fn get(&self, ids: &[FileId]) -> SearchResult<Vec<SearchDoc>> {
        let ids = ids.to_vec();
        self.blocking(move |inner| {
            let searcher = inner.reader.searcher();
            let mut out = Vec::new();
            for id in ids {
                let q = TermQuery::new(term(inner.fields.id, &id.to_string()), IndexRecordOption::Basic);
                if let Some((_, at)) = searcher.search(&q, &TopDocs::with_limit(1).order_by_score())?.into_iter().next() {
                    out.push(source_of(&searcher, &inner.fields, at)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn apply(&self, batch: Batch) -> SearchResult<()> {
        self.blocking(move |inner| {
            let f = &inner.fields;
            let mut writer = inner
                .writer
                .lock()
                .map_err(|_| SearchError::Index("the index writer was poisoned".into()))?;
            for owner in &batch.erased {
                writer.delete_term(term(f.owner, &owner.to_string()));
            }
            for provider in &batch.removed_providers {
                writer.delete_term(term(f.provider, &provider.to_string()));
            }
            for id in &batch.deletes {
                writer.delete_term(term(f.id, &id.to_string()));
            }
            for doc in &batch.upserts {
                writer.delete_term(term(f.id, &doc.file_id.to_string()));
                writer.add_document(to_document(f, doc)?)?;
            }
            let mut commit = writer.prepare_commit()?;
            commit.set_payload(&batch.checkpoint.to_string());
            commit.commit()?;
            // Merges between commits (see the module's doc): each one is done before the lock goes.
            let metas = inner.index.searchable_segment_metas()?;
            for candidate in tantivy::indexer::MergePolicy::compute_merge_candidates(&tantivy::indexer::LogMergePolicy::default(), &metas) {
                writer.merge(&candidate.0).wait()?;
            }
            drop(writer);
            inner.reader.reload()?;
            Ok(())
        })
        .await
    }

    async fn checkpoint(&self) -> SearchResult<i64> {
        self.blocking(|inner| Ok(inner.index.load_metas()?.payload.and_then(|p| p.parse().ok()).unwrap_or(0)))
            .await
    }

    async fn search(&self, request: &SearchRequest) -> SearchResult<SearchResults> {
        let request = request.clone();
        self.blocking(move |inner| {
            let f = &inner.fields;
            let searcher = inner.reader.searcher();
            let query = build(f, &request);
            let top = TopDocs::with_limit(request.limit.max(1))
                .and_offset(request.offset)
                .order_by_score();
            let (total, top, facets) = searcher.search(&query, &(Count, top, FacetCollector))?;
            let mut hits = Vec::new();
            for (score, at) in top.into_iter().take(request.limit) {
                let doc = source_of(&searcher, f, at)?;
                hits.push(Hit {
                    file_id: doc.file_id,
                    score,
                    highlights: highlights(&doc, &request.query),
                });
            }
            let mut facets = facets.into_iter().map(ranked);
            let mut next = || facets.next().unwrap_or_default();
            Ok(SearchResults {
                total: total as u64,
                hits,
                facets: Facets {
                    providers: next(),
                    extensions: next(),
                    kinds: next(),
                    size_buckets: next(),
                    years: next(),
                    languages: next(),
                    labels: next(),
                },
            })
        })
        .await
    }

    async fn count(&self) -> SearchResult<u64> {
        self.blocking(|inner| Ok(inner.reader.searcher().num_docs())).await
    }
}
