//! Software renderer for synthetic shelf-slot crops.
//!
//! A slot is drawn in a 64x64 "scene" frame (back panel, shelf above, shelf deck and
//! edge strip, products or empty-slot clutter), mapped through the store camera
//! (offset + zoom, with per-capture jitter), lit (gain, tint, gradients) and noised.
//! Coverage of rectangles is computed exactly per pixel, ellipses use a one-pixel
//! soft edge, so shapes stay smooth under sub-pixel camera jitter.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::profile::{NUM_SKUS, PanelTexture, StoreProfile};
use crate::{IMAGE_SIZE, SlotState, mix64};

const N: usize = IMAGE_SIZE;
const NF: f32 = IMAGE_SIZE as f32;
const HALF: f32 = NF / 2.0;

type Rgb = [f32; 3];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Box,
    Can,
    Bottle,
}

struct Sku {
    body: Rgb,
    stripe: Rgb,
    accent: Rgb,
    shape: Shape,
    width: (f32, f32),
    height: (f32, f32),
    /// Top of the label stripe as a fraction of the product height.
    stripe_at: f32,
}

/// The catalogue: dark, light, and panel-like products, so that brightness alone
/// does not tell a stocked slot from an empty one.
const CATALOGUE: [Sku; NUM_SKUS] = [
    // cola can: nearly black-red
    Sku {
        body: [0.22, 0.04, 0.05],
        stripe: [0.90, 0.90, 0.90],
        accent: [0.80, 0.10, 0.10],
        shape: Shape::Can,
        width: (10.0, 13.0),
        height: (20.0, 27.0),
        stripe_at: 0.42,
    },
    // coffee box: very dark brown
    Sku {
        body: [0.13, 0.10, 0.08],
        stripe: [0.78, 0.62, 0.25],
        accent: [0.90, 0.85, 0.70],
        shape: Shape::Box,
        width: (14.0, 20.0),
        height: (30.0, 40.0),
        stripe_at: 0.30,
    },
    // milk bottle: white
    Sku {
        body: [0.93, 0.93, 0.91],
        stripe: [0.20, 0.40, 0.80],
        accent: [0.85, 0.20, 0.20],
        shape: Shape::Bottle,
        width: (11.0, 14.0),
        height: (34.0, 44.0),
        stripe_at: 0.55,
    },
    // cereal box: yellow-orange
    Sku {
        body: [0.94, 0.68, 0.14],
        stripe: [0.80, 0.15, 0.12],
        accent: [0.95, 0.95, 0.90],
        shape: Shape::Box,
        width: (16.0, 22.0),
        height: (36.0, 46.0),
        stripe_at: 0.25,
    },
    // water bottle: pale blue, close to the light-blue panel
    Sku {
        body: [0.68, 0.80, 0.90],
        stripe: [0.15, 0.35, 0.75],
        accent: [0.90, 0.90, 0.95],
        shape: Shape::Bottle,
        width: (9.0, 12.0),
        height: (32.0, 42.0),
        stripe_at: 0.50,
    },
    // soup can: red with a cream label
    Sku {
        body: [0.74, 0.20, 0.15],
        stripe: [0.92, 0.90, 0.86],
        accent: [0.80, 0.70, 0.30],
        shape: Shape::Can,
        width: (11.0, 15.0),
        height: (16.0, 22.0),
        stripe_at: 0.50,
    },
    // detergent box: green, close to the green panel
    Sku {
        body: [0.20, 0.55, 0.30],
        stripe: [0.95, 0.85, 0.20],
        accent: [0.10, 0.20, 0.60],
        shape: Shape::Box,
        width: (15.0, 22.0),
        height: (28.0, 38.0),
        stripe_at: 0.40,
    },
    // tea box: beige, close to the beige panel
    Sku {
        body: [0.80, 0.73, 0.58],
        stripe: [0.45, 0.30, 0.18],
        accent: [0.30, 0.50, 0.25],
        shape: Shape::Box,
        width: (13.0, 18.0),
        height: (22.0, 30.0),
        stripe_at: 0.35,
    },
];

fn sku_at(i: usize) -> &'static Sku {
    CATALOGUE.get(i % NUM_SKUS).unwrap_or(&CATALOGUE[0])
}

