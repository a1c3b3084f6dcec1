//! Pictures: their size, EXIF (when taken, with which camera, where) and a perceptual hash, read in
//! the extractor's child process like text, so a decompression bomb or a broken file costs at most
//! its limits. The decoder is told the largest picture it may make ([`MAX_SIDE`], [`MAX_ALLOC`])
//! before it allocates anything.

use std::io::Cursor;

use base64::Engine as _;

use image_hasher::{HashAlg, HasherConfig};
use serde::{Deserialize, Serialize};

/// The image reader's name and version as recorded in `FileAnalyzed`: a new version reads every
/// picture again.
pub const READER: &str = "cloudsync-image";
pub const READER_VERSION: u32 = 1;

/// The longest side of a picture that is decoded.
pub const MAX_SIDE: u32 = 20_000;
/// What the decoder may allocate for one picture.
pub const MAX_ALLOC: u64 = 512 << 20;
/// The perceptual hash's side: 16×16 DCT coefficients, 256 bits.
pub const HASH_SIDE: u32 = 16;

/// What the child learns of a picture (the GPS position in clear: the parent seals it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageReading {
    pub width: u32,
    pub height: u32,
    /// Lower-case hex of the perceptual hash.
    pub phash: String,
    pub taken_at: Option<String>,
    pub camera: Option<String>,
    /// Latitude and longitude in degrees.
    pub gps: Option<(f64, f64)>,
    /// The text recognised in the picture (OCR), when OCR ran and found some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What an image classifier looks at: the picture resized so its shorter side is
    /// [`SQUARE_SIDE`] pixels and its middle square cut out, RGB, 3 bytes a pixel, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub square: Option<String>,
}

/// The side of [`ImageReading::square`].
pub const SQUARE_SIDE: u32 = 256;

/// The middle square of `picture` resized so its shorter side is [`SQUARE_SIDE`] (RGB bytes).
fn square(picture: &image::DynamicImage) -> Vec<u8> {
    let (width, height) = (picture.width().max(1), picture.height().max(1));
    let scale = f64::from(SQUARE_SIDE) / f64::from(width.min(height));
    let (w, h) = (
        ((f64::from(width) * scale).round() as u32).max(SQUARE_SIDE),
        ((f64::from(height) * scale).round() as u32).max(SQUARE_SIDE),
    );
    let resized = picture.resize_exact(w, h, image::imageops::FilterType::Triangle).to_rgb8();
    image::imageops::crop_imm(&resized, (w - SQUARE_SIDE) / 2, (h - SQUARE_SIDE) / 2, SQUARE_SIDE, SQUARE_SIDE)
        .to_image()
        .into_raw()
}

/// Decodes a picture within the decoder's limits.
///
/// # Errors
/// Not a picture the decoder knows, broken, or over the limits: why.
pub(crate) fn decode(data: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|err| format!("the picture cannot be read: {err}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|err| format!("the picture cannot be decoded: {err}"))
}

/// Reads a picture.
///
/// # Errors
/// Not a picture the decoder knows, broken, or over the limits: why.
pub fn read_image(data: &[u8]) -> Result<ImageReading, String> {
    let picture = decode(data)?;
    let hasher = HasherConfig::new()
        .hash_size(HASH_SIDE, HASH_SIDE)
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .to_hasher();
    let phash = hasher.hash_image(&picture).as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut reading = ImageReading {
        width: picture.width(),
        height: picture.height(),
        phash,
        taken_at: None,
        camera: None,
        gps: None,
        text: None,
        square: Some(base64::engine::general_purpose::STANDARD.encode(square(&picture))),
    };
    if let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(data)) {
        read_exif(&exif, &mut reading);
    }
    Ok(reading)
}

fn text(exif: &exif::Exif, tag: exif::Tag) -> Option<String> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    match &field.value {
        exif::Value::Ascii(parts) => {
            let joined: String = parts
                .iter()
                .map(|p| String::from_utf8_lossy(p).trim().to_owned())
                .collect::<Vec<_>>()
                .join(" ");
            let joined = joined.trim().to_owned();
            (!joined.is_empty()).then_some(joined)
        }
        _ => None,
    }
}

fn degrees(exif: &exif::Exif, tag: exif::Tag, reference: exif::Tag, negative: &str) -> Option<f64> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    let exif::Value::Rational(parts) = &field.value else { return None };
    let [d, m, s] = parts.as_slice() else { return None };
    let value = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
    let sign = if text(exif, reference).is_some_and(|r| r.eq_ignore_ascii_case(negative)) {
        -1.0
    } else {
        1.0
    };
    value.is_finite().then_some(sign * value)
}

