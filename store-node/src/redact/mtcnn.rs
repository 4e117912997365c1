//! MTCNN, the multi-task cascaded face detector of Zhang, Zhang, Li & Qiao (2016, "Joint Face
//! Detection and Alignment using Multi-task Cascaded Convolutional Networks"), run through the
//! `tract-onnx` inference engine on the three published networks (ONNX conversions shipped in
//! `assets/mtcnn/`, see its README).
//!
//! The method, as we implement it:
//! 1. **P-Net** (fully convolutional, 12×12 receptive field, stride 2) runs on an image pyramid
//!    whose first level maps the smallest face to 12 pixels and each next level is
//!    [`MtcnnSettings::pyramid_step`] times smaller. Every output position whose face
//!    probability reaches the first threshold is a candidate box, refined by its regression
//!    output; candidates are thinned by non-maximum suppression per level and over all levels.
//! 2. **R-Net** scores each candidate, squared and cropped (zero outside the image) to 24×24;
//!    those above the second threshold are refined again and suppressed.
//! 3. **O-Net** does the same on 48×48 crops with the third threshold; its boxes are the answer.
//!
//! The networks were trained on pixel-transposed input (the original MATLAB/Caffe release's
//! convention), so every input is laid out `[n, x, y, channel]` and outputs come back indexed
//! `[n, x, y, …]`. Input values are `(v − 127.5) / 128`. The node's frames are scanned in grey
//! (the three channels carry the same value): the motion gate and the other detectors work on
//! grey, and on the colour test photo the same networks found the face from grey as from colour
//! (measured with OpenCV's run of them; the other photo and the LFW crops are grey already).
//!
//! P-Net needs a plan per input size (tract optimises for concrete shapes); plans are built on
//! first use and kept in a small cache, with each pyramid level padded up to a multiple of
//! [`PAD_TO`] pixels so that the varying crops the motion gate asks about share plans. The
//! padding's outputs are ignored, and an output position depends only on its own 12×12 window,
//! so padding changes nothing that is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};
use tract_onnx::prelude::*;
use zeroize::Zeroize;

use super::Region;

static PNET: &[u8] = include_bytes!("../../assets/mtcnn/pnet.onnx");
static RNET: &[u8] = include_bytes!("../../assets/mtcnn/rnet.onnx");
static ONET: &[u8] = include_bytes!("../../assets/mtcnn/onet.onnx");

/// P-Net's input dimensions are padded up to a multiple of this many pixels (plan sharing).
const PAD_TO: usize = 16;
/// P-Net plans kept; the least recently used goes first.
const PLAN_CACHE: usize = 96;

type Plan = Arc<TypedRunnableModel>;

/// Why the detector could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[error("mtcnn {net}: {message}")]
pub struct MtcnnError {
    net: &'static str,
    message: String,
}

impl MtcnnError {
    fn new(net: &'static str, error: impl std::fmt::Display) -> Self {
        MtcnnError {
            net,
            message: format!("{error:#}"),
        }
    }
}

/// The detector's thresholds and pyramid.
#[derive(Clone, Copy, Debug)]
pub struct MtcnnSettings {
    /// Smallest face searched for, in pixels of the scanned image.
    pub min_face: u32,
    /// Each pyramid level is this factor of the one before (the paper's 0.709 = 1/√2).
    pub pyramid_step: f32,
    /// Face probability each network's candidates must reach (P-Net, R-Net, O-Net).
    pub thresholds: [f32; 3],
}

impl Default for MtcnnSettings {
    fn default() -> Self {
        MtcnnSettings {
            min_face: 40,
            pyramid_step: 0.709,
            thresholds: [0.6, 0.7, 0.7],
        }
    }
}

/// A candidate: corners in pixels of the scanned image, and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
    score: f32,
}

impl Candidate {
    fn width(&self) -> f32 {
        self.x2 - self.x1
    }
    fn height(&self) -> f32 {
        self.y2 - self.y1
    }
    fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Moves the corners by `offsets` (dx1, dy1, dx2, dy2) times the box's side.
    fn refined(self, offsets: [f32; 4]) -> Candidate {
        let (w, h) = (self.width(), self.height());
        Candidate {
            x1: self.x1 + offsets[0] * w,
            y1: self.y1 + offsets[1] * h,
            x2: self.x2 + offsets[2] * w,
            y2: self.y2 + offsets[3] * h,
            score: self.score,
        }
    }

    /// The square of the larger side around the box's centre.
    fn squared(self) -> Candidate {
        let side = self.width().max(self.height());
        let cx = (self.x1 + self.x2) / 2.0;
        let cy = (self.y1 + self.y2) / 2.0;
        Candidate {
            x1: cx - side / 2.0,
            y1: cy - side / 2.0,
            x2: cx + side / 2.0,
            y2: cy + side / 2.0,
            score: self.score,
        }
    }

