//! Motion-gated redaction for one camera's stream: rescan only what changed.
//!
//! A shelf camera is fixed and most of its picture is the same from one frame to the next, but
//! the face detectors cost the same on every frame (hundreds of milliseconds at 1280×720). The
//! detectors are deterministic functions of the pixels, so where the pixels did not change their
//! answer does not change either. [`MotionGate`] keeps, per camera, the mean grey value of every
//! 8×8 block as it was when that block was last scanned, and the faces found then. For a new
//! frame it
//!
//! 1. marks the blocks whose mean moved by more than [`GateSettings::threshold`] grey levels
//!    since their last scan, plus one refresh tile (the frame is cut into tiles that are
//!    rescanned in turn, so that every part of it is scanned at least every
//!    [`GateSettings::refresh_frames`] frames whatever happens);
//! 2. joins marked blocks into boxes, grows each by [`GateSettings::reach`] pixels and a quarter
//!    of its side, and grows it further over any remembered face it touches (so a face whose
//!    mouth moves is rescanned whole, never half);
//! 3. runs every detector on those crops only, keeps the remembered faces outside them, and
//!    takes the crops' detections for the inside.
//!
//! A frame whose marked blocks cover more than [`GateSettings::full_scan_above`] of it (a
//! camera that moved, lights switched) is scanned whole, as is the first frame and any frame
//! whose size changed. The faces to fill are thus always the last scan's answer for each part
//! of the picture, taken no longer ago than that part last changed.
//!
//! With a moving-region mask ([`MotionGate::with_moving_mask`], [`super::moving`]) the gate
//! also fills whatever differs from the camera's learned background, and leaves the blocks
//! inside those fills out of step 1: they are neither scanned nor marked as scanned, so each is
//! scanned when the mask lets go of it (its mean then differs from the one it had at its last
//! scan, or it was never scanned: a masked camera starts with no block scanned instead of a
//! whole scan of its first frame). A face in a moving region is filled with it; a face that
//! stops moving is looked for before it is shown.

use image::GrayImage;
use zeroize::Zeroize;

use super::Region;
use super::moving::{MaskSettings, Masked, MovingMask};

/// Side of the blocks whose means are compared, in pixels.
const BLOCK: u32 = 8;

/// How changes are found and how far a rescan reaches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateSettings {
    /// A block counts as changed when its mean grey value moved by more than this many levels
    /// (of 255) since it was last scanned. Sensor noise averages out over 64 pixels; a face
    /// moving into a block moves its mean by tens of levels.
    pub threshold: u8,
    /// Pixels added around each changed box (and a quarter of the box's side) before scanning,
    /// so that a face only partly inside the changed blocks is in the crop whole.
    pub reach: u32,
    /// Every part of the frame is rescanned at least once in this many frames (one refresh
    /// tile per frame of the cycle), changed or not: the back-stop for changes too slow or too
    /// small to pass `threshold`. 1 scans every frame whole.
    pub refresh_frames: u32,
    /// Scan the whole frame when the changed boxes cover more than this share of it.
    pub full_scan_above: f32,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            threshold: 6,
            reach: 48,
            refresh_frames: 300,
            full_scan_above: 0.5,
        }
    }
}

/// What the last frame's scan did (for metrics and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GateReport {
    /// Whether the whole frame was scanned.
    pub full_scan: bool,
    /// Crops scanned (0 for a whole frame).
    pub crops: usize,
    /// Share of the frame's pixels the detectors ran on (1 for a whole frame).
    pub scanned: f32,
    /// Moving regions filled (0 without a moving-region mask).
    pub moving_regions: usize,
    /// Share of the frame's pixels inside those fills (at most 1).
    pub masked: f32,
}

/// A frame's answer: the faces to fill, and (with a moving-region mask) the moving regions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scan {
    /// Faces, in frame pixels, before the fill margin.
    pub faces: Vec<Region>,
    /// Moving regions to fill as they are (their margin is in), in frame pixels.
    pub moving: Vec<Region>,
    pub report: GateReport,
}

/// One camera's memory of its last scans (see the module documentation), and optionally its
/// background model ([`super::moving`]).
#[derive(Debug, Default)]
pub struct MotionGate {
    settings: GateSettings,
    state: Option<Memory>,
    moving: Option<MovingMask>,
}

/// A block never scanned (scanned blocks hold their mean, 0..=255).
const UNSCANNED: u16 = u16::MAX;

