"""The client API's use cases: each service takes the protocol's models and the runtime."""
