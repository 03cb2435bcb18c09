//! `.slugignore`: gitignore-like patterns that keep paths out of the slug.
//!
//! Rules: one pattern per line; blank lines and `#` comments are skipped; `*` matches
//! within one path component, `?` one character, `[a-z]`/`[!a]` a character class, `**`
//! any number of components, and `\` escapes the next character. A leading `/` anchors a
//! pattern at the app root (so does a `/` inside it, as in git); a pattern without `/`
//! matches a basename at any depth; a trailing `/` matches directories only. A leading
//! `./` is read as `/`. Negation (`!pattern`) is not supported: such lines are skipped and
//! reported through [`SlugIgnore::warnings`], so the user learns their file is kept.

/// Parsed `.slugignore` patterns.
#[derive(Debug, Clone, Default)]
pub struct SlugIgnore {
    patterns: Vec<Pattern>,
    warnings: Vec<String>,
    /// Top-level directories no pattern applies to (a CNB slug's layers).
    kept_dirs: Vec<String>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Matches the full path from the root rather than the last component.
    anchored: bool,
    /// A `!pattern` exception (`.dockerignore` only): re-includes what earlier lines excluded.
    negated: bool,
    dir_only: bool,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
enum Segment {
    /// `**`: zero or more components.
    AnyComponents,
    Glob(Vec<Token>),
}

#[derive(Debug, Clone)]
enum Token {
    Literal(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl SlugIgnore {
    pub fn parse(text: &str) -> SlugIgnore {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ignore = SlugIgnore::default();
        for (index, raw_line) in text.split('\n').enumerate() {
            let line_number = index + 1;
            let line = raw_line.trim_end_matches(['\r', ' ', '\t']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('!') {
                ignore.warnings.push(format!(
                    ".slugignore line {line_number}: negation (\"{line}\") is not supported; \
                     the line is ignored"
                ));
                continue;
            }
            match Pattern::parse(line) {
                Some(pattern) => ignore.patterns.push(pattern),
                None => ignore.warnings.push(format!(
                    ".slugignore line {line_number}: \"{line}\" matches nothing; \
                     the line is ignored"
                )),
            }
        }
        ignore
    }

    pub fn empty() -> SlugIgnore {
        SlugIgnore::default()
    }

    /// Docker's `.dockerignore` rules, on the same matcher: every pattern is relative to
    /// the context root (`*.log` matches only at the top, `**/*.log` anywhere), a matched
    /// directory takes its contents with it, and `!pattern` lines re-include paths; the
    /// last matching line wins.
    pub fn parse_dockerignore(text: &str) -> SlugIgnore {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ignore = SlugIgnore::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if let Some(mut pattern) = Pattern::parse(body) {
                pattern.anchored = true;
                pattern.negated = negated;
                ignore.patterns.push(pattern);
            }
        }
        ignore
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The same rules, except that nothing in the top-level directory `dir` is ignored.
    pub fn keeping(mut self, dir: &str) -> SlugIgnore {
        self.kept_dirs.push(dir.to_owned());
        self
    }

    /// `path` is relative to the app root, `/`-separated, no leading `./`. A path is
    /// ignored when it or any ancestor matches.
    pub fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if components
            .first()
            .is_some_and(|top| self.kept_dirs.iter().any(|kept| kept == top))
        {
            return false;
        }
        let mut ignored = false;
        for pattern in &self.patterns {
            let hit = (1..=components.len()).any(|len| {
                // Every proper ancestor is a directory.
                let candidate_is_dir = len < components.len() || is_dir;
                pattern.matches(&components[..len], candidate_is_dir)
            });
            if hit {
                ignored = !pattern.negated;
            }
        }
        ignored
    }

    /// Problems found while parsing (e.g. unsupported negation), ready to show to users.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl Pattern {
    fn parse(line: &str) -> Option<Pattern> {
        let mut body = line;
        let mut anchored = false;
        if let Some(rest) = body.strip_prefix("./") {
            body = rest;
            anchored = true;
        }
        if let Some(rest) = body.strip_prefix('/') {
            body = rest;
            anchored = true;
        }
        let mut dir_only = false;
        while let Some(rest) = body.strip_suffix('/') {
            body = rest;
            dir_only = true;
        }
        if body.is_empty() {
            return None;
        }
        if body.contains('/') {
            anchored = true;
        }
        let mut segments: Vec<Segment> = Vec::new();
        for part in body.split('/').filter(|p| !p.is_empty()) {
            if part == "**" {
                // Consecutive `**` are one.
                if !matches!(segments.last(), Some(Segment::AnyComponents)) {
                    segments.push(Segment::AnyComponents);
                }
            } else {
                segments.push(Segment::Glob(tokenize(part)));
            }
        }
        Some(Pattern {
            anchored,
            negated: false,
            dir_only,
            segments,
        })
    }

    fn matches(&self, components: &[&str], is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        if self.anchored {
            match_segments(&self.segments, components)
        } else {
            match components.last() {
                Some(last) => match_segments(&self.segments, std::slice::from_ref(last)),
                None => false,
            }
        }
    }
}

fn match_segments(segments: &[Segment], components: &[&str]) -> bool {
    match segments.split_first() {
        None => components.is_empty(),
        Some((Segment::AnyComponents, rest)) => {
            // A trailing `**` (as in `build/**`) means "something inside", as in git.
            let min_taken = usize::from(rest.is_empty());
            (min_taken..=components.len()).any(|taken| match_segments(rest, &components[taken..]))
        }
        Some((Segment::Glob(tokens), rest)) => match components.split_first() {
            Some((first, remaining)) => {
                let chars: Vec<char> = first.chars().collect();
                match_glob(tokens, &chars) && match_segments(rest, remaining)
            }
            None => false,
        },
    }
}

fn tokenize(part: &str) -> Vec<Token> {
    let chars: Vec<char> = part.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                // Runs of `*` inside a component behave like one.
                if !matches!(tokens.last(), Some(Token::AnyRun)) {
                    tokens.push(Token::AnyRun);
                }
                i += 1;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                i += 1;
            }
            '\\' if i + 1 < chars.len() => {
                tokens.push(Token::Literal(chars[i + 1]));
                i += 2;
            }
            '[' => match parse_class(&chars[i + 1..]) {
                Some((token, used)) => {
                    tokens.push(token);
                    i += 1 + used;
                }
                None => {
                    // An unclosed `[` is an ordinary character.
                    tokens.push(Token::Literal('['));
                    i += 1;
                }
            },
            c => {
                tokens.push(Token::Literal(c));
                i += 1;
            }
        }
    }
    tokens
}

