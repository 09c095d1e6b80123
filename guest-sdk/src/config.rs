use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Error, Result};

mod keyed;

/// A target's configuration: the `[targets.<name>.config]` table of the
/// operator's TOML file, handed to `init` as a JSON object.
///
/// Every accessor's error names the key, so a plugin can return it from `init`
/// as it is and the operator reads which setting is wrong.
///
/// ```
/// use outbox_relay_guest::Config;
///
/// let config = Config::parse(r#"{"path": "/out/events.jsonl", "fsync": true}"#)?;
/// assert_eq!(config.get_str("path")?, "/out/events.jsonl");
/// assert!(config.get_bool_or("fsync", false)?);
/// assert_eq!(config.get_opt_u64("max_bytes")?, None);
/// # Ok::<(), outbox_relay_guest::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    map: Map<String, Value>,
}

impl Config {
    /// Parses the JSON the host passes to `init`. It must be an object; an
    /// empty string counts as an empty object.
    pub fn parse(json: &str) -> Result<Config> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(map)) => Ok(Config { map }),
            Ok(other) => Err(Error::new(format!(
                "config must be a JSON object, got {}",
                kind(&other)
            ))),
            Err(err) => Err(Error::new(format!("config is not valid JSON: {err}"))),
        }
    }

    /// A configuration made from an already parsed map (handy in tests).
    pub fn from_map(map: Map<String, Value>) -> Config {
        Config { map }
    }

    /// The whole object.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.map
    }

    /// Fails on the first key that is not in `known`, naming it and listing
    /// the known ones: a misspelt setting is an error at start-up, not a
    /// silently ignored line.
    ///
    /// ```
    /// use outbox_relay_guest::Config;
    ///
    /// let config = Config::parse(r#"{"url": "h", "tmeout_ms": 5}"#)?;
    /// let err = config.only_keys(&["url", "timeout_ms"]).unwrap_err();
    /// assert_eq!(
    ///     err.message(),
    ///     "config: unknown key `tmeout_ms` (known: `url`, `timeout_ms`)"
    /// );
    /// # Ok::<(), outbox_relay_guest::Error>(())
    /// ```
    pub fn only_keys(&self, known: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) if known.is_empty() => Err(Error::new(format!(
                "config: unknown key `{key}` (this plugin takes no settings)"
            ))),
            Some(key) => Err(Error::new(format!(
                "config: unknown key `{key}` (known: {})",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// A duration in milliseconds, `default_ms` when absent, which must lie in
    /// `range` (an error names the key and the range).
    pub fn get_millis_or(
        &self,
        key: &str,
        default_ms: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<std::time::Duration> {
        let ms = self.get_opt_u64(key)?.unwrap_or(default_ms);
        if range.contains(&ms) {
            Ok(std::time::Duration::from_millis(ms))
        } else if *range.end() == u64::MAX {
            Err(Error::new(format!(
                "config: key `{key}` must be at least {} (milliseconds), got {ms}",
                range.start()
            )))
        } else {
            Err(Error::new(format!(
                "config: key `{key}` must be between {} and {} (milliseconds), got {ms}",
                range.start(),
                range.end()
            )))
        }
    }

    /// The value of `key`, if present (a JSON `null` counts as absent).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_opt_str(key)?
            .ok_or_else(|| Error::new(format!("config: missing required key `{key}` (a string)")))
    }

    /// An optional string; present but not a string is an error.
    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(mistyped(key, "a string", other)),
        }
    }

    /// A required non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_opt_u64(key)?.ok_or_else(|| {
            Error::new(format!(
                "config: missing required key `{key}` (a non-negative integer)"
            ))
        })
    }

    /// An optional non-negative integer; present but not one is an error.
    pub fn get_opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| mistyped(key, "a non-negative integer", v)),
        }
    }

    /// A boolean, or `default` when absent; present but not a boolean is an error.
    pub fn get_bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(mistyped(key, "a boolean", other)),
        }
    }

    /// The whole object as a typed struct, for plugins with many settings.
    /// An error names the key whose value is wrong (`config: key
    /// `timeout_ms`: invalid type: ...`), as the typed getters' do.
    ///
    /// The SDK re-exports `serde`, so a plugin needs no `serde` dependency of
    /// its own: point the derive at it with `#[serde(crate = ...)]`. Use
    /// `deny_unknown_fields` (or [`Config::only_keys`]) to catch misspelt keys.
    ///
    /// ```
    /// use outbox_relay_guest::Config;
    /// use outbox_relay_guest::serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// #[serde(crate = "outbox_relay_guest::serde", deny_unknown_fields)]
    /// struct Settings {
    ///     url: String,
    ///     #[serde(default)]
    ///     timeout_ms: Option<u64>,
    /// }
    ///
    /// let settings: Settings = Config::parse(r#"{"url": "h"}"#)?.deserialize()?;
    /// assert_eq!(settings.url, "h");
    /// let err = Config::parse(r#"{"url": "h", "timeout_ms": "5"}"#)?
    ///     .deserialize::<Settings>()
    ///     .err()
    ///     .unwrap();
    /// assert!(err.message().starts_with("config: key `timeout_ms`: invalid type"), "{err}");
    /// # Ok::<(), outbox_relay_guest::Error>(())
    /// ```
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(keyed::Object(&self.map)).map_err(|err| Error::new(format!("config: {err}")))
    }
}

