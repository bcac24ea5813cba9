"""GPU kernels with pure-PyTorch reference paths, shipped as ``dna_mamba.kernels``.

Each op is a subpackage ``dna_mamba.kernels.<op>`` holding a function of the same name. Binding the function
here replaces the package attribute of that name, so ``from dna_mamba.kernels import selective_scan`` gives the
function; the subpackage stays importable by its full name (``from dna_mamba.kernels.selective_scan.interface
import ...``, ``from dna_mamba.kernels.selective_scan import selective_scan_ref``) because imports of dotted
names go through ``sys.modules``. Only ``import dna_mamba.kernels.selective_scan.interface as m`` (which walks
attributes) no longer resolves; write ``from dna_mamba.kernels.selective_scan import interface as m`` instead.

The exceptions to the naming are ``dna_mamba.kernels.rmsnorm``, whose function is ``add_rms_norm`` since it
fuses the residual add, and ``dna_mamba.kernels.layout``, whose ``relayout`` copies (batch, dim, L) tensors between
the time-contiguous and channel-last layouts; binding them here leaves the subpackage attributes alone.
"""

from .causal_conv1d.interface import causal_conv1d  # noqa: I001 - rebinding after the subpackage import is the point
from .layout.interface import relayout
from .rmsnorm.interface import add_rms_norm
from .selective_scan.interface import selective_scan  # noqa: I001 - rebinding after the subpackage import is the point

__all__ = ["add_rms_norm", "causal_conv1d", "relayout", "selective_scan"]
