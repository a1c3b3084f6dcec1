//! Small documents made in code, for tests here and elsewhere (no fixtures to ship).

use std::io::{Cursor, Write};

/// A one-page PDF whose text layer says `words` (Helvetica, one line).
pub fn pdf_saying(words: &str) -> Vec<u8> {
    pdf_lines(&[words], 24, 0)
}

/// A one-page US-letter PDF whose text layer holds `lines` in Helvetica of `size` points, from the
/// top left; `rotate` (0, 90, 180, 270) turns the page as a viewer (and a renderer) shows it.
pub fn pdf_lines(lines: &[&str], size: u32, rotate: u32) -> Vec<u8> {
    let mut text = format!("BT /F1 {size} Tf {} TL 72 720 Td", size + size / 5);
    for line in lines {
        text.push_str(&format!(" ({line}) Tj T*"));
    }
    text.push_str(" ET");
    pdf_of(&[
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Rotate {rotate} /Contents 4 0 R \
             /Resources << /Font << /F1 5 0 R >> >> >>"
        )
        .into_bytes(),
        stream_object("", text.as_bytes()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_owned()
            .into_bytes(),
    ])
}

/// A one-page PDF showing a grey-scale scan (`jpeg`, `width`×`height` pixels) over the whole
/// page, with no text layer unless `text_layer` gives one (a line of Helvetica over the scan).
pub fn scanned_pdf(jpeg: &[u8], width: u32, height: u32, text_layer: Option<&str>) -> Vec<u8> {
    let mut contents = "q 612 0 0 792 0 0 cm /Scan Do Q".to_owned();
    if let Some(words) = text_layer {
        contents.push_str(&format!(" BT /F1 12 Tf 72 40 Td ({words}) Tj ET"));
    }
    pdf_of(&[
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /XObject << /Scan 6 0 R >> /Font << /F1 5 0 R >> >> >>"
            .as_bytes()
            .to_vec(),
        stream_object("", contents.as_bytes()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .as_bytes()
            .to_vec(),
        stream_object(
            &format!(
                "/Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceGray \
                 /BitsPerComponent 8 /Filter /DCTDecode"
            ),
            jpeg,
        ),
    ])
}

/// `pdf` rendered to a grey-scale PNG by poppler's `pdftoppm` (first page, `dpi`): a page as a
/// scanner would see it. `None` without `pdftoppm`.
pub fn rendered(pdf: &[u8], dpi: u32) -> Option<Vec<u8>> {
    static RENDERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RENDERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let prefix = std::env::temp_dir().join(format!("cloudsync-sample-{}-{n}", std::process::id()));
    let mut child = std::process::Command::new("pdftoppm")
        .args(["-r", &dpi.to_string(), "-gray", "-png", "-singlefile", "-f", "1", "-l", "1", "-"])
        .arg(&prefix)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(pdf).ok()?;
    let done = child.wait().ok()?.success();
    let png = prefix.with_extension("png");
    let out = std::fs::read(&png).ok();
    let _ = std::fs::remove_file(&png);
    out.filter(|_| done)
}

/// `pdf`'s first page as a scanner gives it back: rendered at `dpi`, kept as a grey-scale JPEG,
/// in a PDF of its own with no text layer unless `text_layer` gives one. `None` without `pdftoppm`.
pub fn scan_of(pdf: &[u8], dpi: u32, text_layer: Option<&str>) -> Option<Vec<u8>> {
    let page = image::load_from_memory(&rendered(pdf, dpi)?).ok()?.to_luma8();
    let mut jpeg = Vec::new();
    page.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85))
        .ok()?;
    let (width, height) = page.dimensions();
    Some(scanned_pdf(&jpeg, width, height, text_layer))
}

/// A stream object of `data` with `keys` in its dictionary.
fn stream_object(keys: &str, data: &[u8]) -> Vec<u8> {
    let mut object = format!("<< {keys} /Length {} >>\nstream\n", data.len()).into_bytes();
    object.extend_from_slice(data);
    object.extend_from_slice(b"\nendstream");
    object
}

