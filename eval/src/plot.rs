//! SVG plots (plotters): the cost–quality plane and the band promise.

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use crate::report::Report;
use crate::{EvalError, Result};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn plot_err<E: std::fmt::Display>(e: E) -> EvalError {
    EvalError::Invalid(format!("plotting failed: {e}"))
}

/// Cost per 1,000 requests (x, log scale when costs span more than 20×) against quality:
/// each router's band curve, every single model, the random-mix hull and the oracle.
pub fn cost_quality_svg(report: &Report) -> Result<String> {
    let per_k = |c: f64| c * 1000.0;
    let mut costs: Vec<f64> = report.single_models.iter().map(|s| per_k(s.cost)).collect();
    costs.push(per_k(report.oracle.cost));
    for r in &report.routers {
        costs.extend(r.curve.iter().map(|p| per_k(p.cost)));
    }
    costs.retain(|c| c.is_finite() && *c > 0.0);
    let lo = costs.iter().copied().fold(f64::INFINITY, f64::min) * 0.8;
    let hi = costs.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 1.25;
    let mut qualities: Vec<f64> = report.single_models.iter().map(|s| s.quality).collect();
    qualities.push(report.oracle.quality);
    let q_lo = (qualities.iter().copied().fold(1.0, f64::min) - 0.05).max(0.0);
    let q_hi = (report.oracle.quality + 0.05).min(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let caption = format!("Cost and quality on {} test prompts", report.n_prompts);
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60);
        if hi / lo > 20.0 {
            let mut chart = builder
                .build_cartesian_2d((lo..hi).log_scale(), q_lo..q_hi)
                .map_err(plot_err)?;
            draw_cost_quality(
                &mut chart,
                report,
                per_k,
                "USD per 1,000 requests (log scale)",
            )?;
        } else {
            let mut chart = builder
                .build_cartesian_2d(lo..hi, q_lo..q_hi)
                .map_err(plot_err)?;
            draw_cost_quality(&mut chart, report, per_k, "USD per 1,000 requests")?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Mesh, every series and the legend of the cost–quality chart, on a linear or log x axis.
fn draw_cost_quality<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    report: &Report,
    per_k: impl Fn(f64) -> f64,
    x_desc: &str,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("mean quality")
        .draw()
        .map_err(plot_err)?;
    let hull: Vec<(f64, f64)> = report
        .random_mix_hull
        .iter()
        .map(|p| (per_k(p.cost), p.quality))
        .collect();
    chart
        .draw_series(LineSeries::new(
            hull,
            RGBColor(150, 150, 150).stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("random mix of single models (hull)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(150, 150, 150)));
    for (i, r) in report.routers.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<(f64, f64)> = r.curve.iter().map(|p| (per_k(p.cost), p.quality)).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("{} ({})", short_name(&r.router), r.head))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .draw_series(
            report
                .single_models
                .iter()
                .filter(|s| s.coverage >= 0.99)
                .map(|s| {
                    EmptyElement::at((per_k(s.cost), s.quality))
                        + Circle::new((0, 0), 3, BLACK.filled())
                        + Text::new(s.model.clone(), (5, -10), ("sans-serif", 10))
                }),
        )
        .map_err(plot_err)?;
    chart
        .draw_series(std::iter::once(
            EmptyElement::at((per_k(report.best_single.cost), report.best_single.quality))
                + Circle::new((0, 0), 7, RED.stroke_width(2)),
        ))
        .map_err(plot_err)?
        .label(format!("best single model: {}", report.best_single.model))
        .legend(|(x, y)| Circle::new((x + 9, y), 5, RED.stroke_width(2)));
    chart
        .draw_series(std::iter::once(TriangleMarker::new(
            (per_k(report.oracle.cost), report.oracle.quality),
            7,
            RGBColor(0, 120, 0).filled(),
        )))
        .map_err(plot_err)?
        .label("oracle")
        .legend(|(x, y)| TriangleMarker::new((x + 9, y), 5, RGBColor(0, 120, 0).filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// The last component of a router's path, for legends.
fn short_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Predicted against measured quality drop per band.
pub fn band_promise_svg(report: &Report) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let max_drop = report
            .routers
            .iter()
            .flat_map(|r| {
                r.curve
                    .iter()
                    .flat_map(|p| [p.predicted_drop, p.measured_drop])
            })
            .fold(0.01, f64::max);
        let min_drop = report
            .routers
            .iter()
            .flat_map(|r| {
                r.curve
                    .iter()
                    .flat_map(|p| [p.predicted_drop, p.measured_drop])
            })
            .fold(0.0, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "The band promise: predicted and measured quality drop",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, min_drop..max_drop * 1.1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("band (quality points below the best prediction)")
            .y_desc("drop from band 0")
            .draw()
            .map_err(plot_err)?;
        for (i, r) in report.routers.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let predicted: Vec<(f64, f64)> =
                r.curve.iter().map(|p| (p.band, p.predicted_drop)).collect();
            let measured: Vec<(f64, f64)> =
                r.curve.iter().map(|p| (p.band, p.measured_drop)).collect();
            chart
                .draw_series(LineSeries::new(predicted, color.stroke_width(1)))
                .map_err(plot_err)?
                .label(format!("{} predicted", r.head))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(LineSeries::new(measured, color.stroke_width(3)))
                .map_err(plot_err)?
                .label(format!("{} measured", r.head))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}
