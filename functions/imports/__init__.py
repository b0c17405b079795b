"""The import protocol and its handlers.

The protocol is three modules: `job_record` (the typed job record, its transition table and
the growth rules of a queued job), `window_batcher` (debounce windows: claim, plan, stage,
grow, queue) and `job_queue` (LRO slots, starts, unconfirmed starts). The handlers
(`import_on_upload`, `poll_operations`) call it and hold none of its rules."""
