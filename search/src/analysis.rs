//! How text becomes index terms, the same for both backends (they index these terms with a
//! whitespace tokenizer): words are split on anything that is not a letter or digit, file names also
//! on camelCase and letter-digit boundaries; every term is lower-cased and folded (`Häuser` →
//! `hauser`, `ß` → `ss`); Chinese and Japanese runs are split into words (jieba's dictionary for
//! Chinese, TinySegmenter for Japanese); contents are
//! also stemmed in their language (detected by the content pipeline; Snowball stemmers for 18
//! languages).

use std::collections::HashSet;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Terms longer than this (in bytes) are noise (hashes, base64) and are not indexed.
const MAX_TERM: usize = 64;

/// A term and where its word lies in the analysed text (byte offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub term: String,
    pub start: usize,
    pub end: usize,
}

pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // Hiragana, Katakana
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xF900..=0xFAFF   // compatibility ideographs
        | 0xFF66..=0xFF9F   // half-width Katakana
        | 0x20000..=0x2FFFF)
}

fn is_kana(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0xFF66..=0xFF9F)
}

fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: std::sync::OnceLock<jieba_rs::Jieba> = std::sync::OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// The words of a run of CJK characters, as byte ranges of `run`. Chinese is segmented by jieba's
/// dictionary in its search mode, which gives a long word and the shorter words inside it
/// (`北京大学` → `北京`, `大学`, `北京大学`), so a query for either finds it. Japanese (a run with
/// kana) first breaks where the script changes (kanji, hiragana, katakana); its kanji compounds
/// give jieba's words and their overlapping pairs of characters, its runs of kana overlapping pairs
/// (without a Japanese dictionary, `京都` is then found inside `東京都` too).
/// Queries are segmented the same way and their words all must match.
fn cjk_words(run: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let han = |from: usize, to: usize, out: &mut Vec<(usize, usize)>| {
        for token in jieba().cut_for_search(&run[from..to], true) {
            if token.byte_start < token.byte_end && from + token.byte_end <= to {
                out.push((from + token.byte_start, from + token.byte_end));
            }
        }
    };
    if !run.chars().any(is_kana) {
        han(0, run.len(), &mut out);
        return out;
    }
    #[derive(PartialEq, Clone, Copy)]
    enum Script {
        Kanji,
        Hiragana,
        Katakana,
    }
    let script = |c: char| match c as u32 {
        0x3040..=0x309F => Script::Hiragana,
        0x30A0..=0x30FF | 0xFF66..=0xFF9F => Script::Katakana,
        _ => Script::Kanji,
    };
    let mut chars = run.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let kind = script(c);
        let mut end = start + c.len_utf8();
        while let Some(&(at, n)) = chars.peek() {
            if script(n) != kind {
                break;
            }
            end = at + n.len_utf8();
            chars.next();
        }
        let at: Vec<usize> = run[start..end].char_indices().map(|(i, _)| start + i).chain([end]).collect();
        if kind == Script::Kanji {
            // Japanese compounds are not in jieba's dictionary: their overlapping pairs of
            // characters too (as Lucene's CJK analyzer makes), so that `東京` is found in `東京都`.
            let mut segment = Vec::new();
            han(start, end, &mut segment);
            let words: HashSet<(usize, usize)> = segment.iter().copied().collect();
            out.extend(segment);
            out.extend(at.windows(3).map(|p| (p[0], p[2])).filter(|pair| !words.contains(pair)));
        } else if at.len() <= 3 {
            out.push((start, end));
        } else {
            // Kana: overlapping pairs, so that a word is found inside a longer run of kana.
            out.extend(at.windows(3).map(|p| (p[0], p[2])));
        }
    }
    out
}

