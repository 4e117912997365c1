//! A Viola–Jones evaluator for OpenCV's Haar cascades (the `opencv-cascade-classifier` XML
//! format of `haarcascade_*.xml`: boosted stumps or trees on upright Haar features).
//!
//! No maintained pure-Rust crate evaluates these files, and linking OpenCV into every store node
//! for one detector is heavy, so this is our own implementation of the published method
//! (Viola & Jones 2001; Lienhart & Maydt 2002's variance normalisation as OpenCV applies it).
//! The cascade data itself is OpenCV's, parsed with `roxmltree`.
//!
//! Detection scans an image pyramid (each level resized by `scale_factor`) with the cascade's
//! base window, like OpenCV's `detectMultiScale`, then groups overlapping hits and keeps groups
//! with at least `min_neighbors + 1` members.

use image::GrayImage;
use image::imageops::{FilterType, resize};

use super::Region;

/// Why a cascade file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    #[error("cascade xml: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("cascade: missing element <{0}>")]
    Missing(&'static str),
    #[error("cascade: bad number in <{element}>: {text:?}")]
    Number { element: &'static str, text: String },
    #[error("cascade: unsupported {0}")]
    Unsupported(String),
    #[error("cascade: {0}")]
    Invalid(String),
}

/// One rectangle of a Haar feature, in base-window pixels, with its weight.
#[derive(Clone, Copy, Debug)]
struct WeightedRect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    weight: f32,
}

/// A split of a weak classifier's tree: `feature < threshold · norm` goes left.
#[derive(Clone, Copy, Debug)]
struct Split {
    /// Child indices; `<= 0` means leaf `-child`.
    left: i32,
    right: i32,
    feature: usize,
    threshold: f32,
}

#[derive(Clone, Debug)]
struct Weak {
    splits: Vec<Split>,
    leaves: Vec<f32>,
}

#[derive(Clone, Debug)]
struct Stage {
    threshold: f32,
    weak: Vec<Weak>,
}

/// A parsed Haar cascade.
#[derive(Clone, Debug)]
pub struct Cascade {
    width: u32,
    height: u32,
    stages: Vec<Stage>,
    /// Every feature's rectangles, back to back; feature `f` is
    /// `rects[feature_starts[f]..feature_starts[f + 1]]`.
    rects: Vec<WeightedRect>,
    feature_starts: Vec<usize>,
}

/// A feature rectangle as the four corner offsets of its sum in one level's integral image
/// (relative to the window's top-left corner), with its weight.
#[derive(Clone, Copy, Debug)]
struct Corners {
    top_left: usize,
    top_right: usize,
    bottom_left: usize,
    bottom_right: usize,
    weight: f32,
}

/// A stump (a weak classifier with one split) with its feature's rectangles inlined, for one
/// level's stride: the layout the scan's inner loop reads in order, with no indirection.
#[derive(Clone, Copy, Debug)]
struct FlatStump {
    rects: [Corners; 3],
    n_rects: usize,
    threshold: f32,
    /// The leaf value when the feature is below `threshold · norm`, and otherwise.
    below: f32,
    above: f32,
}

/// A stage of a [`Compiled`] cascade: its stumps end at `end`.
#[derive(Clone, Copy, Debug)]
struct FlatStage {
    end: usize,
    threshold: f32,
}

/// A cascade of stumps compiled for one level (see [`Cascade::compile`]); evaluates exactly
/// as [`Cascade::passes`] does, in the same order, so decisions are bit for bit the same.
#[derive(Debug)]
struct Compiled {
    stumps: Vec<FlatStump>,
    stages: Vec<FlatStage>,
}

/// Whether a stage's total lets the window go on (written as the negation of `<` so that a NaN
/// total behaves exactly as before).
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn stage_passes(total: f32, threshold: f32) -> bool {
    !(total < threshold)
}

/// A row's windows stay in the dense, all-windows-at-once evaluation while at least this share of
/// them is alive (1 / `DENSE_WHILE_ALIVE_OVER`); then the survivors go window by window.
const DENSE_WHILE_ALIVE_OVER: usize = 8;

/// Buffers for [`Compiled::passes_row`], reused across rows and levels.
#[derive(Default)]
struct RowScratch {
    values: Vec<f32>,
    totals: Vec<f32>,
    alive: Vec<bool>,
}

impl Compiled {
    fn passes(&self, sums: &[u32], origin: usize, norm: f32) -> bool {
        self.evaluate(sums, origin, norm, stage_passes)
    }

