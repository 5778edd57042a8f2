-- The version a volume's history begins with (#26): the node that makes
-- it claims the making first (so two first stages never make two), then
-- records it; every node that takes the volume refuses any other first
-- version a chain leads to.
ALTER TABLE volumes ADD COLUMN genesis_claimed_by TEXT;
ALTER TABLE volumes ADD COLUMN genesis_claimed_at TIMESTAMPTZ;
ALTER TABLE volumes ADD COLUMN genesis TEXT;