    fn overlap(&self, other: &Candidate) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        w * h
    }
}

/// How two boxes' overlap is measured for suppression.
#[derive(Clone, Copy, Debug)]
enum Overlap {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller box.
    Min,
}

/// Non-maximum suppression: the best-scoring candidate is kept and every other that overlaps it
/// more than `threshold` is dropped, then the next best, and so on.
fn suppress(mut candidates: Vec<Candidate>, threshold: f32, overlap: Overlap) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len());
    'next: for c in candidates {
        for k in &kept {
            let inter = c.overlap(k);
            let denominator = match overlap {
                Overlap::Union => c.area() + k.area() - inter,
                Overlap::Min => c.area().min(k.area()),
            };
            if denominator > 0.0 && inter / denominator > threshold {
                continue 'next;
            }
        }
        kept.push(c);
    }
    kept
}

/// Input value of a grey level.
fn normalised(v: u8) -> f32 {
    (f32::from(v) - 127.5) * 0.0078125
}

/// Writes `image` (grey, `w × h`) into `out` as `[x, y, channel]` for an input `padded_w` by
/// `padded_h` (the rest stays as written by the caller).
fn write_transposed(image: &GrayImage, out: &mut [f32], padded_h: usize) {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    for x in 0..w {
        let column = &mut out[x * padded_h * 3..(x * padded_h + h) * 3];
        for (y, px) in column.chunks_exact_mut(3).enumerate() {
            px.fill(normalised(raw[y * w + x]));
        }
    }
}

/// The MTCNN detector with its networks loaded (`Send + Sync`; plans are shared).
pub struct Mtcnn {
    pnet: InferenceModel,
    pnet_plans: Mutex<PlanCache>,
    rnet: Plan,
    onet: Plan,
    settings: MtcnnSettings,
}

/// P-Net plans by padded input size, with a use counter for eviction.
#[derive(Default)]
struct PlanCache {
    plans: HashMap<(usize, usize), (Plan, u64)>,
    clock: u64,
}

fn parse(net: &'static str, bytes: &[u8]) -> Result<InferenceModel, MtcnnError> {
    tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(|e| MtcnnError::new(net, e))
}

fn plan(net: &'static str, model: &InferenceModel, shape: [usize; 4]) -> Result<Plan, MtcnnError> {
    model
        .clone()
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| MtcnnError::new(net, e))
}

/// The output whose last dimension is `channels` (the networks' outputs differ in width).
fn output_with(outputs: &[TValue], channels: usize) -> Option<&TValue> {
    outputs.iter().find(|o| o.shape().last() == Some(&channels))
}

impl Mtcnn {
    /// Loads the shipped networks.
    pub fn new(settings: MtcnnSettings) -> Result<Self, MtcnnError> {
        // A step outside (0.1, 0.95] would never end the pyramid or skip most face sizes.
        if !(settings.pyramid_step > 0.1 && settings.pyramid_step <= 0.95) {
            return Err(MtcnnError::new(
                "pnet",
                format!(
                    "pyramid step {} must be in (0.1, 0.95]",
                    settings.pyramid_step
                ),
            ));
        }
        let pnet = parse("pnet", PNET)?;
        let rnet = plan("rnet", &parse("rnet", RNET)?, [1, 24, 24, 3])?;
        let onet = plan("onet", &parse("onet", ONET)?, [1, 48, 48, 3])?;
        Ok(Mtcnn {
            pnet,
            pnet_plans: Mutex::new(PlanCache::default()),
            rnet,
            onet,
            settings,
        })
    }

    pub fn settings(&self) -> &MtcnnSettings {
        &self.settings
    }

