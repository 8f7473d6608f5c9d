//! The map as an SVG picture: one square cell per pageblock, coloured by
//! verdict, a row of [`COLUMNS`] blocks each, every zone starting on its
//! own row under a caption line with a separator above; a legend with the
//! block count per verdict below. Each cell carries a `<title>` (PFN,
//! verdict, pages per class) that viewers show on hover.
//!
//! Written through a small typed builder ([`Element`]): the picture is
//! rectangles, lines and text, which SVG says directly, so no drawing
//! crate is needed and the output stays plain, diffable and parseable.

use std::fmt::Write as _;

use super::{
    PhysMap,
    classify::{VERDICTS, Verdict},
};

/// Blocks per row (256 MiB of 2 MiB blocks).
pub const COLUMNS: u64 = 128;
/// Cell size in pixels, gap included.
pub const CELL: u64 = 6;
const MARGIN: u64 = 10;
const CAPTION: u64 = 18;
const LEGEND_ROW: u64 = 16;

/// Fill colour of a verdict.
pub fn colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Free => "#2ca02c",
        Verdict::Thp => "#1f77b4",
        Verdict::Hugetlb => "#9467bd",
        Verdict::Compactable => "#ffbf00",
        Verdict::Blocked => "#d62728",
        Verdict::Offline => "#303030",
        Verdict::Hole => "#e4e4e4",
    }
}

/// An SVG element.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    /// `<rect>` with a class, an optional hover title.
    Rect {
        x: u64,
        y: u64,
        w: u64,
        h: u64,
        fill: &'static str,
        class: &'static str,
        title: Option<String>,
    },
    /// `<line>`.
    Line { x1: u64, y1: u64, x2: u64, y2: u64 },
    /// `<text>` at a baseline.
    Text {
        x: u64,
        y: u64,
        class: &'static str,
        text: String,
    },
}

/// XML-escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Element {
    fn write(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self {
            Element::Rect {
                x,
                y,
                w,
                h,
                fill,
                class,
                title,
            } => match title {
                Some(t) => writeln!(
                    out,
                    r#"<rect class="{class}" x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"><title>{}</title></rect>"#,
                    esc(t)
                ),
                None => writeln!(
                    out,
                    r#"<rect class="{class}" x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"/>"#
                ),
            },
            Element::Line { x1, y1, x2, y2 } => writeln!(
                out,
                r#"<line class="zone-edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="black"/>"#
            ),
            Element::Text { x, y, class, text } => writeln!(
                out,
                r#"<text class="{class}" x="{x}" y="{y}" font-family="sans-serif" font-size="12">{}</text>"#,
                esc(text)
            ),
        };
    }
}

/// A whole picture.
#[derive(Debug, Default)]
pub struct Svg {
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
    /// Its elements, in drawing order.
    pub elements: Vec<Element>,
}

impl Svg {
    /// The document text.
    pub fn render(&self) -> String {
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">
<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>
"#,
            w = self.width,
            h = self.height
        );
        for e in &self.elements {
            e.write(&mut out);
        }
        out.push_str("</svg>\n");
        out
    }
}

/// Draws `map`.
pub fn draw(map: &PhysMap) -> Svg {
    let bp = map.block_pages();
    let mut svg = Svg {
        width: 2 * MARGIN + COLUMNS * CELL,
        ..Svg::default()
    };
    let mut y = MARGIN;
    let mut counts = [0u64; VERDICTS.len()];
    for (zi, z) in map.zones.iter().enumerate() {
        let blocks: Vec<_> = map.blocks.iter().filter(|b| b.zone == zi).collect();
        let Some(first) = blocks.first().map(|b| b.pfn) else {
            continue;
        };
        if zi > 0 {
            svg.elements.push(Element::Line {
                x1: MARGIN,
                y1: y,
                x2: svg.width - MARGIN,
                y2: y,
            });
        }
        let mib = blocks.len() as u64 * bp * 4 / 1024;
        svg.elements.push(Element::Text {
            x: MARGIN,
            y: y + CAPTION - 5,
            class: "zone",
            text: format!(
                "node {} {} PFN {:#x}-{:#x} ({} blocks, {} MiB)",
                z.zone.node,
                z.zone.name,
                z.zone.start_pfn,
                z.zone.end_pfn(),
                blocks.len(),
                mib
            ),
        });
        y += CAPTION;
        let mut rows = 0;
        for b in &blocks {
            let i = (b.pfn - first) / bp;
            let (row, col) = (i / COLUMNS, i % COLUMNS);
            rows = rows.max(row + 1);
            counts[b.verdict as usize] += 1;
            svg.elements.push(Element::Rect {
                x: MARGIN + col * CELL,
                y: y + row * CELL,
                w: CELL - 1,
                h: CELL - 1,
                fill: colour(b.verdict),
                class: "block",
                title: Some(b.describe()),
            });
        }
        y += rows * CELL + 4;
    }
    y += 6;
    for (v, n) in VERDICTS.iter().zip(counts) {
        svg.elements.push(Element::Rect {
            x: MARGIN,
            y,
            w: 10,
            h: 10,
            fill: colour(*v),
            class: "legend",
            title: None,
        });
        svg.elements.push(Element::Text {
            x: MARGIN + 16,
            y: y + 10,
            class: "legend",
            text: format!("{}: {n} blocks", v.name()),
        });
        y += LEGEND_ROW;
    }
    svg.height = y + MARGIN;
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_escape_text() {
        let mut s = String::new();
        Element::Text {
            x: 1,
            y: 2,
            class: "c",
            text: "a<b & \"c\"".into(),
        }
        .write(&mut s);
        assert!(s.contains(">a&lt;b &amp; &quot;c&quot;</text>"), "{s}");
    }
}
