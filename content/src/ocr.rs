//! Text recognition (OCR) with the `tesseract` program (Debian's `tesseract-ocr` and its language
//! packs), for pictures and for PDFs without a text layer, whose pages `pdftoppm` (poppler) renders
//! first. Tesseract's orientation detection (`--psm 0`, the `osd` pack) says how a page lies first,
//! and the page is turned upright before it is read, so pages scanned sideways or upside down read
//! as well as upright ones (`--psm 1`, which detects and reads in one go, leaves pages with little
//! text unturned). Both programs run inside the extractor's child process, under its memory limit, and are
//! killed at the extraction's deadline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// What reads text from pictures and scanned pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ocr {
    /// The `tesseract` program.
    pub tesseract: PathBuf,
    /// Tesseract's languages, `+`-joined (`eng+deu+fra+spa`).
    pub languages: String,
    /// The `pdftoppm` program; without it scanned PDFs are not read.
    pub pdftoppm: Option<PathBuf>,
    /// Pages of a scanned PDF read at most.
    pub max_pages: u32,
}

/// Dots per inch a scanned PDF's pages are rendered at: tesseract reads best from about 300, and
/// 200 halves the time at nearly the same accuracy for print-size text.
const RENDER_DPI: &str = "200";
/// Tesseract's confidence (0 to 100) a word needs to be kept.
const MIN_CONFIDENCE: f32 = 60.0;
/// Letters and digits a picture's recognised text needs to count as text.
const MIN_CHARACTERS: usize = 4;
/// Bytes of a program's output read at most.
const MAX_OUTPUT: u64 = 16 << 20;

