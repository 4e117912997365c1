//! Per-store feature shift: every store sees the same kind of object under its own light and
//! from its own camera angle.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::PartitionError;
use crate::real::ImageSet;
use crate::{derive_seed, stream};

/// How one store's camera changes an image: a photometric change (exposure, contrast, colour
/// of the light) after a geometric one (rotation, shear and zoom about the image centre).
///
/// [`FeatureShift::IDENTITY`] changes nothing; [`FeatureShift::for_store`] draws a store's shift.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureShift {
    /// Exposure gain on every channel (1 = unchanged).
    pub brightness: f32,
    /// Contrast about mid-grey 0.5 (1 = unchanged, below 1 washes the image out).
    pub contrast: f32,
    /// Per-channel gain of the store's light, RGB. Images that do not have three channels
    /// get the mean of the three (a grey sensor sees a tinted light as brighter or darker).
    pub tint: [f32; 3],
    /// Camera roll about the image centre, in degrees; positive turns the content clockwise
    /// as displayed (rows run downwards).
    pub rotation_deg: f32,
    /// Horizontal shear: content `dy` rows below the centre moves `shear * dy` pixels right.
    pub shear: f32,
    /// Magnification about the centre (1 = unchanged, above 1 zooms in).
    pub zoom: f32,
}

impl Default for FeatureShift {
    fn default() -> Self {
        Self::IDENTITY
    }
}

/// Bilinear taps of one output pixel: the four source pixels (offsets in a plane) and the
/// fractional position between them.
#[derive(Clone, Copy)]
struct Tap {
    top_left: usize,
    top_right: usize,
    bottom_left: usize,
    bottom_right: usize,
    fx: f32,
    fy: f32,
}

impl FeatureShift {
    /// The shift that leaves images unchanged.
    pub const IDENTITY: Self = Self {
        brightness: 1.0,
        contrast: 1.0,
        tint: [1.0; 3],
        rotation_deg: 0.0,
        shear: 0.0,
        zoom: 1.0,
    };

    /// The shift of store `store_index`, deterministic in `(seed, store_index)`. Ranges are
    /// what a store's lighting and a shelf camera's mounting plausibly give, close to those
    /// of the synthetic crops' [`crate::StoreProfile`]: brightness `0.75..1.25`, contrast
    /// `0.8..1.2`, tint `0.9..1.1` per channel, rotation `±8°`, shear `±0.1`, zoom `0.92..1.08`.
    pub fn for_store(seed: u64, store_index: u32) -> Self {
        let store_seed = derive_seed(seed, u64::from(store_index), stream::FEATURE_SHIFT, 0);
        let mut rng = StdRng::seed_from_u64(store_seed);
        Self {
            brightness: rng.random_range(0.75..1.25),
            contrast: rng.random_range(0.8..1.2),
            tint: [(); 3].map(|()| rng.random_range(0.9..1.1)),
            rotation_deg: rng.random_range(-8.0..8.0),
            shear: rng.random_range(-0.1..0.1),
            zoom: rng.random_range(0.92..1.08),
        }
    }

    /// Whether the geometric part is the identity (no resampling needed).
    fn keeps_geometry(&self) -> bool {
        self.rotation_deg == 0.0 && self.shear == 0.0 && self.zoom == 1.0
    }

