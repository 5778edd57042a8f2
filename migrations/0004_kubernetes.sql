-- The node's Kubernetes labels (zone, region), JSON; read from its Node object.
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
-- When the orphan sweep first found no PersistentVolume naming the volume.
ALTER TABLE volumes ADD COLUMN orphan_since TIMESTAMPTZ;
