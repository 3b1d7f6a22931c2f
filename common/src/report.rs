//! The report: `target/lab/report/report.md` and `index.html`, built from
//! the results files alone.
//!
//! Per part: the article's claim, the machine and how to reproduce the run
//! (revision, build profile, arguments, repetitions), then each comparison
//! as a table (the anti-pattern and the fix side by side), every figure with
//! its kind (measured, computed, modelled) and, when the demo ran with
//! `--repeat`, its spread. The HTML adds a bar chart per unit within a
//! comparison and the curves (latency against throughput, one line per
//! clone count). Parts without results, or whose demo is not built yet, are
//! listed as such, so a reader never mistakes a missing experiment for a
//! passing one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::measure::fmt_duration_us;
use crate::results::{Curve, Figure, Kind, PartResults};

const PARTS: [(u8, &str); 4] = [
    (1, "Clones"),
    (2, "Database"),
    (3, "Cache"),
    (4, "Asynchronism"),
];

/// What the report may truthfully say, one line per kind: its header.
pub const KINDS: [(Kind, &str); 3] = [
    (
        Kind::Measured,
        "timed or counted in this run, on the machine stated, by the servers' own counters where they exist (MariaDB status variables, Memcached stats, RabbitMQ queue counts, the MongoDB driver's command events)",
    ),
    (
        Kind::Computed,
        "arithmetic fixed by the design (keys a resharding scheme moves, a model's ceiling): true on any machine, not a measurement",
    ),
    (
        Kind::Modelled,
        "measured against a stated, modelled capacity (a semaphore and a sleep standing in for work, because every server here shares two cores): it shows the shape of a scaling law, not what this hardware can do; the raw, unmodelled run is printed beside it",
    ),
];

/// Groups a part's figures by comparison, keeping the order they were added.
fn comparisons(r: &PartResults) -> Vec<(&str, Vec<&Figure>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Figure>> = BTreeMap::new();
    for f in &r.figures {
        if !groups.contains_key(f.comparison.as_str()) {
            order.push(&f.comparison);
        }
        groups.entry(&f.comparison).or_default().push(f);
    }
    order
        .into_iter()
        .map(|c| (c, groups.remove(c).unwrap_or_default()))
        .collect()
}

