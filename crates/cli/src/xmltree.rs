//! A small element tree over quick-xml, enough to pick fields out of EC2 responses.
//!
//! EC2 responses are element-only documents (no attributes that matter, no mixed content), so an
//! element keeps its local name (namespace prefix dropped), its children and its text.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Deeper than any EC2 response; a bound so a hostile document cannot recurse us into the ground.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub children: Vec<Element>,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the response is not well-formed XML: {0}")]
pub struct XmlError(String);

impl Element {
    /// Parses a whole document and returns its root element.
    pub fn parse(doc: &str) -> Result<Element, XmlError> {
        let mut reader = Reader::from_str(doc);
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| XmlError(format!("at byte {}: {e}", reader.buffer_position())))?;
            match event {
                Event::Start(s) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(XmlError(format!("nested deeper than {MAX_DEPTH}")));
                    }
                    if root.is_some() {
                        return Err(XmlError("content after the root element".into()));
                    }
                    stack.push(Element {
                        name: local(s.local_name().as_ref()),
                        ..Element::default()
                    });
                }
                Event::Empty(s) => {
                    let e = Element {
                        name: local(s.local_name().as_ref()),
                        ..Element::default()
                    };
                    attach(&mut stack, &mut root, e)?;
                }
                Event::End(_) => {
                    let e = stack
                        .pop()
                        .ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                    attach(&mut stack, &mut root, e)?;
                }
                Event::Text(t) => {
                    let text = t.decode().map_err(|e| XmlError(e.to_string()))?;
                    push_text(&mut stack, &text)?;
                }
                Event::CData(t) => {
                    let text = t.decode().map_err(|e| XmlError(e.to_string()))?;
                    push_text(&mut stack, &text)?;
                }
                Event::GeneralRef(r) => {
                    let resolved = if let Some(c) =
                        r.resolve_char_ref().map_err(|e| XmlError(e.to_string()))?
                    {
                        c.to_string()
                    } else {
                        let name = r.decode().map_err(|e| XmlError(e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| XmlError(format!("unknown entity &{name};")))?
                            .to_string()
                    };
                    push_text(&mut stack, &resolved)?;
                }
                Event::Eof => break,
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        if !stack.is_empty() {
            return Err(XmlError("the document ends inside an element".into()));
        }
        root.ok_or_else(|| XmlError("the document is empty".into()))
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The element at a `/`-separated path of child names.
    pub fn path(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, name| e.child(name))
    }

    /// The trimmed text at `path`, if the element exists.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.path(path).map(|e| e.text.trim())
    }

    /// The text at `path`, or empty.
    pub fn str(&self, path: &str) -> String {
        self.text_at(path).unwrap_or("").to_string()
    }

    /// The `item` children of the list at `path` (`instancesSet` → each `instancesSet/item`).
    pub fn items<'a>(&'a self, path: &str) -> impl Iterator<Item = &'a Element> + 'a {
        self.path(path)
            .into_iter()
            .flat_map(|l| l.children.iter().filter(|c| c.name == "item"))
    }
}

fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(e) => {
            e.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(XmlError("text outside the root element".into())),
    }
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, e: Element) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(e),
        None if root.is_none() => *root = Some(e),
        None => return Err(XmlError("more than one root element".into())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_lists_entities_and_namespaces() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeThingsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>r-1</requestId>
    <thingSet>
        <item><name>a &amp; b &lt;c&gt; &#x41;&#66;</name></item>
        <item><name><![CDATA[<raw>]]></name><empty/></item>
    </thingSet>
</DescribeThingsResponse>"#;
        let root = Element::parse(doc).unwrap();
        assert_eq!(root.name, "DescribeThingsResponse");
        assert_eq!(root.text_at("requestId"), Some("r-1"));
        let names: Vec<String> = root.items("thingSet").map(|i| i.str("name")).collect();
        assert_eq!(names, ["a & b <c> AB", "<raw>"]);
        assert!(root
            .items("thingSet")
            .nth(1)
            .unwrap()
            .child("empty")
            .is_some());
        assert_eq!(root.items("missing").count(), 0);
        assert_eq!(root.text_at("no/such/path"), None);
    }

    #[test]
    fn rejects_broken_documents() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "text",
            "<a>&bogus;</a>",
            &"<a>".repeat(100),
        ] {
            assert!(Element::parse(bad).is_err(), "{bad:?}");
        }
    }
}
