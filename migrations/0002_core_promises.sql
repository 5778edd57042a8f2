-- Mutable parameters (ControllerModifyVolume), published targets, node free
-- space, per-node garbage collection and volume group snapshots.

ALTER TABLE volumes ADD COLUMN mutable_parameters TEXT NOT NULL DEFAULT '{}';

-- A mount is published when at least one pod path is bound to it.
ALTER TABLE mounts ADD COLUMN published BOOLEAN NOT NULL DEFAULT false;

-- Free bytes of the file system under the node's state dir (heartbeat).
ALTER TABLE nodes ADD COLUMN free_bytes BIGINT NOT NULL DEFAULT 0;

-- Which nodes have collected a deleted volume's blobs.
CREATE TABLE gc_done (
    volume_id  TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    done_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (volume_id, node_id)
);

CREATE TABLE group_snapshots (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    seq         BIGSERIAL NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE snapshots ADD COLUMN group_snapshot_id TEXT;
CREATE INDEX snapshots_by_group ON snapshots (group_snapshot_id);

-- The bucket a snapshot's head belongs to (a snapshot of a clone nobody
-- wrote yet records its source's head), and whether its head is known.
ALTER TABLE snapshots ADD COLUMN bucket_id TEXT;
ALTER TABLE snapshots ADD COLUMN ready BOOLEAN NOT NULL DEFAULT true;
