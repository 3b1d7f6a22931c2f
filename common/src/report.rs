//! The report: `target/lab/report/report.md` and `index.html`, built from
//! the results files alone.
//!
//! Per part: the article's claim, the machine, then each comparison as a
//! table (the anti-pattern and the fix side by side) and, in the HTML, a bar
//! chart of the figures that share a unit. Parts without results, or whose
//! demo is not built yet, are listed as such, so a reader never mistakes a
//! missing experiment for a passing one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::results::{Figure, PartResults};

const PARTS: [(u8, &str); 4] = [
    (1, "Clones"),
    (2, "Database"),
    (3, "Cache"),
    (4, "Asynchronism"),
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

fn value(v: f64) -> String {
    // Whole numbers and large ones need no decimals.
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The report as Markdown.
pub fn markdown(results: &[PartResults]) -> String {
    let mut md = String::from("# Scalability for Dummies: the lab report\n\n");
    md.push_str("Every figure below was measured by `./lab tour` on the machine stated with it.\n");
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
        for (comparison, figures) in comparisons(r) {
            let _ = writeln!(
                md,
                "### {comparison}\n\n| figure | value | unit | shows |\n|---|---:|---|---|"
            );
            for f in figures {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    f.name,
                    value(f.value),
                    f.unit,
                    f.shows
                );
            }
            md.push('\n');
        }
        for note in &r.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
        label_w + bar_w + 120.0
    );
    for (i, f) in figures.iter().enumerate() {
        let y = 5.0 + row_h * i as f64;
        let w = (f.value.max(0.0) / max * bar_w).max(1.0);
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{ty}" text-anchor="end">{name}</text><rect x="{bx}" y="{y}" width="{w:.1}" height="{h}" fill="#4a7ebb"/><text x="{vx:.1}" y="{ty}">{val} {unit}</text>"##,
            x = label_w - 6.0,
            ty = y + 15.0,
            name = escape(&f.name),
            bx = label_w,
            h = row_h - 6.0,
            vx = label_w + w + 6.0,
            val = value(f.value),
            unit = escape(&f.unit),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The report as a self-contained HTML page with SVG charts.
pub fn html(results: &[PartResults]) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Scalability for Dummies: lab report</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}\
         td.n{text-align:right}blockquote{color:#444;border-left:3px solid #aaa;margin-left:0;padding-left:1em}\
         .missing{color:#a33}</style></head><body><h1>Scalability for Dummies: the lab report</h1>\
         <p>Every figure was measured by <code>./lab tour</code> on the machine stated with it.</p>",
    );
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
        let _ = write!(h, "<p>Machine: {}.</p>", escape(&r.machine.line()));
        for (comparison, figures) in comparisons(r) {
            let _ = write!(
                h,
                "<h3>{}</h3><table><tr><th>figure</th><th>value</th><th>unit</th><th>shows</th></tr>",
                escape(comparison)
            );
            for f in &figures {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&f.name),
                    value(f.value),
                    escape(&f.unit),
                    escape(&f.shows)
                );
            }
            h.push_str("</table>");
            // One chart per unit: bars of different units do not compare.
            let mut units: Vec<&str> = figures.iter().map(|f| f.unit.as_str()).collect();
            units.dedup();
            for unit in units {
                let same: Vec<&Figure> =
                    figures.iter().copied().filter(|f| f.unit == unit).collect();
                if same.len() >= 2 {
                    h.push_str("<p>");
                    h.push_str(&bar_chart(&same));
                    h.push_str("</p>");
                }
            }
        }
        if !r.notes.is_empty() {
            h.push_str("<ul>");
            for n in &r.notes {
                let _ = write!(h, "<li>{}</li>", escape(n));
            }
            h.push_str("</ul>");
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_figures_side_by_side_and_missing_parts() {
        let mut r = PartResults::new(1, "Clones", "Keep no state <on> a clone.");
        r.figure(
            "sessions behind the LB",
            "memory: no session",
            66.7,
            "%",
            "requests that found no session",
        );
        r.figure(
            "sessions behind the LB",
            "redis: no session",
            0.0,
            "%",
            "requests that found no session",
        );
        r.notes.push("3 clones on one 2-core machine".into());
        let not_built = PartResults::not_built(2, "Database", "Replicate, then shard.");
        let md = markdown(&[r.clone(), not_built.clone()]);
        assert!(md.contains("| memory: no session | 66.70 | % |"), "{md}");
        assert!(md.contains("## Part 2: Database"));
        assert!(md.contains("Not built yet"));
        assert!(md.contains("## Part 3: Cache\n\n_No results"));
        let page = html(&[r, not_built]);
        assert!(page.contains("<svg"));
        assert!(page.contains("Keep no state &lt;on&gt; a clone."));
        assert_eq!(page.matches("<svg").count(), 1);
    }
}
