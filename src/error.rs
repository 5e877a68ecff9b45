//! The one error type every fallible kmx operation returns, and the one place that maps
//! errors to exit codes. Each error names the file (and line, where there is one) it is
//! about and, where kmx knows it, what to do next (`hint`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit codes, documented in README.md ("Exit codes").
pub mod exit {
    /// Everything asked for succeeded (cells skipped by a rule count as success).
    pub const OK: i32 = 0;
    /// Work ran, and some of it failed: a cell did not build, a module failed verification,
    /// a target is unusable.
    pub const FAILED: i32 = 1;
    /// The command line or a configuration file (target, toolchain, dkms.conf, kmx.toml) is wrong.
    pub const USAGE: i32 = 2;
    /// The machine lacks something: a toolchain, a kernel tree, apt, the network.
    pub const ENVIRONMENT: i32 = 3;
    /// `kmx smoke` could not get a verdict: a kernel did not boot (missing image or
    /// emulator, wrong image, panic before /init, timeout), and no module was refused.
    pub const HARNESS: i32 = 4;
    /// Stopped by Ctrl-C or SIGTERM.
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command-line input.
    Usage,
    /// A configuration file is malformed or inconsistent.
    Config,
    /// Something the machine must provide is missing or broken.
    Environment,
    /// Work ran and failed.
    Failed,
    /// The user interrupted.
    Interrupted,
}

/// A kmx error: what went wrong, about which file, and what to do.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    /// The file or directory the error is about.
    pub path: Option<PathBuf>,
    /// 1-based line (and column) in `path`, when known.
    pub line: Option<(usize, usize)>,
    pub message: String,
    /// What the user should do next.
    pub hint: Option<String>,
    /// The chain of underlying causes, outermost first.
    pub causes: Vec<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            path: None,
            line: None,
            message: message.into(),
            hint: None,
            causes: Vec::new(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }
    pub fn config(path: impl AsRef<Path>, message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message).at(path)
    }
    pub fn env(message: impl Into<String>) -> Error {
        Error::new(Kind::Environment, message)
    }
    pub fn failed(message: impl Into<String>) -> Error {
        Error::new(Kind::Failed, message)
    }
    /// An I/O error on `path`, with the operation that failed ("read", "create", ...).
    pub fn io(op: &str, path: impl AsRef<Path>, err: std::io::Error) -> Error {
        Error::new(Kind::Environment, format!("cannot {op}: {err}")).at(path)
    }
    pub fn at(mut self, path: impl AsRef<Path>) -> Error {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }
    pub fn line(mut self, line: usize, column: usize) -> Error {
        self.line = Some((line, column));
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }
    /// [`Error::hint`] only when the machine lacks something ([`Kind::Environment`]: a
    /// program not found, ...): what to install.
    pub fn hint_if_missing(self, hint: impl Into<String>) -> Error {
        if self.kind == Kind::Environment {
            self.hint(hint)
        } else {
            self
        }
    }
    pub fn caused_by(mut self, cause: impl fmt::Display) -> Error {
        self.causes.push(cause.to_string());
        self
    }
    pub fn code(&self) -> i32 {
        match self.kind {
            Kind::Usage | Kind::Config => exit::USAGE,
            Kind::Environment => exit::ENVIRONMENT,
            Kind::Failed => exit::FAILED,
            Kind::Interrupted => exit::INTERRUPTED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}", path.display())?;
            if let Some((line, col)) = self.line {
                write!(f, ":{line}:{col}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

/// Render an error the way `main` prints it: the one-line message, its causes, and the hint.
pub fn render(err: &Error) -> String {
    format!("error: {}", render_inline(err))
}

/// An error rendered for embedding in another message (a warning, a cell's reason, a
/// report): like [`render`] without the leading `error: `.
pub fn render_inline(err: &Error) -> String {
    let mut out = err.to_string();
    for cause in &err.causes {
        out.push_str(&format!("\n  caused by: {cause}"));
    }
    if let Some(hint) = &err.hint {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out
}

/// An error as JSON output holds it: the message, its causes and its hint as fields of
/// their own, never formatted into one string. Shown as text, it reads as
/// [`render_inline`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl From<&Error> for Problem {
    fn from(err: &Error) -> Problem {
        Problem {
            message: err.to_string(),
            causes: err.causes.clone(),
            hint: err.hint.clone(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for cause in &self.causes {
            write!(f, "\n  caused by: {cause}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_keeps_the_hint_apart_and_reads_as_the_error() {
        let e = Error::env("gcc-12 not found").hint("apt-get install gcc-12");
        let p = Problem::from(&e);
        assert_eq!(p.message, "gcc-12 not found");
        assert_eq!(p.hint.as_deref(), Some("apt-get install gcc-12"));
        assert_eq!(p.to_string(), render_inline(&e));
    }

    #[test]
    fn renders_path_line_cause_and_hint() {
        let e = Error::config("targets/x.toml", "unknown field `arhc`")
            .line(3, 1)
            .caused_by("expected one of `arch`, `toolchain`")
            .hint("did you mean `arch`?");
        assert_eq!(
            render(&e),
            "error: targets/x.toml:3:1: unknown field `arhc`\n  caused by: expected one of `arch`, `toolchain`\n  hint: did you mean `arch`?"
        );
        assert_eq!(e.code(), exit::USAGE);
        assert_eq!(format!("error: {}", render_inline(&e)), render(&e));
    }
}
