//! Long texts are cut into passages that fit the embedder (a passage of [`WORDS`] words stays under
//! its 256 tokens in most languages), overlapping by [`OVERLAP`] words so that a sentence cut at one
//! passage's end is whole in the next. A document yields at most [`MAX_PASSAGES`]; a longer one is
//! sampled evenly from beginning to end, so the time a file costs is bounded and every part of it
//! can still be found.

/// Words in one passage.
pub const WORDS: usize = 120;
/// Words shared by consecutive passages.
pub const OVERLAP: usize = 20;
/// The most passages one text yields.
pub const MAX_PASSAGES: usize = 48;

/// A passage: where it starts in the text (a byte offset) and its words joined by single spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub start: usize,
    pub text: String,
}

/// The passages of `text`, in order; none for a text without words.
#[must_use]
pub fn passages(text: &str) -> Vec<Passage> {
    let words: Vec<(usize, &str)> = text
        .split_whitespace()
        .map(|word| (word.as_ptr() as usize - text.as_ptr() as usize, word))
        .collect();
    if words.is_empty() {
        return Vec::new();
    }
    let step = WORDS - OVERLAP;
    let starts: Vec<usize> = (0..words.len())
        .step_by(step)
        .take_while(|&start| start == 0 || start + OVERLAP < words.len())
        .collect();
    let chosen: Vec<usize> = if starts.len() <= MAX_PASSAGES {
        starts
    } else {
        // Evenly spread over the whole text, first and last passage included.
        (0..MAX_PASSAGES)
            .map(|i| starts[i * (starts.len() - 1) / (MAX_PASSAGES - 1)])
            .collect()
    };
    chosen
        .into_iter()
        .map(|start| {
            let window = &words[start..(start + WORDS).min(words.len())];
            Passage {
                start: window[0].0,
                text: window.iter().map(|(_, word)| *word).collect::<Vec<_>>().join(" "),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> String {
        (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" \n")
    }

    #[test]
    fn a_short_text_is_one_passage_and_an_empty_one_none() {
        assert!(passages(" \n\t").is_empty());
        let one = passages("  Tax return\n2024 ");
        assert_eq!(
            one,
            [Passage {
                start: 2,
                text: "Tax return 2024".into()
            }]
        );
    }

    #[test]
    fn passages_overlap_and_cover_every_word() {
        let text = numbered(500);
        let cut = passages(&text);
        assert_eq!(cut.len(), 5, "starts at 0, 100, 200, 300, 400");
        for pair in cut.windows(2) {
            let first: Vec<&str> = pair[0].text.split(' ').collect();
            let second: Vec<&str> = pair[1].text.split(' ').collect();
            assert_eq!(
                first[WORDS - OVERLAP..],
                second[..OVERLAP],
                "consecutive passages share {OVERLAP} words"
            );
        }
        assert!(cut.last().is_some_and(|p| p.text.ends_with("w499")));
        assert_eq!(&text[cut[1].start..cut[1].start + 4], "w100");
    }

    #[test]
    fn a_long_text_is_sampled_from_beginning_to_end() {
        let cut = passages(&numbered(100_000));
        assert_eq!(cut.len(), MAX_PASSAGES);
        assert!(cut[0].text.starts_with("w0 "));
        assert!(
            cut[MAX_PASSAGES - 1].text.ends_with("w99999"),
            "the end of the text is embedded too"
        );
        assert!(cut.windows(2).all(|p| p[0].start < p[1].start));
    }
}
