//! The language of an extracted text.

/// The language of a text, as an ISO 639-1 code where there is one (else ISO 639-3), when whatlang
/// can tell it reliably.
pub fn detect_language(text: &str) -> Option<String> {
    // A few kilobytes tell the language as well as the whole text does.
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let info = whatlang::detect(&text[..end])?;
    if !info.is_reliable() && info.confidence() < 0.5 {
        return None;
    }
    let code = info.lang().code();
    let short = match code {
        "eng" => "en",
        "deu" => "de",
        "fra" => "fr",
        "spa" => "es",
        "ita" => "it",
        "por" => "pt",
        "nld" => "nl",
        "cmn" => "zh",
        "jpn" => "ja",
        "kor" => "ko",
        "rus" => "ru",
        "ara" => "ar",
        "dan" => "da",
        "ell" => "el",
        "fin" => "fi",
        "hun" => "hu",
        "nob" => "no",
        "ron" => "ro",
        "swe" => "sv",
        "tam" => "ta",
        "tur" => "tr",
        "pol" => "pl",
        "ces" => "cs",
        "ukr" => "uk",
        other => other,
    };
    Some(short.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_told_apart() {
        let en = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.";
        let de = "Die Häuser in der Altstadt wurden im letzten Jahrhundert von den Bürgern der Stadt gebaut.";
        let fr = "Les maisons de la vieille ville ont été construites au siècle dernier par les habitants.";
        assert_eq!(detect_language(en).as_deref(), Some("en"));
        assert_eq!(detect_language(de).as_deref(), Some("de"));
        assert_eq!(detect_language(fr).as_deref(), Some("fr"));
    }
}