#[derive(Debug)]
struct Memory {
    width: u32,
    height: u32,
    /// Each block's mean at its last scan, or [`UNSCANNED`].
    means: Vec<u16>,
    /// Faces found by the scans, in frame pixels (before the fill margin).
    faces: Vec<Region>,
    frame: u64,
}

/// Refresh tiles are this many blocks on a side (256 pixels).
const TILE_BLOCKS: u32 = 32;

impl MotionGate {
    pub fn new(settings: GateSettings) -> Self {
        MotionGate {
            settings: GateSettings {
                refresh_frames: settings.refresh_frames.max(1),
                ..settings
            },
            state: None,
            moving: None,
        }
    }

    /// A gate that also fills whatever moves against the camera's learned background
    /// ([`super::moving`]). The face detectors then run only where the picture changed *and*
    /// is not filled: a face inside a moving region is filled whole already, and a block that
    /// stops being filled is scanned before it is shown (its mean is compared with the one it
    /// had when last scanned, or it was never scanned).
    pub fn with_moving_mask(settings: GateSettings, mask: MaskSettings) -> Self {
        MotionGate {
            moving: Some(MovingMask::new(mask)),
            ..Self::new(settings)
        }
    }

    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// Whether this gate fills moving regions.
    pub fn masks_moving(&self) -> bool {
        self.moving.is_some()
    }

    /// Faces in `gray` (a camera's new frame) for a gate without a moving-region mask (with
    /// one, use [`MotionGate::scan`]: the mask needs the capture time).
    pub fn faces(
        &mut self,
        gray: &GrayImage,
        detect: impl FnMut(&GrayImage) -> Vec<Region>,
    ) -> (Vec<Region>, GateReport) {
        let scan = self.scan(gray, 0, detect);
        (scan.faces, scan.report)
    }

    /// What to fill in `gray`, a camera's new frame captured at `captured_unix_ms`: `detect` is
    /// run on the whole frame or on crops of it, as the module documentation says; returned
    /// boxes are in frame pixels.
    pub fn scan(
        &mut self,
        gray: &GrayImage,
        captured_unix_ms: i64,
        mut detect: impl FnMut(&GrayImage) -> Vec<Region>,
    ) -> Scan {
        let (width, height) = gray.dimensions();
        let means = block_means(gray);
        let (cols, rows) = (width.div_ceil(BLOCK), height.div_ceil(BLOCK));
        let masked = self
            .moving
            .as_mut()
            .map(|mask| mask.update(&means, cols, rows, BLOCK, width, height, captured_unix_ms));
        let refreshing = self.settings.refresh_frames > 1;
        let previous = self.state.take();
        let frame = previous.as_ref().map_or(0, |m| m.frame + 1);
        let memory = match previous {
            Some(m) if m.width == width && m.height == height && refreshing => m,
            // With a mask, a new camera starts with nothing scanned: its picture is all filled
            // until the background is learned, and each block is scanned when it is shown.
            _ if refreshing && masked.is_some() => Memory {
                width,
                height,
                means: vec![UNSCANNED; means.len()],
                faces: Vec::new(),
                frame,
            },
            _ => return self.full(gray, means, frame, masked, detect),
        };
        let mut changed: Vec<bool> = means
            .iter()
            .zip(&memory.means)
            .map(|(&now, &then)| u16::from(now).abs_diff(then) > u16::from(self.settings.threshold))
            .collect();
        // This frame's refresh tile, cycling so that all tiles come round in `refresh_frames`.
        let (tile_cols, tile_rows) = (cols.div_ceil(TILE_BLOCKS), rows.div_ceil(TILE_BLOCKS));
        let tiles = u64::from(tile_cols * tile_rows);
        let per_tile = (u64::from(self.settings.refresh_frames) / tiles).max(1);
        if frame.is_multiple_of(per_tile) {
            let tile = ((frame / per_tile) % tiles) as u32;
            let (tx, ty) = (
                tile % tile_cols * TILE_BLOCKS,
                tile / tile_cols * TILE_BLOCKS,
            );
            for by in ty..(ty + TILE_BLOCKS).min(rows) {
                for bx in tx..(tx + TILE_BLOCKS).min(cols) {
                    changed[(by * cols + bx) as usize] = true;
                }
            }
        }
        // What is filled as moving is not scanned now (nor remembered as scanned).
        if let Some(masked) = &masked {
            for (changed, &filled) in changed.iter_mut().zip(&masked.blocks) {
                *changed &= !filled;
            }
        }
        let boxes = self.crops(&changed, cols, rows, width, height, &memory.faces);
        let area: u64 = boxes.iter().map(Region::area).sum();
        let share = area as f32 / (u64::from(width) * u64::from(height)) as f32;
        if share > self.settings.full_scan_above {
            return self.full(gray, means, frame, masked, detect);
        }
        // Remembered faces inside a crop are replaced by the crop's answer; any other is kept
        // (one only partly inside is kept too: filling a stale box is the safe mistake).
        let mut faces: Vec<Region> = memory
            .faces
            .iter()
            .filter(|f| !boxes.iter().any(|b| b.contains(f)))
            .copied()
            .collect();
        let mut kept = memory.means;
        for b in &boxes {
            let crop = image::imageops::crop_imm(gray, b.x, b.y, b.w, b.h).to_image();
            faces.extend(detect(&crop).into_iter().map(|f| Region {
                x: f.x + b.x,
                y: f.y + b.y,
                ..f
            }));
            // The crop is unredacted pixels: zeroed, like the frame's grey copy.
            crop.into_raw().zeroize();
            // The scanned blocks' means are now the ones their answer belongs to.
            for by in b.y / BLOCK..(b.y + b.h).div_ceil(BLOCK) {
                for bx in b.x / BLOCK..(b.x + b.w).div_ceil(BLOCK) {
                    let at = (by * cols + bx) as usize;
                    kept[at] = u16::from(means[at]);
                }
            }
        }
        let report = GateReport {
            full_scan: false,
            crops: boxes.len(),
            scanned: share,
            ..GateReport::default()
        };
        self.state = Some(Memory {
            width,
            height,
            means: kept,
            faces: faces.clone(),
            frame,
        });
        with_moving(faces, masked, report, width, height)
    }

