//! Keeps secrets out of build output, even when a buildpack or a Dockerfile step prints
//! them or the engine splits them across output chunks.
//!
//! What counts as secret ([`Redactor::for_build`]):
//! - the app's `SSH_KEY`: its value as given, the decoded key, and every line of both that
//!   is at least [`MIN_KEY_LINE_BYTES`] long (a shorter line holds at most 2 bytes of key
//!   material, and hiding it would hide innocent text everywhere);
//! - values of config vars whose names say they are secret ([`is_secret_name`]: `KEY`,
//!   `SECRET`, `PASSWORD`, `PASSWD`, `TOKEN`, `CREDENTIAL`, `PRIVATE`, `AUTH`, `CERT`,
//!   `SALT`, `DSN`), when at least [`MIN_CONFIG_SECRET_BYTES`] long;
//! - credentials in URLs of config values (`https://user:token@host/...`), e.g. a private
//!   `BUILDPACK_URL`;
//! - the builder's own credentials it is given (the registry's), which never enter a
//!   build, hidden in case an engine message repeats them.
//!
//! Other config values are the app's own business, as on Heroku: a build that prints them
//! shows them.

use std::collections::BTreeMap;

/// Build output on its way to the client, through a [`Redactor`].
pub(super) struct RedactedOutput<'a> {
    out: &'a crate::push::Output,
    redactor: Redactor,
}

impl<'a> RedactedOutput<'a> {
    pub fn new(out: &'a crate::push::Output, redactor: Redactor) -> RedactedOutput<'a> {
        RedactedOutput { out, redactor }
    }

    /// Shows what of `chunk` is safe to show now.
    pub async fn write(&mut self, chunk: &[u8]) {
        let shown = self.redactor.push(chunk);
        if !shown.is_empty() {
            self.out.bytes(bytes::Bytes::from(shown)).await;
        }
    }

    /// The end of the output: shows what was held back.
    pub async fn finish(mut self) {
        let rest = self.redactor.finish();
        if !rest.is_empty() {
            self.out.bytes(bytes::Bytes::from(rest)).await;
        }
    }
}

impl super::Pipeline {
    /// The builder's own credentials that build output must never show (see
    /// [`Redactor::for_build`]).
    pub(super) fn own_secrets(&self) -> Vec<&str> {
        let registry = self.settings.registry.as_ref();
        let egress = &self.settings.egress;
        registry
            .and_then(|r| r.password.as_ref().map(|p| p.expose()))
            .into_iter()
            .chain(registry.and_then(|r| r.username.as_deref()))
            .chain(
                [&egress.http_proxy, &egress.https_proxy]
                    .into_iter()
                    .flatten()
                    .flat_map(|proxy| url_credentials(proxy.expose())),
            )
            .collect()
    }
}

/// Replaces every occurrence of a secret in a byte stream with `[redacted]`. Bytes that may
/// be the start of a secret are held back until the next chunk (or [`Redactor::finish`])
/// tells whether they are; everything else passes through at once, so output stays live.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

const REPLACEMENT: &[u8] = b"[redacted]";
/// Shortest `SSH_KEY` line (and shortest secret of any kind) that is hidden.
pub const MIN_KEY_LINE_BYTES: usize = 4;
/// Shortest value of a secret-named config var that is hidden: shorter ones (`true`, `1`,
/// `none`) are switches more often than secrets and would hide innocent words.
pub const MIN_CONFIG_SECRET_BYTES: usize = 8;

/// Words in config var names that mark their values secret (matched case-insensitively
/// anywhere in the name, so `DATABASE_PASSWORD` and `GithubToken` count).
const SECRET_NAME_WORDS: [&str; 11] = [
    "KEY",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "CERT",
    "SALT",
    "DSN",
];

/// Whether a config var's name says its value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_WORDS.iter().any(|word| upper.contains(word))
}

/// `user:password` (or `token`) of each `scheme://userinfo@` in `text`.
fn url_credentials(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let after = &rest[at + 3..];
        let authority_end = after
            .find(|c: char| c == '/' || c == '#' || c == '?' || c.is_whitespace())
            .unwrap_or(after.len());
        if let Some((userinfo, _host)) = after[..authority_end].rsplit_once('@') {
            found.push(userinfo);
            // The user name alone is not secret (and often a common word like `deploy`).
            if let Some((_user, password)) = userinfo.split_once(':') {
                found.push(password);
            }
        }
        rest = after;
    }
    found
}

