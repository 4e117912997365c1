//! Validation of incoming releases and the totals served to operations.

use backroom_proto::v1 as pb;

use super::{summarize, validate_batch};

fn metric(name: &str, value: Option<f64>, noise_scale: f64, sensitivity: f64) -> pb::NoisedMetric {
    pb::NoisedMetric {
        name: name.into(),
        value,
        suppressed: value.is_none(),
        noise_scale,
        sensitivity,
    }
}

/// A release like a node makes with S = 12, spf = 300, ρ = 0.04 (shares 0.2 / 0.4 / 0.4).
fn batch() -> pb::MetricBatch {
    let scale = |sensitivity: f64, rho: f64| sensitivity / (2.0 * rho).sqrt();
    pb::MetricBatch {
        idempotency_key: "store-1:0:3600".into(),
        window_start_unix: 3600,
        window_secs: 3600,
        camera_id: 0,
        slots_per_frame: 12,
        seconds_per_frame: 300,
        rho: 0.04,
        metrics: vec![
            metric("frames", Some(14.0), scale(1.0, 0.008), 1.0),
            metric("out_of_stock_events", None, scale(12.0, 0.016), 12.0),
            metric(
                "out_of_stock_minutes",
                Some(250.0),
                scale(12.0, 0.016) * 5.0,
                60.0,
            ),
        ],
    }
}

#[test]
fn a_node_release_is_valid() {
    assert_eq!(validate_batch(&batch()), Ok(()));
}

/// A change that makes a batch invalid.
type Change = Box<dyn Fn(&mut pb::MetricBatch)>;

#[test]
fn anything_that_is_not_a_noised_release_is_refused() {
    let cases: Vec<(&str, Change)> = vec![
        ("no noised metrics", Box::new(|b| b.metrics.clear())),
        ("rho must be above 0", Box::new(|b| b.rho = 0.0)),
        ("rho must be above 0", Box::new(|b| b.rho = f64::NAN)),
        ("rho must be above 0", Box::new(|b| b.rho = -1.0)),
        (
            "unknown metric",
            Box::new(|b| b.metrics[0].name = "slot_observations".into()),
        ),
        (
            "appears twice",
            Box::new(|b| b.metrics[1].name = "frames".into()),
        ),
        ("noise_scale", Box::new(|b| b.metrics[0].noise_scale = 0.0)),
        (
            "noise_scale",
            Box::new(|b| b.metrics[0].noise_scale = f64::INFINITY),
        ),
        ("sensitivity", Box::new(|b| b.metrics[0].sensitivity = 0.0)),
        (
            "must be finite",
            Box::new(|b| b.metrics[0].value = Some(f64::NAN)),
        ),
        (
            "suppressed metric has no value",
            Box::new(|b| b.metrics[1].value = Some(3.0)),
        ),
        ("needs a value", Box::new(|b| b.metrics[0].value = None)),
        // The declared ρ does not pay for the declared noise: a thinly noised value.
        (
            "noise too small",
            Box::new(|b| b.metrics[2].noise_scale = 1.0),
        ),
        ("window_secs", Box::new(|b| b.window_secs = 0)),
        ("slots_per_frame", Box::new(|b| b.slots_per_frame = 0)),
        ("idempotency_key", Box::new(|b| b.idempotency_key.clear())),
    ];
    for (needle, change) in cases {
        let mut b = batch();
        change(&mut b);
        let error = validate_batch(&b).expect_err(needle);
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
}

#[test]
fn totals_sum_released_values_and_keep_suppressed_cells_apart() {
    let mut second = batch();
    second.metrics[0].value = Some(10.0);
    second.metrics[0].suppressed = false;
    second.metrics[2].value = None;
    second.metrics[2].suppressed = true;
    let rows: Vec<pb::MetricRow> = [("store-1", batch()), ("store-2", second)]
        .into_iter()
        .map(|(store, b)| super::row_to_proto(super::release_row(store, &b)))
        .collect();
    // Occupancy of the first row: 1 - 250 / (14 frames * 12 slots * 5 min) = 1 - 250/840.
    let first = rows[0].occupancy.expect("both parts released");
    assert!((first - (1.0 - 250.0 / 840.0)).abs() < 1e-12);
    assert_eq!(rows[1].occupancy, None, "minutes suppressed");

    let response = summarize(rows);
    assert_eq!(response.stores, 2);
    let total = |name: &str| {
        response
            .totals
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .expect("total present")
    };
    let frames = total("frames");
    assert_eq!(frames.value, 24.0);
    assert_eq!((frames.windows_released, frames.windows_suppressed), (2, 0));
    let one = batch().metrics[0].noise_scale;
    assert!((frames.noise_std - one * 2f64.sqrt()).abs() < 1e-9);
    let events = total("out_of_stock_events");
    assert_eq!((events.windows_released, events.windows_suppressed), (0, 2));
    assert_eq!(events.value, 0.0);
    let minutes = total("out_of_stock_minutes");
    assert_eq!(
        (minutes.windows_released, minutes.windows_suppressed),
        (1, 1)
    );
    assert_eq!(response.occupancy, Some(first));
}