    /// Face boxes in `gray`, in its pixels, clamped to it.
    pub fn detect(&self, gray: &GrayImage) -> Result<Vec<Region>, MtcnnError> {
        let (width, height) = gray.dimensions();
        if width == 0 || height == 0 {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let proposed = self.propose(gray)?;
        let (proposing, n_proposed) = (started.elapsed(), proposed.len());
        let scored = self.refine(gray, proposed, 24, 1)?;
        let (scoring, n_scored) = (started.elapsed() - proposing, scored.len());
        let candidates = self.refine(gray, scored, 48, 2)?;
        tracing::trace!(
            ?proposing,
            n_proposed,
            ?scoring,
            n_scored,
            total = ?started.elapsed(),
            "mtcnn stages"
        );
        let mut found = Vec::with_capacity(candidates.len());
        for c in suppress(candidates, 0.7, Overlap::Min) {
            let x0 = c.x1.floor().clamp(0.0, width as f32) as u32;
            let y0 = c.y1.floor().clamp(0.0, height as f32) as u32;
            let x1 = c.x2.ceil().clamp(0.0, width as f32) as u32;
            let y1 = c.y2.ceil().clamp(0.0, height as f32) as u32;
            found.extend(Region::from_corners(x0, y0, x1, y1));
        }
        Ok(found)
    }

    /// The P-Net plan for a padded input of `w × h`, built on first use.
    fn pnet_plan(&self, w: usize, h: usize) -> Result<Plan, MtcnnError> {
        {
            let mut cache = self.pnet_plans.lock().unwrap_or_else(|e| e.into_inner());
            cache.clock += 1;
            let now = cache.clock;
            if let Some((plan, used)) = cache.plans.get_mut(&(w, h)) {
                *used = now;
                return Ok(plan.clone());
            }
        }
        // Built outside the lock: another thread may build the same plan meanwhile, which
        // costs time, never correctness.
        let built = plan("pnet", &self.pnet, [1, w, h, 3])?;
        let mut cache = self.pnet_plans.lock().unwrap_or_else(|e| e.into_inner());
        if cache.plans.len() >= PLAN_CACHE {
            let oldest = cache
                .plans
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(size, _)| *size);
            if let Some(size) = oldest {
                cache.plans.remove(&size);
            }
        }
        let now = cache.clock;
        cache.plans.insert((w, h), (built.clone(), now));
        Ok(built)
    }

    /// Stage 1: P-Net over the pyramid.
    fn propose(&self, gray: &GrayImage) -> Result<Vec<Candidate>, MtcnnError> {
        let s = &self.settings;
        let (width, height) = gray.dimensions();
        let mut scale = 12.0 / s.min_face.max(12) as f32;
        let mut level: Option<GrayImage> = None;
        let mut all = Vec::new();
        let mut input = Vec::new();
        loop {
            let w = (width as f32 * scale).ceil() as u32;
            let h = (height as f32 * scale).ceil() as u32;
            if w.min(h) < 12 {
                break;
            }
            // Each level is resized from the one before (the first from the frame): the
            // filter's support stays small, and the pyramid costs little next to P-Net.
            let source = level.as_ref().unwrap_or(gray);
            let resized = if (w, h) == gray.dimensions() {
                gray.clone()
            } else {
                imageops::resize(source, w, h, FilterType::Triangle)
            };
            let (pw, ph) = (
                (w as usize).div_ceil(PAD_TO) * PAD_TO,
                (h as usize).div_ceil(PAD_TO) * PAD_TO,
            );
            input.clear();
            input.resize(pw * ph * 3, 0.0);
            write_transposed(&resized, &mut input, ph);
            let tensor = Tensor::from_shape(&[1, pw, ph, 3], &input)
                .map_err(|e| MtcnnError::new("pnet", e))?;
            let outputs = self
                .pnet_plan(pw, ph)?
                .run(tvec!(tensor.into()))
                .map_err(|e| MtcnnError::new("pnet", e))?;
            let level_candidates =
                read_pnet(&outputs, w as usize, h as usize, scale, s.thresholds[0])?;
            all.extend(suppress(level_candidates, 0.5, Overlap::Union));
            level = Some(resized);
            scale *= s.pyramid_step;
        }
        input.zeroize();
        Ok(suppress(all, 0.7, Overlap::Union)
            .into_iter()
            .map(|c| c.squared())
            .collect())
    }

    /// Stages 2 and 3: the candidates cropped to `side × side` and scored by R-Net (`stage` 1)
    /// or O-Net (`stage` 2); those above the stage's threshold, refined and suppressed.
    fn refine(
        &self,
        gray: &GrayImage,
        candidates: Vec<Candidate>,
        side: usize,
        stage: usize,
    ) -> Result<Vec<Candidate>, MtcnnError> {
        let (net, plan) = if stage == 1 {
            ("rnet", &self.rnet)
        } else {
            ("onet", &self.onet)
        };
        let threshold = self.settings.thresholds[stage];
        let mut passed = Vec::new();
        // One crop per run: tract's time per crop grows with the batch (measured: R-Net 0.23 ms
        // alone, 0.54 ms each in batches of 16), so batching buys nothing here.
        let mut input = vec![0.0f32; side * side * 3];
        for c in &candidates {
            write_transposed(&crop_square(gray, c, side as u32), &mut input, side);
            let tensor = Tensor::from_shape(&[1, side, side, 3], &input)
                .map_err(|e| MtcnnError::new(net, e))?;
            let outputs = plan
                .run(tvec!(tensor.into()))
                .map_err(|e| MtcnnError::new(net, e))?;
            let read = |channels: usize| -> Result<Vec<f32>, MtcnnError> {
                let out = output_with(&outputs, channels).ok_or_else(|| {
                    MtcnnError::new(net, format!("no output of width {channels}"))
                })?;
                let view = out
                    .to_plain_array_view::<f32>()
                    .map_err(|e| MtcnnError::new(net, e))?;
                Ok(view.iter().copied().collect())
            };
            let score = read(2)?[1];
            if score > threshold {
                let o = read(4)?;
                passed.push(Candidate { score, ..*c }.refined([o[0], o[1], o[2], o[3]]));
            }
        }
        input.zeroize();
        let kept = suppress(passed, 0.7, Overlap::Union);
        Ok(if stage == 1 {
            kept.into_iter().map(|c| c.squared()).collect()
        } else {
            kept
        })
    }
}