fn scale(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Length of the overlap of pixel `[p, p + 1)` with `[a, b)`.
fn overlap(p: f32, a: f32, b: f32) -> f32 {
    ((p + 1.0).min(b) - p.max(a)).max(0.0)
}

/// Reusable buffers for rendering.
pub(crate) struct Scratch {
    px: Vec<Rgb>,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            px: vec![[0.0; 3]; N * N],
        }
    }
}

/// Scene-to-image mapping plus the pixel buffer (HWC).
struct Canvas<'a> {
    px: &'a mut [Rgb],
    zoom: f32,
    ox: f32,
    oy: f32,
}

impl Canvas<'_> {
    fn tx(&self, u: f32) -> f32 {
        (u - HALF) * self.zoom + HALF + self.ox
    }

    fn ty(&self, v: f32) -> f32 {
        (v - HALF) * self.zoom + HALF + self.oy
    }

    /// Visits the pixels a scene rectangle covers: `f(pixel, coverage, s, t)` with
    /// `(s, t)` the pixel centre's position across the rectangle in `[0, 1]`.
    fn for_rect(
        &mut self,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        mut f: impl FnMut(&mut Rgb, f32, f32, f32),
    ) {
        let (ix0, ix1, iy0, iy1) = (self.tx(x0), self.tx(x1), self.ty(y0), self.ty(y1));
        if ix1 <= ix0 || iy1 <= iy0 {
            return;
        }
        let px0 = ix0.floor().clamp(0.0, NF) as usize;
        let px1 = ix1.ceil().clamp(0.0, NF) as usize;
        let py0 = iy0.floor().clamp(0.0, NF) as usize;
        let py1 = iy1.ceil().clamp(0.0, NF) as usize;
        let (inv_w, inv_h) = (1.0 / (ix1 - ix0), 1.0 / (iy1 - iy0));
        for py in py0..py1 {
            let fy = py as f32;
            let cy = overlap(fy, iy0, iy1);
            if cy <= 0.0 {
                continue;
            }
            let t = ((fy + 0.5 - iy0) * inv_h).clamp(0.0, 1.0);
            let row = py * N;
            for px in px0..px1 {
                let fx = px as f32;
                let cov = overlap(fx, ix0, ix1) * cy;
                if cov <= 0.0 {
                    continue;
                }
                let s = ((fx + 0.5 - ix0) * inv_w).clamp(0.0, 1.0);
                if let Some(p) = self.px.get_mut(row + px) {
                    f(p, cov, s, t);
                }
            }
        }
    }

    /// Paints a rectangle whose colour may vary across it (`paint(s, t)`).
    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, paint: impl Fn(f32, f32) -> Rgb) {
        self.for_rect(x0, y0, x1, y1, |p, cov, s, t| {
            let c = paint(s, t);
            for (v, c) in p.iter_mut().zip(c) {
                *v += (c - *v) * cov;
            }
        });
    }

    fn fill(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb) {
        self.rect(x0, y0, x1, y1, |_, _| c);
    }

    /// Multiplies a rectangle by `factor(s, t)` (shadows, light).
    fn shade(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, factor: impl Fn(f32, f32) -> f32) {
        self.for_rect(x0, y0, x1, y1, |p, cov, s, t| {
            let m = 1.0 - cov * (1.0 - factor(s, t));
            for v in p.iter_mut() {
                *v *= m;
            }
        });
    }

    /// Visits an ellipse with a soft one-pixel edge: `f(pixel, coverage, r)` with `r`
    /// the normalised radius of the pixel centre.
    fn for_ellipse(
        &mut self,
        cx: f32,
        cy: f32,
        rx: f32,
        ry: f32,
        mut f: impl FnMut(&mut Rgb, f32, f32),
    ) {
        let (icx, icy) = (self.tx(cx), self.ty(cy));
        let (irx, iry) = (rx * self.zoom, ry * self.zoom);
        if irx <= 0.0 || iry <= 0.0 {
            return;
        }
        let px0 = (icx - irx - 1.0).floor().clamp(0.0, NF) as usize;
        let px1 = (icx + irx + 1.0).ceil().clamp(0.0, NF) as usize;
        let py0 = (icy - iry - 1.0).floor().clamp(0.0, NF) as usize;
        let py1 = (icy + iry + 1.0).ceil().clamp(0.0, NF) as usize;
        let rmin = irx.min(iry);
        for py in py0..py1 {
            let dy = (py as f32 + 0.5 - icy) / iry;
            for px in px0..px1 {
                let dx = (px as f32 + 0.5 - icx) / irx;
                let r = (dx * dx + dy * dy).sqrt();
                let cov = (0.5 - (r - 1.0) * rmin).clamp(0.0, 1.0);
                if cov <= 0.0 {
                    continue;
                }
                if let Some(p) = self.px.get_mut(py * N + px) {
                    f(p, cov, r);
                }
            }
        }
    }

    fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, c: Rgb) {
        self.for_ellipse(cx, cy, rx, ry, |p, cov, _| {
            for (v, c) in p.iter_mut().zip(c) {
                *v += (c - *v) * cov;
            }
        });
    }

    /// Darkens an ellipse, strongest at its centre.
    fn shadow_blob(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, depth: f32) {
        self.for_ellipse(cx, cy, rx, ry, |p, cov, r| {
            let m = 1.0 - cov * depth * (1.0 - r * r).max(0.0);
            for v in p.iter_mut() {
                *v *= m;
            }
        });
    }
}

