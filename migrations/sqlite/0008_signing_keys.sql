-- The access tokens' signing keys (Ed25519), shared by every API process. The private half is sealed
-- by the master key (AES-256-GCM, bound to the key id); the public half is the raw 32 bytes in
-- base64url, as in a JWK. A key is retired when a newer one replaces it, and still verifies tokens
-- until they have all expired. Times are Unix milliseconds.
CREATE TABLE signing_keys (
    kid         TEXT   PRIMARY KEY,
    algorithm   TEXT   NOT NULL,
    public_key  TEXT   NOT NULL,
    private_key TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);
