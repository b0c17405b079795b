"""The import planner: scenario table, cost logic, listing scopes, and random-batch properties."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pytest

from functions.core.gcs_wildcards import api_wildcard_match, is_literal_safe, is_valid_import_pattern
from functions.core.planning import ImportPlan, ListingScope, listing_scopes, plan_import

LRO = 10_000.0


def dcm_any_case(name: str) -> bool:
    return name.lower().endswith(".dcm")


def dcm_lower_only(name: str) -> bool:
    return name.endswith(".dcm")


def assert_sound(
    plan: ImportPlan,
    new: Collection[str],
    others: Collection[str],
    eligible: Callable[[str], bool],
    *,
    incomplete_scopes: Collection[ListingScope] = (),
    max_uris: int = 5,
    lro_cost: float = LRO,
    reimport_cost: float = 1.0,
    stage_cost: float = 1.0,
) -> None:
    """The invariants every plan must hold, whatever it chose."""
    new_set, others_set = set(new), set(others) - set(new)
    staged = set(plan.staged)
    assert staged <= new_set
    assert len(plan.uris) <= max_uris
    complete = [s for s in listing_scopes(new) if s not in set(incomplete_scopes)]
    rereads = 0
    for uri in plan.uris:
        assert is_valid_import_pattern(uri.pattern), uri.pattern
        matched_new = {n for n in new_set if api_wildcard_match(uri.pattern, n)}
        matched_others = {o for o in others_set if api_wildcard_match(uri.pattern, o)}
        assert not {o for o in matched_others if not eligible(o)}, uri.pattern
        assert set(uri.new_objects) == matched_new and matched_new, uri.pattern
        assert set(uri.reimported) == matched_others, uri.pattern
        assert not matched_new & staged, uri.pattern
        if uri.pattern in new_set:  # a literal URI names a plain object
            assert is_literal_safe(uri.pattern)
        else:
            assert any(s.covers_pattern(uri.pattern) for s in complete), uri.pattern
        rereads += len(uri.reimported) + len(uri.new_objects)
    covered = set().union(*(u.new_objects for u in plan.uris)) if plan.uris else set()
    assert covered | staged == new_set, "an object was dropped"
    rereads -= len(covered)
    expected_cost = lro_cost * plan.lro_count + reimport_cost * rereads + stage_cost * len(staged)
    assert plan.cost == pytest.approx(expected_cost)
    assert plan.cost <= lro_cost + stage_cost * len(new_set) + 1e-9, "worse than staging everything"


@dataclass(frozen=True)
class Scenario:
    id: str
    new: list[str]
    others: list[str] = field(default_factory=list)
    eligible: Callable[[str], bool] = dcm_any_case
    options: dict[str, object] = field(default_factory=dict)
    # Expectations; None = not asserted (several choices tie or are equally valid).
    patterns: tuple[str, ...] | None = None
    staged: int | None = None
    reimports: int | None = None
    lros: int | None = None


def _studies(root: str, folders: list[str], per_folder: int = 4) -> list[str]:
    return [f"{root}{folder}/IM{i:04d}.dcm" for folder in folders for i in range(per_folder)]


_RANDOM = random.Random(7)
_WARD_OLD = [f"ward/{_RANDOM.getrandbits(64):016x}.dcm" for _ in range(500)]
_WARD_NEW = [f"ward/{_RANDOM.getrandbits(64):016x}.dcm" for _ in range(3)]
_WEIRD = ["in/we*rd.dcm", "in/q?.dcm", "in/[x].dcm", "in/sp ace.dcm", "in/ünï.dcm", "in/h#sh.dcm"]

SCENARIOS = [
    # (1) burst of new study folders, nothing else under inbox/ (a folder placeholder is ignored)
    Scenario(
        "burst-alone",
        _studies("inbox/", ["S1", "S2", "S3"]),
        ["inbox/"],
        patterns=("inbox/**.dcm",),
        staged=0,
        reimports=0,
        lros=1,
    ),
    Scenario(
        "burst-mixed-depths",
        ["bulk/a/1.dcm", "bulk/b/c/2.dcm", "bulk/b/3.dcm"],
        patterns=("bulk/**.dcm",),
        staged=0,
    ),
    # (2) old study folders beside the new ones, no separating prefix: staging wins
    Scenario(
        "burst-old-equal",
        _studies("inbox/", ["A7", "K3"]),
        _studies("inbox/", ["B1", "Z0"]),
        patterns=(),
        staged=8,
        lros=1,
    ),
    Scenario(
        "burst-old-more",
        _studies("inbox/", ["A7", "K3"]),
        _studies("inbox/", ["B1", "Z0", "C5"]),
        patterns=(),
        staged=8,
        lros=1,
    ),
    # (2) a shared date folder or date prefix separates new from old: one glob
    Scenario(
        "burst-date-folder",
        _studies("inbox/2026-11-27/", ["S1", "S2"]),
        _studies("inbox/2026-11-26/", ["S1", "S2"]),
        patterns=("inbox/2026-11-27/**.dcm",),
        staged=0,
        reimports=0,
    ),
    Scenario(
        "burst-date-prefix",
        _studies("inbox/", ["20261127-S1", "20261127-S2"]),
        _studies("inbox/", ["20261126-S1", "20261126-S2"]),
        patterns=("inbox/20261127-S*/IM000*.dcm",),
        staged=0,
        reimports=0,
    ),
    Scenario(
        "series-prefix",
        [f"series/IM_0001_{i:03d}.dcm" for i in range(20)],
        [f"series/IM_0000_{i:03d}.dcm" for i in range(100)],
        patterns=("series/IM_0001_0*.dcm",),
        staged=0,
        reimports=0,
    ),
    # (3) trickle: alone in the folder -> the plain name; among 500 old random names -> stage
    Scenario("trickle-alone", ["ward/x1.dcm"], patterns=("ward/x1.dcm",), staged=0, lros=1),
    Scenario("trickle-among-old", _WARD_NEW, _WARD_OLD, patterns=(), staged=3, lros=1),
    # (4) bulk tree with a few old files: re-importing 5 beats copying 3,000
    Scenario(
        "bulk-tree",
        [f"bulk/{d}/{i}.dcm" for d in range(30) for i in range(100)],
        [f"bulk/{d}/old.dcm" for d in range(5)],
        patterns=("bulk/**.dcm",),
        staged=0,
        reimports=5,
    ),
    # (5) two extensions in one folder with a sidecar: staging unless LROs are cheap
    Scenario("case-mix", ["D/a.dcm", "D/b.DCM", "D/c.dcm"], ["D/a.json"], patterns=(), staged=3),
    Scenario(
        "case-mix-cheap-lro",
        ["D/a.dcm", "D/b.DCM", "D/c.dcm", "D/d.DCM", "D/e.dcm", "D/f.DCM"],
        ["D/a.json"],
        options={"lro_cost": 2.0},
        patterns=("D/*.DCM", "D/*.dcm"),
        staged=0,
    ),
    Scenario(
        "case-mix-tree",
        ["t/a/1.dcm", "t/b/2.DCM", "t/b/3.dcm", "t/c/4.DCM"],
        ["t/c/x.json"],
        options={"lro_cost": 2.0},
        patterns=("t/**.DCM", "t/**.dcm"),
        staged=0,
    ),
    Scenario(
        "upper-case-ineligible", ["D/a.dcm", "D/b.dcm"], ["D/x.DCM"], dcm_lower_only, patterns=("D/*.dcm",)
    ),
    # (6) sidecars next to new objects are never matched
    Scenario("sidecar", ["D/a.dcm"], ["D/a.json", "D/a.dcm.json", "D/a.txt"], patterns=("D/a.dcm",)),
    Scenario(
        "sidecars-many",
        [f"D/{i}.dcm" for i in range(10)],
        [f"D/{i}.dcm.json" for i in range(10)] + [f"D/{i}.txt" for i in range(10)],
        patterns=("D/*.dcm",),
        staged=0,
    ),
    Scenario(
        "suffixless-forbidden",
        ["t/a.dcm", "t/b.DCM"],
        ["t/sub/c.json"],
        options={"lro_cost": 1.0},
        staged=None,
    ),
    # (7) odd names: covered by a glob or staged, never a literal URI
    Scenario("odd-names-alone", _WEIRD, patterns=("in/*.dcm",), staged=0),
    Scenario("odd-names-among-old", _WEIRD, [f"in/o{i}.dcm" for i in range(100)], patterns=(), staged=6),
    Scenario("odd-folder", ["we*rd/a.dcm", "we*rd/b.dcm"], patterns=(), staged=2),
    Scenario(
        "odd-single", ["in/a*b.dcm"], ["in/ab.dcm"], options={"lro_cost": 1.0}, patterns=("in/a?b.dcm",)
    ),
    # (8) truncated listings: a pattern reaching into them is not used
    Scenario(
        "incomplete-root",
        _studies("inbox/", ["S1", "S2", "S3"]),
        options={"incomplete_scopes": [ListingScope("inbox/", True)]},
        patterns=(),
        staged=12,
    ),
    Scenario(
        "incomplete-root-folder-globs",
        _studies("inbox/", ["S1", "S2"], per_folder=200),
        options={"incomplete_scopes": [ListingScope("inbox/", True)], "lro_cost": 100.0},
        patterns=("inbox/S1/IM0*.dcm", "inbox/S2/IM0*.dcm"),
        staged=0,
    ),
    Scenario(
        "incomplete-everything",
        _studies("inbox/", ["S1"]),
        options={"incomplete_scopes": listing_scopes(_studies("inbox/", ["S1"]))},
        patterns=(),
        staged=4,
    ),
    # Mixed plan: one glob for the big separable group, the rest staged.
    Scenario(
        "glob-plus-staging",
        [f"new/{i}.dcm" for i in range(300)] + _WARD_NEW,
        _WARD_OLD,
        options={"lro_cost": 100.0},
        patterns=("new/*.dcm",),
        staged=3,
        lros=2,
    ),
    Scenario("max-uris-zero", ["D/a.dcm"], options={"max_uris": 0}, patterns=(), staged=1),
    Scenario(
        "few-plain-names",
        ["D/a.dcm", "D/b.dcm"],
        ["D/c.dcm"],
        options={"lro_cost": 1.0, "stage_cost": 5.0, "reimport_cost": 5.0},
        patterns=("D/a.dcm", "D/b.dcm"),
        staged=0,
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario(scenario: Scenario) -> None:
    plan = plan_import(scenario.new, scenario.others, eligible=scenario.eligible, **scenario.options)  # type: ignore[arg-type]
    assert_sound(plan, scenario.new, scenario.others, scenario.eligible, **scenario.options)  # type: ignore[arg-type]
    if scenario.patterns is not None:
        assert tuple(u.pattern for u in plan.uris) == scenario.patterns
    if scenario.staged is not None:
        assert len(plan.staged) == scenario.staged
    if scenario.reimports is not None:
        assert sum(len(u.reimported) for u in plan.uris) == scenario.reimports
    if scenario.lros is not None:
        assert plan.lro_count == scenario.lros


@pytest.mark.parametrize(("count", "lro_cost"), [(2, LRO), (3, LRO), (50, 10.0), (50, 30.0), (50, 100.0)])
def test_case_mix_takes_the_cheaper_of_two_globs_and_staging(count: int, lro_cost: float) -> None:
    new = [f"D/{i}.dcm" for i in range(count)] + [f"D/{i}.DCM" for i in range(count)]
    plan = plan_import(new, ["D/0.json"], eligible=dcm_any_case, lro_cost=lro_cost)
    assert_sound(plan, new, ["D/0.json"], dcm_any_case, lro_cost=lro_cost)
    assert plan.cost == min(2 * lro_cost, lro_cost + len(new))


def test_trickle_reads_each_object_at_most_twice() -> None:
    # The first upload alone in the folder goes by name; later ones among it are staged.
    first = plan_import(["ward/x1.dcm"], [], eligible=dcm_any_case)
    second = plan_import(_WARD_NEW, ["ward/x1.dcm", *_WARD_OLD], eligible=dcm_any_case)
    assert [u.pattern for u in first.uris] == ["ward/x1.dcm"]
    assert not second.uris and set(second.staged) == set(_WARD_NEW)


def test_empty_batch() -> None:
    plan = plan_import([], ["a.dcm"], eligible=dcm_any_case)
    assert plan == ImportPlan(uris=(), staged=(), cost=0.0)
    assert plan.lro_count == 0
    assert listing_scopes([]) == []


def test_other_names_equal_to_new_ones_are_ignored() -> None:
    plan = plan_import(["D/a.dcm"], ["D/a.dcm"], eligible=dcm_any_case)
    assert [(u.pattern, u.reimported) for u in plan.uris] == [("D/a.dcm", ())]


def test_unknown_incomplete_scope_is_rejected() -> None:
    with pytest.raises(ValueError, match="incomplete scopes"):
        plan_import(["D/a.dcm"], [], eligible=dcm_any_case, incomplete_scopes=[ListingScope("E/", True)])


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (["ward/x.dcm"], [ListingScope("ward/", True), ListingScope("ward/", False)]),
        (
            ["inbox/S1/a.dcm", "inbox/S1/b.dcm", "inbox/S2/c.dcm"],
            [
                ListingScope("inbox/", True),
                ListingScope("inbox/S1/", False),
                ListingScope("inbox/S2/", False),
            ],
        ),
        (["a.dcm", "b/c.dcm"], [ListingScope("", True), ListingScope("", False), ListingScope("b/", False)]),
        (
            ["inbox/Sa/x.dcm", "inbox/Sb/y.dcm"],
            [ListingScope("inbox/", True)]
            + [
                ListingScope("inbox/Sa/", False),
                ListingScope("inbox/Sb/", False),
            ],
        ),
        # at most five folder scopes, the busiest first
        (
            [f"f{d}/{i}.dcm" for d in range(7) for i in range(d + 1)],
            [ListingScope("", True)] + [ListingScope(f"f{d}/", False) for d in (6, 5, 4, 3, 2)],
        ),
    ],
)
def test_listing_scopes(new: list[str], expected: list[ListingScope]) -> None:
    assert listing_scopes(new) == expected


@pytest.mark.parametrize(
    ("scope", "pattern", "expected"),
    [
        (ListingScope("a/", True), "a/**.dcm", True),
        (ListingScope("a/", True), "a/b/*/*.dcm", True),
        (ListingScope("a/", True), "a*/x.dcm", False),
        (ListingScope("a/", False), "a/*.dcm", True),
        (ListingScope("a/", False), "a/x*.dcm", True),
        (ListingScope("a/", False), "a/*/x.dcm", False),
        (ListingScope("a/", False), "a/**.dcm", False),
        (ListingScope("a/", False), "a/x?.dcm", False),
        (ListingScope("a/b/", True), "a/*/x.dcm", False),
    ],
)
def test_scope_covers_pattern(scope: ListingScope, pattern: str, expected: bool) -> None:
    assert scope.covers_pattern(pattern) is expected


_FOLDERS = ["inbox", "inbox/S1", "inbox/S2", "inbox/2026", "a*", "x?y", "[z]", "h#", "sp ace", "é", ""]
_STEMS = ["a", "b", "IM_0001", "IM_0002", "1.2.3", "we*rd", "q?", "[x]", "n#1", "sp ace", "ünï", ""]
_EXTENSIONS = [".dcm", ".dcm", ".dcm", ".DCM", ".json", ".txt", ".dcm.json", ""]


def _random_name(rng: random.Random) -> str:
    folder = rng.choice(_FOLDERS)
    name = f"{rng.choice(_STEMS)}{rng.randint(0, 30)}{rng.choice(_EXTENSIONS)}"
    return f"{folder}/{name}" if folder else name


@pytest.mark.parametrize("seed", range(60))
def test_random_batches_hold_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    eligible = rng.choice([dcm_any_case, dcm_lower_only])
    names = {_random_name(rng) for _ in range(rng.randint(1, 120))}
    candidates = sorted(n for n in names if eligible(n))
    if not candidates:  # nothing eligible to import: the planner plans nothing
        assert plan_import([], sorted(names), eligible=eligible) == ImportPlan(uris=(), staged=(), cost=0.0)
        return
    new = rng.sample(candidates, rng.randint(1, len(candidates)))
    others = sorted(names - set(new))
    scopes = listing_scopes(new)
    incomplete = [s for s in scopes if rng.random() < 0.2]
    costs = {
        "lro_cost": rng.choice([1.0, 5.0, 50.0, LRO]),
        "reimport_cost": rng.choice([0.5, 1.0, 3.0]),
        "stage_cost": rng.choice([0.5, 1.0, 3.0]),
        "max_uris": rng.randint(0, 5),
    }
    plan = plan_import(new, others, eligible=eligible, incomplete_scopes=incomplete, **costs)  # type: ignore[arg-type]
    assert_sound(plan, new, others, eligible, incomplete_scopes=incomplete, **costs)  # type: ignore[arg-type]
