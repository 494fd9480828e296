//! A small, bounded XML tree for the enrollment SOAP messages, read with quick-xml's
//! [`NsReader`] so every element and attribute carries its namespace URI, and a writer that
//! escapes what it is given.
//!
//! Security rules, checked while reading (never after expanding anything):
//! - a document type declaration (`<!DOCTYPE …>`, which is where entities are declared) is refused
//!   outright; entity references other than the five predefined ones and character references
//!   are refused, never expanded;
//! - nesting deeper than [`MAX_DEPTH`], more than [`MAX_ELEMENTS`] elements, more than
//!   [`MAX_ATTRIBUTES`] attributes on one element and more than [`MAX_NAMESPACE_BINDINGS`]
//!   namespace declarations in scope are refused;
//! - the input must be UTF-8 (what Windows sends).
//!
//! The size of the whole document is the caller's limit (the HTTP body limit).

use std::fmt::Write as _;

use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Deepest element nesting accepted (the deepest enrollment message is about 8 levels).
pub const MAX_DEPTH: usize = 32;
/// Most elements in one document.
pub const MAX_ELEMENTS: usize = 10_000;
/// Most attributes (namespace declarations included) on one element.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most namespace bindings in scope at once.
pub const MAX_NAMESPACE_BINDINGS: usize = 256;

/// Why a document was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the document has a document type declaration; DTDs and entity declarations are refused")]
    Doctype,
    #[error("entity reference `&{0};` is refused: only the predefined entities and character references are allowed")]
    UnknownEntity(String),
    #[error("elements are nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the document has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("<{0}> has more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes(String),
    #[error("namespace prefix `{0}` is not declared")]
    UnknownPrefix(String),
    #[error("the document is not UTF-8")]
    NotUtf8,
    #[error("the document has no root element")]
    Empty,
    #[error("content after the root element")]
    TrailingContent,
    #[error("not well-formed XML: {0}")]
    Syntax(String),
}

impl XmlError {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            XmlError::Doctype => "xml_doctype",
            XmlError::UnknownEntity(_) => "xml_entity",
            XmlError::TooDeep => "xml_too_deep",
            XmlError::TooManyElements => "xml_too_many_elements",
            XmlError::TooManyAttributes(_) => "xml_too_many_attributes",
            XmlError::UnknownPrefix(_) => "xml_unknown_prefix",
            XmlError::NotUtf8 => "xml_not_utf8",
            XmlError::Empty => "xml_empty",
            XmlError::TrailingContent => "xml_trailing_content",
            XmlError::Syntax(_) => "xml_syntax",
        }
    }
}

/// An attribute with its resolved namespace (unprefixed attributes have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub ns: Option<String>,
    pub name: String,
    pub value: String,
}

/// An element with its resolved namespace, attributes, child elements and the text directly
/// inside it (concatenated; enrollment messages have no mixed content).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub ns: Option<String>,
    pub name: String,
    pub attrs: Vec<Attribute>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    /// Whether this is `{ns}name`.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.name == name && self.ns.as_deref() == Some(ns)
    }

    /// The first child `{ns}name`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// The first child with this local name, whatever its namespace. For the payload of
    /// messages, whose children real clients put in a default namespace that varies (a
    /// trailing `/` in Microsoft's own examples).
    pub fn child_local(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children_local<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Every descendant (not this element) with this local name, depth first.
    pub fn descendants_local<'a>(&'a self, name: &'a str, out: &mut Vec<&'a Element>) {
        for c in &self.children {
            if c.name == name {
                out.push(c);
            }
            c.descendants_local(name, out);
        }
    }

    /// The text, surrounding whitespace removed.
    pub fn text_trimmed(&self) -> &str {
        self.text.trim()
    }

    /// Whether the element carries `xsi:nil="true"` (MS-XCEP's way of saying "absent").
    pub fn is_nil(&self) -> bool {
        self.attrs
            .iter()
            .any(|a| a.name == "nil" && a.ns.as_deref() == Some(crate::enroll::ns::XSI) && a.value == "true")
    }

    /// An attribute by local name, whatever its namespace (clients write `ValueType` and
    /// `wsse:ValueType` alike).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.name == name).map(|a| a.value.as_str())
    }

    /// A short `{ns}name` for messages.
    pub fn qualified(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{{{ns}}}{}", self.name),
            None => self.name.clone(),
        }
    }
}

fn syntax(e: impl std::fmt::Display) -> XmlError {
    XmlError::Syntax(e.to_string())
}

fn resolved(r: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match r {
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Bound(ns) => Ok(Some(ns.as_ref().to_owned())),
        ResolveResult::Unknown(prefix) => Err(XmlError::UnknownPrefix(prefix)),
    }
}

fn start_element(reader: &NsReader<&[u8]>, e: &BytesStart<'_>) -> Result<Element, XmlError> {
    let (ns, local) = reader.resolver().resolve_element(e.name());
    let name = local.as_ref().to_owned();
    let ns = resolved(ns)?;
    let mut attrs = Vec::new();
    for (i, a) in e.attributes().enumerate() {
        if i >= MAX_ATTRIBUTES {
            return Err(XmlError::TooManyAttributes(name));
        }
        let a = a.map_err(syntax)?;
        let key = a.key.as_ref();
        // Namespace declarations are the reader's business, not the message's.
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let (ans, alocal) = reader.resolver().resolve_attribute(a.key);
        let aname = alocal.as_ref().to_owned();
        // Normalised as XML 1.0 says; only the predefined entities and character references are
        // known: anything else is an error, never an expansion.
        let value = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, name)) => {
                XmlError::UnknownEntity(name)
            }
            other => syntax(other),
        })?;
        attrs.push(Attribute { ns: resolved(ans)?, name: aname, value: value.into_owned() });
    }
    Ok(Element { ns, name, attrs, children: Vec::new(), text: String::new() })
}

