//! index.html: one self-contained page (SVG charts inline, PNG samples as base64 data: URIs),
//! so that the file can be moved or mailed alone and opened offline.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use polars::prelude::*;

use crate::analysis::Run;
use crate::data::ClassInfo;

/// On load, measures every figure and writes `figcheck: N ok, M bad` into `#figcheck`: a
/// figure is ok when it is laid out larger than 50 x 50 px and, for an image, decoded. The
/// integration test reads it back from headless Chromium's DOM.
pub const FIGCHECK_SCRIPT: &str = r#"<script>
window.addEventListener('load', function () {
  var ok = 0, bad = [];
  document.querySelectorAll('figure svg, figure img').forEach(function (el, i) {
    var r = el.getBoundingClientRect();
    var decoded = el.tagName.toLowerCase() !== 'img' || (el.complete && el.naturalWidth > 0);
    if (r.width > 50 && r.height > 50 && decoded) { ok += 1; } else { bad.push(i); }
  });
  document.getElementById('figcheck').textContent =
    'figcheck: ' + ok + ' ok, ' + bad.length + ' bad' +
    (bad.length ? ' (figures ' + bad.join(', ') + ')' : '');
});
</script>
"#;

const STYLE: &str = "body { font-family: sans-serif; margin: 2em; max-width: 1100px; } \
figure { margin: 1.5em 0; } figcaption { margin-bottom: 0.4em; } \
figure svg, figure img { max-width: 100%; height: auto; display: block; } \
figure img { image-rendering: pixelated; border: 1px solid #ccc; } \
table { border-collapse: collapse; font-size: 90%; } th, td { border: 1px solid #bbb; padding: 3px 6px; } \
td { text-align: right; } .note { color: #a04000; } \
.swatch { display: inline-block; width: 1.2em; height: 0.9em; margin: 0 0.3em 0 0.8em; vertical-align: middle; border: 1px solid #999; } \
#figcheck { color: #888; font-size: 80%; }";

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page, built section by section.
pub(super) struct Page {
    title: String,
    body: String,
}

impl Page {
    pub(super) fn new(r: &Run) -> Self {
        let rec = &r.record;
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>picie report: {}</h1>\n<p>{} on {}; pipeline {}; started {}, finished {}; {} nodes</p>\n",
            esc(&rec.name),
            if rec.ok { "ok" } else { "FAILED" },
            esc(&rec.device),
            esc(&rec.pipeline.display().to_string()),
            esc(&rec.started),
            esc(&rec.finished),
            rec.nodes.len()
        );
        if let Some(e) = &rec.error {
            let _ = writeln!(body, "<p><b>error:</b> {}</p>", esc(e));
        }
        Self {
            title: format!("picie report: {}", rec.name),
            body,
        }
    }

    /// The head of a sweep's page: its seeds and member runs.
    pub(super) fn for_sweep(sw: &crate::sweep::Sweep) -> Self {
        let rec = &sw.record;
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>picie report: {}</h1>\n<p>{} seed(s) {:?} of pipeline {}; finished {}</p>\n<ul>\n",
            esc(&rec.name),
            rec.seeds.len(),
            rec.seeds,
            esc(&rec.pipeline.display().to_string()),
            esc(&rec.finished)
        );
        for r in &sw.runs {
            let _ = writeln!(
                body,
                "<li>{}: {} on {}, finished {}</li>",
                esc(&r.record.name),
                if r.record.ok { "ok" } else { "FAILED" },
                esc(&r.record.device),
                esc(&r.record.finished)
            );
        }
        body.push_str("</ul>\n");
        Self {
            title: format!("picie report: {}", rec.name),
            body,
        }
    }

    pub(super) fn heading(&mut self, text: &str) {
        let _ = writeln!(self.body, "<h2>{}</h2>", esc(text));
    }

    /// Why something is missing.
    pub(super) fn note(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p class=\"note\"><i>{}</i></p>", esc(text));
    }

    /// A chart inline (plotters escapes its text), with a link to its own file.
    pub(super) fn svg_figure(&mut self, caption: &str, svg: &str, file: &str) {
        let _ = writeln!(
            self.body,
            "<figure><figcaption>{} <a href=\"{}\">(svg)</a></figcaption>\n{}</figure>",
            esc(caption),
            esc(file),
            svg.trim()
        );
    }

    /// A raster image embedded as a data: URI.
    pub(super) fn png_figure(&mut self, caption: &str, png: &[u8]) {
        let _ = writeln!(
            self.body,
            "<figure><figcaption>{}</figcaption><img src=\"data:image/png;base64,{}\" alt=\"{}\"></figure>",
            esc(caption),
            STANDARD.encode(png),
            esc(caption)
        );
    }

    /// The class colours of the sample panels.
    pub(super) fn legend(&mut self, classes: &[ClassInfo]) {
        let _ = write!(self.body, "<p>classes:");
        for c in classes {
            let [r, g, b] = c.colour;
            let _ = write!(
                self.body,
                "<span class=\"swatch\" style=\"background: rgb({r},{g},{b})\"></span>{}",
                esc(&c.name)
            );
        }
        let _ = writeln!(
            self.body,
            "<br>black: ignored / no label; grey: a cluster matched to no class</p>"
        );
    }

    /// A DataFrame as a table (floats to two decimals, lists joined).
    pub(super) fn table(&mut self, df: &DataFrame) {
        let _ = writeln!(self.body, "<table><tr>");
        for name in df.get_column_names() {
            let _ = write!(self.body, "<th>{}</th>", esc(name));
        }
        let _ = writeln!(self.body, "</tr>");
        for i in 0..df.height() {
            let _ = write!(self.body, "<tr>");
            for col in df.columns() {
                let cell = match col.get(i) {
                    Ok(AnyValue::Float64(v)) => format!("{v:.2}"),
                    Ok(AnyValue::Null) => String::new(),
                    Ok(AnyValue::String(s)) => s.to_string(),
                    Ok(AnyValue::List(s)) => s
                        .f64()
                        .map(|ca| {
                            ca.iter()
                                .map(|v| v.map_or("-".into(), |v| format!("{v:.1}")))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default(),
                    Ok(v) => v.to_string(),
                    Err(_) => String::new(),
                };
                let _ = write!(self.body, "<td>{}</td>", esc(&cell));
            }
            let _ = writeln!(self.body, "</tr>");
        }
        let _ = writeln!(self.body, "</table>");
    }

    pub(super) fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{}</title>\n<style>{STYLE}</style></head>\n<body>\n{}\
             <pre id=\"figcheck\">figcheck: not run</pre>\n{FIGCHECK_SCRIPT}</body></html>\n",
            esc(&self.title),
            self.body
        )
    }
}
