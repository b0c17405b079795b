"""Pure import planning: which `dicomStores.import` URIs, and which staged copies, cover a batch.

A batch is the set of new, eligible objects of one debounce window in one bucket. Every URI is one
long-running operation (minutes of overhead; Google asks for about 5 at once), may import old
objects again (harmless, but each is read again) and must never match an object the pipeline
does not import (a sidecar, another extension: the API would count it as a failure). Staging
copies objects into a batch-unique prefix that one more operation imports.

Candidate patterns, each checked against the listed objects before use:
- `P/**S` for every folder P from the batch's deepest common folder down to each new object's
  folder, over the new objects under P (and again per extension), where S is their longest
  common suffix that starts at a `.`, such as `.dcm`, or empty. A shorter S only matches more.
- Generalised patterns for a group of new names of equal depth: each path component literal
  where the group agrees, else `{common prefix}*{common suffix}`. Groups: the whole batch, per
  extension, per depth, per folder, per folder and extension. Per folder this is `D/{p}*{s}`,
  which matches a subset of what `D/*S` matches (so `D/*S` itself is not tried).
A literal character that a pattern cannot carry (`*?[#`) becomes `?`; a `**` pattern starts at
the deepest folder above the first such character.

Choice: the cheapest of staging everything, each single candidate that covers the whole batch,
and greedy covers of up to `max_uris` candidates with the rest staged or, if few enough and
plain, imported by name.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from os.path import commonprefix

from functions.core.gcs_wildcards import (
    UNSAFE_LITERAL_CHARS,
    compile_matcher,
    is_literal_safe,
    is_valid_import_pattern,
    literal_prefix,
)

# Non-recursive fallback scopes: one per folder, for the busiest folders only, so that a burst
# into many folders does not cost as many listings. Five matches the default `max_uris`.
_MAX_FOLDER_SCOPES = 5
# Folder-based candidates are tried for the folders with the most new objects only: with
# thousands of folders, one folder's objects are too few to pay for an operation of their own.
_MAX_FOLDER_GROUPS = 256
# Greedy covers start from this many of the best first picks.
_GREEDY_STARTS = 8
_MAX_CHAR = chr(0x10FFFF)
_UNSAFE_TO_ANY_CHAR = str.maketrans(dict.fromkeys(UNSAFE_LITERAL_CHARS, "?"))


@dataclass(frozen=True)
class ListingScope:
    """Objects to list: names under `prefix`, at any depth or (not `recursive`) direct children only."""

    prefix: str
    recursive: bool

    def covers_pattern(self, pattern: str) -> bool:
        """Tell whether every object name `pattern` can match lies inside this scope."""
        if not literal_prefix(pattern).startswith(self.prefix):
            return False
        rest = pattern[len(self.prefix) :]
        # `?` may match `/` (see gcs_wildcards.compile_matcher), `**` does.
        return self.recursive or ("/" not in rest and "?" not in rest and "**" not in rest)


@dataclass(frozen=True)
class PlannedUri:
    """One import call.

    Attributes:
        pattern: object-name part of `gcsSource.uri` (no `gs://bucket/`).
        new_objects: the batch's objects it matches.
        reimported: other, eligible objects it matches (already imported, read again).
    """

    pattern: str
    new_objects: tuple[str, ...]
    reimported: tuple[str, ...]


@dataclass(frozen=True)
class ImportPlan:
    """How to import a batch.

    Attributes:
        uris: the import calls to start.
        staged: objects to copy into a batch-unique prefix, imported by one more call.
        cost: lro_cost per call + reimport_cost per extra read (eligible other objects matched,
            and new objects matched by more than one URI) + stage_cost per staged object.
    """

    uris: tuple[PlannedUri, ...]
    staged: tuple[str, ...]
    cost: float

    @property
    def lro_count(self) -> int:
        """Import operations the plan starts, the staging import included."""
        return len(self.uris) + (1 if self.staged else 0)


@dataclass(frozen=True)
class _Costs:
    lro: float
    reimport: float
    stage: float


@dataclass(frozen=True)
class _Candidate:
    pattern: str
    covered: frozenset[str]
    reimported: tuple[str, ...]


# A plan before it is built: the chosen URIs and the staged objects.
_Option = tuple[tuple[_Candidate, ...], frozenset[str]]


def listing_scopes(new_names: Collection[str]) -> list[ListingScope]:
    """Return what the caller must list so that `plan_import` can check its candidate patterns.

    The first scope is the deepest common folder of the batch, recursive: every candidate lies in
    it. The others are the (at most 5) folders holding the most new objects, non-recursive. They
    are subsets of the first, so the caller needs them only when the first listing was truncated;
    they then still allow patterns confined to one folder.

    Args:
        new_names: the batch's object names.

    Returns:
        The scopes, the recursive one first; empty for an empty batch.
    """
    if not new_names:
        return []
    names = sorted(new_names)
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        counts[_folder(name)] += 1
    busiest = sorted(counts, key=lambda folder: (-counts[folder], folder))[:_MAX_FOLDER_SCOPES]
    # The common prefix of the smallest and largest name is the common prefix of all of them.
    root = _folder(commonprefix([names[0], names[-1]]))
    return [ListingScope(root, True)] + [ListingScope(folder, False) for folder in busiest]


def plan_import(
    new_names: Collection[str],
    others: Collection[str],
    *,
    eligible: Callable[[str], bool],
    incomplete_scopes: Collection[ListingScope] = (),
    lro_cost: float = 10_000.0,
    reimport_cost: float = 1.0,
    stage_cost: float = 1.0,
    max_uris: int = 5,
) -> ImportPlan:
    """Plan the import of a batch at the lowest cost.

    Every new object ends up matched by a URI or staged; no URI matches an ineligible object;
    a name holding `*`, `?`, `[` or `#` is never used as a literal URI.

    Args:
        new_names: the batch (object names in one bucket, all eligible).
        others: every other object name found by listing `listing_scopes(new_names)`.
        eligible: the pipeline's name filter; a pattern matching an `other` it rejects is never used.
        incomplete_scopes: scopes of `listing_scopes(new_names)` whose listing was truncated; a
            pattern is used only if a completely listed scope holds all it can match.
        lro_cost: cost of one import operation.
        reimport_cost: cost of reading one object again.
        stage_cost: cost of staging (copying) one object.
        max_uris: most URIs besides the staging import.

    Returns:
        The cheapest plan found; ties go to fewer operations, then fewer re-reads, then fewer
        staged objects, then simpler patterns.

    Raises:
        ValueError: an incomplete scope is not one of `listing_scopes(new_names)`.
    """
    batch = sorted(set(new_names))
    if not batch:
        return ImportPlan(uris=(), staged=(), cost=0.0)
    scopes = listing_scopes(batch)
    truncated = set(incomplete_scopes)
    if not truncated <= set(scopes):
        raise ValueError(f"incomplete scopes not listed for this batch: {truncated - set(scopes)}")
    complete = [scope for scope in scopes if scope not in truncated]
    batch_set = frozenset(batch)
    new_index = _SortedNames(batch)
    other_index = _SortedNames(name for name in set(others) if name not in batch_set)
    ineligible = frozenset(name for name in other_index.all if not eligible(name))

    candidates: list[_Candidate] = []
    for pattern in sorted(_candidate_patterns(batch, scopes[0].prefix)):
        if is_valid_import_pattern(pattern) and any(scope.covers_pattern(pattern) for scope in complete):
            candidate = _evaluate(pattern, new_index, other_index, ineligible)
            if candidate is not None:
                candidates.append(candidate)

    costs = _Costs(lro=lro_cost, reimport=reimport_cost, stage=stage_cost)
    chosen, staged = _best_option(candidates, batch_set, costs, max_uris)
    return ImportPlan(
        uris=tuple(
            PlannedUri(c.pattern, tuple(sorted(c.covered)), c.reimported)
            for c in sorted(chosen, key=lambda c: c.pattern)
        ),
        staged=tuple(sorted(staged)),
        cost=_rank((chosen, staged), len(batch), costs)[0],
    )


class _SortedNames:
    """Object names sorted, overall and per depth, for prefix-range scans."""

    def __init__(self, names: Iterable[str]) -> None:
        self.all = sorted(names)
        by_depth: dict[int, list[str]] = defaultdict(list)
        for name in self.all:
            by_depth[name.count("/")].append(name)
        self.by_depth = dict(by_depth)

    def matches(self, pattern: str, matcher: Callable[[str], bool]) -> list[str]:
        # Without `**` or `?` a pattern matches only names with as many `/` as itself.
        if "**" in pattern or "?" in pattern:
            pool = self.all
        else:
            pool = self.by_depth.get(pattern.count("/"), [])
        head = literal_prefix(pattern)
        low = bisect_left(pool, head)
        successor = _prefix_successor(head)
        high = len(pool) if successor is None else bisect_left(pool, successor, low)
        return list(filter(matcher, pool[low:high]))


def _prefix_successor(prefix: str) -> str | None:
    """Smallest string above every string that starts with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(_MAX_CHAR)
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def _evaluate(
    pattern: str, new_index: _SortedNames, other_index: _SortedNames, ineligible: frozenset[str]
) -> _Candidate | None:
    matcher = compile_matcher(pattern)
    matched_others = other_index.matches(pattern, matcher)
    if any(name in ineligible for name in matched_others):
        return None
    covered = frozenset(new_index.matches(pattern, matcher))
    return _Candidate(pattern, covered, tuple(matched_others)) if covered else None