    /// Applies the shift in place to `images`: whole `channels x height x width` CHW images, one
    /// after another. Geometry is resampled bilinearly, clamping at the edges (the border
    /// pixels extend outwards); values end up in `[0, 1]`. [`FeatureShift::IDENTITY`] leaves
    /// every value bit-for-bit unchanged. Refuses non-finite parameters and a zoom `<= 0`.
    pub fn apply(
        &self,
        images: &mut [f32],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<(), PartitionError> {
        let finite = [
            self.brightness,
            self.contrast,
            self.rotation_deg,
            self.shear,
            self.zoom,
        ]
        .iter()
        .chain(&self.tint)
        .all(|v| v.is_finite());
        if !finite || self.zoom <= 0.0 {
            return Err(PartitionError::InvalidFeatureShift(format!("{self:?}")));
        }
        let shape_error = || PartitionError::ImageShape {
            values: images.len(),
            channels,
            height,
            width,
        };
        let plane = height.checked_mul(width).filter(|&p| p > 0);
        let per_image = plane
            .and_then(|p| p.checked_mul(channels))
            .filter(|&n| n > 0);
        let (Some(plane), Some(per_image)) = (plane, per_image) else {
            return Err(shape_error());
        };
        if !images.len().is_multiple_of(per_image) {
            return Err(shape_error());
        }
        if !self.keeps_geometry() {
            let taps = self.taps(height, width);
            let mut source = vec![0.0f32; plane];
            for values in images.chunks_exact_mut(plane) {
                source.copy_from_slice(values);
                for (out, tap) in values.iter_mut().zip(&taps) {
                    *out = tap.sample(&source);
                }
            }
        }
        let mean_tint = self.tint.iter().sum::<f32>() / 3.0;
        let offset = 0.5 * (1.0 - self.contrast);
        for (index, values) in images.chunks_exact_mut(plane).enumerate() {
            let tint = match channels {
                3 => self
                    .tint
                    .get(index % channels)
                    .copied()
                    .unwrap_or(mean_tint),
                _ => mean_tint,
            };
            let gain = self.brightness * tint;
            for v in values {
                *v = ((*v * self.contrast + offset) * gain).clamp(0.0, 1.0);
            }
        }
        Ok(())
    }

    /// Applies the shift to every image of `set` ([`FeatureShift::apply`]).
    pub fn apply_to_set(&self, set: &mut ImageSet) -> Result<(), PartitionError> {
        self.apply(&mut set.images, set.channels, set.height, set.width)
    }

    /// Where every output pixel samples the source: the inverse of
    /// `destination = zoom * rotation * shear * source`, in coordinates about the centre.
    fn taps(&self, height: usize, width: usize) -> Vec<Tap> {
        let (sin, cos) = self.rotation_deg.to_radians().sin_cos();
        let (cx, cy) = ((width as f32 - 1.0) / 2.0, (height as f32 - 1.0) / 2.0);
        let (max_x, max_y) = ((width - 1) as f32, (height - 1) as f32);
        let mut taps = Vec::with_capacity(height * width);
        for y in 0..height {
            for x in 0..width {
                let (qx, qy) = (x as f32 - cx, y as f32 - cy);
                // Undo the rotation, then the shear, then the zoom.
                let (rx, ry) = (cos * qx + sin * qy, -sin * qx + cos * qy);
                let (px, py) = ((rx - self.shear * ry) / self.zoom, ry / self.zoom);
                let sx = (px + cx).clamp(0.0, max_x);
                let sy = (py + cy).clamp(0.0, max_y);
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
                taps.push(Tap {
                    top_left: y0 * width + x0,
                    top_right: y0 * width + x1,
                    bottom_left: y1 * width + x0,
                    bottom_right: y1 * width + x1,
                    fx: (sx - x0 as f32).clamp(0.0, 1.0),
                    fy: (sy - y0 as f32).clamp(0.0, 1.0),
                });
            }
        }
        taps
    }
}

impl Tap {
    fn sample(&self, plane: &[f32]) -> f32 {
        let at = |i: usize| plane.get(i).copied().unwrap_or(0.0);
        let top = at(self.top_left) * (1.0 - self.fx) + at(self.top_right) * self.fx;
        let bottom = at(self.bottom_left) * (1.0 - self.fx) + at(self.bottom_right) * self.fx;
        top * (1.0 - self.fy) + bottom * self.fy
    }
}

/// The images of every store: `shares[s]` (e.g. from [`super::partition_iid`] or
/// [`super::partition_dirichlet`]) taken from `set`, then shifted by
/// [`FeatureShift::for_store`]`(seed, s)`. Combines label skew (the shares) with feature
/// shift (the store's camera).
pub fn store_sets_with_feature_shift(
    set: &ImageSet,
    shares: &[Vec<usize>],
    seed: u64,
) -> Result<Vec<ImageSet>, PartitionError> {
    let mut stores = Vec::with_capacity(shares.len());
    for (store_index, share) in (0u32..).zip(shares) {
        let mut store_set = set.subset(share)?;
        FeatureShift::for_store(seed, store_index).apply_to_set(&mut store_set)?;
        stores.push(store_set);
    }
    Ok(stores)
}

#[cfg(test)]
mod feature_shift_tests {
    use super::*;

