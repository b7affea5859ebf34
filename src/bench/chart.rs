//! Bar charts of benchmark results as SVG (plotters' SVG backend: text is written as SVG
//! `<text>`, so no font library is needed).
//!
//! A [`BarChart`] has one row per configuration (labelled on the left, top to bottom) and one or
//! more panels side by side; each panel shows a few series per row, either stacked (phases that
//! add up) or grouped (figures side by side, with min-max whiskers). A row without figures shows
//! its note (e.g. why it did not run) instead of bars.

use super::stats::Summary;
use super::BenchError;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One panel of a [`BarChart`].
#[derive(Clone, Debug)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Label of the x axis (unit).
    pub x_label: String,
    /// Series names (legend).
    pub series: Vec<String>,
    /// Stack the series of a row into one bar (else side by side).
    pub stacked: bool,
    /// Per row, per series: the figure (the median is drawn; min and max as a whisker when
    /// grouped).
    pub values: Vec<Vec<Option<Summary>>>,
}

/// A chart: a title, a few lines of context, row labels and panels.
#[derive(Clone, Debug)]
pub struct BarChart {
    /// Title.
    pub title: String,
    /// Lines under the title (machine, MMU, command).
    pub subtitle: Vec<String>,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// Per row: text shown instead of bars (why it was not measured), if any.
    pub row_notes: Vec<Option<String>>,
    /// Panels, left to right.
    pub panels: Vec<Panel>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

/// Series `s` of panel `p`: panels use different colours, so series of two panels are not
/// mistaken for each other.
fn color(p: usize, s: usize) -> RGBColor {
    COLORS[(2 * p + s) % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Sys {
        what: "drawing the chart",
        source: std::io::Error::other(e.to_string()),
        hint: "check that the --chart path is writable",
    }
}

/// A short number for bar ends: 3 significant digits.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// `text` cut to at most `max` characters at a word boundary, with `...` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(3)).collect();
    let end = cut.rfind(' ').unwrap_or(cut.len());
    format!("{}...", cut[..end].trim_end_matches([',', ';', ':']))
}

impl BarChart {
    /// Writes the chart as an SVG file.
    pub fn write_svg(&self, path: &Path) -> Result<(), BenchError> {
        let svg = self.to_svg()?;
        std::fs::write(path, svg).map_err(BenchError::io(
            "writing the chart",
            "check that the --chart directory exists and is writable",
        ))
    }

