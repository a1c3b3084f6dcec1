//! Small documents made in code, for tests here and elsewhere (no fixtures to ship).

use std::io::{Cursor, Write};

/// A one-page PDF whose text layer says `words` (Helvetica, one line).
pub fn pdf_saying(words: &str) -> Vec<u8> {
    let stream = format!("BT /F1 24 Tf 72 720 Td ({words}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes());
    pdf
}

/// A zip archive of the given members (a DOCX, an EPUB, a zip bomb).
pub fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    for (name, data) in members {
        if zip.start_file(*name, zip::write::SimpleFileOptions::default()).is_err() || zip.write_all(data).is_err() {
            return Vec::new();
        }
    }
    let _ = zip.finish();
    buf.into_inner()
}

/// A DOCX whose one paragraph says `words`.
pub fn docx_saying(words: &str) -> Vec<u8> {
    let xml = format!(r#"<w:document xmlns:w="w"><w:body><w:p><w:r><w:t>{words}</w:t></w:r></w:p></w:body></w:document>"#);
    zip_of(&[("word/document.xml", xml.as_bytes())])
}