/// Each distinct item once, in the order first seen. (`Vec::dedup` only
/// drops *neighbouring* repeats: units `µs, %, µs` would chart µs twice.)
fn distinct<T: PartialEq + Copy>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn number(v: f64) -> String {
    // Whole numbers and large ones need no decimals.
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Microseconds per unit, for the units the report prints as durations.
fn duration_scale(unit: &str) -> Option<f64> {
    match unit {
        "µs" | "us" => Some(1.0),
        "ms" => Some(1_000.0),
        "s" => Some(1_000_000.0),
        _ => None,
    }
}

/// A value with its unit, durations in readable units: `177 ms`, not
/// `176895 µs`; `66.70 %`, `21000 req/s`.
pub fn quantity(v: f64, unit: &str) -> String {
    match duration_scale(unit) {
        Some(scale) => fmt_duration_us(v * scale),
        None if unit.is_empty() => number(v),
        None => format!("{} {unit}", number(v)),
    }
}

/// The value column: the value, and with repetitions its spread.
fn value_cell(f: &Figure) -> String {
    let v = quantity(f.value, &f.unit);
    match &f.spread {
        Some(s) if s.runs > 1 => format!(
            "{v} (median of {} runs; min {}, max {})",
            s.runs,
            quantity(s.min, &f.unit),
            quantity(s.max, &f.unit)
        ),
        _ => v,
    }
}

fn provenance_line(r: &PartResults) -> String {
    r.provenance.line()
}

/// The report as Markdown; `live`, the live page's screenshot if its
/// browser test left one, closes it.
pub fn markdown(results: &[PartResults], live: Option<&LiveShot>) -> String {
    let mut md = String::from("# Scalability for Dummies: the lab report\n\n");
    md.push_str(
        "Every figure below was recorded by `./lab tour` on the machine stated with it, and says its kind:\n\n",
    );
    for (kind, means) in KINDS {
        let _ = writeln!(md, "- **{kind}**: {means}.");
    }
    for (part, title) in PARTS {
        let _ = write!(md, "\n## Part {part}: {title}\n\n");
        let Some(r) = results.iter().find(|r| r.part == part) else {
            md.push_str("_No results: this part's demo has not been run._\n");
            continue;
        };
        let _ = writeln!(md, "> {}\n", r.claim);
        if !r.built {
            md.push_str("_Not built yet: this part's demo does not exist, so there is nothing to measure._\n");
            continue;
        }
        let _ = writeln!(md, "Machine: {}.\n", r.machine.line());
        if !r.machine.services.is_empty() {
            let services: Vec<String> = r
                .machine
                .services
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(md, "Services: {}.\n", services.join(", "));
        }
        let _ = writeln!(md, "Reproduce: {}.\n", provenance_line(r));
        for (comparison, figures) in comparisons(r) {
            let _ = writeln!(
                md,
                "### {comparison}\n\n| figure | kind | value | shows |\n|---|---|---:|---|"
            );
            for f in figures {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    f.name,
                    f.kind,
                    value_cell(f),
                    f.shows
                );
            }
            md.push('\n');
        }
        for c in &r.curves {
            curve_markdown(&mut md, c);
        }
        for note in &r.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    if let Some(shot) = live {
        md.push_str(&shot.markdown());
    }
    md
}

/// A curve as a table: one row per point, series by series.
fn curve_markdown(md: &mut String, c: &Curve) {
    let _ = writeln!(
        md,
        "### {} ({})\n\n{}\n\n| series | {} | {} |\n|---|---:|---:|",
        c.title, c.kind, c.shows, c.x.label, c.y.label
    );
    for s in &c.series {
        for &(x, y) in &s.points {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                s.name,
                quantity(x, &c.x.unit),
                quantity(y, &c.y.unit)
            );
        }
    }
    md.push('\n');
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn badge(kind: Kind) -> String {
    format!("<span class=\"kind {kind}\">{kind}</span>")
}

/// A horizontal bar chart of figures that share a unit, as inline SVG.
pub fn bar_chart(figures: &[&Figure]) -> String {
    let max = figures
        .iter()
        .map(|f| f.value)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (label_w, bar_w, row_h) = (320.0, 360.0, 26.0);
    let height = row_h * figures.len() as f64 + 10.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="13">"#,
        label_w + bar_w + 160.0
    );
    for (i, f) in figures.iter().enumerate() {
        let y = 5.0 + row_h * i as f64;
        let w = (f.value.max(0.0) / max * bar_w).max(1.0);
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{ty}" text-anchor="end">{name}</text><rect x="{bx}" y="{y}" width="{w:.1}" height="{h}" fill="{fill}"/><text x="{vx:.1}" y="{ty}">{val} ({kind})</text>"##,
            x = label_w - 6.0,
            ty = y + 15.0,
            name = escape(&f.name),
            bx = label_w,
            h = row_h - 6.0,
            fill = colour(f.kind),
            vx = label_w + w + 6.0,
            val = escape(&quantity(f.value, &f.unit)),
            kind = f.kind,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Bars say their kind by colour too: a modelled bar must not pass for a
/// measured one at a glance.
fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Measured => "#4a7ebb",
        Kind::Computed => "#8a8a8a",
        Kind::Modelled => "#d08a2c",
    }
}

const LINE_COLOURS: [&str; 6] = [
    "#4a7ebb", "#d08a2c", "#3a9a5b", "#b04a6a", "#7a5ab0", "#555555",
];

