"""The Google clients (Cloud Storage, Healthcare API, BigQuery, Pub/Sub) behind the Protocols of
`functions.gcp.clients`, and the one fault classification (`functions.gcp.retry`)."""