    const SIDE: usize = 21;

    /// An RGB test card: smooth gradients plus a bright square off-centre.
    fn test_card(n: usize) -> Vec<f32> {
        let mut images = Vec::new();
        for i in 0..n {
            for c in 0..3 {
                for y in 0..SIDE {
                    for x in 0..SIDE {
                        let base = (x + 2 * y + 7 * c + 3 * i) as f32 / (4 * SIDE) as f32;
                        let square = (3..8).contains(&x) && (4..9).contains(&y);
                        images.push(if square { 0.95 } else { base.min(1.0) });
                    }
                }
            }
        }
        images
    }

    fn grey_with(points: &[(usize, usize)]) -> Vec<f32> {
        let mut image = vec![0.0f32; SIDE * SIDE];
        for &(x, y) in points {
            image[y * SIDE + x] = 1.0;
        }
        image
    }

    #[test]
    fn identity_leaves_images_unchanged() {
        let original = test_card(2);
        let mut images = original.clone();
        FeatureShift::IDENTITY
            .apply(&mut images, 3, SIDE, SIDE)
            .expect("shape");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&images), bits(&original));
        assert_eq!(FeatureShift::default(), FeatureShift::IDENTITY);
    }

    #[test]
    fn store_shifts_are_seeded_and_differ_between_stores() {
        assert_eq!(FeatureShift::for_store(7, 3), FeatureShift::for_store(7, 3));
        assert_ne!(FeatureShift::for_store(7, 3), FeatureShift::for_store(7, 4));
        assert_ne!(FeatureShift::for_store(7, 3), FeatureShift::for_store(8, 3));
        let shifted = |store| {
            let mut images = test_card(1);
            FeatureShift::for_store(7, store)
                .apply(&mut images, 3, SIDE, SIDE)
                .expect("shape");
            images
        };
        assert_eq!(shifted(0), shifted(0));
        assert_ne!(shifted(0), shifted(1));
        for store in 0..50 {
            let s = FeatureShift::for_store(1, store);
            assert!((0.75..1.25).contains(&s.brightness) && (0.8..1.2).contains(&s.contrast));
            assert!(s.rotation_deg.abs() <= 8.0 && s.shear.abs() <= 0.1);
            assert!((0.92..1.08).contains(&s.zoom));
        }
    }

    #[test]
    fn outputs_stay_in_unit_range() {
        let strong = FeatureShift {
            brightness: 1.6,
            contrast: 1.8,
            tint: [1.3, 0.7, 1.1],
            rotation_deg: 33.0,
            shear: 0.4,
            zoom: 0.7,
        };
        for shift in [
            strong,
            FeatureShift::for_store(5, 0),
            FeatureShift::for_store(5, 1),
        ] {
            let mut images = test_card(3);
            shift.apply(&mut images, 3, SIDE, SIDE).expect("shape");
            assert!(images.iter().all(|v| (0.0..=1.0).contains(v)), "{shift:?}");
        }
    }

    #[test]
    fn photometric_change_follows_the_parameters() {
        let mut images = vec![0.5f32; 3 * 4];
        let shift = FeatureShift {
            brightness: 1.2,
            tint: [1.0, 0.5, 1.5],
            ..FeatureShift::IDENTITY
        };
        shift.apply(&mut images, 3, 2, 2).expect("shape");
        for (got, want) in images.iter().zip([[0.6; 4], [0.3; 4], [0.9; 4]].concat()) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Contrast pivots on mid-grey; a grey image gets the mean tint.
        let mut grey = vec![0.0f32, 0.5, 1.0, 0.25];
        let shift = FeatureShift {
            contrast: 0.5,
            tint: [0.9, 1.0, 1.1],
            ..FeatureShift::IDENTITY
        };
        shift.apply(&mut grey, 1, 2, 2).expect("shape");
        for (got, want) in grey.iter().zip([0.25, 0.5, 0.75, 0.375]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn rotation_turns_a_pattern_about_the_centre() {
        let centre = SIDE / 2;
        // A dot 5 pixels right of the centre, and a horizontal bar through it.
        let dot = grey_with(&[(centre + 5, centre)]);
        let turn = |image: &[f32], degrees: f32| {
            let mut out = image.to_vec();
            let shift = FeatureShift {
                rotation_deg: degrees,
                ..FeatureShift::IDENTITY
            };
            shift.apply(&mut out, 1, SIDE, SIDE).expect("shape");
            out
        };
        let at = |image: &[f32], x: usize, y: usize| image[y * SIDE + x];
        let clockwise = turn(&dot, 90.0);
        assert!(
            at(&clockwise, centre, centre + 5) > 0.99,
            "right turns to below"
        );
        assert!(at(&clockwise, centre + 5, centre) < 0.01);
        assert!(
            at(&turn(&dot, -90.0), centre, centre - 5) > 0.99,
            "right turns to above"
        );
        assert!(at(&turn(&dot, 180.0), centre - 5, centre) > 0.99);
        let bar: Vec<(usize, usize)> = (2..SIDE - 2).map(|x| (x, centre)).collect();
        let vertical = turn(&grey_with(&bar), 90.0);
        let column: Vec<(usize, usize)> = (2..SIDE - 2).map(|y| (centre, y)).collect();
        let expected = grey_with(&column);
        for (got, want) in vertical.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-3);
        }
        // A small angle moves the dot along the circle: 10° puts it 5·sin 10° ≈ 0.87 px lower,
        // so the row below gets most of it.
        let small = turn(&dot, 10.0);
        assert!(at(&small, centre + 5, centre + 1) > at(&small, centre + 5, centre));
        assert!(
            (small.iter().sum::<f32>() - 1.0).abs() < 0.05,
            "mass is kept"
        );
    }

    #[test]
    fn shear_and_zoom_move_content_as_documented() {
        let centre = SIDE / 2;
        let dot = grey_with(&[(centre, centre + 4)]);
        let mut sheared = dot.clone();
        let shift = FeatureShift {
            shear: 0.5,
            ..FeatureShift::IDENTITY
        };
        shift.apply(&mut sheared, 1, SIDE, SIDE).expect("shape");
        assert!(
            sheared[(centre + 4) * SIDE + centre + 2] > 0.99,
            "4 rows down: 2 px right"
        );
        let mut zoomed = grey_with(&[(centre + 3, centre)]);
        let shift = FeatureShift {
            zoom: 2.0,
            ..FeatureShift::IDENTITY
        };
        shift.apply(&mut zoomed, 1, SIDE, SIDE).expect("shape");
        assert!(
            zoomed[centre * SIDE + centre + 6] > 0.99,
            "3 px out becomes 6"
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut images = vec![0.5f32; 10];
        let shift = FeatureShift::for_store(1, 1);
        for (c, h, w) in [(1, 3, 3), (0, 1, 1), (1, 0, 5), (3, 2, 1)] {
            assert!(matches!(
                shift.apply(&mut images, c, h, w),
                Err(PartitionError::ImageShape { .. })
            ));
        }
        for bad in [
            FeatureShift { zoom: 0.0, ..shift },
            FeatureShift {
                rotation_deg: f32::NAN,
                ..shift
            },
            FeatureShift {
                tint: [1.0, f32::INFINITY, 1.0],
                ..shift
            },
        ] {
            assert!(matches!(
                bad.apply(&mut images, 1, 2, 5),
                Err(PartitionError::InvalidFeatureShift(_))
            ));
        }
        assert_eq!(images, vec![0.5f32; 10], "untouched on error");
    }

    #[test]
    fn store_sets_combine_shares_and_shifts() {
        let set = ImageSet {
            channels: 3,
            height: SIDE,
            width: SIDE,
            num_classes: 2,
            images: test_card(6),
            labels: vec![0, 1, 0, 1, 0, 1],
        };
        let shares = vec![vec![0, 1, 2], vec![3, 4, 5]];
        let stores = store_sets_with_feature_shift(&set, &shares, 11).expect("stores");
        assert_eq!(stores.len(), 2);
        for (store_index, store) in (0u32..).zip(&stores) {
            store.validate().expect("valid");
            let mut expected = set.subset(&shares[store_index as usize]).expect("subset");
            FeatureShift::for_store(11, store_index)
                .apply_to_set(&mut expected)
                .expect("shape");
            assert_eq!(store, &expected);
        }
        let err = store_sets_with_feature_shift(&set, &[vec![6]], 11);
        assert!(matches!(err, Err(PartitionError::Images(_))));
    }
}
