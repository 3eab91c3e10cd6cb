"""A class-conditional Gaussian mixture with exact (analytic) denoisers in every parameterisation.

Data: p(x0) = Σ_k w_k N(μ_k, diag(s_k²)); component k belongs to class ``component_labels[k]``.
A noisy sample is x = α·x0 + σ·ε with ε ~ N(0, I). For a Gaussian mixture the noisy marginal is again a
mixture, N(α μ_k, diag(α² s_k² + σ²)), so the posterior means are closed-form (Tweedie):

    v_k  = α² s_k² + σ²                                   (per coordinate)
    r_k  = softmax_k[ log w_k − Σ_j ((x − α μ_k)_j² / v_kj + log v_kj) / 2 ]      (log-sum-exp)
    x̂0  = Σ_k r_k (μ_k + α s_k² (x − α μ_k) / v_k)
    ε̂   = Σ_k r_k  σ (x − α μ_k) / v_k

so that x = α x̂0 + σ ε̂ holds exactly. Conditioning on a class keeps only that class's components.

Two interpolations are supported (docs/design/solvers.md#coordinates):

- ``"vp"``: indexed by σ̄ = σ/α with α = 1/√(1+σ̄²), σ = σ̄ α (σ̄ = 0 is clean data, σ̄ = ∞ pure noise);
  outputs ε̂, x̂0 and v̂ = α ε̂ − σ x̂0 (Salimans & Ho 2022, v-prediction).
- ``"flow"``: rectified flow x = (1−s) x0 + s ε (SD3, Flux), α = 1−s, σ = s; the velocity is v̂ = ε̂ − x̂0.

Everything is computed in float64; x̂0 is formed directly (never as (x − σ ε̂)/α), so the endpoints σ̄ = 0,
σ̄ = ∞, s = 0 and s = 1 are exact. The arrays are tiny (n·K·d), so the core runs in numpy: torch's intra-op
threading made each call ~20x slower on a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastsample.solvers.presets import FAMILIES

VP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
FLOW_PREDICTION_TYPES = ("flow_prediction", "epsilon", "sample")
PRESET_STDS = {"hard": 0.15, "smooth": 0.5}

LevelLike = float | torch.Tensor


def _level_column(level: LevelLike, n: int, name: str) -> np.ndarray:
    """A level as a float64 column (m, 1): m = 1 for a scalar, m = n for one value per sample."""
    if isinstance(level, (int, float)):
        col = np.array([[float(level)]])
    else:
        arr = torch.as_tensor(level, dtype=torch.float64).detach().cpu().numpy().reshape(-1)
        if arr.size not in (1, n):
            raise ValueError(f"`{name}` must be a scalar or have one entry per sample ({n}), got {arr.size}")
        col = arr[:, None]
    if np.isnan(col).any():
        raise ValueError(f"`{name}` contains NaN")
    return col


def _vp_alpha_sigma_np(sigma_bar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if (sigma_bar < 0).any():
        raise ValueError("`sigma_bar` must be >= 0")
    with np.errstate(divide="ignore"):
        alpha = 1.0 / np.sqrt(1.0 + sigma_bar * sigma_bar)
        sigma = np.where(sigma_bar == 0, 0.0, 1.0 / np.sqrt(1.0 + 1.0 / (sigma_bar * sigma_bar)))
    return alpha, sigma


def _flow_alpha_sigma_np(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if (s < 0).any() or (s > 1).any():
        raise ValueError("flow level `s` must lie in [0, 1]")
    return 1.0 - s, s


def vp_alpha_sigma(sigma_bar: LevelLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) for a VP schedule at σ̄ = σ/α: α = 1/√(1+σ̄²), σ = 1/√(1+1/σ̄²); exact at σ̄ = 0 and σ̄ = ∞."""
    alpha, sigma = _vp_alpha_sigma_np(torch.as_tensor(sigma_bar, dtype=torch.float64).numpy())
    return torch.as_tensor(alpha), torch.as_tensor(sigma)


