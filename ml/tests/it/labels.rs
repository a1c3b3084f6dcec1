//! EfficientNet-Lite0 names what real photographs show: scikit-image's coffee cup, Chelsea the cat
//! and the camera man's tripod, as ImageNet's classes.

use cloudsync_ml::{ImageLabeler, LABELS_MODEL};

use crate::{models_dir, photo};

fn labels(labeler: &ImageLabeler, name: &str) -> Option<Vec<(String, f32)>> {
    let (rgb, width, height) = photo(name)?;
    let labels = labeler.classify(&rgb, width, height, 3).expect("classified");
    Some(labels.into_iter().map(|l| (l.name, l.score)).collect())
}

#[test]
fn photographs_get_the_classes_of_what_they_show() {
    let Some(dir) = models_dir(LABELS_MODEL) else { return };
    let labeler = ImageLabeler::load(&dir).expect("the model loads");
    let Some(coffee) = labels(&labeler, "coffee.png") else { return };
    assert_eq!(coffee[0].0, "espresso", "{coffee:?}");
    assert!(coffee[0].1 > 0.5, "{coffee:?}");
    let cat = labels(&labeler, "chelsea.png").expect("a photograph");
    assert!(
        cat.iter()
            .any(|(name, _)| ["tabby cat", "Egyptian Mau", "a cat having a striped coat"].contains(&name.as_str())),
        "{cat:?}"
    );
    let camera = labels(&labeler, "camera.png").expect("a photograph");
    assert_eq!(camera[0].0, "tripod", "{camera:?}");
    // Scores are probabilities, the likeliest first.
    assert!(coffee.windows(2).all(|w| w[0].1 >= w[1].1) && coffee.iter().map(|l| l.1).sum::<f32>() <= 1.0);
}

#[test]
fn a_model_folder_without_its_files_is_refused_with_the_reason() {
    let empty = std::env::temp_dir().join(format!("cloudsync-no-labels-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("mkdir");
    let err = ImageLabeler::load(&empty).err().expect("nothing to load");
    assert!(err.to_string().contains("labels.json"), "{err}");
    std::fs::remove_dir_all(&empty).ok();
}

/// No ResNet-50 weights can be had here: weights of its layout are made up (random, as
/// candle-transformers initialises them) and saved as a checkpoint would be, to show that given
/// weights load and classify. What it says of a picture means nothing.
#[test]
fn resnet50_loads_when_its_weights_are_given() {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    let dir = std::env::temp_dir().join(format!("cloudsync-resnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let weights = VarMap::new();
    candle_transformers::models::resnet::resnet50(1000, VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu))
        .expect("the layers are made");
    weights.save(dir.join("model.safetensors")).expect("saved");
    let names: Vec<String> = (0..1000).map(|i| format!("class {i}")).collect();
    std::fs::write(dir.join("labels.json"), serde_json::to_vec(&names).expect("JSON")).expect("labels");

    let labeler = ImageLabeler::load_resnet50(&dir).expect("given weights load");
    assert_eq!(labeler.model(), "resnet-50");
    let rgb: Vec<u8> = (0..320 * 240 * 3).map(|i| (i % 251) as u8).collect();
    let labels = labeler.classify(&rgb, 320, 240, 5).expect("classified");
    assert_eq!(labels.len(), 5);
    assert!(
        labels
            .iter()
            .all(|l| l.name.starts_with("class ") && (0.0..=1.0).contains(&l.score))
    );
    // Lite0's folder is not ResNet-50's.
    assert!(ImageLabeler::load(&dir).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
