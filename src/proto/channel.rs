//! Channel names: protocol.md "channel (absent = main)" and the canonical
//! name rule `^[a-z0-9_-]{1,64}$` shared by commands, the response body and
//! `X-Tunnel-MCP-Server-Info`.

use std::fmt;

/// Longest channel name the protocol allows.
pub const MAX_CHANNEL_LEN: usize = 64;

/// A validated channel name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

/// Why a channel name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    TooLong {
        len: usize,
    },
    /// A byte outside `[a-z0-9_-]` at this byte offset.
    BadByte {
        offset: usize,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => f.write_str("channel name is empty"),
            ChannelError::TooLong { len } => {
                write!(
                    f,
                    "channel name is {len} bytes, the limit is {MAX_CHANNEL_LEN}"
                )
            }
            ChannelError::BadByte { offset } => write!(
                f,
                "channel name has a character outside [a-z0-9_-] at byte {offset}"
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

impl Channel {
    /// Accepts exactly `^[a-z0-9_-]{1,64}$` (no case folding: the names are canonical).
    pub fn parse(s: &str) -> Result<Channel, ChannelError> {
        if s.is_empty() {
            return Err(ChannelError::Empty);
        }
        if s.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong { len: s.len() });
        }
        if let Some(offset) = s
            .bytes()
            .position(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        {
            return Err(ChannelError::BadByte { offset });
        }
        Ok(Channel(s.to_owned()))
    }

    /// The default channel, used when a command carries none.
    pub fn main() -> Channel {
        Channel("main".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_main(&self) -> bool {
        self.0 == "main"
    }
}

impl Default for Channel {
    fn default() -> Self {
        Channel::main()
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Channel {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_names() {
        for ok in ["main", "harpoon", "a", "a-b_c-09", &"x".repeat(64)] {
            assert_eq!(Channel::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(Channel::main().as_str(), "main");
        assert!(Channel::main().is_main());
        assert_eq!(Channel::default(), Channel::main());
        assert_eq!(Channel::main().to_string(), "main");
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Channel::parse(""), Err(ChannelError::Empty));
        assert_eq!(
            Channel::parse(&"x".repeat(65)),
            Err(ChannelError::TooLong { len: 65 })
        );
        for (bad, at) in [
            ("Main", 0),
            ("ma in", 2),
            ("a.b", 1),
            ("a/b", 1),
            ("caf\u{e9}", 3),
            ("a\n", 1),
            ("x\u{0}", 1),
        ] {
            assert_eq!(
                Channel::parse(bad),
                Err(ChannelError::BadByte { offset: at }),
                "{bad:?}"
            );
        }
    }
}
