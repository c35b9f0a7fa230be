//! `allow_commands`: the commands a plugin may run through the
//! `commands.call` import (a scene's devices). Entries are exact command
//! names (`"on"`) or a prefix ending in `*` (`"relay-*"`, or `"*"` for
//! every command); none by default.

/// One `allow_commands` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandGrant {
    Exact(String),
    Prefix(String),
}

impl std::str::FromStr for CommandGrant {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let (name, prefix) = match entry.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (entry, false),
        };
        if (!prefix && name.is_empty()) || name.contains(char::is_whitespace) || name.contains('*')
        {
            return Err(format!(
                "`{entry}` is not a command name or a prefix ending in `*` (\"on\", \"relay-*\")"
            ));
        }
        Ok(match prefix {
            true => Self::Prefix(name.to_owned()),
            false => Self::Exact(name.to_owned()),
        })
    }
}

impl CommandGrant {
    fn permits(&self, command: &str) -> bool {
        match self {
            Self::Exact(name) => name == command,
            Self::Prefix(prefix) => command.starts_with(prefix.as_str()),
        }
    }
}

/// What a plugin is told when it calls (or schedules) `command` outside
/// its grant: what to grant.
pub fn not_granted(plugin: &str, command: &str) -> String {
    format!(
        "permission denied: plugin '{plugin}' may not call '{command}' \
         (grant it in `allow_commands` of [plugins.{plugin}])"
    )
}

/// Whether `grants` let the plugin run `command`.
pub fn permits(grants: &[CommandGrant], command: &str) -> bool {
    grants.iter().any(|grant| grant.permits(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(entries: &[&str]) -> Vec<CommandGrant> {
        entries.iter().map(|e| e.parse().unwrap()).collect()
    }

    #[test]
    fn exact_names_and_prefixes() {
        let granted = grants(&["on", "relay-*"]);
        assert!(permits(&granted, "on"));
        assert!(!permits(&granted, "only"));
        assert!(permits(&granted, "relay-set"));
        assert!(permits(&granted, "relay-"));
        assert!(!permits(&granted, "off"));
        assert!(permits(&grants(&["*"]), "anything"));
        assert!(!permits(&[], "on"));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for entry in ["", "a b", "re*lay", "**"] {
            assert!(entry.parse::<CommandGrant>().is_err(), "{entry}");
        }
    }
}