    /// Runs the stages in order; `go_on(total, threshold)` after each decides whether to continue.
    fn evaluate(
        &self,
        sums: &[u32],
        origin: usize,
        norm: f32,
        go_on: impl FnMut(f32, f32) -> bool,
    ) -> bool {
        self.evaluate_from(0, sums, origin, norm, go_on)
    }

    /// [`Compiled::evaluate`] from stage `first` on.
    fn evaluate_from(
        &self,
        first: usize,
        sums: &[u32],
        origin: usize,
        norm: f32,
        mut go_on: impl FnMut(f32, f32) -> bool,
    ) -> bool {
        let mut start = first.checked_sub(1).map_or(0, |s| self.stages[s].end);
        for stage in &self.stages[first..] {
            let mut total = 0.0f32;
            for stump in &self.stumps[start..stage.end] {
                let mut value = 0.0f32;
                for c in &stump.rects[..stump.n_rects] {
                    let sum = sums[origin + c.bottom_right]
                        .wrapping_sub(sums[origin + c.top_right])
                        .wrapping_sub(sums[origin + c.bottom_left])
                        .wrapping_add(sums[origin + c.top_left]);
                    value += c.weight * sum as f32;
                }
                total += if value < stump.threshold * norm {
                    stump.below
                } else {
                    stump.above
                };
            }
            if !go_on(total, stage.threshold) {
                return false;
            }
            start = stage.end;
        }
        true
    }

    /// Evaluates the `norms.len()` adjacent windows (stride 1) whose first top-left corner is at
    /// `row_origin`, pushing the index of each that passes onto `hits`. The early stages, which
    /// most windows pass, run over the whole row at once — contiguous loads and no branches, so
    /// the compiler vectorises them; once fewer than an eighth of the windows are alive the
    /// survivors go on one by one through [`Compiled::evaluate_from`] (of the shares 1/1 … 1/64
    /// tried, 1/4 to 1/16 were fastest: about 1.8× window-by-window on the bench frame). Every
    /// window's arithmetic is the same, in the same order, as in [`Compiled::passes`], so the
    /// decisions are bit for bit the same.
    fn passes_row(
        &self,
        sums: &[u32],
        row_origin: usize,
        norms: &[f32],
        row: &mut RowScratch,
        hits: &mut Vec<usize>,
    ) {
        let n = norms.len();
        row.values.resize(n, 0.0);
        row.totals.resize(n, 0.0);
        row.alive.clear();
        row.alive.resize(n, true);
        let (values, totals, alive) = (&mut row.values[..n], &mut row.totals[..n], &mut row.alive);
        let mut alive_count = n;
        let mut next = 0;
        let mut start = 0;
        for stage in &self.stages {
            if alive_count * DENSE_WHILE_ALIVE_OVER < n {
                break;
            }
            totals.fill(0.0);
            for stump in &self.stumps[start..stage.end] {
                for (k, c) in stump.rects[..stump.n_rects].iter().enumerate() {
                    let br = &sums[row_origin + c.bottom_right..][..n];
                    let tr = &sums[row_origin + c.top_right..][..n];
                    let bl = &sums[row_origin + c.bottom_left..][..n];
                    let tl = &sums[row_origin + c.top_left..][..n];
                    let weight = c.weight;
                    // A rectangle's true sum is below 2^31 (255 × its area), so the i32
                    // conversion, which vectorises, equals the scalar path's u32 one.
                    if k == 0 {
                        for i in 0..n {
                            let sum = br[i]
                                .wrapping_sub(tr[i])
                                .wrapping_sub(bl[i])
                                .wrapping_add(tl[i]);
                            values[i] = weight * (sum as i32) as f32;
                        }
                    } else {
                        for i in 0..n {
                            let sum = br[i]
                                .wrapping_sub(tr[i])
                                .wrapping_sub(bl[i])
                                .wrapping_add(tl[i]);
                            values[i] += weight * (sum as i32) as f32;
                        }
                    }
                }
                let (threshold, below, above) = (stump.threshold, stump.below, stump.above);
                for i in 0..n {
                    totals[i] += if values[i] < threshold * norms[i] {
                        below
                    } else {
                        above
                    };
                }
            }
            alive_count = 0;
            for (a, &t) in alive.iter_mut().zip(totals.iter()) {
                *a &= stage_passes(t, stage.threshold);
                alive_count += usize::from(*a);
            }
            start = stage.end;
            next += 1;
        }
        for (i, _) in alive.iter().enumerate().filter(|(_, a)| **a) {
            if self.evaluate_from(next, sums, row_origin + i, norms[i], stage_passes) {
                hits.push(i);
            }
        }
    }
}

