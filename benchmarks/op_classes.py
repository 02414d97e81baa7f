"""Self CPU time of a ``torch.profiler`` run by operator class, for the speed benchmarks.

``cpu_throughput.py --profile`` and ``maml_variants.py`` say where a step's time goes with it: the convolutions
(oneDNN), or PyTorch's own kernels around them (batch norm, pooling, element-wise ops, copies).
"""
from __future__ import annotations

CLASSES = {
    "fused BN/pool/ReLU": ("_BNPoolReLU", "_BNPoolReLUBackward"),     # metalearn.kernels (not aten operators)
    "conv forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
                     "aten::_mkldnn_convolution"),
    "conv backward": ("aten::convolution_backward", "aten::mkldnn_convolution_backward"),
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_native_batch_norm_legit",
                   "aten::_batch_norm_with_update", "aten::batch_norm_backward", "aten::native_group_norm",
                   "aten::native_group_norm_backward"),
    "pooling": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward",
                "aten::adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d_backward",
                "aten::avg_pool2d", "aten::avg_pool2d_backward"),
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear", "aten::_cdist_forward",
               "aten::_cdist_backward", "aten::baddbmm"),
    "sampling": ("aten::grid_sampler_2d", "aten::grid_sampler_2d_backward", "aten::affine_grid_generator"),
    "reductions": ("aten::sum", "aten::mean", "aten::var", "aten::amax", "aten::logsumexp"),
    "copies and layout": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous", "aten::to"),
    "element-wise": ("aten::mul", "aten::add", "aten::add_", "aten::div", "aten::sub", "aten::neg", "aten::rsqrt",
                     "aten::threshold_backward", "aten::relu", "aten::clamp_min", "aten::pow", "aten::mul_",
                     "aten::div_", "aten::sub_", "aten::where", "aten::exp", "aten::log_softmax",
                     "aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::fill_", "aten::zero_",
                     "aten::threshold", "aten::rsub", "aten::sqrt", "aten::addcmul", "aten::addcdiv_",
                     "aten::lerp_", "aten::sigmoid", "aten::tanh"),
}


def categorise(prof) -> dict:
    """A finished ``torch.profiler.profile`` -> self CPU ms and share per class, the aten call count, the total.

    Args:
        prof: The profiler, after its ``with`` block.

    Returns:
        ``{"self_ms": {class: ms}, "share": {class: fraction}, "aten_calls": int, "total_ms": float}``: aten
        operators and the fused kernel's forward and backward; aten operators outside ``CLASSES`` count as
        ``"other"``.
    """
    out = {k: 0.0 for k in [*CLASSES, "other"]}
    n = 0
    for ev in prof.key_averages():
        cls = next((c for c, names in CLASSES.items() if ev.key in names), None)
        if cls is None and not ev.key.startswith("aten::"):
            continue
        n += ev.count
        cls = cls or "other"
        out[cls] += ev.self_cpu_time_total / 1e3
    total = sum(out.values())
    return {"self_ms": out, "share": {k: (v / total if total else 0.0) for k, v in out.items()}, "aten_calls": n,
            "total_ms": total}
