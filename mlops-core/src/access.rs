//! Access control across the pipeline: who (a principal: an API key's name,
//! a service account, a person) may do what ([`Action`]) to which resource
//! ([`Resource`]). An [`Authorizer`] decides; [`Policy`] is one loaded from a
//! TOML or JSON file of roles and grants:
//!
//! ```toml
//! [roles.release]
//! grants = [{ actions = ["promote"], resources = ["alias:fraud@champion"] }]
//!
//! [roles.training]
//! grants = [{ actions = ["read"], resources = ["view:*_deid"] },
//!           { actions = ["register"], resources = ["model:*"] }]
//!
//! [principals]
//! release-bot = ["release"]
//! trainer = ["training"]
//! ```
//!
//! Resources are written `kind:name`: `view:NAME`, `feature:VIEW:FEATURE`,
//! `model:NAME`, `alias:MODEL@ALIAS`, `deployment:NAME`, `snapshot:ID`,
//! `run:ID`; a pattern's name may hold one `*` (any run of characters:
//! `view:*_deid`, `model:fraud*`), or the pattern be `*` alone.
//! What no grant allows is denied, and the denial names the principal, the
//! action and the resource.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};

/// What a principal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Action {
    /// Reads data, a model or a record.
    Read,
    /// Writes data (ingest, push).
    Write,
    /// Copies offline data online.
    Materialize,
    /// Registers a model version.
    Register,
    /// Moves an alias (`champion`) to a version.
    Promote,
    /// Archives a version.
    Archive,
    /// Asks a deployment for predictions.
    Infer,
    /// Changes a deployment (routing, load, unload).
    Admin,
    /// Erases an entity's data.
    Erase,
}

impl Action {
    const ALL: [(Action, &'static str); 9] = [
        (Action::Read, "read"),
        (Action::Write, "write"),
        (Action::Materialize, "materialize"),
        (Action::Register, "register"),
        (Action::Promote, "promote"),
        (Action::Archive, "archive"),
        (Action::Infer, "infer"),
        (Action::Admin, "admin"),
        (Action::Erase, "erase"),
    ];
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(a, _)| a == self)
            .map_or("?", |(_, n)| n);
        f.write_str(name)
    }
}

impl FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(a, _)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
                Error::invalid_input(
                    format!("action {s:?}"),
                    format!("expected one of {}", names.join(", ")),
                )
            })
    }
}

/// What an action is done to, written `kind:name` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource(String);

/// The kinds a resource may be of.
const KINDS: [&str; 7] = [
    "view",
    "feature",
    "model",
    "alias",
    "deployment",
    "snapshot",
    "run",
];

impl Resource {
    /// A feature view.
    pub fn view(name: &str) -> Self {
        Self(format!("view:{name}"))
    }
    /// A feature of a view.
    pub fn feature(view: &str, feature: &str) -> Self {
        Self(format!("feature:{view}:{feature}"))
    }
    /// A registered model (all its versions).
    pub fn model(name: &str) -> Self {
        Self(format!("model:{name}"))
    }
    /// An alias of a model.
    pub fn alias(model: &str, alias: &str) -> Self {
        Self(format!("alias:{model}@{alias}"))
    }
    /// A deployment.
    pub fn deployment(name: &str) -> Self {
        Self(format!("deployment:{name}"))
    }
    /// A dataset snapshot.
    pub fn snapshot(id: &str) -> Self {
        Self(format!("snapshot:{id}"))
    }
    /// A tracker run.
    pub fn run(id: &str) -> Self {
        Self(format!("run:{id}"))
    }
    /// `kind:name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decides whether a principal may do an action to a resource.
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// `Ok` when `principal` may do `action` to `resource`.
    ///
    /// # Errors
    /// [`Error::Forbidden`] naming the principal, the action and the resource.
    fn authorize(&self, principal: &str, action: Action, resource: &Resource) -> Result<()>;
}

/// Allows everything: the SDK's behaviour without a policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &str, _: Action, _: &Resource) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    roles: BTreeMap<String, RoleFile>,
    #[serde(default)]
    principals: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    grants: Vec<GrantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    actions: Vec<String>,
    resources: Vec<String>,
}

/// One grant: these actions on resources matching these patterns.
#[derive(Debug, Clone)]
struct Grant {
    actions: Vec<Action>,
    patterns: Vec<String>,
}

/// Roles of grants, and the roles of each principal: an [`Authorizer`]
/// loaded from a file (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: BTreeMap<String, Vec<Grant>>,
    principals: BTreeMap<String, Vec<String>>,
}

/// Checks a resource pattern: `*`, or `kind:name` with an optional trailing
/// `*`.
fn check_pattern(at: &str, p: &str) -> Result<()> {
    if p == "*" {
        return Ok(());
    }
    let Some((kind, name)) = p.split_once(':') else {
        return Err(Error::invalid_input(
            at,
            format!("{p:?} is not kind:name (kinds: {})", KINDS.join(", ")),
        ));
    };
    if !KINDS.contains(&kind) {
        return Err(Error::invalid_input(
            at,
            format!("{p:?}: unknown kind {kind:?} (kinds: {})", KINDS.join(", ")),
        ));
    }
    if name.is_empty() || name.matches('*').count() > 1 {
        return Err(Error::invalid_input(
            at,
            format!("{p:?}: a name, with at most one `*`"),
        ));
    }
    Ok(())
}

/// Whether `resource` matches `pattern` (`*` alone, or one `*` standing for
/// any run of characters).
fn matches(pattern: &str, resource: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('*') {
        Some((prefix, suffix)) => {
            resource.len() >= prefix.len() + suffix.len()
                && resource.starts_with(prefix)
                && resource.ends_with(suffix)
        }
        None => pattern == resource,
    }
}

