//! A BERT encoder's forward pass for inference on the CPU, over texts of different lengths without
//! padding: the tokens of every text in a call lie one after another in one matrix, so each of the
//! encoder's dense layers is a single large matrix product over all of them (candle's `matmul`),
//! and only attention looks at one text, and one head, at a time. The steps between the products
//! are candle custom operations that work in place and fuse what the textbook layers do in several
//! passes (bias, residual and layer norm in one; bias and GELU in one), vectorised
//! ([`crate::kernels`]). Weights are read with candle from the model's safetensors file; the test
//! suite holds the result to candle-transformers' `BertModel` on the same weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use crate::kernels::{Head, add_norm, attend, bias_gelu};
use crate::{ModelError, ModelResult};

/// The largest sizes a model's configuration may give (BERT-large is 1,024 wide, 24 layers deep and
/// 512 positions long).
const MOST_HIDDEN: usize = 4096;
const MOST_LAYERS: usize = 64;
const MOST_POSITIONS: usize = 8192;

/// What the encoder needs of the model's `config.json`.
#[derive(Debug, Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".to_owned()
}

/// A dense layer, its weight stored transposed (`inputs × outputs`, contiguous) for `matmul`; its
/// bias is added by the step that follows the product.
struct Dense {
    weight: Tensor,
    bias: Vec<f32>,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one product: outputs `[q | k | v]`.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

pub(crate) struct Encoder {
    words: Vec<f32>,
    positions: Vec<f32>,
    /// The embedding of token type 0, which every token of a single text has.
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocabulary: usize,
    max_positions: usize,
    eps: f32,
}

/// The weights by name, with or without the `bert.` prefix that some checkpoints carry.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let tensor = self
            .tensors
            .get(&format!("{}{name}", self.prefix))
            .ok_or_else(|| format!("no tensor {}{name}", self.prefix))?;
        if tensor.dims() != shape {
            return Err(format!("{name} has the shape {:?}, not {shape:?}", tensor.dims()));
        }
        tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|err| format!("{name}: {err}"))
    }

    /// A layer norm's gain and bias, named `weight`/`bias` or, in older checkpoints, `gamma`/`beta`.
    fn norm(&self, name: &str, width: usize) -> Result<Norm, String> {
        let gamma = self
            .get(&format!("{name}.weight"), &[width])
            .or_else(|_| self.get(&format!("{name}.gamma"), &[width]))?;
        let beta = self
            .get(&format!("{name}.bias"), &[width])
            .or_else(|_| self.get(&format!("{name}.beta"), &[width]))?;
        Ok(Norm { gamma, beta })
    }

    /// Dense layers sharing their input, as one layer whose outputs are theirs side by side.
    fn dense(&self, names: &[&str], inputs: usize, outputs: usize) -> Result<Dense, String> {
        let total = outputs * names.len();
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            // Read (and its shape checked against the file) before the layer is allocated.
            parts.push(self.get(&format!("{name}.weight"), &[outputs, inputs])?);
        }
        let mut weight = vec![0f32; inputs * total];
        let mut bias = Vec::with_capacity(total);
        for ((part, name), w) in names.iter().enumerate().zip(parts) {
            for (out, row) in w.chunks_exact(inputs).enumerate() {
                for (input, value) in row.iter().enumerate() {
                    weight[input * total + part * outputs + out] = *value;
                }
            }
            bias.extend(self.get(&format!("{name}.bias"), &[outputs])?);
        }
        let weight = Tensor::from_vec(weight, (inputs, total), &Device::Cpu).map_err(|err| format!("{names:?}: {err}"))?;
        Ok(Dense { weight, bias })
    }
}

