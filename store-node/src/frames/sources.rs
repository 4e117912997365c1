//! Frame sources: a watched drop directory, a recorded image sequence played at a given rate,
//! and the synthetic shelf replay.
//!
//! A source is polled by its capture thread ([`super::capture`]): [`FrameSource::next`] says
//! whether a frame is due and when to ask again; the thread then either [`FrameSource::load`]s
//! the frame or, when the node is behind, [`FrameSource::skip`]s it without decoding.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backroom_datasets::{CHANNELS, CameraReplay, IMAGE_SIZE};
use image::RgbImage;
use zeroize::Zeroize;

use super::{RawFrame, SlotGrid};
use crate::redact::{self, RedactError};

/// File names a directory source reads (lower-cased extension).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// A dropped file is read only once it has not changed for this long (writers should still
/// write elsewhere and rename into the directory).
pub const SETTLE: Duration = Duration::from_millis(250);
/// Slots per row of the synthetic shelf frame.
const SYNTHETIC_COLUMNS: usize = 6;

/// Why a source could not give a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read frame {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode {}: {source}", .path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: RedactError,
    },
    #[error("cannot delete {} after reading it: {source}", .path.display())]
    Delete {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no .jpg, .jpeg or .png file", .0.display())]
    Empty(PathBuf),
    #[error("a frame ticket without a file was handed to a file source")]
    NotAFile,
}

/// A frame that is due: its capture time and where it comes from.
#[derive(Debug)]
pub struct FrameTicket {
    pub captured_unix_ms: i64,
    /// The file holding the frame (`None` for a rendered one).
    path: Option<PathBuf>,
}

impl FrameTicket {
    fn file(&self) -> Result<&Path, SourceError> {
        self.path.as_deref().ok_or(SourceError::NotAFile)
    }
}

/// What a source has next.
#[derive(Debug)]
pub enum Next {
    Ready(FrameTicket),
    /// Nothing is due yet: ask again after this long.
    Wait(Duration),
    /// The source is exhausted.
    End,
}

/// A camera. Runs on the capture thread, never on the async runtime.
pub trait FrameSource: Send {
    /// One line for logs.
    fn describe(&self) -> String;
    fn next(&mut self, now: Instant) -> Result<Next, SourceError>;
    /// Reads and decodes the frame of `ticket`.
    fn load(&mut self, ticket: FrameTicket) -> Result<RawFrame, SourceError>;
    /// Passes over the frame of `ticket` without decoding it (load shedding).
    fn skip(&mut self, ticket: FrameTicket) -> Result<(), SourceError>;
}

/// Paces frames at a fixed interval; when the consumer falls behind by more than one interval,
/// the schedule restarts from now (no burst of catch-up frames).
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    due: Option<Instant>,
}

impl Pacer {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            due: None,
        }
    }

    /// `None` when a frame is due now (and schedules the next), else how long to wait.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        let due = *self.due.get_or_insert(now);
        if now < due {
            return Some(due - now);
        }
        let next = due + self.interval;
        self.due = Some(if next < now {
            now + self.interval
        } else {
            next
        });
        None
    }
}

/// Reads a whole image file into memory and decodes it; the encoded bytes are zeroed.
fn read_image(path: &Path) -> Result<RgbImage, SourceError> {
    let mut bytes = std::fs::read(path).map_err(|source| SourceError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let decoded = redact::decode(&bytes);
    bytes.zeroize();
    decoded.map_err(|source| SourceError::Decode {
        path: path.to_owned(),
        source,
    })
}

fn is_image_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') {
        return false;
    }
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A drop directory the camera software writes JPEG/PNG frames into. Files are read oldest
/// first and **deleted once read** (or once skipped under load), so raw frames do not pile up
/// on disk; the capture time is the file's modification time. Other files are left alone.
#[derive(Debug)]
pub struct WatchedDir {
    camera_id: u32,
    dir: PathBuf,
    poll_interval: Duration,
    pending: VecDeque<PathBuf>,
    /// Files that could not be deleted: not read again.
    stuck: HashSet<PathBuf>,
    next_scan: Option<Instant>,
}

