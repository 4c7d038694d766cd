-- The spend ledger and the admin-created keys of the shared store.
-- One row per settled request; request_id makes replays of spooled rows idempotent.
CREATE TABLE spend (
    request_id TEXT PRIMARY KEY,
    time BIGINT NOT NULL,
    day TEXT NOT NULL,
    hour TEXT NOT NULL,
    key TEXT NOT NULL,
    team TEXT NOT NULL,
    "user" TEXT NOT NULL,
    tier TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    model TEXT NOT NULL,
    reason TEXT NOT NULL,
    rule TEXT,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    expected_usd DOUBLE PRECISION NOT NULL,
    counterfactual_usd DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX spend_day ON spend (day);

-- Keys created through /admin/keys, as SHA-256 digests only.
CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    team TEXT NOT NULL,
    "user" TEXT NOT NULL,
    tier TEXT NOT NULL,
    rpm INTEGER,
    tpm BIGINT,
    created BIGINT NOT NULL
);
