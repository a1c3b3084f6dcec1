//! Second factors on the commands' clock: a TOTP code is judged by the time the clock shows, so a
//! test moves the clock past a code's window instead of waiting it out.

use std::time::Duration;

use cloudsync_commands::{CodeKind, CommandError, Commands, MasterKey, TOTP_PERIOD, Vault, totp_code};
use cloudsync_domain::Email;
use cloudsync_domain::clock::{Clock, ManualClock};
use cloudsync_eventstore::Database;

fn step_at(clock: &ManualClock) -> u64 {
    u64::try_from(clock.now().timestamp()).expect("after 1970") / TOTP_PERIOD
}

#[tokio::test]
async fn totp_codes_are_judged_by_the_commands_clock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::connect(&format!("sqlite://{}", dir.path().join("cloudsync.db").display()), true)
        .await
        .expect("database");
    let clock = ManualClock::starting_now();
    let commands = Commands::new(db.events, Vault::new(MasterKey::generate().0, db.pool.clone())).with_clock(clock.clone());
    let (user, _) = commands
        .register(Email::parse("mfa@example.org").expect("address"), "!no-password".into())
        .await
        .expect("register");
    let secret = commands.begin_totp(user).await.expect("begin");
    let enrolled_at = step_at(&clock);
    commands
        .confirm_totp(user, &totp_code(&secret, enrolled_at))
        .await
        .expect("the current code confirms");

    // An hour on, by the clock alone: the codes of then are long out of their window.
    clock.advance(Duration::from_secs(3600));
    let now = step_at(&clock);
    assert_eq!(now, enrolled_at + 3600 / TOTP_PERIOD);
    let stale = commands
        .use_mfa_code(user, CodeKind::Totp, &totp_code(&secret, enrolled_at + 1))
        .await;
    assert!(matches!(stale, Err(CommandError::Invalid(_))), "{stale:?}");
    commands
        .use_mfa_code(user, CodeKind::Totp, &totp_code(&secret, now))
        .await
        .expect("the code of the clock's time");
    let replayed = commands.use_mfa_code(user, CodeKind::Totp, &totp_code(&secret, now)).await;
    assert!(
        matches!(replayed, Err(CommandError::Invalid(_) | CommandError::Conflict(_))),
        "{replayed:?}"
    );
}
