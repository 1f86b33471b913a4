"""`TrainConfig`: what a training run is, as one typed object read from YAML or built from CLI flags.

A run trains one SAE or a sweep of them on the same activation batches. Per-SAE settings live in `SAESpec`;
any optimisation field left unset takes its architecture's default (see `saeforge.train.defaults` and
docs/training.md). Validation that needs the data (d_in, the architecture registry) happens in
`saeforge.train.trainer` before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from saeforge.device import DEFAULT_DEVICE, Device
from saeforge.errors import ConfigError, format_validation_error, read_yaml_mapping
from saeforge.sparsity import SparsitySettings

LrSchedule = Literal["constant", "cosine", "linear"]
OptimizerName = Literal["adam", "signum_sf"]
LoggerName = Literal["jsonl", "tensorboard", "mlflow", "wandb"]

# Fields of TrainConfig that may change between a run and its resumption (they do not change the weights; a moved
# store is checked to hold the same shards).
OPERATIONAL_FIELDS = frozenset(
    {
        "out",
        "activations",
        "target_activations",
        "resume",
        "device",
        "checkpoint_every",
        "final_checkpoint",
        "keep_checkpoints",
        "loggers",
        "log_every",
        "plots",
        "wandb_project",
        "evaluation_datasets",
        "tensor_parallel",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SAESpec(SparsitySettings, _Strict):
    """One SAE of a run. Unset optimisation and sparsity fields (None) take the architecture's default.

    The sparsity settings (k, k_aux, sparsity_coefficient, target_l0, bandwidth, group_sizes) are inherited from
    `saeforge.sparsity`, where the architectures' config fragments take theirs: one declaration.
    """

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="directory name of this SAE under `out` (letters, digits, . _ -)",
    )
    architecture: str = Field(
        description="a registered training architecture (docs/architectures.md); an unknown name lists them"
    )
    d_in: int | None = Field(default=None, gt=0, description="input width; checked against the activations")
    d_sae: int | None = Field(default=None, gt=0, description="number of latents (or give expansion_factor)")
    expansion_factor: float | None = Field(default=None, gt=0, description="d_sae = expansion_factor * d_in")
    options: dict[str, Any] = Field(
        default_factory=dict, description="further fields of the architecture's TrainingSAEConfig"
    )
    seed: int = Field(default=0, description="seed of this SAE's initialisation")
    optimizer: OptimizerName | None = Field(
        default=None,
        description="adam, or signum_sf (schedule-free sign descent, as sparsify trains; betas/eps unused)",
    )
    lr: float | None = Field(default=None, gt=0, description="peak learning rate")
    betas: tuple[float, float] | None = Field(default=None, description="Adam (beta1, beta2)")
    eps: float | None = Field(default=None, gt=0, description="Adam epsilon")
    lr_schedule: LrSchedule | None = Field(default=None, description="constant, cosine or linear decay")
    lr_warmup_steps: int | None = Field(default=None, ge=0, description="linear warm-up from 0")
    lr_decay_steps: int | None = Field(
        default=None,
        ge=0,
        description="linear schedule: decay over the last N steps (default: all after warm-up)",
    )
    lr_end_fraction: float | None = Field(
        default=None, ge=0, le=1, description="cosine/linear: final lr as a fraction of the peak"
    )
    sparsity_warmup_steps: int | None = Field(
        default=None, ge=0, description="linear warm-up of the sparsity penalty from 0"
    )
    grad_clip_norm: float | None = Field(default=None, ge=0, description="max gradient norm; 0 disables")
    skip_connection: bool = Field(
        default=False, description="transcoder with a learned linear skip W_skip from input to output"
    )

    @model_validator(mode="after")
    def _one_of(self) -> SAESpec:
        if self.d_sae is not None and self.expansion_factor is not None:
            raise ValueError("give either d_sae or expansion_factor, not both")
        if self.sparsity_coefficient is not None and self.target_l0 is not None:
            raise ValueError("give either sparsity_coefficient or target_l0, not both")
        if self.betas is not None and not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self

    def check_d_in(self, d_in: int, where: str, data_source: str) -> None:
        """ConfigError when this SAE asks for a d_in other than its data's (`where` names the SAE)."""
        if self.d_in is not None and self.d_in != d_in:
            raise ConfigError(
                f"{where}.d_in: the SAE asks for d_in={self.d_in} but {data_source} has d_in={d_in}; "
                "remove d_in or point activations at a store of that width"
            )

    def resolved_d_sae(self, d_in: int) -> int:
        if self.d_sae is not None:
            return self.d_sae
        return max(1, round((self.expansion_factor if self.expansion_factor is not None else 16) * d_in))


