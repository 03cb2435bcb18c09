//! Process types: the app's `Procfile` and a buildpack's `default_process_types`.
//!
//! Process type names follow the Deis Workflow controller's rule (lowercase letters and
//! digits in groups joined by single `-`, e.g. `web`, `worker-2`), capped at 63 characters
//! so `<app>-<type>` stays usable as a DNS label. `_` and uppercase are rejected here, with
//! a suggestion, rather than later by the controller or the scheduler.

use std::collections::BTreeMap;
use std::fmt;

/// Longest accepted process type name (a DNS label).
pub const MAX_PROCESS_TYPE_LEN: usize = 63;

/// Process type name -> command, sorted (deterministic output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessTypes(pub BTreeMap<String, String>);

impl ProcessTypes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Renders a Procfile (`type: command` lines, sorted).
    pub fn to_procfile(&self) -> String {
        let mut out = String::new();
        for (name, command) in &self.0 {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(command);
            out.push('\n');
        }
        out
    }
}

/// A Procfile that cannot be used; `line` is 1-based (0 when the problem is the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Procfile{}: {kind}", line_label(*.line))]
pub struct ProcfileError {
    pub line: usize,
    pub kind: ProcfileErrorKind,
}

impl ProcfileError {
    /// The problem without the `Procfile line N:` prefix.
    pub fn message(&self) -> String {
        self.kind.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileErrorKind {
    #[error("missing ':' (expected \"<type>: <command>\", e.g. \"web: ./server\")")]
    MissingColon,
    #[error("{0}")]
    BadTypeName(BadTypeName),
    #[error("empty command for process type \"{name}\"")]
    EmptyCommand { name: String },
    #[error("duplicate process type \"{name}\" (already defined on line {first_line})")]
    Duplicate { name: String, first_line: usize },
    #[error("no process types defined (expected lines like \"web: ./server\")")]
    NoProcessTypes,
}

/// Why a process type name was refused, with a suggestion when one is obvious.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTypeName {
    pub name: String,
    pub reason: &'static str,
    pub suggestion: Option<String>,
}

impl fmt::Display for BadTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "missing process type name before ':'")?;
        } else {
            write!(f, "bad process type \"{}\": {}", self.name, self.reason)?;
        }
        if let Some(suggestion) = &self.suggestion {
            write!(f, " (try \"{suggestion}\")")?;
        }
        Ok(())
    }
}

/// A `default_process_types` section that cannot be used; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("buildpack release YAML line {line}: {kind}")]
pub struct ReleaseError {
    pub line: usize,
    pub kind: ReleaseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseErrorKind {
    #[error("expected \"<type>: <command>\" under default_process_types")]
    MissingColon,
    #[error("{0}")]
    BadTypeName(BadTypeName),
    #[error("empty command for process type \"{name}\"")]
    EmptyCommand { name: String },
    #[error("duplicate process type \"{name}\"")]
    Duplicate { name: String },
    #[error("unterminated quoted value")]
    UnterminatedQuote,
    #[error("unexpected text after a quoted value: {0:?}")]
    TrailingText(String),
    #[error("unsupported escape sequence \"\\{0}\" in a double-quoted value")]
    UnsupportedEscape(char),
    #[error("default_process_types must be a mapping of type to command, got {0:?}")]
    NotAMapping(String),
}

fn line_label(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" line {line}")
    }
}

/// Checks a process type name; see the module docs for the rule.
pub fn validate_process_type(name: &str) -> Result<(), BadTypeName> {
    let bad = |reason: &'static str, suggestion: Option<String>| BadTypeName {
        name: name.to_owned(),
        reason,
        suggestion,
    };
    if name.is_empty() {
        return Err(bad("empty name", None));
    }
    if name.len() > MAX_PROCESS_TYPE_LEN {
        return Err(bad("longer than 63 characters", None));
    }
    let suggestion = suggest_type_name(name);
    let suggestion = suggestion.filter(|s| s != name && validate_process_type(s).is_ok());
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(bad("must be lowercase", suggestion));
    }
    if name.contains('_') {
        return Err(bad(
            "may only contain lowercase letters, digits and '-'",
            suggestion,
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad(
            "may only contain lowercase letters, digits and '-'",
            None,
        ));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(bad(
            "'-' may only join letters or digits (no leading, trailing or double '-')",
            suggestion,
        ));
    }
    Ok(())
}

