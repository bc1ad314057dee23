"""`sonichu-jax demo --quick`: the whole recipe end to end, and the shape of its results."""

from __future__ import annotations

import json
import os


def test_quick_demo_runs_the_recipe(quick_demo):
    out = quick_demo.out
    assert quick_demo.code == 0
    results = json.loads((out / "results.json").read_text())
    table = results["results"]
    weighted = {name: column["weighted_mre_px"] for name, column in table.items()}
    # every stage left its artefact behind
    for path in ("ijepa/backbone/config.json", "student/model/flax_model.safetensors", "pseudo/round1.jsonl"):
        assert (out / path).exists(), path
    assert len(os.listdir(out / "overlays")) == 6
    assert {"untrained", "t1_labels", "t2_pseudo", "t3_balanced", "median ensemble", "student"} <= set(weighted)
    # the student beats the untrained model by a wide margin
    assert weighted["student"] < 0.75 * weighted["untrained"], weighted
    # reported, not asserted: how close the student gets to the ensemble (the card: 7.30 vs 6.30)
    print(f"student {weighted['student']:.2f} px vs median ensemble {weighted['median ensemble']:.2f} px "
          f"vs untrained {weighted['untrained']:.2f} px")
    assert "results:" in quick_demo.stdout
