//! The bootstrap token cleaner, as kube-controller-manager's `tokencleaner`: a bootstrap token
//! Secret (`kube-system`, type `bootstrap.kubernetes.io/token`) whose `expiration` has passed
//! is deleted. The Secrets are few (one per outstanding join token), so they are listed by
//! field selector every `EVERY` rather than followed by an informer.

use std::time::Duration;

use base64::Engine;
use client::{Client, ClientError};
use serde_json::{Value, json};

/// How often the bootstrap token Secrets are looked at.
pub const EVERY: Duration = Duration::from_secs(10);

const LIST: &str = "/api/v1/namespaces/kube-system/secrets?fieldSelector=type%3Dbootstrap.kubernetes.io%2Ftoken";

/// The Secret's `expiration`, if it has one that parses.
fn expiration(secret: &Value) -> Option<jiff::Timestamp> {
    let b = secret["data"]["expiration"].as_str()?;
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()?;
    text.trim().parse().ok()
}

/// The names of the Secrets of `list` expired at `now`.
pub fn expired_names(list: &Value, now: jiff::Timestamp) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| expiration(s).is_some_and(|t| t <= now) && s["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Deletes expired bootstrap token Secrets, forever.
pub async fn run(c: Client) {
    loop {
        match c.get(LIST).await {
            Ok(list) => {
                for name in expired_names(&list, jiff::Timestamp::now()) {
                    match c.delete(&format!("/api/v1/namespaces/kube-system/secrets/{name}"), &json!({})).await {
                        Ok(_) | Err(ClientError::Status { code: 404, .. }) => tracing::info!(secret = %name, "deleted an expired bootstrap token"),
                        Err(e) => tracing::warn!(secret = %name, error = %e, "deleting an expired bootstrap token failed"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing bootstrap tokens failed; trying again later"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secrets_past_their_expiration_are_expired() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let list = json!({"items": [
            {"metadata": {"name": "bootstrap-token-old"}, "data": {"expiration": b("2026-01-01T00:00:00Z")}},
            {"metadata": {"name": "bootstrap-token-new"}, "data": {"expiration": b("2030-01-01T00:00:00Z")}},
            {"metadata": {"name": "bootstrap-token-forever"}, "data": {}},
            {"metadata": {"name": "bootstrap-token-bad"}, "data": {"expiration": b("soon")}},
        ]});
        let now: jiff::Timestamp = "2026-12-04T00:00:00Z".parse().unwrap();
        assert_eq!(expired_names(&list, now), vec!["bootstrap-token-old"]);
    }
}