impl Ocr {
    /// OCR with `tesseract` in `languages`, once the program answers and has every language and the
    /// orientation pack; `pdftoppm` is looked for beside it on the `PATH`.
    ///
    /// # Errors
    /// Why OCR cannot run here (the program is missing, or a language pack is).
    pub fn probe(tesseract: &Path, languages: &str) -> Result<Self, String> {
        let listed = Command::new(tesseract)
            .arg("--list-langs")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|err| format!("{} cannot be run ({err}); install Debian's tesseract-ocr", tesseract.display()))?;
        let known: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .skip(1)
            .map(|l| l.trim().to_owned())
            .collect();
        let wanted: Vec<&str> = languages.split('+').filter(|l| !l.is_empty()).collect();
        if wanted.is_empty() {
            return Err("no OCR language is configured".into());
        }
        for language in wanted.iter().copied().chain(["osd"]) {
            if !known.iter().any(|k| k == language) {
                return Err(format!(
                    "tesseract has no {language:?} pack; install Debian's tesseract-ocr-{language}"
                ));
            }
        }
        let pdftoppm = Command::new("pdftoppm")
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .map(|_| PathBuf::from("pdftoppm"));
        Ok(Self {
            tesseract: tesseract.to_owned(),
            languages: wanted.join("+"),
            pdftoppm,
            max_pages: 20,
        })
    }

    /// The text of a picture (any format tesseract's leptonica reads: PNG, JPEG, TIFF, BMP, GIF,
    /// WebP), in reading order; empty when there is none.
    ///
    /// # Errors
    /// Tesseract failed or passed `deadline`.
    pub fn picture(&self, data: &[u8], deadline: Instant) -> Result<String, String> {
        let turned;
        let upright = match self.turn(data, deadline) {
            0 => data,
            degrees => {
                let picture = crate::image::decode(data)?;
                let picture = match degrees {
                    90 => picture.rotate90(),
                    180 => picture.rotate180(),
                    _ => picture.rotate270(),
                };
                let mut png = Vec::new();
                picture
                    .to_luma8()
                    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .map_err(|err| format!("the turned picture cannot be encoded: {err}"))?;
                turned = png;
                &turned
            }
        };
        let args = ["stdin", "stdout", "-l", &self.languages, "--psm", "3", "tsv"];
        let out = run(&self.tesseract, &args, Some(upright), deadline).map_err(|err| format!("OCR: {err}"))?;
        Ok(confident_text(&String::from_utf8_lossy(&out)))
    }

    /// How many degrees clockwise a picture must turn for its text to stand upright, as tesseract's
    /// orientation detection (`--psm 0`) says; 0 when it cannot tell (too little text: a photograph).
    fn turn(&self, data: &[u8], deadline: Instant) -> u32 {
        let Ok(out) = run(&self.tesseract, &["stdin", "stdout", "--psm", "0"], Some(data), deadline) else {
            return 0;
        };
        String::from_utf8_lossy(&out)
            .lines()
            .find_map(|line| line.strip_prefix("Rotate:"))
            .and_then(|degrees| degrees.trim().parse().ok())
            .filter(|degrees| [90, 180, 270].contains(degrees))
            .unwrap_or(0)
    }

    /// The text of a PDF's pages, rendered and recognised one by one up to `max_pages` or until
    /// `deadline` (then `cut` is true); pages are separated by a blank line.
    ///
    /// # Errors
    /// No `pdftoppm`, a PDF it cannot render, or no page read before the deadline.
    pub fn pdf(&self, data: &[u8], deadline: Instant) -> Result<(String, bool), String> {
        let pdftoppm = self
            .pdftoppm
            .as_ref()
            .ok_or("no pdftoppm to render the scanned pages (Debian's poppler-utils)")?;
        let folder = Scratch::new()?;
        let input = folder.0.join("in.pdf");
        std::fs::write(&input, data).map_err(|err| format!("the PDF cannot be written for rendering: {err}"))?;
        let mut text = String::new();
        let mut cut = false;
        for page in 1..=self.max_pages {
            if Instant::now() >= deadline {
                cut = true;
                break;
            }
            // One page at a time: a thousand-page scan is never rendered whole.
            let prefix = folder.0.join("page");
            let number = page.to_string();
            let args = [
                "-r",
                RENDER_DPI,
                "-gray",
                "-png",
                "-singlefile",
                "-f",
                &number,
                "-l",
                &number,
                path_str(&input)?,
                path_str(&prefix)?,
            ];
            if let Err(err) = run(pdftoppm, &args, None, deadline) {
                if page == 1 {
                    return Err(format!("the PDF's pages cannot be rendered: {err}"));
                }
                // Past the last page.
                break;
            }
            let rendered = folder.0.join("page.png");
            let Ok(image) = std::fs::read(&rendered) else { break };
            let _ = std::fs::remove_file(&rendered);
            match self.picture(&image, deadline) {
                Ok(page_text) => {
                    if !text.is_empty() && !page_text.is_empty() {
                        text.push_str("\n\n");
                    }
                    text.push_str(&page_text);
                }
                Err(_) if page > 1 && Instant::now() >= deadline => {
                    cut = true;
                    break;
                }
                Err(err) => return Err(err),
            }
            if page == self.max_pages {
                cut = true;
            }
        }
        Ok((text, cut))
    }
}

/// Whether a PDF's text layer holds text worth having (else its pages are scans).
pub fn has_text(text: &str) -> bool {
    text.chars().filter(|c| c.is_alphanumeric()).take(16).count() >= 16
}

/// The words tesseract is sure of (its TSV output, confidence at least [`MIN_CONFIDENCE`], with a
/// letter or digit), a line of the page per line and a blank line between paragraphs; nothing when
/// fewer than [`MIN_CHARACTERS`] letters and digits are left (the shapes of a photograph read as
/// stray marks, not as text).
fn confident_text(tsv: &str) -> String {
    let mut out = String::new();
    let mut at: Option<(&str, &str, &str, &str)> = None;
    let mut characters = 0;
    for row in tsv.lines().skip(1) {
        let cells: Vec<&str> = row.split('\t').collect();
        let [level, page, block, paragraph, line, _, _, _, _, _, confidence, word] = cells[..] else {
            continue;
        };
        let sure = confidence.parse::<f32>().is_ok_and(|c| c >= MIN_CONFIDENCE);
        if level != "5" || !sure || !word.chars().any(char::is_alphanumeric) {
            continue;
        }
        characters += word.chars().filter(|c| c.is_alphanumeric()).count();
        let here = (page, block, paragraph, line);
        match at {
            None => {}
            Some(last) if last == here => out.push(' '),
            Some(last) if (last.0, last.1, last.2) == (page, block, paragraph) => out.push('\n'),
            Some(_) => out.push_str("\n\n"),
        }
        out.push_str(word);
        at = Some(here);
    }
    if characters < MIN_CHARACTERS { String::new() } else { out }
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| "the temporary folder's path is not UTF-8".to_owned())
}

