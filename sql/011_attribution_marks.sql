-- Which worker process attributed a flows row, and in which of its batches (docs/attribution.md, "Repair").
--
-- A repair pass looks again at the rows stored before the claims it repairs with arrived. A worker knows
-- that its own rows stored in a batch after the one being built when a claim arrived were attributed with
-- that claim, so its pass skips them: they would come out identical (at a worker's first start after an
-- inventory, that was the rows it stored meanwhile, read back page by page). Rows of any other process
-- (another worker, an earlier run of this one), rows stored before these columns existed (0) and repaired
-- rows (0) are always looked at.
--   attributed_by: the worker process's random 64-bit id, drawn at its start (0: unknown);
--   attributed_batch: its batch number, counted from 0 at that start.
ALTER TABLE flows ADD COLUMN IF NOT EXISTS attributed_by UInt64 DEFAULT 0;
ALTER TABLE flows ADD COLUMN IF NOT EXISTS attributed_batch UInt32 DEFAULT 0;
