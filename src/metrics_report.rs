//! How noised shelf metrics and a node's privacy ledger are shown: `backroom metrics`,
//! `backroom node-budget` and the pilot's summary. Every value shown is a noised release (or a
//! sum of them); suppressed cells are shown as suppressed, never as zero.

use std::fmt::Write;

use backroom_proto::v1 as pb;
use backroom_store_node::DayBudget;
use serde::Serialize;

/// One metric summed over windows and stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NoisedTotal {
    /// Sum of the released (noised) values.
    pub value: f64,
    /// Standard deviation of the noise in `value`.
    pub noise_std: f64,
    pub windows_released: u32,
    pub windows_suppressed: u32,
}

impl NoisedTotal {
    /// The total named `name` in a query response (zero windows when absent).
    pub fn from_response(response: &pb::QueryMetricsResponse, name: &str) -> Self {
        response
            .totals
            .iter()
            .find(|t| t.name == name)
            .map(|t| NoisedTotal {
                value: t.value,
                noise_std: t.noise_std,
                windows_released: t.windows_released,
                windows_suppressed: t.windows_suppressed,
            })
            .unwrap_or_default()
    }

    /// `≈ 140 ± 62 (noised; 3 of 72 windows suppressed)`.
    pub fn describe(&self, unit: &str) -> String {
        let windows = self.windows_released + self.windows_suppressed;
        if windows == 0 {
            return "no window".into();
        }
        if self.windows_released == 0 {
            return format!("suppressed in all {windows} windows");
        }
        let mut text = format!("≈ {:.0}{unit} ± {:.0}", self.value, self.noise_std);
        if self.windows_suppressed > 0 {
            let _ = write!(
                text,
                " (noised; {} of {windows} windows suppressed)",
                self.windows_suppressed
            );
        } else {
            text.push_str(" (noised)");
        }
        text
    }
}

fn cell(metric: Option<&pb::NoisedMetric>) -> String {
    match metric {
        None => "-".into(),
        Some(m) if m.suppressed => "suppr.".into(),
        Some(m) => m.value.map_or("-".into(), |v| format!("{v:.0}")),
    }
}

fn find<'a>(row: &'a pb::MetricRow, name: &str) -> Option<&'a pb::NoisedMetric> {
    row.metrics.iter().find(|m| m.name == name)
}

/// The table of `backroom metrics`.
pub fn render_table(response: &pb::QueryMetricsResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Noised releases (OpenDP Gaussian, zCDP; ≈ values carry noise, 'suppr.' = below the store's threshold)"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>12} {:>6} {:>4} {:>8} {:>14} {:>14} {:>9} {:>6}",
        "store",
        "window",
        "secs",
        "cam",
        "frames≈",
        "oos events≈",
        "oos minutes≈",
        "stocked≈",
        "rho"
    );
    for r in &response.rows {
        let occupancy = r
            .occupancy
            .map_or("-".into(), |o| format!("{:.0}%", o * 100.0));
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>6} {:>4} {:>8} {:>14} {:>14} {:>9} {:>6}",
            r.store_id,
            r.window_start_unix,
            r.window_secs,
            r.camera_id,
            cell(find(r, "frames")),
            cell(find(r, "out_of_stock_events")),
            cell(find(r, "out_of_stock_minutes")),
            occupancy,
            r.rho
        );
    }
    let events = NoisedTotal::from_response(response, "out_of_stock_events");
    let minutes = NoisedTotal::from_response(response, "out_of_stock_minutes");
    let _ = writeln!(
        out,
        "total over {} windows from {} stores: out-of-stock events {}, out-of-stock slot-minutes {}",
        response.rows.len(),
        response.stores,
        events.describe(""),
        minutes.describe("")
    );
    out
}

