//! How a search by meaning is answered, over the full-text index and the vector index together.
//! [`Mode::Keyword`] is the full-text search alone. [`Mode::Semantic`] finds the owner's files whose
//! nearest vector (name or passage) is at least [`MIN_SIMILARITY`] alike to the query's, and ranks
//! them by the mean of that cosine and the cosine of the file's [`centroid`] (what the whole file is
//! about): a file about the query throughout then comes before one with a single passage that
//! happens to lie close (see `BENCHMARKS.md`, "Search by meaning"). [`Mode::Hybrid`] fuses the two rankings by reciprocal rank fusion
//! (each file scores `Σ 1 / (RRF_K + rank)` over the lists it is in), so a file both find comes
//! first, and a keyword query that embeddings miss (a part number, a rare name) still finds it. Its
//! keyword ranking asks for every word as `KEYWORD` does, but without the function words of English
//! ("how", "a", "my"), which say how a question is put rather than what it is about, and it keeps a
//! file only where its words stand together: within [`NEAR_WORDS`] words of one another in its text
//! (a passage's length), or in its name, path or labels. A long document that holds common words
//! far apart then no longer counts as a keyword match and lifted above the meaning's answer by the
//! fusion. (Letting any word match instead ranked long documents full of common words above the
//! answers: see `BENCHMARKS.md`.)
//! Filters hold in every mode, and facets count the files of the fused ranking: both come from the
//! full-text index, asked for exactly the ranked files.

use std::collections::HashMap;

use cloudsync_domain::{FileId, UserId};

use crate::analysis::visit_tokens;
use crate::highlight::Marker;
use crate::vectors::VectorIndex;
use crate::{Hit, SearchDoc, SearchIndex, SearchRequest, SearchResult, SearchResults, query};

/// Files each ranking contributes at most; pages of a semantic or hybrid search go this deep.
pub const CANDIDATES: usize = 200;
/// The least cosine a file needs to be found by meaning (all-MiniLM-L6-v2 puts unrelated texts
/// around 0 to 0.15).
pub const MIN_SIMILARITY: f32 = 0.2;
/// Reciprocal rank fusion's constant (the value of the paper that introduced it).
pub const RRF_K: f32 = 60.0;
/// How close a hybrid search's keywords must stand in a file's text, in words (a passage's length).
pub const NEAR_WORDS: usize = 120;
/// The keyword hits a hybrid search checks for words that stand together; deeper hits are dropped.
const NEAR_CHECKED: usize = 50;
/// How far into a text the check reads, in words.
const NEAR_SCANNED: usize = 200_000;

/// How `searchFiles` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Keyword,
    Semantic,
    Hybrid,
}