/// Scan settings (OpenCV's `detectMultiScale` parameters).
#[derive(Clone, Copy, Debug)]
pub struct ScanSettings {
    /// Pyramid step, > 1 (OpenCV's default 1.1).
    pub scale_factor: f32,
    /// Hits a group needs beyond the first to count (OpenCV's `minNeighbors`).
    pub min_neighbors: usize,
    /// Smallest object side in input pixels (levels whose window is smaller are skipped).
    pub min_size: u32,
}

fn child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &'static str,
) -> Result<roxmltree::Node<'a, 'input>, CascadeError> {
    node.children()
        .find(|c| c.has_tag_name(name))
        .ok_or(CascadeError::Missing(name))
}

fn text<'a>(node: roxmltree::Node<'a, '_>, name: &'static str) -> Result<&'a str, CascadeError> {
    Ok(child(node, name)?.text().unwrap_or("").trim())
}

fn numbers<T: std::str::FromStr>(s: &str, element: &'static str) -> Result<Vec<T>, CascadeError> {
    s.split_whitespace()
        .map(|t| {
            t.parse().map_err(|_| CascadeError::Number {
                element,
                text: t.to_string(),
            })
        })
        .collect()
}

fn number<T: std::str::FromStr>(
    node: roxmltree::Node,
    name: &'static str,
) -> Result<T, CascadeError> {
    let t = text(node, name)?;
    t.parse().map_err(|_| CascadeError::Number {
        element: name,
        text: t.to_string(),
    })
}

/// The `<_>` children of an element.
fn items<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    node.children().filter(|c| c.has_tag_name("_"))
}

impl Cascade {
    /// Parses an OpenCV Haar cascade (new format). Refuses LBP cascades, categorical splits and
    /// tilted features, which this evaluator does not implement, rather than misreading them.
    pub fn parse(xml: &str) -> Result<Self, CascadeError> {
        let doc = roxmltree::Document::parse(xml)?;
        let cascade = doc
            .descendants()
            .find(|n| n.has_tag_name("cascade"))
            .ok_or(CascadeError::Missing("cascade"))?;
        if text(cascade, "stageType")? != "BOOST" {
            return Err(CascadeError::Unsupported("stage type (BOOST only)".into()));
        }
        let feature_type = text(cascade, "featureType")?;
        if feature_type != "HAAR" {
            return Err(CascadeError::Unsupported(format!(
                "feature type {feature_type} (HAAR only)"
            )));
        }
        let categories: u32 = number(child(cascade, "featureParams")?, "maxCatCount")?;
        if categories != 0 {
            return Err(CascadeError::Unsupported("categorical splits".into()));
        }
        let width: u32 = number(cascade, "width")?;
        let height: u32 = number(cascade, "height")?;
        if width < 3 || height < 3 {
            return Err(CascadeError::Invalid(format!("window {width}x{height}")));
        }

        let (mut rects, mut feature_starts) = (Vec::new(), vec![0]);
        for feature in items(child(cascade, "features")?) {
            if feature
                .children()
                .find(|c| c.has_tag_name("tilted"))
                .and_then(|t| t.text())
                .is_some_and(|t| t.trim() != "0")
            {
                return Err(CascadeError::Unsupported("tilted features".into()));
            }
            for rect in items(child(feature, "rects")?) {
                let v: Vec<f32> = numbers(rect.text().unwrap_or(""), "rects")?;
                let [x, y, w, h, weight] = v[..] else {
                    return Err(CascadeError::Invalid(format!("rect {v:?}")));
                };
                let (x, y, w, h) = (x as u32, y as u32, w as u32, h as u32);
                if x + w > width || y + h > height {
                    return Err(CascadeError::Invalid(format!(
                        "rect {x},{y},{w},{h} outside the {width}x{height} window"
                    )));
                }
                rects.push(WeightedRect { x, y, w, h, weight });
            }
            feature_starts.push(rects.len());
        }
        let n_features = feature_starts.len() - 1;

        let mut stages = Vec::new();
        for stage in items(child(cascade, "stages")?) {
            let threshold: f32 = number(stage, "stageThreshold")?;
            let mut weak = Vec::new();
            for classifier in items(child(stage, "weakClassifiers")?) {
                let nodes: Vec<f64> = numbers(text(classifier, "internalNodes")?, "internalNodes")?;
                let leaves: Vec<f32> = numbers(text(classifier, "leafValues")?, "leafValues")?;
                if nodes.is_empty() || !nodes.len().is_multiple_of(4) {
                    return Err(CascadeError::Invalid("internalNodes not in fours".into()));
                }
                let splits: Vec<Split> = nodes
                    .chunks(4)
                    .map(|n| Split {
                        left: n[0] as i32,
                        right: n[1] as i32,
                        feature: n[2] as usize,
                        threshold: n[3] as f32,
                    })
                    .collect();
                for s in &splits {
                    let child_ok = |c: i32| {
                        if c > 0 {
                            (c as usize) < splits.len()
                        } else {
                            ((-c) as usize) < leaves.len()
                        }
                    };
                    if s.feature >= n_features || !child_ok(s.left) || !child_ok(s.right) {
                        return Err(CascadeError::Invalid(format!("split {s:?}")));
                    }
                }
                weak.push(Weak { splits, leaves });
            }
            stages.push(Stage { threshold, weak });
        }
        if stages.is_empty() {
            return Err(CascadeError::Invalid("no stages".into()));
        }
        Ok(Cascade {
            width,
            height,
            stages,
            rects,
            feature_starts,
        })
    }