/// Shelf geometry of one crop, in scene coordinates.
struct Geometry {
    /// Bottom of the dark underside of the shelf above.
    ceiling: f32,
    /// Top of the visible shelf deck.
    deck_top: f32,
    /// Top of the shelf's front edge strip.
    edge_top: f32,
    /// Where products stand.
    floor: f32,
}

/// Cylindrical shading across a can or bottle, with a specular highlight.
fn cylinder(c: Rgb, s: f32, highlight_at: f32) -> Rgb {
    let f = 0.5 + 0.6 * (std::f32::consts::PI * s).sin();
    let d = (s - highlight_at) / 0.07;
    let spec = 0.3 * (-d * d).exp();
    [c[0] * f + spec, c[1] * f + spec, c[2] * f + spec]
}

/// Side lighting across a flat box face, with dark vertical edges.
fn box_face(c: Rgb, s: f32, lit_from_left: bool) -> Rgb {
    let along = if lit_from_left { 1.0 - s } else { s };
    let mut f = 0.86 + 0.22 * along;
    if !(0.07..=0.93).contains(&s) {
        f *= 0.68;
    }
    scale(c, f)
}

/// Draws one product standing at `floor`, left edge `x0`. `dim` darkens it (rows behind).
#[allow(clippy::too_many_arguments)]
fn draw_product(
    cv: &mut Canvas,
    sku: &Sku,
    x0: f32,
    w: f32,
    h: f32,
    floor: f32,
    dim: f32,
    lit_from_left: bool,
    highlight_at: f32,
) {
    let top = floor - h;
    let x1 = x0 + w;
    let body = scale(sku.body, dim);
    let stripe = scale(sku.stripe, dim);
    let accent = scale(sku.accent, dim);
    // Contact shadow on the panel behind.
    cv.shade(x0 + 1.0, top + 2.0, x1 + 2.5, floor, |_, t| {
        0.55 + 0.2 * (1.0 - t)
    });
    let sy0 = top + h * sku.stripe_at;
    match sku.shape {
        Shape::Box => {
            cv.rect(x0, top, x1, floor, |s, t| {
                let c = box_face(body, s, lit_from_left);
                if t < 0.03 { scale(c, 1.12) } else { c }
            });
            cv.rect(x0, sy0, x1, sy0 + h * 0.16, |s, _| {
                box_face(stripe, s, lit_from_left)
            });
            cv.ellipse(x0 + w * 0.5, sy0 + h * 0.34, w * 0.26, h * 0.08, accent);
        }
        Shape::Can => {
            cv.rect(x0, top, x1, floor, |s, _| cylinder(body, s, highlight_at));
            cv.rect(x0, sy0, x1, sy0 + h * 0.22, |s, _| {
                cylinder(stripe, s, highlight_at)
            });
            cv.rect(x0, sy0 + h * 0.22, x1, sy0 + h * 0.27, |s, _| {
                cylinder(accent, s, highlight_at)
            });
            let rim = scale([0.76, 0.76, 0.79], dim);
            cv.ellipse(x0 + w * 0.5, top, w * 0.5, 1.4, rim);
            cv.ellipse(x0 + w * 0.5, top + 0.3, w * 0.32, 0.8, scale(rim, 0.8));
        }
        Shape::Bottle => {
            let cx = x0 + w * 0.5;
            let shoulder = top + h * 0.32;
            cv.rect(cx - w * 0.2, top, cx + w * 0.2, top + h * 0.08, |s, _| {
                cylinder(accent, s, highlight_at)
            });
            cv.rect(
                cx - w * 0.16,
                top + h * 0.08,
                cx + w * 0.16,
                shoulder,
                |s, _| cylinder(body, s, highlight_at),
            );
            cv.ellipse(cx, shoulder, w * 0.5, h * 0.1, scale(body, 0.9));
            cv.rect(x0, shoulder, x1, floor, |s, _| {
                cylinder(body, s, highlight_at)
            });
            cv.rect(x0, sy0, x1, sy0 + h * 0.2, |s, _| {
                cylinder(stripe, s, highlight_at)
            });
        }
    }
}

