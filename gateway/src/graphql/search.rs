//! `searchFiles`: the caller's files found by name, path and contents, with highlights and exact
//! facets, from the search index (tantivy or Elasticsearch). Answers are cached until the index
//! moves on; a search waits, like every read, until the index has the caller's last write, or
//! says how far it has got (`indexedPosition`, `stale`).

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_domain::ProviderId;
use cloudsync_identity::access::scope;
use cloudsync_search::meaning::{self, Mode};
use cloudsync_search::{FacetCounts, Filters, SearchRequest, query};

use super::files::File;
use super::{app, caller_for, offset_after, offset_cursor, parse_id};
use crate::errors::ApiError;

/// The most hits one page holds.
const MAX_FIRST: i32 = 100;
/// How deep pages go (Elasticsearch's default `max_result_window`).
const MAX_DEPTH: usize = 10_000;

#[derive(InputObject, Default)]
pub struct SearchFilters {
    provider_ids: Option<Vec<ID>>,
    /// A folder (relative to its provider's root): only files inside it.
    path_prefix: Option<String>,
    /// Without the dot, any case.
    extensions: Option<Vec<String>>,
    mime_types: Option<Vec<String>>,
    min_size: Option<i64>,
    max_size: Option<i64>,
    modified_after: Option<DateTime<Utc>>,
    modified_before: Option<DateTime<Utc>>,
    /// ISO 639-1 codes (`en`, `de`).
    languages: Option<Vec<String>>,
    /// `document`, `spreadsheet`, `presentation`, `image`, `video`, `audio`, `archive`, `code`,
    /// `text` or `other`.
    kinds: Option<Vec<String>>,
    /// Pictures with any of these labels, as `File.image.labels` and the `labels` facet name them.
    labels: Option<Vec<String>>,
    /// Pictures taken at or after this time (their EXIF time, which has no zone, read as UTC).
    taken_after: Option<DateTime<Utc>>,
    /// Pictures taken at or before this time (read as `takenAfter` is).
    taken_before: Option<DateTime<Utc>>,
}

/// How `searchFiles` ranks the caller's files.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum SearchMode {
    /// By the words of the query (names, paths, contents).
    Keyword,
    /// By meaning: files whose name or text is nearest the query's meaning, whatever their words.
    Semantic,
    /// Both rankings fused (reciprocal rank fusion): the default once the caller's files have
    /// embeddings.
    Hybrid,
}

impl From<SearchMode> for Mode {
    fn from(mode: SearchMode) -> Self {
        match mode {
            SearchMode::Keyword => Self::Keyword,
            SearchMode::Semantic => Self::Semantic,
            SearchMode::Hybrid => Self::Hybrid,
        }
    }
}

#[derive(SimpleObject)]
pub struct Highlight {
    /// `name`, `path` or `content`.
    field: String,
    /// The matched words wrapped in `<mark>…</mark>`; the rest HTML-escaped.
    snippet: String,
}

#[derive(SimpleObject)]
pub struct SearchHit {
    file: File,
    score: f64,
    highlights: Vec<Highlight>,
}

#[derive(SimpleObject)]
pub struct FacetCount {
    value: String,
    count: i64,
}

#[derive(SimpleObject)]
pub struct SearchFacets {
    providers: Vec<FacetCount>,
    extensions: Vec<FacetCount>,
    kinds: Vec<FacetCount>,
    /// `0-10KiB`, `10KiB-1MiB`, `1MiB-100MiB`, `100MiB-1GiB`, `1GiB+`.
    size_buckets: Vec<FacetCount>,
    years: Vec<FacetCount>,
    languages: Vec<FacetCount>,
    /// Pictures' labels (what the image classifier sees in them).
    labels: Vec<FacetCount>,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    has_previous_page: bool,
    start_cursor: Option<String>,
    end_cursor: Option<String>,
}

#[derive(SimpleObject)]
pub struct SearchResult {
    /// How many of the caller's files match (all pages).
    total: i64,
    hits: Vec<SearchHit>,
    facets: SearchFacets,
    page_info: PageInfo,
    /// The log position the index had reached when it answered.
    indexed_position: i64,
    /// True when the index had not yet reached the caller's last write.
    stale: bool,
}

fn counts(values: FacetCounts) -> Vec<FacetCount> {
    values
        .into_iter()
        .map(|(value, count)| FacetCount {
            value,
            count: i64::try_from(count).unwrap_or(i64::MAX),
        })
        .collect()
}

