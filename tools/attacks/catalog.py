"""Attacks by name, built from specs: ``"pgd:eps=30db,norm=l2,steps=50,target=random"``.

A spec is ``name`` or ``name:key=value,...``. ``eps`` is the budget (``0.002`` in the model's input
units, ``4/255`` as a fraction, or ``30db`` relative to each clip; see
:class:`~avsentry.tools.attacks.base.Budget`) with ``norm`` (``linf`` or ``l2``, each family's
default otherwise); ``target`` is ``none`` (untargeted), ``random``, ``next`` or a label name;
every other key is a field of the attack's dataclass, converted to that field's type (tuples as
``/``-separated values: ``frames=0/5/9``).

Each family attacks the modalities in :data:`MODALITIES`: the gradient attacks and the adaptive
one work on any input (audio windows, video clips), frame saliency on video, the rest on audio.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from avsentry.tools.attacks.base import Budget

#: name -> (module, class, factory keyword overrides)
_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "fgsm": ("fgm", "FGM", {"norm": "linf"}),
    "fgm": ("fgm", "FGM", {"norm": "l2"}),
    "bim": ("pgd", "PGD", {"random_start": False, "restarts": 1, "name": "bim"}),
    "pgd": ("pgd", "PGD", {}),
    "cw": ("cw", "CarliniWagnerL2", {"norm": "l2"}),
    "deepfool": ("deepfool", "DeepFool", {}),
    "jsma": ("jsma", "JSMA", {}),
    "nes": ("nes", "NES", {}),
    "sparse": ("sparse", "SparseTF", {}),
    "adaptive": ("adaptive", "GuardAttack", {}),
    "frame_saliency": ("frame_saliency", "FrameSaliency", {}),
}

_ANY = frozenset({"audio", "video"})
#: family -> the modalities it attacks
MODALITIES: dict[str, frozenset[str]] = {
    name: (
        _ANY
        if name in ("fgsm", "fgm", "bim", "pgd", "adaptive")
        else frozenset({"video"})
        if name == "frame_saliency"
        else frozenset({"audio"})
    )
    for name in _FAMILIES
}

ATTACK_NAMES: tuple[str, ...] = tuple(_FAMILIES)
"""Names accepted in attack specs."""

#: attacks that need the detector (not just the model): they attack the whole guard
GUARD_ATTACKS = frozenset({"adaptive"})
#: attacks that need only predictions (any backend, or a server's verdicts)
BLACK_BOX = frozenset({"nes"})


@dataclass(frozen=True, slots=True)
class AttackSpec:
    """A parsed spec: the attack object, its family name, the target mode and the text."""

    family: str
    attack: Any
    target: str
    text: str

    @property
    def label(self) -> str:
        """A short name for tables: ``pgd-linf-30db``, ``cw-l2``, ``pgd-linf-30db-random``."""
        b = getattr(self.attack, "budget", None)
        parts = [self.family]
        if isinstance(b, Budget):
            parts.append(b.norm)
            parts.append(f"{b.snr_db:g}db" if b.snr_db is not None else _eps_text(b.eps))
        elif isinstance(getattr(self.attack, "norm", None), str):
            parts.append(self.attack.norm)
        elif isinstance(getattr(self.attack, "mode", None), str):  # frame saliency
            parts.append(self.attack.mode)
            parts.append(_eps_text(self.attack.eps))
        if self.target != "none":
            parts.append(f"to-{self.target}")
        return "-".join(parts)


def _eps_text(eps: float | None) -> str:
    """``0.002``, or ``4of255`` for a whole number of 8-bit grey levels."""
    assert eps is not None
    levels = eps * 255
    return f"{round(levels)}of255" if levels >= 0.5 and abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def _cls(family: str) -> type:
    module, cls, _ = _FAMILIES[family]
    return getattr(importlib.import_module(f"avsentry.tools.attacks.{module}"), cls)  # type: ignore[no-any-return]


def _convert(family: str, key: str, value: str, ftype: Any) -> Any:
    t = str(ftype)
    try:
        if "tuple" in t:
            item = int if "int" in t else float
            return tuple(item(v) for v in value.split("/") if v)
        if "bool" in t:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expected true or false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if "int" in t and "float" not in t:
            return int(value)
        if "float" in t:
            return None if value.lower() == "none" else float(value)
        return value
    except ValueError as e:
        raise ValueError(f"attack {family}: {key}={value!r}: {e}") from None


def _number(text: str) -> float:
    """``0.0157`` or a fraction ``4/255``."""
    num, slash, den = text.partition("/")
    try:
        return float(num) / float(den) if slash else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number or a fraction like 4/255, got {text!r}") from None


def check_modality(spec: AttackSpec, modality: str) -> None:
    """Raises ValueError when ``spec``'s family does not attack ``modality`` input."""
    allowed = MODALITIES[spec.family]
    if modality not in allowed:
        which = sorted(n for n, m in MODALITIES.items() if modality in m)
        raise ValueError(
            f"attack {spec.family} works on {'/'.join(sorted(allowed))} models, not {modality}; "
            f"for {modality}: {', '.join(which)}"
        )


def parse_attack_spec(text: str) -> AttackSpec:
    """Build an attack from a spec (see module doc).

    Raises:
        ValueError: An unknown family or key, or a value of the wrong type (the message says which).
    """
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in _FAMILIES:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACK_NAMES)}")
    cls = _cls(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {k: v for k, v in _FAMILIES[name][2].items() if k in fields or k == "norm"}
    raw: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"attack {name}: expected key=value, got {item!r}")
        raw[key.strip()] = value.strip()
    target = raw.pop("target", "none")
    family_norm = kw.pop("norm", None)
    user_norm = raw.pop("norm", None)
    norm = user_norm or family_norm
    eps = raw.pop("eps", None)
    if "norm" in fields and norm is not None:  # an attack with a norm of its own (DeepFool)
        kw["norm"] = norm
    if "budget" in fields:
        default = fields["budget"]
        base = (
            default.default_factory()  # type: ignore[misc]
            if default.default_factory is not dataclasses.MISSING
            else default.default
        )
        if eps is not None:
            kw["budget"] = Budget.parse(norm or (base.norm if isinstance(base, Budget) else "linf"), eps)
        elif isinstance(base, Budget) and norm is not None:
            kw["budget"] = dataclasses.replace(base, norm=norm)
        elif user_norm is not None and base is None and "norm" not in fields:
            raise ValueError(f"attack {name}: norm={user_norm} needs eps=...")
    elif eps is not None and "eps" in fields:  # an L-inf step of its own (frame saliency)
        kw["eps"] = _number(eps)
    elif eps is not None or (user_norm is not None and "norm" not in fields):
        raise ValueError(f"attack {name} takes no eps/norm budget")
    for key, value in raw.items():
        if key not in fields or key == "name":
            allowed = sorted(k for k in fields if k not in ("name", "budget"))
            raise ValueError(
                f"attack {name}: unknown parameter {key!r}; known: eps, norm, target, {', '.join(allowed)}"
            )
        kw[key] = _convert(name, key, value, fields[key].type)
    if "name" in fields:
        kw.setdefault("name", name)
    kw = {k: v for k, v in kw.items() if k in fields}
    try:
        attack = cls(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"attack {name}: {e}") from None
    if name in ("deepfool",) and target != "none":
        raise ValueError("deepfool is untargeted: drop target=")
    return AttackSpec(family=name, attack=attack, target=target, text=text.strip())
