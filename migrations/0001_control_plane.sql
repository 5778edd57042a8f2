-- Control-plane records. Postgres never holds a key unwrapped or a byte of
-- plaintext: bucket secrets appear only wrapped by a KEK.

CREATE TABLE volumes (
    id                  TEXT PRIMARY KEY,          -- the bucket id (32 hex chars)
    name                TEXT NOT NULL UNIQUE,      -- the CO's idempotency name
    seq                 BIGSERIAL NOT NULL UNIQUE, -- stable order for paging
    capacity_bytes      BIGINT NOT NULL CHECK (capacity_bytes >= 0),
    parameters          TEXT NOT NULL,             -- StorageClass parameters, canonical JSON
    access_modes        TEXT NOT NULL,             -- requested access modes, canonical JSON
    chunk_size          INTEGER NOT NULL,
    wrapped_key         BYTEA NOT NULL,            -- bucket secret wrapped by the cluster KEK
    tenant_wrapped_key  BYTEA,                     -- and by the tenant KEK, when one was given
    source_snapshot_id  TEXT,
    source_volume_id    TEXT,
    source_head         TEXT,                      -- manifest the clone starts from
    source_wrapped_key  BYTEA,                     -- the source bucket's secret (to open its tree)
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE snapshots (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    seq                 BIGSERIAL NOT NULL UNIQUE,
    source_volume_id    TEXT NOT NULL,             -- no FK: a snapshot outlives its volume
    head                TEXT,                      -- manifest hash recorded (NULL: volume never written)
    wrapped_key         BYTEA NOT NULL,            -- source bucket secret, kept for restores
    size_bytes          BIGINT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX snapshots_by_source ON snapshots (source_volume_id, seq);

CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    endpoint_id     TEXT,
    addresses       TEXT NOT NULL DEFAULT '[]',
    max_volumes     BIGINT NOT NULL DEFAULT 0,
    capacity_bytes  BIGINT NOT NULL DEFAULT 0,
    last_seen       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE mounts (
    volume_id     TEXT NOT NULL,
    node_id       TEXT NOT NULL,
    staging_path  TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('stopped', 'starting', 'running', 'error')),
    message       TEXT,
    read_only     BOOLEAN NOT NULL DEFAULT false,
    auto_mount    BOOLEAN NOT NULL DEFAULT true,
    cache_bytes   BIGINT NOT NULL DEFAULT 0,
    cache_ttl_ms  BIGINT NOT NULL DEFAULT 1000,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (volume_id, node_id)
);

CREATE TABLE bucket_heads (
    volume_id   TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    head        TEXT NOT NULL,
    height      BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (volume_id, node_id)
);

-- Deleted volumes whose blobs the nodes still have to collect.
CREATE TABLE gc_queue (
    volume_id    TEXT PRIMARY KEY,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at      TIMESTAMPTZ
);
