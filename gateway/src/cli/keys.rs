//! `cloudsync keys`: the signing keys, the master key and the chunk-store key (list, rotate,
//! re-wrap).

use cloudsync_eventstore::Database;

use crate::config::Config;

use super::KeysCommand;

/// `cloudsync keys list | rotate`.
///
/// # Errors
/// An unreachable database or a write error.
pub async fn keys(config: &Config, db: &Database, command: &KeysCommand, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    use cloudsync_identity::keys::{KeyRing, list};
    let grace = crate::root::key_grace(config);
    // Every account's chunk-store key wrapped by the current key of `ring`; how many were not.
    let rewrap_chunk_keys = |ring: cloudsync_commands::MasterKey| {
        let pool = db.pool.clone();
        async move { cloudsync_commands::AccountKeys::for_chunk_store(ring, pool).rewrap().await }
    };
    if matches!(command, KeysCommand::RotateChunkStore) {
        let ring = crate::root::CHUNK_STORE_KEY.replace_generated(config)?;
        let accounts = rewrap_chunk_keys(ring.clone()).await?;
        writeln!(
            out,
            "Chunk-store key {} now wraps every account's chunk-store key ({accounts} re-wrapped); the chunks \
             themselves are unchanged. The old key is in {} until you delete it; start the server again to use the new one.",
            ring.id(),
            crate::root::CHUNK_STORE_KEY.previous_file()
        )?;
        return Ok(());
    }
    if matches!(command, KeysCommand::Rewrap | KeysCommand::RotateMaster) {
        let master = if matches!(command, KeysCommand::RotateMaster) {
            crate::root::MASTER_KEY.replace_generated(config)?
        } else {
            crate::root::master_key(config)?
        };
        let users = cloudsync_commands::Vault::new(master.clone(), db.pool.clone()).rewrap().await?;
        let signing = cloudsync_identity::keys::rewrap(&db.pool, &crate::root::MasterSealer(master.clone())).await?;
        let checkpoints = crate::audit::ChainSigner::new(&master).resign(db).await?;
        writeln!(
            out,
            "Master key {} now wraps everything: {users} user keys and {signing} signing keys re-wrapped, \
             {checkpoints} chain checkpoints re-signed.",
            master.id()
        )?;
        if matches!(command, KeysCommand::Rewrap) {
            let ring = crate::root::CHUNK_STORE_KEY.ring(config)?;
            let accounts = rewrap_chunk_keys(ring.clone()).await?;
            writeln!(
                out,
                "Chunk-store key {} wraps every account's chunk-store key: {accounts} re-wrapped.",
                ring.id()
            )?;
        }
        if matches!(command, KeysCommand::RotateMaster) {
            writeln!(
                out,
                "The old key is in {} until you delete it; start the server again to use the new one.",
                crate::root::MASTER_KEY.previous_file()
            )?;
        }
        return Ok(());
    }
    if matches!(command, KeysCommand::Rotate) {
        let master = crate::root::master_key(config)?;
        let kid = KeyRing::rotate(
            &db.pool,
            &crate::root::MasterSealer(master),
            grace,
            &cloudsync_identity::clock::SystemClock,
        )
        .await?;
        writeln!(out, "Key {kid} signs new access tokens from now on (every server within a minute).")?;
    }
    let time =
        |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    for key in list(&db.pool).await? {
        let state = match key.retired_at {
            None => "signs".to_owned(),
            Some(at) => format!("retired, verifies until {}", time(at.saturating_add(grace_ms))),
        };
        writeln!(out, "{}  {}  created {}  {state}", key.kid, key.algorithm, time(key.created_at))?;
    }
    Ok(())
}
