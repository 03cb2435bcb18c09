//! The lease record: the bytes of `builder/leases/<app>.json`.

use serde::{Deserialize, Serialize};

/// Who holds an app, written by conditional writes only. Every write carries new bytes
/// (`serial` counts up; `token` is new for each holding), so two writes never share a
/// version, even on stores whose version is a digest of the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The holder's builder id.
    pub builder: String,
    /// Random per holding: tells the holder's own writes from anyone else's.
    pub token: String,
    pub serial: u64,
    /// The holder let go: anyone may take the app at once.
    pub released: bool,
}

impl Record {
    pub fn new(builder: &str) -> Record {
        Record {
            builder: builder.to_owned(),
            token: format!("{:032x}", rand::random::<u128>()),
            serial: 0,
            released: false,
        }
    }

    /// The same holding, one renewal later.
    pub fn renewed(&self) -> Record {
        Record {
            serial: self.serial + 1,
            ..self.clone()
        }
    }

    pub fn released(&self) -> Record {
        Record {
            released: true,
            ..self.renewed()
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, integers and a bool always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes this builder did not write (such a record is held by nobody we
    /// know, and is taken over once it has not changed for a TTL).
    pub fn parse(data: &[u8]) -> Option<Record> {
        serde_json::from_slice(data).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_has_new_bytes_and_parses_back() {
        let first = Record::new("b1");
        let renewed = first.renewed();
        let released = renewed.released();
        let bytes = [first.to_bytes(), renewed.to_bytes(), released.to_bytes()];
        assert_ne!(bytes[0], bytes[1]);
        assert_ne!(bytes[1], bytes[2]);
        assert_ne!(Record::new("b1").token, first.token);
        assert_eq!(Record::parse(&bytes[2]), Some(released));
        assert_eq!(Record::parse(b"not json"), None);
    }
}
