//! WireGuard public keys as they appear on the command line and in the
//! configuration file: standard base64 (with `=` padding) of 32 bytes, the
//! format printed by `wg pubkey`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Length of a raw Curve25519 public key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of a public key in standard padded base64 (`wg pubkey` output).
pub const KEY_BASE64_LEN: usize = 44;

/// Longest part of a rejected input quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 60;

/// A WireGuard (Curve25519) public key.
///
/// Parsed from and displayed as standard base64 with padding, exactly like
/// `wg pubkey` prints it. The ordering is the byte-wise ordering of the raw
/// key, which is only useful for keeping collections deterministic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key in standard padded base64 (the same text as `Display`).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// Parses standard padded base64 of exactly 32 bytes; surrounding
    /// whitespace is ignored. Non-canonical encodings (non-zero trailing
    /// bits in the last character) are rejected so that every key has
    /// exactly one textual form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let err = |reason| KeyError {
            input: quote_truncated(text),
            reason,
        };

        let chars = text.chars().count();
        if chars != KEY_BASE64_LEN {
            return Err(err(Reason::Length(chars)));
        }
        if let Some((pos, c)) = text
            .chars()
            .enumerate()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        {
            return Err(err(Reason::Character(c, pos)));
        }
        // The text is now pure ASCII, so byte offsets equal character offsets.
        let bytes = STANDARD.decode(text).map_err(|e| err(Reason::Decode(e)))?;
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| err(Reason::ByteLength(bytes.len())))?;
        Ok(PublicKey(key))
    }
}

