//! Parsing of the Deis controller's replies (hooks API v2) into typed values: pure
//! functions over the body bytes, kept apart from the HTTP client so they can be fuzzed
//! on their own (`fuzz/fuzz_targets/controller_reply.rs`).

use serde_json::Value;

use super::values::{config_values, json_type_name, printable_snippet};
use super::{AppConfig, User};

/// What an error reply says: its `detail` field when it is a JSON object with one,
/// otherwise the body text (compact JSON when it is JSON). `None` when empty.
pub fn reply_detail(body: &[u8]) -> Option<String> {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => match object.get("detail") {
            Some(Value::String(detail)) => detail.clone(),
            _ => Value::Object(object).to_string(),
        },
        Ok(Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let snippet = printable_snippet(&text);
    (!snippet.is_empty()).then_some(snippet)
}

fn parse_json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "expected a JSON object, got {}",
            json_type_name(&other)
        )),
        Err(err) => Err(format!("the body is not JSON ({err})")),
    }
}

/// `{"username": "...", "apps": ["..."]}`.
pub fn parse_user(body: &[u8]) -> Result<User, String> {
    let object = parse_json_object(body)?;
    let username = match object.get("username") {
        Some(Value::String(name)) if name.trim().is_empty() => {
            return Err("username is empty".into())
        }
        Some(Value::String(name)) if name.chars().any(char::is_control) => {
            return Err("username contains control characters".into())
        }
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(format!(
                "username is {}, expected a string",
                json_type_name(other)
            ))
        }
        None => return Err("username is missing".into()),
    };
    let apps = match object.get("apps") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(app) => Ok(app.clone()),
                other => Err(format!(
                    "apps[{index}] is {}, expected a string",
                    json_type_name(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!(
                "apps is {}, expected a list of strings",
                json_type_name(other)
            ))
        }
        None => return Err("apps is missing".into()),
    };
    Ok(User {
        username,
        apps: Some(apps),
        from: None,
    })
}

/// The `values` of a config reply; the other fields (owner, memory, tags...) are not
/// the builder's business.
pub fn parse_config(body: &[u8]) -> Result<AppConfig, String> {
    let object = parse_json_object(body)?;
    let values = match object.get("values") {
        Some(Value::Object(values)) => config_values(values)?,
        Some(Value::Null) => Default::default(),
        Some(other) => {
            return Err(format!(
                "values is {}, expected an object",
                json_type_name(other)
            ))
        }
        None => return Err("values is missing".into()),
    };
    Ok(AppConfig { values })
}

/// `{"release": {"version": N}}` with N a positive integer.
pub fn parse_release_version(body: &[u8]) -> Result<u64, String> {
    let object = parse_json_object(body)?;
    let release = match object.get("release") {
        Some(Value::Object(release)) => release,
        Some(other) => {
            return Err(format!(
                "release is {}, expected an object",
                json_type_name(other)
            ))
        }
        None => return Err("release is missing".into()),
    };
    match release.get("version") {
        Some(Value::Number(number)) => match number.as_u64() {
            Some(version) if version > 0 => Ok(version),
            _ => Err(format!(
                "release.version is {number}, expected a positive integer"
            )),
        },
        Some(other) => Err(format!(
            "release.version is {}, expected a positive integer",
            json_type_name(other)
        )),
        None => Err("release.version is missing".into()),
    }
}
