//! Which event types a subscription hears: the patterns of its `events` list.
//!
//! An event type is `{object}.{action}` (`phone.updated`, `service.created`, `webhook.ping`). A pattern is
//! one of three forms: an exact type (`phone.updated`), every action on one object (`service.*`), or every
//! event (`*`). Patterns are checked against the catalog of known event types when they are parsed, so a
//! typo is refused at subscription time instead of silently matching nothing.

use std::fmt;

/// Why an event pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not one of the three accepted forms.
    #[error(
        "`{pattern}` is not an event pattern; use an event type (`service.updated`), an object with `.*` (`service.*`) or `*`"
    )]
    Malformed {
        /// The refused pattern.
        pattern: String,
    },
    /// The object part names no known object.
    #[error("`{pattern}` names an unknown object `{object}`; see GET /event-types")]
    UnknownObject {
        /// The refused pattern.
        pattern: String,
        /// Its object part.
        object: String,
    },
    /// The object is known but has no such action.
    #[error("`{pattern}` is not a known event type: `{object}` has no action `{action}`; see GET /event-types")]
    UnknownAction {
        /// The refused pattern.
        pattern: String,
        /// Its object part.
        object: String,
        /// Its action part.
        action: String,
    },
}

/// A validated event-type pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventPattern {
    /// `*`: every event.
    All,
    /// `{object}.*`: every action on one object; holds the object.
    Object(String),
    /// `{object}.{action}`: one event type; holds the whole type.
    Exact(String),
}

