"""Device choice for a process: `cpu`, `cuda` (demanded) or `auto`."""

from __future__ import annotations


class DeviceError(RuntimeError):
    pass


def pick_device(request: str, who: str, local_rank: int = 0):
    import torch

    if request == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if request == "cuda":
        if not has_cuda:
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise DeviceError(
                f"{who}: device 'cuda' was demanded but torch.cuda.is_available() is False ({why}; "
                f"torch {torch.__version__}); use device 'cpu' or 'auto'"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if request == "auto":
        return torch.device("cuda", local_rank % torch.cuda.device_count()) if has_cuda else torch.device("cpu")
    raise DeviceError(f"{who}: unknown device {request!r}; allowed: cpu | cuda | auto")