impl Encoder {
    pub(crate) fn load(dir: &Path, config: &[u8], safetensors: &[u8]) -> ModelResult<Self> {
        let invalid = |what: &str, reason: String| ModelError::Invalid {
            path: dir.join(what),
            reason,
        };
        let config: Config = serde_json::from_slice(config).map_err(|err| invalid("config.json", err.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(invalid("config.json", format!("the activation {} is not GELU", config.hidden_act)));
        }
        // Sizes are checked before anything is allocated from them: a corrupt file is refused, it
        // does not ask for terabytes.
        let bounded = |name: &str, value: usize, most: usize| {
            if (1..=most).contains(&value) {
                Ok(())
            } else {
                Err(invalid("config.json", format!("{name} is {value}, not 1 to {most}")))
            }
        };
        bounded("hidden_size", config.hidden_size, MOST_HIDDEN)?;
        bounded("intermediate_size", config.intermediate_size, 4 * MOST_HIDDEN)?;
        bounded("num_hidden_layers", config.num_hidden_layers, MOST_LAYERS)?;
        bounded("max_position_embeddings", config.max_position_embeddings, MOST_POSITIONS)?;
        if !(config.layer_norm_eps.is_finite() && config.layer_norm_eps > 0.0) {
            return Err(invalid("config.json", format!("layer_norm_eps is {}", config.layer_norm_eps)));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(invalid(
                "config.json",
                format!(
                    "{} heads do not divide {} dimensions",
                    config.num_attention_heads, config.hidden_size
                ),
            ));
        }
        let tensors = candle_core::safetensors::load_buffer(safetensors, &Device::Cpu)
            .map_err(|err| invalid("model.safetensors", err.to_string()))?;
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let weights = Weights { tensors, prefix };
        let h = config.hidden_size;
        let words = weights
            .tensors
            .get(&format!("{prefix}embeddings.word_embeddings.weight"))
            .map(|t| t.dims().to_vec())
            .unwrap_or_default();
        let vocabulary = words.first().copied().unwrap_or(0);
        let build = || -> Result<Self, String> {
            let mut layers = Vec::new();
            for i in 0..config.num_hidden_layers {
                let at = |name: &str| format!("encoder.layer.{i}.{name}");
                layers.push(Layer {
                    qkv: weights.dense(
                        &[&at("attention.self.query"), &at("attention.self.key"), &at("attention.self.value")],
                        h,
                        h,
                    )?,
                    attention_out: weights.dense(&[&at("attention.output.dense")], h, h)?,
                    attention_norm: weights.norm(&at("attention.output.LayerNorm"), h)?,
                    up: weights.dense(&[&at("intermediate.dense")], h, config.intermediate_size)?,
                    down: weights.dense(&[&at("output.dense")], config.intermediate_size, h)?,
                    output_norm: weights.norm(&at("output.LayerNorm"), h)?,
                });
            }
            Ok(Self {
                words: weights.get("embeddings.word_embeddings.weight", &[vocabulary, h])?,
                positions: weights.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
                token_type: weights
                    .get("embeddings.token_type_embeddings.weight", &[2, h])
                    .or_else(|_| weights.get("embeddings.token_type_embeddings.weight", &[1, h]))?[..h]
                    .to_vec(),
                embedding_norm: weights.norm("embeddings.LayerNorm", h)?,
                layers,
                hidden: h,
                heads: config.num_attention_heads,
                vocabulary,
                max_positions: config.max_position_embeddings,
                #[allow(clippy::cast_possible_truncation)]
                eps: config.layer_norm_eps as f32,
            })
        };
        build().map_err(|reason| invalid("model.safetensors", reason))
    }

    /// The length of the vectors.
    pub(crate) fn hidden(&self) -> usize {
        self.hidden
    }

    /// The longest text, in tokens, the position embeddings cover.
    pub(crate) fn max_tokens(&self) -> usize {
        self.max_positions
    }

    /// The mean of each text's last hidden states over its tokens, scaled to length 1.
    ///
    /// # Errors
    /// A text is empty, longer than [`Self::max_tokens`], or holds a token outside the vocabulary.
    pub(crate) fn embed(&self, texts: &[&[u32]]) -> ModelResult<Vec<Vec<f32>>> {
        for text in texts {
            if text.is_empty() || text.len() > self.max_positions {
                return Err(ModelError::Run(format!(
                    "a text of {} tokens (1 to {})",
                    text.len(),
                    self.max_positions
                )));
            }
            if let Some(bad) = text.iter().find(|&&id| id as usize >= self.vocabulary) {
                return Err(ModelError::Run(format!("token {bad} is outside the vocabulary")));
            }
        }
        let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        let tokens: usize = lengths.iter().sum();
        let h = self.hidden;
        let mut hidden = Tensor::from_vec(self.embeddings(texts, tokens), (tokens, h), &Device::Cpu)?;
        for layer in &self.layers {
            let qkv = hidden.matmul(&layer.qkv.weight)?;
            let context = self.attention(&lengths, &qkv, &layer.qkv.bias)?;
            let attended = context.matmul(&layer.attention_out.weight)?;
            attended.inplace_op2(
                &hidden,
                &AddNorm {
                    bias: &layer.attention_out.bias,
                    norm: &layer.attention_norm,
                    eps: self.eps,
                },
            )?;
            let inner = attended.matmul(&layer.up.weight)?;
            inner.inplace_op1(&BiasGelu(&layer.up.bias))?;
            hidden = inner.matmul(&layer.down.weight)?;
            hidden.inplace_op2(
                &attended,
                &AddNorm {
                    bias: &layer.down.bias,
                    norm: &layer.output_norm,
                    eps: self.eps,
                },
            )?;
        }
        let hidden = hidden.flatten_all()?.to_vec1::<f32>()?;
        let mut vectors = Vec::with_capacity(texts.len());
        let mut rows = hidden.chunks_exact(h);
        for &len in &lengths {
            let mut mean = vec![0f32; h];
            for token in rows.by_ref().take(len) {
                for (m, x) in mean.iter_mut().zip(token) {
                    *m += x;
                }
            }
            // The mean's 1/len cancels in the scaling to length 1.
            let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            for m in &mut mean {
                *m /= norm;
            }
            vectors.push(mean);
        }
        Ok(vectors)
    }

    /// Each token's word, position and type embeddings summed and normalised, `tokens × hidden`.
    fn embeddings(&self, texts: &[&[u32]], tokens: usize) -> Vec<f32> {
        let h = self.hidden;
        let mut hidden = vec![0f32; tokens * h];
        let mut rows = hidden.chunks_exact_mut(h);
        for text in texts {
            for ((position, &id), row) in text.iter().enumerate().zip(rows.by_ref()) {
                let word = &self.words[id as usize * h..(id as usize + 1) * h];
                let place = &self.positions[position * h..(position + 1) * h];
                for (((x, w), p), t) in row.iter_mut().zip(word).zip(place).zip(&self.token_type) {
                    *x = w + p + t;
                }
            }
        }
        let norm = &self.embedding_norm;
        add_norm(&mut hidden, None, None, &norm.gamma, &norm.beta, self.eps);
        hidden
    }

    /// Every head of every text attending over that text's own tokens, the (text, head) pairs
    /// spread over the thread pool; `tokens × hidden`, heads side by side.
    fn attention(&self, lengths: &[usize], qkv: &Tensor, bias: &[f32]) -> ModelResult<Tensor> {
        let h = self.hidden;
        let d = h / self.heads;
        let tokens: usize = lengths.iter().sum();
        let (storage, layout) = qkv.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(ModelError::Run("the encoder runs on f32 tensors on the CPU".to_owned()));
        };
        let qkv = contiguous(cpu, layout)?;
        let mut starts = Vec::with_capacity(lengths.len());
        let mut row = 0;
        for &len in lengths {
            starts.push((row, len));
            row += len;
        }
        let tasks: Vec<(usize, usize, usize)> = starts
            .iter()
            .flat_map(|&(row, len)| (0..self.heads).map(move |head| (row, len, head)))
            .collect();
        let heads: Vec<Vec<f32>> = tasks
            .into_par_iter()
            .map(|(row, len, head)| {
                attend(&Head {
                    qkv: &qkv[row * 3 * h..(row + len) * 3 * h],
                    bias,
                    hidden: h,
                    head,
                    dims: d,
                })
            })
            .collect();
        drop(storage);
        let mut context = vec![0f32; tokens * h];
        let mut done = heads.iter();
        for &(row, len) in &starts {
            for head in 0..self.heads {
                let Some(out) = done.next() else { break };
                for (i, values) in out.chunks_exact(d).enumerate().take(len) {
                    let at = (row + i) * h + head * d;
                    context[at..at + d].copy_from_slice(values);
                }
            }
        }
        Ok(Tensor::from_vec(context, (tokens, h), &Device::Cpu)?)
    }
}

