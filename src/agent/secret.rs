//! Secrets from flags, the environment or files, kept out of logs and Debug output.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A secret value (API key, header value). Debug and Display print a fixed
/// placeholder so a stray `{:?}` on a config can never leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that needs it (a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from: `env:NAME`, `file:/path`, or the literal value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Literal(Secret),
    Env(String),
    File(PathBuf),
}

/// Secret files are small; anything bigger is a wrong path, not a key.
const MAX_SECRET_FILE: u64 = 64 * 1024;

#[derive(Debug)]
pub enum SecretError {
    EnvMissing(String),
    Empty,
    FileRead {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    FileTooLarge(PathBuf),
    NotUtf8,
    ControlCharacter,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::EnvMissing(name) => write!(f, "environment variable {name} is not set"),
            SecretError::Empty => f.write_str("the value is empty"),
            SecretError::FileRead { path, kind } => {
                write!(f, "cannot read {}: {kind}", path.display())
            }
            SecretError::FileTooLarge(path) => {
                write!(
                    f,
                    "{} is larger than {MAX_SECRET_FILE} bytes",
                    path.display()
                )
            }
            SecretError::NotUtf8 => f.write_str("the value is not UTF-8"),
            SecretError::ControlCharacter => {
                f.write_str("the value contains a control character (not usable in a header)")
            }
        }
    }
}

impl std::error::Error for SecretError {}

impl SecretSource {
    pub fn parse(raw: &str) -> SecretSource {
        if let Some(name) = raw.strip_prefix("env:") {
            SecretSource::Env(name.to_string())
        } else if let Some(path) = raw.strip_prefix("file:") {
            SecretSource::File(PathBuf::from(path))
        } else {
            SecretSource::Literal(Secret(raw.to_string()))
        }
    }

    /// True when resolving again may give a new value (a rotated key file).
    pub fn is_reloadable(&self) -> bool {
        matches!(self, SecretSource::File(_))
    }

    /// Resolves the value; `env` looks a variable up (process environment, then env-file).
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Literal(s) => s.0.clone(),
            SecretSource::Env(name) => {
                env(name).ok_or_else(|| SecretError::EnvMissing(name.clone()))?
            }
            SecretSource::File(path) => read_secret_file(path)?,
        };
        check_value(&value)?;
        Ok(Secret(value))
    }
}

fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let file_err = |e: std::io::Error| SecretError::FileRead {
        path: path.to_path_buf(),
        kind: e.kind(),
    };
    let file = std::fs::File::open(path).map_err(file_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(file_err)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(SecretError::FileTooLarge(path.to_path_buf()));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8)?;
    // Editors and `echo` add one newline; more than one is the operator's content.
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

fn check_value(value: &str) -> Result<(), SecretError> {
    if value.is_empty() {
        return Err(SecretError::Empty);
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SecretError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("sk-very-secret".into());
        assert!(!format!("{s:?}").contains("sk-very"));
        assert!(!format!("{s}").contains("sk-very"));
        let src = SecretSource::parse("sk-very-secret");
        assert!(!format!("{src:?}").contains("sk-very"));
    }

    #[test]
    fn parses_prefixes() {
        assert_eq!(
            SecretSource::parse("env:KEY"),
            SecretSource::Env("KEY".into())
        );
        assert_eq!(
            SecretSource::parse("file:/run/key"),
            SecretSource::File("/run/key".into())
        );
        assert!(matches!(
            SecretSource::parse("plain"),
            SecretSource::Literal(_)
        ));
    }

    #[test]
    fn env_lookup_and_missing() {
        let env = |n: &str| (n == "K").then(|| "v1".to_string());
        assert_eq!(
            SecretSource::Env("K".into())
                .resolve(&env)
                .unwrap()
                .expose(),
            "v1"
        );
        assert!(matches!(
            SecretSource::Env("X".into()).resolve(&no_env),
            Err(SecretError::EnvMissing(_))
        ));
    }

    #[test]
    fn file_trims_one_newline_only() {
        let dir = std::env::temp_dir().join(format!("mcp-tunnel-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k1");
        std::fs::write(&p, "abc\n").unwrap();
        let src = SecretSource::File(p.clone());
        assert_eq!(src.resolve(&no_env).unwrap().expose(), "abc");
        std::fs::write(&p, "abc\r\n").unwrap();
        assert_eq!(src.resolve(&no_env).unwrap().expose(), "abc");
        std::fs::write(&p, "abc\n\n").unwrap();
        assert!(matches!(
            src.resolve(&no_env),
            Err(SecretError::ControlCharacter)
        ));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(src.resolve(&no_env), Err(SecretError::Empty)));
        assert!(src.is_reloadable());
        let missing = SecretSource::File(dir.join("nope"));
        assert!(matches!(
            missing.resolve(&no_env),
            Err(SecretError::FileRead { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