/// Why a string is not a valid public key.
///
/// Display: `invalid public key "abc": expected 44 characters of base64
/// encoding 32 bytes (got 3 characters)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The offending input, already quoted and escaped (and shortened if
    /// it was very long).
    input: String,
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    /// Wrong number of characters.
    Length(usize),
    /// A character outside the base64 alphabet, with its position.
    Character(char, usize),
    /// The base64 decoder refused the text (bad padding, non-canonical end).
    Decode(base64::DecodeError),
    /// Valid base64, but not of 32 bytes.
    ByteLength(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid public key {}: expected {KEY_BASE64_LEN} characters of base64 encoding {KEY_LEN} bytes",
            self.input
        )?;
        match &self.reason {
            Reason::Length(n) => write!(f, " (got {n} characters)"),
            Reason::Character(c, pos) => {
                write!(f, " (character {c:?} at position {pos} is not base64)")
            }
            Reason::Decode(base64::DecodeError::InvalidByte(pos, b)) => write!(
                f,
                " (character {:?} at position {pos} is misplaced)",
                char::from(*b)
            ),
            Reason::Decode(base64::DecodeError::InvalidLastSymbol(pos, b)) => write!(
                f,
                " (character {:?} at position {pos} is not a canonical final character)",
                char::from(*b)
            ),
            Reason::Decode(base64::DecodeError::InvalidPadding) => {
                f.write_str(" (wrong \"=\" padding)")
            }
            Reason::Decode(e) => write!(f, " ({e})"),
            Reason::ByteLength(n) => write!(f, " (it decodes to {n} bytes)"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Quotes (and escapes) `s` for an error message, shortening it if it is
/// very long so that the message stays one readable line.
fn quote_truncated(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED_CHARS {
        let head: String = s.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head:?}...")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // `wg genkey | wg pubkey` output.
    const K: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn parses_wg_pubkey_output() {
        let k: PublicKey = K.parse().unwrap();
        assert_eq!(k.to_string(), K);
        assert_eq!(k.to_base64(), K);
        assert_eq!(k.as_bytes().len(), 32);
        assert_eq!(k.as_bytes()[0], 0xc5);
        assert_eq!(format!("{k:?}"), format!("PublicKey({K})"));
    }

    #[test]
    fn trims_surrounding_whitespace() {
        let k: PublicKey = format!(" \t{K}\n").parse().unwrap();
        assert_eq!(k.to_string(), K);
    }

    #[test]
    fn all_zero_and_all_ones() {
        let z = PublicKey([0; 32]);
        assert_eq!(
            z.to_string(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        assert_eq!(z.to_string().parse::<PublicKey>().unwrap(), z);
        let o = PublicKey::from([0xff; 32]);
        assert_eq!(o.to_string().parse::<PublicKey>().unwrap(), o);
    }

    fn err(s: &str) -> String {
        s.parse::<PublicKey>().unwrap_err().to_string()
    }

    #[test]
    fn too_short() {
        assert_eq!(
            err("abc"),
            "invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
    }

    #[test]
    fn empty() {
        let e = err("");
        assert!(e.starts_with("invalid public key \"\": expected 44"), "{e}");
        assert!(e.contains("got 0 characters"), "{e}");
        assert!(err("   ").contains("got 0 characters"));
    }

    #[test]
    fn too_long_and_missing_padding() {
        let e = err(&format!("{K}A"));
        assert!(e.contains(&format!("\"{K}A\"")), "{e}");
        assert!(e.contains("got 45 characters"), "{e}");
        let e = err(K.trim_end_matches('='));
        assert!(e.contains("got 43 characters"), "{e}");
    }

    #[test]
    fn invalid_character() {
        let bad = format!("{}!", &K[..43]);
        let e = err(&bad);
        assert!(e.contains(&format!("{bad:?}")), "{e}");
        assert!(e.contains("'!' at position 43"), "{e}");
        // URL-safe alphabet is not accepted.
        let url = K.replace('/', "_");
        let url = if url == K {
            format!("_{}", &K[1..])
        } else {
            url
        };
        assert!(err(&url).contains("is not base64"));
    }

    #[test]
    fn misplaced_padding() {
        let bad = format!("={}", &K[1..]);
        let e = err(&bad);
        assert!(e.contains(&format!("{bad:?}")), "{e}");
        assert!(e.contains("position 0"), "{e}");
    }

    #[test]
    fn wrong_byte_count() {
        // 44 characters but only 31 bytes ("==" padding).
        let s31 = STANDARD.encode([7u8; 31]);
        assert_eq!(s31.len(), 44);
        let e = err(&s31);
        assert!(e.contains(&s31), "{e}");
        assert!(e.contains("decodes to 31 bytes"), "{e}");
        // 44 characters, no padding: 33 bytes.
        let s33 = STANDARD.encode([7u8; 33]);
        assert_eq!(s33.len(), 44);
        assert!(err(&s33).contains("decodes to 33 bytes"));
    }

    #[test]
    fn non_canonical_last_character() {
        // Last character before '=' carries 2 unused bits that must be zero.
        let mut s = K.to_string();
        s.replace_range(42..43, "h"); // 'g' (..100000) -> 'h' (..100001)
        let e = err(&s);
        assert!(e.contains(&s), "{e}");
        assert!(e.contains("canonical"), "{e}");
    }

    #[test]
    fn control_characters_are_escaped_and_long_input_shortened() {
        let e = err("a\nb");
        assert!(e.contains(r#""a\nb""#), "{e}");
        assert!(!e.contains('\n'));
        let long = "x".repeat(1000);
        let e = err(&long);
        assert!(e.contains("xxxx"), "{e}");
        assert!(e.contains("got 1000 characters"), "{e}");
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn non_ascii_of_right_length() {
        let s = format!("é{}", &K[1..]);
        let e = err(&s);
        assert!(e.contains("'é' at position 0"), "{e}");
    }

    #[test]
    fn error_is_std_error() {
        let e: Box<dyn std::error::Error> = Box::new("x".parse::<PublicKey>().unwrap_err());
        assert!(e.to_string().contains("\"x\""));
    }

    proptest! {
        #[test]
        fn display_roundtrips(bytes in any::<[u8; 32]>()) {
            let k = PublicKey(bytes);
            let s = k.to_string();
            prop_assert_eq!(s.len(), KEY_BASE64_LEN);
            prop_assert_eq!(s.parse::<PublicKey>().unwrap(), k);
            prop_assert_eq!(format!("  {s} \n").parse::<PublicKey>().unwrap(), k);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            if let Err(e) = s.parse::<PublicKey>() {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("invalid public key "));
                prop_assert!(!msg.contains('\n'));
            }
        }

        #[test]
        fn base64ish_strings_never_panic(s in "[A-Za-z0-9+/=]{40,48}") {
            match s.parse::<PublicKey>() {
                Ok(k) => prop_assert_eq!(k.to_string(), s),
                Err(e) => prop_assert!(e.to_string().contains(&s)),
            }
        }
    }
}