class TrainConfig(_Strict):
    """A training run: the data, its length, the output directory and the SAEs it trains."""

    activations: list[Path] | None = Field(
        default=None,
        description="activation store directory (optional when a batch source is passed in Python); a list of "
        "stores captured together for a crosscoder (a single path is a list of one)",
    )
    target_activations: Path | None = Field(
        default=None,
        description="store of the site a transcoder writes (captured with activations): the SAEs read "
        "`activations` and reconstruct this",
    )
    crosscoder: bool = Field(
        default=False, description="train crosscoders over the sites of `activations` (one latent space)"
    )
    distribute_hooks: bool = Field(
        default=False,
        description="activations lists one store per hook: train the saes on each store separately, into "
        "out/<store folder name>/; under torchrun hook i goes to rank i mod N, which reads only its hooks' stores",
    )
    verify: bool = Field(
        default=True,
        description="check each shard's sha256 as it is first read; false (--no-verify) loads a store without "
        "checksums (another tool's) unverified, and the run card records it",
    )
    tokens: int | None = Field(
        default=None,
        gt=0,
        description="training tokens (activation rows); steps = tokens // batch_size. Default: epochs passes "
        "over the store",
    )
    epochs: float | None = Field(
        default=None,
        gt=0,
        description="passes over the store when tokens is not given (default 1: every row once)",
    )
    batch_size: int = Field(default=4096, gt=0, description="global batch size in tokens")
    out: Path = Field(description="run directory: checkpoints, metrics, plots and one folder per SAE")
    saes: list[SAESpec] = Field(min_length=1, description="the SAEs trained on the same batches")
    seed: int = Field(default=0, description="seed of the data order and of training randomness")
    resume: bool = Field(default=False, description="continue from the latest checkpoint in out/checkpoints")
    dead_tokens: int | None = Field(
        default=None,
        gt=0,
        description="a latent is dead (and AuxK trains it) after this many tokens without firing, for every SAE "
        "of the run; default: the TopK family 5 batches (Bussmann et al.), the others 10,000,000 (Gao et al. "
        "2024), both capped at a twentieth of a shorter run so that AuxK acts in it",
    )
    normalize_activations: Literal["expected_norm", "none"] = Field(
        default="expected_norm",
        description="expected_norm: scale inputs so that E||x|| = sqrt(d_in) (folded away at export)",
    )
    checkpoint_every: int | None = Field(default=None, gt=0, description="save a checkpoint every N steps")
    final_checkpoint: bool = Field(
        default=True,
        description="save a checkpoint after the last step (to extend or resume the run); false skips it",
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="checkpoints kept on disk (newest)")
    loggers: list[LoggerName] = Field(
        default_factory=lambda: ["jsonl"],
        description="metric sinks: jsonl (always on), tensorboard, mlflow (sqlite), wandb (offline)",
    )
    wandb_project: str = Field(default="saeforge", description="wandb project name")
    log_every: int = Field(default=10, gt=0, description="steps between metric records")
    plots: bool = Field(default=True, description="write curves.png in the run directory at the end")
    device: Device = DEFAULT_DEVICE
    tensor_parallel: int = Field(
        default=1,
        ge=1,
        description="latent sharding under torchrun: each SAE's latents are split over this many ranks (the "
        "tensor group); the torchrun ranks must be a multiple of it, the rest split the batch (data parallel)",
    )
    dtype: Literal["float32", "float64"] = Field(default="float32", description="parameter dtype")
    autocast: Literal["none", "bfloat16"] = Field(default="none", description="autocast the forward pass")
    evaluation_datasets: list[str] = Field(
        default_factory=list, description="evaluation data of these SAEs, recorded in the run card"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [s.name for s in self.saes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"saes: duplicate SAE names {dupes}; every SAE needs its own name (its output folder)"
            )
        stores = self.activations or []
        if self.crosscoder and self.target_activations is not None:
            raise ValueError(
                "a crosscoder reconstructs its own sites; give activations only, not target_activations"
            )
        if self.distribute_hooks and (self.crosscoder or self.target_activations is not None):
            raise ValueError(
                "distribute_hooks trains SAEs on one store per hook; it does not combine with crosscoder or "
                "target_activations (run those as separate configs)"
            )
        if len(stores) > 1 and not (self.crosscoder or self.distribute_hooks):
            raise ValueError(
                f"activations: {len(stores)} stores given; pass crosscoder: true (--crosscoder) to train a "
                "crosscoder over them, distribute_hooks: true to train the saes on each store separately, or "
                "give one store (and target_activations for a transcoder)"
            )
        if self.crosscoder and len(stores) == 1:
            raise ValueError("crosscoder: give two or more activation stores (one per site)")
        if self.distribute_hooks and self.tensor_parallel > 1:
            raise ValueError(
                "distribute_hooks places whole SAEs on ranks; it does not combine with tensor_parallel > 1 "
                "(latent sharding): set tensor_parallel: 1, or train the hooks as separate runs"
            )
        if self.tokens is not None and self.epochs is not None:
            raise ValueError("give tokens or epochs, not both (tokens = epochs x the store's rows)")
        if self.tokens is not None and self.tokens < self.batch_size:
            raise ValueError(f"tokens ({self.tokens}) must be at least batch_size ({self.batch_size})")
        return self

    def with_tokens(self, rows: int | None) -> TrainConfig:
        """This run with `tokens` set: as given, else `epochs` (default 1) passes over the store's `rows`.

        Raises ConfigError when tokens is unset and the number of rows is unknown (a batch source passed in
        Python), or when one pass gives fewer tokens than one batch."""
        if self.tokens is not None:
            return self
        if not rows:
            raise ConfigError("tokens: give the number of training tokens (the data's size is unknown)")
        tokens = round((self.epochs or 1.0) * rows)
        if tokens < self.batch_size:
            raise ConfigError(
                f"tokens: {self.epochs or 1:g} pass(es) over the store's {rows:,} rows is fewer than one batch "
                f"of batch_size {self.batch_size}; lower --batch-size, or give --tokens or --epochs"
            )
        return self.model_copy(update={"tokens": tokens, "epochs": None})

    @field_validator("activations", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @property
    def input_paths(self) -> list[Path]:
        """The input stores (`activations`) as a list, also after a `model_copy(update=...)` set one path."""
        inputs = self.activations or []
        return [Path(inputs)] if isinstance(inputs, (str, Path)) else list(inputs)

    @property
    def activation_paths(self) -> list[Path]:
        """Every store the run reads, in order: `activations`, then `target_activations`."""
        return [*self.input_paths, *([self.target_activations] if self.target_activations else [])]

    @property
    def dead_after(self) -> int:
        """`dead_tokens`, or its default for this run: min(10M, tokens / 20), at least one batch."""
        if self.dead_tokens is not None:
            return self.dead_tokens
        return max(self.batch_size, min(10_000_000, self.tokens // 20))

    @property
    def total_steps(self) -> int:
        if self.tokens is None:
            raise ConfigError("tokens is not resolved yet: call with_tokens(rows of the store) first")
        return self.tokens // self.batch_size

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Reads a YAML file; `overrides` (e.g. out=..., resume=True) replace top-level keys."""
        data = read_yaml_mapping(path, "activations, tokens, batch_size, out, saes")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Validates a dict, turning pydantic's errors into one ConfigError naming each field."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source, model=cls)) from None
