"""Offline attacks on recognizers: one family per module (see :mod:`.catalog` for specs)."""

from avsentry.tools.attacks.base import Attack, AttackResult, Budget, run_attack
from avsentry.tools.attacks.cw import CarliniWagnerL2
from avsentry.tools.attacks.deepfool import DeepFool
from avsentry.tools.attacks.fgm import FGM
from avsentry.tools.attacks.jsma import JSMA
from avsentry.tools.attacks.nes import NES, Oracle, RecognizerOracle
from avsentry.tools.attacks.pgd import PGD
from avsentry.tools.attacks.sparse import SparseTF

__all__ = [
    "FGM",
    "JSMA",
    "NES",
    "PGD",
    "Attack",
    "AttackResult",
    "Budget",
    "CarliniWagnerL2",
    "DeepFool",
    "Oracle",
    "RecognizerOracle",
    "SparseTF",
    "run_attack",
]
