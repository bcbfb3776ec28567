"""Offline attacks on recognizers: one family per module."""

from avsentry.tools.attacks.base import Attack, AttackResult
from avsentry.tools.attacks.pgd import PGD

__all__ = ["PGD", "Attack", "AttackResult"]
