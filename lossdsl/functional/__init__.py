"""Pure tensor functions: per-element losses, target preparation and reductions.

Modules in ``lossdsl.terms`` hold hyper-parameters and state and call these; nothing here touches a
module, a buffer or the host (no ``.item()``), so everything traces under ``torch.compile``.
"""
