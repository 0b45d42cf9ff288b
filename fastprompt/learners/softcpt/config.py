"""SoftCPT's settings, with the original ``TRAINER.MTCOOP.*`` names (kding1225/softcpt)."""
from __future__ import annotations

import dataclasses

from ..base import LearnerConfig
from ..prompts import CLASS_TOKEN_POSITIONS

PG_TYPES = ("lin", "linmean", "lincls")


@dataclasses.dataclass
class SoftCPTConfig(LearnerConfig):
    """SoftCPT settings (defaults: SoftCPT-NATA as in the README, ``N_CTX=16, TASK_N_CTX=4, PG_TYPE=lin``).

    Attributes (original ``TRAINER.MTCOOP.*`` names in brackets):
        n_ctx: length of the generated context of every class prompt [N_CTX].
        class_token_position: where the class name goes in the class prompts, "end" (default,
            prefix-shared per task), "middle" or "front" [TOKEN_POSITION].
        task_n_ctx: learnable task context length; 0 = frozen task features of "<task name>."
            [TASK_N_CTX].
        task_ctx_init: initialise the task context from these words (then its word count is the
            length and the context is shared) [TASK_CTX_INIT].
        task_csc: one task context per task ("TS") instead of shared ("TA") [TASK_CSC].
        task_token_position: task name position in the task prompt [TASK_TOKEN_POSITION].
        class_features: feed class features to the meta-network ("CA"/"CS" variants) [CSC].
        class_n_ctx: learnable class-feature context length; 0 = frozen "<class>." [CLASS_N_CTX].
        class_ctx_init: init words of the class-feature context [CLASS_CTX_INIT].
        class_csc: one class-feature context per class ("CS") instead of shared ("CA") [CLASS_CSC].
        class_feature_token_position: class name position in the class-feature prompts
            [CLASS_TOKEN_POSITION].
        pg_type: meta-network "lin", "linmean" or "lincls" [PG_TYPE].
        cls_sample_rate: fraction of negative classes per task kept in ``loss`` (0 = all)
            [CLS_SAMPLE_RATE].
        init_std: std of the random init of the contexts and of ``proj`` (original: 0.02).
    """

    n_ctx: int = 16
    class_token_position: str = "end"
    task_n_ctx: int = 4
    task_ctx_init: str = ""
    task_csc: bool = False
    task_token_position: str = "end"
    class_features: bool = False
    class_n_ctx: int = 4
    class_ctx_init: str = ""
    class_csc: bool = False
    class_feature_token_position: str = "end"
    pg_type: str = "lin"
    cls_sample_rate: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        self._require_at_least(1, "n_ctx", note=" (the generated context length)")
        self._require_at_least(0, "task_n_ctx", "class_n_ctx")
        for name in ("class_token_position", "task_token_position", "class_feature_token_position"):
            if getattr(self, name) not in CLASS_TOKEN_POSITIONS:
                raise ValueError(f"{name} must be one of {CLASS_TOKEN_POSITIONS}, got {getattr(self, name)!r}")
        if self.pg_type not in PG_TYPES:
            raise ValueError(f"pg_type must be one of {PG_TYPES}, got {self.pg_type!r}")
        if self.pg_type != "lin" and not self.class_features:
            raise ValueError(f"pg_type={self.pg_type!r} needs class_features=True (it reads the class half of the "
                             "meta-network input)")
        if not 0.0 <= self.cls_sample_rate <= 1.0:
            raise ValueError(f"cls_sample_rate must be in [0, 1], got {self.cls_sample_rate}")
        if self.cls_sample_rate > 0 and not self.class_features:
            raise ValueError("cls_sample_rate > 0 needs class_features=True (as in the original)")

    @property
    def variant(self) -> str:
        """The paper's name of this setting: NATA, NATS, CATA, CSTA, CATS or CSTS."""
        cls = "CS" if self.class_features and self.class_csc else ("CA" if self.class_features else "NA")
        return cls + ("TS" if self.task_csc else "TA")