impl Redactor {
    /// Hides each of `secrets` (surrounding whitespace trimmed) that is at least
    /// [`MIN_KEY_LINE_BYTES`] long.
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().trim().as_bytes().to_vec())
            .filter(|s| s.len() >= MIN_KEY_LINE_BYTES)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        secrets.dedup();
        Redactor {
            secrets,
            pending: Vec::new(),
        }
    }

    /// The secrets of one build (see the module documentation): `config` is the app's
    /// config, `decoded_ssh_key` its `SSH_KEY` as a key file, `own` the builder's own
    /// credentials.
    pub fn for_build(
        config: &BTreeMap<String, String>,
        decoded_ssh_key: Option<&str>,
        own: &[&str],
    ) -> Redactor {
        let mut secrets: Vec<String> = Vec::new();
        if let Some(value) = config.get(super::buildpack::SSH_KEY) {
            secrets.push(value.clone());
            secrets.extend(value.lines().map(str::to_owned));
        }
        if let Some(decoded) = decoded_ssh_key {
            secrets.push(decoded.to_owned());
            secrets.extend(
                decoded
                    .lines()
                    .filter(|line| !line.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        for (name, value) in config {
            if is_secret_name(name) {
                // A multi-line value (a certificate, a key) may be printed line by line.
                secrets.extend(
                    std::iter::once(value.as_str())
                        .chain(value.lines().filter(|line| !line.starts_with("-----")))
                        .filter(|part| part.trim().len() >= MIN_CONFIG_SECRET_BYTES)
                        .map(str::to_owned),
                );
            }
            secrets.extend(url_credentials(value).into_iter().map(str::to_owned));
        }
        secrets.extend(
            own.iter()
                .filter(|secret| secret.trim().len() >= MIN_CONFIG_SECRET_BYTES)
                .map(|secret| (*secret).to_owned()),
        );
        Redactor::new(secrets)
    }

    /// Feeds a chunk; returns what may be shown now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        let mut shown = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        while let Some((at, len)) =
            (start..self.pending.len()).find_map(|at| self.secret_at(at).map(|len| (at, len)))
        {
            shown.extend_from_slice(&self.pending[start..at]);
            shown.extend_from_slice(REPLACEMENT);
            start = at + len;
        }
        let rest = &self.pending[start..];
        let keep = self.partial_suffix(rest);
        shown.extend_from_slice(&rest[..rest.len() - keep]);
        self.pending = rest[rest.len() - keep..].to_vec();
        shown
    }

    /// The end of the stream: whatever was held back is not a secret.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    fn secret_at(&self, at: usize) -> Option<usize> {
        let tail = &self.pending[at..];
        self.secrets
            .iter()
            .find(|secret| tail.starts_with(secret))
            .map(Vec::len)
    }

    /// Length of the longest suffix of `bytes` that is a proper prefix of a secret.
    fn partial_suffix(&self, bytes: &[u8]) -> usize {
        let longest = self.secrets.first().map_or(0, Vec::len);
        let from = bytes.len().saturating_sub(longest.saturating_sub(1));
        for at in from..bytes.len() {
            let suffix = &bytes[at..];
            if self
                .secrets
                .iter()
                .any(|secret| secret.len() > suffix.len() && secret.starts_with(suffix))
            {
                return bytes.len() - at;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(redactor: &mut Redactor, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(redactor.push(chunk.as_bytes()));
        }
        out.extend(redactor.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn secrets_are_replaced_even_across_chunks() {
        let mut r = Redactor::new(["s3cr3t-value-123"]);
        assert_eq!(
            run(&mut r, &["key=s3cr3t-va", "lue-123 done\n"]),
            "key=[redacted] done\n"
        );
        let mut r = Redactor::new(["s3cr3t-value-123"]);
        assert_eq!(run(&mut r, &["plain output\n"]), "plain output\n");
    }

    #[test]
    fn innocent_output_is_not_held_back() {
        let mut r = Redactor::new(["s3cr3t-value-123"]);
        assert_eq!(r.push(b"hello world"), b"hello world");
        assert_eq!(r.push(b"x s3cr"), b"x ");
        assert_eq!(r.push(b"ambled\n"), b"s3crambled\n");
    }

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn key_lines_are_hidden_even_short_ones() {
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQyNTUxOQAAACBZZZZZZZZZZ\nAQIDBAU=\nZg\n-----END OPENSSH PRIVATE KEY-----\n";
        let config = config(&[("SSH_KEY", "c2VjcmV0LWJhc2U2NC1rZXk=")]);
        let mut r = Redactor::for_build(&config, Some(pem), &[]);
        let out = run(
            &mut r,
            &[
                "cat key:\n",
                pem,
                "value: c2VjcmV0LWJhc2U2NC1rZXk=\n",
                "lines: AQIDBAU= Zg\n",
            ],
        );
        assert!(!out.contains("b3BlbnNzaC1rZXktdjEAAAAA"), "{out}");
        assert!(!out.contains("QyNTUxOQAAACBZZZZZZZZZZ"), "{out}");
        assert!(!out.contains("AQIDBAU="), "{out}");
        assert!(!out.contains("c2VjcmV0LWJhc2U2NC1rZXk="), "{out}");
        assert!(out.contains("cat key:"));
        // Two characters of base64 are not worth hiding innocent text for.
        assert!(out.contains("lines: [redacted] Zg\n"), "{out}");
    }

    #[test]
    fn secret_named_config_values_and_url_credentials_are_hidden() {
        let config = config(&[
            ("DATABASE_PASSWORD", "hunter2-hunter2"),
            ("GithubToken", "ghp_abcdef123456"),
            ("API_KEY", "short"),
            (
                "TLS_CERT",
                "-----BEGIN CERTIFICATE-----\nMIIBcertline1\nMIIBcertline2\n",
            ),
            ("GREETING", "hello-world-greeting"),
            (
                "BUILDPACK_URL",
                "https://oauth:tok-998877@git.example.com/bp.git#v1",
            ),
        ]);
        let mut r = Redactor::for_build(&config, None, &["registry-pass-123"]);
        let out = run(
            &mut r,
            &[
                "pw=hunter2-hunter2 tok=ghp_abcdef123456 key=short\n",
                "greeting=hello-world-greeting url=https://oauth:tok-998877@git.example.com\n",
                "registry-pass-123\n",
                "MIIBcertline2\n",
            ],
        );
        assert_eq!(
            out,
            "pw=[redacted] tok=[redacted] key=short\n\
             greeting=hello-world-greeting url=https://[redacted]@git.example.com\n\
             [redacted]\n[redacted]\n"
        );
        assert!(is_secret_name("aws_secret_access_key"));
        assert!(!is_secret_name("GREETING"));
    }
}
