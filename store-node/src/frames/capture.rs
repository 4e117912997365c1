//! The capture thread: runs a [`FrameSource`] off the async runtime and hands frames to the
//! pipeline through a bounded queue.
//!
//! **Architecture Invariant:** the queue between capture and processing holds at most
//! `queue_frames` frames. A frame that arrives while it is full is dropped unprocessed (its
//! pixels zeroed; a watched directory's file deleted) and counted in
//! [`CaptureCounters::dropped`]: under load the node samples frames instead of queueing them
//! without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{info, warn};

use super::RawFrame;
use super::sources::{FrameSource, Next};

/// Longest sleep of the capture thread, so it notices a closed queue promptly.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Counters of one camera since the node started.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    /// Frames handed to the pipeline.
    pub captured: AtomicU64,
    /// Frames dropped unprocessed because the pipeline was behind.
    pub dropped: AtomicU64,
    /// Frames that could not be read or decoded.
    pub unreadable: AtomicU64,
}

impl CaptureCounters {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.captured.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.unreadable.load(Ordering::Relaxed),
        )
    }
}

/// A running capture thread. Dropping the receiver stops it.
#[derive(Debug)]
pub struct Capture {
    pub frames: mpsc::Receiver<RawFrame>,
    pub counters: Arc<CaptureCounters>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts `source` on a thread of its own; at most `queue_frames` (≥ 1) frames wait.
pub fn spawn_capture(
    source: Box<dyn FrameSource>,
    queue_frames: usize,
) -> std::io::Result<Capture> {
    let (sender, frames) = mpsc::channel(queue_frames.max(1));
    let counters = Arc::new(CaptureCounters::default());
    let thread_counters = counters.clone();
    let thread = std::thread::Builder::new()
        .name("backroom-capture".to_owned())
        .spawn(move || capture_loop(source, &sender, &thread_counters))?;
    Ok(Capture {
        frames,
        counters,
        thread,
    })
}

fn capture_loop(
    mut source: Box<dyn FrameSource>,
    sender: &mpsc::Sender<RawFrame>,
    counters: &CaptureCounters,
) {
    let described = source.describe();
    info!(source = %described, "frame capture started");
    let mut last_source_error: Option<String> = None;
    while !sender.is_closed() {
        let ticket = match source.next(Instant::now()) {
            Ok(Next::Ready(ticket)) => ticket,
            Ok(Next::Wait(wait)) => {
                std::thread::sleep(wait.min(MAX_NAP));
                continue;
            }
            Ok(Next::End) => {
                info!(source = %described, "frame source ended");
                return;
            }
            Err(error) => {
                // A missing or unreadable directory: said once (and again when it changes),
                // retried at the poll interval.
                let text = error.to_string();
                if last_source_error.as_deref() != Some(&text) {
                    warn!(source = %described, "frame source failed; retrying: {text}");
                    last_source_error = Some(text);
                }
                std::thread::sleep(MAX_NAP);
                continue;
            }
        };
        last_source_error = None;
        // Single producer: capacity seen here cannot shrink before the send below.
        if sender.capacity() == 0 {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = source.skip(ticket) {
                warn!(source = %described, "{error}");
            }
            continue;
        }
        match source.load(ticket) {
            Ok(frame) => match sender.try_send(frame) {
                Ok(()) => {
                    counters.captured.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(frame)) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    drop(frame);
                }
                Err(TrySendError::Closed(_)) => break,
            },
            Err(error) => {
                counters.unreadable.fetch_add(1, Ordering::Relaxed);
                warn!(source = %described, "frame skipped: {error}");
            }
        }
    }
    info!(source = %described, "frame capture stopped");
}