/// P-Net's output map with `channels` values per position (`[1, x, y, channels]`).
fn pnet_map(
    outputs: &[TValue],
    channels: usize,
) -> Result<tract_ndarray::ArrayView4<'_, f32>, MtcnnError> {
    let err = |e: &dyn std::fmt::Display| MtcnnError::new("pnet", e);
    output_with(outputs, channels)
        .ok_or_else(|| err(&format!("no output of width {channels}")))?
        .to_plain_array_view::<f32>()
        .map_err(|e| err(&e))?
        .into_dimensionality::<tract_ndarray::Ix4>()
        .map_err(|e| err(&e))
}

/// P-Net's candidates at one level: every position whose face probability reaches
/// `threshold`, as boxes in the frame's pixels refined by the regression output.
fn read_pnet(
    outputs: &[TValue],
    w: usize,
    h: usize,
    scale: f32,
    threshold: f32,
) -> Result<Vec<Candidate>, MtcnnError> {
    let probs = pnet_map(outputs, 2)?;
    let offsets = pnet_map(outputs, 4)?;
    // Only positions whose 12×12 window lies inside the unpadded level count.
    let (nx, ny) = (
        (w.saturating_sub(12)) / 2 + 1,
        (h.saturating_sub(12)) / 2 + 1,
    );
    let (nx, ny) = (nx.min(probs.shape()[1]), ny.min(probs.shape()[2]));
    let mut found = Vec::new();
    for x in 0..nx {
        for y in 0..ny {
            let score = probs[[0, x, y, 1]];
            if score >= threshold {
                let c = Candidate {
                    x1: (2 * x) as f32 / scale,
                    y1: (2 * y) as f32 / scale,
                    x2: (2 * x + 12) as f32 / scale,
                    y2: (2 * y + 12) as f32 / scale,
                    score,
                };
                let o = [
                    offsets[[0, x, y, 0]],
                    offsets[[0, x, y, 1]],
                    offsets[[0, x, y, 2]],
                    offsets[[0, x, y, 3]],
                ];
                found.push(c.refined(o));
            }
        }
    }
    Ok(found)
}

/// The candidate's box from `gray` (black outside the image) resized to `side × side`.
fn crop_square(gray: &GrayImage, c: &Candidate, side: u32) -> GrayImage {
    let (width, height) = (i64::from(gray.width()), i64::from(gray.height()));
    let x0 = c.x1.floor() as i64;
    let y0 = c.y1.floor() as i64;
    let bw = (c.width().round() as i64).max(1);
    let bh = (c.height().round() as i64).max(1);
    let inside = x0 >= 0 && y0 >= 0 && x0 + bw <= width && y0 + bh <= height;
    if inside {
        let view = imageops::crop_imm(gray, x0 as u32, y0 as u32, bw as u32, bh as u32);
        return imageops::resize(&*view, side, side, FilterType::Triangle);
    }
    // Partly outside: the part inside, on black, like the published method's zero padding.
    let mut boxed = GrayImage::from_pixel(bw as u32, bh as u32, Luma([0]));
    let (ix0, iy0) = (x0.max(0), y0.max(0));
    let (ix1, iy1) = ((x0 + bw).min(width), (y0 + bh).min(height));
    if ix1 > ix0 && iy1 > iy0 {
        let part = imageops::crop_imm(
            gray,
            ix0 as u32,
            iy0 as u32,
            (ix1 - ix0) as u32,
            (iy1 - iy0) as u32,
        );
        imageops::replace(&mut boxed, &*part, ix0 - x0, iy0 - y0);
    }
    imageops::resize(&boxed, side, side, FilterType::Triangle)
}

#[cfg(test)]
#[path = "mtcnn_tests.rs"]
mod tests;
