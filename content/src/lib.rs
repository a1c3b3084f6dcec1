//! Text extraction from file contents, bounded. Which formats are read is decided by the file's
//! name and MIME type ([`format_of`]); the reading itself ([`extract`]) runs in a child process
//! ([`child_main`], the `cloudsync extract` command) that limits its own memory, whose output is cut
//! at the configured text size and which is killed at the configured time ([`Extractor`]), so a
//! zip bomb, a PDF that makes a parser panic or loop, or a 2 GiB text file costs at most those limits
//! and never the server.
//!
//! Formats: plain text, Markdown, source code and other text (UTF-8, UTF-16 with a BOM, else
//! Latin-1), HTML (visible text only: no scripts, styles or templates; `scraper`), PDF's text layer
//! (`pdf-extract`), DOCX, PPTX, ODT/ODP (`zip` + `quick-xml`), XLSX/XLS/ODS (`calamine`) and EPUB;
//! and pictures ([`image`]: size, EXIF, perceptual hash). With [`Ocr`] configured, the text of
//! pictures and of scanned PDFs (no text layer) is recognised by tesseract ([`ocr`]).

mod formats;
pub mod image;
mod language;
pub mod ocr;
mod process;
pub mod samples;

pub use formats::{Format, extract, extract_with, format_of};
pub use language::detect_language;
pub use ocr::Ocr;
pub use process::{Extractor, Limits, child_main};

use serde::{Deserialize, Serialize};

/// The extractor's name and version as recorded in events: a new version re-reads every file.
pub const EXTRACTOR: &str = "cloudsync-text";
pub const EXTRACTOR_VERSION: u32 = 1;
/// The extractor's version for the formats OCR reads (pictures, PDFs) when OCR is on: turning it on
/// reads those again, and only those.
pub const OCR_EXTRACTOR_VERSION: u32 = 2;

/// What a read of one file gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Extraction {
    Text {
        text: String,
        truncated: bool,
    },
    /// A picture: what was read of it (it has no text to extract yet).
    Image(image::ImageReading),
    /// Not a format this extractor reads.
    Unsupported,
    /// Broken, hostile or over a limit: why.
    Failed {
        reason: String,
    },
}
