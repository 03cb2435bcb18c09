//! OpenSSH `authorized_keys` lines, read the way sshd reads them (sshd(8), "AUTHORIZED_KEYS
//! FILE FORMAT"): an optional comma-separated options field, the key type, the base64 key
//! and a comment (the standalone user name).
//!
//! Options on a git-only server: `restrict` and the `no-*` switches are what the builder
//! does anyway; `from=` and `expiry-time=` are honoured; options that only enable what the
//! builder does not offer (`environment=`, forwarding, pty, …) are ignored with a warning;
//! restrictions it cannot honour (`command=`, `verify-required`), `cert-authority` and
//! unknown options skip the line (sshd refuses the last two as well).

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;

use super::md5_fingerprint;

/// One usable line of an `authorized_keys` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AuthorizedKey {
    pub fingerprint: String,
    pub username: String,
    /// `from="…"`: the client addresses this key may be used from.
    pub from: Option<SourcePatterns>,
    /// `expiry-time="…"`: seconds since the Unix epoch after which the key is refused.
    pub expires_at: Option<u64>,
    /// Options this line has that the builder does not act on (for a warning).
    pub ignored_options: Vec<String>,
}

/// Every usable key of the file, in file order; unusable lines are skipped with a warning
/// naming the line, as sshd does.
pub(super) fn parse(text: &str, path: &Path) -> Vec<AuthorizedKey> {
    let mut keys = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(key) => keys.push(key),
            Err(problem) => tracing::warn!(
                path = %path.display(),
                line = index + 1,
                "skipping authorized_keys line: {problem}"
            ),
        }
    }
    keys
}

fn parse_line(line: &str) -> Result<AuthorizedKey, String> {
    let (options, rest) = match line.split_whitespace().next() {
        Some(first) if is_key_type(first) => (KeyOptions::default(), line),
        _ => {
            let (field, rest) = split_options_field(line)?;
            (KeyOptions::parse(field)?, rest.trim_start())
        }
    };
    let mut fields = rest.split_whitespace();
    let key_type = fields
        .next()
        .ok_or("the key is missing after the options")?;
    if !is_key_type(key_type) {
        return Err(format!(
            "unknown key type {:?}",
            super::values::printable_snippet(key_type)
        ));
    }
    let blob_base64 = fields.next().ok_or("the key data is missing")?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(blob_base64)
        .map_err(|_| "the key data is not valid base64")?;
    if embedded_key_type(&blob) != Some(key_type.as_bytes()) {
        return Err("the key data does not match the key type".into());
    }
    let fingerprint = md5_fingerprint(&blob);
    let comment = fields.collect::<Vec<_>>().join(" ");
    let username = if comment.is_empty() {
        format!(
            "user-{}",
            fingerprint.replace(':', "").get(..8).unwrap_or("")
        )
    } else {
        comment
    };
    Ok(AuthorizedKey {
        fingerprint,
        username,
        from: options.from,
        expires_at: options.expires_at,
        ignored_options: options.ignored,
    })
}

/// The options field runs to the first space or tab outside double quotes.
fn split_options_field(line: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Ok((&line[..at], &line[at..])),
            _ => {}
        }
    }
    Err(if quoted {
        "an option's value has no closing quote".into()
    } else {
        "it has no key (an unknown key type, or options and nothing else)".into()
    })
}

#[derive(Debug, Default)]
struct KeyOptions {
    from: Option<SourcePatterns>,
    expires_at: Option<u64>,
    ignored: Vec<String>,
}

impl KeyOptions {
    fn parse(field: &str) -> Result<KeyOptions, String> {
        let mut options = KeyOptions::default();
        let mut rest = field;
        while !rest.is_empty() {
            let (name, value, after) = next_option(rest)?;
            rest = after;
            match (name.to_ascii_lowercase().as_str(), value) {
                // What a git-only server does anyway: no pty, no forwarding, no rc files.
                (
                    "restrict"
                    | "no-agent-forwarding"
                    | "no-port-forwarding"
                    | "no-pty"
                    | "no-user-rc"
                    | "no-x11-forwarding",
                    None,
                ) => {}
                // As sshd: one `from=` only; the earliest `expiry-time=` counts.
                ("from", Some(_)) if options.from.is_some() => {
                    return Err("more than one from= option".into())
                }
                ("from", Some(value)) => options.from = Some(SourcePatterns::parse(&value)?),
                ("expiry-time", Some(value)) => {
                    let expiry = parse_expiry_time(&value)?;
                    options.expires_at = Some(options.expires_at.map_or(expiry, |e| e.min(expiry)));
                }
                // Restrictions the builder cannot honour: a forced command (a key limited,
                // or disabled, by `command="/bin/false"` must not become a push key) and
                // FIDO user verification (russh does not check it).
                ("command", Some(_)) => {
                    return Err(
                        "command= (a forced command) cannot be honoured by a git-only server"
                            .into(),
                    )
                }
                ("verify-required", None) => {
                    return Err("verify-required (FIDO user verification) is not supported".into())
                }
                ("cert-authority", None) => {
                    return Err("cert-authority: SSH certificates are not supported".into())
                }
                // Options that only enable what the builder does not offer anyway.
                (
                    "environment" | "permitopen" | "permitlisten" | "principals" | "tunnel",
                    Some(_),
                )
                | (
                    "agent-forwarding" | "port-forwarding" | "pty" | "user-rc" | "x11-forwarding"
                    | "no-touch-required",
                    None,
                ) => options.ignored.push(name.to_owned()),
                _ => {
                    return Err(format!(
                        "bad option {:?}",
                        super::values::printable_snippet(name)
                    ))
                }
            }
        }
        Ok(options)
    }
}