/// A line chart of a curve (x against y, one polyline per series), as
/// inline SVG with the axes' extremes labelled.
pub fn line_chart(c: &Curve) -> String {
    let (w, h, left, bottom, top, right) = (560.0, 300.0, 70.0, 40.0, 10.0, 150.0);
    let points = || c.series.iter().flat_map(|s| s.points.iter().copied());
    let max_x = points().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9);
    let max_y = points().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9);
    let px = |x: f64| left + x / max_x * (w - left - right);
    let py = |y: f64| h - bottom - y / max_y * (h - bottom - top);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><line x1="{left}" y1="{ay}" x2="{ax}" y2="{ay}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{ay}" stroke="#333"/><text x="{left}" y="{ly}">0</text><text x="{ax}" y="{ly}" text-anchor="end">{xmax}</text><text x="{mx}" y="{ly2}" text-anchor="middle">{xlabel}</text><text x="{yl}" y="{ty}" text-anchor="end">{ymax}</text><text x="{yl}" y="{ay}" text-anchor="end">0</text><text x="12" y="{my}" transform="rotate(-90 12 {my})" text-anchor="middle">{ylabel}</text>"##,
        ay = h - bottom,
        ax = w - right,
        ly = h - bottom + 14.0,
        ly2 = h - 6.0,
        mx = (left + w - right) / 2.0,
        xmax = escape(&quantity(max_x, &c.x.unit)),
        xlabel = escape(&c.x.label),
        yl = left - 4.0,
        ty = top + 10.0,
        ymax = escape(&quantity(max_y, &c.y.unit)),
        my = (h - bottom + top) / 2.0,
        ylabel = escape(&c.y.label),
    );
    for (i, s) in c.series.iter().enumerate() {
        let colour = LINE_COLOURS[i % LINE_COLOURS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(x),
                py(y)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ly}" fill="{colour}">{name}</text>"#,
            lx = w - right + 10.0,
            ly = top + 14.0 + 16.0 * i as f64,
            name = escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The report as a self-contained HTML page with SVG charts; `live`, the
/// live page's screenshot if its browser test left one, closes it.
pub fn html(results: &[PartResults], live: Option<&LiveShot>) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Scalability for Dummies: lab report</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}\
         td.n{text-align:right}blockquote{color:#444;border-left:3px solid #aaa;margin-left:0;padding-left:1em}\
         .missing{color:#a33}.kind{font-size:.8em;padding:0 .4em;border-radius:.6em;color:#fff}\
         .kind.measured{background:#4a7ebb}.kind.computed{background:#8a8a8a}.kind.modelled{background:#d08a2c}\
         .repro{color:#555;font-size:.9em}</style></head><body><h1>Scalability for Dummies: the lab report</h1>\
         <p>Every figure was recorded by <code>./lab tour</code> on the machine stated with it, and says its kind:</p><ul>",
    );
    for (kind, means) in KINDS {
        let _ = write!(h, "<li>{}: {}.</li>", badge(kind), escape(means));
    }
    h.push_str("</ul>");
    for (part, title) in PARTS {
        let _ = write!(h, "<h2>Part {part}: {}</h2>", escape(title));
        let Some(r) = results.iter().find(|r| r.part == part) else {
            h.push_str("<p class=\"missing\">No results: this part's demo has not been run.</p>");
            continue;
        };
        let _ = write!(h, "<blockquote>{}</blockquote>", escape(&r.claim));
        if !r.built {
            h.push_str("<p class=\"missing\">Not built yet: this part's demo does not exist, so there is nothing to measure.</p>");
            continue;
        }
        let _ = write!(
            h,
            "<p>Machine: {}.</p><p class=\"repro\">Reproduce: {}.</p>",
            escape(&r.machine.line()),
            escape(&provenance_line(r))
        );
        for (comparison, figures) in comparisons(r) {
            let _ = write!(
                h,
                "<h3>{}</h3><table><tr><th>figure</th><th>kind</th><th>value</th><th>shows</th></tr>",
                escape(comparison)
            );
            for f in &figures {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    escape(&f.name),
                    badge(f.kind),
                    escape(&value_cell(f)),
                    escape(&f.shows)
                );
            }
            h.push_str("</table>");
            // One chart per unit: bars of different units do not compare.
            for unit in distinct(figures.iter().map(|f| f.unit.as_str())) {
                let same: Vec<&Figure> =
                    figures.iter().copied().filter(|f| f.unit == unit).collect();
                if same.len() >= 2 {
                    h.push_str("<p>");
                    h.push_str(&bar_chart(&same));
                    h.push_str("</p>");
                }
            }
        }
        for c in &r.curves {
            let _ = write!(
                h,
                "<h3>{} {}</h3><p>{}</p><p>{}</p>",
                escape(&c.title),
                badge(c.kind),
                escape(&c.shows),
                line_chart(c)
            );
        }
        if !r.notes.is_empty() {
            h.push_str("<ul>");
            for n in &r.notes {
                let _ = write!(h, "<li>{}</li>", escape(n));
            }
            h.push_str("</ul>");
        }
    }
    if let Some(shot) = live {
        h.push_str(&shot.html());
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Axis, Series};

    fn part1() -> PartResults {
        let mut r = PartResults::new(1, "Clones", "Keep no state <on> a clone.");
        r.measured(
            "sessions behind the LB",
            "memory: no session",
            66.7,
            "%",
            "requests that found no session",
        );
        r.measured(
            "sessions behind the LB",
            "redis: no session",
            0.0,
            "%",
            "requests that found no session",
        );
        r.notes.push("3 clones on one 2-core machine".into());
        r
    }

    #[test]
    fn report_shows_figures_side_by_side_and_missing_parts() {
        let r = part1();
        let not_built = PartResults::not_built(2, "Database", "Replicate, then shard.");
        let md = markdown(&[r.clone(), not_built.clone()], None);
        assert!(
            md.contains("| memory: no session | measured | 66.70 % |"),
            "{md}"
        );
        assert!(md.contains("## Part 2: Database"));
        assert!(md.contains("Not built yet"));
        assert!(md.contains("## Part 3: Cache\n\n_No results"));
        let page = html(&[r, not_built], None);
        assert!(page.contains("<svg"));
        assert!(page.contains("Keep no state &lt;on&gt; a clone."));
        assert_eq!(page.matches("<svg").count(), 1);
    }

    #[test]
    fn every_figure_shows_its_kind_and_the_header_says_what_each_means() {
        let mut r = part1();
        r.computed("resharding", "keys moved", 50.0, "%", "by the scheme");
        r.modelled("scaling", "3 clones", 600.0, "req/s", "against the model");
        let md = markdown(std::slice::from_ref(&r), None);
        for (kind, means) in KINDS {
            assert!(md.contains(&format!("- **{kind}**: {means}.")), "{md}");
        }
        assert!(md.contains("| keys moved | computed |"), "{md}");
        assert!(md.contains("| 3 clones | modelled |"), "{md}");
        let page = html(&[r], None);
        assert!(
            page.contains(r#"<span class="kind modelled">modelled</span>"#),
            "{page}"
        );
    }

    #[test]
    fn durations_read_in_the_unit_a_reader_takes_in() {
        let mut r = PartResults::new(1, "Clones", "claim");
        r.measured("drill", "p99", 176_895.0, "µs", "slowest 1%");
        r.measured("drill", "lag", 2.5, "ms", "replica lag");
        let md = markdown(&[r], None);
        assert!(md.contains("| p99 | measured | 177 ms |"), "{md}");
        assert!(md.contains("| lag | measured | 2.50 ms |"), "{md}");
        assert!(!md.contains("176895"), "{md}");
    }

    #[test]
    fn a_unit_that_comes_back_is_charted_once() {
        let mut r = PartResults::new(1, "Clones", "claim");
        // µs, then %, then µs again: neighbour-only dedup charted µs twice.
        for (name, v, unit) in [
            ("p50", 10.0, "µs"),
            ("lost", 1.0, "%"),
            ("p99", 20.0, "µs"),
            ("doubled", 0.0, "%"),
        ] {
            r.measured("one comparison", name, v, unit, "");
        }
        let page = html(&[r], None);
        assert_eq!(page.matches("<svg").count(), 2, "{page}");
    }

    #[test]
    fn repeated_figures_show_their_spread() {
        let mut r = PartResults::new(1, "Clones", "claim");
        r.set_repeat(3);
        r.repeated(
            Kind::Measured,
            "load",
            "throughput",
            &[900.0, 1100.0, 1000.0],
            "req/s",
            "",
        );
        let f = &r.figures[0];
        assert_eq!(f.value, 1000.0);
        let md = markdown(&[r], None);
        assert!(
            md.contains("1000 req/s (median of 3 runs; min 900 req/s, max 1100 req/s)"),
            "{md}"
        );
        assert!(md.contains("3 repetitions"), "{md}");
    }

    #[test]
    fn the_latency_throughput_curve_has_one_line_per_clone_count() {
        let mut r = PartResults::new(1, "Clones", "claim");
        r.curve(Curve {
            title: "latency against throughput".into(),
            shows: "p99 climbs as the load nears the ceiling".into(),
            kind: Kind::Modelled,
            x: Axis::new("throughput", "req/s"),
            y: Axis::new("p99", "µs"),
            series: vec![
                Series {
                    name: "1 clone".into(),
                    points: vec![(50.0, 21_000.0), (190.0, 170_000.0)],
                },
                Series {
                    name: "3 clones".into(),
                    points: vec![(50.0, 21_000.0), (560.0, 60_000.0)],
                },
            ],
        });
        let page = html(std::slice::from_ref(&r), None);
        assert_eq!(page.matches("<polyline").count(), 2, "{page}");
        let md = markdown(&[r], None);
        assert!(md.contains("| 3 clones | 560 req/s | 60.0 ms |"), "{md}");
    }

    #[test]
    fn files_written_before_kinds_existed_still_read() {
        let old = r#"{"part":1,"title":"Clones","claim":"c","built":true,
            "machine":{"cores":2,"memory_gib":1.0,"cpu":"x","os":"y","kernel":"z","services":{}},
            "figures":[{"name":"n","value":1.0,"unit":"%","shows":"s","comparison":"c"}],
            "notes":[],"written_at":0}"#;
        let r: PartResults = serde_json::from_str(old).unwrap();
        assert_eq!(r.figures[0].kind, Kind::Measured);
        assert_eq!(r.provenance.git_rev, "unknown");
        assert!(r.curves.is_empty());
    }

    #[test]
    fn the_live_screenshot_closes_both_reports_with_its_measured_times() {
        let shot = LiveShot {
            taken_at: "2026-11-23T12:00:00Z".into(),
            red_after_ms: 1812,
            green_after_ms: 3388,
            revision: "abc1234".into(),
        };
        let md = markdown(&[], Some(&shot));
        assert!(md.ends_with(&shot.markdown()), "{md}");
        assert!(md.contains("![the live page](live.png)"));
        assert!(md.contains("red 1.8 s after") && md.contains("green 3.4 s after"));
        let page = html(&[], Some(&shot));
        assert!(page.ends_with(&format!("{}</body></html>\n", shot.html())));
        assert!(!markdown(&[], None).contains("The live view"));
    }
}

/// The live page's screenshot, as its browser test left it beside the
/// report (`live.png` and this, as `live.json`): when and what it measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LiveShot {
    /// When the screenshot was taken (RFC 3339, UTC).
    pub taken_at: String,
    /// Measured: from `./lab stop clone2` to its box drawn red, in ms.
    pub red_after_ms: u64,
    /// Measured: from `./lab start clone2` returning to its box green.
    pub green_after_ms: u64,
    /// The revision the test ran on (`git describe`), if known.
    pub revision: String,
}

