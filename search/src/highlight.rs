//! Highlights, cut the same way for both backends from the text an index keeps: the words a query
//! found (exactly, by stem, by prefix in names, or one typo away) wrapped in `<mark>…</mark>`, the
//! rest HTML-escaped; long texts are cut to a window around the first match.

use crate::analysis::{stem_word, visit_tokens};
use crate::query::{FUZZY_FROM, Query};
use crate::{Highlight, SearchDoc};

/// How much of a long text a snippet shows, in characters.
const WINDOW: usize = 200;
/// How far before the first match a snippet starts, in characters.
const LEAD: usize = 60;

/// Whether `a` and `b` are at most one edit apart (a transposition counting as one).
pub fn one_typo(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return true;
    }
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) > 1 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    if n == m {
        // One substitution, or one transposition.
        ra[1..] == rb[1..] || (ra.len() >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
    } else if n > m {
        ra[1..] == *rb
    } else {
        *ra == rb[1..]
    }
}

/// What a highlighter looks for.
pub struct Marker<'a> {
    pub terms: &'a [String],
    /// Names: a word that starts with a term of the query is a match too.
    pub prefixes: bool,
    /// The text's language, for matching stems.
    pub language: Option<&'a str>,
}

impl Marker<'_> {
    /// Whether the analysed `term` of the text's `word` is one the marker looks for.
    pub fn matches(&self, term: &str, word: &str) -> bool {
        if self.terms.iter().any(|t| t == term) {
            return true;
        }
        if self.prefixes && self.terms.iter().any(|t| t.len() >= 2 && term.starts_with(t.as_str())) {
            return true;
        }
        // A stem keeps its word's first letter (Snowball strips endings), so only such words are stemmed.
        if let Some(language) = self.language
            && self.terms.iter().any(|t| t.as_bytes().first() == term.as_bytes().first())
            && let Some(stem) = stem_word(word, language)
            && self.terms.contains(&stem)
        {
            return true;
        }
        self.terms.iter().any(|t| {
            // Words of ASCII letters whose lengths differ by two or more are not one typo apart.
            let far = t.is_ascii() && term.is_ascii() && t.len().abs_diff(term.len()) > 1;
            !far && t.chars().count() >= FUZZY_FROM && one_typo(t, term)
        })
    }

    /// The snippet of `text` with its matches marked, or `None` when nothing in it matches. Only
    /// the text up to the end of the snippet's window is analysed.
    pub fn snippet(&self, text: &str, names: bool) -> Option<String> {
        let long = text.chars().count() > WINDOW;
        let (mut from, mut to) = (0, text.len());
        let mut marks: Vec<(usize, usize)> = Vec::new();
        visit_tokens(text, names, |t| {
            if !marks.is_empty() && t.start >= to {
                return false;
            }
            if self.matches(&t.term, &text[t.start..t.end]) {
                if marks.is_empty() && long {
                    // Text without spaces (Chinese, Japanese) must not push the start past the match.
                    from = back_to_word(text, char_back(text, t.start, LEAD)).min(t.start);
                    to = char_forward(text, from, WINDOW).max(t.end);
                }
                marks.push((t.start, t.end));
            }
            true
        });
        marks.first()?;
        let mut out = String::new();
        if from > 0 {
            out.push('…');
        }
        let mut at = from;
        for &(start, end) in marks.iter().filter(|(s, e)| *s >= from && *e <= to) {
            if start < at {
                continue; // overlapping pairs of CJK characters: the first one marked wins
            }
            escape(&text[at..start], &mut out);
            out.push_str("<mark>");
            escape(&text[start..end], &mut out);
            out.push_str("</mark>");
            at = end;
        }
        escape(&text[at..to], &mut out);
        if to < text.len() {
            out.push('…');
        }
        Some(out.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// The highlights of a hit: its name, its folder and its contents, where the query matched them.
pub fn highlights(doc: &SearchDoc, query: &Query) -> Vec<Highlight> {
    let terms = query.positive_terms();
    if terms.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let names = Marker {
        terms: &terms,
        prefixes: true,
        language: None,
    };
    if let Some(snippet) = names.snippet(doc.name(), true) {
        out.push(Highlight {
            field: "name".into(),
            snippet,
        });
    }
    if let Some(snippet) = (Marker { prefixes: false, ..names }).snippet(doc.folder(), true) {
        out.push(Highlight {
            field: "path".into(),
            snippet,
        });
    }
    if let Some(text) = doc.text() {
        let language = Some(doc.language()).filter(|l| !l.is_empty());
        if let Some(snippet) = (Marker {
            terms: &terms,
            prefixes: false,
            language,
        })
        .snippet(text, false)
        {
            out.push(Highlight {
                field: "content".into(),
                snippet,
            });
        }
    }
    out
}

fn char_back(text: &str, at: usize, chars: usize) -> usize {
    text[..at].char_indices().rev().nth(chars.saturating_sub(1)).map_or(0, |(i, _)| i)
}

fn char_forward(text: &str, at: usize, chars: usize) -> usize {
    text[at..].char_indices().nth(chars).map_or(text.len(), |(i, _)| at + i)
}

/// Moves a cut forward to the start of the next word, so a snippet does not begin mid-word.
fn back_to_word(text: &str, at: usize) -> usize {
    if at == 0 {
        return 0;
    }
    text[at..].find(char::is_whitespace).map_or(at, |i| at + i)
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_one_edit() {
        assert!(one_typo("recieve", "receive"));
        assert!(one_typo("receve", "receive"));
        assert!(one_typo("receivee", "receive"));
        assert!(!one_typo("recv", "receive"));
    }

    #[test]
    fn matches_are_marked_and_the_rest_escaped() {
        let terms = vec!["invo".to_owned(), "haus".to_owned()];
        let names = Marker {
            terms: &terms,
            prefixes: true,
            language: None,
        };
        assert_eq!(
            names.snippet("invoice-2024.pdf", true).as_deref(),
            Some("<mark>invoice</mark>-2024.pdf")
        );
        let text = Marker {
            terms: &terms,
            prefixes: false,
            language: Some("de"),
        };
        assert_eq!(
            text.snippet("<b>Die Häuser</b>", false).as_deref(),
            Some("&lt;b&gt;Die <mark>Häuser</mark>&lt;/b&gt;")
        );
        assert_eq!(text.snippet("nothing here", false), None);
        let long = format!("{} needle {}", "hay ".repeat(100), "straw ".repeat(100));
        let needle = vec!["needle".to_owned()];
        let cut = Marker {
            terms: &needle,
            prefixes: false,
            language: None,
        }
        .snippet(&long, false)
        .expect("a match");
        assert!(
            cut.starts_with('…') && cut.ends_with('…') && cut.contains("<mark>needle</mark>"),
            "{cut}"
        );
        assert!(cut.chars().count() < 260, "{cut}");
    }
}
