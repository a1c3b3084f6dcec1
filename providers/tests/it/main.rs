//! The provider contract suite: every provider passes the same tests against a real server on
//! loopback (started by `scripts/services`): local folders, S3 (moto), WebDAV (rclone), SFTP (OpenSSH),
//! Azure Blob (Azurite).

mod contract;
mod servers;
