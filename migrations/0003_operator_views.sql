-- Bytes a replica's head uses (its manifest's used_bytes), for the operator CLI.
ALTER TABLE bucket_heads ADD COLUMN used_bytes BIGINT;
