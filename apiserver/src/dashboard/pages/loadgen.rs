//! loadgen reports: the upload form, one report drawn, two compared.

use super::*;

pub(super) fn loadgen_form(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p.error { (m) } }
        p { "Upload a report written by " code { "loadgen run --report-json FILE" } " to see it drawn; upload two to compare them side by side (B against A)." }
        form method="post" action="/ui/loadgen" enctype="multipart/form-data" {
            label { "Report A " input type="file" name="a" accept=".json,application/json" required; }
            " "
            label { "Report B (optional) " input type="file" name="b" accept=".json,application/json"; }
            " "
            button type="submit" { "Show" }
        }
    }
}

/// `POST /ui/loadgen`: one report drawn, or two compared.
pub async fn loadgen_upload(v: &Viewer, req: axum::extract::Request) -> Result<String, UiError> {
    use axum::extract::FromRequest;
    let page = |body: Markup| ui::page::render(&ui::page::Page { title: "loadgen reports", section: "/ui/loadgen", live: None, user: Some(v.name()) }, html! { h1 { "loadgen reports" } (body) });
    let mut form = match axum::extract::Multipart::from_request(req, &()).await {
        Ok(f) => f,
        Err(e) => return Ok(page(loadgen_form(Some(&format!("The upload is not a form with files: {e}"))))),
    };
    let mut reports: HashMap<String, Value> = HashMap::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Ok(page(loadgen_form(Some(&format!("The upload could not be read: {e}"))))),
        };
        let name = field.name().unwrap_or("").to_string();
        if name != "a" && name != "b" {
            continue;
        }
        let mut field = field;
        let mut buf = Vec::new();
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    if buf.len() + c.len() > crate::dashboard::REPORT_BYTES_MAX {
                        return Ok(page(loadgen_form(Some(&format!("Report {} is larger than {} MiB.", name.to_uppercase(), crate::dashboard::REPORT_BYTES_MAX >> 20)))));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => return Ok(page(loadgen_form(Some(&format!("The upload could not be read: {e}"))))),
            }
        }
        if buf.is_empty() {
            continue;
        }
        let parsed: Value = match serde_json::from_slice(&buf) {
            Ok(v) => v,
            Err(e) => return Ok(page(loadgen_form(Some(&format!("Report {} is not JSON: {e}", name.to_uppercase()))))),
        };
        if let Err(e) = ui::report::check(&parsed) {
            return Ok(page(loadgen_form(Some(&format!("Report {}: {e}", name.to_uppercase())))));
        }
        reports.insert(name, parsed);
    }
    Ok(match (reports.get("a"), reports.get("b")) {
        (Some(a), Some(b)) => page(html! { (loadgen_form(None)) h2 { "A against B" } (ui::report::compare(a, b)) }),
        (Some(a), None) | (None, Some(a)) => page(html! { (loadgen_form(None)) (ui::report::one(a)) }),
        (None, None) => page(loadgen_form(Some("Choose a report file to upload."))),
    })
}
