-- When a session was first joined (same change as ../sqlite/0003_first_join.sql): set
-- from the edge's spool (`session_started` / `participant_joined`), so that an ad-hoc
-- session nobody joins can expire (regions.yaml `limits.unjoined_session_ttl`). Sessions
-- open before this migration count as joined when the audit trail shows a join.
ALTER TABLE sessions ADD COLUMN first_joined_at_ms BIGINT NULL;

UPDATE sessions SET first_joined_at_ms = updated_at_ms
WHERE EXISTS (
    SELECT 1 FROM audit
    WHERE audit.session_id = sessions.id
      AND audit.kind IN ('session_started', 'participant_joined')
);

-- The expiry sweep's candidates: open ad-hoc sessions nobody joined, oldest first.
CREATE INDEX sessions_unjoined ON sessions (created_at_ms)
    WHERE state = 'open' AND room_key IS NULL AND first_joined_at_ms IS NULL;
