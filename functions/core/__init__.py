"""The pure core: rules on plain values. No I/O, no clock, no client library, and no import of
the layers above it (settings, the Google clients, the import protocol, the export side)."""
