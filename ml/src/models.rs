//! The models an installation has: each loaded from its folder of the models directory when its
//! files are there, and otherwise left out (the analysis it does is then skipped, and said so once
//! at start-up). Model runs are CPU-bound: [`Models::run`] takes one of a few permits and runs the
//! model on a blocking thread, so the content pipeline never takes every core from sync and the API.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::{ImageLabeler, LABELS_MODEL, Label, ModelError, ModelResult, RESNET_MODEL, TextEmbedder};

/// The loaded models, shared by the pipeline and the API (which embeds queries).
#[derive(Clone)]
pub struct Models {
    text: Option<Arc<TextEmbedder>>,
    labels: Option<Arc<ImageLabeler>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("text", &self.text.is_some())
            .field("labels", &self.labels.is_some())
            .finish_non_exhaustive()
    }
}

impl Models {
    /// No models at all.
    #[must_use]
    pub fn none() -> Self {
        Self {
            text: None,
            labels: None,
            permits: Arc::new(Semaphore::new(1)),
        }
    }

    /// Every model whose files are in `dir`; at most `concurrency` model runs at once.
    ///
    /// # Errors
    /// A model whose folder is there but does not load (a broken install is not silently ignored).
    pub fn load(dir: &Path, concurrency: usize) -> ModelResult<Self> {
        let text_dir = dir.join(TextEmbedder::MODEL);
        let text = if text_dir.is_dir() {
            Some(Arc::new(TextEmbedder::load(&text_dir)?))
        } else {
            tracing::info!(
                dir = %dir.display(),
                model = TextEmbedder::MODEL,
                "No text embedding model: search by meaning is off (scripts/models installs it)."
            );
            None
        };
        let labels_dir = dir.join(LABELS_MODEL);
        let resnet_dir = dir.join(RESNET_MODEL);
        let labels = if resnet_dir.is_dir() {
            Some(Arc::new(ImageLabeler::load_resnet50(&resnet_dir)?))
        } else if labels_dir.is_dir() {
            Some(Arc::new(ImageLabeler::load(&labels_dir)?))
        } else {
            tracing::info!(
                dir = %dir.display(),
                model = LABELS_MODEL,
                "No image classifier: pictures get no labels (scripts/models installs it)."
            );
            None
        };
        Ok(Self {
            text,
            labels,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// With this text embedder (tests).
    #[must_use]
    pub fn with_text(mut self, embedder: TextEmbedder) -> Self {
        self.text = Some(Arc::new(embedder));
        self
    }

    pub fn text(&self) -> Option<&Arc<TextEmbedder>> {
        self.text.as_ref()
    }

    pub fn labels(&self) -> Option<&Arc<ImageLabeler>> {
        self.labels.as_ref()
    }

    /// The `top` likeliest classes of a picture (RGB, `width`×`height`) on a blocking thread,
    /// within the run permits.
    ///
    /// # Errors
    /// No image classifier is loaded, or it failed.
    pub async fn label(&self, rgb: Vec<u8>, width: u32, height: u32, top: usize) -> ModelResult<Vec<Label>> {
        let model = Arc::clone(
            self.labels
                .as_ref()
                .ok_or_else(|| ModelError::Run("no image classifier is loaded".into()))?,
        );
        self.run(move || model.classify(&rgb, width, height, top)).await
    }

    /// Embeds `texts` with the text model on a blocking thread, within the run permits.
    ///
    /// # Errors
    /// No text model is loaded, or it failed.
    pub async fn embed(&self, texts: Vec<String>) -> ModelResult<Vec<Vec<f32>>> {
        let model = Arc::clone(
            self.text
                .as_ref()
                .ok_or_else(|| ModelError::Run("no text embedding model is loaded".into()))?,
        );
        self.run(move || {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&texts)
        })
        .await
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> ModelResult<T> + Send + 'static) -> ModelResult<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ModelError::Run("the models are shutting down".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| ModelError::Run(format!("a model run stopped: {err}")))?
    }
}

/// A file name as words for the text model: separators and camelCase become spaces
/// (`TaxReturn_2024-final.pdf` → `Tax Return 2024 final pdf`).
#[must_use]
pub fn name_words(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let mut previous: Option<char> = None;
    for c in name.chars() {
        let c = if matches!(c, '_' | '-' | '.' | '+' | '~') { ' ' } else { c };
        if let Some(p) = previous
            && p.is_lowercase()
            && c.is_uppercase()
        {
            out.push(' ');
        }
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
        previous = Some(c);
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::name_words;

    #[test]
    fn names_become_words() {
        assert_eq!(name_words("TaxReturn_2024-final.pdf"), "Tax Return 2024 final pdf");
        assert_eq!(name_words("IMG_0042.JPG"), "IMG 0042 JPG");
        assert_eq!(name_words("..hidden__file"), "hidden file");
    }
}