/// A product lying on its side (an empty slot's stray item): low and wide.
fn draw_fallen(cv: &mut Canvas, sku: &Sku, x0: f32, w: f32, h: f32, floor: f32) {
    cv.shade(x0 + 1.0, floor - h + 1.0, x0 + w + 2.0, floor, |_, _| 0.6);
    cv.rect(x0, floor - h, x0 + w, floor, |_, t| {
        cylinder(sku.body, t, 0.3)
    });
    cv.rect(x0 + w * 0.35, floor - h, x0 + w * 0.6, floor, |_, t| {
        cylinder(sku.stripe, t, 0.3)
    });
}

/// Neighbouring slots' products peeking in at the crop edges (either class).
fn draw_neighbours(cv: &mut Canvas, rng: &mut StdRng, profile: &StoreProfile, g: &Geometry) {
    for left in [true, false] {
        if rng.random::<f32>() >= 0.3 {
            continue;
        }
        let sku = sku_at(profile.sample_sku(rng));
        let w = rng.random_range(sku.width.0..sku.width.1);
        let h = rng.random_range(sku.height.0..sku.height.1);
        let visible = rng.random_range(2.0f32..7.0);
        let x0 = if left { visible - w } else { NF - visible };
        draw_product(cv, sku, x0, w, h, g.floor, 1.0, rng.random(), 0.3);
    }
}

fn draw_background(cv: &mut Canvas, rng: &mut StdRng, profile: &StoreProfile, g: &Geometry) {
    let panel = scale(profile.back_panel, rng.random_range(0.9f32..1.1));
    let panel_dark = scale(panel, 0.55);
    let pad = 24.0;
    cv.fill(-pad, -pad, NF + pad, NF + pad, panel);
    match profile.panel_texture {
        PanelTexture::Plain => {}
        PanelTexture::Pegboard => {
            let phase_x = (profile.store_index % 6) as f32;
            let mut y = g.ceiling + 4.0;
            while y < g.deck_top - 1.0 {
                let mut x = phase_x - 6.0;
                while x < NF + 6.0 {
                    cv.ellipse(x, y, 0.9, 0.9, panel_dark);
                    x += 6.0;
                }
                y += 6.0;
            }
        }
        PanelTexture::Slats => {
            let phase_x = (profile.store_index % 9) as f32;
            let mut x = phase_x - 9.0;
            while x < NF + 9.0 {
                cv.fill(x, -pad, x + 0.8, NF + pad, panel_dark);
                x += 9.0;
            }
        }
    }
    // Shadow under the shelf above.
    let depth = rng.random_range(0.45f32..0.8);
    cv.shade(
        -pad,
        g.ceiling,
        NF + pad,
        g.ceiling + rng.random_range(6.0f32..14.0),
        |_, t| depth + (1.0 - depth) * t,
    );
    // Darker back of the shelf near the deck.
    let back = rng.random_range(0.7f32..0.95);
    cv.shade(-pad, g.deck_top - 7.0, NF + pad, g.deck_top, |_, t| {
        1.0 - (1.0 - back) * t
    });
    // Wire dividers at the slot boundaries.
    if rng.random::<f32>() < 0.3 {
        let wire = [0.7, 0.7, 0.72];
        for x in [
            rng.random_range(0.0f32..3.0),
            rng.random_range(60.0f32..63.0),
        ] {
            cv.fill(x, g.deck_top - 14.0, x + 0.7, g.deck_top + 1.0, wire);
        }
    }
    // Shelf deck, seen from slightly above.
    let deck = lerp(profile.shelf_edge, [0.8, 0.8, 0.8], 0.35);
    cv.rect(-pad, g.deck_top, NF + pad, g.edge_top, |_, t| {
        scale(deck, 0.75 + 0.3 * t)
    });
}

