//! Parsing helpers shared by both controllers: config values from JSON, and making
//! untrusted text safe to show in an error line.

use std::collections::BTreeMap;

use serde_json::Value;

/// Longest piece of untrusted text quoted back in an error.
const SNIPPET_MAX_CHARS: usize = 300;

/// Converts a JSON object of config values into validated strings.
///
/// The Deis controller stores values as JSON, so besides strings it may send numbers
/// and booleans; those become their text (`1`, `2.5`, `true`). A `null` means "unset"
/// and is skipped. Arrays and objects are refused, as are keys that are not
/// environment variable names (every key becomes a file name in the build's ENV_DIR,
/// so a key like `../x` must never get through) and values with NUL bytes (they
/// cannot live in an environment). `Err` names the offending field.
pub(crate) fn config_values(
    values: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, String>, String> {
    let mut config = BTreeMap::new();
    for (key, value) in values {
        if !is_env_var_name(key) {
            return Err(format!(
                "config key {:?} is not a valid environment variable name",
                printable_snippet(key)
            ));
        }
        let text = match value {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Array(_) => return Err(format!("values.{key} is a list, expected a string")),
            Value::Object(_) => {
                return Err(format!(
                    "values.{key} is a nested object, expected a string"
                ))
            }
        };
        if text.contains('\0') {
            return Err(format!("values.{key} contains a NUL byte"));
        }
        config.insert(key.clone(), text);
    }
    Ok(config)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, what the Deis controller accepts as a config key.
pub(crate) fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Untrusted text made fit for one error line: control characters become spaces,
/// surrounding whitespace goes, and long text is cut with an ellipsis.
pub(crate) fn printable_snippet(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() > SNIPPET_MAX_CHARS {
        let cut: String = trimmed.chars().take(SNIPPET_MAX_CHARS).collect();
        format!("{cut}…")
    } else {
        trimmed.to_string()
    }
}

/// A short name for a JSON value's type, for "expected X, got Y" messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> serde_json::Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn plain_values_become_text() {
        let values = config_values(&object(json!({
            "A": "x", "N": 3, "F": 2.5, "B": true, "GONE": null, "_U1": ""
        })))
        .unwrap();
        assert_eq!(values["A"], "x");
        assert_eq!(values["N"], "3");
        assert_eq!(values["F"], "2.5");
        assert_eq!(values["B"], "true");
        assert_eq!(values["_U1"], "");
        assert!(!values.contains_key("GONE"));
    }

    #[test]
    fn nested_and_unsafe_values_are_refused() {
        let err = config_values(&object(json!({"DB": {"host": "x"}}))).unwrap_err();
        assert!(err.contains("values.DB"), "{err}");
        assert!(err.contains("nested object"), "{err}");
        assert!(config_values(&object(json!({"L": [1]}))).is_err());
        assert!(config_values(&object(json!({"../x": "1"}))).is_err());
        assert!(config_values(&object(json!({"1A": "1"}))).is_err());
        assert!(config_values(&object(json!({"A-B": "1"}))).is_err());
        assert!(config_values(&object(json!({"": "1"}))).is_err());
        assert!(config_values(&object(json!({"A": "a\u{0}b"}))).is_err());
    }

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(printable_snippet(" a\nb\t"), "a b");
        let long = "x".repeat(1000);
        assert_eq!(
            printable_snippet(&long).chars().count(),
            SNIPPET_MAX_CHARS + 1
        );
    }
}
