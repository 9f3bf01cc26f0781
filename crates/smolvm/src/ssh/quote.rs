//! POSIX shell quoting. Private until `smolvm_protocol::shell::quote` lands; then this delegates.

/// Quotes one word for a POSIX shell: words made only of characters no shell treats specially are
/// returned as they are (readable commands); anything else is wrapped in single quotes, inside which
/// only `'` itself needs care (`'\''`: close, escaped quote, reopen). The empty word becomes `''`.
pub(crate) fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes every word and joins them with spaces: a command line that a POSIX shell splits back into
/// exactly `words`.
pub(crate) fn join(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const NASTY: &[&str] = &[
        "plain",
        "",
        " ",
        "two words",
        "it's",
        "''",
        "\"dq\"",
        "$HOME",
        "$(touch /tmp/smolvm-quote-pwned)",
        "`id`",
        "a\\b",
        "*",
        "~",
        "~root",
        "-n",
        "--",
        "semi;colon",
        "pipe|amp&",
        "new\nline",
        "tab\there",
        "ünïcödé ✓",
        "#comment",
        "!bang",
        "{a,b}",
        "[x]",
        "a=b",
        "user@host:/p",
    ];

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(quote("root@172.16.0.5"), "root@172.16.0.5");
        assert_eq!(quote("-p"), "-p");
        assert_eq!(quote("/a/b.key"), "/a/b.key");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    /// The shell splits the quoted line back into exactly the original words.
    #[test]
    fn sh_round_trips_every_word() {
        let words: Vec<String> = NASTY.iter().map(|s| s.to_string()).collect();
        let line = format!("printf '%s\\0' {}", join(&words));
        for shell in ["sh", "bash", "dash"] {
            if crate::test_tools::tool_or_skip("sh_round_trips_every_word", shell).is_none() {
                continue;
            }
            let out = Command::new(shell).arg("-c").arg(&line).output().unwrap();
            assert!(out.status.success(), "{shell}: {out:?}");
            let got: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .split_terminator('\0')
                .map(str::to_string)
                .collect();
            assert_eq!(got, words, "{shell}");
        }
        assert!(!std::path::Path::new("/tmp/smolvm-quote-pwned").exists());
    }
}
