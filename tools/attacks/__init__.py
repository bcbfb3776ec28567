"""Offline attacks on recognizers: one family per module."""

from tools.attacks.base import Attack, AttackResult
from tools.attacks.pgd import PGD

__all__ = ["PGD", "Attack", "AttackResult"]
