//! Configuration files in YAML (the audit policy, the encryption configuration): parsed with
//! errors that name the field and, for YAML errors, the line.

/// `text` as a `T`; the error names the field (`rules[0].level: ...`) and the line where the
/// YAML parser knows it.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // serde_norway's message names the field and the line ("rules[0].level: unknown
        // variant ... at line 4 column 10"); the path is added where it does not.
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        if path == "." || msg.starts_with(&path) { msg } else { format!("{path}: {msg}") }
    })
}