fn read_exif(exif: &exif::Exif, reading: &mut ImageReading) {
    // "2024:03:05 14:22:10" → "2024-03-05T14:22:10".
    reading.taken_at = text(exif, exif::Tag::DateTimeOriginal)
        .or_else(|| text(exif, exif::Tag::DateTime))
        .filter(|t| t.len() == 19 && t.is_ascii())
        .map(|t| format!("{}-{}-{}T{}", &t[0..4], &t[5..7], &t[8..10], &t[11..]));
    reading.camera = match (text(exif, exif::Tag::Make), text(exif, exif::Tag::Model)) {
        (Some(make), Some(model)) if model.starts_with(&make) => Some(model),
        (Some(make), Some(model)) => Some(format!("{make} {model}")),
        (make, model) => make.or(model),
    };
    let lat = degrees(exif, exif::Tag::GPSLatitude, exif::Tag::GPSLatitudeRef, "S");
    let lon = degrees(exif, exif::Tag::GPSLongitude, exif::Tag::GPSLongitudeRef, "W");
    reading.gps = lat.zip(lon);
}

/// How many bits two hex hashes differ in (`u32::MAX` for hashes of different lengths).
#[must_use]
pub fn hash_distance(a: &str, b: &str) -> u32 {
    if a.len() != b.len() {
        return u32::MAX;
    }
    let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0);
    a.bytes().zip(b.bytes()).map(|(x, y)| (nibble(x) ^ nibble(y)).count_ones()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, shade: impl Fn(u32, u32) -> u8) -> Vec<u8> {
        let picture = image::GrayImage::from_fn(width, height, |x, y| image::Luma([shade(x, y)]));
        let mut out = Cursor::new(Vec::new());
        picture.write_to(&mut out, image::ImageFormat::Png).expect("encodes");
        out.into_inner()
    }

    #[test]
    fn a_picture_has_its_size_and_a_hash_that_survives_resizing() {
        let gradient = |x: u32, y: u32| ((x * 3 + y * 5) % 251) as u8;
        let big = read_image(&png(400, 300, gradient)).expect("reads");
        assert_eq!((big.width, big.height), (400, 300));
        assert_eq!(big.phash.len(), 64, "256 bits");
        let small = read_image(&png(200, 150, |x, y| gradient(x * 2, y * 2))).expect("reads");
        let other = read_image(&png(400, 300, |x, y| if (x / 50 + y / 50) % 2 == 0 { 0 } else { 255 })).expect("reads");
        assert!(hash_distance(&big.phash, &small.phash) < hash_distance(&big.phash, &other.phash));
        assert_eq!(big.taken_at, None);
    }

    #[test]
    fn broken_and_oversized_pictures_fail_with_a_reason() {
        assert!(read_image(b"\xff\xd8\xff not a jpeg").is_err());
        // A PNG header claiming 100,000 × 100,000 pixels is refused before anything is allocated.
        let mut bomb = png(1, 1, |_, _| 0);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let refused = read_image(&bomb).expect_err("refused");
        assert!(refused.contains("decoded"), "{refused}");
    }

    #[test]
    fn exif_says_when_where_and_with_what() {
        use crate::samples::{Exif, jpeg, scene};
        let facts = Exif {
            taken_at: Some("2024:05:01 10:00:00"),
            make: Some("Canon"),
            model: Some("Canon EOS 5D"),
            gps: Some((48.8584, -2.2945)),
        };
        let read = read_image(&jpeg(&scene(320, 240, 7, 0.0, 0.0), 90, &facts)).expect("reads");
        assert_eq!((read.width, read.height), (320, 240));
        assert_eq!(read.taken_at.as_deref(), Some("2024-05-01T10:00:00"));
        assert_eq!(read.camera.as_deref(), Some("Canon EOS 5D"), "the make is not repeated");
        let (lat, lon) = read.gps.expect("a position");
        assert!((lat - 48.8584).abs() < 1e-5 && (lon + 2.2945).abs() < 1e-5, "{lat} {lon}");
        let bare = read_image(&jpeg(&scene(320, 240, 7, 0.0, 0.0), 90, &Exif::default())).expect("reads");
        assert_eq!((bare.taken_at, bare.camera, bare.gps), (None, None, None));
    }

    #[test]
    fn copies_are_near_and_other_scenes_far() {
        use crate::samples::{Exif, jpeg, scene};
        let original = read_image(&jpeg(&scene(800, 600, 3, 0.0, 0.0), 92, &Exif::default())).expect("reads");
        let resized = read_image(&jpeg(&scene(400, 300, 3, 0.0, 0.0), 92, &Exif::default())).expect("reads");
        let recompressed = read_image(&jpeg(&scene(800, 600, 3, 0.0, 0.0), 30, &Exif::default())).expect("reads");
        let other = read_image(&jpeg(&scene(800, 600, 4, 0.0, 0.0), 92, &Exif::default())).expect("reads");
        let near = hash_distance(&original.phash, &resized.phash).max(hash_distance(&original.phash, &recompressed.phash));
        let far = hash_distance(&original.phash, &other.phash);
        assert!(near <= 12 && far >= 40, "copies {near} bits apart, another scene {far}");
    }

    #[test]
    fn hashes_differ_by_bits() {
        assert_eq!(hash_distance("00ff", "00ff"), 0);
        assert_eq!(hash_distance("00ff", "01fe"), 2);
        assert_eq!(hash_distance("00", "0000"), u32::MAX);
    }
}
