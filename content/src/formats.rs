//! The formats and how each gives its text. Every reader here works on bytes already in memory
//! (the child process's input, itself bounded) and keeps what it decompresses bounded too.

use std::io::{Cursor, Read};
use std::time::Instant;

use calamine::{Data, Reader};
use quick_xml::events::Event;

use crate::Extraction;
use crate::ocr::{Ocr, has_text};

/// A zip member may unpack to at most this many times its compressed size (zip bombs unpack by
/// factors of thousands; real documents by tens).
const MAX_RATIO: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Html,
    Pdf,
    Docx,
    Pptx,
    OpenDocument,
    Spreadsheet,
    Epub,
    /// A picture: no text (until OCR), but its size, EXIF and perceptual hash.
    Image,
}

impl Format {
    /// Whether OCR reads this format's text (pictures; PDFs whose pages are scans).
    pub fn recognised(self) -> bool {
        matches!(self, Self::Image | Self::Pdf)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Html => "html",
            Self::Pdf => "pdf",
            Self::Docx => "docx",
            Self::Pptx => "pptx",
            Self::OpenDocument => "odf",
            Self::Spreadsheet => "spreadsheet",
            Self::Epub => "epub",
            Self::Image => "image",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Text,
            Self::Html,
            Self::Pdf,
            Self::Docx,
            Self::Pptx,
            Self::OpenDocument,
            Self::Spreadsheet,
            Self::Epub,
            Self::Image,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    /// Whether the first bytes of a file too large to read whole still give its text.
    pub fn streams(self) -> bool {
        self == Self::Text
    }
}

/// The format a file is read as, by its name's extension and its MIME type; `None`: not read.
pub fn format_of(name: &str, mime: &str) -> Option<Format> {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let by_ext = match ext.as_str() {
        "txt" | "md" | "markdown" | "rst" | "org" | "tex" | "log" | "csv" | "tsv" | "json" | "yaml" | "yml" | "toml" | "ini" | "cfg"
        | "conf" | "xml" | "rs" | "py" | "js" | "ts" | "tsx" | "jsx" | "go" | "java" | "c" | "h" | "cc" | "cpp" | "hpp" | "cs" | "rb"
        | "php" | "swift" | "kt" | "scala" | "sh" | "bash" | "zsh" | "sql" | "css" | "scss" | "lua" | "pl" | "hs" | "ex" | "exs"
        | "erl" | "clj" | "dart" | "r" | "vue" | "svelte" | "srt" | "vtt" => Some(Format::Text),
        "html" | "htm" | "xhtml" => Some(Format::Html),
        "pdf" => Some(Format::Pdf),
        "docx" => Some(Format::Docx),
        "pptx" => Some(Format::Pptx),
        "odt" | "odp" => Some(Format::OpenDocument),
        "xlsx" | "xlsm" | "xls" | "ods" => Some(Format::Spreadsheet),
        "epub" => Some(Format::Epub),
        "jpg" | "jpeg" | "png" | "gif" | "webp" | "bmp" | "tif" | "tiff" => Some(Format::Image),
        _ => None,
    };
    by_ext.or_else(|| match mime {
        "text/html" | "application/xhtml+xml" => Some(Format::Html),
        "application/pdf" => Some(Format::Pdf),
        "image/jpeg" | "image/png" | "image/gif" | "image/webp" | "image/bmp" | "image/tiff" => Some(Format::Image),
        m if m.starts_with("text/") => Some(Format::Text),
        _ => None,
    })
}

/// Text cut at `max` bytes (on a character boundary).
fn cut(mut text: String, max: usize) -> Extraction {
    let truncated = text.len() > max;
    if truncated {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Extraction::Text { text, truncated }
}

fn failed(reason: impl std::fmt::Display) -> Extraction {
    Extraction::Failed {
        reason: reason.to_string(),
    }
}

/// Extracts the text of `data` read as `format`, at most `max_text` bytes of it.
pub fn extract(format: Format, data: &[u8], max_text: usize) -> Extraction {
    extract_with(format, data, max_text, None)
}

/// [`extract`], with OCR for pictures and for PDFs without a text layer when `ocr` is given (to
/// end by its deadline).
pub fn extract_with(format: Format, data: &[u8], max_text: usize, ocr: Option<(&Ocr, Instant)>) -> Extraction {
    let text = match format {
        Format::Image => {
            return match crate::image::read_image(data) {
                Ok(mut reading) => {
                    // A picture whose text cannot be recognised still has its size, EXIF and hash.
                    if let Some((ocr, deadline)) = ocr
                        && let Ok(text) = ocr.picture(data, deadline)
                        && !text.trim().is_empty()
                    {
                        reading.text = match cut(text, max_text) {
                            Extraction::Text { text, .. } => Some(text),
                            _ => None,
                        };
                    }
                    Extraction::Image(reading)
                }
                Err(reason) => failed(reason),
            };
        }
        Format::Text => Ok(decode(data)),
        Format::Html => Ok(html_text(&decode(data))),
        Format::Pdf => {
            let layer = pdf_extract::extract_text_from_mem(data).map_err(|err| format!("the PDF cannot be read: {err}"));
            match (layer, ocr) {
                (Ok(text), _) if has_text(&text) => Ok(text),
                // No text layer (or one the parser cannot read): the pages are scans.
                (layer, Some((ocr, deadline))) => match ocr.pdf(data, deadline) {
                    Ok((text, cut_short)) if has_text(&text) || layer.is_err() => {
                        return match cut(text, max_text) {
                            Extraction::Text { text, truncated } => Extraction::Text {
                                text,
                                truncated: truncated || cut_short,
                            },
                            other => other,
                        };
                    }
                    Ok(_) => layer,
                    Err(reason) => layer.map_err(|parse| format!("{parse}; {reason}")),
                },
                (layer, None) => layer,
            }
        }
        Format::Docx => zip_xml(
            data,
            |name| name == "word/document.xml" || name.starts_with("word/footnotes"),
            max_text,
        ),
        Format::Pptx => zip_xml(
            data,
            |name| name.starts_with("ppt/slides/slide") && name.ends_with(".xml"),
            max_text,
        ),
        Format::OpenDocument => zip_xml(data, |name| name == "content.xml", max_text),
        Format::Spreadsheet => spreadsheet(data, max_text),
        Format::Epub => epub(data, max_text),
    };
    match text {
        Ok(text) => cut(text, max_text),
        Err(reason) => failed(reason),
    }
}

/// UTF-8 (or UTF-16 with its byte-order mark); anything else as Latin-1, so no text is refused.
fn decode(data: &[u8]) -> String {
    if let Some(rest) = data.strip_prefix(&[0xFF, 0xFE]) {
        let units: Vec<u16> = rest.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        return String::from_utf16_lossy(&units);
    }
    if let Some(rest) = data.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = rest.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
        return String::from_utf16_lossy(&units);
    }
    let data = data.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(data);
    match std::str::from_utf8(data) {
        Ok(text) => text.to_owned(),
        // A cut in the middle of a character (a prefix of a large file) is not a reason for Latin-1.
        Err(err) if err.error_len().is_none() => String::from_utf8_lossy(&data[..err.valid_up_to()]).into_owned(),
        Err(_) => data.iter().map(|&b| char::from(b)).collect(),
    }
}

/// The visible text of an HTML document: no scripts, styles, templates or comments.
fn html_text(html: &str) -> String {
    let document = scraper::Html::parse_document(html);
    let mut out = String::new();
    for node in document.tree.root().descendants() {
        let scraper::Node::Text(text) = node.value() else { continue };
        let hidden = node.ancestors().any(|a| {
            a.value()
                .as_element()
                .is_some_and(|e| matches!(e.name(), "script" | "style" | "noscript" | "template" | "head"))
        });
        let in_title = node
            .ancestors()
            .any(|a| a.value().as_element().is_some_and(|e| e.name() == "title"));
        if hidden && !in_title {
            continue;
        }
        let text = text.trim();
        if !text.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(text);
        }
    }
    out
}