    fn full(
        &mut self,
        gray: &GrayImage,
        means: Vec<u8>,
        frame: u64,
        masked: Option<Masked>,
        mut detect: impl FnMut(&GrayImage) -> Vec<Region>,
    ) -> Scan {
        let (width, height) = gray.dimensions();
        let faces = detect(gray);
        self.state = Some(Memory {
            width,
            height,
            means: means.into_iter().map(u16::from).collect(),
            faces: faces.clone(),
            frame,
        });
        let report = GateReport {
            full_scan: true,
            crops: 0,
            scanned: 1.0,
            ..GateReport::default()
        };
        with_moving(faces, masked, report, width, height)
    }

    /// The boxes to rescan: changed blocks joined (8-connected), grown, merged with remembered
    /// faces they touch and with each other until none overlap; block-aligned, in the frame.
    fn crops(
        &self,
        changed: &[bool],
        cols: u32,
        rows: u32,
        width: u32,
        height: u32,
        faces: &[Region],
    ) -> Vec<Region> {
        let mut boxes: Vec<Region> = components(changed, cols, rows)
            .into_iter()
            .map(|b| {
                let r = Region {
                    x: b.x * BLOCK,
                    y: b.y * BLOCK,
                    w: b.w * BLOCK,
                    h: b.h * BLOCK,
                };
                let grow = |side: u32| self.settings.reach + side / 8;
                let (gx, gy) = (grow(r.w.max(r.h)), grow(r.w.max(r.h)));
                let x0 = r.x.saturating_sub(gx);
                let y0 = r.y.saturating_sub(gy);
                Region {
                    x: x0,
                    y: y0,
                    w: (r.x + r.w + gx).min(width) - x0,
                    h: (r.y + r.h + gy).min(height) - y0,
                }
            })
            .collect();
        // Grow over touched faces (with a margin) and merge overlapping boxes, to a fixed point.
        loop {
            let mut grew = false;
            for b in boxes.iter_mut() {
                for f in faces {
                    let f = f.grown(0.25, width, height);
                    if overlaps(b, &f) && !b.contains(&f) {
                        *b = union(b, &f);
                        grew = true;
                    }
                }
            }
            let mut merged: Vec<Region> = Vec::with_capacity(boxes.len());
            for b in boxes {
                match merged.iter_mut().find(|m| overlaps(m, &b)) {
                    Some(m) => {
                        *m = union(m, &b);
                        grew = true;
                    }
                    None => merged.push(b),
                }
            }
            boxes = merged;
            if !grew {
                break;
            }
        }
        // Block-aligned (so each scanned block's mean is stored whole) and at least as large as
        // the detectors' windows.
        boxes
            .into_iter()
            .map(|b| {
                let x0 = b.x / BLOCK * BLOCK;
                let y0 = b.y / BLOCK * BLOCK;
                let x1 = ((b.x + b.w).div_ceil(BLOCK) * BLOCK).min(width);
                let y1 = ((b.y + b.h).div_ceil(BLOCK) * BLOCK).min(height);
                let r = Region {
                    x: x0,
                    y: y0,
                    w: x1 - x0,
                    h: y1 - y0,
                };
                at_least(r, MIN_CROP, width, height)
            })
            .collect()
    }
}

