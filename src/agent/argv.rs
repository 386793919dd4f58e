//! Splitting `--mcp.command` into an argv without a shell.
//!
//! The rules are the quoting subset of the POSIX shell and nothing more: words
//! split at unquoted blanks; `'…'` is literal; `"…"` is literal except that
//! `\"` and `\\` are escapes; outside quotes a backslash escapes the next
//! character. There is no expansion of any kind: `;`, `|`, `&`, `$()`,
//! backticks, `*` and `~` are ordinary characters of a word, so a configured
//! command can never chain or substitute anything.

use std::fmt;

/// More arguments than any MCP server needs; a cap so a hostile value stays small.
pub const MAX_ARGS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgvError {
    /// Nothing but blanks.
    Empty,
    /// A quote (`'` or `"`) opened and never closed.
    UnterminatedQuote(char),
    /// A backslash as the last character escapes nothing.
    TrailingBackslash,
    /// A NUL byte cannot be passed to a program.
    NulByte,
    TooManyArgs,
}

impl fmt::Display for ArgvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgvError::Empty => f.write_str("the command is empty"),
            ArgvError::UnterminatedQuote(q) => write!(f, "unterminated {q} quote"),
            ArgvError::TrailingBackslash => f.write_str("a trailing backslash escapes nothing"),
            ArgvError::NulByte => f.write_str("the command contains a NUL byte"),
            ArgvError::TooManyArgs => write!(f, "more than {MAX_ARGS} arguments"),
        }
    }
}

impl std::error::Error for ArgvError {}

/// Splits `cmd` into the program and its arguments (at least one word).
pub fn split(cmd: &str) -> Result<Vec<String>, ArgvError> {
    if cmd.contains('\0') {
        return Err(ArgvError::NulByte);
    }
    let mut out: Vec<String> = Vec::new();
    // `Some` once a word has started: `''` is an (empty) word, blanks are not.
    let mut word: Option<String> = None;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if let Some(w) = word.take() {
                    if out.len() == MAX_ARGS {
                        return Err(ArgvError::TooManyArgs);
                    }
                    out.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(ArgvError::UnterminatedQuote('\'')),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => w.push(e),
                            // Any other backslash inside double quotes is literal (POSIX).
                            Some(other) => {
                                w.push('\\');
                                w.push(other);
                            }
                            None => return Err(ArgvError::UnterminatedQuote('"')),
                        },
                        Some(c) => w.push(c),
                        None => return Err(ArgvError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(e) => word.get_or_insert_with(String::new).push(e),
                None => return Err(ArgvError::TrailingBackslash),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        if out.len() == MAX_ARGS {
            return Err(ArgvError::TooManyArgs);
        }
        out.push(w);
    }
    if out.is_empty() {
        return Err(ArgvError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<String> {
        split(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn plain_words_and_blanks() {
        assert_eq!(ok("npx -y server"), ["npx", "-y", "server"]);
        assert_eq!(ok("  a\t b\n\nc  "), ["a", "b", "c"]);
        assert_eq!(ok("one"), ["one"]);
    }

    #[test]
    fn quotes() {
        assert_eq!(
            ok("python3 -c 'print(1); x'"),
            ["python3", "-c", "print(1); x"]
        );
        assert_eq!(ok(r#"echo "a b" 'c d'"#), ["echo", "a b", "c d"]);
        assert_eq!(ok(r#"a"b"'c'd"#), ["abcd"], "adjacent pieces join one word");
        assert_eq!(
            ok("x '' \"\""),
            ["x", "", ""],
            "empty quotes are empty words"
        );
        assert_eq!(ok(r#""it's""#), ["it's"]);
        assert_eq!(ok(r#"'say "hi"'"#), [r#"say "hi""#]);
    }

    #[test]
    fn backslashes() {
        assert_eq!(ok(r"a\ b c"), ["a b", "c"]);
        assert_eq!(ok(r"\'x\'"), ["'x'"]);
        assert_eq!(
            ok(r#""q\"uote" "back\\slash" "keep\n""#),
            [r#"q"uote"#, r"back\slash", r"keep\n"]
        );
        assert_eq!(ok(r"'no\escape'"), [r"no\escape"]);
    }

    #[test]
    fn shell_syntax_stays_literal() {
        assert_eq!(
            ok("srv ; rm -rf / | cat $(id) `id` && x > f *"),
            ["srv", ";", "rm", "-rf", "/", "|", "cat", "$(id)", "`id`", "&&", "x", ">", "f", "*"]
        );
        assert_eq!(ok("a;b|c$HOME"), ["a;b|c$HOME"]);
        assert_eq!(ok("~/bin/x"), ["~/bin/x"]);
    }

    #[test]
    fn errors() {
        assert_eq!(split(""), Err(ArgvError::Empty));
        assert_eq!(split(" \t\n"), Err(ArgvError::Empty));
        assert_eq!(split("a 'b"), Err(ArgvError::UnterminatedQuote('\'')));
        assert_eq!(split("a \"b"), Err(ArgvError::UnterminatedQuote('"')));
        assert_eq!(split("a \"b\\"), Err(ArgvError::UnterminatedQuote('"')));
        assert_eq!(split("a b\\"), Err(ArgvError::TrailingBackslash));
        assert_eq!(split("a\0b"), Err(ArgvError::NulByte));
        let many = "x ".repeat(MAX_ARGS + 1);
        assert_eq!(split(&many), Err(ArgvError::TooManyArgs));
        assert_eq!(ok(&"x ".repeat(MAX_ARGS)).len(), MAX_ARGS);
    }
}
