//! Keeps secrets (the app's `SSH_KEY`) out of build output, even when a buildpack prints
//! them or the engine splits them across output chunks.

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
/// Shorter fragments are too likely to match innocent output.
const MIN_SECRET_BYTES: usize = 12;

impl Redactor {
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().trim().as_bytes().to_vec())
            .filter(|s| s.len() >= MIN_SECRET_BYTES)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        secrets.dedup();
        Redactor {
            secrets,
            pending: Vec::new(),
        }
    }

    /// The secrets to hide for an `SSH_KEY` config value: the value as given and each line
    /// of the decoded key (a buildpack may print the key file).
    pub fn for_ssh_key(value: &str, decoded: &str) -> Redactor {
        let mut secrets = vec![value.to_owned(), decoded.to_owned()];
        secrets.extend(value.lines().map(str::to_owned));
        secrets.extend(
            decoded
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .map(str::to_owned),
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

    #[test]
    fn key_lines_are_hidden() {
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQyNTUxOQAAACBZZZZZZZZZZ\n-----END OPENSSH PRIVATE KEY-----\n";
        let mut r = Redactor::for_ssh_key("c2VjcmV0LWJhc2U2NC1rZXk=", pem);
        let out = run(
            &mut r,
            &["cat key:\n", pem, "value: c2VjcmV0LWJhc2U2NC1rZXk=\n"],
        );
        assert!(!out.contains("b3BlbnNzaC1rZXktdjEAAAAA"), "{out}");
        assert!(!out.contains("QyNTUxOQAAACBZZZZZZZZZZ"), "{out}");
        assert!(!out.contains("c2VjcmV0LWJhc2U2NC1rZXk="), "{out}");
        assert!(out.contains("cat key:"));
    }
}
