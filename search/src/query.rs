//! The query language of `searchFiles`: words (each must match, in the name, the path or the
//! contents; a name also matches a word's prefix, and any field a word one typo away), `"phrases"`,
//! `a OR b`, `-word` and `-"phrase"` to exclude, and field filters `ext:pdf`, `kind:image`,
//! `lang:de`, `mime:application/pdf`, `path:/Taxes` (a prefix); several filters on one field are
//! alternatives, `-ext:tmp` excludes. Everything else is a word, so no input is a syntax error.

use crate::analysis::{query_stems, tokens};

/// A field a query string can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Extension,
    Kind,
    Language,
    Mime,
    PathPrefix,
}

impl Field {
    fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "ext" | "extension" => Self::Extension,
            "kind" | "type" => Self::Kind,
            "lang" | "language" => Self::Language,
            "mime" => Self::Mime,
            "path" | "in" => Self::PathPrefix,
            _ => return None,
        })
    }
}

/// One thing that must (or must not) match.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    Word(Word),
    /// The terms of a phrase, in order (they must stand next to each other).
    Phrase {
        plain: Vec<String>,
        name: Vec<String>,
    },
}

/// A word as each field analyses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// As contents and paths are analysed (more than one when it holds punctuation: `2024-03`).
    pub plain: Vec<String>,
    /// As names are analysed (camelCase split too).
    pub name: Vec<String>,
    /// Its stems in the languages queries are stemmed in (only for a one-term word).
    pub stems: Vec<String>,
}

/// A word may be one typo away from what it finds when it is at least this long.
pub const FUZZY_FROM: usize = 5;

impl Clause {
    fn word(raw: &str) -> Option<Self> {
        let plain: Vec<String> = tokens(raw, false).into_iter().map(|t| t.term).collect();
        if plain.is_empty() {
            return None;
        }
        let name = tokens(raw, true).into_iter().map(|t| t.term).collect();
        let stems = if plain.len() == 1 { query_stems(raw) } else { Vec::new() };
        Some(Self::Word(Word { plain, name, stems }))
    }

    fn phrase(raw: &str) -> Option<Self> {
        let plain: Vec<String> = tokens(raw, false).into_iter().map(|t| t.term).collect();
        if plain.is_empty() {
            return None;
        }
        let name = tokens(raw, true).into_iter().map(|t| t.term).collect();
        Some(Self::Phrase { plain, name })
    }

    /// Every term of the clause, for highlighting.
    pub fn terms(&self) -> impl Iterator<Item = &String> {
        let (a, b, c): (&[String], &[String], &[String]) = match self {
            Self::Word(w) => (&w.plain, &w.name, &w.stems),
            Self::Phrase { plain, name } => (plain, name, &[]),
        };
        a.iter().chain(b).chain(c)
    }
}

/// A parsed query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// Each entry must match; an entry of several clauses matches when any of them does (`OR`).
    pub must: Vec<Vec<Clause>>,
    pub must_not: Vec<Clause>,
    /// Field filters: each field must match one of its values.
    pub filters: Vec<(Field, Vec<String>)>,
    pub excluded: Vec<(Field, String)>,
}

impl Query {
    /// Whether the query string had no words or phrases (it then matches every file, filtered).
    pub fn matches_all(&self) -> bool {
        self.must.is_empty()
    }

    /// Every positive term, for highlighting.
    pub fn positive_terms(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for term in self.must.iter().flatten().flat_map(Clause::terms) {
            if !out.contains(term) {
                out.push(term.clone());
            }
        }
        out
    }
}

/// Splits on whitespace, keeping `"quoted phrases"` (an unclosed quote runs to the end) together;
/// a leading `-` stays on its piece.
fn pieces(input: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut piece = String::new();
        let mut quoted = false;
        if c == '-' {
            piece.push('-');
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                piece.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                piece.push(c);
                chars.next();
            }
        }
        out.push((piece, quoted));
    }
    out
}

/// Parses a query string (never fails: what is not an operator is a word).
pub fn parse(input: &str) -> Query {
    let mut query = Query::default();
    let mut join_next = false;
    for (piece, quoted) in pieces(input) {
        if !quoted && piece == "OR" {
            join_next = !query.must.is_empty();
            continue;
        }
        let (negated, body) = match piece.strip_prefix('-') {
            Some(rest) if !rest.is_empty() => (true, rest),
            _ => (false, piece.as_str()),
        };
        if !quoted
            && let Some((name, value)) = body.split_once(':')
            && let Some(field) = Field::parse(name)
            && !value.is_empty()
        {
            let value = if field == Field::PathPrefix {
                value.to_owned()
            } else {
                value.trim_start_matches('.').to_lowercase()
            };
            if negated {
                query.excluded.push((field, value));
            } else if let Some((_, values)) = query.filters.iter_mut().find(|(f, _)| *f == field) {
                values.push(value);
            } else {
                query.filters.push((field, vec![value]));
            }
            join_next = false;
            continue;
        }
        // A run of Chinese or Japanese is several words with nothing between them: each must match,
        // quoted or not (their segmentation may differ between a query and a longer text, and a
        // word's sub-words take positions of their own, so not as a phrase).
        if !negated && !join_next && body.chars().any(crate::analysis::is_cjk) {
            for token in tokens(body, false) {
                if let Some(clause) = Clause::word(&body[token.start..token.end]) {
                    query.must.push(vec![clause]);
                }
            }
            continue;
        }
        let clause = if quoted { Clause::phrase(body) } else { Clause::word(body) };
        let Some(clause) = clause else { continue };
        if negated {
            query.must_not.push(clause);
        } else if join_next && let Some(last) = query.must.last_mut() {
            last.push(clause);
        } else {
            query.must.push(vec![clause]);
        }
        join_next = false;
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(raw: &str) -> Clause {
        Clause::word(raw).expect("a word")
    }

    #[test]
    fn words_phrases_or_not_and_filters() {
        let q = parse(r#"invoice "tax return" receipt OR bill -draft -"old copy" ext:pdf ext:.DOCX -kind:image path:/Taxes/2024"#);
        assert_eq!(q.must.len(), 3);
        assert_eq!(q.must[0], vec![word("invoice")]);
        assert_eq!(q.must[1], vec![Clause::phrase("tax return").expect("a phrase")]);
        assert_eq!(q.must[2], vec![word("receipt"), word("bill")]);
        assert_eq!(q.must_not, vec![word("draft"), Clause::phrase("old copy").expect("a phrase")]);
        assert_eq!(
            q.filters,
            vec![
                (Field::Extension, vec!["pdf".into(), "docx".into()]),
                (Field::PathPrefix, vec!["/Taxes/2024".into()])
            ]
        );
        assert_eq!(q.excluded, vec![(Field::Kind, "image".into())]);
    }

    #[test]
    fn odd_input_is_words() {
        let q = parse(r#"OR - "unclosed phrase  foo:bar ::"#);
        assert_eq!(q.must.len(), 1, "{q:?}");
        assert!(parse("   ").matches_all());
        assert_eq!(parse("foo:bar").must, vec![vec![word("foo:bar")]]);
        let Clause::Word(w) = word("myTaxReturn") else { panic!() };
        assert_eq!(
            (w.plain, w.name),
            (vec!["mytaxreturn".to_owned()], vec!["my".into(), "tax".into(), "return".into()])
        );
    }
}