/// Opens a zip archive, refusing one whose members claim to unpack far beyond their size.
fn archive(data: &[u8]) -> Result<zip::ZipArchive<Cursor<&[u8]>>, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(data)).map_err(|err| format!("not a readable zip archive: {err}"))?;
    for i in 0..zip.len() {
        let member = zip.by_index_raw(i).map_err(|err| format!("a zip member is unreadable: {err}"))?;
        if member.size() > member.compressed_size().max(1024) * MAX_RATIO {
            return Err(format!(
                "looks like a zip bomb: a member unpacks from {} to {} bytes",
                member.compressed_size(),
                member.size()
            ));
        }
    }
    Ok(zip)
}

/// Reads one member, at most `limit` bytes of it whatever it claims.
fn member(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, index: usize, limit: usize) -> Result<Vec<u8>, String> {
    let file = zip.by_index(index).map_err(|err| format!("a zip member is unreadable: {err}"))?;
    let mut out = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| format!("a zip member is broken: {err}"))?;
    if out.len() > limit {
        return Err(format!("a zip member unpacks to more than {limit} bytes"));
    }
    Ok(out)
}

fn names(zip: &zip::ZipArchive<Cursor<&[u8]>>) -> Vec<(usize, String)> {
    (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).and_then(Result::ok).map(|n| (i, n.into_owned())))
        .collect()
}