/// Splits `name` or `name="value"` off the front of an options field; the value has its
/// `\"` escapes resolved. Returns the rest after the separating comma.
fn next_option(field: &str) -> Result<(&str, Option<String>, &str), String> {
    let name_end = field.find(['=', ',']).unwrap_or(field.len());
    let name = &field[..name_end];
    if name.is_empty() {
        return Err("an empty option".into());
    }
    let after_name = &field[name_end..];
    let Some(quoted) = after_name.strip_prefix('=') else {
        return Ok((name, None, after_name.strip_prefix(',').unwrap_or("")));
    };
    let body = quoted
        .strip_prefix('"')
        .ok_or_else(|| format!("the value of {name} must be in double quotes"))?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' if body[at + 1..].starts_with('"') => {
                value.push('"');
                chars.next();
            }
            '"' => {
                let rest = &body[at + 1..];
                return match rest.strip_prefix(',') {
                    Some(rest) => Ok((name, Some(value), rest)),
                    None if rest.is_empty() => Ok((name, Some(value), rest)),
                    None => Err(format!("unexpected text after the value of {name}")),
                };
            }
            c => value.push(c),
        }
    }
    Err(format!("the value of {name} has no closing quote"))
}

/// A `from="…"` pattern list: addresses (with `*` and `?`) or CIDR blocks, each may be
/// negated with `!`. As sshd with its default `UseDNS no`, patterns match the client's
/// address, never a name looked up for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePatterns(Vec<SourcePattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct SourcePattern {
    negated: bool,
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternKind {
    Cidr(IpAddr, u8),
    Wildcard(String),
}

impl SourcePatterns {
    fn parse(list: &str) -> Result<SourcePatterns, String> {
        let patterns = list
            .split(',')
            .map(|entry| {
                let (negated, pattern) = match entry.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, entry),
                };
                if pattern.is_empty() {
                    return Err(format!("from=\"{list}\" has an empty pattern"));
                }
                let kind = match pattern.split_once('/') {
                    Some((addr, bits)) => {
                        let addr: IpAddr = addr
                            .parse()
                            .map_err(|_| format!("from=: {pattern:?} is not an address block"))?;
                        let max = if addr.is_ipv4() { 32 } else { 128 };
                        match bits.parse::<u8>() {
                            Ok(bits) if bits <= max => PatternKind::Cidr(addr, bits),
                            _ => return Err(format!("from=: {pattern:?} has a bad prefix length")),
                        }
                    }
                    None => PatternKind::Wildcard(pattern.to_ascii_lowercase()),
                };
                Ok(SourcePattern { negated, kind })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(SourcePatterns(patterns))
    }

    /// sshd's rule: a negated match refuses; otherwise any positive match allows.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        let text = client.to_string();
        let mut allowed = false;
        for pattern in &self.0 {
            let matched = match &pattern.kind {
                PatternKind::Cidr(block, bits) => in_block(client, *block, *bits),
                PatternKind::Wildcard(glob) => wildcard_match(glob.as_bytes(), text.as_bytes()),
            };
            if matched && pattern.negated {
                return false;
            }
            allowed |= matched;
        }
        allowed
    }
}

fn in_block(client: IpAddr, block: IpAddr, bits: u8) -> bool {
    let prefix = |value: u128, width: u32| {
        let bits = u32::from(bits);
        if bits == 0 {
            0
        } else {
            value >> (width - bits)
        }
    };
    match (client, block) {
        (IpAddr::V4(c), IpAddr::V4(b)) => {
            prefix(u128::from(u32::from(c)), 32) == prefix(u128::from(u32::from(b)), 32)
        }
        (IpAddr::V6(c), IpAddr::V6(b)) => prefix(u128::from(c), 128) == prefix(u128::from(b), 128),
        _ => false,
    }
}

/// `*` any run of characters, `?` one character.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard_match(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && wildcard_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && wildcard_match(rest, &text[1..]),
    }
}

