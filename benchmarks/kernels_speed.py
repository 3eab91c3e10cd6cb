"""Kernel paths and exact DiT savings vs the diffusers default: per-op and per-step latency ratios.

Every figure is a ratio against the diffusers default measured in the same run, interleaved (A B A B,
``fastsample.eval.latency.compare_latency``), on two model instances with identical random weights. Random
weights at real size are valid for latency (the compute pattern does not depend on them); block 0's
embedding is copied into every block, as in converted DiT checkpoints, so the shared embedding applies.

CUDA (default there): bf16, CUDA events, batch 1 and 8, eager and ``torch.compile``; per-op rows time each
Triton kernel against its pure-torch reference (eager and compiled), and Flux's fused QK RMSNorm + RoPE
prologue against diffusers' own ops at FLUX.1 1024² shapes; the DiT step rows include the fused adaLN
modulate and gated residual. CPU: fp32, no compile unless asked, Triton rows skipped (the interpreter is not
a speed reference)::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/kernels_speed.py --models dit-b2-256 --batch 1 \\
        --threads 1 --repeats 10
    python benchmarks/kernels_speed.py --models dit-xl2-256 pixart-512 --batch 1 8 --compile off on   # GPU

The step is one transformer forward on the CFG batch (2 x batch).
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys

import torch
from cache_speed import MODELS, build  # the released configs, one copy (benchmarks/ is on sys.path)

from fastsample.integration.measure import Stopwatch


def configs(family: str, cuda: bool) -> list[tuple[str, dict]]:
    """(label, what to enable): each path alone, then all together."""
    rows = [("attention: sdpa via fastsample processor", {"attention": ("sdpa", None)})]
    if cuda:
        rows += [
            ("attention: sdpa flash", {"attention": ("sdpa", ("flash",))}),
            ("attention: sdpa cuDNN", {"attention": ("sdpa", ("cudnn",))}),
            ("attention: triton", {"attention": ("triton", None)}),
        ]
    if family == "dit":
        rows += [
            ("savings: shared embedding", {"savings": dict(shared_embedding=True, batched_adaln=False)}),
            ("savings: batched adaLN (bmm)", {"savings": dict(shared_embedding=False, batched_adaln=True)}),
            ("savings: shared + batched", {"savings": dict(shared_embedding=True, batched_adaln=True)}),
        ]
        if cuda:
            alone = dict(shared_embedding=False, batched_adaln=False)
            rows += [
                ("fused adaLN modulate (triton)", {"savings": dict(alone, fused_modulate=True)}),
                ("fused gated residual (triton)", {"savings": dict(alone, fused_gated_residual=True)}),
                (
                    "fused modulate + gated residual (triton)",
                    {"savings": dict(alone, fused_modulate=True, fused_gated_residual=True)},
                ),
            ]
        everything = {
            "attention": ("triton" if cuda else "sdpa", None),
            "savings": dict(
                shared_embedding=True, batched_adaln=True, fused_modulate=cuda, fused_gated_residual=cuda
            ),
        }
        rows.append(("all together", everything))
    return rows


def share_embeddings(model: torch.nn.Module) -> None:
    if hasattr(model, "transformer_blocks") and getattr(model.transformer_blocks[0].norm1, "emb", None):
        first = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)


def step_inputs(model: torch.nn.Module, family: str, batch: int, device, dtype) -> dict:
    c = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    kwargs = {"hidden_states": x.to(device, dtype), "timestep": torch.full((2 * batch,), 500, device=device)}
    if family == "dit":
        kwargs["class_labels"] = torch.tensor([1] * batch + [1000] * batch, device=device)
    else:
        kwargs["encoder_hidden_states"] = torch.randn(2 * batch, 120, c.caption_channels, generator=g).to(
            device, dtype
        )
        kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    return kwargs


def op_rows(device, dtype, repeats: int, compile_: bool) -> list[str]:
    """Per-op: each Triton kernel vs its reference at DiT-XL/2 256² and PixArt 512² shapes (CUDA only)."""
    from fastsample.eval.latency import compare_latency
    from fastsample.kernels import reference, triton_ops

    rows = []
    for tokens, tag in ((256, "DiT-XL/2 256²"), (1024, "PixArt 512²")):
        b, d, h = 2, 1152, 16
        x = torch.randn(b, tokens, d, device=device, dtype=dtype)
        s, t = torch.randn(b, d, device=device, dtype=dtype), torch.randn(b, d, device=device, dtype=dtype)
        q, k, v = (torch.randn(b, h, tokens, 72, device=device, dtype=dtype) for _ in range(3))
        qr = torch.randn(b, h, tokens, 128, device=device, dtype=dtype)
        w, cos, sin = (torch.randn(*shape, device=device) for shape in ((128,), (tokens, 128), (tokens, 128)))
        cases = {
            "adaLN modulate": ("adaln_modulate", (x, s, t)),
            "gated residual": ("gated_residual", (x, s, x)),
            "QK RMSNorm+RoPE (Dh 128)": ("qk_rmsnorm_rope", (qr, w, cos, sin)),
            "attention (Dh 72)": ("attention", (q, k, v)),
        }
        for label, (name, args) in cases.items():
            ref = getattr(reference, name)
            if name == "attention":

                def ref(q, k, v):  # the baseline is what diffusers runs: SDPA
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)

            if compile_:
                ref = torch.compile(ref)
            fused = getattr(triton_ops, name)
            cmp = compare_latency(
                lambda r=ref, a=args: r(*a),
                lambda f=fused, a=args: f(*a),
                warmup=5,
                repeats=repeats,
                device=device,
            )
            rows.append(
                f"| {tag} | {label} | {'on' if compile_ else 'off'} | {1e6 * cmp.baseline.median_s:.1f} "
                f"| {1e6 * cmp.candidate.median_s:.1f} | {cmp.speedup:.2f}x |"
            )
    return rows


FLUX_1024 = dict(heads=24, head_dim=128, image_tokens=4096, text_tokens=512)  # FLUX.1-dev at 1024², batch 1


def flux_prologue_rows(device, dtype, repeats: int, compile_: bool, shape: dict = FLUX_1024) -> list[str]:
    """Flux's query (or key) prologue: diffusers' ops (``norm_q``, ``norm_added_q``, ``torch.cat``,
    ``apply_rotary_emb``; a single-stream block has one norm and no cat) vs fastsample's fused one
    (``_fused_qk_prologue``: one ``qk_rmsnorm_rope`` call per part, written into the concatenation)."""
    from diffusers.models.embeddings import apply_rotary_emb

    from fastsample.eval.latency import compare_latency
    from fastsample.kernels.attention import _fused_qk_prologue

    heads, dh, n_img, n_txt = (shape[k] for k in ("heads", "head_dim", "image_tokens", "text_tokens"))
    norm, text_norm = (torch.nn.RMSNorm(dh, eps=1e-6).to(device, dtype) for _ in range(2))
    x = torch.randn(1, n_img, heads, dh, device=device, dtype=dtype)
    ctx = torch.randn(1, n_txt, heads, dh, device=device, dtype=dtype)
    single = torch.randn(1, n_txt + n_img, heads, dh, device=device, dtype=dtype)
    rope = (torch.randn(n_txt + n_img, dh, device=device), torch.randn(n_txt + n_img, dh, device=device))

    def stock_double(x, ctx):
        return apply_rotary_emb(torch.cat([text_norm(ctx), norm(x)], dim=1), rope, sequence_dim=1)

    def stock_single(x):
        return apply_rotary_emb(norm(x), rope, sequence_dim=1)

    cases = {
        "Flux QK RMSNorm+RoPE, double-stream block (text + image)": (
            stock_double,
            lambda x, ctx: _fused_qk_prologue(x, ctx, norm, text_norm, rope, heads_major=False),
            (x, ctx),
        ),
        "Flux QK RMSNorm+RoPE, single-stream block": (
            stock_single,
            lambda x: _fused_qk_prologue(x, None, norm, None, rope, heads_major=False),
            (single,),
        ),
    }
    tag = f"FLUX.1 {n_txt}+{n_img} tokens, {heads}x{dh}"
    rows = []
    for label, (ref, fused, args) in cases.items():
        if compile_:
            ref = torch.compile(ref)

        def run_ref(r=ref, a=args):
            with torch.no_grad():
                return r(*a)

        def run_fused(f=fused, a=args):
            with torch.no_grad():
                return f(*a)

        with torch.no_grad():
            err = (run_ref().float() - run_fused().float()).abs().max().item()
        cmp = compare_latency(run_ref, run_fused, warmup=5, repeats=repeats, device=device)
        rows.append(
            f"| {tag} | {label} (max abs diff {err:.1e}) | {'on' if compile_ else 'off'} "
            f"| {1e6 * cmp.baseline.median_s:.1f} | {1e6 * cmp.candidate.median_s:.1f} | {cmp.speedup:.2f}x |"
        )
    return rows


def count_ops(model: torch.nn.Module, kwargs: dict) -> int:
    """aten operator calls (≈ kernel launches on a GPU) of one forward, counted by a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.calls += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Counter():
        model(**kwargs)
    return Counter.calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["dit-b2-256"], choices=sorted(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="default: 1 8 on CUDA, 1 on CPU")
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=("off", "on"),
        default=None,
        help="default: off on on CUDA, off on CPU",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default: 50 on CUDA, 10 on CPU")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-ops", action="store_true", help="skip the per-op rows")
    parser.add_argument(
        "--count-ops", action="store_true", help="only count aten calls per forward, no timing"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    batches = args.batch or ([1, 8] if cuda else [1])
    compiles = args.compile or (["off", "on"] if cuda else ["off"])
    repeats = args.repeats or (50 if cuda else 10)

    import diffusers

    from fastsample.eval.latency import compare_latency
    from fastsample.kernels import enable_dit_savings, set_attention

    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    print(
        f"# kernels speed, {name}, {torch.get_num_threads()} threads, {dtype}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, python {sys.version.split()[0]}"
    )
    given = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# command: python benchmarks/kernels_speed.py {given}")
    total = Stopwatch().start()
    if cuda and not args.no_ops:
        print("\n| shapes | op | compile | reference µs | triton µs | speed-up |\n|---|---|---|---|---|---|")
        for c in compiles:
            for row in op_rows(device, dtype, repeats, c == "on"):
                print(row, flush=True)
            for row in flux_prologue_rows(device, dtype, repeats, c == "on"):
                print(row, flush=True)
    elif not args.no_ops:
        print("# per-op Triton rows skipped: no CUDA device (the interpreter is not a speed reference)")
    if args.count_ops:
        print("\n| model | path | aten calls per forward | vs default |\n|---|---|---|---|")
        for model_name in args.models:
            base, family = build(model_name)
            share_embeddings(base)
            base = base.to(device, dtype)
            kwargs = step_inputs(base, family, batches[0], device, dtype)
            default = count_ops(base, kwargs)
            print(f"| {model_name} | diffusers default | {default} | |")
            for label, spec in configs(family, cuda):
                handles = []
                if "attention" in spec:
                    handles.append(set_attention(base, spec["attention"][0], kernels=spec["attention"][1]))
                if "savings" in spec:
                    handles.append(enable_dit_savings(base, **spec["savings"]))
                n = count_ops(base, kwargs)
                print(f"| {model_name} | {label} | {n} | {n - default:+d} |", flush=True)
                for h in handles:
                    h.disable()
        return 0
    print("\n| model | batch | compile | path | what is active | default ms | path ms | speed-up | p10-p90 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models:
        base, family = build(model_name)
        share_embeddings(base)
        base = base.to(device, dtype)
        for batch in batches:
            kwargs = step_inputs(base, family, batch, device, dtype)
            for c in compiles:
                for label, spec in configs(family, cuda):
                    cand = copy.deepcopy(base)
                    handles = []
                    if "attention" in spec:
                        handles.append(
                            set_attention(cand, spec["attention"][0], kernels=spec["attention"][1])
                        )
                    if "savings" in spec:
                        handles.append(enable_dit_savings(cand, **spec["savings"]))
                    a, b = base, cand
                    if c == "on":
                        torch.compiler.reset()
                        a, b = torch.compile(base), torch.compile(cand)

                    def run(m=a, kwargs=kwargs):
                        with torch.no_grad():
                            return m(**kwargs).sample

                    def run_c(m=b, kwargs=kwargs):
                        with torch.no_grad():
                            return m(**kwargs).sample

                    with torch.no_grad():
                        err = (run() - run_c()).abs().max().item()
                    cmp = compare_latency(run, run_c, warmup=5 if cuda else 1, repeats=repeats, device=device)
                    active = "; ".join(h.describe().split(": ", 1)[1] for h in handles)
                    print(
                        f"| {model_name} | {batch} | {c} | {label} | {active} (max abs diff {err:.1e}) "
                        f"| {1e3 * cmp.baseline.median_s:.1f} | {1e3 * cmp.candidate.median_s:.1f} "
                        f"| {cmp.speedup:.3f}x | {cmp.pairwise_ratio_p10:.3f}-{cmp.pairwise_ratio_p90:.3f} |",
                        flush=True,
                    )
                    for h in handles:
                        h.disable()
                    del cand, a, b
    print(f"# total benchmark time {total.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
