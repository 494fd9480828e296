//! A small, strict XML reader into an element tree, and the writer's escaping.
//!
//! SyncML needs few XML features, so this reader accepts few: UTF-8 only, one root element, the
//! five predefined entities and character references. A `<!DOCTYPE>` (and with it any entity
//! declaration) is refused before anything is expanded; so are processing instructions other
//! than the XML declaration, element nesting deeper than [`Limits::max_depth`] and more than
//! [`Limits::max_elements`] elements. Names are kept as local names: SyncML's default namespace
//! (`SYNCML:SYNCML1.2`) and the `syncml:metinf` namespace of `Meta` children are matched by
//! local name, as devices spell prefixes and namespace case in several ways.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::error::DecodeError;

/// Bounds on what the reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest element nesting (the root is depth 1).
    pub max_depth: usize,
    /// Most elements in one document.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // SyncML/SyncBody/Atomic/Sequence/Replace/Item/Meta/Type is 8 deep; Atomic and Sequence
        // may nest a little further, never this far.
        Limits { max_depth: 24, max_elements: 100_000 }
    }
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Text with entities resolved (CDATA sections included as text).
    Text(String),
}

/// An element: its local name, attributes (qualified names, values unescaped) and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str) -> Self {
        Element { name: name.to_owned(), attributes: Vec::new(), children: Vec::new() }
    }

    /// Child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The concatenated text of the direct text children.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Whether the element has child elements (not only text).
    pub fn has_elements(&self) -> bool {
        self.elements().next().is_some()
    }

    /// The children written back as XML (for `Data` that carries markup).
    pub fn inner_xml(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            write_node(&mut out, n);
        }
        out
    }

    /// The element written back as XML.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        write_element(&mut out, self);
        out
    }
}

fn write_node(out: &mut String, n: &Node) {
    match n {
        Node::Text(t) => escape_into(out, t),
        Node::Element(e) => write_element(out, e),
    }
}

fn write_element(out: &mut String, e: &Element) {
    out.push('<');
    out.push_str(&e.name);
    for (k, v) in &e.attributes {
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        escape_attr_into(out, v);
        out.push('"');
    }
    if e.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for c in &e.children {
        write_node(out, c);
    }
    out.push_str("</");
    out.push_str(&e.name);
    out.push('>');
}

/// Escapes text content (`&`, `<`, `>`).
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// The escaped length of `c` as [`escape_into`] writes it.
pub fn escaped_len(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        '\r' => 5,
        c => c.len_utf8(),
    }
}

fn escape_attr_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            c => escape_into(out, c.encode_utf8(&mut [0; 4])),
        }
    }
}

fn name_of(qname: &str) -> String {
    match qname.rfind(':') {
        Some(i) => qname[i + 1..].to_owned(),
        None => qname.to_owned(),
    }
}

fn resolve_entity(name: &str) -> Result<char, DecodeError> {
    Ok(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        other => {
            if let Some(num) = other.strip_prefix('#') {
                let code = match num.strip_prefix('x') {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => num.parse::<u32>(),
                }
                .map_err(|_| DecodeError::Malformed(format!("bad character reference &{other};")))?;
                return char::from_u32(code)
                    .filter(|&c| c != '\0')
                    .ok_or_else(|| DecodeError::Malformed(format!("bad character reference &{other};")));
            }
            return Err(DecodeError::UndefinedEntity(other.chars().take(64).collect()));
        }
    })
}

fn attributes(start: &quick_xml::events::BytesStart<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let mut out = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(|e| DecodeError::Malformed(e.to_string()))?;
        out.push((a.key.0.to_owned(), unescape(&a.value)?));
    }
    Ok(out)
}