/// The f32 elements a contiguous CPU tensor's layout covers.
fn contiguous<'s>(storage: &'s CpuStorage, layout: &Layout) -> candle_core::Result<&'s [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(all), Some((from, to))) => Ok(&all[from..to]),
        _ => candle_core::bail!("the encoder's steps take contiguous f32 tensors on the CPU"),
    }
}

fn contiguous_mut<'s>(storage: &'s mut CpuStorage, layout: &Layout) -> candle_core::Result<&'s mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(all), Some((from, to))) => Ok(&mut all[from..to]),
        _ => candle_core::bail!("the encoder's steps take contiguous f32 tensors on the CPU"),
    }
}

/// Rows of a matrix that one task of an element-wise step takes.
const ROWS_A_TASK: usize = 64;

/// In place: `x = norm(x + bias + residual) · gamma + beta`, row by row.
struct AddNorm<'a> {
    bias: &'a [f32],
    norm: &'a Norm,
    eps: f32,
}

impl InplaceOp2 for AddNorm<'_> {
    fn name(&self) -> &'static str {
        "add-bias-residual-layer-norm"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("the residual's shape {:?} is not {:?}", l2.shape(), l1.shape());
        }
        let residual = contiguous(s2, l2)?;
        let rows = contiguous_mut(s1, l1)?;
        let chunk = ROWS_A_TASK * self.bias.len();
        rows.par_chunks_mut(chunk)
            .zip(residual.par_chunks(chunk))
            .for_each(|(rows, residual)| {
                add_norm(rows, Some(self.bias), Some(residual), &self.norm.gamma, &self.norm.beta, self.eps);
            });
        Ok(())
    }
}

/// In place: `x = gelu(x + bias)`.
struct BiasGelu<'a>(&'a [f32]);

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "add-bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        if layout.dims().last() != Some(&self.0.len()) {
            candle_core::bail!("{:?} does not end in the bias's {} columns", layout.dims(), self.0.len());
        }
        contiguous_mut(storage, layout)?
            .par_chunks_mut(ROWS_A_TASK * self.0.len())
            .for_each(|rows| bias_gelu(rows, self.0));
        Ok(())
    }
}
