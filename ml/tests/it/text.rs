use cloudsync_ml::{TextEmbedder, cosine, passages};

use crate::models_dir;

const SENTENCES: [&str; 8] = [
    "The cat sits outside",
    "A man is playing guitar",
    "I love pasta",
    "The new movie is awesome",
    "The cat plays in the garden",
    "A woman watches TV",
    "The new movie is so great",
    "Do you like pizza?",
];

/// Cosines of pairs of `SENTENCES` from `ml/tests/reference_minilm.py`, a numpy implementation of
/// the same model (the 0.8939 of the two movie sentences is also the figure sentence-transformers
/// gives for them).
const REFERENCE: [(usize, usize, f32); 8] = [
    (0, 1, 0.03633),
    (0, 4, 0.67879),
    (1, 4, 0.21046),
    (2, 6, 0.25605),
    (2, 7, 0.50955),
    (3, 6, 0.89390),
    (3, 7, 0.19693),
    (5, 6, -0.05093),
];

fn embedder() -> Option<TextEmbedder> {
    let dir = models_dir(TextEmbedder::MODEL)?;
    Some(TextEmbedder::load(&dir).expect("the model loads"))
}

#[test]
fn cosines_match_the_reference_implementation() {
    let Some(model) = embedder() else { return };
    let vectors = model.embed(&SENTENCES).expect("embedded");
    assert_eq!(vectors.len(), SENTENCES.len());
    for vector in &vectors {
        assert_eq!(vector.len(), TextEmbedder::DIMS);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit vectors, not {norm}");
    }
    for (a, b, expected) in REFERENCE {
        let got = cosine(&vectors[a], &vectors[b]);
        assert!(
            (got - expected).abs() < 1e-4,
            "cos({:?}, {:?}) = {got}, the reference says {expected}",
            SENTENCES[a],
            SENTENCES[b]
        );
    }
}

#[test]
fn a_text_embeds_the_same_alone_and_padded_in_a_batch() {
    let Some(model) = embedder() else { return };
    let long = "A much longer sentence about quarterly tax returns, receipts, invoices and the accountant who files them every spring.";
    let batch = model.embed(&["tax", long, "invoice from the plumber"]).expect("embedded");
    let alone = model.embed(&["tax"]).expect("embedded");
    // The short text is padded to the long one's length in the batch: the mask keeps the padding out.
    assert!(cosine(&batch[0], &alone[0]) > 0.99999);
    assert!(batch[0].iter().zip(&alone[0]).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn paraphrases_are_nearer_than_unrelated_texts_and_passages_embed() {
    let Some(model) = embedder() else { return };
    let text = format!(
        "{} The annual income tax return was filed with the revenue office in April.",
        "Minutes of the gardening club. ".repeat(60)
    );
    let cut = passages(&text);
    assert!(cut.len() >= 2, "a long text is several passages");
    let texts: Vec<&str> = cut.iter().map(|p| p.text.as_str()).collect();
    let vectors = model.embed(&texts).expect("embedded");
    let query = model.embed(&["tax papers from last spring"]).expect("embedded");
    let scores: Vec<f32> = vectors.iter().map(|v| cosine(v, &query[0])).collect();
    let best = scores.iter().copied().fold(f32::MIN, f32::max);
    assert_eq!(
        scores.last().copied(),
        Some(best),
        "the passage about the tax return is the nearest: {scores:?}"
    );
}
