"""fastvae's Triton kernels (shipped as ``fastvae.kernels``): jit kernels and their launchers only.

The autograd layer lives in ``fastvae.latent`` and ``fastvae.likelihood``. Import this
package only when a kernel is about to run: Triton reads ``TRITON_INTERPRET`` when the
kernels are decorated, and nothing here queries a GPU at import time.
"""