/// A temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("cloudsync-ocr-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|err| format!("a temporary folder cannot be made: {err}"))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program` with `input` on its stdin; its stdout, unless it fails or runs past `deadline`
/// (then it is killed). Nothing polls: the deadline is a timed wait for the output.
fn run(program: &Path, args: &[&str], input: Option<&[u8]>, deadline: Instant) -> Result<Vec<u8>, String> {
    let mut child = Command::new(program)
        .args(args)
        // One thread: the pipeline runs several reads at once already.
        .env("OMP_THREAD_LIMIT", "1")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("{} cannot be started: {err}", program.display()))?;
    let feeder = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                // The program may stop reading early (a broken file): its status says why.
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    // The output arrives whole when the program closes its stdout, as it does on exiting.
    let (done, output) = std::sync::mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = (&mut stdout).take(MAX_OUTPUT).read_to_end(&mut out);
            // Past the cap the rest is drained, so the program never blocks on a full pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            let _ = done.send(out);
        });
    }
    let out = match output.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(out) => out,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Vec::new(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} ran past the time limit", name(program)));
        }
    };
    let status = child
        .wait()
        .map_err(|err| format!("{} could not be waited for: {err}", name(program)))?;
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    if !status.success() {
        return Err(format!("{} failed ({status})", name(program)));
    }
    Ok(out)
}

