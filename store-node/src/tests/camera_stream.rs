//! Window aggregation and model stream assembly.

use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::{ModelChunk, ModelHeader, ModelTrailer, model_chunk};
use sha2::{Digest, Sha256};

use crate::camera::{
    ClosedWindow, SLOT_EMPTY as E, SLOT_OCCLUDED as O, SLOT_STOCKED as S, WindowAggregator,
};
use crate::frames::SlotGrid;
use crate::model_stream::{ChunkKind, ModelAssembler, StreamError};
use crate::redact::Region;

// ---- windows ----

#[test]
fn frames_are_grouped_into_windows_and_closed_when_a_new_one_starts() {
    let mut agg = WindowAggregator::new(4, 3600);
    assert_eq!(agg.observe(7200, &[S, S, E]), None);
    assert_eq!(agg.observe(7200 + 1800, &[S, E, E]), None);
    assert_eq!(agg.observe(7200 + 3599, &[E, E, E]), None);
    let closed = agg.observe(10_800, &[E, S, S]).expect("window closed");
    assert_eq!(
        closed,
        ClosedWindow {
            camera_id: 4,
            window_start_unix: 7200,
            window_secs: 3600,
            frames: 3,
            slot_observations: 9,
            empty_slot_observations: 6,
            out_of_stock_events: 2,
        }
    );
    let current = agg.current().expect("open window");
    assert_eq!(
        (
            current.window_start_unix,
            current.frames,
            current.out_of_stock_events
        ),
        (10_800, 1, 0)
    );
    // A jump over several windows closes only the one that had frames.
    let closed = agg
        .observe(10_800 + 5 * 3600 + 10, &[S, E, S])
        .expect("closed");
    assert_eq!(
        (
            closed.window_start_unix,
            closed.frames,
            closed.out_of_stock_events
        ),
        (10_800, 1, 0)
    );
}

#[test]
fn occluded_slots_are_not_observations_and_keep_their_last_seen_state() {
    let mut agg = WindowAggregator::new(0, 60);
    agg.observe(0, &[S, S, E]);
    // A shopper hides slots 0 and 1; slot 0 is emptied behind them.
    agg.observe(1, &[O, O, E]);
    agg.observe(2, &[O, S, E]);
    // Seen again: slot 0 stocked -> (hidden) -> empty is one event, counted now.
    agg.observe(3, &[E, S, E]);
    // Hidden then seen empty again: no new event (it was empty when last seen).
    agg.observe(4, &[O, O, O]);
    agg.observe(5, &[E, E, E]); // slot 1: stocked when last seen -> empty: one event
    let closed = agg.observe(60, &[S, S, S]).expect("closed");
    assert_eq!(closed.frames, 6);
    // Per frame: 3, 1, 2, 3, none, 3 seen; 1, 1, 1, 2, none, 3 of them empty.
    assert_eq!(closed.slot_observations, 12);
    assert_eq!(closed.empty_slot_observations, 8);
    assert_eq!(closed.out_of_stock_events, 2);
}

#[test]
fn the_cells_a_fill_touches_are_the_occluded_slots() {
    let grid = SlotGrid {
        x: 100,
        y: 50,
        width: 300,
        height: 100,
        rows: 2,
        cols: 3,
    };
    // Cells are 100 x 50: a fill over the seam of the first row's cells 1 and 2, one inside
    // the second row's first cell, and one outside the grid.
    let fills = [
        Region {
            x: 290,
            y: 60,
            w: 20,
            h: 10,
        },
        Region {
            x: 120,
            y: 110,
            w: 10,
            h: 10,
        },
        Region {
            x: 0,
            y: 0,
            w: 100,
            h: 50,
        },
    ];
    assert_eq!(
        grid.cells_touching(&fills),
        vec![false, true, true, true, false, false]
    );
    assert_eq!(grid.cells_touching(&[]), vec![false; 6]);
}

#[test]
fn out_of_stock_counts_only_stocked_to_empty_transitions() {
    let mut agg = WindowAggregator::new(0, 60);
    agg.observe(0, &[S, S, E, E]);
    agg.observe(1, &[E, S, S, E]); // slot 0 stocked -> empty: 1 event
    agg.observe(2, &[E, E, S, E]); // slot 1: 1 event (slot 0 stays empty: none)
    agg.forget_previous(); // a skipped frame: no transition across the gap
    agg.observe(3, &[S, S, S, S]);
    agg.observe(4, &[E, E, E, E]); // 4 events
    agg.observe(59, &[S, S, S, S]);
    // A transition across a window boundary counts in neither window: a frame influences only
    // its own window's release.
    let closed = agg.observe(60, &[E, E, E, E]).expect("closed");
    assert_eq!(closed.out_of_stock_events, 6);
    assert_eq!(closed.frames, 6);
    let closed = {
        agg.observe(61, &[S, S, S, E]);
        agg.observe(62, &[E, S, S, E]); // 1 event
        agg.observe(120, &[E, E, E, E]).expect("closed")
    };
    assert_eq!(closed.out_of_stock_events, 1);
    assert_eq!(closed.window_start_unix, 60);
    assert_eq!(agg.current().map(|w| w.out_of_stock_events), Some(0));
}

