//! Buildpack API versions: which ones a buildpack may declare, and what differs between them.

use std::fmt;

/// A Buildpack API version, `<major>.<minor>` (a bare `<major>` is `<major>.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Api {
    pub major: u32,
    pub minor: u32,
}

/// The versions this driver implements.
pub const OLDEST: Api = Api { major: 0, minor: 8 };
pub const NEWEST: Api = Api {
    major: 0,
    minor: 11,
};

impl Api {
    pub fn parse(text: &str) -> Option<Api> {
        let number = |part: &str| -> Option<u32> {
            let valid = !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            valid.then(|| part.parse().ok()).flatten()
        };
        match text.split_once('.') {
            Some((major, minor)) => Some(Api {
                major: number(major)?,
                minor: number(minor)?,
            }),
            None => Some(Api {
                major: number(text)?,
                minor: 0,
            }),
        }
    }

    pub fn is_supported(self) -> bool {
        (OLDEST..=NEWEST).contains(&self)
    }

    /// 0.9 made `command` an array run directly; 0.8 has a shell command and `direct`.
    pub fn command_is_array(self) -> bool {
        self >= Api { major: 0, minor: 9 }
    }

    /// 0.10 brought targets: `CNB_TARGET_*` in detect and build.
    pub fn has_targets(self) -> bool {
        self >= Api {
            major: 0,
            minor: 10,
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            Api::parse("0.10"),
            Some(Api {
                major: 0,
                minor: 10
            })
        );
        assert_eq!(Api::parse("1"), Some(Api { major: 1, minor: 0 }));
        for bad in ["", "0.", ".1", "0.x", "01.2", "0.1.2", " 0.9"] {
            assert_eq!(Api::parse(bad), None, "{bad:?}");
        }
        assert!(Api::parse("0.8").unwrap().is_supported());
        assert!(Api::parse("0.11").unwrap().is_supported());
        assert!(!Api::parse("0.7").unwrap().is_supported());
        assert!(!Api::parse("0.12").unwrap().is_supported());
        assert!(!Api::parse("1.0").unwrap().is_supported());
        assert!(Api::parse("0.10").unwrap() > Api::parse("0.9").unwrap());
    }
}