fn name(program: &Path) -> String {
    program
        .file_name()
        .map_or_else(|| program.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::samples::{pdf_lines, rendered, scan_of};
    use crate::{Extraction, Format, extract_with};

    const LINES: [&str; 3] = [
        "Invoice number 4711 for the garden shed",
        "Payment is due within thirty days",
        "Thank you for your business this spring",
    ];

    /// Tesseract with the test script's packs (`scripts/storage-servers` installs them).
    fn ocr() -> Ocr {
        Ocr::probe(Path::new("tesseract"), "eng+deu+fra+spa").expect("tesseract with its packs: run through scripts/test")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// A page of `LINES` as a scanner sees it, turned by `rotate` degrees.
    fn scan(rotate: u32) -> Vec<u8> {
        rendered(&pdf_lines(&LINES, 20, rotate), 150).expect("pdftoppm renders the page")
    }

    fn reads_every_line(text: &str) -> bool {
        LINES.iter().all(|line| text.contains(line))
    }

    #[test]
    fn a_picture_of_a_page_reads_in_any_orientation() {
        let ocr = ocr();
        for rotate in [0, 90, 180, 270] {
            let text = ocr.picture(&scan(rotate), soon()).expect("recognised");
            assert!(reads_every_line(&text), "turned {rotate}°: {text:?}");
        }
        // Two lines are little for orientation detection, and still enough.
        let short = rendered(&pdf_lines(&LINES[..2], 20, 180), 150).expect("pdftoppm renders the page");
        let text = ocr.picture(&short, soon()).expect("recognised");
        assert!(text.contains(LINES[0]) && text.contains(LINES[1]), "{text:?}");
    }

    #[test]
    fn a_scanned_pdf_is_read_and_one_with_a_text_layer_is_not_recognised() {
        let ocr = ocr();
        let scanned = scan_of(&pdf_lines(&LINES, 20, 180), 150, None).expect("pdftoppm renders the page");
        match extract_with(Format::Pdf, &scanned, 1 << 20, Some((&ocr, soon()))) {
            Extraction::Text { text, truncated } => {
                assert!(reads_every_line(&text), "{text:?}");
                assert!(!truncated);
            }
            other => panic!("{other:?}"),
        }
        // Without OCR the scan has no text.
        assert!(matches!(extract_with(Format::Pdf, &scanned, 1 << 20, None), Extraction::Text { text, .. } if text.trim().is_empty()));
        // A text layer is the text: the scan under it is not recognised.
        let layered = scan_of(&pdf_lines(&LINES, 20, 180), 150, Some("Minutes of the allotment committee meeting"))
            .expect("pdftoppm renders the page");
        match extract_with(Format::Pdf, &layered, 1 << 20, Some((&ocr, soon()))) {
            Extraction::Text { text, .. } => {
                assert!(text.contains("allotment committee") && !text.contains("Invoice"), "{text:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_picture_keeps_its_facts_and_gains_its_text() {
        let ocr = ocr();
        let Extraction::Image(reading) = extract_with(Format::Image, &scan(0), 1 << 20, Some((&ocr, soon()))) else {
            panic!("a picture")
        };
        assert!(reading.width > 1000 && reads_every_line(reading.text.as_deref().unwrap_or_default()));
        // Past the deadline the picture is still read, without text.
        let Extraction::Image(late) = extract_with(Format::Image, &scan(0), 1 << 20, Some((&ocr, Instant::now()))) else {
            panic!("a picture")
        };
        assert_eq!((late.width, late.text), (reading.width, None));
        // A photograph's shapes are not text.
        let photo = crate::samples::jpeg(&crate::samples::scene(640, 480, 7, 0.0, 0.0), 90, &crate::samples::Exif::default());
        let Extraction::Image(photo) = extract_with(Format::Image, &photo, 1 << 20, Some((&ocr, soon()))) else {
            panic!("a picture")
        };
        assert_eq!(photo.text, None);
    }

    #[test]
    fn a_text_layer_needs_a_few_words_to_count() {
        assert!(!has_text(""));
        assert!(!has_text("  \n\u{c} 12 "));
        assert!(has_text("Invoice number 4711 for the shed"));
    }

    #[test]
    fn only_words_tesseract_is_sure_of_are_kept_in_lines_and_paragraphs() {
        let header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n";
        let word = |b: u32, p: u32, l: u32, conf: f32, text: &str| format!("5\t1\t{b}\t{p}\t{l}\t1\t0\t0\t1\t1\t{conf}\t{text}\n");
        let tsv = [
            header.to_owned(),
            "4\t1\t1\t1\t1\t0\t0\t0\t1\t1\t-1\t\n".to_owned(),
            word(1, 1, 1, 96.0, "Invoice"),
            word(1, 1, 1, 91.0, "4711"),
            word(1, 1, 1, 20.0, "Xq#"),
            word(1, 1, 2, 90.0, "due"),
            word(1, 1, 2, 95.0, "—"),
            word(2, 1, 1, 88.0, "Thanks"),
        ]
        .concat();
        assert_eq!(confident_text(&tsv), "Invoice 4711\ndue\n\nThanks");
        assert_eq!(
            confident_text(&[header.to_owned(), word(1, 1, 1, 99.0, "|I|")].concat()),
            "",
            "stray marks"
        );
        assert_eq!(confident_text(""), "");
    }

    #[test]
    fn a_program_past_its_deadline_is_killed() {
        let started = Instant::now();
        let got = run(Path::new("sleep"), &["30"], None, Instant::now() + Duration::from_millis(200));
        assert!(got.is_err_and(|e| e.contains("time limit")));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(run(Path::new("false"), &[], None, Instant::now() + Duration::from_secs(5)).is_err());
        assert_eq!(
            run(Path::new("cat"), &[], Some(b"echo"), Instant::now() + Duration::from_secs(5)).as_deref(),
            Ok(&b"echo"[..])
        );
    }
}