/// Reads a whole document into a tree, applying the rules in the module documentation.
pub fn parse(input: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(input).map_err(|_| XmlError::NotUtf8)?;
    // A UTF-8 byte order mark is allowed before the declaration.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = NsReader::from_reader(text.as_bytes());
    reader.resolver_mut().set_max_namespace_bindings(MAX_NAMESPACE_BINDINGS);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let event = reader.read_event_into(&mut buf).map_err(|e| match e {
            quick_xml::Error::Namespace(n) => syntax(n),
            other => syntax(other),
        })?;
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(_) | Event::Empty(_) if root.is_some() => return Err(XmlError::TrailingContent),
            Event::Start(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooManyElements);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let el = start_element(&reader, &e)?;
                stack.push(el);
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooManyElements);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let el = start_element(&reader, &e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| syntax("unmatched end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None if root.is_some() => return Err(XmlError::TrailingContent),
                    None => return Err(syntax("text outside the root element")),
                }
            }
            Event::CData(c) => {
                let content = c.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&content),
                    None => return Err(syntax("CDATA outside the root element")),
                }
            }
            Event::GeneralRef(r) => {
                let ch = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(syntax)?.ok_or_else(|| syntax("bad character reference"))?
                } else {
                    let name = r.xml10_content();
                    match name.as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(XmlError::UnknownEntity(other.to_owned())),
                    }
                };
                match stack.last_mut() {
                    Some(el) => el.text.push(ch),
                    None => return Err(syntax("reference outside the root element")),
                }
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(syntax("unexpected end of document"));
    }
    root.ok_or(XmlError::Empty)
}

/// Builds a document as text. Names are written as given (callers pass prefixed names and
/// declare the prefixes); text and attribute values are escaped.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    open: Vec<String>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", escape(*v));
        }
    }

    /// `<name attrs…>`; close it with [`Writer::close`].
    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        self.start(name, attrs);
        self.out.push('>');
        self.open.push(name.to_owned());
        self
    }

    /// Closes the innermost open element.
    pub fn close(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            let _ = write!(self.out, "</{name}>");
        }
        self
    }

    /// `<name attrs…>text</name>`.
    pub fn leaf(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) -> &mut Self {
        self.start(name, attrs);
        let _ = write!(self.out, ">{}</{name}>", escape(text));
        self
    }

    /// `<name attrs…/>`.
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        self.start(name, attrs);
        self.out.push_str("/>");
        self
    }

    /// Escaped text inside the innermost open element.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.out.push_str(&escape(text));
        self
    }

    /// The document, with every element still open closed.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_resolved_for_elements_and_attributes() {
        let doc = br#"<?xml version="1.0"?><s:E xmlns:s="urn:s" xmlns="urn:d"><C s:a="1" b="x &amp; y">t&lt;&#65;</C><s:D/></s:E>"#;
        let root = parse(doc).expect("parses");
        assert!(root.is("urn:s", "E"));
        let c = root.child("urn:d", "C").expect("C in the default namespace");
        assert_eq!(c.text, "t<A");
        assert_eq!(c.attrs[0], Attribute { ns: Some("urn:s".into()), name: "a".into(), value: "1".into() });
        assert_eq!(c.attr("b"), Some("x & y"));
        assert!(root.child("urn:s", "D").is_some());
    }

    #[test]
    fn doctype_and_entities_are_refused_not_expanded() {
        let bomb =
            br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
        assert_eq!(parse(bomb), Err(XmlError::Doctype));
        assert_eq!(parse(b"<a>&ext;</a>"), Err(XmlError::UnknownEntity("ext".into())));
        assert_eq!(parse(br#"<a b="&ext;"/>"#), Err(XmlError::UnknownEntity("ext".into())));
    }

    #[test]
    fn limits() {
        let deep = format!("{}{}", "<a>".repeat(MAX_DEPTH + 1), "</a>".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooDeep));
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let wide = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS));
        assert_eq!(parse(wide.as_bytes()), Err(XmlError::TooManyElements));
        let attrs: String = (0..=MAX_ATTRIBUTES).map(|i| format!(" a{i}=\"1\"")).collect();
        assert_eq!(parse(format!("<e{attrs}/>").as_bytes()), Err(XmlError::TooManyAttributes("e".into())));
    }

    #[test]
    fn malformed_documents() {
        assert_eq!(parse(b""), Err(XmlError::Empty));
        assert_eq!(parse(b"<a/><b/>"), Err(XmlError::TrailingContent));
        assert!(matches!(parse(b"<a><b></a>"), Err(XmlError::Syntax(_))));
        assert!(matches!(parse(b"<a>"), Err(XmlError::Syntax(_))));
        assert_eq!(parse(b"<p:a/>"), Err(XmlError::UnknownPrefix("p".into())));
        assert_eq!(parse(&[b'<', b'a', b'>', 0xff, b'<', b'/', b'a', b'>']), Err(XmlError::NotUtf8));
    }

    #[test]
    fn writer_escapes() {
        let mut w = Writer::new();
        w.open("a", &[("x", "1\"<&")]).leaf("b", &[], "<&>").empty("c", &[("y", "'")]).text("t&");
        let s = w.finish();
        assert_eq!(s, r#"<a x="1&quot;&lt;&amp;"><b>&lt;&amp;&gt;</b><c y="&apos;"/>t&amp;</a>"#);
        let back = parse(s.as_bytes()).expect("round trip");
        assert_eq!(back.attr("x"), Some("1\"<&"));
        assert_eq!(back.child_local("b").expect("b").text, "<&>");
    }
}
