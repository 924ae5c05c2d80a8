"""Principals and ACLs for a secured broker, derived from the topic topology.

Each tier runs as its own SCRAM principal. ``jobs/ops/topology.yaml`` already says who
produces and who consumes every topic; :func:`acl_plan` turns that into ACLs:
a topic's producers get WRITE, its consumers READ, and read-only roles
(subscribers, the twin API, operators) never get WRITE. Everything else is
denied (the broker runs with ``allow.everyone.if.no.acl.found=false``).

>>> from tiertwin.connectors.topics import load_topology
>>> plan = acl_plan(load_topology())
>>> sorted(plan["tiertwin-local"]["write"])[:2]
['tiertwin.actions.local', 'tiertwin.deadletters']
>>> "tiertwin.actions.local" in plan["tiertwin-edge"]["write"], plan["tiertwin-subscriber"]["write"]
(False, set())
"""

from __future__ import annotations

import secrets
from pathlib import Path

from kafka.admin import (ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern,
                         ResourceType, ScramMechanism, UserScramCredentialUpsertion)

from tiertwin.connectors.broker import ManagedBroker
from tiertwin.connectors.kafka import admin_client
from tiertwin.connectors.topics import Topology
from tiertwin.errors import BrokerSetupError

# Topology roles -> the principal that plays them.
ROLE_PRINCIPALS: dict[str, str] = {
    "simulator": "tiertwin-simulator", "trace-importer": "tiertwin-simulator", "replay": "tiertwin-simulator",
    "local": "tiertwin-local", "edge": "tiertwin-edge", "cloud": "tiertwin-cloud", "pretrain": "tiertwin-cloud",
    "api": "tiertwin-subscriber", "subscribers": "tiertwin-subscriber", "operators": "tiertwin-subscriber",
}
READ_ONLY = {"tiertwin-subscriber"}
WRITERS_OF_DEAD_LETTERS = {"tiertwin-local", "tiertwin-edge", "tiertwin-cloud", "tiertwin-simulator"}
PRINCIPALS = sorted(set(ROLE_PRINCIPALS.values()))


def acl_plan(topology: Topology) -> dict[str, dict[str, set[str]]]:
    """``{principal: {"read": topics, "write": topics}}`` from the topology's producers and consumers."""
    plan = {p: {"read": set(), "write": set()} for p in PRINCIPALS}
    for topic in topology.topics:
        for role in topic.producers:
            if role == "every consumer":
                for principal in WRITERS_OF_DEAD_LETTERS:
                    plan[principal]["write"].add(topic.name)
            elif role in ROLE_PRINCIPALS and ROLE_PRINCIPALS[role] not in READ_ONLY:
                plan[ROLE_PRINCIPALS[role]]["write"].add(topic.name)
        for role in topic.consumers:
            if role in ROLE_PRINCIPALS:
                plan[ROLE_PRINCIPALS[role]]["read"].add(topic.name)
    return plan


def _acls(principal: str, reads: set[str], writes: set[str]) -> list[ACL]:
    user = f"User:{principal}"
    acls = [ACL(user, "*", op, ACLPermissionType.ALLOW, ResourcePattern(ResourceType.TOPIC, t))
            for t in sorted(reads) for op in (ACLOperation.READ, ACLOperation.DESCRIBE)]
    acls += [ACL(user, "*", op, ACLPermissionType.ALLOW, ResourcePattern(ResourceType.TOPIC, t))
             for t in sorted(writes) for op in (ACLOperation.WRITE, ACLOperation.DESCRIBE)]
    # Consumer groups named after the principal (tiertwin-local, tiertwin-local-2, ...).
    acls.append(ACL(user, "*", ACLOperation.READ, ACLPermissionType.ALLOW,
                    ResourcePattern(ResourceType.GROUP, principal, ACLResourcePatternType.PREFIXED)))
    if writes:
        acls.append(ACL(user, "*", ACLOperation.IDEMPOTENT_WRITE, ACLPermissionType.ALLOW,
                        ResourcePattern(ResourceType.CLUSTER, "kafka-cluster")))
    return acls


def credential_file(broker: ManagedBroker, principal: str) -> Path:
    return broker.paths.credentials / f"{principal}.password"


def apply_security(broker: ManagedBroker, topology: Topology) -> dict[str, Path]:
    """Create (or keep) a SCRAM user per principal and its ACLs; return the password files.

    Passwords are generated once and stored 0600 under ``<home>/kafka/credentials``;
    tier processes read theirs through ``TIERTWIN_SASL_PASSWORD_FILE``.
    """
    if broker.settings.broker_security != "scram":
        raise BrokerSetupError("the broker runs without security; start it with TIERTWIN_BROKER_SECURITY=scram")
    files, upserts = {}, []
    broker.paths.credentials.mkdir(parents=True, exist_ok=True, mode=0o700)
    for principal in PRINCIPALS:
        path = credential_file(broker, principal)
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        files[principal] = path
        upserts.append(UserScramCredentialUpsertion(principal, ScramMechanism.SCRAM_SHA_512, path.read_text().strip()))
    admin = admin_client(broker.client_settings())
    try:
        errors = {u: e for u, e in admin.alter_user_scram_credentials(upserts).items() if e}
        if errors:
            raise BrokerSetupError(f"could not create SCRAM users: {errors}")
        acls = [acl for principal, grants in acl_plan(topology).items()
                for acl in _acls(principal, grants["read"], grants["write"])]
        result = admin.create_acls(acls)
        failed = result.get("failed", []) if isinstance(result, dict) else []
        if failed:
            raise BrokerSetupError(f"could not create ACLs: {failed[:3]}")
    finally:
        admin.close()
    return files