fn suggest_type_name(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            'a'..='z' | '0'..='9' => out.push(c),
            '-' | '_' => {
                if !out.is_empty() && !out.ends_with('-') {
                    out.push('-');
                }
            }
            _ => return None,
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

/// Strict Procfile parsing.
///
/// One `type: command` per line (`web:cmd` without a space is fine); blank lines and lines
/// starting with `#` are skipped; CRLF line endings and a leading UTF-8 BOM are accepted.
/// Duplicates, empty commands, bad names, lines without `:` and a Procfile without any
/// process type are errors naming the line.
pub fn parse_procfile(text: &str) -> Result<ProcessTypes, ProcfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut types = BTreeMap::new();
    let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_number = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |kind| ProcfileError {
            line: line_number,
            kind,
        };
        let Some((name, command)) = line.split_once(':') else {
            return Err(fail(ProcfileErrorKind::MissingColon));
        };
        let name = name.trim_end();
        validate_process_type(name).map_err(|e| fail(ProcfileErrorKind::BadTypeName(e)))?;
        let command = command.trim();
        if command.is_empty() {
            return Err(fail(ProcfileErrorKind::EmptyCommand {
                name: name.to_owned(),
            }));
        }
        if let Some(&first_line) = first_lines.get(name) {
            return Err(fail(ProcfileErrorKind::Duplicate {
                name: name.to_owned(),
                first_line,
            }));
        }
        first_lines.insert(name.to_owned(), line_number);
        types.insert(name.to_owned(), command.to_owned());
    }
    if types.is_empty() {
        return Err(ProcfileError {
            line: 0,
            kind: ProcfileErrorKind::NoProcessTypes,
        });
    }
    Ok(ProcessTypes(types))
}

const RELEASE_KEY: &str = "default_process_types";

/// Reads `default_process_types` from a buildpack's release YAML.
///
/// Handles the subset buildpacks emit: a top-level `default_process_types:` key followed by
/// indented `type: command` lines (plain, single- or double-quoted values, long values
/// folded onto more-indented continuation lines as YAML emitters do), or a one-line flow
/// mapping (`{}`, `{web: cmd}`); `~`/`null`/absent mean none. Other keys are skipped.
pub fn parse_release_process_types(yaml: &str) -> Result<ProcessTypes, ReleaseError> {
    let yaml = yaml.strip_prefix('\u{feff}').unwrap_or(yaml);
    let lines: Vec<&str> = yaml
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();

    let Some((key_index, after_key)) = lines
        .iter()
        .enumerate()
        .find_map(|(index, line)| release_key_value(line).map(|rest| (index, rest)))
    else {
        return Ok(ProcessTypes::default());
    };
    let inline = strip_plain_comment(after_key.trim());
    if !inline.is_empty() {
        return parse_inline_value(inline, key_index + 1);
    }

    // Block mapping: entries share the indentation of the first one; more-indented lines
    // continue the previous value.
    let mut entries: Vec<(usize, String)> = Vec::new(); // (1-based line, joined text)
    let mut entry_indent = None;
    for (index, line) in lines.iter().enumerate().skip(key_index + 1) {
        let content = line.trim_start_matches([' ', '\t']);
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if indent == 0 {
            break; // next top-level key or document marker
        }
        let content = content.trim_end();
        match (entry_indent, entries.last_mut()) {
            (Some(first), Some((_, text))) if indent > first => {
                if text.ends_with('\\') && value_is_double_quoted(text) {
                    // An escaped line break inside a double-quoted value joins directly.
                    text.pop();
                } else {
                    text.push(' ');
                }
                text.push_str(content);
            }
            _ => {
                entry_indent.get_or_insert(indent);
                entries.push((index + 1, content.to_owned()));
            }
        }
    }

    let mut types = BTreeMap::new();
    for (line, text) in entries {
        let (name, command) = parse_entry(&text, line)?;
        insert_release_type(&mut types, name, command, line)?;
    }
    Ok(ProcessTypes(types))
}

