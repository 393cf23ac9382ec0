"""Sanctum's data plane: an OpenAI-compatible API over llama.cpp, with RAM-only sessions.

Two listeners share one process: the client API (reached through the gateway) and the
management listener (bound to the management address) that takes signed config.
"""