/// Parses the inside of `[...]`; returns the token and how many chars were used
/// (including the closing `]`).
fn parse_class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = matches!(chars.first(), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        let mut c = chars[i];
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' && i + 1 < chars.len() {
            i += 1;
            c = chars[i];
        }
        if i + 2 < chars.len() && chars[i + 1] == '-' && chars[i + 2] != ']' {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// Glob match of one component; `*` never crosses `/` because components have none.
fn match_glob(tokens: &[Token], text: &[char]) -> bool {
    // Classic single-star backtracking: remember the last `*` and retry from there.
    let (mut t, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::AnyRun) => {
                star = Some((t, s));
                t += 1;
                continue;
            }
            Some(token) if token_matches(token, text[s]) => {
                t += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((star_t, star_s)) => {
                t = star_t + 1;
                s = star_s + 1;
                star = Some((star_t, star_s + 1));
            }
            None => return false,
        }
    }
    tokens[t..]
        .iter()
        .all(|token| matches!(token, Token::AnyRun))
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(literal) => *literal == c,
        Token::AnyChar => true,
        Token::AnyRun => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(low, high)| (*low..=*high).contains(&c)) != *negated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_top_level_directory_is_never_ignored() {
        let ignore = SlugIgnore::parse("*.sh\n.*\nbin/\n").keeping(".cnb");
        assert!(!ignore.is_ignored(".cnb", true));
        assert!(!ignore.is_ignored(".cnb/layers/x/bin/run.sh", false));
        assert!(
            ignore.is_ignored("app/.cnb", true),
            "only the top-level one"
        );
        assert!(ignore.is_ignored("setup.sh", false));
    }

    #[test]
    fn matching_table() {
        // (patterns, path, is_dir, expected)
        let cases: &[(&str, &str, bool, bool)] = &[
            // unanchored basename at any depth
            ("*.log", "debug.log", false, true),
            ("*.log", "a/b/c/debug.log", false, true),
            ("*.log", "a/b/log", false, false),
            ("*.log", "logs.txt", false, false),
            ("tmp", "tmp", true, true),
            ("tmp", "src/tmp", true, true),
            ("tmp", "src/tmp/x/y.rb", false, true),
            ("tmp", "src/tmpfile", false, false),
            // anchored
            ("/tmp", "tmp", true, true),
            ("/tmp", "tmp/cache/x", false, true),
            ("/tmp", "src/tmp", true, false),
            ("./tmp", "src/tmp", true, false),
            ("./tmp", "tmp/a", false, true),
            ("doc/api", "doc/api/index.html", false, true),
            ("doc/api", "x/doc/api", true, false),
            ("/spec/*.rb", "spec/a.rb", false, true),
            ("/spec/*.rb", "spec/sub/a.rb", false, false),
            // dir-only
            ("cache/", "cache", true, true),
            ("cache/", "cache", false, false),
            ("cache/", "a/cache/file", false, true),
            ("/cache/", "a/cache", true, false),
            // `**`
            ("**/fixtures", "a/b/fixtures/x.json", false, true),
            ("**/fixtures", "fixtures", true, true),
            ("a/**/b", "a/b", true, true),
            ("a/**/b", "a/x/y/b", true, true),
            ("a/**/b", "a/x/y/c", true, false),
            ("build/**", "build/x", false, true),
            ("build/**", "build", true, false),
            ("**/*.psd", "assets/img/logo.psd", false, true),
            ("vendor/**/test", "vendor/gems/x/test/t.rb", false, true),
            // `?`, classes, escapes
            ("file?.txt", "file1.txt", false, true),
            ("file?.txt", "file10.txt", false, false),
            ("[abc].md", "b.md", false, true),
            ("[!abc].md", "b.md", false, false),
            ("[a-c]x", "cx", false, true),
            ("\\*.txt", "*.txt", false, true),
            ("\\*.txt", "a.txt", false, false),
            ("[oops", "[oops", false, true),
            // `*` matches dotfiles, does not cross `/`
            ("*", ".env", false, true),
            ("/a*", "ab/c", false, true),
            ("/a*c", "ab/c", false, false),
            // several patterns, comments, CRLF
            ("# c\r\n\r\n*.log\r\n/tmp\r\n", "tmp/x", false, true),
            ("# c\r\n\r\n*.log\r\n/tmp\r\n", "x/y.log", false, true),
            ("# c\r\n\r\n*.log\r\n/tmp\r\n", "x/tmp/y", false, false),
            ("#*.log", "a.log", false, false),
            ("", "anything", false, false),
            ("*.log", "", true, false),
        ];
        for (patterns, path, is_dir, expected) in cases {
            let ignore = SlugIgnore::parse(patterns);
            assert_eq!(
                ignore.is_ignored(path, *is_dir),
                *expected,
                "patterns {patterns:?} path {path:?} dir={is_dir}"
            );
        }
    }

    #[test]
    fn negation_and_empty_patterns_warn() {
        let ignore = SlugIgnore::parse("*.log\n!keep.log\n/\n");
        assert_eq!(ignore.warnings().len(), 2);
        assert!(ignore.warnings()[0].contains("line 2"));
        assert!(ignore.warnings()[0].contains("negation"));
        assert!(ignore.warnings()[1].contains("line 3"));
        assert!(ignore.is_ignored("keep.log", false));
        assert!(SlugIgnore::parse("\\!important").is_ignored("!important", false));
        assert!(SlugIgnore::empty().warnings().is_empty());
        assert!(!SlugIgnore::empty().is_ignored("a", false));
    }

    #[test]
    fn dockerignore_rules() {
        let rules = SlugIgnore::parse_dockerignore(
            "# comment\n*.log\n**/*.tmp\nnode_modules\nsecrets/\n!secrets/public.txt\n",
        );
        for (path, ignored) in [
            ("debug.log", true),
            ("sub/debug.log", false),
            ("a/b/c.tmp", true),
            ("node_modules/x/y.js", true),
            ("src/node_modules/x.js", false),
            ("secrets/key.pem", true),
            ("secrets/public.txt", false),
            ("Dockerfile", false),
        ] {
            assert_eq!(rules.is_ignored(path, false), ignored, "{path}");
        }
    }
}