def _best_option(
    candidates: Sequence[_Candidate], batch: frozenset[str], costs: _Costs, max_uris: int
) -> _Option:
    """The cheapest of staging everything, each single full cover, and greedy covers.

    Each greedy step is tried with the rest staged and with the rest imported by name. A pick's
    gain counts the staging it saves, the re-reads it adds and, when it covers the rest, the
    staging operation it saves; since every step is priced, a pick that only pays off with the
    next one (two extensions in one folder) is still found. Greedy is myopic, so it restarts
    from each of the best few first picks, and a chain stops once even one more operation would
    cost more than the best plan so far.
    """
    best: _Option = ((), batch)
    best_rank = _rank(best, len(batch), costs)

    def consider(option: _Option) -> None:
        nonlocal best, best_rank
        rank = _rank(option, len(batch), costs)
        if rank < best_rank:
            best, best_rank = option, rank

    if max_uris < 1:
        return best
    for option in _finishes((), batch, max_uris):
        consider(option)
    for candidate in candidates:
        if len(candidate.covered) == len(batch):
            consider(((candidate,), frozenset()))
    ranked = sorted(candidates, key=lambda c: _gain(c, batch, costs), reverse=True)
    for first in ranked[:_GREEDY_STARTS]:
        chosen: tuple[_Candidate, ...] = (first,)
        uncovered = batch - first.covered
        while True:
            for option in _finishes(chosen, uncovered, max_uris):
                consider(option)
            further = costs.lro * (len(chosen) + 1) + costs.reimport * sum(len(c.reimported) for c in chosen)
            if not uncovered or len(chosen) >= max_uris or further > best_rank[0]:
                break
            remaining = uncovered
            pick = max(candidates, key=lambda c: _gain(c, remaining, costs))
            if not pick.covered & uncovered:
                break
            chosen += (pick,)
            uncovered -= pick.covered
    return best


