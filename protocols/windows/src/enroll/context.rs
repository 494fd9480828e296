//! `ac:AdditionalContext`: the name/value pairs Windows adds to policy and enrollment requests
//! (`DeviceID`, `EnrollmentType`, `OSVersion`, `DeviceName`, `MAC`, …).

use super::xml::{Element, Writer};

/// Context items in the order sent. A name may repeat (`MAC` once per adapter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdditionalContext {
    pub items: Vec<(String, String)>,
}

impl AdditionalContext {
    /// Every `ContextItem` under `el` (at any depth: Microsoft's own examples leave items
    /// unclosed, so a sloppy client may nest them), each with its first `Value`.
    pub fn from_element(el: &Element) -> Self {
        let mut found = Vec::new();
        el.descendants_local("ContextItem", &mut found);
        let items = found
            .into_iter()
            .filter_map(|item| {
                let name = item.attr("Name")?.trim().to_owned();
                let value = item.child_local("Value").map(|v| v.text_trimmed().to_owned()).unwrap_or_default();
                Some((name, value))
            })
            .collect();
        AdditionalContext { items }
    }

    /// The first non-empty value of `name` (names compared without regard to case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.items.iter().find(|(n, v)| n.eq_ignore_ascii_case(name) && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.items.iter().filter(move |(n, v)| n.eq_ignore_ascii_case(name) && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.items.push((name.into(), value.into()));
        self
    }

    /// `<ac:AdditionalContext>` as Windows writes it (the `ac` prefix must be declared).
    pub fn write(&self, w: &mut Writer) {
        w.open("ac:AdditionalContext", &[("xmlns", super::ns::AC)]);
        for (name, value) in &self.items {
            w.open("ac:ContextItem", &[("Name", name)]).leaf("ac:Value", &[], value).close();
        }
        w.close();
    }
}
