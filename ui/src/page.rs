//! The shell every page shares: navigation, styles, and the script that keeps a page live.
//!
//! A live page marks the region that changes with `id="live"` and names its event stream in
//! `data-live`; `ui.js` opens it (server-sent events) and swaps the region's markup for each
//! update the server sends (at most one a second; the markup is rendered and escaped on the
//! server, as the first load was).

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The sections, in the navigation's order: (path, label).
pub const SECTIONS: [(&str, &str); 7] = [
    ("/ui/", "Cluster"),
    ("/ui/nodes", "Nodes"),
    ("/ui/pods", "Pods"),
    ("/ui/workloads", "Workloads"),
    ("/ui/scheduler", "Scheduler"),
    ("/ui/store", "Store"),
    ("/ui/loadgen", "loadgen"),
];

pub const SCRIPT: &str = include_str!("assets/ui.js");
pub const STYLE: &str = include_str!("assets/ui.css");

/// What a page is: its title, its section, and (for a live page) the stream that updates it.
pub struct Page<'a> {
    pub title: &'a str,
    /// The path of its section in `SECTIONS`.
    pub section: &'a str,
    /// The server-sent event stream of its live region.
    pub live: Option<&'a str>,
    /// Who is looking (shown in the header).
    pub user: Option<&'a str>,
}

/// A whole page: `body` inside the shared shell. When the page is live, `body` should hold
/// the element `id="live"`.
pub fn render(p: &Page, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (p.title) " · capstan" }
                // No favicon request (a 404 would be a console error on every page).
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body data-live=[p.live] {
                header {
                    a.brand href="/ui/" { "capstan" }
                    nav {
                        @for (path, label) in SECTIONS {
                            a href=(path) class=[(path == p.section).then_some("here")] { (label) }
                        }
                    }
                    span.who {
                        @if let Some(u) = p.user { (u) " · " a href="/ui/logout" { "log out" } }
                        @if p.live.is_some() { " " span #status.status title="live updates" { "●" } }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A page that stands alone, as a file (loadgen's report): the same styles, inline, and no
/// script or link to load.
pub fn document(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { main { h1 { (title) } (body) } }
        }
    }
    .into_string()
}

/// The page an error gets: its code and the message (the API's own, for a bad filter).
pub fn error(code: u16, reason: &str, message: &str, user: Option<&str>) -> String {
    render(
        &Page { title: reason, section: "", live: None, user },
        html! {
            h1 { (code) " " (reason) }
            p.error { (message) }
            p { a href="/ui/" { "Back to the cluster" } }
        },
    )
}

/// The login page: a bearer token (a ServiceAccount token from `kubectl create token`, or
/// any token the API accepts), kept in a cookie for this site only.
pub fn login(message: Option<&str>) -> String {
    render(
        &Page { title: "Log in", section: "", live: None, user: None },
        html! {
            h1 { "Log in" }
            @if let Some(m) = message { p.error { (m) } }
            p { "Paste a bearer token the API server accepts (for example the output of " code { "kubectl create token NAME" } "). Through " code { "kubectl proxy" } " no login is needed." }
            form method="post" action="/ui/login" {
                textarea name="token" rows="4" cols="80" required {}
                br;
                button type="submit" { "Log in" }
            }
        },
    )
}

/// A table of (label, value) rows.
pub fn facts(rows: &[(&str, String)]) -> Markup {
    html! {
        table.facts {
            @for (k, v) in rows { tr { th { (k) } td { (v) } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_marks_the_section_and_escapes_what_it_is_given() {
        let s = render(&Page { title: "<b>t</b>", section: "/ui/pods", live: Some("/ui/events?path=/ui/pods"), user: Some("alice<") }, html! { p { "x" } });
        assert!(s.contains(r#"<a href="/ui/pods" class="here">Pods</a>"#), "{s}");
        assert!(s.contains("&lt;b&gt;t&lt;/b&gt; · capstan"));
        assert!(s.contains("alice&lt;"));
        assert!(s.contains(r#"data-live="/ui/events?path=/ui/pods""#));
        let d = document("r<1>", html! { p { "x" } });
        assert!(d.contains("<title>r&lt;1&gt;</title>") && d.contains("<style>") && !d.contains("<script"), "{d}");
        let e = error(400, "Bad Request", "unable to parse requirement: <x>", None);
        assert!(e.contains("unable to parse requirement: &lt;x&gt;"), "{e}");
    }
}
