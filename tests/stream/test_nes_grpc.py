"""A black-box attacker who sees only a guard server's verdicts (top-1 label and confidence,
score, flag): NES through :class:`~avsentry.stream.oracle.GuardOracle` against a real server."""

from __future__ import annotations

import numpy as np

from avsentry.stream.oracle import GuardOracle
from avsentry.tools.attacks.base import Budget
from avsentry.tools.attacks.nes import NES

# "three" by flite and "five" by festival: measured at ~150-260 queries each over gRPC (about
# 45 queries/s against the test server), so the test stays near 15 s; at this budget NES with
# top-1 answers fools about half of all held-out digit clips within 2000 queries.
CLIPS = [12, 21]


def test_nes_fools_the_served_model_and_evades_the_flag_from_verdicts_alone(
    client, model_torch, heldout_speech
) -> None:
    """20 dB L-inf, 2000 queries: both clips change label and are not flagged, as the server
    itself says when asked again; the attack never saw a probability."""
    x, y = heldout_speech["x"][CLIPS], heldout_speech["y"][CLIPS]
    oracle = GuardOracle(client, max_in_flight=8)
    assert oracle.labels[int(y[0])] == "three" and oracle.labels[int(y[1])] == "five"
    clean = oracle.query(x)
    assert clean.probabilities is None and np.array_equal(clean.labels, y)

    attack = NES(budget=Budget(norm="linf", snr_db=20), max_queries=2000, evade=True, detector_weight=0.5)
    res = attack.run(oracle, x, y, seed=0)
    assert res.success.all(), res.queries
    assert np.all(res.queries <= 2000)
    assert np.all(res.linf <= attack.budget.per_item(x) * (1 + 1e-5))
    again = oracle.query(res.adversarial)
    assert np.all(again.labels != y) and not again.flagged.any()
    assert np.array_equal(again.labels, res.adversarial_labels)
    # the raw label is the served model's own: the local copy agrees
    assert np.array_equal(model_torch.predict(res.adversarial).argmax(1), again.labels)