/// The text of the XML members `wanted` picks, in the archive's order (`slide10` after `slide9`).
fn zip_xml(data: &[u8], wanted: impl Fn(&str) -> bool, max_text: usize) -> Result<String, String> {
    let mut zip = archive(data)?;
    let mut picked: Vec<(usize, String)> = names(&zip).into_iter().filter(|(_, n)| wanted(n)).collect();
    if picked.is_empty() {
        return Err("the document has none of the parts that hold its text".into());
    }
    picked.sort_by_key(|(_, name)| (name.len(), name.clone()));
    let mut out = String::new();
    // XML markup takes many times its text: allow that much per member.
    let limit = max_text.saturating_mul(8).max(1 << 20);
    for (index, _) in picked {
        let xml = member(&mut zip, index, limit)?;
        xml_text(&xml, &mut out)?;
        if out.len() > max_text {
            break;
        }
    }
    Ok(out)
}

/// Appends the character data of an XML document, a line break after each paragraph-like element.
fn xml_text(xml: &[u8], out: &mut String) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Text(t)) => {
                // Entity references come as their own events; a text event is the characters as written.
                out.push_str(t.as_ref());
            }
            Ok(Event::GeneralRef(r)) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    out.push(c);
                } else {
                    match r.as_ref() {
                        "amp" => out.push('&'),
                        "lt" => out.push('<'),
                        "gt" => out.push('>'),
                        "quot" => out.push('"'),
                        "apos" => out.push('\''),
                        _ => {}
                    }
                }
            }
            Ok(Event::CData(t)) => out.push_str(t.as_ref()),
            Ok(Event::End(e)) => {
                let name = e.local_name();
                if matches!(name.as_ref(), "p" | "h" | "tr" | "li" | "br" | "title") {
                    out.push('\n');
                }
            }
            Ok(Event::Empty(e)) if matches!(e.local_name().as_ref(), "tab" | "s") => out.push(' '),
            Ok(Event::Empty(e)) if matches!(e.local_name().as_ref(), "br" | "line-break") => out.push('\n'),
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(err) => return Err(format!("broken XML at byte {}: {err}", reader.buffer_position())),
        }
        buf.clear();
    }
}

