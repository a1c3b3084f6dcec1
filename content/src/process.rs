//! Extraction in a child process: the parent streams at most `max_input_bytes` of the file to the
//! child's stdin and reads at most about `max_text_bytes` back, kills the child at `timeout`, and
//! the child caps its own address space at `memory_bytes` before it reads anything. A panic, an
//! allocation refused, a loop: each ends as a `Failed` extraction with the reason, never as more.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{EXTRACTOR_VERSION, Extraction, Format, OCR_EXTRACTOR_VERSION, Ocr, extract_with};

/// What one extraction may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a file read at most; a larger file is read only where its beginning gives text
    /// (plain text), else not at all.
    pub max_input_bytes: u64,
    /// Bytes of text kept at most.
    pub max_text_bytes: usize,
    pub timeout: Duration,
    /// The child's address space.
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 256 << 20,
            max_text_bytes: 4 << 20,
            timeout: Duration::from_secs(30),
            memory_bytes: 2 << 30,
        }
    }
}

/// Runs extractions as `<program> <args…> extract …`.
#[derive(Debug, Clone)]
pub struct Extractor {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub limits: Limits,
    /// Recognises the text of pictures and scanned PDFs; `None` reads neither's text.
    pub ocr: Option<Ocr>,
}

/// Time the child keeps for itself after its programs' deadline, to answer before it is killed.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);

fn failed(reason: impl Into<String>) -> Extraction {
    Extraction::Failed { reason: reason.into() }
}

impl Extractor {
    /// The version of this extractor that reads `format`: OCR makes a new one for the formats it reads.
    pub fn version_for(&self, format: Format) -> u32 {
        if self.ocr.is_some() && format.recognised() {
            OCR_EXTRACTOR_VERSION
        } else {
            EXTRACTOR_VERSION
        }
    }

    /// Extracts the text of a file of `size` bytes read from `input` as `format`.
    pub async fn run(&self, format: Format, size: u64, input: impl AsyncRead + Unpin) -> Extraction {
        let limits = self.limits;
        if size > limits.max_input_bytes && !format.streams() {
            return failed(format!(
                "the file has {size} bytes, more than the {} a {} document is read up to",
                limits.max_input_bytes,
                format.name()
            ));
        }
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .arg("extract")
            .args(["--format", format.name()])
            .args(["--max-text", &limits.max_text_bytes.to_string()])
            .args(["--memory", &limits.memory_bytes.to_string()]);
        if let Some(ocr) = self.ocr.as_ref().filter(|_| format.recognised()) {
            let budget = limits.timeout.saturating_sub(ANSWER_MARGIN);
            command
                .args(["--tesseract".as_ref(), ocr.tesseract.as_os_str()])
                .args(["--ocr-languages", &ocr.languages])
                .args(["--ocr-pages", &ocr.max_pages.to_string()])
                .args(["--ocr-millis", &budget.as_millis().to_string()]);
            if let Some(pdftoppm) = &ocr.pdftoppm {
                command.args(["--pdftoppm".as_ref(), pdftoppm.as_os_str()]);
            }
        }
        // Its own process group: the programs it runs (OCR) are killed with it.
        let mut child = match command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(err) => return failed(format!("the extractor {} cannot be started: {err}", self.program.display())),
        };
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return failed("the extractor's pipes are missing");
        };
        let truncated_input = size > limits.max_input_bytes;
        let feed = async move {
            let mut limited = input.take(limits.max_input_bytes);
            // The child may stop reading early (a broken file): that is not an error here.
            let _ = tokio::io::copy(&mut limited, &mut stdin).await;
            let _ = stdin.shutdown().await;
        };
        // JSON escapes at most six bytes per byte of text; anything beyond is not ours.
        let cap = (limits.max_text_bytes as u64) * 6 + 4096;
        let collect = async move {
            let mut out = Vec::new();
            let _ = stdout.take(cap).read_to_end(&mut out).await;
            out
        };
        let work = async {
            let ((), out) = tokio::join!(feed, collect);
            (out, child.wait().await)
        };
        let (out, status) = match tokio::time::timeout(limits.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                if let Some(group) = child.id().and_then(|id| rustix::process::Pid::from_raw(id.cast_signed())) {
                    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                return failed(format!(
                    "the extraction took longer than {} s and was stopped",
                    limits.timeout.as_secs()
                ));
            }
        };
        match status {
            Ok(status) if status.success() => match serde_json::from_slice::<Extraction>(&out) {
                Ok(Extraction::Text { text, truncated }) => Extraction::Text {
                    text,
                    truncated: truncated || truncated_input,
                },
                Ok(other) => other,
                Err(err) => failed(format!("the extractor's answer does not parse: {err}")),
            },
            Ok(status) => failed(match status.code() {
                Some(code) => format!("the extractor stopped with status {code} (out of memory or broken input)"),
                None => "the extractor was killed (out of memory or broken input)".to_owned(),
            }),
            Err(err) => failed(format!("the extractor could not be waited for: {err}")),
        }
    }
}