    /// The base window (width, height) in pixels.
    pub fn window(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The same cascade for the mirror image: a profile cascade trained on faces turned one
    /// way then finds faces turned the other way, without flipping the frame.
    pub fn mirrored(&self) -> Cascade {
        let mut mirrored = self.clone();
        for r in &mut mirrored.rects {
            r.x = self.width - r.x - r.w;
        }
        mirrored
    }

    /// Detects objects in `gray`; regions are in `gray`'s pixels.
    pub fn detect(&self, gray: &GrayImage, settings: &ScanSettings) -> Vec<Region> {
        detect_all(&[self], gray, settings)
    }

    /// The feature rectangles as corner offsets into an integral image of row `stride`.
    fn corners(&self, stride: usize) -> Vec<Corners> {
        self.rects
            .iter()
            .map(|r| {
                let (x, y, w, h) = (r.x as usize, r.y as usize, r.w as usize, r.h as usize);
                Corners {
                    top_left: y * stride + x,
                    top_right: y * stride + x + w,
                    bottom_left: (y + h) * stride + x,
                    bottom_right: (y + h) * stride + x + w,
                    weight: r.weight,
                }
            })
            .collect()
    }

    /// The cascade as flat stumps for a level of row `stride`, when every weak classifier is a
    /// stump on a feature of at most three rectangles (OpenCV's Haar cascades are); `None`
    /// otherwise (trees are evaluated by [`Cascade::passes`]).
    fn compile(&self, stride: usize) -> Option<Compiled> {
        let corners = self.corners(stride);
        let unused = Corners {
            top_left: 0,
            top_right: 0,
            bottom_left: 0,
            bottom_right: 0,
            weight: 0.0,
        };
        let (mut stumps, mut stages) = (Vec::new(), Vec::new());
        for stage in &self.stages {
            for weak in &stage.weak {
                let [split] = weak.splits[..] else {
                    return None;
                };
                if split.left > 0 || split.right > 0 {
                    return None;
                }
                let feature = &corners
                    [self.feature_starts[split.feature]..self.feature_starts[split.feature + 1]];
                if feature.is_empty() || feature.len() > 3 {
                    return None;
                }
                let mut rects = [unused; 3];
                rects[..feature.len()].copy_from_slice(feature);
                stumps.push(FlatStump {
                    rects,
                    n_rects: feature.len(),
                    threshold: split.threshold,
                    below: *weak.leaves.get((-split.left) as usize)?,
                    above: *weak.leaves.get((-split.right) as usize)?,
                });
            }
            stages.push(FlatStage {
                end: stumps.len(),
                threshold: stage.threshold,
            });
        }
        Some(Compiled { stumps, stages })
    }

    /// Whether the window whose top-left corner is at `origin` of the level's integral image
    /// passes every stage; `norm` is the window's variance normaliser.
    fn passes(&self, corners: &[Corners], sums: &[u32], origin: usize, norm: f32) -> bool {
        self.evaluate(corners, sums, origin, norm, stage_passes)
    }

    /// Runs the stages in order; `go_on(total, threshold)` after each decides whether to continue.
    fn evaluate(
        &self,
        corners: &[Corners],
        sums: &[u32],
        origin: usize,
        norm: f32,
        mut go_on: impl FnMut(f32, f32) -> bool,
    ) -> bool {
        for stage in &self.stages {
            let mut total = 0.0f32;
            for weak in &stage.weak {
                let mut index = 0i32;
                let leaf = loop {
                    let split = &weak.splits[index as usize];
                    let rects = &corners[self.feature_starts[split.feature]
                        ..self.feature_starts[split.feature + 1]];
                    let mut value = 0.0f32;
                    for c in rects {
                        // Wrapping arithmetic: the true sum fits, the intermediate terms may not.
                        let sum = sums[origin + c.bottom_right]
                            .wrapping_sub(sums[origin + c.top_right])
                            .wrapping_sub(sums[origin + c.bottom_left])
                            .wrapping_add(sums[origin + c.top_left]);
                        value += c.weight * sum as f32;
                    }
                    index = if value < split.threshold * norm {
                        split.left
                    } else {
                        split.right
                    };
                    if index <= 0 {
                        break (-index) as usize;
                    }
                };
                total += weak.leaves[leaf];
            }
            if !go_on(total, stage.threshold) {
                return false;
            }
        }
        true
    }
}

/// Runs several cascades with the same base window over one image pyramid (each level is
/// resized and integrated once for all of them); each cascade's hits are grouped on their own.
/// Cascades whose window differs from the first's are skipped.
pub fn detect_all(cascades: &[&Cascade], gray: &GrayImage, settings: &ScanSettings) -> Vec<Region> {
    let Some(first) = cascades.first() else {
        return Vec::new();
    };
    let (width, height) = first.window();
    let cascades: Vec<&Cascade> = cascades
        .iter()
        .copied()
        .filter(|c| c.window() == (width, height))
        .collect();
    let (iw, ih) = gray.dimensions();
    let mut hits: Vec<Vec<Region>> = vec![Vec::new(); cascades.len()];
    let (mut norms, mut row, mut row_hits) = (Vec::new(), RowScratch::default(), Vec::new());
    let mut scale = 1.0f32;
    loop {
        let (win_w, win_h) = (
            (width as f32 * scale).round() as u32,
            (height as f32 * scale).round() as u32,
        );
        if win_w > iw || win_h > ih {
            break;
        }
        if win_w.min(win_h) >= settings.min_size {
            let (sw, sh) = (
                ((iw as f32 / scale) as u32).max(width),
                ((ih as f32 / scale) as u32).max(height),
            );
            let resized;
            let level = if scale == 1.0 {
                gray
            } else {
                resized = resize(gray, sw, sh, FilterType::Triangle);
                &resized
            };
            let integral = Integral::new(level);
            let corners: Vec<Vec<Corners>> = cascades
                .iter()
                .map(|c| c.corners(integral.stride))
                .collect();
            let compiled: Vec<Option<Compiled>> = cascades
                .iter()
                .map(|c| c.compile(integral.stride))
                .collect();
            // OpenCV's stride: every other position on fine levels, every one on coarse.
            let step = if scale > 2.0 { 1 } else { 2 };
            let mut hit = |k: usize, x: u32, y: u32| {
                hits[k].push(Region {
                    x: (x as f32 * scale).round() as u32,
                    y: (y as f32 * scale).round() as u32,
                    w: win_w,
                    h: win_h,
                })
            };
            for y in (0..=sh - height).step_by(step) {
                if step == 1 {
                    norms.clear();
                    norms.extend((0..=sw - width).map(|x| integral.norm(x, y, width, height)));
                }
                for (k, cascade) in cascades.iter().enumerate() {
                    match &compiled[k] {
                        Some(flat) if step == 1 => {
                            row_hits.clear();
                            let origin = y as usize * integral.stride;
                            flat.passes_row(
                                &integral.sums,
                                origin,
                                &norms,
                                &mut row,
                                &mut row_hits,
                            );
                            for &x in &row_hits {
                                hit(k, x as u32, y);
                            }
                        }
                        _ => {
                            for x in (0..=sw - width).step_by(step) {
                                let norm = integral.norm(x, y, width, height);
                                let origin = y as usize * integral.stride + x as usize;
                                let passes = match &compiled[k] {
                                    Some(flat) => flat.passes(&integral.sums, origin, norm),
                                    None => {
                                        cascade.passes(&corners[k], &integral.sums, origin, norm)
                                    }
                                };
                                if passes {
                                    hit(k, x, y);
                                }
                            }
                        }
                    }
                }
            }
        }
        scale *= settings.scale_factor.max(1.01);
    }
    hits.into_iter()
        .flat_map(|h| group(h, settings.min_neighbors))
        .collect()
}

/// Summed-area tables of pixel values and of their squares, one row and column of zeros first.
struct Integral {
    stride: usize,
    sums: Vec<u32>,
    squares: Vec<f64>,
}

impl Integral {
    fn new(gray: &GrayImage) -> Self {
        let (w, h) = (gray.width() as usize, gray.height() as usize);
        let stride = w + 1;
        let mut sums = vec![0u32; stride * (h + 1)];
        let mut squares = vec![0f64; stride * (h + 1)];
        for (y, row) in gray.as_raw().chunks_exact(w.max(1)).take(h).enumerate() {
            let (mut row_sum, mut row_squares) = (0u32, 0f64);
            for (x, &p) in row.iter().enumerate() {
                let p = u32::from(p);
                row_sum += p;
                row_squares += f64::from(p * p);
                let at = (y + 1) * stride + x + 1;
                sums[at] = sums[at - stride].wrapping_add(row_sum);
                squares[at] = squares[at - stride] + row_squares;
            }
        }
        Integral {
            stride,
            sums,
            squares,
        }
    }

