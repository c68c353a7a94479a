//! The report in a real browser: headless Chromium opens index.html, and the page's own
//! check (`picie::report::FIGCHECK_SCRIPT`) says whether every figure was laid out larger
//! than 50 x 50 px and, for images, decoded. Skipped, with a message, without Chromium.
//! The report of a real run is checked from `analysis.rs`, which already builds one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BROWSERS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
const TIMEOUT: Duration = Duration::from_secs(60);

/// The first Chromium on PATH.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| BROWSERS.iter().map(move |b| dir.join(b)))
        .find(|p| p.is_file())
}

/// Chromium is optional (README): its absence is a recorded skip.
fn skip_no_chromium() {
    picie_testkit::skip(
        "chromium: not found (install with `apt-get install -y chromium`, or `make chromium`)",
    );
}

/// Runs headless Chromium on `page` with `args`, killed after [`TIMEOUT`]; its stdout.
fn headless(browser: &Path, page: &Path, args: &[&str]) -> String {
    // Its own profile: two runs at once must not share (and lock) one.
    let profile = tempfile::tempdir().unwrap();
    let url = format!(
        "file://{}",
        page.canonicalize()
            .unwrap()
            .display()
            .to_string()
            .replace(' ', "%20")
    );
    let mut child = Command::new(browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes while waiting, or a chatty browser blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} {url}: no answer within {TIMEOUT:?}",
                browser.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(
        status.success(),
        "{} {args:?} {url}: {status}\n{stderr}",
        browser.display()
    );
    stdout
}

/// The `figcheck: N ok, M bad` line of the page's DOM after its scripts ran.
fn figcheck(browser: &Path, page: &Path) -> String {
    let dom = headless(browser, page, &["--virtual-time-budget=5000", "--dump-dom"]);
    let start = dom
        .find("<pre id=\"figcheck\">")
        .unwrap_or_else(|| panic!("no #figcheck in the DOM:\n{dom}"));
    let rest = &dom[start + "<pre id=\"figcheck\">".len()..];
    rest[..rest.find("</pre>").unwrap()].to_string()
}

/// Opens `index` in headless Chromium: every one of the `figures` figures must load with a
/// non-trivial size, and a 1280 x 2000 screenshot must be a PNG that is not one flat colour.
/// Says so and returns where Chromium is absent.
pub(crate) fn check_in_chromium(index: &Path, figures: usize) {
    let Some(browser) = chromium() else {
        return skip_no_chromium();
    };
    let start = Instant::now();
    let check = figcheck(&browser, index);
    assert_eq!(
        check,
        format!("figcheck: {figures} ok, 0 bad"),
        "{}",
        index.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("report.png");
    headless(
        &browser,
        index,
        &[
            "--window-size=1280,2000",
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1280, 2000));
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    // Text, lines and sample images: far more than a blank or error page's few colours.
    assert!(
        colours.len() > 50,
        "{} colours in the screenshot",
        colours.len()
    );
    eprintln!(
        "chromium: {check}; screenshot {} colours; {:.1} s",
        colours.len(),
        start.elapsed().as_secs_f64()
    );
}

/// The check itself can fail: a page with one good chart and one image that does not
/// decode reads `1 ok, 1 bad`.
#[test]
fn figcheck_counts_a_figure_that_did_not_load_as_bad() {
    let Some(browser) = chromium() else {
        return skip_no_chromium();
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("index.html");
    std::fs::write(
        &page,
        format!(
            "<!DOCTYPE html><html><body>\
             <figure><svg width=\"300\" height=\"200\" xmlns=\"http://www.w3.org/2000/svg\">\
             <rect width=\"300\" height=\"200\" fill=\"navy\"/></svg></figure>\
             <figure><img src=\"data:image/png;base64,AAAA\" width=\"300\" height=\"200\"></figure>\
             <pre id=\"figcheck\">figcheck: not run</pre>{}</body></html>",
            picie::report::FIGCHECK_SCRIPT
        ),
    )
    .unwrap();
    assert_eq!(
        figcheck(&browser, &page),
        "figcheck: 1 ok, 1 bad (figures 1)"
    );
}
