//! Who and where (tutorial step 3): the rules for usernames and channel names, and the form two
//! usernames are compared in.

use super::chat_frames::{ChatError, ErrorCode};

/// Longest username, in characters after trimming.
pub const MAX_USERNAME_CHARS: usize = 32;
/// Longest channel name.
pub const MAX_CHANNEL_CHARS: usize = 32;
/// The channel everyone starts in; it exists even when empty.
pub const DEFAULT_CHANNEL: &str = "general";

/// Trims a requested username and checks its rule: 1 to 32 characters, no control characters,
/// no invisible format characters (bidi overrides, zero-width spaces: they let one name pass
/// for another) except a zero-width joiner between two characters, which emoji sequences use.
///
/// # Errors
/// `invalid_username` when the rule is broken. Whether the name is taken is the hub's question.
pub fn validate_username(raw: &str) -> Result<String, ChatError> {
    let name = raw.trim();
    let chars: Vec<char> = name.chars().collect();
    let invisible = |(i, c): (usize, &char)| match *c {
        ZERO_WIDTH_JOINER => i == 0 || i + 1 == chars.len() || chars[i - 1] == ZERO_WIDTH_JOINER,
        c => is_format_character(c),
    };
    if chars.is_empty()
        || chars.len() > MAX_USERNAME_CHARS
        || chars.iter().any(|c| c.is_control())
        || chars.iter().enumerate().any(invisible)
    {
        return Err(ChatError::new(
            ErrorCode::InvalidUsername,
            format!(
                "a username must be 1 to {MAX_USERNAME_CHARS} characters, with no control or \
                 invisible formatting characters"
            ),
        ));
    }
    Ok(name.to_owned())
}

/// U+200D, which joins emoji into one (👩‍💻): the one format character a name may hold.
const ZERO_WIDTH_JOINER: char = '\u{200D}';

/// Unicode's format characters (general category Cf), as ranges: invisible, and so able to
/// make two names that look the same compare different. Std has no table of categories;
/// this one is Unicode 15's list.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn is_format_character(c: char) -> bool {
    FORMAT_CHARACTERS
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&c))
}

/// The form two usernames are compared in: Unicode full case folding, so that `Straße`,
/// `STRASSE` and `STRAẞE` are one name, and so are `k` and the Kelvin sign `K`.
///
/// Std has no case folding, but lowercasing, uppercasing and lowercasing again, one
/// character at a time, puts every character in the same class as full case folding does
/// (checked against Python's `str.casefold` for every code point), with one exception: it
/// would also make the dotless `ı` an `i`, which folding keeps apart. A crate would add a
/// dependency for that one letter.
pub fn name_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for c in name.chars() {
        if c == 'ı' {
            key.push(c);
            continue;
        }
        let folded = c.to_lowercase().flat_map(char::to_uppercase);
        key.extend(folded.flat_map(char::to_lowercase));
    }
    key
}

/// Lowercases a requested channel name and checks it: 1 to 32 of `a-z 0-9 - _`.
///
/// # Errors
/// `invalid_channel` when the rule is broken.
pub fn validate_channel(raw: &str) -> Result<String, ChatError> {
    let name = raw.to_lowercase();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > MAX_CHANNEL_CHARS || !name.chars().all(allowed) {
        return Err(ChatError::new(
            ErrorCode::InvalidChannel,
            format!("a channel name is 1 to {MAX_CHANNEL_CHARS} of a-z, 0-9, - and _"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step3_usernames_follow_their_rule() {
        assert_eq!(validate_username("  Alex ").unwrap(), "Alex");
        assert_eq!(validate_username(&"x".repeat(32)).unwrap().len(), 32);
        for bad in ["", "   ", &"x".repeat(33), "a\tb", "a\nb", "bell\u{7}"] {
            assert_eq!(
                validate_username(bad).unwrap_err().code,
                ErrorCode::InvalidUsername,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn step3_names_compare_under_full_case_folding() {
        let same = |a: &str, b: &str| name_key(a) == name_key(b);
        assert!(same("Straße", "STRASSE"));
        assert!(same("straße", "STRAẞE"), "the capital sharp s");
        assert!(same("\u{212A}elvin", "kelvin"), "the Kelvin sign");
        assert!(same("ΟΔΟΣ", "οδος") && same("οδος", "οδοσ"), "final sigma");
        assert!(same("ﬀ", "FF"), "a ligature folds to its letters");
        assert!(same("Alex", "aLEX"));
        assert!(!same("ı", "i"), "folding keeps the dotless i apart");
        assert!(!same("Alex", "Alexa"));
    }

    #[test]
    fn step3_invisible_characters_cannot_make_a_look_alike_name() {
        for bad in [
            "Al\u{200B}ex",       // zero-width space
            "\u{202E}xelA",       // right-to-left override
            "Alex\u{FEFF}",       // byte order mark (trimming keeps it)
            "\u{2066}Alex",       // bidi isolate
            "Al\u{00AD}ex",       // soft hyphen
            "\u{200D}Alex",       // a joiner with nothing before it
            "Alex\u{200D}",       // or after it
            "A\u{200D}\u{200D}b", // or only another joiner
            "Alex\u{E0041}",      // a tag character
        ] {
            assert_eq!(
                validate_username(bad).unwrap_err().code,
                ErrorCode::InvalidUsername,
                "{bad:?}"
            );
        }
        // A joiner between two characters is how emoji are built: 👩‍💻.
        assert!(validate_username("Ada \u{1F469}\u{200D}\u{1F4BB}").is_ok());
        assert!(validate_username("Zoë").is_ok());
    }

    #[test]
    fn step5_channels_are_lowercased_and_checked() {
        assert_eq!(validate_channel("Rust-Lang_2").unwrap(), "rust-lang_2");
        for bad in ["", "has space", "émoji", &"c".repeat(33), "a/b"] {
            assert_eq!(
                validate_channel(bad).unwrap_err().code,
                ErrorCode::InvalidChannel,
                "{bad:?}"
            );
        }
    }
}
