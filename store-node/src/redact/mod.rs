//! Redaction, the first step of the node's frame pipeline: faces are found and filled
//! irreversibly, and image metadata (EXIF, GPS, XMP, ICC, text chunks) is dropped, before
//! anything else sees the frame.
//!
//! Detectors (those switched on in [`Detectors`] run on every frame; a region any of them
//! finds is filled):
//! - MTCNN ([`mtcnn`]): three small CNNs (ONNX, shipped in `assets/mtcnn/`, MIT) run through
//!   `tract-onnx`; on by default;
//! - SeetaFace's frontal cascade through the `rustface` crate (model shipped in
//!   `assets/seeta_fd_frontal_v1.0.bin`, BSD-2-Clause);
//! - OpenCV's Haar profile-face cascade (`assets/haarcascade_profileface.xml`, Intel licence),
//!   run as trained and mirrored (it finds faces turned one way only), through our own
//!   evaluator ([`haar`]).
//!
//! Why MTCNN alone by default (measured, `benches/README.md` and `tests/e2e/redaction.rs`): it
//! finds every labelled face the two cascades find together, and the three-quarter profile
//! SeetaFace misses, in a fraction of their time. The cascades stay available for a store that
//! wants a second opinion on strong profiles, at their cost.
//!
//! Filling: each detected box is grown by [`RedactorSettings::margin`] on every side and set to
//! one flat grey. Nothing of the original pixels survives (unlike pixelation or a blur, which
//! keep averages that can be inverted or matched).
//!
//! Memory: [`redact_file`] zeroes the encoded input bytes and the decoded unredacted buffer
//! once the redacted copy exists. Buffers internal to the image decoders are not zeroed.

pub mod haar;
pub mod motion;
pub mod moving;
pub mod mtcnn;

#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::Serialize;
use zeroize::Zeroize;

use haar::{Cascade, CascadeError, ScanSettings};
use motion::{GateReport, MotionGate};
use mtcnn::{Mtcnn, MtcnnError, MtcnnSettings};

use crate::frames::{RawFrame, RedactedFrame};

static SEETA_FRONTAL: &[u8] = include_bytes!("../../assets/seeta_fd_frontal_v1.0.bin");
static HAAR_PROFILE: &str = include_str!("../../assets/haarcascade_profileface.xml");

/// Largest input the CLI and the node accept (pixels); larger frames are refused, not resized.
pub const MAX_PIXELS: u64 = 40_000_000;

/// The grey that filled regions are set to.
pub const FILL: [u8; 3] = [128, 128, 128];

/// A rectangle in pixels of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Region {
    /// The box from corner `(x0, y0)` to `(x1, y1)` (exclusive), or `None` when it is empty.
    pub fn from_corners(x0: u32, y0: u32, x1: u32, y1: u32) -> Option<Region> {
        (x1 > x0 && y1 > y0).then(|| Region {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        })
    }

    /// Whether `other` lies inside `self`.
    pub fn contains(&self, other: &Region) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.x + other.w <= self.x + self.w
            && other.y + other.h <= self.y + self.h
    }

    /// Grows the box by `margin × side` on each side, clamped to a `width × height` frame.
    pub fn grown(&self, margin: f32, width: u32, height: u32) -> Region {
        let dx = (self.w as f32 * margin).round() as u32;
        let dy = (self.h as f32 * margin).round() as u32;
        let x0 = self.x.saturating_sub(dx);
        let y0 = self.y.saturating_sub(dy);
        let x1 = (self.x + self.w + dx).min(width);
        let y1 = (self.y + self.h + dy).min(height);
        Region {
            x: x0,
            y: y0,
            w: x1.saturating_sub(x0),
            h: y1.saturating_sub(y0),
        }
    }

    /// Pixels of the box.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// Which detectors run on every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detectors {
    pub mtcnn: bool,
    pub seeta_frontal: bool,
    pub haar_profile: bool,
}

impl Detectors {
    /// Every detector.
    pub const ALL: Detectors = Detectors {
        mtcnn: true,
        seeta_frontal: true,
        haar_profile: true,
    };
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors {
            mtcnn: true,
            seeta_frontal: false,
            haar_profile: false,
        }
    }
}

/// Detector thresholds and the fill margin.
#[derive(Clone, Copy, Debug)]
pub struct RedactorSettings {
    pub detectors: Detectors,
    /// MTCNN's smallest face, pyramid and thresholds.
    pub mtcnn: MtcnnSettings,
    /// SeetaFace score threshold (its own default is 3.85; lower finds more faces).
    pub frontal_score: f64,
    /// The profile cascade's scan. Its smallest face defaults to 40 pixels, SeetaFace's own
    /// smallest (its window), which also skips the pyramid's finest and costliest levels.
    pub profile: ScanSettings,
    /// Fraction of a box's side added on each side before filling.
    pub margin: f32,
}

impl Default for RedactorSettings {
    fn default() -> Self {
        RedactorSettings {
            detectors: Detectors::default(),
            mtcnn: MtcnnSettings::default(),
            frontal_score: 2.0,
            profile: ScanSettings {
                scale_factor: 1.1,
                min_neighbors: 2,
                min_size: 40,
            },
            margin: 0.25,
        }
    }
}