def flow_alpha_sigma(s: LevelLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) = (1 − s, s) for the flow-matching interpolation x = (1−s) x0 + s ε, s ∈ [0, 1]."""
    alpha, sigma = _flow_alpha_sigma_np(torch.as_tensor(s, dtype=torch.float64).numpy())
    return torch.as_tensor(alpha), torch.as_tensor(sigma)


def alpha_sigma(level: LevelLike, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) for a noise level of the given family ("vp": σ̄; "flow": s)."""
    if family == "vp":
        return vp_alpha_sigma(level)
    if family == "flow":
        return flow_alpha_sigma(level)
    raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax via log-sum-exp (rows may contain -inf, never only -inf)."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class GaussianMixture:
    """Class-conditional Gaussian mixture with analytic posterior means (see the module docstring).

    Args:
        means: (K, d) component means.
        stds: component standard deviations, (K,) isotropic or (K, d) diagonal; all > 0.
        weights: (K,) mixture weights, positive; normalised to sum to one.
        component_labels: (K,) class of each component (default: component k is class k).
    """

    def __init__(
        self,
        means: torch.Tensor | np.ndarray | Sequence,
        stds: torch.Tensor | np.ndarray | Sequence | float,
        weights: torch.Tensor | np.ndarray | Sequence,
        component_labels: torch.Tensor | np.ndarray | Sequence | None = None,
    ) -> None:
        means = torch.as_tensor(np.asarray(means), dtype=torch.float64).clone()
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"`means` must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(np.asarray(stds), dtype=torch.float64).clone()
        if stds.ndim == 0:
            stds = stds.expand(k)
        if stds.ndim == 1:
            if stds.shape[0] != k:
                raise ValueError(f"`stds` must have shape (K,) or (K, d) with K={k}, got {tuple(stds.shape)}")
            stds = stds[:, None].expand(k, d)
        if stds.shape != (k, d):
            raise ValueError(f"`stds` must have shape (K,) or (K, d) = ({k}, {d}), got {tuple(stds.shape)}")
        if not (stds > 0).all() or not torch.isfinite(stds).all():
            raise ValueError("`stds` must be finite and > 0")
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64).clone()
        if weights.shape != (k,) or not (weights > 0).all() or not torch.isfinite(weights).all():
            raise ValueError(f"`weights` must be {k} finite positive numbers, got {weights}")
        if component_labels is None:
            component_labels = torch.arange(k)
        labels = torch.as_tensor(np.asarray(component_labels), dtype=torch.long).clone()
        if labels.shape != (k,) or (labels < 0).any():
            raise ValueError(f"`component_labels` must be {k} non-negative integers, got {labels}")
        self.means = means
        self.stds = stds.contiguous()
        self.weights = weights / weights.sum()
        self.component_labels = labels
        self._means_np = self.means.numpy()
        self._var_np = (self.stds**2).numpy()
        self._log_weights_np = np.log(self.weights.numpy())
        self.num_classes = int(labels.max()) + 1
        present = torch.zeros(self.num_classes, dtype=torch.bool)
        present[labels] = True
        if not present.all():
            raise ValueError("`component_labels` must use every class id 0..max at least once")

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        dim: int = 8,
        num_components: int = 5,
        std: float | str = "hard",
        seed: int = 0,
        dirichlet_alpha: float = 1.0,
    ) -> GaussianMixture:
        """Seeded random mixture (docs/design/solvers.md#exact-mixture-oracle): means ~ N(0, I), weights ~
        Dirichlet(α·1), isotropic std.

        ``std`` is a number or a preset: "hard" = 0.15 (sharp terminal phase), "smooth" = 0.5.
        Each component is its own class.
        """
        if isinstance(std, str):
            if std not in PRESET_STDS:
                raise ValueError(f"`std` preset must be one of {sorted(PRESET_STDS)}, got {std!r}")
            std = PRESET_STDS[std]
        if dim < 1 or num_components < 1:
            raise ValueError("`dim` and `num_components` must be >= 1")
        if dirichlet_alpha <= 0:
            raise ValueError("`dirichlet_alpha` must be > 0")
        rng = np.random.default_rng(seed)
        means = rng.standard_normal((num_components, dim))
        weights = rng.dirichlet(np.full(num_components, float(dirichlet_alpha)))
        weights = np.maximum(weights, 1e-12)  # a Dirichlet draw can underflow to exactly 0
        return cls(means, float(std), weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def class_weights(self) -> torch.Tensor:
        """p(y): the total weight of each class's components."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(
            0, self.component_labels, self.weights
        )

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(dim={self.dim}, num_components={self.num_components}, "
            f"num_classes={self.num_classes}, std range=[{self.stds.min():.3g}, {self.stds.max():.3g}])"
        )

    # ------------------------------------------------------------------ sampling
    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n class labels drawn from p(y)."""
        return torch.multinomial(self.class_weights, n, replacement=True, generator=generator)

    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples x0 ~ p(x0 | y) (float64, (n, d)) and their labels y (drawn from p(y) if not given)."""
        if labels is None:
            labels = self.sample_labels(n, generator)
        labels = self._check_labels(labels, n)
        probs = self._class_mask(labels).to(torch.float64) * self.weights[None, :]
        comp = torch.multinomial(probs, 1, generator=generator)[:, 0]
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp] * eps, labels

    # ------------------------------------------------------------------ denoising
    def _check_labels(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        labels = torch.as_tensor(labels).detach().cpu()
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"`labels` must be an integer tensor, got {labels.dtype}")
        labels = labels.reshape(-1).long()
        if labels.shape[0] != n:
            raise ValueError(f"`labels` must have one entry per sample ({n}), got {labels.shape[0]}")
        if (labels < 0).any() or (labels >= self.num_classes).any():
            raise ValueError(f"`labels` must lie in [0, {self.num_classes - 1}]")
        return labels

    def _class_mask(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, None] == self.component_labels[None, :]

    def posterior(
        self,
        x: torch.Tensor,
        alpha: LevelLike,
        sigma: LevelLike,
        labels: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (x̂0, ε̂) = (E[x0 | x], E[ε | x]) for x = α x0 + σ ε; float64, shape (n, d) each.

        ``alpha``/``sigma`` are scalars or per-sample (n,). ``labels`` (n,) conditions each sample on its
        class; ``None`` gives the unconditional posterior. With labels, ``guidance_scale`` w returns the
        classifier-free-guided pair u + w·(c − u) (w = 1: conditional, w = 0: unconditional). Both posteriors
        share the per-component terms and are linear in the responsibilities, so this is one pass:
        r_w = r_u + w·(r_c − r_u).
        """
        xn = self._check_x(x)
        n = xn.shape[0]
        a, s = _level_column(alpha, n, "alpha"), _level_column(sigma, n, "sigma")
        x0, eps = self._posterior_np(xn, a, s, labels, guidance_scale)
        return torch.from_numpy(x0), torch.from_numpy(eps)

    def _check_x(self, x: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape (n, {self.dim}), got {tuple(x.shape)}")
        return x.detach().to("cpu", torch.float64).numpy()

    def _posterior_np(
        self, xn: np.ndarray, a: np.ndarray, s: np.ndarray, labels: torch.Tensor | None, guidance_scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The core of :meth:`posterior` on numpy arrays; ``a``/``s`` are (m, 1) columns, m in {1, n}."""
        n = xn.shape[0]
        if (a < 0).any() or (s < 0).any() or ((a == 0) & (s == 0)).any():
            raise ValueError("need alpha >= 0, sigma >= 0 and not both zero")
        if a.shape[0] > 1 and np.all(a == a[0]) and np.all(s == s[0]):  # one level: (K, d) variances only
            a, s = a[:1], s[:1]
        a, s = a[:, :, None], s[:, :, None]  # (m, 1, 1)
        means, var0 = self._means_np, self._var_np
        diff = xn[:, None, :] - a * means[None]  # (n, K, d)
        var = a * a * var0[None] + s * s  # (m, K, d)
        scaled = diff / var
        logits = self._log_weights_np[None] - 0.5 * ((diff * scaled).sum(-1) + np.log(var).sum(-1))
        if labels is None:
            r = _softmax(logits)
        else:
            mask = self._class_mask(self._check_labels(labels, n)).numpy()
            r = _softmax(np.where(mask, logits, -np.inf))
            if guidance_scale != 1.0:
                r = _softmax(logits) * (1.0 - guidance_scale) + guidance_scale * r
        x0 = np.einsum("nk,nkd->nd", r, means[None] + a * var0[None] * scaled)
        eps = np.einsum("nk,nkd->nd", r, s * scaled)
        return x0, eps

    def predict(
        self,
        x: torch.Tensor,
        level: LevelLike,
        prediction_type: str,
        *,
        family: str = "vp",
        labels: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """The exact model output in a diffusers ``prediction_type`` at a noise level (float64).

        VP (level σ̄): "epsilon" → ε̂, "sample" → x̂0, "v_prediction" → α ε̂ − σ x̂0.
        Flow (level s): "flow_prediction" → v̂ = ε̂ − x̂0, "epsilon" → ε̂, "sample" → x̂0.
        ``labels``/``guidance_scale`` as in :meth:`posterior`: every output is the same affine function of
        (x̂0, ε̂) for the conditional and unconditional model, so guiding here equals guiding the outputs.
        """
        if family not in FAMILIES:
            raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
        allowed = VP_PREDICTION_TYPES if family == "vp" else FLOW_PREDICTION_TYPES
        if prediction_type not in allowed:
            raise ValueError(
                f"`prediction_type` for family {family!r} must be one of {allowed}, got {prediction_type!r}"
            )
        xn = self._check_x(x)
        col = _level_column(level, xn.shape[0], "level")
        alpha, sigma = _vp_alpha_sigma_np(col) if family == "vp" else _flow_alpha_sigma_np(col)
        x0, eps = self._posterior_np(xn, alpha, sigma, labels, guidance_scale)
        if prediction_type == "epsilon":
            out = eps
        elif prediction_type == "sample":
            out = x0
        elif prediction_type == "flow_prediction":
            out = eps - x0
        else:
            out = alpha * eps - sigma * x0
        return torch.from_numpy(out)

    # convenience names for the common parameterisations
    def eps_vp(
        self, x: torch.Tensor, sigma_bar: LevelLike, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ε̂(x, σ̄) for a VP schedule."""
        return self.predict(x, sigma_bar, "epsilon", family="vp", labels=labels)

    def x0_vp(
        self, x: torch.Tensor, sigma_bar: LevelLike, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x̂0(x, σ̄) for a VP schedule."""
        return self.predict(x, sigma_bar, "sample", family="vp", labels=labels)

    def v_vp(self, x: torch.Tensor, sigma_bar: LevelLike, labels: torch.Tensor | None = None) -> torch.Tensor:
        """v̂ = α ε̂ − σ x̂0 for a VP schedule."""
        return self.predict(x, sigma_bar, "v_prediction", family="vp", labels=labels)

    def velocity_flow(
        self, x: torch.Tensor, s: LevelLike, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Flow-matching velocity v̂ = ε̂ − x̂0 at x = (1−s) x0 + s ε."""
        return self.predict(x, s, "flow_prediction", family="flow", labels=labels)

    def nearest_component(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest component mean (Euclidean) for each row of x."""
        xn = self._check_x(x)
        dist2 = ((xn[:, None, :] - self._means_np[None]) ** 2).sum(-1)
        return torch.from_numpy(dist2.argmin(axis=1))
