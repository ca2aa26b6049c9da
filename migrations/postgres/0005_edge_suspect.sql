-- The holder of an edge's link publishes `suspect` (heartbeats late: no new sessions,
-- sessions and joins untouched) as soon as it notices, so the other locators stop
-- sending new sessions to a hung edge as fast as the holder does.
ALTER TABLE edge_live DROP CONSTRAINT IF EXISTS edge_live_liveness_check;
ALTER TABLE edge_live ADD CONSTRAINT edge_live_liveness_check
    CHECK (liveness IN ('connected', 'suspect', 'link-lost', 'failed'));