    /// The variance normaliser of the window at (x, y): `sqrt(area · Σp² − (Σp)²)` over the
    /// window less a one-pixel border (OpenCV's rule), 1 for a flat window.
    fn norm(&self, x: u32, y: u32, width: u32, height: u32) -> f32 {
        let (x, y) = (x as usize + 1, y as usize + 1);
        let (w, h) = (width as usize - 2, height as usize - 2);
        let a = y * self.stride + x;
        let b = a + w;
        let c = a + h * self.stride;
        let d = c + w;
        let sum = f64::from(
            self.sums[d]
                .wrapping_sub(self.sums[b])
                .wrapping_sub(self.sums[c])
                .wrapping_add(self.sums[a]),
        );
        let squares = self.squares[d] - self.squares[b] - self.squares[c] + self.squares[a];
        let variance = (w * h) as f64 * squares - sum * sum;
        if variance > 0.0 {
            variance.sqrt() as f32
        } else {
            1.0
        }
    }
}

/// Groups overlapping hits (OpenCV's `groupRectangles` rule, eps 0.2): hits are in one group
/// when every edge is within `0.2 · mean(min sides) / 2`; a group of more than `min_neighbors`
/// hits becomes their average; averages lying inside a larger, stronger group are dropped.
pub(crate) fn group(hits: Vec<Region>, min_neighbors: usize) -> Vec<Region> {
    let n = hits.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..n {
        for j in (i + 1)..n {
            if similar(&hits[i], &hits[j]) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                if a != b {
                    parent[b] = a;
                }
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, (u64, u64, u64, u64, usize)> =
        Default::default();
    for (i, hit) in hits.iter().enumerate() {
        let g = groups.entry(root(&mut parent, i)).or_default();
        g.0 += u64::from(hit.x);
        g.1 += u64::from(hit.y);
        g.2 += u64::from(hit.w);
        g.3 += u64::from(hit.h);
        g.4 += 1;
    }
    let averaged: Vec<(Region, usize)> = groups
        .into_values()
        .filter(|g| g.4 > min_neighbors)
        .map(|(x, y, w, h, count)| {
            let c = count as u64;
            (
                Region {
                    x: (x / c) as u32,
                    y: (y / c) as u32,
                    w: (w / c) as u32,
                    h: (h / c) as u32,
                },
                count,
            )
        })
        .collect();
    averaged
        .iter()
        .filter(|(r, count)| {
            !averaged.iter().any(|(o, other_count)| {
                o != r && o.contains(r) && (*other_count > 3 || other_count >= count)
            })
        })
        .map(|(r, _)| *r)
        .collect()
}

fn similar(a: &Region, b: &Region) -> bool {
    let delta = 0.2 * (a.w.min(b.w) + a.h.min(b.h)) as f32 * 0.5;
    let close = |p: u32, q: u32| (p as f32 - q as f32).abs() <= delta;
    close(a.x, b.x) && close(a.y, b.y) && close(a.x + a.w, b.x + b.w) && close(a.y + a.h, b.y + b.h)
}

#[cfg(test)]
#[path = "haar_tests.rs"]
mod tests;
