"""Serving engines: drive OpenAI-compatible servers (vLLM and others) from lmlang.

Modules (import what you need; nothing is registered on import):
    vllm_env    the vLLM venv, built once under the lmlang home
    server      a managed local vLLM server (start, health check, reuse, stop)
    client      an async OpenAI-compatible HTTP client with retries and capability probes
    structured  lmlang constraints -> request fields, and validation of returned values
"""