fn size(value: Option<i64>, what: &str) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| u64::try_from(v).map_err(|_| ApiError::BadInput(format!("{what} must not be negative"))))
        .transpose()
}

fn to_filters(input: SearchFilters) -> Result<Filters, ApiError> {
    let providers = input
        .provider_ids
        .unwrap_or_default()
        .iter()
        .map(|id| parse_id(id, "provider").map(ProviderId::from_uuid))
        .collect::<Result<Vec<_>, _>>()?;
    let lower = |values: Option<Vec<String>>| -> Vec<String> {
        values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.trim().trim_start_matches('.').to_lowercase())
            .collect()
    };
    let filters = Filters {
        providers,
        path_prefix: input.path_prefix.filter(|p| !p.trim_matches('/').is_empty()),
        extensions: lower(input.extensions),
        mime_types: lower(input.mime_types),
        kinds: lower(input.kinds),
        min_size: size(input.min_size, "minSize")?,
        max_size: size(input.max_size, "maxSize")?,
        modified_after: input.modified_after,
        modified_before: input.modified_before,
        languages: lower(input.languages),
        labels: input
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        taken_after: input.taken_after,
        taken_before: input.taken_before,
        files: None,
    };
    if let (Some(after), Some(before)) = (filters.taken_after, filters.taken_before)
        && after > before
    {
        return Err(ApiError::BadInput("takenAfter must not be later than takenBefore".into()));
    }
    if let (Some(min), Some(max)) = (filters.min_size, filters.max_size)
        && min > max
    {
        return Err(ApiError::BadInput("minSize must not be more than maxSize".into()));
    }
    Ok(filters)
}

#[derive(Default)]
pub struct SearchQuery;

#[Object]
impl SearchQuery {
    /// Finds the caller's files by name, path and contents. `query` takes words (each must match;
    /// names also match a word's beginning, and a word one typo away), `"phrases"`, `a OR b`,
    /// `-word`, and filters `ext:pdf`, `kind:image`, `lang:de`, `mime:…`, `path:Folder`; an empty
    /// query lists every file the filters let through. `after` is a hit's cursor (`pageInfo.endCursor`).
    /// `mode` ranks by words, by meaning or both (default: `HYBRID` once the caller's files have
    /// embeddings, else `KEYWORD`); searches by meaning go 200 files deep.
    async fn search_files(
        &self,
        ctx: &Context<'_>,
        query: String,
        filters: Option<SearchFilters>,
        #[graphql(default = 20)] first: i32,
        after: Option<String>,
        mode: Option<SearchMode>,
    ) -> async_graphql::Result<SearchResult> {
        let started = std::time::Instant::now();
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        if !(1..=MAX_FIRST).contains(&first) {
            return Err(ApiError::BadInput(format!("first must be between 1 and {MAX_FIRST}")).into());
        }
        if query.len() > 1000 {
            return Err(ApiError::BadInput("query must be at most 1000 bytes".into()).into());
        }
        let limit = usize::try_from(first).unwrap_or(20);
        let offset = offset_after("search", "searchFiles", after.as_deref())?;
        if offset + limit > MAX_DEPTH {
            return Err(ApiError::BadInput(format!("searchFiles pages go {MAX_DEPTH} hits deep; narrow the query instead")).into());
        }
        let filters = to_filters(filters.unwrap_or_default())?;
        let meaning_text = meaning::meaning_text(&query);
        let mode = match mode {
            Some(SearchMode::Keyword) => Mode::Keyword,
            Some(asked) => {
                if app.models.text().is_none() {
                    return Err(
                        ApiError::BadInput("search by meaning is not available here: no text embedding model is installed".into()).into(),
                    );
                }
                asked.into()
            }
            None if app.models.text().is_some()
                && app
                    .vectors
                    .index()
                    .embedded_files(caller.user_id)
                    .await
                    .map_err(|err| ApiError::internal(&err))?
                    > 0 =>
            {
                Mode::Hybrid
            }
            None => Mode::Keyword,
        };
        let by_meaning = mode != Mode::Keyword && !meaning_text.is_empty();
        let stale = if by_meaning {
            !app.searchable_by_meaning(caller).await
        } else {
            !app.searchable(caller).await
        };
        let position = app.search.position();
        let key = format!(
            "{}|{query}|{filters:?}|{offset}|{limit}|{mode:?}|{}",
            caller.user_id,
            if by_meaning { app.vectors.position() } else { 0 }
        );
        let (results, cached) = match app.search_cache.get(position, &key).await {
            Some(results) => (results, "true"),
            None => {
                let request = SearchRequest {
                    owner: caller.user_id,
                    query: query::parse(&query),
                    filters,
                    offset,
                    limit,
                };
                let vector = if by_meaning {
                    let mut embedded = app.models.embed(vec![meaning_text]).await.map_err(|err| ApiError::internal(&err))?;
                    embedded.pop()
                } else {
                    None
                };
                let index = app.search.search().index().await;
                let results = meaning::search(&*index, &**app.vectors.index(), &request, vector.as_deref(), mode)
                    .await
                    .map_err(|err| ApiError::internal(&err))?;
                app.search_cache.put(position, &key, &results).await;
                (results, "false")
            }
        };
        let mode_label = match mode {
            Mode::Keyword => "keyword",
            Mode::Semantic => "semantic",
            Mode::Hybrid => "hybrid",
        };
        metrics::histogram!("cloudsync_search_duration_seconds", "mode" => mode_label, "cached" => cached)
            .record(started.elapsed().as_secs_f64());
        let mut hits = Vec::new();
        for hit in results.hits {
            // The read models are as far as the index (both waited for): a file missing there is
            // one deleted since, and is left out.
            if let Some(row) = app
                .reads
                .file(caller.user_id, hit.file_id.as_uuid())
                .await
                .map_err(ApiError::from)?
            {
                hits.push(SearchHit {
                    file: File::from(row),
                    score: f64::from(hit.score),
                    highlights: hit
                        .highlights
                        .into_iter()
                        .map(|h| Highlight {
                            field: h.field.to_owned(),
                            snippet: h.snippet,
                        })
                        .collect(),
                });
            }
        }
        let shown = offset + limit;
        let total = usize::try_from(results.total).unwrap_or(usize::MAX);
        let last = (offset + limit).min(total);
        let facets = results.facets;
        Ok(SearchResult {
            total: i64::try_from(results.total).unwrap_or(i64::MAX),
            page_info: PageInfo {
                has_next_page: total > shown,
                has_previous_page: offset > 0,
                start_cursor: (last > offset).then(|| offset_cursor("search", offset)),
                end_cursor: (last > offset).then(|| offset_cursor("search", last - 1)),
            },
            hits,
            facets: SearchFacets {
                providers: counts(facets.providers),
                extensions: counts(facets.extensions),
                kinds: counts(facets.kinds),
                size_buckets: counts(facets.size_buckets),
                years: counts(facets.years),
                languages: counts(facets.languages),
                labels: counts(facets.labels),
            },
            indexed_position: position,
            stale,
        })
    }
}