fn draw_foreground(cv: &mut Canvas, rng: &mut StdRng, profile: &StoreProfile, g: &Geometry) {
    let pad = 24.0;
    // Front edge strip with a lit lip.
    cv.fill(-pad, g.edge_top, NF + pad, NF + pad, profile.shelf_edge);
    cv.fill(
        -pad,
        g.edge_top,
        NF + pad,
        g.edge_top + 1.0,
        lerp(profile.shelf_edge, [1.0; 3], 0.35),
    );
    // Price tag on the edge.
    if rng.random::<f32>() < 0.75 {
        let tag = match rng.random_range(0..3) {
            0 => [0.95, 0.95, 0.93],
            1 => [0.97, 0.88, 0.25],
            _ => [0.95, 0.55, 0.45],
        };
        let w = rng.random_range(10.0f32..18.0);
        let x0 = rng.random_range(0.0f32..(NF - w));
        let y0 = g.edge_top + 1.5;
        let y1 = (y0 + rng.random_range(5.0f32..8.0)).min(NF - 0.5);
        cv.fill(x0, y0, x0 + w, y1, tag);
        let ink = [0.1, 0.1, 0.12];
        cv.fill(x0 + 1.5, y0 + 1.2, x0 + w * 0.6, y0 + 2.0, ink);
        cv.fill(x0 + w * 0.55, y1 - 3.2, x0 + w - 1.5, y1 - 1.0, ink);
    }
    // Underside of the shelf above.
    cv.rect(-pad, -pad, NF + pad, g.ceiling, |_, t| {
        scale(profile.shelf_edge, 0.35 + 0.2 * t)
    });
}

