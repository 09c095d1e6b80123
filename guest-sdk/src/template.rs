//! Names built from a message: a NATS subject, an AMQP routing key, an MQTT
//! topic, a Redis stream key.

use crate::{Envelope, Error, Result};

/// A name with placeholders, filled in per envelope.
///
/// | placeholder      | becomes                                  |
/// |------------------|------------------------------------------|
/// | `{event}`        | the event name                           |
/// | `{id}`           | the message id                           |
/// | `{key}`          | the partition key (an error when unset)  |
/// | `{header.NAME}`  | header `NAME` (an error when missing)    |
///
/// `{{` and `}}` stand for literal braces.
///
/// ```
/// use outbox_relay_guest::{Envelope, Template};
///
/// let subject = Template::parse("orders.{event}.{header.tenant}").unwrap();
/// let envelope = Envelope {
///     id: "0190".into(),
///     event_name: "order.created".into(),
///     partition_key: None,
///     payload: vec![],
///     headers: vec![("tenant".into(), "acme".into())],
///     attempt: 1,
///     created_at_ms: 0,
/// };
/// assert_eq!(subject.render(&envelope).unwrap(), "orders.order.created.acme");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Event,
    Id,
    Key,
    Header(String),
}

impl Template {
    /// Parses `text`; the error names the bad placeholder.
    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(Error::new(format!(
                        "template {text:?}: unmatched `}}` at byte {at} (write `}}}}` for a literal brace)"
                    )));
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => {
                                return Err(Error::new(format!(
                                    "template {text:?}: `{{` at byte {at} is never closed"
                                )));
                            }
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(match name.as_str() {
                        "event" => Part::Event,
                        "id" => Part::Id,
                        "key" => Part::Key,
                        _ => match name.strip_prefix("header.") {
                            Some(header) if !header.is_empty() => {
                                Part::Header(header.to_ascii_lowercase())
                            }
                            _ => {
                                return Err(Error::new(format!(
                                    "template {text:?}: unknown placeholder `{{{name}}}` \
                                     (use {{event}}, {{id}}, {{key}} or {{header.NAME}})"
                                )));
                            }
                        },
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Fills in the placeholders from `envelope`. Fails when the template
    /// uses a header or key the envelope lacks; a transport should reject
    /// such a message, as no retry will add the header.
    pub fn render(&self, envelope: &Envelope) -> Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Event => out.push_str(&envelope.event_name),
                Part::Id => out.push_str(&envelope.id),
                Part::Key => match &envelope.partition_key {
                    Some(key) => out.push_str(key),
                    None => {
                        return Err(Error::new(format!(
                            "template {:?} uses {{key}}, and the message has no partition key",
                            self.text
                        )));
                    }
                },
                Part::Header(name) => match envelope.header(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        return Err(Error::new(format!(
                            "template {:?} uses header {name:?}, which the message does not have",
                            self.text
                        )));
                    }
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            id: "id-1".into(),
            event_name: "order.created".into(),
            partition_key: Some("k9".into()),
            payload: vec![],
            headers: vec![("tenant".into(), "acme".into())],
            attempt: 1,
            created_at_ms: 0,
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = Template::parse("a.{event}.{id}.{key}.{header.Tenant}.{{x}}").unwrap();
        assert_eq!(
            t.render(&envelope()).unwrap(),
            "a.order.created.id-1.k9.acme.{x}"
        );
    }

    #[test]
    fn a_static_template_renders_as_written() {
        let t = Template::parse("orders").unwrap();
        assert_eq!(t.render(&envelope()).unwrap(), "orders");
    }

    #[test]
    fn bad_templates_name_the_problem() {
        let e = Template::parse("a.{nope}").unwrap_err();
        assert!(e.message().contains("unknown placeholder `{nope}`"), "{e}");
        let e = Template::parse("a.{event").unwrap_err();
        assert!(e.message().contains("never closed"), "{e}");
        let e = Template::parse("a}").unwrap_err();
        assert!(e.message().contains("unmatched"), "{e}");
    }

    #[test]
    fn a_missing_header_is_an_error_that_names_it() {
        let t = Template::parse("{header.region}").unwrap();
        let e = t.render(&envelope()).unwrap_err();
        assert!(e.message().contains("\"region\""), "{e}");
        let mut no_key = envelope();
        no_key.partition_key = None;
        assert!(Template::parse("{key}").unwrap().render(&no_key).is_err());
    }
}
