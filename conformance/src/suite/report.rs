//! Outcomes per exchange, the text report grouped by spec section, and JUnit XML.

use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed(String),
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub section: String,
    pub flow: String,
    pub exchange: String,
    pub verdict: Verdict,
}

impl Outcome {
    pub fn new(section: &str, flow: &str, exchange: &str, verdict: Verdict) -> Outcome {
        Outcome { section: section.to_owned(), flow: flow.to_owned(), exchange: exchange.to_owned(), verdict }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn push(&mut self, o: Outcome) {
        self.outcomes.push(o);
    }

    fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(&o.verdict)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Passed(_)))
    }

    pub fn failed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Failed(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Skipped(_)))
    }

    /// Every failure as `section/flow/exchange: why`.
    pub fn failures(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| match &o.verdict {
                Verdict::Failed(why) => Some(format!("{}/{} {}: {why}", o.section, o.flow, o.exchange)),
                _ => None,
            })
            .collect()
    }

    fn by_section(&self) -> BTreeMap<&str, Vec<&Outcome>> {
        let mut m: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
        for o in &self.outcomes {
            m.entry(o.section.as_str()).or_default().push(o);
        }
        m
    }

    /// The per-exchange report, grouped by spec section, ending in `N passed, M failed`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (section, list) in self.by_section() {
            let _ = writeln!(out, "== {section}");
            for o in list {
                let (tag, detail) = match &o.verdict {
                    Verdict::Passed(d) => ("ok  ", d),
                    Verdict::Failed(d) => ("FAIL", d),
                    Verdict::Skipped(d) => ("skip", d),
                };
                let _ = writeln!(out, "  {tag} {} / {}: {detail}", o.flow, o.exchange);
            }
        }
        let skipped = self.skipped();
        let _ = write!(out, "{} passed, {} failed", self.passed(), self.failed());
        if skipped > 0 {
            let _ = write!(out, " ({skipped} skipped)");
        }
        out.push('\n');
        out
    }

    /// JUnit XML: one `<testsuite>` per section, one `<testcase>` per exchange.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"mdm-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            self.outcomes.len(),
            self.failed(),
            self.skipped()
        );
        for (section, list) in self.by_section() {
            let failures = list.iter().filter(|o| matches!(o.verdict, Verdict::Failed(_))).count();
            let skipped = list.iter().filter(|o| matches!(o.verdict, Verdict::Skipped(_))).count();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
                esc(section),
                list.len()
            );
            for o in list {
                let name = esc(&format!("{} / {}", o.flow, o.exchange));
                let class = esc(&format!("{}.{}", o.section.replace('/', "."), o.flow));
                match &o.verdict {
                    Verdict::Passed(_) => {
                        let _ = writeln!(out, "    <testcase classname=\"{class}\" name=\"{name}\"/>");
                    }
                    Verdict::Failed(why) => {
                        let _ = writeln!(
                            out,
                            "    <testcase classname=\"{class}\" name=\"{name}\"><failure message=\"{}\"/></testcase>",
                            esc(why)
                        );
                    }
                    Verdict::Skipped(why) => {
                        let _ = writeln!(
                            out,
                            "    <testcase classname=\"{class}\" name=\"{name}\"><skipped message=\"{}\"/></testcase>",
                            esc(why)
                        );
                    }
                }
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

fn esc(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_junit() {
        let mut r = Report::default();
        r.push(Outcome::new("apple/checkin", "auth", "Authenticate", Verdict::Passed("200".into())));
        r.push(Outcome::new("apple/checkin", "auth", "Bad", Verdict::Failed("status 500 <x>".into())));
        r.push(Outcome::new("windows", "w", "*", Verdict::Skipped("why".into())));
        let t = r.text();
        assert!(t.contains("== apple/checkin\n"), "{t}");
        assert!(t.ends_with("1 passed, 1 failed (1 skipped)\n"), "{t}");
        let j = r.junit();
        assert!(j.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{j}");
        assert!(j.contains("message=\"status 500 &lt;x&gt;\""), "{j}");
    }
}