/// Resolves the predefined entities and character references in an attribute value.
fn unescape(raw: &str) -> Result<String, DecodeError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find(';').ok_or_else(|| DecodeError::Malformed("unterminated entity reference".into()))?;
        out.push(resolve_entity(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a whole document into its root element.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Element, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    // A byte order mark is allowed before the declaration.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| DecodeError::Malformed(e.to_string()))?;
        match event {
            Event::Decl(_) => {
                if root.is_some() || !stack.is_empty() {
                    return Err(DecodeError::Malformed("XML declaration after the start".into()));
                }
            }
            Event::DocType(_) => return Err(DecodeError::DocType),
            Event::PI(_) => return Err(DecodeError::ProcessingInstruction),
            Event::Comment(_) => {}
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let _ = s;
                return Err(DecodeError::Malformed("content after the root element".into()));
            }
            Event::Start(s) => {
                count += 1;
                if count > limits.max_elements {
                    return Err(DecodeError::TooManyElements(limits.max_elements));
                }
                if stack.len() + 1 > limits.max_depth {
                    return Err(DecodeError::TooDeep(limits.max_depth));
                }
                let mut e = Element::new(&name_of(s.name().0));
                e.attributes = attributes(&s)?;
                stack.push(e);
            }
            Event::Empty(s) => {
                count += 1;
                if count > limits.max_elements {
                    return Err(DecodeError::TooManyElements(limits.max_elements));
                }
                if stack.len() + 1 > limits.max_depth {
                    return Err(DecodeError::TooDeep(limits.max_depth));
                }
                let mut e = Element::new(&name_of(s.name().0));
                e.attributes = attributes(&s)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(e)),
                    None => root = Some(e),
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or_else(|| DecodeError::Malformed("unexpected end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(done)),
                    None => root = Some(done),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                push_text(&mut stack, root.is_some(), &content)?;
            }
            Event::CData(c) => {
                let content = c.into_inner().into_owned();
                push_text(&mut stack, root.is_some(), &content)?;
            }
            Event::GeneralRef(r) => {
                let c = resolve_entity(&r)?;
                push_text(&mut stack, root.is_some(), c.encode_utf8(&mut [0; 4]))?;
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(DecodeError::Malformed(format!("unclosed element <{}>", stack[stack.len() - 1].name)));
    }
    root.ok_or_else(|| DecodeError::Malformed("no root element".into()))
}

fn push_text(stack: &mut [Element], after_root: bool, content: &str) -> Result<(), DecodeError> {
    match stack.last_mut() {
        Some(e) => {
            // Adjacent text, references and CDATA become one text node.
            if let Some(Node::Text(t)) = e.children.last_mut() {
                t.push_str(content);
            } else {
                e.children.push(Node::Text(content.to_owned()));
            }
            Ok(())
        }
        None if content.trim().is_empty() => Ok(()),
        None if after_root => Err(DecodeError::Malformed("text after the root element".into())),
        None => Err(DecodeError::Malformed("text before the root element".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entities_cdata_and_prefixes() {
        let e = parse(
            b"<?xml version=\"1.0\"?><a:R xmlns:a=\"x\"><B>1 &lt; 2 &#x41;&#66;<![CDATA[<c>]]></B><C/></a:R>",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(e.name, "R");
        assert_eq!(e.child("B").unwrap().text(), "1 < 2 AB<c>");
        assert!(e.child("C").unwrap().children.is_empty());
        assert_eq!(e.to_xml(), "<R xmlns:a=\"x\"><B>1 &lt; 2 AB&lt;c&gt;</B><C/></R>");
    }

    #[test]
    fn refuses_doctype_and_entities() {
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;\">]><l>&b;</l>";
        assert!(matches!(parse(bomb, Limits::default()), Err(DecodeError::DocType)));
        assert!(matches!(parse(b"<l>&b;</l>", Limits::default()), Err(DecodeError::UndefinedEntity(n)) if n == "b"));
        assert!(matches!(parse(b"<l><?php x?></l>", Limits::default()), Err(DecodeError::ProcessingInstruction)));
    }

    #[test]
    fn refuses_depth_count_and_broken_documents() {
        let deep = "<a>".repeat(30) + &"</a>".repeat(30);
        assert!(matches!(parse(deep.as_bytes(), Limits::default()), Err(DecodeError::TooDeep(24))));
        let many = format!("<a>{}</a>", "<b/>".repeat(20));
        assert!(matches!(
            parse(many.as_bytes(), Limits { max_depth: 5, max_elements: 10 }),
            Err(DecodeError::TooManyElements(10))
        ));
        for bad in [&b""[..], b"<a>", b"<a></b>", b"<a/><b/>", b"text", b"<a>\xff</a>", b"<a>&#0;</a>"] {
            assert!(parse(bad, Limits::default()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
