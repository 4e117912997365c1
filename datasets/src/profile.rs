//! Per-store appearance and stock dynamics.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{derive_seed, stream};

/// Number of SKUs in the synthetic catalogue.
pub const NUM_SKUS: usize = 8;

/// Texture of a store's shelf back panel (visible mostly on empty slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelTexture {
    /// Flat panel.
    Plain,
    /// Pegboard with a grid of dark holes.
    Pegboard,
    /// Vertical slats with dark seams.
    Slats,
}

/// How one store's crops look and how fast its slots change.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreProfile {
    /// The store this profile belongs to (`u32::MAX - k` for unseen test-only stores).
    pub store_index: u32,
    /// Overall exposure multiplier (about `0.72..1.25`).
    pub lighting_gain: f32,
    /// Per-channel RGB multiplier of the store's lighting (about `0.86..1.14`).
    pub colour_tint: [f32; 3],
    /// Vertical light falloff: brightness changes by this fraction from top to bottom.
    pub light_falloff: f32,
    /// Camera offset of the slot in the crop, pixels `[x, y]`.
    pub camera_offset: [f32; 2],
    /// Camera zoom around the crop centre (about `0.9..1.12`).
    pub camera_zoom: f32,
    /// Standard deviation of the gaussian sensor noise, in `[0, 1]` units.
    pub noise_std: f32,
    /// Probability of each catalogue SKU being the product on a slot; sums to 1.
    /// Two or three SKUs dominate.
    pub sku_mix: [f32; NUM_SKUS],
    /// Fraction of this store's slots that are empty (training label rate and the
    /// stationary rate of the replay Markov process).
    pub empty_rate: f32,
    /// Shelf back-panel colour (RGB, before lighting).
    pub back_panel: [f32; 3],
    /// Texture of the back panel.
    pub panel_texture: PanelTexture,
    /// Colour of the shelf's front edge strip (RGB, before lighting).
    pub shelf_edge: [f32; 3],
    /// Height of the shelf edge strip in the crop, pixels.
    pub shelf_edge_height: f32,
    /// Rate at which a stocked slot sells out, per hour (replay).
    pub sell_out_per_hour: f32,
    /// Rate at which an empty slot is restocked, per hour (replay);
    /// `sell_out / (sell_out + restock) == empty_rate`.
    pub restock_per_hour: f32,
}

impl StoreProfile {
    /// Index of the SKU this store stocks most.
    pub fn dominant_sku(&self) -> usize {
        let mut best = 0;
        for (i, &w) in self.sku_mix.iter().enumerate() {
            if w > self.sku_mix.get(best).copied().unwrap_or(0.0) {
                best = i;
            }
        }
        best
    }

    /// Draws a SKU from `sku_mix`.
    pub(crate) fn sample_sku(&self, rng: &mut impl Rng) -> usize {
        let mut x = rng.random::<f32>();
        for (i, &w) in self.sku_mix.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        self.dominant_sku()
    }
}

/// Back-panel palette; several are close to catalogue colours so that products
/// do not always contrast with the panel.
const PANELS: [[f32; 3]; 9] = [
    [0.88, 0.88, 0.85], // white laminate
    [0.68, 0.69, 0.71], // light grey metal
    [0.80, 0.73, 0.58], // beige
    [0.30, 0.30, 0.32], // dark grey
    [0.14, 0.19, 0.34], // navy
    [0.50, 0.35, 0.21], // wood
    [0.11, 0.11, 0.12], // black
    [0.66, 0.79, 0.89], // light blue
    [0.22, 0.42, 0.27], // green
];

const EDGES: [[f32; 3]; 5] = [
    [0.85, 0.85, 0.85],
    [0.20, 0.20, 0.22],
    [0.62, 0.64, 0.66],
    [0.72, 0.18, 0.14],
    [0.16, 0.30, 0.60],
];

/// Deterministic profile of `store_index` in the world `world_seed`.
pub fn store_profile(world_seed: u64, store_index: u32) -> StoreProfile {
    let seed = derive_seed(world_seed, u64::from(store_index), stream::PROFILE, 0);
    profile_from_seed(seed, store_index)
}

/// Profile of the `k`-th unseen store, used only by the test split.
pub(crate) fn unseen_profile(world_seed: u64, k: u32) -> StoreProfile {
    let seed = derive_seed(world_seed, u64::from(k), stream::UNSEEN_PROFILE, 0);
    profile_from_seed(seed, u32::MAX - k)
}

fn profile_from_seed(seed: u64, store_index: u32) -> StoreProfile {
    let mut rng = StdRng::seed_from_u64(seed);

    let lighting_gain = rng.random_range(0.72f32..1.25);
    let mut colour_tint = [1.0f32; 3];
    for t in &mut colour_tint {
        *t = rng.random_range(0.86f32..1.14);
    }
    let light_falloff = rng.random_range(-0.25f32..0.25);
    let camera_offset = [
        rng.random_range(-3.0f32..3.0),
        rng.random_range(-3.0f32..3.0),
    ];
    let camera_zoom = rng.random_range(0.9f32..1.12);
    let noise_std = rng.random_range(0.01f32..0.05);

    let mut sku_mix = [0.0f32; NUM_SKUS];
    for w in &mut sku_mix {
        *w = rng.random_range(0.02f32..0.12);
    }
    let dominant = rng.random_range(2usize..=3);
    for _ in 0..dominant {
        let i = rng.random_range(0..NUM_SKUS);
        if let Some(w) = sku_mix.get_mut(i) {
            *w += rng.random_range(0.6f32..2.0);
        }
    }
    let total: f32 = sku_mix.iter().sum();
    for w in &mut sku_mix {
        *w /= total;
    }

    let empty_rate = rng.random_range(0.12f32..0.55);

    let panel = PANELS
        .get(rng.random_range(0..PANELS.len()))
        .copied()
        .unwrap_or([0.5; 3]);
    let mut back_panel = [0.0f32; 3];
    for (c, p) in back_panel.iter_mut().zip(panel) {
        *c = (p + rng.random_range(-0.05f32..0.05)).clamp(0.02, 0.98);
    }
    let panel_texture = match rng.random_range(0..3) {
        0 => PanelTexture::Plain,
        1 => PanelTexture::Pegboard,
        _ => PanelTexture::Slats,
    };
    let edge = EDGES
        .get(rng.random_range(0..EDGES.len()))
        .copied()
        .unwrap_or([0.5; 3]);
    let mut shelf_edge = [0.0f32; 3];
    for (c, e) in shelf_edge.iter_mut().zip(edge) {
        *c = (e + rng.random_range(-0.04f32..0.04)).clamp(0.02, 0.98);
    }
    let shelf_edge_height = rng.random_range(7.0f32..12.0);

    let sell_out_per_hour = rng.random_range(0.3f32..1.5);
    let restock_per_hour = sell_out_per_hour * (1.0 - empty_rate) / empty_rate;

    StoreProfile {
        store_index,
        lighting_gain,
        colour_tint,
        light_falloff,
        camera_offset,
        camera_zoom,
        noise_std,
        sku_mix,
        empty_rate,
        back_panel,
        panel_texture,
        shelf_edge,
        shelf_edge_height,
        sell_out_per_hour,
        restock_per_hour,
    }
}