/// Why redaction could not run. A frame that cannot be redacted is dropped, never passed on.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("face model: {0}")]
    Model(std::io::Error),
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    #[error(transparent)]
    Mtcnn(#[from] MtcnnError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot decode image: {0}")]
    Decode(image::ImageError),
    #[error("image is {width}x{height}: more than {MAX_PIXELS} pixels")]
    TooLarge { width: u32, height: u32 },
    #[error("output must end in .jpg, .jpeg or .png: {0}")]
    OutputFormat(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode image: {0}")]
    Encode(image::ImageError),
}

/// The face detectors, loaded once and shared by every frame (`Send + Sync`).
pub struct Redactor {
    mtcnn: Mtcnn,
    frontal: rustface::Model,
    profile: Cascade,
    profile_mirrored: Cascade,
    settings: RedactorSettings,
}

impl Redactor {
    /// Loads the shipped detectors with default settings.
    pub fn new() -> Result<Self, RedactError> {
        Self::with_settings(RedactorSettings::default())
    }

    pub fn with_settings(settings: RedactorSettings) -> Result<Self, RedactError> {
        let profile = Cascade::parse(HAAR_PROFILE)?;
        Ok(Redactor {
            mtcnn: Mtcnn::new(settings.mtcnn)?,
            frontal: rustface::read_model(SEETA_FRONTAL).map_err(RedactError::Model)?,
            profile_mirrored: profile.mirrored(),
            profile,
            settings,
        })
    }

    pub fn settings(&self) -> &RedactorSettings {
        &self.settings
    }

    /// Face boxes found in `gray` by every detector switched on (before the margin), in its
    /// pixels.
    pub fn detect(&self, gray: &GrayImage) -> Vec<Region> {
        let on = self.settings.detectors;
        let mut found = Vec::new();
        if on.mtcnn {
            found.extend(self.detect_mtcnn(gray));
        }
        if on.seeta_frontal {
            found.extend(self.detect_frontal(gray));
        }
        if on.haar_profile {
            found.extend(self.detect_profile(gray));
        }
        found
    }

    /// MTCNN's detections. Should the network fail to run (it was loaded and checked at start,
    /// so this means a bug or no memory), the whole image counts as a face: the frame is
    /// filled, never passed on unredacted.
    pub fn detect_mtcnn(&self, gray: &GrayImage) -> Vec<Region> {
        match self.mtcnn.detect(gray) {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "face detection failed; filling the whole image");
                vec![Region {
                    x: 0,
                    y: 0,
                    w: gray.width(),
                    h: gray.height(),
                }]
            }
        }
    }

    /// SeetaFace's frontal detections.
    pub fn detect_frontal(&self, gray: &GrayImage) -> Vec<Region> {
        let (width, height) = gray.dimensions();
        if width == 0 || height == 0 {
            return Vec::new();
        }
        // rustface's detector is not Send, so each call builds its own from the shared model.
        let mut frontal = rustface::create_detector_with_model(self.frontal.clone());
        frontal.set_score_thresh(self.settings.frontal_score);
        frontal.set_pyramid_scale_factor(0.8);
        frontal.set_slide_window_step(4, 4);
        let mut found = Vec::new();
        for face in frontal.detect(&rustface::ImageData::new(gray.as_raw(), width, height)) {
            let b = face.bbox();
            let (x0, y0) = (b.x().max(0) as u32, b.y().max(0) as u32);
            let x1 = (i64::from(b.x()) + i64::from(b.width())).clamp(0, i64::from(width)) as u32;
            let y1 = (i64::from(b.y()) + i64::from(b.height())).clamp(0, i64::from(height)) as u32;
            found.extend(Region::from_corners(x0, y0, x1, y1));
        }
        found
    }

    /// The profile cascade's detections, with the cascade as trained and mirrored (faces
    /// turned either way), in one scan of the frame's pyramid.
    pub fn detect_profile(&self, gray: &GrayImage) -> Vec<Region> {
        haar::detect_all(
            &[&self.profile, &self.profile_mirrored],
            gray,
            &self.settings.profile,
        )
    }

    /// Redacts `frame` in place: every detected face, grown by the margin, is filled with
    /// [`FILL`]. Returns the filled regions.
    pub fn redact(&self, frame: &mut RgbImage) -> Vec<Region> {
        let luma = image::imageops::grayscale(frame);
        let regions = self.fill_regions(&luma, frame);
        let mut luma = luma.into_raw();
        luma.zeroize();
        regions
    }

    /// Redacts a camera's next frame, captured at `captured_unix_ms`, in place like
    /// [`Redactor::redact`], running the detectors only where `gate` (that camera's memory) says
    /// the picture changed, and filling what moves when the gate has a moving-region mask
    /// ([`moving`]). Returns the filled regions (faces grown by the margin, then moving regions)
    /// and what was scanned.
    pub fn redact_gated(
        &self,
        frame: &mut RgbImage,
        gate: &mut MotionGate,
        captured_unix_ms: i64,
    ) -> (Vec<Region>, GateReport) {
        let luma = image::imageops::grayscale(frame);
        let scan = gate.scan(&luma, captured_unix_ms, |crop| self.detect(crop));
        let mut regions = self.fill_faces(scan.faces, frame);
        self.fill(frame, &scan.moving);
        regions.extend(scan.moving);
        let mut luma = luma.into_raw();
        luma.zeroize();
        (regions, scan.report)
    }

    /// [`Redactor::redact_frame`] through a camera's [`MotionGate`].
    pub fn redact_frame_gated(
        &self,
        mut raw: RawFrame,
        gate: &mut MotionGate,
    ) -> (RedactedFrame, GateReport) {
        let captured_unix_ms = raw.captured_unix_ms();
        let (regions, report) = self.redact_gated(&mut raw.pixels, gate, captured_unix_ms);
        let frame = RedactedFrame {
            camera_id: raw.camera_id(),
            captured_unix_ms,
            image: std::mem::take(&mut raw.pixels),
            regions,
        };
        (frame, report)
    }

    fn fill_regions(&self, gray: &GrayImage, frame: &mut RgbImage) -> Vec<Region> {
        self.fill_faces(self.detect(gray), frame)
    }

    fn fill_faces(&self, faces: Vec<Region>, frame: &mut RgbImage) -> Vec<Region> {
        let (width, height) = frame.dimensions();
        let regions: Vec<Region> = faces
            .into_iter()
            .map(|r| r.grown(self.settings.margin, width, height))
            .filter(|r| r.area() > 0)
            .collect();
        self.fill(frame, &regions);
        regions
    }

    /// Redacts a captured frame: the only way from a [`RawFrame`] to anything else. The pixels
    /// are filled in place and moved into the result, so no unredacted copy remains.
    pub fn redact_frame(&self, mut raw: RawFrame) -> RedactedFrame {
        let regions = self.redact(&mut raw.pixels);
        RedactedFrame {
            camera_id: raw.camera_id(),
            captured_unix_ms: raw.captured_unix_ms(),
            image: std::mem::take(&mut raw.pixels),
            regions,
        }
    }

    /// Sets every pixel of `regions` (clamped to the frame) to [`FILL`].
    pub fn fill(&self, frame: &mut RgbImage, regions: &[Region]) {
        let (width, height) = frame.dimensions();
        let stride = width as usize * 3;
        let pixels: &mut [u8] = frame;
        for r in regions {
            let (x0, x1) = (
                r.x.min(width) as usize,
                r.x.saturating_add(r.w).min(width) as usize,
            );
            for y in r.y.min(height)..r.y.saturating_add(r.h).min(height) {
                let row = y as usize * stride;
                for pixel in pixels[row + 3 * x0..row + 3 * x1].chunks_exact_mut(3) {
                    pixel.copy_from_slice(&FILL);
                }
            }
        }
    }

    /// The profile cascade's base window (width, height).
    pub fn profile_window(&self) -> (u32, u32) {
        self.profile.window()
    }
}

