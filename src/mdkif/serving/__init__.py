"""Ray Serve: the routed model and the retriever as composed deployments behind an OpenAI-compatible API.

- `protocol`: OpenAI request/response schemas, limits, errors, auth, SSE (no torch, no Ray).
- `config`: the typed `args:` of serve/*.yaml and the artifact checks `build_app` runs first.
- `engine`: the routed model without Ray: profiles, merged-weight LRU, batched/streamed generation.
- `deployments`: Ingress (FastAPI) -> RoutedModel (continuous batching) -> Retriever (Chroma).
- `batcher`: the continuous decode loop: requests join and leave the running batch between token steps.
- `app`: `build_app`, the `import_path` of serve/*.yaml.

Nothing is imported here, so importing a submodule stays as light as that submodule.
"""