def _finishes(chosen: tuple[_Candidate, ...], uncovered: frozenset[str], max_uris: int) -> Iterator[_Option]:
    yield chosen, uncovered
    if uncovered and len(chosen) + len(uncovered) <= max_uris and all(map(is_literal_safe, uncovered)):
        yield chosen + tuple(_Candidate(n, frozenset((n,)), ()) for n in sorted(uncovered)), frozenset()


def _gain(candidate: _Candidate, uncovered: frozenset[str], costs: _Costs) -> tuple[float, int, int]:
    fresh = len(candidate.covered & uncovered)
    if not fresh:
        return (float("-inf"), 0, 0)
    rereads = len(candidate.reimported) + len(candidate.covered) - fresh
    value = costs.stage * fresh - costs.reimport * rereads + (costs.lro if fresh == len(uncovered) else 0.0)
    tokens, recursive = _complexity(candidate.pattern)
    return (value, -tokens, -recursive)


def _rank(
    option: _Option, batch_size: int, costs: _Costs
) -> tuple[float, int, int, int, tuple[int, int], tuple[str, ...]]:
    chosen, staged = option
    # Every option covers the batch minus what it stages: new objects read twice are the excess.
    rereads = sum(len(c.reimported) + len(c.covered) for c in chosen) - (batch_size - len(staged))
    lros = len(chosen) + (1 if staged else 0)
    cost = costs.lro * lros + costs.reimport * rereads + costs.stage * len(staged)
    patterns = tuple(sorted(c.pattern for c in chosen))
    complexity = [_complexity(p) for p in patterns]
    return (
        cost,
        lros,
        rereads,
        len(staged),
        (sum(t for t, _ in complexity), sum(r for _, r in complexity)),
        patterns,
    )