/// The scan's answer, with the moving regions (if any) and their share in the report.
fn with_moving(
    faces: Vec<Region>,
    masked: Option<Masked>,
    mut report: GateReport,
    width: u32,
    height: u32,
) -> Scan {
    let moving = masked.map(|m| m.regions).unwrap_or_default();
    let frame_area = (u64::from(width) * u64::from(height)).max(1);
    let filled: u64 = moving.iter().map(Region::area).sum();
    report.moving_regions = moving.len();
    report.masked = (filled as f32 / frame_area as f32).min(1.0);
    Scan {
        faces,
        moving,
        report,
    }
}

/// The smallest crop side the detectors are given (their 40-pixel windows with room around).
const MIN_CROP: u32 = 64;

/// Grows `r` symmetrically to at least `side` on each axis, within the frame.
fn at_least(r: Region, side: u32, width: u32, height: u32) -> Region {
    let fit = |start: u32, len: u32, limit: u32| {
        if len >= side || limit <= side {
            return if limit <= side {
                (0, limit)
            } else {
                (start, len)
            };
        }
        let start = start.saturating_sub((side - len) / 2).min(limit - side);
        (start, side)
    };
    let (x, w) = fit(r.x, r.w, width);
    let (y, h) = fit(r.y, r.h, height);
    Region { x, y, w, h }
}

fn overlaps(a: &Region, b: &Region) -> bool {
    a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
}

fn union(a: &Region, b: &Region) -> Region {
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (a.x + a.w).max(b.x + b.w);
    let y1 = (a.y + a.h).max(b.y + b.h);
    Region {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    }
}

/// The mean of every `BLOCK`×`BLOCK` block (partial blocks at the right and bottom edges are
/// averaged over the pixels they have), row-major.
fn block_means(gray: &GrayImage) -> Vec<u8> {
    let (width, height) = gray.dimensions();
    let (cols, rows) = (width.div_ceil(BLOCK), height.div_ceil(BLOCK));
    let mut sums = vec![0u32; (cols * rows) as usize];
    for (y, row) in gray
        .as_raw()
        .chunks_exact(width.max(1) as usize)
        .enumerate()
    {
        let base = (y as u32 / BLOCK * cols) as usize;
        for (bx, chunk) in row.chunks(BLOCK as usize).enumerate() {
            sums[base + bx] += chunk.iter().map(|&p| u32::from(p)).sum::<u32>();
        }
    }
    sums.iter()
        .enumerate()
        .map(|(i, &s)| {
            let (bx, by) = (i as u32 % cols, i as u32 / cols);
            let w = BLOCK.min(width - bx * BLOCK);
            let h = BLOCK.min(height - by * BLOCK);
            (s / (w * h)) as u8
        })
        .collect()
}

/// Bounding boxes (in blocks) of the 8-connected groups of `true` cells.
fn components(cells: &[bool], cols: u32, rows: u32) -> Vec<Region> {
    let mut seen = vec![false; cells.len()];
    let mut boxes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..cells.len() {
        if !cells[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i as u32 % cols, i as u32 / cols);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (i64::from(x) + dx, i64::from(y) + dy);
                    if nx < 0 || ny < 0 || nx >= i64::from(cols) || ny >= i64::from(rows) {
                        continue;
                    }
                    let n = (ny as u32 * cols + nx as u32) as usize;
                    if cells[n] && !seen[n] {
                        seen[n] = true;
                        stack.push(n);
                    }
                }
            }
        }
        boxes.push(Region {
            x: x0,
            y: y0,
            w: x1 - x0 + 1,
            h: y1 - y0 + 1,
        });
    }
    boxes
}

#[cfg(test)]
#[path = "motion_tests.rs"]
mod tests;
