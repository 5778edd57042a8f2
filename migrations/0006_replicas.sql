-- Volumes kept on more nodes than stage them (#28).

-- The bucket's proof key (derived from its secret, opening nothing),
-- wrapped by the cluster KEK: what a blind replica fetches and serves by.
ALTER TABLE volumes ADD COLUMN proof_key_wrapped BYTEA;

-- Nodes the controller's leader assigned to keep a volume (beside those
-- that stage it). How far each is comes from bucket_heads.
CREATE TABLE replicas (
    volume_id    TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    assigned_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (volume_id, node_id)
);
CREATE INDEX replicas_by_node ON replicas (node_id);