/// The child's side: `extract --format F --max-text N --memory M`, the file on stdin, the
/// [`Extraction`] as JSON on stdout. Returns the process's exit status.
pub fn child_main(args: &[String]) -> i32 {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let Some(format) = value("--format").and_then(|f| Format::parse(f)) else {
        eprintln!("extract: --format is one of text, html, pdf, docx, pptx, odf, spreadsheet, epub");
        return 2;
    };
    let max_text = value("--max-text").and_then(|v| v.parse().ok()).unwrap_or(4 << 20);
    let ocr = value("--tesseract").map(|tesseract| Ocr {
        tesseract: tesseract.into(),
        languages: value("--ocr-languages").cloned().unwrap_or_else(|| "eng".into()),
        pdftoppm: value("--pdftoppm").map(PathBuf::from),
        max_pages: value("--ocr-pages").and_then(|v| v.parse().ok()).unwrap_or(20),
    });
    let ocr_budget = Duration::from_millis(value("--ocr-millis").and_then(|v| v.parse().ok()).unwrap_or(28_000));
    if let Some(memory) = value("--memory").and_then(|v| v.parse::<u64>().ok()) {
        let limit = rustix::process::Rlimit {
            current: Some(memory),
            maximum: Some(memory),
        };
        if let Err(err) = rustix::process::setrlimit(rustix::process::Resource::As, limit) {
            eprintln!("extract: the memory limit cannot be set: {err}");
            return 2;
        }
    }
    let mut data = Vec::new();
    if let Err(err) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut data) {
        eprintln!("extract: reading the input: {err}");
        return 2;
    }
    // Parsers that panic on hostile input end here as a failure, not as a crash.
    std::panic::set_hook(Box::new(|_| {}));
    let deadline = Instant::now() + ocr_budget;
    let extraction = std::panic::catch_unwind(|| extract_with(format, &data, max_text, ocr.as_ref().map(|o| (o, deadline))))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            failed(format!(
                "the {} parser failed on this file: {}",
                format.name(),
                message.chars().take(200).collect::<String>()
            ))
        });
    match serde_json::to_string(&extraction) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(err) => {
            eprintln!("extract: {err}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn shell(script: &str, timeout: Duration) -> Extractor {
        Extractor {
            program: "sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into()],
            limits: Limits {
                timeout,
                ..Limits::default()
            },
            ocr: None,
        }
    }

    #[tokio::test]
    async fn a_reader_that_hangs_is_stopped_at_the_time_limit() {
        let started = Instant::now();
        let got = shell("exec sleep 30", Duration::from_secs(1))
            .run(Format::Pdf, 3, &b"abc"[..])
            .await;
        assert!(
            matches!(&got, Extraction::Failed { reason } if reason.contains("longer than 1 s")),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_reader_that_dies_or_babbles_fails_with_a_reason() {
        let died = shell("exit 3", Duration::from_secs(5)).run(Format::Pdf, 3, &b"abc"[..]).await;
        assert!(
            matches!(&died, Extraction::Failed { reason } if reason.contains("status 3")),
            "{died:?}"
        );
        let babbled = shell("echo not json", Duration::from_secs(5))
            .run(Format::Pdf, 3, &b"abc"[..])
            .await;
        assert!(
            matches!(&babbled, Extraction::Failed { reason } if reason.contains("does not parse")),
            "{babbled:?}"
        );
        let large = shell("cat >/dev/null", Duration::from_secs(5))
            .run(Format::Pdf, 1 << 40, &b"abc"[..])
            .await;
        assert!(
            matches!(&large, Extraction::Failed { reason } if reason.contains("more than")),
            "{large:?}"
        );
    }
}