impl WatchedDir {
    pub fn new(camera_id: u32, dir: PathBuf, poll_interval: Duration) -> Self {
        Self {
            camera_id,
            dir,
            poll_interval,
            pending: VecDeque::new(),
            stuck: HashSet::new(),
            next_scan: None,
        }
    }

    fn scan(&mut self) -> Result<(), SourceError> {
        let io = |source| SourceError::Io {
            path: self.dir.clone(),
            source,
        };
        let now = SystemTime::now();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if !is_image_name(&path) || self.stuck.contains(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(modified) = meta.modified() else {
                continue;
            };
            let settled = now.duration_since(modified).is_ok_and(|age| age >= SETTLE);
            if meta.is_file() && settled {
                found.push((modified, path));
            }
        }
        found.sort();
        self.pending = found.into_iter().map(|(_, path)| path).collect();
        Ok(())
    }

    fn consume(&mut self, path: &Path) -> Result<(), SourceError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => {
                self.stuck.insert(path.to_owned());
                Err(SourceError::Delete {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

impl FrameSource for WatchedDir {
    fn describe(&self) -> String {
        format!("watched directory {}", self.dir.display())
    }

    fn next(&mut self, now: Instant) -> Result<Next, SourceError> {
        if self.pending.is_empty() {
            if self.next_scan.is_some_and(|at| now < at) {
                return Ok(Next::Wait(self.poll_interval));
            }
            self.next_scan = Some(now + self.poll_interval);
            self.scan()?;
        }
        while let Some(path) = self.pending.pop_front() {
            // Gone meanwhile (another reader, or the writer replaced it): skip.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let captured = meta.modified().map_or(0, unix_ms);
            return Ok(Next::Ready(FrameTicket {
                captured_unix_ms: captured,
                path: Some(path),
            }));
        }
        Ok(Next::Wait(self.poll_interval))
    }

    fn load(&mut self, ticket: FrameTicket) -> Result<RawFrame, SourceError> {
        let path = ticket.file()?.to_owned();
        let image = read_image(&path);
        // Deleted whether or not it decodes: an unreadable frame may still hold a face.
        self.consume(&path)?;
        Ok(RawFrame::new(
            self.camera_id,
            ticket.captured_unix_ms,
            image?,
        ))
    }

    fn skip(&mut self, ticket: FrameTicket) -> Result<(), SourceError> {
        let path = ticket.file()?.to_owned();
        self.consume(&path)
    }
}

/// A recorded image sequence: the image files of a directory in name order, played at one frame
/// per `interval`, optionally looping. Frame `i` is stamped `start_unix_ms + i ×
/// seconds_per_frame` (the recording's own time). Files are never modified.
#[derive(Debug)]
pub struct ImageSequence {
    camera_id: u32,
    dir: PathBuf,
    files: Vec<PathBuf>,
    repeat: bool,
    start_unix_ms: i64,
    ms_per_frame: i64,
    index: u64,
    pacer: Pacer,
}

impl ImageSequence {
    pub fn open(
        camera_id: u32,
        dir: PathBuf,
        interval: Duration,
        repeat: bool,
        start_unix: i64,
        seconds_per_frame: i64,
    ) -> Result<Self, SourceError> {
        let entries = std::fs::read_dir(&dir).map_err(|source| SourceError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_image_name(p) && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(SourceError::Empty(dir));
        }
        Ok(Self {
            camera_id,
            dir,
            files,
            repeat,
            start_unix_ms: start_unix.saturating_mul(1000),
            ms_per_frame: seconds_per_frame.saturating_mul(1000),
            index: 0,
            pacer: Pacer::new(interval),
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for ImageSequence {
    fn describe(&self) -> String {
        format!(
            "image sequence {} ({} files{})",
            self.dir.display(),
            self.files.len(),
            if self.repeat { ", looping" } else { "" }
        )
    }

    fn next(&mut self, now: Instant) -> Result<Next, SourceError> {
        let count = self.files.len() as u64;
        if !self.repeat && self.index >= count {
            return Ok(Next::End);
        }
        if let Some(wait) = self.pacer.wait(now) {
            return Ok(Next::Wait(wait));
        }
        let position = usize::try_from(self.index % count).unwrap_or(0);
        let offset = i64::try_from(self.index).unwrap_or(i64::MAX);
        let captured = self
            .start_unix_ms
            .saturating_add(offset.saturating_mul(self.ms_per_frame));
        self.index += 1;
        Ok(Next::Ready(FrameTicket {
            captured_unix_ms: captured,
            path: Some(self.files[position].clone()),
        }))
    }

    fn load(&mut self, ticket: FrameTicket) -> Result<RawFrame, SourceError> {
        let image = read_image(ticket.file()?)?;
        Ok(RawFrame::new(
            self.camera_id,
            ticket.captured_unix_ms,
            image,
        ))
    }

    fn skip(&mut self, _ticket: FrameTicket) -> Result<(), SourceError> {
        Ok(())
    }
}

/// The synthetic shelf ([`CameraReplay`]) rendered as one frame: its slot crops side by side,
/// [`SYNTHETIC_COLUMNS`] per row, 64×64 each ([`synthetic_grid`] cuts them out again). Played at
/// one frame per `interval`, stamped with the replay's simulated time.
#[derive(Debug)]
pub struct SyntheticShelf {
    replay: CameraReplay,
    grid: SlotGrid,
    pacer: Pacer,
    start_unix: i64,
    seconds_per_frame: i64,
}

/// The grid of a synthetic shelf frame with `slots` slots.
pub fn synthetic_grid(slots: usize) -> SlotGrid {
    let cols = slots.clamp(1, SYNTHETIC_COLUMNS);
    let rows = slots.div_ceil(cols).max(1);
    let size = IMAGE_SIZE as u32;
    SlotGrid {
        x: 0,
        y: 0,
        width: cols as u32 * size,
        height: rows as u32 * size,
        rows: rows as u32,
        cols: cols as u32,
    }
}

impl SyntheticShelf {
    pub fn new(replay: CameraReplay, interval: Duration, start_unix: i64, spf: i64) -> Self {
        let grid = synthetic_grid(replay.slot_count());
        Self {
            replay,
            grid,
            pacer: Pacer::new(interval),
            start_unix,
            seconds_per_frame: spf.max(0),
        }
    }

    fn render(&mut self) -> RawFrame {
        let frame = self.replay.next_frame();
        let size = IMAGE_SIZE as u32;
        let mut image = RgbImage::new(self.grid.width, self.grid.height);
        let plane = IMAGE_SIZE * IMAGE_SIZE;
        for slot in 0..frame.crops.labels.len() {
            let Some(crop) = frame.crops.image(slot) else {
                continue;
            };
            let (row, col) = (
                slot / self.grid.cols as usize,
                slot % self.grid.cols as usize,
            );
            for i in 0..plane {
                let (x, y) = ((i % IMAGE_SIZE) as u32, (i / IMAGE_SIZE) as u32);
                let mut rgb = [0u8; 3];
                for (c, value) in rgb.iter_mut().enumerate().take(CHANNELS) {
                    *value = (crop[c * plane + i] * 255.0).round().clamp(0.0, 255.0) as u8;
                }
                image.put_pixel(
                    col as u32 * size + x,
                    row as u32 * size + y,
                    image::Rgb(rgb),
                );
            }
        }
        RawFrame::new(
            frame.camera_id,
            frame.captured_unix.saturating_mul(1000),
            image,
        )
    }
}

impl FrameSource for SyntheticShelf {
    fn describe(&self) -> String {
        format!(
            "synthetic shelf replay (camera {}, {} slots)",
            self.replay.camera_id(),
            self.replay.slot_count()
        )
    }

    fn next(&mut self, now: Instant) -> Result<Next, SourceError> {
        if let Some(wait) = self.pacer.wait(now) {
            return Ok(Next::Wait(wait));
        }
        let index = i64::try_from(self.replay.frames_emitted()).unwrap_or(i64::MAX);
        let captured = self
            .start_unix
            .saturating_add(index.saturating_mul(self.seconds_per_frame));
        Ok(Next::Ready(FrameTicket {
            captured_unix_ms: captured.saturating_mul(1000),
            path: None,
        }))
    }

    fn load(&mut self, _ticket: FrameTicket) -> Result<RawFrame, SourceError> {
        Ok(self.render())
    }

    fn skip(&mut self, _ticket: FrameTicket) -> Result<(), SourceError> {
        // Simulated time passes whether or not the frame is looked at.
        drop(self.render());
        Ok(())
    }
}
