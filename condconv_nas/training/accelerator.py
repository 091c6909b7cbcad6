"""Where a training runs and in what precision: an `Accelerator` (this process's GPU, in bfloat16
or float16, where there is one) and `CPU`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Accelerator:
    """Where a training runs and in what precision: float32 on CPU; on a GPU, autocast to bfloat16
    where the card has it, else float16 with a gradient scaler."""

    device: torch.device
    dtype: torch.dtype | None = None  # autocast's dtype; None: float32 throughout
    scaler: object | None = None  # torch.amp.GradScaler for float16, else None

    @classmethod
    def pick(cls, local_rank: int = 0) -> Accelerator:
        """This process's GPU (``local_rank``: its index among the visible ones) if there is one,
        else the CPU."""
        if not torch.cuda.is_available():
            return cls(torch.device("cpu"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        if torch.cuda.is_bf16_supported():
            return cls(device, torch.bfloat16)
        return cls(device, torch.float16, torch.amp.GradScaler("cuda"))


CPU = Accelerator(torch.device("cpu"))
