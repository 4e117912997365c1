//! Simulated store camera: a shelf whose slots sell out and get restocked over time.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::profile::{StoreProfile, store_profile};
use crate::render::{self, Scratch};
use crate::{ShelfCrops, SlotState, derive_seed, mix64, stream};

/// One captured frame: one crop per slot, left to right, labelled with ground truth.
#[derive(Clone, Debug)]
pub struct ShelfFrame {
    pub camera_id: u32,
    pub captured_unix: i64,
    pub crops: ShelfCrops,
}

#[derive(Clone, Debug)]
struct Slot {
    state: SlotState,
    /// The planogram SKU of this slot; restocks bring the same SKU back.
    sku: usize,
    /// Bumped on every state change, so a restocked slot gets a new arrangement.
    epoch: u64,
}

/// One store camera looking at a shelf of `slots` slots over simulated time.
///
/// Slot states follow a two-state Markov chain with the store's
/// `sell_out_per_hour` / `restock_per_hour` rates, whose stationary empty fraction is
/// the store's `empty_rate`. Everything is deterministic in the constructor arguments.
#[derive(Clone, Debug)]
pub struct CameraReplay {
    profile: StoreProfile,
    camera_id: u32,
    start_unix: i64,
    seconds_per_frame: i64,
    frame_index: u64,
    stream_seed: u64,
    rng: StdRng,
    slots: Vec<Slot>,
}

impl CameraReplay {
    /// A camera of `store_index` whose first frame is captured at `start_unix` and each
    /// later frame `seconds_per_frame` seconds after the previous one (a value below
    /// zero is treated as zero: time stands still and no slot changes).
    pub fn new(
        world_seed: u64,
        store_index: u32,
        camera_id: u32,
        slots: usize,
        start_unix: i64,
        seconds_per_frame: i64,
    ) -> Self {
        let profile = store_profile(world_seed, store_index);
        let stream_seed = derive_seed(
            world_seed,
            u64::from(store_index),
            stream::REPLAY,
            u64::from(camera_id),
        );
        let mut rng = StdRng::seed_from_u64(stream_seed);
        let slots = (0..slots)
            .map(|_| Slot {
                state: if rng.random::<f32>() < profile.empty_rate {
                    SlotState::Empty
                } else {
                    SlotState::Stocked
                },
                sku: profile.sample_sku(&mut rng),
                epoch: 0,
            })
            .collect();
        Self {
            profile,
            camera_id,
            start_unix,
            seconds_per_frame: seconds_per_frame.max(0),
            frame_index: 0,
            stream_seed,
            rng,
            slots,
        }
    }

    /// The store profile this camera renders with.
    pub fn profile(&self) -> &StoreProfile {
        &self.profile
    }

    /// The camera id given to [`CameraReplay::new`].
    pub fn camera_id(&self) -> u32 {
        self.camera_id
    }

    /// Number of slots on the shelf.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of frames returned so far.
    pub fn frames_emitted(&self) -> u64 {
        self.frame_index
    }

    /// Current ground-truth state of every slot (what the next frame shows, unless
    /// the next frame is a later one and the chain steps first).
    pub fn slot_states(&self) -> Vec<SlotState> {
        self.slots.iter().map(|s| s.state).collect()
    }

    /// Captures the next frame. The first frame shows the initial shelf at
    /// `start_unix`; every later call first advances time by `seconds_per_frame`
    /// and steps each slot's Markov chain.
    pub fn next_frame(&mut self) -> ShelfFrame {
        if self.frame_index > 0 {
            self.step();
        }
        let captured_unix = self.start_unix.saturating_add(
            i64::try_from(self.frame_index)
                .unwrap_or(i64::MAX)
                .saturating_mul(self.seconds_per_frame),
        );
        let mut crops = ShelfCrops::with_capacity(self.slots.len());
        let mut scratch = Scratch::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let slot_seed = mix64(self.stream_seed ^ mix64(i as u64 + 1));
            let layout_seed = mix64(slot_seed ^ mix64(slot.epoch.wrapping_add(0x1000)));
            let capture_seed = mix64(slot_seed ^ mix64(self.frame_index) ^ 0xC0FF_EE00);
            render::render_crop(
                &self.profile,
                slot.state,
                slot.sku,
                layout_seed,
                capture_seed,
                &mut scratch,
                &mut crops.images,
            );
            crops.labels.push(slot.state.label());
        }
        self.frame_index += 1;
        ShelfFrame {
            camera_id: self.camera_id,
            captured_unix,
            crops,
        }
    }

    fn step(&mut self) {
        let hours = self.seconds_per_frame as f64 / 3600.0;
        let p_sell = 1.0 - (-f64::from(self.profile.sell_out_per_hour) * hours).exp();
        let p_restock = 1.0 - (-f64::from(self.profile.restock_per_hour) * hours).exp();
        for slot in &mut self.slots {
            let u = self.rng.random::<f64>();
            let next = match slot.state {
                SlotState::Stocked if u < p_sell => SlotState::Empty,
                SlotState::Empty if u < p_restock => SlotState::Stocked,
                s => s,
            };
            if next != slot.state {
                slot.state = next;
                slot.epoch += 1;
            }
        }
    }
}