impl Policy {
    /// From TOML (`format` "toml") or JSON ("json") text; `source` names it in
    /// errors.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the key: a parse error (with its line for
    /// TOML), an unknown action, a malformed resource pattern, a role with no
    /// grants, a principal given an undefined role.
    pub fn parse(text: &str, format: &str, source: &str) -> Result<Self> {
        let file: PolicyFile = match format {
            "toml" => toml::from_str(text)
                .map_err(|e| Error::invalid_input(format!("policy {source}"), e.to_string()))?,
            "json" => serde_json::from_str(text)
                .map_err(|e| Error::invalid_input(format!("policy {source}"), e.to_string()))?,
            other => {
                return Err(Error::invalid_input(
                    format!("policy {source}"),
                    format!("format {other:?}: toml or json"),
                ));
            }
        };
        let mut roles = BTreeMap::new();
        for (name, role) in file.roles {
            if role.grants.is_empty() {
                return Err(Error::invalid_input(
                    format!("policy {source}: roles.{name}.grants"),
                    "a role grants something",
                ));
            }
            let mut grants = Vec::new();
            for (i, g) in role.grants.into_iter().enumerate() {
                let at = format!("policy {source}: roles.{name}.grants[{i}]");
                let actions = g
                    .actions
                    .iter()
                    .map(|a| {
                        a.parse().map_err(|e: Error| {
                            Error::invalid_input(format!("{at}.actions"), e.to_string())
                        })
                    })
                    .collect::<Result<Vec<Action>>>()?;
                for p in &g.resources {
                    check_pattern(&format!("{at}.resources"), p)?;
                }
                grants.push(Grant {
                    actions,
                    patterns: g.resources,
                });
            }
            roles.insert(name, grants);
        }
        for (principal, names) in &file.principals {
            if let Some(missing) = names.iter().find(|r| !roles.contains_key(*r)) {
                return Err(Error::invalid_input(
                    format!("policy {source}: principals.{principal}"),
                    format!("role {missing:?} is not defined under [roles]"),
                ));
            }
        }
        Ok(Self {
            roles,
            principals: file.principals,
        })
    }
}

impl Authorizer for Policy {
    fn authorize(&self, principal: &str, action: Action, resource: &Resource) -> Result<()> {
        let allowed = self
            .principals
            .get(principal)
            .into_iter()
            .flatten()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .any(|g| {
                g.actions.contains(&action)
                    && g.patterns.iter().any(|p| matches(p, resource.as_str()))
            });
        if allowed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                reason: format!("principal {principal:?} may not {action} {resource}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const POLICY: &str = r#"
[roles.release]
grants = [{ actions = ["promote"], resources = ["alias:fraud@champion"] }]

[roles.training]
grants = [{ actions = ["read"], resources = ["view:*_deid"] },
          { actions = ["register", "promote"], resources = ["model:*", "alias:*@challenger"] }]

[principals]
release-bot = ["release"]
trainer = ["training"]
"#;

    #[test]
    fn grants_allow_what_they_name_and_nothing_else() {
        let p = Policy::parse(POLICY, "toml", "test").unwrap();
        let ok = |who: &str, a: Action, r: Resource| p.authorize(who, a, &r).is_ok();
        assert!(ok(
            "release-bot",
            Action::Promote,
            Resource::alias("fraud", "champion")
        ));
        assert!(!ok(
            "release-bot",
            Action::Promote,
            Resource::alias("other", "champion")
        ));
        assert!(ok("trainer", Action::Read, Resource::view("patients_deid")));
        assert!(!ok("trainer", Action::Read, Resource::view("patients")));
        assert!(ok(
            "trainer",
            Action::Promote,
            Resource::alias("fraud", "challenger")
        ));
        assert!(!ok(
            "trainer",
            Action::Promote,
            Resource::alias("fraud", "champion")
        ));
        assert!(!ok(
            "stranger",
            Action::Read,
            Resource::view("patients_deid")
        ));
        let denied = p
            .authorize(
                "trainer",
                Action::Promote,
                &Resource::alias("fraud", "champion"),
            )
            .unwrap_err();
        let text = denied.to_string();
        assert!(
            text.contains("trainer")
                && text.contains("promote")
                && text.contains("alias:fraud@champion"),
            "{text}"
        );
        assert!(
            AllowAll
                .authorize("x", Action::Erase, &Resource::run("r"))
                .is_ok()
        );
    }

    #[test]
    fn bad_policies_are_refused_naming_the_key() {
        for (text, needle) in [
            (
                "[roles.r]\ngrants = [{ actions = [\"fly\"], resources = [\"model:m\"] }]",
                "roles.r.grants[0].actions",
            ),
            (
                "[roles.r]\ngrants = [{ actions = [\"read\"], resources = [\"table:m\"] }]",
                "unknown kind",
            ),
            (
                "[roles.r]\ngrants = [{ actions = [\"read\"], resources = [\"model:*m*\"] }]",
                "at most one",
            ),
            ("[roles.r]\ngrants = []", "roles.r.grants"),
            ("[principals]\nbob = [\"nope\"]", "principals.bob"),
            (
                "[roles.r]\ngrants = [{ actions = [\"read\"], resources = [\"model:m\"], extra = 1 }]",
                "extra",
            ),
        ] {
            let e = Policy::parse(text, "toml", "p.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let json = r#"{"roles": {"r": {"grants": [{"actions": ["read"], "resources": ["*"]}]}}, "principals": {"a": ["r"]}}"#;
        let p = Policy::parse(json, "json", "p.json").unwrap();
        assert!(
            p.authorize("a", Action::Read, &Resource::snapshot("s"))
                .is_ok()
        );
        assert!(Policy::parse("", "yaml", "p").is_err());
    }
}
