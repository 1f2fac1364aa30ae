//! Pictures drawn on the server as inline SVG: the traffic page's charts and the
//! enrolment QR code. Hand-written (a few dozen lines) rather than a plotting crate;
//! every text in them is escaped, and they carry a title for screen readers.

use std::fmt::Write;

/// Escapes text for SVG (XML) content and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round number at or above `max` for an axis's top (1, 2, 5 × a power of ten).
fn nice_top(max: u64) -> u64 {
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            let top = unit.saturating_mul(m);
            if top >= max {
                return top.max(1);
            }
        }
        unit = unit.saturating_mul(10);
    }
}

/// A column chart of hourly counts (`id`: unique on its page, naming its title) (oldest first, the first hour starting at
/// `first_hour`): one bar an hour, named by its hour and count for screen readers, a
/// label under each day's first hour (`day_labels[i]` for the day starting at column
/// `day_offset + i * 24`), the axis top on the left.
pub fn hourly(
    id: &str,
    title: &str,
    counts: &[u64],
    first_hour: crate::clock::Micros,
    day_offset: usize,
    day_labels: &[String],
) -> String {
    let (w, h, left, bottom, top) = (720.0, 160.0, 48.0, 20.0, 8.0);
    let n = counts.len().max(1) as f64;
    let max = nice_top(counts.iter().copied().max().unwrap_or(0));
    let plot_w = w - left - 4.0;
    let plot_h = h - bottom - top;
    let bar = plot_w / n;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" role="img" aria-labelledby="t-{id}"><title id="t-{id}">{t}</title>"#,
        id = esc(id),
        t = esc(title)
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" class="axis"/><line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/><text x="{tx}" y="{ty}" class="tick" text-anchor="end">{max}</text><text x="{tx}" y="{y0}" class="tick" text-anchor="end">0</text>"##,
        y0 = top + plot_h,
        x1 = w - 4.0,
        tx = left - 4.0,
        ty = top + 10.0,
    );
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let bh = (c as f64 / max as f64) * plot_h;
        let hour = crate::clock::micros_to_datetime(first_hour + i as i64 * 3_600_000_000);
        let _ = write!(
            s,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{bw:.2}" height="{bh:.2}" class="bar"><title>{at}: {c}</title></rect>"#,
            x = left + i as f64 * bar,
            y = top + plot_h - bh,
            bw = (bar - 0.5).max(0.5),
            at = hour.format("%Y-%m-%d %H:00"),
        );
    }
    for (d, label) in day_labels.iter().enumerate() {
        let col = day_offset + d * 24;
        if col >= counts.len() {
            break;
        }
        let x = left + col as f64 * bar;
        if x > w - 64.0 {
            // No room for the label before the edge.
            break;
        }
        let _ = write!(
            s,
            r#"<line x1="{x:.2}" y1="{top}" x2="{x:.2}" y2="{y0}" class="grid"/><text x="{tx:.2}" y="{ly}" class="tick">{l}</text>"#,
            y0 = top + plot_h,
            tx = x + 2.0,
            ly = h - 4.0,
            l = esc(label),
        );
    }
    s.push_str("</svg>");
    s
}

/// Horizontal bars, one per (label, value, the value as written beside its bar).
pub fn bars(id: &str, title: &str, rows: &[(String, u64, String)]) -> String {
    let (w, row_h, label_w) = (720.0, 22.0, 220.0);
    let h = (rows.len().max(1) as f64) * row_h + 8.0;
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let plot_w = w - label_w - 90.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" role="img" aria-labelledby="t-{id}"><title id="t-{id}">{t}</title>"#,
        id = esc(id),
        t = esc(title)
    );
    for (i, (label, v, shown)) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let bw = (*v as f64 / max as f64) * plot_w;
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{ty:.1}" class="label" text-anchor="end">{l}</text><rect x="{label_w}" y="{y:.1}" width="{bw:.2}" height="{bh}" class="bar"/><text x="{vx:.2}" y="{ty:.1}" class="label">{shown}</text>"#,
            lx = label_w - 6.0,
            ty = y + row_h * 0.65,
            bh = row_h - 6.0,
            vx = label_w + bw + 6.0,
            l = esc(label),
            shown = esc(shown),
        );
    }
    s.push_str("</svg>");
    s
}

/// An otpauth URI as a QR code, for an authenticator app to scan off the screen.
pub fn qr(uri: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| e.to_string())?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    // Inline in the page: without the XML declaration, with a name for readers.
    let svg = svg
        .split_once("?>")
        .map_or(svg.as_str(), |(_, rest)| rest)
        .replacen(
            "<svg ",
            r#"<svg role="img" aria-label="QR code of the enrolment URI" "#,
            1,
        );
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_escape_their_text_and_scale_to_a_round_top() {
        let s = bars(
            "t",
            "a <b>",
            &[("x&y".into(), 7, "7".into()), ("z".into(), 3, "3".into())],
        );
        assert!(s.contains("a &lt;b&gt;") && s.contains("x&amp;y"));
        assert!(!s.contains("<b>"));
        assert_eq!(nice_top(7), 10);
        assert_eq!(nice_top(101), 200);
        assert_eq!(nice_top(0), 1);
        let mut counts = vec![0; 48];
        counts[30] = 4;
        let h = hourly(
            "m",
            "Messages",
            &counts,
            0,
            0,
            &["Mon".into(), "Tue".into()],
        );
        assert_eq!(h.matches("class=\"bar\"").count(), 1);
        assert!(h.contains(">5<"), "axis top is 5: {h}");
        assert!(h.contains(">Tue<"));
        assert!(h.contains("<title>1970-01-02 06:00: 4</title>"), "{h}");
    }

    #[test]
    fn the_qr_code_is_inline_svg() {
        let s = qr("otpauth://totp/relaylog:anna?secret=ABC&issuer=relaylog").unwrap();
        assert!(s.starts_with("<svg role=\"img\""), "{}", &s[..60]);
        assert!(!s.contains("<?xml"));
        assert!(s.ends_with("</svg>"));
    }
}
