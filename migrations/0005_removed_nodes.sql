-- Nodes an operator removed (`jax-csi node remove`): their sync identity is
-- refused by every node and may not register again.
CREATE TABLE removed_nodes (
    endpoint_id TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    removed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