fn mistyped(key: &str, expected: &str, got: &Value) -> Error {
    Error::new(format!(
        "config: key `{key}` must be {expected}, got {}",
        kind(got)
    ))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn parses_objects_and_treats_empty_as_empty() {
        assert!(config("").raw().is_empty());
        assert!(config("  ").raw().is_empty());
        assert!(config("{}").raw().is_empty());
        assert_eq!(config(r#"{"a": 1}"#).raw().len(), 1);
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        let err = Config::parse("[1]").unwrap_err();
        assert!(err.message().contains("JSON object"), "{err}");
        assert!(err.message().contains("an array"), "{err}");
        let err = Config::parse("{nope").unwrap_err();
        assert!(err.message().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn strings() {
        let c = config(r#"{"path": "/out/x", "n": 3, "nothing": null}"#);
        assert_eq!(c.get_str("path").unwrap(), "/out/x");
        assert_eq!(c.get_opt_str("path").unwrap(), Some("/out/x"));
        assert_eq!(c.get_opt_str("missing").unwrap(), None);
        assert_eq!(c.get_opt_str("nothing").unwrap(), None);

        let err = c.get_str("missing").unwrap_err();
        assert!(err.message().contains("`missing`"), "{err}");
        assert!(err.message().contains("missing required key"), "{err}");

        let err = c.get_str("n").unwrap_err();
        assert!(err.message().contains("`n`"), "{err}");
        assert!(err.message().contains("must be a string"), "{err}");
        assert!(err.message().contains("an integer"), "{err}");
    }

    #[test]
    fn integers() {
        let c = config(r#"{"n": 3, "neg": -1, "f": 1.5, "s": "3"}"#);
        assert_eq!(c.get_u64("n").unwrap(), 3);
        assert_eq!(c.get_opt_u64("n").unwrap(), Some(3));
        assert_eq!(c.get_opt_u64("missing").unwrap(), None);
        assert!(
            c.get_u64("missing")
                .unwrap_err()
                .message()
                .contains("`missing`")
        );
        for key in ["neg", "f", "s"] {
            let err = c.get_opt_u64(key).unwrap_err();
            assert!(err.message().contains(&format!("`{key}`")), "{err}");
            assert!(err.message().contains("non-negative integer"), "{err}");
        }
    }

    #[test]
    fn booleans() {
        let c = config(r#"{"t": true, "f": false, "s": "yes"}"#);
        assert!(c.get_bool_or("t", false).unwrap());
        assert!(!c.get_bool_or("f", true).unwrap());
        assert!(c.get_bool_or("missing", true).unwrap());
        let err = c.get_bool_or("s", true).unwrap_err();
        assert!(
            err.message().contains("`s`") && err.message().contains("a boolean"),
            "{err}"
        );
    }

    #[test]
    fn deserializes_into_a_struct() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            url: String,
            #[serde(default)]
            timeout_ms: Option<u64>,
        }
        let c = config(r#"{"url": "http://x"}"#);
        assert_eq!(
            c.deserialize::<Settings>().unwrap(),
            Settings {
                url: "http://x".into(),
                timeout_ms: None
            }
        );
        let err = config(r#"{"url": "http://x", "tmeout_ms": 1}"#)
            .deserialize::<Settings>()
            .unwrap_err();
        assert!(err.message().contains("tmeout_ms"), "{err}");
        let err = config("{}").deserialize::<Settings>().unwrap_err();
        assert!(err.message().contains("url"), "{err}");
        let err = config(r#"{"url": 3}"#)
            .deserialize::<Settings>()
            .unwrap_err();
        assert!(
            err.message().starts_with("config: key `url`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn nested_errors_name_the_top_level_key() {
        #[derive(serde::Deserialize, Debug)]
        struct Outer {
            #[allow(dead_code)]
            inner: Vec<Inner>,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Inner {
            #[allow(dead_code)]
            n: u8,
        }
        let err = config(r#"{"inner": [{"n": 1}, {"n": 300}]}"#)
            .deserialize::<Outer>()
            .unwrap_err();
        assert!(err.message().starts_with("config: key `inner`: "), "{err}");
        assert!(err.message().contains("300"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let c = config(r#"{"url": "h", "subjet": "x"}"#);
        assert!(c.only_keys(&["url", "subjet"]).is_ok());
        let err = c.only_keys(&["url", "subject"]).unwrap_err();
        assert_eq!(
            err.message(),
            "config: unknown key `subjet` (known: `url`, `subject`)"
        );
        let err = c.only_keys(&[]).unwrap_err();
        assert!(err.message().contains("takes no settings"), "{err}");
    }

    #[test]
    fn millis_are_bounded() {
        let c = config(r#"{"a": 0, "b": 20}"#);
        assert_eq!(
            c.get_millis_or("b", 5, 1..=100).unwrap(),
            std::time::Duration::from_millis(20)
        );
        assert_eq!(
            c.get_millis_or("missing", 5, 1..=100).unwrap(),
            std::time::Duration::from_millis(5)
        );
        let err = c.get_millis_or("a", 5, 1..=100).unwrap_err();
        assert!(
            err.message().contains("`a` must be between 1 and 100"),
            "{err}"
        );
    }
}