fn total_cell(totals: &[pb::MetricTotal], name: &str) -> String {
    match totals.iter().find(|t| t.name == name) {
        None => "-".into(),
        Some(t) if t.windows_released == 0 => "suppr.".into(),
        Some(t) => format!("{:.0} ± {:.0}", t.value, t.noise_std),
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |o| format!("{:.0}%", o * 100.0))
}

/// The table of `backroom metrics --group-by ...`: one line per group.
pub fn render_groups(response: &pb::QueryMetricsResponse, group_by: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Noised totals by {group_by} (sums of noised releases ± their noise std; 'suppr.' = every window suppressed){}",
        if response.store_tokens {
            "; stores shown as opaque tokens"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:<16} {:>6} {:>14} {:>14} {:>16} {:>9} {:>11} {:>6}",
        group_by,
        "stores",
        "frames≈",
        "oos events≈",
        "oos minutes≈",
        "stocked≈",
        "min/max",
        "suppr"
    );
    for g in &response.groups {
        let suppressed: u32 = g.totals.iter().map(|t| t.windows_suppressed).sum();
        let range = match (g.occupancy_min, g.occupancy_max) {
            (Some(lo), Some(hi)) => format!("{:.0}/{:.0}%", lo * 100.0, hi * 100.0),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>6} {:>14} {:>14} {:>16} {:>9} {:>11} {:>6}",
            g.key,
            g.stores,
            total_cell(&g.totals, "frames"),
            total_cell(&g.totals, "out_of_stock_events"),
            total_cell(&g.totals, "out_of_stock_minutes"),
            percent(g.occupancy),
            range,
            suppressed
        );
    }
    let _ = writeln!(
        out,
        "{} groups, {} windows from {} stores",
        response.groups.len(),
        response.rows.len(),
        response.stores
    );
    out
}

/// CSV of `backroom metrics --format csv`: one record per release, or per group when grouped.
/// Suppressed cells are empty with `suppressed` set, never zero.
pub fn render_csv(response: &pb::QueryMetricsResponse, grouped: bool) -> anyhow::Result<String> {
    let names = ["frames", "out_of_stock_events", "out_of_stock_minutes"];
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut out = csv::Writer::from_writer(Vec::new());
    if grouped {
        let mut header = vec!["group".to_owned(), "stores".to_owned()];
        for n in names {
            header.extend([
                n.to_owned(),
                format!("{n}_noise_std"),
                format!("{n}_windows_released"),
                format!("{n}_windows_suppressed"),
            ]);
        }
        header.extend(["occupancy", "occupancy_min", "occupancy_max"].map(String::from));
        out.write_record(&header)?;
        for g in &response.groups {
            let mut record = vec![g.key.clone(), g.stores.to_string()];
            for n in names {
                let t = g.totals.iter().find(|t| t.name == n);
                let released = t.is_some_and(|t| t.windows_released > 0);
                record.extend([
                    t.filter(|_| released)
                        .map_or(String::new(), |t| t.value.to_string()),
                    t.filter(|_| released)
                        .map_or(String::new(), |t| t.noise_std.to_string()),
                    t.map_or(0, |t| t.windows_released).to_string(),
                    t.map_or(0, |t| t.windows_suppressed).to_string(),
                ]);
            }
            record.extend([opt(g.occupancy), opt(g.occupancy_min), opt(g.occupancy_max)]);
            out.write_record(&record)?;
        }
    } else {
        let mut header: Vec<String> = [
            "store",
            "window_start_unix",
            "window_secs",
            "camera_id",
            "rho",
        ]
        .map(String::from)
        .to_vec();
        for n in names {
            header.extend([
                n.to_owned(),
                format!("{n}_suppressed"),
                format!("{n}_noise_scale"),
            ]);
        }
        header.push("occupancy".to_owned());
        out.write_record(&header)?;
        for r in &response.rows {
            let mut record = vec![
                r.store_id.clone(),
                r.window_start_unix.to_string(),
                r.window_secs.to_string(),
                r.camera_id.to_string(),
                r.rho.to_string(),
            ];
            for n in names {
                let m = find(r, n);
                record.extend([
                    opt(m.and_then(|m| m.value)),
                    m.map_or(String::new(), |m| m.suppressed.to_string()),
                    m.map_or(String::new(), |m| m.noise_scale.to_string()),
                ]);
            }
            record.push(opt(r.occupancy));
            out.write_record(&record)?;
        }
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// The JSON of `backroom metrics --json`: rows of noised metrics and the totals.
pub fn to_json(response: &pb::QueryMetricsResponse) -> serde_json::Value {
    let metric = |m: &pb::NoisedMetric| {
        serde_json::json!({
            "name": m.name, "value": m.value, "suppressed": m.suppressed,
            "noise_scale": m.noise_scale, "sensitivity": m.sensitivity,
        })
    };
    let rows: Vec<_> = response
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "store_id": r.store_id, "window_start_unix": r.window_start_unix,
                "window_secs": r.window_secs, "camera_id": r.camera_id,
                "slots_per_frame": r.slots_per_frame, "seconds_per_frame": r.seconds_per_frame,
                "rho": r.rho, "occupancy": r.occupancy,
                "metrics": r.metrics.iter().map(metric).collect::<Vec<_>>(),
            })
        })
        .collect();
    let totals: Vec<_> = response
        .totals
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "value": t.value, "noise_std": t.noise_std,
                "windows_released": t.windows_released,
                "windows_suppressed": t.windows_suppressed,
            })
        })
        .collect();
    let groups: Vec<_> = response
        .groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "key": g.key, "stores": g.stores, "occupancy": g.occupancy,
                "occupancy_min": g.occupancy_min, "occupancy_max": g.occupancy_max,
                "totals": g.totals.iter().map(|t| serde_json::json!({
                    "name": t.name, "value": t.value, "noise_std": t.noise_std,
                    "windows_released": t.windows_released,
                    "windows_suppressed": t.windows_suppressed,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "noised": true,
        "store_tokens": response.store_tokens,
        "rows": rows,
        "totals": totals,
        "groups": groups,
        "occupancy": response.occupancy,
        "stores": response.stores,
    })
}