/// Decodes an image file's bytes, applying its EXIF orientation (so the detectors see it
/// upright), as 8-bit RGB. The metadata itself is not kept.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, RedactError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| RedactError::Decode(image::ImageError::IoError(e)))?;
    let mut decoder = reader.into_decoder().map_err(RedactError::Decode)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(RedactError::TooLarge { width, height });
    }
    let orientation = decoder.orientation().map_err(RedactError::Decode)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(RedactError::Decode)?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => {
            let rgb = other.to_rgb8();
            let mut raw = other.into_bytes();
            raw.zeroize();
            rgb
        }
    })
}

/// Redacts one image file as the node does and writes it to `output` (JPEG or PNG by the
/// extension; no metadata is written). The output appears whole or not at all (written to a
/// temporary file beside it, then renamed). Returns the filled regions, in the input's pixels
/// after its EXIF orientation is applied.
pub fn redact_file(
    redactor: &Redactor,
    input: &Path,
    output: &Path,
) -> Result<Vec<Region>, RedactError> {
    let format = match output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => ImageFormat::Jpeg,
        Some("png") => ImageFormat::Png,
        _ => return Err(RedactError::OutputFormat(output.display().to_string())),
    };
    let mut bytes = std::fs::read(input).map_err(|source| RedactError::Read {
        path: input.display().to_string(),
        source,
    })?;
    let decoded = decode(&bytes);
    bytes.zeroize();
    let mut frame = decoded?;
    let regions = redactor.redact(&mut frame);

    let mut encoded = Cursor::new(Vec::new());
    let written = DynamicImage::ImageRgb8(frame).write_to(&mut encoded, format);
    written.map_err(RedactError::Encode)?;
    let write_error = |source| RedactError::Write {
        path: output.display().to_string(),
        source,
    };
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    std::io::Write::write_all(&mut temp, encoded.get_ref()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(output).map_err(|e| RedactError::Write {
        path: output.display().to_string(),
        source: e.error,
    })?;
    Ok(regions)
}
