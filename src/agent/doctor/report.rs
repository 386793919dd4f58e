//! The doctor's checklist: one line per check, a fix under each failure,
//! as text or one JSON document. Pure (no I/O), so its shape is unit-tested.

use miniserde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Not run: it does not apply, or an earlier step failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found (never a secret).
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    pub fn ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Fail)
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    pub fn text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::from("mcp-tunnel doctor\n");
        for c in &self.checks {
            out.push_str(&format!(
                "  [{:<4}] {:<width$}  {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("         {:<width$}  fix: {fix}\n", ""));
            }
        }
        out.push_str(&format!(
            "{} passed, {} failed, {} skipped\n",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip)
        ));
        out
    }

    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct J<'a> {
            ok: bool,
            checks: Vec<JCheck<'a>>,
        }
        #[derive(Serialize)]
        struct JCheck<'a> {
            name: &'a str,
            status: &'a str,
            detail: &'a str,
            fix: Option<&'a str>,
        }
        let mut s = miniserde::json::to_string(&J {
            ok: self.ok(),
            checks: self
                .checks
                .iter()
                .map(|c| JCheck {
                    name: &c.name,
                    status: match c.status {
                        Status::Pass => "pass",
                        Status::Fail => "fail",
                        Status::Skip => "skip",
                    },
                    detail: &c.detail,
                    fix: c.fix.as_deref(),
                })
                .collect(),
        });
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_shapes() {
        let mut r = Report::default();
        r.push(Check::pass("configuration", "fine"));
        assert!(r.ok());
        r.push(Check::fail("control-plane auth", "HTTP 401", "set the key"));
        r.push(Check::skip("MCP server", "not reached"));
        assert!(!r.ok());
        let t = r.text();
        assert!(t.contains("[ok  ] configuration"), "{t}");
        assert!(t.contains("[FAIL] control-plane auth  HTTP 401"), "{t}");
        assert!(t.contains("fix: set the key"), "{t}");
        assert!(t.ends_with("1 passed, 1 failed, 1 skipped\n"), "{t}");
        let j = r.json();
        assert!(
            j.starts_with(r#"{"ok":false,"checks":[{"name":"configuration","status":"pass""#),
            "{j}"
        );
        assert!(j.contains(r#""fix":"set the key""#), "{j}");
    }
}
