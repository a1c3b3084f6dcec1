//! How a search by meaning is answered, over the full-text index and the vector index together.
//! [`Mode::Keyword`] is the full-text search alone. [`Mode::Semantic`] ranks the owner's files by
//! the cosine of their nearest vector (name or passage) to the query's, keeping those at least
//! [`MIN_SIMILARITY`] alike. [`Mode::Hybrid`] fuses the two rankings by reciprocal rank fusion
//! (each file scores `Σ 1 / (RRF_K + rank)` over the lists it is in), so a file both find comes
//! first, and a keyword query that embeddings miss (a part number, a rare name) still finds it. Its
//! keyword ranking asks for every word as `KEYWORD` does, but without the function words of English
//! ("how", "a", "my"), which say how a question is put rather than what it is about. (Letting any
//! word match instead ranked long documents full of common words above the answers: see
//! `BENCHMARKS.md`.)
//! Filters hold in every mode, and facets count the files of the fused ranking: both come from the
//! full-text index, asked for exactly the ranked files.

use std::collections::HashMap;

use cloudsync_domain::FileId;

use crate::vectors::VectorIndex;
use crate::{Hit, SearchIndex, SearchRequest, SearchResult, SearchResults, query};

/// Files each ranking contributes at most; pages of a semantic or hybrid search go this deep.
pub const CANDIDATES: usize = 200;
/// The least cosine a file needs to be found by meaning (all-MiniLM-L6-v2 puts unrelated texts
/// around 0 to 0.15).
pub const MIN_SIMILARITY: f32 = 0.2;
/// Reciprocal rank fusion's constant (the value of the paper that introduced it).
pub const RRF_K: f32 = 60.0;

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
    let mut keyword_hits: HashMap<FileId, Hit> = HashMap::new();
    let ranked: Vec<(FileId, f32)> = match mode {
        // Scored by the cosine itself, which says more than a rank.
        Mode::Semantic => near,
        _ => {
            let words = SearchRequest {
                query: without_function_words(&request.query),
                offset: 0,
                limit: CANDIDATES,
                ..request.clone()
            };
            let found = if without_function_words(&request.query).matches_all() {
                Vec::new()
            } else {
                index.search(&words).await?.hits
            };
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