/// Lower-cases and folds a word: accents and umlauts dropped, ligatures and `ß` spelled out.
pub fn fold(word: &str) -> String {
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    if word.chars().any(is_kana) {
        // Kana's voicing marks are not accents (`で` is not `て`); half-width kana become full-width.
        return word.nfkc().collect();
    }
    let mut out = String::with_capacity(word.len());
    for c in word.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        match c {
            'ß' => out.push_str("ss"),
            'æ' | 'Æ' => out.push_str("ae"),
            'œ' | 'Œ' => out.push_str("oe"),
            'ø' | 'Ø' => out.push('o'),
            'ł' | 'Ł' => out.push('l'),
            'đ' | 'Đ' => out.push('d'),
            'þ' | 'Þ' => out.push_str("th"),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// Where a word of a file name breaks: `myTaxReturn` → `my|Tax|Return`, `XMLParser` → `XML|Parser`,
/// `report2024` → `report|2024`.
fn name_breaks(word: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    for i in 1..chars.len() {
        let (at, c) = chars[i];
        let prev = chars[i - 1].1;
        let next = chars.get(i + 1).map(|&(_, n)| n);
        let case_break =
            (prev.is_lowercase() && c.is_uppercase()) || (prev.is_uppercase() && c.is_uppercase() && next.is_some_and(char::is_lowercase));
        let digit_break = prev.is_numeric() != c.is_numeric();
        if case_break || digit_break {
            parts.push((start, at));
            start = at;
        }
    }
    parts.push((start, word.len()));
    parts
}

/// The terms of `text`, in order. `names`: split words the way file names are written, too.
pub fn tokens(text: &str, names: bool) -> Vec<Token> {
    let mut out = Vec::new();
    visit_tokens(text, names, |token| {
        out.push(token);
        true
    });
    out
}

/// Hands the terms of `text` to `visit` in order, as [`tokens`] makes them, until it returns false.
pub fn visit_tokens(text: &str, names: bool, mut visit: impl FnMut(Token) -> bool) {
    let going = std::cell::Cell::new(true);
    let mut push = |start: usize, end: usize| {
        if !going.get() {
            return;
        }
        let term = fold(&text[start..end]);
        if !term.is_empty() && term.len() <= MAX_TERM {
            going.set(visit(Token { term, start, end }));
        }
    };
    let mut chars = text.char_indices().peekable();
    while going.get()
        && let Some((start, c)) = chars.next()
    {
        if is_cjk(c) {
            // A run of CJK characters: its words, by a segmenter.
            let mut end = start + c.len_utf8();
            while let Some(&(at, n)) = chars.peek() {
                if !is_cjk(n) {
                    break;
                }
                end = at + n.len_utf8();
                chars.next();
            }
            for (a, b) in cjk_words(&text[start..end]) {
                push(start + a, start + b);
            }
        } else if c.is_alphanumeric() {
            let mut end = start + c.len_utf8();
            while let Some(&(at, n)) = chars.peek() {
                if !n.is_alphanumeric() || is_cjk(n) {
                    break;
                }
                end = at + n.len_utf8();
                chars.next();
            }
            if names {
                for (a, b) in name_breaks(&text[start..end]) {
                    push(start + a, start + b);
                }
            } else {
                push(start, end);
            }
        }
    }
}

/// The terms of `text` as one string, separated by spaces (what the indexes take).
pub fn terms(text: &str, names: bool) -> String {
    join(tokens(text, names).into_iter().map(|t| t.term))
}

fn join(terms: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for term in terms {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&term);
    }
    out
}

/// The languages contents are stemmed in, by ISO 639-1 code.
const STEMMED: [(&str, Algorithm); 18] = [
    ("ar", Algorithm::Arabic),
    ("da", Algorithm::Danish),
    ("de", Algorithm::German),
    ("el", Algorithm::Greek),
    ("en", Algorithm::English),
    ("es", Algorithm::Spanish),
    ("fi", Algorithm::Finnish),
    ("fr", Algorithm::French),
    ("hu", Algorithm::Hungarian),
    ("it", Algorithm::Italian),
    ("nl", Algorithm::Dutch),
    ("no", Algorithm::Norwegian),
    ("pt", Algorithm::Portuguese),
    ("ro", Algorithm::Romanian),
    ("ru", Algorithm::Russian),
    ("sv", Algorithm::Swedish),
    ("ta", Algorithm::Tamil),
    ("tr", Algorithm::Turkish),
];

/// The languages a query's words are stemmed in (the ones people write most here).
const QUERY_STEMMED: [&str; 7] = ["en", "de", "fr", "es", "it", "pt", "nl"];

fn stemmer(language: &str) -> Option<Stemmer> {
    STEMMED
        .iter()
        .find(|(code, _)| *code == language)
        .map(|&(_, algorithm)| Stemmer::create(algorithm))
}

/// The stemmed terms of `text` in `language` (stemmed before folding, so `Häuser` → `haus`), or
/// `None` where there is no stemmer for it.
pub fn stemmed(text: &str, language: &str) -> Option<String> {
    let stemmer = stemmer(language)?;
    Some(join(
        tokens(text, false)
            .into_iter()
            .map(|t| fold(&stemmer.stem(&text[t.start..t.end].to_lowercase()))),
    ))
}

/// The stems a query word may have in the languages queries are stemmed in, without repeats.
pub fn query_stems(word: &str) -> Vec<String> {
    let lower = word.to_lowercase();
    let mut stems: Vec<String> = Vec::new();
    for language in QUERY_STEMMED {
        if let Some(stemmer) = stemmer(language) {
            let stem = fold(&stemmer.stem(&lower));
            if !stem.is_empty() && !stems.contains(&stem) {
                stems.push(stem);
            }
        }
    }
    stems
}

/// The stem of one word in `language`, folded (for highlighting).
pub fn stem_word(word: &str, language: &str) -> Option<String> {
    stemmer(language).map(|s| fold(&s.stem(&word.to_lowercase())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        tokens(text, true).into_iter().map(|t| t.term).collect()
    }

    #[test]
    fn names_split_on_separators_camel_case_and_digits() {
        assert_eq!(names("invoice-2024_final.PDF"), ["invoice", "2024", "final", "pdf"]);
        assert_eq!(names("myTaxReturn2023.xlsx"), ["my", "tax", "return", "2023", "xlsx"]);
        assert_eq!(names("XMLParser.java"), ["xml", "parser", "java"]);
        assert_eq!(terms("Café Crème", false), "cafe creme");
    }

    #[test]
    fn umlauts_fold_and_german_stems_meet() {
        assert_eq!(fold("Häuser"), "hauser");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(stemmed("Häuser", "de").as_deref(), Some("haus"));
        assert_eq!(stemmed("hauser", "de").as_deref(), Some("haus"));
        assert!(query_stems("Haus").contains(&"haus".to_owned()));
        assert!(query_stems("receiving").contains(&"receiv".to_owned()));
    }

    #[test]
    fn chinese_and_japanese_become_words_with_offsets() {
        let words = |text: &str| -> Vec<String> { tokens(text, false).into_iter().map(|t| t.term).collect() };
        let chinese = words("我在北京大学学习");
        for w in ["北京", "大学", "北京大学", "学习"] {
            assert!(chinese.contains(&w.to_owned()), "{w} in {chinese:?}");
        }
        assert!(!chinese.contains(&"京大".to_owned()), "{chinese:?}");
        let japanese = words("東京都に住んでいます");
        for w in ["東京", "に", "住", "んで", "でい", "いま", "ます"] {
            assert!(japanese.contains(&w.to_owned()), "{w} in {japanese:?}");
        }
        let t = tokens("東京 tokyo", false);
        assert_eq!(&"東京 tokyo"[t[0].start..t[0].end], "東京");
        assert_eq!(t.last().map(|t| t.term.as_str()), Some("tokyo"));
    }
}
