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
fn a_text_embeds_the_same_alone_and_in_a_batch() {
    let Some(model) = embedder() else { return };
    let long = "A much longer sentence about quarterly tax returns, receipts, invoices and the accountant who files them every spring.";
    let batch = model.embed(&["tax", long, "invoice from the plumber"]).expect("embedded");
    let alone = model.embed(&["tax"]).expect("embedded");
    // In a batch the short text shares each product with the long one, and attends to its own tokens only.
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

/// The same texts through candle-transformers' `BertModel`, one text at a time (so nothing is
/// padded), mean-pooled and scaled to length 1.
fn candle_bert_vectors(dir: &std::path::Path, texts: &[&str]) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::{BertModel, Config};
    let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let weights = std::fs::read(dir.join("model.safetensors"))?;
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
    let model = BertModel::load(vb, &config)?;
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 256,
        ..Default::default()
    }))?;
    let mut vectors = Vec::with_capacity(texts.len());
    for text in texts {
        let ids = tokenizer.encode(*text, true)?.get_ids().to_vec();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let hidden = model.forward(&ids, &ids.zeros_like()?, None)?;
        let mean = hidden.mean(1)?.squeeze(0)?.to_vec1::<f32>()?;
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        vectors.push(mean.iter().map(|x| x / norm).collect());
    }
    Ok(vectors)
}

#[test]
fn vectors_match_candle_transformers_bert_on_the_same_weights() {
    let Some(dir) = models_dir(TextEmbedder::MODEL) else { return };
    let model = TextEmbedder::load(&dir).expect("the model loads");
    let long = "Minutes of the gardening club, with the treasurer's report on seeds and tools. ".repeat(20);
    let mut texts: Vec<&str> = SENTENCES.to_vec();
    texts.extend([long.as_str(), &long[..200], "x", ""]);
    let ours = model.embed(&texts).expect("embedded");
    let reference = candle_bert_vectors(&dir, &texts).expect("candle-transformers embeds the texts");
    assert_eq!(ours.len(), texts.len());
    let mut worst = 0f32;
    for (a, b) in ours.iter().zip(&reference) {
        assert_eq!((a.len(), b.len()), (TextEmbedder::DIMS, TextEmbedder::DIMS));
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst < 2e-6, "the largest difference from candle-transformers is {worst}");
}

#[test]
fn a_call_longer_than_one_pass_embeds_each_text_as_alone() {
    let Some(model) = embedder() else { return };
    let long = "Invoices, receipts and the quarterly tax return, filed by the accountant every spring. ".repeat(20);
    // About 40 texts of up to 256 tokens: several passes of the encoder.
    let texts: Vec<String> = (0..40).map(|i| format!("{i} {}", &long[..(i * 97) % long.len()])).collect();
    let borrowed: Vec<&str> = texts.iter().map(String::as_str).collect();
    let together = model.embed(&borrowed).expect("embedded");
    assert_eq!(together.len(), borrowed.len());
    for (i, text) in borrowed.iter().enumerate() {
        let alone = model.embed(&[*text]).expect("embedded");
        assert_eq!((together[i].len(), alone[0].len()), (TextEmbedder::DIMS, TextEmbedder::DIMS));
        let worst = together[i].iter().zip(&alone[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "text {i} differs by {worst} alone");
    }
}

#[test]
fn a_corrupt_configuration_is_refused_before_anything_is_allocated() {
    let Some(dir) = models_dir(TextEmbedder::MODEL) else { return };
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config")).expect("JSON");
    let broken = std::env::temp_dir().join(format!("cloudsync-bad-minilm-{}", std::process::id()));
    std::fs::create_dir_all(&broken).expect("mkdir");
    for file in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(dir.join(file), broken.join(file)).expect("link");
    }
    for (field, value, said) in [
        ("intermediate_size", serde_json::json!(1_000_000_000_000u64), "intermediate_size"),
        ("num_hidden_layers", serde_json::json!(0), "num_hidden_layers"),
        ("num_attention_heads", serde_json::json!(7), "heads do not divide"),
        ("layer_norm_eps", serde_json::json!(-1.0), "layer_norm_eps"),
        ("hidden_act", serde_json::json!("relu"), "not GELU"),
    ] {
        let mut bad = config.clone();
        bad[field] = value;
        std::fs::write(broken.join("config.json"), serde_json::to_vec(&bad).expect("JSON")).expect("write");
        let err = TextEmbedder::load(&broken).expect_err("refused");
        assert!(err.to_string().contains(said), "{field}: {err}");
    }
    std::fs::remove_dir_all(&broken).ok();
}
