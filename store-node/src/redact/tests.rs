#![allow(clippy::unwrap_used)]
//! Redaction unit tests on synthetic input; the real-photo recall test is in
//! `tests/e2e/redaction.rs`.

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};

use super::haar::{Cascade, group};
use super::*;

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image.clone())
        .write_to(&mut out, ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A JPEG with an EXIF APP1 segment (GPS-like payload and an orientation tag) after the SOI.
fn jpeg_with_exif(image: &RgbImage, orientation: u16) -> Vec<u8> {
    let plain = jpeg(image);
    // TIFF header (little endian), one IFD with one entry: 0x0112 Orientation, SHORT, 1.
    let mut tiff = vec![b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0];
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    tiff.extend_from_slice(b"GPS 51.5007N 0.1246W store-7 camera-2");
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_shipped_detectors_load() {
    let redactor = Redactor::new().expect("shipped detectors");
    assert_eq!(redactor.profile_window(), (20, 20));
}

#[test]
fn a_frame_without_faces_is_left_alone() {
    let redactor = Redactor::new().unwrap();
    let mut frame = RgbImage::from_fn(320, 240, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let before = frame.clone();
    let regions = redactor.redact(&mut frame);
    assert!(regions.is_empty(), "{regions:?}");
    assert_eq!(frame, before);
}

#[test]
fn filled_regions_keep_nothing_of_the_original_pixels() {
    let redactor = Redactor::new().unwrap();
    let mut frame = RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 3, y as u8 * 5, 200]));
    // Fill a given region through the same code path the detectors feed.
    let region = Region {
        x: 10,
        y: 8,
        w: 20,
        h: 16,
    };
    redactor.fill(&mut frame, &[region]);
    for (x, y, pixel) in frame.enumerate_pixels() {
        let inside = region.contains(&Region { x, y, w: 1, h: 1 });
        if inside {
            assert_eq!(pixel.0, FILL, "({x},{y})");
        } else {
            assert_eq!(pixel.0, [x as u8 * 3, y as u8 * 5, 200], "({x},{y})");
        }
    }
}

#[test]
fn regions_grow_by_the_margin_and_stay_inside_the_frame() {
    let r = Region {
        x: 10,
        y: 10,
        w: 40,
        h: 20,
    };
    assert_eq!(
        r.grown(0.25, 100, 100),
        Region {
            x: 0,
            y: 5,
            w: 60,
            h: 30
        }
    );
    assert_eq!(r.grown(0.25, 55, 32).x + r.grown(0.25, 55, 32).w, 55);
    assert_eq!(r.grown(0.25, 55, 32).y + r.grown(0.25, 55, 32).h, 32);
}

#[test]
fn exif_and_gps_are_stripped_and_the_orientation_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jpg");
    let output = dir.path().join("out.jpg");
    let image = RgbImage::from_pixel(40, 30, Rgb([30, 160, 90]));
    let bytes = jpeg_with_exif(&image, 6); // 6: rotate 90° clockwise to display
    assert!(contains(&bytes, b"Exif\0\0") && contains(&bytes, b"GPS 51.5007N"));
    std::fs::write(&input, &bytes).unwrap();

    let regions = redact_file(&Redactor::new().unwrap(), &input, &output).unwrap();
    assert!(regions.is_empty());
    let written = std::fs::read(&output).unwrap();
    assert!(!contains(&written, b"Exif"), "EXIF survived");
    assert!(!contains(&written, b"GPS 51.5007N"), "GPS text survived");
    let decoded = image::load_from_memory(&written).unwrap();
    assert_eq!(
        (decoded.width(), decoded.height()),
        (30, 40),
        "not rotated upright"
    );
}

