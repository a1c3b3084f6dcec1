//! `cloudsync users`: importing accounts with their password hashes, and granting roles.

use anyhow::{Context as _, bail};
use cloudsync_eventstore::Database;

use crate::config::Config;

use super::UsersCommand;

/// `cloudsync users import`: registers the accounts of a JSON Lines text; every line is checked
/// before anything is registered. Addresses already registered are skipped and reported.
///
/// # Errors
/// A bad line (with its number and what is wrong), or store failures.
pub async fn import_users(config: &Config, db: &Database, text: &str, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        email: String,
        password_hash: String,
    }
    let mut accounts = Vec::new();
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let number = number + 1;
        match serde_json::from_str::<Line>(line) {
            Err(err) => problems.push(format!("line {number}: not an object with email and password_hash ({err})")),
            Ok(parsed) => match cloudsync_domain::Email::parse(&parsed.email) {
                Err(err) => problems.push(format!("line {number}: {err}")),
                Ok(_) if !cloudsync_identity::passwords::Passwords::recognised(&parsed.password_hash) => {
                    problems.push(format!("line {number}: the password hash is not argon2, bcrypt or PBKDF2"));
                }
                Ok(email) => accounts.push((email, parsed.password_hash)),
            },
        }
    }
    if !problems.is_empty() {
        bail!("nothing was imported:\n  {}", problems.join("\n  "));
    }
    let commands = crate::root::commands(config, db)?;
    let (mut imported, mut skipped) = (0, Vec::new());
    for (email, hash) in accounts {
        match commands.register(email.clone(), hash).await {
            Ok(_) => imported += 1,
            Err(cloudsync_commands::CommandError::AlreadyExists(_)) => skipped.push(email.as_str().to_owned()),
            Err(err) => return Err(err).with_context(|| format!("importing {}", email.as_str())),
        }
    }
    writeln!(out, "Imported {imported} accounts.")?;
    if !skipped.is_empty() {
        writeln!(out, "Skipped {} already registered: {}.", skipped.len(), skipped.join(", "))?;
    }
    Ok(())
}

/// `cloudsync users grant | revoke <email> <role>`.
///
/// # Errors
/// An unknown account or role, or store failures.
pub async fn roles(config: &Config, db: &Database, command: &UsersCommand, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let (email, role, grant) = match command {
        UsersCommand::Grant { email, role } => (email, role, true),
        UsersCommand::Revoke { email, role } => (email, role, false),
        UsersCommand::Import { .. } => bail!("not a role command"),
    };
    let email = cloudsync_domain::Email::parse(email).map_err(|err| anyhow::anyhow!("{err}"))?;
    let commands = crate::root::commands(config, db)?;
    let user = commands
        .user_by_email(&email)
        .await?
        .and_then(|u| u.id())
        .with_context(|| format!("no account has the address {}", email.as_str()))?;
    if grant {
        commands.grant_role(user, role).await?;
        writeln!(
            out,
            "{} now has the role {role} (from their next sign-in or refresh).",
            email.as_str()
        )?;
    } else {
        commands.revoke_role(user, role).await?;
        writeln!(
            out,
            "{} loses the role {role} at their next sign-in or refresh (revokeRole through the API ends their sessions at once).",
            email.as_str()
        )?;
    }
    Ok(())
}
