"""lora_math.weights.inplace on CUDA: the graph-replayed strength update equals the eager pass."""

import torch
from lora_math_import import merge_module


def test_graph_replay_matches_eager_and_recaptures_when_storage_moves():
    merge, LoRA = merge_module()
    g = torch.Generator().manual_seed(0)

    def lora(out_f, in_f, r):
        return LoRA(
            down=torch.randn(r, in_f, generator=g).half() * 0.1, up=torch.randn(out_f, r, generator=g).half() * 0.1
        )

    adapters = {"a": [lora(64, 32, 4), lora(64, 32, 8)], "b": [lora(48, 32, 4)]}
    terms = {k: tuple(merge.Term(a, 0.5) for a in v) for k, v in adapters.items()}
    terms["b"] += (merge.Term(lora(16, 32, 2), 1.0, rows=(16, 32)),)
    base = {"a": torch.randn(64, 32, generator=g).half().cuda(), "b": torch.randn(48, 32, generator=g).half().cuda()}
    dtypes = {k: torch.float16 for k in base}
    eager_w = {k: v.clone() for k, v in base.items()}
    graph_w = {k: v.clone() for k, v in base.items()}
    eager = merge.MergeProgram(terms, dtypes, "cuda", merge.FactorCache())
    eager._graphs_usable = False
    graphed = merge.MergeProgram(terms, dtypes, "cuda", merge.FactorCache())
    for deltas in ([0.5, 0.5, 0.5, 1.0], [0.25, -0.1, 0.0, 0.3], [1.0, 1.0, -1.0, 0.0]):
        eager.apply(deltas, eager_w.__getitem__)
        graphed.apply(deltas, graph_w.__getitem__)
        for k in base:
            torch.testing.assert_close(graph_w[k], eager_w[k], rtol=0, atol=2e-3)
    assert graphed.graph_error is None and graphed._graph is not None
    first_graph = graphed._graph
    graph_w = {k: v.clone() for k, v in graph_w.items()}  # new storage: the graph must be re-captured
    graphed.apply([0.1, 0.1, 0.1, 0.1], graph_w.__getitem__)
    eager.apply([0.1, 0.1, 0.1, 0.1], eager_w.__getitem__)
    assert graphed._graph is not first_graph
    for k in base:
        torch.testing.assert_close(graph_w[k], eager_w[k], rtol=0, atol=3e-3)
