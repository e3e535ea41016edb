//! The forms a config value may take beyond serde's own: one name or a list of names, and
//! durations written as people write them ("90s", "30m", "6h").

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Deserializes one string or a list of strings.
pub(super) fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a namespace name or a list of names")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                names.push(name);
            }
            Ok(names)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// Durations as humantime strings ("90s", "30m", "6h"), strictly positive.
pub(super) mod duration {
    use std::{fmt, time::Duration};

    use serde::de::{self, Deserializer, Visitor};

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Humantime;
        impl Visitor<'_> for Humantime {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30m or 6h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                match humantime::parse_duration(v) {
                    Ok(d) if !d.is_zero() => Ok(d),
                    Err(e) if !v.trim_start().starts_with('-') => Err(E::custom(format_args!(
                        "invalid duration {v:?}: {e}; use e.g. 90s, 30m or 6h"
                    ))),
                    _ => Err(E::custom(format_args!(
                        "invalid duration {v:?}: must be a positive duration such as 30m or 6h"
                    ))),
                }
            }
        }
        deserializer.deserialize_str(Humantime)
    }
}