impl LiveShot {
    /// The file beside the report that describes `live.png`.
    pub const FILE: &str = "live.json";
    /// The screenshot's file name, beside the report.
    pub const PNG: &str = "live.png";

    /// Reads `dir/live.json`; `None` if the test has not left one.
    pub fn read(dir: &std::path::Path) -> Option<LiveShot> {
        let text = std::fs::read_to_string(dir.join(Self::FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn caption(&self) -> String {
        format!(
            "The live page (http://127.0.0.1:18099/) with clone2 stopped, taken by its browser test at {} (revision {}). Measured in that run: clone2's box turned red {:.1} s after `./lab stop clone2` and green {:.1} s after `./lab start clone2` returned.",
            self.taken_at,
            self.revision,
            self.red_after_ms as f64 / 1000.0,
            self.green_after_ms as f64 / 1000.0
        )
    }

    /// The report's section for it, in Markdown.
    pub fn markdown(&self) -> String {
        format!(
            "\n## The live view\n\n![the live page]({})\n\n{}\n",
            Self::PNG,
            self.caption()
        )
    }

    /// The report's section for it, in HTML (before `</body>`).
    pub fn html(&self) -> String {
        format!(
            "<h2>The live view</h2><p><a href=\"{png}\"><img src=\"{png}\" alt=\"the live page\" style=\"max-width:100%\"></a></p><p>{}</p>",
            escape(&self.caption()),
            png = Self::PNG
        )
    }
}
