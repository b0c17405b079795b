"""The request side: export and storage-class requests (`export_on_message`) and redrives
(`redrive`). They queue their jobs on the import protocol's `job_queue`."""
