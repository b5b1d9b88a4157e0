//! EC2 XML responses.
//!
//! Every successful EC2 response is `<{Action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">`
//! with a `requestId` first, then the action's fields. Lists are a wrapper element whose members
//! are each an `item` (`<instancesSet><item>…</item></instancesSet>`), which is what botocore's
//! EC2 parser expects for every list shape.
//!
//! The writer appends to a `String`: element names come from the server's code, text is escaped
//! with quick-xml's escaper, and characters XML 1.0 cannot carry at all (most C0 controls, which a
//! tag value decoded from a query string may hold) are replaced so the document always parses.

use std::fmt::Display;

/// The namespace of EC2 API version 2016-11-15, the version the AWS CLI and boto3 speak.
pub const EC2_NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Escapes text for element content (`&`, `<`, `>`), replacing characters XML cannot hold.
/// Quotes need no escaping in content, and leaving them readable keeps messages readable.
pub fn escape_text(s: &str) -> String {
    let escaped = quick_xml::escape::partial_escape(s);
    if escaped.chars().all(xml_char) {
        escaped.into_owned()
    } else {
        escaped
            .chars()
            .map(|c| if xml_char(c) { c } else { '\u{FFFD}' })
            .collect()
    }
}

/// The Char production of XML 1.0.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A response document under construction.
#[derive(Debug)]
pub struct Response {
    out: String,
    root: String,
    open: Vec<String>,
}

impl Response {
    /// Starts `<{action}Response xmlns=…><requestId>{request_id}</requestId>`.
    pub fn new(action: &str, request_id: &str) -> Self {
        let root = format!("{action}Response");
        let mut r = Response {
            out: String::with_capacity(1024),
            root,
            open: Vec::new(),
        };
        r.out
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        r.out.push('<');
        r.out.push_str(&r.root);
        r.out.push_str(" xmlns=\"");
        r.out.push_str(EC2_NAMESPACE);
        r.out.push_str("\">");
        r.elem("requestId", request_id);
        r
    }

    /// `<name>text</name>`.
    pub fn elem(&mut self, name: &str, text: impl Display) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.out.push_str(&escape_text(&text.to_string()));
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// `<name>text</name>` when there is a value; nothing otherwise (EC2 leaves absent fields out).
    pub fn opt_elem<T: Display>(&mut self, name: &str, text: Option<T>) -> &mut Self {
        if let Some(t) = text {
            self.elem(name, t);
        }
        self
    }

    /// `<name>true</name>` / `<name>false</name>`.
    pub fn bool_elem(&mut self, name: &str, value: bool) -> &mut Self {
        self.elem(name, if value { "true" } else { "false" })
    }

    /// Opens `<name>`; close it with [`Response::end`].
    pub fn start(&mut self, name: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.open.push(name.to_string());
        self
    }

    /// Closes the element opened last.
    pub fn end(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(&name);
            self.out.push('>');
        }
        self
    }

    /// `<name>…</name>` with `body` writing the contents.
    pub fn nest(&mut self, name: &str, body: impl FnOnce(&mut Self)) -> &mut Self {
        self.start(name);
        body(self);
        self.end()
    }

    /// `<name><item>…</item>…</name>`, one `item` per element of `items`. An empty list is written
    /// as `<name/>`'s equivalent `<name></name>`, which botocore reads as an empty list.
    pub fn list<I, T>(
        &mut self,
        name: &str,
        items: I,
        mut each: impl FnMut(&mut Self, T),
    ) -> &mut Self
    where
        I: IntoIterator<Item = T>,
    {
        self.start(name);
        for item in items {
            self.start("item");
            each(self, item);
            self.end();
        }
        self.end()
    }

    /// `<tagSet><item><key>k</key><value>v</value></item>…</tagSet>`, the shape of EC2 tag lists.
    pub fn tag_set<'a>(&mut self, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> &mut Self {
        self.list("tagSet", tags, |r, (k, v)| {
            r.elem("key", k).elem("value", v);
        })
    }

    /// Closes whatever is still open and the root, and returns the document.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.end();
        }
        self.out.push_str("</");
        self.out.push_str(&self.root);
        self.out.push('>');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_ec2_envelope() {
        let r = Response::new("StartInstances", "abc-123");
        assert_eq!(
            r.finish(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<StartInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>abc-123</requestId></StartInstancesResponse>"
        );
    }

    #[test]
    fn lists_nesting_and_escaping() {
        let mut r = Response::new("DescribeInstances", "r1");
        r.list("reservationSet", ["r-1"], |r, id| {
            r.elem("reservationId", id);
            r.list("instancesSet", [("i-1", 16)], |r, (id, code)| {
                r.elem("instanceId", id);
                r.nest("instanceState", |r| {
                    r.elem("code", code).elem("name", "running");
                });
                r.tag_set([("Name", "a<b>&\"c'")]);
                r.opt_elem("ipAddress", None::<&str>);
                r.bool_elem("ebsOptimized", false);
            });
        });
        let xml = r.finish();
        assert!(xml.contains(
            "<reservationSet><item><reservationId>r-1</reservationId><instancesSet><item><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState><tagSet><item><key>Name</key><value>a&lt;b&gt;&amp;\"c'</value></item></tagSet><ebsOptimized>false</ebsOptimized></item></instancesSet></item></reservationSet>"
        ), "{xml}");
        assert!(xml.ends_with("</DescribeInstancesResponse>"));
    }

    #[test]
    fn finish_closes_what_is_open() {
        let mut r = Response::new("X", "1");
        r.start("a").start("b");
        assert!(r.finish().ends_with("<a><b></b></a></XResponse>"));
    }

    #[test]
    fn characters_xml_cannot_hold_are_replaced() {
        assert_eq!(escape_text("a\u{0}b\u{1b}c\td"), "a\u{FFFD}b\u{FFFD}c\td");
        assert_eq!(escape_text("plain"), "plain");
    }

    /// Whatever the text, the document is well-formed XML and reads back as written.
    #[test]
    fn output_reads_back_with_a_real_parser() {
        let nasty = "<&>\"'\u{0}]]>\u{1F600}";
        let mut r = Response::new("GetConsoleOutput", "id");
        r.elem("output", nasty);
        let xml = r.finish();
        let mut reader = quick_xml::Reader::from_str(&xml);
        let mut texts = Vec::new();
        loop {
            match reader.read_event().unwrap() {
                quick_xml::events::Event::Text(t) => texts.push(t.decode().unwrap().into_owned()),
                quick_xml::events::Event::GeneralRef(r) => {
                    let name = r.decode().unwrap().into_owned();
                    let c = quick_xml::escape::resolve_predefined_entity(&name).unwrap();
                    texts.last_mut().unwrap().push_str(c);
                }
                quick_xml::events::Event::Eof => break,
                _ => texts.push(String::new()),
            }
        }
        assert!(
            texts.concat().contains("<&>\"'\u{FFFD}]]>\u{1F600}"),
            "{texts:?}"
        );
    }
}
