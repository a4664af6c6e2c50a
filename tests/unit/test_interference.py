"""lora_math.lowrank.interference on synthetic stacks whose overlap is known by construction."""

import pytest
import torch

from lora_math.lowrank.delta import Delta
from lora_math.lowrank.interference import ReportBuilder, block_of


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


OUT, IN, R = 64, 48, 4
BASE = rand(OUT, IN, seed=0)
BASE_SQ = float(BASE.pow(2).sum())
# an orthonormal basis of the input space, split in two: LoRAs reading disjoint halves are orthogonal
Q, _ = torch.linalg.qr(rand(IN, IN, seed=1))
HALF_A, HALF_B = Q[:, : IN // 2].T, Q[:, IN // 2 :].T


def lora(seed, inputs, scale=0.05):
    mix = rand(R, inputs.shape[0], seed=seed)
    return Delta((OUT, IN), rand(OUT, R, seed=seed + 1) * scale, mix @ inputs)


def build(stack, strengths, **thresholds):
    """stack: {block: [Delta or None per LoRA]}; strengths per LoRA."""
    b = ReportBuilder([f"L{i}" for i in range(len(strengths))])
    for block, deltas in stack.items():
        scaled = [None if d is None else d.scaled(s) for d, s in zip(deltas, strengths, strict=True)]
        b.add(block, "model", BASE_SQ, scaled)
    return b.build(**thresholds)


def test_overlap_is_found_where_it_is_and_not_where_it_is_not():
    a = lora(10, HALF_A)
    shared = Delta(a.shape, a.up * 1.5 + rand(OUT, R, seed=20) * 0.01, a.down)  # same subspace, nearly same map
    ortho = lora(30, HALF_B)
    stack = {
        "IN04": [a, shared, ortho],  # L0 and L1 collide here
        "OUT03": [lora(40, HALF_A), lora(50, HALF_B), None],  # disjoint inputs: orthogonal updates
    }
    report = build(stack, [1.0, 0.8, 1.0])
    in04, out03 = report.blocks
    assert [b.block for b in report.blocks] == ["IN04", "OUT03"]
    assert in04.cosine(0, 1) > 0.95
    assert abs(in04.cosine(0, 2)) < 1e-5 and abs(in04.cosine(1, 2)) < 1e-5
    assert abs(out03.cosine(0, 1)) < 1e-5 and out03.cosine(0, 2) is None
    overlaps = [f for f in report.flags() if f.kind == "overlap"]
    assert [(f.block, "L0 × L1" in f.text) for f in overlaps] == [("IN04", True)]
    assert "reinforce" in overlaps[0].text
    text = report.text()
    assert "IN04" in text and "L0 × L1 overlap +" in text and "no flags" not in text


def test_opposite_updates_cancel_and_are_flagged_as_such():
    a = lora(10, HALF_A)
    report = build({"MID": [a, a]}, [1.0, -1.0])
    mid = report.blocks[0]
    assert mid.cosine(0, 1) == pytest.approx(-1.0, abs=1e-6)
    assert mid.combined == pytest.approx(0.0, abs=1e-6)
    assert any("cancel" in f.text for f in report.flags())


def test_norms_equal_the_dense_computation():
    a, b = lora(10, HALF_A), lora(20, Q[:, :8].T)
    report = build({"IN01": [a, b], "IN02": [b, None]}, [0.7, 1.3])
    block = report.blocks[0]
    da, db = a.matrix() * 0.7, b.matrix() * 1.3
    norm = BASE.norm()
    assert block.relative(0) == pytest.approx(float(da.norm() / norm), rel=1e-5)
    assert block.relative(1) == pytest.approx(float(db.norm() / norm), rel=1e-5)
    assert block.combined == pytest.approx(float((da + db).norm() / norm), rel=1e-5)
    cos = float((da * db).sum() / (da.norm() * db.norm()))
    assert block.cosine(0, 1) == pytest.approx(cos, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.2])
def test_balance_keeps_the_combined_update_within_budget_and_the_ratios(budget):
    a = lora(10, HALF_A, scale=0.2)
    stack = {"IN04": [a, Delta(a.shape, a.up, a.down), lora(30, HALF_B, 0.2)], "OUT01": [lora(60, Q.T[:4]), None, None]}
    strengths = [1.0, 0.6, 0.8]
    report = build(stack, strengths)
    assert report.worst("model").combined > budget  # the test needs a stack over budget
    c = report.balance_scale(budget, "model")
    balanced = build(stack, [s * c for s in strengths])
    assert balanced.worst("model").combined == pytest.approx(budget, rel=1e-6)
    assert all(b.combined <= budget * (1 + 1e-6) for b in balanced.blocks)
    assert build(stack, [s * c for s in strengths]).balance_scale(budget * 1.01, "model") == 1.0
    with pytest.raises(ValueError, match="budget"):
        report.balance_scale(0.0, "model")


def test_dominating_blocks_are_flagged():
    big = lora(10, HALF_A, scale=2.0)
    report = build({"IN07": [big], "IN08": [lora(20, HALF_A, scale=0.01)]}, [1.0], dominance_threshold=0.5)
    flagged = {f.block for f in report.flags() if f.kind == "dominates"}
    assert report.blocks[0].combined > 0.5 and flagged == {"IN07"}


def test_blocks_are_reported_in_model_order_text_encoder_last():
    assert block_of("diffusion_model.input_blocks.4.1.proj_in.weight") == "IN04"
    assert block_of("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight") == "CLIP"
    b = ReportBuilder(["x"])
    d = lora(1, HALF_A)
    for block, part in [("CLIP", "clip"), ("OUT02", "model"), ("MID", "model"), ("IN10", "model"), ("IN02", "model")]:
        b.add(block, part, BASE_SQ, [d])
    assert [s.block for s in b.build().blocks] == ["IN02", "IN10", "MID", "OUT02", "CLIP"]
