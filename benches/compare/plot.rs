//! The throughput plot: tasks per second against the CPU work in each task, both on log scales,
//! for `parallel`'s two backends, procspawn and Python's `ProcessPoolExecutor` on two workers,
//! with the ideal of two busy cores. Written as an SVG whose text the viewer's fonts draw, so it
//! needs no font on the machine that makes it.

use std::path::Path;

use plotters::prelude::*;

use crate::results::{Peer, Results};

/// The CPU work per task, in µs, of the plot's points.
pub(crate) const SIZES: [u64; 4] = [1, 10, 100, 1000];

/// The lines, in legend order, with their colours.
const LINES: [(Peer, RGBColor); 4] = [
    (Peer::Thread, RGBColor(0x1f, 0x77, 0xb4)),
    (Peer::Process, RGBColor(0xd6, 0x27, 0x28)),
    (Peer::Procspawn, RGBColor(0x2c, 0xa0, 0x2c)),
    (Peer::PyExecutor, RGBColor(0xff, 0x7f, 0x0e)),
];

/// One line of the plot: a peer's (task size in µs, tasks per second) points.
struct Line {
    peer: Peer,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

/// The scenario key of the point at `micros`.
pub(crate) fn scenario(micros: u64) -> String {
    format!("plot_{micros}")
}

/// The ideal throughput of `workers` cores, each running tasks of `micros` back to back.
fn ideal(workers: usize, micros: u64) -> f64 {
    workers as f64 * 1e6 / micros as f64
}

/// Draws the plot of `results` into the SVG file at `path`.
///
/// # Errors
///
/// When the file cannot be written.
pub(crate) fn draw(results: &Results, workers: usize, path: &Path) -> Result<(), String> {
    let lines: Vec<Line> = LINES
        .iter()
        .map(|&(peer, colour)| {
            let points = SIZES
                .iter()
                .filter_map(|&micros| {
                    let samples = results.get(&scenario(micros), peer)?;
                    Some((micros as f64, 1.0 / samples.median()))
                })
                .collect();
            Line { peer, colour, points }
        })
        .filter(|line| !line.points.is_empty())
        .collect();
    let ideal_points: Vec<(f64, f64)> =
        SIZES.iter().map(|&micros| (micros as f64, ideal(workers, micros))).collect();
    let rates = lines.iter().flat_map(|line| line.points.iter().map(|&(_, rate)| rate));
    let lowest = rates.clone().fold(f64::INFINITY, f64::min).min(ideal(workers, 1000));
    let highest = rates.fold(0.0, f64::max).max(ideal(workers, 1));

    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Throughput against task size, {workers} workers (higher is better)"),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(
                (0.7f64..1500.0).log_scale(),
                (lowest / 2.0..highest * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("CPU work per task (µs, log scale)")
            .y_desc("tasks per second (log scale)")
            .x_label_formatter(&|x| format!("{x}"))
            .y_label_formatter(&|y| rate_label(*y))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let limit = BLACK.mix(0.5);
        chart
            .draw_series(DashedLineSeries::new(ideal_points, 6, 4, limit.stroke_width(1)))?
            .label(format!("ideal: {workers} cores busy"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], limit));
        for Line { peer, colour, points } in lines {
            let name = match peer {
                Peer::Thread | Peer::Process => format!("parallel {}", peer.short()),
                Peer::PyExecutor | Peer::PyPool => format!("Python {}", peer.short()),
                _ => peer.short().to_owned(),
            };
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&point| Circle::new(point, 3, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| format!("cannot draw {}: {error}", path.display()))
}

/// A rate as an axis label: `1k`, `10M`, ...
fn rate_label(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{}k", rate / 1e3)
    } else {
        format!("{rate}")
    }
}