    /// The chart as SVG text.
    pub fn to_svg(&self) -> Result<String, BenchError> {
        let n = self.rows.len().max(1);
        let head = 40 + 18 * self.subtitle.len() as u32;
        let row_h = 22
            + 14 * self
                .panels
                .iter()
                .map(|p| p.series.len())
                .max()
                .unwrap_or(1);
        let height = head + 110 + row_h as u32 * n as u32;
        let label_w = 10 + 7 * self.rows.iter().map(|r| r.len()).max().unwrap_or(10) as u32;
        let width = label_w + 520 * self.panels.len().max(1) as u32;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            root.draw(&Text::new(
                self.title.clone(),
                (10, 10),
                ("sans-serif", 20).into_font(),
            ))
            .map_err(err)?;
            for (i, line) in self.subtitle.iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    (10, 38 + 18 * i as i32),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&RGBColor(0x44, 0x44, 0x44)),
                ))
                .map_err(err)?;
            }
            let (_, body) = root.split_vertically(head);
            let (_, plots) = body.split_horizontally(label_w);
            let areas = plots.split_evenly((1, self.panels.len().max(1)));
            let label_style = ("sans-serif", 13)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(HPos::Right, VPos::Center));
            for (p, (panel, area)) in self.panels.iter().zip(areas.iter()).enumerate() {
                self.draw_panel(p, panel, area, n, &root, &label_style, label_w)?;
            }
            root.present().map_err(err)?;
        }
        Ok(svg)
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_panel(
        &self,
        panel_index: usize,
        panel: &Panel,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        n: usize,
        root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        label_style: &TextStyle<'_>,
        label_w: u32,
    ) -> Result<(), BenchError> {
        let extent = |row: &Vec<Option<Summary>>| -> f64 {
            if panel.stacked {
                row.iter().flatten().map(|s| s.median).sum()
            } else {
                row.iter().flatten().map(|s| s.max).fold(0.0, f64::max)
            }
        };
        let xmax = panel.values.iter().map(extent).fold(0.0, f64::max);
        let xmax = if xmax > 0.0 { xmax * 1.2 } else { 1.0 };
        // A band below the rows keeps the legend off the bars.
        let legend_band = 0.35 * panel.series.len() as f64 + 0.2;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin_left(8)
            .margin_right(20)
            .margin_top(6)
            .x_label_area_size(40)
            .build_cartesian_2d(0f64..xmax, -legend_band..n as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(6)
            .x_desc(panel.x_label.as_str())
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        let k = panel.series.len().max(1);
        let small = ("sans-serif", 10).into_font();
        for (i, row) in panel.values.iter().enumerate() {
            // Row 0 at the top.
            let base = (n - 1 - i) as f64;
            let (lo, hi) = (base + 0.12, base + 0.88);
            if panel_index == 0 {
                // `root` covers the whole image, so backend pixels are its coordinates.
                let (_, py) = chart.backend_coord(&(0.0, base + 0.5));
                root.draw(&Text::new(
                    self.rows.get(i).cloned().unwrap_or_default(),
                    (label_w as i32 - 8, py),
                    label_style.clone(),
                ))
                .map_err(err)?;
            }
            if row.iter().all(Option::is_none) {
                if let Some(note) = self.row_notes.get(i).cloned().flatten() {
                    let text = clip(&note, 90);
                    chart
                        .draw_series(std::iter::once(Text::new(
                            text,
                            (xmax * 0.01, base + 0.62),
                            small.clone().color(&RGBColor(0x99, 0x22, 0x22)),
                        )))
                        .map_err(err)?;
                }
                continue;
            }
            let mut x0 = 0.0;
            for (s, v) in row.iter().enumerate() {
                let Some(v) = v else { continue };
                let color = color(panel_index, s);
                let (y0, y1, x_start) = if panel.stacked {
                    (lo, hi, x0)
                } else {
                    let h = (hi - lo) / k as f64;
                    (hi - h * (s + 1) as f64, hi - h * s as f64, 0.0)
                };
                let x_end = x_start + v.median;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x_start, y0), (x_end, y1)],
                        color.filled(),
                    )))
                    .map_err(err)?;
                let mid = (y0 + y1) / 2.0;
                if !panel.stacked && v.max > v.min {
                    let w = (y1 - y0) * 0.25;
                    chart
                        .draw_series([
                            PathElement::new(vec![(v.min, mid), (v.max, mid)], BLACK),
                            PathElement::new(vec![(v.min, mid - w), (v.min, mid + w)], BLACK),
                            PathElement::new(vec![(v.max, mid - w), (v.max, mid + w)], BLACK),
                        ])
                        .map_err(err)?;
                }
                if !panel.stacked {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            short(v.median),
                            (v.max.max(x_end) + xmax * 0.01, mid + 0.05),
                            small.clone(),
                        )))
                        .map_err(err)?;
                }
                x0 = x_end;
            }
            if panel.stacked {
                chart
                    .draw_series(std::iter::once(Text::new(
                        short(x0),
                        (x0 + xmax * 0.01, base + 0.55),
                        small.clone(),
                    )))
                    .map_err(err)?;
            }
        }
        // Legend entries: empty series that only carry a label.
        for (s, name) in panel.series.iter().enumerate() {
            let color = color(panel_index, s);
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xaa, 0xaa, 0xaa))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_names_rows_series_and_notes() {
        let s = |v: &[f64]| Summary::of(v);
        let chart = BarChart {
            title: "test chart".into(),
            subtitle: vec!["line one".into()],
            rows: vec!["alpha".into(), "beta".into(), "gamma".into()],
            row_notes: vec![None, None, Some("not run: no pages".into())],
            panels: vec![
                Panel {
                    title: "seconds".into(),
                    x_label: "s".into(),
                    series: vec!["phase a".into(), "phase b".into()],
                    stacked: true,
                    values: vec![
                        vec![s(&[1.0]), s(&[2.0])],
                        vec![None, s(&[0.5])],
                        vec![None, None],
                    ],
                },
                Panel {
                    title: "ns".into(),
                    x_label: "ns".into(),
                    series: vec!["seq".into(), "random".into()],
                    stacked: false,
                    values: vec![
                        vec![s(&[10.0, 12.0, 11.0]), s(&[80.0])],
                        vec![s(&[5.0]), s(&[40.0, 50.0])],
                        vec![None, None],
                    ],
                },
            ],
        };
        let svg = chart.to_svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "test chart",
            "line one",
            "alpha",
            "beta",
            "gamma",
            "phase a",
            "random",
            "not run: no pages",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        assert!(svg.matches("<rect").count() >= 6, "bars are drawn");
        assert_eq!(short(1234.5), "1234");
        assert_eq!(short(0.01234), "0.012");
        assert_eq!(clip("short", 10), "short");
        assert_eq!(
            clip("could not reserve: the kernel said no", 24),
            "could not reserve..."
        );
    }
}
