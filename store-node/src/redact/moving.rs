//! Moving-region masking for one camera's stream: whatever is not the camera's learned
//! background is filled, whether or not a face detector recognises it.
//!
//! Face detectors need a face: they miss people seen from above (the top of a head), from
//! behind, or too small for their smallest window (a shopper 20 m from the camera), and the
//! classic body detectors we measured found no person in our test photographs. A shelf camera
//! is fixed, though, and what moves in front of the shelves is, almost always, people. So the
//! node learns each camera's background and fills everything that differs from it:
//!
//! - per 8×8 block (the motion gate's blocks, [`super::motion`]), the mean grey value is
//!   followed over time. A block whose mean stays within [`MaskSettings::threshold`] levels of
//!   where a still run began for at least [`MaskSettings::settle_ms`] of capture time is
//!   *background*, and its background value follows it (slow lighting drift is learned);
//! - a block is *foreground* when it has no background yet (a camera's first
//!   `settle_ms`: the whole picture is filled until it has been seen still) or its mean is
//!   more than `threshold` levels from its background;
//! - foreground blocks are grown by [`MaskSettings::grow_blocks`] blocks on every side, and
//!   those blocks are filled (as rectangles of whole blocks). Filling the blocks, not each
//!   group's bounding box, keeps a crowd's fill to the people in it.
//!
//! This fails closed: a change of light, a camera knocked, a restocked shelf are all filled
//! until they have been still for `settle_ms`. What it cannot see is a person who stands
//! perfectly still for longer than `settle_ms`: their blocks become background (their face, if
//! visible, is still found by the face detectors, which rescan every block when it stops being
//! masked). `settle_ms` trades that against how long a restocked shelf stays hidden from the
//! shelf analytics.

use super::Region;

/// How the background is learned and how far a fill reaches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskSettings {
    /// A block differs (from where its still run began, or from its background) when its mean
    /// grey value moved by more than this many levels of 255.
    pub threshold: u8,
    /// Capture time a block must stay still before it counts as background, in milliseconds.
    pub settle_ms: i64,
    /// Foreground blocks are grown by this many blocks on every side before filling (so that
    /// a body's edges, whose blocks change less than its middle, are inside the fill).
    pub grow_blocks: u32,
}

impl Default for MaskSettings {
    fn default() -> Self {
        MaskSettings {
            threshold: 6,
            settle_ms: 30_000,
            grow_blocks: 1,
        }
    }
}

/// No background learned yet (a block's background is a mean, 0..=255, otherwise).
const UNLEARNED: u16 = u16::MAX;

/// One camera's background model (see the module documentation).
#[derive(Debug)]
pub struct MovingMask {
    settings: MaskSettings,
    state: Option<Background>,
}

#[derive(Debug)]
struct Background {
    cols: u32,
    rows: u32,
    /// Each block's mean when its current still run began.
    anchor: Vec<u8>,
    /// Capture time that still run began.
    still_since: Vec<i64>,
    /// Each block's background mean, or [`UNLEARNED`].
    background: Vec<u16>,
}

/// One frame's answer: which blocks are filled, and the boxes that fill them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Masked {
    /// Per block (row-major, the motion gate's grid): inside a fill.
    pub blocks: Vec<bool>,
    /// The fills, in frame pixels.
    pub regions: Vec<Region>,
}

impl MovingMask {
    pub fn new(settings: MaskSettings) -> Self {
        MovingMask {
            settings,
            state: None,
        }
    }

    pub fn settings(&self) -> &MaskSettings {
        &self.settings
    }

    /// Takes a frame's block means (`cols × rows` blocks of `block` pixels over a
    /// `width × height` frame) captured at `captured_unix_ms`, and says what to fill. A frame of
    /// another size starts the background afresh (all of it filled).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        means: &[u8],
        cols: u32,
        rows: u32,
        block: u32,
        width: u32,
        height: u32,
        captured_unix_ms: i64,
    ) -> Masked {
        let state = match self.state.take() {
            Some(s) if s.cols == cols && s.rows == rows && s.anchor.len() == means.len() => s,
            _ => Background {
                cols,
                rows,
                anchor: means.to_vec(),
                still_since: vec![captured_unix_ms; means.len()],
                background: vec![UNLEARNED; means.len()],
            },
        };
        let mut state = state;
        let threshold = self.settings.threshold;
        let mut foreground = vec![false; means.len()];
        for (i, &mean) in means.iter().enumerate() {
            if mean.abs_diff(state.anchor[i]) > threshold {
                state.anchor[i] = mean;
                state.still_since[i] = captured_unix_ms;
            } else if captured_unix_ms.saturating_sub(state.still_since[i])
                >= self.settings.settle_ms
            {
                state.background[i] = u16::from(mean);
            }
            let background = state.background[i];
            foreground[i] = background == UNLEARNED
                || u16::from(mean).abs_diff(background) > u16::from(threshold);
        }
        self.state = Some(state);
        let blocks = dilate(&foreground, cols, rows, self.settings.grow_blocks);
        let regions = rectangles(&blocks, cols, rows)
            .into_iter()
            .map(|r| Region {
                x: r.x * block,
                y: r.y * block,
                w: (r.w * block).min(width - r.x * block),
                h: (r.h * block).min(height - r.y * block),
            })
            .collect();
        Masked { blocks, regions }
    }
}

/// `cells` as rectangles (in cells) that cover exactly the `true` cells, without overlap: each
/// row's runs, a run extended downwards while the rows below have the same run.
fn rectangles(cells: &[bool], cols: u32, rows: u32) -> Vec<Region> {
    let mut open: Vec<Region> = Vec::new();
    let mut done = Vec::new();
    for y in 0..rows {
        let row = &cells[(y * cols) as usize..((y + 1) * cols) as usize];
        let mut runs = Vec::new();
        let mut x = 0;
        while x < cols {
            if row[x as usize] {
                let start = x;
                while x < cols && row[x as usize] {
                    x += 1;
                }
                runs.push((start, x - start));
            } else {
                x += 1;
            }
        }
        let mut still_open = Vec::with_capacity(runs.len());
        for r in open.drain(..) {
            match runs.iter().position(|&(x, w)| x == r.x && w == r.w) {
                Some(i) => {
                    runs.swap_remove(i);
                    still_open.push(Region { h: r.h + 1, ..r });
                }
                None => done.push(r),
            }
        }
        still_open.extend(runs.into_iter().map(|(x, w)| Region { x, y, w, h: 1 }));
        open = still_open;
    }
    done.extend(open);
    done
}

/// `cells` grown by `by` cells in every direction (a square structuring element).
fn dilate(cells: &[bool], cols: u32, rows: u32, by: u32) -> Vec<bool> {
    if by == 0 {
        return cells.to_vec();
    }
    let mut out = vec![false; cells.len()];
    for y in 0..rows {
        for x in 0..cols {
            if !cells[(y * cols + x) as usize] {
                continue;
            }
            for ny in y.saturating_sub(by)..(y + by + 1).min(rows) {
                for nx in x.saturating_sub(by)..(x + by + 1).min(cols) {
                    out[(ny * cols + nx) as usize] = true;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "moving_tests.rs"]
mod tests;