/// True when the entry's value (after `type:`) is double-quoted.
fn value_is_double_quoted(entry: &str) -> bool {
    entry
        .split_once(':')
        .is_some_and(|(_, value)| value.trim_start().starts_with('"'))
}

/// Matches `default_process_types:` at column 0, the key plain or quoted; returns the text
/// after the colon.
fn release_key_value(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix(RELEASE_KEY)
        .or_else(|| line.strip_prefix("\"default_process_types\""))
        .or_else(|| line.strip_prefix("'default_process_types'"))?;
    rest.trim_start().strip_prefix(':')
}

fn parse_inline_value(value: &str, line: usize) -> Result<ProcessTypes, ReleaseError> {
    if value == "~" || value == "null" || value == "{}" {
        return Ok(ProcessTypes::default());
    }
    let fail = |kind| ReleaseError { line, kind };
    let Some(inner) = value
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return Err(fail(ReleaseErrorKind::NotAMapping(value.to_owned())));
    };
    let mut types = BTreeMap::new();
    for item in split_flow_items(inner).map_err(fail)? {
        if item.trim().is_empty() {
            continue;
        }
        let (name, command) = parse_entry(item.trim(), line)?;
        insert_release_type(&mut types, name, command, line)?;
    }
    Ok(ProcessTypes(types))
}

/// Splits `a: x, b: "y, z"` on commas outside quotes.
fn split_flow_items(inner: &str) -> Result<Vec<&str>, ReleaseErrorKind> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ',' => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            None => {}
        }
    }
    if quote.is_some() {
        return Err(ReleaseErrorKind::UnterminatedQuote);
    }
    items.push(&inner[start..]);
    Ok(items)
}

fn insert_release_type(
    types: &mut BTreeMap<String, String>,
    name: String,
    command: String,
    line: usize,
) -> Result<(), ReleaseError> {
    if types.contains_key(&name) {
        return Err(ReleaseError {
            line,
            kind: ReleaseErrorKind::Duplicate { name },
        });
    }
    types.insert(name, command);
    Ok(())
}

/// Parses `name: value` where either side may be quoted.
fn parse_entry(text: &str, line: usize) -> Result<(String, String), ReleaseError> {
    let fail = |kind| ReleaseError { line, kind };
    let (name, rest) = if text.starts_with(['"', '\'']) {
        let (name, rest) = parse_quoted(text).map_err(fail)?;
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            return Err(fail(ReleaseErrorKind::MissingColon));
        };
        (name, rest)
    } else {
        // A plain key ends at the first ": " (or ':' at the end); `web:cmd` is not YAML.
        let split = text
            .find(": ")
            .or_else(|| text.ends_with(':').then(|| text.len() - 1));
        let Some(colon) = split else {
            return Err(fail(ReleaseErrorKind::MissingColon));
        };
        (text[..colon].trim_end().to_owned(), &text[colon + 1..])
    };
    validate_process_type(&name).map_err(|e| fail(ReleaseErrorKind::BadTypeName(e)))?;

    let value = rest.trim();
    let command = if value.starts_with(['"', '\'']) {
        let (command, trailing) = parse_quoted(value).map_err(fail)?;
        let trailing = strip_plain_comment(trailing.trim());
        if !trailing.is_empty() {
            return Err(fail(ReleaseErrorKind::TrailingText(trailing.to_owned())));
        }
        command
    } else {
        strip_plain_comment(value).to_owned()
    };
    let command = command.trim().to_owned();
    if command.is_empty() || command == "~" || command == "null" {
        return Err(fail(ReleaseErrorKind::EmptyCommand { name }));
    }
    Ok((name, command))
}

/// A plain YAML scalar ends where ` #` starts a comment.
fn strip_plain_comment(value: &str) -> &str {
    if value.starts_with('#') {
        return "";
    }
    match value.find(" #").or_else(|| value.find("\t#")) {
        Some(at) => value[..at].trim_end(),
        None => value,
    }
}