/// The table of `backroom node-budget`.
pub fn render_ledger(days: &[DayBudget]) -> String {
    let mut out = String::new();
    if days.is_empty() {
        out.push_str("no metric window released or refused yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>10} {:>8} {:>7}",
        "day (UTC)", "rho spent", "budget", "remaining", "releases", "refused"
    );
    for d in days {
        let _ = writeln!(
            out,
            "{:<10} {:>10.4} {:>10.4} {:>10.4} {:>8} {:>7}",
            d.date, d.rho_spent, d.rho_budget, d.rho_remaining, d.releases, d.refused
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: Option<f64>) -> pb::NoisedMetric {
        pb::NoisedMetric {
            name: name.into(),
            value,
            suppressed: value.is_none(),
            noise_scale: 7.5,
            sensitivity: 1.0,
        }
    }

    #[test]
    fn suppressed_cells_show_as_suppressed_and_totals_as_noised() {
        let response = pb::QueryMetricsResponse {
            rows: vec![pb::MetricRow {
                store_id: "store-1".into(),
                window_start_unix: 3600,
                window_secs: 3600,
                rho: 0.04,
                metrics: vec![
                    metric("frames", Some(13.0)),
                    metric("out_of_stock_events", None),
                ],
                occupancy: Some(0.8),
                ..pb::MetricRow::default()
            }],
            totals: vec![pb::MetricTotal {
                name: "out_of_stock_events".into(),
                value: 0.0,
                noise_std: 0.0,
                windows_released: 0,
                windows_suppressed: 1,
            }],
            occupancy: Some(0.8),
            stores: 1,
            ..Default::default()
        };
        let table = render_table(&response);
        assert!(table.contains("suppr."), "{table}");
        assert!(table.contains("80%"), "{table}");
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with("store-1"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(row[4..7], ["13", "suppr.", "-"], "{table}");
        // A total with nothing released is not a zero.
        let events = NoisedTotal::from_response(&response, "out_of_stock_events");
        assert_eq!(events.describe(""), "suppressed in all 1 windows");
        let mixed = NoisedTotal {
            value: 140.4,
            noise_std: 61.6,
            windows_released: 69,
            windows_suppressed: 3,
        };
        assert_eq!(
            mixed.describe(""),
            "≈ 140 ± 62 (noised; 3 of 72 windows suppressed)"
        );
        assert_eq!(NoisedTotal::default().describe(""), "no window");
        let json = to_json(&response);
        assert_eq!(json["noised"], true);
        assert_eq!(json["rows"][0]["metrics"][1]["suppressed"], true);
        assert!(json["rows"][0]["metrics"][1]["value"].is_null());
    }

    #[test]
    fn the_ledger_table_lists_each_day() {
        assert!(render_ledger(&[]).contains("no metric window"));
        let day = DayBudget {
            day: 19_723,
            date: "2024-01-01".into(),
            rho_spent: 0.96,
            rho_budget: 1.0,
            rho_remaining: 0.04,
            releases: 24,
            refused: 0,
        };
        let table = render_ledger(&[day]);
        assert!(
            table.contains("2024-01-01") && table.contains("0.9600"),
            "{table}"
        );
    }

    #[test]
    fn groups_and_csv_keep_suppressed_cells_empty_never_zero() {
        let row = |store: &str, start: i64, oos: Option<f64>| pb::MetricRow {
            store_id: store.into(),
            window_start_unix: start,
            window_secs: 3600,
            rho: 0.04,
            metrics: vec![
                metric("frames", Some(10.0)),
                metric("out_of_stock_events", oos),
            ],
            ..pb::MetricRow::default()
        };
        // 10:00 on two days, 11:00 once; the 11:00 window's events are suppressed.
        let rows = vec![
            row("store-1", 36_000, Some(4.0)),
            row("store-2", 36_000 + 86_400, Some(6.0)),
            row("store-1", 39_600, None),
        ];
        let mut response = backroom_coordinator::metrics::summarize(rows.clone());
        response.groups = backroom_coordinator::metrics::group_rows(
            &rows,
            backroom_coordinator::metrics::GroupBy::Hour,
            &Default::default(),
            &|id: &str| id.to_owned(),
        );
        let keys: Vec<&str> = response.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["10:00", "11:00"]);
        assert_eq!(response.groups[0].stores, 2);
        let table = render_groups(&response, "hour");
        let ten = table
            .lines()
            .find(|l| l.starts_with("10:00"))
            .unwrap_or_default();
        assert!(ten.contains("10 ± 11"), "{table}");
        let eleven = table
            .lines()
            .find(|l| l.starts_with("11:00"))
            .unwrap_or_default();
        assert!(eleven.contains("suppr."), "{table}");

        let csv = render_csv(&response, true).unwrap_or_else(|e| panic!("{e}"));
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header = reader.headers().unwrap_or_else(|e| panic!("{e}")).clone();
        let column = |name: &str| header.iter().position(|h| h == name).unwrap_or(usize::MAX);
        let records: Vec<csv::StringRecord> =
            reader.records().map(|r| r.unwrap_or_default()).collect();
        assert_eq!(records.len(), 2, "{csv}");
        assert_eq!(&records[0][column("out_of_stock_events")], "10");
        assert_eq!(&records[1][column("out_of_stock_events")], "", "{csv}");
        assert_eq!(
            &records[1][column("out_of_stock_events_windows_suppressed")],
            "1"
        );
        let plain = render_csv(&response, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.lines().count(), 4, "{plain}");
        assert!(
            plain.lines().nth(3).unwrap_or_default().contains(",,true,"),
            "{plain}"
        );
    }
}
