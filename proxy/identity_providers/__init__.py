"""Identity providers at the network edge: verifiers that fetch keys from an operator's IdP.

They live outside ``proxy.core`` because they speak HTTP (aiohttp); the core only sees
the identity they return.
"""