def _complexity(pattern: str) -> tuple[int, int]:
    """Wildcard tokens (`**` counts once), then recursive ones: on a tie, `inbox/**.dcm` beats
    `inbox/*/*.dcm` (simpler) and `D/*.dcm` beats `D/**.dcm` (cannot reach into subfolders)."""
    recursive = pattern.count("**")
    return (pattern.count("*") - recursive + pattern.count("?"), recursive)


def _candidate_patterns(batch: Sequence[str], root: str) -> set[str]:
    under: dict[str, list[str]] = defaultdict(list)  # folder -> new names at any depth below it
    for name in batch:
        folder = root
        while True:
            under[folder].append(name)
            cut = name.find("/", len(folder))
            if cut < 0:
                break
            folder = name[: cut + 1]
    patterns: set[str] = set()
    for folder in _largest(under):
        for below in [under[folder], *_split(under[folder], _extension)]:
            patterns.add(_safe_folder(folder) + "**" + _dot_suffix([_basename(n) for n in below]))

    in_folder: dict[str, list[str]] = defaultdict(list)  # folder -> new names directly in it
    for name in batch:
        in_folder[_folder(name)].append(name)
    groups: list[Sequence[str]] = [batch, *_split(batch, _extension), *_split(batch, lambda n: n.count("/"))]
    for folder in _largest(in_folder):
        groups += [in_folder[folder], *_split(in_folder[folder], _extension)]
    for group in groups:
        generalised = _generalised(group)
        if generalised is not None:
            patterns.add(generalised)
    return patterns


def _largest(groups: dict[str, list[str]]) -> list[str]:
    return sorted(groups, key=lambda key: (-len(groups[key]), key))[:_MAX_FOLDER_GROUPS]


def _split(names: Sequence[str], key_of: Callable[[str], object]) -> list[list[str]]:
    """`names` grouped by `key_of`; empty when that yields a single group (already tried whole)."""
    groups: dict[object, list[str]] = defaultdict(list)
    for name in names:
        groups[key_of(name)].append(name)
    return list(groups.values()) if len(groups) > 1 else []


def _generalised(group: Sequence[str]) -> str | None:
    """One pattern over names of equal depth, component by component (None: depths differ)."""
    split = [name.split("/") for name in group]
    if len({len(parts) for parts in split}) != 1:
        return None
    return "/".join(_component_pattern(set(column)) for column in zip(*split, strict=True))


def _component_pattern(values: set[str]) -> str:
    if len(values) == 1:
        return _safe(next(iter(values)))
    head = commonprefix(list(values))
    # The suffix is taken after the prefix so that the two never overlap (`ab`, `abb`).
    tail = _common_suffix([value[len(head) :] for value in values])
    return _safe(head) + "*" + _safe(tail)


def _dot_suffix(basenames: Sequence[str]) -> str:
    """Longest common suffix of `basenames` that starts at a `.` and is safe as a literal."""
    suffix = _common_suffix(basenames)
    suffix = suffix[max(suffix.rfind(c) for c in UNSAFE_LITERAL_CHARS) + 1 :]
    dot = suffix.find(".")
    return suffix[dot:] if dot >= 0 else ""


def _safe_folder(folder: str) -> str:
    """`folder`, or its deepest ancestor without an unsafe literal character."""
    unsafe = [i for i in map(folder.find, UNSAFE_LITERAL_CHARS) if i >= 0]
    return folder if not unsafe else folder[: folder.rfind("/", 0, min(unsafe)) + 1]


def _safe(text: str) -> str:
    return text.translate(_UNSAFE_TO_ANY_CHAR)


def _common_suffix(strings: Sequence[str]) -> str:
    reversed_strings = [s[::-1] for s in strings]
    return commonprefix([min(reversed_strings), max(reversed_strings)])[::-1]


def _folder(name: str) -> str:
    return name[: name.rfind("/") + 1]


def _basename(name: str) -> str:
    return name[name.rfind("/") + 1 :]


def _extension(name: str) -> str:
    base = _basename(name)
    dot = base.rfind(".")
    return base[dot:] if dot >= 0 else ""