/// Every sheet's cells, a tab between cells and a line per row.
fn spreadsheet(data: &[u8], max_text: usize) -> Result<String, String> {
    if data.starts_with(b"PK") {
        archive(data)?; // the zip-bomb check, before calamine unpacks anything
    }
    let mut book =
        calamine::open_workbook_auto_from_rs(Cursor::new(data)).map_err(|err| format!("the spreadsheet cannot be read: {err}"))?;
    let mut out = String::new();
    for name in book.sheet_names() {
        let Ok(range) = book.worksheet_range(&name) else { continue };
        out.push_str(&name);
        out.push('\n');
        for row in range.rows() {
            let cells: Vec<String> = row.iter().filter(|c| !matches!(c, Data::Empty)).map(ToString::to_string).collect();
            if !cells.is_empty() {
                out.push_str(&cells.join("\t"));
                out.push('\n');
            }
            if out.len() > max_text {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The chapters' visible text, in the archive's order.
fn epub(data: &[u8], max_text: usize) -> Result<String, String> {
    let mut zip = archive(data)?;
    let chapters: Vec<(usize, String)> = names(&zip)
        .into_iter()
        .filter(|(_, n)| {
            let n = n.to_ascii_lowercase();
            n.ends_with(".xhtml") || n.ends_with(".html") || n.ends_with(".htm")
        })
        .collect();
    if chapters.is_empty() {
        return Err("the book has no chapters".into());
    }
    let mut out = String::new();
    let limit = max_text.saturating_mul(8).max(1 << 20);
    for (index, _) in chapters {
        let html = member(&mut zip, index, limit)?;
        let text = html_text(&decode(&html));
        if !text.is_empty() {
            out.push_str(&text);
            out.push('\n');
        }
        if out.len() > max_text {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::zip_of;

    fn text(extraction: Extraction) -> String {
        match extraction {
            Extraction::Text { text, .. } => text,
            other => panic!("no text: {other:?}"),
        }
    }

    #[test]
    fn a_pdf_gives_its_text_layer() {
        let got = text(extract(Format::Pdf, &crate::samples::pdf_saying("Quarterly invoice summary"), 1000));
        assert_eq!(
            got.split_whitespace().collect::<Vec<_>>(),
            ["Quarterly", "invoice", "summary"],
            "{got:?}"
        );
    }

    #[test]
    fn formats_by_name_and_type() {
        assert_eq!(format_of("Notes.MD", ""), Some(Format::Text));
        assert_eq!(format_of("index", "text/html"), Some(Format::Html));
        assert_eq!(format_of("a.docx", ""), Some(Format::Docx));
        assert_eq!(
            format_of("photo.jpg", "image/jpeg"),
            Some(Format::Image),
            "issue 17: pictures are read"
        );
        assert_eq!(format_of("drawing.svg", "image/svg+xml"), None);
        assert_eq!(format_of("movie.mp4", "video/mp4"), None);
    }

    #[test]
    fn html_gives_its_visible_text_only() {
        let html = "<html><head><title>Tax</title><style>p{color:red}</style><script>var secret=1</script></head>\
                    <body><p>Hello &amp; <b>welcome</b></p><noscript>enable js</noscript></body></html>";
        assert_eq!(text(extract(Format::Html, html.as_bytes(), 1000)), "Tax Hello & welcome");
    }

    #[test]
    fn office_documents_give_their_paragraphs() {
        let docx = zip_of(&[(
            "word/document.xml",
            br#"<w:document xmlns:w="x"><w:body><w:p><w:r><w:t>Quarterly</w:t></w:r><w:r><w:t xml:space="preserve"> report &amp; plan</w:t></w:r></w:p><w:p><w:r><w:t>Second</w:t></w:r></w:p></w:body></w:document>"#,
        )]);
        assert_eq!(text(extract(Format::Docx, &docx, 1000)), "Quarterly report & plan\nSecond\n");
        let odt = zip_of(&[(
            "content.xml",
            br#"<office:document-content xmlns:text="t"><text:p>Hallo Welt</text:p></office:document-content>"#,
        )]);
        assert_eq!(text(extract(Format::OpenDocument, &odt, 1000)), "Hallo Welt\n");
        let pptx = zip_of(&[
            (
                "ppt/slides/slide2.xml",
                b"<p:sld><a:p><a:t>Second slide</a:t></a:p></p:sld>".as_slice(),
            ),
            (
                "ppt/slides/slide1.xml",
                b"<p:sld><a:p><a:t>First slide</a:t></a:p></p:sld>".as_slice(),
            ),
        ]);
        assert_eq!(text(extract(Format::Pptx, &pptx, 1000)), "First slide\nSecond slide\n");
        let epub = zip_of(&[("OEBPS/ch1.xhtml", b"<html><body><p>Call me Ishmael.</p></body></html>".as_slice())]);
        assert_eq!(text(extract(Format::Epub, &epub, 1000)), "Call me Ishmael.\n");
    }

    #[test]
    fn broken_and_bombed_documents_fail_with_a_reason() {
        let bomb = zip_of(&[("word/document.xml", &vec![b'a'; 50 << 20])]);
        let Extraction::Failed { reason } = extract(Format::Docx, &bomb, 1000) else {
            panic!("a bomb was read")
        };
        assert!(reason.contains("zip bomb"), "{reason}");
        assert!(matches!(extract(Format::Docx, b"not a zip", 1000), Extraction::Failed { .. }));
        assert!(matches!(extract(Format::Pdf, b"%PDF-1.4 broken", 1000), Extraction::Failed { .. }));
        assert!(matches!(extract(Format::Spreadsheet, b"garbage", 1000), Extraction::Failed { .. }));
    }

    #[test]
    fn text_is_decoded_and_cut_at_the_limit() {
        assert_eq!(
            extract(Format::Text, "héllo wörld".as_bytes(), 4),
            Extraction::Text {
                text: "hél".into(),
                truncated: true
            }
        );
        assert_eq!(text(extract(Format::Text, &[0xFF, 0xFE, b'h', 0, b'i', 0], 100)), "hi");
        assert_eq!(text(extract(Format::Text, &[b'c', b'a', b'f', 0xE9, b'!'], 100)), "café!");
    }
}