const MAX_SIMILAR: i32 = 100;

#[derive(Default)]
pub struct SimilarQuery;

#[Object]
impl SimilarQuery {
    /// The caller's files nearest in meaning to one of theirs (by its name and text), nearest
    /// first; `score` is the cosine (1 for the same meaning). Empty until the file has embeddings.
    async fn similar_files(
        &self,
        ctx: &Context<'_>,
        file_id: ID,
        #[graphql(default = 10)] first: i32,
    ) -> async_graphql::Result<Vec<SearchHit>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        if !(1..=MAX_SIMILAR).contains(&first) {
            return Err(ApiError::BadInput(format!("first must be between 1 and {MAX_SIMILAR}")).into());
        }
        let id = parse_id(&file_id, "file")?;
        app.searchable_by_meaning(caller).await;
        if app.reads.file(caller.user_id, id).await.map_err(ApiError::from)?.is_none() {
            return Err(ApiError::not_found("file").into());
        }
        let file = cloudsync_domain::FileId::from_uuid(id);
        let index = app.vectors.index();
        let vectors = index.vectors(caller.user_id, file).await.map_err(|err| ApiError::internal(&err))?;
        let Some(probe) = meaning::centroid(&vectors) else {
            return Ok(Vec::new());
        };
        let near = index
            .nearest(caller.user_id, &probe, usize::try_from(first).unwrap_or(10), Some(file))
            .await
            .map_err(|err| ApiError::internal(&err))?;
        let mut hits = Vec::with_capacity(near.len());
        for found in near.into_iter().filter(|n| n.score >= meaning::MIN_SIMILARITY) {
            if let Some(row) = app
                .reads
                .file(caller.user_id, found.file_id.as_uuid())
                .await
                .map_err(ApiError::from)?
            {
                hits.push(SearchHit {
                    file: File::from(row),
                    score: f64::from(found.score),
                    highlights: Vec::new(),
                });
            }
        }
        Ok(hits)
    }
}