/// Parses a quoted scalar at the start of `text`; returns the value and the rest.
fn parse_quoted(text: &str) -> Result<(String, &str), ReleaseErrorKind> {
    let mut chars = text.char_indices();
    let Some((_, quote)) = chars.next() else {
        return Err(ReleaseErrorKind::UnterminatedQuote);
    };
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if quote == '\'' && text[i + 1..].starts_with('\'') {
                chars.next(); // '' is an escaped single quote
                value.push('\'');
                continue;
            }
            return Ok((value, &text[i + 1..]));
        }
        if quote == '"' && c == '\\' {
            let Some((_, escaped)) = chars.next() else {
                return Err(ReleaseErrorKind::UnterminatedQuote);
            };
            // Only escapes that keep a command on one line: a process command with a
            // newline could not be written back as a Procfile line.
            match escaped {
                '"' | '\\' | '/' => value.push(escaped),
                't' => value.push('\t'),
                ' ' => value.push(' '),
                other => return Err(ReleaseErrorKind::UnsupportedEscape(other)),
            }
            continue;
        }
        value.push(c);
    }
    Err(ReleaseErrorKind::UnterminatedQuote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(pairs: &[(&str, &str)]) -> ProcessTypes {
        ProcessTypes(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn procfile_good_cases() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("web: ./server\n", &[("web", "./server")]),
            ("web:./server", &[("web", "./server")]),
            (
                "web: gunicorn app:app --bind 0.0.0.0:$PORT\nworker: celery -A x worker\n",
                &[
                    ("web", "gunicorn app:app --bind 0.0.0.0:$PORT"),
                    ("worker", "celery -A x worker"),
                ],
            ),
            (
                "# comment\n\n   \nweb: a\n  # indented comment\n",
                &[("web", "a")],
            ),
            ("web: a\r\nclock: b\r\n", &[("clock", "b"), ("web", "a")]),
            ("\u{feff}web: a", &[("web", "a")]),
            ("worker-2: a\nx1: b", &[("worker-2", "a"), ("x1", "b")]),
            ("  web :   spaced out   \t\n", &[("web", "spaced out")]),
            (
                "web: echo '#not a comment'",
                &[("web", "echo '#not a comment'")],
            ),
            (&LONG_NAME_OK, &[(&LONG_NAME_OK[..63], "x")]),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_procfile(input).unwrap_or_else(|e| panic!("{input:?}: {e}")),
                types(expected),
                "input {input:?}"
            );
        }
    }

    static LONG_NAME_OK: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{}: x", "a".repeat(63)));

    #[test]
    fn procfile_bad_cases() {
        let long = format!("{}: x", "a".repeat(64));
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "Procfile: no process types defined"),
            ("# only a comment\n\n", 0, "no process types defined"),
            (
                "web: a\nweb: b\n",
                2,
                "Procfile line 2: duplicate process type \"web\" (already defined on line 1)",
            ),
            (
                "web: a\n\n# c\nworker:   \n",
                4,
                "empty command for process type \"worker\"",
            ),
            ("web:", 1, "empty command"),
            ("web ./server", 1, "missing ':'"),
            (
                "Web: a",
                1,
                "bad process type \"Web\": must be lowercase (try \"web\")",
            ),
            (
                "web_worker: a",
                1,
                "only contain lowercase letters, digits and '-' (try \"web-worker\")",
            ),
            ("-web: a", 1, "no leading, trailing or double '-'"),
            ("web--x: a", 1, "double '-'"),
            ("web.x: a", 1, "only contain lowercase letters"),
            ("wéb: a", 1, "only contain lowercase letters"),
            (": a", 1, "missing process type name before ':'"),
            (&long, 1, "longer than 63 characters"),
            ("web: a\r\nweb: b\r\n", 2, "duplicate process type \"web\""),
        ];
        for (input, line, message) in cases {
            let err = parse_procfile(input).expect_err(input);
            assert_eq!(err.line, *line, "input {input:?}: {err}");
            assert!(
                err.to_string().contains(message),
                "input {input:?}: {err:?} / {err}"
            );
        }
    }

    #[test]
    fn procfile_roundtrip() {
        let parsed = parse_procfile("worker: b\nweb: a\n").unwrap();
        assert_eq!(parsed.names(), vec!["web", "worker"]);
        assert_eq!(parsed.to_procfile(), "web: a\nworker: b\n");
        assert_eq!(parse_procfile(&parsed.to_procfile()).unwrap(), parsed);
        assert_eq!(parsed.get("web"), Some("a"));
    }

    #[test]
    fn release_variants() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("---\naddons: []\nconfig_vars: {}\n", &[]),
            ("default_process_types: {}\n", &[]),
            ("default_process_types:\n", &[]),
            ("default_process_types: ~\naddons: []\n", &[]),
            ("default_process_types:\naddons: []\n", &[]),
            (
                "---\naddons: []\nconfig_vars:\n  PATH: /app/bin:/usr/bin\n  web: not-a-type\ndefault_process_types:\n  web: bundle exec puma -p $PORT\n  rake: bundle exec rake\n",
                &[("rake", "bundle exec rake"), ("web", "bundle exec puma -p $PORT")],
            ),
            (
                "default_process_types:\n  web: 'gunicorn app:app'\n  worker: \"python w.py --name \\\"x\\\"\"\n  clock: 'it''s'\naddons: []\nconfig_vars:\n  X: y\n",
                &[
                    ("clock", "it's"),
                    ("web", "gunicorn app:app"),
                    ("worker", "python w.py --name \"x\""),
                ],
            ),
            (
                "---\r\ndefault_process_types:\r\n  web: node server.js\r\n\r\n  worker: node w.js\r\n",
                &[("web", "node server.js"), ("worker", "node w.js")],
            ),
            (
                "default_process_types:\n    web: bin/rails server -p ${PORT:-5000} -e $RAILS_ENV and a very long\n      tail folded by the emitter\n    console: bin/rails console # a comment\n",
                &[
                    ("console", "bin/rails console"),
                    (
                        "web",
                        "bin/rails server -p ${PORT:-5000} -e $RAILS_ENV and a very long tail folded by the emitter",
                    ),
                ],
            ),
            (
                "default_process_types:\n  web: \"a long\\\n    value\"\n",
                &[("web", "a longvalue")],
            ),
            (
                "default_process_types: {web: \"a, b\", worker: c}\n",
                &[("web", "a, b"), ("worker", "c")],
            ),
            (
                "# comment\ndefault_process_types:\n  # inner comment\n  \"web\": cmd\n",
                &[("web", "cmd")],
            ),
            ("default_process_types :\n  web: x\n", &[("web", "x")]),
            ("\"default_process_types\": # c\n  web: x\n", &[("web", "x")]),
            ("  default_process_types:\n    web: nested, not ours\n", &[]),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_release_process_types(input).unwrap_or_else(|e| panic!("{input:?}: {e}")),
                types(expected),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn release_errors() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "default_process_types:\n  web: a\n  web: b\n",
                3,
                "duplicate process type \"web\"",
            ),
            ("default_process_types:\n  web:\n", 2, "empty command"),
            ("default_process_types:\n  web: ''\n", 2, "empty command"),
            ("default_process_types:\n  Web: x\n", 2, "must be lowercase"),
            (
                "default_process_types:\n  web 'x'\n",
                2,
                "expected \"<type>: <command>\"",
            ),
            ("default_process_types:\n  web: 'x\n", 2, "unterminated"),
            (
                "default_process_types:\n  web: \"a\\nb\"\n",
                2,
                "unsupported escape",
            ),
            (
                "default_process_types:\n  web: 'a' b\n",
                2,
                "unexpected text",
            ),
            ("x: 1\ndefault_process_types: web\n", 2, "must be a mapping"),
        ];
        for (input, line, message) in cases {
            let err = parse_release_process_types(input).expect_err(input);
            assert_eq!(err.line, *line, "input {input:?}: {err}");
            assert!(err.to_string().contains(message), "input {input:?}: {err}");
        }
        let err = parse_release_process_types("default_process_types:\n  web: a\n  web: b\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "buildpack release YAML line 3: duplicate process type \"web\""
        );
    }
}
