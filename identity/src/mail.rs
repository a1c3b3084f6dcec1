//! Outgoing mail (password resets) and text messages (second-factor codes) through pluggable
//! senders: by default each message is written to the log; with `mail_outbox` (`sms_outbox`) set,
//! each becomes a file in that folder for a mail transfer agent or an SMS gateway (or a person) to
//! pick up.

use std::path::PathBuf;

use async_trait::async_trait;

/// Why a message could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("writing to the outbox: {0}")]
    Outbox(#[source] std::io::Error),
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[async_trait]
pub trait Mailer: Send + Sync {
    /// Hands the message over for delivery.
    ///
    /// # Errors
    /// Why it could not be handed over.
    async fn send(&self, mail: &Mail) -> Result<(), SendError>;
}

/// Writes every message to the log at info level (the default: meant for development, since the
/// log then holds reset tokens).
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        tracing::info!(to = %mail.to, subject = %mail.subject, body = %mail.body, "Mail (log sender).");
        Ok(())
    }
}

/// Writes each message as `<unix ms>-<uuid>.eml` into a folder, whole or not at all (a temporary
/// name, then a rename).
pub struct OutboxMailer {
    folder: PathBuf,
}

impl OutboxMailer {
    pub fn new(folder: PathBuf) -> Self {
        Self { folder }
    }
}

/// Writes `text` into `folder` as `<unix ms>-<uuid>.<extension>`, whole or not at all (a
/// temporary name, then a rename).
async fn write_outbox(folder: PathBuf, extension: &'static str, text: String) -> Result<(), SendError> {
    let name = format!("{}-{}", chrono::Utc::now().timestamp_millis(), uuid::Uuid::new_v4().simple());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&folder)?;
        let temporary = folder.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, folder.join(format!("{name}.{extension}")))
    })
    .await
    .map_err(|err| SendError::Outbox(std::io::Error::other(err)))?
    .map_err(SendError::Outbox)
}

#[async_trait]
impl Mailer for OutboxMailer {
    async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        let text = format!(
            "To: {}\r\nSubject: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            mail.to.replace(['\r', '\n'], ""),
            mail.subject.replace(['\r', '\n'], " "),
            mail.body
        );
        write_outbox(self.folder.clone(), "eml", text).await
    }
}

#[async_trait]
pub trait SmsSender: Send + Sync {
    /// Hands a text message to `to` (E.164) over for delivery.
    ///
    /// # Errors
    /// Why it could not be handed over.
    async fn send(&self, to: &str, text: &str) -> Result<(), SendError>;
}

/// Writes every text message to the log at info level (the default, for development).
pub struct LogSms;

#[async_trait]
impl SmsSender for LogSms {
    async fn send(&self, to: &str, text: &str) -> Result<(), SendError> {
        tracing::info!(to = %to, text = %text, "Text message (log sender).");
        Ok(())
    }
}

/// Writes each text message as a `.sms` file (`To: <number>`, a blank line, the text).
pub struct OutboxSms {
    folder: PathBuf,
}

impl OutboxSms {
    pub fn new(folder: PathBuf) -> Self {
        Self { folder }
    }
}

#[async_trait]
impl SmsSender for OutboxSms {
    async fn send(&self, to: &str, text: &str) -> Result<(), SendError> {
        write_outbox(self.folder.clone(), "sms", format!("To: {to}\n\n{text}\n")).await
    }
}