#[test]
fn png_text_chunks_do_not_survive() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    let output = dir.path().join("out.png");
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, 8, 8);
        encoder.set_color(png::ColorType::Rgb);
        encoder
            .add_text_chunk("Location".into(), "aisle 4, store 17".into())
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[77u8; 8 * 8 * 3]).unwrap();
    }
    assert!(contains(&png, b"aisle 4, store 17"));
    std::fs::write(&input, &png).unwrap();
    redact_file(&Redactor::new().unwrap(), &input, &output).unwrap();
    let written = std::fs::read(&output).unwrap();
    assert!(!contains(&written, b"aisle 4"), "text chunk survived");
    assert!(!contains(&written, b"tEXt"));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redactor = Redactor::new().unwrap();
    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, b"\xFF\xD8 not really a jpeg").unwrap();
    let output = dir.path().join("out.png");
    let err = redact_file(&redactor, &garbage, &output).unwrap_err();
    assert!(matches!(err, RedactError::Decode(_)), "{err}");
    assert!(!output.exists());

    let missing = redact_file(&redactor, &dir.path().join("absent.png"), &output).unwrap_err();
    assert!(matches!(missing, RedactError::Read { .. }), "{missing}");

    let good = dir.path().join("good.jpg");
    std::fs::write(&good, jpeg(&RgbImage::new(8, 8))).unwrap();
    let wrong = redact_file(&redactor, &good, &dir.path().join("out.gif")).unwrap_err();
    assert!(matches!(wrong, RedactError::OutputFormat(_)), "{wrong}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "left something behind: {names:?}");
}

#[test]
fn integral_sums_match_brute_force_through_a_one_feature_cascade() {
    // A one-stage cascade whose single stump fires when the left half of the 4x4 window is
    // brighter than the right half (feature = left - right, normalised by the window's spread).
    let xml = r#"<?xml version="1.0"?><opencv_storage><cascade type_id="opencv-cascade-classifier">
      <stageType>BOOST</stageType><featureType>HAAR</featureType><height>4</height><width>4</width>
      <stageParams><maxWeakCount>1</maxWeakCount></stageParams>
      <featureParams><maxCatCount>0</maxCatCount></featureParams><stageNum>1</stageNum>
      <stages><_><maxWeakCount>1</maxWeakCount><stageThreshold>0.5</stageThreshold>
        <weakClassifiers><_><internalNodes>0 -1 0 0.1</internalNodes>
          <leafValues>0. 1.</leafValues></_></weakClassifiers></_></stages>
      <features><_><rects><_>0 0 2 4 1.</_><_>2 0 2 4 -1.</_></rects></_></features>
    </cascade></opencv_storage>"#;
    let cascade = Cascade::parse(xml).unwrap();
    let mut gray = GrayImage::from_pixel(12, 4, Luma([10]));
    for y in 0..4 {
        for x in 4..6 {
            gray.put_pixel(x, y, Luma([250]));
        }
        // Texture in right halves only (x = 3 and 11), so that no other window's left half is
        // the brighter one.
        gray.put_pixel(3, y, Luma([20 + y as u8]));
        gray.put_pixel(11, y, Luma([30 + y as u8]));
    }
    let settings = ScanSettings {
        scale_factor: 10.0,
        min_neighbors: 0,
        min_size: 1,
    };
    let hits = cascade.detect(&gray, &settings);
    // Only the window at x = 4 (bright left half) fires (stride 2: windows at x = 0, 2, .., 8).
    assert_eq!(
        hits,
        vec![Region {
            x: 4,
            y: 0,
            w: 4,
            h: 4
        }]
    );
}

#[test]
fn cascades_this_evaluator_cannot_run_are_refused() {
    let lbp = r#"<opencv_storage><cascade><stageType>BOOST</stageType><featureType>LBP</featureType>
      <height>24</height><width>24</width><featureParams><maxCatCount>256</maxCatCount></featureParams>
      </cascade></opencv_storage>"#;
    let err = Cascade::parse(lbp).unwrap_err().to_string();
    assert!(err.contains("LBP"), "{err}");
    assert!(Cascade::parse("<not xml").is_err());
    let no_stages = r#"<opencv_storage><cascade><stageType>BOOST</stageType><featureType>HAAR</featureType>
      <height>4</height><width>4</width><featureParams><maxCatCount>0</maxCatCount></featureParams>
      <features></features><stages></stages></cascade></opencv_storage>"#;
    assert!(Cascade::parse(no_stages).is_err());
}

#[test]
fn overlapping_hits_group_and_lone_hits_need_neighbours() {
    let hit = |x, y, s| Region { x, y, w: s, h: s };
    let hits = vec![
        hit(100, 100, 40),
        hit(102, 101, 40),
        hit(99, 103, 42),
        hit(300, 20, 30),
    ];
    let grouped = group(hits.clone(), 2);
    assert_eq!(grouped.len(), 1, "{grouped:?}");
    assert!((99..=102).contains(&grouped[0].x));
    assert_eq!(group(hits, 0).len(), 2);
}

#[test]
fn one_redactor_is_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Redactor>();
}
