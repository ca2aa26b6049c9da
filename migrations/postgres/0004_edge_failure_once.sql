-- Several locators may each find that an edge failed (the locator holding its link, and
-- the others when that locator died with the edge). The claim whose failure was handled
-- (its ad-hoc sessions ended, an `edge_failed` audit entry written): the first locator
-- to set it handles the failure, the others leave it be.
ALTER TABLE edge_live ADD COLUMN failure_handled_claim BIGINT NULL;
