"""Training-framework integrations for the two-pass optimizers (SAM and its variants).

Each submodule imports its framework when the submodule itself is imported, never when
``torchvalley`` is: ``import torchvalley`` works without them. Install them with
``pip install 'torchvalley[integrations]'``.

- :mod:`torchvalley.integrations.lightning`: PyTorch Lightning
  (:class:`~torchvalley.integrations.lightning.SAMCallback` turns an ordinary optimizer into
  SAM under every precision, ``16-mixed`` included; a SAM optimizer under automatic
  optimization works as is in fp32/bf16;
  :func:`~torchvalley.integrations.lightning.sam_manual_step` for manual optimization).
- :mod:`torchvalley.integrations.hf`: Hugging Face ``Trainer``
  (:class:`~torchvalley.integrations.hf.SAMTrainer`).
"""

from __future__ import annotations

INSTALL_HINT = "pip install 'torchvalley[integrations]'"


def missing(framework: str, error: ImportError) -> ImportError:
    """The ImportError raised when ``framework`` is not installed, with the install hint."""
    return ImportError(
        f"torchvalley's {framework} integration needs {framework} ({error}): {INSTALL_HINT}"
    )
