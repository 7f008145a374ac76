"""Guardian tiers that talk to the outside world (LLM clients, the guardian service).

``proxy.core`` stays free of network code; the tiers here implement its ``ReviewTier``.
Nothing is imported eagerly, so a sidecar that only needs one tier never loads the others' SDKs.
"""
