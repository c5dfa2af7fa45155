"""MicroEdit (MicroEdit): lifelong editing through the decoder of a Top-k SAE.

The SAE sits on the residual stream after layer L. The model and the SAE encoder stay frozen;
only W_dec is trained, and in each edit only the rows of the features the edit's tokens
activate (Eq. 13-14). At inference the SAE reconstructs every input; the reconstruction
replaces the residual only when the input's average reconstruction distance (ARD, Eq. 11) is
at most tau (Eq. 12): edited facts were trained to reconstruct closely, unrelated inputs keep
the SAE's ordinary error and pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    Switch,
    check_integer,
    check_number,
    register_intervention,
)
from ce_bench.interventions.sae import load_sae, sink_positions
from ce_bench.lifelong.editor import Editor, EditorParams, edit_batch, edit_training, target_loss
from ce_bench.lifelong.records import EditRecord
from ce_bench.sites import (
    Site,
    SiteError,
    attach_hook,
    site_device,
    site_from_hook_name,
    site_width,
)

if TYPE_CHECKING:
    from sae_lens import SAE

# MicroEdit C.1 (LLaMA-3-8B): the switch threshold is 0.5 for T < 100 edits and 0.55 from 100 on.
TAU_FEW, TAU_MANY, MANY_EDITS = 0.5, 0.55, 100
AUTO, PAPER = "auto", "paper"
PAPER_ALPHA = 600.0  # MicroEdit C.1, "for all models"
# The SAEs MicroEdit used (C.1), by (d_in, d_sae): EleutherAI's sae-llama-3-8b-32x at layer 30 of
# LLaMA-3-8B and SAE Lens's 7b-res-wg (16x) at layer 24 of Mistral-7B. alpha = 600 is in units
# of their reconstruction errors; another SAE's error per token can differ by orders of magnitude.
PAPER_SAES = {(4096, 131072): "sae-llama-3-8b-32x", (4096, 65536): "7b-res-wg"}
logger = logging.getLogger(__name__)
DEFAULT_SAE_LAYER = 27  # the embedded model's cached SAE (30 layers; MicroEdit uses 30 of 32)


@dataclass(frozen=True)
class MicroEditParams(EditorParams):
    sae_path: str = ""  # a local sae-lens Top-k SAE; empty: the embedded model's own SAE
    sae_release: str = ""  # or a sae-lens release and id (hub)
    sae_id: str = ""
    k: int = 0  # active features (Eq. 7); 0: the SAE's own k
    # ARD scale (Eq. 11). "paper": MicroEdit's 600 with one of its SAEs, else calibrated as
    # "auto" (see `_calibrated_alpha`); a number is used as given.
    alpha: float | str = PAPER
    tau: float = -1.0  # switch threshold (Eq. 12); -1: 0.5 for T < 100 edits, else 0.55
    lr: float = 5e-5  # Adam, batch size 1 (MicroEdit C.1)
    reg_steps: int = 200  # stage 1 steps: ARD only, no LM pass, cheap; not given in the paper
    edit_steps: int = 40  # stage 2 steps: ARD + edit loss; not given in the paper
    stop_loss: float = 0.05  # stage 2 stops early once the edit loss is below this

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tau", "lr", "stop_loss"):
            check_number(name, getattr(self, name))
        if self.alpha not in (AUTO, PAPER):
            check_number("alpha", self.alpha)
        for name in ("k", "reg_steps", "edit_steps"):
            check_integer(name, getattr(self, name), 0)
        if (self.alpha not in (AUTO, PAPER) and self.alpha <= 0) or self.lr <= 0:
            raise ValueError("alpha and lr must be positive")


@register_intervention
class MicroEdit(Editor):
    """State: the edited decoder `w_dec` (d_sae, d_model); everything else is the SAE's."""

    kind = "microedit"
    Params = MicroEditParams
    tensor_names = ("w_dec",)
    site_name = "resid_post"

    @classmethod
    def default_layer(cls, model: nn.Module, params: Any) -> int:
        if params.sae_path or params.sae_release:
            sae = _load(params)
            return site_from_hook_name(model, sae.cfg.metadata.hook_name).layer
        return DEFAULT_SAE_LAYER

    @classmethod
    def initial_tensors(cls, model: nn.Module, site: Site, params: Any) -> dict[str, torch.Tensor]:
        return {"w_dec": _load(params, site.layer).W_dec.detach().float().clone()}

    def check(self, model: nn.Module, source: str) -> None:
        try:
            self.sae = _load(self.params, self.site.layer)
        except Exception as err:  # sae-lens raises many types for a missing or bad SAE
            raise ArtifactError(source, "params.sae_path", f"cannot load the SAE ({err})") from err
        self.sae.requires_grad_(False)  # frozen: only the editor's own W_dec copy trains
        cfg = self.sae.cfg
        try:
            sae_site = site_from_hook_name(model, cfg.metadata.hook_name)
        except SiteError as err:
            raise ArtifactError(source, "site", str(err)) from err
        if sae_site != self.site:
            raise ArtifactError(
                source, "site", f"the SAE reads {sae_site}, editor is at {self.site}"
            )
        if cfg.d_in != site_width(model, self.site):
            raise ArtifactError(source, "params.sae_path", f"SAE d_in={cfg.d_in} != site width")
        self.check_shapes(source, {"w_dec": (cfg.d_sae, cfg.d_in)})
        self.k = self.params.k or getattr(cfg, "k", 0)
        if not 0 < self.k <= cfg.d_sae:
            raise ArtifactError(
                source,
                "params.k",
                f"give k (1..{cfg.d_sae}): the SAE ({type(self.sae).__name__}) is not Top-k",
            )
        self.tau = self.params.tau
        self.paper_sae = PAPER_SAES.get((cfg.d_in, cfg.d_sae))
        self.alpha_from = "given"
        self.alpha = self.params.alpha if self.params.alpha not in (AUTO, PAPER) else 1.0
        if self.params.alpha == PAPER and self.paper_sae:
            self.alpha, self.alpha_from = PAPER_ALPHA, f"MicroEdit C.1 ({self.paper_sae})"

    def reset(self) -> None:
        super().reset()
        self.rows_moved: list[torch.Tensor] = []  # per edit, the decoder rows it trained

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, info = super().progress()
        rows = torch.zeros(0, len(self.tensors["w_dec"]), dtype=torch.bool)
        return {
            **tensors,
            "rows_moved": torch.stack(self.rows_moved) if self.rows_moved else rows,
        }, info

    def resume(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], edits_applied: int
    ) -> None:
        super().resume(tensors, info, edits_applied)
        self.rows_moved = list(tensors["rows_moved"])

    def start_stream(self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]) -> None:
        if self.params.tau < 0:
            self.tau = TAU_MANY if len(records) >= MANY_EDITS else TAU_FEW
        if self.params.alpha == AUTO or (self.params.alpha == PAPER and not self.paper_sae):
            self.alpha = self._calibrated_alpha(model, tokenizer, records)
            self.alpha_from = (
                "calibrated (alpha=auto)"
                if self.params.alpha == AUTO
                else "calibrated: the SAE is not one of MicroEdit's, whose alpha = 600 would not"
                " transfer"
            )

    def resolved(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "tau": self.tau}

    def _calibrated_alpha(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> float:
        """alpha = the unedited SAE's mean squared error per token on the edit inputs, so an
        unedited input's ARD is about 1. MicroEdit's alpha = 600 plays that role for its
        LLaMA-3-8B SAE; another model's residual scale needs its own."""
        errors = []
        for record in records:
            z, z_hat = self._reconstruction(model, tokenizer, record)
            errors.append((z_hat - z).pow(2).sum(-1)[~sink_positions(z)])
        return float(torch.cat(errors).mean())

    def stream_report(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> dict[str, Any]:
        """Each edit input's ARD after the whole stream, and the share still within tau: later
        edits move decoder rows that earlier edits share, which can push those above tau."""
        ards = []
        for record in records:
            z, z_hat = self._reconstruction(model, tokenizer, record)
            ards.append(float(self.ard(z, z_hat, ~sink_positions(z))[0]))
        within = sum(a <= self.tau for a in ards) / max(1, len(ards))
        report: dict[str, Any] = {
            "alpha_from": self.alpha_from,
            "ard_at_end": [float(f"{a:.4g}") for a in ards],
            "within_tau_at_end": within,
            **row_overlap(self.rows_moved),
        }
        if ards and within == 0:
            report["warning"] = (
                f"MicroEdit changes nothing: none of the {len(ards)} edited inputs reconstructs"
                f" within tau = {self.tau} (smallest ARD {min(ards):.3g}, alpha = {self.alpha:.4g},"
                f" {self.alpha_from}), so every input keeps its own residual; alpha=paper or"
                " alpha=auto scales the ARD to this SAE"
            )
            logger.warning(report["warning"])
        return report

    def _reconstruction(
        self, model: nn.Module, tokenizer: Any, record: EditRecord
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z at the SAE's site for the record's edit input (the forward pass left unchanged)
        and its reconstruction through the current decoder."""
        self.capturing = []
        try:
            with torch.no_grad():
                model(input_ids=edit_batch(tokenizer, record, self.device).input_ids)
            z = self.capturing.pop().float()
        finally:
            self.capturing = None
        return z, self.decode(self.encode(z), self.tensors["w_dec"])

    # ------------------------------------------------------------------ the SAE, Eq. 7-8, 11
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Top-k codes of the SAE's pre-activations (Eq. 7; ReLU on the k kept values)."""
        sae = self.sae
        pre = sae.process_sae_in(z) @ sae.W_enc + sae.b_enc
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())

    def decode(self, codes: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
        return self.sae.run_time_activation_norm_fn_out(codes @ w_dec + self.sae.b_dec)

    def ard(self, z: torch.Tensor, z_hat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per row, 1/(alpha S) sum_s ||z_hat_s - z_s||^2 over its S real tokens (Eq. 11)."""
        sq = (z_hat.float() - z.float()).pow(2).sum(-1)
        if mask is None:
            return sq.mean(-1) / self.alpha
        mask = mask.to(sq.dtype)
        return (sq * mask).sum(-1) / mask.sum(-1).clamp(min=1) / self.alpha

    # ------------------------------------------------------------------ inference, Eq. 12
    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        self.device, _ = site_device(model, self.site)
        self.sae = self.sae.to(device=self.device, dtype=torch.float32)
        self.tensors = {k: v.to(self.device) for k, v in self.tensors.items()}
        self.training: dict[str, Any] | None = None  # set while an edit trains
        self.capturing: list[torch.Tensor] | None = None  # set while alpha is calibrated
        self.routes: torch.Tensor | None = None  # per row of the generation under way: z_hat?

        def edit(h: torch.Tensor) -> torch.Tensor | None:
            if self.capturing is not None:  # calibrating alpha: look, change nothing
                self.capturing.append(h.detach())
                return None
            if self.training is not None:
                return self._training_forward(h)
            if not switch.on_for(self):
                return None
            new_input = switch.past_length == 0 or self.routes is None or len(self.routes) != len(h)
            if not new_input and not bool(self.routes.any()):
                return None  # a later generation step of rows that all keep z
            z, keep = h.float(), sink_positions(h)
            z_hat = self.decode(self.encode(z), self.tensors["w_dec"])
            if new_input:
                real = switch.token_mask(h.shape[0], h.shape[1], h.device)
                counted = ~keep if real is None else real & ~keep
                self.routes = self.ard(z, z_hat, counted) <= self.tau
            use = self.routes[:, None] & ~keep
            return torch.where(use[..., None], z_hat, z).to(h.dtype)

        return [attach_hook(model, self.site, edit)]

    # ------------------------------------------------------------------ editing, Algorithm 1
    def _training_forward(self, h: torch.Tensor) -> torch.Tensor:
        """While an edit trains: z_hat from the decoder being trained replaces z (sinks kept)."""
        state = self.training
        if "codes" not in state:  # the prefix is frozen: z and its codes never change
            state["z"], state["sinks"] = h.detach().float(), sink_positions(h)
            state["codes"] = self.encode(state["z"])
            state["rows"] = (state["codes"] != 0).flatten(0, -2).any(0)  # I_k, Eq. 13
        z_hat = self._reconstruct(state)
        return torch.where(state["sinks"][..., None], h, z_hat.to(h.dtype))

    def _reconstruct(self, state: dict[str, Any]) -> torch.Tensor:
        z_hat = self.decode(state["codes"], state["w_dec"])
        state["ard"] = self.ard(state["z"], z_hat, ~state["sinks"]).mean()
        return z_hat

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        batch = edit_batch(tokenizer, record, self.device)
        w_dec = self.tensors["w_dec"].clone().requires_grad_(True)
        state: dict[str, Any] = {"w_dec": w_dec}
        optimiser = torch.optim.Adam([w_dec], lr=self.params.lr)

        def step(loss: torch.Tensor) -> None:
            optimiser.zero_grad()
            loss.backward()
            w_dec.grad *= state["rows"][:, None]  # Eq. 14: only I_k's rows of W_dec move
            optimiser.step()

        self.training = state
        edit_loss, steps = torch.tensor(float("nan")), 0
        try:
            with edit_training(model, self.site.layer, batch):  # records z, its codes and I_k
                for _ in range(self.params.reg_steps):  # stage 1: distance regularisation
                    self._reconstruct(state)
                    step(state["ard"])
                for _ in range(self.params.edit_steps):  # stage 2: ARD + edit loss
                    edit_loss = target_loss(model, batch)[0]  # Eq. 10, through z_hat
                    if edit_loss.item() < self.params.stop_loss:
                        break
                    step(state["ard"] + edit_loss)
                    steps += 1
        finally:
            self.training = None
        self.tensors["w_dec"] = w_dec.detach()
        self.rows_moved.append(state["rows"].detach().bool().cpu())
        self.edits_applied += 1
        return {
            "ard": float(state["ard"].detach()),
            "edit_loss": float(edit_loss.detach()),
            "steps": steps,
        }


def row_overlap(rows: Sequence[torch.Tensor]) -> dict[str, float]:
    """How many decoder rows each edit moved, and the mean Jaccard overlap |A & B| / |A | B| of
    the rows two edits moved, over all pairs: the rows later edits can undo earlier ones in."""
    if not rows:
        return {}
    moved = torch.stack(rows).float()  # (edits, d_sae)
    both = moved @ moved.T
    sizes = moved.sum(1)
    either = sizes[:, None] + sizes[None, :] - both
    pairs = torch.triu(torch.ones_like(both, dtype=torch.bool), diagonal=1)
    overlap = (both / either.clamp(min=1))[pairs]
    return {
        "rows_per_edit": float(sizes.mean()),
        "row_overlap": float(overlap.mean()) if overlap.numel() else 0.0,
    }


def _load(params: MicroEditParams, layer: int = DEFAULT_SAE_LAYER) -> SAE:
    """The editor's SAE: the one named in params, else the embedded model's own at `layer`."""
    if params.sae_path or params.sae_release:
        return load_sae(params.sae_path, params.sae_release, params.sae_id)
    from ce_bench.sae_training import ensure_sae

    return load_sae(str(ensure_sae(layer)))