#[test]
fn window_start_floors_negative_times() {
    let agg = WindowAggregator::new(0, 3600);
    assert_eq!(agg.window_start(-1), -3600);
    assert_eq!(agg.window_start(0), 0);
    assert_eq!(agg.window_start(3599), 0);
}

// ---- model stream assembly ----

fn header(size: u64) -> ModelChunk {
    ModelChunk {
        kind: Some(model_chunk::Kind::Header(ModelHeader {
            manifest: b"{}".to_vec(),
            signature: vec![0; 64],
            weights_size: size,
            ..Default::default()
        })),
    }
}

fn data(bytes: &[u8]) -> ModelChunk {
    ModelChunk {
        kind: Some(model_chunk::Kind::Data(bytes.to_vec())),
    }
}

fn trailer(bytes: &[u8]) -> ModelChunk {
    ModelChunk {
        kind: Some(model_chunk::Kind::Trailer(ModelTrailer {
            sha256: Sha256::digest(bytes).to_vec(),
        })),
    }
}

#[test]
fn a_well_formed_stream_assembles() {
    let mut asm = ModelAssembler::new(100);
    assert_eq!(asm.push(header(6)), Ok(ChunkKind::Header));
    assert_eq!(asm.push(data(b"abc")), Ok(ChunkKind::Data));
    assert_eq!(asm.push(data(b"def")), Ok(ChunkKind::Data));
    assert_eq!(asm.push(trailer(b"abcdef")), Ok(ChunkKind::Trailer));
    let model = asm.finish().expect("complete");
    assert_eq!(model.weights, b"abcdef");
    assert_eq!(model.manifest, b"{}");
}

#[test]
fn streams_that_break_the_protocol_are_refused() {
    let mut asm = ModelAssembler::new(100);
    assert_eq!(asm.push(data(b"x")), Err(StreamError::MissingHeader));
    assert_eq!(
        ModelAssembler::new(100).finish().err(),
        Some(StreamError::MissingHeader)
    );

    let mut asm = ModelAssembler::new(100);
    assert_eq!(
        asm.push(header(101)),
        Err(StreamError::AnnouncedTooLarge {
            announced: 101,
            limit: 100
        })
    );

    let mut asm = ModelAssembler::new(100);
    asm.push(header(4)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert_eq!(
        asm.push(data(b"de")),
        Err(StreamError::Oversize {
            announced: 4,
            received: 5
        })
    );

    let mut asm = ModelAssembler::new(100);
    asm.push(header(4)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert_eq!(
        asm.push(trailer(b"abc")),
        Err(StreamError::SizeMismatch {
            announced: 4,
            received: 3
        })
    );

    let mut asm = ModelAssembler::new(100);
    asm.push(header(3)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert!(matches!(
        asm.push(trailer(b"abd")),
        Err(StreamError::TrailerMismatch { .. })
    ));

    let mut asm = ModelAssembler::new(100);
    asm.push(header(3)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert_eq!(asm.finish().err(), Some(StreamError::MissingTrailer));

    let mut asm = ModelAssembler::new(100);
    asm.push(header(3)).expect("header");
    assert_eq!(asm.push(header(3)), Err(StreamError::DuplicateHeader));

    let mut asm = ModelAssembler::new(100);
    asm.push(header(0)).expect("header");
    asm.push(trailer(b"")).expect("trailer");
    assert_eq!(asm.push(data(b"")), Err(StreamError::ChunkAfterTrailer));
    assert_eq!(
        ModelAssembler::new(1).push(ModelChunk { kind: None }),
        Err(StreamError::EmptyChunk)
    );

    let big = u64::try_from(MAX_CHUNK_BYTES * 4).expect("fits");
    let mut asm = ModelAssembler::new(big);
    asm.push(header(big)).expect("header");
    let chunk = vec![0u8; MAX_CHUNK_BYTES + 1];
    assert_eq!(
        asm.push(data(&chunk)),
        Err(StreamError::ChunkTooLarge(MAX_CHUNK_BYTES + 1))
    );
}
