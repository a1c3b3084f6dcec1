//! Models that learn from file contents, run on the CPU with candle and loaded from files in a
//! configured directory (nothing is fetched at run time): [`TextEmbedder`] turns names and passages
//! of extracted text into unit vectors (all-MiniLM-L6-v2, through this crate's own unpadded encoder
//! pass on candle's tensors), and [`passages`] cuts a long text into
//! the passages it embeds. [`Models`] holds what an installation loaded and runs it on blocking threads within a few
//! permits; [`codec`] is how vectors are stored.

pub mod codec;
mod encoder;
mod kernels;
mod labels;
mod models;
mod passages;
mod text;

pub use labels::{ImageLabeler, LABELS_MODEL, LABELS_VERSION, Label, RESNET_MODEL};
pub use models::{Models, name_words};
pub use passages::{Passage, passages};
pub use text::{TextEmbedder, cosine};

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    /// A model file is not where the configuration says (the scripts install and convert them).
    #[error("the model file {path} is missing: {reason}")]
    Missing { path: PathBuf, reason: String },
    /// The files are there but do not hold the model this code runs.
    #[error("the model in {path} cannot be loaded: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The model failed on an input.
    #[error("the model failed: {0}")]
    Run(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(err: candle_core::Error) -> Self {
        Self::Run(err.to_string())
    }
}

pub type ModelResult<T> = Result<T, ModelError>;
