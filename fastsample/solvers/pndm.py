"""The PNDM family as a native diffusers scheduler: PLMS, S-PNDM and F-PNDM (Liu et al., ICLR 2022).

All three are pseudo linear multistep methods: Adams–Bashforth combinations of the per-call slope
(ε̂ in (x̄, σ̄), the flow velocity in (x, s)) applied through the DDIM transfer x̄' = x̄ + Δσ̄·U, differing in
how they start:

- ``method="plms"``: one pseudo Heun step (2 calls, the second grid timestep appears twice), then AB2, AB3
  and AB4 from then on: exactly diffusers ``PNDMScheduler(skip_prk_steps=True)``, the Stable Diffusion 1.x
  default (crowsonkb's PLMS). N steps cost N + 1 calls.
- ``method="s_pndm"``: one pseudo Heun step, then pseudo AB2 (the paper's second-order S-PNDM). N + 1 calls.
- ``method="f_pndm"``: three pseudo RK4 steps with timestep midpoints (4 calls each), then AB4: exactly
  diffusers ``PNDMScheduler(skip_prk_steps=False)`` and the paper's F-PNDM. N + 9 calls.

Differences from ``PNDMScheduler`` (identical for epsilon models on the same grid and end point):

- every output is converted to the slope at its own call before mixing; diffusers mixes raw v-prediction
  outputs and converts the mix with the current sample (not equivalent for ``v_prediction``). ``sample``
  prediction and flow-matching models are supported too;
- the default grid is DPM-Solver's ``linspace`` ending at σ̄ = 0 (pass ``timestep_spacing="leading"``,
  ``steps_offset=1``, ``set_alpha_to_one=False`` for SD's PNDM grid, which the SD config already does except
  for the spacing);
- ``set_begin_index``/``step_index`` work (img2img, Flux); a start inside the warm-up continues with the
  multistep start-up instead of replaying the cut Runge–Kutta step.
"""

from __future__ import annotations

import numpy as np
from diffusers.configuration_utils import register_to_config

from fastsample.solvers.core import HEUN, RK4, MultistepCore, Tableau
from fastsample.solvers.rules import AdamsBashforth, Rule

PNDM_METHODS = {"plms": (4, HEUN, 1), "s_pndm": (2, HEUN, 1), "f_pndm": (4, RK4, 3)}


class PNDMFamilyScheduler(MultistepCore):
    """PLMS / S-PNDM / F-PNDM selected by ``method``; see the module docstring and ``MultistepCore``."""

    @register_to_config
    def __init__(
        self,
        method: str = "plms",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        set_alpha_to_one: bool | None = None,
        final_sigmas_type: str | None = None,
        rescale_betas_zero_snr: bool = False,
        clip_sample: bool = False,
        thresholding: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        shift_terminal: float | None = None,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
    ):
        if method not in PNDM_METHODS:
            raise ValueError(f"`method` must be one of {tuple(PNDM_METHODS)}, got {method!r}")
        self._init_core()

    def _make_rule(self) -> Rule:
        return AdamsBashforth(PNDM_METHODS[self.config.method][0])

    def _warmup(self) -> tuple[Tableau | None, int]:
        _, tableau, steps = PNDM_METHODS[self.config.method]
        return tableau, steps