fn draw_stocked(cv: &mut Canvas, rng: &mut StdRng, sku: &Sku, g: &Geometry) {
    let h_base = rng.random_range(sku.height.0..sku.height.1);
    let lit_from_left = rng.random();
    let highlight_at = rng.random_range(0.22f32..0.4);
    let back_row = rng.random::<f32>() < 0.35;
    let mut facings: Vec<(f32, f32, f32)> = Vec::with_capacity(4);
    if rng.random::<f32>() < 0.7 {
        // Full facings from the left.
        let mut x = rng.random_range(1.0f32..7.0);
        while facings.len() < 4 {
            let w = rng.random_range(sku.width.0..sku.width.1);
            if x + w > NF - 1.0 && !facings.is_empty() {
                break;
            }
            facings.push((x, w, h_base + rng.random_range(-1.0f32..1.0)));
            x += w + rng.random_range(0.0f32..2.5);
        }
    } else {
        // Low stock: one or two facings anywhere.
        let count = rng.random_range(1..=2);
        for _ in 0..count {
            let w = rng.random_range(sku.width.0..sku.width.1);
            let x = rng.random_range(2.0f32..(NF - 2.0 - w));
            facings.push((x, w, h_base + rng.random_range(-1.0f32..1.0)));
        }
        facings.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if back_row {
        for &(x, w, h) in &facings {
            draw_product(
                cv,
                sku,
                x + 1.0,
                w,
                h,
                g.floor - 2.5,
                0.62,
                lit_from_left,
                highlight_at,
            );
        }
    }
    for &(x, w, h) in &facings {
        draw_product(cv, sku, x, w, h, g.floor, 1.0, lit_from_left, highlight_at);
    }
}

fn draw_empty(cv: &mut Canvas, rng: &mut StdRng, profile: &StoreProfile, sku: &Sku, g: &Geometry) {
    // Shadow blob on the panel or deck.
    if rng.random::<f32>() < 0.4 {
        cv.shadow_blob(
            rng.random_range(10.0f32..54.0),
            rng.random_range((g.ceiling + 10.0)..g.floor),
            rng.random_range(8.0f32..22.0),
            rng.random_range(4.0f32..12.0),
            rng.random_range(0.3f32..0.6),
        );
    }
    // A stray item lying on the deck.
    if rng.random::<f32>() < 0.3 {
        let stray = if rng.random::<f32>() < 0.6 {
            sku
        } else {
            sku_at(profile.sample_sku(rng))
        };
        let w = rng.random_range(9.0f32..18.0);
        let h = rng.random_range(4.0f32..7.0);
        let x0 = rng.random_range(2.0f32..(NF - 2.0 - w));
        draw_fallen(cv, stray, x0, w, h, g.floor);
    }
    // An "out of stock" card hanging on the panel.
    if rng.random::<f32>() < 0.15 {
        let c = if rng.random() {
            [0.9, 0.15, 0.12]
        } else {
            [0.97, 0.9, 0.3]
        };
        let x0 = rng.random_range(8.0f32..46.0);
        let y0 = rng.random_range((g.ceiling + 6.0)..(g.ceiling + 22.0));
        cv.fill(x0, y0, x0 + 10.0, y0 + 6.0, c);
        cv.fill(x0 + 2.0, y0 + 2.5, x0 + 8.0, y0 + 3.5, [0.95, 0.95, 0.95]);
    }
}

/// Renders one crop and appends its CHW values (in `[0, 1]`) to `out`.
///
/// `layout_seed` fixes what is on the shelf (facings, clutter, tags), `capture_seed`
/// the capture (camera jitter, exposure, noise), so a replay can re-photograph an
/// unchanged slot.
pub(crate) fn render_crop(
    profile: &StoreProfile,
    state: SlotState,
    sku: usize,
    layout_seed: u64,
    capture_seed: u64,
    scratch: &mut Scratch,
    out: &mut Vec<f32>,
) {
    let mut cap = StdRng::seed_from_u64(capture_seed);
    let mut lay = StdRng::seed_from_u64(layout_seed);

    let mut cv = Canvas {
        px: &mut scratch.px,
        zoom: profile.camera_zoom * cap.random_range(0.97f32..1.03),
        ox: profile.camera_offset[0] + cap.random_range(-1.2f32..1.2),
        oy: profile.camera_offset[1] + cap.random_range(-1.2f32..1.2),
    };

    let edge_h = profile.shelf_edge_height + lay.random_range(-1.0f32..1.0);
    let edge_top = NF - edge_h;
    let deck_h = lay.random_range(2.0f32..5.0);
    let g = Geometry {
        ceiling: lay.random_range(1.0f32..6.0),
        deck_top: edge_top - deck_h,
        edge_top,
        floor: edge_top - deck_h * 0.35,
    };
    let sku_ref = sku_at(sku);

    draw_background(&mut cv, &mut lay, profile, &g);
    match state {
        SlotState::Stocked => draw_stocked(&mut cv, &mut lay, sku_ref, &g),
        SlotState::Empty => draw_empty(&mut cv, &mut lay, profile, sku_ref, &g),
    }
    draw_neighbours(&mut cv, &mut lay, profile, &g);
    draw_foreground(&mut cv, &mut lay, profile, &g);

    // Lighting, sensor noise, clamp; HWC -> CHW.
    let gain = profile.lighting_gain * cap.random_range(0.9f32..1.1);
    let side = cap.random_range(-0.15f32..0.15);
    let falloff = profile.light_falloff;
    let sigma = profile.noise_std * 3f32.sqrt();
    let mut noise = FastRng(mix64(capture_seed ^ 0x4E_4F49_5345));
    out.reserve(crate::PIXELS_PER_IMAGE);
    for (ch, tint) in profile.colour_tint.iter().enumerate() {
        for y in 0..N {
            let light_y = gain * tint * (1.0 + falloff * (y as f32 / (NF - 1.0) - 0.5));
            let row = y * N;
            for x in 0..N {
                let light = light_y * (1.0 + side * (x as f32 / (NF - 1.0) - 0.5));
                let v = cv
                    .px
                    .get(row + x)
                    .and_then(|p| p.get(ch))
                    .copied()
                    .unwrap_or(0.0);
                let value = v * light + sigma * noise.gaussianish();
                out.push(if value.is_finite() {
                    value.clamp(0.0, 1.0)
                } else {
                    0.0
                });
            }
        }
    }
}

/// SplitMix64 stream for per-pixel noise (much cheaper than `StdRng` per sample).
struct FastRng(u64);

impl FastRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Irwin-Hall sum of four uniforms, centred: variance 1/3 (scale by sqrt 3 for 1).
    fn gaussianish(&mut self) -> f32 {
        let r = self.next_u64();
        let sum = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        sum as f32 * (1.0 / 65536.0) - 2.0
    }
}