/// Whether `part` can be an object or action name: lower-case ASCII letters, digits and `_`.
fn is_name(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Splits a well-formed `{object}.{action}` event type.
fn split_type(event_type: &str) -> Option<(&str, &str)> {
    let (object, action) = event_type.split_once('.')?;
    (is_name(object) && is_name(action)).then_some((object, action))
}

impl EventPattern {
    /// Parses `*`, `{object}.*` or `{object}.{action}`, checking the object and action against `known`, the
    /// catalog of event types (`["service.created", "service.updated", ...]`). Surrounding blanks are
    /// ignored.
    pub fn parse(text: &str, known: &[&str]) -> Result<Self, PatternError> {
        let pattern = text.trim();
        if pattern == "*" {
            return Ok(Self::All);
        }
        let malformed = || PatternError::Malformed { pattern: pattern.to_owned() };
        let (object, action) = pattern.split_once('.').ok_or_else(malformed)?;
        let object_known = known.iter().filter_map(|t| split_type(t)).any(|(o, _)| o == object);
        if action == "*" {
            if !is_name(object) {
                return Err(malformed());
            }
            return if object_known {
                Ok(Self::Object(object.to_owned()))
            } else {
                Err(PatternError::UnknownObject { pattern: pattern.to_owned(), object: object.to_owned() })
            };
        }
        split_type(pattern).ok_or_else(malformed)?;
        if known.contains(&pattern) {
            Ok(Self::Exact(pattern.to_owned()))
        } else if object_known {
            Err(PatternError::UnknownAction {
                pattern: pattern.to_owned(),
                object: object.to_owned(),
                action: action.to_owned(),
            })
        } else {
            Err(PatternError::UnknownObject { pattern: pattern.to_owned(), object: object.to_owned() })
        }
    }

    /// Whether an event of type `event_type` is covered by this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Object(object) => event_type.strip_prefix(object.as_str()).is_some_and(|rest| rest.starts_with('.')),
            Self::Exact(exact) => exact == event_type,
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Object(object) => write!(f, "{object}.*"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

/// Whether any of `patterns` covers `event_type`.
pub fn matches_any(patterns: &[EventPattern], event_type: &str) -> bool {
    patterns.iter().any(|p| p.matches(event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused input and a check of the error it must give.
    type Case = (&'static str, fn(&PatternError) -> bool);

    const KNOWN: &[&str] = &[
        "service.created",
        "service.updated",
        "service.deleted",
        "service_at_location.updated",
        "phone.created",
        "phone.updated",
        "phone.deleted",
        "webhook.ping",
    ];

    fn parse(s: &str) -> Result<EventPattern, PatternError> {
        EventPattern::parse(s, KNOWN)
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse("*"), Ok(EventPattern::All));
        assert_eq!(parse(" * "), Ok(EventPattern::All));
        assert_eq!(parse("service.*"), Ok(EventPattern::Object("service".into())));
        assert_eq!(parse("phone.updated"), Ok(EventPattern::Exact("phone.updated".into())));
        for s in ["*", "service.*", "phone.updated", "service_at_location.*"] {
            assert_eq!(parse(s).expect(s).to_string(), s);
        }
    }

    #[test]
    fn refusals() {
        let cases: &[Case] = &[
            ("", |e| matches!(e, PatternError::Malformed { .. })),
            ("service", |e| matches!(e, PatternError::Malformed { .. })),
            ("service.", |e| matches!(e, PatternError::Malformed { .. })),
            (".updated", |e| matches!(e, PatternError::Malformed { .. })),
            ("*.updated", |e| matches!(e, PatternError::Malformed { .. })),
            ("service.up*", |e| matches!(e, PatternError::Malformed { .. })),
            ("**", |e| matches!(e, PatternError::Malformed { .. })),
            ("Service.updated", |e| matches!(e, PatternError::Malformed { .. })),
            ("service.updated.x", |e| matches!(e, PatternError::Malformed { .. })),
            ("servce.*", |e| matches!(e, PatternError::UnknownObject { object, .. } if object == "servce")),
            ("servce.updated", |e| matches!(e, PatternError::UnknownObject { .. })),
            ("phone.frobbed", |e| matches!(e, PatternError::UnknownAction { action, .. } if action == "frobbed")),
            ("webhook.updated", |e| matches!(e, PatternError::UnknownAction { .. })),
        ];
        for (s, expected) in cases {
            let err = parse(s).expect_err(s);
            assert!(expected(&err), "{s:?} gave {err:?}");
            assert!(err.to_string().contains('`'), "{err}");
        }
    }

    #[test]
    fn matching() {
        let all = parse("*").expect("all");
        let service = parse("service.*").expect("object");
        let exact = parse("phone.updated").expect("exact");
        let table = [
            ("service.updated", true, true, false),
            ("service.deleted", true, true, false),
            ("service_at_location.updated", true, false, false),
            ("phone.updated", true, false, true),
            ("phone.created", true, false, false),
            ("services.updated", true, false, false),
            ("service", true, false, false),
        ];
        for (event, a, s, e) in table {
            assert_eq!(all.matches(event), a, "* vs {event}");
            assert_eq!(service.matches(event), s, "service.* vs {event}");
            assert_eq!(exact.matches(event), e, "phone.updated vs {event}");
        }
        let list = [service, exact];
        assert!(matches_any(&list, "phone.updated"));
        assert!(matches_any(&list, "service.created"));
        assert!(!matches_any(&list, "phone.deleted"));
        assert!(!matches_any(&[], "phone.deleted"));
    }
}

/// Properties over the real event catalog and arbitrary text.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The catalog's event types plus the operational ones, as the subscriptions API passes them.
    fn known() -> Vec<String> {
        let mut types = crate::events::event_types();
        types.extend(crate::events::OPERATIONAL.iter().map(|(name, _)| (*name).to_owned()));
        types
    }

    fn object_of(event_type: &str) -> &str {
        event_type.split_once('.').map_or(event_type, |(object, _)| object)
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics_and_round_trips(text in prop_oneof![
            any::<String>(),
            "[a-z_*. ]{0,20}",
            "[a-z_]{1,12}\\.(\\*|[a-z_]{1,10})",
        ]) {
            let types = known();
            let known: Vec<&str> = types.iter().map(String::as_str).collect();
            if let Ok(pattern) = EventPattern::parse(&text, &known) {
                prop_assert_eq!(pattern.to_string(), text.trim());
                prop_assert_eq!(EventPattern::parse(&pattern.to_string(), &known), Ok(pattern.clone()));
                // A pattern that parsed covers at least one known type.
                prop_assert!(known.iter().any(|t| pattern.matches(t)), "{pattern} matches nothing");
            }
        }

        #[test]
        fn each_form_matches_exactly_what_it_says(
            pick in 0usize..1000,
            event in prop_oneof![any::<String>(), "[a-z_]{1,12}\\.[a-z_.]{1,10}"],
        ) {
            let types = known();
            let known: Vec<&str> = types.iter().map(String::as_str).collect();
            let chosen = known[pick % known.len()];
            let exact = EventPattern::parse(chosen, &known).expect("a known type parses");
            let object = EventPattern::parse(&format!("{}.*", object_of(chosen)), &known).expect("its object parses");
            let all = EventPattern::parse("*", &known).expect("* parses");
            for candidate in known.iter().copied().chain([event.as_str()]) {
                prop_assert_eq!(exact.matches(candidate), candidate == chosen);
                prop_assert_eq!(
                    object.matches(candidate),
                    candidate.split_once('.').is_some_and(|(o, _)| o == object_of(chosen)),
                    "{} vs {}", object, candidate
                );
                prop_assert!(all.matches(candidate));
            }
        }
    }
}
