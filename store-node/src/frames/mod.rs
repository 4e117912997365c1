//! Frames, from the camera to inference.
//!
//! A source ([`sources`]) yields [`RawFrame`]s: unredacted pixels, tagged with a camera id and
//! capture time. A `RawFrame` can only be turned into something else by
//! [`Redactor::redact_frame`](crate::redact::Redactor::redact_frame), which fills every face and
//! hands back a [`RedactedFrame`]; inference, the local store and everything after them only ever
//! see the redacted kind. The raw pixels never leave memory and are zeroed when the frame is
//! dropped (also when it is dropped unprocessed under load).
//!
//! [`capture`] runs a source on its own thread and hands frames over through a small bounded
//! queue: when frames arrive faster than they are processed, new frames are dropped (sampled)
//! rather than queued without bound, and counted ([`capture::CaptureCounters`]).
//!
//! A camera's shelf slots are given as a [`SlotGrid`] in the frame's pixels; each cell is cut
//! out of the redacted frame and scaled to the model's input.

pub mod capture;
pub mod sources;

use backroom_datasets::{CHANNELS, IMAGE_SIZE, PIXELS_PER_IMAGE};
use image::RgbImage;
use image::imageops::FilterType;
use zeroize::Zeroize;

use crate::redact::Region;

/// An unredacted frame as captured. Its pixels are private to this module and the redactor, and
/// zeroed on drop.
pub struct RawFrame {
    camera_id: u32,
    captured_unix_ms: i64,
    pub(crate) pixels: RgbImage,
}

impl RawFrame {
    pub fn new(camera_id: u32, captured_unix_ms: i64, pixels: RgbImage) -> Self {
        Self {
            camera_id,
            captured_unix_ms,
            pixels,
        }
    }

    pub fn camera_id(&self) -> u32 {
        self.camera_id
    }

    pub fn captured_unix_ms(&self) -> i64 {
        self.captured_unix_ms
    }

    pub fn dimensions(&self) -> (u32, u32) {
        self.pixels.dimensions()
    }
}

impl std::fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (width, height) = self.pixels.dimensions();
        f.debug_struct("RawFrame")
            .field("camera_id", &self.camera_id)
            .field("captured_unix_ms", &self.captured_unix_ms)
            .field("size", &format_args!("{width}x{height}"))
            .finish_non_exhaustive()
    }
}

impl Drop for RawFrame {
    fn drop(&mut self) {
        let pixels = std::mem::take(&mut self.pixels);
        let mut raw = pixels.into_raw();
        raw.zeroize();
    }
}

/// A frame after redaction: every face found is filled, no metadata is attached.
#[derive(Clone, Debug)]
pub struct RedactedFrame {
    pub camera_id: u32,
    pub captured_unix_ms: i64,
    pub image: RgbImage,
    /// The filled regions (grown boxes), in the frame's pixels.
    pub regions: Vec<Region>,
}

/// The shelf slots of a camera: a `rows × cols` grid over the rectangle
/// `(x, y, width, height)` of the frame, in pixels. Slots are numbered row by row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotGrid {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub rows: u32,
    pub cols: u32,
}

/// Why a frame's slots could not be cut out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error(
        "the slot grid ({}x{} at {},{}) does not fit in the {frame_width}x{frame_height} frame",
        .grid.width, .grid.height, .grid.x, .grid.y
    )]
    OutsideFrame {
        grid: SlotGrid,
        frame_width: u32,
        frame_height: u32,
    },
    #[error("the slot grid has an empty cell ({rows} rows, {cols} columns in {width}x{height})")]
    EmptyCell {
        rows: u32,
        cols: u32,
        width: u32,
        height: u32,
    },
}

impl SlotGrid {
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// Cell `(row, col)` as a region of the frame.
    pub fn cell(&self, row: u32, col: u32) -> Region {
        let x0 = self.x + (u64::from(col) * u64::from(self.width) / u64::from(self.cols)) as u32;
        let x1 =
            self.x + (u64::from(col + 1) * u64::from(self.width) / u64::from(self.cols)) as u32;
        let y0 = self.y + (u64::from(row) * u64::from(self.height) / u64::from(self.rows)) as u32;
        let y1 =
            self.y + (u64::from(row + 1) * u64::from(self.height) / u64::from(self.rows)) as u32;
        Region {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }

    /// Per slot (row-major, as [`SlotGrid::crops`]): whether any of `regions` overlaps its
    /// cell, so that the model's answer on a filled cell is not taken as an observation.
    pub fn cells_touching(&self, regions: &[Region]) -> Vec<bool> {
        let overlaps = |a: &Region, b: &Region| {
            u64::from(a.x) < u64::from(b.x) + u64::from(b.w)
                && u64::from(b.x) < u64::from(a.x) + u64::from(a.w)
                && u64::from(a.y) < u64::from(b.y) + u64::from(b.h)
                && u64::from(b.y) < u64::from(a.y) + u64::from(a.h)
        };
        (0..self.rows)
            .flat_map(|row| (0..self.cols).map(move |col| (row, col)))
            .map(|(row, col)| {
                let cell = self.cell(row, col);
                regions.iter().any(|r| overlaps(&cell, r))
            })
            .collect()
    }

    /// Every slot of `frame` as a model input: CHW `f32` in `[0, 1]`, each cell scaled to
    /// `IMAGE_SIZE × IMAGE_SIZE` (copied as is when it already has that size).
    pub fn crops(&self, frame: &RgbImage) -> Result<Vec<f32>, SlotError> {
        let (frame_width, frame_height) = frame.dimensions();
        let fits = self.rows > 0
            && self.cols > 0
            && u64::from(self.x) + u64::from(self.width) <= u64::from(frame_width)
            && u64::from(self.y) + u64::from(self.height) <= u64::from(frame_height);
        if !fits {
            return Err(SlotError::OutsideFrame {
                grid: *self,
                frame_width,
                frame_height,
            });
        }
        if self.width < self.cols || self.height < self.rows {
            return Err(SlotError::EmptyCell {
                rows: self.rows,
                cols: self.cols,
                width: self.width,
                height: self.height,
            });
        }
        let size = IMAGE_SIZE as u32;
        let plane = IMAGE_SIZE * IMAGE_SIZE;
        let mut out = Vec::with_capacity(self.slots() * PIXELS_PER_IMAGE);
        for row in 0..self.rows {
            for col in 0..self.cols {
                let r = self.cell(row, col);
                let view = image::imageops::crop_imm(frame, r.x, r.y, r.w, r.h);
                let cell = if (r.w, r.h) == (size, size) {
                    view.to_image()
                } else {
                    image::imageops::resize(&*view, size, size, FilterType::Triangle)
                };
                let start = out.len();
                out.resize(start + PIXELS_PER_IMAGE, 0.0);
                for (i, pixel) in cell.pixels().enumerate() {
                    for c in 0..CHANNELS {
                        out[start + c * plane + i] = f32::from(pixel.0[c]) / 255.0;
                    }
                }
            }
        }
        Ok(out)
    }
}
