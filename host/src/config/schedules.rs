//! The `[[schedules]]` entries: commands the server runs on time.

use std::collections::BTreeSet;

use anyhow::{bail, ensure};
use serde::Deserialize;

use super::AuthSettings;
use crate::cron::{Plan, PlanError};
use crate::protocol::request::{RESERVED, Request};

/// One `[[schedules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Unique among the schedules: the log, the metrics and `schedules`
    /// name it.
    pub name: String,
    /// When it runs: 5 fields (minute resolution) or 6 (seconds first).
    pub cron: String,
    /// The command line it runs, as a client would send it.
    pub command: String,
    /// The IANA time zone `cron` is read in; the host's when unset.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The `[[auth.tokens]]` entry whose permissions its runs have.
    #[serde(default)]
    pub token: Option<String>,
    /// Run once at start when a run was missed while the server was down.
    #[serde(default)]
    pub catch_up: bool,
}

/// Checks every schedule, naming the key of the first that is wrong.
pub(super) fn validate(schedules: &[ScheduleSettings], auth: &AuthSettings) -> anyhow::Result<()> {
    let mut names = BTreeSet::new();
    for (index, schedule) in schedules.iter().enumerate() {
        let key = |field: &str| {
            format!(
                "`schedules[{index}].{field}` (schedule '{}')",
                schedule.name
            )
        };
        ensure!(
            !schedule.name.trim().is_empty() && !schedule.name.contains('/'),
            "`schedules[{index}].name` must not be empty nor hold `/` (plugins' own \
             schedules are named `plugin/name`)"
        );
        ensure!(
            names.insert(schedule.name.as_str()),
            "{}: two schedules have this name",
            key("name")
        );
        if let Err(err) = Plan::parse(&schedule.cron, schedule.timezone.as_deref()) {
            let field = match err {
                PlanError::Zone(_) => "timezone",
                _ => "cron",
            };
            bail!("{}: {err}", key(field));
        }
        let Ok(command) = Request::parse(schedule.command.as_bytes()) else {
            bail!("{} must be a command line, not empty", key("command"));
        };
        ensure!(
            !RESERVED.contains(&command.command.as_str()),
            "{}: `{}` is answered by the server to a connection, not run on time",
            key("command"),
            command.command
        );
        check_token(schedule, auth, &key("token"))?;
    }
    Ok(())
}

/// With tokens, a schedule runs with one of them: it names the entry.
fn check_token(schedule: &ScheduleSettings, auth: &AuthSettings, key: &str) -> anyhow::Result<()> {
    match &schedule.token {
        Some(token) => ensure!(
            auth.tokens.iter().any(|entry| entry.name == *token),
            "{key}: no `[[auth.tokens]]` entry is named '{token}'"
        ),
        None => ensure!(
            auth.tokens.is_empty(),
            "{key} is missing: with `[[auth.tokens]]`, a schedule runs with a token's \
             permissions, and without one it may run nothing"
        ),
    }
    Ok(())
}
