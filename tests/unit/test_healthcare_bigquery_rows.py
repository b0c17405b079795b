"""Instances as rows of Google's flattened DICOM table, and BigQuery destination parsing."""

from __future__ import annotations

import datetime as dt

from localcloud.bigquery import literal
from localcloud.healthcare.bqrows import InstanceFacts, conform, flattened_row, merged_types
from localcloud.healthcare.bqsink import TableRef, effective_disposition, parse_table_uri

ATTRS = {
    "0020000D": {"vr": "UI", "Value": ["1.2"]},
    "00080060": {"vr": "CS", "Value": ["CT"]},
    "00080020": {"vr": "DA", "Value": ["20240131"]},
    "00280010": {"vr": "US", "Value": [512]},
    "00180050": {"vr": "DS", "Value": ["0.625"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00200011": {"vr": "IS"},
}
FACTS = InstanceFacts(ATTRS, "NEARLINE", "2024-02-01T10:00:00.123456Z", 1234)


def test_columns_are_dicom_keywords_typed_by_vr() -> None:
    row, types = flattened_row(FACTS)

    assert row["StudyInstanceUID"] == "1.2" and types["StudyInstanceUID"] == "STRING"
    assert row["Modality"] == "CT"
    assert row["StudyDate"] == dt.date(2024, 1, 31) and types["StudyDate"] == "DATE"
    assert row["Rows"] == 512 and types["Rows"] == "INTEGER"
    assert row["SliceThickness"] == 0.625 and types["SliceThickness"] == "FLOAT"
    assert row["SeriesNumber"] is None and types["SeriesNumber"] == "INTEGER"  # present without a value
    assert "PatientName" not in row  # Person Name (a RECORD on Google) is left out


def test_rows_carry_the_storage_columns() -> None:
    row, types = flattened_row(FACTS)

    assert (row["StorageClass"], row["BlobStorageSize"], row["Type"]) == ("NEARLINE", 1234, "INSERT")
    assert row["LastUpdated"] == dt.datetime(2024, 2, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
    assert types["LastUpdated"] == "TIMESTAMP" and row["StructuredStorageSize"] > 0


def test_a_malformed_value_becomes_null() -> None:
    row, _ = flattened_row(InstanceFacts({"00080020": {"vr": "DA", "Value": ["2024"]}}, "STANDARD", FACTS.stored_at, 1))

    assert row["StudyDate"] is None


def test_a_value_whose_column_has_another_type_becomes_null() -> None:
    row, types = flattened_row(FACTS)
    assert merged_types([(row, types)])["Rows"] == "INTEGER"

    conformed = conform(row, types, {"Rows": "STRING", "Modality": "STRING"})

    assert conformed["Rows"] is None and conformed["Modality"] == "CT"


def test_table_uris_and_write_dispositions() -> None:
    assert parse_table_uri("bq://my-project.dicom.instances") == TableRef("my-project", "dicom", "instances")
    assert parse_table_uri("bq://p.d") is None
    assert parse_table_uri("gs://p.d.t") is None
    assert effective_disposition({}) == "WRITE_EMPTY"
    assert effective_disposition({"force": True}) == "WRITE_TRUNCATE"
    assert effective_disposition({"force": False}) == "WRITE_EMPTY"
    assert effective_disposition({"force": True, "writeDisposition": "WRITE_APPEND"}) == "WRITE_APPEND"


def test_literals_escape_what_would_end_a_string() -> None:
    assert literal("O'Brien\\x\n") == "'O\\'Brien\\\\x\\n'"
    assert literal(None) == "NULL" and literal(True) == "TRUE" and literal(3) == "3"
    assert literal(dt.date(2024, 1, 31)) == "DATE '2024-01-31'"
