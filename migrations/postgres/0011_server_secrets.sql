-- Secrets of the installation itself, sealed by the master key (re-wrapped with the users' keys):
-- `reservations` keys the names of the address and external-identity reservation streams, so that
-- a stream's name does not reveal the address (or identity) it reserves.
CREATE TABLE server_secrets (
    name   TEXT PRIMARY KEY,
    sealed TEXT NOT NULL
);
