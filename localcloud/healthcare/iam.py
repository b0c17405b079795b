"""IAM policies of datasets and DICOM stores: kept, checked and returned as Google does.

- A resource that never had a policy set answers `{"etag": "ACAB"}` (version 0, no bindings).
- setIamPolicy replaces the policy (or, with `updateMask`, only `bindings` / `etag` /
  `auditConfigs`); an `etag` in the request that is not the current one is 409 ABORTED ("There
  were concurrent policy changes..."), no etag overwrites blindly; each change mints a new etag.
- Conditional bindings need version 3, and a getIamPolicy for such a policy must ask for version 3.
- testIamPermissions: nothing here authenticates a principal, so the caller holds every valid
  permission it asks about (`service.resource.verb`); wildcards are a 400, as on Google.

Nobody is denied access on the strength of these policies: the emulator does not enforce IAM.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any

from .body import bad_request
from .errors import aborted, invalid_argument
from .store import PolicyConflict, Store

EMPTY_ETAG = "ACAB"
_MEMBER = re.compile(
    r"(user|serviceAccount|group|domain|deleted:user|deleted:serviceAccount|deleted:group):.+"
    r"|allUsers|allAuthenticatedUsers|principal://.+|principalSet://.+|projectOwner:.+|projectEditor:.+"
    r"|projectViewer:.+"
)
_ROLE = re.compile(r"roles/[\w.]+|(projects|organizations)/[^/]+/roles/[\w.]+")
_PERMISSION = re.compile(r"[a-z][a-zA-Z0-9]*(\.[a-zA-Z][a-zA-Z0-9]*){2,}")
_UPDATABLE = ("bindings", "etag", "auditConfigs")


def get_policy(store: Store, resource: str, requested_version: str | None) -> dict[str, Any]:
    version = _requested_version(requested_version)
    policy = store.get_policy(resource) or {"etag": EMPTY_ETAG}
    if _has_conditions(policy) and version < 3:
        raise invalid_argument(
            f"The policy of {resource} has conditional role bindings: request it with options.requestedPolicyVersion=3."
        )
    return policy


def set_policy(store: Store, resource: str, body: dict[str, Any]) -> dict[str, Any]:
    request = body.get("policy")
    if request is None:
        raise bad_request([("policy", "policy is required")])
    mask = [p.strip() for p in str(body.get("updateMask") or "").split(",") if p.strip()]
    unknown = [p for p in mask if p not in _UPDATABLE and p not in ("audit_configs",)]
    if unknown:
        raise invalid_argument(f"updateMask may only name {', '.join(_UPDATABLE)}; got {', '.join(unknown)}")
    current = store.get_policy(resource) or {"etag": EMPTY_ETAG}
    policy: dict[str, Any] = {}
    if mask:
        # Fields outside the mask keep their current value.
        kept = {"bindings", "auditConfigs"} - {"auditConfigs" if p == "audit_configs" else p for p in mask}
        policy.update({k: current[k] for k in kept if k in current})
        if "bindings" in mask:
            policy["bindings"] = request.get("bindings", [])
        if "auditConfigs" in mask or "audit_configs" in mask:
            policy["auditConfigs"] = request.get("auditConfigs", [])
    else:
        policy["bindings"] = request.get("bindings", [])
        if "auditConfigs" in request:
            policy["auditConfigs"] = request["auditConfigs"]
    bindings = _checked_bindings(policy.get("bindings", []))
    requested_version = int(request.get("version") or 0)
    if requested_version not in (0, 1, 3):
        raise invalid_argument(f"Invalid policy version {requested_version}: one of 0, 1, 3")
    conditional = any("condition" in b for b in bindings)
    if conditional and requested_version < 3:
        raise invalid_argument("Policies with conditional role bindings must set version 3")
    # "if you specify version 3, but the policy has no conditional role bindings, the response uses version 1"
    stored: dict[str, Any] = {"version": 3 if conditional else 1}
    if bindings:
        stored["bindings"] = bindings
    if policy.get("auditConfigs"):
        stored["auditConfigs"] = policy["auditConfigs"]
    stored["etag"] = _new_etag()
    try:
        store.replace_policy(resource, stored, request.get("etag") or None, EMPTY_ETAG)
    except PolicyConflict as conflict:
        raise aborted(
            "There were concurrent policy changes. Please retry the whole read-modify-write with exponential "
            f"backoff. The request's ETag '{conflict.requested}' did not match the current policy's ETag "
            f"'{conflict.current}'."
        ) from None
    return stored


def test_permissions(body: dict[str, Any]) -> dict[str, Any]:
    permissions = body.get("permissions") or []
    wrong = [p for p in permissions if not _PERMISSION.fullmatch(p)]
    if wrong:
        raise invalid_argument(f"Permissions {', '.join(wrong)} are not valid (no wildcards: service.resource.verb)")
    return {"permissions": list(dict.fromkeys(permissions))} if permissions else {}


def _requested_version(value: str | None) -> int:
    if value in (None, ""):
        return 0
    if value not in ("0", "1", "3"):
        raise invalid_argument(f"Invalid options.requestedPolicyVersion {value!r}: one of 0, 1, 3")
    return int(value)


def _has_conditions(policy: dict[str, Any]) -> bool:
    return any("condition" in b for b in policy.get("bindings", []))


def _checked_bindings(bindings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    problems: list[tuple[str, str]] = []
    for i, binding in enumerate(bindings):
        role = binding.get("role", "")
        if not _ROLE.fullmatch(role):
            problems.append((f"policy.bindings[{i}].role", f"Role {role!r} is not a valid role name"))
        members = binding.get("members") or []
        if not members:
            problems.append((f"policy.bindings[{i}].members", "Each binding must contain at least one member"))
        for member in members:
            if not _MEMBER.fullmatch(member):
                problems.append((f"policy.bindings[{i}].members", f"Invalid member type in {member!r}"))
        key = (role, repr(sorted((binding.get("condition") or {}).items())))
        target = merged.setdefault(key, {"role": role, "members": []})
        if "condition" in binding:
            target["condition"] = binding["condition"]
        for member in members:
            if member not in target["members"]:
                target["members"].append(member)
    if problems:
        raise bad_request(problems)
    return list(merged.values())


def _new_etag() -> str:
    # Google's policy etags are 8 opaque bytes, base64 ("BwX..."); callers must treat them as opaque.
    return base64.b64encode(b"\x07\x05" + secrets.token_bytes(6)).decode()