/// `YYYYMMDD[HHMM[SS]]`, optionally ending in `Z`. sshd reads it in the system's time
/// zone; a builder runs in UTC, so we read it as UTC.
fn parse_expiry_time(value: &str) -> Result<u64, String> {
    let digits = value.strip_suffix(['Z', 'z']).unwrap_or(value);
    let bad = || format!("expiry-time=\"{value}\" is not YYYYMMDD[HHMM[SS]]");
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let field = |range: std::ops::Range<usize>| -> u64 {
        digits.get(range).and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = (field(8..10), field(10..12), field(12..14));
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year ≥ 1970), counting in
/// 400-year eras that start on March 1st.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).saturating_sub(719_468)
}

/// Key types OpenSSH writes as the first field of a plain key line.
fn is_key_type(field: &str) -> bool {
    field.starts_with("ssh-")
        || field.starts_with("ecdsa-sha2-")
        || field.starts_with("sk-ssh-")
        || field.starts_with("sk-ecdsa-sha2-")
}

/// The type name a key blob starts with (a length-prefixed string).
fn embedded_key_type(blob: &[u8]) -> Option<&[u8]> {
    let length_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let length = usize::try_from(u32::from_be_bytes(length_bytes)).ok()?;
    blob.get(4..4usize.checked_add(length)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{ED25519_LINE, ED25519_MD5};

    fn one(line: &str) -> Result<AuthorizedKey, String> {
        parse_line(line)
    }

    #[test]
    fn options_are_parsed_like_sshd() {
        let key = one(&format!(
            "no-pty,no-port-forwarding,restrict,environment=\"A=\\\"hi, there\\\"\",from=\"127.0.0.1,!10.*\",expiry-time=\"20991231\",expiry-time=\"20200101\" {ED25519_LINE}"
        ))
        .unwrap();
        assert_eq!(key.fingerprint, ED25519_MD5);
        assert_eq!(key.username, "alice@example");
        assert_eq!(key.ignored_options, vec!["environment".to_owned()]);
        assert_eq!(
            key.expires_at,
            Some(1_577_836_800),
            "the earliest expiry counts"
        );
        let from = key.from.unwrap();
        assert!(from.allows("127.0.0.1".parse().unwrap()));
        assert!(!from.allows("10.1.2.3".parse().unwrap()));
        assert!(!from.allows("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn odd_lines_are_skipped() {
        let plain = ED25519_LINE.rsplit_once(' ').unwrap().0;
        let blob = plain.split_whitespace().nth(1).unwrap();
        let text = format!(
            "ssh-ed25519 not-base64!!\n\
             ssh-rsa {blob} mislabeled\n\
             ssh-ed25519\n\
             garbage\n\
             \t{plain}   bob   smith  \r\n"
        );
        let keys = parse(&text, Path::new("authorized_keys"));
        assert_eq!(
            keys,
            vec![AuthorizedKey {
                fingerprint: ED25519_MD5.into(),
                username: "bob smith".into(),
                from: None,
                expires_at: None,
                ignored_options: Vec::new(),
            }]
        );
    }

    #[test]
    fn bad_options_refuse_the_line() {
        for (options, problem) in [
            ("cert-authority", "certificates are not supported"),
            ("command=\"/bin/false\"", "cannot be honoured"),
            ("verify-required", "FIDO user verification"),
            ("from=\"10.0.0.0/8\",from=\"*\"", "more than one from="),
            ("frobnicate", "bad option \"frobnicate\""),
            ("command=unquoted", "must be in double quotes"),
            ("command=\"open", "no closing quote"),
            ("from=\"10.0.0.0/33\"", "bad prefix length"),
            ("expiry-time=\"2020\"", "is not YYYYMMDD"),
        ] {
            let err = one(&format!("{options} {ED25519_LINE}")).unwrap_err();
            assert!(err.contains(problem), "{options}: {err}");
        }
    }

    #[test]
    fn source_patterns_follow_sshd() {
        let patterns = SourcePatterns::parse("192.0.2.0/24,!192.0.2.7,127.0.0.?,::1").unwrap();
        let allows = |ip: &str| patterns.allows(ip.parse().unwrap());
        assert!(allows("192.0.2.200"));
        assert!(!allows("192.0.2.7"), "negation wins");
        assert!(allows("127.0.0.5"));
        assert!(!allows("127.0.0.55"));
        assert!(allows("::1"));
        assert!(
            allows("::ffff:192.0.2.1"),
            "v4-mapped clients match v4 blocks"
        );
        assert!(!allows("198.51.100.1"));
        assert!(SourcePatterns::parse("0.0.0.0/0")
            .unwrap()
            .allows("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn expiry_times_are_utc() {
        assert_eq!(parse_expiry_time("19700101"), Ok(0));
        assert_eq!(parse_expiry_time("20000301"), Ok(951_868_800));
        assert_eq!(parse_expiry_time("202612011230Z"), Ok(1_796_128_200));
        assert_eq!(parse_expiry_time("20261201123059"), Ok(1_796_128_259));
        assert!(parse_expiry_time("20261301").is_err());
    }
}
