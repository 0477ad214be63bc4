//! The dashboard's rendering, without I/O: what the API server's `/ui/` pages (apiserver's
//! `ui` module gathers the data) and loadgen's HTML report draw.
//!
//! - `page`: the shell every page shares (navigation, styles, the live-update script), and
//!   the error page.
//! - `svg`: charts drawn on the server as SVG (line charts over time, bar charts of
//!   distributions, quantile strips), so a page needs no script to show them.
//! - `timeline`: a pod's life from server timestamps and the scheduler's attempts.
//! - `report`: a loadgen report (`--report-json`), alone or two side by side.
//!
//! Every value taken from an object (names, labels, log lines, messages) goes through maud's
//! escaping; nothing here writes raw HTML from data.

pub mod page;
pub mod report;
pub mod svg;
pub mod timeline;

pub use maud::{Markup, PreEscaped, html};

/// A quantity of time in microseconds, readable: `850 µs`, `12.4 ms`, `3.2 s`.
pub fn micros(us: f64) -> String {
    if !us.is_finite() {
        return "-".into();
    }
    if us < 10.0 {
        format!("{us:.1} µs")
    } else if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// Bytes, readable: `512 B`, `3.4 MiB`.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{v:.0} {}", UNITS[i]) } else { format!("{v:.1} {}", UNITS[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_in_their_unit() {
        assert_eq!(micros(850.0), "850 µs");
        assert_eq!(micros(0.4), "0.4 µs");
        assert_eq!(micros(12_400.0), "12.4 ms");
        assert_eq!(micros(3_200_000.0), "3.20 s");
        assert_eq!(micros(f64::NAN), "-");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.5 * 1024.0 * 1024.0), "3.5 MiB");
    }
}
