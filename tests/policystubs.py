"""Decisions as a policy stub returns them, for tests of the loop around the policy."""

from __future__ import annotations

from typing import Any

from batchpilot_operator.policy import Decision, Regime, Rule
from batchpilot_operator.policy.rules import Note


def stub_decision(
    action: str,
    replicas: int,
    size: int,
    wait: float,
    replicas_changed: bool,
    config_changed: bool,
    *notes: Note,
    **memory: Any,
) -> Decision:
    """A decision with these knobs and memory; its rules say nothing in particular."""
    return Decision(
        action=action,
        replicas=replicas,
        max_batch_size=size,
        max_wait_ms=wait,
        regime=Regime.WITHIN,
        config_rule=Rule.WITHIN,
        replica_rule=Rule.SCALE_UP if replicas_changed else Rule.WITHIN,
        notes=notes,
        replicas_changed=replicas_changed,
        config_changed=config_changed,
        recommendations=memory.pop("recommendations", ()),
        **memory,
    )
