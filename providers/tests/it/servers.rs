//! Connections to the test servers `scripts/services` starts; each test gets its own root folder.

use cloudsync_domain::ProviderKind;
use cloudsync_providers::{StorageProvider, open};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Local,
    /// moto: accepts any signature.
    S3,
    /// s3s-fs: verifies SigV4 signatures against one key pair.
    S3Sigv4,
    Webdav,
    Sftp,
    Azblob,
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the suite through scripts/test (scripts/services starts the servers)"))
}

pub struct TestProvider {
    pub provider: Box<dyn StorageProvider>,
    pub config: Map<String, Value>,
    pub kind: ProviderKind,
    pub server: Server,
    local_dir: Option<std::path::PathBuf>,
}

impl TestProvider {
    pub async fn new(server: Server) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (kind, config, local_dir) = match server {
            Server::Local => {
                let dir = std::env::temp_dir().join(format!("cloudsync-provider-{id}"));
                std::fs::create_dir_all(&dir).expect("temp dir");
                (ProviderKind::Local, json!({ "root": dir }), Some(dir))
            }
            Server::S3 => {
                let endpoint = var("CLOUDSYNC_TEST_S3_ENDPOINT");
                // moto creates buckets on an unsigned PUT; an existing bucket answers 409, also fine.
                let created = reqwest::Client::new()
                    .put(format!("{endpoint}/cloudsync-test"))
                    .send()
                    .await
                    .expect("S3 server reachable");
                assert!(
                    created.status().is_success() || created.status().as_u16() == 409,
                    "bucket: {}",
                    created.status()
                );
                let config = json!({
                    "endpoint": endpoint, "bucket": "cloudsync-test", "region": "us-east-1",
                    "access_key_id": "cloudsync", "secret_access_key": "cloudsync-secret", "root": format!("/t-{id}/"),
                });
                (ProviderKind::S3, config, None)
            }
            Server::S3Sigv4 => {
                // scripts/storage-servers creates the bucket (a folder of the server's root).
                let config = json!({
                    "endpoint": var("CLOUDSYNC_TEST_S3S_ENDPOINT"), "bucket": "cloudsync-test", "region": "us-east-1",
                    "access_key_id": var("CLOUDSYNC_TEST_S3S_ACCESS_KEY_ID"),
                    "secret_access_key": var("CLOUDSYNC_TEST_S3S_SECRET_ACCESS_KEY"), "root": format!("/t-{id}/"),
                });
                (ProviderKind::S3, config, None)
            }
            Server::Webdav => {
                let config = json!({
                    "endpoint": var("CLOUDSYNC_TEST_WEBDAV_ENDPOINT"), "username": var("CLOUDSYNC_TEST_WEBDAV_USER"),
                    "password": var("CLOUDSYNC_TEST_WEBDAV_PASSWORD"), "root": format!("/t-{id}/"),
                });
                (ProviderKind::Webdav, config, None)
            }
            Server::Sftp => {
                let root = format!("{}/t-{id}", var("CLOUDSYNC_TEST_SFTP_ROOT"));
                std::fs::create_dir_all(&root).expect("sftp root");
                let config = json!({
                    "endpoint": var("CLOUDSYNC_TEST_SFTP_ENDPOINT"), "user": var("CLOUDSYNC_TEST_SFTP_USER"),
                    "key": var("CLOUDSYNC_TEST_SFTP_KEY"), "root": root,
                });
                (ProviderKind::Sftp, config, None)
            }
            Server::Azblob => {
                let config = json!({
                    "endpoint": var("CLOUDSYNC_TEST_AZBLOB_ENDPOINT"), "container": "cloudsync-test",
                    "account_name": var("CLOUDSYNC_TEST_AZBLOB_ACCOUNT"), "account_key": var("CLOUDSYNC_TEST_AZBLOB_KEY"), "root": format!("/t-{id}/"),
                });
                (ProviderKind::Azblob, config, None)
            }
        };
        let config = config.as_object().expect("object").clone();
        let provider = open(kind, &config).expect("provider opens");
        provider
            .check()
            .await
            .unwrap_or_else(|err| panic!("{server:?} server check failed: {err}"));
        Self {
            provider,
            config,
            kind,
            server,
            local_dir,
        }
    }

    /// The same connection with one setting changed.
    pub fn with(&self, key: &str, value: &str) -> Result<Box<dyn StorageProvider>, cloudsync_providers::ProviderError> {
        let mut config = self.config.clone();
        config.insert(key.to_owned(), Value::String(value.to_owned()));
        open(self.kind, &config)
    }

    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    pub fn cleanup(self) {
        if let Some(dir) = self.local_dir {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}