/// The words of a query string that say what it means: filters (`ext:pdf`) and exclusions (`-draft`)
/// left out, quotes and `OR` dropped.
#[must_use]
pub fn meaning_text(input: &str) -> String {
    input
        .split_whitespace()
        .filter(|word| !word.starts_with('-') && !word.contains(':') && *word != "OR")
        .map(|word| word.trim_matches('"'))
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a file is about as one unit vector: the mean of its passages' vectors (the first vector,
/// its name's, alone when it has no text). `None` for a file without vectors.
#[must_use]
pub fn centroid(vectors: &[Vec<f32>]) -> Option<Vec<f32>> {
    let chosen = if vectors.len() > 1 { &vectors[1..] } else { vectors };
    let dims = chosen.first()?.len();
    let mut sum = vec![0f32; dims];
    for vector in chosen.iter().filter(|v| v.len() == dims) {
        for (s, x) in sum.iter_mut().zip(vector) {
            *s += x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0).then(|| sum.into_iter().map(|x| x / norm).collect())
}

/// Ranks the files found by their nearest vector (`near`, with that cosine) by meaning: each scores
/// the mean of that cosine and its [`centroid`]'s cosine to `query` (a unit vector), best first; a
/// tie keeps `near`'s order.
///
/// # Errors
/// The vector index failed.
pub async fn by_meaning(
    vectors: &dyn VectorIndex,
    owner: UserId,
    query: &[f32],
    near: Vec<(FileId, f32)>,
) -> SearchResult<Vec<(FileId, f32)>> {
    let ids: Vec<FileId> = near.iter().map(|(id, _)| *id).collect();
    let all = vectors.vectors_of(owner, &ids).await?;
    let mut ranked: Vec<(FileId, f32)> = near
        .into_iter()
        .map(|(id, best)| {
            let whole = all
                .get(&id)
                .and_then(|v| centroid(v))
                .filter(|c| c.len() == query.len())
                .map_or(best, |c| c.iter().zip(query).map(|(a, b)| a * b).sum());
            (id, f32::midpoint(best, whole))
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ranked)
}

/// English function words: left out of the hybrid ranking's keyword query.
const FUNCTION_WORDS: [&str; 98] = [
    "a", "about", "after", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been", "before", "being", "but", "by", "can",
    "could", "did", "do", "does", "doing", "down", "during", "each", "for", "from", "had", "has", "have", "having", "he", "her", "here",
    "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "more", "most", "my", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that",
    "the", "their", "them", "then", "there", "these", "they", "this", "those", "to", "too", "under", "until", "up", "very", "was", "we",
    "were", "what", "when", "where", "which", "who", "why", "with",
];

/// The query without its words that are only English function words (phrases, exclusions and
/// filters kept).
#[must_use]
pub fn without_function_words(query: &query::Query) -> query::Query {
    let meaningful = |clause: &query::Clause| match clause {
        query::Clause::Word(word) => !word.plain.iter().all(|term| FUNCTION_WORDS.contains(&term.as_str())),
        query::Clause::Phrase { .. } => true,
    };
    query::Query {
        must: query
            .must
            .iter()
            .map(|group| group.iter().filter(|c| meaningful(c)).cloned().collect::<Vec<_>>())
            .filter(|group| !group.is_empty())
            .collect(),
        ..query.clone()
    }
}

/// Whether every part of `query` (each entry of `must`) is in the file's name, path or labels, or
/// all of them lie within [`NEAR_WORDS`] words of one another in its text.
#[must_use]
pub fn together(doc: &SearchDoc, query: &query::Query) -> bool {
    let groups: Vec<Vec<String>> = query
        .must
        .iter()
        .map(|group| group.iter().flat_map(query::Clause::terms).cloned().collect())
        .collect();
    let everywhere = |terms: &[String]| {
        let marker = Marker {
            terms,
            prefixes: true,
            language: None,
        };
        let mut found = false;
        for text in [doc.name(), doc.folder()]
            .into_iter()
            .chain(doc.labels().iter().map(String::as_str))
        {
            visit_tokens(text, true, |t| {
                found = marker.matches(&t.term, &text[t.start..t.end]);
                !found
            });
            if found {
                return true;
            }
        }
        false
    };
    let missing: Vec<&[String]> = groups.iter().map(Vec::as_slice).filter(|terms| !everywhere(terms)).collect();
    if missing.is_empty() {
        return true;
    }
    let Some(text) = doc.text() else { return false };
    let language = Some(doc.language()).filter(|l| !l.is_empty());
    let markers: Vec<Marker<'_>> = missing
        .iter()
        .map(|terms| Marker {
            terms,
            prefixes: false,
            language,
        })
        .collect();
    // The window that ends at each word holds every part when each part was last seen inside it.
    let mut last_seen: Vec<Option<usize>> = vec![None; markers.len()];
    let (mut at, mut found) = (0usize, false);
    visit_tokens(text, false, |t| {
        for (marker, seen) in markers.iter().zip(&mut last_seen) {
            if marker.matches(&t.term, &text[t.start..t.end]) {
                *seen = Some(at);
            }
        }
        found = last_seen.iter().all(|seen| seen.is_some_and(|s| at - s < NEAR_WORDS));
        at += 1;
        !found && at < NEAR_SCANNED
    });
    found
}

/// Fuses rankings (best first) by reciprocal rank fusion; ties keep the first list's order.
#[must_use]
pub fn fuse(rankings: &[Vec<FileId>]) -> Vec<(FileId, f32)> {
    let mut scores: HashMap<FileId, (f32, usize)> = HashMap::new();
    let mut order = 0;
    for ranking in rankings {
        for (rank, id) in ranking.iter().enumerate() {
            let entry = scores.entry(*id).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            entry.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(FileId, f32, usize)> = scores.into_iter().map(|(id, (score, first))| (id, score, first)).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    fused.into_iter().map(|(id, score, _)| (id, score)).collect()
}

/// The hybrid mode's keyword ranking: the query's words but English function words, in files
/// that hold them together (see the module's doc), best first.
///
/// # Errors
/// The full-text index failed.
pub async fn keyword_ranking(index: &dyn SearchIndex, request: &SearchRequest) -> SearchResult<Vec<Hit>> {
    let words = SearchRequest {
        query: without_function_words(&request.query),
        offset: 0,
        limit: CANDIDATES,
        ..request.clone()
    };
    if words.query.matches_all() {
        return Ok(Vec::new());
    }
    let found = index.search(&words).await?.hits;
    if words.query.must.len() < 2 {
        return Ok(found);
    }
    let checked: Vec<FileId> = found.iter().take(NEAR_CHECKED).map(|h| h.file_id).collect();
    let near: std::collections::HashSet<FileId> = index
        .get(&checked)
        .await?
        .iter()
        .filter(|doc| together(doc, &words.query))
        .map(|doc| doc.file_id)
        .collect();
    Ok(found.into_iter().take(NEAR_CHECKED).filter(|h| near.contains(&h.file_id)).collect())
}

/// Answers `request` in `mode`; `vector` is the query's embedding (required for the semantic and
/// hybrid modes, which fall back to keywords without it or for an empty query).
///
/// # Errors
/// Either index failed.
pub async fn search(
    index: &dyn SearchIndex,
    vectors: &dyn VectorIndex,
    request: &SearchRequest,
    vector: Option<&[f32]>,
    mode: Mode,
) -> SearchResult<SearchResults> {
    let vector = match (mode, vector) {
        (Mode::Keyword, _) | (_, None) => return index.search(request).await,
        (_, Some(vector)) => vector,
    };
    let near: Vec<(FileId, f32)> = vectors
        .nearest(request.owner, vector, CANDIDATES, None)
        .await?
        .into_iter()
        .filter(|n| n.score >= MIN_SIMILARITY)
        .map(|n| (n.file_id, n.score))
        .collect();
    let near = by_meaning(vectors, request.owner, vector, near).await?;
    let mut keyword_hits: HashMap<FileId, Hit> = HashMap::new();
    let ranked: Vec<(FileId, f32)> = match mode {
        // Scored by meaning itself, which says more than a rank.
        Mode::Semantic => near,
        _ => {
            let found = keyword_ranking(index, request).await?;
            let keyword: Vec<FileId> = found.iter().map(|h| h.file_id).collect();
            keyword_hits = found.into_iter().map(|h| (h.file_id, h)).collect();
            // The meaning's ranking first: where the two fuse to a tie, it decides.
            fuse(&[near.into_iter().map(|(id, _)| id).collect(), keyword])
        }
    };
    // The filters and facets, over exactly the ranked files.
    let mut filters = request.filters.clone();
    filters.files = Some(ranked.iter().map(|(id, _)| *id).collect());
    let allowed = index
        .search(&SearchRequest {
            owner: request.owner,
            // The query string's filters and exclusions hold too; its words were the rankings' part.
            query: query::Query {
                must: Vec::new(),
                ..request.query.clone()
            },
            filters,
            offset: 0,
            limit: CANDIDATES * 2,
        })
        .await?;
    let kept: std::collections::HashSet<FileId> = allowed.hits.iter().map(|h| h.file_id).collect();
    let ranked: Vec<(FileId, f32)> = ranked.into_iter().filter(|(id, _)| kept.contains(id)).collect();
    let hits = ranked
        .iter()
        .skip(request.offset)
        .take(request.limit)
        .map(|(id, score)| Hit {
            file_id: *id,
            score: *score,
            highlights: keyword_hits.remove(id).map(|h| h.highlights).unwrap_or_default(),
        })
        .collect();
    Ok(SearchResults {
        total: ranked.len() as u64,
        hits,
        facets: allowed.facets,
    })
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn id(n: u128) -> FileId {
        FileId::from_uuid(Uuid::from_u128(n))
    }

    #[test]
    fn files_both_rankings_find_come_first() {
        let fused = fuse(&[vec![id(1), id(2), id(3)], vec![id(3), id(4), id(1)]]);
        let order: Vec<FileId> = fused.iter().map(|(f, _)| *f).collect();
        assert_eq!(order, [id(1), id(3), id(2), id(4)]);
        assert!((fused[0].1 - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-6);
        assert_eq!(fuse(&[vec![id(5)], vec![]]), [(id(5), 1.0 / 61.0)]);
    }

    #[test]
    fn keywords_count_where_they_stand_together() {
        let doc = |path: &str, text: &str| SearchDoc {
            file_id: id(1),
            owner_id: cloudsync_domain::UserId::from_uuid(Uuid::from_u128(2)),
            provider_id: cloudsync_domain::ProviderId::from_uuid(Uuid::from_u128(3)),
            path: path.into(),
            size: 1,
            modified_at: chrono::Utc::now(),
            mime_type: "text/plain".into(),
            checksum: "c".into(),
            content: Some(crate::Content {
                checksum: "c".into(),
                text: text.into(),
                language: Some("en".into()),
            }),
            picture: None,
        };
        let query = without_function_words(&query::parse("show what is inside a folder"));
        let filler = "word ".repeat(NEAR_WORDS);
        assert!(
            together(&doc("/a.txt", "it shows what is inside the folder"), &query),
            "by stem, close together"
        );
        assert!(
            !together(&doc("/a.txt", &format!("show {filler} inside the folder")), &query),
            "too far apart"
        );
        assert!(
            together(&doc("/folder/a.txt", &format!("shows inside {filler}")), &query),
            "one word in the path"
        );
        assert!(!together(&doc("/a.txt", "show only the folder"), &query));
    }

    #[test]
    fn function_words_leave_the_keyword_arm() {
        let kept = without_function_words(&query::parse("how big is this folder on disk"));
        assert_eq!(kept.must.len(), 3, "big, folder, disk: {kept:?}");
        assert!(without_function_words(&query::parse("what is this")).matches_all());
    }

    #[test]
    fn the_meaning_of_a_query_leaves_its_syntax_out() {
        assert_eq!(
            meaning_text(r#"tax "papers from" last spring ext:pdf -draft OR"#),
            "tax papers from last spring"
        );
        assert_eq!(meaning_text("kind:image -x"), "");
    }
}
