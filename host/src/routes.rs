//! Routes: which targets an event goes to, by glob patterns on its name.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::Config;

/// For each target, the set of event-name patterns routed to it.
#[derive(Debug, Clone)]
pub struct Routes {
    by_target: BTreeMap<String, GlobSet>,
}

impl Routes {
    /// Builds the routes of a validated config (patterns were checked there).
    pub fn from_config(config: &Config) -> Result<Self, globset::Error> {
        let mut builders: BTreeMap<String, GlobSetBuilder> = BTreeMap::new();
        for route in &config.routes {
            for target in &route.targets {
                let builder = builders
                    .entry(target.clone())
                    .or_insert_with(GlobSetBuilder::new);
                for pattern in &route.events {
                    // `*` must not stop at '/': event names are not paths.
                    builder.add(Glob::new(pattern)?);
                }
            }
        }
        let mut by_target = BTreeMap::new();
        for (target, builder) in builders {
            by_target.insert(target, builder.build()?);
        }
        Ok(Self { by_target })
    }

    /// Routes from (target, patterns) pairs, as written in a config.
    pub fn from_patterns<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a [&'a str])>,
    ) -> Result<Self, globset::Error> {
        let mut by_target = BTreeMap::new();
        for (target, patterns) in pairs {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                builder.add(Glob::new(pattern)?);
            }
            by_target.insert(target.to_string(), builder.build()?);
        }
        Ok(Self { by_target })
    }

    /// True if `event_name` is routed to `target`.
    pub fn matches(&self, target: &str, event_name: &str) -> bool {
        self.by_target
            .get(target)
            .is_some_and(|set| set.is_match(event_name))
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.by_target.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_route_events() {
        let config = Config::from_toml(
            r#"
            database = "sqlite://x.db"
            [[routes]]
            events = ["order.*", "user.{created,deleted}"]
            targets = ["a"]
            [[routes]]
            events = ["*"]
            targets = ["b"]
            [targets.a]
            plugin = "null"
            [targets.b]
            plugin = "null"
            "#,
            std::path::Path::new("."),
        )
        .unwrap();
        let routes = Routes::from_config(&config).unwrap();
        assert!(routes.matches("a", "order.created"));
        assert!(routes.matches("a", "user.deleted"));
        assert!(!routes.matches("a", "user.updated"));
        assert!(routes.matches("b", "anything/at.all"));
        assert!(!routes.matches("c", "order.created"));
    }
}
