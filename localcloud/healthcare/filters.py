"""Export filter file (`filterConfig.resourcePathsGcsUri`): one resource path per line.

Format: `/studies/{study}[/series/{series}[/instances/{instance}]]`, lines separated by `\n` or
`\r\n`; blank lines are skipped. A malformed line fails the whole export, naming the line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(r"/studies/([0-9.]+)(?:/series/([0-9.]+)(?:/instances/([0-9.]+))?)?")


class FilterFileError(ValueError):
    pass


@dataclass(frozen=True)
class ResourcePath:
    study: str
    series: str | None = None
    instance: str | None = None

    def selects(self, study: str, series: str, instance: str) -> bool:
        return (
            self.study == study
            and (self.series is None or self.series == series)
            and (self.instance is None or self.instance == instance)
        )


def parse_filter_file(text: str) -> list[ResourcePath]:
    paths: list[ResourcePath] = []
    # splitlines() would also split on \v, \f, \x1c...; the format only knows \n and \r\n.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line:
            continue
        match = _PATH.fullmatch(line)
        if match is None:
            raise FilterFileError(
                f"filter file line {number} is not a resource path of the form "
                "/studies/UID[/series/UID[/instances/UID]]"
            )
        paths.append(ResourcePath(*match.groups()))
    return paths