/// A PDF of one page: `page` (object 3), its objects from 4 on, and the catalog and page tree.
fn pdf_of<T: AsRef<[u8]>>(page: &[T]) -> Vec<u8> {
    let mut objects: Vec<&[u8]> = vec![b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"];
    objects.extend(page.iter().map(AsRef::as_ref));
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        pdf.extend_from_slice(object);
        pdf.extend_from_slice(b"\nendobj\n");
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

/// EXIF facts to write into a sample picture.
#[derive(Debug, Clone, Default)]
pub struct Exif<'a> {
    /// `YYYY:MM:DD HH:MM:SS`, as cameras write it.
    pub taken_at: Option<&'a str>,
    pub make: Option<&'a str>,
    pub model: Option<&'a str>,
    /// Latitude and longitude in degrees (north and east positive).
    pub gps: Option<(f64, f64)>,
}

/// A scene to photograph: soft gradients, a few discs and a bar, seen from `(dx, dy)` (a burst shot
/// of the same scene moves the camera a little), `seed` choosing the scene.
pub fn scene(width: u32, height: u32, seed: u32, dx: f64, dy: f64) -> image::RgbImage {
    let discs: Vec<(f64, f64, f64, [u8; 3])> = (0..5u32)
        .map(|i| {
            let h = seed.wrapping_mul(2_654_435_761).wrapping_add(i.wrapping_mul(40_503));
            let at = |shift: u32| f64::from((h >> shift) & 0xff) / 255.0;
            let colour = [(h >> 3) as u8, (h >> 11) as u8, (h >> 19) as u8];
            (at(0), at(8), 0.05 + at(16) * 0.2, colour)
        })
        .collect();
    image::RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (f64::from(x) / f64::from(width) + dx, f64::from(y) / f64::from(height) + dy);
        let base = [(u * 200.0) as u8, (v * 180.0 + 30.0) as u8, ((u + v) * 90.0) as u8];
        for (cx, cy, r, colour) in &discs {
            if (u - cx).powi(2) + (v - cy).powi(2) < r * r {
                return image::Rgb(*colour);
            }
        }
        if (v - 0.8).abs() < 0.04 && u > 0.1 && u < 0.9 {
            return image::Rgb([20, 20, 20]);
        }
        image::Rgb(base)
    })
}

/// `picture` as a JPEG of `quality` (1–100), with `exif` written into an APP1 segment when any of
/// it is set.
pub fn jpeg(picture: &image::RgbImage, quality: u8, exif: &Exif<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    picture.write_with_encoder(encoder).expect("a JPEG encodes into memory");
    let tiff = exif_tiff(exif);
    if tiff.is_empty() {
        return out;
    }
    // After the start-of-image marker: APP1, its length (counting itself), "Exif\0\0", the TIFF.
    let mut with = out[..2].to_vec();
    with.extend_from_slice(&[0xff, 0xe1]);
    with.extend_from_slice(&u16::try_from(tiff.len() + 8).unwrap_or(u16::MAX).to_be_bytes());
    with.extend_from_slice(b"Exif\0\0");
    with.extend_from_slice(&tiff);
    with.extend_from_slice(&out[2..]);
    with
}

fn exif_tiff(facts: &Exif<'_>) -> Vec<u8> {
    use exif::{Field, In, Rational, Tag, Value};
    let ascii = |tag: Tag, text: &str| Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Ascii(vec![text.as_bytes().to_vec()]),
    };
    let dms = |degrees: f64| {
        let whole = degrees.abs().trunc();
        let minutes = (degrees.abs() - whole) * 60.0;
        let seconds = (minutes - minutes.trunc()) * 60.0;
        Value::Rational(vec![
            Rational {
                num: whole as u32,
                denom: 1,
            },
            Rational {
                num: minutes.trunc() as u32,
                denom: 1,
            },
            Rational {
                num: (seconds * 1000.0).round() as u32,
                denom: 1000,
            },
        ])
    };
    let mut fields = Vec::new();
    if let Some(at) = facts.taken_at {
        fields.push(ascii(Tag::DateTimeOriginal, at));
    }
    if let Some(make) = facts.make {
        fields.push(ascii(Tag::Make, make));
    }
    if let Some(model) = facts.model {
        fields.push(ascii(Tag::Model, model));
    }
    if let Some((lat, lon)) = facts.gps {
        fields.push(ascii(Tag::GPSLatitudeRef, if lat < 0.0 { "S" } else { "N" }));
        fields.push(Field {
            tag: Tag::GPSLatitude,
            ifd_num: In::PRIMARY,
            value: dms(lat),
        });
        fields.push(ascii(Tag::GPSLongitudeRef, if lon < 0.0 { "W" } else { "E" }));
        fields.push(Field {
            tag: Tag::GPSLongitude,
            ifd_num: In::PRIMARY,
            value: dms(lon),
        });
    }
    if fields.is_empty() {
        return Vec::new();
    }
    let mut writer = exif::experimental::Writer::new();
    for field in &fields {
        writer.push_field(field);
    }
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, false).expect("EXIF writes into memory");
    tiff.into_inner()
}
